// The rack: one tile per port, placed as the ports are on the station.

import { $, el, fmtBytes, fmtRate, fmtDuration, reasonText, showMessage } from './util.js';
import { model, BUSY, STATE_NAMES, STATE_MARKS, isInterrupted, verdictIsCurrent, verdictRunText, isForeignOutcome } from './model.js';
import { api } from './api.js';
import { needsAck, acknowledge, renderAlerts } from './alerts.js';
import { wallFace } from './wall.js';
import { renderBatch } from './run.js';
import { openCapture } from './images.js';

export function findTile(label) {
  for (const tile of $('rack').children) if (tile.dataset.label === label) return tile;
  return null;
}

/**
 * Grid places: ports with a position keep their row and column (shifted so the
 * smallest is 1); ports without one (or on a taken cell) flow in rows after.
 */
export function layout(ports) {
  const placed = [];
  const loose = [];
  const taken = new Set();
  for (const port of ports) {
    const pos = port.position;
    const key = Array.isArray(pos) ? `${pos[0]},${pos[1]}` : null;
    if (key && !taken.has(key)) {
      taken.add(key);
      placed.push(port);
    } else {
      loose.push(port);
    }
  }
  const rows = placed.map((p) => p.position[0]);
  const cols = placed.map((p) => p.position[1]);
  const minRow = Math.min(...rows);
  const minCol = Math.min(...cols);
  const width = placed.length ? Math.max(...cols) - minCol + 1 : Math.min(Math.max(ports.length, 1), 4);
  const height = placed.length ? Math.max(...rows) - minRow + 1 : 0;
  placed.sort((a, b) => a.position[0] - b.position[0] || a.position[1] - b.position[1]);
  const places = placed.map((port) => ({
    port, row: port.position[0] - minRow + 1, col: port.position[1] - minCol + 1,
  }));
  loose.forEach((port, i) => {
    places.push({ port, row: height + 1 + Math.floor(i / width), col: (i % width) + 1 });
  });
  return { width, places };
}

export function renderRack() {
  const rack = $('rack');
  const { width, places } = layout([...model.ports.values()]);
  rack.style.setProperty('--cols', String(width));
  if (!places.length) {
    // A station whose configuration maps no port writes nothing: say how to map them.
    rack.replaceChildren(el('p', {
      class: 'muted', id: 'no-ports',
      text: 'No ports are mapped: this station writes no stick. On the station, stop flashrack, ' +
        'run "flashrack ports learn --config /etc/flashrack/station.toml", plug a stick into each ' +
        'port in turn and name it, then start flashrack again.',
    }));
  } else {
    rack.replaceChildren(...places.map(({ port, row, col }) => {
      const tile = buildTile(port);
      tile.style.setProperty('--row', String(row));
      tile.style.setProperty('--col', String(col));
      return tile;
    }));
  }
  renderSummary();
}

export function replaceTile(old, port) {
  const tile = buildTile(port);
  tile.style.cssText = old.style.cssText;
  const focused = old.contains(document.activeElement) ? document.activeElement.dataset.action : null;
  old.replaceWith(tile);
  if (focused) {
    const again = tile.querySelector(`[data-action="${focused}"]`);
    if (again) again.focus();
  }
}

export function renderSummary() {
  const counts = {};
  for (const port of model.ports.values()) {
    let key = BUSY.has(port.state) ? 'busy' : port.state;
    if (isInterrupted(port)) key = 'interrupted';
    // A pass of another run is no pass of this one: counted apart.
    if (isForeignOutcome(port)) key = 'of an earlier run';
    counts[key] = (counts[key] || 0) + 1;
  }
  const parts = [model.stale ? `${model.ports.size} ports (last known)` : `${model.ports.size} ports`];
  for (const key of ['busy', 'waiting', 'passed', 'failed', 'interrupted', 'of an earlier run', 'refused', 'detected', 'master', 'capturing']) {
    if (counts[key]) parts.push(`${counts[key]} ${key}`);
  }
  const run = model.run;
  if (run) {
    const state = model.stale ? 'state unknown' : run.armed ? 'armed' : 'stopped';
    parts.push(`run #${run.id} ${state}: ${run.passed} passed, ${run.failed} failed, ${run.refused || 0} refused, ${run.interrupted || 0} interrupted`);
  }
  $('rack-summary').textContent = parts.join(' · ');
  renderAlerts();
  renderBatch();
}


export function stateLabel(port) {
  let label;
  if (isForeignOutcome(port)) {
    const what = port.verdict && port.verdict.verdict === 'pass' ? 'Passed' : 'Failed';
    label = `${what} in run #${port.verdict_run ? port.verdict_run.run_id : '?'}: not this run`;
  } else if (isInterrupted(port)) label = 'Interrupted';
  // The stage alone: the percentage is on the progress line, where a narrow
  // tile has room for it.
  else label = (STATE_MARKS[port.state] || '') + (STATE_NAMES[port.state] || port.state);
  // A sampled pass is never shown as a plain one.
  const method = port.figures && port.figures.verify_method;
  if (port.state === 'passed' && (method === 'sampled' || method === 'audit')) label += ` · ${passText(port.figures)}`;
  return model.stale ? `${label}?` : label;
}

export function percent(progress) {
  if (!progress || !progress.total) return null;
  return Math.min(100, Math.floor((progress.done / progress.total) * 100));
}

export function buildTile(port) {
  const busy = BUSY.has(port.state);
  let group = busy ? 'busy' : port.state;
  if (isInterrupted(port)) group = 'interrupted';
  if (isForeignOutcome(port)) group = 'foreign';
  const alarm = !model.stale && needsAck(port);
  const suspect = Boolean(model.history.get(port.label)?.check_port);
  return el('article', {
    class: `tile tile-${group}${alarm ? ' tile-alarm' : ''}${suspect ? ' tile-suspect' : ''}`,
    dataset: {
      state: port.state,
      label: port.label,
      verdictRun: port.verdict_run ? String(port.verdict_run.run_id) : null,
      verdictCurrent: port.verdict ? String(verdictIsCurrent(port)) : null,
      alarm: alarm ? 'on' : null,
      checkPort: suspect ? 'true' : null,
    },
    onclick: alarm ? (event) => {
      // On the wall a failed tile is acknowledged by a touch or a click anywhere on it.
      if (document.body.classList.contains('wall') && !event.target.closest('button')) ackPort(port);
    } : null,
  },
  el('header', { class: 'tile-head' },
    el('span', { class: 'tile-label', text: port.label }),
    el('span', { class: 'tile-state', text: stateLabel(port) })),
  port.mapped === false ? el('p', { class: 'tag', text: 'unmapped port', title: port.port_path || '' }) : null,
  // A master port's stick is never written: it is captured into the cache.
  port.master ? el('p', { class: 'tag tag-master', text: 'master port: never written', title: 'its stick is offered for capture, never written by a run' }) : null,
  // A sparse run writes and checks only the image's block map: said on every
  // busy port, and in the pass itself.
  busy && model.run && model.run.options && model.run.options.sparse
    ? el('p', { class: 'tag tag-sparse', text: 'sparse', title: 'only the block map\'s ranges are written and read back' }) : null,
  deviceBlock(port),
  // A stale view claims no progress: the stick may be done, or gone. A
  // master being captured shows its progress as a write does.
  (busy || port.state === 'capturing') && !model.stale ? progressBlock(port) : null,
  (busy || port.state === 'capturing') && model.stale ? el('p', { class: 'stale-note', text: `last known: ${port.state}; progress unknown` }) : null,
  port.state === 'waiting' ? el('p', { class: 'waiting-note', text: 'waiting: target nearly reached (starts if a stick in flight fails)' }) : null,
  // A stick with the serial of one that passed in this run: that stick put
  // in again, or another of its batch. Nothing of it was read, so no pass
  // is shown; it is written only if the operator asks.
  port.state === 'detected' && port.passed_before != null
    ? el('p', { class: 'passed-before-note', text: `a stick with this serial passed in this run (attempt ${port.passed_before}); this one is not written unless you ask` })
    : null,
  // The records are taking the attempt's start (nothing written yet) or its
  // verdict (shown once they hold it).
  busy && port.recording && !model.stale
    ? el('p', { class: 'recording-note', text: port.attempt_id == null ? 'recording the attempt before writing' : 'recording the verdict', title: 'shown once the records hold it' }) : null,
  verdictBlock(port),
  // The guard's refusal: { code, message }. One refused at the moment of opening
  // is also the verdict, which verdictBlock shows.
  port.refusal && port.state === 'refused' && !(port.verdict && port.verdict.reason === 'refused')
    ? el('p', { class: 'reason', text: port.refusal.message, title: port.refusal.code, dataset: { code: port.refusal.code } })
    : null,
  port.ejected ? el('p', { class: 'badge-ejected', text: '⏏ ejected — pull it' }) : null,
  safeToPull(port) ? el('p', { class: 'badge-safe', text: '✓ done — safe to pull' }) : null,
  historyBlock(port),
  wallBlock(port),
  actionsBlock(port));
}

export function deviceBlock(port) {
  const d = port.device;
  if (!d) {
    // A stick pulled during its attempt: the port keeps its verdict.
    const gone = port.state !== 'empty' && port.verdict;
    return el('p', { class: 'device muted', text: gone ? 'stick removed' : port.state === 'empty' ? 'no stick' : '' });
  }
  const name = [d.vendor, d.model].filter((s) => s && String(s).trim()).join(' ') || 'unknown stick';
  return el('div', { class: 'device' },
    el('p', { class: 'device-name', text: name }),
    el('p', { class: 'device-meta' },
      fmtBytes(d.capacity),
      d.serial ? ` · SN ${d.serial}` : ' · no serial',
      d.kernel_name ? ` · ${d.kernel_name}` : ''));
}

export function progressBlock(port) {
  const p = port.progress;
  const pct = percent(p);
  const parts = [];
  if (p) {
    if (pct != null) parts.push(`${pct}%`);
    // Following an image whose size is known only at its import's end.
    parts.push(p.total ? `${fmtBytes(p.done)} / ${fmtBytes(p.total)}` : `${fmtBytes(p.done)} (image still arriving)`);
    const rate = fmtRate(p.bytes_per_sec);
    if (rate) parts.push(rate);
    if (p.bytes_per_sec > 0 && p.total > p.done) {
      const eta = fmtDuration((p.total - p.done) / p.bytes_per_sec);
      if (eta) parts.push(`ETA ${eta}`);
    }
  }
  const bar = el('div', {
    class: 'bar',
    role: 'progressbar',
    'aria-label': `${port.label} ${port.state}`,
    'aria-valuemin': 0,
    'aria-valuemax': 100,
    'aria-valuenow': pct == null ? null : pct,
  }, el('span'));
  bar.firstChild.style.width = `${pct == null ? 0 : pct}%`;
  return el('div', { class: 'progress' }, bar, el('p', { class: 'progress-text', text: parts.join(' · ') }));
}

export function verdictBlock(port) {
  const v = port.verdict;
  if (!v || BUSY.has(port.state)) return null;
  // Every verdict names its run and image; one of another run is history,
  // not an outcome of the current run.
  const current = verdictIsCurrent(port);
  const origin = el('p', { class: 'verdict-run muted', text: current ? `${verdictRunText(port)}` : `${verdictRunText(port)}: not this run` });
  if (!current) {
    const what = v.verdict === 'pass' ? 'passed' : `failed (${reasonText(v)})`;
    return el('div', { class: 'verdict verdict-foreign' },
      el('p', { class: 'foreign', text: `${what} in ${verdictRunText(port)} — not this run` }));
  }
  if (v.verdict === 'pass') {
    return el('div', { class: 'verdict verdict-pass' },
      el('p', { class: 'pass', text: passText(port.figures) }),
      speedsText(port.figures) ? el('p', { class: 'muted', text: speedsText(port.figures) }) : null,
      origin);
  }
  return el('div', { class: 'verdict verdict-fail' },
    el('p', { class: 'reason', text: reasonText(v) }),
    v.stage ? el('p', { class: 'muted', text: `stage: ${v.stage}` }) : null,
    origin);
}

export function passText(f) {
  const method = f && f.verify_method;
  if (!f) return 'written and verified';
  if (!method || method === 'none') return 'written, not verified';
  // A sparse pass proves the mapped ranges only: never shown as a plain pass.
  if (f.bytes_skipped > 0) {
    return `sparse: ${fmtBytes(f.bytes_verified)} verified (${method}${f.verified_after_reset ? ', after reset' : ''}), ${fmtBytes(f.bytes_skipped)} not written nor checked`;
  }
  // A weaker proof says what it is, never a plain pass (the engine's
  // AttemptFigures::pass_words).
  if (method === 'sampled') return f.sample ? `sampled (${+f.sample.percent.toFixed(2)} %)` : 'sampled';
  if (method === 'audit') return 'audit pass: read back, nothing written';
  // A read-back after a reset of the stick is the stronger proof: no cache
  // inside the stick could have answered it (DESIGN.md, "Proof beyond the host").
  return f.verified_after_reset ? `verified (${method}, after reset)` : `verified (${method})`;
}

export function speedsText(f) {
  if (!f) return '';
  const parts = [];
  if (f.write_secs > 0) parts.push(`write ${fmtRate(f.bytes_written / f.write_secs)}`);
  if (f.verify_secs > 0) parts.push(`read ${fmtRate(f.bytes_verified / f.verify_secs)}`);
  return parts.join(' · ');
}

/**
 * A pass whose stick is still in the port and not ejected: the attempt is
 * over (written, flushed, read back, and every handle on the stick closed
 * before the verdict), so the stick can be pulled.
 */
export const safeToPull = (port) => port.state === 'passed' && !port.ejected && Boolean(port.device)
  && verdictIsCurrent(port) && !model.stale;

const HISTORY_MARKS = { pass: '✓', fail: '✗', refused: '⊘', interrupted: '‖', running: '●' };

/** The port's latest verdicts from the records (newest first), and a warning for a suspect port. */
function historyBlock(port) {
  const history = model.history.get(port.label);
  if (!history || !history.verdicts.length) return null;
  const marks = history.verdicts.map((row) => el('span', {
    class: `mark mark-${row.verdict}`,
    title: `${row.verdict}${row.reason_code ? ` (${row.reason_code.replace(/_/g, ' ')})` : ''} · ${row.serial || row.device_key} · run #${row.run_id}`,
  }, HISTORY_MARKS[row.verdict] || '?'));
  return el('div', { class: 'history' },
    el('p', { class: 'history-marks', 'aria-label': `${port.label}: last ${history.verdicts.length} verdicts, newest first` },
      el('span', { class: 'history-title', text: 'last: ' }), ...marks),
    history.check_port
      ? el('p', { class: 'check-port', text: '⚠ check this port/hub', title: 'Different sticks failed here one after another, with no pass between' })
      : null);
}

/** What the wall shows of a port: a large glyph and word, and a few short words. */
function wallBlock(port) {
  const face = wallFace(port, model.stale);
  const history = model.history.get(port.label);
  // The word is sized to the tile by its length (--chars), so that it never
  // overflows a narrow tile and is as large as the tile allows.
  return el('div', { class: 'wall-face' },
    el('p', { class: 'wall-label', text: port.label }),
    el('p', { class: 'wall-word' },
      el('span', { class: 'wall-glyph', text: face.glyph }), ' ',
      el('span', { class: 'wall-text', style: `--chars: ${Math.max(4, face.word.length)}`, text: face.word }),
      face.pct ? el('span', { class: 'wall-pct', text: ` ${face.pct}` }) : null),
    face.detail ? el('p', { class: 'wall-detail', text: face.detail }) : null,
    history && history.check_port ? el('p', { class: 'wall-check', text: '⚠ check port' }) : null);
}

function ackPort(port) {
  acknowledge(port);
  const tile = findTile(port.label);
  if (tile) replaceTile(tile, port);
  renderAlerts();
}

/**
 * "Write again" only where it can work: a run is armed, the station is
 * reachable, and the stick is still in the port.
 */
export function actionsBlock(port) {
  const ack = !model.stale && needsAck(port)
    ? el('button', {
      type: 'button',
      class: 'small ack',
      'data-action': 'ack',
      'aria-label': `Acknowledge the failure in port ${port.label}`,
      onclick: () => ackPort(port),
    }, 'Acknowledge')
    : null;
  if (port.state === 'master' && port.device && !model.stale) {
    return el('div', { class: 'tile-actions' },
      el('button', {
        type: 'button',
        class: 'small',
        'data-action': 'capture',
        'aria-label': `Capture the master in port ${port.label}`,
        onclick: () => openCapture(port.label),
      }, 'Capture…'));
  }
  const mayRepeat = port.state === 'detected' && port.passed_before != null;
  if ((port.state !== 'passed' && port.state !== 'failed' && !mayRepeat) || port.ejected || !port.device
    || model.stale || !model.run || !model.run.armed) {
    return ack ? el('div', { class: 'tile-actions' }, ack) : null;
  }
  return el('div', { class: 'tile-actions' }, ack,
    el('button', {
      type: 'button',
      class: 'small',
      'data-action': 'again',
      'aria-label': `Write port ${port.label} ${mayRepeat ? 'now' : 'again'}`,
      onclick: (event) => writeAgain(port.label, event.currentTarget),
    }, mayRepeat ? 'Write it' : 'Write again'));
}

export async function writeAgain(label, button) {
  button.disabled = true;
  try {
    await api('POST', `/ports/${encodeURIComponent(label)}/start`);
    showMessage(`${label}: writing again`, 'info');
  } catch (error) {
    showMessage(`${label}: ${error.message}`);
    button.disabled = false;
  }
}
