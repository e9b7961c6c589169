// Proves that a real cluster keeps every acknowledged write, never serves wrong data and
// heals itself through host failures, while a client writes and reads continuously.
// A real etcd and four `cistern daemon --etcd` processes, each in its own network
// namespace (harness.ts), a pool of size 3, min-size 2, failure domain host. In every
// step a verified workload (workload.ts, run in a client namespace over our NBD client)
// writes self-describing 4 KiB blocks at random offsets of its own volume through one
// host's export, FLUSHes every few writes and checks random reads against its model
// (read-your-writes; never another block's data, never garbage). During it:
// - kill -9 of a host that is replica, not primary, of most of the volume's objects,
//   then of the host that is primary of most of them, each restarted after the monitor
//   saw it down; then kill -9 of the workload's own gateway host (the client reconnects
//   through another host's export);
// - a host's network cut (its daemon keeps running) and restored;
// - a fifth host added;
// - a host drained with `cistern host drain` (progress lines, then "holds no data"),
//   `cistern host rm` refused while the drain runs and accepted once the drained
//   daemon is stopped; its store, opened read-only, then holds no object.
// After each: the workload saw no mismatch, every failed request was retried to success
// (and while its gateway lives and every PG keeps min-size members, no request failed),
// the cluster returned to all PGs clean (`cistern status --json`, bounded), and the
// whole volume reads back as the model says through another host's export (through the
// added host, every volume of the file). At the end, once every daemon has run a stray
// pass on the clean map, and after a clean stop, each host's store is opened
// read-only: every written object is on all three of its placement members,
// byte-identical, on no other disk (copies on former members were removed), and the
// added host holds some.
// A network cut with client I/O in flight, and kill -9 of every daemon at once, are in
// peering.test.ts (peering picks the authoritative member of PGs left all stale).
// A missing tool or a failing client fails the test; nothing is skipped.

import { strict as assert } from 'node:assert';
import crypto from 'node:crypto';
import path from 'node:path';
import { after, before, describe, test, type TestContext } from 'node:test';
import { openDevice } from '../../src/engine';
import { ObjectStore } from '../../src/store/object-store';
import type { ClusterState } from '../../src/cluster/state';
import { computeTable, objectToPg, pgRow } from '../../src/placement/straw2';
import { CISTERN_BIN, Daemon, Host, NBD_PORT, sleep, startDaemon } from './harness';
import { judge, Workload, WorkloadCluster } from './workload-cluster';

const MiB = 1024 * 1024;
const OBJECT_BYTES = 4 * MiB;
const CLUSTER_HOSTS = 4;
/** Writes the workload must make before a fault, and again after it, to show it goes on. */
const WRITES_BEFORE_FAULT = 300;
const WRITES_AFTER_FAULT = 300;
/** Every test waits for at least this many writes before it stops its workload. */
const WRITES_MIN = WRITES_BEFORE_FAULT + WRITES_AFTER_FAULT;
/** A killed host's lease (10 s) lapses and the monitor (1 s ticks) marks it down. */
const HOST_DOWN_TIMEOUT_MS = 25_000;
/** A drain moves a fifth of a few sparse 64 MiB volumes, at the client-busy recovery share. */
const DRAIN_TIMEOUT_MS = 120_000;
/** Every daemon runs a stray pass on each map change, and every 10 s anyway. */
const STRAY_PASS_TIMEOUT_MS = 30_000;

describe('host failures under a verified write workload', () => {
  let cluster: WorkloadCluster;
  /** h4: the host added in the last step. */
  let spare: Host;

  /** Per host, how many of the volume's objects it is primary of and holds a replica of. */
  const roles = async (
    volume: string,
  ): Promise<Map<string, { primary: number; replica: number }>> => {
    const state = await cluster.readState();
    const spec = state.volumes.find((v) => v.name === volume);
    assert.ok(spec, `no volume ${volume}`);
    const table = computeTable(state.map, spec.pool);
    const hostOf = new Map(state.map.disks.map((d) => [d.id, d.host]));
    const counts = new Map<string, { primary: number; replica: number }>();
    for (const disk of state.map.disks) counts.set(disk.host, { primary: 0, replica: 0 });
    for (let object = 0; object < spec.sizeBytes / OBJECT_BYTES; object += 1) {
      const row = [...pgRow(table, objectToPg(table.pool, spec.id, object))];
      row.forEach((disk, index) => {
        const entry = counts.get(hostOf.get(disk) as string);
        assert.ok(entry, `disk ${disk} on no known host`);
        if (index === 0) entry.primary += 1;
        else entry.replica += 1;
      });
    }
    return counts;
  };

  /**
   * Opens a stopped host's disk read-only: "volume/object" → SHA-256 of the whole object,
   * for the given volumes of `pool`.
   */
  const objectsOnDisk = async (
    state: ClusterState,
    diskId: number,
    pool: number,
    volumes: ClusterState['volumes'],
  ): Promise<Map<string, string>> => {
    const disk = state.map.disks.find((d) => d.id === diskId);
    const location = state.disks[String(diskId)];
    assert.ok(disk && location, `disk ${diskId} has no location`);
    const dataDir = path.join(cluster.network.workDir, `data-${disk.host}`);
    const held = new Map<string, string>();
    const device = await openDevice(location.path, { readOnly: true });
    try {
      const store = await ObjectStore.open({
        device,
        indexPath: path.join(dataDir, 'index', `disk-${diskId}`),
      });
      try {
        for (const volume of volumes) {
          for await (const key of store.listObjects({ pool, volume: volume.id })) {
            const data = await store.read(key, 0, volume.objectSizeBytes);
            const digest = crypto.createHash('sha256').update(data).digest('hex');
            held.set(`${volume.name}/${key.object}`, digest);
          }
        }
      } finally {
        await store.close();
      }
    } finally {
      await device.close();
    }
    return held;
  };

  /** Waits until every running daemon has logged a stray pass at `epoch` or later. */
  const waitForStrayPasses = async (epoch: number): Promise<void> => {
    const deadline = Date.now() + STRAY_PASS_TIMEOUT_MS;
    for (const daemon of cluster.daemons.values()) {
      for (;;) {
        const passed = daemon
          .log()
          .some((line) => Number(/\bstrays\.pass\b.*\bepoch=(\d+)/.exec(line)?.[1]) >= epoch);
        if (passed) break;
        assert.ok(
          Date.now() < deadline,
          `${daemon.host.name} logged no stray pass at epoch ${epoch} or later`,
        );
        await sleep(250);
      }
    }
  };

  /** kill -9 of every process on `victim`; once the monitor has seen it down, restart. */
  const killAndRestart = async (t: TestContext, victim: Host, workload: Workload) => {
    const killed = await cluster.network.killHost(victim);
    assert.equal(killed.length, 1, `${victim.name} ran no daemon`);
    await workload.writes(WRITES_AFTER_FAULT);
    const down = await cluster.waitForStatus(
      `${victim.name} seen down`,
      (s) => s.hostsDown.includes(victim.name),
      HOST_DOWN_TIMEOUT_MS,
    );
    t.diagnostic(`${victim.name} down at epoch ${down.epoch}: ${JSON.stringify(down.pgStates)}`);
    assert.equal(down.pgStates.inactive, 0, 'a PG went inactive with one host down');
    assert.ok(down.recovery.objectsDegraded > 0, 'no degraded objects with a host down');
    cluster.daemons.set(victim.name, await (killed[0] as Daemon).restart());
  };

  before(async () => {
    // h0..h3 run the cluster, h4 is added later, h5 is the client.
    cluster = new WorkloadCluster({
      clusterHosts: CLUSTER_HOSTS,
      otherHosts: 2,
      // All PGs clean again after a host is back: backfill of 64 MiB volumes takes seconds.
      cleanTimeoutMs: 60_000,
      // Progress under a fault: a cut host's peer requests hang until their 30 s timeout.
      progressTimeoutMs: 60_000,
      // One request is retried this long: longer than a peer request timeout plus reconnects.
      retryMsMax: 50_000,
      workloadDurationMsMax: 240_000,
    });
    spare = cluster.network.host(CLUSTER_HOSTS);
    await cluster.start();
  });

  after(async () => {
    await cluster?.destroy();
  });

  test('kill -9 of a replica host, then of a primary host: no acknowledged write lost, clean again', async (t) => {
    const gateway = cluster.network.host(0);
    const others = cluster.network.hosts.slice(1, CLUSTER_HOSTS);
    const workload = await cluster.startWorkload('kills', [gateway, ...others], 1);
    const role = await roles('kills');
    t.diagnostic(`roles for kills: ${JSON.stringify([...role])}`);
    const byPrimaries = others
      .map((host) => ({ host, ...(role.get(host.name) as { primary: number; replica: number }) }))
      .sort((a, b) => a.primary - b.primary || b.replica - a.replica);
    const replicaHost = (byPrimaries[0] as { host: Host }).host;
    const primaryHost = (byPrimaries[byPrimaries.length - 1] as { host: Host }).host;
    assert.notEqual(replicaHost, primaryHost);

    await workload.writes(WRITES_BEFORE_FAULT);
    await killAndRestart(t, replicaHost, workload);
    await cluster.waitForClean(t);
    await workload.writes(WRITES_BEFORE_FAULT);
    await killAndRestart(t, primaryHost, workload);
    await cluster.waitForClean(t);
    await workload.writes(WRITES_AFTER_FAULT);
    const summary = await workload.stop();
    judge(t, summary, WRITES_MIN);
    // Its gateway never died and at least min-size members of every PG were up
    // throughout: no request may fail, even one that a retry would have saved.
    assert.equal(summary.errors, 0, `client errors: ${JSON.stringify(summary.errorDetails)}`);
    await cluster.verifyThrough(primaryHost, 'kills');
    await cluster.verifyThrough(replicaHost, 'kills');
  });

  test('kill -9 of the workload’s gateway host: the client reconnects elsewhere, nothing lost', async (t) => {
    const gateway = cluster.network.host(1);
    const fallback = cluster.network.host(2);
    const workload = await cluster.startWorkload('gateway', [gateway, fallback], 2);
    await workload.writes(WRITES_BEFORE_FAULT);
    await killAndRestart(t, gateway, workload);
    await cluster.waitForClean(t);
    await workload.writes(WRITES_AFTER_FAULT);
    const summary = await workload.stop();
    judge(t, summary, WRITES_MIN);
    assert.ok(summary.reconnects >= 1, 'the client never reconnected');
    assert.ok(summary.gateways.includes(`${fallback.address}:${NBD_PORT}`), 'no failover');
    // Through the host that died and came back: it serves what was written without it.
    await cluster.verifyThrough(gateway, 'gateway');
    // The check can fail: this volume against the other volume's model does.
    const control = await cluster.verifyThrough(gateway, 'gateway', 'kills');
    assert.ok(control.mismatches > 0, 'a volume verified against another volume’s model');
    assert.ok(
      control.mismatchDetails.some((m) => m.found.kind === 'written' && m.found.block === m.block),
      JSON.stringify(control.mismatchDetails.slice(0, 3)),
    );
  });

  // The cut here happens while no client request is in flight; peering.test.ts cuts a
  // host with requests in flight (PGs left with every member stale, which peering now
  // brings back through their authoritative members).
  test('a host’s network cut and restored: writes go on, it rejoins, is recovered, clean', async (t) => {
    const gateway = cluster.network.host(0);
    const victim = cluster.network.host(3);
    const workload = await cluster.startWorkload('cut', [gateway, cluster.network.host(1)], 3);
    await workload.writes(WRITES_BEFORE_FAULT);
    await workload.pause();
    cluster.network.cutHost(victim);
    try {
      const down = await cluster.waitForStatus(
        `${victim.name} seen down`,
        (s) => s.hostsDown.includes(victim.name),
        HOST_DOWN_TIMEOUT_MS,
      );
      t.diagnostic(`${victim.name} down at epoch ${down.epoch}: ${JSON.stringify(down.pgStates)}`);
      workload.resume();
      await workload.writes(WRITES_AFTER_FAULT);
    } finally {
      cluster.network.restoreHost(victim);
    }
    assert.ok(cluster.daemons.get(victim.name)?.running(), 'the cut daemon died');
    await cluster.waitForClean(t);
    await workload.writes(WRITES_AFTER_FAULT);
    judge(t, await workload.stop(), WRITES_MIN);
    await cluster.verifyThrough(victim, 'cut');
  });

  test('a fifth host added under the workload: the cluster gets clean with data on it', async (t) => {
    const workload = await cluster.startWorkload(
      'grow',
      [cluster.network.host(0), cluster.network.host(1)],
      4,
    );
    await workload.writes(WRITES_BEFORE_FAULT);
    cluster.daemons.set(
      spare.name,
      await startDaemon(cluster.network, spare, cluster.daemonArgs(spare)),
    );
    await cluster.waitForStatus('h4 joined', (s) => s.hostsUp.includes(spare.name), 10_000);
    await workload.writes(WRITES_AFTER_FAULT);
    await cluster.waitForClean(t);
    judge(t, await workload.stop(), WRITES_MIN);
    const role = await roles('grow');
    t.diagnostic(`roles for grow: ${JSON.stringify([...role])}`);
    const placed = role.get(spare.name);
    assert.ok(placed && placed.primary + placed.replica > 0, 'no object placed on the new host');
    // Every volume written in this file reads back as its model says through the new host.
    for (const volume of cluster.models.keys()) await cluster.verifyThrough(spare, volume);
  });

  test('a host drained under the workload: progress, then empty; host rm refused until then', async (t) => {
    const victim = cluster.network.host(2);
    const workload = await cluster.startWorkload(
      'drain',
      [cluster.network.host(0), cluster.network.host(1)],
      5,
    );
    await workload.writes(WRITES_BEFORE_FAULT);
    const drain = cluster.network.spawn(cluster.client, [
      ...[process.execPath, CISTERN_BIN, '--etcd', cluster.etcd.url],
      ...['host', 'drain', victim.name, '--timeout', `${DRAIN_TIMEOUT_MS / 1000}`],
    ]);
    await drain.waitForLine(
      /^draining host h2: placement weight of disk\(s\) \d+ set to 0$/,
      30_000,
    );
    const early = await cluster.admin(['host', 'rm', victim.name]).catch((error: Error) => error);
    assert.ok(early instanceof Error, 'host rm accepted while the drain runs');
    assert.match(early.message, /cistern: host h2 (is running|still holds \d+ PG)/);
    await workload.writes(WRITES_AFTER_FAULT);
    const exit = await drain.exited;
    assert.deepEqual(exit, { code: 0, signal: null }, drain.stderr());
    const progress = drain.lines().filter((line) => /^host h2: \d+ PG\(s\) still on it/.test(line));
    t.diagnostic(`drain: ${progress.length} progress lines, first: ${progress[0]}`);
    assert.ok(progress.length > 0, 'no progress was shown');
    assert.match(drain.stdout(), /^host h2 holds no data: it can be powered off and removed/m);
    const clean = await cluster.waitForClean(t);
    await workload.writes(WRITES_AFTER_FAULT);
    judge(t, await workload.stop(), WRITES_MIN);
    await cluster.verifyThrough(cluster.network.host(0), 'drain');

    // Its copies go once their PGs are clean; then a clean stop, and the store is empty.
    const state = await cluster.readState();
    const pool = state.map.pools.find((p) => p.name === 'rep');
    assert.ok(pool);
    await waitForStrayPasses(clean.epoch);
    const drained = cluster.daemons.get(victim.name);
    assert.ok(drained);
    assert.deepEqual(await drained.stop('SIGTERM'), { code: 0, signal: null });
    cluster.daemons.delete(victim.name);
    const volumes = state.volumes.filter((v) => cluster.models.has(v.name));
    for (const disk of state.map.disks.filter((d) => d.host === victim.name)) {
      const held = await objectsOnDisk(state, disk.id, pool.id, volumes);
      assert.deepEqual([...held.keys()], [], `the drained disk ${disk.id} still holds objects`);
    }
    await cluster.admin(['host', 'rm', victim.name]);
    const after = await cluster.status();
    assert.ok(!after.disks.some((d) => d.host === victim.name), 'h2 is still in the map');
    // The drained host's copies are gone: every volume still reads back whole.
    for (const volume of cluster.models.keys()) {
      await cluster.verifyThrough(cluster.network.host(1), volume);
    }
  });

  test('after a clean stop: every object on all three placement members, byte-identical, nowhere else', async (t) => {
    await waitForStrayPasses((await cluster.readState()).map.epoch);
    const state = await cluster.readState();
    const pool = state.map.pools.find((p) => p.name === 'rep');
    assert.ok(pool);
    const table = computeTable(state.map, pool.id);
    const disks = new Map(state.map.disks.map((d) => [d.id, d]));
    const volumes = state.volumes.filter((v) => cluster.models.has(v.name));
    assert.deepEqual(volumes.map((v) => v.name).sort(), [...cluster.models.keys()].sort());

    const exits = await Promise.all([...cluster.daemons.values()].map((d) => d.stop('SIGTERM')));
    assert.deepEqual(
      exits,
      [...cluster.daemons.values()].map(() => ({ code: 0, signal: null })),
    );

    // "volume/object" → disk id → SHA-256 of the whole object as that disk holds it
    const copies = new Map<string, Map<number, string>>();
    for (const disk of state.map.disks) {
      for (const [name, digest] of await objectsOnDisk(state, disk.id, pool.id, volumes)) {
        const held = copies.get(name) ?? new Map<number, string>();
        held.set(disk.id, digest);
        copies.set(name, held);
      }
    }
    let onSpare = 0;
    for (const volume of volumes) {
      for (let object = 0; object < volume.sizeBytes / OBJECT_BYTES; object += 1) {
        const name = `${volume.name}/${object}`;
        const members: number[] = [...pgRow(table, objectToPg(pool, volume.id, object))];
        const held = copies.get(name) ?? new Map<number, string>();
        const where = (ids: number[]): string =>
          ids.map((id) => `${id}@${disks.get(id)?.host}`).join(', ');
        const missing = members.filter((id) => !held.has(id));
        assert.deepEqual(
          missing,
          [],
          `${name}: held by ${where([...held.keys()])}, placed on ${where(members)}`,
        );
        const digests = new Set(members.map((id) => held.get(id)));
        assert.equal(digests.size, 1, `${name}: replicas on ${where(members)} differ`);
        const strays = [...held.keys()].filter((id) => !members.includes(id));
        assert.deepEqual(strays, [], `${name}: copies left on former members ${where(strays)}`);
        if (members.some((id) => disks.get(id)?.host === spare.name)) onSpare += 1;
      }
    }
    t.diagnostic(`${copies.size} objects checked; ${onSpare} on ${spare.name}`);
    assert.ok(onSpare > 0, `no object on ${spare.name}`);
  });
});
