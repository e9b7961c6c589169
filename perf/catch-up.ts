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
import { cistern, createNetwork, sleep } from '../test/cluster/harness';
import { commandLine, loadAverage, MiB } from './bench';
import { machine, perfDirectory, runFio } from './cluster';
import {
  allClean,
  check,
  CLUSTER_HOSTS,
  field,
  GiB,
  logTime,
  pgDoneLines,
  RECOVERY_TIMEOUT_MS,
  startFilledCluster,
  type Status,
} from './host-loss';

/** A cut host's lease lapses (10 s) and the monitor (1 s ticks) marks it down. */
const DOWN_TIMEOUT_MS = 60_000;
const POLL_MS = 500;

const USAGE = `usage: npm run perf:catch-up -- [options]
A host back after a brief cut (log catch-up) vs copying its share in full (drain), in
one run (perf/RESULTS.md).
  --size-gib N        the volume, written whole first (default 1)
  --hot-mib N         the part of it written while the host is away (default 64)
  --away-seconds S    how long fio writes while the host is away (default 5)`;

interface Figure {
  ms: number;
  bytes: number;
  objects: number;
  pgMembers: number;
  logPgs: number;
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
  const { positive, gibBytes } = commandLine(USAGE);
  const sizeBytes = gibBytes('--size-gib', 1);
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
    const cluster = await startFilledCluster(network, runDir, sizeBytes);
    const { client, victim, target, daemons, status } = cluster;
    const waitFor = async (what: string, done: (s: Status) => boolean, ms: number) => {
      const deadline = Date.now() + ms;
      for (;;) {
        const now = await status();
        if (done(now)) return now;
        check(Date.now() < deadline, `${what}: not within ${ms} ms: ${JSON.stringify(now)}`);
        await sleep(POLL_MS);
      }
    };
    const clean = (s: Status) => s.hostsDown.length === 0 && allClean(s);
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
    const catchUp = figure(pgDoneLines(daemons, upAt, victimDisk), upAt);

    // 2. The peer: h3's whole share copied again, to new members.
    const drainAt = Date.now();
    await cistern(network, client, [
      ...['--etcd', cluster.etcdUrl, 'host', 'drain', victim.name, '--timeout', '1800'],
    ]);
    await waitFor('clean after the drain', clean, RECOVERY_TIMEOUT_MS);
    const full = figure(pgDoneLines(daemons, drainAt), drainAt);

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
