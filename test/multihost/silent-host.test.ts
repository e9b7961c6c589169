// Proves that a request waiting on a host cut off without a reset — no FIN, no RST, so it
// answers nothing and a TCP connection to it stays open — ends as soon as the cluster
// map marks the host down (its lease lapsed, or a peer could not reach it), instead of
// waiting out the peer request timeout: 30 s for a primary's replica write, 90 s for a
// gateway's request to a primary (the 90-second client latency seen on real clusters).
// Three hosts in one process (helpers.ts), pool size 3 / min-size 2; the in-process
// network holds every request to the silenced host until the sender gives it up. In
// each case the write is seen waiting on the silent host, the map marks that host's
// disks down as the monitor would, and right after that update no request waits on it
// any more; the write then completes on the remaining members and reads back through
// another host. Without the give-up the requests would wait for ever here (the
// in-process network has no timeout), and the check right after the update fails.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { markDiskDown } from '../../src/cluster/state';
import { hostDownReason } from '../../src/cluster/monitor';
import { computeTable, locateObject } from '../../src/placement/straw2';
import { pattern } from '../datastore/helpers';
import { InProcessCluster, inProcessCluster, replicatedVolume } from './helpers';

const MiB = 2 ** 20;
const OBJECT_BYTES = 4 * MiB;
/** Polls for the write to reach the silent host; it does within a few event-loop turns. */
const POLLS_MAX = 2000;
const POLL_MS = 5;

/** The first object of `volume` for which `pick` names a host (given its PG's hosts, primary first). */
function objectWhere(
  cluster: InProcessCluster,
  poolId: number,
  volume: number,
  pick: (hosts: string[]) => string | undefined,
): { object: number; host: string } {
  const state = cluster.store.current();
  const table = computeTable(state.map, poolId);
  const hostOf = (disk: number) => state.map.disks.find((d) => d.id === disk)?.host as string;
  for (let object = 0; object < 16; object += 1) {
    const host = pick([...locateObject(table, volume, object)].map(hostOf));
    if (host !== undefined) return { object, host };
  }
  throw new Error('no object of the volume fits');
}

async function untilHanging(cluster: InProcessCluster, host: string): Promise<void> {
  for (let poll = 0; poll < POLLS_MAX; poll += 1) {
    if (cluster.network.hangingRequests(host) > 0) return;
    await new Promise((resolve) => setTimeout(resolve, POLL_MS));
  }
  assert.fail(`no request reached the silent host ${host}`);
}

/** What the monitor does once a host's lease lapsed: its disks go down. */
async function monitorMarksDown(cluster: InProcessCluster, host: string): Promise<void> {
  await cluster.store.update((s) => {
    for (const disk of s.map.disks)
      if (disk.host === host && disk.up) markDiskDown(s, disk.id, hostDownReason(host));
  });
}

for (const role of ['primary', 'replica'] as const) {
  test(`a write waiting on a silent ${role} host ends once the map marks that host down`, async () => {
    const cluster = await inProcessCluster(3);
    let silent: string | undefined;
    try {
      const { writer, info, poolId } = await replicatedVolume(cluster);
      // The gateway is h1: the primary case sends the write to another host's primary,
      // the replica case has h1 as primary, writing to a replica on another host.
      const { object, host } = objectWhere(cluster, poolId, info.id, (hosts) =>
        role === 'primary'
          ? hosts[0] !== 'h1'
            ? hosts[0]
            : undefined
          : hosts[0] === 'h1'
            ? hosts[1]
            : undefined,
      );
      silent = host;
      const data = pattern(64 * 1024, 7);
      cluster.network.silence(silent);
      const write = writer.write(object * OBJECT_BYTES, data);
      let settled = false;
      void write.then(
        () => (settled = true),
        () => (settled = true),
      );
      await untilHanging(cluster, silent);
      assert.equal(settled, false, 'the write waits on the silent host');
      await monitorMarksDown(cluster, silent);
      assert.equal(
        cluster.network.hangingRequests(silent),
        0,
        `requests to ${silent} still wait after the map marked it down`,
      );
      await write;
      const other = [...cluster.hosts.keys()].find((h) => h !== 'h1' && h !== silent) as string;
      const reader = await cluster.hosts.get(other)!.open('v', { readOnly: true });
      const back = await reader.read(object * OBJECT_BYTES, data.length);
      await reader.close();
      assert.ok(Buffer.from(back).equals(Buffer.from(data)), `read back through ${other}`);
      await writer.close();
    } finally {
      if (silent !== undefined) cluster.network.heal(silent);
      await cluster.close();
    }
  });
}
