// Proves that peering brings back PGs whose up-to-date members all went away, on a real
// cluster under a verified write workload: a real etcd and four `cistern daemon --etcd`
// processes in their own network namespaces (harness.ts), a pool of size 3, min-size 2,
// failure domain host; the workload (workload.ts, in a client namespace) writes
// self-describing 4 KiB blocks through NBD, FLUSHes every 32 writes and checks reads
// against its model.
// - A host's network is cut while the workload has requests in flight (primaries wait
//   on the cut replica, gateways give up on those primaries and mark their disks down,
//   the cut host's own late map updates land when it is back) and then restored.
// - Every daemon is killed with kill -9 at once (whole-cluster power loss, requests in
//   flight); once the leases lapsed one daemon is restarted, becomes monitor and marks
//   every other host down in one update — so every PG without a disk on it has no
//   up-to-date member left — then the others are restarted.
// - Every daemon is killed with kill -9 at once and restarted at once, before the
//   leases lapse: the map does not change, every member stays up-to-date, and peering
//   at start (activity records) must make replicas that a crash left different equal.
// After each: the workload saw no wrong data (after the power loss, a block written
// since its last FLUSH may hold any version since that FLUSH, never another), every
// failed request was retried to success, the cluster returned to all PGs active+clean
// (`cistern status --json`, bounded), and the whole volume reads back as the model says
// through every host's export; after the power losses `cistern scrub` finds no replicas
// that differ. Without peering (authoritativeMembers in state.ts) the PGs stay
// inactive and the first two tests fail at the wait for a clean cluster.
// A missing tool or a failing client fails the test; nothing is skipped.

import { strict as assert } from 'node:assert';
import { after, before, describe, test, type TestContext } from 'node:test';
import { Daemon, sleep } from './harness';
import { judge, WorkloadCluster } from './workload-cluster';

const CLUSTER_HOSTS = 4;
const WRITES_BEFORE_FAULT = 300;
const WRITES_AFTER_FAULT = 300;
/** Every test waits for at least this many writes before it stops its workload. */
const WRITES_MIN = WRITES_BEFORE_FAULT + 2 * WRITES_AFTER_FAULT;
/** A host's lease (10 s) lapses and the monitor (1 s ticks) marks it down. */
const HOST_DOWN_TIMEOUT_MS = 25_000;
/** Longer than a lease (10 s) and a monitor's campaign lease (10 s): both have lapsed. */
const LEASES_LAPSE_MS = 13_000;

describe('peering: PGs whose up-to-date members all went away serve again', () => {
  let cluster: WorkloadCluster;

  /** `cistern scrub`: every object's replicas compared; none may differ. */
  const scrubClean = async (t: TestContext): Promise<void> => {
    const result = await cluster.admin(['scrub', '--json', '--timeout', '120']);
    const report = JSON.parse(result.stdout) as {
      totals: { objects: number; disagreements: number; errors: number; examples: string[] };
    };
    t.diagnostic(`scrub: ${JSON.stringify(report.totals)}`);
    assert.equal(report.totals.errors, 0);
    assert.ok(report.totals.objects > 0, 'scrub compared nothing');
    assert.equal(report.totals.disagreements, 0, report.totals.examples.join('\n'));
  };

  before(async () => {
    // h0..h3 run the cluster, h4 is the client.
    cluster = new WorkloadCluster({
      clusterHosts: CLUSTER_HOSTS,
      otherHosts: 1,
      // All PGs clean again: backfill of a 64 MiB volume, after peer timeouts (30 s) ran out.
      cleanTimeoutMs: 90_000,
      // Progress under a fault: a cut host's peer requests hang until their 30 s timeout.
      progressTimeoutMs: 90_000,
      // One request is retried this long: a whole-cluster restart, or a peer timeout plus
      // reconnects.
      retryMsMax: 100_000,
      workloadDurationMsMax: 300_000,
    });
    await cluster.start();
  });

  after(async () => {
    await cluster?.destroy();
  });

  test('a host’s network cut with requests in flight, then restored: clean, nothing lost', async (t) => {
    const gateway = cluster.network.host(0);
    const victim = cluster.network.host(3);
    const workload = await cluster.startWorkload('cut', [gateway, cluster.network.host(1)], 11);
    await workload.writes(WRITES_BEFORE_FAULT);
    cluster.network.cutHost(victim); // no pause: the workload has requests in flight
    try {
      const down = await cluster.waitForStatus(
        `${victim.name} seen down`,
        (s) => s.hostsDown.includes(victim.name),
        HOST_DOWN_TIMEOUT_MS,
      );
      t.diagnostic(`${victim.name} down at epoch ${down.epoch}: ${JSON.stringify(down.pgStates)}`);
      await workload.writes(WRITES_AFTER_FAULT);
    } finally {
      cluster.network.restoreHost(victim);
    }
    assert.ok(cluster.daemons.get(victim.name)?.running(), 'the cut daemon died');
    await cluster.waitForClean(t);
    await workload.writes(WRITES_AFTER_FAULT);
    judge(t, await workload.stop(), WRITES_MIN);
    for (const host of cluster.network.hosts.slice(0, CLUSTER_HOSTS)) {
      await cluster.verifyThrough(host, 'cut');
    }
  });

  test('kill -9 of every daemon at once, restarted after their leases lapsed: clean, every flushed write kept', async (t) => {
    const hosts = cluster.network.hosts.slice(0, CLUSTER_HOSTS);
    const workload = await cluster.startWorkload('power', hosts.slice(0, 3), 12);
    await workload.writes(WRITES_BEFORE_FAULT);
    // The workload notes which blocks the crash may set back before anything dies.
    await workload.crashWindow('open');
    const killed = (await Promise.all(hosts.map((host) => cluster.network.killHost(host)))).flat();
    assert.equal(killed.length, CLUSTER_HOSTS);
    await sleep(LEASES_LAPSE_MS);
    const [first, ...rest] = killed as [Daemon, ...Daemon[]];
    cluster.daemons.set(first.host.name, await first.restart());
    const others = rest.map((d) => d.host.name);
    const alone = await cluster.waitForStatus(
      `${first.host.name} marks the others down`,
      (s) => others.every((h) => s.hostsDown.includes(h)),
      HOST_DOWN_TIMEOUT_MS,
    );
    t.diagnostic(
      `only ${first.host.name} up at epoch ${alone.epoch}: ${JSON.stringify(alone.pgStates)}`,
    );
    assert.ok(alone.pgStates.inactive > 0, 'some PG had no member on the first host');
    for (const daemon of await Promise.all(rest.map((d) => d.restart())))
      cluster.daemons.set(daemon.host.name, daemon);
    await workload.crashWindow('closed');
    await workload.writes(WRITES_AFTER_FAULT);
    await cluster.waitForClean(t);
    await workload.writes(WRITES_AFTER_FAULT);
    const summary = await workload.stop();
    judge(t, summary, WRITES_MIN);
    for (const host of hosts) await cluster.verifyThrough(host, 'power');
    await scrubClean(t);
  });

  test('kill -9 of every daemon, restarted at once (leases still held): replicas reconciled', async (t) => {
    const hosts = cluster.network.hosts.slice(0, CLUSTER_HOSTS);
    const workload = await cluster.startWorkload('quick', hosts.slice(0, 3), 13);
    await workload.writes(WRITES_BEFORE_FAULT);
    await workload.crashWindow('open');
    const before = await cluster.status();
    const killed = (await Promise.all(hosts.map((host) => cluster.network.killHost(host)))).flat();
    assert.equal(killed.length, CLUSTER_HOSTS);
    for (const daemon of await Promise.all(killed.map((d) => d.restart())))
      cluster.daemons.set(daemon.host.name, daemon);
    await workload.crashWindow('closed');
    await workload.writes(WRITES_AFTER_FAULT);
    const s = await cluster.waitForClean(t);
    t.diagnostic(`epoch ${before.epoch} before the kill, ${s.epoch} once clean`);
    await workload.writes(WRITES_AFTER_FAULT);
    judge(t, await workload.stop(), WRITES_MIN);
    for (const host of hosts) await cluster.verifyThrough(host, 'quick');
    // Members that stayed up-to-date through the crash were reconciled by peering from
    // their activity records: a scrub finds nothing to repair.
    await scrubClean(t);
    const reconciled = hosts.flatMap((host) =>
      (cluster.daemons.get(host.name)?.process.lines() ?? []).filter((l) =>
        /peering\.done/.test(l),
      ),
    );
    t.diagnostic(`${reconciled.length} PGs peered with listed objects after the restart`);
    assert.ok(reconciled.length > 0, 'no PG had objects in an activity record after the crash');
  });
});
