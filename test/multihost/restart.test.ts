// Proves start-up peering after a restart nobody saw (restart.ts), with four hosts in
// one process (helpers.ts, no monitor: the map never marks the host down, as when a
// daemon is back within its lease). A replica host's datastore closes and opens again
// on the same data dir; its disk's activity record still lists the object written just
// before, so the reopened datastore marks its disk stale in that PG before serving (a
// `startup.marked-stale` event, the mark in the map), the PG's primary recovers it, the
// mark is cleared, and the object reads back whole through the restarted host. A PG the
// record does not list is left alone.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { computeTable, locateObject, objectToPg } from '../../src/placement/straw2';
import { pgKey } from '../../src/cluster/state';
import { pattern } from '../datastore/helpers';
import { inProcessCluster, replicatedVolume } from './helpers';

const MiB = 2 ** 20;
const OBJECT_BYTES = 4 * MiB;
/** Recovery of one 4 MiB object, generously (its pass retries every 2 s). */
const RECOVERED_WITHIN_MS = 30_000;

test('a replica host restarted unseen marks its disk stale where written; recovery clears it', async () => {
  const cluster = await inProcessCluster(4);
  try {
    const { writer, info, poolId } = await replicatedVolume(cluster);
    const data = pattern(OBJECT_BYTES, 7);
    await writer.write(0, data);
    await writer.flush();
    const state = cluster.store.current();
    const table = computeTable(state.map, poolId);
    const row = locateObject(table, info.id, 0);
    const replica = [...row][2]!;
    const host = state.map.disks.find((d) => d.id === replica)!.host;
    const key = pgKey(poolId, objectToPg(table.pool, info.id, 0));
    const epochBefore = state.map.epoch;

    let markedThere = false;
    const unsubscribe = cluster.store.subscribe((next) => {
      if ((next.staleMembers[key] ?? []).includes(replica)) markedThere = true;
    });
    await cluster.hosts.get(host)!.close();
    const reopened = await cluster.addHost(host, `rack-${host}`);
    unsubscribe();
    const marks = cluster.events.filter(
      (e) => e.host === host && e.event === 'startup.marked-stale',
    );
    assert.equal(marks.length, 1, 'the reopened datastore marked its disk before serving');
    assert.ok(markedThere, 'the written PG was marked stale on the restarted disk');
    const after = cluster.store.current();
    assert.ok(after.map.epoch > epochBefore);
    const unwritten = [...Array(table.pgCount).keys()].filter(
      (pg) => pg !== objectToPg(table.pool, info.id, 0),
    );
    for (const pg of unwritten)
      assert.ok(
        !(after.staleMembers[pgKey(poolId, pg)] ?? []).includes(replica),
        `PG ${pg} untouched`,
      );

    const deadline = Date.now() + RECOVERED_WITHIN_MS;
    while ((cluster.store.current().staleMembers[key] ?? []).includes(replica)) {
      assert.ok(Date.now() < deadline, 'recovery did not clear the mark');
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
    const handle = await reopened.open('v', { readOnly: true });
    const back = await handle.read(0, OBJECT_BYTES);
    assert.ok(Buffer.from(back).equals(Buffer.from(data)), 'the object reads back whole');
    await handle.close();
  } finally {
    await cluster.close();
  }
});
