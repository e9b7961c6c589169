// The cluster map: plain, JSON-serialisable data that every daemon holds a copy of and
// that the cluster store versions by epoch. Placement is a pure function of it.

import { CisternError } from '../util/errors';

export type FailureDomain = 'disk' | 'host' | 'rack';
export const failureDomains: readonly FailureDomain[] = ['disk', 'host', 'rack'];

export interface HostSpec {
  id: string;
  rack: string;
}

export interface DiskSpec {
  /** Cluster-wide, never reused: placement hashes it. */
  id: number;
  host: string;
  /** Placement weight, normally the capacity in bytes. Zero: receives no data. */
  weight: number;
  /** Down: not answering. Stays in PG sets (its data has not moved) but is skipped. */
  up: boolean;
  /** Out: never chosen; its data is re-placed elsewhere. */
  in: boolean;
}

/** One balancer exception: in this PG, disk `from` of the straw2 set is replaced by `to`. */
export type UpmapItem = [pg: number, from: number, to: number];

export interface PoolSpec {
  id: number;
  name: string;
  /** Replicas of every object. */
  size: number;
  /** Replicas that must hold a write before it is acknowledged. */
  minSize: number;
  /** Power of two, so that object → PG is a mask and PG splits stay cheap. */
  pgCount: number;
  failureDomain: FailureDomain;
  /** Balancer exceptions, applied over the straw2 draw (like Ceph's upmap items). */
  upmap: UpmapItem[];
}

export interface ClusterMap {
  epoch: number;
  hosts: HostSpec[];
  disks: DiskSpec[];
  pools: PoolSpec[];
}

/** Bounds on what a map may hold; beyond them it is refused, not slowly processed. */
export const MAP_DISKS_MAX = 1 << 20;
export const POOL_SIZE_MAX = 16;
export const POOL_PG_COUNT_MAX = 1 << 22;
/** Balancer exceptions a pool may carry: a few per PG at most would be pathological. */
export const POOL_UPMAP_ITEMS_MAX = 1 << 20;

export function isPowerOfTwo(value: number): boolean {
  return Number.isInteger(value) && value > 0 && (value & (value - 1)) === 0;
}

function invalid(message: string): CisternError {
  return new CisternError('EINVAL', message);
}

export function validatePool(pool: PoolSpec): void {
  if (!Number.isInteger(pool.id) || pool.id < 0 || pool.id > 0xffffffff) {
    throw invalid(`pool ${pool.name}: id must be a 32-bit unsigned integer`);
  }
  if (!Number.isInteger(pool.size) || pool.size < 1 || pool.size > POOL_SIZE_MAX) {
    throw invalid(`pool ${pool.name}: size must be 1..${POOL_SIZE_MAX}, got ${pool.size}`);
  }
  if (!Number.isInteger(pool.minSize) || pool.minSize < 1 || pool.minSize > pool.size) {
    throw invalid(`pool ${pool.name}: minSize must be 1..size (${pool.size}), got ${pool.minSize}`);
  }
  if (!isPowerOfTwo(pool.pgCount) || pool.pgCount > POOL_PG_COUNT_MAX) {
    throw invalid(
      `pool ${pool.name}: pgCount must be a power of two up to ${POOL_PG_COUNT_MAX}, got ${pool.pgCount}`,
    );
  }
  if (!failureDomains.includes(pool.failureDomain)) {
    throw invalid(`pool ${pool.name}: failure domain must be one of ${failureDomains.join(', ')}`);
  }
  if (pool.upmap.length > POOL_UPMAP_ITEMS_MAX) {
    throw invalid(
      `pool ${pool.name}: ${pool.upmap.length} balancer items, more than ${POOL_UPMAP_ITEMS_MAX}`,
    );
  }
}

/** Checks a whole map; throws EINVAL naming the first problem. */
export function validateMap(map: ClusterMap): void {
  if (!Number.isInteger(map.epoch) || map.epoch < 0) throw invalid(`bad map epoch ${map.epoch}`);
  if (map.disks.length > MAP_DISKS_MAX) throw invalid(`map has more than ${MAP_DISKS_MAX} disks`);
  const hosts = new Set<string>();
  for (const host of map.hosts) {
    if (hosts.has(host.id)) throw invalid(`host ${host.id} appears twice in the map`);
    if (!host.rack) throw invalid(`host ${host.id} has no rack`);
    hosts.add(host.id);
  }
  const disks = new Set<number>();
  for (const disk of map.disks) {
    if (!Number.isInteger(disk.id) || disk.id < 0 || disk.id > 0x7fffffff) {
      throw invalid(`disk id ${disk.id} is not a 31-bit unsigned integer`);
    }
    if (disks.has(disk.id)) throw invalid(`disk ${disk.id} appears twice in the map`);
    if (!hosts.has(disk.host)) throw invalid(`disk ${disk.id} is on unknown host ${disk.host}`);
    if (!Number.isFinite(disk.weight) || disk.weight < 0) {
      throw invalid(`disk ${disk.id} has a bad weight ${disk.weight}`);
    }
    disks.add(disk.id);
  }
  const poolIds = new Set<number>();
  const poolNames = new Set<string>();
  for (const pool of map.pools) {
    validatePool(pool);
    if (poolIds.has(pool.id)) throw invalid(`pool id ${pool.id} appears twice`);
    if (poolNames.has(pool.name)) throw invalid(`pool name ${pool.name} appears twice`);
    poolIds.add(pool.id);
    poolNames.add(pool.name);
  }
}

export function findPool(map: ClusterMap, nameOrId: string | number): PoolSpec {
  const pool = map.pools.find((p) => p.name === nameOrId || p.id === nameOrId);
  if (!pool) throw new CisternError('UNKNOWN_POOL', `no pool "${nameOrId}" in the cluster map`);
  return pool;
}
