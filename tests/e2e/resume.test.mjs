// The dashboard's interrupted downloads and their Resume button (issue 14 §1):
// a URL import held halfway by the test's server is cut by a restart of the
// station (SIGKILL, as a crash or a power cut would); after the restart the
// download list shows it interrupted with what its partial download holds,
// Resume continues it from there (a Range request with If-Range, asserted on
// the server), and the image appears in the library with its origin.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { createServer } from 'node:http';
import { mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';

import {
  ARTIFACTS, BIN, CHROMIUM, openBrowser, requireExecutable, startDemo, stopDemo,
} from './demo.mjs';

const SIZE = 4 << 20;
const HALF = SIZE / 2;
const ETAG = '"resume-1"';

/** 4 MiB of bytes that depend on their offset: a raw image. */
function imageBytes() {
  const data = Buffer.alloc(SIZE);
  for (let i = 0; i < data.length; i += 1) data[i] = (i * 151 + (i >> 13)) & 0xff;
  return data;
}

/**
 * Serves `body` at /os.img: a request without a range gets the first half,
 * then nothing more (the connection is held open); a range request with the
 * right If-Range gets the rest (206). Every request is recorded.
 */
function serve(body) {
  const seen = [];
  const held = new Set();
  const server = createServer((req, res) => {
    seen.push({ url: req.url, range: req.headers.range || null, ifRange: req.headers['if-range'] || null });
    if (req.url !== '/os.img') { res.writeHead(404); res.end('not found'); return; }
    const match = /^bytes=(\d+)-$/.exec(req.headers.range || '');
    if (match && req.headers['if-range'] === ETAG) {
      const start = Number(match[1]);
      res.writeHead(206, {
        'content-length': SIZE - start,
        'content-range': `bytes ${start}-${SIZE - 1}/${SIZE}`,
        etag: ETAG,
      });
      res.end(body.subarray(start));
      return;
    }
    res.writeHead(200, { 'content-length': SIZE, etag: ETAG, 'accept-ranges': 'bytes' });
    res.write(body.subarray(0, HALF));
    held.add(res);
    res.on('close', () => held.delete(res));
  });
  return new Promise((resolve) => server.listen(0, '127.0.0.1', () => resolve({ server, seen, held })));
}

test('a download cut by a restart is shown interrupted and Resume completes it into the library', { timeout: 240_000 }, async () => {
  requireExecutable(BIN, 'build it with `cargo build -p flashrack-cli` or set FLASHRACK_BIN');
  requireExecutable(CHROMIUM, 'install it with `apt-get install -y chromium` or set CHROMIUM_PATH');
  mkdirSync(ARTIFACTS, { recursive: true });
  const image = imageBytes();
  const sha = createHash('sha256').update(image).digest('hex');
  const { server, seen, held } = await serve(image);
  const imageUrl = `http://127.0.0.1:${server.address().port}/os.img`;
  const work = mkdtempSync(path.join(tmpdir(), 'flashrack-e2e-resume-'));
  const dataDir = path.join(work, 'data');
  let first;
  let second;
  let browser;
  try {
    // The first station: the download starts from the form and is held halfway.
    first = startDemo(dataDir);
    const firstUrl = await first.url;
    let page;
    let pageErrors;
    ({ browser, page, pageErrors } = await openBrowser());
    await page.goto(firstUrl);
    await page.locator('summary', { hasText: 'Import from a URL' }).click();
    await page.fill('#url-url', imageUrl);
    await page.fill('#url-sha', sha);
    await page.click('#url-form button[type="submit"]');
    await page.locator('#download-list li[data-state="downloading"]', { hasText: 'os.img' })
      .filter({ hasText: /2\.1 MB of 4\.19 MB/ }).waitFor({ timeout: 60_000 });

    // A crash: the station is killed while the server holds the rest.
    first.child.kill('SIGKILL');
    await first.child.exited;
    for (const res of held) res.destroy();

    // After the restart: interrupted, with what the partial download holds.
    second = startDemo(dataDir);
    const secondUrl = await second.url;
    await page.goto(secondUrl);
    await page.locator('summary', { hasText: 'Import from a URL' }).click();
    const row = page.locator('#download-list li[data-state="interrupted"]', { hasText: 'os.img' });
    // With its total: recorded as soon as the server declared it, not at
    // the next 2-second write of the bytes (which the crash came before).
    await row.filter({ hasText: /interrupted by a stop of the station at 2\.1 MB of 4\.19 MB/ })
      .waitFor({ timeout: 30_000 });
    const listed = (await (await page.request.get(`${secondUrl}api/v1/images/downloads`)).json())
      .find((d) => d.url === imageUrl);
    assert.equal(listed.state, 'interrupted');
    assert.ok(listed.held > 0 && listed.held <= HALF, `held ${listed.held}`);
    const images = await (await page.request.get(`${secondUrl}api/v1/images`)).json();
    assert.equal(images.filter((i) => i.sha256 === sha).length, 0, 'not imported yet');
    await page.screenshot({ path: path.join(ARTIFACTS, 'resume-interrupted.png'), fullPage: true });

    // Resume: from the partial download, to "imported", then in the library.
    await row.getByRole('button', { name: `Resume the download of ${imageUrl}` }).click();
    await page.locator('#download-list li[data-state="done"]', { hasText: 'os.img' })
      .filter({ hasText: `imported ${sha.slice(0, 12)}` }).waitFor({ timeout: 60_000 });
    const libraryRow = page.locator('#image-list li', { hasText: 'os.img' });
    await libraryRow.waitFor({ timeout: 15_000 });
    await page.screenshot({ path: path.join(ARTIFACTS, 'resume-done.png'), fullPage: true });
    // The library says where it came from, as `image show` does: its URL
    // and ETag (before, a download's row said nothing of its origin).
    const origin = await libraryRow.locator('.image-provenance').textContent();
    assert.ok(origin.startsWith(`Downloaded from ${imageUrl} (ETag ${ETAG})`), origin);

    const resumed = seen.filter((r) => r.url === '/os.img');
    assert.equal(resumed.length, 2, JSON.stringify(resumed));
    assert.equal(resumed[0].range, null);
    assert.equal(resumed[1].range, `bytes=${listed.held}-`, 'asked only for the rest');
    assert.equal(resumed[1].ifRange, ETAG);
    const after = await (await page.request.get(`${secondUrl}api/v1/images`)).json();
    const imported = after.find((i) => i.sha256 === sha);
    assert.ok(imported, 'the image is in the cache');
    assert.equal(imported.provenance.url, imageUrl);
    assert.equal(imported.provenance.etag, ETAG);
    assert.deepEqual(pageErrors, []);
  } finally {
    if (browser) await browser.close().catch(() => {});
    if (first) await stopDemo(first.child);
    let stopped = { forced: false };
    if (second) stopped = await stopDemo(second.child);
    for (const res of held) res.destroy();
    server.close();
    rmSync(work, { recursive: true, force: true });
    assert.equal(stopped.forced, false, 'the demo stops on SIGTERM');
  }
});
