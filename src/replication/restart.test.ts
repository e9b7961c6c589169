// Proves what a daemon's start-up does to the PG logs of its disks (restart.ts): a crash
// may have kept, by luck, unflushed changes whose log entries it lost, so in every PG
// its activity record lists, each disk's log `start` is raised above any version a
// change it took can carry — on a disk the map has down too (peering may serve it
// unrecovered) — and a PG the record does not list keeps its log as it was. Literal
// states (a MemoryClusterStore) and a PgLogBook per disk; no I/O. Fails on the code
// before: the logs were left alone, and a member caught up from such a disk was given
// only the logged objects (soak seed 1463: one object missing on two members for good).

import { strict as assert } from 'node:assert';
import { test } from 'node:test';
import * as state from '../cluster/state';
import { MemoryClusterStore } from '../cluster/memory';
import { ObjectKey } from '../store/key';
import { PgLogBook, PgVersion, compareVersions } from '../store/pg-log';
import { objectToPg } from '../placement/straw2';
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
