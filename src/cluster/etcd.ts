// The cluster store of a multi-host cluster, on etcd. Everything lives under one key
// prefix (default /cistern/):
//
//   PREFIX/state               the whole ClusterState as one msgpack record
//   PREFIX/alive/<hostId>      one key per live daemon, attached to that daemon's lease
//   PREFIX/election/monitor/…  the monitor election (etcd3's Election, keys on leases)
//
// Every change is one etcd transaction: "if PREFIX/state still has the mod revision we
// read, put the mutated state (epoch + 1), else give us the current one". On a conflict
// the mutation is re-run on the fresh state, a bounded number of times. A watch on
// PREFIX/state keeps current() fresh; states are adopted only in increasing revision
// order, so subscribers see epochs increase and never go backwards.
//
// Why one record rather than a key per host, disk, pool and volume: every update is
// then atomic and epoch-bumping by construction, and a daemon's copy is one consistent
// snapshot. The cost is that the record must fit etcd's request limit (1.5 MiB by
// default, some ten thousand volumes); moving volumes to keys of their own, still
// changed in the same transaction as the epoch, is the way out when that matters.

import { Election, Etcd3, Lease, Watcher } from 'etcd3';
import { pack, unpack } from 'msgpackr';
import { assert, AssertionError } from '../util/assert';
import { CisternError } from '../util/errors';
import type { Log } from '../daemon/log';
import { ClusterState, addHost, markNewMembersStale } from './state';
import { ClusterStore } from './store';
import { Monitor, MonitorOptions } from './monitor';

export const ETCD_PREFIX_DEFAULT = '/cistern/';
export const STATE_KEY = 'state';
export const ALIVE_DIR = 'alive/';
export const MONITOR_ELECTION = 'monitor';
/** Conflicting transactions before update() gives up: far above any real contention. */
export const UPDATE_ATTEMPTS_MAX = 64;
/** Random pause between conflicting attempts, so racing writers spread out. */
export const UPDATE_RETRY_JITTER_MS_MAX = 20;
/** etcd refuses requests over 1.5 MiB by default (--max-request-bytes). */
export const STATE_RECORD_MAX_BYTES = 1536 * 1024 - 4096;
/** How long a connection attempt to etcd may take before the call fails. */
export const ETCD_DIAL_TIMEOUT_MS = 5000;
/** Liveness lease: a host whose daemon stops renewing it is down after this long. */
export const HOST_LEASE_TTL_DEFAULT_S = 10;
/** etcd's smallest lease TTL is about 1.5 election timeouts (2 s with its defaults). */
export const HOST_LEASE_TTL_MIN_S = 2;
export const HOST_LEASE_TTL_MAX_S = 300;
/** Keepalive send times kept awaiting their answers (etcd3 sends one every TTL/3). */
const KEEPALIVES_UNANSWERED_MAX = 8;
/** Host ids become etcd key parts and log fields: keep them plain. */
export const HOST_ID_PATTERN = /^[a-zA-Z0-9][a-zA-Z0-9._-]{0,63}$/;

export interface EtcdStoreOptions {
  /** Client URLs, e.g. ["http://10.0.0.1:2379"]. */
  endpoints: string[];
  /** Key prefix of this cluster; must start and end with "/". */
  prefix?: string;
  log?: Log;
  /**
   * Keep current() fresh through a watch (default true). One-shot users (the CLI) may
   * skip it: update() works from whatever it last read and retries on conflict.
   */
  watch?: boolean;
}

/** What a live daemon publishes about itself, under PREFIX/alive/<hostId>. */
export interface AliveRecord {
  hostId: string;
  address: string;
  nbd?: string;
  since: string;
}

export interface HostRegistrationOptions {
  address: string;
  nbd?: string;
  rack: string;
}

const noLog: Log = () => undefined;

/** The state in a store that was never initialised. */
function notInitialised(endpoints: string[], prefix: string): CisternError {
  const url = endpoints.join(',');
  return new CisternError(
    'ENOENT',
    `no Cistern cluster at ${url} under ${prefix}: run cistern cluster init --etcd ${url} ` +
      '--secret-file F first',
  );
}

/** Turns a failed etcd call into UNAVAILABLE naming the URLs; our own errors pass. */
export function etcdFailure(endpoints: string[], what: string, error: unknown): unknown {
  if (error instanceof CisternError || error instanceof AssertionError) return error;
  const message = error instanceof Error ? error.message : String(error);
  return new CisternError(
    'UNAVAILABLE',
    `cannot ${what}: etcd at ${endpoints.join(',')} did not answer (${message})`,
    error,
  );
}

export function checkPrefix(prefix: string): void {
  if (!/^\/([a-zA-Z0-9._-]+\/)*$/.test(prefix)) {
    throw new CisternError(
      'EINVAL',
      `etcd prefix "${prefix}" must start and end with "/" and hold only letters, digits, . _ -`,
    );
  }
}

export function checkEndpoints(endpoints: string[]): void {
  if (endpoints.length === 0) throw new CisternError('EINVAL', 'no etcd endpoint given');
  for (const url of endpoints) {
    if (!/^https?:\/\/[^\s/]+\/?$/.test(url)) {
      throw new CisternError('EINVAL', `etcd endpoint "${url}" must look like http://HOST:PORT`);
    }
  }
}

/** Splits "--etcd http://a:2379,http://b:2379" into endpoints. */
export function parseEndpoints(text: string): string[] {
  const endpoints = text
    .split(',')
    .map((url) => url.trim())
    .filter((url) => url.length > 0);
  checkEndpoints(endpoints);
  return endpoints;
}

function connect(options: EtcdStoreOptions): { client: Etcd3; prefix: string } {
  checkEndpoints(options.endpoints);
  const prefix = options.prefix ?? ETCD_PREFIX_DEFAULT;
  checkPrefix(prefix);
  const client = new Etcd3({ hosts: options.endpoints, dialTimeout: ETCD_DIAL_TIMEOUT_MS });
  return { client, prefix };
}

function encodeState(state: ClusterState): Buffer {
  const encoded = pack(state);
  if (encoded.length > STATE_RECORD_MAX_BYTES) {
    throw new CisternError(
      'ENOSPC',
      `the cluster state would be ${encoded.length} bytes, over etcd's request limit ` +
        `(${STATE_RECORD_MAX_BYTES} bytes)`,
    );
  }
  return encoded;
}

function decodeState(raw: Buffer, where: string): ClusterState {
  let state: ClusterState;
  try {
    state = unpack(raw) as ClusterState;
  } catch (error) {
    throw new CisternError('CORRUPT', `the cluster state at ${where} does not decode`, error);
  }
  if (
    !state ||
    typeof state !== 'object' ||
    !state.map ||
    !Number.isInteger(state.map.epoch) ||
    !Array.isArray(state.volumes)
  ) {
    throw new CisternError('CORRUPT', `the cluster state at ${where} is malformed`);
  }
  state.hostAddresses ??= {};
  state.staleMembers ??= {};
  state.staleSince ??= {};
  state.scrubRequests ??= [];
  state.retainedMembers ??= {};
  state.authoritativeMembers ??= {};
  state.crashedMembers ??= {};
  return state;
}

export class EtcdClusterStore implements ClusterStore {
  private state: ClusterState;
  /** Mod revision of PREFIX/state that `state` was read at (or written as). */
  private revision: number;
  private queue: Promise<unknown> = Promise.resolve();
  private readonly listeners = new Set<(state: ClusterState) => void>();
  private watcher: Watcher | undefined;
  private readonly leases = new Set<HostRegistration>();
  private readonly monitors = new Set<Monitor>();
  /** Rejecters of waitForEpoch() calls in progress, run by close(). */
  private readonly epochWaiters = new Set<() => void>();
  private closed = false;
  /** Transactions that lost a race and were re-run on the fresh state (tests read it). */
  conflictsRetried = 0;

  private constructor(
    readonly client: Etcd3,
    readonly endpoints: string[],
    readonly prefix: string,
    readonly log: Log,
    state: ClusterState,
    revision: number,
  ) {
    this.state = state;
    this.revision = revision;
  }

  get stateKey(): string {
    return this.prefix + STATE_KEY;
  }

  /** Connects, reads the state and (by default) starts watching it. */
  static async open(options: EtcdStoreOptions): Promise<EtcdClusterStore> {
    const { client, prefix } = connect(options);
    try {
      const key = prefix + STATE_KEY;
      const response = await client
        .get(key)
        .exec()
        .catch((error: unknown) => {
          throw etcdFailure(options.endpoints, 'read the cluster state', error);
        });
      const kv = response.kvs[0];
      if (!kv) throw notInitialised(options.endpoints, prefix);
      const state = decodeState(kv.value, `${options.endpoints.join(',')} ${key}`);
      const store = new EtcdClusterStore(
        client,
        options.endpoints,
        prefix,
        options.log ?? noLog,
        state,
        Number(kv.mod_revision),
      );
      if (options.watch !== false) await store.startWatch();
      return store;
    } catch (error) {
      client.close();
      throw error;
    }
  }

  /**
   * Creates the cluster: writes `state` as PREFIX/state unless it exists. Refuses an
   * existing cluster with EEXIST naming its epoch.
   */
  static async initialise(options: EtcdStoreOptions, state: ClusterState): Promise<void> {
    const { client, prefix } = connect(options);
    const url = options.endpoints.join(',');
    try {
      const key = prefix + STATE_KEY;
      const txn = await client
        .if(key, 'Create', '==', 0)
        .then(client.put(key).value(encodeState(state)))
        .else(client.get(key))
        .commit()
        .catch((error: unknown) => {
          throw etcdFailure(options.endpoints, 'create the cluster', error);
        });
      if (txn.succeeded) return;
      const kv = txn.responses[0]?.response_range?.kvs[0];
      const epoch = kv ? decodeState(kv.value, `${url} ${key}`).map.epoch : '?';
      throw new CisternError(
        'EEXIST',
        `cluster already initialised at ${url} under ${prefix} (epoch ${epoch})`,
      );
    } finally {
      client.close();
    }
  }

  current(): ClusterState {
    return this.state;
  }

  update<T>(mutate: (state: ClusterState) => T): Promise<T> {
    return this.serialised(() => this.transact(mutate, undefined));
  }

  /**
   * Like update(), but the transaction also requires `guardKey` to exist: the monitor
   * passes its campaign key, so a monitor that lost its election (its key's lease
   * lapsed) cannot write a decision made while it still thought it led.
   * Throws EPERM when the guard is gone.
   */
  updateGuarded<T>(guardKey: string, mutate: (state: ClusterState) => T): Promise<T> {
    return this.serialised(() => this.transact(mutate, guardKey));
  }

  private serialised<T>(run: () => Promise<T>): Promise<T> {
    const result = this.queue.then(run, run);
    this.queue = result.catch(() => undefined);
    return result;
  }

  private async transact<T>(
    mutate: (state: ClusterState) => T,
    guardKey: string | undefined,
  ): Promise<T> {
    for (let attempt = 1; attempt <= UPDATE_ATTEMPTS_MAX; attempt += 1) {
      if (this.closed) throw new CisternError('CLOSED', 'cluster store is closed');
      const base = this.state;
      const baseRevision = this.revision;
      const next = structuredClone(base);
      let result: T;
      try {
        result = mutate(next); // a throw here leaves etcd and current() untouched
      } catch (error) {
        // Judge the refusal against the newest state, not a copy the watch has not
        // caught up with yet (another host may just have created that pool).
        if (attempt < UPDATE_ATTEMPTS_MAX) {
          await this.readNewer();
          if (this.revision > baseRevision) continue; // (the watch may have been first)
        }
        throw error;
      }
      markNewMembersStale(base, next);
      next.map.epoch = base.map.epoch + 1;
      const encoded = encodeState(next);
      let txn = this.client.if(this.stateKey, 'Mod', '==', baseRevision);
      if (guardKey !== undefined) txn = txn.and(guardKey, 'Create', '>', 0);
      const elseOps = [this.client.get(this.stateKey)];
      if (guardKey !== undefined) elseOps.push(this.client.get(guardKey));
      const response = await txn
        .then(this.client.put(this.stateKey).value(encoded))
        .else(...elseOps)
        .commit()
        .catch((error: unknown) => {
          throw etcdFailure(this.endpoints, 'update the cluster state', error);
        });
      if (response.succeeded) {
        this.adopt(next, Number(response.header.revision));
        return result;
      }
      const kv = response.responses[0]?.response_range?.kvs[0];
      if (!kv) throw notInitialised(this.endpoints, this.prefix);
      this.adopt(decodeState(kv.value, this.stateKey), Number(kv.mod_revision));
      if (guardKey !== undefined && !response.responses[1]?.response_range?.kvs[0]) {
        throw new CisternError('EPERM', `${guardKey} is gone: this node no longer leads`);
      }
      this.conflictsRetried += 1;
      await sleep(Math.random() * UPDATE_RETRY_JITTER_MS_MAX);
    }
    throw new CisternError(
      'UNAVAILABLE',
      `gave up updating the cluster state after ${UPDATE_ATTEMPTS_MAX} conflicting writes`,
    );
  }

  /** Takes a state newer than ours (by etcd revision) and tells the subscribers. */
  private adopt(state: ClusterState, revision: number): void {
    assert(Number.isSafeInteger(revision) && revision > 0, `bad etcd revision ${revision}`);
    if (revision <= this.revision) return;
    if (state.map.epoch <= this.state.map.epoch) {
      // Every writer bumps the epoch; a record that does not was written by someone else.
      this.log('cluster.state-ignored', {
        revision,
        epoch: state.map.epoch,
        currentEpoch: this.state.map.epoch,
      });
      return;
    }
    this.state = state;
    this.revision = revision;
    for (const listener of this.listeners) {
      try {
        listener(state);
      } catch (error) {
        this.log('cluster.listener-failed', { error });
      }
    }
  }

  private async startWatch(): Promise<void> {
    const watcher = await this.client
      .watch()
      .key(this.stateKey)
      .startRevision(String(this.revision + 1))
      .create()
      .catch((error: unknown) => {
        throw etcdFailure(this.endpoints, 'watch the cluster state', error);
      });
    this.watcher = watcher;
    watcher.on('put', (kv) => {
      try {
        this.adopt(decodeState(kv.value, this.stateKey), Number(kv.mod_revision));
      } catch (error) {
        this.log('cluster.watch-bad-state', { error });
      }
    });
    watcher.on('delete', () => this.log('cluster.state-deleted', { key: this.stateKey }));
    watcher.on('disconnected', (error) => this.log('cluster.watch-disconnected', { error }));
    // After a reconnect the watch resumes where it stopped; a read as well covers a
    // compaction that removed the revisions in between.
    watcher.on('connected', () => {
      this.refresh().catch((error: unknown) => {
        if (!this.closed) this.log('cluster.refresh-failed', { error });
      });
    });
    watcher.on('error', (error) => this.log('cluster.watch-failed', { error }));
  }

  /** Reads PREFIX/state now and adopts it if it is newer than ours. */
  private async readNewer(): Promise<void> {
    const response = await this.client
      .get(this.stateKey)
      .exec()
      .catch((error: unknown) => {
        throw etcdFailure(this.endpoints, 'read the cluster state', error);
      });
    const kv = response.kvs[0];
    if (!kv) throw notInitialised(this.endpoints, this.prefix);
    this.adopt(decodeState(kv.value, this.stateKey), Number(kv.mod_revision));
  }

  /** Reads PREFIX/state now, adopts it if newer, and returns current(). */
  async refresh(): Promise<ClusterState> {
    await this.readNewer();
    return this.state;
  }

  subscribe(listener: (state: ClusterState) => void): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  /**
   * Resolves once current() has reached `epoch` (at once if it has). The peer layer
   * fences on it: a message from a newer epoch waits until this daemon has that map.
   * Rejects with UNAVAILABLE after timeoutMs, CLOSED when the store closes.
   */
  waitForEpoch(epoch: number, timeoutMs: number): Promise<ClusterState> {
    assert(Number.isInteger(epoch) && epoch >= 0, `bad epoch ${epoch}`);
    assert(Number.isFinite(timeoutMs) && timeoutMs >= 0, `bad timeout ${timeoutMs}`);
    if (this.state.map.epoch >= epoch) return Promise.resolve(this.state);
    if (this.closed) return Promise.reject(new CisternError('CLOSED', 'cluster store is closed'));
    return new Promise((resolve, reject) => {
      const finish = (error: CisternError | undefined): void => {
        clearTimeout(timer);
        unsubscribe();
        this.epochWaiters.delete(onClose);
        if (error) reject(error);
        else resolve(this.state);
      };
      const unsubscribe = this.subscribe((state) => {
        if (state.map.epoch >= epoch) finish(undefined);
      });
      const onClose = (): void =>
        finish(new CisternError('CLOSED', 'cluster store closed while waiting for an epoch'));
      this.epochWaiters.add(onClose);
      const timer = setTimeout(
        () =>
          finish(
            new CisternError(
              'UNAVAILABLE',
              `map epoch ${epoch} did not arrive within ${timeoutMs} ms (at ${this.state.map.epoch})`,
            ),
          ),
        timeoutMs,
      );
      // A watch event may have landed between the check above and the subscription.
      if (this.state.map.epoch >= epoch) finish(undefined);
    });
  }

  // ---- Liveness ----

  aliveKey(hostId: string): string {
    return this.prefix + ALIVE_DIR + hostId;
  }

  /** The hosts whose liveness lease is current, by id. */
  async aliveHosts(): Promise<Map<string, AliveRecord>> {
    const prefix = this.prefix + ALIVE_DIR;
    const values = await this.client
      .getAll()
      .prefix(prefix)
      .strings()
      .catch((error: unknown) => {
        throw etcdFailure(this.endpoints, 'read the live hosts', error);
      });
    const alive = new Map<string, AliveRecord>();
    for (const [key, value] of Object.entries(values)) {
      const hostId = key.slice(prefix.length);
      try {
        alive.set(hostId, JSON.parse(value) as AliveRecord);
      } catch {
        alive.set(hostId, { hostId, address: '?', since: '?' });
      }
    }
    return alive;
  }

  /**
   * Announces a live daemon: a lease of `ttlS` seconds, kept alive, holding
   * PREFIX/alive/<hostId>. The first registration of a host also adds it (and its peer
   * address) to the map, in one update; a changed address is updated the same way.
   * If the lease is lost (etcd unreachable longer than the TTL), it is re-granted
   * every ttlS/2 seconds until it is back or the registration is closed.
   */
  async registerHost(
    hostId: string,
    location: HostRegistrationOptions,
    options: { ttlS?: number } = {},
  ): Promise<HostRegistration> {
    if (!HOST_ID_PATTERN.test(hostId)) {
      throw new CisternError(
        'EINVAL',
        `host id "${hostId}" must be 1-64 letters, digits, ".", "_" or "-"`,
      );
    }
    if (!location.rack) throw new CisternError('EINVAL', `host ${hostId} needs a rack`);
    const ttlS = options.ttlS ?? HOST_LEASE_TTL_DEFAULT_S;
    if (!Number.isInteger(ttlS) || ttlS < HOST_LEASE_TTL_MIN_S || ttlS > HOST_LEASE_TTL_MAX_S) {
      throw new CisternError(
        'EINVAL',
        `lease TTL must be ${HOST_LEASE_TTL_MIN_S}..${HOST_LEASE_TTL_MAX_S} s, got ${ttlS}`,
      );
    }
    const known = this.state.map.hosts.find((h) => h.id === hostId);
    const address = this.state.hostAddresses[hostId];
    if (!known || address?.address !== location.address || address?.nbd !== location.nbd) {
      await this.update((s) => {
        addHost(s, hostId, location.rack);
        s.hostAddresses[hostId] = {
          address: location.address,
          ...(location.nbd !== undefined ? { nbd: location.nbd } : {}),
        };
      });
    }
    const record: AliveRecord = {
      hostId,
      address: location.address,
      ...(location.nbd !== undefined ? { nbd: location.nbd } : {}),
      since: new Date().toISOString(),
    };
    const registration = new HostRegistration(this, hostId, JSON.stringify(record), ttlS);
    await registration.grant();
    this.leases.add(registration);
    this.log('cluster.host-registered', { host: hostId, address: location.address, ttlS });
    return registration;
  }

  /** @internal */
  forgetRegistration(registration: HostRegistration): void {
    this.leases.delete(registration);
  }

  // ---- Monitor ----

  /**
   * Campaigns to be the cluster's monitor; while elected, marks hosts down when their
   * lease lapses and out after downOutIntervalS (see monitor.ts). Close it to resign.
   */
  runMonitor(options: MonitorOptions): Monitor {
    const monitor = new Monitor(this, options);
    this.monitors.add(monitor);
    monitor.start();
    return monitor;
  }

  /** The monitor election, keys under PREFIX/election/monitor/. */
  monitorElection(ttlS?: number): Election {
    return this.client.namespace(this.prefix).election(MONITOR_ELECTION, ttlS);
  }

  /** The host id of the elected monitor, if any. */
  async monitorLeader(): Promise<string | undefined> {
    return this.monitorElection()
      .leader()
      .catch((error: unknown) => {
        throw etcdFailure(this.endpoints, 'read the monitor election', error);
      });
  }

  /** @internal */
  forgetMonitor(monitor: Monitor): void {
    this.monitors.delete(monitor);
  }

  /**
   * Stops monitors (resigning), revokes this process's liveness leases (a clean stop
   * is seen as down at once, not after the TTL), waits for updates, closes the client.
   */
  async close(): Promise<void> {
    if (this.closed) return;
    for (const monitor of [...this.monitors]) await monitor.close();
    for (const registration of [...this.leases]) await registration.revoke();
    await this.queue;
    this.closed = true;
    for (const onClose of [...this.epochWaiters]) onClose();
    if (this.watcher) await this.watcher.cancel().catch(() => undefined);
    this.client.close();
  }
}

/** One daemon's liveness lease. */
export class HostRegistration {
  private lease: Lease | undefined;
  private stopped = false;
  private regrantTimer: NodeJS.Timeout | undefined;
  /** When the last renewal etcd accepted was sent (Date.now() ms), if any. */
  private renewedSentAtMs: number | undefined;
  private readonly renewalListeners = new Set<(sentAtMs: number) => void>();

  constructor(
    private readonly store: EtcdClusterStore,
    readonly hostId: string,
    private readonly value: string,
    readonly ttlS: number,
  ) {}

  /**
   * Calls `listener` with the send time of every renewal etcd accepts (the grant, then
   * each keepalive answered), starting with the last one so far: the read fence
   * (read-fence.ts) serves reads only for a while after one.
   */
  onRenewed(listener: (sentAtMs: number) => void): void {
    this.renewalListeners.add(listener);
    if (this.renewedSentAtMs !== undefined) listener(this.renewedSentAtMs);
  }

  private renewed(sentAtMs: number): void {
    this.renewedSentAtMs = Math.max(this.renewedSentAtMs ?? sentAtMs, sentAtMs);
    for (const listener of this.renewalListeners) listener(sentAtMs);
  }

  /** Grants a lease and puts the alive key on it. */
  async grant(): Promise<void> {
    const lease = this.store.client.lease(this.ttlS);
    // Keepalives go out on one stream and are answered in order: each answer renews the
    // lease as of when its request was sent (at the latest). Bounded: the oldest
    // unanswered send times are dropped, which only makes the fence more cautious.
    const sent: number[] = [];
    lease.on('keepaliveFired', () => {
      sent.push(Date.now());
      if (sent.length > KEEPALIVES_UNANSWERED_MAX) sent.shift();
    });
    lease.on('keepaliveSucceeded', () => {
      const sentAtMs = sent.shift();
      if (sentAtMs !== undefined && lease === this.lease && !this.stopped) this.renewed(sentAtMs);
    });
    lease.on('lost', (error) => {
      sent.length = 0;
      if (this.stopped || lease !== this.lease) return;
      this.store.log('cluster.lease-lost', { host: this.hostId, error });
      this.scheduleRegrant();
    });
    this.lease = lease;
    const grantSentAtMs = Date.now();
    try {
      await lease.put(this.store.aliveKey(this.hostId)).value(this.value).exec();
    } catch (error) {
      lease.release();
      throw etcdFailure(this.store.endpoints, `register host ${this.hostId}`, error);
    }
    this.renewed(grantSentAtMs);
  }

  private scheduleRegrant(): void {
    if (this.stopped || this.regrantTimer) return;
    this.regrantTimer = setTimeout(
      () => {
        this.regrantTimer = undefined;
        if (this.stopped) return;
        this.grant().then(
          () => this.store.log('cluster.lease-regranted', { host: this.hostId }),
          (error: unknown) => {
            this.store.log('cluster.lease-regrant-failed', { host: this.hostId, error });
            this.scheduleRegrant();
          },
        );
      },
      (this.ttlS * 1000) / 2,
    );
  }

  /**
   * Stops renewing without revoking, as a hung or crashed daemon would: the alive key
   * disappears when the TTL runs out. (Tests use it; a daemon uses revoke().)
   */
  release(): void {
    this.stop();
    this.lease?.release();
  }

  /** Deletes the alive key now (clean shutdown): the monitor sees the host down at once. */
  async revoke(): Promise<void> {
    this.stop();
    await this.lease?.revoke().catch((error: unknown) => {
      this.store.log('cluster.lease-revoke-failed', { host: this.hostId, error });
    });
  }

  private stop(): void {
    this.stopped = true;
    if (this.regrantTimer) clearTimeout(this.regrantTimer);
    this.regrantTimer = undefined;
    this.store.forgetRegistration(this);
  }
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}
