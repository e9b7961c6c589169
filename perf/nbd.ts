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

import { type ChildProcess, spawn, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';
import { isMemoryFilesystem } from '../src/engine/testing';

const MiB = 2 ** 20;
const IO_DEPTH = 32;
/** Room for the object store's 1 MiB header and slot rounding beside the volume. */
const DISK_SLACK_BYTES = 64 * MiB;
/** How often the serving process's RSS is sampled. */
const RSS_SAMPLE_MS = 100;
const READY_TIMEOUT_MS = 60_000;

interface Pattern {
  name: string;
  rw: 'randread' | 'randwrite' | 'read' | 'write';
  blockBytes: number;
  /** Reported as IOPS (random) or MiB/s (sequential). */
  unit: 'IOPS' | 'MiB/s';
}

const PATTERNS: Pattern[] = [
  { name: '4 KiB random read', rw: 'randread', blockBytes: 4096, unit: 'IOPS' },
  { name: '4 KiB random write', rw: 'randwrite', blockBytes: 4096, unit: 'IOPS' },
  { name: '1 MiB sequential read', rw: 'read', blockBytes: MiB, unit: 'MiB/s' },
  { name: '1 MiB sequential write', rw: 'write', blockBytes: MiB, unit: 'MiB/s' },
];

interface Server {
  label: string;
  /** fio target arguments: an NBD URI or a file with libaio. */
  target: string[];
  pid: number | undefined;
  stop(): Promise<void>;
}

interface Figure {
  value: number;
  /** Server CPU (user + system) per I/O in microseconds; NaN without a server process. */
  cpuUsPerIo: number;
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

function settings(): Settings {
  const value = (name: string): string | undefined => {
    const index = process.argv.indexOf(name);
    return index < 0 ? undefined : process.argv[index + 1];
  };
  const positive = (name: string, fallback: number): number => {
    const text = value(name);
    if (text === undefined) return fallback;
    const number = Number(text);
    if (!Number.isFinite(number) || number <= 0) throw new Error(`${name} needs a positive number`);
    return number;
  };
  const profile = value('--profile');
  return {
    seconds: positive('--seconds', 10),
    sizeBytes: Math.round(positive('--size-gib', 2) * 1024) * MiB,
    rounds: positive('--rounds', 1),
    poolSizes: (value('--pool-sizes') ?? '1,2').split(',').map(Number),
    only: value('--only'),
    profileDir: profile === undefined ? undefined : path.resolve(profile),
  };
}

function run(command: string, args: string[]): Promise<string> {
  return new Promise((resolve, reject) => {
    const child = spawn(command, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (chunk: Buffer) => (stdout += chunk.toString()));
    child.stderr.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
    child.on('error', reject);
    child.on('close', (code) =>
      code === 0 ? resolve(stdout) : reject(new Error(`${command} failed (${code}): ${stderr}`)),
    );
  });
}

async function fio(args: string[]): Promise<Record<string, unknown>> {
  const stdout = await run('fio', ['--output-format=json', ...args]);
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

function cpuTicks(pid: number): number {
  const fields = fs.readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1]?.split(' ') ?? [];
  // utime and stime are fields 14 and 15 of stat(5), 12 and 13 after "pid (comm) ".
  return Number(fields[11]) + Number(fields[12]);
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
    const tickUs = 1e6 / Number(spawnSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).stdout);
    return {
      value: pattern.unit === 'IOPS' ? side.iops : side.bw_bytes / MiB,
      cpuUsPerIo: (ticks * tickUs) / side.total_ios,
      rssMaxBytes,
    };
  } finally {
    clearInterval(sampler);
    if (pid !== undefined) rssMaxBytes = Math.max(rssMaxBytes, rssBytes(pid));
  }
}

/** Resolves once something accepts connections on the Unix socket. */
async function waitForSocket(socket: string, child: ChildProcess, name: string): Promise<void> {
  const deadline = Date.now() + READY_TIMEOUT_MS;
  while (Date.now() < deadline) {
    if (child.exitCode !== null) throw new Error(`${name} exited with ${child.exitCode}`);
    const connected = await new Promise<boolean>((resolve) => {
      const probe = net.connect(socket);
      probe.once('connect', () => {
        probe.destroy();
        resolve(true);
      });
      probe.once('error', () => resolve(false));
    });
    if (connected) return;
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
  throw new Error(`${name} did not listen on ${socket} within ${READY_TIMEOUT_MS} ms`);
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
  // handshake. A peer that fails to start is caught by waitForSocket (exit code).
  const child = spawn(command, args, { stdio: 'ignore' });
  await waitForSocket(socket, child, label);
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
  await waitForSocket(socket, child, label);
  const server = { label, target: nbdTarget(socket), pid: child.pid, stop: stopper(child) };
  await fill(server.target, sizeBytes);
  return server;
}

function machine(): string {
  const cpus = os.cpus();
  const version = (command: string, flag: string): string =>
    spawnSync(command, [flag], { encoding: 'utf8' }).stdout.split('\n')[0]?.trim() ?? '?';
  return (
    `${cpus[0]?.model ?? 'unknown CPU'}, ${cpus.length} cores, ` +
    `${Math.round(os.totalmem() / 2 ** 30)} GiB, Linux ${os.release()}, node ${process.version}, ` +
    `${version('fio', '--version')}, ${version('nbdkit', '--version')}, ` +
    `${version('qemu-nbd', '--version')}`
  );
}

function median(values: number[]): number {
  const sorted = values.filter((v) => !Number.isNaN(v)).sort((a, b) => a - b);
  if (sorted.length === 0) return NaN;
  // An even count takes the mean of the middle two (with 2 rounds, not the larger one).
  const high = sorted[Math.floor(sorted.length / 2)] as number;
  const low = sorted[Math.ceil(sorted.length / 2) - 1] as number;
  return (low + high) / 2;
}

function format(value: number, unit: Pattern['unit']): string {
  return Number.isNaN(value) ? '–' : unit === 'IOPS' ? String(Math.round(value)) : value.toFixed(0);
}

async function main(): Promise<void> {
  const config = settings();
  const parent = process.env['CISTERN_PERF_DIR'] || os.tmpdir();
  if (isMemoryFilesystem(parent)) {
    throw new Error(`${parent} is tmpfs; set CISTERN_PERF_DIR to a directory on a real disk`);
  }
  const directory = fs.mkdtempSync(path.join(parent, 'cistern-nbd-'));
  const peerFile = path.join(directory, 'peer.img');
  const servers: Server[] = [];
  const results = new Map<string, Map<string, Figure[]>>();
  const record = (label: string, pattern: Pattern, figure: Figure): void => {
    const byPattern = results.get(label) ?? new Map<string, Figure[]>();
    results.set(label, byPattern);
    byPattern.set(pattern.rw, [...(byPattern.get(pattern.rw) ?? []), figure]);
  };
  try {
    console.log(`# NBD front end vs nbdkit and qemu-nbd — ${new Date().toISOString()}`);
    console.log(`# ${machine()}`);
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
    // Cistern servers stay up across rounds (filling them again would dominate).
    const cistern: Server[] = [];
    for (const size of config.poolSizes) {
      const server = await startCistern(directory, size, config.sizeBytes, config.profileDir);
      servers.push(server);
      cistern.push(server);
    }
    for (let round = 0; round < config.rounds; round++) {
      const order: Array<() => Promise<Server>> = [
        ...starters,
        ...cistern.map((server) => async () => server),
      ];
      for (const start of order) {
        const server = await start();
        for (const pattern of PATTERNS) {
          const figure = await measure(server, pattern, config.sizeBytes, config.seconds);
          record(server.label, pattern, figure);
          console.error(
            `round ${round + 1} ${server.label} ${pattern.name}: ${format(figure.value, pattern.unit)} ` +
              `${pattern.unit}, ${figure.cpuUsPerIo.toFixed(1)} µs CPU/IO, RSS max ${(figure.rssMaxBytes / MiB).toFixed(0)} MiB`,
          );
        }
        if (!cistern.includes(server)) await server.stop();
        await run('sync', []);
      }
    }
    report(results, config);
  } finally {
    for (const server of servers) await server.stop();
    fs.rmSync(directory, { recursive: true, force: true });
  }
}

function report(results: Map<string, Map<string, Figure[]>>, config: Settings): void {
  const get = (label: string, rw: string): Figure[] => results.get(label)?.get(rw) ?? [];
  const value = (label: string, rw: string): number => median(get(label, rw).map((f) => f.value));
  const cpu = (label: string, rw: string): number =>
    median(get(label, rw).map((f) => f.cpuUsPerIo));
  const labels = [...results.keys()];
  const peerLabels = labels.filter((l) => l.startsWith('nbdkit') || l.startsWith('qemu'));
  const rawLabel = labels.find((l) => l.startsWith('raw'));
  const ours = `Cistern (pool size ${config.poolSizes[0]})`;
  console.log('');
  console.log(`| pattern | ${labels.join(' | ')} | ours : best peer | ours : raw |`);
  console.log(`| --- |${' ---: |'.repeat(labels.length + 2)}`);
  for (const pattern of PATTERNS) {
    const cells = labels.map((l) => format(value(l, pattern.rw), pattern.unit));
    const best =
      peerLabels.length === 0 ? NaN : Math.max(...peerLabels.map((l) => value(l, pattern.rw)));
    const mine = value(ours, pattern.rw);
    const raw = rawLabel === undefined ? NaN : value(rawLabel, pattern.rw);
    console.log(
      `| ${pattern.name} (${pattern.unit}) | ${cells.join(' | ')} | ` +
        `${(mine / best).toFixed(2)} | ${(mine / raw).toFixed(2)} |`,
    );
  }
  console.log('');
  console.log(`Server CPU (user + system) per I/O, µs:`);
  console.log(`| pattern | ${labels.filter((l) => l !== rawLabel).join(' | ')} |`);
  console.log(`| --- |${' ---: |'.repeat(labels.length - (rawLabel ? 1 : 0))}`);
  for (const pattern of PATTERNS) {
    const cells = labels.filter((l) => l !== rawLabel).map((l) => cpu(l, pattern.rw).toFixed(1));
    console.log(`| ${pattern.name} | ${cells.join(' | ')} |`);
  }
  console.log('');
  for (const size of config.poolSizes.slice(1)) {
    const label = `Cistern (pool size ${size})`;
    const ratio = value(label, 'randwrite') / value(ours, 'randwrite');
    console.log(
      `pool size ${size} : ${config.poolSizes[0]}, 4 KiB random write: ${ratio.toFixed(2)}`,
    );
  }
  for (const label of labels.filter((l) => l.startsWith('Cistern'))) {
    const all = [...(results.get(label)?.values() ?? [])].flat();
    const max = Math.max(...all.map((f) => f.rssMaxBytes));
    console.log(`${label}: max RSS of the serving process ${(max / MiB).toFixed(0)} MiB`);
  }
}

main().catch((error: unknown) => {
  console.error(error);
  process.exitCode = 1;
});
