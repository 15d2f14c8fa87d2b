// Wall mode: the rack fills the screen (a TV across the room), each port a
// large glyph and word. The state is carried by the glyph, the word and the
// tile's border pattern as well as by colour, so that it reads without colour.

import { $, shortReason, shortCode } from './util.js';
import { BUSY, isInterrupted, isForeignOutcome } from './model.js';

// Words of at most seven letters, so that each is large on a narrow tile.
const GLYPHS = {
  empty: ['—', 'EMPTY'],
  detected: ['◇', 'IDLE'],
  master: ['★', 'MASTER'],
  refused: ['⊘', 'REFUSED'],
  waiting: ['…', 'WAITING'],
  preparing: ['●', 'OPENING'],
  writing: ['●', 'WRITING'],
  flushing: ['●', 'SYNCING'],
  // Reset before its read-back (or in the probe): the stick leaves and comes back.
  resetting: ['◑', 'RESET'],
  verifying: ['◐', 'VERIFY'],
  passed: ['✓', 'PASS'],
  failed: ['✗', 'FAIL'],
};

function percent(progress) {
  if (!progress || !progress.total) return null;
  return Math.min(100, Math.floor((progress.done / progress.total) * 100));
}

/**
 * The wall's words for a port: `{ glyph, word, pct, detail }`, e.g. `✓ PASS /
 * done — safe to pull`, `✗ FAIL / write error`, `● WRITING 62 %`.
 */
export function wallFace(port, stale) {
  let [glyph, word] = GLYPHS[port.state] || ['?', String(port.state).toUpperCase()];
  let detail = '';
  let pct = null;
  if (BUSY.has(port.state)) {
    const p = percent(port.progress);
    if (p != null && !stale && (port.state === 'writing' || port.state === 'verifying')) pct = `${p} %`;
  } else if (isForeignOutcome(port)) {
    [glyph, word] = ['◌', 'OLD RUN'];
    detail = port.verdict && port.verdict.verdict === 'pass' ? 'passed in an earlier run' : 'failed in an earlier run';
  } else if (isInterrupted(port)) {
    [glyph, word] = ['‖', 'STOPPED'];
    detail = shortReason(port.verdict);
  } else if (port.state === 'failed') {
    detail = port.verdict ? shortReason(port.verdict) : '';
    if (!port.device) detail = `${detail} · stick out`;
  } else if (port.state === 'passed') {
    if (port.ejected) detail = 'ejected — pull it';
    else if (port.device) detail = 'done — safe to pull';
    else detail = 'stick out';
  } else if (port.state === 'refused') {
    detail = port.refusal ? shortCode(port.refusal.code) : shortReason(port.verdict);
  } else if (port.state === 'detected' && port.passed_before != null) {
    detail = 'serial passed before: write?';
  }
  if (stale) word = `${word}?`;
  return { glyph, word, pct, detail };
}

/** Whether the page is on the wall (`?wall`, or the toggle). */
export const isWall = () => document.body.classList.contains('wall');

function setWall(on) {
  document.body.classList.toggle('wall', on);
  const button = $('wall-toggle');
  button.setAttribute('aria-pressed', String(on));
  button.textContent = on ? '⤡ Leave wall view' : '⤢ Wall view';
  const url = new URL(window.location.href);
  if (on) url.searchParams.set('wall', '');
  else url.searchParams.delete('wall');
  window.history.replaceState(null, '', url.toString().replace(/wall=(&|$)/, 'wall$1'));
}

/** Wall mode from the URL, and the toggle. */
export function startWall(onChange) {
  const wanted = new URL(window.location.href).searchParams.has('wall');
  setWall(wanted);
  $('wall-toggle').addEventListener('click', () => {
    setWall(!isWall());
    onChange();
  });
}
