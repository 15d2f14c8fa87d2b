// A lot's order that waits, on the hub's dashboard: a throwaway PostgreSQL
// cluster, `flashrack hub`, and one station (`flashrack demo --no-arm
// --config station.toml`, joined to the hub) whose operator arms a run of
// their own. A lot armed from the hub for that station is shown as waiting,
// with the station's words naming the run in the way (never "failed"); once
// the operator stops their run, the station fetches the lot's image from the
// hub and arms it, and the same row turns to armed with its run. The hub's
// API says what the page says at each step.
//
//   cargo build -p flashrack-cli
//   npm ci --prefix tests/e2e
//   FLASHRACK_BIN=$PWD/target/debug/flashrack node --test tests/e2e/hub_orders.test.mjs
//
// Needs root or a user that may run PostgreSQL. Screenshots:
// tests/e2e/artifacts/hub-order-waiting.png, hub-order-armed.png.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { mkdirSync, mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { chromium } from 'playwright-core';

import { ARTIFACTS, BIN, CHROMIUM, CHROMIUM_ARGS, requireExecutable, stopDemo } from './demo.mjs';
import {
  flashrack, removeTree, startFlashrack, startHubStation, startPostgres,
} from './fleet.mjs';

/** 1 MiB of bytes that depend on their offset: the lot's raw image. */
function lotImage() {
  const data = Buffer.alloc(1 << 20);
  for (let i = 0; i < data.length; i += 1) data[i] = (i * 97 + (i >> 12)) & 0xff;
  return data;
}

test('a lot\'s order waits for the station operator\'s own run, shown as waiting with the reason, then armed when it stops', { timeout: 300_000 }, async () => {
  requireExecutable(BIN, 'build it with `cargo build -p flashrack-cli` or set FLASHRACK_BIN');
  requireExecutable(CHROMIUM, 'install it with `apt-get install -y chromium` or set CHROMIUM_PATH');
  mkdirSync(ARTIFACTS, { recursive: true });
  const work = mkdtempSync(path.join(tmpdir(), 'flashrack-hub-orders-'));
  const pgDir = mkdtempSync(path.join(tmpdir(), 'flashrack-hub-orders-pg-'));
  const processes = [];
  let pg;
  let browser;
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

    const name = 'lab-w';
    const station = startHubStation({
      work, hubToml, hubUrl, name,
      demoArgs: ['--ports', '2', '--image-size', '2MiB', '--seed', '5', '--no-arm'],
    });
    processes.push(station.child);
    const stationUrl = await station.url;

    // The station's operator arms a run of the demo's image.
    const images = await (await fetch(`${stationUrl}api/v1/images`)).json();
    assert.equal(images.length, 1, JSON.stringify(images));
    const armed = await fetch(`${stationUrl}api/v1/runs`, {
      method: 'POST', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify({ image: images[0].sha256 }),
    });
    assert.equal(armed.status, 201, `arm: ${await armed.clone().text()}`);
    const ownRun = (await armed.json()).id;

    // Another image at the hub.
    const image = lotImage();
    const sha = createHash('sha256').update(image).digest('hex');
    const upload = await fetch(`${hubUrl}api/v1/images?name=lot-image.img`, { method: 'POST', headers: auth, body: image });
    assert.ok(upload.status < 300, `upload: ${upload.status} ${await upload.clone().text()}`);

    browser = await chromium.launch({ executablePath: CHROMIUM, args: CHROMIUM_ARGS });
    const context = await browser.newContext({ viewport: { width: 1440, height: 1000 } });
    const page = await context.newPage();
    const pageErrors = [];
    page.on('pageerror', (error) => pageErrors.push(error.message));
    page.on('dialog', (dialog) => (dialog.type() === 'prompt' ? dialog.accept(operator) : dialog.dismiss()));
    await page.goto(hubUrl);

    // A lot of it armed for that station with the dashboard's form: hash
    // verify and a target count, as the station's run options name them.
    await page.locator(`#arm-image option[value="${sha}"]`).waitFor({ state: 'attached', timeout: 30_000 });
    await page.selectOption('#arm-image', sha);
    await page.fill('#arm-stations', name);
    await page.selectOption('#arm-verify', 'hash');
    await page.fill('#arm-target', '500');
    await page.fill('#arm-name', 'waiting-lot');
    await page.click('#arm-form button[type="submit"]');
    const lotRow = page.locator('#lots tr', { hasText: 'waiting-lot' });
    await lotRow.waitFor({ timeout: 30_000 });
    const lotId = Number(await lotRow.getAttribute('data-lot'));

    // Waiting, with the station's reason naming its operator's run.
    const row = page.locator(`#lots tr[data-lot="${lotId}"]`);
    const order = row.locator('.order');
    await order.locator('.order-state.order-waiting').waitFor({ timeout: 60_000 });
    const reason = `run ${ownRun} armed by the station's operator is in the way: the order waits until it is stopped`;
    assert.equal((await order.textContent()).trim(), `${name}: armed / waiting (${reason})`);
    assert.equal(await order.locator('.order-failed').count(), 0);
    const lots = await (await fetch(`${hubUrl}api/v1/lots`, { headers: auth })).json();
    const viewed = lots.find((l) => l.id === lotId).orders[0];
    assert.equal(viewed.progress.state, 'waiting');
    assert.equal(viewed.progress.detail, reason);
    assert.equal(viewed.run_id, null);
    await page.screenshot({ path: path.join(ARTIFACTS, 'hub-order-waiting.png'), fullPage: true });

    // The operator stops their run: the station fetches the lot's image and
    // arms it; the row turns to armed with the run, without a reason.
    const stopped = await fetch(`${stationUrl}api/v1/runs/current/stop`, {
      method: 'POST', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify({ reason: 'done' }),
    });
    assert.ok(stopped.status < 300, `stop: ${stopped.status} ${await stopped.clone().text()}`);
    try {
      await order.locator('.order-state.order-armed').waitFor({ timeout: 60_000 });
      await row.locator('.order', { hasText: ' · run ' }).waitFor({ timeout: 60_000 });
    } catch (error) {
      const fleet = await (await fetch(`${stationUrl}api/v1/fleet`)).text();
      throw new Error(`${error.message}\nthe row: ${await order.textContent()}\nthe station's fleet view: ${fleet}\n${station.child.log()}`);
    }
    const text = (await order.textContent()).trim();
    assert.match(text, new RegExp(`^${name}: armed / armed · run (\\d+): \\d+ passed, \\d+ failed$`));
    const shownRun = Number(text.match(/ · run (\d+)/)[1]);
    assert.equal(await order.locator('.order-detail').count(), 0);
    const current = await (await fetch(`${stationUrl}api/v1/runs/current`)).json();
    assert.equal(current.image_sha256, sha);
    assert.equal(current.armed, true);
    assert.equal(current.id, shownRun, 'the row names the station\'s run under the order');
    // The form's options reached the station's run.
    assert.equal(current.options.verify, 'hash', JSON.stringify(current));
    assert.equal(current.options.target_count, 500, JSON.stringify(current));
    await page.screenshot({ path: path.join(ARTIFACTS, 'hub-order-armed.png'), fullPage: true });

    assert.deepEqual(pageErrors, [], 'no script errors in the page');
  } finally {
    if (browser) await browser.close().catch(() => {});
    for (const child of processes.reverse()) {
      const { forced } = await stopDemo(child);
      if (forced) console.log(`a process did not stop on SIGTERM within 20 s:\n${child.log()}`);
    }
    if (pg) pg.stop();
    removeTree(work);
    removeTree(pgDir);
  }
});
