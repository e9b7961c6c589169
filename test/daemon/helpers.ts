// Running the real `cistern` binary in tests: daemons as child processes (found through
// the admin.json they write), CLI commands as async children (so an in-process daemon in
// the test keeps serving while they run). Every daemon started here is tracked and
// killed by killDaemons(), which each test file calls in an after() hook.

import { strict as assert } from 'node:assert';
import { ChildProcess, spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { AdminFile, isProcessAlive, readAdminFile } from '../../src/daemon/data-dir';
import { NbdClient } from '../../src/frontend/nbd/client';

export const bin = path.join(__dirname, '..', '..', '..', 'bin', 'cistern');
/** A daemon on a fresh dir is up in well under a second; this bounds a hung start. */
export const DAEMON_START_TIMEOUT_MS = 20_000;
/** A clean stop flushes and closes in well under a second; this bounds a hung stop. */
export const DAEMON_STOP_TIMEOUT_MS = 20_000;
const POLL_INTERVAL_MS = 20;

export function tempDir(prefix: string): string {
  return fs.mkdtempSync(path.join(os.tmpdir(), `cistern-${prefix}-`));
}

export interface Exit {
  code: number | null;
  signal: NodeJS.Signals | null;
}

export interface DaemonProcess {
  readonly child: ChildProcess;
  readonly dir: string;
  readonly admin: AdminFile;
  readonly exited: Promise<Exit>;
  stderr(): string;
  /** Sends `signal` and waits (bounded) for the exit. */
  stop(signal?: NodeJS.Signals): Promise<Exit>;
}

const running = new Set<ChildProcess>();

/** Spawns `cistern daemon` and resolves once its admin.json names it. */
export async function spawnDaemon(
  dir: string,
  extraArgs: string[] = ['--nbd', '127.0.0.1:0', '--admin', '127.0.0.1:0'],
  options: { cwd?: string } = {},
): Promise<DaemonProcess> {
  const started = spawnChild([bin, 'daemon', '--data-dir', dir, ...extraArgs], options.cwd);
  const { child, exited } = started;
  const deadline = Date.now() + DAEMON_START_TIMEOUT_MS;
  let exit: Exit | undefined;
  void exited.then((value) => (exit = value));
  for (;;) {
    const admin = readAdminFile(dir);
    if (admin !== undefined && admin.pid === child.pid) {
      return {
        child,
        dir,
        admin,
        exited,
        stderr: started.stderr,
        stop: (signal = 'SIGTERM') => stopChild(child, exited, signal),
      };
    }
    if (exit !== undefined) {
      throw new Error(
        `daemon exited (${JSON.stringify(exit)}) before starting:\n${started.stderr()}`,
      );
    }
    if (Date.now() > deadline) {
      child.kill('SIGKILL');
      throw new Error(
        `daemon did not start in ${DAEMON_START_TIMEOUT_MS} ms:\n${started.stderr()}`,
      );
    }
    await sleep(POLL_INTERVAL_MS);
  }
}

/** Runs a daemon that is expected to refuse to start; resolves to its exit and stderr. */
export async function daemonRefused(
  dir: string,
  extraArgs: string[],
): Promise<{ exit: Exit; stderr: string }> {
  const { exited, stderr, child } = spawnChild([bin, 'daemon', '--data-dir', dir, ...extraArgs]);
  const exit = await within(exited, DAEMON_START_TIMEOUT_MS);
  if (exit === undefined) {
    child.kill('SIGKILL');
    assert.fail(`daemon did not refuse to start:\n${stderr()}`);
  }
  return { exit, stderr: stderr() };
}

function spawnChild(
  args: string[],
  cwd?: string,
): { child: ChildProcess; exited: Promise<Exit>; stderr: () => string } {
  const child = spawn(process.execPath, args, { stdio: ['ignore', 'pipe', 'pipe'], cwd });
  running.add(child);
  let stderr = '';
  child.stderr?.setEncoding('utf8').on('data', (chunk: string) => (stderr += chunk));
  child.stdout?.resume();
  const exited = new Promise<Exit>((resolve) =>
    child.on('exit', (code, signal) => {
      running.delete(child);
      resolve({ code, signal });
    }),
  );
  return { child, exited, stderr: () => stderr };
}

async function stopChild(child: ChildProcess, exited: Promise<Exit>, signal: NodeJS.Signals) {
  child.kill(signal);
  const exit = await within(exited, DAEMON_STOP_TIMEOUT_MS);
  if (exit === undefined) {
    child.kill('SIGKILL');
    assert.fail(`daemon did not exit within ${DAEMON_STOP_TIMEOUT_MS} ms of ${signal}`);
  }
  return exit;
}

/** Kills whatever a test left running. */
export async function killDaemons(): Promise<void> {
  const children = [...running];
  for (const child of children) child.kill('SIGKILL');
  await Promise.all(
    children.map(
      (child) =>
        new Promise<void>((resolve) => {
          if (child.pid === undefined || !isProcessAlive(child.pid)) return resolve();
          child.once('exit', () => resolve());
        }),
    ),
  );
}

export interface CliResult {
  code: number | null;
  stdout: string;
  stderr: string;
}

/** Runs `cistern ARGS` without blocking this process's event loop. */
export function cistern(
  args: string[],
  options: { env?: NodeJS.ProcessEnv; cwd?: string } = {},
): Promise<CliResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [bin, ...args], {
      env: options.env ?? process.env,
      cwd: options.cwd,
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let stdout = '';
    let stderr = '';
    child.stdout.setEncoding('utf8').on('data', (chunk: string) => (stdout += chunk));
    child.stderr.setEncoding('utf8').on('data', (chunk: string) => (stderr += chunk));
    child.on('error', reject);
    child.on('close', (code) => resolve({ code, stdout, stderr }));
  });
}

/** Runs a command that must succeed, and returns its stdout. */
export async function cisternOk(args: string[], options?: { env?: NodeJS.ProcessEnv }) {
  const result = await cistern(args, options);
  assert.equal(result.code, 0, `cistern ${args.join(' ')}: ${result.stderr}`);
  return result.stdout;
}

/** The promise's value, or undefined if it takes longer than `ms` (the timer is cleared). */
function within<T>(promise: Promise<T>, ms: number): Promise<T | undefined> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<undefined>((resolve) => {
    timer = setTimeout(() => resolve(undefined), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

export function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** NBD target from an address in admin.json. */
export function nbdTarget(address: string | undefined): { host: string; port: number } {
  assert.ok(address, 'admin.json has no NBD address');
  const colon = address.lastIndexOf(':');
  return { host: address.slice(0, colon), port: Number(address.slice(colon + 1)) };
}

/**
 * A daemon on `dir` (data in `dir`/data) serving one volume over NBD, stopped — SIGKILL
 * for a crash, SIGTERM for a clean stop — and started again on the same dir.
 */
export class RestartableDaemon {
  readonly dataDir: string;
  daemon: DaemonProcess | undefined;

  constructor(
    readonly dir: string,
    readonly volume: string,
    private readonly diskArgs: readonly string[],
  ) {
    this.dataDir = path.join(dir, 'data');
  }

  async start(): Promise<DaemonProcess> {
    assert.equal(this.daemon, undefined, 'a daemon is already running');
    this.daemon = await spawnDaemon(this.dataDir, [
      ...this.diskArgs,
      ...['--nbd', '127.0.0.1:0', '--admin', '127.0.0.1:0'],
    ]);
    return this.daemon;
  }

  /** Stops the daemon, which must not have taken a disk out or met an unexpected error. */
  async stop(signal: 'SIGKILL' | 'SIGTERM'): Promise<void> {
    const daemon = this.daemon;
    assert.ok(daemon !== undefined, 'no daemon running');
    this.daemon = undefined;
    const exit = await daemon.stop(signal);
    if (signal === 'SIGKILL') assert.equal(exit.signal, 'SIGKILL');
    else assert.deepEqual(exit, { code: 0, signal: null }, daemon.stderr());
    assert.doesNotMatch(daemon.stderr(), /nbd\.unexpected_error|disk\.failed/);
  }

  get target(): { host: string; port: number } {
    assert.ok(this.daemon !== undefined, 'no daemon running');
    return nbdTarget(this.daemon.admin.nbd);
  }

  uri(): string {
    const { host, port } = this.target;
    return `nbd://${host}:${port}/${this.volume}`;
  }

  connect(): Promise<NbdClient> {
    return NbdClient.connect(this.target, { exportName: this.volume });
  }

  createVolume(sizeBytes: number): Promise<string> {
    return cisternOk([
      ...['volume', 'create', this.volume, '--size', String(sizeBytes)],
      ...['--data-dir', this.dataDir],
    ]);
  }
}
