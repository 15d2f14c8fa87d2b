// The live event stream and what it changes: the snapshot, ports, the run;
// and whether the view is live at all.

import { $, el } from './util.js';
import { model, STALE_AFTER_MS, verdictIsCurrent } from './model.js';
import { API, api, withToken } from './api.js';
import { renderRack, renderSummary, findTile, replaceTile } from './rack.js';
import { renderRun } from './run.js';
import { loadImages, followCapturePort } from './images.js';
import { renderRuns, refreshRunsSoon, refreshDevicesSoon, refreshHistorySoon } from './records.js';

let source = null;
let retryDelay = 1000;
let retryTimer = null;
let lastHeard = 0; // Date.now() of the last message on the stream (or of its opening)

export function setConnection(kind, text) {
  const badge = $('conn');
  badge.className = `conn conn-${kind}`;
  badge.textContent = text;
}

export function parseData(event) {
  try {
    return JSON.parse(event.data);
  } catch (_) {
    return null;
  }
}

export function connectEvents() {
  if (source) source.close();
  clearTimeout(retryTimer);
  lastHeard = Date.now();
  source = new EventSource(withToken(`${API}/events`));
  const heard = () => { lastHeard = Date.now(); };
  source.addEventListener('snapshot', (event) => {
    heard();
    const snapshot = parseData(event);
    if (!snapshot) return;
    // Only a fresh snapshot on a working stream makes the view live again.
    model.stale = false;
    model.staleSince = null;
    applySnapshot(snapshot);
    renderStale();
    retryDelay = 1000;
    setConnection('live', '● Live');
  });
  source.addEventListener('ping', heard);
  source.addEventListener('port', (event) => {
    heard();
    const data = parseData(event);
    if (data && data.port) upsertPort(data.port);
  });
  source.addEventListener('port_gone', (event) => {
    heard();
    const data = parseData(event);
    if (data) removePort(data.label);
  });
  source.addEventListener('run', (event) => {
    heard();
    const data = parseData(event);
    if (data) setRun(data.run);
  });
  source.addEventListener('arming', (event) => {
    heard();
    const data = parseData(event);
    if (!data) return;
    model.arming = data.arming || null;
    renderRun();
  });
  source.onerror = () => {
    markStale();
    if (source.readyState === EventSource.CLOSED) scheduleReconnect();
  };
}

/** A stream that says nothing, not even its pings, is as good as lost. */
export function watchStream() {
  setInterval(() => {
    if (!source || Date.now() - lastHeard <= STALE_AFTER_MS) return;
    markStale();
    connectEvents();
  }, 2000);
}

/** From now on the view is not live: say so, and since when. */
export function markStale() {
  if (!model.stale) {
    model.stale = true;
    model.staleSince = new Date();
    renderStale();
  }
  setConnection('lost', '✕ Disconnected');
}

export const fmtClock = (date) => [date.getHours(), date.getMinutes(), date.getSeconds()]
  .map((n) => String(n).padStart(2, '0')).join(':');

/** Everything that depends on whether the view is live. */
export function renderStale() {
  document.body.classList.toggle('stale', model.stale);
  const banner = $('stale-banner');
  banner.hidden = !model.stale;
  if (model.stale) {
    banner.replaceChildren(
      el('strong', { text: `Station unreachable: this view is stale since ${fmtClock(model.staleSince)}.` }),
      ' Nothing below is live: sticks may have finished, failed or been pulled since. Reconnecting…');
  }
  renderRack();
  renderRun();
  renderRuns();
}

/** EventSource gives up on an HTTP error (401, 503): retry ourselves. */
export function scheduleReconnect() {
  clearTimeout(retryTimer);
  retryTimer = setTimeout(async () => {
    try {
      applySnapshot(await api('GET', '/station')); // asks for the token on a 401
    } catch (_) { /* still down */ }
    connectEvents();
  }, retryDelay);
  retryDelay = Math.min(retryDelay * 2, 30000);
}

/** A pass of the current run: how long the stick took, for the batch's ETA. */
function noteStickTime(port) {
  const f = port.figures;
  if (port.state !== 'passed' || !f || port.attempt_id == null || !verdictIsCurrent(port)) return;
  const secs = (f.write_secs || 0) + (f.verify_secs || 0);
  if (secs > 0) model.stickSecs.set(port.attempt_id, secs);
}

export function applySnapshot(snapshot) {
  model.stationId = snapshot.station_id || '';
  model.ports = new Map((snapshot.ports || []).map((port) => [port.label, port]));
  // A snapshot (on connecting, after a gap) may carry verdicts no port event
  // told of: the records shown follow them.
  refreshHistorySoon();
  refreshDevicesSoon();
  refreshRunsSoon();
  $('station-id').textContent = model.stationId;
  renderRack();
  model.arming = snapshot.arming || null;
  setRun(snapshot.run || null);
  for (const port of model.ports.values()) noteStickTime(port);
}

export function upsertPort(port) {
  const before = model.ports.get(port.label);
  model.ports.set(port.label, port);
  noteStickTime(port);
  if (port.master) followCapturePort(before, port);
  const tile = findTile(port.label);
  if (before && tile && samePosition(before, port)) {
    replaceTile(tile, port);
    renderSummary();
  } else {
    renderRack();
  }
  // A new verdict (or another one for the same attempt): the records shown follow.
  if (port.verdict && (!before || before.attempt_id !== port.attempt_id
    || JSON.stringify(before.verdict) !== JSON.stringify(port.verdict))) {
    refreshDevicesSoon();
    refreshRunsSoon();
    refreshHistorySoon();
  }
}

export function removePort(label) {
  if (model.ports.delete(label)) renderRack();
}

export function setRun(run) {
  const before = model.run;
  model.run = run;
  // The time a stick takes is measured afresh for each run (image, options).
  if ((before && before.id) !== (run && run.id)) model.stickSecs.clear();
  // Which verdicts are of the current run, and which controls can work,
  // depend on the run: the tiles follow.
  if ((before && before.id) !== (run && run.id) || Boolean(before && before.armed) !== Boolean(run && run.armed)) renderRack();
  renderRun();
  // `active`: an attempt started (or ended) is a record too, which the runs
  // list counts as running.
  const changed = !before || !run || before.id !== run.id || before.armed !== run.armed
    || ['passed', 'failed', 'refused', 'interrupted', 'active'].some((key) => before[key] !== run[key]);
  if (changed) {
    refreshRunsSoon();
    // A run's stop interrupts its sticks: their devices' latest verdicts change.
    refreshDevicesSoon();
  }
  if (!run || !run.armed) {
    if (!before || before.armed !== false) loadImages();
  }
}

export const samePosition = (a, b) => JSON.stringify(a.position) === JSON.stringify(b.position);
