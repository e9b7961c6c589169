// Proves what a daemon's start-up does to the PG logs of its disks (restart.ts): a crash
// may have kept, by luck, unflushed changes whose log entries it lost, so in every PG
// its activity record lists, each disk's log `start` is raised above any version a
// change it took can carry — on a disk the map has down too (peering may serve it
// unrecovered) — and a PG the record does not list keeps its log as it was. Literal
// states (a MemoryClusterStore) and a PgLogBook per disk; no I/O. Fails on the code
// before: the logs were left alone, and a member caught up from such a disk was given
// only the logged objects (soak seed 1463: one object missing on two members for good).
// And peering's record: a disk the map has down leaves it where a disk comes before it
// (it may hold what this one's crash lost), and is kept as the best copy left
// (crashedMembers); an up disk is marked stale where listed.

import { strict as assert } from 'node:assert';
import { test } from 'node:test';
import * as state from '../cluster/state';
import { MemoryClusterStore } from '../cluster/memory';
import { ObjectKey } from '../store/key';
import { PgLogBook, PgVersion, compareVersions } from '../store/pg-log';
import { computeTable, objectToPg, pgRow } from '../placement/straw2';
import { ActivityRecord, markRestartedDisks } from './restart';

test('start-up raises the log start of every PG its disks may have torn, up or down', async () => {
  const initial = state.emptyState();
  for (const host of ['h1', 'h2', 'h3']) {
    state.addHost(initial, host, `r-${host}`);
    state.addDisk(initial, host, { path: host, uuid: host, sizeBytes: 1 << 30 });
  }
  const pool = state.createPool(initial, {
    name: 'p',
    size: 3,
    minSize: 2,
    failureDomain: 'host',
    pgCount: 8,
  });
  const volume = state.createVolume(initial, 'v', 1 << 30, 'p');
  const cluster = new MemoryClusterStore(initial);
  const [up, down] = cluster.current().map.disks.map((d) => d.id) as [number, number];
  await cluster.update((s) => state.markDiskDown(s, down, 'host away'));
  const epoch = cluster.current().map.epoch;
  const torn: ObjectKey = { pool: pool.id, volume: volume.id, object: 5 };
  const tornPg = objectToPg(pool, torn.volume, torn.object);
  const otherPg = (tornPg + 1) % pool.pgCount;
  // What the disks' logs kept: a change of the listed object (at this very epoch, the
  // latest any change can carry), and one in another PG.
  const last: PgVersion = { epoch, seq: Number.MAX_SAFE_INTEGER - 1 };
  const logs = new Map([up, down].map((disk) => [disk, new PgLogBook()]));
  const record = (disk: number): ActivityRecord => ({
    activeObjects: async (poolId) => (poolId === pool.id ? [torn] : []),
    markPgLog: async (p, g, mark) => logs.get(disk)!.mark(p, g, mark),
  });
  for (const log of logs.values()) {
    log.record(torn, { pg: tornPg, version: last });
    log.record({ ...torn, object: 1000 }, { pg: otherPg, version: { epoch, seq: 1 } });
  }
  await markRestartedDisks(cluster, [
    [up, record(up)],
    [down, record(down)],
  ]);
  for (const [disk, log] of logs) {
    const start = log.state(pool.id, tornPg, undefined).start;
    assert.ok(start, `disk ${disk}: start raised in the listed PG`);
    assert.ok(compareVersions(start, last) > 0, `disk ${disk}: above every version`);
    assert.equal(log.state(pool.id, otherPg, undefined).start, undefined, `disk ${disk}: other PG`);
  }
});

function fourHosts(): state.ClusterState {
  const s = state.emptyState();
  for (let h = 0; h < 4; h += 1) {
    state.addHost(s, `h${h}`, `r${h}`);
    state.addDisk(s, `h${h}`, { path: `/d${h}`, uuid: `u${h}`, sizeBytes: 1000 });
  }
  state.createPool(s, { name: 'p', size: 3, minSize: 2, failureDomain: 'host', pgCount: 16 });
  return s;
}

/** An object of volume 1 whose PG has `disk` in its row, and that PG. */
function objectOn(s: state.ClusterState, disk: number): { key: ObjectKey; pg: number } {
  const table = computeTable(s.map, 1);
  for (let object = 0; ; object += 1) {
    const pg = objectToPg(table.pool, 1, object);
    if (pgRow(table, pg).includes(disk)) return { key: { pool: 1, volume: 1, object }, pg };
  }
}

test('an up disk back from a crash is marked stale in the listed PGs, nowhere else', async () => {
  const store = new MemoryClusterStore(fourHosts());
  const disk = 0;
  const { key, pg } = objectOn(store.current(), disk);
  const listing = (keys: ObjectKey[]): ActivityRecord => ({ activeObjects: async () => keys });
  assert.equal(await markRestartedDisks(store, [[disk, listing([key])]]), 1);
  assert.deepEqual(store.current().staleMembers[state.pgKey(1, pg)], [disk]);
  // A clean record (nothing changed since the last flush) marks nothing.
  const epoch = store.current().map.epoch;
  assert.equal(await markRestartedDisks(store, [[1, listing([])]]), 0);
  assert.equal(store.current().map.epoch, epoch, 'no map update');
});

test('a disk the map has down leaves the record where another disk comes before it', async () => {
  const store = new MemoryClusterStore(fourHosts());
  const table = computeTable(store.current().map, 1);
  const disk = 0;
  const { key, pg } = objectOn(store.current(), disk);
  const [other, third] = [...pgRow(table, pg)].filter((d) => d !== disk) as [number, number];
  // The third member goes and comes back (stale); then disk 0 goes (the record: the
  // other, still good, then disk 0), and the other goes too.
  await store.update((s) => state.markDiskDown(s, third, 'gone'));
  await store.update((s) => {
    s.map.disks.find((d) => d.id === third)!.up = true;
  });
  await store.update((s) => state.markDiskDown(s, disk, 'lost power'));
  await store.update((s) => state.markDiskDown(s, other, 'gone'));
  assert.deepEqual(store.current().authoritativeMembers[state.pgKey(1, pg)], [other, disk]);
  const record: ActivityRecord = { activeObjects: async () => [key] };
  assert.equal(await markRestartedDisks(store, [[disk, record]]), 0, 'down: nothing marked');
  assert.deepEqual(store.current().authoritativeMembers[state.pgKey(1, pg)], [other]);
  assert.deepEqual(store.current().crashedMembers[state.pgKey(1, pg)], [disk]);
});
