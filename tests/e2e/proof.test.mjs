// What a pass proves, on the dashboard, against `flashrack demo` in Debian's
// chromium: a stick shown `resetting` while it is away in its reset (the
// capacity probe's, or the one before the read-back) and the cache-hidden
// fake's real size; "Retry all failed" (the write-error stick written again,
// the fake and the others not); a sampled run's passes (`sampled (5 %)`, never
// a plain pass); an audit run (the run says audit, its passes say audit).
//
//   cargo build -p flashrack-cli && npm ci --prefix tests/e2e
//   FLASHRACK_BIN=$PWD/target/debug/flashrack node --test tests/e2e/proof.test.mjs
//
// Screenshots go to tests/e2e/artifacts/proof-*.png.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import path from 'node:path';

import { ARTIFACTS, withDashboard } from './demo.mjs';

/** The station's snapshot, from the API. */
async function station(page, url) {
  const response = await page.request.get(`${url}api/v1/station`);
  assert.equal(response.status(), 200);
  return response.json();
}

/** Stops the armed run through the dashboard, confirming if asked. */
async function stopRun(page) {
  const accept = async (dialog) => { await dialog.accept(); };
  page.on('dialog', accept);
  await page.click('#stop-button');
  await page.waitForFunction(() => /stopped/i.test(document.querySelector('#run-state')?.textContent || ''),
    null, { timeout: 20_000 });
  page.off('dialog', accept);
}

/** Arms a run through the dashboard's form; resolves with its id. */
async function armRun(page, url, { mode = 'write', sample = '' } = {}) {
  const before = (await station(page, url)).run?.id;
  await page.waitForFunction(() => document.querySelector('#arm-image option[value]:not([value=""])'), null, { timeout: 15_000 });
  await page.selectOption('#arm-image', { index: 0 });
  await page.selectOption('#arm-mode', mode);
  await page.fill('#arm-sample', sample);
  await page.click('#arm-button');
  await page.waitForFunction(() => /^(?!.*stopped).*\barmed\b/i.test(document.querySelector('#run-state')?.textContent || ''),
    null, { timeout: 20_000 });
  const run = (await station(page, url)).run;
  assert.ok(run.armed && run.id !== before, `a new run is armed: ${JSON.stringify(run)}`);
  return run.id;
}

/** Polls `check` (every 250 ms, at most 60 s) until it gives something. */
async function until(check, what) {
  const deadline = Date.now() + 60_000;
  for (;;) {
    const value = await check();
    if (value) return value;
    if (Date.now() > deadline) assert.fail(`never: ${what}`);
    await new Promise((resolve) => { setTimeout(resolve, 250); });
  }
}

const tileText = (page, label) => page.locator(`.tile[data-label="${label}"]`).textContent();

test('the dashboard shows resets, retries, sampled and audit passes for what they are', { timeout: 300_000 }, () => withDashboard({ name: 'proof' }, async ({ url, page }) => {
  await page.goto(url);
  await page.locator('.tile[data-state][data-label]').first().waitFor({ timeout: 15_000 });
  const firstRun = (await station(page, url)).run.id;

  // ----- a stick away in its reset -------------------------------------
  // The demo's sticks are reset by their capacity probe and before their
  // read-back, and are away for 0.6 s each time: the tile says so.
  const resetting = page.locator('.tile[data-state="resetting"]').first();
  await resetting.waitFor({ timeout: 60_000 });
  const label = await resetting.getAttribute('data-label');
  const shown = await resetting.locator('.tile-state').textContent().catch(() => '');
  assert.match(shown, /resetting/i, `${label} says it is resetting: ${shown}`);
  await page.screenshot({ path: path.join(ARTIFACTS, 'proof-resetting.png'), fullPage: true });
  // The stick came back and its attempt went on: one attempt, no removal.
  await page.waitForFunction((l) => {
    const tile = document.querySelector(`.tile[data-label="${l}"]`);
    return tile && ['writing', 'flushing', 'verifying', 'passed', 'failed'].includes(tile.dataset.state);
  }, label, { timeout: 30_000 });
  assert.doesNotMatch(await tileText(page, label), /removed/i, `${label} was not taken for a pulled stick`);

  // The counterfeit hiding its lie behind a cache (the demo's 7th stick):
  // the probe's resets give its exact real size.
  const fake = page.locator('.tile[data-state="failed"]', { hasText: /fake capacity/i }).first();
  await fake.waitFor({ timeout: 90_000 });
  const fakeText = await fake.locator('.reason').textContent();
  assert.match(fakeText, /fake capacity: claims 34\.4 GB but stores only 67\.1 MB \(67108864 bytes\)/, fakeText);
  const fakeLabel = await fake.getAttribute('data-label');

  // ----- "Retry all failed" ---------------------------------------------
  // The demo's 5th stick fails with a write error a third of the way in.
  const writeError = page.locator('.tile[data-state="failed"]', { hasText: /write error at/i }).first();
  await writeError.waitFor({ timeout: 90_000 });
  const retryLabel = await writeError.getAttribute('data-label');
  const before = await station(page, url);
  const attemptOf = (snapshot, l) => snapshot.ports.find((p) => p.label === l)?.attempt_id;
  const [answer] = await Promise.all([
    page.waitForResponse((r) => r.url().endsWith('/api/v1/runs/current/retry-failed')),
    page.click('#retry-button'),
  ]);
  assert.equal(answer.status(), 200, await answer.text());
  const retried = (await answer.json()).ports;
  assert.ok(retried.includes(retryLabel), `${retryLabel} retried: ${JSON.stringify(retried)}`);
  // Only write errors, flush errors and stalls are written again.
  for (const port of before.ports) {
    const reason = port.verdict && port.verdict.verdict === 'fail' ? port.verdict.reason : null;
    if (reason && !['write_error', 'flush_error', 'stalled', 'probe_error'].includes(reason)) {
      assert.ok(!retried.includes(port.label), `${port.label} (${reason}) is never retried`);
    }
  }
  assert.ok(!retried.includes(fakeLabel), 'the fake is never retried');
  await page.locator('#message', { hasText: new RegExp(`Retrying .*${retryLabel}`) }).waitFor({ timeout: 5_000 });
  // The write-error stick has an attempt of its own, and fails again.
  const old = attemptOf(before, retryLabel);
  const port = await until(async () => {
    const p = (await station(page, url)).ports.find((x) => x.label === retryLabel);
    return p && p.attempt_id !== old && p.state === 'failed' ? p : null;
  }, `${retryLabel} written again as an attempt of its own, and failed again`);
  assert.ok(port.verdict.reason, JSON.stringify(port));
  assert.equal(await page.locator(`.tile[data-label="${retryLabel}"]`).getAttribute('data-state'), 'failed');
  await page.screenshot({ path: path.join(ARTIFACTS, 'proof-retried.png'), fullPage: true });

  // ----- a sampled run ---------------------------------------------------
  await stopRun(page);
  const sampledRun = await armRun(page, url, { sample: '5' });
  assert.notEqual(sampledRun, firstRun);
  assert.match(await page.locator('#run-view').textContent(), /sampled \(5 %\)/, 'the run says it samples');
  const sampledPass = page.locator(`.tile[data-state="passed"][data-verdict-run="${sampledRun}"]`).first();
  await sampledPass.waitFor({ timeout: 120_000 });
  // Every pass of this run says it was sampled; none is a plain pass.
  const passes = await page.locator(`.tile[data-state="passed"][data-verdict-run="${sampledRun}"] .tile-state`).allTextContents();
  assert.ok(passes.length > 0);
  for (const text of passes) assert.match(text, /sampled \(5 %\)/i, `a sampled pass says so: ${text}`);
  const sampledLabel = await sampledPass.getAttribute('data-label');
  assert.match(await tileText(page, sampledLabel), /sampled \(5 %\)/i);
  await page.screenshot({ path: path.join(ARTIFACTS, 'proof-sampled.png'), fullPage: true });

  // ----- an audit run ----------------------------------------------------
  // The sticks still in their ports (written by the sampled run) are read
  // back and compared, nothing written.
  await page.locator(`.tile[data-state="passed"][data-verdict-run="${sampledRun}"]`).nth(1).waitFor({ timeout: 120_000 });
  await stopRun(page);
  const auditRun = await armRun(page, url, { mode: 'audit' });
  const run = (await station(page, url)).run;
  assert.equal(run.options.audit, true, JSON.stringify(run.options));
  assert.match(await page.locator('#run-view').textContent(), /audit \(nothing written\)/, 'the run says it audits');
  const auditPass = page.locator(`.tile[data-state="passed"][data-verdict-run="${auditRun}"]`).first();
  await auditPass.waitFor({ timeout: 120_000 });
  assert.match(await auditPass.locator('.tile-state').textContent(), /audit pass/i);
  assert.match(await auditPass.textContent(), /nothing written/i);
  const auditLabel = await auditPass.getAttribute('data-label');
  const audited = (await station(page, url)).ports.find((p) => p.label === auditLabel);
  assert.equal(audited.figures.verify_method, 'audit', JSON.stringify(audited.figures));
  await page.screenshot({ path: path.join(ARTIFACTS, 'proof-audit.png'), fullPage: true });
}));
