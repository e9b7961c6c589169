// A cluster map compiled for one failure domain into flat typed arrays, so that a PG
// draw is a tight loop over integers. Only disks that are `in` with weight > 0 take
// part in draws; every disk (also out ones) stays known for state look-ups.

import { assert } from '../util/assert';
import { ClusterMap, DiskSpec, FailureDomain } from './map';
import { diskSalt } from './hash';

export interface Topology {
  readonly map: ClusterMap;
  readonly failureDomain: FailureDomain;
  /** Disks taking part in draws, by index. */
  readonly diskIds: Int32Array;
  readonly diskSalts: Int32Array;
  readonly diskWeights: Float64Array;
  /** Index of each drawn disk's weight in `weights`. */
  readonly diskWeightClass: Int32Array;
  /** Failure-domain index of each drawn disk. */
  readonly diskDomains: Int32Array;
  /** The distinct weights of drawn disks. */
  readonly weights: Float64Array;
  readonly domainCount: number;
  readonly domainNames: string[];
  /** Every disk of the map, drawn or not, by id. */
  readonly disksById: Map<number, DiskSpec>;
  /** Drawn disk id → its index in the arrays above. */
  readonly indexById: Map<number, number>;
}

export function domainOf(map: ClusterMap, disk: DiskSpec, failureDomain: FailureDomain): string {
  if (failureDomain === 'disk') return `disk:${disk.id}`;
  if (failureDomain === 'host') return `host:${disk.host}`;
  const host = map.hosts.find((h) => h.id === disk.host);
  assert(host, `disk ${disk.id} on unknown host ${disk.host}`);
  return `rack:${host.rack}`;
}

export function compileTopology(map: ClusterMap, failureDomain: FailureDomain): Topology {
  const rackOfHost = new Map(map.hosts.map((h) => [h.id, h.rack]));
  const domainKey = (disk: DiskSpec): string =>
    failureDomain === 'disk'
      ? `disk:${disk.id}`
      : failureDomain === 'host'
        ? `host:${disk.host}`
        : `rack:${rackOfHost.get(disk.host)}`;

  const drawn = map.disks.filter((d) => d.in && d.weight > 0);
  const domainIndex = new Map<string, number>();
  const weightIndex = new Map<number, number>();
  for (const disk of drawn) {
    const key = domainKey(disk);
    if (!domainIndex.has(key)) domainIndex.set(key, domainIndex.size);
    if (!weightIndex.has(disk.weight)) weightIndex.set(disk.weight, weightIndex.size);
  }
  const topology: Topology = {
    map,
    failureDomain,
    diskIds: Int32Array.from(drawn.map((d) => d.id)),
    diskSalts: Int32Array.from(drawn.map((d) => diskSalt(d.id) | 0)),
    diskWeights: Float64Array.from(drawn.map((d) => d.weight)),
    diskWeightClass: Int32Array.from(drawn.map((d) => weightIndex.get(d.weight) as number)),
    diskDomains: Int32Array.from(drawn.map((d) => domainIndex.get(domainKey(d)) as number)),
    weights: Float64Array.from(weightIndex.keys()),
    domainCount: domainIndex.size,
    domainNames: [...domainIndex.keys()],
    disksById: new Map(map.disks.map((d) => [d.id, d])),
    indexById: new Map(drawn.map((d, index) => [d.id, index])),
  };
  assert(topology.weights.length === weightIndex.size, 'weight classes disagree');
  return topology;
}
