// Recovery (backfill) of stale members: a disk that joined a PG's set or came back up
// missed writes; the PG's primary copies every object of the PG from itself to that
// disk, deletes what the disk holds but the primary does not, flushes the disk, and
// then clears the mark in the cluster map — only if the mark is still the one it
// started from (a disk that left and came back meanwhile is recovered again). Runs in
// the background on every daemon for the PGs it is primary of, one PG at a time, with
// a bandwidth bound so that client I/O keeps its service.
//
// Before backfill, each pass peers the PGs this host has become primary of (or all of
// its PGs after it started): it asks every readable member for the PG's objects in its
// activity record — objects a write may have reached on some members and not others
// when the former primary died, or that a crash may have set back — and makes each of
// them identical on every member from the new primary's copy (reconcileObject).

import { CisternError, isCisternError } from '../util/errors';
import { ObjectKey } from '../store/key';
import { ClusterState, actingMembers, clearStale, pgKey, staleKey } from '../cluster/state';
import { ClusterStore } from '../cluster/store';
import { PlacementTable, objectToPg } from '../placement/straw2';
import { LocalDisk, PeerTransport } from './endpoint';
import { Clock, Timer, systemClock } from '../util/clock';
import { LocalReplication } from './local';
import { MessageType } from './messages';
import { PassRunner } from './passes';

/** Default bound on recovery traffic from one daemon. */
export const RECOVERY_BYTES_PER_SECOND_DEFAULT = 128 * 2 ** 20;
/** Retry period for PGs whose recovery failed (a member unreachable, say). */
export const RECOVERY_RETRY_MS = 2000;
/**
 * Recovered members whose marks one map update clears. Each update bumps the epoch,
 * and every epoch change makes gateways and peers re-place and re-fence their
 * requests: one update per PG would churn the map as fast as small PGs recover.
 */
export const RECOVERY_CLEAR_BATCH_MAX = 64;
/** A recovered member waits at most this long for its batch: it serves reads once cleared. */
export const RECOVERY_CLEAR_BATCH_MS = 1000;
/** Pages of a remote listing (each at most LIST_OBJECTS_MAX keys) before giving up. */
const LIST_PAGES_MAX = 100_000;

export interface RecoveryContext {
  hostId: string;
  cluster: ClusterStore;
  table(poolId: number): PlacementTable;
  primaryOfPg(poolId: number, pg: number): { id: number; host: string };
  primary: LocalReplication;
  /** This host's up disk, or undefined. */
  localStore(disk: number): LocalDisk | undefined;
  transport: PeerTransport | undefined;
  log: (event: string, fields?: Record<string, unknown>) => void;
  bytesPerSecondMax?: number;
  /** Paces each copied object beyond that bound (throttle.ts: yields to client I/O). */
  throttle?: { take(bytes: number): Promise<void> };
  /** Injectable for tests. */
  sleep?: (ms: number) => Promise<void>;
  /** Virtual time in the simulator; the system clock by default. */
  clock?: Clock;
}

interface Work {
  pool: number;
  pg: number;
  disk: number;
  since: number;
}

/** A member copied and flushed, its mark not yet cleared in the map. */
interface Recovered extends Work {
  objects: number;
  bytes: number;
  ms: number;
}

/** A PG to peer: this host is its primary, as disk `primary`. */
interface PeerWork {
  pg: number;
  primary: number;
  /** Its readable (up, not stale) members, the primary first. */
  members: number[];
}

export class RecoveryWorker {
  private timer: Timer | undefined;
  private unsubscribe: (() => void) | undefined;
  /** Recovered PG members, for status and tests. */
  recoveredTotal = 0;
  /** Objects peering found different on some member and made identical (tests, status). */
  reconciledTotal = 0;
  /**
   * Per PG (`pool:pg`) this host is primary of: the primary disk it was peered as. A
   * PG not here (this host just became its primary, or just started) is peered.
   */
  private readonly peered = new Map<string, number>();
  /** Epoch of the last peering pass that left nothing to do. */
  private peeredEpoch = -1;

  private readonly runner: PassRunner;
  private readonly clock: Clock;

  constructor(private readonly context: RecoveryContext) {
    this.runner = new PassRunner(() => this.pass());
    this.clock = context.clock ?? systemClock;
  }

  private get closed(): boolean {
    return this.runner.isClosed;
  }

  start(): void {
    this.unsubscribe = this.context.cluster.subscribe(() => this.kick());
    this.retryLater();
    this.kick();
  }

  /** A pass every RECOVERY_RETRY_MS, for PGs whose recovery failed (one-shot timers chained). */
  private retryLater(): void {
    this.timer = this.clock.setTimer(RECOVERY_RETRY_MS, () => {
      if (this.closed) return;
      this.kick();
      this.retryLater();
    });
  }

  /** Runs a pass now, or right after the one in progress. */
  kick(): void {
    this.runner.kick();
  }

  /** Resolves when no pass is running (tests wait on it). */
  async idle(): Promise<void> {
    await this.runner.idle();
  }

  async close(): Promise<void> {
    this.unsubscribe?.();
    this.timer?.cancel();
    await this.runner.close();
  }

  /** The stale members of PGs this host is primary of, right now. */
  private work(state: ClusterState): Work[] {
    const work: Work[] = [];
    for (const [key, disks] of Object.entries(state.staleMembers)) {
      const [pool, pg] = key.split(':').map(Number) as [number, number];
      let primary: { id: number; host: string };
      try {
        primary = this.context.primaryOfPg(pool, pg);
      } catch {
        continue;
      }
      if (primary.host !== this.context.hostId || disks.includes(primary.id)) continue;
      for (const disk of disks) {
        const since = state.staleSince[staleKey(pool, pg, disk)];
        if (since !== undefined) work.push({ pool, pg, disk, since });
      }
    }
    return work;
  }

  private async pass(): Promise<void> {
    await this.peerPass();
    const recovered: Recovered[] = [];
    let batchStarted = 0;
    try {
      for (const item of this.work(this.context.cluster.current())) {
        if (this.closed) return;
        const done = await this.recoverLogged(item);
        if (!done) continue;
        if (recovered.length === 0) batchStarted = this.clock.now();
        recovered.push(done);
        if (
          recovered.length >= RECOVERY_CLEAR_BATCH_MAX ||
          this.clock.now() - batchStarted >= RECOVERY_CLEAR_BATCH_MS
        ) {
          await this.clearMarks(recovered.splice(0));
        }
      }
    } finally {
      if (recovered.length > 0 && !this.closed) await this.clearMarks(recovered);
    }
  }

  /** The PGs of `pool` this host must peer now; forgets those it is no longer primary of. */
  private peerWork(state: ClusterState, poolId: number, pgCount: number): PeerWork[] {
    let table: PlacementTable;
    try {
      table = this.context.table(poolId);
    } catch {
      return []; // unplaceable: nothing is served
    }
    const work: PeerWork[] = [];
    for (let pg = 0; pg < pgCount; pg += 1) {
      const key = pgKey(poolId, pg);
      const members = actingMembers(state, table, pg)
        .filter((m) => !m.stale)
        .map((m) => m.disk);
      let primary: { id: number; host: string };
      try {
        primary = this.context.primaryOfPg(poolId, pg);
      } catch {
        this.peered.delete(key);
        continue;
      }
      if (primary.host !== this.context.hostId || members[0] !== primary.id) {
        this.peered.delete(key);
        continue;
      }
      if (this.peered.get(key) !== primary.id) work.push({ pg, primary: primary.id, members });
    }
    return work;
  }

  /**
   * Peers every PG this host has newly become primary of: fetches each readable member
   * disk's activity record once per pool, sorts the keys into PGs, and reconciles each
   * listed object of those PGs. A PG whose member could not be asked, or whose object
   * could not be reconciled, is peered again by the next pass.
   */
  private async peerPass(): Promise<void> {
    const state = this.context.cluster.current();
    if (state.map.epoch === this.peeredEpoch) return;
    let pending = 0;
    for (const pool of state.map.pools) {
      const work = this.peerWork(state, pool.id, pool.pgCount);
      if (work.length === 0) continue;
      const table = this.context.table(pool.id);
      const disks = new Set(work.flatMap((w) => w.members));
      const records = new Map<number, ObjectKey[] | undefined>();
      for (const disk of disks) {
        try {
          records.set(disk, await this.context.primary.activeObjectsOf(disk, pool.id));
        } catch (error) {
          if (!isCisternError(error)) throw error;
          records.set(disk, undefined);
          this.context.log('peering.failed', { pool: pool.id, disk, error: error.message });
        }
      }
      for (const item of work) {
        if (this.closed) return;
        if (!(await this.peerPg(pool.id, item, table, records))) pending += 1;
      }
    }
    if (pending === 0) this.peeredEpoch = state.map.epoch;
  }

  /** Reconciles one PG's listed objects; returns whether it is peered. */
  private async peerPg(
    pool: number,
    item: PeerWork,
    table: PlacementTable,
    records: Map<number, ObjectKey[] | undefined>,
  ): Promise<boolean> {
    const listed = new Map<string, ObjectKey>();
    for (const disk of item.members) {
      const keys = records.get(disk);
      if (keys === undefined) return false;
      for (const key of keys) {
        if (objectToPg(table.pool, key.volume, key.object) !== item.pg) continue;
        listed.set(`${key.volume}/${key.object}`, key);
      }
    }
    let rewritten = 0;
    try {
      for (const key of listed.values()) {
        const volume = this.context.cluster.current().volumes.find((v) => v.id === key.volume);
        if (!volume) continue; // removed: garbage collection deletes its objects
        const disks = await this.context.primary.reconcileObject(key, volume.objectSizeBytes);
        if (disks.length > 0) {
          rewritten += 1;
          this.reconciledTotal += 1;
        }
      }
      for (const disk of item.members.slice(1)) {
        if (rewritten > 0) await this.context.primary.flushDisk(disk);
      }
    } catch (error) {
      if (!isCisternError(error)) throw error;
      this.context.log('peering.failed', { pool, pg: item.pg, error: error.message });
      return false;
    }
    this.peered.set(pgKey(pool, item.pg), item.primary);
    if (listed.size > 0) {
      this.context.log('peering.done', {
        pool,
        pg: item.pg,
        primary: item.primary,
        members: item.members.length,
        listed: listed.size,
        rewritten,
      });
    }
    return true;
  }

  /**
   * Clears the marks of recovered members in one map update, each only if it is still
   * the mark recovery started from (clearStale).
   */
  private async clearMarks(recovered: Recovered[]): Promise<void> {
    let cleared: boolean[];
    try {
      cleared = await this.context.cluster.update((s) =>
        recovered.map((item) => clearStale(s, item.pool, item.pg, item.disk, item.since)),
      );
    } catch (error) {
      if (!isCisternError(error)) throw error;
      // The map could not be updated (etcd away): the marks stay; a later pass redoes them.
      this.context.log('recovery.clear-failed', {
        members: recovered.length,
        error: error.message,
      });
      return;
    }
    recovered.forEach((item, index) => {
      if (cleared[index]) this.recoveredTotal += 1;
      this.context.log(cleared[index] ? 'recovery.pg-done' : 'recovery.pg-superseded', {
        pool: item.pool,
        pg: item.pg,
        disk: item.disk,
        objects: item.objects,
        bytes: item.bytes,
        ms: item.ms,
      });
    });
  }

  /** Recovers one member; a failure is logged (the next pass retries) and gives undefined. */
  private async recoverLogged(item: Work): Promise<Recovered | undefined> {
    try {
      return await this.recover(item);
    } catch (error) {
      const message = error instanceof Error ? error.message : String(error);
      this.context.log('recovery.failed', {
        pool: item.pool,
        pg: item.pg,
        disk: item.disk,
        error: message,
      });
      if (!isCisternError(error)) throw error;
      return undefined;
    }
  }

  private async recover(item: Work): Promise<Recovered | undefined> {
    const started = this.clock.now();
    const state = this.context.cluster.current();
    const sourceKeys = await this.listPg(
      this.context.primaryOfPg(item.pool, item.pg),
      item.pool,
      item.pg,
    );
    const targetHost = state.map.disks.find((d) => d.id === item.disk)?.host;
    if (!targetHost) return undefined;
    const targetKeys = await this.listPg({ id: item.disk, host: targetHost }, item.pool, item.pg);
    const wanted = new Map(sourceKeys.map((key) => [`${key.volume}/${key.object}`, key]));
    for (const key of targetKeys) {
      if (!wanted.has(`${key.volume}/${key.object}`))
        wanted.set(`${key.volume}/${key.object}`, key);
    }
    let bytes = 0;
    let objects = 0;
    const budget = this.context.bytesPerSecondMax ?? RECOVERY_BYTES_PER_SECOND_DEFAULT;
    for (const key of wanted.values()) {
      if (this.closed) return undefined;
      const volume = this.context.cluster.current().volumes.find((v) => v.id === key.volume);
      if (!volume) continue; // removed: garbage collection deletes its objects
      const copied = await this.context.primary.recoverObject(
        key,
        item.disk,
        volume.objectSizeBytes,
      );
      bytes += copied;
      objects += 1;
      await this.context.throttle?.take(copied);
      // Bandwidth bound: never run ahead of the budget since this PG started.
      const aheadMs = (bytes / budget) * 1000 - (this.clock.now() - started);
      if (aheadMs > 0)
        await (this.context.sleep ?? ((ms: number) => this.clock.sleep(ms)))(aheadMs);
    }
    const epoch = this.context.cluster.current().map.epoch;
    try {
      await this.context.primary.flushDisk(item.disk);
    } catch (error) {
      await this.diskFailed(item.disk, error, epoch);
      throw error;
    }
    return { ...item, objects, bytes, ms: this.clock.now() - started };
  }

  /**
   * Every object of one PG on one disk (local store, or a remote host's disk). A disk
   * whose device fails the listing is taken out, as a client write would take it out.
   */
  private async listPg(
    disk: { id: number; host: string },
    pool: number,
    pg: number,
  ): Promise<ObjectKey[]> {
    const epoch = this.context.cluster.current().map.epoch;
    try {
      return await this.listPgOnce(disk, pool, pg);
    } catch (error) {
      await this.diskFailed(disk.id, error, epoch);
      throw error;
    }
  }

  /**
   * Takes a disk out for a device failure of operations issued at `epoch` — only if the
   * map is still there: a host answers EIO for a disk its map has down, and that answer
   * arriving once the disk is back up says nothing about its device.
   */
  private async diskFailed(disk: number, error: unknown, epoch: number): Promise<void> {
    if (this.context.cluster.current().map.epoch === epoch)
      await this.context.primary.reportFailure(disk, error);
  }

  private async listPgOnce(
    disk: { id: number; host: string },
    pool: number,
    pg: number,
  ): Promise<ObjectKey[]> {
    const table = this.context.table(pool);
    const inPg = (key: ObjectKey): boolean => objectToPg(table.pool, key.volume, key.object) === pg;
    const keys: ObjectKey[] = [];
    if (disk.host === this.context.hostId) {
      const store = this.context.localStore(disk.id);
      if (!store) throw new CisternError('UNAVAILABLE', `disk ${disk.id} is not up here`);
      for await (const key of store.listObjects({ pool })) if (inPg(key)) keys.push(key);
      return keys;
    }
    const transport = this.context.transport;
    if (!transport) throw new CisternError('UNAVAILABLE', `disk ${disk.id} is on another host`);
    let after: ObjectKey | undefined;
    for (let page = 0; page < LIST_PAGES_MAX; page += 1) {
      const reply = await transport.request(
        disk.host,
        MessageType.ListObjects,
        this.context.cluster.current().map.epoch,
        { pool, disk: disk.id, ...(after ? { after } : {}) },
      );
      const { keys: batch, truncated } = reply.metadata as {
        keys: ObjectKey[];
        truncated: boolean;
      };
      for (const key of batch) if (inPg(key)) keys.push(key);
      if (!truncated || batch.length === 0) return keys;
      after = batch[batch.length - 1];
    }
    throw new CisternError('EIO', `listing disk ${disk.id} on ${disk.host} did not end`);
  }
}
