// End-to-end test of the dashboard against `flashrack demo`, in Debian's chromium.
//
//   cargo build --release -p flashrack-cli
//   npm ci --prefix tests/e2e
//   node --test tests/e2e/
//
// Environment: FLASHRACK_BIN (default target/release/flashrack), CHROMIUM_PATH
// (default /usr/bin/chromium). Screenshots go to tests/e2e/artifacts/.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import path from 'node:path';

import { ARTIFACTS, ROOT, withDashboard } from './demo.mjs';

/** RFC 4180 rows (quoted fields, doubled quotes). */
function parseCsv(text) {
  const rows = [];
  let row = [];
  let field = '';
  let quoted = false;
  for (let i = 0; i < text.length; i += 1) {
    const c = text[i];
    if (quoted) {
      if (c === '"' && text[i + 1] === '"') { field += '"'; i += 1; }
      else if (c === '"') quoted = false;
      else field += c;
    } else if (c === '"') quoted = true;
    else if (c === ',') { row.push(field); field = ''; }
    else if (c === '\n' || c === '\r') {
      if (c === '\r' && text[i + 1] === '\n') i += 1;
      row.push(field); rows.push(row); row = []; field = '';
    } else field += c;
  }
  if (field || row.length) { row.push(field); rows.push(row); }
  return rows;
}

const runStateText = (page) => page.locator('#run-state').textContent();

/** Waits for a stick that will still be writing for a while (ETA of 5 s or more). */
async function waitForLongWrite(page) {
  await page.waitForFunction(() => [...document.querySelectorAll('.tile[data-state="writing"] .progress-text')]
    .some((node) => {
      const eta = /ETA (?:(\d+):)?(\d+):(\d\d)/.exec(node.textContent || '');
      if (!eta) return false;
      const secs = Number(eta[1] || 0) * 3600 + Number(eta[2]) * 60 + Number(eta[3]);
      return secs >= 5;
    }), null, { timeout: 120_000, polling: 200 });
}

/** Clicks "Stop run", answering the confirmation (if one is asked) with `accept`; returns its text. */
async function clickStop(page, accept) {
  let asked = null;
  const answer = async (dialog) => {
    asked = dialog.message();
    if (accept) await dialog.accept(); else await dialog.dismiss();
  };
  page.once('dialog', answer);
  await page.click('#stop-button');
  // The dialog (if any) is answered before click() returns; drop the handler otherwise.
  page.off('dialog', answer);
  return asked;
}

/** The state of every tile that claims something live, for assertions. */
const liveClaims = (page) => page.evaluate(() => [...document.querySelectorAll('.tile')]
  .map((tile) => ({ label: tile.dataset.label, text: tile.textContent || '', progress: tile.querySelectorAll('.progress, [role="progressbar"]').length }))
  .filter((tile) => tile.progress > 0 || /ETA|\d+\s?%/.test(tile.text)));

async function waitForRunState(page, pattern, what) {
  await page.waitForFunction(
    ([source, flags]) => new RegExp(source, flags).test(document.querySelector('#run-state')?.textContent || ''),
    [pattern.source, pattern.flags],
    { timeout: 15_000 },
  ).catch(async () => assert.fail(`#run-state never said ${what}: ${JSON.stringify(await runStateText(page))}`));
}

test('the dashboard shows a live rack, stops and arms runs, and exports reports', { timeout: 300_000 }, () => withDashboard({ name: 'dashboard' }, async ({ url, browser, page, pageErrors }) => {
  // The run the demo armed by itself.
  const station = await (await page.request.get(`${url}api/v1/station`)).json();
  assert.ok(station.run && station.run.armed, 'the demo should arm a run');
  const firstRun = station.run.id;

  await page.goto(url);
  await page.locator('.tile[data-state][data-label]').first().waitFor({ timeout: 15_000 });
  await page.waitForFunction(() => /live/i.test(document.querySelector('#conn')?.textContent || ''), null, { timeout: 15_000 });

  // A pass and a failure with its reason, as the simulated sticks come and go.
  await page.waitForFunction(() => {
    const passed = document.querySelector('.tile[data-state="passed"]');
    const failed = [...document.querySelectorAll('.tile[data-state="failed"]')]
      .some((tile) => /error|mismatch|fake capacity|removed|stopped responding|too small|read-only|refused|cannot open|interrupted|flush/i
        .test(tile.querySelector('.reason')?.textContent || ''));
    return Boolean(passed) && failed;
  }, null, { timeout: 90_000, polling: 250 });
  const reasons = await page.locator('.tile[data-state="failed"] .reason').allTextContents();
  console.log(`failure reasons on screen: ${JSON.stringify(reasons)}`);
  const tiles = await page.locator('.tile').count();
  assert.equal(await page.locator('.tile[data-state][data-label]').count(), tiles, 'every tile has data-state and data-label');
  await page.screenshot({ path: path.join(ARTIFACTS, 'dashboard.png'), fullPage: true });

  // Every verdict on screen names its run and image.
  const origins = await page.locator('.tile .verdict .verdict-run').allTextContents();
  assert.ok(origins.length > 0, 'verdicts name their run');
  for (const origin of origins) assert.match(origin, new RegExp(`run #${firstRun} \\(`), 'a verdict of this run names it');

  // With the run armed, a stick with a verdict can be written again.
  await page.locator('.tile [data-action="again"]').first().waitFor({ timeout: 60_000 });

  // Stopping a run with sticks mid-write asks first; "cancel" keeps it armed.
  assert.match(await runStateText(page), /\barmed\b/i);
  await waitForLongWrite(page);
  const question = await clickStop(page, false);
  assert.match(question || '', /being written.*interrupt/is, `a confirmation is asked: ${question}`);
  const stillArmed = await (await page.request.get(`${url}api/v1/station`)).json();
  assert.ok(stillArmed.run.armed && stillArmed.run.id === firstRun, 'cancelled: the run is still armed');
  await waitForLongWrite(page);
  assert.ok(await clickStop(page, true), 'asked again, and confirmed');
  await waitForRunState(page, /stopped/i, '"stopped"');

  // No run armed: nothing offers to write or to stop.
  await page.waitForFunction(() => !document.querySelector('[data-action="again"]'), null, { timeout: 5_000 })
    .catch(() => assert.fail('"Write again" is still offered with no run armed'));
  assert.equal(await page.locator('#stop-button').isVisible(), false, 'no stop button without an armed run');
  assert.match(await page.locator('.counter-interrupted dt').textContent(), /interrupted/i);
  // Refusals are counted apart from failures, as in the records.
  assert.match(await page.locator('.counter-refused dt').textContent(), /refused/i);
  await page.screenshot({ path: path.join(ARTIFACTS, 'dashboard-stopped.png'), fullPage: true });

  // Arm a new one through the UI; it ejects every stick that passes.
  await page.waitForFunction(() => document.querySelector('#arm-image option[value]:not([value=""])'), null, { timeout: 15_000 });
  await page.selectOption('#arm-image', { index: 0 });
  await page.check('#arm-eject');
  await page.click('#arm-button');
  await waitForRunState(page, /^(?!.*stopped).*\barmed\b/i, '"armed"');
  const armedRun = await (await page.request.get(`${url}api/v1/station`)).json();
  assert.ok(armedRun.run.armed && armedRun.run.id !== firstRun, 'a new run is armed');
  // No tile passes off the first run's verdict as one of this run.
  const plainPasses = await page.evaluate((run) => [...document.querySelectorAll('.tile .verdict-pass')]
    .map((node) => node.closest('.tile'))
    .filter((tile) => tile.dataset.verdictRun !== String(run))
    .map((tile) => tile.dataset.label), armedRun.run.id);
  assert.deepEqual(plainPasses, [], 'every plain pass on screen is of the armed run');

  // The first run's CSV report, through its link.
  const link = page.locator(`#run-list [data-run-id="${firstRun}"] a.report-csv`);
  await link.waitFor({ timeout: 15_000 });
  const href = new URL(await link.getAttribute('href'), url).href;
  const response = await page.request.get(href);
  assert.equal(response.status(), 200, `GET ${href}: ${await response.text()}`);
  const rows = parseCsv(await response.text()).filter((row) => row.some((cell) => cell !== ''));
  const header = rows[0];
  for (const column of ['attempt_id', 'run_id', 'port_label', 'serial', 'verdict', 'reason_code']) {
    assert.ok(header.includes(column), `CSV header has ${column}: ${header.join(',')}`);
  }
  const verdicts = rows.slice(1).map((row) => row[header.indexOf('verdict')]);
  assert.ok(verdicts.includes('pass'), `the CSV has a pass row: ${verdicts.join(' ')}`);
  assert.ok(verdicts.includes('fail'), `the CSV has a fail row: ${verdicts.join(' ')}`);
  console.log(`run ${firstRun} CSV: ${rows.length - 1} attempts, ${verdicts.filter((v) => v === 'pass').length} pass, ${verdicts.filter((v) => v === 'fail').length} fail`);

  // The runs panel follows: the new run is listed, the first one stopped.
  await page.locator(`#run-list [data-run-id="${armedRun.run.id}"]`).waitFor({ timeout: 15_000 });
  await page.waitForTimeout(1000);
  await page.screenshot({ path: path.join(ARTIFACTS, 'dashboard-after.png'), fullPage: true });

  // A stick that passed (and was ejected) in this run, then a third run: the
  // ejected stick cannot be written again, and its port says its pass is of
  // the second run, not of the third.
  const second = armedRun.run.id;
  await page.locator(`.tile[data-state="passed"][data-verdict-run="${second}"] .badge-ejected`).first()
    .waitFor({ timeout: 90_000 });
  await clickStop(page, true);
  await waitForRunState(page, /stopped/i, '"stopped"');
  await page.uncheck('#arm-eject');
  await page.click('#arm-button');
  await waitForRunState(page, /^(?!.*stopped).*\barmed\b/i, '"armed"');
  const third = (await (await page.request.get(`${url}api/v1/station`)).json()).run.id;
  assert.ok(third !== second, 'a third run is armed');
  const foreign = page.locator(`.tile[data-state="passed"][data-verdict-run="${second}"]`).first();
  await foreign.waitFor({ timeout: 15_000 });
  assert.equal(await foreign.getAttribute('data-verdict-current'), 'false');
  assert.match(await foreign.locator('.tile-state').textContent(), new RegExp(`run #${second}: not this run`));
  assert.match(await foreign.locator('.verdict').textContent(), new RegExp(`passed in run #${second} \\(.+\\) — not this run`));
  assert.equal(await foreign.locator('.verdict-pass').count(), 0, 'no green pass for another run');
  assert.ok((await foreign.getAttribute('class')).includes('tile-foreign'), 'muted styling');
  await page.screenshot({ path: path.join(ARTIFACTS, 'dashboard-foreign.png'), fullPage: true });

  // A phone.
  const phone = await browser.newContext({ viewport: { width: 360, height: 800 }, deviceScaleFactor: 2, isMobile: true, hasTouch: true });
  const phonePage = await phone.newPage();
  phonePage.on('pageerror', (error) => pageErrors.push(error.message));
  await phonePage.goto(url);
  await phonePage.locator('.tile[data-state]').first().waitFor({ timeout: 15_000 });
  await phonePage.waitForTimeout(1500);
  const overflow = await phonePage.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
  assert.ok(overflow <= 0, `no sideways scrolling at 360 px (overflow ${overflow} px)`);
  await phonePage.screenshot({ path: path.join(ARTIFACTS, 'dashboard-phone.png') });
  await phonePage.screenshot({ path: path.join(ARTIFACTS, 'dashboard-phone-full.png'), fullPage: true });
}));

test('the dashboard says when its view is stale, and recovers with a fresh snapshot', { timeout: 240_000 }, () => withDashboard({ name: 'stale' }, async ({ child, url, page }) => {
  await page.goto(url);
  await page.waitForFunction(() => /live/i.test(document.querySelector('#conn')?.textContent || ''), null, { timeout: 15_000 });
  await waitForRunState(page, /\barmed\b/i, '"armed"');
  await waitForLongWrite(page);
  assert.equal(await page.locator('#stale-banner').isVisible(), false, 'no banner while live');

  // The station freezes (a hung process, or a network that drops packets):
  // the stream goes silent, without an error. The view turns stale.
  const frozenAt = Date.now();
  process.kill(child.pid, 'SIGSTOP');
  await page.locator('#stale-banner').waitFor({ state: 'visible', timeout: 30_000 });
  console.log(`stale banner ${Date.now() - frozenAt} ms after the station froze`);
  await assertStale(page, 'frozen');
  await page.screenshot({ path: path.join(ARTIFACTS, 'dashboard-stale.png'), fullPage: true });

  // It comes back: the stream reconnects with a fresh snapshot.
  process.kill(child.pid, 'SIGCONT');
  await page.locator('#stale-banner').waitFor({ state: 'hidden', timeout: 30_000 });
  await page.waitForFunction(() => /live/i.test(document.querySelector('#conn')?.textContent || ''), null, { timeout: 15_000 });
  await waitForRunState(page, /^(?!.*unknown).*\barmed\b/i, '"armed" again');
  await waitForLongWrite(page);

  // The station dies under the page.
  process.kill(child.pid, 'SIGKILL');
  await child.exited;
  await page.locator('#stale-banner').waitFor({ state: 'visible', timeout: 15_000 });
  await assertStale(page, 'killed');
  await page.screenshot({ path: path.join(ARTIFACTS, 'dashboard-killed.png'), fullPage: true });
}));

/**
 * The cases of flashrack's one size notation, bytes and text, as ByteSize's
 * tests read them (crates/core/src/byte_size_cases.txt).
 */
function byteSizeCases() {
  return readFileSync(path.join(ROOT, 'crates', 'core', 'src', 'byte_size_cases.txt'), 'utf8')
    .split('\n')
    .filter((line) => line && !line.startsWith('#'))
    .map((line) => {
      const [bytes, text] = line.split('\t');
      return { bytes: Number(bytes), text };
    });
}

test('the dashboard writes sizes as the command line and the reports do', { timeout: 120_000 }, () => withDashboard({ name: 'sizes' }, async ({ url, page }) => {
  const cases = byteSizeCases();
  assert.ok(cases.length > 20, 'the cases file is read');
  await page.goto(url);
  // The page's own fmtBytes, as the dashboard served by the binary has it.
  const shown = await page.evaluate((all) => all.map(({ bytes }) => window.flashrackFormat.fmtBytes(bytes)), cases);
  assert.deepEqual(
    cases.map(({ bytes }, i) => `${bytes}\t${shown[i]}`),
    cases.map(({ bytes, text }) => `${bytes}\t${text}`),
  );
  const exact = await page.evaluate(() => [512, 256000000001].map((n) => window.flashrackFormat.fmtBytesExact(n)));
  assert.deepEqual(exact, ['512 bytes', '256 GB (256000000001 bytes)'], 'as ByteSize::exact');
}));

/** The banner says since when; no tile claims live progress; the run is not "Armed". */
async function assertStale(page, what) {
  const banner = await page.locator('#stale-banner').textContent();
  assert.match(banner, /stale since \d\d:\d\d:\d\d/, `${what}: the banner says since when: ${banner}`);
  assert.deepEqual(await liveClaims(page), [], `${what}: no tile claims live progress`);
  const run = await runStateText(page);
  assert.match(run, /unknown/i, `${what}: the run state is unknown: ${run}`);
  assert.doesNotMatch(run, /^\W*armed/i, `${what}: no "Armed": ${run}`);
  assert.ok(await page.locator('body.stale').count(), `${what}: tiles greyed`);
  assert.equal(await page.locator('[data-action="again"]').count(), 0, `${what}: no controls that cannot work`);
  assert.equal(await page.locator('#stop-button').isVisible(), false, `${what}: no stop button`);
}
