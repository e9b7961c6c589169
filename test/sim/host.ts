// One simulated daemon: the real replication code of a host — LocalReplication (its
// primary engine), Gateway (routing object I/O to primaries), the peer handler and the
// RecoveryWorker — wired as src/volume/datastore.ts wires them, over simulated disks, the
// simulated network and the host's view of the simulated cluster store, with the
// scheduler's virtual clock. The wiring is repeated here rather than shared because
// Datastore also owns LevelDB stores, devices and the admin API; what is repeated is the
// few lines that choose an endpoint per disk and take a failed disk down, kept as close
// to datastore.ts as possible (endpoint(), diskFailed()).
//
// A crash ends the incarnation: its pending events never run (so its promises never
// settle), its disks lose or tear their unflushed writes, its map view stops. A restart
// is a new incarnation that reads the map afresh, as a daemon starting does.

import { CisternError, isCisternError } from '../../src/util/errors';
import type { Clock } from '../../src/util/clock';
import { markRestartedDisks } from '../../src/replication/restart';
import * as state from '../../src/cluster/state';
import { PlacementTable, computeTable } from '../../src/placement/straw2';
import { LocalReplication } from '../../src/replication/local';
import { ObjectEndpoint, PeerTransport } from '../../src/replication/endpoint';
import { Gateway } from '../../src/replication/gateway';
import { RECOVERY_BYTES_PER_SECOND_DEFAULT, RecoveryWorker } from '../../src/replication/recovery';
import { BackgroundThrottle } from '../../src/replication/throttle';
import { StrayCollector } from '../../src/replication/strays';
import { ScrubWorker } from '../../src/replication/scrub';
import { RemoteDisk } from '../../src/replication/remote-disk';
import { makeHandler } from '../../src/replication/handler';
import { ReadFence, readLeaseMs } from '../../src/cluster/read-fence';
import { SimAuthority, HostView } from './cluster';
import { DiskMedium, SimDisk } from './disk';
import { SimNetwork, SIM_REQUEST_TIMEOUT_MS } from './network';
import { Scheduler } from './scheduler';

/** The hosts' liveness lease (virtual ms): the monitor takes a host down this long after its last renewal. */
export const SIM_LEASE_TTL_MS = 1_500;

/** Start-up peering retries while etcd is unreachable: every this long, this often at most. */
const STARTUP_RETRY_MS = 500;
const STARTUP_ATTEMPTS_MAX = 10_000;

/** The gateway's requests to primaries wait longer than a primary's to its replicas (as the daemon's). */
const GATEWAY_TIMEOUT_FACTOR = 3;

export interface Incarnation {
  number: number;
  alive: boolean;
  view: HostView;
  disks: Map<number, SimDisk>;
  replication: LocalReplication;
  gateway: Gateway;
  recovery: RecoveryWorker;
  /** Reads served only while the lease is known valid; the monitor's ticks renew it. */
  fence: ReadFence;
}

export class SimHost {
  /** The current incarnation, undefined while the host is down. */
  running: Incarnation | undefined;
  private incarnations = 0;
  /** Power losses, for the report. */
  crashes = 0;

  constructor(
    readonly id: string,
    readonly media: Map<number, DiskMedium>,
    private readonly scheduler: Scheduler,
    private readonly authority: SimAuthority,
    private readonly network: SimNetwork,
    private readonly log: (host: string, event: string, fields?: Record<string, unknown>) => void,
  ) {}

  start(): Incarnation {
    this.incarnations += 1;
    const number = this.incarnations;
    const self = { alive: true };
    const alive = (): boolean => self.alive;
    const label = `${this.id}#${number}`;
    const view = this.authority.view(this.id, alive);
    const disks = new Map<number, SimDisk>();
    for (const [id, medium] of this.media) {
      // A failed medium cannot be opened: the daemon runs without it (openKnownDisk).
      if (!medium.failed)
        disks.set(id, new SimDisk(medium, this.scheduler, alive, `${label}.d${id}`));
    }
    const transport = this.network.transport(this.id, alive);
    const gatewayTransport = this.network.transport(
      this.id,
      alive,
      SIM_REQUEST_TIMEOUT_MS * GATEWAY_TIMEOUT_FACTOR,
    );
    const tables = new Map<number, { epoch: number; table: PlacementTable }>();
    const table = (poolId: number): PlacementTable => {
      const { map } = view.current();
      const cached = tables.get(poolId);
      if (cached && cached.epoch === map.epoch) return cached.table;
      const computed = computeTable(map, poolId);
      tables.set(poolId, { epoch: map.epoch, table: computed });
      return computed;
    };
    const upStore = (diskId: number): SimDisk | undefined => {
      const disk = view.current().map.disks.find((d) => d.id === diskId);
      if (!disk || !disk.up || disk.host !== this.id) return undefined;
      return disks.get(diskId);
    };
    const remoteDisks = new Map<number, RemoteDisk>();
    const endpoint = (diskId: number): ObjectEndpoint | undefined => {
      const disk = view.current().map.disks.find((d) => d.id === diskId);
      if (!disk || !disk.up) return undefined;
      if (disk.host === this.id) return disks.get(diskId);
      let remote = remoteDisks.get(diskId);
      if (!remote || remote.hostId !== disk.host) {
        remote = new RemoteDisk(transport, disk.host, diskId, () => view.current().map.epoch);
        remoteDisks.set(diskId, remote);
      }
      return remote;
    };
    const diskFailed = async (diskId: number, error: CisternError): Promise<void> => {
      const spec = view.current().map.disks.find((d) => d.id === diskId);
      if (!spec || !spec.up) return;
      const message = `${error.code}: ${error.message}`;
      const changed = await view.update((s) => state.markDiskDown(s, diskId, message));
      if (changed) this.log(this.id, 'disk.failed', { disk: diskId, error: message });
    };
    const fence = new ReadFence({
      clock: this.scheduler.clock(alive, `${label}.fence`),
      hostId: this.id,
      leaseMs: readLeaseMs(SIM_LEASE_TTL_MS, SIM_REQUEST_TIMEOUT_MS),
      holdUntilStarted: true,
    });
    // A daemon starts by registering its lease in etcd (it cannot start without it).
    if (this.authority.reachable(this.id)) fence.renewed(this.scheduler.now);
    const replication = new LocalReplication({
      table,
      store: endpoint,
      acting: (t, pg) => state.actingMembers(view.current(), t, pg),
      onDiskFailure: diskFailed,
      hostId: this.id,
      readFence: fence,
      now: () => this.scheduler.now,
      mapChanges: (listener) => view.subscribe(() => listener()),
      authoritative: (pg) => view.current().authoritativeMembers?.[pg] ?? [],
    });
    const gateway = new Gateway({
      hostId: this.id,
      transport: gatewayTransport,
      state: () => view.current(),
      table,
      local: replication,
      waitForEpoch: (epoch, timeoutMs) => view.waitForEpoch(epoch, timeoutMs),
      onPrimaryUnreachable: (diskId, error) =>
        diskFailed(diskId, new CisternError('UNREACHABLE', `host unreachable: ${error.message}`)),
      flushLocalDisks: async () => {
        await Promise.all([...disks.keys()].map((id) => upStore(id)?.flush()));
      },
      now: () => this.scheduler.now,
      mapChanges: (listener) => view.subscribe(() => listener()),
    });
    const handler = makeHandler({
      hostId: this.id,
      primary: replication,
      primaryOf: (key) => gateway.primaryOf(key),
      localStore: upStore,
      localStores: () => [...disks.keys()].flatMap((id) => upStore(id) ?? []),
    });
    // As the real daemon (cluster.ts): peers are refused until the datastore is open —
    // its start-up peering done — so no recovery or write runs on its disks before.
    let started = false;
    this.network.register(this.id, {
      handler: async (request) => {
        if (!started) throw new CisternError('UNAVAILABLE', `host ${this.id} is still starting`);
        return handler(request);
      },
      epoch: () => view.current().map.epoch,
      waitForEpoch: (epoch, timeoutMs) => view.waitForEpoch(epoch, timeoutMs),
      alive,
    });
    const recovery = new RecoveryWorker({
      hostId: this.id,
      cluster: view,
      table,
      primaryOfPg: (poolId, pg) => gateway.primaryOfPg(poolId, pg),
      primary: replication,
      localStore: upStore,
      transport: transport as PeerTransport,
      log: (event, fields) => this.log(this.id, event, fields),
      clock: this.scheduler.clock(alive, `${label}.recovery`),
      bytesPerSecondMax: RECOVERY_BYTES_PER_SECOND_DEFAULT,
      throttle: new BackgroundThrottle({
        bytesPerSecond: RECOVERY_BYTES_PER_SECOND_DEFAULT,
        clientBusy: () => replication.busyObjects > 0,
        clock: this.scheduler.clock(alive, `${label}.throttle`),
      }),
    });
    const strays = new StrayCollector({
      cluster: view,
      table,
      localDisks: () =>
        [...disks.keys()].flatMap((id) => {
          const store = upStore(id);
          return store ? [{ id, store }] : [];
        }),
      log: (event, fields) => this.log(this.id, event, fields),
      clock: this.scheduler.clock(alive, `${label}.strays`),
    });
    const scrubber = new ScrubWorker({
      hostId: this.id,
      cluster: view,
      table,
      primaryHostOfPg: (poolId, pg) => gateway.primaryOfPg(poolId, pg).host,
      replication,
      localStore: upStore,
      transport,
      log: (event, fields) => this.log(this.id, event, fields),
      clock: this.scheduler.clock(alive, `${label}.scrub`),
    });
    const incarnation: Incarnation = {
      number,
      get alive() {
        return self.alive;
      },
      set alive(value: boolean) {
        self.alive = value;
      },
      view,
      disks,
      replication,
      gateway,
      recovery,
      fence,
    };
    this.running = incarnation;
    // As Datastore.open: the background workers start only once the restarted disks are
    // marked. Before that, this host may still be the primary of PGs whose copies its
    // crash took writes from, and peering would copy those over the members holding them.
    void this.startUpPeering(
      view,
      disks,
      fence,
      this.scheduler.clock(alive, `${label}.startup`),
    ).then((done) => {
      if (!done || !self.alive) return;
      started = true;
      recovery.start();
      strays.start();
      scrubber.start();
    });
    // A disk whose medium failed while the daemon was down cannot be opened: down, as
    // Datastore.openKnownDisk marks it (a no-op when the map has it down already).
    for (const [id, medium] of this.media) {
      if (medium.failed) {
        void view
          .update((s) => state.markDiskDown(s, id, `EIO: disk ${id} cannot be opened`))
          .catch(() => undefined);
      }
    }
    return incarnation;
  }

  /**
   * As Datastore.open does before the daemon serves reads: marks its disks stale where
   * their activity records say the crash may have cost writes (restart.ts). Retried
   * while etcd is out of reach (the real daemon would not start without it).
   */
  private async startUpPeering(
    view: HostView,
    disks: Map<number, SimDisk>,
    fence: ReadFence,
    clock: Clock,
  ): Promise<boolean> {
    for (let attempt = 0; attempt < STARTUP_ATTEMPTS_MAX; attempt += 1) {
      try {
        // A disk whose medium failed is never opened by the real daemon (it is marked
        // down instead, below): its record cannot be read.
        const opened = [...disks].filter(([id]) => this.media.get(id)?.failed !== true);
        const marked = await markRestartedDisks(view, opened);
        if (marked > 0) this.log(this.id, 'startup.marked-stale', { marks: marked });
        fence.started();
        return true;
      } catch (error) {
        if (!isCisternError(error)) throw error;
        await clock.sleep(STARTUP_RETRY_MS);
      }
    }
    return false;
  }

  /**
   * Power loss: the incarnation stops where it is; unflushed writes are dropped or torn
   * (each by `survives`, if given — tests — else by a seeded choice per disk).
   */
  crash(survives?: () => boolean): number {
    const incarnation = this.running;
    if (!incarnation) return 0;
    incarnation.alive = false;
    void incarnation.view.close();
    this.running = undefined;
    this.crashes += 1;
    const random = this.scheduler.random;
    let lost = 0;
    for (const medium of this.media.values()) {
      // Per crash, how likely an unflushed 4 KiB change is to have reached the medium:
      // all of them, none, or each on a coin (a torn write sequence).
      const mode = random.int(3);
      lost += medium.crash(
        survives ?? (() => (mode === 0 ? true : mode === 1 ? false : random.bool())),
      );
    }
    return lost;
  }
}
