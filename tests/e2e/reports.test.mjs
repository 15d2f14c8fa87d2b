// The QA side of the dashboard against `flashrack demo`, in Debian's chromium:
// the arm form's operator and lot (checked as the API checks them, and printed
// on the run's reports), and the run's label sheet, whose QR codes are read
// back from a screenshot by zbarimg (Debian's zbar-tools).

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import path from 'node:path';

import {
  ARTIFACTS, stopTheDemosRunAndOpenTheForm, withDashboard,
} from './demo.mjs';

const ZBARIMG = process.env.ZBARIMG_PATH || '/usr/bin/zbarimg';

test('the arm form records the operator and lot, and the label sheet scans back to the records', { timeout: 300_000 }, () => withDashboard({
  name: 'reports',
  needs: [[ZBARIMG, 'install it with `apt-get install -y zbar-tools` or set ZBARIMG_PATH']],
}, async ({ url, api, context, page }) => {
  // The demo arms a run by itself: stop it, so that the form is offered.
  const first = await stopTheDemosRunAndOpenTheForm(page, url);
  await page.waitForFunction(() => document.querySelector('#arm-image option[value]:not([value=""])'), null, { timeout: 15_000 });
  await page.selectOption('#arm-image', { index: 0 });

  // An operator name with a control character is refused in the form, as
  // the API refuses it: nothing is armed.
  await page.fill('#arm-operator', 'Grace\tHopper');
  await page.fill('#arm-lot', 'LOT-E2E-1');
  await page.click('#arm-button');
  await page.waitForFunction(() => /Operator must be at most 100 characters, without control characters/
    .test(document.querySelector('#arm-status')?.textContent || ''), null, { timeout: 5_000 })
    .catch(async () => assert.fail(`no refusal shown: ${await page.locator('#arm-status').textContent()}`));
  const notArmed = (await (await page.request.get(api('/station'))).json()).run;
  assert.ok(!notArmed || !notArmed.armed, 'a refused form arms nothing');
  // The API says the same about the same value.
  const refused = await page.request.post(api('/runs'), { data: { image: first.image_sha256, operator: 'Grace\tHopper' } });
  assert.equal(refused.status(), 400, 'the API refuses a control character too');

  // Given properly, both are kept with the run and shown in the run panel.
  await page.fill('#arm-operator', '  Grace Hopper ');
  await page.click('#arm-button');
  await page.waitForFunction(() => /operator: Grace Hopper · lot: LOT-E2E-1/
    .test(document.querySelector('#run-view .run-who')?.textContent || ''), null, { timeout: 15_000 })
    .catch(async () => assert.fail(`the run panel does not name them: ${await page.locator('#run-view').textContent()}`));
  const run = (await (await page.request.get(api('/station'))).json()).run;
  assert.ok(run.armed && run.id !== first.id, 'a new run is armed');
  assert.equal(run.options.operator, 'Grace Hopper');
  assert.equal(run.options.lot, 'LOT-E2E-1');
  await page.screenshot({ path: path.join(ARTIFACTS, 'reports-armed.png'), fullPage: true });

  // Two passes in this run (the run panel's counter, live), then stop it.
  await page.waitForFunction(() => Number(document.querySelector('#run-view .counter-passed dd')?.textContent) >= 2,
    null, { timeout: 150_000, polling: 250 })
    .catch(async () => assert.fail(`no two passes in run ${run.id}: ${await page.locator('#run-view').textContent()}`));
  const runJson = async () => (await (await page.request.get(api(`/runs/${run.id}/report?format=json`))).json());
  let report;
  await page.request.post(api('/runs/current/stop'), { data: {} });
  report = await runJson();
  assert.equal(report.format, 'flashrack-report/12');
  assert.equal(report.run.operator, 'Grace Hopper');
  assert.equal(report.run.lot, 'LOT-E2E-1');
  assert.ok(report.run.image_source && report.run.image_source.file_name, `the image's source: ${JSON.stringify(report.run.image_source)}`);
  const passes = report.attempts.filter((row) => row.verdict === 'pass');

  // The run's label sheet, through its link in the runs panel.
  const link = page.locator(`#run-list [data-run-id="${run.id}"] a.report-labels`);
  await link.waitFor({ timeout: 15_000 });
  const [sheet] = await Promise.all([context.waitForEvent('page'), link.click()]);
  await sheet.waitForLoadState('load');
  assert.equal(await sheet.locator('.label').count(), passes.length, 'a label per pass');
  for (const row of passes) {
    const label = sheet.locator('.label', { hasText: row.serial });
    assert.equal(await label.count(), 1, `a label for ${row.serial}`);
    assert.match(await label.textContent(), new RegExp(`PASS · ${row.port_label}`));
  }
  await sheet.setViewportSize({ width: 1000, height: 300 + 160 * Math.ceil(passes.length / 3) });
  const png = path.join(ARTIFACTS, 'labels.png');
  await sheet.screenshot({ path: png, fullPage: true, scale: 'device' });
  const scanned = execFileSync(ZBARIMG, ['--raw', '-q', '-Sdisable', '-Sqrcode.enable', png], { encoding: 'utf8' })
    .split('\n').filter(Boolean).sort();
  const expected = passes.map((row) => `flashrack:${row.station_id}/run/${row.run_id}/attempt/${row.attempt_id}`
    + `?serial=${encodeURIComponent(row.serial).replace(/[!'()*]/g, (c) => `%${c.charCodeAt(0).toString(16).toUpperCase()}`)}`
    + `&image=${row.image_sha256.slice(0, 16)}&verdict=pass`).sort();
  assert.deepEqual(scanned, expected, 'every QR code scans to its record');
}));
