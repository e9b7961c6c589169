// Benchmark of log-based catch-up: what bringing back a host that was away briefly costs
// — time and bytes copied — beside the peer, copying that host's whole share of the
// data again (what recovery did for every returning host before the PG log), in one
// run, on one cluster, on one machine.
//
// Set-up (test/cluster/harness.ts, as perf/recovery.ts): a real etcd and four `cistern
// daemon --etcd` hosts h0–h3, each in its own network namespace, a pool of size 3
// (min-size 2, failure domain host), one volume written whole once with 1 MiB writes
// through h0. Then, with nothing else running:
//  1. catch-up: h3's network is cut until the monitor marks it down (its lease, 10 s);
//     fio writes 4 KiB blocks at random into the first --hot-mib of the volume for
//     --away-seconds; the network is restored. Measured from the monitor's
//     `monitor.host-up` line for h3 to the last `recovery.pg-done` of h3's disk: the
//     sum of their `bytes=` and `objects=`, and how many PGs went `mode=log`.
//  2. the peer: `cistern host drain h3`, which gives every PG of h3 a new member, which
//     its primary fills with everything the PG holds (a full copy of h3's share: the new
//     members have nothing, so nothing is skipped). From the drain command to its last
//     `recovery.pg-done`: time and bytes.
// Both at the daemon's default recovery bound (128 MiB/s), the cluster otherwise idle.
//
//   npm run perf:catch-up -- [--size-gib 1] [--hot-mib 64] [--away-seconds 5]

import * as fs from 'node:fs';
import * as path from 'node:path';
import { cistern, createNetwork, type Daemon, sleep, startEtcd } from '../test/cluster/harness';
import { commandLine, loadAverage } from './bench';
import { machine, perfDirectory, runFio, startCluster } from './cluster';

const MiB = 2 ** 20;
const GiB = 2 ** 30;
const CLUSTER_HOSTS = 4;
const CLIENT_INDEX = CLUSTER_HOSTS;
/** The host cut off and then drained: not h0, which serves the client's NBD export. */
const VICTIM_INDEX = 3;
/** Room for the store's header and slot rounding: after the drain each survivor holds all. */
const DISK_SLACK_BYTES = 256 * MiB;
/** A cut host's lease lapses (10 s) and the monitor (1 s ticks) marks it down. */
const DOWN_TIMEOUT_MS = 60_000;
/** Recovery of a few GiB on a shared 2-core machine: minutes; beyond this it is stuck. */
const RECOVERY_TIMEOUT_MS = 30 * 60_000;
const POLL_MS = 500;

interface Figure {
  ms: number;
  bytes: number;
  objects: number;
  pgMembers: number;
  logPgs: number;
}

interface Status {
  hostsDown: string[];
  disks: Array<{ id: number; host: string; up: boolean; in: boolean }>;
  pgStates: Record<'active+clean' | 'active+degraded' | 'inactive', number>;
}

function logTime(line: string): number {
  return Date.parse(line.slice(0, line.indexOf(' ')));
}

function field(line: string, name: string): number {
  const match = new RegExp(`\\b${name}=(\\d+)`).exec(line);
  if (!match) throw new Error(`no ${name}= in ${line}`);
  return Number(match[1]);
}

function check(condition: boolean, message: string): asserts condition {
  if (!condition) throw new Error(message);
}

/** Every daemon's `recovery.pg-done` lines at or after `from` (of `disk` only, if given). */
function pgDone(daemons: readonly Daemon[], from: number, disk?: number): string[] {
  return daemons
    .flatMap((daemon) => daemon.log())
    .filter(
      (line) =>
        /\brecovery\.pg-done\b/.test(line) &&
        logTime(line) >= from &&
        (disk === undefined || field(line, 'disk') === disk),
    );
}

function figure(lines: readonly string[], from: number): Figure {
  check(lines.length > 0, 'no PG member was recovered');
  return {
    ms: Math.max(...lines.map(logTime)) - from,
    bytes: lines.reduce((sum, line) => sum + field(line, 'bytes'), 0),
    objects: lines.reduce((sum, line) => sum + field(line, 'objects'), 0),
    pgMembers: lines.length,
    logPgs: lines.filter((line) => /\bmode=log\b/.test(line)).length,
  };
}

async function main(): Promise<void> {
  const { positive } = commandLine();
  const sizeBytes = Math.round(positive('--size-gib', 1) * 1024) * MiB;
  const hotBytes = Math.round(positive('--hot-mib', 64)) * MiB;
  const awaySeconds = positive('--away-seconds', 5);
  const directory = perfDirectory('catch-up');
  console.log(`perf/catch-up — ${new Date().toISOString()}`);
  console.log(`machine: ${machine()}; load average ${loadAverage()}`);
  console.log(
    `volume ${sizeBytes / GiB} GiB; while away: 4 KiB random writes into the first ` +
      `${hotBytes / MiB} MiB for ${awaySeconds} s`,
  );
  const network = createNetwork({ hosts: CLUSTER_HOSTS + 1, name: 'cstnc' });
  network.onDestroy(() => fs.rmSync(directory, { recursive: true, force: true }));
  const runDir = fs.mkdtempSync(path.join(directory, 'run-'));
  try {
    const client = network.host(CLIENT_INDEX);
    const victim = network.host(VICTIM_INDEX);
    const etcd = await startEtcd(network);
    const { target, daemons } = await startCluster(network, etcd.url, {
      hosts: CLUSTER_HOSTS,
      directory: runDir,
      diskBytes: sizeBytes + DISK_SLACK_BYTES,
      volumeBytes: sizeBytes,
    });
    const status = async (): Promise<Status> =>
      JSON.parse(
        (await cistern(network, client, ['--etcd', etcd.url, 'status', '--json'])).stdout,
      ) as Status;
    const waitFor = async (what: string, done: (s: Status) => boolean, ms: number) => {
      const deadline = Date.now() + ms;
      for (;;) {
        const now = await status();
        if (done(now)) return now;
        check(Date.now() < deadline, `${what}: not within ${ms} ms: ${JSON.stringify(now)}`);
        await sleep(POLL_MS);
      }
    };
    const clean = (s: Status) =>
      s.hostsDown.length === 0 && s.pgStates['active+degraded'] === 0 && s.pgStates.inactive === 0;
    await runFio(network, client, target.uri, {
      rw: 'write',
      blockBytes: MiB,
      iodepth: 8,
      sizeBytes,
    });
    const victimDisk = (await status()).disks.find((d) => d.host === victim.name)!.id;

    // 1. A brief absence, caught up from the PG log.
    network.cutHost(victim);
    let away: { iops: number };
    try {
      await waitFor('h3 down', (s) => s.hostsDown.includes(victim.name), DOWN_TIMEOUT_MS);
      away = await runFio(network, client, target.uri, {
        rw: 'randwrite',
        blockBytes: 4096,
        iodepth: 8,
        sizeBytes: hotBytes,
        seconds: awaySeconds,
      });
    } finally {
      network.restoreHost(victim);
    }
    await waitFor('clean after the cut', clean, RECOVERY_TIMEOUT_MS);
    const upLine = daemons
      .flatMap((daemon) => daemon.log())
      .filter((line) => /\bmonitor\.host-up\b/.test(line) && line.includes(victim.name))
      .pop();
    check(upLine !== undefined, 'no monitor.host-up line for h3');
    const upAt = logTime(upLine);
    const catchUp = figure(pgDone(daemons, upAt, victimDisk), upAt);

    // 2. The peer: h3's whole share copied again, to new members.
    const drainAt = Date.now();
    await cistern(network, client, [
      ...['--etcd', etcd.url, 'host', 'drain', victim.name, '--timeout', '1800'],
    ]);
    await waitFor('clean after the drain', clean, RECOVERY_TIMEOUT_MS);
    const full = figure(pgDone(daemons, drainAt), drainAt);

    const row = (name: string, f: Figure) =>
      `| ${name} | ${(f.ms / 1000).toFixed(1)} | ${(f.bytes / MiB).toFixed(1)} | ${f.objects} | ` +
      `${f.pgMembers} (${f.logPgs} from the log) |`;
    console.log(`\nwhile away: ${Math.round(away.iops)} write IOPS`);
    console.log('| recovery | seconds | MiB copied | objects copied | PG members |');
    console.log('| --- | --- | --- | --- | --- |');
    console.log(row('h3 back after a brief cut (log catch-up)', catchUp));
    console.log(row('peer: h3 drained (its share copied in full)', full));
    console.log(
      `ratio catch-up / full copy: time ${(catchUp.ms / full.ms).toFixed(3)}, ` +
        `bytes ${(catchUp.bytes / full.bytes).toFixed(3)}`,
    );
  } finally {
    await network.destroy();
    fs.rmSync(runDir, { recursive: true, force: true });
  }
}

main().catch((error: unknown) => {
  console.error(error);
  process.exitCode = 1;
});
