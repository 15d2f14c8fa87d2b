// What a pass of a stick that followed an import proves, as the dashboard and
// the run's reports say it (e9db54f, 44e5b16): a run armed over the API with a
// URL the station has not imported yet (`POST /runs` with `download`), whose
// server (the test's own, on loopback) holds the second half of the image
// until two sticks are writing it; those sticks follow the import and are
// read back against the chunks' fingerprints, so their tiles say "verified
// (fingerprint)", never a plain pass; a stick plugged after the import ended
// reads the cached image and says "verified (compare)". The run's JSON report
// gives each port's attempt the same verify_method as its tile, and the
// printable report the same words.
//
//   cargo build -p flashrack-cli && npm ci --prefix tests/e2e
//   FLASHRACK_BIN=$PWD/target/debug/flashrack node --test tests/e2e/fingerprint.test.mjs

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { createServer } from 'node:http';
import path from 'node:path';

import { ARTIFACTS, withDashboard } from './demo.mjs';

const SIZE = 8 << 20;
const HALF = SIZE / 2;

/** 8 MiB of bytes that depend on their offset (no zero chunk): a raw image. */
function imageBytes() {
  const data = Buffer.alloc(SIZE);
  for (let i = 0; i < data.length; i += 1) data[i] = ((i * 131 + (i >> 11)) & 0xff) | 1;
  return data;
}

/**
 * Serves `body` at /os.img: its first half at once, the rest when
 * `release()` is called (until then the response is held open).
 */
function serve(body) {
  const held = [];
  let released = false;
  const server = createServer((req, res) => {
    if (req.url !== '/os.img') { res.writeHead(404); res.end('not found'); return; }
    res.writeHead(200, { 'content-length': SIZE });
    res.write(body.subarray(0, HALF));
    if (released) res.end(body.subarray(HALF));
    else held.push(res);
  });
  const release = () => {
    released = true;
    for (const res of held.splice(0)) res.end(body.subarray(HALF));
  };
  return new Promise((resolve) => server.listen(0, '127.0.0.1', () => resolve({ server, release })));
}

/** A tile's state and the words of its pass, as the page shows them. */
async function tile(page, label) {
  return page.evaluate((l) => {
    const node = document.querySelector(`.tile[data-label="${l}"]`);
    return node ? {
      state: node.dataset.state,
      pass: node.querySelector('.verdict-pass .pass')?.textContent || null,
      text: node.textContent,
    } : null;
  }, label);
}

/** Waits until `label`'s tile is in `state` (and its text matches `text`). */
async function untilTile(page, label, what, { state, text }) {
  await page.waitForFunction(([l, s, re]) => {
    const node = document.querySelector(`.tile[data-label="${l}"]`);
    return Boolean(node) && node.dataset.state === s
      && (!re || new RegExp(re[0], re[1]).test(node.textContent || ''));
  }, [label, state, text ? [text.source, text.flags] : null], { timeout: 60_000, polling: 100 })
    .catch(async () => assert.fail(`${label} never ${what}: ${JSON.stringify(await tile(page, label))}`));
}

test('sticks that followed an import say they were verified by fingerprint, on their tiles and in the reports', { timeout: 300_000 }, async () => {
  const body = imageBytes();
  const sha = createHash('sha256').update(body).digest('hex');
  const { server, release } = await serve(body);
  const imageUrl = `http://127.0.0.1:${server.address().port}/os.img`;
  try {
    await withDashboard({ name: 'fingerprint', args: ['--by-hand', '--no-arm', '--ports', '4'] }, async ({ child, url, api, page }) => {
      const plug = async (line) => {
        const answer = await child.command(`plug ${line}`);
        assert.match(answer, /^plugged /, `plug ${line}`);
      };
      await page.goto(url);
      await page.waitForFunction(() => /live/i.test(document.querySelector('#conn')?.textContent || ''), null, { timeout: 15_000 });

      // Armed with an image the station has not imported yet.
      const armed = await page.request.post(api('/runs'), { data: { download: { url: imageUrl, sha256: sha }, verify: 'compare' } });
      assert.ok(armed.ok(), `arm: ${armed.status()} ${await armed.text()}`);
      const run = (await (await page.request.get(api('/station'))).json()).run;
      assert.ok(run && run.armed, JSON.stringify(run));

      // Two sticks write while the server holds the image's second half:
      // they follow the import.
      await plug('A1 first');
      await plug('A2 second');
      await untilTile(page, 'A1', 'was writing', { state: 'writing' });
      await untilTile(page, 'A2', 'was writing', { state: 'writing' });
      release();
      await untilTile(page, 'A1', 'passed', { state: 'passed' });
      await untilTile(page, 'A2', 'passed', { state: 'passed' });
      const images = await (await page.request.get(api('/images'))).json();
      assert.ok(JSON.stringify(images).includes(sha), 'the image is in the cache once imported');

      // A stick plugged once the import has ended reads the cached image.
      await plug('A3 late');
      await untilTile(page, 'A3', 'passed', { state: 'passed' });

      // Each pass's words name what was checked (a tile's figures come with
      // its verdict's event).
      for (const label of ['A1', 'A2', 'A3']) {
        await page.waitForFunction((l) => /^verified \(/.test(document.querySelector(`.tile[data-label="${l}"] .verdict-pass .pass`)?.textContent || ''),
          label, { timeout: 30_000, polling: 100 })
          .catch(async () => {
            const ports = await (await page.request.get(api('/ports'))).json();
            const port = (ports.ports || ports).find((p) => p.label === label);
            assert.fail(`${label}'s pass never named its check: ${JSON.stringify(await tile(page, label))}; the API: ${JSON.stringify(port)}`);
          });
      }
      const shown = {};
      for (const label of ['A1', 'A2', 'A3']) shown[label] = (await tile(page, label)).pass;
      assert.match(shown.A1, /^verified \(fingerprint(, after reset)?\)$/, JSON.stringify(shown));
      assert.match(shown.A2, /^verified \(fingerprint(, after reset)?\)$/, JSON.stringify(shown));
      assert.match(shown.A3, /^verified \(compare(, after reset)?\)$/, JSON.stringify(shown));
      await page.screenshot({ path: path.join(ARTIFACTS, 'fingerprint-passed.png'), fullPage: true });

      // The run's JSON report: each port's attempt with the method its tile
      // names, and as many bytes verified as the image has.
      const report = await (await page.request.get(api(`/runs/${run.id}/report?format=json`))).json();
      const byPort = Object.fromEntries(report.attempts.map((a) => [a.port_label, a]));
      for (const [label, method] of [['A1', 'fingerprint'], ['A2', 'fingerprint'], ['A3', 'compare']]) {
        const row = byPort[label];
        assert.ok(row, `${label} in the report: ${JSON.stringify(report.attempts)}`);
        assert.equal(row.verdict, 'pass', JSON.stringify(row));
        assert.equal(row.verify_method, method, JSON.stringify(row));
        assert.ok(shown[label].includes(`(${row.verify_method}`), `${label}: tile ${shown[label]}, report ${row.verify_method}`);
        assert.equal(row.bytes_verified, SIZE, JSON.stringify(row));
        assert.equal(row.image_sha256, sha, JSON.stringify(row));
      }

      // The printable report says the same, row by row.
      const html = await page.request.get(api(`/runs/${run.id}/report?format=html`));
      assert.ok(html.ok(), `html report: ${html.status()}`);
      const printed = await page.context().newPage();
      await printed.setContent(await html.text());
      const rows = await printed.evaluate(() => [...document.querySelectorAll('tr')].map((tr) => tr.textContent));
      for (const [label, method] of [['A1', 'fingerprint'], ['A2', 'fingerprint'], ['A3', 'compare']]) {
        const row = rows.find((r) => r.includes(label) && /pass/i.test(r));
        assert.ok(row && row.includes(method), `${label}'s printed row names ${method}: ${row}`);
      }
      await printed.close();
    });
  } finally {
    server.close();
  }
});
