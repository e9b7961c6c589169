// What the front-end benchmarks (nbd.ts, iscsi.ts) share, none of which measures
// anything by itself: command-line options, running a client with its output, server
// CPU from /proc, waiting for a server to accept, the machine line, the scratch
// directory (never tmpfs), the rounds that measure every server with every pattern,
// medians and the tables of figures, ratios and CPU per I/O.

import { type ChildProcess, spawn, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';
import { isMemoryFilesystem } from '../src/engine/testing';

export const MiB = 2 ** 20;
/** How long a server may take to accept its first connection. */
export const READY_TIMEOUT_MS = 60_000;
/** Between two connection attempts while a server starts. */
const READY_POLL_MS = 50;

/** One benchmark figure: the pattern's value and the server's CPU per I/O. */
export interface Figure {
  value: number;
  /** Server CPU (user + system) per I/O in microseconds; NaN without a server process. */
  cpuUsPerIo: number;
}

export interface PatternBase {
  name: string;
  /** What a figure is recorded under. */
  key: string;
  /** Reported as IOPS or MiB/s. */
  unit: 'IOPS' | 'MiB/s';
}

export interface ServerBase {
  label: string;
  pid: number | undefined;
  stop(): Promise<void>;
}

/**
 * The command line of a benchmark: `--name value` options, positive numbers among them,
 * and sizes given in GiB. `usage` is the script's synopsis and its options: `--help`
 * prints it and exits, and an option it does not name is refused — a misspelt one
 * (or `--help` taken for nothing) must not start a run of many minutes on defaults.
 */
export function commandLine(usage: string, argv: readonly string[] = process.argv.slice(2)) {
  const known = new Set(usage.match(/--[a-z][a-z0-9-]*/g) ?? []);
  if (argv.includes('--help') || argv.includes('-h')) {
    console.log(usage);
    process.exit(0);
  }
  for (let index = 0; index < argv.length; index += 1) {
    const word = argv[index] as string;
    if (known.has(word))
      index += 1; // its value may start with '-' (iscsi.ts --node-flags)
    else if (word.startsWith('-')) throw new Error(`unknown option ${word}\n\n${usage}`);
  }
  const value = (name: string): string | undefined => {
    if (!known.has(name)) throw new Error(`${name} is not in the usage`);
    const index = argv.indexOf(name);
    return index < 0 ? undefined : argv[index + 1];
  };
  const positive = (name: string, fallback: number): number => {
    const text = value(name);
    if (text === undefined) return fallback;
    const number = Number(text);
    if (!Number.isFinite(number) || number <= 0) throw new Error(`${name} needs a positive number`);
    return number;
  };
  /** A size given in GiB (fractions allowed), in bytes, whole MiB. */
  const gibBytes = (name: string, fallback: number): number =>
    Math.round(positive(name, fallback) * 1024) * MiB;
  return { value, positive, gibBytes };
}

/** Runs a command to its end; rejects unless it exits 0. Killed after `timeoutMs`, if given. */
export function run(
  command: string,
  args: string[],
  timeoutMs?: number,
): Promise<{ stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(command, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    const timer =
      timeoutMs === undefined ? undefined : setTimeout(() => child.kill('SIGKILL'), timeoutMs);
    child.stdout.on('data', (chunk: Buffer) => (stdout += chunk.toString()));
    child.stderr.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
    child.on('error', reject);
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      if (code === 0) resolve({ stdout, stderr });
      else reject(new Error(`${command} ${args.join(' ')} failed (${code ?? signal}): ${stderr}`));
    });
  });
}

/** User + system CPU ticks a process has used. */
export function cpuTicks(pid: number): number {
  const fields = fs.readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1]?.split(' ') ?? [];
  // utime and stime are fields 14 and 15 of stat(5), 12 and 13 after "pid (comm) ".
  return Number(fields[11]) + Number(fields[12]);
}

/** Microseconds per CPU tick (CLK_TCK). */
export function tickUs(): number {
  const hz = Number(spawnSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).stdout.trim());
  if (!Number.isFinite(hz) || hz <= 0) throw new Error('getconf CLK_TCK gave no tick rate');
  return 1e6 / hz;
}

/** The 1, 5 and 15 minute load averages, for the header and the end of a run. */
export function loadAverage(): string {
  return os
    .loadavg()
    .map((load) => load.toFixed(2))
    .join(' ');
}

/** Resolves once something accepts connections at `where` (a Unix socket or a TCP port). */
export async function waitForListener(
  where: net.NetConnectOpts,
  child: ChildProcess,
  name: string,
): Promise<void> {
  const described = 'path' in where ? where.path : `port ${where.port}`;
  const deadline = Date.now() + READY_TIMEOUT_MS;
  while (Date.now() < deadline) {
    if (child.exitCode !== null) throw new Error(`${name} exited with ${child.exitCode}`);
    const connected = await new Promise<boolean>((resolve) => {
      const probe = net.connect(where);
      probe.once('connect', () => {
        probe.destroy();
        resolve(true);
      });
      probe.once('error', () => resolve(false));
    });
    if (connected) return;
    await new Promise((resolve) => setTimeout(resolve, READY_POLL_MS));
  }
  throw new Error(`${name} did not listen on ${described} within ${READY_TIMEOUT_MS} ms`);
}

export function exited(child: ChildProcess): Promise<void> {
  return new Promise((resolve) => {
    if (child.exitCode !== null || child.signalCode !== null) return resolve();
    child.once('exit', () => resolve());
  });
}

/** CPU, cores, memory, kernel and node: the start of every benchmark's machine line. */
export function machine(): string {
  const cpus = os.cpus();
  return (
    `${cpus[0]?.model ?? 'unknown CPU'}, ${cpus.length} cores, ` +
    `${Math.round(os.totalmem() / 2 ** 30)} GiB, Linux ${os.release()}, node ${process.version}`
  );
}

/** The first line a tool prints for `args` (on stdout or stderr), for the machine line. */
export function toolVersion(command: string, args: string[]): string {
  const result = spawnSync(command, args, { encoding: 'utf8' });
  return `${result.stdout}${result.stderr}`.split('\n')[0]?.trim() || '?';
}

/**
 * A fresh directory under $CISTERN_PERF_DIR, else os.tmpdir(); tmpfs is refused (its
 * O_DIRECT never reaches a disk). `parent` is where it is, for the header.
 */
export function scratchDirectory(prefix: string): { parent: string; directory: string } {
  const parent = process.env['CISTERN_PERF_DIR'] || os.tmpdir();
  if (isMemoryFilesystem(parent)) {
    throw new Error(`${parent} is tmpfs; set CISTERN_PERF_DIR to a directory on a real disk`);
  }
  return { parent, directory: fs.mkdtempSync(path.join(parent, prefix)) };
}

export function median(values: number[]): number {
  const sorted = values.filter((v) => !Number.isNaN(v)).sort((a, b) => a - b);
  if (sorted.length === 0) return NaN;
  // An even count takes the mean of the middle two (with 2 rounds, not the larger one).
  const high = sorted[Math.floor(sorted.length / 2)] as number;
  const low = sorted[Math.ceil(sorted.length / 2) - 1] as number;
  return (low + high) / 2;
}

export function format(value: number, unit: PatternBase['unit']): string {
  return Number.isNaN(value) ? '–' : unit === 'IOPS' ? String(Math.round(value)) : value.toFixed(0);
}

/** Every figure measured, by server label and pattern key, in the order first seen. */
export class Results<F extends Figure> {
  private readonly figures = new Map<string, Map<string, F[]>>();

  record(label: string, key: string, figure: F): void {
    const byKey = this.figures.get(label) ?? new Map<string, F[]>();
    this.figures.set(label, byKey);
    byKey.set(key, [...(byKey.get(key) ?? []), figure]);
  }

  get labels(): string[] {
    return [...this.figures.keys()];
  }

  of(label: string, key: string): F[] {
    return this.figures.get(label)?.get(key) ?? [];
  }

  /** Every figure of one server, whatever the pattern. */
  all(label: string): F[] {
    return [...(this.figures.get(label)?.values() ?? [])].flat();
  }

  value(label: string, key: string): number {
    return median(this.of(label, key).map((f) => f.value));
  }

  cpu(label: string, key: string): number {
    return median(this.of(label, key).map((f) => f.cpuUsPerIo));
  }
}

export interface Rounds<S extends ServerBase, P extends PatternBase, F extends Figure> {
  rounds: number;
  /** Peers, started afresh for each round and stopped after it. */
  starters: Array<() => Promise<S>>;
  /** Our servers, up across rounds (filling them again would dominate). */
  kept: S[];
  patterns: readonly P[];
  measure(server: S, pattern: P): Promise<F>;
  /** What the progress line adds after the figure and its CPU per I/O. */
  note(figure: F): string;
}

/**
 * Every round measures every server with every pattern, one server at a time in the
 * same order, with `sync` after each so that one server's dirty page cache does not
 * slow the next. Progress goes to stderr.
 */
export async function measureRounds<S extends ServerBase, P extends PatternBase, F extends Figure>(
  plan: Rounds<S, P, F>,
  results: Results<F>,
): Promise<void> {
  for (let round = 0; round < plan.rounds; round++) {
    const order = [...plan.starters, ...plan.kept.map((server) => async () => server)];
    for (const start of order) {
      const server = await start();
      try {
        for (const pattern of plan.patterns) {
          const figure = await plan.measure(server, pattern);
          results.record(server.label, pattern.key, figure);
          console.error(
            `round ${round + 1} ${server.label} ${pattern.name}: ` +
              `${format(figure.value, pattern.unit)} ${pattern.unit}, ` +
              `${figure.cpuUsPerIo.toFixed(1)} µs CPU/IO${plan.note(figure)}`,
          );
        }
      } finally {
        if (!plan.kept.includes(server)) await server.stop();
      }
      await run('sync', [], 60_000);
    }
  }
}

/** A ratio column of the figures table: ours over what `of` gives for a pattern. */
export interface RatioColumn {
  header: string;
  of(key: string): number;
}

/** The figures of every server per pattern, then `ours` over each ratio column. */
export function printFigures<F extends Figure>(
  results: Results<F>,
  patterns: readonly PatternBase[],
  ours: string,
  ratios: readonly RatioColumn[],
): void {
  const labels = results.labels;
  console.log('');
  console.log(`| pattern | ${[...labels, ...ratios.map((r) => r.header)].join(' | ')} |`);
  console.log(`| --- |${' ---: |'.repeat(labels.length + ratios.length)}`);
  for (const pattern of patterns) {
    const cells = labels.map((l) => format(results.value(l, pattern.key), pattern.unit));
    const mine = results.value(ours, pattern.key);
    const ratioCells = ratios.map((ratio) => (mine / ratio.of(pattern.key)).toFixed(2));
    console.log(`| ${pattern.name} (${pattern.unit}) | ${[...cells, ...ratioCells].join(' | ')} |`);
  }
}

/** Server CPU per I/O of the servers `labels` (those with a process), per pattern. */
export function printCpu<F extends Figure>(
  results: Results<F>,
  patterns: readonly PatternBase[],
  labels: readonly string[],
): void {
  console.log('');
  console.log('Server CPU (user + system) per I/O, µs:');
  console.log(`| pattern | ${labels.join(' | ')} |`);
  console.log(`| --- |${' ---: |'.repeat(labels.length)}`);
  for (const pattern of patterns) {
    const cells = labels.map((l) => results.cpu(l, pattern.key).toFixed(1));
    console.log(`| ${pattern.name} | ${cells.join(' | ')} |`);
  }
}
