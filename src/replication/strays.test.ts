// Proves the rule that decides which copies stray removal may delete, on literal cluster
// states: a copy on a disk outside a clean PG's set is stray; a copy on a placement
// member, on a retained member, in a PG with a stale member, in a PG with a member down,
// or of a volume no longer in the map (garbage collection's) is not.

import { strict as assert } from 'node:assert';
import { test } from 'node:test';
import * as state from '../cluster/state';
import { computeTable, objectToPg, pgRow } from '../placement/straw2';
import { isStrayCopy } from './strays';

function cluster(): {
  s: state.ClusterState;
  key: { pool: number; volume: number; object: number };
} {
  const s = state.emptyState();
  for (let h = 0; h < 5; h += 1) {
    state.addHost(s, `h${h}`, `r${h}`);
    state.addDisk(s, `h${h}`, { path: `/d${h}`, uuid: `u${h}`, sizeBytes: 1 << 30 });
  }
  const pool = state.createPool(s, {
    name: 'p',
    size: 3,
    minSize: 2,
    failureDomain: 'host',
    pgCount: 16,
  });
  const volume = state.createVolume(s, 'v', 64 << 20, 'p');
  return { s, key: { pool: pool.id, volume: volume.id, object: 3 } };
}

function placement(s: state.ClusterState, key: { pool: number; volume: number; object: number }) {
  const table = computeTable(s.map, key.pool);
  const pg = objectToPg(table.pool, key.volume, key.object);
  const row = [...pgRow(table, pg)];
  const outside = s.map.disks.map((d) => d.id).filter((d) => !row.includes(d));
  return { table, pg, row, outside, id: state.pgKey(key.pool, pg) };
}

test('a copy outside a clean PG is stray; a member’s copy is not', () => {
  const { s, key } = cluster();
  const { table, row, outside } = placement(s, key);
  assert.equal(outside.length, 2);
  for (const disk of outside) assert.equal(isStrayCopy(s, table, key, disk), true, `disk ${disk}`);
  for (const disk of row) assert.equal(isStrayCopy(s, table, key, disk), false, `disk ${disk}`);
});

test('a retained member’s copy is kept', () => {
  const { s, key } = cluster();
  const { table, outside, id } = placement(s, key);
  s.retainedMembers[id] = [outside[0] as number];
  assert.equal(isStrayCopy(s, table, key, outside[0] as number), false);
  assert.equal(isStrayCopy(s, table, key, outside[1] as number), true);
});

test('nothing is stray in a PG with a stale member: its replacement may lack the data', () => {
  const { s, key } = cluster();
  const { table, row, outside, id } = placement(s, key);
  s.staleMembers[id] = [row[2] as number];
  for (const disk of outside) assert.equal(isStrayCopy(s, table, key, disk), false);
});

test('nothing is stray in a PG with a member down', () => {
  const { s, key } = cluster();
  const { row } = placement(s, key);
  state.markDiskDown(s, row[1] as number, 'gone');
  const after = placement(s, key); // the table of the new map: the down disk stays in the row
  assert.deepEqual(after.row, row);
  for (const disk of after.outside) assert.equal(isStrayCopy(s, after.table, key, disk), false);
});

test('a removed volume’s copies are left to garbage collection', () => {
  const { s, key } = cluster();
  const { table, outside } = placement(s, key);
  state.removeVolume(s, 'v');
  assert.equal(isStrayCopy(s, table, key, outside[0] as number), false);
});
