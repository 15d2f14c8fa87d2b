// The dashboard imports an image from a URL (issue 14 §1): a small HTTP
// server this test starts serves the image; the form starts the import, the
// download list follows it to "imported" (or to its failure, for a wrong
// digest), and the image appears in the image list with nothing else added.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { createServer } from 'node:http';
import { execFileSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { chromium } from 'playwright-core';

import {
  BIN, CHROMIUM, CHROMIUM_ARGS, ARTIFACTS, requireExecutable, startDemo, stopDemo,
} from './demo.mjs';

/** 3 MiB of bytes that depend on their offset: a raw image. */
function imageBytes() {
  const data = Buffer.alloc(3 << 20);
  for (let i = 0; i < data.length; i += 1) data[i] = (i * 131 + (i >> 12)) & 0xff;
  return data;
}

function serve(files) {
  const server = createServer((req, res) => {
    const body = files[req.url];
    if (!body) { res.writeHead(404); res.end('not found'); return; }
    res.writeHead(200, { 'content-length': body.length, etag: '"e2e-1"' });
    res.end(body);
  });
  return new Promise((resolve) => server.listen(0, '127.0.0.1', () => resolve(server)));
}

test('the dashboard imports an image from a URL and follows the download', { timeout: 180_000 }, async () => {
  requireExecutable(BIN, 'build it with `cargo build -p flashrack-cli` or set FLASHRACK_BIN');
  requireExecutable(CHROMIUM, 'install it with `apt-get install -y chromium` or set CHROMIUM_PATH');
  mkdirSync(ARTIFACTS, { recursive: true });
  const image = imageBytes();
  const sha = createHash('sha256').update(image).digest('hex');
  const server = await serve({ '/vendor-image.img': image, '/other.img': image.subarray(0, 1 << 20) });
  const base = `http://127.0.0.1:${server.address().port}`;
  const dataDir = mkdtempSync(path.join(tmpdir(), 'flashrack-e2e-url-'));
  const { child, url: urlPromise } = startDemo(dataDir);
  let browser;
  try {
    const url = await urlPromise;
    browser = await chromium.launch({ executablePath: CHROMIUM, args: CHROMIUM_ARGS });
    const page = await (await browser.newContext({ viewport: { width: 1440, height: 1200 } })).newPage();
    const pageErrors = [];
    page.on('pageerror', (error) => pageErrors.push(error.message));
    await page.goto(url);
    await page.locator('summary', { hasText: 'Import from a URL' }).click();

    // A wrong digest: the download fails with the reason, nothing is imported.
    await page.fill('#url-url', `${base}/other.img`);
    await page.fill('#url-sha', sha);
    await page.click('#url-form button[type="submit"]');
    await page.locator('#download-list li', { hasText: 'other.img' })
      .filter({ hasText: /failed: .*checksum mismatch/ }).waitFor({ timeout: 60_000 });

    // The right one: followed to "imported", then in the image list.
    await page.fill('#url-url', `${base}/vendor-image.img`);
    await page.click('#url-form button[type="submit"]');
    await page.locator('#download-list li', { hasText: 'vendor-image.img' })
      .filter({ hasText: `imported ${sha.slice(0, 12)}` }).waitFor({ timeout: 60_000 });
    await page.locator('#image-list li', { hasText: 'vendor-image.img' }).waitFor({ timeout: 15_000 });
    await page.screenshot({ path: path.join(ARTIFACTS, 'url-import.png'), fullPage: true });

    const images = await (await page.request.get(`${url}api/v1/images`)).json();
    const imported = images.find((i) => i.sha256 === sha);
    assert.ok(imported, 'the image is in the cache');
    assert.equal(imported.provenance.url, `${base}/vendor-image.img`);
    assert.equal(imported.provenance.etag, '"e2e-1"');
    assert.equal(images.filter((i) => i.name === 'other.img').length, 0, 'a mismatch keeps nothing');
    assert.deepEqual(pageErrors, []);
  } finally {
    if (browser) await browser.close();
    await stopDemo(child);
    server.close();
    rmSync(dataDir, { recursive: true, force: true });
  }
});

test('a block map URL given in the form is checked against the download: a lie fails it, the true map is kept', { timeout: 180_000 }, async () => {
  requireExecutable(BIN, 'build it with `cargo build -p flashrack-cli` or set FLASHRACK_BIN');
  requireExecutable(CHROMIUM, 'install it with `apt-get install -y chromium` or set CHROMIUM_PATH');
  mkdirSync(ARTIFACTS, { recursive: true });
  const image = imageBytes();
  const sha = createHash('sha256').update(image).digest('hex');
  const work = mkdtempSync(path.join(tmpdir(), 'flashrack-e2e-bmap-'));
  const imageFile = path.join(work, 'disk.img');
  writeFileSync(imageFile, image);
  // bmaptool's own map of the image, and the same map with its first
  // range's checksum replaced and the file's checksum made again.
  const truth = execFileSync('bmaptool', ['create', imageFile]).toString();
  const at = truth.indexOf('chksum="') + 'chksum="'.length;
  const edited = truth.slice(0, at) + 'ab'.repeat(32) + truth.slice(at + 64);
  const own = edited.match(/<BmapFileChecksum>\s*([0-9a-f]{64})\s*<\/BmapFileChecksum>/)[1];
  const zeroed = edited.replace(own, '0'.repeat(64));
  const lie = zeroed.replace('0'.repeat(64), createHash('sha256').update(zeroed).digest('hex'));
  const server = await serve({
    '/disk.img': image,
    '/maps/lie.bmap': Buffer.from(lie),
    '/maps/truth.bmap': Buffer.from(truth),
  });
  const base = `http://127.0.0.1:${server.address().port}`;
  const dataDir = path.join(work, 'data');
  mkdirSync(dataDir);
  const { child, url: urlPromise } = startDemo(dataDir);
  let browser;
  try {
    const url = await urlPromise;
    browser = await chromium.launch({ executablePath: CHROMIUM, args: CHROMIUM_ARGS });
    const page = await (await browser.newContext({ viewport: { width: 1440, height: 1200 } })).newPage();
    const pageErrors = [];
    page.on('pageerror', (error) => pageErrors.push(error.message));
    await page.goto(url);
    await page.locator('summary', { hasText: 'Import from a URL' }).click();

    // The lying map: the import fails with the map's reason, nothing cached.
    await page.fill('#url-url', `${base}/disk.img`);
    await page.fill('#url-bmap', `${base}/maps/lie.bmap`);
    await page.click('#url-form button[type="submit"]');
    await page.locator('#download-list li[data-state="failed"]', { hasText: 'disk.img' })
      .filter({ hasText: /failed: .*lie\.bmap.*do not match the bmap's checksum/ }).waitFor({ timeout: 60_000 });
    assert.equal((await page.request.get(`${url}api/v1/images/${sha}`)).status(), 404);

    // The true one: imported, and the image's block map is the one named.
    await page.fill('#url-bmap', `${base}/maps/truth.bmap`);
    await page.click('#url-form button[type="submit"]');
    await page.locator('#download-list li[data-state="done"]', { hasText: 'disk.img' })
      .filter({ hasText: `imported ${sha.slice(0, 12)}` }).waitFor({ timeout: 60_000 });
    const imported = await (await page.request.get(`${url}api/v1/images/${sha}`)).json();
    assert.match(imported.block_map.source, /truth\.bmap/, JSON.stringify(imported.block_map));
    const downloads = await (await page.request.get(`${url}api/v1/images/downloads`)).json();
    assert.deepEqual(downloads.map((d) => d.state), ['done', 'failed']);
    await page.screenshot({ path: path.join(ARTIFACTS, 'url-import-bmap.png'), fullPage: true });
    assert.deepEqual(pageErrors, []);
  } finally {
    if (browser) await browser.close();
    await stopDemo(child);
    server.close();
    rmSync(work, { recursive: true, force: true });
  }
});
