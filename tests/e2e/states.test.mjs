// The dashboard never shows a stale or impossible state (issue 10 §3), in
// Debian's chromium against `flashrack demo --by-hand`: the test plugs and
// pulls each stick itself, so every state is reached when the test wants it,
// not when a scripted operator happens to get there.
//
//   cargo build -p flashrack-cli && npm ci --prefix tests/e2e
//   FLASHRACK_BIN=$PWD/target/debug/flashrack node --test tests/e2e/states.test.mjs

import { test } from 'node:test';
import assert from 'node:assert/strict';
import path from 'node:path';

import { ARTIFACTS, withDashboard } from './demo.mjs';

/** What a tile says: its state, its verdict's words, its device line. */
const tile = (page, label) => page.evaluate((l) => {
  const node = document.querySelector(`.tile[data-label="${l}"]`);
  if (!node) return null;
  return {
    state: node.dataset.state,
    head: node.querySelector('.tile-state')?.textContent || '',
    verdict: node.querySelector('.verdict')?.textContent || '',
    device: node.querySelector('.device')?.textContent || '',
    text: node.textContent || '',
    verdictRun: node.dataset.verdictRun || null,
  };
}, label);

/**
 * Waits until the tile of `label` is in `want.state` (if given) and its text
 * matches `want.text` (a RegExp, if given).
 */
async function untilTile(page, label, what, want) {
  const text = want.text ? [want.text.source, want.text.flags] : null;
  await page.waitForFunction(([l, state, re]) => {
    const node = document.querySelector(`.tile[data-label="${l}"]`);
    if (!node) return false;
    return (!state || node.dataset.state === state)
      && (!re || new RegExp(re[0], re[1]).test(node.textContent || ''));
  }, [label, want.state || null, text], { timeout: 60_000, polling: 100 })
    .catch(async () => assert.fail(`${label} never ${what}: ${JSON.stringify(await tile(page, label))}`));
}

/** Clicks "Stop run", accepting the confirmation if one is asked; returns its text. */
async function stopRun(page) {
  let asked = null;
  const answer = async (dialog) => { asked = dialog.message(); await dialog.accept(); };
  page.once('dialog', answer);
  await page.click('#stop-button');
  page.off('dialog', answer);
  await page.waitForFunction(() => /stopped/i.test(document.querySelector('#run-state')?.textContent || ''), null, { timeout: 15_000 });
  return asked;
}

/** Arms a run of the demo image from the arm form, with an optional target count; its id. */
async function armRun(page, url, target) {
  await page.waitForFunction(() => document.querySelector('#arm-image option[value]:not([value=""])'), null, { timeout: 15_000 });
  await page.selectOption('#arm-image', { index: 0 });
  await page.fill('#arm-target', target == null ? '' : String(target));
  await page.click('#arm-button');
  await page.waitForFunction(() => /^(?!.*stopped).*\barmed\b/i.test(document.querySelector('#run-state')?.textContent || ''), null, { timeout: 15_000 });
  const station = await (await page.request.get(`${url}api/v1/station`)).json();
  assert.ok(station.run && station.run.armed, 'a run is armed');
  return station.run.id;
}

/** A number from the page's /metrics for this station's current run. */
function metric(text, name) {
  const line = text.split('\n').find((l) => l.startsWith(`${name}{`));
  assert.ok(line, `/metrics has ${name}`);
  return Number(line.split(' ').pop());
}

/** No value the page failed to have is shown as text ("null", "undefined", "NaN"). */
async function assertNothingImpossible(page, when) {
  const text = await page.locator('body').innerText();
  const bad = text.split('\n').filter((line) => /\b(null|undefined|NaN)\b/.test(line));
  assert.deepEqual(bad, [], `${when}: the page shows a missing value`);
}

const plug = async (child, line) => {
  const answer = await child.command(`plug ${line}`);
  assert.match(answer, /^plugged /, `plug ${line}`);
};
const pull = async (child, port) => {
  const answer = await child.command(`pull ${port}`);
  assert.match(answer, /^pulled /, `pull ${port}`);
};

test('a pulled stick keeps its removed verdict until the next one, counters agree everywhere, and a target count never overshoots', { timeout: 300_000 }, () => withDashboard({ name: 'states', args: ['--by-hand', '--no-arm', '--ports', '16', '--image-size', '32MiB'] }, async ({ child, url, page }) => {
  await page.goto(url);
  await page.waitForFunction(() => /live/i.test(document.querySelector('#conn')?.textContent || ''), null, { timeout: 15_000 });

  // With no run armed, a stick is shown and never written, and nothing offers to write it.
  await plug(child, 'A2 idle');
  await untilTile(page, 'A2', 'showed the idle stick', { state: 'detected' });
  assert.equal(await page.locator('[data-action="again"]').count(), 0, 'no "Write again" without a run');
  assert.equal(await page.locator('#stop-button').isVisible(), false, 'no "Stop run" without a run');
  await pull(child, 'A2');

  // Run 1: a stick pulled mid-write.
  const first = await armRun(page, url, null);
  await plug(child, 'A1 pulled:write=2MB');
  await untilTile(page, 'A1', 'was writing', { state: 'writing', text: /\d+\s?%/ });
  await pull(child, 'A1');
  await untilTile(page, 'A1', 'showed the removed verdict', { state: 'failed', text: /removed during writing/ });
  let a1 = await tile(page, 'A1');
  assert.match(a1.device, /stick removed/, JSON.stringify(a1));
  assert.equal(a1.verdictRun, String(first), 'the verdict names its run');
  // Other sticks come and go (a pass, a refusal); A1 keeps saying what happened to its stick.
  await plug(child, 'A2 good');
  await untilTile(page, 'A2', 'passed', { state: 'passed' });
  await plug(child, 'A3 tiny:capacity=1MiB');
  await untilTile(page, 'A3', 'was refused', { state: 'refused' });
  a1 = await tile(page, 'A1');
  assert.equal(a1.state, 'failed', JSON.stringify(a1));
  assert.match(a1.verdict, /removed during writing/, JSON.stringify(a1));
  // The next stick in A1 replaces it.
  await plug(child, 'A1 next');
  await untilTile(page, 'A1', 'passed with the next stick', { state: 'passed' });
  a1 = await tile(page, 'A1');
  assert.doesNotMatch(a1.text, /removed/, JSON.stringify(a1));
  // A stick mid-write when the run is stopped: asked first, then interrupted (not failed).
  await plug(child, 'A4 cut:write=1MB');
  await untilTile(page, 'A4', 'was writing', { state: 'writing' });
  const question = await stopRun(page);
  assert.match(question || '', /A4.*interrupt|interrupt.*A4/is, `the stop asks first: ${question}`);
  await untilTile(page, 'A4', 'was interrupted', { text: /interrupted/i });

  // Run 1's counts agree everywhere: 2 passed, 1 failed (the pull), 1 refused, 1 interrupted.
  const want = { passed: 2, failed: 1, refused: 1, interrupted: 1 };
  const report = await (await page.request.get(`${url}api/v1/runs/${first}/report?format=json`)).json();
  assert.deepEqual(
    Object.fromEntries(Object.keys(want).map((k) => [k, report.run[k]])), want,
    `the run's report: ${JSON.stringify(report.run)}`,
  );
  const metrics = await (await page.request.get(`${url}metrics`)).text();
  assert.deepEqual(
    Object.fromEntries(Object.keys(want).map((k) => [k, metric(metrics, `flashrack_run_${k}`)])), want, '/metrics',
  );
  await page.waitForFunction((w) => Object.entries(w)
    .every(([k, v]) => Number(document.querySelector(`#run-view .counter-${k} dd`)?.textContent) === v), want, { timeout: 15_000 })
    .catch(async () => assert.fail(`the run panel: ${await page.locator('#run-view .counters').textContent()}`));
  const top = await page.locator('#rack-summary').textContent();
  assert.match(top, new RegExp(`run #${first} stopped: 2 passed, 1 failed, 1 refused, 1 interrupted`), `the top bar: ${top}`);
  const row = page.locator(`#run-list [data-run-id="${first}"]`);
  await page.waitForFunction((id) => /2 passed, 1 failed, 1 refused, 1 interrupted/
    .test(document.querySelector(`#run-list [data-run-id="${id}"]`)?.textContent || ''), first, { timeout: 15_000 })
    .catch(async () => assert.fail(`the runs list: ${await row.textContent()}`));
  // The devices' latest verdicts follow the records, the interruption included.
  const devices = { cut: /interrupted in A4/, pulled: /fail in A1 \(removed\)/, next: /pass in A1/, good: /pass in A2/ };
  await page.waitForFunction((want) => Object.entries(want).every(([key, [source, flags]]) => new RegExp(source, flags)
    .test(document.querySelector(`#device-list [data-device-key="${key}"]`)?.textContent || '')),
  Object.fromEntries(Object.entries(devices).map(([k, re]) => [k, [re.source, re.flags]])), { timeout: 15_000 })
    .catch(async () => assert.fail(`the devices list: ${await page.locator('#device-list').textContent()}`));
  await assertNothingImpossible(page, 'run 1 stopped');
  await page.screenshot({ path: path.join(ARTIFACTS, 'states-run1.png'), fullPage: true });
  for (const port of ['A1', 'A2', 'A3', 'A4']) await pull(child, port);

  // Run 2: stop after 2 passes. Two slow sticks in flight reach it: a third waits, shown as such.
  const second = await armRun(page, url, 2);
  // Its row in the runs list, before any stick: no attempt running.
  await page.waitForFunction((id) => /0 passed, 0 failed · (?!.*running)/
    .test(document.querySelector(`#run-list [data-run-id="${id}"]`)?.textContent || ''), second, { timeout: 15_000 })
    .catch(async () => assert.fail(`the runs list before any stick: ${await page.locator('#run-list').textContent()}`));
  await plug(child, 'B1 slow1:write=1MB');
  await plug(child, 'B2 slow2:write=1MB');
  await untilTile(page, 'B1', 'was writing', { state: 'writing' });
  await untilTile(page, 'B2', 'was writing', { state: 'writing' });
  // The runs list follows the records while sticks run, not only at verdicts.
  await page.waitForFunction((id) => /0 passed, 0 failed, 2 running/
    .test(document.querySelector(`#run-list [data-run-id="${id}"]`)?.textContent || ''), second, { timeout: 15_000 })
    .catch(async () => assert.fail(`the runs list while two sticks write: ${await page.locator(`#run-list [data-run-id="${second}"]`).textContent()}`));
  await plug(child, 'B3 third');
  await untilTile(page, 'B3', 'waited', { state: 'waiting', text: /waiting: target nearly reached/ });
  await assertNothingImpossible(page, 'sticks waiting');
  await page.screenshot({ path: path.join(ARTIFACTS, 'states-waiting.png'), fullPage: true });
  // One in flight fails (pulled): the waiting stick starts, and passes.
  await pull(child, 'B2');
  await untilTile(page, 'B3', 'passed once B2 failed', { state: 'passed' });
  // 1 pass + 1 in flight: a fourth stick waits too.
  await plug(child, 'B4 fourth');
  await untilTile(page, 'B4', 'waited', { state: 'waiting' });
  // B1 passes: the target is reached, the run stops by itself, B4 is never written.
  await page.waitForFunction(() => /stopped/i.test(document.querySelector('#run-state')?.textContent || ''), null, { timeout: 120_000 });
  const run2 = await (await page.request.get(`${url}api/v1/runs/${second}/report?format=json`)).json();
  assert.equal(run2.run.passed, 2, `exactly the target: ${JSON.stringify(run2.run)}`);
  assert.equal(run2.run.failed, 1, JSON.stringify(run2.run));
  assert.ok(!run2.attempts.some((a) => a.port_label === 'B4'), `B4 was never written: ${JSON.stringify(run2.attempts.map((a) => a.port_label))}`);
  const b4 = await tile(page, 'B4');
  assert.notEqual(b4.state, 'writing', JSON.stringify(b4));
  assert.doesNotMatch(b4.text, /waiting: target nearly reached/, `no run, nothing waits: ${JSON.stringify(b4)}`);
  await page.waitForFunction(() => !document.querySelector('[data-action="again"]'), null, { timeout: 5_000 })
    .catch(() => assert.fail('"Write again" is still offered with no run armed'));
  await page.screenshot({ path: path.join(ARTIFACTS, 'states-target.png'), fullPage: true });
}));

test('a stick with the serial of a pass is neither written nor shown passed until the operator asks', { timeout: 180_000 }, () => withDashboard({ name: 'states-serial', args: ['--by-hand', '--no-arm', '--ports', '4', '--image-size', '8MiB'] }, async ({ child, url, page }) => {
  await page.goto(url);
  await page.waitForFunction(() => /live/i.test(document.querySelector('#conn')?.textContent || ''), null, { timeout: 15_000 });
  await armRun(page, url, null);
  await plug(child, 'A1 SAME-1');
  await untilTile(page, 'A1', 'passed', { state: 'passed' });
  const first = await (await page.request.get(`${url}api/v1/ports/A1`)).json();
  await pull(child, 'A1');
  // Another stick showing the same serial (or the same one, put in again):
  // detected, naming the earlier pass, never "passed" (it was shown passed
  // with nothing of it read).
  await plug(child, 'A2 SAME-1');
  await untilTile(page, 'A2', 'named the earlier pass', { state: 'detected', text: /passed in this run \(attempt \d+\)/ });
  const a2 = await (await page.request.get(`${url}api/v1/ports/A2`)).json();
  assert.equal(a2.passed_before, first.attempt_id, JSON.stringify(a2));
  assert.equal(a2.verdict, null, JSON.stringify(a2));
  await page.screenshot({ path: path.join(ARTIFACTS, 'states-passed-before.png'), fullPage: true });
  // The operator asks: written and verified, a pass of its own.
  await page.click('.tile[data-label="A2"] [data-action="again"]');
  await untilTile(page, 'A2', 'passed once written', { state: 'passed' });
  const written = await (await page.request.get(`${url}api/v1/ports/A2`)).json();
  assert.notEqual(written.attempt_id, first.attempt_id, JSON.stringify(written));
  assert.equal(written.passed_before, undefined, JSON.stringify(written));
}));
