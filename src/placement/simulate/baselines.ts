// The two placements the simulator measures straw2 against, in the same run:
// - a consistent-hash ring with 128 virtual nodes per host (as Sheepdog used), each
//   host's points split among its disks by weight; a PG or object takes the first
//   `size` disks of distinct failure domains clockwise from its hash;
// - plain modulo: hash mod the number of failure domains, then the next domains in
//   order, and a disk inside each by hash mod its disk count (weights ignored).
// Both map the simulator's PGs to disks (so all three place the same bytes) and also
// locate single objects directly, for the look-up rate.

import { assert } from '../../util/assert';
import { CisternError } from '../../util/errors';
import { ClusterMap, PoolSpec } from '../map';
import { mix32, objectHash, pgSeed } from '../hash';
import { Topology, compileTopology } from '../topology';
import { Rows } from './movement';

export interface BaselinePlacement extends Rows {
  name: string;
  /** Writes the object's disk ids (primary first) into `out`. */
  locateObject(volume: number, objectNumber: number, out: Int32Array): void;
  /** Bytes held by the structures a look-up needs. */
  structureBytes: number;
}

export const RING_VNODES_PER_HOST = 128;

function requireDomains(topology: Topology, pool: PoolSpec): void {
  if (topology.domainCount < pool.size) {
    throw new CisternError(
      'PLACEMENT_IMPOSSIBLE',
      `pool ${pool.name} needs ${pool.size} ${pool.failureDomain}s, the map has ${topology.domainCount}`,
    );
  }
}

function fillRows(
  pool: PoolSpec,
  locateAt: (position: number, out: Int32Array) => void,
): Int32Array {
  const disks = new Int32Array(pool.pgCount * pool.size);
  for (let pg = 0; pg < pool.pgCount; pg += 1) {
    locateAt(pgSeed(pool.id, pg), disks.subarray(pg * pool.size, (pg + 1) * pool.size));
  }
  return disks;
}

export function ringPlacement(map: ClusterMap, pool: PoolSpec): BaselinePlacement {
  const topology = compileTopology(map, pool.failureDomain);
  requireDomains(topology, pool);
  const hostCount = new Set(map.disks.filter((d) => d.in && d.weight > 0).map((d) => d.host)).size;
  let totalWeight = 0;
  for (const weight of topology.diskWeights) totalWeight += weight;
  const meanHostWeight = totalWeight / hostCount;
  const points: Array<[number, number]> = [];
  topology.diskIds.forEach((id, index) => {
    const share = (topology.diskWeights[index] as number) / meanHostWeight;
    const vnodes = Math.max(1, Math.round(RING_VNODES_PER_HOST * share));
    for (let v = 0; v < vnodes; v += 1)
      points.push([mix32(mix32(id * 7919 + 1) ^ mix32(v + 0x5bd1e995)), index]);
  });
  points.sort((a, b) => a[0] - b[0] || a[1] - b[1]);
  const positions = Uint32Array.from(points, (p) => p[0]);
  const owners = Int32Array.from(points, (p) => p[1]);
  const size = pool.size;
  const domains = new Int32Array(size);

  const locateAt = (position: number, out: Int32Array): void => {
    let lo = 0;
    let hi = positions.length;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if ((positions[mid] as number) < position) lo = mid + 1;
      else hi = mid;
    }
    let found = 0;
    // Bounded walk: at most once round the ring.
    for (let step = 0; step < positions.length && found < size; step += 1) {
      const disk = owners[(lo + step) % positions.length] as number;
      const domain = topology.diskDomains[disk] as number;
      let clash = false;
      for (let i = 0; i < found; i += 1) if (domains[i] === domain) clash = true;
      if (clash) continue;
      domains[found] = domain;
      out[found] = topology.diskIds[disk] as number;
      found += 1;
    }
    assert(found === size, 'ring walk found too few failure domains');
  };
  return {
    name: 'ring',
    size,
    pgCount: pool.pgCount,
    disks: fillRows(pool, locateAt),
    locateObject: (volume, objectNumber, out) =>
      locateAt(objectHash(pool.id, volume, objectNumber), out),
    structureBytes: positions.byteLength + owners.byteLength,
  };
}

export function moduloPlacement(map: ClusterMap, pool: PoolSpec): BaselinePlacement {
  const topology = compileTopology(map, pool.failureDomain);
  requireDomains(topology, pool);
  const domainDisks: number[][] = Array.from({ length: topology.domainCount }, () => []);
  topology.diskIds.forEach((id, index) =>
    domainDisks[topology.diskDomains[index] as number]?.push(id),
  );
  const flat = Int32Array.from(domainDisks.flat());
  const starts = new Int32Array(domainDisks.length + 1);
  domainDisks.forEach(
    (list, index) => (starts[index + 1] = (starts[index] as number) + list.length),
  );
  const domainCount = domainDisks.length;
  const size = pool.size;

  const locateAt = (position: number, out: Int32Array): void => {
    const first = position % domainCount;
    for (let r = 0; r < size; r += 1) {
      const domain = (first + r) % domainCount;
      const start = starts[domain] as number;
      const count = (starts[domain + 1] as number) - start;
      out[r] = flat[start + (mix32(position + r) % count)] as number;
    }
  };
  return {
    name: 'modulo',
    size,
    pgCount: pool.pgCount,
    disks: fillRows(pool, locateAt),
    locateObject: (volume, objectNumber, out) =>
      locateAt(objectHash(pool.id, volume, objectNumber), out),
    structureBytes: flat.byteLength + starts.byteLength,
  };
}
