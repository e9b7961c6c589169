// The balancer: a small, deterministic table of per-PG exceptions (like Ceph's upmap
// items) that evens out the fill of disks in bytes. Straw2 alone leaves disks at
// ±(1/√PGs-per-disk) of the mean; a few percent of PG replicas moved by exception
// brings every disk within about one PG of it. Items are data in the map, so every
// daemon computes the same placement.

import { assert } from '../util/assert';
import { ClusterMap, UpmapItem, findPool } from './map';
import { PlacementTable, computeTable, pgRow } from './straw2';

export interface BalanceOptions {
  /** Stop when every disk's fill ratio is at most mean × (1 + this). */
  deviationMax: number;
  /** Stop before the moves would copy more than this fraction of the stored bytes. */
  movedFractionMax: number;
  /** Bound on the items the pool may carry. */
  itemsMax: number;
  /** Lowest-filled disks tried as targets for each move. */
  candidatesMax: number;
}

export const defaultBalanceOptions: BalanceOptions = {
  deviationMax: 0.01,
  movedFractionMax: 0.1,
  itemsMax: 1 << 18,
  candidatesMax: 48,
};

export interface FillStats {
  meanBytes: number;
  maxOverMean: number;
  minOverMean: number;
  /** Standard deviation of fill ratio, relative to the mean ratio. */
  stddevOverMean: number;
}

export interface BalanceResult {
  items: UpmapItem[];
  movedBytes: number;
  movedFraction: number;
  moves: number;
  before: FillStats;
  after: FillStats;
}

/** Bytes held by each drawn disk (index of table.topology) for the given bytes per PG. */
export function diskFill(table: PlacementTable, pgBytes: Float64Array): Float64Array {
  assert(pgBytes.length === table.pgCount, 'pgBytes must have one entry per PG');
  const fill = new Float64Array(table.topology.diskIds.length);
  const index = table.topology.indexById;
  for (let pg = 0; pg < table.pgCount; pg += 1) {
    const bytes = pgBytes[pg] as number;
    for (let r = 0; r < table.size; r += 1) {
      const disk = index.get(table.disks[pg * table.size + r] as number);
      assert(disk !== undefined, `pg ${pg} maps to a disk that is not drawn`);
      fill[disk] = (fill[disk] as number) + bytes;
    }
  }
  return fill;
}

/** Fill relative to weight: a disk twice as large should hold twice the bytes. */
export function fillStats(fill: Float64Array, weights: Float64Array): FillStats {
  let totalBytes = 0;
  let totalWeight = 0;
  for (let i = 0; i < fill.length; i += 1) {
    totalBytes += fill[i] as number;
    totalWeight += weights[i] as number;
  }
  const meanRatio = totalBytes / totalWeight;
  let max = 0;
  let min = Infinity;
  let sumSquares = 0;
  for (let i = 0; i < fill.length; i += 1) {
    const relative = (fill[i] as number) / (weights[i] as number) / meanRatio;
    max = Math.max(max, relative);
    min = Math.min(min, relative);
    sumSquares += (relative - 1) ** 2;
  }
  return {
    meanBytes: totalBytes / fill.length,
    maxOverMean: max,
    minOverMean: min,
    stddevOverMean: Math.sqrt(sumSquares / fill.length),
  };
}

/**
 * Computes balancer items for a pool. Starts from the pool's current items (those
 * still valid are kept), then repeatedly moves one PG replica from the fullest disk
 * to the emptiest disk that keeps the PG's failure domains distinct, while that
 * strictly narrows the gap between the two. Deterministic: ties go to lower ids.
 */
export function balancePool(
  map: ClusterMap,
  poolNameOrId: string | number,
  pgBytes: Float64Array,
  options: Partial<BalanceOptions> = {},
): BalanceResult {
  const settings = { ...defaultBalanceOptions, ...options };
  const pool = findPool(map, poolNameOrId);
  const table = computeTable(map, pool.id);
  const topology = table.topology;
  const diskCount = topology.diskIds.length;
  const weights = topology.diskWeights;
  const fill = diskFill(table, pgBytes);
  const before = fillStats(fill, weights);

  // Items as a per-PG map of original → current disk, seeded with the valid old ones.
  const raw = computeTable(map, pool.id, { upmap: false, topology });
  const itemsByPg = new Map<number, Map<number, number>>();
  for (let pg = 0; pg < table.pgCount; pg += 1) {
    const now = pgRow(table, pg);
    const was = pgRow(raw, pg);
    for (let r = 0; r < table.size; r += 1) {
      if (now[r] !== was[r]) {
        let items = itemsByPg.get(pg);
        if (!items) itemsByPg.set(pg, (items = new Map()));
        items.set(was[r] as number, now[r] as number);
      }
    }
  }

  const pgsOfDisk: number[][] = Array.from({ length: diskCount }, () => []);
  for (let pg = 0; pg < table.pgCount; pg += 1) {
    for (const id of pgRow(table, pg)) pgsOfDisk[topology.indexById.get(id) as number]?.push(pg);
  }
  let totalBytes = 0;
  let totalWeight = 0;
  for (let i = 0; i < diskCount; i += 1) {
    totalBytes += fill[i] as number;
    totalWeight += weights[i] as number;
  }
  const meanRatio = totalBytes / totalWeight;
  const ratio = (disk: number): number => (fill[disk] as number) / (weights[disk] as number);
  const goal = meanRatio * (1 + settings.deviationMax);
  const stuck = new Uint8Array(diskCount);
  let movedBytes = 0;
  let moves = 0;
  let itemCount = [...itemsByPg.values()].reduce((sum, items) => sum + items.size, 0);

  const candidates: number[] = [];
  for (;;) {
    // The fullest disk that may still give something away.
    let over = -1;
    for (let d = 0; d < diskCount; d += 1) {
      if (!stuck[d] && (over === -1 || ratio(d) > ratio(over))) over = d;
    }
    if (over === -1 || ratio(over) <= goal) break;
    if (itemCount >= settings.itemsMax) break;
    lowestFilled(diskCount, ratio, settings.candidatesMax, candidates);

    const moved = tryMove(over);
    if (moved === 'budget') break;
    if (!moved) stuck[over] = 1;
  }

  function tryMove(over: number): boolean | 'budget' {
    const pgs = pgsOfDisk[over] as number[];
    const overId = topology.diskIds[over] as number;
    // Largest PGs first: fewer moves for the same correction.
    const order = [...pgs].sort((a, b) => (pgBytes[b] as number) - (pgBytes[a] as number) || a - b);
    for (const pg of order) {
      const bytes = pgBytes[pg] as number;
      if (bytes === 0) continue;
      if (movedBytes + bytes > settings.movedFractionMax * totalBytes) return 'budget';
      const row = pgRow(table, pg);
      for (const target of candidates) {
        const after = ratio(target) + bytes / (weights[target] as number);
        if (after >= ratio(over) - bytes / (weights[over] as number)) break; // no longer narrows
        if (!fitsDomains(row, overId, target)) continue;
        applyMove(pg, over, target, bytes);
        return true;
      }
    }
    return false;
  }

  function fitsDomains(row: Int32Array, replacing: number, target: number): boolean {
    const targetId = topology.diskIds[target] as number;
    const domain = topology.diskDomains[target];
    for (const member of row) {
      if (member === targetId) return false;
      if (member === replacing) continue;
      if (topology.diskDomains[topology.indexById.get(member) as number] === domain) return false;
    }
    return true;
  }

  function applyMove(pg: number, over: number, target: number, bytes: number): void {
    const row = pgRow(table, pg);
    const overId = topology.diskIds[over] as number;
    const targetId = topology.diskIds[target] as number;
    row[row.indexOf(overId)] = targetId;
    fill[over] = (fill[over] as number) - bytes;
    fill[target] = (fill[target] as number) + bytes;
    const list = pgsOfDisk[over] as number[];
    list.splice(list.indexOf(pg), 1);
    (pgsOfDisk[target] as number[]).push(pg);
    stuck[target] = 0;
    let items = itemsByPg.get(pg);
    if (!items) itemsByPg.set(pg, (items = new Map()));
    // Moving a replica that an item already moved rewrites that item, never chains.
    let original = overId;
    for (const [from, to] of items) if (to === overId) original = from;
    const had = items.has(original);
    if (original === targetId) items.delete(original);
    else items.set(original, targetId);
    itemCount += (items.has(original) ? 1 : 0) - (had ? 1 : 0);
    movedBytes += bytes;
    moves += 1;
  }

  const items: UpmapItem[] = [];
  for (const pg of [...itemsByPg.keys()].sort((a, b) => a - b)) {
    const pairs = [...(itemsByPg.get(pg) as Map<number, number>)].sort((a, b) => a[0] - b[0]);
    for (const [from, to] of pairs) items.push([pg, from, to]);
  }
  return {
    items,
    movedBytes,
    movedFraction: totalBytes > 0 ? movedBytes / totalBytes : 0,
    moves,
    before,
    after: fillStats(fill, weights),
  };
}

/** Fills `out` with the `count` disks of lowest fill ratio, lowest first. */
function lowestFilled(
  diskCount: number,
  ratio: (d: number) => number,
  count: number,
  out: number[],
): void {
  out.length = 0;
  for (let d = 0; d < diskCount; d += 1) {
    const r = ratio(d);
    if (out.length === count && r >= ratio(out[count - 1] as number)) continue;
    let position = out.length === count ? count - 1 : out.length;
    out[position] = d;
    while (position > 0 && ratio(out[position - 1] as number) > r) {
      out[position] = out[position - 1] as number;
      out[position - 1] = d;
      position -= 1;
    }
  }
}

/**
 * Carries a pool's balancer items across a map change so that the change moves data
 * only to or from the disks it involves. Per PG with items, the new set keeps every
 * disk it had that is still drawable — except straw2 members that straw2 itself has
 * now replaced (that is the change taking effect) — and fills the gaps with the new
 * straw2 arrivals first, then other straw2 members, keeping failure domains
 * distinct. The items are then whatever turns the new straw2 row into that set.
 * Without this, an item whose `from` left the straw2 row would lapse and its replica
 * would jump from the balancer's target to the new straw2 member: a move between two
 * disks that had nothing to do with the change.
 */
export function carryUpmap(
  before: ClusterMap,
  after: ClusterMap,
  poolNameOrId: string | number,
): UpmapItem[] {
  const oldPool = findPool(before, poolNameOrId);
  const newPool = findPool(after, poolNameOrId);
  assert(oldPool.pgCount === newPool.pgCount, 'carryUpmap across a PG count change');
  const oldPlaced = computeTable(before, oldPool.id);
  const oldRaw = computeTable(before, oldPool.id, { upmap: false, topology: oldPlaced.topology });
  const newRaw = computeTable(after, newPool.id, { upmap: false });
  const topology = newRaw.topology;
  const domainOf = (id: number): number | undefined => {
    const index = topology.indexById.get(id);
    return index === undefined ? undefined : topology.diskDomains[index];
  };
  const pgs = [...new Set(oldPool.upmap.map((item) => item[0]))].sort((a, b) => a - b);
  const carried: UpmapItem[] = [];
  for (const pg of pgs) {
    if (pg < 0 || pg >= newPool.pgCount) continue;
    const r0 = pgRow(oldRaw, pg);
    const r1 = pgRow(newRaw, pg);
    const keep: number[] = [];
    const domains = new Set<number>();
    const take = (id: number): void => {
      const domain = domainOf(id);
      if (
        keep.length >= r1.length ||
        domain === undefined ||
        keep.includes(id) ||
        domains.has(domain)
      )
        return;
      keep.push(id);
      domains.add(domain);
    };
    for (const id of pgRow(oldPlaced, pg)) {
      const replacedByStraw2 = r0.includes(id) && !r1.includes(id);
      if (!replacedByStraw2) take(id);
    }
    for (const id of r1) if (!r0.includes(id)) take(id);
    for (const id of r1) take(id);
    if (keep.length < r1.length) continue; // cannot keep domains distinct: straw2 alone
    const out = [...r1].filter((id) => !keep.includes(id));
    const into = keep.filter((id) => !r1.includes(id));
    assert(out.length === into.length, 'carried set differs in size from the straw2 row');
    out.forEach((from, i) => carried.push([pg, from, into[i] as number]));
  }
  return carried;
}
