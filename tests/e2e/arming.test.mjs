// A run armed from a URL whose server fails (503 on every request) against
// `flashrack demo --by-hand --no-arm`: while the station waits for the
// download's first bytes, the run panel says the download is trying again
// and why (the station's retries, as the downloads list says them), and it
// offers Stop, which drops the run being armed at once: the arm's request
// is answered 409, nothing is armed, the panel says "No run". Before, the
// panel said only "is starting" for minutes and offered no control, and a
// stop over the API waited for that run until the API gave up (408).
//
//   cargo build -p flashrack-cli && npm ci --prefix tests/e2e
//   FLASHRACK_BIN=$PWD/target/debug/flashrack node --test tests/e2e/arming.test.mjs

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createServer } from 'node:http';
import path from 'node:path';

import { ARTIFACTS, withDashboard } from './demo.mjs';

/** A server that answers 503 to everything; counts the requests. */
function failing() {
  let requests = 0;
  const server = createServer((req, res) => {
    requests += 1;
    res.writeHead(503, { 'content-type': 'text/plain' });
    res.end('overloaded, come back later');
  });
  return new Promise((resolve) => server.listen(0, '127.0.0.1', () => resolve({
    server, requests: () => requests,
  })));
}

test('a run armed from a failing server says it is trying again and Stop drops it at once', { timeout: 180_000 }, async () => {
  const { server, requests } = await failing();
  const imageUrl = `http://127.0.0.1:${server.address().port}/os.img`;
  try {
    await withDashboard({ name: 'arming', args: ['--by-hand', '--no-arm'] }, async ({ url, api, page }) => {
      await page.goto(url);
      await page.locator('#run-state').filter({ hasText: 'No run' }).waitFor({ timeout: 15_000 });
      const arming = page.request.post(api('/runs'), { data: { download: { url: imageUrl } }, timeout: 120_000 });
      // The panel says the download is trying again, and why.
      await page.waitForFunction(() => /Arming os\.img: its import from .* is starting; .*trying again \(try \d of 6\) after: .*503/
        .test(document.getElementById('run-state')?.textContent || ''), null, { timeout: 30_000, polling: 100 })
        .catch(async () => assert.fail(`the panel never said the download was trying again: ${await page.locator('#run-state').textContent()}`));
      assert.ok(requests() >= 1);
      // Stop is offered, and drops the run being armed at once.
      assert.equal(await page.locator('#stop-form').isHidden(), false, 'Stop is offered while the run is being armed');
      await page.screenshot({ path: path.join(ARTIFACTS, 'arming-retrying.png'), fullPage: true });
      await page.fill('#stop-reason', 'server down');
      const asked = Date.now();
      await page.click('#stop-button');
      const answer = await arming;
      assert.equal(answer.status(), 409, await answer.text());
      assert.match(await answer.text(), /stopped by the operator while it was being armed/);
      assert.ok(Date.now() - asked < 15_000, 'answered at once, not after the download gave up');
      await page.locator('#run-state').filter({ hasText: 'No run' }).waitFor({ timeout: 15_000 });
      const station = await (await page.request.get(api('/station'))).json();
      assert.equal(station.arming ?? null, null, JSON.stringify(station.arming));
      assert.equal(station.run ?? null, null, JSON.stringify(station.run));
      const runs = await (await page.request.get(api('/runs'))).json();
      assert.deepEqual(runs, []);
    });
  } finally {
    server.close();
  }
});
