// Proves stray removal in a running in-process cluster: after a host is added and its
// PGs backfilled, and after a host is drained, every copy left on a disk that is no
// longer a member of its (clean) PG is removed by the daemon that owns the disk — every
// disk then holds exactly the objects placement puts on it, each object is on all its
// members, the drained host holds nothing, and reads through every host still return
// the written data; then the added host is drained as well, so PGs return to disks
// whose copies were removed, which must be filled again in full (their PG logs forgot
// the removed copies). Disks are inspected with the peer protocol's ListObjects, as
// another daemon would.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { ObjectKey } from '../../src/store/key';
import { MessageType } from '../../src/replication/messages';
import { computeTable, objectToPg, pgRow } from '../../src/placement/straw2';
import { pattern } from '../datastore/helpers';
import { InProcessCluster, inProcessCluster, replicatedVolume } from './helpers';

const MiB = 2 ** 20;
const SETTLE_ROUNDS_MAX = 400;

/** Waits until no PG has a stale or retained member, then for every worker to go idle. */
async function settle(cluster: InProcessCluster): Promise<void> {
  for (let i = 0; ; i += 1) {
    const s = cluster.store.current();
    if (Object.keys(s.staleMembers).length === 0 && Object.keys(s.retainedMembers).length === 0)
      break;
    assert.ok(i < SETTLE_ROUNDS_MAX, 'the cluster did not get clean');
    await new Promise((resolve) => setTimeout(resolve, 25));
  }
  for (const host of cluster.hosts.values()) await host.recovery?.idle();
  // One stray pass on every host on the clean map (one may have begun before it was).
  for (const host of cluster.hosts.values()) {
    await host.strays?.idle();
    host.strays?.kick();
    await host.strays?.idle();
  }
}

/** disk id → the keys it holds, from each host's ListObjects. */
async function holdings(
  cluster: InProcessCluster,
  pool: number,
): Promise<Map<number, ObjectKey[]>> {
  const s = cluster.store.current();
  const transport = cluster.network.transport('h1');
  const held = new Map<number, ObjectKey[]>();
  for (const disk of s.map.disks) {
    const reply = await transport.request(disk.host, MessageType.ListObjects, s.map.epoch, {
      pool,
      disk: disk.id,
    });
    const { keys, truncated } = reply.metadata as { keys: ObjectKey[]; truncated: boolean };
    assert.equal(truncated, false, 'one page holds a 64 MiB volume');
    held.set(disk.id, keys);
  }
  return held;
}

/** Every disk holds exactly the objects placement puts on it. */
async function assertNoStrays(cluster: InProcessCluster, pool: number, objects: number) {
  const s = cluster.store.current();
  const table = computeTable(s.map, pool);
  const held = await holdings(cluster, pool);
  const volume = s.volumes[0]!;
  for (let object = 0; object < objects; object += 1) {
    const row = [...pgRow(table, objectToPg(table.pool, volume.id, object))];
    for (const [disk, keys] of held) {
      const has = keys.some((k) => k.volume === volume.id && k.object === object);
      assert.equal(has, row.includes(disk), `object ${object} on disk ${disk}; placed on ${row}`);
    }
  }
}

async function readEverywhere(cluster: InProcessCluster, expected: Buffer): Promise<void> {
  for (const [name, host] of cluster.hosts) {
    const reader = await host.open('v', { readOnly: true });
    const data = Buffer.from(await reader.read(0, expected.length));
    assert.ok(data.equals(expected), `read through ${name}`);
    await reader.close();
  }
}

const removed = (cluster: InProcessCluster): number =>
  [...cluster.hosts.values()].reduce((sum, host) => sum + (host.strays?.removedTotal ?? 0), 0);

test('copies left by adding a host and by a drain are removed once their PGs are clean', async () => {
  const cluster = await inProcessCluster(4);
  try {
    const { writer, poolId } = await replicatedVolume(cluster);
    // Written twice, the second time once the PGs are peered: members then hold a PG
    // log version (the watermark the second writes carry).
    await writer.write(0, pattern(64 * MiB, 40));
    await writer.flush();
    for (const host of cluster.hosts.values()) await host.recovery?.idle();
    const data = pattern(64 * MiB, 41);
    await writer.write(0, data);
    await writer.flush();
    const objects = (64 * MiB) / (4 * MiB);

    await cluster.addHost('h5');
    await settle(cluster);
    const afterAdd = removed(cluster);
    assert.ok(afterAdd > 0, 'adding a host left no copy to remove');
    await assertNoStrays(cluster, poolId, objects);
    await readEverywhere(cluster, data);

    await cluster.store.update((s) => {
      for (const disk of s.map.disks) if (disk.host === 'h2') disk.weight = 0;
    });
    await settle(cluster);
    assert.ok(removed(cluster) > afterAdd, 'the drain left no copy to remove');
    await assertNoStrays(cluster, poolId, objects);
    const h2 = cluster.store.current().map.disks.find((d) => d.host === 'h2')!.id;
    assert.deepEqual(
      (await holdings(cluster, poolId)).get(h2),
      [],
      'the drained host holds objects',
    );
    await readEverywhere(cluster, data);
    assert.ok(
      cluster.events.some((e) => e.event === 'strays.removed'),
      'removals are logged',
    );

    // h5 drained too: its PGs go back to disks whose copies were removed above. Their PG
    // logs still had versions from before; catching up from those would skip every
    // object written before — the removal made them forget (pg-log.ts `forget`).
    await cluster.store.update((s) => {
      for (const disk of s.map.disks) if (disk.host === 'h5') disk.weight = 0;
    });
    await settle(cluster);
    await assertNoStrays(cluster, poolId, objects);
    await readEverywhere(cluster, data);
    await writer.close();
  } finally {
    await cluster.close();
  }
});
