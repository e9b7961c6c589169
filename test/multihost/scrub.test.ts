// Proves scrub (invariant 4: replicas converge; scrub proves it) on three hosts in one
// process (shared in-memory map, loopback peer transport), driven as `cistern --etcd
// scrub` drives it: a request recorded in the cluster state through ClusterAdmin, every
// daemon reporting on the PGs it is primary of. A clean cluster scrubs clean, with every
// PG scrubbed by exactly one host and every object compared; a replica corrupted behind
// the cluster's back (DiskWrite straight to one member) is reported, repaired from the
// primary's copy, identical afterwards, and a second scrub is clean; an object missing
// on one member is repaired; client writes racing a scrub cause no false disagreement.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { ClusterAdmin } from '../../src/cluster/cluster-admin';
import { MessageType } from '../../src/replication/messages';
import { computeTable, locateObject } from '../../src/placement/straw2';
import { scrubTotals, ScrubTotals } from '../../tools/commands/scrub';
import { pattern } from '../datastore/helpers';
import { InProcessCluster, inProcessCluster } from './helpers';

const MiB = 2 ** 20;
const OBJECT_BYTES = 4 * MiB;
/** Polls of a scrub's status (25 ms apart) before the test gives up. */
const POLLS_MAX = 800;

async function scrub(cluster: InProcessCluster, pool?: string): Promise<ScrubTotals> {
  const admin = new ClusterAdmin(cluster.store);
  let status = await admin.requestScrub(pool);
  for (let i = 0; i < POLLS_MAX && !status.done; i += 1) {
    await new Promise((resolve) => setTimeout(resolve, 25));
    status = await admin.scrubStatus(status.id);
  }
  assert.ok(status.done, `every host reported: ${JSON.stringify(status)}`);
  assert.deepEqual(
    status.reports.map((r) => r.host),
    ['h1', 'h2', 'h3'],
  );
  return scrubTotals(status.reports);
}

/** A cluster of three hosts, pool `rep` of size 3, volume `v` with 24 MiB (6 objects) written. */
async function setUp(): Promise<{
  cluster: InProcessCluster;
  pool: number;
  volume: number;
  data: Buffer;
}> {
  const cluster = await inProcessCluster(3);
  const h1 = cluster.hosts.get('h1')!;
  await h1.createPool({ name: 'rep', size: 3, minSize: 2, failureDomain: 'host', pgCount: 16 });
  const info = await h1.createVolume({ name: 'v', sizeBytes: 64 * MiB, pool: 'rep' });
  const writer = await h1.open('v', { readOnly: false });
  const data = pattern(24 * MiB, 7);
  await writer.write(0, data);
  await writer.flush();
  await writer.close();
  const pool = cluster.store.current().map.pools.find((p) => p.name === 'rep')!.id;
  return { cluster, pool, volume: info.id, data };
}

/** The object's members in placement order (the first is its primary), with their hosts. */
function members(
  cluster: InProcessCluster,
  pool: number,
  volume: number,
  object: number,
): Array<{ disk: number; host: string }> {
  const state = cluster.store.current();
  const row = locateObject(computeTable(state.map, pool), volume, object);
  return [...row].map((disk) => ({
    disk,
    host: state.map.disks.find((d) => d.id === disk)!.host,
  }));
}

async function readMember(
  cluster: InProcessCluster,
  member: { disk: number; host: string },
  key: { pool: number; volume: number; object: number },
): Promise<Buffer> {
  const reply = await cluster.network
    .transport('h1')
    .request(member.host, MessageType.DiskRead, cluster.store.current().map.epoch, {
      disk: member.disk,
      key,
      offset: 0,
      length: OBJECT_BYTES,
    });
  return Buffer.from(reply.payload!);
}

test('a clean cluster scrubs clean: every PG once, every object compared', async () => {
  const { cluster } = await setUp();
  try {
    const totals = await scrub(cluster, 'rep');
    assert.equal(totals.pgs, 16, 'each of the 16 PGs scrubbed by exactly one host');
    assert.equal(totals.objects, 6);
    assert.equal(totals.disagreements, 0);
    assert.equal(totals.errors, 0);
    assert.deepEqual(totals.examples, []);
  } finally {
    await cluster.close();
  }
});

test('a replica corrupted behind the cluster is reported, repaired, and scrubs clean after', async () => {
  const { cluster, pool, volume, data } = await setUp();
  try {
    const key = { pool, volume, object: 2 };
    const [primary, , victim] = members(cluster, pool, volume, 2);
    assert.ok(primary && victim && primary.host !== victim.host);
    await cluster.network
      .transport('h1')
      .request(
        victim.host,
        MessageType.DiskWrite,
        cluster.store.current().map.epoch,
        { disk: victim.disk, key, offset: 8192, length: 4096 },
        Buffer.alloc(4096, 0xee),
      );
    const expected = data.subarray(2 * OBJECT_BYTES, 3 * OBJECT_BYTES);
    assert.notDeepEqual(await readMember(cluster, victim, key), expected, 'really corrupted');

    const first = await scrub(cluster);
    assert.equal(first.disagreements, 1);
    assert.equal(first.repaired, 1);
    assert.equal(first.errors, 0);
    assert.equal(first.examples.length, 1);
    assert.match(
      first.examples[0]!,
      new RegExp(`${pool}/${volume}/2: disk ${victim.disk} .*repaired`),
    );
    for (const member of members(cluster, pool, volume, 2)) {
      assert.deepEqual(await readMember(cluster, member, key), expected, `disk ${member.disk}`);
    }
    const second = await scrub(cluster);
    assert.equal(second.disagreements, 0);
    assert.equal(second.objects, 6);
  } finally {
    await cluster.close();
  }
});

test('an object missing on one member is a disagreement, and is copied back', async () => {
  const { cluster, pool, volume, data } = await setUp();
  try {
    const key = { pool, volume, object: 4 };
    const victim = members(cluster, pool, volume, 4)[1]!;
    const reply = await cluster.network
      .transport('h1')
      .request(victim.host, MessageType.DiskDelete, cluster.store.current().map.epoch, {
        disk: victim.disk,
        key,
        offset: 0,
        length: 0,
      });
    assert.equal((reply.metadata as { existed: boolean }).existed, true);

    const totals = await scrub(cluster, 'rep');
    assert.equal(totals.disagreements, 1);
    assert.equal(totals.repaired, 1);
    assert.deepEqual(
      await readMember(cluster, victim, key),
      data.subarray(4 * OBJECT_BYTES, 5 * OBJECT_BYTES),
    );
    assert.equal((await scrub(cluster, 'rep')).disagreements, 0);
  } finally {
    await cluster.close();
  }
});

test('client writes racing a scrub cause no false disagreement', async () => {
  const { cluster } = await setUp();
  try {
    const writer = await cluster.hosts.get('h2')!.open('v', { readOnly: false });
    let writing = true;
    // Four writers over the scrubbed objects, small writes so many land mid-checksum.
    // Bounded: they stop once the scrubs are done, or after this many rounds each.
    const writers = Array.from({ length: 4 }, async (_, w) => {
      for (let round = 0; round < 2000 && writing; round += 1) {
        const offset = ((round * 7 + w * 13) % 96) * 256 * 1024;
        await writer.write(offset, pattern(64 * 1024, 1000 * w + round));
      }
    });
    const totals = scrubTotals([]);
    for (let i = 0; i < 3; i += 1) {
      const one = await scrub(cluster, 'rep');
      totals.disagreements += one.disagreements;
      totals.errors += one.errors;
      totals.objects += one.objects;
    }
    writing = false;
    await Promise.all(writers);
    await writer.flush();
    await writer.close();
    assert.equal(totals.disagreements, 0);
    assert.equal(totals.errors, 0);
    assert.ok(totals.objects >= 18);
  } finally {
    await cluster.close();
  }
});
