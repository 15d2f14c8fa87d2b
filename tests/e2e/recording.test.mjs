// A port whose verdict waits on the records says so, and shows no verdict
// until they hold it, in Debian's chromium against `flashrack demo --by-hand
// --no-arm`: the test holds the station's database locked with Debian's
// `sqlite3` (`SQLITE3_PATH`), as an operator's manual edit left open would,
// while a stick finishes its read-back. The same lock holds a run's start
// and stop, and a followed run's image (its import ended, the records not
// yet holding it as the run's: "Imported, being recorded"); before that the
// run waits for its download's first bytes, claimed, shown being armed; and
// a run of a station file asked while the last run's stop waits on the lock
// is shown claimed until its import begins, then waiting for that stop
// (beside "Stopping"), never claimed once its import has begun.
//
//   cargo build -p flashrack-cli && npm ci --prefix tests/e2e
//   FLASHRACK_BIN=$PWD/target/debug/flashrack node --test tests/e2e/recording.test.mjs

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { spawn } from 'node:child_process';
import { mkdirSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:http';
import path from 'node:path';

import { ARTIFACTS, withDashboard } from './demo.mjs';

const SQLITE3 = process.env.SQLITE3_PATH || '/usr/bin/sqlite3';

/** Takes the write lock of `db` in a `sqlite3` process; resolves with it once held. */
function holdWriteLock(db) {
  const child = spawn(SQLITE3, [db], { stdio: ['pipe', 'pipe', 'pipe'] });
  const held = new Promise((resolve, reject) => {
    let out = '';
    let err = '';
    child.stdout.on('data', (chunk) => {
      out += chunk.toString();
      if (/locked/.test(out)) resolve(child);
    });
    child.stderr.on('data', (chunk) => { err += chunk.toString(); });
    child.once('exit', (code) => reject(new Error(`sqlite3 exited (${code}) without the lock: ${err}`)));
  });
  // Waits for a write of the station's in progress; stops at an error.
  child.stdin.write(".bail on\n.timeout 20000\nBEGIN IMMEDIATE;\nSELECT 'locked';\n");
  return held;
}

/** What the tile of `label` says, and its state. */
const tile = (page, label) => page.evaluate((l) => {
  const node = document.querySelector(`.tile[data-label="${l}"]`);
  return node ? { state: node.dataset.state, text: node.textContent || '' } : null;
}, label);

test('a verdict waiting on locked records is shown as being recorded, never before they hold it', async () => {
  await withDashboard({
    name: 'recording',
    args: ['--by-hand', '--no-arm'],
    needs: [[SQLITE3, 'install it with `apt-get install -y sqlite3` or set SQLITE3_PATH']],
  }, async ({ child, api, page, url, dataDir }) => {
    await page.goto(url);
    const images = await (await page.request.get(api('/images'))).json();
    assert.ok(images.length > 0, 'the demo has an image');
    const image = images[0];
    const armed = await page.request.post(api('/runs'), { data: { image: image.sha256 } });
    assert.equal(armed.status(), 201, await armed.text());
    // A read-back of about 3 s.
    const read = Math.max(1, Math.floor(image.size / 3));
    const plugged = await child.command(`plug A1 held:read=${read}`);
    assert.match(plugged, /^plugged /);
    await page.waitForFunction(() => document.querySelector('.tile[data-label="A1"]')?.dataset.state === 'verifying',
      null, { timeout: 60_000, polling: 100 });

    const lock = await holdWriteLock(path.join(dataDir, 'flashrack.db'));
    try {
      // The read-back ends; the verdict waits on the lock (the store's busy
      // timeout is 10 s): the tile says it is recording, with no verdict.
      await page.waitForFunction(() => /recording the verdict/.test(
        document.querySelector('.tile[data-label="A1"]')?.textContent || ''), null, { timeout: 30_000, polling: 100 })
        .catch(async () => assert.fail(`A1 never said it was recording: ${JSON.stringify(await tile(page, 'A1'))}`));
      const shown = await tile(page, 'A1');
      assert.equal(shown.state, 'verifying', JSON.stringify(shown));
      assert.doesNotMatch(shown.text, /\b(passed|failed)\b/i, JSON.stringify(shown));
      const ports = await (await page.request.get(api('/ports'))).json();
      const a1 = ports.find((p) => p.label === 'A1');
      assert.equal(a1.recording, true);
      assert.equal(a1.verdict, null);
      await page.screenshot({ path: path.join(ARTIFACTS, 'recording.png'), fullPage: true });
    } finally {
      lock.kill('SIGKILL');
    }

    // The lock let go: the tile shows the verdict the records hold (a pass,
    // or, past the busy timeout, the station error naming it), and says
    // nothing more of recording.
    await page.waitForFunction(() => {
      const node = document.querySelector('.tile[data-label="A1"]');
      return node && (node.dataset.state === 'passed' || node.dataset.state === 'failed');
    }, null, { timeout: 60_000, polling: 100 });
    const after = await tile(page, 'A1');
    assert.doesNotMatch(after.text, /recording the verdict/, JSON.stringify(after));
    const ports = await (await page.request.get(api('/ports'))).json();
    const a1 = ports.find((p) => p.label === 'A1');
    assert.equal(a1.recording, undefined, 'no longer recording');
    assert.ok(a1.verdict, 'a verdict');
    assert.equal(after.state, a1.verdict.verdict === 'pass' ? 'passed' : 'failed');
  });
});

test('a run armed or stopped while the records are locked is shown arming or stopping, never armed or stopped before they hold it', async () => {
  await withDashboard({
    name: 'recording-run',
    args: ['--by-hand', '--no-arm'],
    needs: [[SQLITE3, 'install it with `apt-get install -y sqlite3` or set SQLITE3_PATH']],
  }, async ({ child, api, page, url, dataDir }) => {
    await page.goto(url);
    const images = await (await page.request.get(api('/images'))).json();
    assert.ok(images.length > 0, 'the demo has an image');
    const image = images[0];
    const db = path.join(dataDir, 'flashrack.db');
    const runState = () => page.evaluate(() => document.getElementById('run-state')?.textContent || '');
    // Bounded well within the store's busy timeout (10 s): past it the
    // record is refused, which is another story.
    const shows = (pattern) => page.waitForFunction((source) => new RegExp(source).test(
      document.getElementById('run-state')?.textContent || ''), pattern.source, { timeout: 8_000, polling: 100 })
      .catch(async () => assert.fail(`the run panel never said ${pattern}: ${await runState()}`));

    // Armed while the records are locked: the panel says the run is being
    // armed (no run, no arm or stop control) until they hold it.
    let lock = await holdWriteLock(db);
    let arming;
    try {
      arming = page.request.post(api('/runs'), { data: { image: image.sha256 } });
      await shows(/Arming/);
      const station = await (await page.request.get(api('/station'))).json();
      assert.equal(station.run ?? null, null, JSON.stringify(station.run));
      assert.equal(station.arming.image_sha256, image.sha256);
      const controls = await page.evaluate(() => ({
        arm: document.getElementById('arm-form').hidden,
        stop: document.getElementById('stop-form').hidden,
      }));
      assert.deepEqual(controls, { arm: true, stop: true });
      await page.screenshot({ path: path.join(ARTIFACTS, 'recording-arming.png'), fullPage: true });
    } finally {
      lock.kill('SIGKILL');
    }
    const armed = await arming;
    assert.equal(armed.status(), 201, await armed.text());
    await shows(/Armed/);

    // A stick mid-write when the run is stopped under the lock: the panel
    // says it is stopping (the run still armed in the API, recording) until
    // the records hold its end; then stopped by the operator.
    const plugged = await child.command('plug A1 slow:write=1MB');
    assert.match(plugged, /^plugged /);
    await page.waitForFunction(() => document.querySelector('.tile[data-label="A1"]')?.dataset.state === 'writing',
      null, { timeout: 60_000, polling: 100 });
    lock = await holdWriteLock(db);
    let stopping;
    try {
      stopping = page.request.post(api('/runs/current/stop'), { data: { reason: 'end of the batch' } });
      await shows(/Stopping/);
      const run = await (await page.request.get(api('/runs/current'))).json();
      assert.equal(run.armed, true, JSON.stringify(run));
      assert.equal(run.recording, true, JSON.stringify(run));
      assert.equal(run.stop_reason, null, JSON.stringify(run));
      await page.screenshot({ path: path.join(ARTIFACTS, 'recording-stopping.png'), fullPage: true });
    } finally {
      lock.kill('SIGKILL');
    }
    const stopped = await stopping;
    assert.ok(stopped.ok(), `${stopped.status()} ${await stopped.text()}`);
    await shows(/Stopped/);
    const run = await (await page.request.get(api('/runs/current'))).json();
    assert.equal(run.armed, false, JSON.stringify(run));
    assert.equal(run.recording, undefined, JSON.stringify(run));
    assert.equal(run.stop_reason, 'operator', JSON.stringify(run));
  });
});

const SIZE = 8 << 20;
const HALF = SIZE / 2;

/** 8 MiB of bytes that depend on their offset (no zero chunk): a raw image. */
function imageBytes() {
  const data = Buffer.alloc(SIZE);
  for (let i = 0; i < data.length; i += 1) data[i] = ((i * 131 + (i >> 11)) & 0xff) | 1;
  return data;
}

/**
 * Serves `body` at /os.img: nothing of it until `begin()`, then its first
 * half, the rest at `release()` (until then the response is held open).
 * Counts the requests for it.
 */
function serveHeld(body) {
  const held = [];
  let step = 0;
  const seen = { requests: 0 };
  const send = (res) => {
    if (step >= 1 && !res.sentHalf) { res.write(body.subarray(0, HALF)); res.sentHalf = true; }
    if (step >= 2) res.end(body.subarray(HALF));
    else held.push(res);
  };
  const server = createServer((req, res) => {
    if (req.url !== '/os.img') { res.writeHead(404); res.end('not found'); return; }
    seen.requests += 1;
    res.writeHead(200, { 'content-length': SIZE });
    send(res);
  });
  const next = () => { step += 1; for (const res of held.splice(0)) send(res); };
  return new Promise((resolve) => server.listen(0, '127.0.0.1',
    () => resolve({ server, seen, begin: next, release: next })));
}

test('a run of a URL is shown being armed until its first bytes, and its image being recorded until the records hold it', { timeout: 300_000 }, async () => {
  const body = imageBytes();
  const sha = createHash('sha256').update(body).digest('hex');
  const { server, seen, begin, release } = await serveHeld(body);
  const imageUrl = `http://127.0.0.1:${server.address().port}/os.img`;
  try {
    await withDashboard({
      name: 'recording-import',
      args: ['--by-hand', '--no-arm'],
      needs: [[SQLITE3, 'install it with `apt-get install -y sqlite3` or set SQLITE3_PATH']],
    }, async ({ child, api, page, url, dataDir }) => {
      await page.goto(url);
      await page.waitForFunction(() => /live/i.test(document.querySelector('#conn')?.textContent || ''), null, { timeout: 15_000 });
      const runState = () => page.evaluate(() => document.getElementById('run-state')?.textContent || '');
      const panel = () => page.evaluate(() => document.getElementById('run-view')?.textContent || '');
      const shows = (pattern, timeout = 30_000) => page.waitForFunction((source) => new RegExp(source).test(
        document.getElementById('run-state')?.textContent || ''), pattern.source, { timeout, polling: 100 })
        .catch(async () => assert.fail(`the run panel never said ${pattern}: ${await runState()}`));

      // Asked for while its server sends nothing yet: the station holds the
      // arm for it (another arm is refused) and the panel says which run is
      // being armed, with no control.
      const following = page.request.post(api('/runs'), { data: { download: { url: imageUrl, sha256: sha } } });
      // Awaited below; a failure before then is the test's, not this.
      following.catch(() => {});
      await shows(/Arming os\.img: its import from .* is starting/);
      for (let waited = 0; seen.requests === 0; waited += 50) {
        assert.ok(waited < 10_000, 'its download never began');
        await new Promise((resolve) => setTimeout(resolve, 50));
      }
      const images = await (await page.request.get(api('/images'))).json();
      const other = await page.request.post(api('/runs'), { data: { image: images[0].sha256 } });
      assert.equal(other.status(), 409, await other.text());
      assert.match(await other.text(), /being armed/);
      const station = await (await page.request.get(api('/station'))).json();
      assert.equal(station.arming.state, 'claimed', JSON.stringify(station.arming));
      assert.equal(station.arming.source, imageUrl);
      assert.equal(station.run ?? null, null, JSON.stringify(station.run));
      // No arm while one is being armed; its stop is offered (a server that
      // sends nothing would hold the run for minutes: the station drops it
      // at once when stopped).
      const controls = await page.evaluate(() => ({
        arm: document.getElementById('arm-form').hidden,
        stop: document.getElementById('stop-form').hidden,
      }));
      assert.deepEqual(controls, { arm: true, stop: false });
      await page.screenshot({ path: path.join(ARTIFACTS, 'recording-claimed.png'), fullPage: true });
      begin();
      const armed = await following;
      assert.equal(armed.status(), 201, await armed.text());
      await shows(/Armed/);

      // A stick follows the import; the records are locked before its end:
      // the import is in the cache, but its image is not the run's in the
      // records, and the panel says so; no stick passes meanwhile.
      assert.match(await child.command('plug A1 first'), /^plugged /);
      await page.waitForFunction(() => document.querySelector('.tile[data-label="A1"]')?.dataset.state === 'writing',
        null, { timeout: 60_000, polling: 100 });
      const lock = await holdWriteLock(path.join(dataDir, 'flashrack.db'));
      try {
        release();
        // The download's own records wait on the lock first (the store's
        // busy timeout, 10 s each): the run's image is asked for after.
        await page.waitForFunction(() => /Imported, being recorded/.test(
          document.getElementById('run-view')?.textContent || ''), null, { timeout: 90_000, polling: 100 })
          .catch(async () => assert.fail(`the run panel never said the image was being recorded: ${await panel()}`));
        const run = await (await page.request.get(api('/runs/current'))).json();
        assert.equal(run.import.state, 'recording', JSON.stringify(run.import));
        assert.notEqual(run.image_sha256, sha, 'the run does not name the image yet');
        assert.match(await panel(), /no stick passes before the records hold it/);
        const a1 = await page.evaluate(() => document.querySelector('.tile[data-label="A1"]')?.dataset.state);
        assert.notEqual(a1, 'passed');
        await page.screenshot({ path: path.join(ARTIFACTS, 'recording-import.png'), fullPage: true });
      } finally {
        lock.kill('SIGKILL');
      }
      // The lock let go: the records hold the image, the run names it, and
      // the stick passes.
      await page.waitForFunction(() => /Imported:/.test(document.getElementById('run-view')?.textContent || ''),
        null, { timeout: 30_000, polling: 100 })
        .catch(async () => assert.fail(`the run panel never said imported: ${await panel()}`));
      await page.waitForFunction(() => document.querySelector('.tile[data-label="A1"]')?.dataset.state === 'passed',
        null, { timeout: 60_000, polling: 100 });
      const run = await (await page.request.get(api('/runs/current'))).json();
      assert.equal(run.import.state, 'done', JSON.stringify(run.import));
      assert.equal(run.image_sha256, sha);
      assert.equal(seen.requests, 1, 'downloaded once');
    });
  } finally {
    server.close();
  }
});

test('a run of a file asked while the last run is stopping is shown waiting for that stop once its import has begun', { timeout: 300_000 }, async () => {
  await withDashboard({
    name: 'recording-waiting',
    args: ['--by-hand', '--no-arm'],
    needs: [[SQLITE3, 'install it with `apt-get install -y sqlite3` or set SQLITE3_PATH']],
  }, async ({ child, api, page, url, dataDir }) => {
    await page.goto(url);
    await page.waitForFunction(() => /live/i.test(document.querySelector('#conn')?.textContent || ''), null, { timeout: 15_000 });
    const runState = () => page.evaluate(() => document.getElementById('run-state')?.textContent || '');
    const shows = (pattern, timeout = 8_000) => page.waitForFunction((source) => new RegExp(source).test(
      document.getElementById('run-state')?.textContent || ''), pattern.source, { timeout, polling: 100 })
      .catch(async () => assert.fail(`the run panel never said ${pattern}: ${await runState()}`));
    const images = await (await page.request.get(api('/images'))).json();
    const armed = await page.request.post(api('/runs'), { data: { image: images[0].sha256 } });
    assert.equal(armed.status(), 201, await armed.text());
    const first = (await armed.json()).id;
    await shows(/Armed/);
    assert.match(await child.command('plug A1 slow:write=1MB'), /^plugged /);
    await page.waitForFunction(() => document.querySelector('.tile[data-label="A1"]')?.dataset.state === 'writing',
      null, { timeout: 60_000, polling: 100 });
    const uploads = path.join(dataDir, 'uploads');
    mkdirSync(uploads, { recursive: true });
    const file = path.join(uploads, 'next.img');
    writeFileSync(file, imageBytes());

    // The stop waits on the lock; the run of a file asked meanwhile is
    // claimed, its import begins (it needs no record), and its arm waits
    // for the stop: the API and the panel say so, beside "Stopping".
    const lock = await holdWriteLock(path.join(dataDir, 'flashrack.db'));
    let stopping;
    let following;
    try {
      stopping = page.request.post(api('/runs/current/stop'), { data: { reason: 'end of the batch' } });
      stopping.catch(() => {});
      await shows(/Stopping/);
      following = page.request.post(api('/runs'), { data: { file: { path: file } } });
      following.catch(() => {});
      let station;
      for (let waited = 0; ; waited += 100) {
        station = await (await page.request.get(api('/station'))).json();
        if (station.arming?.state === 'waiting_for_stop') break;
        assert.ok(waited < 8_000, `never shown waiting for the stop: ${JSON.stringify(station.arming)}`);
        await new Promise((resolve) => setTimeout(resolve, 100));
      }
      assert.equal(station.arming.image_name, 'next.img', JSON.stringify(station.arming));
      assert.equal(station.arming.source, file, JSON.stringify(station.arming));
      assert.equal(station.run.id, first, JSON.stringify(station.run));
      assert.equal(station.run.recording, true, JSON.stringify(station.run));
      await shows(/Stopping: .*Next: Arming next\.img: its import from .* has begun; the run is armed once the last run's stop is recorded/);
      assert.doesNotMatch(await runState(), /is starting/);
      await page.screenshot({ path: path.join(ARTIFACTS, 'recording-waiting-for-stop.png'), fullPage: true });
    } finally {
      lock.kill('SIGKILL');
    }
    const stopped = await stopping;
    assert.ok(stopped.ok(), `${stopped.status()} ${await stopped.text()}`);
    const next = await following;
    assert.equal(next.status(), 201, await next.text());
    await shows(/Armed/, 30_000);
    assert.doesNotMatch(await runState(), /Arming/);
    const station = await (await page.request.get(api('/station'))).json();
    assert.equal(station.arming ?? null, null, JSON.stringify(station.arming));
    assert.notEqual(station.run.id, first);
  });
});

