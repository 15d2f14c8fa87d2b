// The run panel: the armed run, its counters, arming and stopping.

import { $, el, fmtBytes, fmtDuration, shortSha, stopReasonText, showMessage, setStatus } from './util.js';
import { model, BUSY } from './model.js';
import { api } from './api.js';
import { setRun } from './live.js';
import { renderSummary } from './rack.js';
import { runningDownloadOf } from './images.js';

// A run being armed from a URL says how its download is getting on.
document.addEventListener('flashrack:downloads', () => renderRun());

/**
 * What the run being armed is at, in words (the station's `arming.state`):
 * claimed (its import starting), waiting for the last run's stop to be
 * recorded (its import begun), or its start being recorded.
 */
export function armingText(arming) {
  const from = arming.source ? ` from ${arming.source}` : '';
  switch (arming.state) {
    case 'claimed': {
      // A server that fails or stalls: the download's retries, said here
      // too (the run waits for its first bytes meanwhile).
      const download = /^https?:\/\//.test(arming.source || '') ? runningDownloadOf(arming.source) : null;
      const retry = download && download.retrying
        ? `; trying again (try ${download.retrying.next_try} of ${download.retrying.tries}) after: ${download.retrying.error}`
        : '';
      return `Arming ${arming.image_name}: its import${from} is starting; the run is recorded once the first bytes are in${retry}`;
    }
    case 'waiting_for_stop':
      return `Arming ${arming.image_name}: its import${from} has begun; the run is armed once the last run's stop is recorded`;
    default:
      return `Arming ${arming.image_name}: recording the run before any stick is written`;
  }
}
export function renderRun() {
  const run = model.run;
  const armed = Boolean(run && run.armed);
  const state = $('run-state');
  if (model.stale) {
    // Armed or not, the station cannot say: never a green "Armed" here.
    state.textContent = `? Run state unknown: the station is unreachable${run ? ` (last known: run #${run.id} ${run.armed ? 'armed' : 'stopped'})` : ''}`;
    state.className = 'run-state run-unknown';
  } else if (model.arming && !armed) {
    // Nothing is armed, nor written, until the records hold the run; a
    // claimed run waits for its import to begin before it is recorded.
    state.textContent = `◌ ${armingText(model.arming)}`;
    state.className = 'run-state run-recording';
  } else if (!run) {
    state.textContent = 'No run';
    state.className = 'run-state run-none';
  } else if (armed && run.recording) {
    // Its sticks were stopped at once; it is over once the records say so.
    // A run waiting to be armed after it says so too: the station shows
    // both, and the screen must not hide the one behind the other.
    state.textContent = '◌ Stopping: the sticks were stopped; recording the run\'s end'
      + (model.arming ? `. Next: ${armingText(model.arming)}` : '');
    state.className = 'run-state run-recording';
  } else if (armed) {
    state.textContent = '● Armed: sticks plugged into mapped ports are written';
    state.className = 'run-state run-armed';
  } else {
    state.textContent = `■ Stopped${run.stop_reason ? `: ${stopReasonText(run.stop_reason)}` : ''}${run.recording ? ' (not in the records yet: retried until they take it)' : ''}`;
    state.className = 'run-state run-stopped';
  }
  // While the records take a run's start or end, neither control can work.
  const recording = Boolean(model.arming) || Boolean(armed && run.recording);
  $('run-view').replaceChildren(run ? runDetails(run) : '');
  // Controls that cannot work are not offered: no stop without an armed
  // run, nothing at all while the station cannot be reached. A run only
  // claimed (its import not begun: a server that sends nothing) can be
  // stopped: the station drops it at once.
  const claimedOnly = Boolean(model.arming && model.arming.state === 'claimed' && !armed);
  $('stop-form').hidden = !(claimedOnly || (armed && !recording)) || model.stale;
  $('arm-form').hidden = armed || recording || model.stale;
  $('retry-row').hidden = !armed || recording || model.stale;
  renderSummary();
}

/**
 * The import a run follows (a URL or a file not cached when the run was
 * armed): its bytes so far, of its total when known, and how it ended.
 */
export function importBlock(run) {
  const imp = run.import;
  const pct = imp.total ? Math.min(100, Math.floor((imp.done / imp.total) * 100)) : null;
  const words = {
    importing: 'Importing',
    recording: 'Imported, being recorded',
    done: 'Imported',
    failed: 'Import failed',
  }[imp.state] || imp.state;
  const amount = imp.total
    ? `${fmtBytes(imp.done)} of ${fmtBytes(imp.total)} (${pct} %)`
    : `${fmtBytes(imp.done)}`;
  const bar = el('div', {
    class: 'bar',
    role: 'progressbar',
    'aria-label': 'import',
    'aria-valuemin': 0,
    'aria-valuemax': 100,
    'aria-valuenow': pct == null ? null : pct,
  }, el('span'));
  bar.firstChild.style.width = `${imp.state === 'done' || imp.state === 'recording' ? 100 : (pct ?? 0)}%`;
  return el('div', { class: `run-import run-import-${imp.state}` },
    el('p', {},
      el('strong', { text: `${words}: ` }),
      el('span', { class: 'run-import-source', text: imp.source }),
      ` · ${amount}`),
    imp.state === 'importing' ? bar : null,
    imp.state === 'importing'
      ? el('p', { class: 'muted', text: 'The sticks are written as the image arrives; none passes before it is imported and its sha256 known.' })
      : null,
    // Imported, but the records do not hold it as the run's image yet: the
    // run still names its provisional digest, and no stick passes until
    // they do.
    imp.state === 'recording'
      ? el('p', { class: 'muted', text: 'Recording the image as the run\'s: no stick passes before the records hold it.' })
      : null,
    imp.error ? el('p', { class: 'bad run-import-error', text: imp.error }) : null);
}

export function runDetails(run) {
  const o = run.options || {};
  // The run names its image once the records hold it as the run's.
  const pending = run.import && run.import.state === 'recording' ? 'shown once recorded' : 'known when imported';
  const counter = (name, value) => el('div', { class: `counter counter-${name}` },
    el('dt', { text: name }), el('dd', { text: value == null ? '—' : String(value) }));
  return el('div', { class: 'run-details' },
    el('p', { class: 'run-image' },
      el('strong', { text: run.image_name || 'image' }),
      ` · ${run.import && run.import.state !== 'done' && !run.image_size ? `size ${pending}` : fmtBytes(run.image_size)} · `,
      run.import && run.import.state !== 'done'
        ? el('span', { class: 'muted', text: `sha256 ${pending}` })
        : el('code', { text: shortSha(run.image_sha256), title: run.image_sha256 || '' }),
      ` · run #${run.id}`),
    el('p', { class: 'muted', text: `${o.audit ? 'audit (nothing written) · ' : ''}verify: ${o.verify || '?'}`
      + `${o.sparse ? ' · sparse (block map only)' : ''}`
      + `${o.sample != null ? ` · sampled (${o.sample} %)` : ''}`
      + ` · eject on pass: ${o.eject_on_pass ? 'yes' : 'no'}`
      + ` · target: ${o.target_count == null ? 'no limit' : o.target_count}`
      + `${o.retries ? ` · retries: ${o.retries}` : ''}` }),
    run.import ? importBlock(run) : null,
    el('p', { class: 'run-who muted', text: `operator: ${o.operator || 'not given'} · lot: ${o.lot || 'not given'}` }),
    // The same counts as the records (reports, runs list, /metrics):
    // an interrupted attempt is not a failed stick, nor is a refused one.
    el('dl', { class: 'counters' },
      counter('passed', run.passed),
      counter('failed', run.failed),
      counter('interrupted', run.interrupted ?? 0),
      counter('refused', run.refused ?? 0),
      counter('active', run.active),
      counter('remaining', run.remaining == null ? '∞' : run.remaining)),
    el('p', { class: 'muted', text: `${fmtBytes(run.bytes_written)} written in this run` }));
}

export async function stopRun(event) {
  event.preventDefault();
  const button = $('stop-button');
  const reason = $('stop-reason').value.trim();
  // Stopping interrupts every stick being written: ask first.
  const busy = [...model.ports.values()].filter((port) => BUSY.has(port.state)).map((port) => port.label);
  if (busy.length) {
    const sticks = busy.length === 1 ? '1 stick is' : `${busy.length} sticks are`;
    const question = `${sticks} being written (${busy.join(', ')}). Stopping the run interrupts `
      + `${busy.length === 1 ? 'it' : 'them'}: recorded as interrupted, the stick${busy.length === 1 ? ' is' : 's are'} left untested. Stop the run?`;
    if (!window.confirm(question)) return;
  }
  button.disabled = true;
  try {
    await api('POST', '/runs/current/stop', reason ? { reason } : {});
    $('stop-reason').value = '';
    refreshRunSoon();
  } catch (error) {
    showMessage(`Stop: ${error.message}`);
  } finally {
    button.disabled = false;
  }
}

/** The longest operator name or lot id the station accepts (the API's MAX_LABEL). */
export const MAX_RUN_LABEL = 100;

/**
 * An operator name or lot id checked as the API checks it: trimmed, empty
 * means not given, at most 100 characters and no control characters.
 * `{ value }` (null when not given) or `{ error }`.
 */
export function runLabel(what, text) {
  const value = String(text ?? '').trim();
  if (!value) return { value: null };
  // eslint-disable-next-line no-control-regex
  if ([...value].length > MAX_RUN_LABEL || /[\u0000-\u001f\u007f-\u009f]/u.test(value)) {
    return { error: `${what} must be at most ${MAX_RUN_LABEL} characters, without control characters` };
  }
  return { value };
}

/**
 * Shows the fields of the image source chosen in the arm form: a cached
 * image, a URL or a file on the station (the two last are imported while
 * the sticks follow).
 */
export function showArmSource() {
  const source = $('arm-source').value;
  $('arm-cached-fields').hidden = source !== 'cached';
  $('arm-image').required = source === 'cached';
  $('arm-url-fields').hidden = source !== 'url';
  $('arm-file-fields').hidden = source !== 'file';
}

/**
 * The image part of the arm request, as the form gives it: `{ image }`,
 * `{ download: {…} }` or `{ file: {…} }`; or `{ error }`.
 */
export function armSource() {
  const optional = (id) => $(id).value.trim() || undefined;
  switch ($('arm-source').value) {
    case 'url': {
      const url = $('arm-url').value.trim();
      if (!url) return { error: 'Give the image\'s URL.' };
      // The names of the image library's import-url form (and of the
      // API's body): the station answers a bad combination with its reason.
      const download = {
        url,
        sha256: optional('arm-url-sha256'),
        sha256sums: optional('arm-url-sums'),
        signature: optional('arm-url-sig'),
        keyring: optional('arm-url-keyring'),
        bmap: optional('arm-url-bmap'),
        // Sent only when ticked (the filter below drops undefined).
        no_bmap: $('arm-url-no-bmap').checked || undefined,
        zip_entry: optional('arm-url-zip-entry'),
      };
      return { download: Object.fromEntries(Object.entries(download).filter(([, v]) => v !== undefined)) };
    }
    case 'file': {
      const path = $('arm-file').value.trim();
      if (!path) return { error: 'Give the file\'s path on the station.' };
      const sha256 = optional('arm-file-sha256');
      return { file: sha256 ? { path, sha256 } : { path } };
    }
    default: {
      const image = $('arm-image').value;
      if (!image) return { error: 'Import an image first.' };
      return { image };
    }
  }
}

/**
 * Shows the run the station armed, unless the event stream has shown it
 * already: the stream's view of it is as new or newer (a run following an
 * import changes with every update of its bytes, and the answer to the
 * request may come after them).
 */
function showArmed(run) {
  if (!model.run || model.run.id !== run.id) setRun(run);
}

export async function armRun(event) {
  event.preventDefault();
  const source = armSource();
  if (source.error) {
    setStatus('arm-status', source.error, 'bad');
    return;
  }
  const image = source.image;
  const target = $('arm-target').value.trim();
  const labels = {};
  for (const [key, what] of [['operator', 'Operator'], ['lot', 'Lot']]) {
    const checked = runLabel(what, $(`arm-${key}`).value);
    if (checked.error) {
      setStatus('arm-status', checked.error, 'bad');
      $(`arm-${key}`).focus();
      return;
    }
    if (checked.value) labels[key] = checked.value;
  }
  const body = {
    ...source,
    verify: $('arm-verify').value,
    eject_on_pass: $('arm-eject').checked,
    sparse: $('arm-sparse').checked,
    target_count: target ? Number(target) : null,
    ...labels,
  };
  if ($('arm-mode').value === 'audit') body.audit = true;
  const sample = $('arm-sample').value.trim();
  if (sample) body.sample = Number(sample);
  const retries = $('arm-retries').value.trim();
  if (retries) body.retries = Number(retries);
  const chosen = image ? model.images.find((i) => i.sha256 === image) : null;
  const button = $('arm-button');
  button.disabled = true;
  try {
    if (chosen && chosen.raw_write_refusal && !body.audit) {
      // The station is asked first, without a force: its refusal is what the
      // operator is shown, and what its event log keeps (`run_refused`, with
      // the operator and the options asked for), whatever is decided next.
      // Declining leaves that refusal as the record of the decision; forcing
      // adds the forced arming. Nothing is armed before the operator agrees:
      // a station that does not refuse the image arms it as asked.
      setStatus('arm-status', 'Asking the station…');
      try {
        showArmed(await api('POST', '/runs', body));
        setStatus('arm-status', '');
        return;
      } catch (error) {
        if (error.status !== 422) throw error;
      }
      const refusal = chosen.raw_write_refusal;
      const advice = refusal.advice ? refusal.advice.charAt(0).toUpperCase() + refusal.advice.slice(1) : '';
      const force = window.confirm(`${refusal.reason}.\n\n${advice}.\n\nForce a raw run anyway? (recorded in the run)`);
      if (!force) {
        setStatus('arm-status', `Not armed: ${refusal.reason}. Nothing was forced; the refusal is in the station's event log.`, 'bad');
        return;
      }
      body.force_raw = true;
    }
    setStatus('arm-status', image ? 'Arming…' : 'Starting the import: the run is armed as soon as the first bytes arrive…');
    showArmed(await api('POST', '/runs', body));
    setStatus('arm-status', '');
  } catch (error) {
    setStatus('arm-status', error.message, 'bad');
  } finally {
    button.disabled = false;
  }
}

/** "Retry all failed": the sticks still in their ports that may pass now. */
export async function retryFailed() {
  const button = $('retry-button');
  button.disabled = true;
  try {
    const answer = await api('POST', '/runs/current/retry-failed', {});
    const ports = answer.ports || [];
    showMessage(ports.length ? `Retrying ${ports.join(', ')}` : 'No failed stick to retry (a fake or read-only stick is never retried)');
  } catch (error) {
    showMessage(`Retry: ${error.message}`);
  } finally {
    button.disabled = false;
  }
}

/** After a change, in case the event stream is down. */
export function refreshRunSoon() {
  setTimeout(async () => {
    try {
      const snapshot = await api('GET', '/station');
      setRun(snapshot.run || null);
    } catch (_) { /* the stream will tell */ }
  }, 300);
}

const median = (values) => {
  const sorted = [...values].sort((a, b) => a - b);
  const mid = Math.floor(sorted.length / 2);
  return sorted.length % 2 ? sorted[mid] : (sorted[mid - 1] + sorted[mid]) / 2;
};

/** How far through its attempt a busy stick is, 0..1 (the write as the first half, the read-back the second). */
function attemptFraction(port) {
  const p = port.progress;
  const f = p && p.total ? Math.min(1, p.done / p.total) : 0;
  if (port.state === 'writing') return f / 2;
  if (port.state === 'flushing') return 0.5;
  if (port.state === 'verifying') return 0.5 + f / 2;
  return 0;
}

/**
 * How often a port takes a new stick in this run, in seconds: the median gap
 * between consecutive attempts in the same port (from the records' port
 * history), which includes the time sticks wait to be swapped. `null` before
 * any port has had two sticks.
 */
function portCycleSecs(runId) {
  const gaps = [];
  for (const history of model.history.values()) {
    const rows = history.verdicts.filter((row) => row.run_id === runId && typeof row.started_at === 'number');
    for (let i = 0; i + 1 < rows.length; i += 1) gaps.push((rows[i].started_at - rows[i + 1].started_at) / 1000);
  }
  return gaps.length ? median(gaps) : null;
}

/**
 * The batch as the operator counts it: passes against the target, sticks in
 * flight, the yield so far (passes among the sticks found good or bad:
 * refusals and interruptions say nothing about a stick), and an ETA from the
 * station's measured time per stick in this run (the median of the write and
 * read-back times of its passes) and, once ports have had a second stick, how
 * often a port turns over (swap time included).
 */
export function batchFigures() {
  const run = model.run;
  if (!run) return null;
  const target = run.options && run.options.target_count != null ? run.options.target_count : null;
  const judged = run.passed + run.failed;
  const busy = [...model.ports.values()].filter((port) => BUSY.has(port.state));
  const samples = [...model.stickSecs.values()];
  const perStick = samples.length ? median(samples) : null;
  const cycle = perStick ? Math.max(perStick, portCycleSecs(run.id) || 0) : null;
  let eta = null;
  if (target != null && run.armed && perStick) {
    const left = Math.max(0, target - run.passed);
    const passRate = judged ? Math.max(run.passed / judged, 0.05) : 1;
    // Sticks in flight finish first; the rest go through every port in
    // waves, as many more sticks as the yield says it takes.
    const inFlight = busy.map((port) => perStick * (1 - attemptFraction(port)));
    const more = Math.max(0, left - busy.length * passRate) / passRate;
    const ports = Math.max(1, model.ports.size);
    eta = left === 0 ? 0 : Math.max(0, ...inFlight) + Math.ceil(more / ports) * cycle;
  }
  return {
    passed: run.passed,
    target,
    inFlight: run.active ?? busy.length,
    yieldPct: judged ? Math.round((run.passed / judged) * 100) : null,
    judged,
    perStick,
    cycle,
    eta,
  };
}

/** The batch line: in the run panel, and across the top of the wall. */
export function renderBatch() {
  const b = batchFigures();
  const panel = $('batch');
  const strip = $('wall-strip');
  if (!b) {
    panel.replaceChildren();
    strip.replaceChildren(el('span', { class: 'strip-item', text: model.stale ? 'station unreachable' : 'no run' }));
    return;
  }
  const stale = model.stale;
  const passes = b.target != null ? `${b.passed} / ${b.target}` : `${b.passed}`;
  const eta = stale ? 'ETA unknown'
    : b.target == null ? 'no target'
      : b.eta === 0 ? 'target reached'
        : b.eta != null ? `ETA ~${fmtDuration(b.eta) || '—'}`
          : 'ETA: measuring';
  const yieldText = b.yieldPct == null ? 'yield —' : `yield ${b.yieldPct} %`;
  const pct = b.target ? Math.min(100, Math.floor((b.passed / b.target) * 100)) : null;
  const bar = pct == null ? null : el('div', {
    class: 'bar batch-bar', role: 'progressbar', 'aria-label': 'Passes of the target', 'aria-valuemin': 0, 'aria-valuemax': 100, 'aria-valuenow': pct,
  }, el('span'));
  if (bar) bar.firstChild.style.width = `${pct}%`;
  // No target, no bar (replaceChildren would show a null as the text "null").
  panel.replaceChildren(...[
    el('p', { class: 'batch-passes' }, el('strong', { class: 'batch-count', text: passes }), b.target != null ? ' passes of the target' : ' passes (no target)'),
    bar,
    el('p', { class: 'batch-line' },
      el('span', { class: 'batch-inflight', text: `${stale ? '?' : b.inFlight} in flight` }), ' · ',
      el('span', { class: 'batch-eta', text: eta }), ' · ',
      el('span', { class: 'batch-yield', text: yieldText, title: `${b.passed} passed of ${b.judged} sticks judged` }),
      b.perStick ? el('span', { class: 'muted', text: ` · ${fmtDuration(b.perStick)} a stick` }) : null,
      b.cycle > b.perStick ? el('span', { class: 'muted', text: `, ${fmtDuration(b.cycle)} with the swap` }) : null),
  ].filter(Boolean));
  strip.replaceChildren(
    el('span', { class: 'strip-item strip-passes' }, '✓ ', el('strong', { text: passes })),
    el('span', { class: 'strip-item strip-failed' }, '✗ ', el('strong', { text: String(model.run.failed) })),
    el('span', { class: 'strip-item', text: `● ${stale ? '?' : b.inFlight} in flight` }),
    el('span', { class: 'strip-item', text: eta }),
    el('span', { class: 'strip-item', text: yieldText }));
}
