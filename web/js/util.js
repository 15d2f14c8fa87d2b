// Helpers shared by every module: elements, formatting, messages.
// Every piece of data is inserted as text (textContent / text nodes), never as HTML.
export const $ = (id) => document.getElementById(id);

/** Builds an element. Strings among children become text nodes. */
export function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (value == null || value === false) continue;
    if (key === 'class') node.className = value;
    else if (key === 'text') node.textContent = value;
    else if (key === 'dataset') {
      for (const [name, data] of Object.entries(value)) if (data != null) node.dataset[name] = data;
    }
    else if (key.startsWith('on')) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value === true ? '' : String(value));
  }
  for (const child of children.flat()) {
    if (child == null || child === false) continue;
    node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

export function debounce(fn, ms) {
  let timer = null;
  return () => {
    clearTimeout(timer);
    timer = setTimeout(fn, ms);
  };
}

/**
 * A byte count for people, in flashrack's one notation (ByteSize's Display in
 * crates/core/src/size.rs): decimal units as sticks are sold, three
 * significant digits, no trailing zeros: 512 B, 8.59 GB, 41.9 MB, 256 GB.
 * The same whole-number steps as the Rust code, rounding half up (9,995,000
 * bytes are 10 MB, where 9.995 as a float would round down), so both give the
 * same text; tests/e2e checks this against crates/core/src/byte_size_cases.txt,
 * as ByteSize's tests do. Exact for whole numbers up to 2^53: the quotient of
 * two such numbers by division and floor is the true one, and the remainder
 * is computed exactly.
 */
export function fmtBytes(n) {
  if (typeof n !== 'number' || !Number.isFinite(n) || n < 0) return '?';
  n = Math.round(n);
  const units = ['B', 'kB', 'MB', 'GB', 'TB', 'PB', 'EB'];
  let unit = 0;
  while (unit < units.length - 1 && n >= 1000 ** (unit + 1)) unit += 1;
  if (unit === 0) return `${n} B`;
  const base = 1000 ** unit;
  // Three significant digits: 1.23, 12.3, 123.
  const digits = n < 10 * base ? 2 : n < 100 * base ? 1 : 0;
  const step = base / 10 ** digits;
  const quotient = Math.floor(n / step);
  const scaled = quotient + (2 * (n - quotient * step) >= step ? 1 : 0);
  // 999.5 kB rounds to 1000 kB, which is written 1 MB.
  if (scaled >= 1000 && digits === 0 && unit < units.length - 1) return `1 ${units[unit + 1]}`;
  const whole = Math.floor(scaled / 10 ** digits);
  const fraction = String(scaled % 10 ** digits).padStart(digits, '0').replace(/0+$/, '');
  return fraction ? `${whole}.${fraction} ${units[unit]}` : `${whole} ${units[unit]}`;
}

/**
 * fmtBytes, followed by the exact byte count where the display rounds (as
 * ByteSize::exact): for texts that compare two sizes, where rounding could
 * make different sizes look equal.
 */
export function fmtBytesExact(n) {
  if (typeof n !== 'number' || !Number.isFinite(n) || n < 0) return '?';
  return n < 1000 ? `${n} bytes` : `${fmtBytes(n)} (${n} bytes)`;
}

export function fmtRate(bytesPerSec) {
  if (!bytesPerSec || !Number.isFinite(bytesPerSec)) return '';
  return `${(bytesPerSec / 1e6).toFixed(1)} MB/s`;
}

export function fmtDuration(secs) {
  if (!Number.isFinite(secs) || secs < 0 || secs > 359999) return '';
  const s = Math.round(secs);
  const h = Math.floor(s / 3600);
  const m = Math.floor((s % 3600) / 60);
  const ss = String(s % 60).padStart(2, '0');
  return h > 0 ? `${h}:${String(m).padStart(2, '0')}:${ss}` : `${m}:${ss}`;
}

/** Unix seconds or milliseconds, or an RFC 3339 string. */
export function fmtTime(value) {
  if (value == null || value === '') return '';
  let date;
  if (typeof value === 'number') date = new Date(value > 1e11 ? value : value * 1000);
  else date = new Date(value);
  return Number.isNaN(date.getTime()) ? String(value) : date.toLocaleString();
}

export const shortSha = (sha) => (typeof sha === 'string' ? sha.slice(0, 12) : '');
const STAGE_NAMES = {
  preparing: 'preparing', writing: 'writing', flushing: 'flushing',
  resetting: 'its reset', verifying: 'verifying',
};
/** A stage in words ("removed during its reset"); an unknown code as it is. */
export const stageName = (stage) => (typeof stage === 'string' ? (STAGE_NAMES[stage] || stage) : 'an unknown stage');

/** One sentence for a failure verdict. */
export function reasonText(v) {
  switch (v.reason) {
    case 'too_small': return `too small: holds ${fmtBytesExact(v.capacity)}, the image needs ${fmtBytesExact(v.needed)}`;
    case 'no_medium': return 'no medium: the device reports a capacity of 0 bytes';
    case 'read_only': return 'read-only: the stick refuses writes';
    case 'capacity_lie': return v.real_bytes != null
      ? `fake capacity: claims ${fmtBytes(v.claimed)} but stores only ${fmtBytesExact(v.real_bytes)}`
      : `fake capacity: claims ${fmtBytes(v.claimed)} but loses data written ${v.first_bad_offset ? `at ${fmtBytes(v.first_bad_offset)}` : 'from the first byte'}`;
    case 'probe_error': return `capacity probe failed (${v.operation || 'unknown operation'}${v.offset != null ? ` at ${fmtBytes(v.offset)}` : ''}): ${v.detail || 'no detail'}`;
    case 'write_error': return `write error at ${fmtBytes(v.offset)}: ${v.detail || 'no detail'}`;
    case 'flush_error': return `flush failed: ${v.detail || 'no detail'}`;
    case 'read_error': return `read error at ${fmtBytes(v.offset)}: ${v.detail || 'no detail'}`;
    case 'verify_mismatch': return `verify mismatch at byte ${v.offset} (${fmtBytes(v.offset)})`;
    case 'removed': return `removed during ${stageName(v.during)}`;
    case 'lost_after_reset': return `lost after reset: the stick did not come back within ${v.after_secs} s of its reset`;
    case 'changed_after_reset': return `changed after reset: another stick came back in the port (${v.detail || 'no detail'}); not read back`;
    case 'stalled': return `stopped responding during ${stageName(v.during)} at ${fmtBytes(v.offset)} (no progress for ${v.after_secs} s)`;
    case 'held_by_stuck_io': return `still held by I/O stuck in the kernel since its last attempt stalled (not released within ${v.waited_secs} s): not written again; pull the stick`;
    case 'refused': return `refused by the target guard: ${v.detail || 'no detail'}`;
    case 'unavailable': return `cannot open the stick: ${v.detail || 'no detail'}`;
    case 'interrupted': return 'interrupted (stop or shutdown): the stick is untested';
    case 'station_error': return `station error, not the stick's: ${v.detail || 'no detail'}; the stick is untested`;
    default: return `failed: ${v.reason || 'unknown reason'}`;
  }
}

/** Why a run stopped, in words (the API gives a stable code). */
export function stopReasonText(code) {
  switch (code) {
    case 'operator': return 'stopped by the operator';
    case 'target_reached': return 'target count reached';
    case 'completed': return 'every target has its verdict';
    case 'shutdown': return 'station shut down';
    case 'source_failed': return 'the image could not be read';
    case 'interrupted': return 'station stopped unexpectedly';
    default: return code;
  }
}

let messageTimer = null;

export function showMessage(text, kind = 'error') {
  const box = $('message');
  box.textContent = text;
  box.className = `message message-${kind}`;
  box.hidden = false;
  clearTimeout(messageTimer);
  messageTimer = setTimeout(() => { box.hidden = true; }, kind === 'error' ? 12000 : 5000);
}

export function setStatus(id, text, kind = '') {
  const node = $(id);
  node.textContent = text;
  node.className = `status ${kind}`;
}

/** A failure in two or three large words, for the wall ("write error", "fake capacity"). */
export function shortReason(v) {
  switch (v && v.reason) {
    case 'too_small': return 'too small';
    case 'no_medium': return 'no medium';
    case 'read_only': return 'read-only';
    case 'capacity_lie': return 'fake capacity';
    case 'probe_error': return 'probe error';
    case 'write_error': return 'write error';
    case 'flush_error': return 'flush error';
    case 'read_error': return 'read error';
    case 'verify_mismatch': return 'verify mismatch';
    case 'removed': return 'pulled too early';
    case 'lost_after_reset': return 'lost after reset';
    case 'changed_after_reset': return 'changed after reset';
    case 'stalled': return 'stick hung';
    case 'held_by_stuck_io': return 'hung: pull it';
    case 'refused': return 'refused';
    case 'unavailable': return 'cannot open';
    case 'interrupted': return 'interrupted';
    case 'station_error': return 'station error';
    default: return (v && v.reason) ? String(v.reason).replace(/_/g, ' ') : 'failed';
  }
}

/** A guard refusal code in short words ("too_large" → "too large"). */
export const shortCode = (code) => (code ? String(code).replace(/_/g, ' ') : 'refused');
