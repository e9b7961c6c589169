// The placement simulator behind `cistern placement simulate`: builds a cluster in
// memory, fills it with a volume population, and measures straw2 (raw and balanced)
// and two baselines on the same PGs and bytes: balance, movement when the map changes,
// recovery fan-out, look-up rate, recompute time and table memory.

import { performance } from 'node:perf_hooks';
import os from 'node:os';
import { assert } from '../../util/assert';
import { Random } from '../../util/random';
import { balancePool, carryUpmap, fillStats, FillStats } from '../balancer';
import { buildCluster, hostName, makePool, pgCountFor, rackName } from '../build';
import { ClusterMap, FailureDomain, PoolSpec } from '../map';
import { computeTable, locateObject, PlacementTable } from '../straw2';
import { BaselinePlacement, moduloPlacement, ringPlacement } from './baselines';
import { compareRows, Rows } from './movement';
import { buildPopulation } from './population';

export interface SimulationOptions {
  hosts: number;
  disksPerHost: number;
  racks: number;
  diskSizeBytes: number;
  size: number;
  failureDomain: FailureDomain;
  pgsPerDisk: number;
  seed: number;
  fillFraction: number;
  objectSizeBytes: number;
  objectsHashedMax: number;
  lookups: number;
}

export const defaultSimulationOptions: SimulationOptions = {
  hosts: 512,
  disksPerHost: 8,
  racks: 16,
  diskSizeBytes: 4 * 2 ** 40,
  size: 3,
  failureDomain: 'host',
  pgsPerDisk: 100,
  seed: 1,
  fillFraction: 0.7,
  objectSizeBytes: 4 * 2 ** 20,
  objectsHashedMax: 1 << 27,
  lookups: 2_000_000,
};

export interface ChangeReport {
  movedFraction: number;
  /** Fraction of all replica bytes moved between two disks the change did not touch. */
  movedBetweenOthers: number;
}

export interface PlacementReport {
  balance: FillStats;
  addHost: ChangeReport & { idealFraction: number; overIdeal: number };
  removeHost: ChangeReport & { idealFraction: number; overIdeal: number };
  reweight: ChangeReport;
  failHost: {
    fanOutDisks: number;
    fanOutFraction: number;
    fanOutHosts: number;
    otherDisks: number;
  };
  lookupsPerSecond: number;
  recomputeMs: number;
  tableBytes: number;
}

export interface SimulationReport extends PlacementReport {
  date: string;
  machine: string;
  parameters: SimulationOptions;
  disks: number;
  hostCount: number;
  pgs: number;
  population: {
    volumes: number;
    provisionedBytes: number;
    writtenBytes: number;
    objectsTotal: number;
    objectsHashed: number;
  };
  balanced: FillStats & {
    movedFraction: number;
    items: number;
    addHost: ChangeReport;
    removeHost: ChangeReport;
    reweight: ChangeReport;
  };
  /** Per-disk fill relative to the mean, for plots: straw2, balanced, ring, modulo. */
  fill: { straw2: number[]; balanced: number[]; ring: number[]; modulo: number[] };
  baselines: { ring: PlacementReport; modulo: PlacementReport };
  elapsedMs: number;
}

/** The map variants every placement is measured on. */
interface Variants {
  base: ClusterMap;
  addHost: ClusterMap;
  removeHost: ClusterMap;
  reweight: ClusterMap;
  failHost: ClusterMap;
  addedDisks: Set<number>;
  removedDisks: Set<number>;
  reweightedDisk: number;
  failedDisks: Set<number>;
}

function cloneMap(map: ClusterMap): ClusterMap {
  return {
    epoch: map.epoch + 1,
    hosts: map.hosts.map((h) => ({ ...h })),
    disks: map.disks.map((d) => ({ ...d })),
    pools: map.pools.map((p) => ({
      ...p,
      upmap: p.upmap.map((i) => [...i] as [number, number, number]),
    })),
  };
}

function buildVariants(base: ClusterMap, options: SimulationOptions): Variants {
  const addHost = cloneMap(base);
  const newHost = hostName(options.hosts);
  addHost.hosts.push({ id: newHost, rack: rackName(options.hosts % options.racks) });
  const addedDisks = new Set<number>();
  const nextId = Math.max(...base.disks.map((d) => d.id)) + 1;
  for (let d = 0; d < options.disksPerHost; d += 1) {
    addHost.disks.push({
      id: nextId + d,
      host: newHost,
      weight: options.diskSizeBytes,
      up: true,
      in: true,
    });
    addedDisks.add(nextId + d);
  }

  const removeHost = cloneMap(base);
  const removed = hostName(options.hosts - 1);
  const removedDisks = new Set(base.disks.filter((d) => d.host === removed).map((d) => d.id));
  removeHost.hosts = removeHost.hosts.filter((h) => h.id !== removed);
  removeHost.disks = removeHost.disks.filter((d) => d.host !== removed);

  const reweight = cloneMap(base);
  const reweighted = reweight.disks[0];
  assert(reweighted, 'cluster has no disk');
  reweighted.weight = reweighted.weight / 2;

  const failHost = cloneMap(base);
  const failed = hostName(0);
  const failedDisks = new Set<number>();
  for (const disk of failHost.disks) {
    if (disk.host !== failed) continue;
    disk.up = false;
    disk.in = false;
    failedDisks.add(disk.id);
  }
  return {
    base,
    addHost,
    removeHost,
    reweight,
    failHost,
    addedDisks,
    removedDisks,
    reweightedDisk: reweighted.id,
    failedDisks,
  };
}

type Placer = (map: ClusterMap, pool: PoolSpec) => Rows & { topologyWeights?: Float64Array };

function relativeFill(
  rows: Rows,
  map: ClusterMap,
  pgBytes: Float64Array,
): { stats: FillStats; fill: number[] } {
  const drawn = map.disks.filter((d) => d.in && d.weight > 0);
  const index = new Map(drawn.map((d, i) => [d.id, i]));
  const fill = new Float64Array(drawn.length);
  for (let pg = 0; pg < rows.pgCount; pg += 1) {
    for (let r = 0; r < rows.size; r += 1) {
      const disk = index.get(rows.disks[pg * rows.size + r] as number);
      assert(disk !== undefined, 'placement chose a disk that is out');
      fill[disk] = (fill[disk] as number) + (pgBytes[pg] as number);
    }
  }
  const weights = Float64Array.from(drawn.map((d) => d.weight));
  const stats = fillStats(fill, weights);
  const meanRatio = fill.reduce((a, b) => a + b, 0) / weights.reduce((a, b) => a + b, 0);
  return {
    stats,
    fill: Array.from(fill, (bytes, i) => bytes / (weights[i] as number) / meanRatio),
  };
}

function measureChanges(
  place: Placer,
  variants: Variants,
  pool: PoolSpec,
  pgBytes: Float64Array,
  options: SimulationOptions,
): Omit<PlacementReport, 'lookupsPerSecond' | 'recomputeMs' | 'tableBytes' | 'balance'> {
  const base = place(variants.base, pool);
  const added = compareRows(base, place(variants.addHost, pool), pgBytes, variants.addedDisks);
  const removed = compareRows(
    base,
    place(variants.removeHost, pool),
    pgBytes,
    variants.removedDisks,
  );
  const reweighted = compareRows(
    base,
    place(variants.reweight, pool),
    pgBytes,
    new Set([variants.reweightedDisk]),
  );
  const failed = compareRows(base, place(variants.failHost, pool), pgBytes, variants.failedDisks);
  const total = (m: { movedBetweenOthersBytes: number }): number =>
    m.movedBetweenOthersBytes / (sum(pgBytes) * pool.size);
  const addIdeal = 1 / (options.hosts + 1);
  const removeIdeal = 1 / options.hosts;
  const otherDisks = variants.base.disks.length - variants.failedDisks.size;
  const failedHosts = new Set(
    [...failed.receivingDisks].map((id) => variants.base.disks.find((d) => d.id === id)?.host),
  );
  return {
    addHost: {
      movedFraction: added.movedFraction,
      idealFraction: addIdeal,
      overIdeal: added.movedFraction / addIdeal,
      movedBetweenOthers: total(added),
    },
    removeHost: {
      movedFraction: removed.movedFraction,
      idealFraction: removeIdeal,
      overIdeal: removed.movedFraction / removeIdeal,
      movedBetweenOthers: total(removed),
    },
    reweight: { movedFraction: reweighted.movedFraction, movedBetweenOthers: total(reweighted) },
    failHost: {
      fanOutDisks: failed.receivingDisks.size,
      fanOutFraction: failed.receivingDisks.size / otherDisks,
      fanOutHosts: failedHosts.size,
      otherDisks,
    },
  };
}

function sum(values: Float64Array): number {
  let total = 0;
  for (const v of values) total += v;
  return total;
}

function timeMs(run: () => void, repeats: number): number {
  let best = Infinity;
  for (let i = 0; i < repeats; i += 1) {
    const start = performance.now();
    run();
    best = Math.min(best, performance.now() - start);
  }
  return best;
}

function lookupRate(count: number, locate: (volume: number, object: number) => number): number {
  let sink = 0;
  const start = performance.now();
  for (let i = 0; i < count; i += 1) sink += locate(1 + (i & 1023), i >>> 10);
  const elapsedMs = performance.now() - start;
  assert(Number.isFinite(sink), 'look-up loop produced nothing');
  return count / (elapsedMs / 1000);
}

export function machineDescription(): string {
  const cpus = os.cpus();
  return `${cpus[0]?.model ?? 'unknown CPU'}, ${cpus.length} cores, ${Math.round(os.totalmem() / 2 ** 30)} GiB, node ${process.version}`;
}

export function simulate(partial: Partial<SimulationOptions> = {}): SimulationReport {
  const options = { ...defaultSimulationOptions, ...partial };
  const started = performance.now();
  const random = new Random(options.seed);
  const map = buildCluster(options);
  const disks = map.disks.length;
  const pgs = pgCountFor(disks, options.pgsPerDisk, options.size);
  const pool = makePool(1, 'sim', options.size, pgs, options.failureDomain);
  map.pools.push(pool);
  const population = buildPopulation(pool, {
    rawCapacityBytes: disks * options.diskSizeBytes,
    fillFraction: options.fillFraction,
    size: options.size,
    objectSizeBytes: options.objectSizeBytes,
    objectsHashedMax: options.objectsHashedMax,
    random,
  });
  const pgBytes = population.pgBytes;
  const variants = buildVariants(map, options);

  // straw2, raw.
  let table: PlacementTable | undefined;
  const recomputeMs = timeMs(() => (table = computeTable(map, pool.id)), 2);
  assert(table, 'table computed');
  const straw: Placer = (m) => computeTable(m, pool.id);
  const rawFill = relativeFill(table, map, pgBytes);
  const strawChanges = measureChanges(straw, variants, pool, pgBytes, options);
  const finalTable = table;
  const lookupsPerSecond = lookupRate(
    options.lookups,
    (v, o) => locateObject(finalTable, v, o)[0] as number,
  );

  // straw2 with the balancer's items, carried unchanged into each changed map.
  const balance = balancePool(map, pool.id, pgBytes);
  const balancedMap: ClusterMap = {
    ...map,
    pools: map.pools.map((p) => ({ ...p, upmap: balance.items })),
  };
  // Each changed map gets the items as the monitor would carry them across the change.
  const balancedPlacer: Placer = (m) => {
    const items =
      m === map
        ? balance.items
        : carryUpmap(balancedMap, { ...m, pools: balancedMap.pools }, pool.id);
    return computeTable({ ...m, pools: m.pools.map((p) => ({ ...p, upmap: items })) }, pool.id);
  };
  const balancedTable = balancedPlacer(map, pool);
  const balancedFill = relativeFill(balancedTable, map, pgBytes);
  const balancedChanges = measureChanges(balancedPlacer, variants, pool, pgBytes, options);

  const baselineReport = (make: (m: ClusterMap, p: PoolSpec) => BaselinePlacement) => {
    let placement: BaselinePlacement | undefined;
    const ms = timeMs(() => (placement = make(map, pool)), 1);
    assert(placement, 'baseline computed');
    const out = new Int32Array(pool.size);
    const located = placement;
    const rate = lookupRate(options.lookups, (v, o) => {
      located.locateObject(v, o, out);
      return out[0] as number;
    });
    const fill = relativeFill(located, map, pgBytes);
    const report: PlacementReport = {
      balance: fill.stats,
      ...measureChanges(make, variants, pool, pgBytes, options),
      lookupsPerSecond: rate,
      recomputeMs: ms,
      tableBytes: located.structureBytes,
    };
    return { report, fill: fill.fill };
  };
  const ring = baselineReport(ringPlacement);
  const modulo = baselineReport(moduloPlacement);

  return {
    date: new Date().toISOString(),
    machine: machineDescription(),
    parameters: options,
    disks,
    hostCount: options.hosts,
    pgs,
    population: {
      volumes: population.volumes,
      provisionedBytes: population.provisionedBytes,
      writtenBytes: population.writtenBytes,
      objectsTotal: population.objectsTotal,
      objectsHashed: population.objectsHashed,
    },
    balance: rawFill.stats,
    balanced: {
      ...balancedFill.stats,
      movedFraction: balance.movedFraction,
      items: balance.items.length,
      addHost: balancedChanges.addHost,
      removeHost: balancedChanges.removeHost,
      reweight: balancedChanges.reweight,
    },
    ...strawChanges,
    lookupsPerSecond,
    recomputeMs,
    tableBytes: finalTable.disks.byteLength,
    fill: {
      straw2: rawFill.fill,
      balanced: balancedFill.fill,
      ring: ring.fill,
      modulo: modulo.fill,
    },
    baselines: { ring: ring.report, modulo: modulo.report },
    elapsedMs: performance.now() - started,
  };
}
