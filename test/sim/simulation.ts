// One simulated run, a pure function of its seed: a cluster of simulated daemons
// (host.ts) running the real replication code, clients writing, reading and flushing
// through random gateways, faults (power loss and restart of hosts, partitions, message
// loss, disk failure), a monitor turning host liveness into map changes with the real
// applyLiveness, and checkers:
//   - every read, when it completes: invariants 1–3 against the model (model.ts);
//   - every message, as the receiver's handler is about to run: invariant 5 — the
//     request's epoch equals the receiver's (the fence held), and a write to a replica
//     comes from the host that is the PG's primary at the epoch the write carries;
//   - every step: nothing above failed, no unexpected exception escaped the real code;
//   - at the end, after every fault is healed: liveness (every PG clean within
//     LIVENESS_BOUND_MS of simulated time; a PG left incomplete — every disk known to
//     hold its acknowledged writes failed for good — is taken through the operator's
//     accept-loss, the daemon peering it choosing the copy by the PG logs, and the loss
//     is accepted by the model only if no surviving disk held them all: acceptLosses),
//     every block readable as allowed through
//     every gateway, every object's replicas byte-identical (invariant 4), and after a
//     power loss of every host at once, every acknowledged write that a flush covered is
//     still there (invariant 1).
// See README "Deterministic simulation" for replaying a seed.

import { CisternError, isCisternError } from '../../src/util/errors';
import * as state from '../../src/cluster/state';
import { requestScrub, scrubStatusOf } from '../../src/cluster/scrub-state';
import { applyLiveness } from '../../src/cluster/monitor';
import { incompleteMessages, pgStates } from '../../src/cluster/cluster-admin';
import { computeTable, objectToPg, pgRow } from '../../src/placement/straw2';
import { MessageType } from '../../src/replication/messages';
import type { FlushWatch } from '../../src/replication/flush-errors';
import { ObjectKey } from '../../src/store/key';
import { SIM_EPOCH_MS, Scheduler, drainMicrotasks } from './scheduler';
import { DiskMedium, keyName, SIM_BLOCK_BYTES } from './disk';
import { SimNetwork, Delivery } from './network';
import { SimAuthority } from './cluster';
import { SIM_LEASE_TTL_MS, SimHost } from './host';
import { BlockModel, Model, Version, decodeBlock, encodeBlock } from './model';

/** How a read's failure says its gateway could not reach etcd (its map is frozen). */
export const CUT_OFF_TEXT = 'gateway cut off from etcd';
/** How a durability failure says the flush covering the lost write came after a power loss. */
export const ACROSS_CRASH_TEXT = 'flush completed after a power loss following the ack';
/** How a durability failure says its write was acknowledged when no up disk held it. */
export const NO_UP_HOLDER_TEXT = 'acknowledged when no good member (up, not stale) held it';
/** How a replica comparison says every differing write failed at its client. */
export const FAILED_WRITES_TEXT = 'every differing write failed at its client';
/** How a replica comparison says a member's host restarted within its lease. */
export const UNNOTICED_RESTART_TEXT = "a member's host restarted before the monitor noticed";
/** How a durability failure says the flush covering it left it in some disk's cache only. */
export const LEFT_IN_CACHE_TEXT = 'the FLUSH left it unflushed on disk(s)';
/** How a scrub failure says every error was a refusal for an old epoch. */
export const SCRUB_STALE_EPOCH_TEXT = 'only errors: members refusing requests of an older epoch';
/** How a flush check says a covered write is on no disk's durable state. */
export const NOT_DURABLE_TEXT = 'not durable on member disk(s)';
/** How a liveness failure says recovery keeps a failed disk in service. */
export const FAILED_TARGET_TEXT = 'recovery target never taken out';
/** A failed disk recovery writes to is down within this (virtual ms; retries are every 2 s). */
const FAILED_DISK_NOTICED_MS = 30_000;
/** How a liveness failure names the PGs whose every up member is stale. */
export const ALL_STALE_TEXT =
  'PGs with every up member stale whose authoritative members failed for good:';
/**
 * How a durability failure says the operator's accept-loss of an incomplete PG served a
 * copy that lacked writes while another surviving disk held every acknowledged one.
 */
export const WRONG_COPY_TEXT = 'accept-loss served a copy lacking writes another disk held';
/** Every PG must be clean this long (virtual ms) after the last fault is healed. */
export const LIVENESS_BOUND_MS = 120_000;
/** The monitor's check period and the hosts' liveness lease (virtual ms). */
const MONITOR_TICK_MS = 500;
const LEASE_TTL_MS = SIM_LEASE_TTL_MS;
/** Down → out (virtual ms): long partitions and absences re-place data. */
const DOWN_OUT_MS = 20_000;
/** Steps of one run at most: a run that does not end is a failure, not a hang. */
const STEPS_MAX = 2_000_000;

export type FailureKind =
  | 'inv1-durability'
  | 'inv2-foreign-data'
  | 'inv3-read-your-writes'
  | 'inv4-replicas-differ'
  | 'inv5-fence'
  | 'inv5-not-primary'
  | 'liveness'
  | 'exception';

export interface Failure {
  kind: FailureKind;
  atMs: number;
  text: string;
}

export type Mutation = 'fence-off' | 'flush-lies' | 'replica-drops-writes';

export interface SimOptions {
  seed: number;
  /** Client operations in the faulty phase. */
  operations?: number;
  /** Faults on (the default) or a fault-free run. */
  faults?: boolean;
  /** Restart a crashed host before its lease lapses (the monitor never sees it down). */
  quickRestarts?: boolean;
  /** Both sides of a partition keep etcd (by default only one side does). */
  etcdEverywhere?: boolean;
  /**
   * A bug planted on purpose, to prove a checker catches it (checkers.test.ts):
   * 'fence-off' serves requests of any epoch; 'flush-lies' acknowledges flushes without
   * persisting; 'replica-drops-writes' makes one disk (object 0's primary) drop every
   * other write silently.
   */
  mutation?: Mutation;
  /** Print progress events. */
  verbose?: boolean;
}

export interface SimResult {
  seed: number;
  failures: Failure[];
  traceHash: string;
  steps: number;
  simulatedMs: number;
  config: string;
  stats: Record<string, number>;
  /** The last events before the first failure (or the end). */
  recent: string[];
}

interface Client {
  id: number;
  gateway: string | undefined;
  /** The incarnation of `gateway` the client is connected to. */
  gatewayIncarnation: number;
  /** The connection's sample of the gateway's flush errors (flush-errors.ts). */
  flushWatch: FlushWatch | undefined;
  /** Acked writes through the current gateway incarnation not yet covered by a flush. */
  unflushed: Array<{ block: BlockModel; version: Version }>;
  inFlight: { host: string; incarnation: number; abandon: () => void } | undefined;
}

export async function runSimulation(options: SimOptions): Promise<SimResult> {
  const sim = new Simulation(options);
  return sim.run();
}

class Simulation {
  private readonly scheduler: Scheduler;
  private readonly random;
  private readonly failures: Failure[] = [];
  private readonly deferred: Failure[] = [];
  private readonly authority: SimAuthority;
  private readonly network: SimNetwork;
  private readonly hosts = new Map<string, SimHost>();
  private readonly model: Model;
  private readonly clients: Client[] = [];
  private readonly stats: Record<string, number> = {
    writes: 0,
    writesAcked: 0,
    reads: 0,
    readsChecked: 0,
    flushes: 0,
    flushesOk: 0,
    opsFailed: 0,
    crashes: 0,
    partitions: 0,
    diskFailures: 0,
    scrubs: 0,
    mapEpochs: 0,
    /** Incomplete PGs the operator accepted the loss of, and those where that lost writes. */
    pgsAccepted: 0,
    pgsLost: 0,
  };
  private readonly hostIds: string[];
  private readonly poolId: number;
  private readonly volumeId: number;
  private readonly objects: number;
  private readonly blocksPerObject: number;
  private readonly config: string;
  private operationsLeft: number;
  private faulting = true;
  private failedDisks = new Set<number>();
  private readonly size: number;
  private readonly lastSeen = new Map<string, number>();
  private readonly downSince = new Map<string, number>();
  private firstFailureRecent: string[] | undefined;
  /** Hosts that restarted before the monitor took their disks down. */
  private readonly restartedUnnoticed = new Set<string>();

  constructor(private readonly options: SimOptions) {
    this.scheduler = new Scheduler(options.seed);
    this.random = this.scheduler.random;
    const random = this.random;
    const hostCount = random.range(4, 5);
    const disksPerHost = random.range(1, 2);
    this.size = 3;
    const minSize = 2;
    const pgCount = random.pick([4, 8, 16]);
    this.objects = random.range(3, 8);
    this.blocksPerObject = random.range(2, 4);
    this.operationsLeft = options.operations ?? random.range(80, 200);
    this.config =
      `${hostCount} hosts x ${disksPerHost} disks, pool size ${this.size} min ${minSize}, ` +
      `${pgCount} PGs, ${this.objects} objects x ${this.blocksPerObject} blocks, ` +
      `${this.operationsLeft} ops`;
    this.hostIds = Array.from({ length: hostCount }, (_, i) => `h${i + 1}`);
    this.authority = new SimAuthority(this.scheduler, state.emptyState());
    this.network = new SimNetwork(
      this.scheduler,
      (delivery) => this.checkDelivery(delivery),
      (text) => this.fail('exception', text),
    );
    this.network.fenced = options.mutation !== 'fence-off';
    const ids = { pool: 0, volume: 0, objectSize: 0 };
    const media = new Map<string, Map<number, DiskMedium>>();
    this.authority.apply((s) => {
      for (const [i, host] of this.hostIds.entries()) {
        state.addHost(s, host, `rack-${i + 1}`);
        const mine = new Map<number, DiskMedium>();
        for (let d = 0; d < disksPerHost; d += 1) {
          const id = state.addDisk(s, host, {
            path: `sim/${host}/disk${d}`,
            uuid: `sim-${host}-${d}`,
            sizeBytes: 2 ** 40,
          });
          const medium = new DiskMedium(id);
          if (options.mutation === 'flush-lies') medium.flushLies = true;
          mine.set(id, medium);
        }
        media.set(host, mine);
      }
      const pool = state.createPool(s, {
        name: 'sim',
        size: this.size,
        minSize,
        failureDomain: 'host',
        pgCount,
      });
      const volume = state.createVolume(s, 'v', 2 ** 30, 'sim');
      volume.createdAt = new Date(this.scheduler.now).toISOString();
      if (options.mutation === 'replica-drops-writes') {
        // The first member of object 0's PG: a disk the workload surely writes.
        const table = computeTable(s.map, pool.id);
        const victim = pgRow(table, objectToPg(pool, volume.id, 0))[0]!;
        for (const disks of media.values()) {
          const medium = disks.get(victim);
          if (medium) medium.dropEvery = 2;
        }
      }
      ids.pool = pool.id;
      ids.volume = volume.id;
      ids.objectSize = volume.objectSizeBytes;
    });
    this.poolId = ids.pool;
    this.volumeId = ids.volume;
    this.model = new Model(this.objects, this.blocksPerObject);
    const traced = process.env.TRACE_OBJECT;
    if (traced !== undefined) {
      for (const disks of media.values()) {
        for (const medium of disks.values()) {
          medium.onChange = (change) => {
            if (change.kind === 'log-mark' || change.kind === 'log-forget') return;
            if (change.key.object !== Number(traced)) return;
            const what =
              change.kind === 'write'
                ? `block ${change.block} = w${new DataView(change.data.buffer, change.data.byteOffset).getUint32(0)}`
                : change.kind === 'discard'
                  ? `block ${change.block} discarded`
                  : change.kind === 'log'
                    ? `logged ${change.tag.version.epoch}.${change.tag.version.seq}`
                    : 'deleted';
            this.log(`disk${medium.id}`, 'change', { what });
          };
          medium.onPersist = (persisted, left) =>
            this.log(`disk${medium.id}`, 'persist', { persisted, left });
        }
      }
    }
    for (const host of this.hostIds) {
      this.hosts.set(
        host,
        new SimHost(
          host,
          media.get(host)!,
          this.scheduler,
          this.authority,
          this.network,
          (h, e, f) => this.log(h, e, f),
        ),
      );
    }
  }

  private log(host: string, event: string, fields: Record<string, unknown> = {}): void {
    if (this.options.verbose) {
      console.log(
        `${this.scheduler.elapsedMs.toFixed(1)}ms ${host} ${event} ${JSON.stringify(fields)}`,
      );
    }
  }

  /** Recorded, reported after any other failure, without ending the run. */
  private deferFailure(kind: FailureKind, text: string): void {
    this.deferred.push({ kind, atMs: this.scheduler.elapsedMs, text });
  }

  private fail(kind: FailureKind, text: string): void {
    if (this.failures.length === 0) this.firstFailureRecent = [...this.scheduler.recent];
    this.failures.push({ kind, atMs: this.scheduler.elapsedMs, text });
  }

  private key(object: number): ObjectKey {
    return { pool: this.poolId, volume: this.volumeId, object };
  }

  // ---- the run ------------------------------------------------------------------------

  async run(): Promise<SimResult> {
    const onRejection = (reason: unknown): void => {
      this.fail('exception', `unhandled rejection: ${describe(reason)}`);
    };
    process.on('unhandledRejection', onRejection);
    try {
      for (const host of this.hosts.values()) host.start();
      this.startMonitor();
      for (let c = 0; c < this.random.range(2, 4); c += 1) {
        const client: Client = {
          id: c,
          gateway: undefined,
          gatewayIncarnation: 0,
          flushWatch: undefined,
          unflushed: [],
          inFlight: undefined,
        };
        this.clients.push(client);
        this.scheduler.schedule(this.random.float() * 10, `client${c}.start`, () =>
          this.nextOperation(client),
        );
      }
      if (this.options.faults !== false) this.scheduleFault();
      // The faulty phase: until every client operation has been issued and settled.
      const settled = (): boolean =>
        this.operationsLeft <= 0 && this.clients.every((c) => !c.inFlight);
      await this.runUntil(settled, Number.MAX_SAFE_INTEGER);
      await this.endPhase();
    } catch (error) {
      this.fail('exception', describe(error));
    } finally {
      process.off('unhandledRejection', onRejection);
    }
    this.failures.push(...this.deferred);
    this.stats.mapEpochs = this.authority.state.map.epoch;
    this.stats.messages = this.network.messages;
    this.stats.messagesLost = this.network.lost;
    return {
      seed: this.options.seed,
      failures: this.failures,
      traceHash: this.scheduler.traceHash(),
      steps: this.scheduler.steps,
      simulatedMs: this.scheduler.elapsedMs,
      config: this.config,
      stats: this.stats,
      recent: this.firstFailureRecent ?? [...this.scheduler.recent],
    };
  }

  /** Steps until `done()`, a failure, `deadlineMs` of virtual time, or an empty queue. */
  private async runUntil(done: () => boolean, deadlineMs: number): Promise<boolean> {
    while (!done()) {
      if (this.failures.length > 0) return false;
      if (this.scheduler.elapsedMs > deadlineMs) return false;
      if (this.scheduler.steps > STEPS_MAX) {
        this.fail('liveness', `more than ${STEPS_MAX} steps`);
        return false;
      }
      if (!(await this.scheduler.step())) return done();
    }
    return true;
  }

  // ---- the monitor --------------------------------------------------------------------

  /**
   * Liveness as etcd leases give it: a running host that reaches etcd renews its lease;
   * one that has not for LEASE_TTL_MS is absent. The real applyLiveness decides.
   */
  private startMonitor(): void {
    const tick = (): void => {
      const now = this.scheduler.now;
      const alive = new Set<string>();
      for (const [id, host] of this.hosts) {
        if (host.running && this.authority.reachable(id)) {
          // The host's keepalive reached etcd: its lease, and its read fence, renewed.
          this.lastSeen.set(id, now);
          host.running.fence.renewed(now);
        }
        if (now - (this.lastSeen.get(id) ?? -Infinity) < LEASE_TTL_MS) alive.add(id);
        if (alive.has(id)) this.downSince.delete(id);
        else if (!this.downSince.has(id)) this.downSince.set(id, now);
      }
      const probe = structuredClone(this.authority.state);
      const changes = applyLiveness(probe, alive, this.downSince, now, DOWN_OUT_MS);
      if (changes.length > 0) {
        this.authority.apply((s) => applyLiveness(s, alive, this.downSince, now, DOWN_OUT_MS));
        this.log('monitor', 'liveness', { changes });
      }
      this.scheduler.schedule(MONITOR_TICK_MS, 'monitor.tick', tick);
    };
    this.scheduler.schedule(MONITOR_TICK_MS, 'monitor.tick', tick);
  }

  // ---- clients ------------------------------------------------------------------------

  /**
   * The client's gateway: the one it has while that daemon runs; else a running one
   * picked at random. A gateway daemon that restarted meanwhile is a new connection (an
   * NBD client's connection ends with the daemon): the writes acknowledged through its
   * former incarnation are not covered by a flush through the new one, which never saw
   * them — as with a new gateway.
   */
  private pickGateway(client: Client): string | undefined {
    const current = client.gateway ? this.hosts.get(client.gateway)?.running : undefined;
    if (current && current.number === client.gatewayIncarnation) return client.gateway;
    if (!current) {
      const candidates = this.hostIds.filter((h) => this.hosts.get(h)!.running);
      if (candidates.length === 0) return undefined;
      client.gateway = this.random.pick(candidates);
    }
    const running = this.hosts.get(client.gateway!)!.running!;
    client.gatewayIncarnation = running.number;
    client.flushWatch = running.gateway.flushWatch();
    client.unflushed = []; // not covered by a flush through the new gateway (incarnation)
    return client.gateway;
  }

  private nextOperation(client: Client): void {
    if (this.operationsLeft <= 0) return;
    const think = this.random.float() * 60;
    const host = this.pickGateway(client);
    if (!host) {
      this.scheduler.schedule(100, `client${client.id}.wait`, () => this.nextOperation(client));
      return;
    }
    this.operationsLeft -= 1;
    const roll = this.random.float();
    const done = (): void => {
      client.inFlight = undefined;
      this.scheduler.schedule(think, `client${client.id}.next`, () => this.nextOperation(client));
    };
    if (roll < 0.5) this.clientWrite(client, host, done);
    else if (roll < 0.85) this.clientRead(client, host, done);
    else this.clientFlush(client, host, done);
  }

  /** Runs one client operation through `host`'s gateway; abandoned if that host dies. */
  private track<T>(
    client: Client,
    host: string,
    operation: (gateway: import('../../src/replication/gateway').Gateway) => Promise<T>,
    onSuccess: (value: T) => void,
    onFailure: (error: unknown) => void,
    done: () => void,
  ): void {
    const incarnation = this.hosts.get(host)!.running!;
    let finished = false;
    const finish = (then: () => void): void => {
      if (finished) return;
      finished = true;
      then();
      done();
    };
    client.inFlight = {
      host,
      incarnation: incarnation.number,
      abandon: () => finish(() => onFailure(new CisternError('CLOSED', `gateway ${host} died`))),
    };
    operation(incarnation.gateway).then(
      (value) => finish(() => onSuccess(value)),
      (error: unknown) => finish(() => onFailure(error)),
    );
  }

  private clientWrite(client: Client, host: string, done: () => void): void {
    const now = this.scheduler.now;
    const free = this.model.blocks.filter((b) => this.model.writable(b, now));
    if (free.length === 0) {
      done();
      return;
    }
    const first = this.random.pick(free);
    const blocks = [first];
    const next = this.model.blocks.find(
      (b) => b.object === first.object && b.block === first.block + 1,
    );
    if (next && this.model.writable(next, now) && this.random.bool(0.3)) blocks.push(next);
    const fua = this.random.bool(0.2);
    const versions = blocks.map((b) => this.model.issue(b, now));
    const data = new Uint8Array(blocks.length * SIM_BLOCK_BYTES);
    blocks.forEach((b, i) =>
      data.set(encodeBlock(versions[i]!.id, b.object, b.block), i * SIM_BLOCK_BYTES),
    );
    this.stats.writes! += 1;
    const key = this.key(first.object);
    this.log(`client${client.id}`, 'write', {
      via: host,
      object: first.object,
      blocks: blocks.map((b, i) => `${b.block}=w${versions[i]!.id}`).join(' '),
      fua,
    });
    this.track(
      client,
      host,
      (gateway) => gateway.write(key, first.block * SIM_BLOCK_BYTES, data, fua),
      () => {
        this.stats.writesAcked! += 1;
        const at = this.scheduler.now;
        blocks.forEach((b, i) => {
          this.model.acked(b, versions[i]!, at, fua);
          versions[i]!.ackedWithNoUpHolder = !this.heldByAGoodMember(key, b.block, versions[i]!.id);
          if (!fua) client.unflushed.push({ block: b, version: versions[i]! });
        });
        this.scheduler.note(`ack w${versions.map((v) => v.id).join(',')}`);
      },
      (error) => {
        this.operationFailed(error);
        blocks.forEach((b, i) => this.model.unknown(b, versions[i]!, this.scheduler.now));
      },
      done,
    );
  }

  private clientRead(client: Client, host: string, done: () => void): void {
    const block = this.random.pick(this.model.blocks);
    const issuedAt = this.scheduler.now;
    this.stats.reads! += 1;
    this.track(
      client,
      host,
      (gateway) =>
        gateway.read(this.key(block.object), block.block * SIM_BLOCK_BYTES, SIM_BLOCK_BYTES),
      (bytes) =>
        this.checkRead(
          block,
          bytes,
          issuedAt,
          `read via ${host}` + (this.authority.reachable(host) ? '' : `, ${CUT_OFF_TEXT}`),
        ),
      (error) => this.operationFailed(error),
      done,
    );
  }

  private clientFlush(client: Client, host: string, done: () => void): void {
    const covered = client.unflushed;
    client.unflushed = [];
    this.stats.flushes! += 1;
    const writes = covered.map((c) => `w${c.version.id}`).join(' ');
    this.log(`client${client.id}`, 'flush', { via: host, covers: writes });
    this.track(
      client,
      host,
      (gateway) => gateway.flush(client.flushWatch),
      () => {
        this.stats.flushesOk! += 1;
        this.log(`client${client.id}`, 'flush.ok', { via: host, covers: writes });
        this.flushed(covered, host);
      },
      (error) => {
        this.log(`client${client.id}`, 'flush.failed', { via: host, error: describe(error) });
        this.operationFailed(error);
        // Not known durable: a later flush through this gateway covers them again —
        // unless the flush said EIO: then they may be lost, the client has been told, and
        // the next flush starts afresh (as the final flush below, and fsync, have it).
        if (client.gateway === host && !isCisternError(error, 'EIO'))
          client.unflushed.unshift(...covered);
      },
      done,
    );
  }

  /**
   * A FLUSH completed: the writes it covers are durable from now on (the model), and
   * each must be durable right now on every good member of its PG (up, not stale, as the
   * map has it) whose cache holds it (invariant 1, checked at the flush rather than at
   * the next power loss). A write a power loss may have taken since its ack, or one
   * acknowledged with no up holder, is left to the read checks (known bugs of their own).
   */
  private flushed(covered: Array<{ block: BlockModel; version: Version }>, host: string): void {
    const now = this.scheduler.now;
    for (const { block, version } of covered) {
      if (version.lostAt !== undefined) continue; // an accepted loss took it: nothing holds it
      version.durableAt ??= now;
      const crashed = this.model.crashes.some((t) => t > version.ackedAt!);
      if (crashed || version.ackedWithNoUpHolder) continue;
      version.leftInCacheOf = this.cachedOnlyOn(block, version.id, false);
      const missing = this.cachedOnlyOn(block, version.id, true);
      if (missing.length === 0) continue;
      this.fail(
        'inv1-durability',
        `a FLUSH through ${host} returned while write ${version.id} (object ${block.object} ` +
          `block ${block.block}, acknowledged at ${at(version.ackedAt!)}) is ${NOT_DURABLE_TEXT} ` +
          `${missing.join(', ')} (in its cache only)`,
      );
    }
  }

  /**
   * Disks whose cache holds write `id` of the block but whose medium does not: good
   * members of its PG only (up, not stale), or any disk.
   */
  private cachedOnlyOn(block: BlockModel, id: number, goodMembersOnly: boolean): number[] {
    const s = this.authority.state;
    const key = this.key(block.object);
    const media = new Map<number, DiskMedium>();
    for (const host of this.hosts.values()) for (const [d, m] of host.media) media.set(d, m);
    let disks = [...media.keys()];
    if (goodMembersOnly) {
      try {
        const table = computeTable(s.map, this.poolId);
        const pg = objectToPg(table.pool, key.volume, key.object);
        disks = state
          .actingMembers(s, table, pg)
          .filter((m) => !m.stale)
          .map((m) => m.disk);
      } catch {
        return [];
      }
    }
    const idOf = (bytes: Uint8Array | undefined): number =>
      bytes ? new DataView(bytes.buffer, bytes.byteOffset).getUint32(0) : 0;
    return disks.filter((disk) => {
      const medium = media.get(disk);
      if (!medium || medium.failed) return false;
      const cached = idOf(medium.current.get(keyName(key))?.blocks.get(block.block));
      const durable = idOf(medium.durable.get(keyName(key))?.blocks.get(block.block));
      return cached === id && durable < id;
    });
  }

  /**
   * Whether a good member of the object's PG (up and not stale in the map: one that
   * serves reads and counts for min-size) holds the write now, in its cache or durably.
   */
  private heldByAGoodMember(key: ObjectKey, block: number, id: number): boolean {
    const s = this.authority.state;
    let members: state.ActingMember[];
    try {
      const table = computeTable(s.map, this.poolId);
      members = state.actingMembers(s, table, objectToPg(table.pool, key.volume, key.object));
    } catch {
      return false;
    }
    const good = new Set(members.filter((m) => !m.stale).map((m) => m.disk));
    for (const host of this.hosts.values()) {
      for (const [disk, medium] of host.media) {
        if (!good.has(disk)) continue;
        const bytes = medium.block(key, block);
        if (new DataView(bytes.buffer, bytes.byteOffset).getUint32(0) === id) return true;
      }
    }
    return false;
  }

  private operationFailed(error: unknown): void {
    this.stats.opsFailed! += 1;
    if (!isCisternError(error)) this.fail('exception', `client operation: ${describe(error)}`);
  }

  private checkRead(block: BlockModel, bytes: Uint8Array, issuedAt: number, how: string): void {
    this.stats.readsChecked! += 1;
    const decoded = decodeBlock(bytes, block.object, block.block);
    const where = `object ${block.object} block ${block.block} (${how})`;
    if ('error' in decoded) {
      this.fail('inv2-foreign-data', `${where}: ${decoded.error}`);
      return;
    }
    this.scheduler.note(`read ${block.object}/${block.block}=${decoded.id}`);
    const { floor, ids } = this.model.allowed(block, issuedAt);
    if (ids.has(decoded.id)) return;
    const version = block.versions.find((v) => v.id === decoded.id);
    const floorVersion = block.versions.find((v) => v.id === floor);
    const durableFloor = floorVersion?.durableAt !== undefined;
    // A flush that completed after a power loss which may have taken the write it covers.
    const acrossCrash =
      floorVersion?.ackedAt !== undefined &&
      floorVersion.durableAt !== undefined &&
      this.model.crashes.some((t) => t > floorVersion.ackedAt! && t < floorVersion.durableAt!);
    // Zeros (never written) are the oldest content a block has, not foreign data.
    const kind =
      !version && decoded.id !== 0
        ? 'inv2-foreign-data'
        : durableFloor
          ? 'inv1-durability'
          : 'inv3-read-your-writes';
    this.fail(
      kind,
      `${where} returned write ${decoded.id}; allowed ${[...ids].join(',')} (floor ${floor}` +
        `${durableFloor ? ', flushed' : ''}${acrossCrash ? `, ${ACROSS_CRASH_TEXT}` : ''}` +
        `${floorVersion?.leftInCacheOf?.length ? `, ${LEFT_IN_CACHE_TEXT} ${floorVersion.leftInCacheOf.join(' ')}` : ''}` +
        `${floorVersion?.ackedWithNoUpHolder ? `, ${NO_UP_HOLDER_TEXT}` : ''}); ` +
        `history ${describeVersions(block.versions)}`,
    );
  }

  // ---- faults -------------------------------------------------------------------------

  private scheduleFault(): void {
    this.scheduler.schedule(this.random.range(100, 1500), 'fault', () => {
      if (!this.faulting) return;
      this.injectFault();
      this.scheduleFault();
    });
  }

  private injectFault(): void {
    const random = this.random;
    const roll = random.float();
    const running = this.hostIds.filter((h) => this.hosts.get(h)!.running);
    if (roll < 0.35) {
      // Power loss of one host, then a restart; at most two down at once.
      if (running.length <= this.hostIds.length - 2) return;
      const victim = random.pick(running);
      this.crash(victim);
      const quick = this.options.quickRestarts === true;
      const restartMs = quick ? random.range(50, LEASE_TTL_MS - 200) : random.range(2000, 15000);
      this.scheduler.schedule(restartMs, `restart ${victim}`, () => this.restart(victim));
    } else if (roll < 0.6) {
      if (this.network.partitioned) return;
      const sides = new Map(this.hostIds.map((h) => [h, random.int(2)]));
      this.network.partition(sides);
      // etcd keeps its quorum on one side (the larger; on a tie, the first host's): the
      // other side can neither read nor change the map, and its leases lapse. With
      // `etcdEverywhere`, both sides keep etcd (a separate etcd network), so each side
      // can mark the other's disks down.
      if (this.options.etcdEverywhere !== true) {
        const counts = [0, 1].map((side) => [...sides.values()].filter((v) => v === side).length);
        const etcdSide =
          counts[0]! === counts[1]!
            ? sides.get(this.hostIds[0]!)!
            : counts[0]! > counts[1]!
              ? 0
              : 1;
        for (const [host, side] of sides) if (side !== etcdSide) this.authority.isolated.add(host);
      }
      this.stats.partitions! += 1;
      this.log('sim', 'partition', Object.fromEntries(sides));
      this.scheduler.schedule(random.range(500, 8000), 'heal', () => this.heal());
    } else if (roll < 0.65) {
      // The operator asks for a scrub (it repairs members that differ, under load).
      this.authority.apply((s) => requestScrub(s, 'sim', new Date(this.scheduler.now)));
      this.stats.scrubs! += 1;
    } else if (roll < 0.85) {
      this.network.lossProbability = random.pick([0, 0.01, 0.05, 0.2]);
      this.scheduler.schedule(random.range(500, 5000), 'loss.end', () => {
        this.network.lossProbability = 0;
      });
    } else {
      this.failDisk();
    }
  }

  private heal(): void {
    this.network.heal();
    const isolated = [...this.authority.isolated];
    this.authority.isolated.clear();
    for (const host of isolated) this.hosts.get(host)!.running?.view.resync();
  }

  private crash(victim: string): void {
    const host = this.hosts.get(victim)!;
    const lost = host.crash();
    this.model.crashes.push(this.scheduler.now);
    for (const medium of host.media.values()) {
      for (const change of medium.lostInLastCrash) {
        if (change.kind !== 'write' || change.key.volume !== this.volumeId) continue;
        const decoded = decodeBlock(change.data, change.key.object, change.block);
        if (!('id' in decoded) || decoded.id === 0) continue;
        this.model.dropped(this.model.block(change.key.object, change.block), decoded.id);
      }
    }
    this.stats.crashes! += 1;
    this.log(victim, 'crash', { unflushedChangesLost: lost });
    for (const client of this.clients) {
      if (client.inFlight?.host === victim) client.inFlight.abandon();
    }
  }

  /**
   * Starts a crashed host again. Unless quick restarts are asked for, not before the
   * monitor has taken its disks down; `quickRestarts` brings it back within its lease,
   * where nothing but the daemon's start-up peering (restart.ts: its disks marked stale
   * where their activity records say its caches may have lost writes) covers the loss.
   */
  private restart(victim: string, quick = this.options.quickRestarts === true): void {
    const host = this.hosts.get(victim)!;
    if (host.running) return;
    const noticed = this.authority.state.map.disks
      .filter((d) => d.host === victim && !this.failedDisks.has(d.id))
      .every((d) => !d.up);
    if (!quick && !noticed) {
      this.scheduler.schedule(MONITOR_TICK_MS, `restart ${victim} (later)`, () =>
        this.restart(victim, quick),
      );
      return;
    }
    if (!noticed) this.restartedUnnoticed.add(victim);
    host.start();
    this.log(victim, 'restart');
  }

  /**
   * A disk's medium fails for good (EIO from then on): at most size−1 of them in a run,
   * each on a different host — the loss invariant 1 promises to survive.
   */
  private failDisk(): void {
    if (this.failedDisks.size >= this.size - 1) return;
    const failedHosts = new Set(
      [...this.hosts.values()]
        .filter((h) => [...h.media.keys()].some((d) => this.failedDisks.has(d)))
        .map((h) => h.id),
    );
    // Keep enough hosts with a working disk to place the pool once the failed go out.
    const whole = [...this.hosts.values()].filter((h) =>
      [...h.media.values()].some((m) => !m.failed),
    ).length;
    const wholeAfter = (host: SimHost): number =>
      whole - ([...host.media.values()].filter((m) => !m.failed).length === 1 ? 1 : 0);
    const candidates = [...this.hosts.values()]
      .filter((h) => !failedHosts.has(h.id) && wholeAfter(h) >= this.size)
      .flatMap((h) => [...h.media.values()]);
    if (candidates.length === 0) return;
    const medium = this.random.pick(candidates);
    medium.failed = true;
    this.failedDisks.add(medium.id);
    this.stats.diskFailures! += 1;
    this.log('sim', 'disk-failure', { disk: medium.id });
  }

  // ---- invariant 5 --------------------------------------------------------------------

  private checkDelivery(delivery: Delivery): void {
    if (delivery.epoch !== delivery.receiverEpoch) {
      this.fail(
        'inv5-fence',
        `${delivery.to} at epoch ${delivery.receiverEpoch} ran a type ${delivery.type} request of epoch ${delivery.epoch} from ${delivery.from}`,
      );
      return;
    }
    const writes: number[] = [
      MessageType.DiskWrite,
      MessageType.DiskTrim,
      MessageType.DiskZero,
      MessageType.DiskDelete,
    ];
    if (!writes.includes(delivery.type)) return;
    const request = delivery.metadata as { key: ObjectKey; disk: number };
    const at = this.authority.history.get(delivery.epoch);
    if (!at) return;
    const primary = primaryHostAt(at, request.key);
    if (primary !== delivery.from) {
      this.fail(
        'inv5-not-primary',
        `${delivery.to} accepted a type ${delivery.type} write to ${keyName(request.key)} on disk ${request.disk} ` +
          `from ${delivery.from}, carried at epoch ${delivery.epoch} whose primary is ${primary}`,
      );
    }
  }

  // ---- the end: heal, converge, check -------------------------------------------------

  private async endPhase(): Promise<void> {
    if (this.failures.length > 0) return;
    this.faulting = false;
    this.heal();
    this.network.lossProbability = 0;
    for (const id of this.hostIds) this.restart(id);
    // A failed disk that recovery keeps writing to must be taken out of service by the
    // errors it answers, before any operator looks at it.
    if (this.failedDisks.size > 0) {
      const start = this.scheduler.elapsedMs;
      await this.runUntil(() => false, start + FAILED_DISK_NOTICED_MS);
      if (this.failures.length > 0) return;
      const s = this.authority.state;
      // Only PGs recovery works on: those with a good member (up, not stale) to be their
      // primary. A PG whose every up member is stale is inactive — nothing writes to its
      // failed member — and the liveness check below reports it.
      const table = computeTable(s.map, this.poolId);
      const active = Object.entries(s.staleMembers).filter(([key]) =>
        state.actingMembers(s, table, Number(key.split(':')[1])).some((m) => !m.stale),
      );
      const stillUp = s.map.disks.filter(
        (d) =>
          this.failedDisks.has(d.id) &&
          d.up &&
          active.some(([, members]) => members.includes(d.id)),
      );
      if (stillUp.length > 0) {
        this.fail(
          'liveness',
          `${FAILED_TARGET_TEXT}: disk(s) ${stillUp.map((d) => d.id).join(', ')} failed, up in the map ` +
            `and stale in PGs recovery works on, ${FAILED_DISK_NOTICED_MS} ms after healing`,
        );
        return;
      }
    }
    // The operator replaces failed disks: out of the map, so their PGs are re-placed.
    if (this.failedDisks.size > 0) {
      this.authority.apply((s) => {
        for (const disk of s.map.disks) {
          if (!this.failedDisks.has(disk.id)) continue;
          state.markDiskDown(s, disk.id, 'EIO: failed; replaced by the operator');
          disk.in = false;
        }
      });
    }
    const healedAt = this.scheduler.elapsedMs;
    let clean = await this.runUntil(
      () => this.clean() || this.incompleteOnly().length > 0,
      healedAt + LIVENESS_BOUND_MS,
    );
    if (clean && !this.clean()) {
      // PGs whose every complete copy was on the failed disks: the operator follows
      // `cistern status` and accepts the loss; what that loses is checked here.
      if (!(await this.acceptLosses(this.incompleteOnly()))) return;
      const acceptedAt = this.scheduler.elapsedMs;
      clean = await this.runUntil(() => this.clean(), acceptedAt + LIVENESS_BOUND_MS);
    }
    if (!clean) {
      if (this.failures.length === 0)
        this.fail('liveness', `not clean ${LIVENESS_BOUND_MS} ms after healing: ${this.unclean()}`);
      return;
    }
    if (!(await this.flushEveryClient())) return;
    // A final flush may take out a member whose flush failed (it comes back stale and is
    // recovered): clean again first.
    const flushedAt = this.scheduler.elapsedMs;
    if (!(await this.runUntil(() => this.clean(), flushedAt + LIVENESS_BOUND_MS))) {
      if (this.failures.length === 0)
        this.fail('liveness', `not clean after the final flushes: ${this.unclean()}`);
      return;
    }
    await this.readEverything('after healing');
    if (this.failures.length > 0) return;
    this.compareReplicas();
    if (this.failures.length > 0) return;
    await this.scrubEverything();
    if (this.failures.length > 0) return;
    // Invariant 1 the hard way: every host loses power at once, then restarts.
    // Everything was flushed: a restart before the monitor notices loses nothing, and
    // brings no member back stale (nothing to recover).
    for (const id of this.hostIds) this.crash(id);
    for (const id of this.hostIds) this.restart(id, true);
    const restartedAt = this.scheduler.elapsedMs;
    if (!(await this.runUntil(() => this.clean(), restartedAt + LIVENESS_BOUND_MS))) {
      if (this.failures.length === 0)
        this.fail('liveness', `not clean after a power loss of every host: ${this.unclean()}`);
      return;
    }
    // Not compared again: writes acknowledged through a gateway that later died were
    // never flushed by anyone, and a power loss may keep them on some replicas only.
    // Finding such objects after a crash is issue 5's activity record (not built yet);
    // until then only the model's reads are checked here.
    await this.readEverything('after a power loss of every host', true);
  }

  /**
   * The copies are identical (compareReplicas): a scrub through every daemon's real
   * ScrubWorker must finish and agree — no disagreement, no error, every object seen.
   */
  private async scrubEverything(): Promise<void> {
    const request = this.authority.apply((s) =>
      requestScrub(s, 'sim', new Date(this.scheduler.now)),
    );
    const status = () => scrubStatusOf(this.authority.state, request.id, this.hostIds);
    const done = await this.runUntil(
      () => status().done,
      this.scheduler.elapsedMs + LIVENESS_BOUND_MS,
    );
    if (!done) {
      if (this.failures.length === 0) this.fail('liveness', 'the final scrub did not finish');
      return;
    }
    const reports = status().reports;
    const bad = reports.filter((r) => r.disagreements > 0 || r.errors > 0);
    if (bad.length > 0) {
      // Whether every error is a member refusing the scrub's request for its old epoch.
      const staleOnly = bad.every(
        (r) =>
          r.disagreements === 0 &&
          r.examples.every((e) => /older than ours|behind the request/.test(e)),
      );
      // A failure matching a known bug found here would end the run before the power
      // loss check; recorded, it is reported after everything else instead.
      (staleOnly ? this.deferFailure : this.fail).call(
        this,
        'inv4-replicas-differ',
        `scrub of identical copies reports` +
          (staleOnly ? ` (${SCRUB_STALE_EPOCH_TEXT})` : '') +
          ` ${bad
            .map(
              (r) =>
                `${r.host}: ${r.disagreements} disagreements, ${r.errors} errors (${r.examples.join('; ')})`,
            )
            .join('; ')}`,
      );
    }
    this.stats.scrubbedObjects = reports.reduce((sum, r) => sum + r.objects, 0);
  }

  /**
   * The incomplete PGs (state.incompletePgs) when they are all that keeps the cluster
   * from clean — every non-failed disk up and in, every map current, every stale or
   * retained member in one of them, each with a record whose members all failed for
   * good — else none. A PG all stale with no record is not one: nothing excuses it.
   */
  private incompleteOnly(): state.IncompletePg[] {
    const s = this.authority.state;
    const incomplete = state.incompletePgs(s);
    if (incomplete.length === 0) return [];
    const keys = new Set(incomplete.map((pg) => state.pgKey(pg.pool, pg.pg)));
    if (
      incomplete.some((pg) => pg.lost.length === 0 || pg.lost.some((d) => !this.failedDisks.has(d)))
    )
      return [];
    if (Object.keys(s.staleMembers).some((key) => !keys.has(key))) return [];
    if (Object.keys(s.retainedMembers).some((key) => !keys.has(key))) return [];
    for (const disk of s.map.disks) {
      if (!this.failedDisks.has(disk.id) && (!disk.up || !disk.in)) return [];
    }
    for (const host of this.hosts.values()) {
      if (host.running?.view.current().map.epoch !== s.map.epoch) return [];
    }
    return incomplete;
  }

  /**
   * The operator accepts the loss of each incomplete PG, as `cistern status` tells it
   * to (which it must say); the daemon that peers the PG then chooses the copy to serve
   * from its members' PG logs. The checker judges that choice against the copies as they
   * were when the loss was accepted (nothing writes to an incomplete PG, and recovery
   * overwrites the others once a copy is chosen): if the served copy holds every
   * acknowledged write of the PG's objects, nothing is lost; if it does not but another
   * surviving disk did, the choice loses data needlessly (a failure); if no surviving
   * disk did, the writes are truly gone — min-size members acknowledged them and those
   * disks failed for good — and the model is told the blocks now read as the served
   * copy. Returns false on a failure.
   */
  private async acceptLosses(incomplete: state.IncompletePg[]): Promise<boolean> {
    const s = this.authority.state;
    const messages = incompleteMessages(s);
    const reported = pgStates(s, this.poolId).incomplete;
    for (const pg of incomplete) {
      if (
        reported !== incomplete.length ||
        !messages.some((m) => m.includes(`PG sim/${pg.pg} is incomplete`))
      ) {
        this.fail(
          'liveness',
          `status does not report PG ${pg.pg} as incomplete: ${messages.join(' ')}`,
        );
        return false;
      }
    }
    const media = new Map<number, DiskMedium>();
    for (const host of this.hosts.values()) for (const [id, m] of host.media) media.set(id, m);
    const now = this.scheduler.now;
    // Per PG, per surviving disk: what each of the PG's blocks holds there now.
    const judged: Array<{
      pg: state.IncompletePg;
      blocks: BlockModel[];
      held: Map<number, Array<ReturnType<typeof decodeBlock>>>;
    }> = [];
    for (const pg of incomplete) {
      const table = computeTable(s.map, this.poolId);
      const blocks = this.model.blocks.filter(
        (b) => objectToPg(table.pool, this.volumeId, b.object) === pg.pg,
      );
      const held = new Map<number, Array<ReturnType<typeof decodeBlock>>>();
      for (const medium of media.values()) {
        if (medium.failed) continue;
        held.set(
          medium.id,
          blocks.map((b) =>
            decodeBlock(medium.block(this.key(b.object), b.block), b.object, b.block),
          ),
        );
      }
      judged.push({ pg, blocks, held });
      this.log('operator', 'accept-loss', { pg: pg.pg, lost: pg.lost, members: pg.members });
      this.authority.apply((next) => state.acceptPgLoss(next, pg.pool, pg.pg));
    }
    const served = (pg: state.IncompletePg): number | undefined => {
      const key = state.pgKey(pg.pool, pg.pg);
      const after = this.authority.state;
      return after.acceptedLosses?.[key] === undefined
        ? after.authoritativeMembers[key]?.[0]
        : undefined;
    };
    const chosen = await this.runUntil(
      () => judged.every(({ pg }) => served(pg) !== undefined),
      this.scheduler.elapsedMs + LIVENESS_BOUND_MS,
    );
    if (!chosen) {
      if (this.failures.length === 0)
        this.fail('liveness', `no daemon served the PGs whose loss was accepted`);
      return false;
    }
    for (const { pg, blocks, held } of judged) {
      const best = served(pg)!;
      const holdsEveryAck = (disk: number): boolean =>
        blocks.every((b, i) => {
          const decoded = held.get(disk)?.[i];
          return (
            decoded !== undefined &&
            'id' in decoded &&
            this.model.allowed(b, now).ids.has(decoded.id)
          );
        });
      const complete = [...held.keys()].filter(holdsEveryAck);
      if (!holdsEveryAck(best)) {
        if (complete.length > 0) {
          this.fail(
            'inv1-durability',
            `${WRONG_COPY_TEXT}: PG ${pg.pg} served from disk ${best} while disk(s) ` +
              `${complete.join(', ')} held every acknowledged write ` +
              `(stale ${JSON.stringify(s.staleMembers[state.pgKey(pg.pool, pg.pg)])} since ` +
              `${JSON.stringify(Object.entries(s.staleSince).filter(([k]) => k.startsWith(`${state.pgKey(pg.pool, pg.pg)}:`)))}, ` +
              `lost ${pg.lost.join(',')})`,
          );
          return false;
        }
        for (const [i, b] of blocks.entries()) {
          const decoded = held.get(best)![i]!;
          if ('error' in decoded) {
            this.fail(
              'inv2-foreign-data',
              `object ${b.object} block ${b.block} on disk ${best}: ${decoded.error}`,
            );
            return false;
          }
          this.model.revert(b, decoded.id, now);
        }
        this.stats.pgsLost! += 1;
      }
      this.stats.pgsAccepted! += 1;
      this.log('operator', 'accept-loss.served', { pg: pg.pg, best, lost: pg.lost });
    }
    return true;
  }

  /** Every host's map is the authority's; every non-failed disk up; no stale or retained member. */
  private clean(): boolean {
    const s = this.authority.state;
    if (Object.keys(s.staleMembers).length > 0 || Object.keys(s.retainedMembers).length > 0)
      return false;
    for (const disk of s.map.disks) {
      if (!this.failedDisks.has(disk.id) && (!disk.up || !disk.in)) return false;
    }
    for (const host of this.hosts.values()) {
      if (host.running?.view.current().map.epoch !== s.map.epoch) return false;
    }
    return true;
  }

  private unclean(): string {
    const s = this.authority.state;
    const down = s.map.disks.filter((d) => !this.failedDisks.has(d.id) && (!d.up || !d.in));
    let allStale: string[] = [];
    try {
      const table = computeTable(s.map, this.poolId);
      allStale = Object.keys(s.staleMembers).filter((key) => {
        const members = state.actingMembers(s, table, Number(key.split(':')[1]));
        return members.length > 0 && members.every((m) => m.stale);
      });
    } catch {
      // unplaceable: said by the rest of the text
    }
    // Split by whether the PG's recorded authoritative members all failed for good.
    const lost = allStale.filter((key) => {
      const authoritative = s.authoritativeMembers?.[key] ?? [];
      return authoritative.length > 0 && authoritative.every((d) => this.failedDisks.has(d));
    });
    const otherwise = allStale.filter((key) => !lost.includes(key));
    return (
      `${ALL_STALE_TEXT} [${lost.join(' ')}]; other PGs with every up member stale: [${otherwise.join(' ')}]; ` +
      `stale ${JSON.stringify(s.staleMembers)}, retained ${JSON.stringify(s.retainedMembers)}, ` +
      `authoritative ${JSON.stringify(s.authoritativeMembers)}, ` +
      `disks not up+in ${down.map((d) => `${d.id}@${d.host}(${s.disks[String(d.id)]?.error ?? ''})`).join(' ')}`
    );
  }

  /** Runs one gateway call to completion; a failure ends the run (liveness). */
  private async settle<T>(what: string, call: () => Promise<T>): Promise<T | undefined> {
    let outcome: { value: T } | { error: unknown } | undefined;
    call().then(
      (value) => (outcome = { value }),
      (error: unknown) => (outcome = { error }),
    );
    await drainMicrotasks();
    const deadline = this.scheduler.elapsedMs + LIVENESS_BOUND_MS;
    await this.runUntil(() => outcome !== undefined, deadline);
    if (outcome === undefined) {
      if (this.failures.length === 0) this.fail('liveness', `${what} did not finish`);
      return undefined;
    }
    if ('error' in outcome) {
      this.fail('liveness', `${what} failed once healed: ${describe(outcome.error)}`);
      return undefined;
    }
    return outcome.value;
  }

  private async flushEveryClient(): Promise<boolean> {
    for (const client of this.clients) {
      const host = this.pickGateway(client);
      if (!host) return false;
      const covered = client.unflushed;
      client.unflushed = [];
      const gateway = this.hosts.get(host)!.running!.gateway;
      // EIO is a flush's honest answer when writes it covers may have been lost (their
      // holders failed or restarted): they are then not durable, and the next flush
      // starts afresh — which must succeed.
      const outcome = await this.settle(`final flush via ${host}`, async () => {
        try {
          await gateway.flush(client.flushWatch);
          return 'durable' as const;
        } catch (error) {
          if (isCisternError(error, 'EIO')) return 'maybe lost' as const;
          throw error;
        }
      });
      if (!outcome) return false;
      if (outcome === 'maybe lost') {
        const again = await this.settle(`final flush via ${host} after an EIO`, async () => {
          await gateway.flush(client.flushWatch);
          return true;
        });
        if (!again) return false;
        continue;
      }
      this.flushed(covered, host);
    }
    return true;
  }

  /** Every block through every gateway (invariants 1–3). */
  private async readEverything(when: string, afterPowerLoss = false): Promise<void> {
    for (const hostId of this.hostIds) {
      const gateway = this.hosts.get(hostId)!.running!.gateway;
      for (const block of this.model.blocks) {
        const issuedAt = this.scheduler.now;
        const bytes = await this.settle(
          `read of ${block.object}/${block.block} via ${hostId} ${when}`,
          () =>
            gateway.read(this.key(block.object), block.block * SIM_BLOCK_BYTES, SIM_BLOCK_BYTES),
        );
        if (!bytes) return;
        this.checkRead(block, bytes, issuedAt, `via ${hostId} ${when}`);
        if (afterPowerLoss) {
          // Everything acknowledged was flushed at the end: nothing may be missing now.
          const latest = this.model.latestAcked(block);
          const decoded = decodeBlock(bytes, block.object, block.block);
          if (latest?.durableAt !== undefined && 'id' in decoded && decoded.id < latest.id) {
            this.fail(
              'inv1-durability',
              `object ${block.object} block ${block.block} lost flushed write ${latest.id} (reads ${decoded.id}) ${when}`,
            );
          }
        }
        if (this.failures.length > 0) return;
      }
    }
  }

  /** Invariant 4: every object's copies on the PG's acting members are identical. */
  private compareReplicas(): void {
    const s = this.authority.state;
    const table = computeTable(s.map, this.poolId);
    const media = new Map<number, DiskMedium>();
    for (const host of this.hosts.values()) for (const [id, m] of host.media) media.set(id, m);
    for (let object = 0; object < this.objects; object += 1) {
      const key = this.key(object);
      const pg = objectToPg(table.pool, key.volume, key.object);
      const members = state.actingMembers(s, table, pg).map((m) => m.disk);
      if (members.length !== this.size) {
        this.fail(
          'liveness',
          `object ${object}: PG ${pg} has ${members.length} acting members (row ${[...pgRow(table, pg)].join(',')}; down ${s.map.disks
            .filter((d) => !d.up)
            .map((d) => `${d.id}: ${s.disks[String(d.id)]?.error}`)
            .join('; ')})`,
        );
        return;
      }
      const describeCopy = (disk: number): string => {
        const blocks = media.get(disk)!.current.get(keyName(key))?.blocks;
        if (!blocks) return '-';
        return [...blocks.keys()]
          .sort((a, b) => a - b)
          .map((b) => {
            const decoded = decodeBlock(blocks.get(b)!, object, b);
            return `${b}:${'id' in decoded ? decoded.id : decoded.error}`;
          })
          .join(' ');
      };
      const copies = members.map((disk) => describeCopy(disk));
      if (new Set(copies).size > 1) {
        // Which writes the copies disagree on, and whether each failed at its client.
        const differing = new Set<number>();
        for (let b = 0; b < this.blocksPerObject; b += 1) {
          const ids = members.map((disk) => {
            const bytes = media.get(disk)!.current.get(keyName(key))?.blocks.get(b);
            const decoded = bytes ? decodeBlock(bytes, object, b) : { id: 0 };
            return 'id' in decoded ? decoded.id : -1;
          });
          if (new Set(ids).size > 1) for (const id of ids) differing.add(id);
        }
        const versions = this.model.blocks
          .filter((b) => b.object === object)
          .flatMap((b) => b.versions);
        const newest = Math.max(...differing);
        const failedOnly = versions.some((v) => v.id === newest && v.failedAt !== undefined);
        const hostOf = (disk: number): string | undefined =>
          s.map.disks.find((d) => d.id === disk)?.host;
        const unnoticed = members.some((d) => this.restartedUnnoticed.has(hostOf(d) ?? ''));
        this.fail(
          'inv4-replicas-differ',
          `object ${object} (PG ${pg}, row ${[...pgRow(table, pg)].join(',')}) differs` +
            (failedOnly ? ` (${FAILED_WRITES_TEXT})` : '') +
            (unnoticed ? ` (${UNNOTICED_RESTART_TEXT})` : '') +
            ': ' +
            members.map((d, i) => `disk ${d} [${copies[i]}]`).join(' vs '),
        );
      }
    }
  }
}

/** The host of a PG's primary in a given state, as Gateway.primaryOfPg chooses it. */
function primaryHostAt(s: state.ClusterState, key: ObjectKey): string | undefined {
  let table;
  try {
    table = computeTable(s.map, key.pool);
  } catch {
    return undefined;
  }
  const pg = objectToPg(table.pool, key.volume, key.object);
  const members = state.actingMembers(s, table, pg);
  const chosen = members.find((m) => !m.stale) ?? members[0];
  return chosen ? table.topology.disksById.get(chosen.disk)?.host : undefined;
}

function describeVersions(versions: Version[]): string {
  return versions
    .map(
      (v) =>
        `w${v.id}@${at(v.issuedAt)}` +
        (v.ackedAt !== undefined ? ` ack@${at(v.ackedAt)}` : '') +
        (v.durableAt !== undefined ? ` durable@${at(v.durableAt)}` : '') +
        (v.failedAt !== undefined ? ` failed@${at(v.failedAt)}` : ''),
    )
    .join('; ');
}

function at(ms: number): string {
  return `${(ms - SIM_EPOCH_MS).toFixed(1)}ms`;
}

function describe(error: unknown): string {
  if (error instanceof Error) return `${error.name}: ${error.message}\n${error.stack ?? ''}`;
  return String(error);
}
