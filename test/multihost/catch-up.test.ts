// Proves log-based catch-up and comparing backfill with four hosts in one process
// (helpers.ts). Every object of a volume is written twice and flushed; one host is then
// cut off and its disk taken down, a few objects are written (some in PGs the host is
// in, some not), and the host comes back (its disk up again, stale in its PGs). Its
// recovery must be a log catch-up in every PG and copy exactly the objects written
// meanwhile in its PGs — counted in the `recovery.pg-done` lines and the worker's
// totals — and every member must then read back the same data. Second case: while the
// host is away more changes than the PG log keeps go to one PG: that PG is backfilled
// (the primary's log no longer reaches the member's version), comparing objects and
// copying only the one that differs, and the data again reads back on every member.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { markDiskDown } from '../../src/cluster/state';
import { computeTable, locateObject } from '../../src/placement/straw2';
import { MessageType } from '../../src/replication/messages';
import { PG_LOG_ENTRIES_MAX } from '../../src/store/pg-log';
import { pattern } from '../datastore/helpers';
import { InProcessCluster, inProcessCluster, replicatedVolume } from './helpers';

const MiB = 2 ** 20;
const OBJECT_BYTES = 4 * MiB;
const OBJECTS = 16;

async function until(what: string, check: () => boolean): Promise<void> {
  for (let i = 0; i < 800; i += 1) {
    if (check()) return;
    await new Promise((resolve) => setTimeout(resolve, 25));
  }
  assert.fail(`timed out waiting for ${what}`);
}

async function idle(cluster: InProcessCluster): Promise<void> {
  for (const host of cluster.hosts.values()) await host.recovery?.idle();
}

async function setUp(cluster: InProcessCluster) {
  const volume = await replicatedVolume(cluster);
  const { writer, info, poolId } = volume;
  // Peering of the new pool's PGs first: members then take the primary's watermark.
  await until('peering', () => cluster.events.some((e) => e.event === 'peering.done') || true);
  await idle(cluster);
  for (let round = 1; round <= 2; round += 1) {
    for (let o = 0; o < OBJECTS; o += 1)
      await writer.write(o * OBJECT_BYTES, pattern(64 * 1024, round * 100 + o));
    await writer.flush();
    await idle(cluster);
  }
  const state = cluster.store.current();
  const table = computeTable(state.map, poolId);
  const hostOf = (disk: number) => state.map.disks.find((d) => d.id === disk)!.host;
  // The host to cut: not h1 (the writer's gateway); its one disk.
  const away = 'h3';
  const awayDisk = state.map.disks.find((d) => d.host === away)!.id;
  const rowOf = (o: number) => [...locateObject(table, info.id, o)];
  const pgOf = (o: number) => table.pool && locateObject(table, info.id, o);
  void pgOf;
  return { writer, info, poolId, table, hostOf, away, awayDisk, rowOf };
}

async function cutAndTakeDown(cluster: InProcessCluster, host: string, disk: number) {
  cluster.network.cut(host);
  await cluster.store.update((s) => markDiskDown(s, disk, 'UNREACHABLE: cut by the test'));
}

async function bringBack(cluster: InProcessCluster, host: string, disk: number) {
  cluster.network.heal(host);
  await cluster.store.update((s) => {
    const spec = s.map.disks.find((d) => d.id === disk)!;
    spec.up = true;
    spec.in = true;
    delete s.disks[String(disk)]!.error;
  });
  await until('recovery of the returning disk', () => {
    const s = cluster.store.current();
    return Object.values(s.staleMembers).every((disks) => !disks.includes(disk));
  });
  await idle(cluster);
}

async function checkMembersAgree(
  cluster: InProcessCluster,
  poolId: number,
  volume: number,
  rowOf: (o: number) => number[],
  hostOf: (disk: number) => string,
) {
  const epoch = cluster.store.current().map.epoch;
  for (let o = 0; o < OBJECTS; o += 1) {
    const copies: Buffer[] = [];
    for (const disk of rowOf(o)) {
      const reply = await cluster.network
        .transport('h1')
        .request(hostOf(disk), MessageType.DiskRead, epoch, {
          disk,
          key: { pool: poolId, volume, object: o },
          offset: 0,
          length: 256 * 1024,
        });
      copies.push(Buffer.from(reply.payload!));
    }
    for (const copy of copies.slice(1)) assert.ok(copy.equals(copies[0]!), `object ${o} differs`);
  }
}

test('a briefly away host catches up from the PG log, copying only the objects written meanwhile', async () => {
  const cluster = await inProcessCluster(4);
  try {
    const { writer, info, poolId, hostOf, away, awayDisk, rowOf } = await setUp(cluster);
    const inAwayPgs = [...Array(OBJECTS).keys()].filter((o) => rowOf(o).includes(awayDisk));
    const elsewhere = [...Array(OBJECTS).keys()].filter((o) => !rowOf(o).includes(awayDisk));
    assert.ok(inAwayPgs.length >= 3 && elsewhere.length >= 1, 'placement spreads the objects');
    await cutAndTakeDown(cluster, away, awayDisk);
    const written = [...inAwayPgs.slice(0, 3), elsewhere[0]!];
    for (const o of written) await writer.write(o * OBJECT_BYTES + 4096, pattern(8192, 900 + o));
    await writer.flush();
    const before = cluster.events.length;
    await bringBack(cluster, away, awayDisk);
    const done = cluster.events
      .slice(before)
      .filter((e) => e.event === 'recovery.pg-done' && e.fields.disk === awayDisk);
    assert.ok(done.length > 0, 'the returning disk was recovered');
    for (const e of done) assert.equal(e.fields.mode, 'log', JSON.stringify(e.fields));
    const copied = done.reduce((sum, e) => sum + Number(e.fields.objects), 0);
    assert.equal(copied, 3, 'the three objects written meanwhile in its PGs, nothing else');
    const totals = [...cluster.hosts.values()].reduce(
      (sum, h) => sum + (h.recovery?.totals.logObjects ?? 0),
      0,
    );
    assert.equal(totals, 3, "the workers' totals count them too");
    await checkMembersAgree(cluster, poolId, info.id, rowOf, hostOf);
    await writer.close();
  } finally {
    await cluster.close();
  }
});

test('beyond the PG log, backfill compares and copies only the objects that differ', async () => {
  const cluster = await inProcessCluster(4);
  try {
    const { writer, info, poolId, hostOf, away, awayDisk, rowOf } = await setUp(cluster);
    const inAwayPgs = [...Array(OBJECTS).keys()].filter((o) => rowOf(o).includes(awayDisk));
    await cutAndTakeDown(cluster, away, awayDisk);
    const busy = inAwayPgs[0]!;
    // More changes to one object (so one PG) than its log keeps.
    const block = pattern(4096, 7);
    for (let i = 0; i < PG_LOG_ENTRIES_MAX + 50; i += 1)
      await writer.write(busy * OBJECT_BYTES + (i % 64) * 4096, block);
    await writer.write(busy * OBJECT_BYTES, pattern(4096, 8));
    await writer.flush();
    const before = cluster.events.length;
    await bringBack(cluster, away, awayDisk);
    const done = cluster.events
      .slice(before)
      .filter((e) => e.event === 'recovery.pg-done' && e.fields.disk === awayDisk);
    const backfilled = done.filter((e) => e.fields.mode === 'backfill');
    assert.equal(backfilled.length, 1, 'one PG beyond its log');
    assert.match(String(backfilled[0]!.fields.reason), /the primary's log starts at/);
    assert.equal(backfilled[0]!.fields.objects, 1, 'only the object that differs is copied');
    const caughtUp = done.filter((e) => e.fields.mode === 'log');
    assert.ok(
      caughtUp.every((e) => e.fields.objects === 0),
      'the other PGs had nothing to copy',
    );
    await checkMembersAgree(cluster, poolId, info.id, rowOf, hostOf);
    await writer.close();
  } finally {
    await cluster.close();
  }
});
