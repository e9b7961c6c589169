// Scrub requests and reports in the cluster state. `cistern scrub` records a request
// (it may talk only to etcd); every daemon scrubs the PGs it is primary of and writes
// its report back under the request; the CLI waits until every live host has reported.
// Pure mutations of the state, bounded: few requests are kept, reports keep few names.

import { assert } from '../util/assert';
import { CisternError } from '../util/errors';
import type { ClusterState } from './state';

/** Requests kept in the state; adding one more drops the oldest. */
export const SCRUB_REQUESTS_MAX = 8;
/** A daemon ignores requests older than this (e.g. ones made while it was away for long). */
export const SCRUB_REQUEST_TTL_MS = 24 * 3600_000;
/** Object names a report keeps as examples of disagreements. */
export const SCRUB_EXAMPLES_MAX = 8;
/** Length of one example, and of an error message, in a report. */
export const SCRUB_TEXT_MAX_CHARS = 200;

/** What one host found scrubbing the PGs it is primary of. */
export interface ScrubReport {
  host: string;
  finishedAt: string;
  ms: number;
  pgs: number;
  objects: number;
  /** Objects whose members' contents differed. */
  disagreements: number;
  /** Of those, objects whose members were identical after repair. */
  repaired: number;
  /** Objects that could not be compared (a member failed to answer). */
  errors: number;
  /** The first few disagreements and errors, "pool/volume/object: what". */
  examples: string[];
}

export interface ScrubRequest {
  /** The epoch of the update that recorded it: unique, increasing. */
  id: number;
  /** Only this pool's PGs (its id); all pools when absent. */
  pool?: number;
  requestedAt: string;
  /** Per host id. */
  reports: Record<string, ScrubReport>;
}

/** Records a scrub request; `poolName` must name a pool. Returns the request. */
export function requestScrub(
  state: ClusterState,
  poolName: string | undefined,
  now: Date,
): ScrubRequest {
  state.scrubRequests ??= [];
  let pool: number | undefined;
  if (poolName !== undefined) {
    const found = state.map.pools.find((p) => p.name === poolName);
    if (!found) {
      throw new CisternError('UNKNOWN_POOL', `no pool named "${poolName}" (see: cistern pool ls)`);
    }
    pool = found.id;
  }
  const request: ScrubRequest = {
    id: state.map.epoch + 1, // the epoch this update will carry
    ...(pool !== undefined ? { pool } : {}),
    requestedAt: now.toISOString(),
    reports: {},
  };
  state.scrubRequests.push(request);
  while (state.scrubRequests.length > SCRUB_REQUESTS_MAX) state.scrubRequests.shift();
  return request;
}

/** Stores `report` under request `id`; a request dropped meanwhile is ignored (false). */
export function recordScrubReport(state: ClusterState, id: number, report: ScrubReport): boolean {
  assert(report.examples.length <= SCRUB_EXAMPLES_MAX, 'scrub report examples unbounded');
  assert(report.repaired <= report.disagreements, 'more repaired than found');
  const request = (state.scrubRequests ?? []).find((r) => r.id === id);
  if (!request) return false;
  request.reports[report.host] = report;
  return true;
}

/** Requests `host` has not reported on yet and that are recent enough to act on. */
export function pendingScrubs(state: ClusterState, host: string, now: Date): ScrubRequest[] {
  return (state.scrubRequests ?? []).filter(
    (r) =>
      r.reports[host] === undefined &&
      now.getTime() - Date.parse(r.requestedAt) <= SCRUB_REQUEST_TTL_MS,
  );
}

/** A text cut to the bound, for reports that travel in the state. */
export function boundedText(text: string): string {
  return text.length <= SCRUB_TEXT_MAX_CHARS ? text : `${text.slice(0, SCRUB_TEXT_MAX_CHARS - 1)}…`;
}

/** How a scrub is going, as the admin API and the CLI see it. */
export interface ScrubStatus {
  id: number;
  pool?: string;
  requestedAt: string;
  /** Hosts expected to report (live hosts). */
  hosts: string[];
  reports: ScrubReport[];
  /** Every expected host has reported. */
  done: boolean;
}

export function scrubStatusOf(
  state: ClusterState,
  id: number,
  liveHosts: readonly string[],
): ScrubStatus {
  const request = (state.scrubRequests ?? []).find((r) => r.id === id);
  if (!request) {
    throw new CisternError(
      'ENOENT',
      `no scrub request ${id} (at most ${SCRUB_REQUESTS_MAX} recent ones are kept)`,
    );
  }
  const reports = Object.values(request.reports).sort((a, b) => a.host.localeCompare(b.host));
  const pool = state.map.pools.find((p) => p.id === request.pool)?.name;
  return {
    id,
    ...(pool !== undefined ? { pool } : {}),
    requestedAt: request.requestedAt,
    hosts: [...liveHosts].sort(),
    reports,
    done: liveHosts.every((host) => request.reports[host] !== undefined),
  };
}
