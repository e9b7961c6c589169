// Proves crash-divergence peering with four hosts in one process (helpers.ts): a write
// that the primary of an object had sent to only one replica when it was cut off (made
// here as the primary would: a DiskWrite straight to that replica's disk) leaves the
// two surviving members different. Once the primary's disk leaves the map, the new
// primary asks every member for the PG's objects in its activity record, finds the
// object listed, compares checksums and copies its own version over the other: both
// members end byte-identical, reads through every host agree, and the worker counts
// the object as reconciled. A second case puts the stray write on the new primary
// itself: its version then wins, on every member. And degraded service: a write to a
// PG with fewer than min-size up-to-date members does not fail at once; it waits for
// the map, and completes once a member is back and recovered.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { MessageType } from '../../src/replication/messages';
import { markDiskDown } from '../../src/cluster/state';
import { computeTable, locateObject } from '../../src/placement/straw2';
import { pattern } from '../datastore/helpers';
import { inProcessCluster, replicatedVolume } from './helpers';

const MiB = 2 ** 20;
const OBJECT_BYTES = 4 * MiB;

for (const strayOn of ['replica', 'new primary'] as const) {
  test(`a write that reached only the ${strayOn} when the primary was cut: members converge`, async () => {
    const cluster = await inProcessCluster(4);
    let cut: string | undefined;
    try {
      const { writer, info, poolId } = await replicatedVolume(cluster);
      await writer.write(0, pattern(OBJECT_BYTES, 1));
      await writer.flush();
      const state = cluster.store.current();
      const row = locateObject(computeTable(state.map, poolId), info.id, 0);
      const hostOf = (disk: number) => state.map.disks.find((d) => d.id === disk)!.host;
      const [primary, next, last] = [...row] as [number, number, number];
      const key = { pool: poolId, volume: info.id, object: 0 };
      // The old primary's write in flight: 64 KiB at 1 MiB reached one member only.
      const stray = pattern(64 * 1024, 2);
      const target = strayOn === 'replica' ? last : next;
      await cluster.network
        .transport(hostOf(primary))
        .request(
          hostOf(target),
          MessageType.DiskWrite,
          state.map.epoch,
          { disk: target, key, offset: MiB, length: stray.length },
          stray,
        );
      cut = hostOf(primary);
      cluster.network.cut(cut);
      await cluster.store.update((s) => markDiskDown(s, primary, 'UNREACHABLE: cut by the test'));
      const newPrimary = cluster.hosts.get(hostOf(next))!;
      for (let i = 0; i < 200 && (newPrimary.recovery?.reconciledTotal ?? 0) === 0; i += 1) {
        await new Promise((resolve) => setTimeout(resolve, 25));
      }
      await newPrimary.recovery?.idle();
      assert.equal(newPrimary.recovery?.reconciledTotal, 1, 'one object reconciled');
      const expected = Buffer.from(pattern(OBJECT_BYTES, 1));
      if (strayOn === 'new primary') stray.copy(expected, MiB);
      const epoch = cluster.store.current().map.epoch;
      for (const disk of [next, last]) {
        const reply = await cluster.network
          .transport(hostOf(next))
          .request(hostOf(disk), MessageType.DiskRead, epoch, {
            disk,
            key,
            offset: 0,
            length: OBJECT_BYTES,
          });
        assert.ok(Buffer.from(reply.payload!).equals(expected), `disk ${disk} (${hostOf(disk)})`);
      }
      for (const [name, host] of cluster.hosts) {
        if (name === cut) continue;
        const reader = await host.open('v', { readOnly: true });
        assert.ok(Buffer.from(await reader.read(0, OBJECT_BYTES)).equals(expected), name);
        await reader.close();
      }
      assert.ok(cluster.events.some((e) => e.event === 'peering.done' && e.fields.rewritten === 1));
      await writer.close().catch(() => undefined);
    } finally {
      if (cut) cluster.network.heal(cut);
      await cluster.close();
    }
  });
}

test('below min-size a write waits for the map, then completes once a member is back', async () => {
  const cluster = await inProcessCluster(4);
  try {
    const { writer, info, poolId } = await replicatedVolume(cluster);
    await writer.write(0, pattern(OBJECT_BYTES, 1));
    await writer.flush();
    const state = cluster.store.current();
    const row = locateObject(computeTable(state.map, poolId), info.id, 0);
    const [, second, third] = [...row] as [number, number, number];
    // Two of three members down: one up-to-date member, min-size 2.
    await cluster.store.update((s) => {
      markDiskDown(s, second, 'UNREACHABLE: test');
      markDiskDown(s, third, 'UNREACHABLE: test');
    });
    let settled: 'ok' | Error | undefined;
    const write = writer.write(0, pattern(64 * 1024, 2)).then(
      () => (settled = 'ok'),
      (error: Error) => (settled = error),
    );
    // It waits (epoch changes that do not help — here, none — leave it waiting).
    for (let i = 0; i < 20; i += 1) await new Promise((resolve) => setTimeout(resolve, 10));
    assert.equal(settled, undefined, 'the write did not fail at once');
    // One member comes back (stale); recovery copies to it and clears it: min-size again.
    await cluster.store.update((s) => {
      const disk = s.map.disks.find((d) => d.id === second)!;
      disk.up = true;
      delete s.disks[String(second)]!.error;
    });
    await write;
    assert.equal(settled, 'ok', `the write completed: ${String(settled)}`);
    const reader = await cluster.hosts.get('h2')!.open('v', { readOnly: true });
    const expected = Buffer.from(pattern(OBJECT_BYTES, 1));
    pattern(64 * 1024, 2).copy(expected, 0);
    assert.ok(Buffer.from(await reader.read(0, OBJECT_BYTES)).equals(expected));
    await reader.close();
    await writer.close();
  } finally {
    await cluster.close();
  }
});
