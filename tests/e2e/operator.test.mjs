// The operator's view of the dashboard, against `flashrack demo` in Debian's
// chromium: wall mode at 1920×1080, the alarm and its acknowledgement, the
// tab's title and icon, safe-to-pull, batch progress, port and device
// history, dark mode, and the phone's order. Screenshots go to a temporary
// directory (printed; FLASHRACK_SCREENSHOTS names another) to be looked at.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { chromium } from 'playwright-core';

import { BIN, CHROMIUM, CHROMIUM_ARGS, requireExecutable, startDemo, stopDemo } from './demo.mjs';

const WALL_WORD = /^(✓ PASS|✗ FAIL|● WRITING( \d+ %)?|● (OPENING|SYNCING)|◑ RESET|◐ VERIFY( \d+ %)?|⊘ REFUSED|— EMPTY|◇ IDLE|… WAITING|‖ STOPPED|◌ OLD RUN)$/;
const TITLE = /^✗(\d+) · ✓(\d+) — flashrack/;

const luminance = (rgb) => {
  const [r, g, b] = rgb.match(/\d+/g).map(Number);
  return 0.2126 * r + 0.7152 * g + 0.0722 * b;
};

test('wall mode, the alarm, the title, safe to pull, batch progress, history, dark mode and the phone order', { timeout: 300_000 }, async () => {
  requireExecutable(BIN, 'build it with `cargo build -p flashrack-cli` or set FLASHRACK_BIN');
  requireExecutable(CHROMIUM, 'install it with `apt-get install -y chromium` or set CHROMIUM_PATH');
  const shots = process.env.FLASHRACK_SCREENSHOTS || mkdtempSync(path.join(tmpdir(), 'flashrack-screens-'));
  mkdirSync(shots, { recursive: true });
  console.log(`screenshots: ${shots}`);
  const dataDir = mkdtempSync(path.join(tmpdir(), 'flashrack-e2e-'));
  const { child, url: urlPromise } = startDemo(dataDir);
  let browser;
  let page;
  let stopped;
  try {
    const url = await urlPromise;
    // A batch with a target: stop the demo's run, arm one of 40 passes.
    const api = async (method, route, body) => {
      const response = await fetch(`${url}api/v1${route}`, {
        method, headers: body ? { 'Content-Type': 'application/json' } : {}, body: body ? JSON.stringify(body) : undefined,
      });
      const text = await response.text();
      assert.ok(response.ok, `${method} ${route}: ${response.status} ${text}`);
      return text ? JSON.parse(text) : null;
    };
    await api('POST', '/runs/current/stop', {});
    const [image] = await api('GET', '/images');
    const run = await api('POST', '/runs', { image: image.sha256, target_count: 40 });

    browser = await chromium.launch({ executablePath: CHROMIUM, args: [...CHROMIUM_ARGS, '--autoplay-policy=user-gesture-required'] });
    const pageErrors = [];
    const open = async (options, query = '') => {
      const context = await browser.newContext(options);
      const p = await context.newPage();
      p.on('pageerror', (error) => pageErrors.push(error.message));
      await p.goto(`${url}${query}`);
      await p.waitForFunction(() => /live/i.test(document.querySelector('#conn')?.textContent || ''), null, { timeout: 15_000 });
      return p;
    };

    // ---------------------------------------------------------------- desktop
    page = await open({ viewport: { width: 1440, height: 1000 } });
    // A failure of this run: its tile pulses until acknowledged.
    const alarmed = page.locator('.tile[data-alarm="on"]').first();
    await alarmed.waitFor({ timeout: 90_000 });
    assert.equal(await page.evaluate(() => document.body.dataset.alarm), 'on');
    // Looked up and measured in one go: a tile is replaced whenever its port changes.
    assert.equal(await page.evaluate(() => getComputedStyle(document.querySelector('.tile[data-alarm="on"]')).animationName), 'alarm-pulse');
    // The tab's title counts fails and passes; the icon is drawn.
    await page.waitForFunction((re) => new RegExp(re).test(document.title), TITLE.source, { timeout: 15_000 });
    const [, fails] = TITLE.exec(await page.title());
    assert.ok(Number(fails) >= 1, `the title counts the failure: ${await page.title()}`);
    assert.match(await page.locator('#favicon').getAttribute('href'), /^data:image\/png;base64,/);
    assert.match(await page.locator('#favicon').getAttribute('data-kind'), /^alarm:\d+$/);
    // Sound is off until the operator enables it (the browser's autoplay rule).
    const sound = page.locator('#sound-toggle');
    assert.equal(await sound.getAttribute('data-sound'), 'off');
    assert.match(await sound.textContent(), /enable sound/i);
    await sound.click();
    await page.waitForFunction(() => document.querySelector('#sound-toggle').dataset.sound === 'on', null, { timeout: 5_000 });
    await page.waitForFunction(() => Number(document.querySelector('#sound-toggle').dataset.beeps) >= 1, null, { timeout: 5_000 });
    // Acknowledged: that port stops pulsing (its button, clicked while the
    // tile is surely the one on screen: the demo pulls sticks 12 s after
    // their verdict).
    const { label, alarm } = await page.evaluate(() => {
      const tile = document.querySelector('.tile[data-alarm="on"]');
      tile.querySelector('[data-action="ack"]').click();
      const now = document.querySelector(`.tile[data-label="${tile.dataset.label}"]`);
      return { label: tile.dataset.label, alarm: now.dataset.alarm || null };
    });
    assert.equal(alarm, null, `${label}: acknowledged, no more alarm on the port`);
    // Kept for that failure (port and attempt) across a reload, until the next stick.
    const acked = (await (await page.request.get(`${url}api/v1/ports/${label}`)).json()).attempt_id;
    await page.reload();
    await page.waitForFunction(() => /live/i.test(document.querySelector('#conn')?.textContent || ''), null, { timeout: 15_000 });
    const after = await page.evaluate((l) => {
      const t = document.querySelector(`.tile[data-label="${l}"]`);
      return { alarm: t.dataset.alarm || null, state: t.dataset.state };
    }, label);
    const now = (await (await page.request.get(`${url}api/v1/ports/${label}`)).json()).attempt_id;
    if (now === acked) assert.equal(after.alarm, null, `${label}: still acknowledged after a reload`);
    else console.log(`${label} has had its next stick since (attempt ${acked} → ${now}): nothing left to check`);

    // Safe to pull: a pass in this run with the stick still in (no eject).
    await page.locator('.tile[data-state="passed"] .badge-safe').first().waitFor({ timeout: 60_000 });
    assert.match(await page.locator('.badge-safe').first().textContent(), /done — safe to pull/);
    // Batch progress: passes of the target, in flight, ETA from measured times, yield.
    await page.waitForFunction(() => /ETA ~\d/.test(document.querySelector('#batch .batch-eta')?.textContent || ''), null, { timeout: 60_000 });
    assert.match(await page.locator('#batch .batch-count').textContent(), /^\d+ \/ 40$/);
    assert.match(await page.locator('#batch .batch-inflight').textContent(), /^\d+ in flight$/);
    assert.match(await page.locator('#batch .batch-yield').textContent(), /^yield \d+ %$/);
    // Each port's latest verdicts, from the records.
    await page.locator('.tile .history-marks .mark').first().waitFor({ timeout: 30_000 });
    const history = await (await page.request.get(`${url}api/v1/port-history?last=6`)).json();
    const withHistory = history.find((port) => port.verdicts.length > 0);
    const marksOf = `.tile[data-label="${withHistory.port_label}"] .history-marks .mark`;
    await page.locator(marksOf).first().waitFor({ timeout: 15_000 });
    const marks = await page.locator(marksOf).count();
    assert.ok(marks >= 1 && marks <= 6, `${withHistory.port_label} shows its latest verdicts (${marks})`);
    // Devices: last verdict and attempt count; the history opens in the page.
    await page.click('#devices-refresh');
    const deviceRow = page.locator('#device-list li[data-device-key]').filter({ has: page.locator('.last-verdict:not(.muted)') }).first();
    await deviceRow.waitFor({ timeout: 30_000 });
    assert.match(await deviceRow.textContent(), /\d+ attempts?/);
    await deviceRow.locator('button.device-history').click();
    await page.locator('#device-dialog[open] .history-table tbody tr').first().waitFor({ timeout: 10_000 });
    await page.screenshot({ path: path.join(shots, 'device-history.png') });
    await page.locator('#device-dialog button[type="submit"]').click();
    await page.screenshot({ path: path.join(shots, 'desktop.png'), fullPage: true });

    // ---------------------------------------------------------------- wall, 1920×1080
    const wall = await open({ viewport: { width: 1920, height: 1080 } }, '?wall');
    assert.ok(await wall.evaluate(() => document.body.classList.contains('wall')));
    // Wait for a rack with a failure and a stick being written.
    await wall.waitForFunction(() => {
      const words = [...document.querySelectorAll('.tile .wall-word')].map((node) => node.textContent);
      return words.some((w) => w.includes('FAIL')) && words.some((w) => /WRITING \d+ %/.test(w));
    }, null, { timeout: 60_000, polling: 250 });
    // Queried and measured in one go: a tile is replaced whenever its port changes.
    const faces = await wall.evaluate(() => [...document.querySelectorAll('.tile')].map((t) => {
      const word = t.querySelector('.wall-word');
      const box = t.getBoundingClientRect();
      return {
        label: t.dataset.label,
        state: t.dataset.state,
        word: word.textContent.trim(),
        glyphPx: parseFloat(getComputedStyle(t.querySelector(".wall-glyph")).fontSize),
        wordPx: parseFloat(getComputedStyle(t.querySelector('.wall-text')).fontSize),
        // Nothing sticks out of the tile: every line fits its width and the tile's height.
        fits: [...t.querySelectorAll('.wall-face > *, .wall-word > *')]
          .every((node) => node.getBoundingClientRect().right <= box.right + 1 && node.getBoundingClientRect().bottom <= box.bottom + 1),
        labelPx: parseFloat(getComputedStyle(t.querySelector('.wall-label')).fontSize),
        detail: t.querySelector('.wall-detail')?.textContent || '',
        border: getComputedStyle(t).borderTopStyle,
        visible: box.width > 0 && box.bottom <= window.innerHeight + 1 && box.right <= window.innerWidth + 1,
      };
    }));
    for (const face of faces) {
      assert.match(face.word, WALL_WORD, `${face.label}: a glyph and a word`);
      // At 1080p a pixel is about 0.6 mm on a 50" screen: a 64 px glyph is
      // about 3 cm tall, a 36 px word's capitals about 1.5 cm (4 m ÷ 250).
      assert.ok(face.glyphPx >= 64, `${face.label}: the glyph is large (${face.glyphPx} px)`);
      assert.ok(face.wordPx >= 36, `${face.label}: the word is large (${face.wordPx} px)`);
      assert.ok(face.fits, `${face.label}: the words fit the tile`);
      assert.ok(face.labelPx >= 40, `${face.label}: the label is large (${face.labelPx} px)`);
      assert.ok(face.visible, `${face.label}: on the screen without scrolling`);
      if (face.state === 'failed' && face.word.includes('FAIL')) {
        assert.ok(face.detail && face.detail.split(/\s+/).length <= 4, `${face.label}: the reason in short words: ${face.detail}`);
        assert.equal(face.border, 'double', `${face.label}: a failure has its own frame (shape, not only colour)`);
      }
    }
    console.log(`wall faces: ${JSON.stringify(faces.map((f) => `${f.label} ${f.word}${f.detail ? ` / ${f.detail}` : ''} (${f.glyphPx}/${f.wordPx} px)`))}`);
    assert.equal(await wall.locator('.side').isVisible(), false, 'the wall shows the rack only');
    const rack = await wall.locator('#rack').boundingBox();
    assert.ok(rack.width >= 1800 && rack.height >= 750, `the rack fills the screen (${rack.width}×${rack.height})`);
    assert.match(await wall.locator('#wall-strip').textContent(), /\/ 40.*in flight.*(ETA|target).*yield/);
    await wall.screenshot({ path: path.join(shots, 'wall-1920x1080.png') });
    // The toggle leaves wall mode and the URL follows.
    await wall.click('#wall-toggle');
    assert.equal(await wall.evaluate(() => document.body.classList.contains('wall')), false);
    assert.doesNotMatch(wall.url(), /wall/);

    // ---------------------------------------------------------------- dark
    const dark = await open({ viewport: { width: 1440, height: 1000 }, colorScheme: 'dark' });
    await dark.locator('.tile[data-state]').first().waitFor({ timeout: 15_000 });
    const page_bg = await dark.evaluate(() => getComputedStyle(document.documentElement).backgroundColor);
    const panel_bg = await dark.evaluate(() => getComputedStyle(document.querySelector('.panel')).backgroundColor);
    const ink = await dark.evaluate(() => getComputedStyle(document.querySelector('.panel h2')).color);
    assert.ok(luminance(page_bg) < 40 && luminance(panel_bg) < 40, `dark grounds: ${page_bg}, ${panel_bg}`);
    assert.ok(luminance(ink) > 180, `light ink: ${ink}`);
    await dark.waitForTimeout(1000); // let progress bars settle for the picture
    await dark.screenshot({ path: path.join(shots, 'dark.png'), fullPage: true });

    // ---------------------------------------------------------------- phone
    const phone = await open({ viewport: { width: 360, height: 800 }, deviceScaleFactor: 2, isMobile: true, hasTouch: true });
    await phone.locator('.tile[data-state]').first().waitFor({ timeout: 15_000 });
    const top = (selector) => phone.locator(selector).first().evaluate((node) => node.getBoundingClientRect().top);
    const [runTop, batchTop, countersTop, rackTop, imagesTop] = [
      await top('.run-panel'), await top('#batch'), await top('.counters'), await top('.rack-panel'), await top('#images-title'),
    ];
    assert.ok(runTop < rackTop && batchTop < rackTop && countersTop < rackTop,
      `run panel and counters before the rack (run ${runTop}, batch ${batchTop}, counters ${countersTop}, rack ${rackTop})`);
    assert.ok(rackTop < imagesTop, `the rack before the images (${rackTop} < ${imagesTop})`);
    const overflow = await phone.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
    assert.ok(overflow <= 0, `no sideways scrolling at 360 px (overflow ${overflow} px)`);
    await phone.screenshot({ path: path.join(shots, 'phone.png') });
    await phone.screenshot({ path: path.join(shots, 'phone-full.png'), fullPage: true });

    assert.equal(run.options.target_count, 40);
    assert.deepEqual(pageErrors, [], 'no JavaScript errors on the pages');
  } catch (error) {
    if (page) await page.screenshot({ path: path.join(shots, 'failure.png'), fullPage: true }).catch(() => {});
    error.message += `\n--- the demo's last output:\n${child.log()}`;
    throw error;
  } finally {
    if (browser) await browser.close().catch(() => {});
    stopped = await stopDemo(child);
    rmSync(dataDir, { recursive: true, force: true });
  }
  assert.ok(!stopped.forced, 'the demo exits on SIGTERM');
});
