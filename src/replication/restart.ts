// A daemon's start-up peering after a crash it may not have been seen to have: a daemon
// back before its liveness lease lapsed was never marked down, so no map change makes
// its disks stale, yet its disks' volatile caches may have lost acknowledged writes.
// Each disk's activity record (ObjectStore.activeObjects: every object changed since its
// last flush, marks durable before the change) names the objects that can be affected;
// their PGs are marked stale on that disk in one map update (state.markRestartedStale)
// before the daemon serves reads (ReadFence.started), so reads come from the other
// members and recovery copies those PGs back. A restart after the lease lapsed finds
// its disks down (they come back stale anyway), but a PG left below min-size may name
// them in peering's record of who holds every write: they leave it where it names
// another disk before them, which holds what the crash cost. After a clean stop the record is
// short; nothing changes.
//
// The same crash may also have kept, by luck, unflushed changes whose PG-log entries it
// lost (an entry is durable only with a commit; data can reach the medium before one): the
// disk then holds changes its log does not list. So each listed PG's log on the disk gets
// its `start` raised above every version given so far (pg-log.ts): a member catching up
// from this disk as its primary is backfilled — compared object by object — rather than
// given only the logged objects, which would leave those changes on this disk alone
// (soak seed 1463: a member recovered after accept-loss lacked an object for good). Down
// disks too: peering may serve one of them without recovering it (an authoritative member).

import { ObjectKey } from '../store/key';
import { ClusterStore } from '../cluster/store';
import { markRestartedStale } from '../cluster/state';
import { objectToPg } from '../placement/straw2';
import { PgVersion } from '../store/pg-log';

export interface ActivityRecord {
  activeObjects(pool: number): Promise<ObjectKey[]>;
  /** The disk's PG log (pg-log.ts), where it keeps one: `start` raised. */
  markPgLog?(pool: number, pg: number, mark: { start: PgVersion }): Promise<void>;
}

/**
 * Raises the PG-log `start` of each of `disks` (this host's, opened) in the PGs its
 * activity record lists, and marks each disk the map has up stale in those PGs where
 * another good member remains or peering's record names, before it, a disk that may
 * hold what its crash lost (markRestartedStale); returns how many (disk, PG)
 * stale marks it made. A disk the map has down only leaves those records: the monitor
 * brings it back stale, and peering must not make it good again ahead of them.
 */
export async function markRestartedDisks(
  cluster: ClusterStore,
  disks: Iterable<[number, ActivityRecord]>,
): Promise<number> {
  const state = cluster.current();
  // Above every version any change this disk took can carry: a change was sent at the
  // sender's map epoch, which the disk's daemon had reached to accept it (fencing), and
  // this map, read at start, is at least that one.
  const start: PgVersion = { epoch: state.map.epoch + 1, seq: 0 };
  const perDisk = new Map<number, Array<{ pool: number; pg: number }>>();
  for (const [disk, record] of disks) {
    if (!state.map.disks.some((d) => d.id === disk)) continue;
    const pgs = new Map<string, { pool: number; pg: number }>();
    for (const pool of state.map.pools) {
      for (const key of await record.activeObjects(pool.id)) {
        const pg = objectToPg(pool, key.volume, key.object);
        pgs.set(`${pool.id}:${pg}`, { pool: pool.id, pg });
      }
    }
    if (record.markPgLog)
      for (const { pool, pg } of pgs.values()) await record.markPgLog(pool, pg, { start });
    if (pgs.size > 0) perDisk.set(disk, [...pgs.values()]);
  }
  if (perDisk.size === 0) return 0;
  return cluster.update((s) => {
    let marked = 0;
    for (const [disk, pgs] of perDisk) marked += markRestartedStale(s, disk, pgs).length;
    return marked;
  });
}
