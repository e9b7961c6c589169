// What the admin API and the CLI can ask of a datastore. The daemon serves this over
// HTTP on loopback; the embedded (one host) and etcd (many hosts) datastores both
// implement it, so the CLI never knows which one it talks to.

import { FailureDomain } from '../placement/map';
import type { RecoveryStatus } from '../cluster/recovery-status';
import type { ScrubStatus } from '../cluster/scrub-state';
import type { AccessChange, IscsiAccessInfo } from '../cluster/iscsi-access';

export interface PoolInfo {
  id: number;
  name: string;
  size: number;
  minSize: number;
  pgCount: number;
  failureDomain: FailureDomain;
  volumes: number;
  /** Bytes provisioned to this pool's volumes (one copy). */
  provisionedBytes: number;
  /** Bytes written to this pool's objects on all disks (all copies). */
  storedBytes: number;
  /** PGs with fewer up members than `size`, and with fewer than `minSize`. */
  pgsDegraded: number;
  pgsUnavailable: number;
}

export interface VolumeInfo {
  id: number;
  name: string;
  pool: string;
  sizeBytes: number;
  objectSizeBytes: number;
  /** Bytes the volume's objects hold on their primaries (one copy). */
  usedBytes: number;
  createdAt: string;
  /** NBD connections that have this volume open now. */
  openHandles: number;
  /** Its iSCSI target and access rules, without secrets. */
  iscsi?: IscsiAccessInfo;
}

export interface DiskInfo {
  id: number;
  path: string;
  host: string;
  up: boolean;
  in: boolean;
  sizeBytes: number;
  usedBytes: number;
  /** Why the disk is down, when it is. */
  error?: string;
}

export interface StatusReport {
  health: 'ok' | 'degraded' | 'unavailable';
  /** One line per thing an administrator should know or do. */
  messages: string[];
  epoch: number;
  hosts: number;
  disks: DiskInfo[];
  pools: PoolInfo[];
  volumes: number;
  capacityBytes: number;
  usedBytes: number;
  nbd?: string;
  /** Where this daemon serves iSCSI, when it does. */
  iscsi?: string;
  /** PGs of all pools by state (active+clean, active+degraded, inactive). */
  pgStates?: Record<string, number>;
  /** Stale PG members awaiting recovery, and an estimate of what is left. */
  recovery?: RecoveryStatus;
}

export interface CreatePoolRequest {
  name: string;
  size: number;
  minSize?: number;
  failureDomain?: FailureDomain;
  pgCount?: number;
}

export interface CreateVolumeRequest {
  name: string;
  sizeBytes: number;
  pool?: string;
}

export interface DatastoreAdmin {
  createPool(request: CreatePoolRequest): Promise<PoolInfo>;
  listPools(): Promise<PoolInfo[]>;
  createVolume(request: CreateVolumeRequest): Promise<VolumeInfo>;
  listVolumes(): Promise<VolumeInfo[]>;
  /** Throws UNKNOWN_VOLUME. */
  volumeInfo(name: string): Promise<VolumeInfo>;
  /** Growing is online; shrinking needs allowShrink and discards the tail. */
  resizeVolume(
    name: string,
    sizeBytes: number,
    options: { allowShrink?: boolean },
  ): Promise<VolumeInfo>;
  /** Refuses (EBUSY-like 'EPERM') while connections have it open unless force. */
  removeVolume(name: string, options: { force?: boolean }): Promise<void>;
  status(): Promise<StatusReport>;
  /**
   * Scrub (optional: a store without replicas has nothing to compare). Records a scrub
   * request for every daemon (all pools, or `pool`) and returns how it stands.
   */
  requestScrub?(pool: string | undefined): Promise<ScrubStatus>;
  /** How scrub request `id` stands: which hosts reported what. ENOENT if unknown. */
  scrubStatus?(id: number): Promise<ScrubStatus>;
  /**
   * Changes a volume's iSCSI access rules (initiator list, CHAP); the next login uses
   * them. Optional: a store without iSCSI has none. UNKNOWN_VOLUME, EINVAL.
   */
  setVolumeAccess?(name: string, change: AccessChange): Promise<VolumeInfo>;
}

/** Volume names become NBD export names and iSCSI target names: keep them plain. */
export const VOLUME_NAME_PATTERN = /^[a-zA-Z0-9][a-zA-Z0-9._-]{0,63}$/;
export const POOL_NAME_PATTERN = VOLUME_NAME_PATTERN;
