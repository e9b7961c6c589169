// Benchmark of the NBD front end against its peers, in the same run, on the same
// filesystem: fio's own NBD engine (libnbd) drives Cistern (a Datastore served by
// NbdServer in a child process, pool size 1 and 2), `nbdkit file` (its default,
// page-cached, and `cache=none`) and `qemu-nbd --cache=none --aio=native`, all over
// Unix sockets; `fio --ioengine=libaio --direct=1` on the peers' file is the ceiling.
// Patterns: 4 KiB random read and random write, 1 MiB sequential read and write, all
// at iodepth 32, --time_based, over the whole volume or file. Prints each figure,
// the ratios, server CPU per I/O, the serving process's maximum RSS, the machine and
// the date.
//
//   npm run perf:nbd -- [--seconds 10] [--size-gib 2] [--rounds 1] [--pool-sizes 1,2]
//                       [--only cistern] [--profile DIR]
//
// Fairness: every server's data is fully written first (1 MiB sequential writes over
// the whole range), so reads hit real data on every server (an unwritten Cistern
// volume would read as zeros without any I/O). The peers share one file, laid out
// by fio with O_DIRECT; each Cistern volume is filled through NBD. Servers run one at
// a time (an idle server may stay up), and `sync` runs after each server so that one
// server's dirty page cache does not slow the next. Files go under $CISTERN_PERF_DIR,
// else os.tmpdir(); tmpfs is refused (its O_DIRECT never reaches a disk). With
// --profile DIR the Cistern servers run under `node --cpu-prof` and write there.

import { type ChildProcess, spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import {
  commandLine,
  cpuTicks,
  type Figure as FigureBase,
  measureRounds,
  machine,
  MiB,
  type PatternBase,
  printCpu,
  printFigures,
  Results,
  run,
  scratchDirectory,
  tickUs,
  toolVersion,
  waitForListener,
} from './bench';

const IO_DEPTH = 32;
/** Room for the object store's 1 MiB header and slot rounding beside the volume. */
const DISK_SLACK_BYTES = 64 * MiB;
/** How often the serving process's RSS is sampled. */
const RSS_SAMPLE_MS = 100;

interface Pattern extends PatternBase {
  rw: 'randread' | 'randwrite' | 'read' | 'write';
  blockBytes: number;
}

const pattern = (name: string, rw: Pattern['rw'], blockBytes: number): Pattern => ({
  name,
  key: rw,
  rw,
  blockBytes,
  // Random patterns are reported as IOPS, sequential ones as MiB/s.
  unit: rw.startsWith('rand') ? 'IOPS' : 'MiB/s',
});

const PATTERNS: Pattern[] = [
  pattern('4 KiB random read', 'randread', 4096),
  pattern('4 KiB random write', 'randwrite', 4096),
  pattern('1 MiB sequential read', 'read', MiB),
  pattern('1 MiB sequential write', 'write', MiB),
];

interface Server {
  label: string;
  /** fio target arguments: an NBD URI or a file with libaio. */
  target: string[];
  pid: number | undefined;
  stop(): Promise<void>;
}

interface Figure extends FigureBase {
  rssMaxBytes: number;
}

interface Settings {
  seconds: number;
  sizeBytes: number;
  rounds: number;
  poolSizes: number[];
  only: string | undefined;
  profileDir: string | undefined;
}

const USAGE = `usage: npm run perf:nbd -- [options]
NBD front end vs nbdkit, qemu-nbd and raw fio, in one run (perf/RESULTS.md).
  --seconds S        each pattern's fio run (default 10)
  --size-gib N       the volume and the peers' file (default 2)
  --rounds N         rounds of every server and pattern; figures are medians (default 1)
  --pool-sizes LIST  Cistern's pool sizes, comma-separated (default 1,2)
  --only NAME        run only the servers whose label contains NAME
  --profile DIR      run Cistern under node --cpu-prof, profiles in DIR`;

function settings(): Settings {
  const { value, positive, gibBytes } = commandLine(USAGE);
  const profile = value('--profile');
  return {
    seconds: positive('--seconds', 10),
    sizeBytes: gibBytes('--size-gib', 2),
    rounds: positive('--rounds', 1),
    poolSizes: (value('--pool-sizes') ?? '1,2').split(',').map(Number),
    only: value('--only'),
    profileDir: profile === undefined ? undefined : path.resolve(profile),
  };
}

async function fio(args: string[]): Promise<Record<string, unknown>> {
  const { stdout } = await run('fio', ['--output-format=json', ...args]);
  // fio may print notes before the JSON document.
  return JSON.parse(stdout.slice(stdout.indexOf('{'))) as Record<string, unknown>;
}

function nbdTarget(socket: string): string[] {
  return ['--ioengine=nbd', `--uri=nbd+unix:///bench?socket=${socket}`];
}

function fileTarget(file: string): string[] {
  return ['--ioengine=libaio', '--direct=1', `--filename=${file}`];
}

/** Writes the whole range once, 1 MiB at a time, so that every later read hits data. */
async function fill(target: string[], sizeBytes: number): Promise<void> {
  await fio([
    '--name=fill',
    ...target,
    `--size=${sizeBytes}`,
    '--rw=write',
    '--bs=1M',
    '--iodepth=8',
  ]);
}

function rssBytes(pid: number): number {
  const match = /VmRSS:\s+(\d+) kB/.exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'));
  return match ? Number(match[1]) * 1024 : 0;
}

async function measure(
  server: Server,
  pattern: Pattern,
  sizeBytes: number,
  seconds: number,
): Promise<Figure> {
  const pid = server.pid;
  let rssMaxBytes = pid === undefined ? 0 : rssBytes(pid);
  const sampler = setInterval(() => {
    if (pid !== undefined) rssMaxBytes = Math.max(rssMaxBytes, rssBytes(pid));
  }, RSS_SAMPLE_MS);
  const ticksBefore = pid === undefined ? 0 : cpuTicks(pid);
  try {
    const result = await fio([
      '--name=bench',
      ...server.target,
      `--size=${sizeBytes}`,
      `--rw=${pattern.rw}`,
      `--bs=${pattern.blockBytes}`,
      `--iodepth=${IO_DEPTH}`,
      `--runtime=${seconds}`,
      '--time_based',
      '--norandommap',
      '--randrepeat=0',
    ]);
    const job = (result['jobs'] as Array<Record<string, unknown>>)[0] as Record<string, unknown>;
    const side = job[pattern.rw.includes('read') ? 'read' : 'write'] as {
      iops: number;
      bw_bytes: number;
      total_ios: number;
    };
    const ticks = pid === undefined ? NaN : cpuTicks(pid) - ticksBefore;
    return {
      value: pattern.unit === 'IOPS' ? side.iops : side.bw_bytes / MiB,
      cpuUsPerIo: (ticks * tickUs()) / side.total_ios,
      rssMaxBytes,
    };
  } finally {
    clearInterval(sampler);
    if (pid !== undefined) rssMaxBytes = Math.max(rssMaxBytes, rssBytes(pid));
  }
}

function stopper(child: ChildProcess): () => Promise<void> {
  return () =>
    new Promise((resolve) => {
      if (child.exitCode !== null || child.signalCode !== null) return resolve();
      child.once('exit', () => resolve());
      child.kill('SIGTERM');
    });
}

async function startPeer(label: string, command: string, args: string[], socket: string) {
  // nbdkit leaves its socket behind on exit; the next round's nbdkit must bind again.
  fs.rmSync(socket, { force: true });
  // stderr ignored: the readiness probe's bare connect makes every peer log a broken
  // handshake. A peer that fails to start is caught by waitForListener (exit code).
  const child = spawn(command, args, { stdio: 'ignore' });
  await waitForListener({ path: socket }, child, label);
  return { label, target: nbdTarget(socket), pid: child.pid, stop: stopper(child) };
}

async function startCistern(
  directory: string,
  poolSize: number,
  sizeBytes: number,
  profileDir: string | undefined,
): Promise<Server> {
  const dir = path.join(directory, `cistern-size-${poolSize}`);
  fs.mkdirSync(dir);
  const socket = path.join(dir, 'nbd.sock');
  const profile = profileDir === undefined ? [] : ['--cpu-prof', `--cpu-prof-dir=${profileDir}`];
  // Two disks either way, so that pool size is the only difference between the runs.
  const child = spawn(
    process.execPath,
    [
      ...profile,
      path.join(__dirname, 'serve-datastore.js'),
      ...['--dir', dir, '--socket', socket, '--disks', '2'],
      ...['--disk-bytes', String(sizeBytes + DISK_SLACK_BYTES)],
      ...['--pool-size', String(poolSize), '--volume-bytes', String(sizeBytes)],
    ],
    { stdio: ['ignore', 'ignore', 'inherit'] },
  );
  const label = `Cistern (pool size ${poolSize})`;
  await waitForListener({ path: socket }, child, label);
  const server = { label, target: nbdTarget(socket), pid: child.pid, stop: stopper(child) };
  await fill(server.target, sizeBytes);
  return server;
}

async function main(): Promise<void> {
  const config = settings();
  const { parent, directory } = scratchDirectory('cistern-nbd-');
  const peerFile = path.join(directory, 'peer.img');
  const servers: Server[] = [];
  const results = new Results<Figure>();
  try {
    console.log(`# NBD front end vs nbdkit and qemu-nbd — ${new Date().toISOString()}`);
    console.log(
      `# ${machine()}, ${toolVersion('fio', ['--version'])}, ` +
        `${toolVersion('nbdkit', ['--version'])}, ${toolVersion('qemu-nbd', ['--version'])}`,
    );
    console.log(
      `# ${config.sizeBytes / 2 ** 30} GiB volume/file in ${parent}, iodepth ${IO_DEPTH}, ` +
        `${config.seconds} s per run, ${config.rounds} round(s), medians`,
    );
    const peers = config.only !== 'cistern';
    if (peers) await fill(fileTarget(peerFile), config.sizeBytes);
    const starters: Array<() => Promise<Server>> = [];
    if (peers) {
      starters.push(async () => ({
        label: 'raw fio (libaio, O_DIRECT)',
        target: fileTarget(peerFile),
        pid: undefined,
        stop: async () => undefined,
      }));
      const nbdkit = (label: string, extra: string[], name: string) => async () => {
        const socket = path.join(directory, `${name}.sock`);
        return startPeer(label, 'nbdkit', ['-f', '-U', socket, 'file', peerFile, ...extra], socket);
      };
      starters.push(nbdkit('nbdkit file', [], 'nbdkit'));
      starters.push(nbdkit('nbdkit file cache=none', ['cache=none'], 'nbdkit-nocache'));
      starters.push(async () => {
        const socket = path.join(directory, 'qemu-nbd.sock');
        const args = ['-f', 'raw', '--cache=none', '--aio=native', '-x', 'bench'];
        return startPeer('qemu-nbd', 'qemu-nbd', [...args, '-k', socket, '-t', peerFile], socket);
      });
    }
    const cistern: Server[] = [];
    for (const size of config.poolSizes) {
      const server = await startCistern(directory, size, config.sizeBytes, config.profileDir);
      servers.push(server);
      cistern.push(server);
    }
    await measureRounds(
      {
        rounds: config.rounds,
        starters,
        kept: cistern,
        patterns: PATTERNS,
        measure: (server, pattern) => measure(server, pattern, config.sizeBytes, config.seconds),
        note: (figure) => `, RSS max ${(figure.rssMaxBytes / MiB).toFixed(0)} MiB`,
      },
      results,
    );
    report(results, config);
  } finally {
    for (const server of servers) await server.stop();
    fs.rmSync(directory, { recursive: true, force: true });
  }
}

function report(results: Results<Figure>, config: Settings): void {
  const labels = results.labels;
  const peerLabels = labels.filter((l) => l.startsWith('nbdkit') || l.startsWith('qemu'));
  const rawLabel = labels.find((l) => l.startsWith('raw'));
  const ours = `Cistern (pool size ${config.poolSizes[0]})`;
  printFigures(results, PATTERNS, ours, [
    {
      header: 'ours : best peer',
      of: (key) =>
        peerLabels.length === 0 ? NaN : Math.max(...peerLabels.map((l) => results.value(l, key))),
    },
    {
      header: 'ours : raw',
      of: (key) => (rawLabel === undefined ? NaN : results.value(rawLabel, key)),
    },
  ]);
  printCpu(
    results,
    PATTERNS,
    labels.filter((l) => l !== rawLabel),
  );
  console.log('');
  for (const size of config.poolSizes.slice(1)) {
    const label = `Cistern (pool size ${size})`;
    const ratio = results.value(label, 'randwrite') / results.value(ours, 'randwrite');
    console.log(
      `pool size ${size} : ${config.poolSizes[0]}, 4 KiB random write: ${ratio.toFixed(2)}`,
    );
  }
  for (const label of labels.filter((l) => l.startsWith('Cistern'))) {
    const max = Math.max(...results.all(label).map((f) => f.rssMaxBytes));
    console.log(`${label}: max RSS of the serving process ${(max / MiB).toFixed(0)} MiB`);
  }
}

main().catch((error: unknown) => {
  console.error(error);
  process.exitCode = 1;
});
