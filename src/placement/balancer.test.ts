// Proves the balancer: on a cluster where straw2 leaves disks far from the mean, its
// items bring every disk within the goal while moving a bounded share of data; every
// adjusted PG keeps distinct failure domains and only in disks; the result is the
// same on every run; the move budget is honoured; and items carried across a host's
// removal keep balanced replicas where they are.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Random } from '../util/random';
import { balancePool, carryUpmap, diskFill, fillStats } from './balancer';
import { buildCluster, makePool } from './build';
import { ClusterMap } from './map';
import { computeTable, pgRow } from './straw2';
import { compareRows } from './simulate/movement';

function cluster(): { map: ClusterMap; pgBytes: Float64Array } {
  const map = buildCluster({ hosts: 24, disksPerHost: 4, racks: 4, diskSizeBytes: 1000 });
  map.disks[5]!.weight = 2000; // one bigger disk: fill is judged relative to weight
  map.pools.push(makePool(3, 'p', 3, 2048, 'host'));
  const random = new Random(11);
  const pgBytes = Float64Array.from({ length: 2048 }, () => 100 + random.int(20));
  return { map, pgBytes };
}

function withItems(map: ClusterMap, items: ClusterMap['pools'][number]['upmap']): ClusterMap {
  return { ...map, pools: map.pools.map((p) => ({ ...p, upmap: items })) };
}

test('balancer brings max/mean fill within 1.03 and moves a bounded share', () => {
  const { map, pgBytes } = cluster();
  const result = balancePool(map, 'p', pgBytes);
  assert.ok(
    result.before.maxOverMean > 1.1,
    `straw2 alone is uneven (${result.before.maxOverMean})`,
  );
  assert.ok(result.after.maxOverMean <= 1.03, `balanced max/mean ${result.after.maxOverMean}`);
  assert.ok(result.movedFraction <= 0.1, `moved ${result.movedFraction}`);
  // The items, applied through the map as every daemon would, give the same fill.
  const table = computeTable(withItems(map, result.items), 'p');
  const stats = fillStats(diskFill(table, pgBytes), table.topology.diskWeights);
  assert.ok(Math.abs(stats.maxOverMean - result.after.maxOverMean) < 1e-9);
});

test('balanced PGs keep distinct hosts and only in disks', () => {
  const { map, pgBytes } = cluster();
  map.disks[9]!.in = false;
  const { items } = balancePool(map, 'p', pgBytes);
  const table = computeTable(withItems(map, items), 'p');
  const disks = new Map(map.disks.map((d) => [d.id, d]));
  for (let pg = 0; pg < table.pgCount; pg += 1) {
    const row = [...pgRow(table, pg)].map((id) => disks.get(id)!);
    assert.equal(new Set(row.map((d) => d.host)).size, 3);
    assert.ok(row.every((d) => d.in));
  }
});

test('balancer is deterministic and honours its move budget', () => {
  const { map, pgBytes } = cluster();
  assert.deepEqual(balancePool(map, 'p', pgBytes).items, balancePool(map, 'p', pgBytes).items);
  const capped = balancePool(map, 'p', pgBytes, { movedFractionMax: 0.005 });
  assert.ok(capped.movedFraction <= 0.005, `moved ${capped.movedFraction}`);
  assert.ok(capped.after.maxOverMean < capped.before.maxOverMean);
});

test('re-running the balancer on a balanced map changes nothing', () => {
  const { map, pgBytes } = cluster();
  const first = balancePool(map, 'p', pgBytes);
  const second = balancePool(withItems(map, first.items), 'p', pgBytes);
  assert.equal(second.moves, 0);
  assert.deepEqual(second.items, first.items);
});

test('items carried across a host removal move nothing between uninvolved disks', () => {
  const { map, pgBytes } = cluster();
  const { items } = balancePool(map, 'p', pgBytes);
  const balanced = withItems(map, items);
  const before = computeTable(balanced, 'p');
  for (const victim of map.hosts.slice(0, 6).map((h) => h.id)) {
    const victimDisks = new Set(map.disks.filter((d) => d.host === victim).map((d) => d.id));
    const removed: ClusterMap = {
      ...balanced,
      hosts: map.hosts.filter((h) => h.id !== victim),
      disks: map.disks.filter((d) => d.host !== victim),
    };
    const carried = withItems(removed, carryUpmap(balanced, removed, 'p'));
    const moved = compareRows(before, computeTable(carried, 'p'), pgBytes, victimDisks);
    assert.equal(moved.movedBetweenOthersBytes, 0, `removing ${victim} moved data between others`);
    assert.ok(moved.movedBytes > 0);
  }
});
