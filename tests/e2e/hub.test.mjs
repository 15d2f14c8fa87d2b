// The hub's dashboard in Debian's chromium, against real processes: a
// throwaway PostgreSQL cluster, `flashrack hub`, and three stations
// (`flashrack demo --config station.toml`: simulated racks, each joined to
// the hub with a station token made by `flashrack hub token add`).
//
//   cargo build -p flashrack-cli
//   npm ci --prefix tests/e2e
//   FLASHRACK_BIN=$PWD/target/debug/flashrack node --test tests/e2e/hub.test.mjs
//
// Needs root or a user that may run PostgreSQL (as root the cluster runs as
// `postgres`). Screenshots go to tests/e2e/artifacts/hub-*.png.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync, mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { chromium } from 'playwright-core';

import { ARTIFACTS, BIN, CHROMIUM, CHROMIUM_ARGS, requireExecutable, stopDemo } from './demo.mjs';
import {
  flashrack, removeTree, startFlashrack, startHubStation, startPostgres,
} from './fleet.mjs';

const STATIONS = ['lab-a', 'lab-b', 'lab-c'];
// A station not heard from for this long is silent (hub.toml; the default):
// twice a quiet station's report interval (5 s), so that a station slowed
// down by a loaded machine is not taken for a silent one.
const SILENT_AFTER_SECS = 10;

/** What the page shows of each station: status, counters, ports. */
const pageStations = (page) => page.evaluate(() => Object.fromEntries(
  [...document.querySelectorAll('.station[data-station]')].map((card) => [card.dataset.station, {
    classes: card.className,
    badge: card.querySelector('.badge')?.textContent || '',
    counts: Object.fromEntries([...card.querySelectorAll('[data-count]')]
      .map((node) => [node.dataset.count, Number(node.textContent)])),
    ports: [...card.querySelectorAll('.port')].map((port) => port.textContent),
    stale: card.querySelector('.stale')?.textContent || '',
  }]),
));

/** The fleet-wide counters the page shows. */
const pageFleet = (page) => page.evaluate(() => Object.fromEntries(
  [...document.querySelectorAll('#fleet-summary [data-fleet]')]
    .map((node) => [node.dataset.fleet, Number(node.textContent)]),
));

const COUNTERS = ['passed', 'failed', 'refused', 'interrupted', 'running'];

test('the hub dashboard shows three stations live, their counters, a silent station, and needs an operator token', { timeout: 420_000 }, async () => {
  requireExecutable(BIN, 'build it with `cargo build -p flashrack-cli` or set FLASHRACK_BIN');
  requireExecutable(CHROMIUM, 'install it with `apt-get install -y chromium` or set CHROMIUM_PATH');
  mkdirSync(ARTIFACTS, { recursive: true });
  const work = mkdtempSync(path.join(tmpdir(), 'flashrack-hub-e2e-'));
  const pgDir = mkdtempSync(path.join(tmpdir(), 'flashrack-hub-e2e-pg-'));
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
      `silent_after_secs = ${SILENT_AFTER_SECS}`,
      '',
    ].join('\n'));
    const operator = flashrack(['hub', '--config', hubToml, 'token', 'add', '--operator', 'tester']).trim();
    assert.match(operator, /^[0-9a-f]{64}$/);

    const hub = startFlashrack(['hub', '--config', hubToml], /hub: (http:\/\/\S+)/, 'the hub');
    processes.push(hub.child);
    const hubUrl = await hub.url;

    // Without the operator token the hub's API refuses to show anything.
    const refused = await fetch(`${hubUrl}api/v1/stations`);
    assert.equal(refused.status, 401, 'the stations without a token');
    const stationsApi = async () => {
      const response = await fetch(`${hubUrl}api/v1/stations`, { headers: { Authorization: `Bearer ${operator}` } });
      assert.equal(response.status, 200, 'the stations with the operator token');
      return Object.fromEntries((await response.json()).map((s) => [s.id, s]));
    };

    const stations = {};
    for (const [i, name] of STATIONS.entries()) {
      const station = startHubStation({
        work, hubToml, hubUrl, name,
        demoArgs: ['--ports', '8', '--image-size', '16MiB', '--seed', String(7 + i)],
      });
      processes.push(station.child);
      stations[name] = station;
    }
    for (const name of STATIONS) await stations[name].url;

    browser = await chromium.launch({ executablePath: CHROMIUM, args: CHROMIUM_ARGS });
    const context = await browser.newContext({ viewport: { width: 1440, height: 1000 } });
    page = await context.newPage();
    const pageErrors = [];
    page.on('pageerror', (error) => pageErrors.push(error.message));

    // The page asks for the token: a wrong one is asked again, the right one
    // is kept. (The wrong one cannot be right: tokens are 64 hex digits.)
    const prompts = [];
    page.on('dialog', async (dialog) => {
      prompts.push(dialog.message());
      if (dialog.type() !== 'prompt') return dialog.dismiss();
      return dialog.accept(prompts.length === 1 ? 'not-a-token' : operator);
    });
    await page.goto(hubUrl);
    await page.waitForFunction((n) => document.querySelectorAll('.station[data-station]').length === n,
      STATIONS.length, { timeout: 60_000, polling: 250 });
    assert.ok(prompts.length >= 2, `the page asked for the token again after a wrong one: ${JSON.stringify(prompts)}`);
    assert.ok(prompts.every((p) => /operator token/i.test(p)), JSON.stringify(prompts));
    assert.equal(prompts.length, 2, `one question per answer, not one per request: ${JSON.stringify(prompts)}`);
    await page.waitForFunction(() => /live/i.test(document.querySelector('#conn')?.textContent || ''), null, { timeout: 30_000 });

    // Three stations connected, each with its rack.
    await page.waitForFunction((names) => names.every((name) => {
      const card = document.querySelector(`.station[data-station="${name}"]`);
      return card && /^connected$/.test(card.querySelector('.badge')?.textContent || '')
        && card.querySelectorAll('.port').length === 8;
    }), STATIONS, { timeout: 60_000, polling: 250 });
    await page.screenshot({ path: path.join(ARTIFACTS, 'hub-connected.png'), fullPage: true });

    // Live: every station's ports change (states and progress) while watched.
    const before = await pageStations(page);
    await page.waitForFunction(([names, first]) => names.every((name) => {
      const card = document.querySelector(`.station[data-station="${name}"]`);
      const now = [...card.querySelectorAll('.port')].map((port) => port.textContent);
      return now.some((text, i) => text !== first[name].ports[i]);
    }), [STATIONS, before], { timeout: 60_000, polling: 250 });
    // Progress moves: some port shows a percentage, later another one.
    const progress = () => page.evaluate(() => [...document.querySelectorAll('.port')]
      .map((port) => port.textContent.match(/(\d+)\s?%/)).filter(Boolean).map((m) => m[0]));
    await page.waitForFunction(() => [...document.querySelectorAll('.port')].some((port) => /\d+\s?%/.test(port.textContent)),
      null, { timeout: 60_000, polling: 100 });
    const firstProgress = JSON.stringify(await progress());
    await page.waitForFunction((first) => {
      const now = [...document.querySelectorAll('.port')].map((port) => port.textContent.match(/(\d+)\s?%/))
        .filter(Boolean).map((m) => m[0]);
      return now.length > 0 && JSON.stringify(now) !== first;
    }, firstProgress, { timeout: 60_000, polling: 100 });

    // Verdicts arrive: each station has passes, and the fleet has a failure.
    await page.waitForFunction((names) => names.every((name) => Number(document
      .querySelector(`.station[data-station="${name}"] [data-count="passed"]`)?.textContent || 0) > 0)
      && Number(document.querySelector('#fleet-summary [data-fleet="failed"]')?.textContent || 0) > 0,
    STATIONS, { timeout: 180_000, polling: 500 });
    // A failed stick says why, as on the station's own dashboard.
    await page.waitForFunction(() => [...document.querySelectorAll('.port.failed .reason')]
      .some((node) => /error|mismatch|capacity|removed|small|read only|refused|interrupted|flush/i.test(node.textContent)),
    null, { timeout: 60_000, polling: 250 });
    await page.screenshot({ path: path.join(ARTIFACTS, 'hub-live.png'), fullPage: true });

    // The counters agree with the hub's API, per station and fleet-wide (both
    // move while the stations work: they must meet, and a page that sums or
    // shows them wrongly never does).
    const agree = async () => {
      const api = await stationsApi();
      const shown = await pageStations(page);
      const fleet = await pageFleet(page);
      const problems = [];
      for (const name of STATIONS) {
        for (const key of COUNTERS) {
          if (shown[name]?.counts[key] !== api[name].counts[key]) {
            problems.push(`${name} ${key}: page ${shown[name]?.counts[key]}, api ${api[name].counts[key]}`);
          }
        }
      }
      for (const key of COUNTERS) {
        const sum = STATIONS.reduce((total, name) => total + api[name].counts[key], 0);
        if (fleet[key] !== sum) problems.push(`fleet ${key}: page ${fleet[key]}, api ${sum}`);
      }
      if (fleet.stations !== STATIONS.length) problems.push(`fleet stations: ${fleet.stations}`);
      return problems;
    };
    const meet = async (what) => {
      let problems = [];
      const deadline = Date.now() + 60_000;
      while (Date.now() < deadline) {
        problems = await agree();
        if (problems.length === 0) return;
        await page.waitForTimeout(200); // a poll of two moving sources, not a synchronization
      }
      assert.fail(`${what}: the page's counters never met the API's: ${problems.join('; ')}`);
    };
    await meet('while all three work');

    // A run written without a read-back at lab-b: its passes are never shown
    // as a plain "passed" (the hub said "passed" where the station said
    // "written, not verified"), and the last run's verdicts say they are not
    // this run's.
    const labB = await stations['lab-b'].url;
    const current = await (await fetch(`${labB}api/v1/runs/current`)).json();
    assert.equal((await fetch(`${labB}api/v1/runs/current/stop`, { method: 'POST' })).status, 204);
    const armed = await fetch(`${labB}api/v1/runs`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ image: current.image_sha256, verify: 'none' }),
    });
    assert.equal(armed.status, 201, await armed.text());
    await page.waitForFunction(() => [...document.querySelectorAll('.station[data-station="lab-b"] .port.passed')]
      .some((port) => /written, not verified/.test(port.textContent)), null, { timeout: 120_000, polling: 250 });
    const tiles = await page.evaluate(() => [...document.querySelectorAll('.station[data-station="lab-b"] .port')]
      .map((port) => ({ text: port.textContent, classes: port.className })));
    for (const tile of tiles) {
      if (/\bpassed\b/.test(tile.classes) && !/old-run/.test(tile.classes)) {
        assert.match(tile.text, /written, not verified/, JSON.stringify(tile));
      }
      if (/old-run/.test(tile.classes)) assert.match(tile.text, /not this run/, JSON.stringify(tile));
    }

    // A station killed (SIGKILL: nothing said to the hub) turns silent, its
    // stale view marked; the others stay connected.
    const victim = stations['lab-c'].child;
    victim.kill('SIGKILL');
    await victim.exited;
    await page.waitForFunction(() => {
      const card = document.querySelector('.station[data-station="lab-c"]');
      return card && card.classList.contains('silent') && /^silent since \d/.test(card.querySelector('.badge')?.textContent || '');
    }, null, { timeout: 60_000, polling: 250 });
    const silent = await pageStations(page);
    assert.match(silent['lab-c'].stale, /stale/i, 'the silent station\'s rack is marked stale');
    for (const name of ['lab-a', 'lab-b']) assert.match(silent[name].badge, /^(connected|behind)/, `${name} is still heard from`);
    const api = await stationsApi();
    assert.equal(api['lab-c'].status, 'silent', 'the hub says silent too');
    assert.equal(Number((await pageFleet(page)).silent), 1);
    await meet('with lab-c silent');
    await page.screenshot({ path: path.join(ARTIFACTS, 'hub-silent.png'), fullPage: true });

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
