// The station's link to its fleet hub (GET /api/v1/fleet), in the top bar:
// connected or not, the backlog of records not yet acknowledged, and when
// records were last shipped. Hidden for a station in no fleet (GET
// /api/v1/health says `fleet: false`; /api/v1/fleet is never asked, so the
// browser logs no 404 on every page load).

import { $, fmtTime } from './util.js';
import { api } from './api.js';

const EVERY_MS = 2000;

/** What the link says, from the station's fleet view. */
export function fleetText(view) {
  const parts = [view.connected ? 'Hub connected' : 'Hub not reachable'];
  parts.push(`backlog ${view.backlog} record${view.backlog === 1 ? '' : 's'}`);
  parts.push(view.last_shipped_at ? `last shipped ${fmtTime(view.last_shipped_at)}` : 'nothing shipped yet');
  return parts.join(' · ');
}

function render(view) {
  const node = $('fleet-link');
  node.hidden = false;
  node.textContent = fleetText(view);
  node.className = `fleet-link ${view.connected ? 'fleet-connected' : 'fleet-lost'}`;
  node.dataset.connected = String(view.connected);
  node.dataset.backlog = String(view.backlog);
  node.title = view.last_error ? `${view.hub}: ${view.last_error}` : view.hub;
}

/** Polls the fleet view while the station is in a fleet. */
export async function startFleet() {
  for (;;) {
    try {
      if (!(await api('GET', '/health')).fleet) {
        $('fleet-link').hidden = true;
        return;
      }
      break;
    } catch {
      // The station is away: ask again.
      await new Promise((resolve) => { setTimeout(resolve, EVERY_MS); });
    }
  }
  for (;;) {
    try {
      render(await api('GET', '/fleet'));
    } catch (error) {
      if (error.status === 404) {
        $('fleet-link').hidden = true;
        return;
      }
      // The station itself is away: the stale banner says so.
    }
    await new Promise((resolve) => { setTimeout(resolve, EVERY_MS); });
  }
}
