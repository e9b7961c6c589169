// Benchmark of the iSCSI front end against tgt (the Linux user-space target, `tgtd`),
// in the same run, on the same filesystem, through the same initiators (libiscsi):
//  - `iscsi-perf` 4 KiB random reads and 4 KiB sequential reads, 32 outstanding, for a
//    fixed time (IOPS);
//  - `qemu-img bench -w -t none -d 32` 4 KiB writes (IOPS) and 1 MiB sequential writes
//    over the whole volume (MiB/s), a fixed count each (the time is measured).
// Cistern is the real daemon (`cistern daemon --iscsi`) on two file-backed disks, with
// the benchmark volume in a pool of size 1 (and of size 2: every write on both disks).
// tgtd serves a file of the same size with `bsoflags=direct` (O_DIRECT, like Cistern's
// disks, so neither reads from the page cache) and, as a second figure, tgt's default
// (buffered: reads may come from the page cache). Prints each figure, the ratios, server
// CPU per I/O, the machine, the load average and the date.
//
//   npm run perf:iscsi -- [--seconds 10] [--size-gib 2] [--rounds 1] [--pool-sizes 1,2]
//                         [--write-count 100000] [--only cistern] [--profile DIR]
//                         [--node-flags "--no-memory-reducer"]
//
// Fairness: every volume and the tgt file are written whole first (1 MiB writes), so
// reads hit data everywhere (an unwritten Cistern volume would read zeros without I/O).
// Servers are measured one at a time, in the same order every round, with `sync` after
// each. tgtd runs in the foreground on its own portal (127.0.0.1, a free port) and its
// own control socket, so a system tgt, if any, is untouched. Files go under
// $CISTERN_PERF_DIR, else os.tmpdir(); tmpfs is refused (its O_DIRECT never reaches a
// disk). With --profile DIR the Cistern daemon runs under `node --cpu-prof`;
// --node-flags adds V8/node flags to the daemon (a diagnosis aid: the results say which
// were used).

import { spawn, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';
import { readAdminFile } from '../src/daemon/data-dir';
import {
  commandLine,
  cpuTicks,
  exited,
  loadAverage,
  type Figure,
  machine,
  measureRounds,
  MiB,
  type PatternBase,
  printCpu,
  printFigures,
  READY_TIMEOUT_MS,
  Results,
  run as runCommand,
  scratchDirectory,
  tickUs,
  toolVersion,
  waitForListener,
} from './bench';

const QUEUE_DEPTH = 32;
/** Room for the object store's 1 MiB header and slot rounding beside the volume. */
const DISK_SLACK_BYTES = 64 * MiB;
/** tgtd leaves after `--op delete --mode system` within a few seconds; then SIGKILL. */
const TGTD_STOP_TIMEOUT_MS = 10_000;
/** Where tgtd keeps its control sockets (socket.N for `-C N`). */
const TGTD_SOCKET_DIR = '/var/run/tgtd';
/** One client run may not hang the benchmark: its own duration plus this. */
const CLIENT_SLACK_MS = 120_000;
const BIN = path.join(__dirname, '..', '..', 'bin', 'cistern');

interface Pattern extends PatternBase {
  /** Runs the client against `url`; resolves to the figure and the I/Os it made. */
  run(url: string, config: Settings): Promise<{ value: number; ios: number }>;
}

interface Server {
  label: string;
  url: string;
  pid: number | undefined;
  stop(): Promise<void>;
}

interface Settings {
  seconds: number;
  sizeBytes: number;
  rounds: number;
  poolSizes: number[];
  writeCount: number;
  only: string | undefined;
  profileDir: string | undefined;
  nodeFlags: string[];
}

const USAGE = `usage: npm run perf:iscsi -- [options]
iSCSI front end vs tgt, in one run (perf/RESULTS.md).
  --seconds S          each read pattern's run (default 10)
  --size-gib N         the volume and tgt's file (default 2)
  --rounds N           rounds of every server and pattern (default 1)
  --pool-sizes LIST    Cistern's pool sizes, comma-separated (default 1,2)
  --write-count N      4 KiB writes of qemu-img bench (default 100000)
  --only NAME          run only the servers whose label contains NAME
  --profile DIR        run Cistern under node --cpu-prof, profiles in DIR
  --node-flags FLAGS   more node flags for Cistern's daemon, space-separated`;

function settings(): Settings {
  const { value, positive, gibBytes } = commandLine(USAGE);
  const profile = value('--profile');
  const sizeBytes = gibBytes('--size-gib', 2);
  return {
    seconds: positive('--seconds', 10),
    sizeBytes,
    rounds: positive('--rounds', 1),
    poolSizes: (value('--pool-sizes') ?? '1,2').split(',').map(Number),
    // Fewer 4 KiB writes than the volume holds: qemu-img bench must not run past its end.
    writeCount: Math.min(positive('--write-count', 100_000), sizeBytes / 4096),
    only: value('--only'),
    profileDir: profile === undefined ? undefined : path.resolve(profile),
    nodeFlags: (value('--node-flags') ?? '').split(' ').filter((flag) => flag !== ''),
  };
}

/** Clients print their figures on stdout or stderr: both, one after the other. */
async function run(command: string, args: string[], timeoutMs: number): Promise<string> {
  const { stdout, stderr } = await runCommand(command, args, timeoutMs);
  return stdout + stderr;
}

/** `iscsi-perf` for a fixed time; its last line is `iops average N (M MB/s)`. */
function iscsiPerf(random: boolean): Pattern['run'] {
  return async (url, config) => {
    const args = ['-m', String(QUEUE_DEPTH), '-b', '8', '-t', String(config.seconds)];
    const output = await run(
      'iscsi-perf',
      [...args, ...(random ? ['-r'] : []), url],
      config.seconds * 1000 + CLIENT_SLACK_MS,
    );
    const averages = [...output.matchAll(/iops average (\d+)/g)];
    const last = averages[averages.length - 1];
    if (!last) throw new Error(`iscsi-perf printed no average:\n${output}`);
    const iops = Number(last[1]);
    return { value: iops, ios: iops * config.seconds };
  };
}

/** `qemu-img bench -w`: a fixed count of writes; prints `Run completed in S seconds.` */
function qemuBench(blockBytes: number, count: (config: Settings) => number): Pattern['run'] {
  return async (url, config) => {
    const writes = count(config);
    const result = await run(
      'qemu-img',
      [
        ...['bench', '-w', '-t', 'none', '-f', 'raw', '-d', String(QUEUE_DEPTH)],
        ...['-c', String(writes), '-s', String(blockBytes), url],
      ],
      CLIENT_SLACK_MS * 5,
    );
    const match = /Run completed in ([\d.]+) seconds/.exec(result);
    if (!match) throw new Error(`qemu-img bench printed no time:\n${result}`);
    const seconds = Number(match[1]);
    const value = blockBytes === 4096 ? writes / seconds : (writes * blockBytes) / MiB / seconds;
    return { value, ios: writes };
  };
}

const PATTERNS: Pattern[] = [
  {
    name: 'iscsi-perf 4 KiB random read',
    key: 'randread',
    unit: 'IOPS',
    run: iscsiPerf(true),
  },
  { name: 'iscsi-perf 4 KiB sequential read', key: 'read', unit: 'IOPS', run: iscsiPerf(false) },
  {
    name: 'qemu-img bench -w 4 KiB',
    key: 'write4k',
    unit: 'IOPS',
    run: qemuBench(4096, (c) => c.writeCount),
  },
  {
    name: 'qemu-img bench -w 1 MiB sequential',
    key: 'write1m',
    unit: 'MiB/s',
    run: qemuBench(MiB, (c) => c.sizeBytes / MiB),
  },
];

async function measure(server: Server, pattern: Pattern, config: Settings): Promise<Figure> {
  const pid = server.pid;
  const before = pid === undefined ? 0 : cpuTicks(pid);
  const { value, ios } = await pattern.run(server.url, config);
  const ticks = pid === undefined ? NaN : cpuTicks(pid) - before;
  return { value, cpuUsPerIo: (ticks * tickUs()) / ios };
}

/** A free TCP port on loopback (bound and released: tgtd must be told a number). */
function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const address = server.address();
      const port = typeof address === 'object' && address ? address.port : 0;
      server.close(() => resolve(port));
    });
  });
}

/** Writes the whole file or volume once, 1 MiB at a time, so that reads hit data. */
async function fill(target: string[], sizeBytes: number): Promise<void> {
  await run(
    'fio',
    [
      ...['--name=fill', ...target, `--size=${sizeBytes}`],
      ...['--rw=write', '--bs=1M', '--iodepth=8', '--output-format=terse'],
    ],
    30 * 60_000,
  );
}

/** tgtd in the foreground with its own control socket and portal; one target, LUN 1. */
async function startTgt(label: string, file: string, direct: boolean): Promise<Server> {
  const port = await freePort();
  // The control "port" names /var/run/tgtd/socket.N: one of our own, never the system's 0.
  const control = String(1000 + (process.pid % 50_000) + (direct ? 1 : 0));
  const tgtadm = (...args: string[]): Promise<string> =>
    run('tgtadm', ['-C', control, '--lld', 'iscsi', ...args], 30_000);
  const child = spawn('tgtd', ['-f', '-C', control, '--iscsi', `portal=127.0.0.1:${port}`], {
    stdio: 'ignore',
  });
  await waitForListener({ port, host: '127.0.0.1' }, child, label);
  const target = `iqn.2026-11.io.cistern.perf:tgt${direct ? '-direct' : ''}`;
  await tgtadm('--mode', 'target', '--op', 'new', '--tid', '1', '--targetname', target);
  await tgtadm(
    ...['--mode', 'logicalunit', '--op', 'new', '--tid', '1', '--lun', '1'],
    ...['--backing-store', file, ...(direct ? ['--bsoflags', 'direct'] : [])],
  );
  await tgtadm('--mode', 'target', '--op', 'bind', '--tid', '1', '--initiator-address', 'ALL');
  return {
    label,
    url: `iscsi://127.0.0.1:${port}/${target}/1`,
    pid: child.pid,
    stop: async () => {
      await tgtadm('--mode', 'target', '--op', 'delete', '--tid', '1', '--force').catch(() => '');
      await run('tgtadm', ['-C', control, '--mode', 'system', '--op', 'delete'], 30_000).catch(
        () => '',
      );
      const timer = setTimeout(() => child.kill('SIGKILL'), TGTD_STOP_TIMEOUT_MS);
      await exited(child);
      clearTimeout(timer);
      // tgtd leaves its control socket behind; the next run picks another number anyway.
      for (const suffix of ['', '.lock']) {
        fs.rmSync(`${TGTD_SOCKET_DIR}/socket.${control}${suffix}`, { force: true });
      }
    },
  };
}

/** The real daemon on two disk files; the bench volume in a pool of `poolSize`. */
async function startCistern(
  directory: string,
  poolSize: number,
  sizeBytes: number,
  profileDir: string | undefined,
  nodeFlags: string[],
): Promise<Server> {
  const dir = path.join(directory, `cistern-size-${poolSize}`);
  fs.mkdirSync(dir);
  const diskBytes = sizeBytes + DISK_SLACK_BYTES;
  const disks = [0, 1].flatMap((i) => [
    '--disk',
    `${path.join(dir, `disk-${i}.img`)}:${diskBytes}`,
  ]);
  const profile = profileDir === undefined ? [] : ['--cpu-prof', `--cpu-prof-dir=${profileDir}`];
  const child = spawn(
    process.execPath,
    [
      ...profile,
      ...nodeFlags,
      ...[BIN, 'daemon', '--data-dir', dir, ...disks],
      ...['--nbd', '127.0.0.1:0', '--admin', '127.0.0.1:0', '--iscsi', '127.0.0.1:0'],
    ],
    { stdio: ['ignore', 'ignore', 'pipe'] },
  );
  let log = '';
  child.stderr?.on('data', (chunk: Buffer) => (log = (log + chunk.toString()).slice(-20_000)));
  const label = `Cistern (pool size ${poolSize})`;
  const deadline = Date.now() + READY_TIMEOUT_MS;
  let admin = readAdminFile(dir);
  while (admin === undefined || admin.pid !== child.pid || admin.iscsi === undefined) {
    if (child.exitCode !== null) throw new Error(`${label} exited:\n${log}`);
    if (Date.now() > deadline) throw new Error(`${label} did not start:\n${log}`);
    await new Promise((resolve) => setTimeout(resolve, 50));
    admin = readAdminFile(dir);
  }
  const { nbd, iscsi } = admin;
  const cli = (...args: string[]): Promise<string> =>
    run(process.execPath, [BIN, ...args, '--data-dir', dir], 60_000);
  await cli('pool', 'create', 'bench', '--size', String(poolSize), '--min-size', '1');
  await cli('volume', 'create', 'bench', '--size', String(sizeBytes), '--pool', 'bench');
  await fill(['--ioengine=nbd', `--uri=nbd://${nbd}/bench`], sizeBytes);
  return {
    label,
    url: `iscsi://${iscsi}/iqn.2026-11.io.cistern:bench/0`,
    pid: child.pid,
    stop: async () => {
      child.kill('SIGTERM');
      await exited(child);
    },
  };
}

/** The machine line: ours plus tgt, libiscsi and qemu-img versions. */
function machineLine(): string {
  const dpkgVersion = (name: string): string =>
    spawnSync('dpkg-query', ['-W', '-f=${Version}', name], { encoding: 'utf8' }).stdout || '?';
  return (
    `${machine()}, tgt ${dpkgVersion('tgt')}, libiscsi ${dpkgVersion('libiscsi-bin')}, ` +
    `${toolVersion('qemu-img', ['--version'])}`
  );
}

const TGT_DIRECT = 'tgtd (bsoflags=direct)';
const TGT_BUFFERED = 'tgtd (buffered)';

async function main(): Promise<void> {
  const config = settings();
  const { parent, directory } = scratchDirectory('cistern-iscsi-');
  const peerFile = path.join(directory, 'tgt.img');
  const servers: Server[] = [];
  const results = new Results<Figure>();
  try {
    console.log(`# iSCSI front end vs tgt — ${new Date().toISOString()}`);
    console.log(`# ${machineLine()}`);
    console.log(
      `# ${config.sizeBytes / 2 ** 30} GiB volume/file in ${parent}, queue depth ${QUEUE_DEPTH}, ` +
        `reads ${config.seconds} s, ${config.writeCount} 4 KiB writes, ${config.rounds} round(s), ` +
        `medians; load average at start ${loadAverage()}` +
        (config.nodeFlags.length > 0 ? `; daemon node flags: ${config.nodeFlags.join(' ')}` : ''),
    );
    const peers = config.only !== 'cistern';
    if (peers) {
      await fill(['--ioengine=libaio', '--direct=1', `--filename=${peerFile}`], config.sizeBytes);
    }
    const starters: Array<() => Promise<Server>> = peers
      ? [() => startTgt(TGT_DIRECT, peerFile, true), () => startTgt(TGT_BUFFERED, peerFile, false)]
      : [];
    const cistern: Server[] = [];
    for (const size of config.poolSizes) {
      const server = await startCistern(
        directory,
        size,
        config.sizeBytes,
        config.profileDir,
        config.nodeFlags,
      );
      servers.push(server);
      cistern.push(server);
    }
    await measureRounds(
      {
        rounds: config.rounds,
        starters,
        kept: cistern,
        patterns: PATTERNS,
        measure: (server, pattern) => measure(server, pattern, config),
        note: () => `, load ${os.loadavg()[0]?.toFixed(2)}`,
      },
      results,
    );
    const ours = `Cistern (pool size ${config.poolSizes[0]})`;
    printFigures(results, PATTERNS, ours, [
      { header: 'ours : tgt direct', of: (key) => results.value(TGT_DIRECT, key) },
      { header: 'ours : tgt buffered', of: (key) => results.value(TGT_BUFFERED, key) },
    ]);
    printCpu(results, PATTERNS, results.labels);
    console.log('');
    console.log(`load average at the end: ${loadAverage()}`);
  } finally {
    for (const server of servers) await server.stop();
    fs.rmSync(directory, { recursive: true, force: true });
  }
}

main().catch((error: unknown) => {
  console.error(error);
  process.exitCode = 1;
});
