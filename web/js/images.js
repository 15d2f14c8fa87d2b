// The image cache: the list (with each image's block map and, for a
// capture or a build, where it came from), import by path, upload, URL
// imports, captures of the master stick, bootable builds of an installer ISO
// refused for a raw run, delete.

import { $, el, fmtBytes, fmtTime, shortSha, showMessage, setStatus } from './util.js';
import { model } from './model.js';
import { API, api, ApiError, askToken, errorFrom, getToken, withToken } from './api.js';

export async function loadImages() {
  try {
    model.images = (await api('GET', '/images')) || [];
  } catch (error) {
    $('image-list').replaceChildren(el('li', { class: 'muted', text: `Images: ${error.message}` }));
    return;
  }
  renderImages();
}

export function renderImages() {
  const list = $('image-list');
  if (!model.images.length) list.replaceChildren(el('li', { class: 'muted', text: 'No images yet: import or upload one.' }));
  else list.replaceChildren(...model.images.map(imageRow));
  renderImageOptions();
}

export function imageRow(image) {
  return el('li', { class: 'row' },
    el('div', { class: 'row-main' },
      el('strong', { text: image.name || '(no name)' }),
      el('span', { class: 'muted' }, ` ${fmtBytes(image.size)} · ${image.format || ''} · `,
        el('code', { text: shortSha(image.sha256), title: image.sha256 || '' })),
      image.imported_at ? el('span', { class: 'muted small-text', text: ` imported ${fmtTime(image.imported_at)}` }) : null,
      // The names it was imported or captured under again: it is found by
      // them too (`image show`, a run armed by name).
      image.also_known_as && image.also_known_as.length
        ? el('div', { class: 'muted small-text image-aliases', text: `Also known as ${image.also_known_as.join(', ')}` })
        : null,
      // What the image is (inspected at import), and whether a raw run of it
      // is refused (a non-hybrid installer ISO: the stick would not boot).
      image.summary ? el('div', { class: 'muted small-text image-summary', text: image.summary }) : null,
      // What the inspection found wrong (a truncated image, a GPT read from
      // its backup, overlapping partitions), as `image show` says it.
      ...((image.inspection && image.inspection.problems) || []).map((problem) =>
        el('div', { class: 'bad small-text image-problem', text: `Problem: ${problem}` })),
      image.raw_write_refusal
        ? el('div', { class: 'bad small-text image-refusal', text: `Raw run refused: ${image.raw_write_refusal.reason}. ${sentence(image.raw_write_refusal.advice)}.` })
        : null,
      provenanceLine(image),
      blockMapLine(image.block_map)),
    // Where a raw run is refused (an installer ISO that would not boot
    // written raw), the way that works: a bootable layout built once.
    image.raw_write_refusal && image.inspection && image.inspection.iso
      ? el('button', {
        type: 'button',
        class: 'small build-bootable',
        'aria-label': `Build a bootable stick image from ${image.name || image.sha256}`,
        onclick: () => buildBootable(image),
      }, 'Build a bootable stick image')
      : null,
    el('button', {
      type: 'button',
      class: 'small danger',
      'aria-label': `Delete image ${image.name || image.sha256}`,
      onclick: () => deleteImage(image),
    }, 'Delete'));
}

/** Text that starts a sentence: its first letter upper case. */
const sentence = (text) => (text ? text.charAt(0).toUpperCase() + text.slice(1) : '');

/**
 * Where an image came from: built from another, captured from a master, or
 * downloaded (the URL, its validators, where its digest came from and who
 * signed it: the station's words, `origin`, as `image show` and the
 * reports say it).
 */
function provenanceLine(image) {
  const provenance = image.provenance;
  const b = provenance && provenance.built;
  if (b) {
    return el('div', { class: 'muted small-text image-provenance', text: `Built from ${b.from_name} (${shortSha(b.from_sha256)}) as a ${b.method}, ${fmtTime(b.built_at)}` });
  }
  const c = provenance && provenance.captured;
  if (!c) {
    return provenance && image.origin
      ? el('div', { class: 'muted small-text image-provenance', text: `Downloaded from ${image.origin}` })
      : null;
  }
  const where = [c.port ? `port ${c.port}` : null, c.serial ? `serial ${c.serial}` : 'no serial', c.device].filter(Boolean).join(', ');
  return el('div', { class: 'muted small-text image-provenance', text: `Captured from ${where}: ${c.extent} of ${fmtBytes(c.device_size)}` });
}

/**
 * The image's block map, which a sparse run writes and reads back: where it
 * came from, how much it maps and its share; or why sparse runs are refused.
 */
export function blockMapLine(map) {
  if (!map) return el('div', { class: 'muted small-text image-map', text: 'No block map: written whole only (sparse runs refused)' });
  if (map.error) return el('div', { class: 'bad small-text image-map', text: `Block map unreadable: ${map.error}` });
  const share = (map.mapped_share * 100).toFixed(1);
  return el('div', { class: 'muted small-text image-map', title: `${map.ranges} ranges` },
    `Block map: ${map.source} · ${fmtBytes(map.mapped_bytes)} of ${fmtBytes(map.image_size)} mapped (${share} %)`);
}

export function renderImageOptions() {
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

export async function deleteImage(image) {
  if (!window.confirm(`Delete image ${image.name || image.sha256} from the station's cache?`)) return;
  try {
    await api('DELETE', `/images/${encodeURIComponent(image.sha256)}`);
    showMessage(`Deleted ${image.name || shortSha(image.sha256)}`, 'info');
  } catch (error) {
    showMessage(`Delete: ${error.message}`);
  }
  loadImages();
}

export function importedText(image) {
  return `${image.already_cached ? 'Already cached' : 'Imported'}: ${image.name || ''} (${fmtBytes(image.size)}, ${shortSha(image.sha256)})`;
}

export async function importPath(event) {
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
export function sendUpload(file, sha, onProgress) {
  return new Promise((resolve, reject) => {
    const query = new URLSearchParams({ name: file.name });
    if (sha) query.set('sha256', sha);
    const xhr = new XMLHttpRequest();
    xhr.open('POST', `${API}/images/upload?${query}`);
    if (getToken()) xhr.setRequestHeader('Authorization', `Bearer ${getToken()}`);
    xhr.setRequestHeader('Content-Type', 'application/octet-stream');
    xhr.upload.onprogress = (e) => onProgress(e.loaded, e.lengthComputable ? e.total : file.size);
    xhr.onload = () => resolve({ status: xhr.status, text: xhr.responseText });
    xhr.onerror = () => reject(new ApiError(0, 'network', 'the upload broke off (too large, or the station went away)'));
    xhr.send(file);
  });
}

export async function uploadImage(event) {
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

// Imports from URLs: started with POST /images/import-url, followed by
// polling GET /images/downloads while one is checking or downloading.

let downloadsTimer = null;

/** The downloads list as last read. */
let lastDownloads = [];
/** When the run panel last asked for the list. */
let downloadsAskedAt = 0;

/**
 * The running download of `url`, as last read; the list is read (and then
 * followed while a download runs) if it is not followed already.
 */
export function runningDownloadOf(url) {
  // At most a read a second (each read that finds a download running
  // renders the run panel again, which asks again).
  if (!downloadsTimer && Date.now() - downloadsAskedAt > 1000) {
    downloadsAskedAt = Date.now();
    loadDownloads();
  }
  return lastDownloads.find((d) => d.url === url && (d.state === 'checking' || d.state === 'downloading'));
}

export async function importUrl(event) {
  event.preventDefault();
  const value = (id) => $(id).value.trim() || null;
  const body = {
    url: value('url-url'),
    sha256: value('url-sha'),
    sha256sums: value('url-sums'),
    signature: value('url-sig'),
    keyring: value('url-keyring'),
    bmap: value('url-bmap'),
    no_bmap: $('url-no-bmap').checked,
    zip_entry: value('url-zip-entry'),
  };
  try {
    await api('POST', '/images/import-url', body);
    setStatus('url-status', 'Started: the download is checked and imported as it arrives', 'good');
    loadDownloads();
  } catch (error) {
    setStatus('url-status', error.message, 'bad');
  }
}

function downloadRow(d) {
  const pct = d.total ? Math.floor((d.held / d.total) * 100) : null;
  let words;
  if (d.state === 'checking') {
    words = {
      signed_list: 'checking the checksum list and its signature…',
      list: 'fetching the checksum list…',
    }[d.checks_first] || 'connecting…';
  }
  else if (d.state === 'downloading') {
    words = `${fmtBytes(d.held)}${d.total ? ` of ${fmtBytes(d.total)} (${pct}%)` : ''}`;
    if (d.rate_bytes_per_sec) words += ` · ${fmtBytes(d.rate_bytes_per_sec)}/s`;
    if (d.eta_secs != null) words += ` · ${d.eta_secs} s left`;
    if (d.resumed_from) words += ` · resumed at ${fmtBytes(d.resumed_from)}`;
    // A failed try the download waits to make again: why, and which try.
    if (d.retrying) {
      const r = d.retrying;
      words += ` · trying again (try ${r.next_try} of ${r.tries}) after: ${r.error}`;
    }
  } else if (d.state === 'done') {
    const signer = d.provenance && d.provenance.digest_source && d.provenance.digest_source.signature;
    words = `imported ${shortSha(d.image)}${signer ? ` · signed by ${signer.signer_fingerprint}` : ''}`;
    const lookup = d.provenance && d.provenance.bmap_lookup_failed;
    if (lookup) words += ` · no block map from beside it: the lookup failed (${lookup})`;
  } else if (d.state === 'interrupted') {
    words = `interrupted by a stop of the station at ${fmtBytes(d.held)}${d.total ? ` of ${fmtBytes(d.total)}` : ''}`;
  } else words = `failed: ${d.error}`;
  // An interrupted or failed import starts again from its partial download.
  const resumable = d.state === 'interrupted' || d.state === 'failed';
  // The download of a run armed with its URL: a link to that run's report.
  const report = d.run_id != null ? `${API}/runs/${encodeURIComponent(d.run_id)}/report?format=html` : null;
  const run = report
    ? el('a', {
      class: 'download-run',
      href: withToken(report),
      'data-href': report,
      target: '_blank',
      rel: 'noopener',
      title: `The report of run #${d.run_id}, which this download was for`,
    }, `run #${d.run_id}`)
    : null;
  const row = el('li', { class: 'row', dataset: { state: d.state, runId: d.run_id != null ? String(d.run_id) : undefined } },
    el('div', { class: 'row-main' },
      el('strong', { text: d.url.split('/').pop() || d.url, title: d.url }),
      run ? el('span', { class: 'muted' }, ' for ', run) : null,
      el('span', { class: d.state === 'failed' ? 'bad' : 'muted', text: ` ${words}` })),
    resumable
      ? el('button', {
        type: 'button',
        class: 'small resume-download',
        'aria-label': `Resume the download of ${d.url}`,
        onclick: () => resumeDownload(d),
      }, 'Resume')
      : null);
  if (pct != null && d.state === 'downloading') {
    const fill = el('span');
    fill.style.width = `${pct}%`;
    row.append(el('div', { class: 'bar', role: 'progressbar', 'aria-label': `Download of ${d.url}`, 'aria-valuemin': '0', 'aria-valuemax': '100', 'aria-valuenow': String(pct) }, fill));
  }
  return row;
}

/** Downloads whose resume is being asked for: a second click asks nothing. */
const resumesAsked = new Set();

async function resumeDownload(d) {
  if (resumesAsked.has(d.id)) return;
  resumesAsked.add(d.id);
  try {
    await api('POST', `/images/downloads/${encodeURIComponent(d.id)}/resume`);
    setStatus('url-status', 'Resumed: the download goes on from its partial file', 'good');
  } catch (error) {
    setStatus('url-status', error.message, 'bad');
  } finally {
    resumesAsked.delete(d.id);
  }
  loadDownloads();
}

export async function loadDownloads() {
  clearTimeout(downloadsTimer);
  downloadsTimer = null;
  let list;
  try {
    list = (await api('GET', '/images/downloads')) || [];
  } catch (error) {
    return;
  }
  lastDownloads = list;
  $('download-list').replaceChildren(...list.map(downloadRow));
  const busy = list.some((d) => d.state === 'checking' || d.state === 'downloading');
  if (busy) downloadsTimer = setTimeout(loadDownloads, 1000);
  // The run panel says how a run being armed from a URL is getting on.
  if (model.arming && busy) document.dispatchEvent(new Event('flashrack:downloads'));
  if (list.some((d) => d.state === 'done' && !model.images.some((i) => i.sha256 === d.image))) loadImages();
}

// Captures of the master stick: a master port's tile offers "Capture…",
// which opens the form here; POST /images/capture starts one. Its progress
// arrives on the event stream (the master port's state `capturing`, with
// progress, like a write's); GET /images/captures is read when the list is
// opened and once a capture ends, for its result.

/** The captures as last read, updated from the master ports' progress. */
let captures = [];

/** The master ports holding a stick, as options of the capture form. */
function renderCapturePorts(selected) {
  const select = $('capture-port');
  const masters = [...model.ports.values()].filter((p) => p.master);
  const options = masters.map((p) => el('option', {
    value: p.label,
    text: `${p.label}${p.device ? ` · ${fmtBytes(p.device.capacity)}${p.device.serial ? ` · SN ${p.device.serial}` : ''}` : ' · no stick'}`,
  }));
  if (!options.length) options.push(el('option', { value: '', text: 'no master port: set master = true on a [[port]]' }));
  select.replaceChildren(...options);
  if (selected) select.value = selected;
}

export function openCapture(label) {
  const details = $('capture-details');
  details.open = true;
  renderCapturePorts(label);
  details.scrollIntoView({ block: 'nearest' });
  $('capture-name').focus();
}

/** A capture being asked for: a second click meanwhile asks nothing. */
let captureAsked = false;

export async function captureMaster(event) {
  event.preventDefault();
  if (captureAsked) return;
  const body = {
    port: $('capture-port').value || null,
    name: $('capture-name').value.trim(),
    whole: $('capture-whole').checked,
  };
  captureAsked = true;
  try {
    const view = await api('POST', '/images/capture', body);
    setStatus('capture-status', `Capturing port ${view.port} (nothing is written to it)…`, 'good');
    if (!captures.some((c) => c.id === view.id)) captures.unshift(view);
    $('capture-list').replaceChildren(...captures.map(captureRow));
    loadCaptures();
  } catch (error) {
    setStatus('capture-status', error.message, 'bad');
  } finally {
    captureAsked = false;
  }
}

/** The captured size against the smallest stick seen: whether it fits the rack's sticks. */
export function fitText(c) {
  if (c.smallest_stick == null) return 'no stick seen yet to compare its size with';
  if (c.fits_smallest_stick) return `fits the smallest stick seen (${fmtBytes(c.smallest_stick)})`;
  return `does NOT fit the smallest stick seen (${fmtBytes(c.smallest_stick)}): ${fmtBytes(c.size - c.smallest_stick)} too large`;
}

function captureRow(c) {
  const pct = c.total ? Math.floor((c.read / c.total) * 100) : null;
  let words;
  let cls = 'muted';
  if (c.state === 'capturing') {
    words = `reading ${fmtBytes(c.read)}${c.total ? ` of ${fmtBytes(c.total)} (${pct}%)` : ''}`;
    if (c.rate_bytes_per_sec) words += ` · ${fmtBytes(c.rate_bytes_per_sec)}/s`;
    if (c.eta_secs != null) words += ` · ${c.eta_secs} s left`;
  } else if (c.state === 'done') {
    words = `captured ${fmtBytes(c.size)} of ${fmtBytes(c.device_size)} (${c.extent}) · ${shortSha(c.image)} · ${fitText(c)}`;
    // The same bytes cached before keep their name, and are known by the
    // capture's too: said, as `image capture` says it.
    if (c.already_cached) {
      const kept = model.images.find((i) => i.sha256 === c.image);
      words += kept && kept.name !== c.name
        ? ` · the same bytes were cached already, as ${kept.name}: the image keeps that name, and is known as ${c.name} too`
        : ' · the same bytes were cached already';
    }
    if (!c.fits_smallest_stick && c.smallest_stick != null) cls = 'bad';
  } else {
    words = `failed: ${c.error}`;
    cls = 'bad';
  }
  const row = el('li', { class: 'row capture-row', dataset: { state: c.state, port: c.port } },
    el('div', { class: 'row-main' },
      el('strong', { text: c.name }),
      el('span', { class: 'muted', text: ` from port ${c.port}${c.serial ? ` (SN ${c.serial})` : ''}` }),
      el('div', { class: `${cls} small-text capture-words`, text: words })));
  if (pct != null && c.state === 'capturing') {
    const fill = el('span');
    fill.style.width = `${pct}%`;
    row.append(el('div', { class: 'bar', role: 'progressbar', 'aria-label': `Capture of port ${c.port}`, 'aria-valuemin': '0', 'aria-valuemax': '100', 'aria-valuenow': String(pct) }, fill));
  }
  return row;
}

/** The read of the captures' list under way, if one is. */
let capturesLoading = null;

export function loadCaptures() {
  if (!capturesLoading) capturesLoading = readCaptures().finally(() => { capturesLoading = null; });
  return capturesLoading;
}

async function readCaptures() {
  let list;
  try {
    list = (await api('GET', '/images/captures')) || [];
  } catch (error) {
    return;
  }
  captures = list;
  $('capture-list').replaceChildren(...list.map(captureRow));
  if (list.some((c) => c.state === 'done' && !model.images.some((i) => i.sha256 === c.image))) loadImages();
  // A capture still running is read again until it ends: its port may have
  // left `capturing` before it did (its master pulled, the port's stick
  // replaced), and then no port change says when it ends.
  if (list.some((c) => c.state === 'capturing') && !capturesTimer) {
    capturesTimer = setTimeout(() => { capturesTimer = null; loadCaptures(); }, 1000);
  }
}

/** The next read of a list that still has a capture running. */
let capturesTimer = null;

// Bootable builds: an installer ISO refused for a raw run offers "Build a
// bootable stick image"; POST /images/{sha256}/bootable starts one, followed
// by polling GET /images/builds while one is building.

let buildsTimer = null;

export async function buildBootable(image) {
  try {
    const view = await api('POST', `/images/${image.sha256}/bootable`, {});
    showMessage(`Building a bootable stick image from ${view.source_name}…`);
  } catch (error) {
    showMessage(`Build: ${error.message}`);
  }
  loadBuilds();
}

async function cancelBuild(b) {
  try {
    await api('POST', `/images/builds/${b.id}/cancel`);
    showMessage(`Cancelling the build from ${b.source_name}…`);
  } catch (error) {
    showMessage(`Cancel: ${error.message}`);
  }
  loadBuilds();
}

/** "stage 3 of 5: partitioning (GPT and FAT32)", as the API words it. */
const stageWords = (b) => (b.stage ? `stage ${b.stage_number} of ${b.stage_count}: ${b.stage_words}` : 'starting');

/** "1.2 GB of 4.8 GB (25%)": how far the copying or hashing stage is. */
const stageBytes = (b) => {
  const sb = b.stage_bytes;
  if (!sb || !sb.total) return '';
  const pct = Math.floor((sb.done / sb.total) * 100);
  return ` ${fmtBytes(sb.done)} of ${fmtBytes(sb.total)} (${pct}%)`;
};

function buildRow(b) {
  let words;
  let cls = 'muted';
  if (b.state === 'building') {
    words = `building from ${b.source_name}: ${stageWords(b)}…${stageBytes(b)}`;
  } else if (b.state === 'built') {
    words = `built from ${b.source_name}${b.reused ? ' before (the cached layout)' : ''}: ${b.name} · ${fmtBytes(b.size)} · ${shortSha(b.image)}`;
    if (b.split && b.split.length) words += ` · ${b.split.map((s) => `${s.file} split into ${s.parts} parts`).join(', ')}`;
    cls = 'good';
  } else if (b.state === 'cancelled' || b.state === 'interrupted') {
    words = `build from ${b.source_name} ${b.state} at ${stageWords(b)}: ${b.error}`;
  } else {
    words = `build from ${b.source_name} failed at ${stageWords(b)}: ${b.error}`;
    cls = 'bad';
  }
  // Each stage, marked done, current, stopped or pending.
  const stages = el('ol', { class: 'build-stages small-text' },
    ...(b.stages || []).map((s) => el('li', { class: `build-stage ${s.state}`, dataset: { stage: s.stage, state: s.state }, text: s.words })));
  const cancel = b.state === 'building'
    ? el('button', {
      class: 'small cancel-build',
      'aria-label': `Cancel the build from ${b.source_name}`,
      onclick: () => cancelBuild(b),
    }, 'Cancel')
    : null;
  const row = el('li', { class: 'row build-row', dataset: { state: b.state, id: String(b.id) } },
    el('div', { class: 'row-main' },
      el('strong', { text: b.name }),
      el('div', { class: `${cls} small-text build-words`, text: words }),
      stages),
    ...(cancel ? [cancel] : []));
  const sb = b.stage_bytes;
  if (b.state === 'building' && sb && sb.total) {
    const pct = Math.floor((sb.done / sb.total) * 100);
    const fill = el('span');
    fill.style.width = `${pct}%`;
    row.append(el('div', { class: 'bar', role: 'progressbar', 'aria-label': `Build from ${b.source_name}: ${b.stage_words}`, 'aria-valuemin': '0', 'aria-valuemax': '100', 'aria-valuenow': String(pct) }, fill));
  }
  return row;
}

export async function loadBuilds() {
  clearTimeout(buildsTimer);
  let list;
  try {
    list = (await api('GET', '/images/builds')) || [];
  } catch (error) {
    return;
  }
  $('build-list').replaceChildren(...list.map(buildRow));
  if (list.some((b) => b.state === 'building')) buildsTimer = setTimeout(loadBuilds, 500);
  if (list.some((b) => b.state === 'built' && !model.images.some((i) => i.sha256 === b.image))) loadImages();
}

/**
 * A port changed on the event stream: a master being captured moves its
 * capture's progress; a port that leaves `capturing` has ended its capture,
 * whose result is read once.
 */
export function followCapturePort(before, port) {
  if (port.state === 'capturing') {
    const c = captures.find((x) => x.state === 'capturing' && x.port === port.label);
    const p = port.progress;
    if (!c || !p) {
      // A capture started elsewhere (another browser, the API): read it once.
      if (!c && !capturesLoading) loadCaptures();
      return;
    }
    c.read = p.done;
    c.total = p.total || null;
    c.rate_bytes_per_sec = p.bytes_per_sec > 0 ? Math.round(p.bytes_per_sec) : null;
    c.eta_secs = p.bytes_per_sec > 0 && p.total > p.done ? Math.ceil((p.total - p.done) / p.bytes_per_sec) : null;
    $('capture-list').replaceChildren(...captures.map(captureRow));
  } else if (before && before.state === 'capturing') {
    loadCaptures();
  }
}
