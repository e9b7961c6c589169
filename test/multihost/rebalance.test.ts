// Proves that data moves between hosts without ever losing redundancy or serving
// data a disk lacks: a host added to a running cluster joins PGs as a stale member
// and is backfilled, while the members it replaces stay acting ("retained") until it
// is; a drained host (placement weight zero) keeps serving its PGs until their new
// members hold everything, then holds no PG and can be removed. Reads through every
// host return the written data before, during and after.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { computeTable, pgRow } from '../../src/placement/straw2';
import { pattern } from '../datastore/helpers';
import { InProcessCluster, inProcessCluster, replicatedVolume } from './helpers';

const MiB = 2 ** 20;

async function settle(cluster: InProcessCluster): Promise<void> {
  for (let i = 0; i < 400; i += 1) {
    const s = cluster.store.current();
    if (Object.keys(s.staleMembers).length === 0 && Object.keys(s.retainedMembers).length === 0)
      break;
    await new Promise((resolve) => setTimeout(resolve, 25));
  }
  for (const host of cluster.hosts.values()) await host.recovery?.idle();
}

async function readEverywhere(cluster: InProcessCluster, expected: Buffer): Promise<void> {
  for (const [name, host] of cluster.hosts) {
    const reader = await host.open('v', { readOnly: true });
    assert.deepEqual(
      Buffer.from(await reader.read(0, expected.length)),
      expected,
      `read through ${name}`,
    );
    await reader.close();
  }
}

test('a host added to a running cluster is backfilled; the members it replaces serve until then', async () => {
  const cluster = await inProcessCluster(4);
  try {
    const { h1, writer } = await replicatedVolume(cluster);
    const data = pattern(64 * MiB, 30);
    await writer.write(0, data);
    await writer.flush();
    let sawRetained = false;
    const unsubscribe = cluster.store.subscribe((s) => {
      if (Object.keys(s.retainedMembers).length > 0) sawRetained = true;
    });
    await cluster.addHost('h5');
    await readEverywhere(cluster, data); // possibly while recovery runs
    await settle(cluster);
    unsubscribe();
    assert.ok(sawRetained, 'replaced members were retained during backfill');
    const s = cluster.store.current();
    assert.deepEqual([s.staleMembers, s.retainedMembers], [{}, {}]);
    const h5 = s.map.disks.filter((d) => d.host === 'h5').map((d) => d.id);
    const table = computeTable(s.map, s.map.pools.find((p) => p.name === 'rep')!.id);
    let onNew = 0;
    for (let pg = 0; pg < table.pgCount; pg += 1)
      if (pgRow(table, pg).some((d) => h5.includes(d))) onNew += 1;
    assert.ok(onNew > 0, 'the new host holds PGs');
    await readEverywhere(cluster, data);
    assert.equal((await h1.status()).pools.find((p) => p.name === 'rep')!.pgsDegraded, 0);
    await writer.close();
  } finally {
    await cluster.close();
  }
});

test('a drained host keeps serving until its PGs are copied, then holds none', async () => {
  const cluster = await inProcessCluster(5);
  try {
    const { writer } = await replicatedVolume(cluster);
    const data = pattern(64 * MiB, 31);
    await writer.write(0, data);
    await writer.flush();
    // Drain h5: placement weight zero; nothing else changes.
    await cluster.store.update((s) => {
      for (const disk of s.map.disks) if (disk.host === 'h5') disk.weight = 0;
    });
    const during = cluster.store.current();
    const h5 = during.map.disks.filter((d) => d.host === 'h5').map((d) => d.id);
    assert.ok(
      Object.values(during.retainedMembers).some((list) => list.some((d) => h5.includes(d))),
      'the drained host stays an acting member of its PGs until they are copied',
    );
    await readEverywhere(cluster, data);
    await settle(cluster);
    const after = cluster.store.current();
    assert.deepEqual([after.staleMembers, after.retainedMembers], [{}, {}]);
    const table = computeTable(after.map, after.map.pools.find((p) => p.name === 'rep')!.id);
    for (let pg = 0; pg < table.pgCount; pg += 1) {
      assert.ok(
        !pgRow(table, pg).some((d) => h5.includes(d)),
        `pg ${pg} still on the drained host`,
      );
    }
    await readEverywhere(cluster, data);
    await writer.close();
  } finally {
    await cluster.close();
  }
});
