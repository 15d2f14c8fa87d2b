// What the browser tests share: the programs they need, and `flashrack demo`
// started on a free port and stopped again.

import assert from 'node:assert/strict';
import { execFileSync, spawn } from 'node:child_process';
import { accessSync, constants, mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

export const HERE = path.dirname(fileURLToPath(import.meta.url));
export const ROOT = path.resolve(HERE, '..', '..');
export const BIN = process.env.FLASHRACK_BIN
  ? path.resolve(process.env.FLASHRACK_BIN)
  : path.join(ROOT, 'target', 'release', 'flashrack');
export const CHROMIUM = process.env.CHROMIUM_PATH || '/usr/bin/chromium';
export const ARTIFACTS = path.join(HERE, 'artifacts');
export const CHROMIUM_ARGS = [
  '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
  '--disable-background-networking', '--disable-component-update', '--disable-sync',
];

/** Fails (never skips) when a needed program is missing. */
export function requireExecutable(file, hint) {
  try {
    accessSync(file, constants.X_OK);
  } catch {
    assert.fail(`${file} is missing or not executable: ${hint}`);
  }
}

/** Imports `file` into the image cache of `dataDir`; returns its sha256. */
export function importImage(dataDir, file) {
  const sha = execFileSync(BIN, ['--data-dir', dataDir, 'image', 'import', file],
    { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] }).trim();
  assert.match(sha, /^[0-9a-f]{64}$/);
  return sha;
}

/**
 * Starts the demo; resolves with the process and its dashboard URL. `args` are
 * more of the demo's arguments; with `--by-hand`, `child.command(line)` plugs
 * or pulls a stick and resolves with the demo's answer.
 */
export function startDemo(dataDir, args = []) {
  const byHand = args.includes('--by-hand');
  const child = spawn(BIN, ['--data-dir', dataDir, 'demo', '--listen', '127.0.0.1:0', ...args], {
    stdio: [byHand ? 'pipe' : 'ignore', 'pipe', 'pipe'],
  });
  // The by-hand rack's answers, in order, for the commands waiting for them.
  const waiting = [];
  let partial = '';
  if (byHand) {
    child.stdout.on('data', (chunk) => {
      partial += chunk.toString();
      const lines = partial.split('\n');
      partial = lines.pop();
      for (const line of lines.filter((l) => /^(plugged|pulled|error:) /.test(l))) {
        if (waiting.length) waiting.shift()(line);
      }
    });
    child.command = (line) => new Promise((resolve) => {
      waiting.push(resolve);
      child.stdin.write(`${line}\n`);
    });
  }
  const log = [];
  const keep = (chunk) => {
    log.push(chunk.toString());
    if (log.length > 200) log.shift();
  };
  child.stderr.on('data', keep);
  child.exited = new Promise((resolve) => child.once('exit', (code, signal) => resolve({ code, signal })));
  child.log = () => log.join('').slice(-4000);
  const url = new Promise((resolve, reject) => {
    let out = '';
    const timer = setTimeout(() => reject(new Error(`no "dashboard:" line within 60 s\n${child.log()}`)), 60_000);
    child.stdout.on('data', (chunk) => {
      keep(chunk);
      out += chunk.toString();
      const match = out.match(/dashboard: (http:\/\/\S+)/);
      if (match) {
        clearTimeout(timer);
        resolve(match[1].endsWith('/') ? match[1] : `${match[1]}/`);
      }
    });
    child.once('error', (error) => { clearTimeout(timer); reject(error); });
    child.exited.then(({ code, signal }) => {
      clearTimeout(timer);
      reject(new Error(`the demo exited early (code ${code}, signal ${signal})\n${child.log()}`));
    });
  });
  return { child, url };
}

/** SIGTERM, then waits; SIGKILL after 20 s. Says whether it had to force it. */
export async function stopDemo(child) {
  if (child.exitCode !== null || child.signalCode !== null) return { forced: false };
  child.kill('SIGTERM');
  let timer;
  const timeout = new Promise((resolve) => { timer = setTimeout(() => resolve('timeout'), 20_000); });
  const outcome = await Promise.race([child.exited, timeout]);
  clearTimeout(timer);
  if (outcome !== 'timeout') return { forced: false, ...outcome };
  child.kill('SIGKILL');
  await child.exited;
  return { forced: true };
}

/**
 * Launches chromium with a 1440×1000 page whose JavaScript errors are
 * collected in `pageErrors`. The caller closes `browser`.
 */
export async function openBrowser() {
  const browser = await chromium.launch({ executablePath: CHROMIUM, args: CHROMIUM_ARGS });
  try {
    const context = await browser.newContext({ viewport: { width: 1440, height: 1000 } });
    const page = await context.newPage();
    const pageErrors = [];
    page.on('pageerror', (error) => pageErrors.push(error.message));
    return { browser, context, page, pageErrors };
  } catch (error) {
    await browser.close().catch(() => {});
    throw error;
  }
}

/**
 * The demo arms a run of its own image: stops it (so that the arm form is
 * offered), opens the dashboard at `url` and waits for the form. Resolves
 * with the run the demo had armed, as the API gave it.
 */
export async function stopTheDemosRunAndOpenTheForm(page, url) {
  const api = (p) => `${url}api/v1${p}`;
  const first = (await (await page.request.get(api('/station'))).json()).run;
  assert.ok(first && first.armed, 'the demo arms a run');
  const stop = await page.request.post(api('/runs/current/stop'), { data: {} });
  assert.ok(stop.ok(), `stop: ${stop.status()} ${await stop.text()}`);
  await page.goto(url);
  await page.locator('#arm-form').waitFor({ state: 'visible', timeout: 30_000 });
  return first;
}

/**
 * One browser test's frame: checks the programs (`needs`: more [file, hint]
 * pairs), makes a work directory (`work`, with the data directory `dataDir`
 * inside it, not created), lets `prepare({ work, dataDir })` make its files
 * (what it returns is `prepared`), starts the demo with `args`, opens a
 * browser and runs `body({ child, url, api, browser, context, page,
 * pageErrors, work, dataDir, prepared })`. A failure saves
 * `<name>-failure.png` and adds the demo's last output to the error. Always closes the browser, stops the
 * demo (a frozen one is continued first; one killed by the test is left
 * dead), removes `work`; then asserts no JavaScript error on the page and
 * that the demo stopped on SIGTERM.
 */
export async function withDashboard({ name, args = [], needs = [], prepare }, body) {
  requireExecutable(BIN, 'build it with `cargo build -p flashrack-cli` or set FLASHRACK_BIN');
  requireExecutable(CHROMIUM, 'install it with `apt-get install -y chromium` or set CHROMIUM_PATH');
  for (const [file, hint] of needs) requireExecutable(file, hint);
  mkdirSync(ARTIFACTS, { recursive: true });
  const work = mkdtempSync(path.join(tmpdir(), `flashrack-e2e-${name}-`));
  const dataDir = path.join(work, 'data');
  let child;
  let browser;
  let context;
  let page;
  let pageErrors = [];
  let stopped = { forced: false };
  try {
    const prepared = prepare ? await prepare({ work, dataDir }) : undefined;
    const demo = startDemo(dataDir, args);
    child = demo.child;
    const url = await demo.url;
    ({ browser, context, page, pageErrors } = await openBrowser());
    const api = (p) => `${url}api/v1${p}`;
    await body({ child, url, api, browser, context, page, pageErrors, work, dataDir, prepared });
  } catch (error) {
    if (page) await page.screenshot({ path: path.join(ARTIFACTS, `${name}-failure.png`), fullPage: true }).catch(() => {});
    if (child) {
      const status = child.exitCode !== null || child.signalCode !== null
        ? `the demo has exited (code ${child.exitCode}, signal ${child.signalCode})` : 'the demo is still running';
      error.message += `\n--- ${status}; its last output:\n${child.log()}`;
    }
    throw error;
  } finally {
    if (browser) await browser.close().catch(() => {});
    if (child) {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGCONT');
      stopped = await stopDemo(child);
    }
    rmSync(work, { recursive: true, force: true });
  }
  assert.deepEqual(pageErrors, [], 'no JavaScript errors on the page');
  assert.equal(stopped.forced, false, 'the demo stops on SIGTERM');
}
