// flashrack dashboard: plain JS, no framework, no build step.
// Every piece of data is inserted as text (textContent / text nodes), never as HTML.
'use strict';

(() => {
  const API = '/api/v1';
  const TOKEN_KEY = 'flashrack.token';
  const BUSY = new Set(['preparing', 'writing', 'flushing', 'verifying']);
  const STATE_NAMES = {
    empty: 'Empty', detected: 'Detected', refused: 'Refused', waiting: 'Waiting', preparing: 'Preparing',
    writing: 'Writing', flushing: 'Flushing', verifying: 'Verifying',
    passed: 'Passed', failed: 'Failed',
  };
  const STATE_MARKS = { passed: '✓ ', failed: '✗ ', refused: '⊘ ' };

  // The dashboard never passes off an old view as live: when the event stream
  // is lost (or has been silent for STALE_AFTER_MS: the station pings every 5 s)
  // or a request cannot reach the station, the view is marked stale until the
  // stream is back with a fresh snapshot.
  const STALE_AFTER_MS = 12000;

  const model = {
    stationId: '',
    stale: false,
    staleSince: null, // Date: when the view stopped being live
    ports: new Map(), // label -> PortView, in the station's order
    run: null,
    images: [],
    runs: [],
    devices: [],
  };

  // ---------------------------------------------------------------- helpers

  const $ = (id) => document.getElementById(id);

  /** Builds an element. Strings among children become text nodes. */
  function el(tag, props = {}, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(props)) {
      if (value == null || value === false) continue;
      if (key === 'class') node.className = value;
      else if (key === 'text') node.textContent = value;
      else if (key === 'dataset') Object.assign(node.dataset, value);
      else if (key.startsWith('on')) node.addEventListener(key.slice(2), value);
      else node.setAttribute(key, value === true ? '' : String(value));
    }
    for (const child of children.flat()) {
      if (child == null || child === false) continue;
      node.append(child instanceof Node ? child : String(child));
    }
    return node;
  }

  function debounce(fn, ms) {
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
  function fmtBytes(n) {
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
  function fmtBytesExact(n) {
    if (typeof n !== 'number' || !Number.isFinite(n) || n < 0) return '?';
    return n < 1000 ? `${n} bytes` : `${fmtBytes(n)} (${n} bytes)`;
  }

  function fmtRate(bytesPerSec) {
    if (!bytesPerSec || !Number.isFinite(bytesPerSec)) return '';
    return `${(bytesPerSec / 1e6).toFixed(1)} MB/s`;
  }

  function fmtDuration(secs) {
    if (!Number.isFinite(secs) || secs < 0 || secs > 359999) return '';
    const s = Math.round(secs);
    const h = Math.floor(s / 3600);
    const m = Math.floor((s % 3600) / 60);
    const ss = String(s % 60).padStart(2, '0');
    return h > 0 ? `${h}:${String(m).padStart(2, '0')}:${ss}` : `${m}:${ss}`;
  }

  /** Unix seconds or milliseconds, or an RFC 3339 string. */
  function fmtTime(value) {
    if (value == null || value === '') return '';
    let date;
    if (typeof value === 'number') date = new Date(value > 1e11 ? value : value * 1000);
    else date = new Date(value);
    return Number.isNaN(date.getTime()) ? String(value) : date.toLocaleString();
  }

  const shortSha = (sha) => (typeof sha === 'string' ? sha.slice(0, 12) : '');
  const stageName = (stage) => (typeof stage === 'string' ? stage : 'an unknown stage');

  /** One sentence for a failure verdict. */
  function reasonText(v) {
    switch (v.reason) {
      case 'too_small': return `too small: holds ${fmtBytesExact(v.capacity)}, the image needs ${fmtBytesExact(v.needed)}`;
      case 'no_medium': return 'no medium: the device reports a capacity of 0 bytes';
      case 'read_only': return 'read-only: the stick refuses writes';
      case 'capacity_lie': return `fake capacity: claims ${fmtBytes(v.claimed)} but loses data written ${v.first_bad_offset ? `at ${fmtBytes(v.first_bad_offset)}` : 'from the first byte'}`;
      case 'probe_error': return `capacity probe failed (${v.operation || 'unknown operation'}${v.offset != null ? ` at ${fmtBytes(v.offset)}` : ''}): ${v.detail || 'no detail'}`;
      case 'write_error': return `write error at ${fmtBytes(v.offset)}: ${v.detail || 'no detail'}`;
      case 'flush_error': return `flush failed: ${v.detail || 'no detail'}`;
      case 'read_error': return `read error at ${fmtBytes(v.offset)}: ${v.detail || 'no detail'}`;
      case 'verify_mismatch': return `verify mismatch at byte ${v.offset} (${fmtBytes(v.offset)})`;
      case 'removed': return `removed during ${stageName(v.during)}`;
      case 'stalled': return `stopped responding during ${stageName(v.during)} at ${fmtBytes(v.offset)} (no progress for ${v.after_secs} s)`;
      case 'refused': return `refused by the target guard: ${v.detail || 'no detail'}`;
      case 'unavailable': return `cannot open the stick: ${v.detail || 'no detail'}`;
      case 'interrupted': return 'interrupted (stop or shutdown): the stick is untested';
      case 'station_error': return `station error, not the stick's: ${v.detail || 'no detail'}; the stick is untested`;
      default: return `failed: ${v.reason || 'unknown reason'}`;
    }
  }

  /** Why a run stopped, in words (the API gives a stable code). */
  function stopReasonText(code) {
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

  // ---------------------------------------------------------------- messages

  let messageTimer = null;

  function showMessage(text, kind = 'error') {
    const box = $('message');
    box.textContent = text;
    box.className = `message message-${kind}`;
    box.hidden = false;
    clearTimeout(messageTimer);
    messageTimer = setTimeout(() => { box.hidden = true; }, kind === 'error' ? 12000 : 5000);
  }

  function setStatus(id, text, kind = '') {
    const node = $(id);
    node.textContent = text;
    node.className = `status ${kind}`;
  }

  // ---------------------------------------------------------------- API + token

  let token = sessionStorage.getItem(TOKEN_KEY) || '';
  let tokenRequest = null;

  class ApiError extends Error {
    constructor(status, code, message) {
      super(message);
      this.status = status;
      this.code = code;
    }
  }

  /** Shows the token form once; resolves when a token has been entered. */
  function askToken(rejected) {
    if (tokenRequest) return tokenRequest;
    const form = $('auth-form');
    $('auth-note').textContent = rejected
      ? 'The token was not accepted. Enter the operator token again.'
      : 'This station needs the operator token for this.';
    form.hidden = false;
    $('auth-token').value = '';
    $('auth-token').focus();
    tokenRequest = new Promise((resolve) => {
      form.onsubmit = (event) => {
        event.preventDefault();
        const value = $('auth-token').value.trim();
        if (!value) return;
        setToken(value);
        form.hidden = true;
        tokenRequest = null;
        resolve();
        connectEvents();
        refreshLinks();
      };
    });
    return tokenRequest;
  }

  function setToken(value) {
    token = value;
    sessionStorage.setItem(TOKEN_KEY, value);
  }

  async function errorFrom(status, bodyText) {
    try {
      const body = JSON.parse(bodyText);
      if (body && body.error) return new ApiError(status, body.error.code, body.error.message);
    } catch (_) { /* not JSON */ }
    return new ApiError(status, 'http', `the station answered ${status}`);
  }

  /** fetch() with the token; on a 401 asks for the token and tries again. */
  async function api(method, path, body) {
    let rejected = false;
    for (;;) {
      const headers = {};
      if (token) headers.Authorization = `Bearer ${token}`;
      if (body !== undefined) headers['Content-Type'] = 'application/json';
      let response;
      try {
        response = await fetch(API + path, {
          method,
          headers,
          body: body === undefined ? undefined : JSON.stringify(body),
        });
      } catch (_) {
        markStale();
        throw new ApiError(0, 'network', 'the station cannot be reached');
      }
      if (response.status === 401) {
        await askToken(rejected);
        rejected = true;
        continue;
      }
      const text = await response.text();
      if (!response.ok) throw await errorFrom(response.status, text);
      return text ? JSON.parse(text) : null;
    }
  }

  /** Adds ?token= for what the browser fetches by itself (links, EventSource). */
  function withToken(url) {
    if (!token) return url;
    return `${url}${url.includes('?') ? '&' : '?'}token=${encodeURIComponent(token)}`;
  }

  function refreshLinks() {
    for (const link of document.querySelectorAll('a[data-href]')) link.href = withToken(link.dataset.href);
  }

  // ---------------------------------------------------------------- live events

  let source = null;
  let retryDelay = 1000;
  let retryTimer = null;
  let lastHeard = 0; // Date.now() of the last message on the stream (or of its opening)

  function setConnection(kind, text) {
    const badge = $('conn');
    badge.className = `conn conn-${kind}`;
    badge.textContent = text;
  }

  function parseData(event) {
    try {
      return JSON.parse(event.data);
    } catch (_) {
      return null;
    }
  }

  function connectEvents() {
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
    source.onerror = () => {
      markStale();
      if (source.readyState === EventSource.CLOSED) scheduleReconnect();
    };
  }

  /** A stream that says nothing, not even its pings, is as good as lost. */
  function watchStream() {
    setInterval(() => {
      if (!source || Date.now() - lastHeard <= STALE_AFTER_MS) return;
      markStale();
      connectEvents();
    }, 2000);
  }

  /** From now on the view is not live: say so, and since when. */
  function markStale() {
    if (!model.stale) {
      model.stale = true;
      model.staleSince = new Date();
      renderStale();
    }
    setConnection('lost', '✕ Disconnected');
  }

  const fmtClock = (date) => [date.getHours(), date.getMinutes(), date.getSeconds()]
    .map((n) => String(n).padStart(2, '0')).join(':');

  /** Everything that depends on whether the view is live. */
  function renderStale() {
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
  function scheduleReconnect() {
    clearTimeout(retryTimer);
    retryTimer = setTimeout(async () => {
      try {
        applySnapshot(await api('GET', '/station')); // asks for the token on a 401
      } catch (_) { /* still down */ }
      connectEvents();
    }, retryDelay);
    retryDelay = Math.min(retryDelay * 2, 30000);
  }

  // ---------------------------------------------------------------- station state

  function applySnapshot(snapshot) {
    model.stationId = snapshot.station_id || '';
    model.ports = new Map((snapshot.ports || []).map((port) => [port.label, port]));
    $('station-id').textContent = model.stationId;
    renderRack();
    setRun(snapshot.run || null);
  }

  function upsertPort(port) {
    const before = model.ports.get(port.label);
    model.ports.set(port.label, port);
    const tile = findTile(port.label);
    if (before && tile && samePosition(before, port)) {
      replaceTile(tile, port);
      renderSummary();
    } else {
      renderRack();
    }
    if (port.verdict && (!before || !before.verdict)) {
      refreshDevicesSoon();
      refreshRunsSoon();
    }
  }

  function removePort(label) {
    if (model.ports.delete(label)) renderRack();
  }

  function setRun(run) {
    const before = model.run;
    model.run = run;
    // Which verdicts are of the current run, and which controls can work,
    // depend on the run: the tiles follow.
    if ((before && before.id) !== (run && run.id) || Boolean(before && before.armed) !== Boolean(run && run.armed)) renderRack();
    renderRun();
    const changed = !before || !run || before.id !== run.id || before.armed !== run.armed
      || before.passed !== run.passed || before.failed !== run.failed;
    if (changed) refreshRunsSoon();
    if (!run || !run.armed) {
      if (!before || before.armed !== false) loadImages();
    }
  }

  const samePosition = (a, b) => JSON.stringify(a.position) === JSON.stringify(b.position);

  // ---------------------------------------------------------------- the rack

  function findTile(label) {
    for (const tile of $('rack').children) if (tile.dataset.label === label) return tile;
    return null;
  }

  /**
   * Grid places: ports with a position keep their row and column (shifted so the
   * smallest is 1); ports without one (or on a taken cell) flow in rows after.
   */
  function layout(ports) {
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

  function renderRack() {
    const rack = $('rack');
    const { width, places } = layout([...model.ports.values()]);
    rack.style.setProperty('--cols', String(width));
    if (!places.length) {
      rack.replaceChildren(el('p', { class: 'muted', text: 'No ports.' }));
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

  function replaceTile(old, port) {
    const tile = buildTile(port);
    tile.style.cssText = old.style.cssText;
    const focused = old.contains(document.activeElement) ? document.activeElement.dataset.action : null;
    old.replaceWith(tile);
    if (focused) {
      const again = tile.querySelector(`[data-action="${focused}"]`);
      if (again) again.focus();
    }
  }

  function renderSummary() {
    const counts = {};
    for (const port of model.ports.values()) {
      let key = BUSY.has(port.state) ? 'busy' : port.state;
      if (isInterrupted(port)) key = 'interrupted';
      // A pass of another run is no pass of this one: counted apart.
      if (isForeignOutcome(port)) key = 'of an earlier run';
      counts[key] = (counts[key] || 0) + 1;
    }
    const parts = [model.stale ? `${model.ports.size} ports (last known)` : `${model.ports.size} ports`];
    for (const key of ['busy', 'waiting', 'passed', 'failed', 'interrupted', 'of an earlier run', 'refused', 'detected']) {
      if (counts[key]) parts.push(`${counts[key]} ${key}`);
    }
    const run = model.run;
    if (run) {
      const state = model.stale ? 'state unknown' : run.armed ? 'armed' : 'stopped';
      parts.push(`run #${run.id} ${state}: ${run.passed} passed, ${run.failed} failed, ${run.refused || 0} refused, ${run.interrupted || 0} interrupted`);
    }
    $('rack-summary').textContent = parts.join(' · ');
  }

  /** An interrupted attempt (or one the station could not carry out) is a `failed` port, but says nothing about the stick. */
  const isInterrupted = (port) => port.state === 'failed' && port.verdict
    && (port.verdict.reason === 'interrupted' || port.verdict.reason === 'station_error');

  /**
   * Whether the port's verdict was given under the current run (same run, same
   * image). A verdict of another run says nothing about this run's image.
   */
  function verdictIsCurrent(port) {
    const of = port.verdict_run;
    const run = model.run;
    return Boolean(port.verdict && of && run && of.run_id === run.id && of.image_sha256 === run.image_sha256);
  }

  /** "run #2 (ubuntu.img)": the run and image a verdict is about. */
  function verdictRunText(port) {
    const of = port.verdict_run;
    if (!of) return 'an unknown run';
    return `run #${of.run_id} (${of.image_name || shortSha(of.image_sha256)})`;
  }

  /** A verdict of another run, on a port that shows it as its outcome. */
  const isForeignOutcome = (port) => (port.state === 'passed' || port.state === 'failed') && !verdictIsCurrent(port);

  function stateLabel(port) {
    let label;
    if (isForeignOutcome(port)) {
      const what = port.verdict && port.verdict.verdict === 'pass' ? 'Passed' : 'Failed';
      label = `${what} in run #${port.verdict_run ? port.verdict_run.run_id : '?'}: not this run`;
    } else if (isInterrupted(port)) label = 'Interrupted';
    // The stage alone: the percentage is on the progress line, where a narrow
    // tile has room for it.
    else label = (STATE_MARKS[port.state] || '') + (STATE_NAMES[port.state] || port.state);
    return model.stale ? `${label}?` : label;
  }

  function percent(progress) {
    if (!progress || !progress.total) return null;
    return Math.min(100, Math.floor((progress.done / progress.total) * 100));
  }

  function buildTile(port) {
    const busy = BUSY.has(port.state);
    let group = busy ? 'busy' : port.state;
    if (isInterrupted(port)) group = 'interrupted';
    if (isForeignOutcome(port)) group = 'foreign';
    return el('article', {
      class: `tile tile-${group}`,
      dataset: {
        state: port.state,
        label: port.label,
        verdictRun: port.verdict_run ? String(port.verdict_run.run_id) : null,
        verdictCurrent: port.verdict ? String(verdictIsCurrent(port)) : null,
      },
    },
    el('header', { class: 'tile-head' },
      el('span', { class: 'tile-label', text: port.label }),
      el('span', { class: 'tile-state', text: stateLabel(port) })),
    port.mapped === false ? el('p', { class: 'tag', text: 'unmapped port', title: port.port_path || '' }) : null,
    deviceBlock(port),
    // A stale view claims no progress: the stick may be done, or gone.
    busy && !model.stale ? progressBlock(port) : null,
    busy && model.stale ? el('p', { class: 'stale-note', text: `last known: ${port.state}; progress unknown` }) : null,
    port.state === 'waiting' ? el('p', { class: 'waiting-note', text: 'waiting: target nearly reached (starts if a stick in flight fails)' }) : null,
    verdictBlock(port),
    // The guard's refusal: { code, message }. One refused at the moment of opening
    // is also the verdict, which verdictBlock shows.
    port.refusal && port.state === 'refused' && !(port.verdict && port.verdict.reason === 'refused')
      ? el('p', { class: 'reason', text: port.refusal.message, title: port.refusal.code, dataset: { code: port.refusal.code } })
      : null,
    port.ejected ? el('p', { class: 'badge-ejected', text: '⏏ ejected — pull it' }) : null,
    actionsBlock(port));
  }

  function deviceBlock(port) {
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

  function progressBlock(port) {
    const p = port.progress;
    const pct = percent(p);
    const parts = [];
    if (p) {
      if (pct != null) parts.push(`${pct}%`);
      parts.push(`${fmtBytes(p.done)} / ${fmtBytes(p.total)}`);
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

  function verdictBlock(port) {
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

  function passText(f) {
    const method = f && f.verify_method;
    if (!f) return 'written and verified';
    if (!method || method === 'none') return 'written, not verified';
    return `verified (${method})`;
  }

  function speedsText(f) {
    if (!f) return '';
    const parts = [];
    if (f.write_secs > 0) parts.push(`write ${fmtRate(f.bytes_written / f.write_secs)}`);
    if (f.verify_secs > 0) parts.push(`read ${fmtRate(f.bytes_verified / f.verify_secs)}`);
    return parts.join(' · ');
  }

  /**
   * "Write again" only where it can work: a run is armed, the station is
   * reachable, and the stick is still in the port.
   */
  function actionsBlock(port) {
    if ((port.state !== 'passed' && port.state !== 'failed') || port.ejected || !port.device) return null;
    if (model.stale || !model.run || !model.run.armed) return null;
    return el('div', { class: 'tile-actions' },
      el('button', {
        type: 'button',
        class: 'small',
        'data-action': 'again',
        'aria-label': `Write port ${port.label} again`,
        onclick: (event) => writeAgain(port.label, event.currentTarget),
      }, 'Write again'));
  }

  async function writeAgain(label, button) {
    button.disabled = true;
    try {
      await api('POST', `/ports/${encodeURIComponent(label)}/start`);
      showMessage(`${label}: writing again`, 'info');
    } catch (error) {
      showMessage(`${label}: ${error.message}`);
      button.disabled = false;
    }
  }

  // ---------------------------------------------------------------- the run

  function renderRun() {
    const run = model.run;
    const armed = Boolean(run && run.armed);
    const state = $('run-state');
    if (model.stale) {
      // Armed or not, the station cannot say: never a green "Armed" here.
      state.textContent = `? Run state unknown: the station is unreachable${run ? ` (last known: run #${run.id} ${run.armed ? 'armed' : 'stopped'})` : ''}`;
      state.className = 'run-state run-unknown';
    } else if (!run) {
      state.textContent = 'No run';
      state.className = 'run-state run-none';
    } else if (armed) {
      state.textContent = '● Armed: sticks plugged into mapped ports are written';
      state.className = 'run-state run-armed';
    } else {
      state.textContent = `■ Stopped${run.stop_reason ? `: ${stopReasonText(run.stop_reason)}` : ''}`;
      state.className = 'run-state run-stopped';
    }
    $('run-view').replaceChildren(run ? runDetails(run) : '');
    // Controls that cannot work are not offered: no stop without an armed
    // run, nothing at all while the station cannot be reached.
    $('stop-form').hidden = !armed || model.stale;
    $('arm-form').hidden = armed || model.stale;
    renderSummary();
  }

  function runDetails(run) {
    const o = run.options || {};
    const counter = (name, value) => el('div', { class: `counter counter-${name}` },
      el('dt', { text: name }), el('dd', { text: value == null ? '—' : String(value) }));
    return el('div', { class: 'run-details' },
      el('p', { class: 'run-image' },
        el('strong', { text: run.image_name || 'image' }),
        ` · ${fmtBytes(run.image_size)} · `,
        el('code', { text: shortSha(run.image_sha256), title: run.image_sha256 || '' }),
        ` · run #${run.id}`),
      el('p', { class: 'muted', text: `verify: ${o.verify || '?'} · eject on pass: ${o.eject_on_pass ? 'yes' : 'no'}`
        + ` · target: ${o.target_count == null ? 'no limit' : o.target_count}` }),
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

  async function stopRun(event) {
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

  async function armRun(event) {
    event.preventDefault();
    const image = $('arm-image').value;
    if (!image) {
      setStatus('arm-status', 'Import an image first.', 'bad');
      return;
    }
    const target = $('arm-target').value.trim();
    const body = {
      image,
      verify: $('arm-verify').value,
      eject_on_pass: $('arm-eject').checked,
      target_count: target ? Number(target) : null,
    };
    const button = $('arm-button');
    button.disabled = true;
    setStatus('arm-status', 'Arming…');
    try {
      setRun(await api('POST', '/runs', body));
      setStatus('arm-status', '');
    } catch (error) {
      setStatus('arm-status', error.message, 'bad');
    } finally {
      button.disabled = false;
    }
  }

  /** After a change, in case the event stream is down. */
  function refreshRunSoon() {
    setTimeout(async () => {
      try {
        const snapshot = await api('GET', '/station');
        setRun(snapshot.run || null);
      } catch (_) { /* the stream will tell */ }
    }, 300);
  }

  // ---------------------------------------------------------------- images

  async function loadImages() {
    try {
      model.images = (await api('GET', '/images')) || [];
    } catch (error) {
      $('image-list').replaceChildren(el('li', { class: 'muted', text: `Images: ${error.message}` }));
      return;
    }
    renderImages();
  }

  function renderImages() {
    const list = $('image-list');
    if (!model.images.length) list.replaceChildren(el('li', { class: 'muted', text: 'No images yet: import or upload one.' }));
    else list.replaceChildren(...model.images.map(imageRow));
    renderImageOptions();
  }

  function imageRow(image) {
    return el('li', { class: 'row' },
      el('div', { class: 'row-main' },
        el('strong', { text: image.name || '(no name)' }),
        el('span', { class: 'muted' }, ` ${fmtBytes(image.size)} · ${image.format || ''} · `,
          el('code', { text: shortSha(image.sha256), title: image.sha256 || '' })),
        image.imported_at ? el('span', { class: 'muted small-text', text: ` imported ${fmtTime(image.imported_at)}` }) : null),
      el('button', {
        type: 'button',
        class: 'small danger',
        'aria-label': `Delete image ${image.name || image.sha256}`,
        onclick: () => deleteImage(image),
      }, 'Delete'));
  }

  function renderImageOptions() {
    const select = $('arm-image');
    const keep = select.value;
    const options = model.images.map((image) => el('option', {
      value: image.sha256,
      text: `${image.name || '(no name)'} · ${fmtBytes(image.size)} · ${shortSha(image.sha256)}`,
    }));
    if (!options.length) options.push(el('option', { value: '', text: 'no images: import one below' }));
    select.replaceChildren(...options);
    if (keep && model.images.some((image) => image.sha256 === keep)) select.value = keep;
  }

  async function deleteImage(image) {
    if (!window.confirm(`Delete image ${image.name || image.sha256} from the station's cache?`)) return;
    try {
      await api('DELETE', `/images/${encodeURIComponent(image.sha256)}`);
      showMessage(`Deleted ${image.name || shortSha(image.sha256)}`, 'info');
    } catch (error) {
      showMessage(`Delete: ${error.message}`);
    }
    loadImages();
  }

  function importedText(image) {
    return `${image.already_cached ? 'Already cached' : 'Imported'}: ${image.name || ''} (${fmtBytes(image.size)}, ${shortSha(image.sha256)})`;
  }

  async function importPath(event) {
    event.preventDefault();
    const path = $('import-path').value.trim();
    const sha = $('import-sha').value.trim();
    setStatus('import-status', 'Importing… (large images take a while to hash)');
    try {
      const image = await api('POST', '/images/import', { path, sha256: sha || null });
      setStatus('import-status', importedText(image), 'good');
      await loadImages();
      $('arm-image').value = image.sha256;
    } catch (error) {
      setStatus('import-status', error.message, 'bad');
    }
  }

  /** POSTs the file with XMLHttpRequest, for upload progress events. */
  function sendUpload(file, sha, onProgress) {
    return new Promise((resolve, reject) => {
      const query = new URLSearchParams({ name: file.name });
      if (sha) query.set('sha256', sha);
      const xhr = new XMLHttpRequest();
      xhr.open('POST', `${API}/images/upload?${query}`);
      if (token) xhr.setRequestHeader('Authorization', `Bearer ${token}`);
      xhr.setRequestHeader('Content-Type', 'application/octet-stream');
      xhr.upload.onprogress = (e) => onProgress(e.loaded, e.lengthComputable ? e.total : file.size);
      xhr.onload = () => resolve({ status: xhr.status, text: xhr.responseText });
      xhr.onerror = () => reject(new ApiError(0, 'network', 'the upload broke off (too large, or the station went away)'));
      xhr.send(file);
    });
  }

  async function uploadImage(event) {
    event.preventDefault();
    const file = $('upload-file').files[0];
    if (!file) return;
    const sha = $('upload-sha').value.trim();
    const bar = $('upload-bar');
    const button = $('upload-button');
    button.disabled = true;
    bar.hidden = false;
    const progress = (loaded, total) => {
      const pct = total ? Math.floor((loaded / total) * 100) : 0;
      bar.setAttribute('aria-valuenow', String(pct));
      bar.firstChild.style.width = `${pct}%`;
      setStatus('upload-status', pct >= 100
        ? 'Sent; the station is checking and hashing the image…'
        : `Uploading ${fmtBytes(loaded)} of ${fmtBytes(total)} (${pct}%)`);
    };
    try {
      let rejected = false;
      let result;
      for (;;) {
        result = await sendUpload(file, sha, progress);
        if (result.status !== 401) break;
        await askToken(rejected);
        rejected = true;
      }
      if (result.status < 200 || result.status >= 300) throw await errorFrom(result.status, result.text);
      const image = JSON.parse(result.text);
      setStatus('upload-status', importedText(image), 'good');
      $('upload-form').reset();
      await loadImages();
      $('arm-image').value = image.sha256;
    } catch (error) {
      const text = error.status === 413 ? `Too large: ${error.message}` : error.message;
      setStatus('upload-status', text, 'bad');
    } finally {
      button.disabled = false;
      bar.hidden = true;
    }
  }

  // ---------------------------------------------------------------- runs and reports

  const refreshRunsSoon = debounce(loadRuns, 300);

  async function loadRuns() {
    try {
      const rows = await api('GET', '/runs');
      model.runs = Array.isArray(rows) ? rows : [];
      renderRuns();
    } catch (error) {
      $('run-list').replaceChildren(el('li', { class: 'muted', text: `Runs: ${error.message}` }));
    }
  }

  function reportLink(path, format, text, newTab) {
    const href = `${path}?format=${format}`;
    return el('a', {
      class: `report-${format}`,
      href: withToken(href),
      'data-href': href,
      target: newTab ? '_blank' : null,
      rel: newTab ? 'noopener' : null,
    }, text);
  }

  function reportLinks(path, what) {
    return el('span', { class: 'links', 'aria-label': `${what} reports` },
      reportLink(path, 'csv', 'CSV', false),
      reportLink(path, 'json', 'JSON', false),
      reportLink(path, 'html', 'Print', true));
  }

  function renderRuns() {
    const list = $('run-list');
    const rows = [...model.runs].sort((a, b) => (Number(b.id) || 0) - (Number(a.id) || 0));
    if (!rows.length) {
      list.replaceChildren(el('li', { class: 'muted', text: 'No runs recorded yet.' }));
      return;
    }
    list.replaceChildren(...rows.slice(0, 30).map(runRow));
  }

  function runRow(run) {
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
      id == null ? null : reportLinks(`${API}/runs/${encodeURIComponent(id)}/report`, `Run ${id}`));
  }

  // ---------------------------------------------------------------- devices

  const refreshDevicesSoon = debounce(loadDevices, 2000);

  async function loadDevices() {
    try {
      const rows = await api('GET', '/devices');
      model.devices = Array.isArray(rows) ? rows : [];
      renderDevices();
    } catch (error) {
      $('device-list').replaceChildren(el('li', { class: 'muted', text: `Devices: ${error.message}` }));
    }
  }

  function deviceKey(device) {
    return device.key ?? device.device_key ?? device.serial;
  }

  function renderDevices() {
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

  function deviceRow(device) {
    const key = deviceKey(device);
    const name = [device.vendor, device.model].filter(Boolean).join(' ');
    const meta = [
      device.serial ? `SN ${device.serial}` : 'no serial',
      device.capacity != null ? fmtBytes(Number(device.capacity)) : null,
      device.attempts != null ? `${device.attempts} attempts` : null,
      device.last_seen != null ? `last seen ${fmtTime(device.last_seen)}` : null,
    ].filter(Boolean).join(' · ');
    return el('li', { class: 'row' },
      el('div', { class: 'row-main' },
        el('strong', { text: name || String(key) }),
        el('span', { class: 'muted small-text', text: ` ${meta}` })),
      key == null ? null : reportLinks(`${API}/devices/${encodeURIComponent(key)}/report`, `Device ${key}`));
  }

  // ---------------------------------------------------------------- start

  // The size notation, for the browser test (tests/e2e) to check against the
  // Rust side's cases; nothing else reads it.
  window.flashrackFormat = Object.freeze({ fmtBytes, fmtBytesExact });

  function start() {
    $('stop-form').addEventListener('submit', stopRun);
    $('arm-form').addEventListener('submit', armRun);
    $('import-form').addEventListener('submit', importPath);
    $('upload-form').addEventListener('submit', uploadImage);
    $('runs-refresh').addEventListener('click', loadRuns);
    $('devices-refresh').addEventListener('click', loadDevices);
    $('device-search').addEventListener('input', renderDevices);
    connectEvents();
    watchStream();
    loadImages();
    loadRuns();
    loadDevices();
  }

  start();
})();
