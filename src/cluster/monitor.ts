// The monitor: one daemon at a time, elected through etcd, turns host liveness into map
// changes. A host whose liveness key vanished (its lease lapsed: the daemon hung, died or
// lost etcd) has its disks marked down; still gone after downOutIntervalS, out (its data
// is then re-placed elsewhere); back again, up and in.
//
// The decision is a pure function (applyLiveness) of the state, the set of live hosts,
// when each absent host was first seen absent, the time, and which disks its peers could
// not reach are still held down (UnreachableHold); the Monitor class is the
// shell that campaigns, watches PREFIX/alive/, ticks, and applies decisions with a
// transaction guarded by its campaign key (a monitor whose lease lapsed cannot write).

import type { Campaign, Watcher } from 'etcd3';
import { assert } from '../util/assert';
import { isCisternError } from '../util/errors';
import type { Log } from '../daemon/log';
import { type ClusterState, UNREACHABLE_PREFIX, downBecauseHostAway } from './state';
import { computeTable } from '../placement/straw2';
import type { AliveRecord, EtcdClusterStore } from './etcd';

/** Down → out after this long by default (Ceph's mon_osd_down_out_interval is 600 s too). */
export const DOWN_OUT_INTERVAL_DEFAULT_S = 600;
/** The monitor re-checks liveness this often even without a watch event. */
export const MONITOR_CHECK_INTERVAL_DEFAULT_MS = 1000;
/** Lease of the monitor's campaign key: a dead monitor is replaced after about this long. */
export const MONITOR_ELECTION_TTL_DEFAULT_S = 10;
/** Pause before campaigning again after a campaign failed (etcd unreachable). */
export const MONITOR_RECAMPAIGN_DELAY_MS = 1000;
/**
 * How long a disk its peers could not reach (UNREACHABLE) stays down while its host's
 * liveness key is still the one it had when the monitor first saw the disk so. A daemon
 * killed with kill -9 keeps its key until its lease lapses (HOST_LEASE_TTL_DEFAULT_S,
 * 10 s): re-admitting its disks on that key alone brought them back every monitor tick,
 * each time a stale member that the next write found dead again — two map changes a
 * second, every request in flight refused for its old epoch, client I/O failing. Past
 * the default lease plus two checks, a key still there is a live daemon. A host that
 * re-registered (a restart) or was absent meanwhile gets its disks back at once.
 */
export const UNREACHABLE_READMIT_HOLD_MS = 12_000;

export interface MonitorOptions {
  /** Who campaigns: this daemon's host id (the election's value). */
  hostId: string;
  downOutIntervalS?: number;
  log?: Log;
  electionTtlS?: number;
  checkIntervalMs?: number;
  /** Milliseconds clock for down → out; tests may drive it. */
  now?: () => number;
}

export interface LivenessChange {
  host: string;
  change: 'down' | 'out' | 'up';
  disks: number[];
}

/**
 * What a disk marked down by the monitor carries as its error. The monitor brings back
 * only disks carrying it, so a disk down for its own fault (EIO) stays down when its
 * host returns.
 */
export function hostDownReason(hostId: string): string {
  return `host ${hostId} is down: its daemon stopped renewing its liveness lease`;
}

/**
 * Applies liveness to `state` (mutating it) and says what changed. Absent hosts: up
 * disks go down; after `downOutMs` since `downSinceMs[host]`, the disks the monitor took
 * down go out. Live hosts: disks the monitor took down come back up and in, and so do
 * disks peers could not reach, except those in `held` (UnreachableHold).
 */
export function applyLiveness(
  state: ClusterState,
  alive: ReadonlySet<string>,
  downSinceMs: ReadonlyMap<string, number>,
  nowMs: number,
  downOutMs: number,
  held: ReadonlySet<number> = new Set(),
): LivenessChange[] {
  assert(Number.isFinite(nowMs) && downOutMs >= 0, 'bad liveness clock');
  const changes: LivenessChange[] = [];
  for (const host of state.map.hosts) {
    const reason = hostDownReason(host.id);
    const disks = state.map.disks.filter((d) => d.host === host.id);
    const location = (id: number) => {
      const found = state.disks[String(id)];
      assert(found, `disk ${id} has no location`);
      return found;
    };
    if (alive.has(host.id)) {
      // Re-admitting a host whose data may be stale (writes went to the other replicas
      // while it was away) needs peering and recovery before it serves reads: issue 5.
      const back = disks.filter(
        (d) => !d.up && !held.has(d.id) && downBecauseHostAway(location(d.id).error, reason),
      );
      for (const disk of back) {
        disk.up = true;
        disk.in = true;
        delete location(disk.id).error;
      }
      if (back.length > 0) changes.push({ host: host.id, change: 'up', disks: ids(back) });
      continue;
    }
    const down = disks.filter((d) => d.up);
    for (const disk of down) {
      disk.up = false;
      location(disk.id).error = reason;
    }
    if (down.length > 0) changes.push({ host: host.id, change: 'down', disks: ids(down) });
    const since = downSinceMs.get(host.id);
    if (since === undefined || nowMs - since < downOutMs) continue;
    const out = disks.filter(
      (d) => d.in && !d.up && downBecauseHostAway(location(d.id).error, reason),
    );
    if (out.length === 0) continue;
    const placeable = placeablePools(state);
    for (const disk of out) disk.in = false;
    if (placeablePools(state) < placeable) {
      // Too few hosts would be left to place a pool: its PGs would all go inactive, and
      // the map cannot tell, on the way back, which members a re-placement added (the
      // simulator's soak seed 1280: a disk brought back in joined PGs as if it held
      // their data). The disks stay down and in until the host returns or an operator
      // takes them out.
      for (const disk of out) disk.in = true;
      continue;
    }
    changes.push({ host: host.id, change: 'out', disks: ids(out) });
  }
  return changes;
}

/** How many of the map's pools can be placed (computeTable succeeds). */
function placeablePools(state: ClusterState): number {
  let placeable = 0;
  for (const pool of state.map.pools) {
    try {
      computeTable(state.map, pool.id);
      placeable += 1;
    } catch {
      // too few hosts or disks in for this pool
    }
  }
  return placeable;
}

/**
 * Which disks marked UNREACHABLE by a peer are still held down, decided per check from
 * what this monitor has seen since it first saw each so marked: held while its host's
 * liveness key has stayed the same registration (AliveRecord.since) for less than
 * UNREACHABLE_READMIT_HOLD_MS; released once the host re-registered (a restarted daemon)
 * or was seen absent (its lease lapsed: the monitor's own down path takes over). Pure
 * apart from the clock it is given.
 */
export class UnreachableHold {
  private readonly seen = new Map<number, { sinceMs: number; registration?: string }>();

  constructor(private readonly holdMs = UNREACHABLE_READMIT_HOLD_MS) {
    assert(holdMs >= 0, `bad hold ${holdMs}`);
  }

  /** The disks to keep down in this check. */
  check(state: ClusterState, alive: ReadonlyMap<string, AliveRecord>, nowMs: number): Set<number> {
    const held = new Set<number>();
    const marked = new Set<number>();
    for (const disk of state.map.disks) {
      const error = state.disks[String(disk.id)]?.error;
      if (disk.up || error === undefined || !error.startsWith(UNREACHABLE_PREFIX)) continue;
      marked.add(disk.id);
      const registration = alive.get(disk.host)?.since;
      let entry = this.seen.get(disk.id);
      if (!entry) {
        entry = { sinceMs: nowMs, ...(registration !== undefined ? { registration } : {}) };
        this.seen.set(disk.id, entry);
      }
      const sameRegistration = registration !== undefined && registration === entry.registration;
      // Absent once is enough: a later key is a new registration.
      if (registration === undefined) delete entry.registration;
      if (sameRegistration && nowMs - entry.sinceMs < this.holdMs) held.add(disk.id);
    }
    for (const id of [...this.seen.keys()]) if (!marked.has(id)) this.seen.delete(id);
    return held;
  }

  clear(): void {
    this.seen.clear();
  }
}

function ids(disks: Array<{ id: number }>): number[] {
  return disks.map((d) => d.id);
}

/** Thrown inside a mutation to abandon it: the fresh state needs no change. */
class NothingToDo extends Error {}

export class Monitor {
  readonly hostId: string;
  private readonly log: Log;
  private readonly downOutMs: number;
  private readonly electionTtlS: number;
  private readonly checkIntervalMs: number;
  private readonly now: () => number;
  private campaign: Campaign | undefined;
  private campaignKey: string | undefined;
  private aliveWatcher: Watcher | undefined;
  private tick: NodeJS.Timeout | undefined;
  private recampaignTimer: NodeJS.Timeout | undefined;
  /** When each absent host was first seen absent by this monitor, in now() ms. */
  private readonly downSinceMs = new Map<string, number>();
  /** Disks peers could not reach, held down while their host may be a dead daemon. */
  private readonly unreachable = new UnreachableHold();
  private running: Promise<void> | undefined;
  private rerun = false;
  private closed = false;

  constructor(
    private readonly store: EtcdClusterStore,
    options: MonitorOptions,
  ) {
    this.log = options.log ?? store.log;
    const downOutS = options.downOutIntervalS ?? DOWN_OUT_INTERVAL_DEFAULT_S;
    assert(Number.isFinite(downOutS) && downOutS >= 0, `bad downOutIntervalS ${downOutS}`);
    this.downOutMs = downOutS * 1000;
    this.electionTtlS = options.electionTtlS ?? MONITOR_ELECTION_TTL_DEFAULT_S;
    assert(Number.isInteger(this.electionTtlS) && this.electionTtlS >= 1, 'bad election TTL');
    this.checkIntervalMs = options.checkIntervalMs ?? MONITOR_CHECK_INTERVAL_DEFAULT_MS;
    assert(this.checkIntervalMs >= 10, 'monitor check interval under 10 ms');
    this.now = options.now ?? Date.now;
    this.hostId = options.hostId;
  }

  /** True while this monitor is the elected one. */
  isLeader(): boolean {
    return this.campaignKey !== undefined;
  }

  start(): void {
    if (this.closed) return;
    const campaign = this.store.monitorElection(this.electionTtlS).campaign(this.hostId);
    this.campaign = campaign;
    campaign.on('elected', () => {
      this.lead(campaign).catch((error: unknown) => {
        this.log('monitor.lead-failed', { error });
        this.follow();
      });
    });
    campaign.on('error', (error) => {
      if (campaign !== this.campaign || this.closed) return;
      this.log('monitor.campaign-failed', { host: this.hostId, error });
      this.follow();
      this.campaign = undefined;
      this.recampaignTimer = setTimeout(() => this.start(), MONITOR_RECAMPAIGN_DELAY_MS);
    });
  }

  private async lead(campaign: Campaign): Promise<void> {
    if (this.closed || campaign !== this.campaign) return;
    const key = await campaign.getCampaignKey();
    const aliveWatcher = await this.store.client.watch().prefix(this.store.aliveKey('')).create();
    if (this.closed || campaign !== this.campaign) {
      await aliveWatcher.cancel();
      return;
    }
    this.campaignKey = key;
    this.aliveWatcher = aliveWatcher;
    aliveWatcher.on('put', () => this.check());
    aliveWatcher.on('delete', () => this.check());
    this.tick = setInterval(() => this.check(), this.checkIntervalMs);
    this.log('monitor.elected', { host: this.hostId });
    this.check();
  }

  /** Stops acting as monitor (still campaigning, unless closed). */
  private follow(): void {
    if (this.campaignKey !== undefined) this.log('monitor.stepped-down', { host: this.hostId });
    this.campaignKey = undefined;
    if (this.tick) clearInterval(this.tick);
    this.tick = undefined;
    void this.aliveWatcher?.cancel().catch(() => undefined);
    this.aliveWatcher = undefined;
    this.downSinceMs.clear();
    this.unreachable.clear();
  }

  /** Runs a liveness check now, or right after the one in progress. */
  check(): void {
    if (this.campaignKey === undefined) return;
    if (this.running) {
      this.rerun = true;
      return;
    }
    this.running = (async () => {
      do {
        this.rerun = false;
        await this.reconcile().catch((error: unknown) =>
          this.log('monitor.check-failed', { error }),
        );
      } while (this.rerun && this.campaignKey !== undefined);
      this.running = undefined;
    })();
  }

  /** Resolves when no check is running (tests). */
  async settled(): Promise<void> {
    while (this.running) await this.running;
  }

  private async reconcile(): Promise<void> {
    const key = this.campaignKey;
    if (key === undefined) return;
    const records = await this.store.aliveHosts();
    const alive = new Set(records.keys());
    const nowMs = this.now();
    for (const host of this.store.current().map.hosts) {
      if (alive.has(host.id)) this.downSinceMs.delete(host.id);
      else if (!this.downSinceMs.has(host.id)) this.downSinceMs.set(host.id, nowMs);
    }
    // The hold is judged on the very state the decision changes (a transaction may be
    // retried on a newer one, where a peer just marked another disk unreachable).
    const decide = (state: ClusterState): LivenessChange[] => {
      const held = this.unreachable.check(state, records, nowMs);
      return applyLiveness(state, alive, this.downSinceMs, nowMs, this.downOutMs, held);
    };
    if (decide(structuredClone(this.store.current())).length === 0) return;
    let changes: LivenessChange[];
    try {
      changes = await this.store.updateGuarded(key, (state) => {
        const found = decide(state);
        if (found.length === 0) throw new NothingToDo();
        return found;
      });
    } catch (error) {
      if (error instanceof NothingToDo) return;
      if (isCisternError(error, 'EPERM')) {
        this.log('monitor.lost-lead', { host: this.hostId, error });
        this.follow();
        return;
      }
      throw error;
    }
    const epoch = this.store.current().map.epoch;
    for (const change of changes) {
      this.log(`monitor.host-${change.change}`, { host: change.host, disks: change.disks, epoch });
    }
  }

  /** Stops acting and resigns, so another daemon's campaign wins at once. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    if (this.recampaignTimer) clearTimeout(this.recampaignTimer);
    const wasLeader = this.isLeader();
    this.follow();
    await this.settled();
    await this.campaign?.resign().catch(() => undefined);
    this.campaign = undefined;
    if (wasLeader) this.log('monitor.resigned', { host: this.hostId });
    this.store.forgetMonitor(this);
  }
}
