// The dashboard's block maps and its Sparse box: an ext4 image (made here with
// Debian's e2fsprogs, imported before the demo starts) is shown in the image
// library with its generated block map (source, mapped bytes, share); the
// demo's own image, whose bytes hold no file system, says it has none. Arming
// a sparse run of the unmapped image is refused with the station's reason and
// arms nothing; a sparse run of the mapped one is armed, its busy tiles say
// "sparse", and its passes say how much was verified and how much was neither
// written nor checked.
//
//   cargo build -p flashrack-cli && npm ci --prefix tests/e2e
//   FLASHRACK_BIN=$PWD/target/debug/flashrack node --test tests/e2e/sparse.test.mjs

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { closeSync, ftruncateSync, mkdirSync, openSync, writeFileSync } from 'node:fs';
import path from 'node:path';

import {
  ARTIFACTS, importImage, withDashboard,
  stopTheDemosRunAndOpenTheForm,
} from './demo.mjs';

const MKFS_EXT4 = process.env.MKFS_EXT4_PATH || '/usr/sbin/mkfs.ext4';

/** A 24 MiB ext4 image holding a 2 MiB file: about a fifth of it allocated. */
function ext4Image(work, out) {
  const root = path.join(work, 'root');
  mkdirSync(root, { recursive: true });
  const data = Buffer.alloc(2 << 20);
  for (let i = 0; i < data.length; i += 1) data[i] = (i * 131 + (i >> 12)) & 0xff;
  writeFileSync(path.join(root, 'payload.bin'), data);
  const fd = openSync(out, 'w');
  ftruncateSync(fd, 24 << 20);
  closeSync(fd);
  execFileSync(MKFS_EXT4, ['-q', '-F', '-d', root, out], { stdio: 'ignore' });
}

test('the image library shows block maps, and the Sparse box arms only a mapped image', { timeout: 300_000 }, () => withDashboard({
  name: 'sparse',
  needs: [[MKFS_EXT4, 'install it with `apt-get install -y e2fsprogs` or set MKFS_EXT4_PATH']],
  prepare: ({ work, dataDir }) => {
    const disk = path.join(work, 'mapped-disk.img');
    ext4Image(work, disk);
    return importImage(dataDir, disk);
  },
}, async ({ url, api, page, prepared: sha }) => {
  const first = await stopTheDemosRunAndOpenTheForm(page, url);
  const demoSha = first.image_sha256;

  // The library: the mapped image's map, as the API gives it; the demo's
  // image has none.
  const image = await (await page.request.get(api(`/images/${sha}`))).json();
  assert.ok(image.block_map, `a map was generated at import: ${JSON.stringify(image)}`);
  const share = (image.block_map.mapped_share * 100).toFixed(1);
  const mapped = page.locator('#image-list li', { hasText: 'mapped-disk.img' });
  await mapped.waitFor({ timeout: 15_000 });
  const mapText = await mapped.locator('.image-map').textContent();
  assert.match(mapText, /^Block map: generated from ext4/);
  assert.ok(mapText.endsWith(`mapped (${share} %)`), mapText);
  assert.ok(image.block_map.mapped_share > 0 && image.block_map.mapped_share < 0.6, mapText);
  const demoImage = await (await page.request.get(api(`/images/${demoSha}`))).json();
  assert.equal(demoImage.block_map, null, 'the demo image holds no file system');
  const unmapped = page.locator('#image-list li', { hasText: demoImage.name });
  assert.match(await unmapped.locator('.image-map').textContent(), /^No block map: written whole only/);

  // A sparse run of the unmapped image: refused with the station's reason.
  await page.selectOption('#arm-image', demoSha);
  await page.check('#arm-sparse');
  await page.click('#arm-button');
  await page.waitForFunction(() => /no block map/.test(document.querySelector('#arm-status')?.textContent || ''),
    null, { timeout: 15_000 })
    .catch(async () => assert.fail(`no refusal shown: ${await page.locator('#arm-status').textContent()}`));
  assert.match(await page.locator('#arm-status').textContent(), /written whole \(without "sparse"\)/);
  const idle = (await (await page.request.get(api('/station'))).json()).run;
  assert.ok(!idle.armed && idle.id === first.id, 'nothing armed');
  await page.screenshot({ path: path.join(ARTIFACTS, 'sparse-refused.png'), fullPage: true });

  // A sparse run of the mapped image: armed, shown on busy tiles, and
  // every pass states its coverage.
  await page.selectOption('#arm-image', sha);
  assert.ok(await page.isChecked('#arm-sparse'));
  await page.click('#arm-button');
  await page.waitForFunction(() => /\barmed\b/i.test(document.querySelector('#run-state')?.textContent || ''),
    null, { timeout: 15_000 });
  const run = (await (await page.request.get(api('/station'))).json()).run;
  assert.ok(run.armed && run.id !== first.id && run.image_sha256 === sha, JSON.stringify(run));
  assert.equal(run.options.sparse, true);
  assert.match(await page.locator('#run-view').textContent(), /sparse \(block map only\)/);
  await page.locator('#rack .tile .tag-sparse').first().waitFor({ timeout: 60_000 });
  const pass = page.locator('#rack .tile[data-state="passed"][data-verdict-current="true"] .verdict-pass .pass').first();
  await pass.waitFor({ timeout: 120_000 });
  const passText = await pass.textContent();
  assert.match(passText, /^sparse: .+ verified \(compare(, after reset)?\), .+ not written nor checked$/);
  await page.screenshot({ path: path.join(ARTIFACTS, 'sparse-armed.png'), fullPage: true });
}));
