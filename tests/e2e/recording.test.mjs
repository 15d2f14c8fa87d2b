// A port whose verdict waits on the records says so, and shows no verdict
// until they hold it, in Debian's chromium against `flashrack demo --by-hand
// --no-arm`: the test holds the station's database locked with Debian's
// `sqlite3` (`SQLITE3_PATH`), as an operator's manual edit left open would,
// while a stick finishes its read-back.
//
//   cargo build -p flashrack-cli && npm ci --prefix tests/e2e
//   FLASHRACK_BIN=$PWD/target/debug/flashrack node --test tests/e2e/recording.test.mjs

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
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
