// The records: runs with their reports, and devices.

import { $, el, debounce, fmtBytes, fmtTime, shortSha, stopReasonText } from './util.js';
import { model } from './model.js';
import { API, api, withToken } from './api.js';
import { renderRack } from './rack.js';

export const refreshRunsSoon = debounce(loadRuns, 300);

/**
 * Each load is numbered: an answer older than one already shown is dropped,
 * so a slow request can never put back records that a newer one replaced
 * (a device shown "running" after its attempt was interrupted).
 */
const loads = { runs: 0, devices: 0 };
const shown = { runs: 0, devices: 0 };
function fresh(kind, number) {
  if (number < shown[kind]) return false;
  shown[kind] = number;
  return true;
}

/** Reads of the runs list made again because the records lagged the run. */
let lagging = 0;

export async function loadRuns() {
  const number = ++loads.runs;
  try {
    const rows = await api('GET', '/runs');
    if (!fresh('runs', number)) return;
    model.runs = Array.isArray(rows) ? rows : [];
    renderRuns();
    // The run counts an attempt as active once it starts, and the records
    // once its start is written, a moment later (behind a busy database,
    // longer): while they differ the list is read again, for a while, so
    // that it never stays behind the run with nothing left to refresh it.
    const current = model.run && model.runs.find((r) => (r.id ?? r.run_id) === model.run.id);
    const behind = current && model.run.armed && current.running != null
      && model.run.active != null && current.running !== model.run.active;
    if (behind && lagging < 20) {
      lagging += 1;
      setTimeout(refreshRunsSoon, 500);
    } else if (!behind) {
      lagging = 0;
    }
  } catch (error) {
    $('run-list').replaceChildren(el('li', { class: 'muted', text: `Runs: ${error.message}` }));
  }
}

export function reportLink(path, format, text, newTab) {
  const href = `${path}?format=${format}`;
  return el('a', {
    class: `report-${format}`,
    href: withToken(href),
    'data-href': href,
    target: newTab ? '_blank' : null,
    rel: newTab ? 'noopener' : null,
  }, text);
}

export function reportLinks(path, what, labels = false) {
  return el('span', { class: 'links', 'aria-label': `${what} reports` },
    reportLink(path, 'csv', 'CSV', false),
    reportLink(path, 'json', 'JSON', false),
    reportLink(path, 'html', 'Print', true),
    // The label sheet: a printable label with a QR code per stick that passed.
    labels ? reportLink(path, 'labels', 'Labels', true) : null);
}

export function renderRuns() {
  const list = $('run-list');
  const rows = [...model.runs].sort((a, b) => (Number(b.id) || 0) - (Number(a.id) || 0));
  if (!rows.length) {
    list.replaceChildren(el('li', { class: 'muted', text: 'No runs recorded yet.' }));
    return;
  }
  list.replaceChildren(...rows.slice(0, 30).map(runRow));
}

export function runRow(run) {
  const id = run.id ?? run.run_id;
  const image = run.image_name || run.image || run.name || shortSha(run.image_sha256) || '';
  const started = fmtTime(run.started_at ?? run.started);
  const counts = [];
  for (const key of ['passed', 'failed', 'refused', 'interrupted', 'running']) {
    if (run[key] != null && (run[key] !== 0 || key === 'passed' || key === 'failed')) counts.push(`${run[key]} ${key}`);
  }
  let stopped = 'open';
  const current = model.run && model.run.id === id ? model.run : null;
  if (run.armed === true || (current && current.armed && run.stopped_at == null)) stopped = model.stale ? 'armed when last seen' : 'armed';
  else if (run.armed === false || run.stopped_at != null || run.stop_reason) {
    stopped = `stopped${run.stop_reason ? ` (${stopReasonText(run.stop_reason)})` : ''}`;
  }
  return el('li', { class: 'row', dataset: { runId: String(id) } },
    el('div', { class: 'row-main' },
      el('strong', { text: `Run #${id}` }), ` ${image}`,
      el('span', { class: 'muted small-text', text: ` ${[started, counts.join(', '), stopped].filter(Boolean).join(' · ')}` })),
    id == null ? null : reportLinks(`${API}/runs/${encodeURIComponent(id)}/report`, `Run ${id}`, true));
}

export const refreshDevicesSoon = debounce(loadDevices, 2000);

export async function loadDevices() {
  const number = ++loads.devices;
  try {
    const rows = await api('GET', '/devices');
    if (!fresh('devices', number)) return;
    model.devices = Array.isArray(rows) ? rows : [];
    renderDevices();
  } catch (error) {
    $('device-list').replaceChildren(el('li', { class: 'muted', text: `Devices: ${error.message}` }));
  }
}

export function deviceKey(device) {
  return device.key ?? device.device_key ?? device.serial;
}

export function renderDevices() {
  const query = $('device-search').value.trim().toLowerCase();
  const matches = model.devices.filter((d) => !query
    || [deviceKey(d), d.serial, d.vendor, d.model].some((s) => s && String(s).toLowerCase().includes(query)));
  const list = $('device-list');
  if (!matches.length) {
    list.replaceChildren(el('li', { class: 'muted', text: model.devices.length ? 'No device matches.' : 'No devices recorded yet.' }));
    return;
  }
  const limit = query ? 50 : 10;
  const shown = matches.slice(0, limit).map(deviceRow);
  if (matches.length > limit) shown.push(el('li', { class: 'muted', text: `${matches.length - limit} more: search by serial` }));
  list.replaceChildren(...shown);
}

const VERDICT_MARKS = { pass: '✓ pass', fail: '✗ fail', refused: '⊘ refused', interrupted: '‖ interrupted', running: '● running' };

export function deviceRow(device) {
  const key = deviceKey(device);
  const name = [device.vendor, device.model].filter(Boolean).join(' ');
  const meta = [
    device.serial ? `SN ${device.serial}` : 'no serial',
    device.capacity != null ? fmtBytes(Number(device.capacity)) : null,
    device.attempts != null ? `${device.attempts} attempt${device.attempts === 1 ? '' : 's'}` : null,
    device.last_seen != null ? `last seen ${fmtTime(device.last_seen)}` : null,
  ].filter(Boolean).join(' · ');
  const last = device.last_verdict
    ? el('span', {
      class: `last-verdict last-${device.last_verdict}`,
      title: device.last_reason_code ? device.last_reason_code.replace(/_/g, ' ') : '',
    }, `${VERDICT_MARKS[device.last_verdict] || device.last_verdict}${device.last_port ? ` in ${device.last_port}` : ''}`
      + `${device.last_reason_code && device.last_verdict !== 'pass' ? ` (${device.last_reason_code.replace(/_/g, ' ')})` : ''}`)
    : el('span', { class: 'last-verdict muted', text: 'never written' });
  return el('li', { class: 'row', dataset: { deviceKey: String(key) } },
    el('div', { class: 'row-main' },
      el('strong', { text: name || String(key) }), ' ', last,
      el('span', { class: 'muted small-text', text: ` ${meta}` })),
    key == null ? null : el('span', { class: 'links' },
      el('button', {
        type: 'button',
        class: 'small device-history',
        'aria-label': `History of device ${key}`,
        onclick: () => openDeviceHistory(key, name),
      }, 'History'),
      reportLinks(`${API}/devices/${encodeURIComponent(key)}/report`, `Device ${key}`)));
}

/** A device's records, in the page: every attempt and refusal, newest first. */
export async function openDeviceHistory(key, name) {
  const dialog = $('device-dialog');
  const body = $('device-history');
  $('device-dialog-title').textContent = `${name || 'Device'} · ${key}`;
  body.replaceChildren(el('p', { class: 'muted', text: 'Loading…' }));
  if (!dialog.open) dialog.showModal();
  let report;
  try {
    report = await api('GET', `/devices/${encodeURIComponent(key)}/report?format=json`);
  } catch (error) {
    body.replaceChildren(el('p', { class: 'status bad', text: `History: ${error.message}` }));
    return;
  }
  const d = report.device || {};
  const rows = [...(report.attempts || [])].reverse();
  const counts = ['passed', 'failed', 'refused', 'interrupted']
    .map((k) => `${d[k] ?? 0} ${k}`).join(' · ');
  body.replaceChildren(
    el('p', { class: 'muted', text: `${d.serial ? `SN ${d.serial} · ` : ''}${d.capacity_bytes != null ? `${fmtBytes(Number(d.capacity_bytes))} · ` : ''}${counts}` }),
    rows.length
      ? el('table', { class: 'history-table' },
        el('thead', {}, el('tr', {}, ...['When', 'Port', 'Run', 'Image', 'Verdict', 'Why'].map((h) => el('th', { scope: 'col', text: h })))),
        el('tbody', {}, ...rows.map((row) => el('tr', { class: `verdict-row-${row.verdict}` },
          el('td', { text: fmtTime(row.started_at) }),
          el('td', { text: row.port_label || '' }),
          el('td', { text: row.run_id != null ? `#${row.run_id}` : '—' }),
          el('td', { text: row.image_name || shortSha(row.image_sha256) || '—' }),
          el('td', { class: 'history-verdict', text: VERDICT_MARKS[row.verdict] || row.verdict }),
          el('td', { text: row.reason_detail || (row.reason_code ? row.reason_code.replace(/_/g, ' ') : '') })))))
      : el('p', { class: 'muted', text: 'No attempts recorded.' }),
    el('p', { class: 'small-text' }, 'Download: ', reportLinks(`${API}/devices/${encodeURIComponent(key)}/report`, `Device ${key}`)));
}

/** How many verdicts each port's tile shows. */
const HISTORY_LENGTH = 6;

/** Each port's latest verdicts from the records, and whether it is suspect. */
export async function loadPortHistory() {
  try {
    const rows = await api('GET', `/port-history?last=${HISTORY_LENGTH}`);
    model.history = new Map((Array.isArray(rows) ? rows : []).map((row) => [row.port_label, row]));
  } catch (_) {
    return; // a station without records has no history; the stream tells of outages
  }
  renderRack();
}

export const refreshHistorySoon = debounce(loadPortHistory, 1000);
