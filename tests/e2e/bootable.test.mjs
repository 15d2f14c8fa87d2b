// The dashboard and a UEFI installer ISO that would not boot written raw
// (built here with Debian's xorriso and dosfstools, imported under an
// innocent name): the image library says a raw run is refused and offers
// "Build a bootable stick image"; the build is followed to "built", and the
// built image appears in the library with its provenance (built from the
// ISO, how, when), no raw-run refusal and a GPT. What the screen says is
// what the API's image JSON says. Before that, a build held in its copying
// stage (the demo runs the real mcopy through a script on its PATH that
// first waits for a word on a FIFO this test writes) shows its stages and a
// Cancel button; cancelled there, it ends cancelled and keeps nothing.
//
//   cargo build -p flashrack-cli && npm ci --prefix tests/e2e
//   FLASHRACK_BIN=$PWD/target/debug/flashrack node --test tests/e2e/bootable.test.mjs

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdirSync, writeFileSync, closeSync, openSync, ftruncateSync } from 'node:fs';
import path from 'node:path';

import { ARTIFACTS, importImage, stopTheDemosRunAndOpenTheForm, withDashboard } from './demo.mjs';

/** A non-hybrid installer ISO with a UEFI loader at the removable-media path. */
function uefiInstallerIso(work, out) {
  const root = path.join(work, 'tree');
  mkdirSync(path.join(root, 'sources'), { recursive: true });
  mkdirSync(path.join(root, 'efi', 'boot'), { recursive: true });
  mkdirSync(path.join(root, 'efi', 'microsoft', 'boot'), { recursive: true });
  writeFileSync(path.join(root, 'efi', 'boot', 'bootx64.efi'), 'MZ a stand-in UEFI loader');
  writeFileSync(path.join(root, 'sources', 'install.wim'), 'MSWIM\0\0\0 a stand-in');
  writeFileSync(path.join(root, 'setup.exe'), 'MZ a stand-in');
  const efi = path.join(root, 'efi', 'microsoft', 'boot', 'efisys.bin');
  const fd = openSync(efi, 'w');
  ftruncateSync(fd, 1 << 20);
  closeSync(fd);
  execFileSync('mkfs.vfat', ['-n', 'EFIBOOT', efi], { stdio: 'ignore' });
  execFileSync('xorriso', ['-as', 'mkisofs', '-quiet', '-J', '-joliet-long', '-V', 'QUARTERLY',
    '-e', 'efi/microsoft/boot/efisys.bin', '-no-emul-boot', '-o', out, root], { stdio: 'ignore' });
}

test('a refused installer ISO offers a bootable build, followed to a built image with its provenance', { timeout: 300_000 }, () => withDashboard({
  name: 'bootable',
  prepare: ({ work, dataDir }) => {
    const iso = path.join(work, 'quarterly.bin');
    uefiInstallerIso(work, iso);
    const sha = importImage(dataDir, iso);
    // The demo's mcopy: the real one, once the test writes a word to the
    // FIFO (each build's copy waits for one).
    const mcopy = execFileSync('sh', ['-c', 'command -v mcopy']).toString().trim();
    const shim = path.join(work, 'shim');
    mkdirSync(shim);
    const fifo = path.join(work, 'mcopy-gate');
    execFileSync('mkfifo', [fifo]);
    writeFileSync(path.join(shim, 'mcopy'), `#!/bin/sh\nread word < '${fifo}'\nexec '${mcopy}' "$@"\n`, { mode: 0o755 });
    process.env.PATH = `${shim}:${process.env.PATH}`;
    return { sha, fifo };
  },
}, async ({ url, api, page, prepared: { sha, fifo } }) => {
  await stopTheDemosRunAndOpenTheForm(page, url);
  const row = page.locator('#image-list li', { hasText: 'quarterly.bin' });
  await row.waitFor({ timeout: 15_000 });
  assert.match(await row.locator('.image-refusal').textContent(), /Raw run refused/);
  // Only the refused image offers a build.
  assert.equal(await page.locator('#image-list button.build-bootable').count(), 1);

  const stagesOf = (item) => item.locator('.build-stage').evaluateAll((nodes) => nodes.map((n) => `${n.dataset.stage}:${n.dataset.state}`));
  const cached = async () => (await (await page.request.get(api('/images'))).json()).map((i) => i.sha256).sort();
  const before = await cached();

  // Held in its copying stage: the stage shown, and a Cancel button.
  await row.locator('button.build-bootable').click();
  const building = page.locator('#build-list li[data-state="building"]');
  await building.locator('.build-stage.current[data-stage="copying_files"]').waitFor({ timeout: 120_000 });
  assert.deepEqual(await stagesOf(building),
    ['extracting:done', 'splitting:done', 'partitioning:done', 'copying_files:current', 'hashing:pending']);
  assert.match(await building.locator('.build-words').textContent(), /stage 4 of 5: copying the files in/);
  // How far the stage is in bytes: nothing copied yet (mcopy waits) of the
  // ISO's files; the screen shows what the API says.
  await building.locator('.build-words', { hasText: /… 0 B of [0-9.]+ [kMG]?B \(0%\)$/ }).waitFor({ timeout: 15_000 });
  const [held] = await (await page.request.get(api('/images/builds'))).json();
  assert.equal(held.stage, 'copying_files');
  assert.equal(held.stage_bytes.done, 0, JSON.stringify(held));
  assert.ok(held.stage_bytes.total > 0, JSON.stringify(held));
  assert.equal(await building.locator('[role="progressbar"]').getAttribute('aria-valuenow'), '0');
  await building.locator('button.cancel-build').click();
  const cancelled = page.locator('#build-list li[data-state="cancelled"]');
  await cancelled.waitFor({ timeout: 60_000 });
  assert.match(await cancelled.locator('.build-words').textContent(),
    /cancelled at stage 4 of 5: copying the files in: cancelled by the operator; nothing of it was cached/);
  assert.deepEqual(await stagesOf(cancelled),
    ['extracting:done', 'splitting:done', 'partitioning:done', 'copying_files:stopped', 'hashing:pending']);
  assert.equal(await cancelled.locator('button.cancel-build').count(), 0);
  assert.deepEqual(await cached(), before, 'nothing of the cancelled build is in the cache');

  // Built again, let through its copying stage this time.
  await row.locator('button.build-bootable').click();
  await building.locator('.build-stage.current[data-stage="copying_files"]').waitFor({ timeout: 120_000 });
  writeFileSync(fifo, 'go\n');
  const built = page.locator('#build-list li[data-state="built"]');
  await built.waitFor({ timeout: 120_000 }).catch(async () => {
    assert.fail(`no build ended: ${await page.locator('#build-list').textContent()}`);
  });
  assert.match(await built.textContent(), /built from quarterly\.bin: quarterly-usb\.img/);
  // Its five stages, each done, in the order the build went through them;
  // no cancel offered for an ended build.
  assert.deepEqual(await stagesOf(built),
    ['extracting', 'splitting', 'partitioning', 'copying_files', 'hashing'].map((s) => `${s}:done`));
  assert.equal(await built.locator('button.cancel-build').count(), 0);

  // The API agrees with the screen.
  const builds = await (await page.request.get(api('/images/builds'))).json();
  assert.deepEqual(builds.map((b) => b.state), ['built', 'cancelled'], JSON.stringify(builds));
  assert.equal(builds[0].source, sha);
  assert.equal(builds[1].source, sha);
  const image = await (await page.request.get(api(`/images/${builds[0].image}`))).json();
  assert.equal(image.name, 'quarterly-usb.img');
  assert.equal(image.raw_write_refusal, null);
  assert.equal(image.inspection.table.kind, 'gpt');
  assert.equal(image.provenance.built.from_sha256, sha);

  // The built image in the library: where it came from, and no build
  // offered for it (it boots written raw).
  const layoutRow = page.locator('#image-list li', { hasText: 'quarterly-usb.img' });
  await layoutRow.waitFor({ timeout: 15_000 });
  assert.match(await layoutRow.locator('.image-provenance').textContent(),
    /^Built from quarterly\.bin \([0-9a-f]{12}\) as a bootable USB layout: GPT, one FAT32/);
  assert.equal(await layoutRow.locator('.image-refusal').count(), 0);
  assert.equal(await layoutRow.locator('button.build-bootable').count(), 0);
  await page.screenshot({ path: path.join(ARTIFACTS, 'bootable-built.png'), fullPage: true });
}));
