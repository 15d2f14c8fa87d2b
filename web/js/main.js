// flashrack dashboard: plain JS modules, no framework, no build step.
// The modules, each served as it is:
// - util.js: elements, formatting, messages;
// - model.js: what the dashboard knows of the station;
// - api.js: the JSON API and the operator token;
// - live.js: the event stream, the snapshot, the stale view;
// - rack.js: the rack's tiles;
// - wall.js: wall mode (the rack across the room);
// - alerts.js: the alarm, acknowledgements, the tab's title and icon;
// - run.js: the run panel and the batch's progress;
// - images.js: the image cache;
// - records.js: runs, reports, devices and each port's history;
// - fleet.js: the station's link to its fleet hub.

import { $, fmtBytes, fmtBytesExact } from './util.js';
import { connectEvents, watchStream } from './live.js';
import { stopRun, armRun, retryFailed, showArmSource } from './run.js';
import { loadImages, importPath, importUrl, loadDownloads, uploadImage, captureMaster, loadCaptures, openCapture, loadBuilds } from './images.js';
import { loadRuns, loadDevices, renderDevices } from './records.js';
import { renderRack } from './rack.js';
import { startWall } from './wall.js';
import { startAlerts } from './alerts.js';
import { startFleet } from './fleet.js';

// The size notation, for the browser test (tests/e2e) to check against the
// Rust side's cases; nothing else reads it.
window.flashrackFormat = Object.freeze({ fmtBytes, fmtBytesExact });

function start() {
  startWall(renderRack);
  startAlerts(renderRack);
  $('stop-form').addEventListener('submit', stopRun);
  $('arm-form').addEventListener('submit', armRun);
  $('arm-source').addEventListener('change', showArmSource);
  $('retry-button').addEventListener('click', retryFailed);
  $('import-form').addEventListener('submit', importPath);
  $('upload-form').addEventListener('submit', uploadImage);
  $('url-form').addEventListener('submit', importUrl);
  loadDownloads();
  $('capture-form').addEventListener('submit', captureMaster);
  $('capture-details').addEventListener('toggle', () => { if ($('capture-details').open) openCapture($('capture-port').value); });
  loadCaptures();
  loadBuilds();
  $('runs-refresh').addEventListener('click', loadRuns);
  $('devices-refresh').addEventListener('click', loadDevices);
  $('device-search').addEventListener('input', renderDevices);
  connectEvents();
  watchStream();
  loadImages();
  loadRuns();
  loadDevices();
  startFleet();
}

start();
