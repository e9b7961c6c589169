// Scrub: proves invariant 4 (replicas converge). A `ScrubWorker` runs on every daemon
// and acts on the scrub requests recorded in the cluster state (scrub-state.ts): for
// each PG this host is primary of, it lists the PG's objects on every readable member
// (each member disk listed once per pool; remote ones through paginated ListObjects),
// compares each object's content checksum across the members under the object's write
// ordering (LocalReplication.scrubObject), and repairs every member that differs from
// the primary by copying the primary's copy over it (recoverObject), then checks again.
// The primary's copy is the reference: it is the one that ordered every write and the
// one reads are served from. Its report goes back into the state under the request.

import { CisternError, isCisternError } from '../util/errors';
import { ObjectKey } from '../store/key';
import { ClusterStore } from '../cluster/store';
import { pgKey } from '../cluster/state';
import {
  SCRUB_EXAMPLES_MAX,
  ScrubReport,
  ScrubRequest,
  boundedText,
  pendingScrubs,
  recordScrubReport,
} from '../cluster/scrub-state';
import { PlacementTable, objectToPg, pgRow } from '../placement/straw2';
import { LocalDisk, PeerTransport } from './endpoint';
import { Clock } from '../util/clock';
import { LocalReplication } from './local';
import { MessageType } from './messages';
import { BackgroundPasses, mapSchedule } from './passes';

/** Default bound on the bytes one daemon's scrub reads per second (all members together). */
export const SCRUB_BYTES_PER_SECOND_DEFAULT = 64 * 2 ** 20;
/**
 * Times one object's checksums (or one disk's listing) are taken again after the map
 * moved under them. Each retry needs a new epoch, so this bounds the map changes one
 * object's scrub rides out.
 */
const SCRUB_RETRIES_MAX = 3;
/** How long a retry waits for this daemon's map to catch up with a refusing member's. */
const SCRUB_RETRY_WAIT_MS = 200;
/** Pages of a remote listing (each at most LIST_OBJECTS_MAX keys) before giving up. */
const LIST_PAGES_MAX = 100_000;

export interface ScrubContext {
  hostId: string;
  cluster: ClusterStore;
  table(poolId: number): PlacementTable;
  /** The host of the PG's primary now (throws when the PG has no member up). */
  primaryHostOfPg(poolId: number, pg: number): string;
  replication: LocalReplication;
  /** This host's up disk, or undefined. */
  localStore(disk: number): LocalDisk | undefined;
  transport: PeerTransport | undefined;
  log: (event: string, fields?: Record<string, unknown>) => void;
  bytesPerSecondMax?: number;
  /** Injectable for tests. */
  sleep?: (ms: number) => Promise<void>;
  /** Virtual time in the simulator; the system clock by default. */
  clock?: Clock;
}

type Totals = Omit<ScrubReport, 'host' | 'finishedAt' | 'ms'> & { bytesRead: number };

export class ScrubWorker extends BackgroundPasses {
  constructor(private readonly context: ScrubContext) {
    // Acts on requests pending at start and on every later map change that adds one.
    super(mapSchedule(context.cluster, context.clock));
  }

  protected override wanted(): boolean {
    return (
      pendingScrubs(this.context.cluster.current(), this.context.hostId, new Date(this.clock.now()))
        .length > 0
    );
  }

  protected async pass(): Promise<void> {
    const pending = pendingScrubs(
      this.context.cluster.current(),
      this.context.hostId,
      new Date(this.clock.now()),
    );
    for (const request of pending) {
      if (this.closed) return;
      const started = this.clock.now();
      let report: ScrubReport;
      try {
        report = await this.scrub(request);
      } catch (error) {
        if (!isCisternError(error)) throw error;
        // Reported, so the CLI learns of it rather than waiting for its timeout.
        report = {
          host: this.context.hostId,
          finishedAt: new Date(this.clock.now()).toISOString(),
          ms: this.clock.now() - started,
          pgs: 0,
          objects: 0,
          disagreements: 0,
          repaired: 0,
          errors: 1,
          examples: [boundedText(`scrub failed: ${error.message}`)],
        };
      }
      if (this.closed) return; // cut short: not a report of the whole
      try {
        await this.context.cluster.update((s) => recordScrubReport(s, request.id, report));
        this.context.log('scrub.done', {
          id: request.id,
          ...report,
          examples: report.examples.join('; '),
        });
      } catch (error) {
        if (!isCisternError(error)) throw error;
        this.context.log('scrub.report-failed', { id: request.id, error: error.message });
      }
    }
  }

  /** Scrubs every PG of the request's pools that this host is primary of. */
  async scrub(request: ScrubRequest): Promise<ScrubReport> {
    const started = this.clock.now();
    const totals: Totals = {
      pgs: 0,
      objects: 0,
      disagreements: 0,
      repaired: 0,
      errors: 0,
      examples: [],
      bytesRead: 0,
    };
    const state = this.context.cluster.current();
    const pools =
      request.pool !== undefined ? [request.pool] : state.map.pools.map((pool) => pool.id);
    for (const pool of pools) {
      if (this.closed) break;
      if (!this.context.cluster.current().map.pools.some((p) => p.id === pool)) continue;
      await this.scrubPool(pool, totals, started);
    }
    const { bytesRead, ...counts } = totals;
    void bytesRead;
    return {
      host: this.context.hostId,
      finishedAt: new Date(this.clock.now()).toISOString(),
      ms: this.clock.now() - started,
      ...counts,
    };
  }

  private async scrubPool(pool: number, totals: Totals, started: number): Promise<void> {
    let table: PlacementTable;
    try {
      table = this.context.table(pool);
    } catch (error) {
      if (isCisternError(error, 'PLACEMENT_IMPOSSIBLE')) return; // nothing is served from it
      throw error;
    }
    // The PGs this host is primary of, each with its readable members (up, not stale).
    const state = this.context.cluster.current();
    const members = new Map<number, number[]>();
    for (let pg = 0; pg < table.pgCount; pg += 1) {
      let primaryHost: string;
      try {
        primaryHost = this.context.primaryHostOfPg(pool, pg);
      } catch {
        continue; // no member up: nothing to compare
      }
      if (primaryHost !== this.context.hostId) continue;
      const stale = state.staleMembers[pgKey(pool, pg)] ?? [];
      const readable = [...pgRow(table, pg)].filter(
        (disk) => table.topology.disksById.get(disk)?.up === true && !stale.includes(disk),
      );
      members.set(pg, readable);
    }
    // Every member disk listed once for the pool; keys sorted into this host's PGs.
    const keys = new Map<number, Map<string, ObjectKey>>();
    const disks = new Set([...members.values()].flat());
    for (const disk of disks) {
      try {
        for (const key of await this.listDiskSettled(disk, pool)) {
          const pg = objectToPg(table.pool, key.volume, key.object);
          if (!members.get(pg)?.includes(disk)) continue;
          let inPg = keys.get(pg);
          if (!inPg) keys.set(pg, (inPg = new Map()));
          inPg.set(`${key.volume}/${key.object}`, key);
        }
      } catch (error) {
        if (!isCisternError(error)) throw error;
        // Objects only this disk holds are not compared this time: say so.
        totals.errors += 1;
        noteExample(totals, `pool ${pool}: listing disk ${disk} failed: ${error.message}`);
      }
    }
    const budget = this.context.bytesPerSecondMax ?? SCRUB_BYTES_PER_SECOND_DEFAULT;
    for (const pg of members.keys()) {
      if (this.closed) return;
      totals.pgs += 1;
      for (const key of keys.get(pg)?.values() ?? []) {
        if (this.closed) return;
        await this.scrubObject(key, totals);
        // Bandwidth bound: never run ahead of the budget since the scrub started.
        const aheadMs = (totals.bytesRead / budget) * 1000 - (this.clock.now() - started);
        if (aheadMs > 0)
          await (this.context.sleep ?? ((ms: number) => this.clock.sleep(ms)))(aheadMs);
      }
    }
  }

  private async scrubObject(key: ObjectKey, totals: Totals): Promise<void> {
    const volume = this.context.cluster.current().volumes.find((v) => v.id === key.volume);
    if (!volume) return; // removed: garbage collection deletes its objects
    const name = `${key.pool}/${key.volume}/${key.object}`;
    const note = (text: string): void => noteExample(totals, `${name}: ${text}`);
    const replication = this.context.replication;
    const sums = await this.checksumsSettled(key, volume.objectSizeBytes, totals);
    totals.objects += 1;
    const failed = sums.filter((s) => s.error !== undefined);
    const primary = sums[0];
    if (!primary || primary.digest === undefined) {
      totals.errors += 1;
      note(`the primary's copy could not be read (${primary?.error ?? 'no readable member'})`);
      return;
    }
    if (failed.length > 0) {
      totals.errors += 1;
      note(failed.map((s) => `disk ${s.disk} did not answer (${s.error})`).join(', '));
    }
    const differing = sums.filter((s) => s.digest !== undefined && s.digest !== primary.digest);
    if (differing.length === 0) return;
    totals.disagreements += 1;
    const which = differing.map((s) => s.disk).join(', ');
    this.context.log('scrub.disagreement', { object: name, primary: primary.disk, differ: which });
    try {
      for (const member of differing) {
        await replication.recoverObject(key, member.disk, volume.objectSizeBytes);
        await replication.markRewrittenOn(key, member.disk);
        await replication.flushDisk(member.disk);
      }
      const after = await replication.scrubObject(key, volume.objectSizeBytes);
      const converged = after.every((s) => s.digest === after[0]?.digest && !s.error);
      if (converged) totals.repaired += 1;
      note(
        `disk ${which} differed from the primary's copy on disk ${primary.disk}` +
          (converged ? '; repaired' : '; still differs after repair'),
      );
    } catch (error) {
      if (!isCisternError(error)) throw error;
      note(`disk ${which} differed from disk ${primary.disk}; repair failed: ${error.message}`);
    }
  }

  /**
   * The members' checksums of one object, taken again (bounded) when a member failed to
   * answer and the map has moved since: every cluster-state update bumps the epoch —
   * another daemon recording its scrub report is one — and a member already on the new
   * epoch refuses a request of the old one (STALE_EPOCH). That is not an error of the
   * object; a member that fails with the map unchanged is, and is not asked again.
   * Found by the deterministic simulator (test/sim/).
   */
  private async checksumsSettled(
    key: ObjectKey,
    objectSizeBytes: number,
    totals: Totals,
  ): Promise<Awaited<ReturnType<LocalReplication['scrubObject']>>> {
    const replication = this.context.replication;
    let epoch = this.context.cluster.current().map.epoch;
    let sums = await replication.scrubObject(key, objectSizeBytes);
    totals.bytesRead += sums.reduce((sum, s) => sum + s.bytesRead, 0);
    for (let retry = 0; retry < SCRUB_RETRIES_MAX; retry += 1) {
      if (!sums.some((s) => s.error !== undefined)) break;
      // Our map may trail the refusing member's by a watch event: give it time to arrive.
      await this.clock.sleep(SCRUB_RETRY_WAIT_MS);
      const now = this.context.cluster.current().map.epoch;
      if (now === epoch || this.closed) break;
      epoch = now;
      sums = await replication.scrubObject(key, objectSizeBytes);
      totals.bytesRead += sums.reduce((sum, s) => sum + s.bytesRead, 0);
    }
    return sums;
  }

  /**
   * listDisk, listed again (bounded) when it failed and the map moved meanwhile: a
   * member on a newer epoch refuses the listing of an older one (see checksumsSettled).
   */
  private async listDiskSettled(disk: number, pool: number): Promise<ObjectKey[]> {
    let epoch = this.context.cluster.current().map.epoch;
    for (let retry = 0; ; retry += 1) {
      try {
        const keys: ObjectKey[] = [];
        for await (const key of this.listDisk(disk, pool)) keys.push(key);
        return keys;
      } catch (error) {
        if (!isCisternError(error) || retry >= SCRUB_RETRIES_MAX || this.closed) throw error;
        await this.clock.sleep(SCRUB_RETRY_WAIT_MS);
        const now = this.context.cluster.current().map.epoch;
        if (now === epoch) throw error;
        epoch = now;
      }
    }
  }

  /** Every object of one pool on one disk (local store, or a remote host's disk). */
  private async *listDisk(disk: number, pool: number): AsyncGenerator<ObjectKey> {
    const host = this.context.cluster.current().map.disks.find((d) => d.id === disk)?.host;
    if (host === this.context.hostId) {
      const store = this.context.localStore(disk);
      if (!store) throw new CisternError('UNAVAILABLE', `disk ${disk} is not up here`);
      yield* store.listObjects({ pool });
      return;
    }
    const transport = this.context.transport;
    if (!transport || host === undefined)
      throw new CisternError('UNAVAILABLE', `disk ${disk} is on another host`);
    let after: ObjectKey | undefined;
    for (let page = 0; page < LIST_PAGES_MAX; page += 1) {
      const reply = await transport.request(
        host,
        MessageType.ListObjects,
        this.context.cluster.current().map.epoch,
        { pool, disk, ...(after ? { after } : {}) },
      );
      const { keys, truncated } = reply.metadata as { keys: ObjectKey[]; truncated: boolean };
      yield* keys;
      if (!truncated || keys.length === 0) return;
      after = keys[keys.length - 1];
    }
    throw new CisternError('EIO', `listing disk ${disk} on ${host} did not end`);
  }
}

/** Keeps the first few disagreements and errors as examples (bounded). */
function noteExample(totals: Totals, text: string): void {
  if (totals.examples.length < SCRUB_EXAMPLES_MAX) totals.examples.push(boundedText(text));
}
