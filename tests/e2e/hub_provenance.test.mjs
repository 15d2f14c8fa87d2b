// Where a station's image came from, on the hub's dashboard (issue 14): a
// throwaway PostgreSQL cluster, `flashrack hub`, and one station
// (`flashrack demo --no-arm --config station.toml`, joined to the hub) that
// imports an image from a URL checked against a SHA256SUMS file served by a
// small HTTP server this test starts. The station ships the image with its
// provenance; the hub's page shows it in the stations' image origins, on the
// station's card while a run of it is armed, in the lot of it armed from the
// hub, and in a stick's history, in the words of the hub's reports.
//
//   cargo build -p flashrack-cli
//   npm ci --prefix tests/e2e
//   FLASHRACK_BIN=$PWD/target/debug/flashrack node --test tests/e2e/hub_provenance.test.mjs
//
// Needs root or a user that may run PostgreSQL. Screenshot:
// tests/e2e/artifacts/hub-provenance.png.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { createServer } from 'node:http';
import { mkdirSync, mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { chromium } from 'playwright-core';

import { ARTIFACTS, BIN, CHROMIUM, CHROMIUM_ARGS, requireExecutable, stopDemo } from './demo.mjs';
import {
  flashrack, removeTree, startFlashrack, startHubStation, startPostgres,
} from './fleet.mjs';

/** 2 MiB of bytes that depend on their offset: a raw image. */
function imageBytes() {
  const data = Buffer.alloc(2 << 20);
  for (let i = 0; i < data.length; i += 1) data[i] = (i * 151 + (i >> 10)) & 0xff;
  return data;
}

function serve(files) {
  const server = createServer((req, res) => {
    const body = files[req.url];
    if (!body) { res.writeHead(404); res.end('not found'); return; }
    res.writeHead(200, { 'content-length': body.length, etag: '"vendor-7"' });
    res.end(body);
  });
  return new Promise((resolve) => server.listen(0, '127.0.0.1', () => resolve(server)));
}

/**
 * `check()` until it gives something, for at most `ms`: another process's
 * records reaching the hub are polled through its API, as its page does.
 */
async function until(what, check, ms = 120_000) {
  const deadline = Date.now() + ms;
  for (;;) {
    const value = await check();
    if (value) return value;
    if (Date.now() > deadline) assert.fail(`${what}: not within ${ms / 1000} s`);
    await new Promise((resolve) => { setTimeout(resolve, 250); });
  }
}

test('the hub dashboard shows where a station\'s image came from: its origins, the station\'s run, a lot and a stick\'s history', { timeout: 420_000 }, async () => {
  requireExecutable(BIN, 'build it with `cargo build -p flashrack-cli` or set FLASHRACK_BIN');
  requireExecutable(CHROMIUM, 'install it with `apt-get install -y chromium` or set CHROMIUM_PATH');
  mkdirSync(ARTIFACTS, { recursive: true });
  const work = mkdtempSync(path.join(tmpdir(), 'flashrack-hub-origin-'));
  const pgDir = mkdtempSync(path.join(tmpdir(), 'flashrack-hub-origin-pg-'));
  const image = imageBytes();
  const sha = createHash('sha256').update(image).digest('hex');
  const sums = Buffer.from(`${sha}  vendor-image.img\n`);
  const server = await serve({ '/dl/vendor-image.img': image, '/dl/SHA256SUMS': sums });
  const base = `http://127.0.0.1:${server.address().port}`;
  const processes = [];
  let pg;
  let browser;
  let page;
  try {
    pg = await startPostgres(pgDir);
    const hubToml = path.join(work, 'hub.toml');
    writeFileSync(hubToml, [
      'listen = "127.0.0.1:0"',
      `database_url = "${pg.url}"`,
      `data_dir = "${path.join(work, 'hub')}"`,
      '',
    ].join('\n'));
    const operator = flashrack(['hub', '--config', hubToml, 'token', 'add', '--operator', 'tester']).trim();
    const hub = startFlashrack(['hub', '--config', hubToml], /hub: (http:\/\/\S+)/, 'the hub');
    processes.push(hub.child);
    const hubUrl = await hub.url;
    const auth = { Authorization: `Bearer ${operator}` };
    const hubGet = async (p) => {
      const response = await fetch(`${hubUrl}${p}`, { headers: auth });
      assert.equal(response.status, 200, `${p}: ${await response.clone().text()}`);
      return response.json();
    };

    const name = 'lab-p';
    const station = startHubStation({
      work, hubToml, hubUrl, name,
      demoArgs: ['--ports', '4', '--image-size', '4MiB', '--seed', '11', '--no-arm'],
    });
    processes.push(station.child);
    const stationUrl = await station.url;

    // The station imports the image from its URL, its digest looked up in
    // the SHA256SUMS file by name.
    const started = await fetch(`${stationUrl}api/v1/images/import-url`, {
      method: 'POST',
      headers: { 'Content-Type': 'application/json' },
      body: JSON.stringify({ url: `${base}/dl/vendor-image.img`, sha256sums: `${base}/dl/SHA256SUMS` }),
    });
    assert.ok(started.status < 300, `import-url: ${started.status} ${await started.text()}`);
    await until('the station imports the image', async () => {
      const images = await (await fetch(`${stationUrl}api/v1/images`)).json();
      return images.some((i) => i.sha256 === sha);
    });
    // A run of it on the station: the station records the image, with its
    // provenance, as it records the run, and ships both to the hub.
    const run = await fetch(`${stationUrl}api/v1/runs`, {
      method: 'POST', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify({ image: sha }),
    });
    assert.equal(run.status, 201, `arm: ${await run.text()}`);
    // Shipped to the hub with its provenance; the hub's words for it.
    const origin = await until('the hub knows the image\'s origin', async () => {
      const origins = await hubGet('api/v1/image-origins');
      return origins.find((o) => o.station_id === name && o.sha256 === sha);
    });
    assert.equal(origin.label, 'Downloaded from');
    assert.equal(origin.name, 'vendor-image.img');
    const words = `${base}/dl/vendor-image.img (ETag "vendor-7"); digest vendor-image.img in ${base}/dl/SHA256SUMS, unsigned`;
    assert.equal(origin.words, words, JSON.stringify(origin));
    const shown = `Downloaded from: vendor-image.img: ${words}`;


    browser = await chromium.launch({ executablePath: CHROMIUM, args: CHROMIUM_ARGS });
    const context = await browser.newContext({ viewport: { width: 1440, height: 1200 } });
    page = await context.newPage();
    const pageErrors = [];
    page.on('pageerror', (error) => pageErrors.push(error.message));
    page.on('dialog', (dialog) => (dialog.type() === 'prompt' ? dialog.accept(operator) : dialog.dismiss()));
    await page.goto(hubUrl);

    // The stations' image origins: the station, the image, its sha256 and
    // where it came from, as the reports say it.
    const row = page.locator(`#origins tr[data-origin="${name}/${sha}"]`);
    await row.waitFor({ timeout: 60_000 });
    assert.equal((await row.locator('td').nth(0).textContent()).trim(), name);
    assert.equal((await row.locator('td').nth(1).textContent()).trim(), 'vendor-image.img');
    assert.equal((await row.locator('td').nth(2).textContent()).trim(), sha.slice(0, 12));
    assert.equal((await row.locator('td').nth(3).textContent()).trim(), `Downloaded from: ${words}`);

    // The station's card while its run of the image is armed.
    const card = page.locator(`.station[data-station="${name}"]`);
    await card.locator('.run-origin', { hasText: words }).waitFor({ timeout: 60_000 });
    assert.equal((await card.locator('.run-origin').textContent()).trim(), shown);

    // A lot of the same image armed from the hub (its own copy, uploaded:
    // the same sha256): its row names the origin.
    const upload = await fetch(`${hubUrl}api/v1/images?name=vendor-image.img`, { method: 'POST', headers: auth, body: image });
    assert.equal(upload.status < 300, true, `upload: ${upload.status} ${await upload.clone().text()}`);
    assert.equal((await upload.json()).sha256, sha);
    const lot = await fetch(`${hubUrl}api/v1/lots`, {
      method: 'POST',
      headers: { ...auth, 'Content-Type': 'application/json' },
      body: JSON.stringify({ image_sha256: sha, stations: [name], name: 'provenance-lot', options: { verify: 'compare' } }),
    });
    assert.ok(lot.status < 300, `lot: ${lot.status} ${await lot.clone().text()}`);
    const lotId = (await lot.json()).id;
    await page.reload();
    const lotRow = page.locator(`#lots tr[data-lot="${lotId}"]`);
    await lotRow.locator('.origin', { hasText: words }).waitFor({ timeout: 60_000 });
    assert.equal((await lotRow.locator('.origin').first().textContent()).trim(), `${name}: ${shown}`);
    // The station's operator has a run of its own armed: the station does not
    // follow the lot yet, and the lot's row says it waits, and why.
    const detail = lotRow.locator('.order-detail', { hasText: 'armed by the station' });
    await detail.waitFor({ timeout: 60_000 });
    assert.match(await lotRow.locator('td').nth(3).textContent(), new RegExp(`${name}: armed / waiting \\(run \\d+ armed by the station's operator is in the way`));

    // A stick written under the station's run: its history at the hub says
    // where the image came from.
    const key = await until('a stick written with the image reaches the hub', async () => {
      const devices = await (await fetch(`${stationUrl}api/v1/devices`)).json();
      for (const d of devices.filter((x) => x.attempts > 0)) {
        const response = await fetch(`${hubUrl}api/v1/devices/${encodeURIComponent(d.key)}`, { headers: auth });
        if (response.status !== 200) continue;
        const report = await response.json();
        if ((report.image_origins || []).some((o) => o.sha256 === sha)) return d.key;
      }
      return null;
    });
    await page.fill('#device-key', key);
    await page.click('#device-form button[type="submit"]');
    const history = page.locator('#device .device-origin', { hasText: words });
    await history.waitFor({ timeout: 30_000 });
    assert.equal((await history.textContent()).trim(), shown);
    await page.screenshot({ path: path.join(ARTIFACTS, 'hub-provenance.png'), fullPage: true });

    assert.deepEqual(pageErrors, [], 'no script errors in the page');
  } finally {
    if (browser) await browser.close().catch(() => {});
    server.close();
    for (const child of processes.reverse()) {
      const { forced } = await stopDemo(child);
      if (forced) console.log(`a process did not stop on SIGTERM within 20 s:\n${child.log()}`);
    }
    if (pg) pg.stop();
    removeTree(work);
    removeTree(pgDir);
  }
});
