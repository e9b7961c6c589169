// Benchmark of recovery: how long a four-host cluster takes to re-replicate the data of
// a host killed with kill -9, how fast that is beside a plain sequential copy of the
// same bytes on the same filesystem, and how much client I/O keeps of its throughput
// while it runs — all in one run, on one machine.
//
// Set-up (test/cluster/harness.ts, as perf/cluster.ts): a real etcd and four `cistern
// daemon --etcd` hosts h0–h3, each in its own network namespace on a private bridge, a
// pool of size 3 (min-size 2, failure domain host), one disk file per host on the
// filesystem of $CISTERN_PERF_DIR (tmpfs refused), one volume written whole once with
// 1 MiB writes. fio (`--ioengine=nbd`) runs in a fifth, client-only namespace through
// h0's export: 4 KiB random reads and writes, half each, iodepth 32, for the whole run,
// logging its IOPS every 500 ms with Unix timestamps.
//
// Then, per bandwidth setting (a fresh cluster each):
//  1. baseline: the client alone for --baseline-seconds;
//  2. kill -9 of h3 (not the client's gateway). Its lease lapses (10 s), the monitor
//     marks it down and, with `--down-out-interval 1`, out a second later: its PGs get a
//     new member each, stale, which their primaries backfill;
//  3. recovery: from the monitor's `monitor.host-out` log line to the last
//     `recovery.pg-done` line, once `cistern status --json` shows every PG clean. Bytes
//     re-replicated are the sum of the `bytes=` of those lines.
// Client IOPS are the fio log's samples inside the baseline window (after a 3 s ramp)
// and inside the recovery window; the ratio during / without is held to ≥ 0.5 (issue 5).
// The peer figure: `dd` with O_DIRECT copying a file of the same number of bytes on
// the same filesystem, with nothing else of ours running — the simple algorithm's
// bound (recovery also reads one disk and writes another, through two daemons and a
// network hop).
//
//   npm run perf:recovery -- [--size-gib 2] [--baseline-seconds 20] [--bandwidths default,32]

import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { RECOVERY_BYTES_PER_SECOND_DEFAULT } from '../src/replication/recovery';
import { createNetwork, type Daemon, sleep, type TestNetwork } from '../test/cluster/harness';
import { commandLine, loadAverage, MiB } from './bench';
import { machine, perfDirectory } from './cluster';
import {
  allClean,
  check,
  CLUSTER_HOSTS,
  field,
  type FilledCluster,
  GiB,
  logTime,
  pgDoneLines,
  RECOVERY_TIMEOUT_MS,
  startFilledCluster,
} from './host-loss';

const DOWN_OUT_INTERVAL_S = 1;
/** fio's first samples (connection, queue filling) are left out of the baseline. */
const RAMP_MS = 3000;
const IOPS_LOG_AVERAGE_MS = 500;
/** fio runs until stopped; this only bounds a run whose stop went missing. */
const FIO_RUNTIME_MAX_S = 3600;
const STATUS_POLL_MS = 1000;
const RATIO_TARGET = 0.5;

const USAGE = `usage: npm run perf:recovery -- [options]
Recovery after kill -9 of one of four hosts vs a plain copy, and the client's IOPS kept
meanwhile, in one run (perf/RESULTS.md).
  --size-gib N          the volume, written whole before the kill (default 2)
  --baseline-seconds S  the client alone before the kill (default 20)
  --bandwidths LIST     --recovery-bandwidth settings in MiB/s, comma-separated, one fresh
                        cluster each; 'default' leaves the flag out (default default,32)`;

interface Settings {
  sizeBytes: number;
  baselineSeconds: number;
  /** MiB/s per setting; undefined: the daemon's default. */
  bandwidths: Array<number | undefined>;
}

function settings(): Settings {
  const { value, positive, gibBytes } = commandLine(USAGE);
  const bandwidths = (value('--bandwidths') ?? 'default,32').split(',').map((text) => {
    if (text === 'default') return undefined;
    const number = Number(text);
    if (!Number.isFinite(number) || number <= 0) throw new Error(`bad bandwidth ${text}`);
    return number;
  });
  return {
    sizeBytes: gibBytes('--size-gib', 2),
    baselineSeconds: positive('--baseline-seconds', 20),
    bandwidths,
  };
}

interface Outcome {
  bandwidthMiBs: number;
  bytes: number;
  objects: number;
  pgMembers: number;
  /** kill -9 to the monitor's out decision. */
  killToOutMs: number;
  /** Out to the last PG member recovered. */
  recoveryMs: number;
  /** Out to the status poll that first saw every PG clean (an upper bound). */
  statusCleanMs: number;
  /** I/O errors fio saw over the whole run (see --continue_on_error). */
  clientErrors: number;
  without: Iops;
  during: Iops;
  copyMiBs: number;
}

interface Iops {
  read: number;
  write: number;
  samples: number;
}

/** fio's count of I/O errors (`total_err`) from its JSON report. */
function fioErrors(stdout: string): number {
  const start = stdout.indexOf('{');
  if (start < 0) throw new Error(`no JSON in fio's output:\n${stdout.slice(0, 2000)}`);
  const report = JSON.parse(stdout.slice(start)) as { jobs: Array<{ total_err?: number }> };
  const errors = report.jobs[0]?.total_err;
  if (errors === undefined) throw new Error("fio's JSON has no total_err");
  return errors;
}

/** fio's iops log (`time_ms, iops, direction, …`), mean per direction inside (from, to]. */
function iopsBetween(logFile: string, from: number, to: number): Iops {
  const sums = [0, 0];
  const counts = [0, 0];
  for (const line of fs.readFileSync(logFile, 'utf8').split('\n')) {
    const [time, iops, direction] = line.split(',').map((part) => Number(part.trim()));
    if (time === undefined || iops === undefined || (direction !== 0 && direction !== 1)) continue;
    if (!(time > from + IOPS_LOG_AVERAGE_MS && time <= to)) continue;
    sums[direction] = (sums[direction] as number) + iops;
    counts[direction] = (counts[direction] as number) + 1;
  }
  const mean = (d: 0 | 1): number => (counts[d] ? (sums[d] as number) / (counts[d] as number) : 0);
  return { read: mean(0), write: mean(1), samples: Math.min(counts[0] ?? 0, counts[1] ?? 0) };
}

async function measureOne(
  directory: string,
  sizeBytes: number,
  baselineSeconds: number,
  bandwidthMiBs: number | undefined,
): Promise<Outcome> {
  const network = createNetwork({ hosts: CLUSTER_HOSTS + 1, name: 'cstnr' });
  const setting = bandwidthMiBs ?? RECOVERY_BYTES_PER_SECOND_DEFAULT / MiB;
  const runDir = fs.mkdtempSync(path.join(directory, `bw${setting}-`));
  try {
    const cluster = await startFilledCluster(network, runDir, sizeBytes, [
      ...['--down-out-interval', `${DOWN_OUT_INTERVAL_S}`],
      ...(bandwidthMiBs === undefined ? [] : ['--recovery-bandwidth', `${bandwidthMiBs}`]),
    ]);
    const { client, victim, target } = cluster;
    const survivors = cluster.daemons.filter((daemon) => daemon.host !== victim);
    console.log(`  filled ${sizeBytes / GiB} GiB in ${(cluster.fillMs / 1000).toFixed(1)} s`);

    const logPrefix = path.join(runDir, 'client');
    const fio = network.spawn(client, [
      ...['fio', '--name=client', '--ioengine=nbd', `--uri=${target.uri}`],
      ...['--rw=randrw', '--rwmixread=50', '--bs=4096', '--iodepth=32', `--size=${sizeBytes}`],
      ...['--time_based', `--runtime=${FIO_RUNTIME_MAX_S}`, '--norandommap', '--randrepeat=0'],
      ...[`--write_iops_log=${logPrefix}`, `--log_avg_msec=${IOPS_LOG_AVERAGE_MS}`],
      ...['--log_unix_epoch=1', '--output-format=json'],
      // An I/O error is counted and reported, not the end of the run: the gateway may
      // fail a request while it fails over from the killed host (the failure test's
      // workload retries those; fio does not).
      '--continue_on_error=io',
    ]);
    const fioStarted = Date.now();
    await sleep(baselineSeconds * 1000);
    check(fio.exit() === undefined, `fio stopped early: ${fio.stderr()}`);

    const killedAt = Date.now();
    const killed = await network.killHost(victim);
    check(killed.length === 1, `${victim.name} ran no daemon`);
    console.log(
      `  killed ${victim.name} (kill -9) ${((killedAt - fioStarted) / 1000).toFixed(1)} s into the client run`,
    );
    const cleanAt = await waitForRecovery(cluster, fio);
    await fio.stop('SIGINT', 60_000);
    const clientErrors = fioErrors(fio.stdout());

    const outLine = findLine(
      survivors,
      new RegExp(`monitor\\.host-out\\b.*\\bhost=${victim.name}\\b`),
    );
    const outAt = logTime(outLine);
    const done = pgDoneLines(survivors, outAt);
    check(done.length > 0, 'no PG was recovered');
    const lastDoneAt = Math.max(...done.map(logTime));
    const outcome: Omit<Outcome, 'copyMiBs'> = {
      bandwidthMiBs: setting,
      bytes: done.reduce((sum, line) => sum + field(line, 'bytes'), 0),
      objects: done.reduce((sum, line) => sum + field(line, 'objects'), 0),
      pgMembers: done.length,
      killToOutMs: outAt - killedAt,
      recoveryMs: lastDoneAt - outAt,
      statusCleanMs: cleanAt - outAt,
      clientErrors,
      without: iopsBetween(`${logPrefix}_iops.1.log`, fioStarted + RAMP_MS, killedAt),
      during: iopsBetween(`${logPrefix}_iops.1.log`, outAt, lastDoneAt),
    };
    await Promise.all(survivors.map((daemon) => daemon.stop()));
    const copyMiBs = rawCopy(runDir, outcome.bytes);
    return { ...outcome, copyMiBs };
  } finally {
    keepLogs(network, setting);
    await network.destroy();
    fs.rmSync(runDir, { recursive: true, force: true });
  }
}

/** With $CISTERN_PERF_LOG_DIR set, every process's output is kept there (post-mortems). */
function keepLogs(network: TestNetwork, setting: number): void {
  const keep = process.env['CISTERN_PERF_LOG_DIR'];
  if (keep === undefined) return;
  fs.mkdirSync(keep, { recursive: true });
  for (const child of network.running()) {
    const name = `bw${setting}-${child.host.name}-${child.pid}.log`;
    fs.writeFileSync(path.join(keep, name), child.lines().join('\n'));
  }
}

/** Polls status until the victim's disks are out and every PG is clean; returns when. */
async function waitForRecovery(
  cluster: FilledCluster,
  fio: { exit(): unknown; stderr(): string },
): Promise<number> {
  const { victim } = cluster;
  const deadline = Date.now() + RECOVERY_TIMEOUT_MS;
  let out = false;
  for (;;) {
    const status = await cluster.status();
    const victimDisks = status.disks.filter((disk) => disk.host === victim.name);
    if (!out && victimDisks.length > 0 && victimDisks.every((disk) => !disk.in)) {
      out = true;
      console.log(`  ${victim.name} out; recovering`);
    }
    if (out && allClean(status)) return Date.now();
    check(
      Date.now() < deadline,
      `not clean within ${RECOVERY_TIMEOUT_MS} ms: ${JSON.stringify(status)}`,
    );
    check(fio.exit() === undefined, `the client's fio stopped: ${fio.stderr().slice(0, 2000)}`);
    await sleep(STATUS_POLL_MS);
  }
}

function findLine(daemons: readonly Daemon[], pattern: RegExp): string {
  for (const daemon of daemons) {
    const line = daemon.log().find((candidate) => pattern.test(candidate));
    if (line !== undefined) return line;
  }
  throw new Error(`no daemon logged ${pattern}`);
}

/**
 * The peer: a sequential O_DIRECT copy of `bytes` (rounded up to MiB) from one file to
 * another on the same filesystem, synced at the end; MiB/s of the copy alone.
 */
function rawCopy(directory: string, bytes: number): number {
  const mib = Math.max(1, Math.ceil(bytes / MiB));
  const source = path.join(directory, 'copy-source');
  const target = path.join(directory, 'copy-target');
  const run = (argv: string[]): void => {
    const result = spawnSync(argv[0] as string, argv.slice(1), { encoding: 'utf8' });
    if (result.status !== 0) throw new Error(`${argv.join(' ')} failed: ${result.stderr}`);
  };
  try {
    run([
      'fio',
      '--name=source',
      '--rw=write',
      '--bs=1M',
      '--direct=1',
      `--size=${mib}M`,
      `--filename=${source}`,
    ]);
    const started = process.hrtime.bigint();
    run([
      'dd',
      `if=${source}`,
      `of=${target}`,
      'bs=4M',
      'iflag=direct',
      'oflag=direct',
      'conv=fdatasync',
      'status=none',
    ]);
    const seconds = Number(process.hrtime.bigint() - started) / 1e9;
    return mib / seconds;
  } finally {
    fs.rmSync(source, { force: true });
    fs.rmSync(target, { force: true });
  }
}

function printTable(outcomes: readonly Outcome[]): void {
  const number = (value: number): string => Math.round(value).toLocaleString('en-US');
  const verdict = (ratio: number): string =>
    `${ratio.toFixed(2)} (target ≥ ${RATIO_TARGET}: ${ratio >= RATIO_TARGET ? 'met' : '**missed**'})`;
  console.log('');
  console.log(
    '| --recovery-bandwidth | re-replicated | out → clean | recovery | dd O_DIRECT copy | recovery : copy | client IOPS without (read + write) | during recovery | during : without |',
  );
  console.log('| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |');
  for (const o of outcomes) {
    const seconds = o.recoveryMs / 1000;
    const rate = o.bytes / MiB / seconds;
    const without = o.without.read + o.without.write;
    const during = o.during.read + o.during.write;
    console.log(
      `| ${o.bandwidthMiBs} MiB/s | ${(o.bytes / MiB).toFixed(0)} MiB (${o.objects} objects, ${o.pgMembers} PG members) ` +
        `| ${seconds.toFixed(1)} s | ${rate.toFixed(1)} MiB/s | ${o.copyMiBs.toFixed(0)} MiB/s ` +
        `| ${(rate / o.copyMiBs).toFixed(2)} | ${number(without)} (${number(o.without.read)} + ${number(o.without.write)}) ` +
        `| ${number(during)} (${number(o.during.read)} + ${number(o.during.write)}) | ${verdict(during / without)} |`,
    );
  }
  console.log('');
  for (const o of outcomes) {
    console.log(
      `${o.bandwidthMiBs} MiB/s: kill -9 → out ${(o.killToOutMs / 1000).toFixed(1)} s; out → every PG clean in ` +
        `status ${(o.statusCleanMs / 1000).toFixed(1)} s (1 s polls); samples ${o.without.samples} without, ` +
        `${o.during.samples} during; client I/O errors over the run: ${o.clientErrors}.`,
    );
  }
  console.log(`Load after the run: ${loadAverage()} (1, 5, 15 min).`);
}

async function main(): Promise<void> {
  const options = settings();
  const directory = perfDirectory('recovery');
  try {
    console.log(`# Cistern recovery — ${new Date().toISOString()}`);
    console.log(`# ${machine()}`);
    console.log(
      `# ${CLUSTER_HOSTS} hosts, pool size 3, volume ${options.sizeBytes / GiB} GiB, files in ` +
        `${directory}; client: fio nbd 4 KiB randrw 50/50 iodepth 32, baseline ${options.baselineSeconds} s`,
    );
    const outcomes: Outcome[] = [];
    for (const bandwidth of options.bandwidths) {
      console.log(`## --recovery-bandwidth ${bandwidth ?? 'default'}`);
      outcomes.push(
        await measureOne(directory, options.sizeBytes, options.baselineSeconds, bandwidth),
      );
      printTable(outcomes.slice(-1)); // at once, in case a later setting fails
    }
    printTable(outcomes);
  } finally {
    fs.rmSync(directory, { recursive: true, force: true });
  }
}

if (require.main === module) {
  main().catch((error: unknown) => {
    console.error(error);
    process.exitCode = 1;
  });
}
