// The station's dashboard shows its link to the fleet hub: a station joined to
// a hub that is not there yet ("not reachable", its backlog growing), then the
// real hub (`flashrack hub` on a throwaway PostgreSQL cluster) started on that
// address: "connected", the backlog drained to 0, when records were last
// shipped. The figures on screen are checked against GET /api/v1/fleet.
//
// Needs root (the cluster runs as Debian's `postgres` user) and PostgreSQL's
// server (scripts/setup installs it).

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync, spawn } from 'node:child_process';
import { chmodSync, mkdirSync, mkdtempSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { chromium } from 'playwright-core';

import { BIN, CHROMIUM, CHROMIUM_ARGS, ARTIFACTS, requireExecutable, stopDemo } from './demo.mjs';

/** A port that was free a moment ago on loopback. */
function freePort() {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address();
      server.close(() => resolve(port));
    });
  });
}

/** The newest PostgreSQL server's bin directory. */
function pgBin() {
  const versions = readdirSync('/usr/lib/postgresql').map(Number).filter(Number.isFinite).sort((a, b) => a - b);
  assert.ok(versions.length > 0, 'PostgreSQL is not installed: run scripts/setup');
  return `/usr/lib/postgresql/${versions.at(-1)}/bin`;
}

const asPostgres = (program, args) => execFileSync('runuser', ['-u', 'postgres', '--', program, ...args], { cwd: '/', stdio: 'pipe' });

/** Starts a program that prints `<prefix>http://…` on stdout; resolves with the child and that URL. */
function startPrinting(args, prefix) {
  const child = spawn(BIN, args, { stdio: ['ignore', 'pipe', 'pipe'] });
  const log = [];
  child.stderr.on('data', (chunk) => { log.push(chunk.toString()); if (log.length > 200) log.shift(); });
  child.exited = new Promise((resolve) => child.once('exit', (code, signal) => resolve({ code, signal })));
  const url = new Promise((resolve, reject) => {
    let out = '';
    child.stdout.on('data', (chunk) => {
      out += chunk.toString();
      const match = out.match(new RegExp(`${prefix}(http://\\S+)`));
      if (match) resolve(match[1].endsWith('/') ? match[1] : `${match[1]}/`);
    });
    child.exited.then(({ code, signal }) => reject(new Error(`${args[0]} exited early (${code}, ${signal}): ${log.join('').slice(-3000)}`)));
  });
  return { child, url };
}

test('the station dashboard shows its hub link: not reachable with a backlog, then connected and drained', { timeout: 300_000 }, async () => {
  requireExecutable(BIN, 'build it with `cargo build -p flashrack-cli` or set FLASHRACK_BIN');
  requireExecutable(CHROMIUM, 'install it with `apt-get install -y chromium` or set CHROMIUM_PATH');
  mkdirSync(ARTIFACTS, { recursive: true });
  const work = mkdtempSync(path.join(tmpdir(), 'flashrack-e2e-fleet-'));
  const bin = pgBin();
  const pgPort = await freePort();
  const hubPort = await freePort();
  let station;
  let hub;
  let browser;
  try {
    // PostgreSQL and the hub's database; a token for the station.
    execFileSync('chown', ['postgres:postgres', work]);
    asPostgres(`${bin}/initdb`, ['-D', `${work}/pg`, '-U', 'postgres', '--auth=trust', '--no-sync']);
    asPostgres(`${bin}/pg_ctl`, ['-D', `${work}/pg`, '-l', `${work}/pg.log`, '-w', '-o', `-p ${pgPort} -k ${work} -c listen_addresses=127.0.0.1 -c fsync=off`, 'start']);
    asPostgres(`${bin}/createdb`, ['-h', '127.0.0.1', '-p', String(pgPort), '-U', 'postgres', 'flashrack']);
    mkdirSync(`${work}/hub`);
    writeFileSync(`${work}/hub.toml`, `listen = "127.0.0.1:${hubPort}"\ndatabase_url = "postgres://postgres@127.0.0.1:${pgPort}/flashrack"\ndata_dir = "${work}/hub"\n`);
    const token = execFileSync(BIN, ['hub', '--config', `${work}/hub.toml`, 'token', 'add', 'lab-e2e']);
    writeFileSync(`${work}/hub-token`, token);
    chmodSync(`${work}/hub-token`, 0o600);
    writeFileSync(`${work}/station.toml`, `station_id = "lab-e2e"\n[fleet]\nhub = "http://127.0.0.1:${hubPort}"\ntoken_file = "${work}/hub-token"\n`);

    // The station first, the hub not started yet.
    station = startPrinting(['--data-dir', `${work}/data`, 'demo', '--config', `${work}/station.toml`, '--listen', '127.0.0.1:0', '--ports', '8', '--image-size', '8MiB'], 'dashboard: ');
    const url = await station.url;
    browser = await chromium.launch({ executablePath: CHROMIUM, args: CHROMIUM_ARGS });
    const page = await (await browser.newContext({ viewport: { width: 1440, height: 900 } })).newPage();
    const pageErrors = [];
    page.on('pageerror', (error) => pageErrors.push(error.message));
    await page.goto(url);
    const fleetView = async () => (await page.request.get(`${url}api/v1/fleet`)).json();

    // Not reachable, with records waiting: the number shown is the station's.
    await page.waitForFunction(() => {
      const node = document.querySelector('#fleet-link');
      return node && !node.hidden && node.dataset.connected === 'false' && Number(node.dataset.backlog) > 0;
    }, null, { timeout: 120_000, polling: 250 });
    const away = await page.locator('#fleet-link').textContent();
    assert.match(away, /Hub not reachable · backlog \d+ records? · nothing shipped yet/);
    const shown = Number(/backlog (\d+)/.exec(away)[1]);
    assert.ok(shown > 0);
    const view = await fleetView();
    assert.equal(view.connected, false);
    assert.ok(view.backlog >= shown, `the API's backlog ${view.backlog} is at least what was shown (${shown}): it only grows while the hub is away`);
    await page.screenshot({ path: path.join(ARTIFACTS, 'fleet-away.png') });

    // The hub comes: connected, the backlog drains, "last shipped" appears.
    hub = startPrinting(['hub', '--config', `${work}/hub.toml`], 'hub: ');
    await hub.url;
    await page.waitForFunction(() => {
      const node = document.querySelector('#fleet-link');
      return node.dataset.connected === 'true' && /last shipped \S/.test(node.textContent);
    }, null, { timeout: 120_000, polling: 250 });
    const back = await fleetView();
    assert.equal(back.connected, true);
    assert.ok(back.last_shipped_at > 0, JSON.stringify(back));
    const text = await page.locator('#fleet-link').textContent();
    assert.match(text, /^Hub connected · backlog \d+ records? · last shipped /);
    await page.screenshot({ path: path.join(ARTIFACTS, 'fleet-connected.png') });
    assert.deepEqual(pageErrors, []);
  } finally {
    if (browser) await browser.close();
    if (station) await stopDemo(station.child);
    if (hub) await stopDemo(hub.child);
    try { asPostgres(`${bin}/pg_ctl`, ['-D', `${work}/pg`, '-m', 'immediate', 'stop']); } catch { /* not started */ }
    rmSync(work, { recursive: true, force: true });
  }
});
