// Builders for cluster maps with a regular shape: the simulator's clusters, tests and
// benchmarks. A real cluster's map is built by the cluster store as hosts join.

import { assert } from '../util/assert';
import { ClusterMap, DiskSpec, FailureDomain, HostSpec, PoolSpec, isPowerOfTwo } from './map';

export interface ClusterShape {
  hosts: number;
  disksPerHost: number;
  racks: number;
  diskSizeBytes: number;
}

export function hostName(index: number): string {
  return `host-${String(index).padStart(4, '0')}`;
}

export function rackName(index: number): string {
  return `rack-${String(index).padStart(3, '0')}`;
}

/** Hosts spread round-robin over racks; disk ids numbered host by host. */
export function buildCluster(shape: ClusterShape): ClusterMap {
  assert(shape.hosts >= 1 && shape.disksPerHost >= 1 && shape.racks >= 1, 'empty cluster shape');
  const hosts: HostSpec[] = [];
  const disks: DiskSpec[] = [];
  for (let h = 0; h < shape.hosts; h += 1) {
    hosts.push({ id: hostName(h), rack: rackName(h % shape.racks) });
    for (let d = 0; d < shape.disksPerHost; d += 1) {
      disks.push({
        id: h * shape.disksPerHost + d,
        host: hostName(h),
        weight: shape.diskSizeBytes,
        up: true,
        in: true,
      });
    }
  }
  return { epoch: 1, hosts, disks, pools: [] };
}

/** The power of two nearest to `disks × pgsPerDisk / size` PGs (Ceph's rule of thumb). */
export function pgCountFor(disks: number, pgsPerDisk: number, size: number): number {
  const target = Math.max(1, (disks * pgsPerDisk) / size);
  const below = 2 ** Math.floor(Math.log2(target));
  const count = target / below >= 1.5 ? below * 2 : below;
  assert(isPowerOfTwo(count), 'pg count must be a power of two');
  return count;
}

export function makePool(
  id: number,
  name: string,
  size: number,
  pgCount: number,
  failureDomain: FailureDomain,
  minSize = Math.max(1, size - 1),
): PoolSpec {
  return { id, name, size, minSize: Math.min(minSize, size), pgCount, failureDomain, upmap: [] };
}
