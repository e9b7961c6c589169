// The straw2 draw: for one PG every drawn disk scores ln(u)/weight with u a uniform
// hash of (PG, disk); a failure domain scores the best of its disks; the PG's set is
// the `size` best domains, each represented by its best disk, in score order.
//
// Scoring domains by their best disk (rather than drawing domains by their summed
// weight and then descending) is what makes the draw stable: the maximum of
// exponential races is itself an exponential race with the summed rate, so domains
// still win in proportion to their weight, yet each disk's score depends on nothing
// but the PG and that disk. Adding, removing or reweighting one disk therefore
// changes only PGs in which that disk wins or stops winning — no data moves between
// two uninvolved disks.

import { assert } from '../util/assert';
import { CisternError } from '../util/errors';
import { ClusterMap, PoolSpec, UpmapItem, findPool } from './map';
import { objectHash, pgSeed } from './hash';
import { Topology, compileTopology } from './topology';

const INV_TWO_POW_32 = 1 / 4294967296;

export interface PlacementTable {
  readonly pool: PoolSpec;
  readonly topology: Topology;
  readonly size: number;
  readonly pgCount: number;
  /** pgCount × size disk ids; row pg is the ordered set (primary first). */
  readonly disks: Int32Array;
}

/** Object → PG: a stable hash masked to the pool's power-of-two PG count. */
export function objectToPg(pool: PoolSpec, volume: number, objectNumber: number): number {
  return objectHash(pool.id, volume, objectNumber) & (pool.pgCount - 1);
}

function ensurePlaceable(topology: Topology, pool: PoolSpec): void {
  if (topology.diskIds.length === 0) {
    throw new CisternError(
      'PLACEMENT_IMPOSSIBLE',
      `pool ${pool.name}: no disk is in with a weight above zero, so nothing can be placed`,
    );
  }
  if (topology.domainCount < pool.size) {
    throw new CisternError(
      'PLACEMENT_IMPOSSIBLE',
      `pool ${pool.name} needs ${pool.size} distinct ${pool.failureDomain}s holding in, weighted ` +
        `disks, but the map has ${topology.domainCount}; add ${pool.failureDomain}s or lower the size`,
    );
  }
}

const TWO_POW_31 = 2147483648;
/** Margin, in straw units, that keeps rounding in exp() from ever skipping a winner. */
const CUTOFF_MARGIN = 4;

/**
 * One PG's draw, with scratch space reused across PGs so that recomputing a table
 * allocates nothing per PG.
 *
 * The loop visits every drawn disk once and only hashes it; a disk can change the
 * result only if its straw beats the cut-off of its weight class — the straw whose
 * score equals the current `size`-th best — which after the first few disks almost
 * none do. Only those take a logarithm and touch the sorted top list.
 */
class Draw {
  readonly scores: Float64Array;
  readonly disks: Int32Array; // disk indices, best first
  readonly domains: Int32Array;
  /** Signed-straw cut-off per weight class, valid while its generation is current. */
  readonly cutoffs: Float64Array;
  readonly cutoffGeneration: Int32Array;
  generation = 0;
  count = 0;
  kth = -Infinity;

  constructor(
    readonly topology: Topology,
    readonly size: number,
  ) {
    this.scores = new Float64Array(size);
    this.disks = new Int32Array(size);
    this.domains = new Int32Array(size);
    this.cutoffs = new Float64Array(topology.weights.length);
    this.cutoffGeneration = new Int32Array(topology.weights.length);
  }

  /** Fills disks[0..size) with the draw's winners, best first. */
  run(seed: number): void {
    const { diskSalts, diskWeightClass } = this.topology;
    const n = diskSalts.length;
    this.count = 0;
    this.kth = -Infinity;
    this.generation += 1;
    if (this.topology.weights.length === 1) {
      // Every disk weighs the same: one cut-off, no per-disk class look-up.
      let cutoff = -Infinity;
      for (let i = 0; i < n; i += 1) {
        let s = seed ^ (diskSalts[i] as number);
        s = Math.imul(s ^ (s >>> 16), 0x85ebca6b);
        s = Math.imul(s ^ (s >>> 13), 0xc2b2ae35);
        s = (s ^ (s >>> 16) ^ 0x80000000) | 0; // straw − 2^31, so comparisons stay on small ints
        if (s >= cutoff) cutoff = this.consider(i, s, 0);
      }
    } else {
      const cutoffs = this.cutoffs;
      for (let i = 0; i < n; i += 1) {
        let s = seed ^ (diskSalts[i] as number);
        s = Math.imul(s ^ (s >>> 16), 0x85ebca6b);
        s = Math.imul(s ^ (s >>> 13), 0xc2b2ae35);
        s = (s ^ (s >>> 16) ^ 0x80000000) | 0;
        const weightClass = diskWeightClass[i] as number;
        if (this.cutoffGeneration[weightClass] !== this.generation) {
          this.cutoffs[weightClass] = this.cutoffFor(weightClass);
          this.cutoffGeneration[weightClass] = this.generation;
        }
        if (s >= (cutoffs[weightClass] as number)) this.consider(i, s, weightClass);
      }
    }
    assert(this.count === this.size, `draw found ${this.count} of ${this.size} domains`);
  }

  /** The smallest signed straw of a weight class that could still enter the top list. */
  private cutoffFor(weightClass: number): number {
    if (this.kth === -Infinity) return -Infinity;
    const weight = this.topology.weights[weightClass] as number;
    return Math.exp(this.kth * weight) * 4294967296 - TWO_POW_31 - CUTOFF_MARGIN;
  }

  /** A disk that may enter the top list: score it exactly and insert it. */
  private consider(disk: number, signedStraw: number, weightClass: number): number {
    const t = this.topology;
    const straw = signedStraw + TWO_POW_31;
    const score = Math.log((straw + 0.5) * INV_TWO_POW_32) / (t.diskWeights[disk] as number);
    const domain = t.diskDomains[disk] as number;
    const { scores, disks, domains } = this;
    const ids = t.diskIds;
    const better = (a: number, aDisk: number, b: number, bDisk: number): boolean =>
      a > b || (a === b && (ids[aDisk] as number) < (ids[bDisk] as number));
    // A domain keeps only its best disk.
    let position = domains.subarray(0, this.count).indexOf(domain);
    if (position !== -1) {
      if (!better(score, disk, scores[position] as number, disks[position] as number)) {
        return this.cutoffs[weightClass] ?? -Infinity;
      }
      for (let i = position; i < this.count - 1; i += 1) {
        scores[i] = scores[i + 1] as number;
        disks[i] = disks[i + 1] as number;
        domains[i] = domains[i + 1] as number;
      }
      this.count -= 1;
    }
    position = this.count;
    while (
      position > 0 &&
      better(score, disk, scores[position - 1] as number, disks[position - 1] as number)
    ) {
      position -= 1;
    }
    if (position < this.size) {
      for (let i = Math.min(this.count, this.size - 1); i > position; i -= 1) {
        scores[i] = scores[i - 1] as number;
        disks[i] = disks[i - 1] as number;
        domains[i] = domains[i - 1] as number;
      }
      scores[position] = score;
      disks[position] = disk;
      domains[position] = domain;
      if (this.count < this.size) this.count += 1;
      if (this.count === this.size && this.kth !== scores[this.size - 1]) {
        this.kth = scores[this.size - 1] as number;
        this.generation += 1;
      }
    }
    const cutoff = this.cutoffFor(weightClass);
    this.cutoffs[weightClass] = cutoff;
    this.cutoffGeneration[weightClass] = this.generation;
    return cutoff;
  }
}

/** Groups a pool's balancer items by PG. */
export function upmapByPg(items: readonly UpmapItem[]): Map<number, UpmapItem[]> {
  const byPg = new Map<number, UpmapItem[]>();
  for (const item of items) {
    const list = byPg.get(item[0]);
    if (list) list.push(item);
    else byPg.set(item[0], [item]);
  }
  return byPg;
}

/**
 * Applies balancer items to one PG's row in place. Together, the items must leave the
 * row with drawable disks in distinct failure domains; judged together because one
 * item may free the domain another needs. If the whole set does not fit (the map
 * changed under it), items are tried one at a time and those that no longer fit are
 * ignored (the balancer drops them when it next runs).
 */
export function applyUpmap(topology: Topology, row: Int32Array, items: readonly UpmapItem[]): void {
  const candidate = Int32Array.from(row);
  let whole = true;
  for (const [, from, to] of items) {
    const slot = candidate.indexOf(from);
    if (slot === -1 || !topology.indexById.has(to) || candidate.includes(to)) {
      whole = false;
      break;
    }
    candidate[slot] = to;
  }
  if (whole && distinctDomains(topology, candidate)) {
    row.set(candidate);
    return;
  }
  for (const [, from, to] of items) {
    const slot = row.indexOf(from);
    if (slot === -1 || !topology.indexById.has(to) || row.includes(to)) continue;
    row[slot] = to;
    if (!distinctDomains(topology, row)) row[slot] = from;
  }
}

function distinctDomains(topology: Topology, row: Int32Array): boolean {
  for (let i = 0; i < row.length; i += 1) {
    const a = topology.indexById.get(row[i] as number);
    if (a === undefined) continue; // an out member stays until the draw replaces it
    for (let j = i + 1; j < row.length; j += 1) {
      const b = topology.indexById.get(row[j] as number);
      if (b !== undefined && topology.diskDomains[a] === topology.diskDomains[b]) return false;
    }
  }
  return true;
}

/** Computes the straw2 set of every PG of a pool, then applies its balancer items. */
export function computeTable(
  map: ClusterMap,
  poolNameOrId: string | number,
  options: { upmap?: boolean; topology?: Topology } = {},
): PlacementTable {
  const pool = findPool(map, poolNameOrId);
  const topology = options.topology ?? compileTopology(map, pool.failureDomain);
  assert(topology.failureDomain === pool.failureDomain, 'topology compiled for another domain');
  ensurePlaceable(topology, pool);
  const size = pool.size;
  const disks = new Int32Array(pool.pgCount * size);
  const draw = new Draw(topology, size);
  for (let pg = 0; pg < pool.pgCount; pg += 1) {
    draw.run(pgSeed(pool.id, pg));
    for (let r = 0; r < size; r += 1) {
      disks[pg * size + r] = topology.diskIds[draw.disks[r] as number] as number;
    }
  }
  if (options.upmap !== false && pool.upmap.length > 0) {
    for (const [pg, items] of upmapByPg(pool.upmap)) {
      if (pg >= 0 && pg < pool.pgCount) applyUpmap(topology, pgRow({ disks, size }, pg), items);
    }
  }
  return { pool, topology, size, pgCount: pool.pgCount, disks };
}

/** One PG's straw2 set without computing the whole table (for a single look-up). */
export function placePg(map: ClusterMap, poolNameOrId: string | number, pg: number): number[] {
  const pool = findPool(map, poolNameOrId);
  assert(Number.isInteger(pg) && pg >= 0 && pg < pool.pgCount, `pg ${pg} out of range`);
  const topology = compileTopology(map, pool.failureDomain);
  ensurePlaceable(topology, pool);
  const draw = new Draw(topology, pool.size);
  draw.run(pgSeed(pool.id, pg));
  const row = Int32Array.from(draw.disks, (index) => topology.diskIds[index] as number);
  applyUpmap(
    topology,
    row,
    pool.upmap.filter((item) => item[0] === pg),
  );
  return [...row];
}

/** A PG's row of a table (a view, not a copy). */
export function pgRow(table: { disks: Int32Array; size: number }, pg: number): Int32Array {
  return table.disks.subarray(pg * table.size, (pg + 1) * table.size);
}

export interface PgMember {
  disk: number;
  host: string;
  up: boolean;
}

/** A PG's members with their state: down members stay in the set but are marked. */
export function pgMembers(table: PlacementTable, pg: number): PgMember[] {
  return [...pgRow(table, pg)].map((id) => {
    const disk = table.topology.disksById.get(id);
    assert(disk, `disk ${id} of pg ${pg} missing from the map`);
    return { disk: id, host: disk.host, up: disk.up };
  });
}

/** Object → ordered disk ids of its PG, primary first: the hot look-up. */
export function locateObject(
  table: PlacementTable,
  volume: number,
  objectNumber: number,
): Int32Array {
  return pgRow(table, objectToPg(table.pool, volume, objectNumber));
}
