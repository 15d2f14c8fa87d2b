// What calls the operator back to the rack: a failed stick's tile pulses until
// it is acknowledged, the tab's title and icon count fails and passes, and
// (once the operator enables it: browsers play no sound before a click) an
// audible alarm repeats while a failure is unacknowledged.

import { $ } from './util.js';
import { model, isAlarming } from './model.js';

const ACK_KEY = 'flashrack.acked';
const SOUND_KEY = 'flashrack.sound';
/** While a failure is unacknowledged, the alarm sounds again this often. */
const REPEAT_MS = 10000;

// Acknowledgements are per failure (port and attempt): the next stick in the
// port is a new attempt, so its failure alarms again. Kept for the tab's life.
const acked = new Set(JSON.parse(sessionStorage.getItem(ACK_KEY) || '[]'));
let audio = null; // AudioContext, made on the operator's click
let repeatTimer = null;
let beeps = 0;

const failureKey = (port) => `${port.label}#${port.attempt_id ?? 'none'}`;

/** Whether this port's failure still calls for the operator. */
export const needsAck = (port) => isAlarming(port) && !acked.has(failureKey(port));

/** The operator has seen this port's failure. */
export function acknowledge(port) {
  acked.add(failureKey(port));
  // Only failures still on screen are worth keeping.
  const live = new Set([...model.ports.values()].filter(isAlarming).map(failureKey));
  for (const key of [...acked]) if (!live.has(key)) acked.delete(key);
  sessionStorage.setItem(ACK_KEY, JSON.stringify([...acked]));
}

/** Every failure on screen acknowledged at once. */
export function acknowledgeAll() {
  for (const port of model.ports.values()) if (needsAck(port)) acknowledge(port);
}

const unacknowledged = () => [...model.ports.values()].filter(needsAck);

/** Title, icon, alarm state: call after anything that changes ports or the run. */
export function renderAlerts() {
  const waiting = unacknowledged();
  document.body.dataset.alarm = waiting.length ? 'on' : 'off';
  const ackAll = $('ack-all');
  ackAll.hidden = waiting.length === 0;
  ackAll.textContent = `Acknowledge ${waiting.length === 1 ? 'the failure' : `${waiting.length} failures`}`;
  renderTitle(waiting.length);
  if (waiting.length && audio) {
    if (!repeatTimer) {
      beep();
      repeatTimer = setInterval(() => (unacknowledged().length ? beep() : stopRepeat()), REPEAT_MS);
    }
  } else stopRepeat();
}

function stopRepeat() {
  clearInterval(repeatTimer);
  repeatTimer = null;
}

/** `✗2 · ✓14 — flashrack`: the current run's fails and passes, in the tab. */
function renderTitle(waiting) {
  const run = model.run;
  const base = model.stationId ? `flashrack ${model.stationId}` : 'flashrack';
  let title = base;
  if (model.stale) title = `? stale — ${base}`;
  else if (run) title = `✗${run.failed} · ✓${run.passed} — ${base}`;
  if (document.title !== title) document.title = title;
  const kind = model.stale ? 'stale' : waiting ? 'alarm' : run && run.failed ? 'failed' : run && run.passed ? 'passed' : 'idle';
  const icon = $('favicon');
  if (icon.dataset.kind !== `${kind}:${waiting}`) {
    icon.dataset.kind = `${kind}:${waiting}`;
    icon.href = favicon(kind, waiting);
  }
}

/** A 64 px icon: red with the number of unacknowledged failures, green check, grey. */
function favicon(kind, waiting) {
  const canvas = document.createElement('canvas');
  canvas.width = 64;
  canvas.height = 64;
  const g = canvas.getContext('2d');
  const colour = { alarm: '#c62828', failed: '#b45309', passed: '#15803d', stale: '#6b7280', idle: '#1f2933' }[kind];
  g.fillStyle = colour;
  if (kind === 'alarm') {
    g.beginPath();
    g.arc(32, 32, 31, 0, Math.PI * 2);
    g.fill();
  } else {
    g.fillRect(2, 2, 60, 60);
  }
  g.fillStyle = '#fff';
  g.font = 'bold 40px sans-serif';
  g.textAlign = 'center';
  g.textBaseline = 'middle';
  const mark = { alarm: waiting > 9 ? '9+' : String(waiting), failed: '✗', passed: '✓', stale: '?', idle: 'f' }[kind];
  g.fillText(mark, 32, 35);
  return canvas.toDataURL('image/png');
}

/** Three short tones, loud enough for a workshop. */
function beep() {
  if (!audio) return;
  const start = audio.currentTime + 0.05;
  for (let i = 0; i < 3; i += 1) {
    const osc = audio.createOscillator();
    const gain = audio.createGain();
    osc.type = 'square';
    osc.frequency.value = i % 2 ? 660 : 880;
    gain.gain.setValueAtTime(0.0001, start + i * 0.3);
    gain.gain.exponentialRampToValueAtTime(0.3, start + i * 0.3 + 0.02);
    gain.gain.exponentialRampToValueAtTime(0.0001, start + i * 0.3 + 0.22);
    osc.connect(gain).connect(audio.destination);
    osc.start(start + i * 0.3);
    osc.stop(start + i * 0.3 + 0.25);
  }
  beeps += 1;
  $('sound-toggle').dataset.beeps = String(beeps);
}

function renderSoundButton() {
  const button = $('sound-toggle');
  const on = Boolean(audio) && audio.state === 'running';
  button.dataset.sound = on ? 'on' : 'off';
  button.setAttribute('aria-pressed', String(on));
  button.textContent = on ? '♪ Sound on' : localStorage.getItem(SOUND_KEY) === 'on' ? '♪ Click to enable sound' : '♪ Enable sound';
}

/** The operator's click: the only moment a browser lets a page start sound. */
async function toggleSound() {
  if (audio && audio.state === 'running') {
    await audio.close();
    audio = null;
    localStorage.setItem(SOUND_KEY, 'off');
    stopRepeat();
  } else {
    audio = new (window.AudioContext || window.webkitAudioContext)();
    await audio.resume();
    localStorage.setItem(SOUND_KEY, 'on');
    beep(); // so the operator hears what the alarm sounds like
  }
  renderSoundButton();
  renderAlerts();
}

/** Wires the buttons. */
export function startAlerts(onAcknowledgeAll) {
  $('sound-toggle').addEventListener('click', toggleSound);
  $('ack-all').addEventListener('click', () => {
    acknowledgeAll();
    onAcknowledgeAll();
  });
  $('sound-toggle').dataset.beeps = '0';
  renderSoundButton();
  renderAlerts();
}
