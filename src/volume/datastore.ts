// One host's datastore: its disks (each an object store on the native I/O engine),
// the embedded cluster store holding pools, volumes and the placement map, local
// replication across the disks, and volumes as export handles. Implements what the
// admin API and the front ends need (DatastoreAdmin, ExportProvider).

import fs from 'node:fs';
import path from 'node:path';
import { assert } from '../util/assert';
import { CisternError, isCisternError } from '../util/errors';
import { formatSize } from '../util/units';
import { EmbeddedClusterStore } from '../cluster/embedded';
import { ClusterStore } from '../cluster/store';
import * as state from '../cluster/state';
import { incompleteMessages, pgStates, poolInfo } from '../cluster/cluster-admin';
import { ClusterMap, FailureDomain } from '../placement/map';
import { PlacementTable, computeTable, locateObject } from '../placement/straw2';
import { openDevice } from '../engine';
import { BlockDevice } from '../store/device';
import { ObjectStore } from '../store/object-store';
import { LocalReplication } from '../replication/local';
import { ObjectEndpoint, ObjectIo, PeerTransport } from '../replication/endpoint';
import { Gateway } from '../replication/gateway';
import { RECOVERY_BYTES_PER_SECOND_DEFAULT, RecoveryWorker } from '../replication/recovery';
import { SCRUB_BYTES_PER_SECOND_DEFAULT, ScrubWorker } from '../replication/scrub';
import { BackgroundThrottle } from '../replication/throttle';
import { StrayCollector } from '../replication/strays';
import { ScrubStatus, requestScrub, scrubStatusOf } from '../cluster/scrub-state';
import { recoveryStatus } from '../cluster/recovery-status';
import type { ReadFence } from '../cluster/read-fence';
import { AccessChange, accessOf, publicAccess, setVolumeAccess } from '../cluster/iscsi-access';
import type { AccessProvider, VolumeAccess } from '../frontend/iscsi/access';
import { RemoteDisk } from '../replication/remote-disk';
import { markRestartedDisks } from '../replication/restart';
import { HandlerReply, HandlerRequest, makeHandler } from '../replication/handler';
import { ExportInfo, ExportProvider, VolumeHandle } from './backend';
import {
  CreatePoolRequest,
  CreateVolumeRequest,
  DatastoreAdmin,
  DiskInfo,
  PoolInfo,
  StatusReport,
  VolumeInfo,
} from './admin';
import { Volume } from './volume';

export const DEFAULT_DISK_COUNT = 3;
export const DEFAULT_DISK_SIZE_BYTES = 16 * 2 ** 30;
export const DEFAULT_POOL_NAME = 'default';
/** Every write reaches this many disks by default (one host: failure domain disk). */
export const DEFAULT_POOL_SIZE = 2;
/**
 * Tries to add one new disk when other hosts take the id it was formatted for. Each
 * failed try means another disk was added meanwhile, so this bounds the disks joining
 * at the same moment, far beyond any real start-up.
 */
const DISK_ID_ATTEMPTS_MAX = 64;
/** Objects deleted at once when a volume is removed or shrunk. */
const DISCARD_PARALLEL = 16;

export type Log = (event: string, fields?: Record<string, unknown>) => void;

export interface DatastoreOptions {
  dataDir: string;
  /** Disks to use; on a new data dir with none given, three sparse 16 GiB files are created. */
  disks: Array<{ path: string; sizeBytes?: number }>;
  log: Log;
  /** This host's id in the map. */
  hostId?: string;
  /** This host's rack (failure domain 'rack'). */
  rack?: string;
  /**
   * Multi-host mode: the shared cluster store (etcd), the peer transport and a way to
   * wait for the local map to reach an epoch. Without it the datastore is one host's,
   * on the embedded store in the data dir.
   */
  cluster?: {
    store: ClusterStore;
    transport: PeerTransport;
    /** For gateway → primary requests, if they should differ (a longer timeout). */
    gatewayTransport?: PeerTransport;
    waitForEpoch: (epoch: number, timeoutMs: number) => Promise<boolean>;
    /** Reads are served only while this host's liveness lease is known valid. */
    readFence?: ReadFence;
  };
  /** Bounds on recovery and scrub traffic; absent: their defaults. */
  bandwidth?: { recoveryBytesPerSecond?: number; scrubBytesPerSecond?: number };
  /** Wraps each opened device (tests inject faults here). */
  wrapDevice?: (diskId: number, device: BlockDevice) => BlockDevice;
}

interface OpenDisk {
  id: number;
  device: BlockDevice;
  store: ObjectStore;
}

/** A new disk's id was taken by another host's disk between reading and adding it. */
/** Hosts with a disk up in `before` and none in `after` (hosts without disks never go down). */
export function hostsGoneDown(before: ClusterMap, after: ClusterMap): string[] {
  const upBefore = new Set(before.disks.filter((d) => d.up).map((d) => d.host));
  const upAfter = new Set(after.disks.filter((d) => d.up).map((d) => d.host));
  return [...upBefore].filter((host) => !upAfter.has(host));
}

/** Thrown inside a map update to abandon it: the disk is down already, nothing to change. */
class AlreadyDown extends Error {}

/** Whether state.markDiskDown(s, diskId, error) would change anything. */
function markDownChanges(s: state.ClusterState, diskId: number, error: string): boolean {
  const disk = s.map.disks.find((d) => d.id === diskId);
  if (!disk) return true; // markDiskDown asserts on it
  if (disk.up) return true;
  const location = s.disks[String(diskId)];
  return (
    location !== undefined &&
    state.downBecauseHostAway(location.error) &&
    !state.downBecauseHostAway(error)
  );
}

class DiskIdTaken extends Error {
  constructor(id: number) {
    super(`disk id ${id} was taken by another host`);
  }
}

export class Datastore implements DatastoreAdmin, ExportProvider, AccessProvider {
  private readonly disks = new Map<number, OpenDisk>();
  private readonly tables = new Map<number, { epoch: number; table: PlacementTable }>();
  private readonly openHandles = new Map<string, number>();
  /** This host's primary engine: replicates objects whose PG primary is a disk here. */
  readonly replication: LocalReplication;
  /** What volumes call: the primary engine on one host, a gateway on many. */
  readonly io: ObjectIo;
  private readonly gateway: Gateway | undefined;
  private readonly remoteDisks = new Map<number, RemoteDisk>();
  private closed = false;
  private readonly unsubscribers: Array<() => void> = [];
  /** Backfills stale members of the PGs this host is primary of (multi-host mode). */
  recovery: RecoveryWorker | undefined;
  /** Acts on scrub requests in the cluster state for the PGs this host is primary of. */
  scrubber: ScrubWorker | undefined;
  /** Removes copies left on this host's disks by rebalancing (multi-host mode). */
  strays: StrayCollector | undefined;
  /** Background garbage collection of removed volumes' objects (multi-host mode). */
  private collecting: Promise<void> = Promise.resolve();

  private constructor(
    private readonly options: DatastoreOptions,
    private readonly cluster: ClusterStore,
  ) {
    this.replication = new LocalReplication({
      table: (poolId) => this.table(poolId),
      store: (diskId) => this.endpoint(diskId),
      acting: (table, pg) => state.actingMembers(this.cluster.current(), table, pg),
      onDiskFailure: (diskId, error) => this.diskFailed(diskId, error),
      hostId: this.hostId,
      ...(options.cluster?.readFence ? { readFence: options.cluster.readFence } : {}),
      mapChanges: (listener) => this.cluster.subscribe(() => listener()),
      authoritative: (pg) => this.cluster.current().authoritativeMembers?.[pg] ?? [],
    });
    const multi = options.cluster;
    this.gateway = multi
      ? new Gateway({
          hostId: this.hostId,
          transport: multi.gatewayTransport ?? multi.transport,
          state: () => this.cluster.current(),
          table: (poolId) => this.table(poolId),
          local: this.replication,
          waitForEpoch: multi.waitForEpoch,
          onPrimaryUnreachable: (diskId, error) =>
            this.diskFailed(
              diskId,
              new CisternError('UNREACHABLE', `host unreachable: ${error.message}`),
            ),
          flushLocalDisks: async () => {
            await Promise.all([...this.disks.keys()].map((id) => this.upStore(id)?.flush()));
          },
          mapChanges: (listener) => this.cluster.subscribe(() => listener()),
        })
      : undefined;
    this.io = this.gateway ?? this.replication;
  }

  /**
   * Multi-host, before serving reads: this daemon may be back from a crash nobody saw
   * (within its lease), so its disks are marked stale where their activity records say
   * its caches may have lost writes (restart.ts); then the read fence opens.
   */
  private async markRestartedDisks(): Promise<void> {
    const marked = await markRestartedDisks(
      this.cluster,
      [...this.disks].map(([id, disk]) => [id, disk.store] as [number, ObjectStore]),
    );
    if (marked > 0) this.log('startup.marked-stale', { marks: marked });
    this.options.cluster?.readFence?.started();
  }

  static async open(options: DatastoreOptions): Promise<Datastore> {
    fs.mkdirSync(options.dataDir, { recursive: true, mode: 0o700 });
    const cluster =
      options.cluster?.store ??
      (await EmbeddedClusterStore.open(path.join(options.dataDir, 'cluster')));
    const datastore = new Datastore(options, cluster);
    try {
      await datastore.attachDisks();
      if (!options.cluster) await datastore.ensureDefaultPool();
      else {
        await datastore.markRestartedDisks();
        datastore.watchVolumes();
        datastore.watchHostsGoingDown();
        datastore.startRecovery();
        datastore.startStrayRemoval();
      }
      datastore.startScrub();
    } catch (error) {
      await datastore.close();
      throw error;
    }
    return datastore;
  }

  /**
   * In a cluster, volumes are removed from the map by whoever administers it (the CLI
   * talks to etcd directly), so every daemon deletes its own disks' copies of removed
   * volumes' objects: once at start (volumes removed while it was away) and after every
   * map change that removes one. Volume ids are never reused, so this cannot touch a
   * live volume's data.
   */
  private watchVolumes(): void {
    let known = new Set(this.cluster.current().volumes.map((v) => v.id));
    this.collect(undefined);
    const unsubscribe = this.cluster.subscribe((next) => {
      const now = new Set(next.volumes.map((v) => v.id));
      const removed = [...known].filter((id) => !now.has(id));
      known = now;
      if (removed.length > 0) this.collect(new Set(removed));
    });
    this.unsubscribers.push(unsubscribe);
  }

  /**
   * Once the map has none of a host's disks up (the monitor saw its lease lapse, or a
   * peer could not reach it), requests in flight to it are given up at once: a host cut
   * off without a FIN or RST answers nothing, and they would otherwise wait out their
   * whole timeout — REQUEST_TIMEOUT_MS (30 s) for a primary's replica write, three times
   * that for a gateway's request to a primary: the 90 s a client saw. They fail as
   * unreachable, so the primary goes on with the other members and the gateway with the
   * PG's next primary, as for a host whose connection was reset.
   */
  private watchHostsGoingDown(): void {
    const multi = this.options.cluster;
    if (!multi) return;
    const transports = new Set([multi.transport, multi.gatewayTransport ?? multi.transport]);
    let before = this.cluster.current().map;
    const unsubscribe = this.cluster.subscribe((next) => {
      const gone = hostsGoneDown(before, next.map).filter((host) => host !== this.hostId);
      before = next.map;
      for (const host of gone) {
        const reason = `the map has no disk of host ${host} up (epoch ${next.map.epoch})`;
        for (const transport of transports) transport.abandon?.(host, reason);
        this.log('peer.abandoned', { host, epoch: next.map.epoch });
      }
    });
    this.unsubscribers.push(unsubscribe);
  }

  private collect(removed: Set<number> | undefined): void {
    this.collecting = this.collecting
      .then(async () => {
        const live = new Set(this.cluster.current().volumes.map((v) => v.id));
        let deleted = 0;
        for (const id of this.disks.keys()) {
          const store = this.upStore(id);
          if (!store || this.closed) continue;
          const doomed = [];
          for await (const key of store.listObjects()) {
            if (live.has(key.volume)) continue;
            if (removed && !removed.has(key.volume)) continue;
            doomed.push(key);
          }
          for (const key of doomed) if (await store.deleteObject(key)) deleted += 1;
          if (doomed.length > 0) await store.flush();
        }
        if (deleted > 0) this.log('volume.objects-collected', { objects: deleted });
      })
      .catch((error: unknown) => {
        this.log('volume.collect-failed', {
          error: error instanceof Error ? error.message : String(error),
        });
      });
  }

  private startRecovery(): void {
    const gateway = this.gateway;
    assert(gateway, 'recovery runs in multi-host mode');
    const bytesPerSecond =
      this.options.bandwidth?.recoveryBytesPerSecond ?? RECOVERY_BYTES_PER_SECOND_DEFAULT;
    this.recovery = new RecoveryWorker({
      hostId: this.hostId,
      cluster: this.cluster,
      table: (poolId) => this.table(poolId),
      primaryOfPg: (poolId, pg) => gateway.primaryOfPg(poolId, pg),
      primary: this.replication,
      localStore: (disk) => this.upStore(disk),
      transport: this.options.cluster?.transport,
      log: this.log,
      bytesPerSecondMax: bytesPerSecond,
      // Client writes through this primary hold recovery to a share of its bandwidth.
      throttle: new BackgroundThrottle({
        bytesPerSecond,
        clientBusy: () => this.replication.busyObjects > 0,
      }),
    });
    this.recovery.start();
  }

  /** Removes this host's copies of clean PGs it is no longer a member of (strays.ts). */
  private startStrayRemoval(): void {
    this.strays = new StrayCollector({
      cluster: this.cluster,
      table: (poolId) => this.table(poolId),
      localDisks: () =>
        [...this.disks.keys()].flatMap((id) => {
          const store = this.upStore(id);
          return store ? [{ id, store }] : [];
        }),
      log: this.log,
    });
    this.strays.start();
  }

  private startScrub(): void {
    const gateway = this.gateway;
    this.scrubber = new ScrubWorker({
      hostId: this.hostId,
      cluster: this.cluster,
      table: (poolId) => this.table(poolId),
      // One host: every PG's members are here, so this host is every PG's primary.
      primaryHostOfPg: (poolId, pg) =>
        gateway ? gateway.primaryOfPg(poolId, pg).host : this.hostId,
      replication: this.replication,
      localStore: (disk) => this.upStore(disk),
      transport: this.options.cluster?.transport,
      log: this.log,
      bytesPerSecondMax:
        this.options.bandwidth?.scrubBytesPerSecond ?? SCRUB_BYTES_PER_SECOND_DEFAULT,
    });
    this.scrubber.start();
  }

  /** Serves peer requests (object operations as primary, disk operations as replica). */
  peerHandler(): (request: HandlerRequest) => Promise<HandlerReply> {
    const gateway = this.gateway;
    assert(gateway, 'peer requests are served in multi-host mode only');
    return makeHandler({
      hostId: this.hostId,
      primary: this.replication,
      primaryOf: (key) => gateway.primaryOf(key),
      localStore: (disk) => this.upStore(disk),
      localStores: () => [...this.disks.keys()].flatMap((id) => this.upStore(id) ?? []),
    });
  }

  private get log(): Log {
    return this.options.log;
  }

  private get hostId(): string {
    return this.options.hostId ?? 'local';
  }

  private indexPath(diskId: number): string {
    return path.join(this.options.dataDir, 'index', `disk-${diskId}`);
  }

  private async attachDisks(): Promise<void> {
    if (!this.cluster.current().map.hosts.some((h) => h.id === this.hostId)) {
      await this.cluster.update((s) =>
        state.addHost(s, this.hostId, this.options.rack ?? 'rack-0'),
      );
    }
    // Only this host's disks: in a cluster the map also lists every other host's.
    const mine = new Set(
      this.cluster
        .current()
        .map.disks.filter((d) => d.host === this.hostId)
        .map((d) => String(d.id)),
    );
    const known = Object.fromEntries(
      Object.entries(this.cluster.current().disks).filter(([id]) => mine.has(id)),
    );
    const knownPaths = new Map(
      Object.entries(known).map(([id, loc]) => [path.resolve(loc.path), Number(id)]),
    );
    let requested = this.options.disks;
    if (requested.length === 0 && knownPaths.size === 0) {
      requested = Array.from({ length: DEFAULT_DISK_COUNT }, (_, i) => ({
        path: path.join(this.options.dataDir, 'disks', `disk-${i}.img`),
        sizeBytes: DEFAULT_DISK_SIZE_BYTES,
      }));
    }
    for (const id of knownPaths.values()) await this.openKnownDisk(id);
    for (const disk of requested) {
      if (knownPaths.has(path.resolve(disk.path))) continue;
      await this.addNewDisk(disk.path, disk.sizeBytes);
    }
    if (this.disks.size === 0) {
      throw new CisternError('EIO', 'no disk could be opened; see the log lines above');
    }
  }

  private async openKnownDisk(id: number): Promise<void> {
    const current = this.cluster.current();
    const location = current.disks[String(id)];
    const spec = current.map.disks.find((d) => d.id === id);
    assert(location && spec, `disk ${id} half-known`);
    // A disk down only because this host was away is opened: the monitor brings it
    // back up (stale, then recovered) once this daemon's lease is seen again. A disk
    // whose own device failed stays closed.
    if (!spec.up && !(this.options.cluster && state.downBecauseHostAway(location.error))) {
      this.log('disk.stays-down', {
        disk: id,
        path: location.path,
        reason: location.error ?? 'marked down',
      });
      return;
    }
    let device: BlockDevice | undefined;
    try {
      device = await openDevice(location.path);
      device = this.options.wrapDevice?.(id, device) ?? device;
      const store = await ObjectStore.open({ device, indexPath: this.indexPath(id) });
      if (store.stats().uuid !== location.uuid) {
        await store.close();
        throw new CisternError(
          'EINVAL',
          `${location.path} holds store ${store.stats().uuid}, not disk ${id} (${location.uuid})`,
        );
      }
      this.disks.set(id, { id, device, store });
      this.log('disk.opened', { disk: id, path: location.path, size: formatSize(device.size) });
    } catch (error) {
      await device?.close().catch(() => undefined);
      const message = error instanceof Error ? error.message : String(error);
      this.log('disk.failed', { disk: id, path: location.path, error: message });
      await this.cluster.update((s) => state.markDiskDown(s, id, message));
    }
  }

  private async addNewDisk(diskPath: string, sizeBytes: number | undefined): Promise<void> {
    fs.mkdirSync(path.dirname(path.resolve(diskPath)), { recursive: true });
    const exists = fs.existsSync(diskPath);
    const create = exists ? undefined : (sizeBytes ?? DEFAULT_DISK_SIZE_BYTES);
    const device = await openDevice(diskPath, create === undefined ? {} : { create });
    try {
      // The index directory is named after the disk id, which is known only once the
      // map takes the disk. Hosts joining a cluster together add disks at the same time,
      // so the id read before formatting may be taken by then: the map update refuses
      // (it changes nothing) and the disk is formatted again under the next free id.
      for (let attempt = 1; ; attempt += 1) {
        const id = this.cluster.current().nextDiskId;
        const wrapped = this.options.wrapDevice?.(id, device) ?? device;
        fs.rmSync(this.indexPath(id), { recursive: true, force: true });
        const store = await ObjectStore.open({
          device: wrapped,
          indexPath: this.indexPath(id),
          format: true,
        });
        let added: boolean;
        try {
          added = await this.cluster
            .update((s) => {
              if (s.nextDiskId !== id) throw new DiskIdTaken(id);
              const assigned = state.addDisk(s, this.hostId, {
                path: path.resolve(diskPath),
                uuid: store.stats().uuid,
                sizeBytes: device.size,
              });
              assert(assigned === id, `disk id ${assigned} assigned, ${id} expected`);
              return true;
            })
            .catch((error: unknown) => {
              if (error instanceof DiskIdTaken) return false;
              throw error;
            });
        } catch (error) {
          await store.close().catch(() => undefined);
          throw error;
        }
        if (added) {
          this.disks.set(id, { id, device: wrapped, store });
          this.log('disk.added', {
            disk: id,
            path: diskPath,
            size: formatSize(device.size),
            created: create !== undefined,
          });
          return;
        }
        await store.close();
        fs.rmSync(this.indexPath(id), { recursive: true, force: true });
        if (attempt >= DISK_ID_ATTEMPTS_MAX) {
          throw new CisternError(
            'UNAVAILABLE',
            `could not add ${diskPath}: ${attempt} disk ids were taken by other hosts first`,
          );
        }
      }
    } catch (error) {
      await device.close().catch(() => undefined);
      throw error;
    }
  }

  private async ensureDefaultPool(): Promise<void> {
    if (this.cluster.current().map.pools.length > 0) return;
    const disks = this.cluster.current().map.disks.length;
    const size = Math.min(DEFAULT_POOL_SIZE, disks);
    await this.createPool({ name: DEFAULT_POOL_NAME, size, minSize: 1, failureDomain: 'disk' });
  }

  /** Placement for a pool at the current epoch, recomputed only when the map changes. */
  private table(poolId: number): PlacementTable {
    const { map } = this.cluster.current();
    const cached = this.tables.get(poolId);
    if (cached && cached.epoch === map.epoch) return cached.table;
    const table = computeTable(map, poolId);
    this.tables.set(poolId, { epoch: map.epoch, table });
    return table;
  }

  /** A local up disk's store; undefined for a down, missing or remote disk. */
  private upStore(diskId: number): ObjectStore | undefined {
    const disk = this.cluster.current().map.disks.find((d) => d.id === diskId);
    if (!disk || !disk.up || disk.host !== this.hostId) return undefined;
    return this.disks.get(diskId)?.store;
  }

  /** Where the primary engine writes a replica: a local store or another host's disk. */
  private endpoint(diskId: number): ObjectEndpoint | undefined {
    const disk = this.cluster.current().map.disks.find((d) => d.id === diskId);
    if (!disk || !disk.up) return undefined;
    if (disk.host === this.hostId) return this.disks.get(diskId)?.store;
    const transport = this.options.cluster?.transport;
    if (!transport) return undefined;
    let remote = this.remoteDisks.get(diskId);
    if (!remote || remote.hostId !== disk.host) {
      remote = new RemoteDisk(transport, disk.host, diskId, () => this.cluster.current().map.epoch);
      this.remoteDisks.set(diskId, remote);
    }
    return remote;
  }

  private async diskFailed(diskId: number, error: CisternError): Promise<void> {
    const spec = this.cluster.current().map.disks.find((d) => d.id === diskId);
    if (!spec || !spec.up) return;
    const message = `${error.code}: ${error.message}`;
    // Every request in flight to a dead host fails at about the same moment, here and on
    // every other host, and each reports the disk. Only the first report may change the
    // map: every update bumps the epoch, and each bump makes every daemon refuse the
    // requests still in flight at the old one — a burst of them in a row outlasted the
    // gateway's retries and reached clients as EIO.
    const changed = await this.cluster
      .update((s) => {
        if (!markDownChanges(s, diskId, message)) throw new AlreadyDown();
        return state.markDiskDown(s, diskId, message);
      })
      .catch((failure: unknown) => {
        if (failure instanceof AlreadyDown) return false;
        throw failure;
      });
    if (changed) {
      this.log('disk.failed', {
        disk: diskId,
        error: message,
        action: 'taken out of service; I/O continues on the other replicas',
      });
    }
  }

  /**
   * The bytes each up replica holds for a range inside one object of a volume, read
   * from every disk directly (not through the primary): for tests and scrub.
   */
  async readReplicas(
    name: string,
    offset: number,
    length: number,
  ): Promise<Array<{ disk: number; data: Uint8Array }>> {
    const volume = state.findVolume(this.cluster.current(), name);
    const object = Math.floor(offset / volume.objectSizeBytes);
    const offsetInObject = offset - object * volume.objectSizeBytes;
    if (offsetInObject + length > volume.objectSizeBytes) {
      throw new CisternError('EINVAL', 'readReplicas takes a range inside one object');
    }
    const key = { pool: volume.pool, volume: volume.id, object };
    const table = this.table(volume.pool);
    const result: Array<{ disk: number; data: Uint8Array }> = [];
    for (const disk of locateObject(table, volume.id, object)) {
      const store = this.upStore(disk);
      if (store) result.push({ disk, data: await store.read(key, offsetInObject, length) });
    }
    return result;
  }

  // ---- ExportProvider ----

  async list(): Promise<ExportInfo[]> {
    const current = this.cluster.current();
    return current.volumes.map((v) => ({
      name: v.name,
      description: `Cistern volume ${v.name} (pool ${current.map.pools.find((p) => p.id === v.pool)?.name})`,
      size: v.sizeBytes,
      readOnly: false,
    }));
  }

  async open(name: string, options: { readOnly: boolean }): Promise<VolumeHandle> {
    if (this.closed) throw new CisternError('CLOSED', 'datastore is closing');
    const spec = { ...state.findVolume(this.cluster.current(), name) };
    this.openHandles.set(name, (this.openHandles.get(name) ?? 0) + 1);
    return new Volume(spec, this.io, options.readOnly, () => {
      const count = (this.openHandles.get(name) ?? 1) - 1;
      if (count <= 0) this.openHandles.delete(name);
      else this.openHandles.set(name, count);
    });
  }

  // ---- DatastoreAdmin ----

  async createPool(request: CreatePoolRequest): Promise<PoolInfo> {
    const hosts = this.cluster.current().map.hosts.length;
    const domain: FailureDomain = request.failureDomain ?? (hosts > 1 ? 'host' : 'disk');
    const pool = await this.cluster.update((s) =>
      state.createPool(s, { ...request, failureDomain: domain }),
    );
    this.log('pool.created', {
      pool: pool.name,
      size: pool.size,
      minSize: pool.minSize,
      pgs: pool.pgCount,
      domain,
    });
    return this.poolInfo(pool.id);
  }

  async listPools(): Promise<PoolInfo[]> {
    return Promise.all(this.cluster.current().map.pools.map((p) => this.poolInfo(p.id)));
  }

  private async poolInfo(poolId: number): Promise<PoolInfo> {
    let storedBytes = 0;
    for (const disk of this.disks.values()) {
      if (!this.upStore(disk.id)) continue;
      for await (const key of disk.store.listObjects({ pool: poolId })) {
        void key;
        storedBytes += disk.store.objectSizeBytes;
      }
    }
    return poolInfo(this.cluster.current(), poolId, storedBytes);
  }

  async createVolume(request: CreateVolumeRequest): Promise<VolumeInfo> {
    const pools = this.cluster.current().map.pools;
    const poolName =
      request.pool ??
      (pools.length === 1 ? pools[0]?.name : DEFAULT_POOL_NAME) ??
      DEFAULT_POOL_NAME;
    const volume = await this.cluster.update((s) =>
      state.createVolume(s, request.name, request.sizeBytes, poolName),
    );
    this.log('volume.created', {
      volume: volume.name,
      size: formatSize(volume.sizeBytes),
      pool: poolName,
    });
    return this.volumeInfo(volume.name);
  }

  async listVolumes(): Promise<VolumeInfo[]> {
    return Promise.all(this.cluster.current().volumes.map((v) => this.volumeInfo(v.name)));
  }

  async volumeInfo(name: string): Promise<VolumeInfo> {
    const current = this.cluster.current();
    const volume = state.findVolume(current, name);
    const objects = new Set<number>();
    for (const disk of this.disks.values()) {
      if (!this.upStore(disk.id)) continue;
      for await (const key of disk.store.listObjects({ pool: volume.pool, volume: volume.id }))
        objects.add(key.object);
    }
    return {
      id: volume.id,
      name: volume.name,
      pool: current.map.pools.find((p) => p.id === volume.pool)?.name ?? String(volume.pool),
      sizeBytes: volume.sizeBytes,
      objectSizeBytes: volume.objectSizeBytes,
      usedBytes: objects.size * volume.objectSizeBytes,
      createdAt: volume.createdAt,
      openHandles: this.openHandles.get(name) ?? 0,
      iscsi: publicAccess(volume.name, volume.iscsi),
    };
  }

  async resizeVolume(
    name: string,
    sizeBytes: number,
    options: { allowShrink?: boolean },
  ): Promise<VolumeInfo> {
    const volume = state.findVolume(this.cluster.current(), name);
    if (sizeBytes < volume.sizeBytes) {
      if (!options.allowShrink)
        state.resizeVolume(structuredClone(this.cluster.current()), name, sizeBytes, false);
      // Discard the tail before the size changes: a later grow must find zeros there.
      await this.discardFrom(volume, sizeBytes);
    }
    await this.cluster.update((s) =>
      state.resizeVolume(s, name, sizeBytes, options.allowShrink === true),
    );
    this.log('volume.resized', {
      volume: name,
      from: formatSize(volume.sizeBytes),
      to: formatSize(sizeBytes),
    });
    return this.volumeInfo(name);
  }

  /** Deletes every object of a volume at or past `offset` and zeros the rest of its last object. */
  private async discardFrom(volume: state.VolumeSpec, offset: number): Promise<void> {
    const objectSize = volume.objectSizeBytes;
    const firstWhole = Math.ceil(offset / objectSize);
    const keys = new Map<number, { pool: number; volume: number; object: number }>();
    if (this.options.cluster) {
      // Objects live on other hosts too: name every object past the end (deleting a
      // missing one costs a message, not I/O).
      const end = Math.ceil(volume.sizeBytes / objectSize);
      for (let object = firstWhole; object < end; object += 1) {
        keys.set(object, { pool: volume.pool, volume: volume.id, object });
      }
    } else {
      for (const disk of this.disks.values()) {
        if (!this.upStore(disk.id)) continue;
        for await (const key of disk.store.listObjects({ pool: volume.pool, volume: volume.id })) {
          if (key.object >= firstWhole) keys.set(key.object, key);
        }
      }
    }
    const pending = [...keys.values()];
    const workers = Array.from({ length: DISCARD_PARALLEL }, async () => {
      for (let key = pending.pop(); key; key = pending.pop()) await this.io.deleteObject(key);
    });
    await Promise.all(workers);
    if (offset % objectSize !== 0) {
      const object = Math.floor(offset / objectSize);
      const start = offset - object * objectSize;
      await this.io.zero(
        { pool: volume.pool, volume: volume.id, object },
        start,
        objectSize - start,
        false,
      );
    }
    await this.flushAll();
  }

  async removeVolume(name: string, options: { force?: boolean }): Promise<void> {
    const volume = state.findVolume(this.cluster.current(), name);
    const open = this.openHandles.get(name) ?? 0;
    if (open > 0 && !options.force) {
      throw new CisternError(
        'EPERM',
        `volume ${name} is open by ${open} connection(s); disconnect them or pass --force`,
      );
    }
    this.log('volume.removing', { volume: name });
    await this.discardFrom(volume, 0);
    await this.cluster.update((s) => state.removeVolume(s, name));
    this.log('volume.removed', { volume: name });
  }

  private async flushAll(): Promise<void> {
    await this.io.flush();
    for (const disk of this.disks.values()) {
      if (this.upStore(disk.id)) await disk.store.flush();
    }
  }

  async status(): Promise<StatusReport> {
    const current = this.cluster.current();
    const disks: DiskInfo[] = current.map.disks.map((d) => {
      const location = current.disks[String(d.id)];
      const open = this.disks.get(d.id);
      const stats = d.up && open ? open.store.stats() : undefined;
      const info: DiskInfo = {
        id: d.id,
        path: location?.path ?? '?',
        host: d.host,
        up: d.up,
        in: d.in,
        sizeBytes: location?.sizeBytes ?? 0,
        usedBytes: stats ? stats.slotsUsed * stats.objectSizeBytes : 0,
      };
      if (location?.error) info.error = location.error;
      return info;
    });
    const pools = await this.listPools();
    const messages: string[] = [];
    for (const disk of disks.filter((d) => !d.up)) {
      messages.push(
        `disk ${disk.id} (${disk.path}) is out of service: ${disk.error ?? 'down'}. Its replicas are served ` +
          'from the other disks. Replace or repair it; until recovery lands (a later release), data written ' +
          'meanwhile exists only on the remaining replicas.',
      );
    }
    for (const pool of pools) {
      if (pool.pgsUnavailable > 0) {
        messages.push(
          `pool ${pool.name}: ${pool.pgsUnavailable} of ${pool.pgCount} PGs have fewer than min-size ` +
            `(${pool.minSize}) disks up; I/O to them fails. Bring the failed disks back.`,
        );
      } else if (pool.pgsDegraded > 0) {
        messages.push(
          `pool ${pool.name} is degraded: ${pool.pgsDegraded} of ${pool.pgCount} PGs have fewer than ` +
            `${pool.size} up-to-date replicas (a disk is down, or back but missing writes made ` +
            'while it was away, which it takes but does not serve until recovery); writes continue.',
        );
      }
    }
    messages.push(...incompleteMessages(current));
    const pgTotals: Record<string, number> = {};
    for (const pool of current.map.pools) {
      for (const [name, count] of Object.entries(pgStates(current, pool.id)))
        pgTotals[name] = (pgTotals[name] ?? 0) + count;
    }
    // One host measures what a PG copy holds; a cluster member sees only its own disks,
    // so it gives the provisioned upper bound instead.
    const measured = !this.options.cluster;
    const recovery = recoveryStatus(
      current,
      (poolId) => {
        const pool = pools.find((p) => p.id === poolId);
        const copies = Math.max(1, (pool?.size ?? 1) * (pool?.pgCount ?? 1));
        const bytes =
          (measured
            ? (pool?.storedBytes ?? 0)
            : (pool?.provisionedBytes ?? 0) * (pool?.size ?? 1)) / copies;
        return { objects: bytes / state.OBJECT_SIZE_DEFAULT_BYTES, bytes };
      },
      !measured,
      this.options.bandwidth?.recoveryBytesPerSecond ?? RECOVERY_BYTES_PER_SECOND_DEFAULT,
    );
    const health = pools.some((p) => p.pgsUnavailable > 0)
      ? 'unavailable'
      : messages.length > 0
        ? 'degraded'
        : 'ok';
    return {
      health,
      messages,
      epoch: current.map.epoch,
      hosts: current.map.hosts.length,
      disks,
      pools,
      volumes: current.volumes.length,
      capacityBytes: disks.filter((d) => d.up).reduce((sum, d) => sum + d.sizeBytes, 0),
      usedBytes: disks.reduce((sum, d) => sum + d.usedBytes, 0),
      pgStates: pgTotals,
      recovery: this.recovery ? { ...recovery, done: { ...this.recovery.totals } } : recovery,
    };
  }

  // ---- Scrub (DatastoreAdmin) ----

  async requestScrub(pool: string | undefined): Promise<ScrubStatus> {
    const request = await this.cluster.update((s) => requestScrub(s, pool, new Date()));
    this.log('scrub.requested', { id: request.id, pool: pool ?? '*' });
    return this.scrubStatus(request.id);
  }

  async scrubStatus(id: number): Promise<ScrubStatus> {
    const current = this.cluster.current();
    // Liveness is etcd's to know; from here, a host with an up disk is taken as live.
    const live = new Set(current.map.disks.filter((d) => d.up).map((d) => d.host));
    if (!this.options.cluster) live.add(this.hostId);
    return scrubStatusOf(current, id, [...live]);
  }

  // ---- iSCSI access rules (kept in the volume's record) ----

  async setVolumeAccess(name: string, change: AccessChange): Promise<VolumeInfo> {
    const after = await this.cluster.update((s) => setVolumeAccess(s, name, change));
    const shown = publicAccess(name, after);
    // Never the secrets: the log shows who may log in and how, not with what.
    this.log('volume.access-changed', {
      volume: name,
      initiators: shown.allowedInitiators.length === 0 ? 'any' : shown.allowedInitiators.join(','),
      chap: shown.chap,
    });
    return this.volumeInfo(name);
  }

  async access(volumeName: string): Promise<VolumeAccess> {
    return accessOf(this.cluster.current(), volumeName);
  }

  /** Flushes everything, closes every store and device, then the cluster store. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    for (const unsubscribe of this.unsubscribers.splice(0)) unsubscribe();
    await this.recovery?.close();
    await this.scrubber?.close();
    await this.strays?.close();
    await this.collecting;
    try {
      await this.io.flush().catch((error: unknown) => {
        if (!isCisternError(error)) throw error;
        this.log('datastore.flush-failed', { error: error.message });
      });
    } finally {
      for (const disk of this.disks.values()) {
        await disk.store.close().catch(() => undefined);
        await disk.device.close().catch(() => undefined);
      }
      this.disks.clear();
      // A shared (multi-host) cluster store belongs to whoever passed it in.
      if (!this.options.cluster) await this.cluster.close();
    }
  }
}
