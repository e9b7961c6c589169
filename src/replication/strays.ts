// Removal of stray copies: after a rebalance (a host added, a drain, a reweight) a disk
// that left a PG's set keeps its copies of the PG's objects — retained while the new
// members are backfilled, then no member at all. Each daemon removes such copies from
// its own disks, in the background and at a bounded rate, but only once the PG is
// clean: every placement member up and none stale. So a copy is never removed before
// its replacement holds the data.
//
// The check is made again, against the daemon's map at that moment, right before each
// delete is issued. A disk that rejoins the PG in a newer epoch is marked stale in that
// same epoch, so the PG is not clean for it; and a recovery write for it, carrying the
// newer epoch, is served only after this daemon's map reached that epoch (epoch
// fencing) — so a delete decided on an older map is issued before that write, never
// after it, and the store applies operations on one object in the order issued.

import { assert } from '../util/assert';
import { isCisternError } from '../util/errors';
import { ObjectKey } from '../store/key';
import { ClusterState, pgKey } from '../cluster/state';
import { ClusterStore } from '../cluster/store';
import { PlacementTable, objectToPg, pgRow } from '../placement/straw2';
import { BackgroundPasses, mapSchedule } from './passes';
import { LocalDisk } from './endpoint';
import { Clock } from '../util/clock';

/** Period of the pass besides map changes (a PG turns clean without a map change of ours). */
export const STRAY_PASS_PERIOD_MS = 10_000;
/**
 * Deletes per second per daemon: a delete punches a slot and dirties the index, so a
 * host that lost a thousand PG memberships at once must not flood its disks while
 * clients use them. At 4 MiB objects this frees 800 MiB/s, far faster than recovery
 * creates strays.
 */
export const STRAY_DELETES_PER_SECOND = 200;
/** Deletes between two pauses of the pacing (and between two looks at `closed`). */
const STRAY_DELETE_BATCH = 20;

export interface StrayContext {
  cluster: ClusterStore;
  /** The placement table of the state `cluster.current()` returns (cached per epoch). */
  table(poolId: number): PlacementTable;
  /** This host's up disks. */
  localDisks(): Array<{ id: number; store: LocalDisk }>;
  log: (event: string, fields?: Record<string, unknown>) => void;
  deletesPerSecond?: number;
  /** Injectable for tests. */
  sleep?: (ms: number) => Promise<void>;
  /** Virtual time in the simulator; the system clock by default. */
  clock?: Clock;
}

/**
 * Whether `disk`'s copy of `key` may be removed: its volume and pool exist, the disk is
 * neither in the PG's placement row nor retained, and the PG is clean (row complete,
 * every member up, none stale). Removed volumes are garbage collection's, not ours.
 */
export function isStrayCopy(
  state: ClusterState,
  table: PlacementTable,
  key: ObjectKey,
  disk: number,
): boolean {
  assert(table.pool.id === key.pool, `table of pool ${table.pool.id} for pool ${key.pool}`);
  if (!state.volumes.some((v) => v.id === key.volume)) return false;
  const pg = objectToPg(table.pool, key.volume, key.object);
  const row = [...pgRow(table, pg)];
  if (row.includes(disk)) return false;
  const id = pgKey(key.pool, pg);
  if ((state.retainedMembers[id] ?? []).includes(disk)) return false;
  if ((state.staleMembers[id] ?? []).length > 0) return false;
  if (row.length < table.pool.size) return false;
  return row.every((member) => table.topology.disksById.get(member)?.up === true);
}

export class StrayCollector extends BackgroundPasses {
  /** Copies removed since start, for tests. */
  removedTotal = 0;
  /** The epoch of the last pass logged: a pass is logged when it removed or the map moved. */
  private loggedEpoch = -1;

  constructor(private readonly context: StrayContext) {
    // A pass on every map change, and every STRAY_PASS_PERIOD_MS.
    super(mapSchedule(context.cluster, context.clock, STRAY_PASS_PERIOD_MS));
  }

  protected async pass(): Promise<void> {
    const epoch = this.context.cluster.current().map.epoch;
    let removed = 0;
    try {
      for (const { id, store } of this.context.localDisks()) {
        if (this.closed) return;
        removed += await this.collectDisk(id, store);
      }
    } catch (error) {
      if (!isCisternError(error)) throw error;
      this.context.log('strays.failed', { epoch, error: error.message });
      return;
    }
    if (removed > 0 || epoch !== this.loggedEpoch) {
      this.loggedEpoch = epoch;
      this.context.log('strays.pass', { epoch, removed });
    }
  }

  private async collectDisk(disk: number, store: LocalDisk): Promise<number> {
    const candidates: ObjectKey[] = [];
    for await (const key of store.listObjects()) {
      if (this.stray(key, disk)) candidates.push(key);
    }
    const rate = this.context.deletesPerSecond ?? STRAY_DELETES_PER_SECOND;
    assert(rate > 0, `bad stray delete rate ${rate}`);
    let removed = 0;
    for (const [index, key] of candidates.entries()) {
      if (this.closed) break;
      if (index > 0 && index % STRAY_DELETE_BATCH === 0) {
        const pauseMs = (STRAY_DELETE_BATCH / rate) * 1000;
        await (this.context.sleep ?? ((ms: number) => this.clock.sleep(ms)))(pauseMs);
      }
      // Again, on the map of this moment, in the same turn as the delete is issued.
      if (!this.stray(key, disk)) continue;
      this.forgetLog(store, key);
      if (await store.deleteObject(key)) removed += 1;
    }
    if (removed > 0) {
      await store.flush();
      this.removedTotal += removed;
      this.context.log('strays.removed', { disk, objects: removed });
    }
    return removed;
  }

  /**
   * The disk's PG log no longer describes its copies of the PG (pg-log.ts `forget`), in
   * the same commit as the delete or an earlier one: were the disk to rejoin the PG, a
   * catch-up from its old version would skip the objects deleted here.
   */
  private forgetLog(store: LocalDisk, key: ObjectKey): void {
    if (!store.forgetPgLog) return;
    const table = this.context.table(key.pool);
    const pg = objectToPg(table.pool, key.volume, key.object);
    const epoch = this.context.cluster.current().map.epoch;
    store.forgetPgLog(key.pool, pg, { epoch, seq: Number.MAX_SAFE_INTEGER });
  }

  private stray(key: ObjectKey, disk: number): boolean {
    const state = this.context.cluster.current();
    if (!state.map.pools.some((p) => p.id === key.pool)) return false;
    let table: PlacementTable;
    try {
      table = this.context.table(key.pool);
    } catch {
      return false; // unplaceable now: nothing is clean
    }
    return isStrayCopy(state, table, key, disk);
  }
}
