// Proves the multi-host data path with four hosts in one process (shared in-memory
// cluster map, in-process transport with the peer protocol's fencing rule): a pool of
// size 3 across hosts; data written through one host's volume handle reads back
// through every other host's; every object's replicas sit on three different hosts;
// FLUSH from a gateway reaches the primaries it wrote through; a host that becomes
// unreachable is taken out of the acting set and writes carry on with min-size
// replicas; and a message on an older epoch is refused.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { isCisternError } from '../../src/util/errors';
import { MessageType } from '../../src/replication/messages';
import { ObjectKey } from '../../src/store/key';
import { pattern } from '../datastore/helpers';
import { inProcessCluster, replicatedVolume } from './helpers';
import { removeVolume } from '../../src/cluster/state';
import { computeTable, locateObject } from '../../src/placement/straw2';

const MiB = 2 ** 20;

async function replicaHosts(
  cluster: Awaited<ReturnType<typeof inProcessCluster>>,
  pool: number,
  volume: number,
): Promise<Map<number, Set<string>>> {
  const holders = new Map<number, Set<string>>();
  for (const host of cluster.hosts.keys()) {
    const reply = await cluster.network
      .transport('h1')
      .request(host, MessageType.ListObjects, cluster.store.current().map.epoch, { pool, volume });
    for (const key of (reply.metadata as { keys: ObjectKey[] }).keys) {
      if (key.volume !== volume) continue;
      let set = holders.get(key.object);
      if (!set) holders.set(key.object, (set = new Set()));
      set.add(host);
    }
  }
  return holders;
}

test('written through one host, read through every other; three replicas on three hosts', async () => {
  const cluster = await inProcessCluster(4);
  try {
    const { writer, info } = await replicatedVolume(cluster);
    const data = pattern(40 * MiB + 4096 * 3 + 17, 1);
    await writer.write(123, data);
    await writer.flush();
    for (const host of ['h2', 'h3', 'h4']) {
      const reader = await cluster.hosts.get(host)!.open('v', { readOnly: true });
      assert.deepEqual(
        Buffer.from(await reader.read(123, data.length)),
        data,
        `read through ${host}`,
      );
      await reader.close();
    }
    const pool = cluster.store.current().map.pools.find((p) => p.name === 'rep')!.id;
    const holders = await replicaHosts(cluster, pool, info.id);
    assert.equal(holders.size, 11, 'the write spans 11 objects');
    for (const [object, hosts] of holders)
      assert.equal(hosts.size, 3, `object ${object} on ${[...hosts]}`);
    await writer.close();
  } finally {
    await cluster.close();
  }
});

test('an unreachable host leaves the acting set; writes carry on and read back', async () => {
  const cluster = await inProcessCluster(4);
  try {
    const { writer } = await replicatedVolume(cluster);
    await writer.write(0, pattern(32 * MiB, 2));
    cluster.network.cut('h4');
    const later = pattern(32 * MiB, 3);
    await writer.write(32 * MiB, later);
    await writer.flush();
    const map = cluster.store.current().map;
    assert.ok(
      map.disks.filter((d) => d.host === 'h4').every((d) => !d.up),
      "the unreachable host's disks are marked down",
    );
    const reader = await cluster.hosts.get('h2')!.open('v', { readOnly: true });
    assert.deepEqual(Buffer.from(await reader.read(0, 32 * MiB)), pattern(32 * MiB, 2));
    assert.deepEqual(Buffer.from(await reader.read(32 * MiB, 32 * MiB)), later);
    await reader.close();
    await writer.close();
  } finally {
    cluster.network.heal('h4');
    await cluster.close();
  }
});

test('a message on an older epoch is refused with STALE_EPOCH', async () => {
  const cluster = await inProcessCluster(3);
  try {
    const h1 = cluster.hosts.get('h1')!;
    await h1.createPool({ name: 'rep', size: 3, minSize: 2, failureDomain: 'host' });
    const epoch = cluster.store.current().map.epoch;
    const disk = cluster.store.current().map.disks.find((d) => d.host === 'h2')!.id;
    const key = { pool: 1, volume: 1, object: 0 };
    await assert.rejects(
      cluster.network
        .transport('h1')
        .request(
          'h2',
          MessageType.DiskWrite,
          epoch - 1,
          { disk, key, offset: 0, length: 4096 },
          new Uint8Array(4096),
        ),
      (error) => isCisternError(error, 'STALE_EPOCH'),
    );
  } finally {
    await cluster.close();
  }
});

test('objects of a volume removed from the map are collected on every host', async () => {
  const cluster = await inProcessCluster(3);
  try {
    const h1 = cluster.hosts.get('h1')!;
    await h1.createPool({ name: 'rep', size: 2, minSize: 1, failureDomain: 'host' });
    const info = await h1.createVolume({ name: 'gone', sizeBytes: 64 * MiB, pool: 'rep' });
    const keep = await h1.createVolume({ name: 'kept', sizeBytes: 64 * MiB, pool: 'rep' });
    for (const name of ['gone', 'kept']) {
      const handle = await h1.open(name, { readOnly: false });
      await handle.write(0, pattern(16 * MiB, 7));
      await handle.flush();
      await handle.close();
    }
    const pool = cluster.store.current().map.pools.find((p) => p.name === 'rep')!.id;
    assert.equal((await replicaHosts(cluster, pool, info.id)).size, 4);
    // What `cistern --etcd URL volume rm` does: remove it from the map only.
    await cluster.store.update((s) => removeVolume(s, 'gone'));
    for (let i = 0; i < 100 && (await replicaHosts(cluster, pool, info.id)).size > 0; i += 1) {
      await new Promise((resolve) => setTimeout(resolve, 20));
    }
    assert.equal((await replicaHosts(cluster, pool, info.id)).size, 0, 'removed volume collected');
    assert.equal((await replicaHosts(cluster, pool, keep.id)).size, 4, 'other volume untouched');
  } finally {
    await cluster.close();
  }
});

test('a host that comes back never serves data it missed while it was away', async () => {
  const cluster = await inProcessCluster(4);
  try {
    const { writer } = await replicatedVolume(cluster);
    await writer.write(0, pattern(64 * MiB, 10));
    await writer.flush();
    // h4 goes away; everything is rewritten while it is gone.
    cluster.network.cut('h4');
    await writer.write(0, pattern(64 * MiB, 11));
    await writer.flush();
    cluster.network.heal('h4');
    // What the monitor does when h4's lease is back: its disks come up again. (The
    // state the update produced, before recovery gets to work on it.)
    let marked: ReturnType<typeof cluster.store.current> | undefined;
    const unsubscribe = cluster.store.subscribe((s) => (marked ??= structuredClone(s)));
    await cluster.store.update((s) => {
      for (const disk of s.map.disks) if (disk.host === 'h4') disk.up = true;
    });
    const stale = Object.values(marked!.staleMembers).flat();
    unsubscribe();
    const h4Disks = cluster.store
      .current()
      .map.disks.filter((d) => d.host === 'h4')
      .map((d) => d.id);
    assert.ok(
      stale.length > 0 && stale.every((d) => h4Disks.includes(d)),
      'h4 is stale where it is a member',
    );
    for (const host of ['h2', 'h3', 'h4']) {
      const reader = await cluster.hosts.get(host)!.open('v', { readOnly: true });
      assert.deepEqual(
        Buffer.from(await reader.read(0, 64 * MiB)),
        pattern(64 * MiB, 11),
        `through ${host}`,
      );
      await reader.close();
    }
    await writer.close();
  } finally {
    cluster.network.heal('h4');
    await cluster.close();
  }
});

test('recovery backfills a host that comes back: its PGs become clean and replicas identical', async () => {
  const cluster = await inProcessCluster(4);
  try {
    const { h1, writer, info } = await replicatedVolume(cluster);
    await writer.write(0, pattern(64 * MiB, 20));
    await writer.flush();
    cluster.network.cut('h4');
    await writer.write(0, pattern(32 * MiB, 21)); // rewritten while h4 is away
    await writer.trim(48 * MiB, 16 * MiB); // and some freed
    await writer.flush();
    cluster.network.heal('h4');
    await cluster.store.update((s) => {
      for (const disk of s.map.disks) if (disk.host === 'h4') disk.up = true;
    });
    const marked = Object.values(cluster.store.current().staleMembers).flat().length;
    let updates = 0;
    const unsubscribe = cluster.store.subscribe(() => (updates += 1));
    for (
      let i = 0;
      i < 400 && Object.keys(cluster.store.current().staleMembers).length > 0;
      i += 1
    ) {
      await new Promise((resolve) => setTimeout(resolve, 25));
    }
    unsubscribe();
    for (const host of cluster.hosts.values()) await host.recovery?.idle();
    assert.deepEqual(cluster.store.current().staleMembers, {}, 'every stale member recovered');
    // Marks are cleared in batches: far fewer map updates (epochs) than members recovered.
    assert.ok(marked >= 8 && updates * 4 <= marked, `${updates} updates for ${marked} members`);
    assert.equal((await h1.status()).pools.find((p) => p.name === 'rep')!.pgsDegraded, 0);
    assert.ok(cluster.events.some((e) => e.event === 'recovery.pg-done'));
    // Every replica of every object byte-identical, h4's included.
    const expected = Buffer.concat([
      pattern(32 * MiB, 21),
      pattern(64 * MiB, 20).subarray(32 * MiB, 48 * MiB),
      Buffer.alloc(16 * MiB),
    ]);
    const state = cluster.store.current();
    const pool = state.map.pools.find((p) => p.name === 'rep')!;
    const table = computeTable(state.map, pool.id);
    for (let object = 0; object < 16; object += 1) {
      const key = { pool: pool.id, volume: info.id, object };
      for (const disk of locateObject(table, info.id, object)) {
        const host = state.map.disks.find((d) => d.id === disk)!.host;
        const reply = await cluster.network
          .transport('h1')
          .request(host, MessageType.DiskRead, state.map.epoch, {
            disk,
            key,
            offset: 0,
            length: 4 * MiB,
          });
        assert.deepEqual(
          Buffer.from(reply.payload!),
          expected.subarray(object * 4 * MiB, (object + 1) * 4 * MiB),
          `object ${object} on disk ${disk} (${host})`,
        );
      }
    }
    await writer.close();
  } finally {
    cluster.network.heal('h4');
    await cluster.close();
  }
});
