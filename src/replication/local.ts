// Object I/O replicated across this host's disks. For each object the placement
// table gives the PG's ordered disks; writes go to every up member in parallel and
// are acknowledged once all up members have them (at least `minSize`); reads come
// from the first up member. A disk whose device fails (EIO, CORRUPT) is reported
// through `onDiskFailure` — the datastore marks it down — and the operation carries
// on with the remaining members. Request errors (ENOSPC, EINVAL) go back to the
// caller unchanged.

import { assert } from '../util/assert';
import { CisternError, isCisternError } from '../util/errors';
import { Extent } from '../volume/backend';
import { ObjectKey } from '../store/key';
import type { BufferLease } from '../store/buffer-cache';
import { PlacementTable, objectToPg } from '../placement/straw2';
import { RangeOrdering } from './ordering';
import { ActingMember } from '../cluster/state';
import { ObjectEndpoint, ObjectIo, ownedLease } from './endpoint';
import { checksumObject } from './checksum';
import type { ReadFence } from '../cluster/read-fence';
import { LogTag, PgLogState, PgVersion } from '../store/pg-log';
import { MapChanges, TAKEN_DOWN, unlessTakenDown } from './map-watch';
import { MemberRestarted } from './remote-disk';
import { FlushErrors, FlushWatch } from './flush-errors';

export interface ReplicaSet {
  /** Placement of the object's pool for the current map. */
  table(poolId: number): PlacementTable;
  /** An up disk's objects — local store or remote disk — or undefined when it is down. */
  store(diskId: number): ObjectEndpoint | undefined;
  /** A PG's acting members (row, then retained), each marked stale or not. */
  acting(table: PlacementTable, pg: number): readonly ActingMember[];
  /** Takes a failed disk out of service; resolves once the map says so. */
  onDiskFailure(diskId: number, error: CisternError): Promise<void>;
  /**
   * This host. Given (as daemons do), a change is sent to the members only while this
   * host holds the PG's primary at the map the change goes out with (primaryHere).
   */
  hostId?: string;
  /**
   * Multi-host: reads are served only while this host's liveness lease is known valid
   * (read-fence.ts), so a primary cut off from etcd stops serving data the rest of the
   * cluster may have overwritten. Absent on one host, where nobody else serves.
   */
  readFence?: ReadFence;
  /** Milliseconds (virtual in the simulator): the base of this run's version sequence. */
  now?: () => number;
  /**
   * Map changes as they arrive: a flush stops waiting on a member disk once the map has
   * it down (map-watch.ts). Without it, a flush waits for the disk's own answer.
   */
  mapChanges?: MapChanges;
  /**
   * A PG's authoritative record (state.ts peerPg; key `pool:pg`): the members peering
   * may make the PG's source once it has no good member left. A flush cannot vouch for
   * writes one of them holds unflushed (flush()).
   */
  authoritative?(pg: string): readonly number[];
}

/** Per PG this host has been primary of: the versions of its changes still settling. */
interface PgVersions {
  /** In assignment (= version) order; the head settles last of those before it. */
  inFlight: Array<{ version: PgVersion; settled: boolean }>;
  /** Every change up to it has settled: on every member, or the member taken out. */
  complete: PgVersion | undefined;
  /** Peering is done (RecoveryWorker): until then `complete` is not sent (assignVersion). */
  peered: boolean;
  /**
   * Objects whose change failed after it was sent (a member refused it, or could not be
   * taken out): members may differ on them although the watermark passed the change.
   * Recovery makes them identical (reconcileObject) and copies them in every catch-up.
   */
  failed: Map<string, ObjectKey>;
  /** More failed than FAILED_OBJECTS_MAX: the watermark is no longer sent (catch-up off). */
  overflowed: boolean;
}

/**
 * Failed objects remembered per PG. Each failure is a write that met a refusal or an
 * unreachable member the map could not take out — rare, and recovery's next pass (2 s)
 * reconciles them; beyond this many the PG's members catch up by backfill instead.
 */
export const FAILED_OBJECTS_MAX = 1024;

/**
 * Sequence numbers per millisecond of the clock at start: a daemon restarted within the
 * same map epoch (faster than its lease lapses) must not reuse a version, so each run
 * starts its sequence at its start time × this, above any earlier run's (which would
 * need more than this many changes per millisecond on average to catch up).
 */
const VERSION_SEQ_PER_MS = 1000;

/** Errors that mean the disk itself is failing, not that the request was bad. */
export function isDeviceFailure(error: unknown): boolean {
  return (
    isCisternError(error, 'EIO') ||
    isCisternError(error, 'CORRUPT') ||
    isCisternError(error, 'UNREACHABLE')
  );
}

/**
 * One flush under way: the disks it has yet to flush, those it flushed, and the writes
 * (per PG, their holders) it vouches for. A later flush re-covers what is still pending.
 */
interface FlushUnderWay {
  pending: Set<number>;
  flushed: Set<number>;
  holders: Map<string, Set<number>>;
  /**
   * PGs of `holders` a later flush has already failed with EIO for: that EIO told every
   * connection (flush-errors.ts), so flushes after it no longer answer for them. This
   * flush still does when it ends (its own caller is told directly).
   */
  reported: Set<string>;
  /** Holders the map took down since they took the writes (noteTakenDown). */
  wentDown: Set<number>;
}

export class LocalReplication implements ObjectIo {
  private readonly ordering = new RangeOrdering();
  /** Disks written since their last flush. */
  private readonly dirty = new Set<number>();
  /** Flushes not yet complete (flush(): a later one covers what they still hold). */
  private readonly flushesUnderWay = new Set<FlushUnderWay>();
  /** EIOs after which the next flush started afresh, told to every connection once. */
  private readonly flushErrors = new FlushErrors();
  /**
   * Per PG, the disks that took writes of it acknowledged since the last flush: a flush
   * vouches for those writes only if one of these disks is flushed — a member taken
   * down meanwhile cannot be. (The union, not the intersection of each write's members:
   * membership moving under a stream of writes must not fail a FLUSH whose writes sit
   * on flushed disks; the rare write whose every holder left is not caught.)
   */
  private holders = new Map<string, Set<number>>();
  /**
   * Holders the map took down since the last flush (noteTakenDown): a flush of one after
   * it is back vouches for nothing it held before (whatever took it down may have cost
   * its cache), and one in a PG's authoritative record counts as left unflushed.
   */
  private wentDown = new Set<number>();
  /** PG versions (pg-log.ts): the last sequence number given, and per PG what is settling. */
  private seq: number;
  private readonly versions = new Map<string, PgVersions>();
  /**
   * Changes sent and not yet acknowledged: per change, the members the map took down or
   * marked stale since it was sent (noteTakenDown). Such a member may have been
   * recovered meanwhile — its copy replaced by the PG's primary of the moment, without
   * this change — so it does not count towards the acknowledgement (heldByGoodMembers).
   */
  private readonly sending = new Set<{
    key: ObjectKey;
    up: ReadonlyArray<[number, ObjectEndpoint, boolean]>;
    left?: Set<number>;
  }>();

  constructor(private readonly replicas: ReplicaSet) {
    this.seq = Math.floor((replicas.now ?? Date.now)()) * VERSION_SEQ_PER_MS;
    assert(Number.isSafeInteger(this.seq) && this.seq >= 0, 'version sequence base');
    replicas.mapChanges?.(() => this.noteTakenDown());
  }

  /**
   * After every map change: the holders (pending, and of flushes under way) the map has
   * down are noted as gone down. A holder taken down may have lost the writes with its
   * cache (a power loss: simulator seed 47, where the taken-out replica came back, was
   * flushed, and the FLUSH vouched for a write its crash took while the primary's disk
   * failed with the only other copy), and a flush of it once it is back says nothing of
   * them: its daemon's restart is forgotten with the request that found it unreachable
   * (remote-disk.ts). Flushes then count only the holders that stayed up.
   */
  private noteTakenDown(): void {
    const down = (disk: number): boolean => !this.replicas.store(disk);
    const note = (holders: Map<string, Set<number>>, into: Set<number>): void => {
      for (const set of holders.values()) for (const disk of set) if (down(disk)) into.add(disk);
    };
    note(this.holders, this.wentDown);
    for (const flush of this.flushesUnderWay) note(flush.holders, flush.wentDown);
    for (const change of this.sending) {
      const now = new Map(
        this.members(change.key).up.map(([disk, , readable]) => [disk, readable]),
      );
      for (const [disk, , readable] of change.up)
        if (readable && now.get(disk) !== true) (change.left ??= new Set()).add(disk);
    }
  }

  /**
   * The up members of the object's PG in placement order, each marked whether it may
   * serve reads (a stale member — one that may have missed writes — may not, and does
   * not count towards min-size).
   */
  private members(key: ObjectKey): {
    up: Array<[number, ObjectEndpoint, boolean]>;
    minSize: number;
    size: number;
  } {
    const table = this.replicas.table(key.pool);
    const pg = objectToPg(table.pool, key.volume, key.object);
    const up: Array<[number, ObjectEndpoint, boolean]> = [];
    for (const member of this.replicas.acting(table, pg)) {
      const store = this.replicas.store(member.disk);
      if (store) up.push([member.disk, store, !member.stale]);
    }
    return { up, minSize: table.pool.minSize, size: table.pool.size };
  }

  /**
   * Throws STALE_EPOCH unless this host holds the object's PG primary in the map of the
   * moment (the first good acting member, as Gateway.primaryOfPg and the peer handler
   * choose it). *Why here, right before changes go out:* the handler checks primacy as
   * a request arrives, and recovery as a pass starts, but the changes follow later —
   * after waiting in the object's ordering queue, after listing a PG, between the steps
   * of a copy — and each replica request carries the epoch of the map at the moment it
   * is sent (RemoteDisk reads it per call). A check made in the same synchronous step
   * as the sends means every change carries an epoch at which its sender was primary,
   * and a replica that has moved past it refuses the change (fencing). The check is the
   * sender's, not the replica's: at the fenced epoch a replica would compute the same
   * answer, and tools and tests write single replicas directly. STALE_EPOCH makes the
   * gateway wait for a newer map and send the operation to the new primary; recovery
   * retries on its next pass.
   */
  private primaryHere(key: ObjectKey): void {
    const hostId = this.replicas.hostId;
    if (hostId === undefined) return;
    const table = this.replicas.table(key.pool);
    const members = this.replicas.acting(table, objectToPg(table.pool, key.volume, key.object));
    const chosen = members.find((m) => !m.stale) ?? members[0];
    const primary = chosen ? table.topology.disksById.get(chosen.disk)?.host : undefined;
    if (primary !== hostId) {
      throw new CisternError(
        'STALE_EPOCH',
        `host ${hostId} is no longer the primary of object ${key.pool}/${key.volume}/${key.object} ` +
          `at epoch ${table.topology.map.epoch} (${primary ?? 'none'} is)`,
      );
    }
  }

  private unavailable(key: ObjectKey, up: number, minSize: number): CisternError {
    return new CisternError(
      'UNAVAILABLE',
      `object ${key.pool}/${key.volume}/${key.object}: ${up} up-to-date replica disk(s) up, pool needs ${minSize} ` +
        '(see: cistern status)',
    );
  }

  /** Reads from the first up member; a failing disk is taken out and the next one tried. */
  async read(key: ObjectKey, offset: number, length: number): Promise<Uint8Array> {
    return this.fromPrimary(key, (store) => store.read(key, offset, length));
  }

  /** Like read, without a copy: the store's buffer, lent until `release()`. */
  async readLeased(key: ObjectKey, offset: number, length: number): Promise<BufferLease> {
    return this.fromPrimary(key, async (store) =>
      store.readLeased
        ? store.readLeased(key, offset, length)
        : ownedLease(await store.read(key, offset, length)),
    );
  }

  async blockStatus(key: ObjectKey, offset: number, length: number): Promise<Extent[]> {
    return this.fromPrimary(key, (store) => store.blockStatus(key, offset, length));
  }

  private async fromPrimary<T>(
    key: ObjectKey,
    operation: (store: ObjectEndpoint) => Promise<T>,
  ): Promise<T> {
    const fenced = this.replicas.readFence?.check();
    if (fenced) await fenced;
    // Bounded: each failure takes one disk out, so at most `size` attempts.
    for (let attempt = 0; attempt < 64; attempt += 1) {
      const { up, minSize } = this.members(key);
      const first = up.find(([, , readable]) => readable);
      if (!first) throw this.unavailable(key, 0, minSize);
      try {
        return await operation(first[1]);
      } catch (error) {
        if (!isDeviceFailure(error)) throw error;
        await this.replicas.onDiskFailure(first[0], error as CisternError);
      }
    }
    throw new CisternError(
      'EIO',
      `object ${key.pool}/${key.volume}/${key.object}: every replica failed`,
    );
  }

  write(key: ObjectKey, offset: number, data: Uint8Array, fua: boolean): Promise<void> {
    return this.mutate(key, offset, data.length, fua, (store, log) =>
      store.write(key, offset, data, { fua, log }),
    );
  }

  trim(key: ObjectKey, offset: number, length: number, fua: boolean): Promise<void> {
    return this.mutate(key, offset, length, fua, async (store, log) => {
      await store.trim(key, offset, length, log);
      if (fua) await store.flush();
    });
  }

  zero(key: ObjectKey, offset: number, length: number, fua: boolean): Promise<void> {
    return this.mutate(key, offset, length, fua, async (store, log) => {
      await store.zero(key, offset, length, log);
      if (fua) await store.flush();
    });
  }

  /** Removes the object from every up member (volume deletion, shrinking). */
  deleteObject(key: ObjectKey): Promise<void> {
    return this.mutate(key, 0, Number.MAX_SAFE_INTEGER, false, async (store, log) => {
      await store.deleteObject(key, log);
    });
  }

  private pgVersions(pool: number, pg: number): PgVersions {
    const name = `${pool}:${pg}`;
    let state = this.versions.get(name);
    if (!state) {
      state = {
        inFlight: [],
        complete: undefined,
        peered: false,
        failed: new Map(),
        overflowed: false,
      };
      this.versions.set(name, state);
    }
    return state;
  }

  /**
   * Gives a change its PG version — the epoch of the map it is sent at (this host is
   * primary there: primaryHere runs in the same step) and the next sequence number, so
   * versions grow with every change and a new primary's (a later epoch) are above the
   * old one's. Returns the version and the watermark to send: `complete` only once the
   * PG is peered, since before that members may still differ on the former primary's
   * changes in flight, which no version of this host covers.
   */
  private assignVersion(
    pool: number,
    pg: number,
    epoch: number,
  ): { version: PgVersion; complete?: PgVersion; state: PgVersions } {
    this.seq += 1;
    const state = this.pgVersions(pool, pg);
    const version = { epoch, seq: this.seq };
    state.inFlight.push({ version, settled: false });
    return {
      version,
      state,
      ...(this.watermark(state) ? { complete: this.watermark(state)! } : {}),
    };
  }

  private watermark(state: PgVersions | undefined): PgVersion | undefined {
    return state?.peered && !state.overflowed ? state.complete : undefined;
  }

  private noteFailed(state: PgVersions, key: ObjectKey): void {
    state.failed.set(`${key.volume}/${key.object}`, { ...key });
    if (state.failed.size > FAILED_OBJECTS_MAX) {
      state.overflowed = true;
      state.failed.delete(state.failed.keys().next().value!);
    }
  }

  /** A change settled (every member has it or was taken out): the watermark moves up. */
  private settleVersion(state: PgVersions, version: PgVersion): void {
    const item = state.inFlight.find((i) => i.version === version);
    assert(item !== undefined && !item.settled, 'a version settles once');
    item.settled = true;
    while (state.inFlight[0]?.settled) state.complete = state.inFlight.shift()!.version;
  }

  /**
   * RecoveryWorker: the PG is peered with this host as its primary (members agree on
   * every change before this host's), or no longer (this host lost it).
   */
  setPeered(pool: number, pg: number, peered: boolean): void {
    const state = this.pgVersions(pool, pg);
    state.peered = peered;
    if (peered) return;
    // The next primary peers from the members' activity records, which list these too.
    state.complete = undefined;
    state.failed.clear();
    state.overflowed = false;
  }

  /** Objects of the PG whose change failed on some member (see PgVersions.failed). */
  failedObjectsOf(pool: number, pg: number): ObjectKey[] {
    return [...(this.versions.get(`${pool}:${pg}`)?.failed.values() ?? [])];
  }

  /** PGs with failed objects, as [pool, pg]. */
  pgsWithFailedObjects(): Array<[number, number]> {
    const pgs: Array<[number, number]> = [];
    for (const [name, state] of this.versions) {
      if (state.failed.size > 0) pgs.push(name.split(':').map(Number) as [number, number]);
    }
    return pgs;
  }

  /** Recovery made the object identical on the members: forget its failure. */
  failedObjectSettled(key: ObjectKey): void {
    const table = this.replicas.table(key.pool);
    const pg = objectToPg(table.pool, key.volume, key.object);
    this.versions.get(`${key.pool}:${pg}`)?.failed.delete(`${key.volume}/${key.object}`);
  }

  /**
   * Recovery: the PG's settled watermark (every change up to it is on every member that
   * was not taken out), if the PG is peered; and a version above every one given so far.
   */
  pgVersionsNow(pool: number, pg: number): { complete?: PgVersion; top: PgVersion } {
    const state = this.versions.get(`${pool}:${pg}`);
    const epoch = this.replicas.table(pool).topology.map.epoch;
    const complete = this.watermark(state);
    return { ...(complete ? { complete } : {}), top: { epoch, seq: this.seq + 1 } };
  }

  /** Objects of the PG with a client change running now (recovery copies them too). */
  busyObjectsOf(pool: number, pg: number): ObjectKey[] {
    const table = this.replicas.table(pool);
    const keys: ObjectKey[] = [];
    for (const name of this.ordering.pendingNames()) {
      const [p, volume, object] = name.split('/').map(Number) as [number, number, number];
      if (p !== pool) continue;
      if (objectToPg(table.pool, volume, object) === pg) keys.push({ pool, volume, object });
    }
    return keys;
  }

  private mutate(
    key: ObjectKey,
    offset: number,
    length: number,
    fua: boolean,
    operation: (store: ObjectEndpoint, log: LogTag) => Promise<void>,
  ): Promise<void> {
    const name = `${key.pool}/${key.volume}/${key.object}`;
    return this.ordering.run(name, offset, offset + length, async () => {
      const { up, minSize } = this.members(key);
      const readable = up.filter(([, , ok]) => ok).length;
      if (readable < minSize) throw this.unavailable(key, readable, minSize);
      this.primaryHere(key); // the sends below go out in this same step, at this map
      const table = this.replicas.table(key.pool);
      const pg = objectToPg(table.pool, key.volume, key.object);
      const assigned = this.assignVersion(key.pool, pg, table.topology.map.epoch);
      try {
        await this.sendAndCount(key, up, minSize, fua, (store, readableMember) =>
          operation(store, {
            pg,
            version: assigned.version,
            ...(assigned.complete ? { complete: assigned.complete } : {}),
            ...(readableMember ? {} : { stale: true }),
          }),
        );
      } catch (error) {
        this.noteFailed(assigned.state, key);
        throw error;
      } finally {
        this.settleVersion(assigned.state, assigned.version);
      }
    });
  }

  /** One change sent to every up member; failures handled; the acknowledgement rule. */
  private async sendAndCount(
    key: ObjectKey,
    up: Array<[number, ObjectEndpoint, boolean]>,
    minSize: number,
    fua: boolean,
    operation: (store: ObjectEndpoint, readable: boolean) => Promise<void>,
  ): Promise<void> {
    // Read only by map changes while the change is out: nothing derived per change here.
    const sending: { key: ObjectKey; up: typeof up; left?: Set<number> } = { key, up };
    this.sending.add(sending);
    let results: Array<PromiseSettledResult<void>>;
    try {
      results = await Promise.allSettled(
        up.map(([, store, readable]) => operation(store, readable)),
      );
    } finally {
      this.sending.delete(sending);
    }
    let succeeded = 0;
    let requestError: unknown;
    const took = new Set<number>();
    for (let i = 0; i < results.length; i += 1) {
      const result = results[i] as PromiseSettledResult<void>;
      const [disk, , counts] = up[i] as [number, ObjectEndpoint, boolean];
      if (result.status === 'fulfilled') {
        if (counts) succeeded += 1;
        took.add(disk);
      } else if (isDeviceFailure(result.reason)) {
        await this.replicas.onDiskFailure(disk, result.reason as CisternError);
      } else {
        requestError ??= result.reason;
      }
    }
    if (requestError !== undefined) throw requestError;
    if (succeeded < minSize) throw this.unavailable(key, succeeded, minSize);
    for (const disk of sending.left ?? []) took.delete(disk);
    this.heldByGoodMembers(key, took, minSize);
    if (!fua) this.noteHolders(key, took);
  }

  /**
   * At the acknowledgement, in one synchronous step: the disks that took the change are
   * dirty and hold its PG's writes. (Marked any earlier — before the awaits that take
   * failed members out — a flush in between would take the dirty mark without the
   * holders, and the next flush would find holders it never flushed: a spurious EIO.)
   */
  private noteHolders(key: ObjectKey, took: Set<number>): void {
    for (const disk of took) this.dirty.add(disk);
    const table = this.replicas.table(key.pool);
    const pg = `${key.pool}:${objectToPg(table.pool, key.volume, key.object)}`;
    const known = this.holders.get(pg);
    if (!known) this.holders.set(pg, took);
    else for (const disk of took) known.add(disk);
  }

  /**
   * The acknowledgement rule: a change is acknowledged only if, in the map as it is now —
   * after the members that failed it were taken out, which awaited map updates during
   * which other hosts may have taken out or re-admitted (stale) the members that took
   * it — at least `minSize` good members (up, not stale) hold it. So at every
   * acknowledgement every good member holds the change, or was taken down before it:
   * the members peering later records as authoritative (good members when the PG loses
   * them, state.ts peerPg) hold every acknowledged write. Otherwise STALE_EPOCH: the map
   * moved under the write, which is retried on the new map (the gateway waits for it and
   * goes to the PG's primary there); the members that took it meanwhile hold a write of
   * unknown outcome, which a client may see either way.
   */
  private heldByGoodMembers(key: ObjectKey, took: ReadonlySet<number>, minSize: number): void {
    const good = this.members(key).up.filter(([disk, , readable]) => readable && took.has(disk));
    if (good.length >= minSize) return;
    throw new CisternError(
      'STALE_EPOCH',
      `object ${key.pool}/${key.volume}/${key.object}: the map changed during the write; ` +
        `${good.length} good member(s) now hold it, the pool needs ${minSize}: retry`,
    );
  }

  /**
   * Brings one object on `target` — a stale member of its PG — up to date with the
   * first readable member, ordered against client writes (a write to the object waits
   * for the copy, then reaches the target itself like any member). Data extents are
   * copied, holes zeroed; an object the source does not hold is deleted on the target.
   * Returns the bytes copied. The target is flushed by the caller, once per PG.
   */
  async recoverObject(key: ObjectKey, target: number, objectSizeBytes: number): Promise<number> {
    return (await this.copyToMember(key, target, objectSizeBytes, false)).bytes;
  }

  /**
   * Backfill: like recoverObject, but compares first — the content checksums of the
   * source and the target — and copies only if they differ. Returns whether it copied,
   * and the bytes copied.
   */
  backfillObject(
    key: ObjectKey,
    target: number,
    objectSizeBytes: number,
  ): Promise<{ copied: boolean; bytes: number }> {
    return this.copyToMember(key, target, objectSizeBytes, true);
  }

  private copyToMember(
    key: ObjectKey,
    target: number,
    objectSizeBytes: number,
    compareFirst: boolean,
  ): Promise<{ copied: boolean; bytes: number }> {
    const name = `${key.pool}/${key.volume}/${key.object}`;
    return this.ordering.run(name, 0, objectSizeBytes, async () => {
      const { up } = this.members(key);
      const source = up.find(([disk, , readable]) => readable && disk !== target);
      const destination = up.find(([disk]) => disk === target);
      if (!source) throw this.unavailable(key, 0, 1);
      if (!destination) {
        throw new CisternError('UNAVAILABLE', `disk ${target} is not an up member of ${name}'s PG`);
      }
      // A device failure of either side takes that disk out, as in a client write:
      // otherwise a failed target stays up and stale, and every pass retries it forever.
      const epoch = this.replicas.table(key.pool).topology.map.epoch;
      const from = this.reportingFailures(source[0], source[1], key.pool, epoch);
      const toStore = this.reportingFailures(target, destination[1], key.pool, epoch);
      if (compareFirst) {
        const [a, b] = await Promise.all(
          [from, toStore].map((store) => digestOf(store, key, objectSizeBytes)),
        );
        if (a === b) return { copied: false, bytes: 0 };
      }
      const bytes = await this.copyObject(from, this.asPrimary(key, toStore), key, objectSizeBytes);
      return { copied: true, bytes };
    });
  }

  /**
   * A member's copy of `key` was rewritten from the primary's without a PG version
   * (peering, scrub): its log no longer lists every change it holds, so it is trusted
   * only from now on (pg-log.ts `start`) — were it primary later, a member catching up
   * from it must not miss a change it got this way.
   */
  private async markRewritten(key: ObjectKey, store: ObjectEndpoint): Promise<void> {
    if (!store.markPgLog) return;
    const table = this.replicas.table(key.pool);
    const pg = objectToPg(table.pool, key.volume, key.object);
    await store.markPgLog(key.pool, pg, { start: this.pgVersionsNow(key.pool, pg).top });
  }

  /** Scrub repaired `disk`'s copy of `key` (recoverObject): see markRewritten. */
  async markRewrittenOn(key: ObjectKey, disk: number): Promise<void> {
    const store = this.replicas.store(disk);
    if (store) await this.markRewritten(key, store);
  }

  /** Recovery: one member's PG log (local store or remote disk), if it keeps one. */
  async pgLogOf(
    disk: number,
    pool: number,
    pg: number,
    after?: PgVersion,
  ): Promise<PgLogState | undefined> {
    const store = this.replicas.store(disk);
    if (!store) throw new CisternError('UNAVAILABLE', `disk ${disk} is not up`);
    return store.pgLog ? store.pgLog(pool, pg, after) : undefined;
  }

  /** Recovery: `disk` was made whole for the PG (pg-log.ts mark); no-op without a log. */
  async markPgLogOf(
    disk: number,
    pool: number,
    pg: number,
    mark: { start: PgVersion; complete?: PgVersion },
  ): Promise<void> {
    const store = this.replicas.store(disk);
    if (!store) throw new CisternError('UNAVAILABLE', `disk ${disk} is not up`);
    if (store.markPgLog) await store.markPgLog(pool, pg, mark);
  }

  /** Copies one object's content between two members; the caller holds the ordering. */
  private async copyObject(
    source: ObjectEndpoint,
    destination: ObjectEndpoint,
    key: ObjectKey,
    objectSizeBytes: number,
  ): Promise<number> {
    const extents = await source.blockStatus(key, 0, objectSizeBytes);
    if (extents.every((extent) => extent.hole)) {
      await destination.deleteObject(key);
      return 0;
    }
    let offset = 0;
    let copied = 0;
    for (const extent of extents) {
      if (extent.hole || extent.zero) {
        await destination.zero(key, offset, extent.length);
      } else {
        const data = await source.read(key, offset, extent.length);
        await destination.write(key, offset, data);
        copied += extent.length;
      }
      offset += extent.length;
    }
    return copied;
  }

  /**
   * Peering after a primary change or a crash: makes one object — one that a member's
   * activity record lists, so a write to it may have reached some members and not
   * others — identical on every readable member, from the first one's copy (the new
   * primary's). Every acknowledged write is on every readable member, so only writes
   * never acknowledged can differ, and for those either version is allowed; what is not
   * allowed is members answering differently. Content checksums are compared first, so
   * only members that differ are written. Under the object's write ordering: a client
   * write waits, then reaches every member like any other. Returns the disks rewritten.
   */
  reconcileObject(key: ObjectKey, objectSizeBytes: number): Promise<number[]> {
    const name = `${key.pool}/${key.volume}/${key.object}`;
    return this.ordering.run(name, 0, objectSizeBytes, async () => {
      const readable = this.members(key).up.filter(([, , ok]) => ok);
      if (readable.length < 2) return [];
      const digests = await Promise.all(
        readable.map(async ([, store]) =>
          store.checksum
            ? (await store.checksum(key, objectSizeBytes)).digest
            : (await checksumObject(store, key, objectSizeBytes)).digest,
        ),
      );
      const [source] = readable as [[number, ObjectEndpoint, boolean]];
      const rewritten: number[] = [];
      for (let i = 1; i < readable.length; i += 1) {
        if (digests[i] === digests[0]) continue;
        const [disk, store] = readable[i] as [number, ObjectEndpoint, boolean];
        // Each change checked against the map as it is sent, as recovery's are.
        await this.copyObject(source[1], this.asPrimary(key, store), key, objectSizeBytes);
        await this.markRewritten(key, store);
        rewritten.push(disk);
      }
      return rewritten;
    });
  }

  /** Peering: one member disk's activity record for a pool (local store or remote disk). */
  async activeObjectsOf(disk: number, pool: number, carriedOver = false): Promise<ObjectKey[]> {
    const store = this.replicas.store(disk);
    if (!store) throw new CisternError('UNAVAILABLE', `disk ${disk} is not up`);
    return store.activeObjects(pool, carriedOver);
  }

  /**
   * Scrub: the content checksum (checksum.ts) of one object on each readable member, in
   * placement order (the first is the primary's copy), taken under the object's write
   * ordering — a write in flight finishes everywhere first and a later one waits — so a
   * difference is never a write half-applied. A member that cannot answer has `error`.
   */
  scrubObject(
    key: ObjectKey,
    objectSizeBytes: number,
  ): Promise<Array<{ disk: number; digest?: string; bytesRead: number; error?: string }>> {
    const name = `${key.pool}/${key.volume}/${key.object}`;
    return this.ordering.run(name, 0, objectSizeBytes, async () => {
      const readable = this.members(key).up.filter(([, , ok]) => ok);
      return Promise.all(
        readable.map(async ([disk, store]) => {
          try {
            const sum = store.checksum
              ? await store.checksum(key, objectSizeBytes)
              : await checksumObject(store, key, objectSizeBytes);
            return { disk, digest: sum.digest, bytesRead: sum.bytesRead };
          } catch (error) {
            if (!isCisternError(error)) throw error;
            return { disk, bytesRead: 0, error: error.message };
          }
        }),
      );
    });
  }

  /** Flushes one member disk (recovery, before it clears a stale mark). */
  async flushDisk(disk: number): Promise<void> {
    const store = this.replicas.store(disk);
    if (!store) throw new CisternError('UNAVAILABLE', `disk ${disk} is not up`);
    await store.flush();
  }

  /**
   * Takes `disk` out when `error` is a device failure (EIO, CORRUPT, unreachable), as a
   * client write would — for failures met outside this engine's client operations
   * (recovery listing or flushing a member). Any other error is left to the caller.
   */
  async reportFailure(disk: number, error: unknown): Promise<void> {
    if (isDeviceFailure(error)) await this.replicas.onDiskFailure(disk, error as CisternError);
  }

  /** `store`, whose changes to `key` are each sent only while this host is its primary. */
  private asPrimary(key: ObjectKey, store: ObjectEndpoint): ObjectEndpoint {
    const checked = async <T>(operation: () => Promise<T>): Promise<T> => {
      this.primaryHere(key); // in the same step as the send: the change carries this map
      return operation();
    };
    return {
      read: (k, offset, length) => store.read(k, offset, length),
      write: (k, offset, data, options) => checked(() => store.write(k, offset, data, options)),
      trim: (k, offset, length) => checked(() => store.trim(k, offset, length)),
      zero: (k, offset, length) => checked(() => store.zero(k, offset, length)),
      blockStatus: (k, offset, length) => store.blockStatus(k, offset, length),
      deleteObject: (k) => checked(() => store.deleteObject(k)),
      flush: () => store.flush(),
      activeObjects: (pool, carriedOver) => store.activeObjects(pool, carriedOver),
      ...logMethods(store),
    };
  }

  /**
   * `store`, each device failure it answers reported (the disk taken out) before it is
   * thrown — if the map is still at `epoch`, the one the calls were issued at. A remote
   * host answers EIO for a disk its map has down; that answer arriving after the map
   * brought the disk back up says nothing about its device, and taking it out for it
   * would record a device error that keeps it out for good. The caller retries anyway.
   */
  private reportingFailures(
    disk: number,
    store: ObjectEndpoint,
    pool: number,
    epoch: number,
  ): ObjectEndpoint {
    const guard = async <T>(operation: () => Promise<T>): Promise<T> => {
      try {
        return await operation();
      } catch (error) {
        if (this.replicas.table(pool).topology.map.epoch === epoch)
          await this.reportFailure(disk, error);
        throw error;
      }
    };
    return {
      read: (key, offset, length) => guard(() => store.read(key, offset, length)),
      write: (key, offset, data, options) => guard(() => store.write(key, offset, data, options)),
      trim: (key, offset, length) => guard(() => store.trim(key, offset, length)),
      zero: (key, offset, length) => guard(() => store.zero(key, offset, length)),
      blockStatus: (key, offset, length) => guard(() => store.blockStatus(key, offset, length)),
      deleteObject: (key) => guard(() => store.deleteObject(key)),
      flush: () => guard(() => store.flush()),
      activeObjects: (pool, carriedOver) => guard(() => store.activeObjects(pool, carriedOver)),
      ...(store.checksum ? { checksum: (k, size) => guard(() => store.checksum!(k, size)) } : {}),
      ...(store.pgLog ? { pgLog: (p, g, after) => guard(() => store.pgLog!(p, g, after)) } : {}),
      ...(store.markPgLog
        ? { markPgLog: (p, g, mark) => guard(() => store.markPgLog!(p, g, mark)) }
        : {}),
    };
  }

  /**
   * Makes every write acknowledged before the call durable on every disk that took it
   * and is still a member. A disk that fails to flush is taken out, and one the map has
   * down is skipped (also while its flush is under way: map-watch.ts); the others still
   * hold the writes — unless no disk that took a PG's writes since the last flush could
   * be flushed (every one failed or was taken down meanwhile), or a member that took
   * writes since the last flush restarted meanwhile (its cache is gone): then EIO, since
   * saying "durable" would vouch for writes that may exist only in lost caches
   * (invariant 1).
   *
   * Concurrent flushes: each takes the dirty disks and clears the set, so a second one
   * finds the set empty while the first is still flushing writes acknowledged before the
   * second was asked for. The second therefore flushes again, itself, every disk an
   * earlier flush is still working on, and vouches for that flush's writes too — rather
   * than waiting for the earlier flush to complete, which may be stuck on a member the
   * map has since taken down.
   */
  flushWatch(): FlushWatch {
    return this.flushErrors.watch();
  }

  flushErrorCount(): number {
    return this.flushErrors.failures;
  }

  flush(watch?: FlushWatch): Promise<void> {
    return this.flushErrors.run(watch, () => this.flushOnce());
  }

  private async flushOnce(): Promise<void> {
    const earlier = [...this.flushesUnderWay];
    const own: FlushUnderWay = {
      pending: new Set(this.dirty),
      flushed: new Set(),
      holders: this.holders,
      reported: new Set(),
      wentDown: this.wentDown,
    };
    for (const flush of earlier) for (const disk of flush.pending) own.pending.add(disk);
    this.dirty.clear();
    this.holders = new Map();
    this.wentDown = new Set();
    this.flushesUnderWay.add(own);
    const restarted: number[] = [];
    // Every member settles before the flush does, failed or not: which PGs this flush
    // made durable is known only once each has answered, and one still pending must stay
    // visible to later flushes (and back in `dirty` if it failed) until it is done.
    const results = await Promise.allSettled(
      [...own.pending].map((disk) => this.flushMember(disk, own, restarted)),
    );
    this.flushesUnderWay.delete(own);
    // Each PG's writes (ours, and those of earlier flushes still under way) must be on a
    // disk flushed since they were acknowledged: by us, or by the earlier flush itself.
    // Nor may a holder left unflushed (down, failed, taken out) be one peering may make
    // the PG's source: it holds the writes in its cache only, or lost them with it.
    const unsoundIn = (flush: FlushUnderWay): Array<[string, Set<number>]> =>
      [...flush.holders].filter(([pg, set]) => {
        if (flush !== own && flush.reported.has(pg)) return false;
        const flushed = (d: number): boolean =>
          (own.flushed.has(d) || flush.flushed.has(d)) &&
          !own.wentDown.has(d) &&
          !flush.wentDown.has(d);
        const record = this.replicas.authoritative?.(pg) ?? [];
        return ![...set].some(flushed) || [...set].some((d) => !flushed(d) && record.includes(d));
      });
    const failed = results.find((r): r is PromiseRejectedResult => r.status === 'rejected');
    if (failed) {
      // Not known durable: the next flush answers for our PGs this one did not make
      // durable (their disks that failed with a request error are dirty again). Handing
      // back the PGs it did make durable would have the next one judge them by disks it
      // no longer flushes — an EIO for writes that are safe (seen under map churn, when
      // replicas refuse flushes for a stale epoch).
      for (const [pg, set] of unsoundIn(own)) this.handBack(own, pg, set);
      throw failed.reason;
    }
    const unsound = [own, ...earlier].flatMap((flush) => unsoundIn(flush).map(([pg]) => pg));
    if (unsound.length > 0) {
      // Told once: a later flush does not fail again for an earlier one's lost writes
      // while that one is still under way (it may wait on a map update for long).
      for (const flush of earlier) for (const [pg] of unsoundIn(flush)) flush.reported.add(pg);
      throw new CisternError(
        'EIO',
        `writes acknowledged in pg ${[...new Set(unsound)].join(', ')} since the last ` +
          'flush are on no disk that could be flushed, or on one left unflushed that the ' +
          "PG's authoritative record names (their disks failed or were taken out): they " +
          'may be lost',
      );
    }
    if (restarted.length > 0) {
      throw new CisternError(
        'EIO',
        `member disk(s) ${restarted.join(', ')} restarted after taking writes this flush ` +
          'covers: they may be lost',
      );
    }
  }

  /**
   * One disk of a flush: flushed (noted in `flush.flushed`), skipped when the map has it
   * down (before or while it is flushed), taken out when it fails. A non-device error
   * leaves it dirty and fails the flush.
   */
  private async flushMember(
    disk: number,
    flush: FlushUnderWay,
    restarted: number[],
  ): Promise<void> {
    try {
      const store = this.replicas.store(disk);
      if (!store) return;
      const mapChanges = this.replicas.mapChanges;
      const outcome = mapChanges
        ? await unlessTakenDown(store.flush(), () => !this.replicas.store(disk), mapChanges)
        : await store.flush();
      if (outcome !== TAKEN_DOWN) flush.flushed.add(disk);
    } catch (error) {
      if (!isDeviceFailure(error)) {
        this.dirty.add(disk);
        throw error;
      }
      // Settled now, unflushed: a later flush must not re-cover it while the map update
      // below is awaited — flushing a disk again after it failed (EIO: its cache may have
      // been dropped) would vouch for the writes the failed flush may have lost.
      flush.pending.delete(disk);
      if (error instanceof MemberRestarted) {
        // The writes may be lost: this flush fails (EIO). The disk is not taken out: its
        // daemon's start-up marked it stale wherever its crash may have cost writes (a
        // restart within the lease: restart.ts), or the monitor brings it back stale (after
        // it), and recovery restores them either way. Taking it out again only restarted a
        // recovery — also long after, when a primary's first flush since finds the new run
        // (quick-restart soak seeds 183, 418: members taken out of a clean cluster).
        restarted.push(disk);
        return;
      }
      try {
        await this.replicas.onDiskFailure(disk, error as CisternError);
      } catch (mapError) {
        // Not taken out (etcd out of reach): still a good member, holding its PGs' writes
        // in its cache only. The next flush must flush it or take it out before it vouches
        // for them (simulator seed 5223: it vouched at once, the PG sound by its other
        // holder).
        this.dirty.add(disk);
        for (const [pg, set] of flush.holders) if (set.has(disk)) this.handBack(flush, pg, set);
        throw mapError;
      }
    } finally {
      flush.pending.delete(disk);
    }
  }

  /** A PG's holders `flush` did not make durable: the next flush answers for them. */
  private handBack(flush: FlushUnderWay, pg: string, set: ReadonlySet<number>): void {
    const known = this.holders.get(pg);
    if (!known) this.holders.set(pg, new Set(set));
    else for (const disk of set) known.add(disk);
    for (const disk of set) if (flush.wentDown.has(disk)) this.wentDown.add(disk);
  }

  /** Objects being written now (for tests and status). */
  get busyObjects(): number {
    return this.ordering.pendingObjects;
  }
}

async function digestOf(
  store: ObjectEndpoint,
  key: ObjectKey,
  objectSizeBytes: number,
): Promise<string> {
  return store.checksum
    ? (await store.checksum(key, objectSizeBytes)).digest
    : (await checksumObject(store, key, objectSizeBytes)).digest;
}

/** The PG log methods of `store`, where it has them (recovery copies are not logged). */
function logMethods(store: ObjectEndpoint): Pick<ObjectEndpoint, 'pgLog' | 'markPgLog'> {
  return {
    ...(store.pgLog ? { pgLog: store.pgLog.bind(store) } : {}),
    ...(store.markPgLog ? { markPgLog: store.markPgLog.bind(store) } : {}),
  };
}

assert(typeof LocalReplication === 'function', 'module loaded');
