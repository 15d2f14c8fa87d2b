// What the dashboard knows of the station, and the predicates on it that
// every view shares.

import { shortSha } from './util.js';

export const BUSY = new Set(['preparing', 'writing', 'flushing', 'resetting', 'verifying']);
export const STATE_NAMES = {
  empty: 'Empty', detected: 'Detected', master: 'Master (never written)', capturing: 'Capturing (read, never written)', refused: 'Refused', waiting: 'Waiting', preparing: 'Preparing',
  writing: 'Writing', flushing: 'Flushing', resetting: 'Resetting', verifying: 'Verifying',
  passed: 'Passed', failed: 'Failed',
};
export const STATE_MARKS = { passed: '✓ ', failed: '✗ ', refused: '⊘ ', master: '★ ', capturing: '★ ' };

// The dashboard never passes off an old view as live: when the event stream
// is lost (or has been silent for STALE_AFTER_MS: the station pings every 5 s)
// or a request cannot reach the station, the view is marked stale until the
// stream is back with a fresh snapshot.
export const STALE_AFTER_MS = 12000;

export const model = {
  stationId: '',
  stale: false,
  staleSince: null, // Date: when the view stopped being live
  ports: new Map(), // label -> PortView, in the station's order
  run: null,
  arming: null, // a run being armed: { state: 'claimed' (its import starting) | 'waiting_for_stop' (its import begun, the last run's stop being recorded) | 'recording' (its start), image_name, image_sha256 (not while claimed), source }
  images: [],
  runs: [],
  devices: [],
  // label -> { verdicts: [report rows, newest first], check_port }: from the records.
  history: new Map(),
  // attempt id -> seconds a stick of the current run took (write + read-back),
  // as measured by the station: what the batch's ETA is estimated from.
  stickSecs: new Map(),
};

/** A stick's failure that the operator has to see: of this run, and about the stick. */
export const isAlarming = (port) => port.state === 'failed' && Boolean(port.verdict)
  && port.verdict.verdict !== 'pass' && port.verdict.reason !== 'refused' && !isInterrupted(port)
  && verdictIsCurrent(port);


/** An interrupted attempt (or one the station could not carry out) is a `failed` port, but says nothing about the stick. */
export const isInterrupted = (port) => port.state === 'failed' && port.verdict
  && (port.verdict.reason === 'interrupted' || port.verdict.reason === 'station_error');

/**
 * Whether the port's verdict was given under the current run (same run, same
 * image). A verdict of another run says nothing about this run's image.
 */
export function verdictIsCurrent(port) {
  const of = port.verdict_run;
  const run = model.run;
  return Boolean(port.verdict && of && run && of.run_id === run.id && of.image_sha256 === run.image_sha256);
}

/** "run #2 (ubuntu.img)": the run and image a verdict is about. */
export function verdictRunText(port) {
  const of = port.verdict_run;
  if (!of) return 'an unknown run';
  return `run #${of.run_id} (${of.image_name || shortSha(of.image_sha256)})`;
}

/** A verdict of another run, on a port that shows it as its outcome. */
export const isForeignOutcome = (port) => (port.state === 'passed' || port.state === 'failed') && !verdictIsCurrent(port);
