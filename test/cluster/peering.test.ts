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
import fs from 'node:fs';
import path from 'node:path';
import { after, before, describe, test, type TestContext } from 'node:test';
import { unpack } from 'msgpackr';
import type { ClusterState } from '../../src/cluster/state';
import {
  cistern,
  createNetwork,
  Daemon,
  Etcd,
  etcdctl,
  ExecResult,
  Host,
  NBD_PORT,
  NetnsProcess,
  sleep,
  startDaemon,
  startEtcd,
  TestNetwork,
} from './harness';
import type { RunConfig, RunSummary, Target, VerifyConfig, VerifySummary } from './workload';

const MiB = 1024 * 1024;
const CLUSTER_HOSTS = 4;
const PEER_PORT = 10811;
const VOLUME_BYTES = 64 * MiB;
const WORKLOAD = path.join(__dirname, 'workload.js');
const WRITES_BEFORE_FAULT = 300;
const WRITES_AFTER_FAULT = 300;
/** A host's lease (10 s) lapses and the monitor (1 s ticks) marks it down. */
const HOST_DOWN_TIMEOUT_MS = 25_000;
/** Longer than a lease (10 s) and a monitor's campaign lease (10 s): both have lapsed. */
const LEASES_LAPSE_MS = 13_000;
/** All PGs clean again: backfill of a 64 MiB volume, after peer timeouts (30 s) ran out. */
const CLEAN_TIMEOUT_MS = 90_000;
/** Progress under a fault: a cut host's peer requests hang until their 30 s timeout. */
const PROGRESS_TIMEOUT_MS = 90_000;
/** One request is retried this long: a whole-cluster restart, or a peer timeout plus reconnects. */
const RETRY_MS_MAX = 100_000;
const WORKLOAD_DURATION_MS_MAX = 300_000;

interface Status {
  health: string;
  epoch: number;
  hostsUp: string[];
  hostsDown: string[];
  disks: Array<{ id: number; host: string; up: boolean; in: boolean }>;
  pgStates: Record<'active+clean' | 'active+degraded' | 'inactive', number>;
}

interface Workload {
  process: NetnsProcess;
  writes(count: number): Promise<void>;
  stop(): Promise<RunSummary>;
}

describe('peering: PGs whose up-to-date members all went away serve again', () => {
  let network: TestNetwork;
  let etcd: Etcd;
  let secretFile: string;
  const daemons = new Map<string, Daemon>();
  /** h4: runs no daemon; the workload and the checks run here. */
  let client: Host;
  const models = new Map<string, string>();

  const admin = (args: string[]): Promise<ExecResult> =>
    cistern(network, client, ['--etcd', etcd.url, ...args]);
  const status = async (): Promise<Status> =>
    JSON.parse((await admin(['status', '--json'])).stdout) as Status;
  const target = (host: Host): Target => ({ host: host.address, port: NBD_PORT });

  const daemonArgs = (host: Host): string[] => {
    const dataDir = path.join(network.workDir, `data-${host.name}`);
    return [
      ...['--etcd', etcd.url, '--host-id', host.name],
      ...['--listen', `${host.address}:${PEER_PORT}`, '--secret-file', secretFile],
      ...['--disk', `${dataDir}/disk0.img:1G`, '--data-dir', dataDir],
      ...['--nbd', `${host.address}:${NBD_PORT}`, '--admin', '127.0.0.1:0'],
    ];
  };

  const waitForStatus = async (
    what: string,
    done: (s: Status) => boolean,
    timeoutMs: number,
  ): Promise<Status> => {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const now = await status();
      if (done(now)) return now;
      if (Date.now() > deadline) {
        assert.fail(`${what}: not within ${timeoutMs} ms; status:\n${JSON.stringify(now)}`);
      }
      await sleep(500);
    }
  };

  const waitForClean = async (t: TestContext): Promise<Status> => {
    const started = Date.now();
    const s = await waitForStatus(
      'cluster clean',
      (s) =>
        s.health === 'ok' &&
        s.hostsDown.length === 0 &&
        s.disks.every((d) => d.up && d.in) &&
        s.pgStates['active+degraded'] === 0 &&
        s.pgStates.inactive === 0,
      CLEAN_TIMEOUT_MS,
    );
    t.diagnostic(`clean after ${Date.now() - started} ms (epoch ${s.epoch})`);
    return s;
  };

  const startWorkload = async (volume: string, gateways: Host[], seed: number) => {
    await admin(['volume', 'create', volume, '--size', `${VOLUME_BYTES}`, '--pool', 'rep']);
    const result = await etcdctl(network, client, etcd, ['get', '/cistern/state', '-w', 'json']);
    const value = (JSON.parse(result.stdout) as { kvs?: Array<{ value: string }> }).kvs?.[0]?.value;
    assert.ok(value, 'no cluster state in etcd');
    const state = unpack(Buffer.from(value, 'base64')) as ClusterState;
    const id = state.volumes.find((v) => v.name === volume)?.id;
    assert.ok(id !== undefined, `no volume ${volume}`);
    const modelFile = path.join(network.workDir, `model-${volume}.json`);
    const stopFile = path.join(network.workDir, `stop-${volume}`);
    const config: RunConfig = {
      mode: 'run',
      targets: gateways.map(target),
      exportName: volume,
      volumeTag: id,
      sizeBytes: VOLUME_BYTES,
      modelFile,
      stopFile,
      pauseFile: path.join(network.workDir, `pause-${volume}`),
      durationMsMax: WORKLOAD_DURATION_MS_MAX,
      flushEvery: 32,
      queueDepth: 8,
      readPercent: 40,
      seed,
      progressMs: 200,
      retryMsMax: RETRY_MS_MAX,
    };
    const child = network.spawn(client, [process.execPath, WORKLOAD, JSON.stringify(config)]);
    const writesNow = (): number => {
      const lines = child.lines();
      for (let i = lines.length - 1; i >= 0; i -= 1) {
        if ((lines[i] as string).startsWith('{"progress"')) {
          return (JSON.parse(lines[i] as string) as { progress: { writes: number } }).progress
            .writes;
        }
      }
      return 0;
    };
    const workload: Workload = {
      process: child,
      async writes(count: number): Promise<void> {
        const goal = writesNow() + count;
        const deadline = Date.now() + PROGRESS_TIMEOUT_MS;
        while (writesNow() < goal) {
          assert.ok(child.exit() === undefined, `workload exited: ${child.stderr()}`);
          assert.ok(
            Date.now() < deadline,
            `the workload made fewer than ${count} writes in ${PROGRESS_TIMEOUT_MS} ms:\n` +
              child.lines().slice(-5).join('\n'),
          );
          await sleep(100);
        }
      },
      async stop(): Promise<RunSummary> {
        fs.writeFileSync(stopFile, '');
        const exit = await child.exited;
        assert.deepEqual(exit, { code: 0, signal: null }, child.stderr());
        models.set(volume, modelFile);
        const last = child.stdout().trim().split('\n').pop() as string;
        return (JSON.parse(last) as { summary: RunSummary }).summary;
      },
    };
    return workload;
  };

  const judge = (t: TestContext, summary: RunSummary): void => {
    const { mismatchDetails, errorDetails, ...counts } = summary;
    t.diagnostic(`workload: ${JSON.stringify(counts)}`);
    if (errorDetails.length > 0) t.diagnostic(`first errors: ${JSON.stringify(errorDetails)}`);
    assert.equal(summary.mismatches, 0, `mismatches: ${JSON.stringify(mismatchDetails)}`);
    assert.equal(summary.unresolved, 0, `writes never acknowledged: ${JSON.stringify(counts)}`);
    assert.ok(summary.writes >= WRITES_BEFORE_FAULT + 2 * WRITES_AFTER_FAULT, 'too few writes');
    assert.ok(summary.reads > 0, 'no reads were verified');
    assert.ok(summary.flushes > 0, 'no flushes');
  };

  const verifyThrough = async (host: Host, volume: string): Promise<VerifySummary> => {
    const modelFile = models.get(volume);
    assert.ok(modelFile, `no model for ${volume}`);
    const config: VerifyConfig = {
      mode: 'verify',
      targets: [target(host)],
      exportName: volume,
      modelFile,
    };
    const result = await network.exec(client, [process.execPath, WORKLOAD, JSON.stringify(config)]);
    const verified = (
      JSON.parse(result.stdout.trim().split('\n').pop() as string) as { verify: VerifySummary }
    ).verify;
    assert.equal(verified.blocks, VOLUME_BYTES / 4096);
    assert.ok(verified.blocksWritten > 0);
    assert.equal(
      verified.mismatches,
      0,
      `${volume} through ${host.name}: ${JSON.stringify(verified.mismatchDetails)}`,
    );
    return verified;
  };

  /** `cistern scrub`: every object's replicas compared; none may differ. */
  const scrubClean = async (t: TestContext): Promise<void> => {
    const result = await admin(['scrub', '--json', '--timeout', '120']);
    const report = JSON.parse(result.stdout) as {
      totals: { objects: number; disagreements: number; errors: number; examples: string[] };
    };
    t.diagnostic(`scrub: ${JSON.stringify(report.totals)}`);
    assert.equal(report.totals.errors, 0);
    assert.ok(report.totals.objects > 0, 'scrub compared nothing');
    assert.equal(report.totals.disagreements, 0, report.totals.examples.join('\n'));
  };

  before(async () => {
    network = createNetwork({ hosts: CLUSTER_HOSTS + 1 });
    client = network.host(CLUSTER_HOSTS);
    etcd = await startEtcd(network);
    secretFile = path.join(network.workDir, 'cluster.secret');
    await cistern(network, client, [
      ...['cluster', 'init', '--etcd', etcd.url, '--secret-file', secretFile],
    ]);
    const hosts = network.hosts.slice(0, CLUSTER_HOSTS);
    const started = await Promise.all(
      hosts.map((host) => startDaemon(network, host, daemonArgs(host))),
    );
    for (const daemon of started) daemons.set(daemon.host.name, daemon);
    await admin([
      ...['pool', 'create', 'rep', '--size', '3', '--min-size', '2'],
      ...['--failure-domain', 'host'],
    ]);
  });

  after(async () => {
    const keep = process.env.CISTERN_TEST_LOG_DIR;
    if (keep !== undefined && network !== undefined) {
      fs.mkdirSync(keep, { recursive: true });
      for (const process of network.running()) {
        const name = `${process.host.name}-${process.pid}.log`;
        fs.writeFileSync(path.join(keep, name), process.lines().join('\n'));
      }
    }
    await network?.destroy();
  });

  test('a host’s network cut with requests in flight, then restored: clean, nothing lost', async (t) => {
    const gateway = network.host(0);
    const victim = network.host(3);
    const workload = await startWorkload('cut', [gateway, network.host(1)], 11);
    await workload.writes(WRITES_BEFORE_FAULT);
    network.cutHost(victim); // no pause: the workload has requests in flight
    try {
      const down = await waitForStatus(
        `${victim.name} seen down`,
        (s) => s.hostsDown.includes(victim.name),
        HOST_DOWN_TIMEOUT_MS,
      );
      t.diagnostic(`${victim.name} down at epoch ${down.epoch}: ${JSON.stringify(down.pgStates)}`);
      await workload.writes(WRITES_AFTER_FAULT);
    } finally {
      network.restoreHost(victim);
    }
    assert.ok(daemons.get(victim.name)?.running(), 'the cut daemon died');
    await waitForClean(t);
    await workload.writes(WRITES_AFTER_FAULT);
    judge(t, await workload.stop());
    for (const host of network.hosts.slice(0, CLUSTER_HOSTS)) await verifyThrough(host, 'cut');
  });

  test('kill -9 of every daemon at once, restarted after their leases lapsed: clean, every flushed write kept', async (t) => {
    const hosts = network.hosts.slice(0, CLUSTER_HOSTS);
    const workload = await startWorkload('power', hosts.slice(0, 3), 12);
    await workload.writes(WRITES_BEFORE_FAULT);
    // The workload notes which blocks the crash may set back before anything dies.
    const from = workload.process.lines().length;
    process.kill(workload.process.pid, 'SIGUSR1');
    await workload.process.waitForLine(/"crashWindow":"open"/, 10_000, from);
    const killed = (await Promise.all(hosts.map((host) => network.killHost(host)))).flat();
    assert.equal(killed.length, CLUSTER_HOSTS);
    await sleep(LEASES_LAPSE_MS);
    const [first, ...rest] = killed as [Daemon, ...Daemon[]];
    daemons.set(first.host.name, await first.restart());
    const others = rest.map((d) => d.host.name);
    const alone = await waitForStatus(
      `${first.host.name} marks the others down`,
      (s) => others.every((h) => s.hostsDown.includes(h)),
      HOST_DOWN_TIMEOUT_MS,
    );
    t.diagnostic(
      `only ${first.host.name} up at epoch ${alone.epoch}: ${JSON.stringify(alone.pgStates)}`,
    );
    assert.ok(alone.pgStates.inactive > 0, 'some PG had no member on the first host');
    for (const daemon of await Promise.all(rest.map((d) => d.restart())))
      daemons.set(daemon.host.name, daemon);
    const after = workload.process.lines().length;
    process.kill(workload.process.pid, 'SIGUSR2');
    await workload.process.waitForLine(/"crashWindow":"closed"/, 10_000, after);
    await workload.writes(WRITES_AFTER_FAULT);
    await waitForClean(t);
    await workload.writes(WRITES_AFTER_FAULT);
    const summary = await workload.stop();
    judge(t, summary);
    for (const host of hosts) await verifyThrough(host, 'power');
    await scrubClean(t);
  });

  test('kill -9 of every daemon, restarted at once (leases still held): replicas reconciled', async (t) => {
    const hosts = network.hosts.slice(0, CLUSTER_HOSTS);
    const workload = await startWorkload('quick', hosts.slice(0, 3), 13);
    await workload.writes(WRITES_BEFORE_FAULT);
    const from = workload.process.lines().length;
    process.kill(workload.process.pid, 'SIGUSR1');
    await workload.process.waitForLine(/"crashWindow":"open"/, 10_000, from);
    const before = await status();
    const killed = (await Promise.all(hosts.map((host) => network.killHost(host)))).flat();
    assert.equal(killed.length, CLUSTER_HOSTS);
    for (const daemon of await Promise.all(killed.map((d) => d.restart())))
      daemons.set(daemon.host.name, daemon);
    const after = workload.process.lines().length;
    process.kill(workload.process.pid, 'SIGUSR2');
    await workload.process.waitForLine(/"crashWindow":"closed"/, 10_000, after);
    await workload.writes(WRITES_AFTER_FAULT);
    const s = await waitForClean(t);
    t.diagnostic(`epoch ${before.epoch} before the kill, ${s.epoch} once clean`);
    await workload.writes(WRITES_AFTER_FAULT);
    judge(t, await workload.stop());
    for (const host of hosts) await verifyThrough(host, 'quick');
    // Members that stayed up-to-date through the crash were reconciled by peering from
    // their activity records: a scrub finds nothing to repair.
    await scrubClean(t);
    const reconciled = hosts.flatMap((host) =>
      (daemons.get(host.name)?.process.lines() ?? []).filter((l) => /peering\.done/.test(l)),
    );
    t.diagnostic(`${reconciled.length} PGs peered with listed objects after the restart`);
    assert.ok(reconciled.length > 0, 'no PG had objects in an activity record after the crash');
  });
});
