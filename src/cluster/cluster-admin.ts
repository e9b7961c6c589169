// Administration of a multi-host cluster straight through its cluster store: pools and
// volumes are state mutations, listings and status are read from the state and the
// liveness keys. This is what `cistern --etcd URL …` runs; no daemon is involved, so
// figures only daemons know (bytes written, open NBD connections) are reported as 0.

import { assert } from '../util/assert';
import { CisternError } from '../util/errors';
import type { Log } from '../daemon/log';
import { FailureDomain } from '../placement/map';
import { computeTable } from '../placement/straw2';
import {
  CreatePoolRequest,
  CreateVolumeRequest,
  DatastoreAdmin,
  DiskInfo,
  PoolInfo,
  StatusReport,
  VolumeInfo,
} from '../volume/admin';
import * as state from './state';
import { ClusterStore } from './store';
import { EtcdClusterStore, EtcdStoreOptions } from './etcd';
import { ScrubStatus, requestScrub, scrubStatusOf } from './scrub-state';
import { recoveryStatus } from './recovery-status';
import { AccessChange, publicAccess, setVolumeAccess } from './iscsi-access';
import { RECOVERY_BYTES_PER_SECOND_DEFAULT } from '../replication/recovery';

/** The pool `volume create` uses when none is named and there is more than one. */
export const DEFAULT_POOL_NAME = 'default';

/**
 * PG states, as Ceph names them. `incomplete`: inactive, and no up member is known to
 * hold every acknowledged write (state.incompletePgs); not counted as `inactive` too.
 */
export type PgState = 'active+clean' | 'active+degraded' | 'inactive' | 'incomplete';

export interface HostInfo {
  id: string;
  rack: string;
  /** Peer address ("IP:PORT"), '-' when unknown. */
  address: string;
  nbd?: string;
  /** Its liveness lease is current (on one host: the daemon answered). */
  alive: boolean;
  disksUp: number;
  disksTotal: number;
}

export interface ClusterStatusReport extends StatusReport {
  hostsUp: string[];
  hostsDown: string[];
  /** PGs of all pools counted by state. */
  pgStates: Record<PgState, number>;
}

export interface ClusterAdminOptions {
  /** The ids of hosts whose liveness lease is current; without it, hosts with an up disk. */
  aliveHosts?: () => Promise<ReadonlySet<string>>;
  log?: Log;
  /** Called by close(), e.g. to close a store this admin opened. */
  onClose?: () => Promise<void>;
}

export class ClusterAdmin implements DatastoreAdmin {
  private readonly log: Log;

  constructor(
    readonly store: ClusterStore,
    private readonly options: ClusterAdminOptions = {},
    /** An NBD address of some live host, for the CLI's "connect:" hints. */
    readonly nbd: string | undefined = undefined,
  ) {
    this.log = options.log ?? (() => undefined);
  }

  /** Opens the etcd store (no watch: every call reads or transacts) and an admin on it. */
  static async openEtcd(options: EtcdStoreOptions): Promise<ClusterAdmin> {
    const store = await EtcdClusterStore.open({ ...options, watch: false });
    try {
      const alive = await store.aliveHosts();
      const nbd = [...alive.values()].find((record) => record.nbd)?.nbd;
      const admin = new ClusterAdmin(
        store,
        {
          aliveHosts: async () => new Set((await store.aliveHosts()).keys()),
          ...(options.log ? { log: options.log } : {}),
          onClose: () => store.close(),
        },
        nbd,
      );
      return admin;
    } catch (error) {
      await store.close();
      throw error;
    }
  }

  async close(): Promise<void> {
    await this.options.onClose?.();
  }

  // ---- pools ----

  async createPool(request: CreatePoolRequest): Promise<PoolInfo> {
    const domain: FailureDomain = request.failureDomain ?? 'host';
    const pool = await this.store.update((s) =>
      state.createPool(s, { ...request, failureDomain: domain }),
    );
    this.log('pool.created', { pool: pool.name, size: pool.size, minSize: pool.minSize });
    return this.poolInfo(this.store.current(), pool.id);
  }

  async listPools(): Promise<PoolInfo[]> {
    const current = await this.fresh();
    return current.map.pools.map((p) => this.poolInfo(current, p.id));
  }

  private poolInfo(current: state.ClusterState, poolId: number): PoolInfo {
    return poolInfo(current, poolId, 0); // only the daemons know what their disks hold
  }

  // ---- volumes ----

  async createVolume(request: CreateVolumeRequest): Promise<VolumeInfo> {
    const volume = await this.store.update((s) => {
      const pools = s.map.pools;
      const poolName = request.pool ?? (pools.length === 1 ? pools[0]?.name : undefined);
      return state.createVolume(s, request.name, request.sizeBytes, poolName ?? DEFAULT_POOL_NAME);
    });
    this.log('volume.created', { volume: volume.name, sizeBytes: volume.sizeBytes });
    return this.volumeInfoOf(this.store.current(), volume);
  }

  async listVolumes(): Promise<VolumeInfo[]> {
    const current = await this.fresh();
    return current.volumes.map((v) => this.volumeInfoOf(current, v));
  }

  async volumeInfo(name: string): Promise<VolumeInfo> {
    const current = await this.fresh();
    return this.volumeInfoOf(current, state.findVolume(current, name));
  }

  private volumeInfoOf(current: state.ClusterState, volume: state.VolumeSpec): VolumeInfo {
    return {
      id: volume.id,
      name: volume.name,
      pool: current.map.pools.find((p) => p.id === volume.pool)?.name ?? String(volume.pool),
      sizeBytes: volume.sizeBytes,
      objectSizeBytes: volume.objectSizeBytes,
      usedBytes: 0, // what the objects hold is known to the daemons, not the map
      createdAt: volume.createdAt,
      openHandles: 0, // NBD connections are the daemons' to count
      iscsi: publicAccess(volume.name, volume.iscsi),
    };
  }

  /** Changes a volume's iSCSI rules in the map; every daemon applies them at the next login. */
  async setVolumeAccess(name: string, change: AccessChange): Promise<VolumeInfo> {
    await this.store.update((s) => setVolumeAccess(s, name, change));
    this.log('volume.access-changed', { volume: name });
    return this.volumeInfoOf(this.store.current(), state.findVolume(this.store.current(), name));
  }

  async resizeVolume(
    name: string,
    sizeBytes: number,
    options: { allowShrink?: boolean },
  ): Promise<VolumeInfo> {
    const volume = await this.store.update((s) => {
      const before = state.findVolume(s, name);
      if (sizeBytes < before.sizeBytes && options.allowShrink) {
        // Shrinking must first discard the tail on every replica, or a later grow would
        // show old data there; that needs the daemons, which do not do it yet.
        throw new CisternError(
          'ENOTSUP',
          `shrinking ${name} in a multi-host cluster is not supported yet (the daemons must ` +
            'discard its tail first); only growing is',
        );
      }
      return state.resizeVolume(s, name, sizeBytes, false);
    });
    this.log('volume.resized', { volume: name, sizeBytes });
    return this.volumeInfoOf(this.store.current(), volume);
  }

  /**
   * Removes the volume from the state. The daemons garbage-collect the objects of
   * volumes that no longer exist and drop their NBD handles, so `force` changes nothing
   * here: this process cannot see their connections.
   */
  async removeVolume(name: string, options: { force?: boolean }): Promise<void> {
    void options;
    await this.store.update((s) => state.removeVolume(s, name));
    this.log('volume.removed', { volume: name });
  }

  // ---- hosts and status ----

  async listHosts(): Promise<HostInfo[]> {
    const current = await this.fresh();
    const alive = await this.aliveSet(current);
    return current.map.hosts.map((host) => {
      const disks = current.map.disks.filter((d) => d.host === host.id);
      const location = current.hostAddresses[host.id];
      return {
        id: host.id,
        rack: host.rack,
        address: location?.address ?? '-',
        ...(location?.nbd !== undefined ? { nbd: location.nbd } : {}),
        alive: alive.has(host.id),
        disksUp: disks.filter((d) => d.up).length,
        disksTotal: disks.length,
      };
    });
  }

  async status(): Promise<ClusterStatusReport> {
    const current = await this.fresh();
    const alive = await this.aliveSet(current);
    const hostsUp = current.map.hosts.filter((h) => alive.has(h.id)).map((h) => h.id);
    const hostsDown = current.map.hosts.filter((h) => !alive.has(h.id)).map((h) => h.id);
    const disks: DiskInfo[] = current.map.disks.map((d) => {
      const location = current.disks[String(d.id)];
      return {
        id: d.id,
        path: location?.path ?? '?',
        host: d.host,
        up: d.up,
        in: d.in,
        sizeBytes: location?.sizeBytes ?? 0,
        usedBytes: 0, // the daemons know; the map does not
        ...(location?.error !== undefined ? { error: location.error } : {}),
      };
    });
    const pools = current.map.pools.map((p) => this.poolInfo(current, p.id));
    const totals: Record<PgState, number> = {
      'active+clean': 0,
      'active+degraded': 0,
      inactive: 0,
      incomplete: 0,
    };
    for (const pool of current.map.pools) {
      const counts = pgStates(current, pool.id);
      for (const key of Object.keys(totals) as PgState[]) totals[key] += counts[key];
    }
    const messages = [...statusMessages(hostsDown, disks, pools), ...incompleteMessages(current)];
    const health =
      totals.inactive + totals.incomplete > 0
        ? 'unavailable'
        : messages.length > 0
          ? 'degraded'
          : 'ok';
    return {
      health,
      messages,
      epoch: current.map.epoch,
      hosts: current.map.hosts.length,
      hostsUp,
      hostsDown,
      disks,
      pools,
      pgStates: totals,
      // The map does not know what the objects hold: provisioned sizes give an upper bound.
      recovery: recoveryStatus(
        current,
        (poolId) => {
          const pool = pools.find((p) => p.id === poolId);
          const bytes = pool ? pool.provisionedBytes / Math.max(1, pool.pgCount) : 0;
          return { objects: bytes / state.OBJECT_SIZE_DEFAULT_BYTES, bytes };
        },
        true,
        RECOVERY_BYTES_PER_SECOND_DEFAULT,
      ),
      volumes: current.volumes.length,
      capacityBytes: disks.filter((d) => d.up && d.in).reduce((sum, d) => sum + d.sizeBytes, 0),
      usedBytes: 0,
    };
  }

  // ---- scrub ----

  /** Records a scrub request; every daemon scrubs the PGs it is primary of and reports. */
  async requestScrub(pool: string | undefined): Promise<ScrubStatus> {
    const request = await this.store.update((s) => requestScrub(s, pool, new Date()));
    this.log('scrub.requested', { id: request.id, pool: pool ?? '*' });
    return this.scrubStatus(request.id);
  }

  /** Which live hosts have reported on scrub `id`, and what. */
  async scrubStatus(id: number): Promise<ScrubStatus> {
    const current = await this.fresh();
    const alive = await this.aliveSet(current);
    return scrubStatusOf(current, id, [...alive]);
  }

  /** The store's state, re-read first when the store can (etcd without a watch). */
  private async fresh(): Promise<state.ClusterState> {
    if (this.store instanceof EtcdClusterStore) return this.store.refresh();
    return this.store.current();
  }

  private async aliveSet(current: state.ClusterState): Promise<ReadonlySet<string>> {
    if (this.options.aliveHosts) return this.options.aliveHosts();
    const withUpDisk = new Set(current.map.disks.filter((d) => d.up).map((d) => d.host));
    const diskless = current.map.hosts.filter(
      (h) => !current.map.disks.some((d) => d.host === h.id),
    );
    for (const host of diskless) withUpDisk.add(host.id);
    return withUpDisk;
  }
}

/**
 * PGs of a pool by state: all `size` members up = active+clean; fewer but at least
 * minSize = active+degraded; fewer than minSize = inactive, or incomplete when no up
 * member is known to hold every acknowledged write (state.incompletePg). A pool that
 * cannot be placed any more (too many failure domains out) counts every PG inactive.
 */
export function pgStates(current: state.ClusterState, poolId: number): Record<PgState, number> {
  const counts: Record<PgState, number> = {
    'active+clean': 0,
    'active+degraded': 0,
    inactive: 0,
    incomplete: 0,
  };
  const pool = current.map.pools.find((p) => p.id === poolId);
  assert(pool, `unknown pool ${poolId}`);
  let table: ReturnType<typeof computeTable>;
  try {
    table = computeTable(current.map, pool.id);
  } catch (error) {
    if (!(error instanceof CisternError) || error.code !== 'PLACEMENT_IMPOSSIBLE') throw error;
    counts.inactive = pool.pgCount;
    return counts;
  }
  for (let pg = 0; pg < table.pgCount; pg += 1) {
    // A member counts when it is up and not stale (it may have missed writes); a PG
    // with members still to recover is not clean, however many good ones it keeps.
    const acting = state.actingMembers(current, table, pg);
    const members = acting.filter((m) => !m.stale).length;
    const recovering = acting.some((m) => m.stale);
    if (members >= pool.size && !recovering) counts['active+clean'] += 1;
    else if (members >= pool.minSize) counts['active+degraded'] += 1;
    else if (state.incompletePg(current, table, pg)) counts.incomplete += 1;
    else counts.inactive += 1;
  }
  return counts;
}

/**
 * What the operator reads about each incomplete PG (state.incompletePgs): which disks
 * held the only complete copies, and the two ways out — bring one of them back, or
 * accept the loss of what only they held.
 */
export function incompleteMessages(current: state.ClusterState): string[] {
  return state.incompletePgs(current).map((pg) => {
    const pool = current.map.pools.find((p) => p.id === pg.pool)!;
    const id = `${pool.name}/${pg.pg}`;
    const lost = pg.lost.map((disk) => {
      const spec = current.map.disks.find((d) => d.id === disk);
      const error = current.disks[String(disk)]?.error;
      return `${disk}${spec ? ` on ${spec.host}` : ''}${error ? ` (${error})` : ''}`;
    });
    const members = pg.members.join(', ');
    return (
      `PG ${id} is incomplete: ` +
      (lost.length > 0
        ? `only disk(s) ${lost.join(', ')} held every acknowledged write, and none is up`
        : 'no member is known to hold every acknowledged write') +
      `; its I/O waits. ` +
      (pg.accepted
        ? `Its loss was accepted: the daemon peering it serves the most complete copy of ` +
          `disk(s) ${members} (by their PG logs) once each has answered; writes only the ` +
          'lost disks held are gone.'
        : `Bring one of those disks back with its data and the PG recovers from it by ` +
          `itself; if none can come back, \`cistern pg accept-loss ${id}\` serves the most ` +
          `complete copy left of disk(s) ${members} (their PG logs decide) and loses the ` +
          'writes only the lost disks held.')
    );
  });
}

function statusMessages(hostsDown: string[], disks: DiskInfo[], pools: PoolInfo[]): string[] {
  const messages: string[] = [];
  for (const host of hostsDown) {
    messages.push(
      `host ${host} is down (its daemon does not renew its liveness lease); its disks are ` +
        'marked down by the monitor, and out after the down-out interval.',
    );
  }
  for (const disk of disks.filter((d) => !d.up && !hostsDown.includes(d.host))) {
    messages.push(`disk ${disk.id} on ${disk.host} is out of service: ${disk.error ?? 'down'}.`);
  }
  for (const pool of pools) {
    if (pool.pgsUnavailable > 0) {
      messages.push(
        `pool ${pool.name}: ${pool.pgsUnavailable} of ${pool.pgCount} PGs are inactive (fewer ` +
          `than min-size ${pool.minSize} disks up); I/O to them waits.`,
      );
    } else if (pool.pgsDegraded > 0) {
      messages.push(
        `pool ${pool.name} is degraded: ${pool.pgsDegraded} of ${pool.pgCount} PGs have fewer ` +
          `than ${pool.size} replicas up.`,
      );
    }
  }
  return messages;
}

/** Hosts as `host ls` shows them, from a one-host daemon's status report. */
export function hostsFromStatus(report: StatusReport): HostInfo[] {
  const byHost = new Map<string, DiskInfo[]>();
  for (const disk of report.disks) byHost.set(disk.host, [...(byHost.get(disk.host) ?? []), disk]);
  return [...byHost.entries()].map(([id, disks]) => ({
    id,
    rack: '-',
    address: '-',
    ...(report.nbd !== undefined ? { nbd: report.nbd } : {}),
    alive: true, // its daemon just answered
    disksUp: disks.filter((d) => d.up).length,
    disksTotal: disks.length,
  }));
}

/** A pool as the admin API reports it; `storedBytes` is what the caller could measure. */
export function poolInfo(
  current: state.ClusterState,
  poolId: number,
  storedBytes: number,
): PoolInfo {
  const pool = current.map.pools.find((p) => p.id === poolId);
  assert(pool, `pool ${poolId} vanished`);
  const volumes = current.volumes.filter((v) => v.pool === pool.id);
  const pgs = pgStates(current, pool.id);
  return {
    id: pool.id,
    name: pool.name,
    size: pool.size,
    minSize: pool.minSize,
    pgCount: pool.pgCount,
    failureDomain: pool.failureDomain,
    volumes: volumes.length,
    provisionedBytes: volumes.reduce((sum, v) => sum + v.sizeBytes, 0),
    storedBytes,
    pgsDegraded: pgs['active+degraded'] + pgs.inactive + pgs.incomplete,
    pgsUnavailable: pgs.inactive + pgs.incomplete,
  };
}
