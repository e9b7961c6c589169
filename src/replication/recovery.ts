// Recovery of stale members: a disk that joined a PG's set or came back up missed
// writes. The PG's primary brings it up to date from itself, one of two ways:
//   - log catch-up: the member's PG log says up to which version it holds every change
//     (`complete`, pg-log.ts); if the primary's log reaches back to it, only the objects
//     logged after it on either side (changes it missed; changes it holds that the
//     primary lacks), the objects being written now and those whose change failed are
//     copied, and the objects in the member's activity record (a crash may have torn
//     them) compared and copied if they differ;
//   - backfill otherwise: every object either holds is compared (content checksums)
//     and copied only if it differs or is missing, and deleted where the primary has none.
// Then it flushes the disk, raises its log's versions (markPgLog), and clears the mark
// in the cluster map — only if the mark is still the one it
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
import {
  ClusterState,
  actingMembers,
  clearStale,
  incompletePg,
  pgKey,
  serveAcceptedLoss,
  staleKey,
} from '../cluster/state';
import { ClusterStore } from '../cluster/store';
import { PlacementTable, objectToPg } from '../placement/straw2';
import { LocalDisk, PeerTransport } from './endpoint';
import { Clock } from '../util/clock';
import { LocalReplication } from './local';
import { MessageType } from './messages';
import { BackgroundPasses, mapSchedule } from './passes';
import { PgVersion, compareVersions, formatVersion } from '../store/pg-log';

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
/** Below every version a primary gives (epochs start at 1). */
const FIRST_VERSION: PgVersion = { epoch: 0, seq: 0 };
/** Pages of a remote listing (each at most LIST_OBJECTS_MAX keys) before giving up. */
const LIST_PAGES_MAX = 100_000;
/** Above every version (a PG log question after it returns the versions, no entries). */
const LAST_VERSION: PgVersion = { epoch: 0xffffffff, seq: Number.MAX_SAFE_INTEGER };

/** One candidate copy of an incomplete PG whose loss was accepted. */
export interface CopyCandidate {
  disk: number;
  /** Its PG log's `complete`: it holds every change of the PG up to it (none: no version). */
  complete?: PgVersion;
}

/**
 * The copy an accepted loss is served from: the candidate whose PG log is complete
 * furthest — it holds every change of the PG up to its `complete`, so every write
 * acknowledged before that — and among equals the first (the caller lists them best
 * first by what the map knows: stale longest, then placement order). *Why `complete`
 * and not the mark's epoch:* a mark says when a member was found behind, not what it
 * holds; a disk that joined the set late and a former member re-marked later differ by
 * everything the former member took in between (simulator soak seed 1774).
 */
export function chooseAcceptedCopy(candidates: readonly CopyCandidate[]): number {
  let best = candidates[0];
  if (best === undefined) throw new CisternError('UNAVAILABLE', 'no candidate copy');
  for (const candidate of candidates) {
    if (!candidate.complete) continue;
    if (!best.complete || compareVersions(candidate.complete, best.complete) > 0) best = candidate;
  }
  return best.disk;
}

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
  /** How: from the PG log, or by comparing every object. */
  mode: 'log' | 'backfill';
  /** Objects copied (or deleted) on the member. */
  objects: number;
  /** Objects compared and found identical (not copied). */
  compared: number;
  bytes: number;
  ms: number;
  /** Why a backfill: the member has no version, or the primary's log does not reach it. */
  reason?: string;
}

/** What one recovery copies, and what it compares first. */
interface Plan {
  mode: 'log' | 'backfill';
  copy: Map<string, ObjectKey>;
  compare: Map<string, ObjectKey>;
  reason?: string;
}

/** A PG to peer: this host is its primary, as disk `primary`. */
interface PeerWork {
  pg: number;
  primary: number;
  /** Its readable (up, not stale) members, the primary first. */
  members: number[];
}

export class RecoveryWorker extends BackgroundPasses {
  /** Recovered PG members, for status and tests. */
  recoveredTotal = 0;
  /** Objects peering found different on some member and made identical (tests, status). */
  reconciledTotal = 0;
  /** Members recovered from the PG log, and by backfill; objects copied by each (status, tests). */
  readonly totals = { logCatchUps: 0, backfills: 0, logObjects: 0, backfillObjects: 0 };
  /**
   * Per PG (`pool:pg`) this host is primary of: the primary disk it was peered as. A
   * PG not here (this host just became its primary, or just started) is peered.
   */
  private readonly peered = new Map<string, number>();
  /** Epoch of the last peering pass that left nothing to do. */
  private peeredEpoch = -1;

  constructor(private readonly context: RecoveryContext) {
    // A pass on every map change, and every RECOVERY_RETRY_MS for PGs whose recovery failed.
    super(mapSchedule(context.cluster, context.clock, RECOVERY_RETRY_MS));
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

  protected async pass(): Promise<void> {
    // Rare (an operator's decision): skipped without a wait when there is none.
    if (Object.keys(this.context.cluster.current().acceptedLosses ?? {}).length > 0)
      await this.serveAcceptedLosses();
    await this.peerPass();
    await this.settleFailed();
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

  /**
   * Incomplete PGs whose loss the operator accepted (state.acceptPgLoss), for which this
   * host is the one that peers them (the host of their first up member, as the gateway
   * would choose a primary): asks every up member's PG log how far it is complete and
   * serves the PG from the best copy (chooseAcceptedCopy, state.serveAcceptedLoss). A
   * member that cannot be asked leaves the choice to the next pass: choosing without it
   * could pass over the complete copy. An acceptance of a PG that is no longer
   * incomplete (a lost disk came back) is dropped.
   */
  private async serveAcceptedLosses(): Promise<void> {
    const state = this.context.cluster.current();
    for (const key of Object.keys(state.acceptedLosses ?? {})) {
      if (this.closed) return;
      const [pool, pg] = key.split(':').map(Number) as [number, number];
      let primary: { id: number; host: string };
      let incomplete;
      try {
        primary = this.context.primaryOfPg(pool, pg);
        incomplete = incompletePg(state, this.context.table(pool), pg);
      } catch {
        continue; // no member up, or unplaceable: nothing to serve from yet
      }
      if (primary.host !== this.context.hostId) continue;
      const candidates: CopyCandidate[] = [];
      try {
        if (incomplete) {
          const since = (disk: number): number =>
            state.staleSince[staleKey(pool, pg, disk)] ?? Number.MAX_SAFE_INTEGER;
          // Best first by what the map knows (IncompletePg.best, then stale longest):
          // the tie-break among copies whose logs are complete equally far.
          const rank = (disk: number): number =>
            disk === incomplete.best ? Number.MIN_SAFE_INTEGER : since(disk);
          const ordered = [...incomplete.members].sort((a, b) => rank(a) - rank(b));
          for (const disk of ordered) {
            const log = await this.guarded(disk, () =>
              this.context.primary.pgLogOf(disk, pool, pg, LAST_VERSION),
            );
            candidates.push({ disk, ...(log?.complete ? { complete: log.complete } : {}) });
          }
        }
        const best = incomplete ? chooseAcceptedCopy(candidates) : -1;
        const served = await this.context.cluster.update((s) =>
          serveAcceptedLoss(s, pool, pg, best),
        );
        if (served) {
          this.context.log('recovery.loss-accepted', {
            pool,
            pg,
            disk: best,
            candidates: candidates.map((c) => `${c.disk}@${formatVersion(c.complete)}`).join(' '),
          });
        }
      } catch (error) {
        if (!isCisternError(error)) throw error;
        this.context.log('recovery.loss-accept-failed', { pool, pg, error: error.message });
      }
    }
  }

  /**
   * Objects whose change failed on some member after it was sent (LocalReplication's
   * failed set): made identical on every readable member from the primary's copy, as
   * peering does. A failure leaves the object for the next pass.
   */
  private async settleFailed(): Promise<void> {
    for (const [pool, pg] of this.context.primary.pgsWithFailedObjects()) {
      if (this.closed) return;
      let primary: { id: number; host: string } | undefined;
      try {
        primary = this.context.primaryOfPg(pool, pg);
      } catch {
        primary = undefined;
      }
      if (primary?.host !== this.context.hostId) {
        this.context.primary.setPeered(pool, pg, false);
        continue;
      }
      for (const key of this.context.primary.failedObjectsOf(pool, pg)) {
        const volume = this.context.cluster.current().volumes.find((v) => v.id === key.volume);
        try {
          if (volume) {
            const rewritten = await this.context.primary.reconcileObject(
              key,
              volume.objectSizeBytes,
            );
            for (const disk of rewritten) await this.context.primary.flushDisk(disk);
            if (rewritten.length > 0) this.reconciledTotal += 1;
          }
          this.context.primary.failedObjectSettled(key);
        } catch (error) {
          if (!isCisternError(error)) throw error;
          this.context.log('recovery.failed-object', { pool, pg, error: error.message });
          break;
        }
      }
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
        this.forgetPeered(poolId, pg);
        continue;
      }
      if (primary.host !== this.context.hostId || members[0] !== primary.id) {
        this.forgetPeered(poolId, pg);
        continue;
      }
      if (this.peered.get(key) !== primary.id) work.push({ pg, primary: primary.id, members });
    }
    return work;
  }

  private forgetPeered(pool: number, pg: number): void {
    if (this.peered.delete(pgKey(pool, pg))) this.context.primary.setPeered(pool, pg, false);
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
    this.context.primary.setPeered(pool, item.pg, true);
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
      if (cleared[index]) {
        this.recoveredTotal += 1;
        if (item.mode === 'log') {
          this.totals.logCatchUps += 1;
          this.totals.logObjects += item.objects;
        } else {
          this.totals.backfills += 1;
          this.totals.backfillObjects += item.objects;
        }
      }
      this.context.log(cleared[index] ? 'recovery.pg-done' : 'recovery.pg-superseded', {
        pool: item.pool,
        pg: item.pg,
        disk: item.disk,
        mode: item.mode,
        ...(item.reason ? { reason: item.reason } : {}),
        objects: item.objects,
        compared: item.compared,
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
    const primary = this.context.primaryOfPg(item.pool, item.pg);
    const targetHost = state.map.disks.find((d) => d.id === item.disk)?.host;
    if (!targetHost) return undefined;
    // The map may have moved since the work was listed: the logs and listings compared
    // must be the primary's, the disk every copy reads from (LocalReplication's first
    // good member) — never the stale target's own.
    const staleNow = state.staleMembers[pgKey(item.pool, item.pg)] ?? [];
    if (primary.host !== this.context.hostId || staleNow.includes(primary.id)) {
      throw new CisternError(
        'STALE_EPOCH',
        `pg ${item.pool}:${item.pg}: disk ${primary.id} on ${primary.host} is its primary now` +
          (staleNow.includes(primary.id) ? ' (stale: no member is up to date)' : ''),
      );
    }
    // Every change settled by now reaches the member through what is copied below.
    const { complete } = this.context.primary.pgVersionsNow(item.pool, item.pg);
    const plan = await this.plan(item, primary, { id: item.disk, host: targetHost });
    let bytes = 0;
    let objects = 0;
    let compared = 0;
    const budget = this.context.bytesPerSecondMax ?? RECOVERY_BYTES_PER_SECOND_DEFAULT;
    const steps: Array<[ObjectKey, boolean]> = [
      ...[...plan.copy.values()].map((key): [ObjectKey, boolean] => [key, false]),
      ...[...plan.compare.values()].map((key): [ObjectKey, boolean] => [key, true]),
    ];
    for (const [key, compareFirst] of steps) {
      if (this.closed) return undefined;
      const volume = this.context.cluster.current().volumes.find((v) => v.id === key.volume);
      if (!volume) continue; // removed: garbage collection deletes its objects
      let copied = 0;
      if (compareFirst) {
        const result = await this.context.primary.backfillObject(
          key,
          item.disk,
          volume.objectSizeBytes,
        );
        if (!result.copied) compared += 1;
        else objects += 1;
        copied = result.bytes;
      } else {
        copied = await this.context.primary.recoverObject(key, item.disk, volume.objectSizeBytes);
        objects += 1;
      }
      bytes += copied;
      await this.context.throttle?.take(copied);
      // Bandwidth bound: never run ahead of the budget since this PG started.
      const aheadMs = (bytes / budget) * 1000 - (this.clock.now() - started);
      if (aheadMs > 0)
        await (this.context.sleep ?? ((ms: number) => this.clock.sleep(ms)))(aheadMs);
    }
    const epoch = this.context.cluster.current().map.epoch;
    try {
      // Its log has a hole where it was away: it lists changes reliably only from now.
      // Made durable by the flush, before the stale mark is cleared.
      const { top } = this.context.primary.pgVersionsNow(item.pool, item.pg);
      await this.context.primary.markPgLogOf(item.disk, item.pool, item.pg, {
        start: top,
        ...(complete ? { complete } : {}),
      });
      await this.context.primary.flushDisk(item.disk);
    } catch (error) {
      await this.diskFailed(item.disk, error, epoch);
      throw error;
    }
    return {
      ...item,
      mode: plan.mode,
      ...(plan.reason ? { reason: plan.reason } : {}),
      objects,
      compared,
      bytes,
      ms: this.clock.now() - started,
    };
  }

  /**
   * Log catch-up if the member has a version and the primary's log reaches back to it;
   * otherwise backfill. Either way the objects being written now and those whose change
   * failed are copied too (a change still settling may not be logged yet).
   */
  private async plan(
    item: Work,
    primary: { id: number; host: string },
    target: { id: number; host: string },
  ): Promise<Plan> {
    const named = (keys: Iterable<ObjectKey>, into = new Map<string, ObjectKey>()) => {
      for (const key of keys) into.set(`${key.volume}/${key.object}`, key);
      return into;
    };
    const busy = [
      ...this.context.primary.busyObjectsOf(item.pool, item.pg),
      ...this.context.primary.failedObjectsOf(item.pool, item.pg),
    ];
    const log = await this.logPlan(item, primary.id);
    if (log.copy) {
      const copy = named(busy, named(log.copy));
      const active = await this.guarded(item.disk, () =>
        this.context.primary.activeObjectsOf(item.disk, item.pool, true),
      );
      const table = this.context.table(item.pool);
      const compare = named(
        active.filter(
          (k) =>
            objectToPg(table.pool, k.volume, k.object) === item.pg &&
            !copy.has(`${k.volume}/${k.object}`),
        ),
      );
      return { mode: 'log', copy, compare, reason: log.reason };
    }
    // Held by both: compared. By one only: copied (to the member, or deleted there).
    const onPrimary = named(await this.listPg(primary, item.pool, item.pg));
    const onTarget = named(await this.listPg(target, item.pool, item.pg));
    const copy = named(busy);
    const compare = new Map<string, ObjectKey>();
    for (const [name, key] of onPrimary) {
      if (copy.has(name)) continue;
      if (onTarget.has(name)) compare.set(name, key);
      else copy.set(name, key);
    }
    for (const [name, key] of onTarget) if (!onPrimary.has(name)) copy.set(name, key);
    return { mode: 'backfill', copy, compare, reason: log.reason };
  }

  /** The objects logged after the member's version, or why the log cannot say. */
  private async logPlan(
    item: Work,
    primaryDisk: number,
  ): Promise<{ copy?: ObjectKey[]; reason: string }> {
    const member = await this.guarded(item.disk, () =>
      this.context.primary.pgLogOf(item.disk, item.pool, item.pg),
    );
    if (!member) return { reason: 'the member keeps no PG log' };
    // No version: the member is sure of no change; a primary whose log never lost an
    // entry (no start: never trimmed, never stale, never recovered) still lists them all.
    const from: PgVersion | undefined = member.complete;
    const source = await this.guarded(primaryDisk, () =>
      this.context.primary.pgLogOf(primaryDisk, item.pool, item.pg, from ?? FIRST_VERSION),
    );
    if (!source) return { reason: 'the primary keeps no PG log' };
    if (source.start && (!from || compareVersions(source.start, from) > 0)) {
      return {
        reason: `the primary's log starts at ${formatVersion(source.start)}, after the member's ${formatVersion(from)}`,
      };
    }
    // After `from`, a change both logs list (the same version) is on the member — its
    // entry is durable only with the change — and changes to one object reach every
    // member in order (RangeOrdering). The rest: on the primary only, changes the member
    // missed; on the member only, changes the primary lacks (a write that failed, or an
    // old primary's last): either way the object is copied from the primary.
    const name = (e: { version: PgVersion }) => `${e.version.epoch}.${e.version.seq}`;
    const onMember = new Set(member.entries.map(name));
    const onPrimary = new Set(source.entries.map(name));
    return {
      copy: [
        ...source.entries.filter((e) => !onMember.has(name(e))).map((e) => e.key),
        ...member.entries.filter((e) => !onPrimary.has(name(e))).map((e) => e.key),
      ],
      reason: `from ${formatVersion(from)}`,
    };
  }

  /**
   * A question to one disk (its PG log, its activity record): a device failure of it
   * takes the disk out, as listPg does — but not a host that did not answer: a daemon
   * refuses until its datastore is open, right after it added its disks to the map, and
   * whether a host is away is its lease's to say. The next pass (2 s) asks again.
   */
  private async guarded<T>(disk: number, call: () => Promise<T>): Promise<T> {
    const epoch = this.context.cluster.current().map.epoch;
    try {
      return await call();
    } catch (error) {
      if (!isCisternError(error, 'UNREACHABLE')) await this.diskFailed(disk, error, epoch);
      throw error;
    }
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
