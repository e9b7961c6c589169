// A daemon's start-up peering after a crash it may not have been seen to have: a daemon
// back before its liveness lease lapsed was never marked down, so no map change makes
// its disks stale, yet its disks' volatile caches may have lost acknowledged writes.
// Each disk's activity record (ObjectStore.activeObjects: every object changed since its
// last flush, marks durable before the change) names the objects that can be affected;
// their PGs are marked stale on that disk in one map update (state.markRestartedStale)
// before the daemon serves reads (ReadFence.started), so reads come from the other
// members and recovery copies those PGs back. After a clean stop, or a restart after the
// lease lapsed (the disks come back stale anyway), the record is short or the marks are
// already there; nothing else changes.

import { ObjectKey } from '../store/key';
import { ClusterStore } from '../cluster/store';
import { markRestartedStale } from '../cluster/state';
import { objectToPg } from '../placement/straw2';

export interface ActivityRecord {
  activeObjects(pool: number): Promise<ObjectKey[]>;
}

/**
 * Marks each of `disks` (this host's, opened) stale in the PGs its activity record
 * lists, where another good member remains; returns how many (disk, PG) marks it made.
 * Disks the map has down are left alone (the monitor brings them back stale).
 */
export async function markRestartedDisks(
  cluster: ClusterStore,
  disks: Iterable<[number, ActivityRecord]>,
): Promise<number> {
  const state = cluster.current();
  const perDisk = new Map<number, Array<{ pool: number; pg: number }>>();
  for (const [disk, record] of disks) {
    if (state.map.disks.find((d) => d.id === disk)?.up !== true) continue;
    const pgs = new Map<string, { pool: number; pg: number }>();
    for (const pool of state.map.pools) {
      for (const key of await record.activeObjects(pool.id)) {
        const pg = objectToPg(pool, key.volume, key.object);
        pgs.set(`${pool.id}:${pg}`, { pool: pool.id, pg });
      }
    }
    if (pgs.size > 0) perDisk.set(disk, [...pgs.values()]);
  }
  if (perDisk.size === 0) return 0;
  return cluster.update((s) => {
    let marked = 0;
    for (const [disk, pgs] of perDisk) marked += markRestartedStale(s, disk, pgs).length;
    return marked;
  });
}
