// Proves log-based catch-up on a real cluster: a real etcd and four `cistern daemon
// --etcd` processes, each in its own network namespace (harness.ts, set up by
// workload-cluster.ts), a pool of size 3, min-size 2, failure domain host and only 8
// PGs, so each PG holds several objects. A
// verified workload (workload.ts) first fills a 128 MiB volume (32 objects) and stops.
// A second workload writes a small 8 MiB volume (2 objects); it is paused, a host that
// holds a replica of the small volume is cut off until the monitor marks it down, the
// workload writes on without it and stops, and the host's network is restored. The cluster must
// get clean again, and the returning host's recovery must be a log catch-up in every
// PG (`recovery.pg-done … mode=log` in the daemons' logs) that copies exactly the small
// volume's objects in its PGs — not the bulk volume's objects those PGs also hold,
// which a backfill would have compared and a full copy copied — and `cistern status`
// on the primaries says so. Both volumes then read back as their models say through
// the returning host's export. A missing tool or a failing client fails the test.

import { strict as assert } from 'node:assert';
import { after, before, test } from 'node:test';
import { computeTable, objectToPg, pgRow } from '../../src/placement/straw2';
import { cistern } from './harness';
import { judge, WorkloadCluster } from './workload-cluster';

const MiB = 1024 * 1024;
const OBJECT_BYTES = 4 * MiB;
const CLUSTER_HOSTS = 4;
const BULK_BYTES = 128 * MiB;
const SMALL_BYTES = 8 * MiB;
/** Few PGs, so that each holds several of the bulk volume's objects. */
const PG_COUNT = 8;
/** A cut host's lease (10 s) lapses and the monitor (1 s ticks) marks it down. */
const HOST_DOWN_TIMEOUT_MS = 25_000;

let cluster: WorkloadCluster;

/** `recovery.pg-done` lines of every daemon since `marks`, parsed. */
function pgDoneLines(marks: Map<string, number>): Array<Record<string, string>> {
  const found: Array<Record<string, string>> = [];
  for (const [name, daemon] of cluster.daemons) {
    for (const line of daemon.log().slice(marks.get(name) ?? 0)) {
      if (!/ recovery\.pg-done /.test(line)) continue;
      const fields: Record<string, string> = { host: name };
      for (const m of line.matchAll(/(\w+)=("(?:[^"\\]|\\.)*"|\S+)/g))
        fields[m[1]!] = m[2]!.startsWith('"') ? (JSON.parse(m[2]!) as string) : m[2]!;
      found.push(fields);
    }
  }
  return found;
}

before(async () => {
  cluster = new WorkloadCluster({
    clusterHosts: CLUSTER_HOSTS,
    otherHosts: 1,
    cleanTimeoutMs: 60_000,
    progressTimeoutMs: 60_000,
    retryMsMax: 50_000,
    workloadDurationMsMax: 180_000,
    pgCount: PG_COUNT,
  });
  await cluster.start();
});

after(async () => {
  await cluster?.destroy();
});

test('a host cut off briefly catches up from the PG log: only the objects written meanwhile are copied', async (t) => {
  const { network } = cluster;
  const gateway = network.host(0);
  const bulk = await cluster.startWorkload('bulk', [gateway, network.host(1)], 11, BULK_BYTES);
  await bulk.writes(1500);
  judge(t, await bulk.stop(), 1500);

  const small = await cluster.startWorkload('small', [gateway, network.host(1)], 12, SMALL_BYTES);
  await small.writes(200);
  await small.pause();
  // The victim: not the gateway, a member of the PG of the small volume's object 0.
  const state = await cluster.readState();
  const pool = state.map.pools.find((p) => p.name === 'rep');
  assert.ok(pool && pool.pgCount === PG_COUNT);
  const table = computeTable(state.map, pool.id);
  const hostOf = (disk: number) => state.map.disks.find((d) => d.id === disk)!.host;
  const rowOf = (volume: number, object: number) => [
    ...pgRow(table, objectToPg(table.pool, volume, object)),
  ];
  const candidates = rowOf(small.id, 0).filter((disk) => hostOf(disk) !== gateway.name);
  const victimDisk = candidates[0]!;
  const victim = network.hosts.find((h) => h.name === hostOf(victimDisk))!;
  const smallInItsPgs = [0, 1].filter((o) => rowOf(small.id, o).includes(victimDisk)).length;
  const bulkInItsPgs = [...Array(BULK_BYTES / OBJECT_BYTES).keys()].filter((o) =>
    rowOf(bulk.id, o).includes(victimDisk),
  ).length;
  t.diagnostic(
    `victim ${victim.name} (disk ${victimDisk}): ${smallInItsPgs} small and ${bulkInItsPgs} bulk objects in its PGs`,
  );
  assert.ok(bulkInItsPgs > 8, 'its PGs hold many bulk objects');

  network.cutHost(victim);
  try {
    await cluster.waitForStatus(
      `${victim.name} seen down`,
      (s) => s.hostsDown.includes(victim.name),
      HOST_DOWN_TIMEOUT_MS,
    );
    small.resume();
    await small.writes(200);
    // Stopped before the host is back: every change it missed is one the log must name.
    judge(t, await small.stop(), 400);
  } finally {
    network.restoreHost(victim);
  }
  const marks = new Map([...cluster.daemons].map(([name, d]) => [name, d.log().length]));
  await cluster.waitForClean(t);

  const done = pgDoneLines(marks).filter((f) => Number(f.disk) === victimDisk);
  t.diagnostic(`recovery of disk ${victimDisk}: ${JSON.stringify(done)}`);
  assert.ok(done.length > 0, 'the returning disk was recovered');
  for (const line of done) assert.equal(line.mode, 'log', JSON.stringify(line));
  const copied = done.reduce((sum, line) => sum + Number(line.objects), 0);
  assert.equal(copied, smallInItsPgs, 'the small volume’s objects in its PGs, nothing else');
  // The primaries say so in `cistern status` (their own admin API).
  const said = await Promise.all(
    [...new Set(done.map((line) => line.host))].map(async (name) => {
      const host = network.hosts.find((h) => h.name === name)!;
      const dataDir = cluster.daemons.get(name)!.dataDir!;
      return (await cistern(network, host, ['status', '--data-dir', dataDir])).stdout;
    }),
  );
  assert.ok(
    said.every((text) => /recovered here: \d+ PG members? from the PG log/.test(text)),
    said.join('\n'),
  );
  await cluster.verifyThrough(victim, 'small');
  await cluster.verifyThrough(victim, 'bulk');
  await cluster.verifyThrough(network.host(1), 'small');
});
