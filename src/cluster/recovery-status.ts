// What `cistern status` says about recovery: how many PG members are stale (awaiting
// backfill), how much that is to copy, and how long it should take. Derived from the
// map alone — stale members × the data of one copy of a PG ÷ the recovery bandwidth
// bound — so it costs no daemon a state update and works from etcd with no daemon
// asked. Pure: the caller says how much one copy of a PG holds (measured on one host,
// an upper bound from provisioned sizes in a cluster).

import { assert } from '../util/assert';
import { PlacementTable, computeTable, pgRow } from '../placement/straw2';
import { ClusterState, actingMembers, pgKey } from './state';

export interface RecoveryStatus {
  /** PGs with at least one stale member. */
  pgsRecovering: number;
  /** Stale PG members: each is one PG's data to copy to one disk. */
  staleMembers: number;
  /**
   * Objects of the stale members' PGs, counted once per stale member: each is misplaced
   * (not yet on a disk placement puts it on) until recovery copies it.
   */
  objectsToCopy: number;
  bytesToCopy: number;
  /**
   * Object copies missing: per PG, `size` minus its up, up-to-date acting members (row
   * and retained), times the objects of one copy. Redundancy is below the pool's size.
   */
  objectsDegraded: number;
  /**
   * Object copies in the wrong place: per PG, the stale members whose data still exists
   * in full on a retained former member (a rebalance copying), times the objects of one
   * copy. Redundancy is whole; placement is not yet.
   */
  objectsMisplaced: number;
  /** The figures are upper bounds (from provisioned sizes: the map does not know what is written). */
  upperBound: boolean;
  /** Aggregate recovery bandwidth: the per-daemon bound × daemons with PGs to recover. */
  bytesPerSecond: number;
  /** Estimated seconds until every stale member is recovered. */
  seconds: number;
  /**
   * What the answering daemon's recovery did since it started (absent where no daemon
   * answers, as with --etcd): members caught up from the PG log and backfilled, and the
   * objects each way copied.
   */
  done?: { logCatchUps: number; logObjects: number; backfills: number; backfillObjects: number };
}

export interface PgCopySize {
  objects: number;
  bytes: number;
}

export function recoveryStatus(
  state: ClusterState,
  perPgCopy: (poolId: number) => PgCopySize,
  upperBound: boolean,
  bytesPerSecondPerHost: number,
): RecoveryStatus {
  assert(bytesPerSecondPerHost > 0, 'recovery bandwidth must be positive');
  let pgsRecovering = 0;
  let staleMembers = 0;
  let objectsToCopy = 0;
  let bytesToCopy = 0;
  const recoveringHosts = new Set<string>();
  const tables = new Map<number, PlacementTable | undefined>(); // one per pool, not per PG
  for (const [key, disks] of Object.entries(state.staleMembers)) {
    if (disks.length === 0) continue;
    const [pool, pg] = key.split(':').map(Number) as [number, number];
    if (!state.map.pools.some((p) => p.id === pool)) continue;
    pgsRecovering += 1;
    staleMembers += disks.length;
    const copy = perPgCopy(pool);
    objectsToCopy += copy.objects * disks.length;
    bytesToCopy += copy.bytes * disks.length;
    if (!tables.has(pool)) tables.set(pool, tableOrNone(state, pool));
    const table = tables.get(pool);
    const host = table ? primaryHost(state, table, pool, pg) : undefined;
    if (host !== undefined) recoveringHosts.add(host);
  }
  const bytesPerSecond = bytesPerSecondPerHost * Math.max(1, recoveringHosts.size);
  const { degraded, misplaced } = copiesOutOfPlace(state, perPgCopy, tables);
  return {
    pgsRecovering,
    staleMembers,
    objectsToCopy: Math.ceil(objectsToCopy),
    bytesToCopy: Math.ceil(bytesToCopy),
    objectsDegraded: Math.ceil(degraded),
    objectsMisplaced: Math.ceil(misplaced),
    upperBound,
    bytesPerSecond,
    seconds: Math.ceil(bytesToCopy / bytesPerSecond),
  };
}

/** Degraded and misplaced object copies over every PG of every placeable pool. */
function copiesOutOfPlace(
  state: ClusterState,
  perPgCopy: (poolId: number) => PgCopySize,
  tables: Map<number, PlacementTable | undefined>,
): { degraded: number; misplaced: number } {
  let degraded = 0;
  let misplaced = 0;
  for (const pool of state.map.pools) {
    if (!tables.has(pool.id)) tables.set(pool.id, tableOrNone(state, pool.id));
    const table = tables.get(pool.id);
    if (!table) continue;
    const objects = perPgCopy(pool.id).objects;
    for (let pg = 0; pg < table.pgCount; pg += 1) {
      const acting = actingMembers(state, table, pg);
      const good = acting.filter((member) => !member.stale).length;
      const stale = acting.length - good;
      const missing = Math.max(0, pool.size - good);
      degraded += missing * objects;
      misplaced += Math.max(0, stale - missing) * objects;
    }
  }
  return { degraded, misplaced };
}

/** The host that recovers a PG: the one of its first up member that is not stale. */
function primaryHost(
  state: ClusterState,
  table: PlacementTable,
  pool: number,
  pg: number,
): string | undefined {
  const stale = state.staleMembers[pgKey(pool, pg)] ?? [];
  for (const disk of pgRow(table, pg)) {
    const spec = table.topology.disksById.get(disk);
    if (spec?.up && !stale.includes(disk)) return spec.host;
  }
  return undefined;
}

function tableOrNone(state: ClusterState, pool: number): PlacementTable | undefined {
  try {
    return computeTable(state.map, pool);
  } catch {
    return undefined; // unplaceable: nobody recovers it now
  }
}
