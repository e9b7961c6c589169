// An in-memory DaemonStore for tests of the daemon's shell (admin API, lifecycle, CLI
// formatting) that must not depend on disks: pools and volumes in maps, exports from the
// MemoryExportProvider, and hooks to make any admin call fail or report any status.

import { CisternError } from '../../src/util/errors';
import type { DaemonStore } from '../../src/daemon/daemon';
import type {
  CreatePoolRequest,
  CreateVolumeRequest,
  PoolInfo,
  StatusReport,
  VolumeInfo,
} from '../../src/volume/admin';
import type { ExportInfo, VolumeHandle } from '../../src/volume/backend';
import type { VolumeAccess } from '../../src/frontend/iscsi/access';
import { MemoryExportProvider } from '../../src/volume/memory-volume';

export class FakeStore implements DaemonStore {
  readonly exports = new MemoryExportProvider();
  readonly pools = new Map<string, PoolInfo>();
  readonly volumes = new Map<string, VolumeInfo>();
  readonly calls: string[] = [];
  /** Thrown by the next admin call (then cleared). */
  failNext: unknown;
  /** Replaces the computed status report. */
  statusOverride: StatusReport | undefined;
  closed = false;

  constructor() {
    this.pools.set('default', pool('default', 1, 2));
  }

  private enter(call: string): void {
    this.calls.push(call);
    if (this.closed) throw new CisternError('CLOSED', 'fake store is closed');
    const failure = this.failNext;
    if (failure !== undefined) {
      this.failNext = undefined;
      throw failure;
    }
  }

  async createPool(request: CreatePoolRequest): Promise<PoolInfo> {
    this.enter('createPool');
    if (this.pools.has(request.name))
      throw new CisternError('EEXIST', `pool ${request.name} exists`);
    const info = {
      ...pool(request.name, this.pools.size + 1, request.size),
      minSize: request.minSize ?? request.size,
      failureDomain: request.failureDomain ?? 'disk',
      pgCount: request.pgCount ?? 64,
    };
    this.pools.set(info.name, info);
    return info;
  }

  async listPools(): Promise<PoolInfo[]> {
    this.enter('listPools');
    return [...this.pools.values()];
  }

  async createVolume(request: CreateVolumeRequest): Promise<VolumeInfo> {
    this.enter('createVolume');
    const poolName = request.pool ?? 'default';
    if (!this.pools.has(poolName)) throw new CisternError('UNKNOWN_POOL', `no pool ${poolName}`);
    if (this.volumes.has(request.name)) {
      throw new CisternError('EEXIST', `volume ${request.name} exists`);
    }
    this.exports.create(request.name, request.sizeBytes);
    const info: VolumeInfo = {
      id: this.volumes.size + 1,
      name: request.name,
      pool: poolName,
      sizeBytes: request.sizeBytes,
      objectSizeBytes: 4 * 2 ** 20,
      usedBytes: 0,
      createdAt: new Date(0).toISOString(),
      openHandles: 0,
    };
    this.volumes.set(info.name, info);
    return info;
  }

  async listVolumes(): Promise<VolumeInfo[]> {
    this.enter('listVolumes');
    return [...this.volumes.values()];
  }

  async volumeInfo(name: string): Promise<VolumeInfo> {
    this.enter('volumeInfo');
    return this.find(name);
  }

  async resizeVolume(
    name: string,
    sizeBytes: number,
    options: { allowShrink?: boolean },
  ): Promise<VolumeInfo> {
    this.enter('resizeVolume');
    const info = this.find(name);
    if (sizeBytes < info.sizeBytes && !options.allowShrink) {
      throw new CisternError('EINVAL', `shrinking ${name} needs allowShrink`);
    }
    info.sizeBytes = sizeBytes;
    return info;
  }

  async removeVolume(name: string, options: { force?: boolean }): Promise<void> {
    this.enter('removeVolume');
    const info = this.find(name);
    if (info.openHandles > 0 && !options.force) {
      throw new CisternError('EPERM', `volume ${name} is open; pass --force`);
    }
    this.volumes.delete(name);
    this.exports.delete(name);
  }

  async status(): Promise<StatusReport> {
    this.enter('status');
    if (this.statusOverride) return this.statusOverride;
    return {
      health: 'ok',
      messages: [],
      epoch: 1,
      hosts: 1,
      disks: [],
      pools: [...this.pools.values()],
      volumes: this.volumes.size,
      capacityBytes: 0,
      usedBytes: 0,
    };
  }

  list(): Promise<ExportInfo[]> {
    return this.exports.list();
  }

  open(name: string, options: { readOnly: boolean }): Promise<VolumeHandle> {
    return this.exports.open(name, options);
  }

  /** Every volume open to any initiator without CHAP. */
  async access(name: string): Promise<VolumeAccess> {
    this.find(name);
    return { allowedInitiators: [] };
  }

  async close(): Promise<void> {
    this.closed = true;
  }

  private find(name: string): VolumeInfo {
    const info = this.volumes.get(name);
    if (!info) throw new CisternError('UNKNOWN_VOLUME', `no volume ${name}`);
    return info;
  }
}

function pool(name: string, id: number, size: number): PoolInfo {
  return {
    id,
    name,
    size,
    minSize: 1,
    pgCount: 64,
    failureDomain: 'disk',
    volumes: 0,
    provisionedBytes: 0,
    storedBytes: 0,
    pgsDegraded: 0,
    pgsUnavailable: 0,
  };
}
