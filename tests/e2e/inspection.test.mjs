// The dashboard and an image that would not boot written raw: a Windows-like
// installer ISO (built here with Debian's xorriso and dosfstools, imported
// under an innocent name) is shown refused in the image library; arming it
// asks the station, which refuses it and records the refusal, then asks the
// operator: "cancel" arms nothing and says so, "OK" arms a raw run that says
// it was forced. The station's event log (read with Debian's sqlite3 beside
// the running demo) holds each refusal the operator or an API client was
// shown, and the forced arming: what the operator saw and decided.
//
//   cargo build -p flashrack-cli && npm ci --prefix tests/e2e
//   FLASHRACK_BIN=$PWD/target/debug/flashrack node --test tests/e2e/inspection.test.mjs

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdirSync, writeFileSync, closeSync, openSync, ftruncateSync } from 'node:fs';
import path from 'node:path';

import {
  ARTIFACTS, importImage, withDashboard,
  stopTheDemosRunAndOpenTheForm,
} from './demo.mjs';

const SQLITE = process.env.SQLITE3_PATH || '/usr/bin/sqlite3';

/** A non-hybrid ISO laid out as a Windows installer, as the testkit builds it. */
function windowsLikeIso(work, out) {
  const root = path.join(work, 'tree');
  mkdirSync(path.join(root, 'sources'), { recursive: true });
  mkdirSync(path.join(root, 'boot'), { recursive: true });
  mkdirSync(path.join(root, 'efi', 'microsoft', 'boot'), { recursive: true });
  writeFileSync(path.join(root, 'sources', 'install.wim'), 'MSWIM\0\0\0 a stand-in');
  writeFileSync(path.join(root, 'boot', 'etfsboot.com'), Buffer.alloc(2048));
  const efi = path.join(root, 'efi', 'microsoft', 'boot', 'efisys.bin');
  const fd = openSync(efi, 'w');
  ftruncateSync(fd, 1 << 20);
  closeSync(fd);
  execFileSync('mkfs.vfat', ['-n', 'EFIBOOT', efi], { stdio: 'ignore' });
  execFileSync('xorriso', ['-as', 'mkisofs', '-quiet', '-J', '-V', 'HOLIDAY_2024',
    '-b', 'boot/etfsboot.com', '-no-emul-boot', '-boot-load-size', '4',
    '-eltorito-alt-boot', '-e', 'efi/microsoft/boot/efisys.bin', '-no-emul-boot',
    '-o', out, root], { stdio: 'ignore' });
}

/** Rows of the station's event log of `kind` (their detail, parsed). */
function events(database, kind) {
  const out = execFileSync(SQLITE, ['-readonly', '-json', database,
    `SELECT kind, run_id, detail FROM events WHERE kind = '${kind}' ORDER BY id`], { encoding: 'utf8' });
  return (out.trim() ? JSON.parse(out) : []).map((row) => ({ ...row, detail: JSON.parse(row.detail) }));
}

test('a non-hybrid installer ISO asks before a forced raw run, and the log keeps the refusal and the force', { timeout: 300_000 }, () => withDashboard({
  name: 'inspection',
  needs: [[SQLITE, 'install it with `apt-get install -y sqlite3` or set SQLITE3_PATH']],
  prepare: ({ work, dataDir }) => {
    // An MBR disk cut short: its partition ends past the image's end, a
    // problem the library shows as `image show` does.
    const cut = path.join(work, 'cut-disk.img');
    const fd = openSync(cut, 'w');
    ftruncateSync(fd, 32 << 20);
    closeSync(fd);
    execFileSync('sfdisk', ['--quiet', cut], { input: 'label: dos\nstart=2048, size=40000, type=83\n' });
    const shorter = openSync(cut, 'r+');
    ftruncateSync(shorter, 8 << 20);
    closeSync(shorter);
    importImage(dataDir, cut);
    const iso = path.join(work, 'holiday-videos.bin');
    windowsLikeIso(work, iso);
    return importImage(dataDir, iso);
  },
}, async ({ url, api, page, dataDir, prepared: sha }) => {
  const database = path.join(dataDir, 'flashrack.db');
  // The demo arms a run of its own image: stop it, so that the form is offered.
  const first = await stopTheDemosRunAndOpenTheForm(page, url);
  // The library says what the image is and that a raw run is refused.
  const row = page.locator('#image-list li', { hasText: 'holiday-videos.bin' });
  await row.waitFor({ timeout: 15_000 });
  assert.match(await row.locator('.image-summary').textContent(), /not hybrid.*Windows installer/);
  const refusal = await row.locator('.image-refusal').textContent();
  assert.match(refusal, /Raw run refused: this is a Windows installer ISO/);
  // Its advice is a sentence of its own (it read "…will not boot. build a …").
  assert.doesNotMatch(refusal, /\. [a-z]/, refusal);
  const cutRow = page.locator('#image-list li', { hasText: 'cut-disk.img' });
  assert.match(await cutRow.locator('.image-problem').first().textContent(),
    /^Problem: MBR partition 1 ends at byte 21528576 but the image has 8388608 bytes: truncated image or damaged table$/);
  await page.waitForFunction((value) => document.querySelector(`#arm-image option[value="${value}"]`), sha, { timeout: 15_000 });
  await page.selectOption('#arm-image', sha);

  // "Cancel": nothing is armed, the form says why, and the station's
  // refusal the operator was shown is in the event log with their name.
  await page.fill('#arm-operator', 'Ada Lovelace');
  let asked = null;
  page.once('dialog', async (dialog) => {
    asked = { type: dialog.type(), message: dialog.message() };
    await dialog.dismiss();
  });
  await page.click('#arm-button');
  await page.waitForFunction(() => /^Not armed: this is a Windows installer ISO.*Nothing was forced; the refusal is in the station's event log\.$/
    .test(document.querySelector('#arm-status')?.textContent || ''), null, { timeout: 15_000 })
    .catch(async () => assert.fail(`no refusal shown: ${await page.locator('#arm-status').textContent()}`));
  assert.equal(asked?.type, 'confirm');
  assert.match(asked.message, /Windows installer ISO .* will not boot/);
  assert.match(asked.message, /\n\nBuild a bootable USB layout/);
  assert.match(asked.message, /Force a raw run anyway\? \(recorded in the run\)/);
  const idle = (await (await page.request.get(api('/station'))).json()).run;
  assert.ok(!idle || !idle.armed, 'cancelled: nothing armed');
  const declined = events(database, 'run_refused');
  assert.equal(declined.length, 1, JSON.stringify(declined));
  assert.equal(declined[0].detail.image_sha256, sha);
  assert.equal(declined[0].detail.options.operator, 'Ada Lovelace');
  assert.ok(!declined[0].detail.options.force_raw, 'declined: nothing forced');
  assert.equal(declined[0].run_id, null, 'no run was started');
  await page.screenshot({ path: path.join(ARTIFACTS, 'inspection-declined.png'), fullPage: true });

  // A client that does not force it is refused by the station, which
  // records the refusal: who asked, the image, the reason.
  const refused = await page.request.post(api('/runs'), { data: { image: sha, operator: 'E2E Client' } });
  assert.equal(refused.status(), 422, await refused.text());
  const refusals = events(database, 'run_refused');
  assert.equal(refusals.length, 2, JSON.stringify(refusals));
  assert.equal(refusals[1].detail.image_sha256, sha);
  assert.equal(refusals[1].detail.options.operator, 'E2E Client');
  assert.match(refusals[1].detail.reason, /Windows installer ISO/);
  assert.equal(refusals[1].run_id, null, 'no run was started');

  // "OK": the station refuses first (recorded: what the operator was
  // shown), then a raw run is armed, forced, and says so.
  page.once('dialog', (dialog) => dialog.accept());
  await page.fill('#arm-operator', 'Grace Hopper');
  await page.click('#arm-button');
  await page.waitForFunction(() => /\barmed\b/i.test(document.querySelector('#run-state')?.textContent || ''),
    null, { timeout: 15_000 });
  const run = (await (await page.request.get(api('/station'))).json()).run;
  assert.ok(run.armed && run.id !== first.id, 'a new run is armed');
  assert.equal(run.image_sha256, sha);
  assert.equal(run.options.force_raw, true, 'the force is kept with the run');
  assert.equal(run.options.operator, 'Grace Hopper');
  const arms = events(database, 'operator_action').filter((e) => e.detail.action === 'arm');
  assert.match(arms.at(-1).detail.detail, new RegExp(`^run ${run.id}: holiday-videos.bin .*, raw write forced$`));
  const shown = events(database, 'run_refused');
  assert.equal(shown.length, 3, 'the refusal shown before the force is recorded, the forced run is none');
  assert.equal(shown[2].detail.options.operator, 'Grace Hopper');
  assert.ok(!shown[2].detail.options.force_raw, 'the refusal was of the unforced request');
  await page.screenshot({ path: path.join(ARTIFACTS, 'inspection-forced.png'), fullPage: true });

  const report = await (await page.request.get(api(`/runs/${run.id}/report?format=json`))).json();
  assert.equal(report.run.options.force_raw, true);
  assert.equal(report.image.iso.windows_installer, true);
}));
