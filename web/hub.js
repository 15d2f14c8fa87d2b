// The flashrack hub's dashboard: every station's rack live (the hub's event
// stream), fleet counters, lots armed from the hub with desired against
// actual state, and a stick's history across stations. Plain JS, no build.
(function () {
  'use strict';
  const TOKEN_KEY = 'flashrack.hub.token';
  let token = sessionStorage.getItem(TOKEN_KEY) || '';
  const stations = new Map();
  let silentAfter = 10000;
  // The hub's clock minus ours, from its events: staleness is judged on the
  // hub's clock, not on a browser's that may be off.
  let skew = 0;
  const $ = (id) => document.getElementById(id);
  const esc = (s) => String(s ?? '').replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' }[c]));
  const fmtTime = (ms) => (ms ? new Date(ms).toLocaleTimeString() : '');

  function message(text) {
    $('message').textContent = text || '';
    $('message').hidden = !text;
  }

  // One question at a time: requests refused together wait for the same
  // answer instead of each asking again.
  let asking = null;
  function askToken() {
    if (!asking) {
      asking = Promise.resolve().then(() => {
        const given = window.prompt('The hub needs an operator token:');
        if (given && given.trim()) {
          token = given.trim();
          sessionStorage.setItem(TOKEN_KEY, token);
          return true;
        }
        return false;
      }).finally(() => { asking = null; });
    }
    return asking;
  }

  async function api(path, options = {}) {
    const headers = Object.assign({}, options.headers || {});
    const sent = token;
    if (sent) headers.Authorization = `Bearer ${sent}`;
    const response = await fetch(path, Object.assign({}, options, { headers }));
    if (response.status === 401) {
      // Sent with an older token than the one now held: try the new one
      // before asking again.
      if (token !== sent || await askToken()) return api(path, options);
    }
    if (!response.ok) {
      let text = `${response.status}`;
      try { text = (await response.json()).error.message; } catch (_) { /* not JSON */ }
      throw new Error(text);
    }
    return response;
  }

  function statusOf(s) {
    // Its records refused (another instance under its id, or sequence
    // numbers that clash, as after a restore from a backup): said, not
    // "behind", since they will not arrive by waiting.
    if (s.token_revoked) return 'revoked';
    if (s.records_refused) return 'refused';
    if (!s.last_seen) return 'unseen';
    if (Date.now() + skew - s.last_seen > silentAfter) return 'silent';
    return s.backlog > 0 ? 'behind' : 'connected';
  }

  function statusText(s, status) {
    if (status === 'behind') return `behind (backlog ${s.backlog})`;
    if (status === 'silent') return `silent since ${fmtTime(s.last_seen)}`;
    if (status === 'unseen') return 'never heard from';
    if (status === 'refused') return `records refused (backlog ${s.backlog})`;
    if (status === 'revoked') return 'token revoked: it can neither report nor ship';
    return 'connected';
  }

  // Why a stick failed or was refused, in a few words (`verify_mismatch` →
  // "verify mismatch").
  function reasonOf(p) {
    if (p.state === 'refused' && p.refusal) return p.refusal.code || p.refusal.message || '';
    if (p.state === 'failed' && p.verdict && typeof p.verdict === 'object') return p.verdict.reason || '';
    return '';
  }

  // What a pass proved, as the station's dashboard and the records say it
  // (AttemptFigures::pass_words): never a plain "passed" for a stick written
  // without a read-back, a sampled one or a sparse one.
  function passWords(f) {
    if (!f) return 'passed';
    const method = f.verify_method;
    if (!method || method === 'none') return 'written, not verified';
    const sparse = f.bytes_skipped > 0 ? 'sparse, ' : '';
    if (method === 'sampled') return `${sparse}${f.sample ? `sampled (${+f.sample.percent.toFixed(2)} %)` : 'sampled'}`;
    if (method === 'audit') return 'audit pass';
    return f.bytes_skipped > 0 ? 'sparse pass' : 'passed';
  }

  // A verdict given under another run (or image) than the station's current
  // one says nothing about the current run, as the station's dashboard says.
  function ofAnotherRun(p, run) {
    const of = p.verdict_run;
    return Boolean(of && run && (of.run_id !== run.id || of.image_sha256 !== run.image_sha256));
  }

  function portHtml(p, run) {
    const progress = p.progress && p.progress.total ? ` ${Math.floor((100 * p.progress.done) / p.progress.total)}%` : '';
    const serial = p.device && p.device.serial ? `<br><span class="muted">${esc(p.device.serial)}</span>` : '';
    const reason = String(reasonOf(p)).replace(/_/g, ' ');
    const why = reason ? `<br><span class="reason">${esc(reason)}</span>` : '';
    let state = p.state === 'passed' ? passWords(p.figures) : p.state;
    const old = ofAnotherRun(p, run);
    if (old) state += ` in run ${p.verdict_run.run_id}, not this run`;
    const classes = `port ${p.state}${old ? ' old-run' : ''}${state === 'written, not verified' ? ' unverified' : ''}`;
    return `<div class="${esc(classes)}" title="${esc(reason || state)}">${esc(p.label)}<br>${esc(state)}${progress}${why}${serial}</div>`;
  }

  const COUNTERS = ['passed', 'failed', 'refused', 'interrupted', 'running'];
  const counter = (attr, key, n) => `<span><b ${attr}="${key}">${Number(n) || 0}</b> ${key}</span>`;

  function render() {
    const list = [...stations.values()].sort((a, b) => a.id.localeCompare(b.id));
    const total = Object.fromEntries(COUNTERS.map((k) => [k, 0]));
    const byStatus = { connected: 0, behind: 0, silent: 0, unseen: 0, refused: 0, revoked: 0 };
    const cards = list.map((s) => {
      const status = statusOf(s);
      byStatus[status] += 1;
      const counts = s.counts || {};
      for (const k of COUNTERS) total[k] += counts[k] || 0;
      const run = s.snapshot && s.snapshot.run;
      const ports = ((s.snapshot && s.snapshot.ports) || []).map((p) => portHtml(p, run)).join('');
      const runText = run ? `${esc(run.image_name)} ${run.armed ? '(armed)' : '(stopped)'}` : 'no run';
      const runOrigin = run ? originsOf(run.image_sha256, s.id) : [];
      // A silent station's rack is what it last reported, not what it does.
      const stale = status === 'silent' && s.snapshot
        ? `<div class="stale">Stale: the rack as last reported at ${esc(fmtTime(s.snapshot_sent_at || s.last_seen))}</div>` : '';
      return `<div class="station ${status}" data-station="${esc(s.id)}">
        <h3>${esc(s.id)} <span class="badge ${status}" title="${esc(s.records_refused || '')}">${esc(statusText(s, status))}</span></h3>${s.records_refused ? `<div class="refusal">${esc(s.records_refused)}</div>` : ''}
        <div class="muted">${runText} · ${COUNTERS.map((k) => counter('data-count', k, counts[k])).join(' · ')}</div>
        ${runOrigin.map((o) => `<div class="origin run-origin">${esc(originText(o))}</div>`).join('')}
        ${stale}<div class="ports">${ports || '<span class="muted">no live view yet</span>'}</div></div>`;
    });
    $('stations').innerHTML = cards.join('') || '<p class="muted">No station yet.</p>';
    $('fleet-summary').innerHTML = counter('data-fleet', 'stations', list.length)
      + ['connected', 'behind', 'silent'].map((k) => counter('data-fleet', k, byStatus[k])).join('')
      + COUNTERS.map((k) => counter('data-fleet', k, total[k])).join('');
  }

  let lotsTimer = null;
  function refreshLotsSoon() {
    if (lotsTimer) return;
    lotsTimer = setTimeout(async () => { lotsTimer = null; await loadOrigins(); loadLots(); }, 1000);
  }

  async function loadLots() {
    try {
      const lots = await (await api('/api/v1/lots')).json();
      $('lots').innerHTML = lots.map((l) => {
        const per = l.orders.map((o) => {
          // What the station does about the order, as a class too: a
          // waiting order (the station's own run in the way) is not a failure.
          const actual = o.progress ? o.progress.state : 'no report';
          const state = `<span class="order-state order-${esc(actual.replace(/ /g, '-'))}">${esc(actual)}</span>`;
          const run = o.run_id ? ` · run ${o.run_id}${o.run_stopped ? ' (stopped)' : ''}: ${o.passed} passed, ${o.failed} failed` : '';
          // The station's own words on the order (why it does not follow it,
          // how far a fetch got): a "failed" without them says too little.
          const detail = o.progress && o.progress.detail ? ` <span class="order-detail">(${esc(o.progress.detail)})</span>` : '';
          return `<span class="order" data-order="${esc(o.order_id)}">${esc(o.station_id)}: ${o.armed ? 'armed' : 'stop'} / ${state}${detail}${run}</span>`;
        }).join('<br>');
        const q = token ? `&token=${encodeURIComponent(token)}` : '';
        const report = ['csv', 'json', 'html'].map((f) => `<a href="/api/v1/lots/${l.id}/report?format=${f}${q}">${f}</a>`).join(' ');
        const stop = l.stopped_at ? `stopped ${fmtTime(l.stopped_at)}` : `<button data-stop="${l.id}">Stop</button>`;
        const origin = originsOf(l.image_sha256).map((o) => `<div class="origin">${esc(o.station_id)}: ${esc(originText(o))}</div>`).join('');
        return `<tr data-lot="${esc(l.id)}"><td>${esc(l.name)}</td><td>${esc(l.image_name)}</td><td>${origin || '<span class="muted">—</span>'}</td><td>${per}</td><td>${report}</td><td>${stop}</td></tr>`;
      }).join('');
    } catch (e) { message(`Lots: ${e.message}`); }
  }

  // Where the stations' images came from (downloaded, captured, built), as
  // each station recorded it and shipped it with its image rows: the same
  // words as the hub's lot and device reports.
  let origins = [];
  /** "Downloaded from: name: URL …", as the reports say it. */
  const originText = (o) => `${o.label}: ${o.name}: ${o.words}`;
  /** The origins of image `sha` (at `station`, or at any station). */
  const originsOf = (sha, station) => origins.filter((o) => o.sha256 === sha && (!station || o.station_id === station));

  async function loadOrigins() {
    try {
      origins = await (await api('/api/v1/image-origins')).json();
      $('origins').innerHTML = origins.map((o) => `<tr data-origin="${esc(o.station_id)}/${esc(o.sha256)}"><td>${esc(o.station_id)}</td>`
        + `<td>${esc(o.name)}</td><td><code>${esc(o.sha256.slice(0, 12))}</code></td><td class="origin">${esc(o.label)}: ${esc(o.words)}</td></tr>`).join('')
        || '<tr><td colspan="4" class="muted">No image with a known origin yet (downloaded, captured or built).</td></tr>';
      render();
    } catch (e) { message(`Origins: ${e.message}`); }
  }

  async function loadImages() {
    try {
      const images = await (await api('/api/v1/images')).json();
      $('arm-image').innerHTML = images.map((i) => `<option value="${esc(i.sha256)}">${esc(i.name)} (${esc(i.sha256.slice(0, 12))})</option>`).join('');
    } catch (e) { message(`Images: ${e.message}`); }
  }

  function connect() {
    const url = '/api/v1/events' + (token ? `?token=${encodeURIComponent(token)}` : '');
    const source = new EventSource(url);
    source.addEventListener('open', () => { $('conn').textContent = 'Live'; });
    source.addEventListener('error', async () => {
      $('conn').textContent = 'Reconnecting…';
      // A refused stream (401) reconnects forever: ask for the token once.
      if (source.readyState === EventSource.CLOSED) {
        try { await api('/api/v1/stations'); } catch (_) { /* shown */ }
        setTimeout(connect, 2000);
      }
    });
    source.addEventListener('snapshot', (e) => {
      const data = JSON.parse(e.data);
      silentAfter = data.silent_after_ms;
      skew = data.now - Date.now();
      stations.clear();
      for (const s of data.stations) stations.set(s.id, s);
      render();
      refreshLotsSoon();
    });
    source.addEventListener('station', (e) => {
      const s = JSON.parse(e.data);
      stations.set(s.id, s);
      render();
      refreshLotsSoon();
    });
    source.addEventListener('ping', (e) => {
      skew = JSON.parse(e.data).now - Date.now();
      render();
    });
  }

  $('arm-form').addEventListener('submit', async (e) => {
    e.preventDefault();
    const body = {
      image_sha256: $('arm-image').value,
      stations: $('arm-stations').value.split(',').map((s) => s.trim()).filter(Boolean),
      // The station's run options, as its own API names them: `verify` is
      // compare, hash or none; a target count of 0 means none.
      options: { verify: $('arm-verify').value },
    };
    const target = Number($('arm-target').value) || 0;
    if (target > 0) body.options.target_count = target;
    if ($('arm-name').value.trim()) body.name = $('arm-name').value.trim();
    try {
      await api('/api/v1/lots', { method: 'POST', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify(body) });
      message('');
      loadLots();
    } catch (err) { message(`Arm: ${err.message}`); }
  });

  $('lots').addEventListener('click', async (e) => {
    const id = e.target.getAttribute && e.target.getAttribute('data-stop');
    if (!id) return;
    try { await api(`/api/v1/lots/${id}/stop`, { method: 'POST' }); loadLots(); } catch (err) { message(`Stop: ${err.message}`); }
  });

  $('upload-form').addEventListener('submit', async (e) => {
    e.preventDefault();
    const file = $('upload-file').files[0];
    if (!file) return;
    $('upload-note').textContent = 'Uploading…';
    try {
      const info = await (await api(`/api/v1/images?name=${encodeURIComponent(file.name)}`, { method: 'POST', body: file })).json();
      $('upload-note').textContent = `${info.name}: ${info.sha256}`;
      loadImages();
    } catch (err) { $('upload-note').textContent = ''; message(`Upload: ${err.message}`); }
  });

  $('device-form').addEventListener('submit', async (e) => {
    e.preventDefault();
    const key = $('device-key').value.trim();
    try {
      const report = await (await api(`/api/v1/devices/${encodeURIComponent(key)}`)).json();
      const rows = report.attempts.map((r) => `<tr><td>${esc(r.station_id)}</td><td>${esc(r.run_id ?? '')}</td><td>${esc(r.port_label)}</td>` +
        `<td>${esc(r.started_at)}</td><td>${esc(r.verdict)}</td><td>${esc(r.reason_detail ?? '')}</td></tr>`).join('');
      // The report's origins in the hub's words (the same provenance, as
      // GET /api/v1/image-origins words it).
      await loadOrigins();
      const deviceOrigins = (report.image_origins || []).map((o) => {
        const same = origins.find((x) => x.sha256 === o.sha256 && JSON.stringify(x.provenance) === JSON.stringify(o.provenance))
          || origins.find((x) => x.sha256 === o.sha256);
        return same ? `<p class="origin device-origin">${esc(same.label)}: ${esc(o.name)}: ${esc(same.words)}</p>` : '';
      }).join('');
      $('device').innerHTML = `<p>${esc(report.device.serial ?? report.device.device_key)}: ${report.device.passed} passed, ${report.device.failed} failed</p>${deviceOrigins}` +
        `<table><thead><tr><th>Station</th><th>Run</th><th>Port</th><th>Started</th><th>Verdict</th><th>Reason</th></tr></thead><tbody>${rows}</tbody></table>`;
    } catch (err) { $('device').innerHTML = `<p class="error">${esc(err.message)}</p>`; }
  });

  connect();
  loadImages();
  loadOrigins().then(loadLots);
})();
