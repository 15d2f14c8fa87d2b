// A run armed from the dashboard with an image that is not cached yet (issue
// 14): the arm form's "Image from" — a URL, then a file on the station — in
// Debian's chromium against `flashrack demo --by-hand --no-arm`. The test's
// server holds a gzip image halfway: both sticks show bytes written ("image
// still arriving") and the run panel the download's bytes while the server
// still holds the rest (the order of events, asserted on the server, not a
// timing); once it lets go, both pass and the run names the image's sha256,
// as the API and the run's JSON report do. A file path that is not there is
// refused with the station's reason and nothing is armed; a file in the
// station's upload area is followed to its end.
//
// The second test arms a URL whose SHA256SUMS is signed (the key pairs made
// by the test with Debian's gpg, `GPG_PATH`): a signature without keys, and
// a signature by a key the pasted keyring does not hold, are shown on the
// form with the station's reason and arm nothing (no run, the image never
// asked for); the vendor's signature arms the run, a stick passes, the
// run's report names the signer's fingerprint, and the image library's
// downloads list shows the run's download, imported and signed.
//
//   cargo build -p flashrack-cli && npm ci --prefix tests/e2e
//   FLASHRACK_BIN=$PWD/target/debug/flashrack node --test tests/e2e/follow.test.mjs

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { execFileSync } from 'node:child_process';
import { createServer } from 'node:http';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { gzipSync } from 'node:zlib';

import { ARTIFACTS, withDashboard } from './demo.mjs';

const GPG = process.env.GPG_PATH || '/usr/bin/gpg';

const MIB = 1 << 20;

/**
 * `size` bytes from a xorshift generator seeded with `seed` (they do not
 * compress: the gzip file is about as long as the image), every fourth
 * 64 KiB zero.
 */
function imageBytes(size, seed) {
  const data = Buffer.alloc(size);
  let x = (seed * 2654435761) >>> 0 || 1;
  for (let i = 0; i < size; i += 1) {
    x ^= x << 13; x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5; x >>>= 0;
    data[i] = ((i >> 16) & 3) === 3 ? 0 : x & 0xff;
  }
  return data;
}

/**
 * Serves `body` at /os.img.gz: the first `held` bytes at once, the rest when
 * the test calls `release()`. Records every request and the bytes sent.
 */
function serve(body, held) {
  const seen = [];
  let sent = 0;
  let release;
  const released = new Promise((resolve) => { release = resolve; });
  const server = createServer((req, res) => {
    seen.push({ url: req.url, range: req.headers.range || null });
    if (req.url !== '/os.img.gz') { res.writeHead(404); res.end('not found'); return; }
    res.writeHead(200, { 'content-length': body.length, etag: '"follow-1"' });
    res.write(body.subarray(0, held));
    sent += held;
    released.then(() => { sent += body.length - held; res.end(body.subarray(held)); });
  });
  return new Promise((resolve) => server.listen(0, '127.0.0.1', () => resolve({
    server, seen, release, sent: () => sent,
  })));
}

/** What the tile of `label` says. */
const tile = (page, label) => page.evaluate((l) => {
  const node = document.querySelector(`.tile[data-label="${l}"]`);
  return node ? { state: node.dataset.state, text: node.textContent || '' } : null;
}, label);

/** Waits until the tile of `label` is in `state` and its text matches `re`. */
async function untilTile(page, label, what, state, re = null) {
  await page.waitForFunction(([l, s, r]) => {
    const node = document.querySelector(`.tile[data-label="${l}"]`);
    return node && node.dataset.state === s && (!r || new RegExp(r[0], r[1]).test(node.textContent || ''));
  }, [label, state, re ? [re.source, re.flags] : null], { timeout: 60_000, polling: 100 })
    .catch(async () => assert.fail(`${label} never ${what}: ${JSON.stringify(await tile(page, label))}`));
}

const plug = async (child, line) => {
  const answer = await child.command(`plug ${line}`);
  assert.match(answer, /^plugged /, `plug ${line}`);
};

test('the arm form starts a run of a URL or a station file not cached yet, and the sticks follow the import', { timeout: 300_000 }, () => withDashboard({ name: 'follow', args: ['--by-hand', '--no-arm', '--ports', '8', '--image-size', '8MiB'] }, async ({ child, url, api, page, dataDir }) => {
  const raw = imageBytes(24 * MIB, 7);
  const sha = createHash('sha256').update(raw).digest('hex');
  const file = gzipSync(raw, { level: 1 });
  const held = Math.floor(file.length / 2);
  const { server, seen, release, sent } = await serve(file, held);
  const imageUrl = `http://127.0.0.1:${server.address().port}/os.img.gz`;
  try {
    await page.goto(url);
    await page.locator('#arm-form').waitFor({ state: 'visible', timeout: 30_000 });
    await plug(child, 'A1 S1:capacity=64MiB');
    await plug(child, 'A2 S2:capacity=64MiB');
    await untilTile(page, 'A1', 'showed its stick', 'detected');
    await untilTile(page, 'A2', 'showed its stick', 'detected');

    // A URL: the form's fields for it, the expected sha256, arm.
    await page.selectOption('#arm-source', 'url');
    assert.equal(await page.locator('#arm-image').isVisible(), false, 'no cached image asked for');
    await page.fill('#arm-url', imageUrl);
    await page.fill('#arm-url-sha256', sha);
    await page.click('#arm-button');
    await page.waitForFunction(() => /Armed/.test(document.querySelector('#run-state')?.textContent || ''), null, { timeout: 30_000 });

    // Both sticks write while the server holds the second half; the run
    // panel shows the download's bytes and no sha256 yet.
    await untilTile(page, 'A1', 'wrote while the download was held', 'writing', /image still arriving/);
    await untilTile(page, 'A2', 'wrote while the download was held', 'writing', /image still arriving/);
    // The run panel: the bytes the server has sent of the file's, in the
    // dashboard's own notation.
    const [heldText, totalText] = await page.evaluate(([h, t]) => [
      window.flashrackFormat.fmtBytes(h), window.flashrackFormat.fmtBytes(t),
    ], [held, file.length]);
    await page.locator('.run-import-importing', { hasText: imageUrl })
      .filter({ hasText: `${heldText} of ${totalText}` }).waitFor({ timeout: 30_000 })
      .catch(async (error) => {
        const run = (await (await page.request.get(api('/station'))).json()).run;
        throw new Error(`${error.message}\nthe API's run: ${JSON.stringify(run)}; sent ${sent()}`);
      });
    const panel = await page.locator('#run-view').innerText();
    assert.match(panel, /Importing:/, panel);
    assert.match(panel, /sha256 known when imported/, panel);
    assert.equal(sent(), held, 'the server still holds the second half');
    const during = (await (await page.request.get(api('/station'))).json()).run;
    assert.equal(during.import.state, 'importing');
    assert.notEqual(during.image_sha256, sha);
    assert.equal(during.passed, 0);
    await page.screenshot({ path: path.join(ARTIFACTS, 'follow-importing.png'), fullPage: true });

    release();
    await untilTile(page, 'A1', 'passed', 'passed');
    await untilTile(page, 'A2', 'passed', 'passed');
    await page.locator('.run-import-done', { hasText: 'Imported' }).waitFor({ timeout: 30_000 });
    await page.locator('#run-view code', { hasText: sha.slice(0, 12) }).waitFor({ timeout: 15_000 });
    await page.screenshot({ path: path.join(ARTIFACTS, 'follow-imported.png'), fullPage: true });
    const after = (await (await page.request.get(api('/station'))).json()).run;
    assert.equal(after.image_sha256, sha);
    assert.equal(after.image_size, raw.length);
    assert.equal(after.passed, 2);
    assert.equal(seen.filter((r) => r.url === '/os.img.gz').length, 1, 'downloaded once');
    const report = await (await page.request.get(api(`/runs/${after.id}/report?format=json`))).json();
    assert.equal(report.run.image_sha256, sha);
    assert.equal(report.run.passed, 2);
    assert.equal(report.image_provenance.url, imageUrl);
    const images = await (await page.request.get(api('/images'))).json();
    assert.ok(images.some((i) => i.sha256 === sha), 'the image is in the library');

    // Stop it; a file on the station: one that is not there is refused.
    page.once('dialog', (dialog) => dialog.accept());
    await page.click('#stop-button');
    await page.locator('#arm-form').waitFor({ state: 'visible', timeout: 15_000 });
    const uploads = path.join(dataDir, 'uploads');
    mkdirSync(uploads, { recursive: true });
    await page.selectOption('#arm-source', 'file');
    await page.fill('#arm-file', path.join(uploads, 'missing.img'));
    await page.click('#arm-button');
    await page.locator('#arm-status', { hasText: 'missing.img' }).waitFor({ timeout: 15_000 });
    assert.equal(await page.locator('#arm-form').isVisible(), true, 'nothing armed');
    const stopped = (await (await page.request.get(api('/station'))).json()).run;
    assert.equal(stopped.id, after.id, 'no run was recorded for the refused file');

    const station = imageBytes(12 * MIB, 9);
    const stationSha = createHash('sha256').update(station).digest('hex');
    writeFileSync(path.join(uploads, 'station.img'), station);
    await plug(child, 'A3 S3:capacity=64MiB');
    await page.fill('#arm-file', path.join(uploads, 'station.img'));
    await page.fill('#arm-file-sha256', stationSha);
    await page.click('#arm-button');
    await untilTile(page, 'A3', 'passed the station file', 'passed');
    await page.locator('.run-import-done', { hasText: 'station.img' }).waitFor({ timeout: 30_000 });
    const second = (await (await page.request.get(api('/station'))).json()).run;
    assert.equal(second.image_sha256, stationSha);
    assert.equal(second.import.source, path.join(uploads, 'station.img'));
  } finally {
    release();
    server.close();
  }
}));

/**
 * Two key pairs made with gpg in a directory of their own: the vendor's and
 * a stranger's. `sign(who, file)` writes `file.<who>.asc`, an armored
 * detached signature; `publicKey(who)` is the armored public key;
 * `fingerprint(who)` as gpg lists it.
 */
function keyPairs() {
  const home = mkdtempSync(path.join(tmpdir(), 'flashrack-e2e-gpg-'));
  const gpg = (args) => execFileSync(GPG, ['--homedir', home, '--batch', '--yes', '--pinentry-mode', 'loopback', '--passphrase', '', ...args], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
  const email = (who) => `${who}@example.invalid`;
  for (const who of ['vendor', 'stranger']) gpg(['--quick-gen-key', `${who} <${email(who)}>`, 'ed25519', 'sign', 'never']);
  return {
    sign: (who, file) => {
      const out = `${file}.${who}.asc`;
      gpg(['--local-user', email(who), '--armor', '--output', out, '--detach-sign', file]);
      return readFileSync(out);
    },
    publicKey: (who) => gpg(['--armor', '--export', email(who)]),
    fingerprint: (who) => gpg(['--with-colons', '--list-keys', email(who)]).split('\n').find((l) => l.startsWith('fpr:')).split(':')[9],
    close: () => {
      try { execFileSync('gpgconf', ['--homedir', home, '--kill', 'gpg-agent'], { stdio: 'ignore' }); } catch (_) { /* no agent */ }
      rmSync(home, { recursive: true, force: true });
    },
  };
}

/** Serves `files` (path → bytes), 404 for the rest; records the paths asked for. */
function serveFiles(files) {
  const seen = [];
  const server = createServer((req, res) => {
    seen.push(req.url);
    const body = files[req.url];
    if (!body) { res.writeHead(404); res.end('not found'); return; }
    res.writeHead(200, { 'content-length': body.length, etag: `"${req.url}-1"` });
    res.end(body);
  });
  return new Promise((resolve) => server.listen(0, '127.0.0.1', () => resolve({ server, seen })));
}

test('the arm form checks a URL\'s signed checksum list: a bad signature arms nothing and says why, a good one names its signer', { timeout: 300_000 }, () => withDashboard({ name: 'follow-signed', args: ['--by-hand', '--no-arm', '--ports', '8', '--image-size', '8MiB'], needs: [[GPG, 'install it with `apt-get install -y gpg` or set GPG_PATH']] }, async ({ child, url, api, page, work }) => {
  const keys = keyPairs();
  const raw = imageBytes(8 * MIB, 11);
  const sha = createHash('sha256').update(raw).digest('hex');
  const sums = path.join(work, 'SHA256SUMS');
  writeFileSync(sums, `${createHash('sha256').update('other').digest('hex')}  other.img\n${sha}  os.img\n`);
  const { server, seen } = await serveFiles({
    '/os.img': raw,
    '/SHA256SUMS': readFileSync(sums),
    '/SHA256SUMS.gpg': keys.sign('vendor', sums),
    '/SHA256SUMS.stranger.gpg': keys.sign('stranger', sums),
  });
  const at = (p) => `http://127.0.0.1:${server.address().port}${p}`;
  try {
    await page.goto(url);
    await page.locator('#arm-form').waitFor({ state: 'visible', timeout: 30_000 });
    await page.selectOption('#arm-source', 'url');
    for (const id of ['#arm-url-sig', '#arm-url-keyring', '#arm-url-bmap']) {
      assert.equal(await page.locator(id).isVisible(), true, `${id} is offered for a URL`);
    }
    await page.fill('#arm-url', at('/os.img'));
    await page.fill('#arm-url-sums', at('/SHA256SUMS'));

    // A signature without the keys to check it: the station's rule, as
    // the image library's form gets it.
    await page.fill('#arm-url-sig', at('/SHA256SUMS.gpg'));
    await page.click('#arm-button');
    await page.locator('#arm-status.bad', { hasText: 'a signature needs a keyring' }).waitFor({ timeout: 15_000 });

    // Signed by a key the operator's keyring does not hold: the reason on
    // the form, nothing armed or recorded, the image never asked for.
    await page.fill('#arm-url-keyring', keys.publicKey('vendor'));
    await page.fill('#arm-url-sig', at('/SHA256SUMS.stranger.gpg'));
    await page.click('#arm-button');
    await page.locator('#arm-status.bad', { hasText: 'is not a valid signature by any key of the keyring' }).waitFor({ timeout: 30_000 });
    const said = await page.locator('#arm-status').innerText();
    assert.match(said, /SHA256SUMS\.stranger\.gpg/, said);
    await page.screenshot({ path: path.join(ARTIFACTS, 'follow-bad-signature.png'), fullPage: true });
    assert.equal(await page.locator('#arm-form').isVisible(), true, 'nothing armed');
    assert.equal((await (await page.request.get(api('/station'))).json()).run, null, 'no run');
    assert.deepEqual(await (await page.request.get(api('/runs'))).json(), [], 'no run recorded');
    assert.equal(seen.filter((p) => p === '/os.img').length, 0, 'the image was never asked for');

    // The vendor's signature: armed, a stick passes, the report names the signer.
    await plug(child, 'A1 S1:capacity=64MiB');
    await page.fill('#arm-url-sig', at('/SHA256SUMS.gpg'));
    await page.click('#arm-button');
    await page.waitForFunction(() => /Armed/.test(document.querySelector('#run-state')?.textContent || ''), null, { timeout: 30_000 });
    await untilTile(page, 'A1', 'passed', 'passed');
    await page.locator('#run-view code', { hasText: sha.slice(0, 12) }).waitFor({ timeout: 30_000 });
    const run = (await (await page.request.get(api('/station'))).json()).run;
    assert.equal(run.image_sha256, sha);
    const report = await (await page.request.get(api(`/runs/${run.id}/report?format=json`))).json();
    const source = report.image_provenance.digest_source;
    assert.equal(source.kind, 'sums');
    assert.equal(source.signature.signer_fingerprint, keys.fingerprint('vendor'));
    // The run's download is one of the station's downloads: the library's
    // list shows it imported, signed by the vendor.
    await page.reload();
    await page.locator('summary', { hasText: 'Import from a URL' }).click();
    const row = page.locator('#download-list li[data-state="done"]', { hasText: keys.fingerprint('vendor') })
      .filter({ hasText: 'os.img' });
    await row.waitFor({ timeout: 15_000 });
    // It says which run it was for, as the API does, with a link to that
    // run's report.
    const listed = (await (await page.request.get(api('/images/downloads'))).json())
      .find((d) => d.url === at('/os.img'));
    assert.equal(listed.run_id, run.id, JSON.stringify(listed));
    const link = row.locator('a.download-run');
    assert.equal(await link.innerText(), `run #${run.id}`);
    const href = await link.getAttribute('href');
    assert.equal(new URL(href, url).pathname, `/api/v1/runs/${run.id}/report`);
    const printed = await page.request.get(new URL(href, url).href);
    assert.equal(printed.status(), 200);
    assert.match(printed.headers()['content-type'], /text\/html/);
    assert.match(await printed.text(), new RegExp(sha.slice(0, 12)));
    await page.screenshot({ path: path.join(ARTIFACTS, 'follow-signed.png'), fullPage: true });
  } finally {
    server.close();
    keys.close();
  }
}));
