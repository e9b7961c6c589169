// Taking hosts out of a cluster: drain (placement weight zero, so every PG moves off it
// — its disks stay acting members until the new ones are recovered, see
// markNewMembersStale) and removal (only once it holds no PG). Pure functions of the
// cluster state, applied through ClusterStore.update.

import { CisternError } from '../util/errors';
import { computeTable } from '../placement/straw2';
import { ClusterState, actingMembers } from './state';

function hostDisks(state: ClusterState, hostId: string): number[] {
  if (!state.map.hosts.some((h) => h.id === hostId)) {
    throw new CisternError('ENOENT', `no host "${hostId}" in the cluster (see: cistern host ls)`);
  }
  return state.map.disks.filter((d) => d.host === hostId).map((d) => d.id);
}

/** Sets the host's disks' placement weight to zero. Returns the disks drained. */
export function drainHost(state: ClusterState, hostId: string): number[] {
  const disks = hostDisks(state, hostId);
  for (const disk of state.map.disks) if (disk.host === hostId) disk.weight = 0;
  return disks;
}

export interface HostHoldings {
  /** PG memberships (in a placement row, or retained until backfill ends). */
  pgMemberships: number;
  /** Stale members cluster-wide still to recover (the drain's remaining work). */
  staleMembers: number;
  /** Whether every disk of the host has weight zero. */
  drained: boolean;
}

/** What a host still holds: zero memberships means it can be powered off and removed. */
export function hostHoldings(state: ClusterState, hostId: string): HostHoldings {
  const disks = new Set(hostDisks(state, hostId));
  let pgMemberships = 0;
  for (const pool of state.map.pools) {
    let table;
    try {
      table = computeTable(state.map, pool.id);
    } catch {
      continue;
    }
    for (let pg = 0; pg < pool.pgCount; pg += 1) {
      const rowAndRetained = actingMembers(state, table, pg).map((m) => m.disk);
      // Down members are not acting, but a down disk of this host still holds data.
      const row = Array.from(table.disks.subarray(pg * table.size, (pg + 1) * table.size));
      if ([...rowAndRetained, ...row].some((d) => disks.has(d))) pgMemberships += 1;
    }
  }
  const staleMembers = Object.values(state.staleMembers).reduce(
    (sum, list) => sum + list.length,
    0,
  );
  const drained = state.map.disks.filter((d) => disks.has(d.id)).every((d) => d.weight === 0);
  return { pgMemberships, staleMembers, drained };
}

/** Removes a host and its disks from the map; refused while it holds any PG. */
export function removeHost(state: ClusterState, hostId: string): void {
  const holdings = hostHoldings(state, hostId);
  if (holdings.pgMemberships > 0) {
    throw new CisternError(
      'EPERM',
      `host ${hostId} still holds ${holdings.pgMemberships} PG(s)` +
        (holdings.drained
          ? `; its drain is still copying (${holdings.staleMembers} PG members to recover)`
          : `; drain it first: cistern host drain ${hostId}`),
    );
  }
  const disks = new Set(hostDisks(state, hostId));
  state.map.hosts = state.map.hosts.filter((h) => h.id !== hostId);
  state.map.disks = state.map.disks.filter((d) => !disks.has(d.id));
  for (const id of disks) delete state.disks[String(id)];
  delete state.hostAddresses[hostId];
}
