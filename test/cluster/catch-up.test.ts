// Proves log-based catch-up on a real cluster: a real etcd and four `cistern daemon
// --etcd` processes, each in its own network namespace (harness.ts), a pool of size 3,
// min-size 2, failure domain host and only 8 PGs, so each PG holds several objects. A
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
import fs from 'node:fs';
import path from 'node:path';
import { after, before, test, type TestContext } from 'node:test';
import { unpack } from 'msgpackr';
import type { ClusterState } from '../../src/cluster/state';
import { computeTable, objectToPg, pgRow } from '../../src/placement/straw2';
import {
  cistern,
  createNetwork,
  Daemon,
  Etcd,
  etcdctl,
  ExecResult,
  Host,
  NBD_PORT,
  sleep,
  startDaemon,
  startEtcd,
  TestNetwork,
} from './harness';
import type { RunConfig, RunSummary, Target, VerifyConfig, VerifySummary } from './workload';

const MiB = 1024 * 1024;
const OBJECT_BYTES = 4 * MiB;
const CLUSTER_HOSTS = 4;
const PEER_PORT = 10811;
const BULK_BYTES = 128 * MiB;
const SMALL_BYTES = 8 * MiB;
/** Few PGs, so that each holds several of the bulk volume's objects. */
const PG_COUNT = 8;
const WORKLOAD = path.join(__dirname, 'workload.js');
/** A cut host's lease (10 s) lapses and the monitor (1 s ticks) marks it down. */
const HOST_DOWN_TIMEOUT_MS = 25_000;
const CLEAN_TIMEOUT_MS = 60_000;
const PROGRESS_TIMEOUT_MS = 60_000;
const RETRY_MS_MAX = 50_000;
const WORKLOAD_DURATION_MS_MAX = 180_000;

interface Status {
  health: string;
  hostsDown: string[];
  disks: Array<{ id: number; host: string; up: boolean; in: boolean }>;
  pgStates: Record<'active+clean' | 'active+degraded' | 'inactive', number>;
}

let network: TestNetwork;
let etcd: Etcd;
let secretFile: string;
let client: Host;
const daemons = new Map<string, Daemon>();
const models = new Map<string, string>();

const admin = (args: string[]): Promise<ExecResult> =>
  cistern(network, client, ['--etcd', etcd.url, ...args]);
const status = async (): Promise<Status> =>
  JSON.parse((await admin(['status', '--json'])).stdout) as Status;
const target = (host: Host): Target => ({ host: host.address, port: NBD_PORT });

async function readState(): Promise<ClusterState> {
  const result = await etcdctl(network, client, etcd, ['get', '/cistern/state', '-w', 'json']);
  const value = (JSON.parse(result.stdout) as { kvs?: Array<{ value: string }> }).kvs?.[0]?.value;
  assert.ok(value, 'no cluster state in etcd');
  return unpack(Buffer.from(value, 'base64')) as ClusterState;
}

async function waitForStatus(what: string, done: (s: Status) => boolean, timeoutMs: number) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const now = await status();
    if (done(now)) return now;
    if (Date.now() > deadline)
      assert.fail(`${what}: not within ${timeoutMs} ms: ${JSON.stringify(now)}`);
    await sleep(500);
  }
}

const clean = (s: Status): boolean =>
  s.health === 'ok' &&
  s.hostsDown.length === 0 &&
  s.disks.every((d) => d.up && d.in) &&
  s.pgStates['active+degraded'] === 0 &&
  s.pgStates.inactive === 0;

/** A verified workload on a new volume; `writes(n)` waits for n more, `stop()` ends it. */
async function startWorkload(volume: string, sizeBytes: number, gateways: Host[], seed: number) {
  await admin(['volume', 'create', volume, '--size', `${sizeBytes}`, '--pool', 'rep']);
  const spec = (await readState()).volumes.find((v) => v.name === volume);
  assert.ok(spec);
  const modelFile = path.join(network.workDir, `model-${volume}.json`);
  const stopFile = path.join(network.workDir, `stop-${volume}`);
  const pauseFile = path.join(network.workDir, `pause-${volume}`);
  const config: RunConfig = {
    mode: 'run',
    targets: gateways.map(target),
    exportName: volume,
    volumeTag: spec.id,
    sizeBytes,
    modelFile,
    stopFile,
    pauseFile,
    durationMsMax: WORKLOAD_DURATION_MS_MAX,
    flushEvery: 32,
    queueDepth: 8,
    readPercent: 30,
    seed,
    progressMs: 200,
    retryMsMax: RETRY_MS_MAX,
  };
  const child = network.spawn(client, [process.execPath, WORKLOAD, JSON.stringify(config)]);
  type Progress = { writes: number; paused: boolean; inFlight: number };
  const progress = (): Progress | undefined => {
    const lines = child.lines();
    for (let i = lines.length - 1; i >= 0; i -= 1) {
      if ((lines[i] as string).startsWith('{"progress"'))
        return (JSON.parse(lines[i] as string) as { progress: Progress }).progress;
    }
    return undefined;
  };
  const writesNow = (): number => progress()?.writes ?? 0;
  return {
    id: spec.id,
    async writes(count: number): Promise<void> {
      const goal = writesNow() + count;
      const deadline = Date.now() + PROGRESS_TIMEOUT_MS;
      while (writesNow() < goal) {
        assert.ok(child.exit() === undefined, `workload exited: ${child.stderr()}`);
        assert.ok(Date.now() < deadline, `fewer than ${count} writes in ${PROGRESS_TIMEOUT_MS} ms`);
        await sleep(100);
      }
    },
    async pause(): Promise<void> {
      fs.writeFileSync(pauseFile, '');
      const deadline = Date.now() + PROGRESS_TIMEOUT_MS;
      for (;;) {
        const from = child.lines().length;
        await child.waitForLine(/^\{"progress"/, 5000, from);
        const now = progress();
        if (now?.paused && now.inFlight === 0) return;
        assert.ok(Date.now() < deadline, `the workload did not go idle: ${JSON.stringify(now)}`);
      }
    },
    resume(): void {
      fs.rmSync(pauseFile);
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
}

function judge(t: TestContext, summary: RunSummary): void {
  const { mismatchDetails, errorDetails, ...counts } = summary;
  t.diagnostic(`workload: ${JSON.stringify(counts)}`);
  if (errorDetails.length > 0) t.diagnostic(`first errors: ${JSON.stringify(errorDetails)}`);
  assert.equal(summary.mismatches, 0, `mismatches: ${JSON.stringify(mismatchDetails)}`);
  assert.equal(summary.unresolved, 0, `writes never acknowledged: ${JSON.stringify(summary)}`);
}

async function verifyThrough(host: Host, volume: string, sizeBytes: number): Promise<void> {
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
  assert.equal(verified.blocks, sizeBytes / 4096);
  assert.ok(verified.blocksWritten > 0);
  assert.equal(verified.mismatches, 0, `${volume}: ${JSON.stringify(verified.mismatchDetails)}`);
}

/** `recovery.pg-done` lines of every daemon since `marks`, parsed. */
function pgDoneLines(marks: Map<string, number>): Array<Record<string, string>> {
  const found: Array<Record<string, string>> = [];
  for (const [name, daemon] of daemons) {
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
  network = createNetwork({ hosts: CLUSTER_HOSTS + 1 });
  client = network.host(CLUSTER_HOSTS);
  etcd = await startEtcd(network);
  secretFile = path.join(network.workDir, 'cluster.secret');
  await cistern(network, client, [
    'cluster',
    'init',
    '--etcd',
    etcd.url,
    '--secret-file',
    secretFile,
  ]);
  const hosts = network.hosts.slice(0, CLUSTER_HOSTS);
  const started = await Promise.all(
    hosts.map((host) => {
      const dataDir = path.join(network.workDir, `data-${host.name}`);
      return startDaemon(network, host, [
        ...['--etcd', etcd.url, '--host-id', host.name],
        ...['--listen', `${host.address}:${PEER_PORT}`, '--secret-file', secretFile],
        ...['--disk', `${dataDir}/disk0.img:1G`, '--data-dir', dataDir],
        ...['--nbd', `${host.address}:${NBD_PORT}`, '--admin', '127.0.0.1:0'],
      ]);
    }),
  );
  for (const daemon of started) daemons.set(daemon.host.name, daemon);
  await admin([
    ...['pool', 'create', 'rep', '--size', '3', '--min-size', '2'],
    ...['--failure-domain', 'host', '--pgs', String(PG_COUNT)],
  ]);
});

after(async () => {
  // Keeps every daemon's log for a post-mortem when asked to (the work dir is removed).
  const keep = process.env.CISTERN_TEST_LOG_DIR;
  if (keep !== undefined && network !== undefined) {
    fs.mkdirSync(keep, { recursive: true });
    for (const running of network.running())
      fs.writeFileSync(
        path.join(keep, `${running.host.name}-${running.pid}.log`),
        running.lines().join('\n'),
      );
  }
  await network?.destroy();
});

test('a host cut off briefly catches up from the PG log: only the objects written meanwhile are copied', async (t) => {
  const gateway = network.host(0);
  const bulk = await startWorkload('bulk', BULK_BYTES, [gateway, network.host(1)], 11);
  await bulk.writes(1500);
  judge(t, await bulk.stop());

  const small = await startWorkload('small', SMALL_BYTES, [gateway, network.host(1)], 12);
  await small.writes(200);
  await small.pause();
  // The victim: not the gateway, a member of the PG of the small volume's object 0.
  const state = await readState();
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
    await waitForStatus(
      `${victim.name} seen down`,
      (s) => s.hostsDown.includes(victim.name),
      HOST_DOWN_TIMEOUT_MS,
    );
    small.resume();
    await small.writes(200);
    // Stopped before the host is back: every change it missed is one the log must name.
    judge(t, await small.stop());
  } finally {
    network.restoreHost(victim);
  }
  const marks = new Map([...daemons].map(([name, d]) => [name, d.log().length]));
  const started = Date.now();
  await waitForStatus('cluster clean', clean, CLEAN_TIMEOUT_MS);
  t.diagnostic(`clean ${Date.now() - started} ms after the network came back`);

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
      const dataDir = daemons.get(name)!.dataDir!;
      return (await cistern(network, host, ['status', '--data-dir', dataDir])).stdout;
    }),
  );
  assert.ok(
    said.every((text) => /recovered here: \d+ PG members? from the PG log/.test(text)),
    said.join('\n'),
  );
  await verifyThrough(victim, 'small', SMALL_BYTES);
  await verifyThrough(victim, 'bulk', BULK_BYTES);
  await verifyThrough(network.host(1), 'small', SMALL_BYTES);
});
