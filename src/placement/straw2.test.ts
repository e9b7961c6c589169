// Proves the straw2 placement engine's contract: hand-checkable small maps place as
// expected; every PG gets `size` disks in distinct failure domains, never an out
// disk, identically on every call and whatever order the map lists disks in; the fast
// draw equals a brute-force evaluation of the definition; disks win in proportion to
// weight; adding, removing or reweighting one item moves data only to or from it; and
// impossible requests fail with clear typed errors.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Random } from '../util/random';
import { isCisternError } from '../util/errors';
import { buildCluster, makePool } from './build';
import { ClusterMap, DiskSpec, FailureDomain } from './map';
import { diskSalt, objectHash, pgSeed, straw } from './hash';
import {
  PlacementTable,
  computeTable,
  locateObject,
  objectToPg,
  pgMembers,
  pgRow,
  placePg,
} from './straw2';
import { compareRows } from './simulate/movement';

function smallMap(hosts: number, disksPerHost: number, racks = 1): ClusterMap {
  return buildCluster({ hosts, disksPerHost, racks, diskSizeBytes: 1000 });
}

function withPool(
  map: ClusterMap,
  size: number,
  pgCount: number,
  domain: FailureDomain,
): ClusterMap {
  map.pools.push(makePool(7, 'p', size, pgCount, domain));
  return map;
}

/** The definition, evaluated naively: every disk scored, domains by their best disk. */
function referencePlacement(map: ClusterMap, pg: number): number[] {
  const pool = map.pools[0]!;
  const seed = pgSeed(pool.id, pg);
  const rack = new Map(map.hosts.map((h) => [h.id, h.rack]));
  const domainOf = (d: DiskSpec): string =>
    pool.failureDomain === 'disk'
      ? `d${d.id}`
      : pool.failureDomain === 'host'
        ? d.host
        : rack.get(d.host)!;
  const best = new Map<string, { score: number; id: number }>();
  for (const disk of map.disks) {
    if (!disk.in || disk.weight <= 0) continue;
    const u = straw(seed, diskSalt(disk.id));
    const score = Math.log((u + 0.5) / 4294967296) / disk.weight;
    const current = best.get(domainOf(disk));
    if (!current || score > current.score || (score === current.score && disk.id < current.id)) {
      best.set(domainOf(disk), { score, id: disk.id });
    }
  }
  return [...best.values()]
    .sort((a, b) => b.score - a.score || a.id - b.id)
    .slice(0, pool.size)
    .map((b) => b.id);
}

function randomMap(random: Random, domain: FailureDomain, size: number): ClusterMap {
  const hosts = random.range(size + 1, 12);
  const map = buildCluster({
    hosts,
    disksPerHost: random.range(1, 5),
    racks: random.range(size, size + 3),
    diskSizeBytes: 1,
  });
  for (const disk of map.disks) {
    disk.weight = random.pick([1, 2, 4, 0.5, 3]);
    if (random.bool(0.1)) disk.up = false;
  }
  // Mark a few disks out, keeping enough domains.
  for (const disk of map.disks) if (random.bool(0.05) && disk.id % 3 === 0) disk.in = false;
  map.pools.push(makePool(random.range(0, 1000), 'p', size, 64, domain));
  return map;
}

test('three single-disk hosts with size 3: every PG holds all three disks', () => {
  const map = withPool(smallMap(3, 1), 3, 32, 'host');
  const table = computeTable(map, 'p');
  for (let pg = 0; pg < 32; pg += 1) assert.deepEqual([...pgRow(table, pg)].sort(), [0, 1, 2]);
});

test('an out host is never chosen; the three others hold everything', () => {
  const map = withPool(smallMap(4, 2), 3, 64, 'host');
  for (const disk of map.disks) if (disk.host === map.hosts[1]!.id) disk.in = false;
  const table = computeTable(map, 'p');
  for (let pg = 0; pg < 64; pg += 1) {
    const hosts = new Set(pgMembers(table, pg).map((m) => m.host));
    assert.equal(hosts.size, 3);
    assert.ok(!hosts.has(map.hosts[1]!.id));
  }
});

test('a down disk stays in its PGs but is marked down', () => {
  const map = withPool(smallMap(3, 1), 3, 16, 'host');
  map.disks[2]!.up = false;
  const table = computeTable(map, 'p');
  for (let pg = 0; pg < 16; pg += 1) {
    const members = pgMembers(table, pg);
    assert.equal(members.length, 3);
    assert.equal(members.find((m) => m.disk === 2)?.up, false);
  }
});

test('the fast draw equals the brute-force definition on random maps with mixed weights', () => {
  const random = new Random(42);
  for (let trial = 0; trial < 60; trial += 1) {
    const domain = random.pick<FailureDomain>(['disk', 'host', 'rack']);
    const size = random.range(1, 3);
    const map = randomMap(random, domain, size);
    let table: PlacementTable;
    try {
      table = computeTable(map, 'p');
    } catch (error) {
      assert.ok(isCisternError(error, 'PLACEMENT_IMPOSSIBLE'), String(error));
      continue;
    }
    for (let pg = 0; pg < 64; pg += 1) {
      assert.deepEqual(
        [...pgRow(table, pg)],
        referencePlacement(map, pg),
        `trial ${trial} pg ${pg}`,
      );
    }
  }
});

test('distinct failure domains and no out disk, for every domain kind (property)', () => {
  const random = new Random(7);
  for (let trial = 0; trial < 40; trial += 1) {
    const domain = random.pick<FailureDomain>(['disk', 'host', 'rack']);
    const map = randomMap(random, domain, random.range(1, 3));
    let table: PlacementTable;
    try {
      table = computeTable(map, 'p');
    } catch {
      continue;
    }
    const disks = new Map(map.disks.map((d) => [d.id, d]));
    const rack = new Map(map.hosts.map((h) => [h.id, h.rack]));
    for (let pg = 0; pg < table.pgCount; pg += 1) {
      const row = [...pgRow(table, pg)].map((id) => disks.get(id)!);
      assert.ok(
        row.every((d) => d.in && d.weight > 0),
        'out or weightless disk chosen',
      );
      const keys = row.map((d) =>
        domain === 'disk' ? d.id : domain === 'host' ? d.host : rack.get(d.host),
      );
      assert.equal(new Set(keys).size, row.length, `pg ${pg} repeats a ${domain}`);
    }
  }
});

test('placement is deterministic and independent of the order the map lists disks', () => {
  const map = withPool(smallMap(10, 3, 3), 3, 256, 'host');
  const first = computeTable(map, 'p');
  const again = computeTable(map, 'p');
  const shuffled: ClusterMap = {
    ...map,
    disks: [...map.disks].reverse(),
    hosts: [...map.hosts].reverse(),
  };
  const reordered = computeTable(shuffled, 'p');
  assert.deepEqual(first.disks, again.disks);
  assert.deepEqual(first.disks, reordered.disks);
  assert.deepEqual(placePg(map, 'p', 17), [...pgRow(first, 17)]);
});

test('disks win PGs in proportion to their weight', () => {
  const map = withPool(smallMap(8, 1), 1, 1 << 15, 'disk');
  map.disks[0]!.weight = 3000; // three times the others
  const table = computeTable(map, 'p');
  const counts = new Map<number, number>();
  for (const id of table.disks) counts.set(id, (counts.get(id) ?? 0) + 1);
  const share = counts.get(0)! / table.disks.length;
  assert.ok(Math.abs(share - 3 / 10) < 0.01, `heavy disk share ${share}, expected 0.3`);
});

test('removing a host, adding a host or reweighting a disk moves nothing between others', () => {
  const random = new Random(3);
  for (let trial = 0; trial < 10; trial += 1) {
    const base = withPool(
      smallMap(random.range(5, 12), random.range(1, 4), random.range(1, 4)),
      3,
      512,
      'host',
    );
    const before = computeTable(base, 'p');
    const bytes = new Float64Array(512).fill(1);
    const victim = random.pick(base.hosts).id;
    const removed: ClusterMap = { ...base, disks: base.disks.filter((d) => d.host !== victim) };
    const victimDisks = new Set(base.disks.filter((d) => d.host === victim).map((d) => d.id));
    assert.equal(
      compareRows(before, computeTable(removed, 'p'), bytes, victimDisks).movedBetweenOthersBytes,
      0,
    );

    const added: ClusterMap = { ...base, hosts: [...base.hosts, { id: 'new', rack: 'rack-000' }] };
    added.disks = [...base.disks, { id: 9999, host: 'new', weight: 1000, up: true, in: true }];
    const change = compareRows(before, computeTable(added, 'p'), bytes, new Set([9999]));
    assert.equal(change.movedBetweenOthersBytes, 0);
    assert.ok(change.movedBytes > 0, 'a new host receives data');

    const target = random.pick(base.disks);
    const reweighted: ClusterMap = {
      ...base,
      disks: base.disks.map((d) =>
        d.id === target.id ? { ...d, weight: d.weight * random.pick([0.3, 2, 5]) } : d,
      ),
    };
    const moved = compareRows(before, computeTable(reweighted, 'p'), bytes, new Set([target.id]));
    assert.equal(moved.movedBetweenOthersBytes, 0);
  }
});

test('object → PG is stable: pinned hash values must never change', () => {
  // Changing these values would move every object of every existing cluster.
  assert.equal(objectHash(1, 1, 0), 1689371497);
  assert.equal(objectHash(1, 2, 2 ** 40 + 5), 1398123775);
  assert.equal(pgSeed(3, 4), 2329567296);
  assert.equal(diskSalt(0), 301794027);
  assert.equal(straw(pgSeed(3, 4), diskSalt(0)), 1258215020);
  const pool = makePool(1, 'p', 3, 1024, 'host');
  assert.equal(objectToPg(pool, 5, 6), objectHash(1, 5, 6) & 1023);
  const map = withPool(smallMap(4, 1), 3, 1024, 'host');
  const table = computeTable(map, 'p');
  assert.deepEqual(locateObject(table, 5, 6), pgRow(table, objectToPg(map.pools[0]!, 5, 6)));
});

test('impossible requests fail with clear, typed errors', () => {
  const tooBig = withPool(smallMap(2, 4), 3, 16, 'host');
  assert.throws(
    () => computeTable(tooBig, 'p'),
    (e) => isCisternError(e, 'PLACEMENT_IMPOSSIBLE') && /needs 3 distinct hosts/.test(e.message),
  );
  const weightless = withPool(smallMap(4, 1), 3, 16, 'host');
  for (const disk of weightless.disks) disk.weight = 0;
  assert.throws(
    () => computeTable(weightless, 'p'),
    (e) => isCisternError(e, 'PLACEMENT_IMPOSSIBLE') && /weight above zero/.test(e.message),
  );
  assert.throws(
    () => computeTable(smallMap(4, 1), 'nope'),
    (e) => isCisternError(e, 'UNKNOWN_POOL'),
  );
  const racks = withPool(smallMap(6, 1, 2), 3, 16, 'rack');
  assert.throws(() => computeTable(racks, 'p'), /needs 3 distinct racks/);
});
