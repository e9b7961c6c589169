// A multi-host Cistern cluster on one machine, for tests and benchmarks: every host is a
// Linux network namespace with its own address on a private L2 network, and a real etcd
// runs in a namespace of its own. Processes (daemons, etcd, and the clients that talk to
// them: qemu-io, nbdcopy, fio, nbdinfo, etcdctl) run inside a namespace through
// `ip netns exec`, so they reach each other by the test addresses exactly as separate
// machines would, and a host can be cut off, killed and restarted on its own.
//
// Layout of one network (`createNetwork({ hosts: 3 })`, id `cstn-4242-k2x9a-7f3c`):
//
//   namespace  cstn-4242-k2x9a-7f3c-br     bridge br0, one port p-<host> per namespace
//   namespace  cstn-4242-k2x9a-7f3c-etcd   veth0 10.231.X.2/24 (etcd)
//   namespace  cstn-4242-k2x9a-7f3c-h0     veth0 10.231.X.10/24
//   namespace  cstn-4242-k2x9a-7f3c-h1     veth0 10.231.X.11/24 ...
//
// The bridge lives in its own namespace, never in the root one, so the machine's own
// interfaces, routes and firewall are never touched, and nothing routes between the
// test subnet and the root namespace. Every namespace has loopback up (daemons keep
// their admin API on 127.0.0.1 of their own host) and no route but the test subnet.
//
// Names carry the owner's pid and kernel start time, so a later run can tell the
// namespaces of a crashed run (owner gone) from those of a concurrent one (owner alive)
// and remove only the former: see cleanupStaleNetworks().

import { strict as assert } from 'node:assert';
import { type ChildProcess, spawn as spawnChild, spawnSync } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import {
  AdminFile,
  isProcessAlive,
  processStartTime,
  readAdminFile,
} from '../../src/daemon/data-dir';

/** The repository's `bin/cistern`, found from this file (dist/test/cluster/harness.js). */
export const CISTERN_BIN = path.resolve(__dirname, '..', '..', '..', 'bin', 'cistern');

export const PREFIX_DEFAULT = 'cstn';
/** Prefixes are short and plain so that they are safe in names and regular expressions. */
const PREFIX_PATTERN = /^[a-z][a-z0-9]{0,7}$/;
/** Addresses .10 to .10+HOSTS_MAX-1 of the /24; far more than any test needs. */
export const HOSTS_MAX = 64;
const SUBNET_FIRST_OCTETS = '10.231';
const SUBNET_PREFIX_LENGTH = 24;
const ETCD_HOST_OCTET = 2;
const HOST_OCTET_BASE = 10;
/** Inside every host namespace the link to the bridge has this name. */
export const HOST_INTERFACE = 'veth0';
const BRIDGE_INTERFACE = 'br0';
/** Linux limits interface names to 15 bytes (IFNAMSIZ - 1). */
const INTERFACE_NAME_BYTES_MAX = 15;

export const NBD_PORT = 10809;
export const ETCD_CLIENT_PORT = 2379;
const ETCD_PEER_PORT = 2380;

/** Bounds a single `ip` command: they finish in milliseconds. */
const IP_COMMAND_TIMEOUT_MS = 10_000;
/** Default bound of exec(): the slowest client run in tests (fio verify) is well under. */
export const EXEC_TIMEOUT_DEFAULT_MS = 120_000;
/** A daemon is up in about a second; this bounds a hung start. */
export const DAEMON_START_TIMEOUT_MS = 30_000;
/** A clean stop flushes and closes in well under a second; this bounds a hung stop. */
export const STOP_TIMEOUT_MS = 20_000;
/** etcd is healthy in about a second on a fresh data dir. */
export const ETCD_START_TIMEOUT_MS = 20_000;
const POLL_INTERVAL_MS = 50;
/** Output kept per stream of one process; beyond it the rest is counted, not kept. */
export const OUTPUT_CHARS_MAX = 16 * 1024 * 1024;
/** Log lines kept per process (daemons log one line per event); older lines are dropped. */
export const LOG_LINES_MAX = 100_000;
/** Processes the harness tracks per network; a runaway test fails instead of forking on. */
const PROCESSES_MAX = 4096;

export interface Host {
  /** `h0`, `h1`, … or `etcd`. */
  readonly name: string;
  readonly namespace: string;
  /** The host's IPv4 address on the test subnet. */
  readonly address: string;
  /** The bridge port of this host's veth, in the bridge namespace. */
  readonly bridgePort: string;
}

export interface Exit {
  code: number | null;
  signal: NodeJS.Signals | null;
}

export interface ExecOptions {
  /** Kill the process (SIGKILL) after this long and fail. */
  timeoutMs?: number;
  /** Written to stdin, which is then closed. */
  input?: string | Buffer;
  /** Reject unless the exit code is 0 (default true). */
  check?: boolean;
  env?: NodeJS.ProcessEnv;
  cwd?: string;
}

export interface ExecResult extends Exit {
  stdout: string;
  stderr: string;
}

export interface SpawnOptions {
  env?: NodeJS.ProcessEnv;
  cwd?: string;
}

/** A process running in a host's namespace, its output collected as lines. */
export interface NetnsProcess {
  readonly host: Host;
  readonly argv: readonly string[];
  readonly pid: number;
  readonly exited: Promise<Exit>;
  /** undefined while it runs. */
  exit(): Exit | undefined;
  stdout(): string;
  stderr(): string;
  /** stdout and stderr lines in arrival order (the newest LOG_LINES_MAX). */
  lines(): readonly string[];
  /** Resolves with the first line (from index `from` on) matching `pattern`. */
  waitForLine(pattern: RegExp, timeoutMs: number, from?: number): Promise<RegExpExecArray>;
  /** Sends `signal` and waits (bounded) for the exit; SIGKILL if it does not come. */
  stop(signal?: NodeJS.Signals, timeoutMs?: number): Promise<Exit>;
}

export interface NetworkOptions {
  hosts: number;
  /** Namespace name prefix; default `cstn`. Stale namespaces are looked for per prefix. */
  name?: string;
}

function assertPrefix(prefix: string): void {
  assert.match(prefix, PREFIX_PATTERN, `network name must match ${PREFIX_PATTERN}`);
}

/** `<pid>-<start time, base 36>`: names the owner so a later run can tell it is gone. */
function ownerTag(pid: number): string {
  const start = processStartTime(pid);
  assert.ok(start !== undefined, `no start time for pid ${pid} (is /proc mounted?)`);
  return `${pid}-${Number(start).toString(36)}`;
}

// ---------------------------------------------------------------------------------------
// Running commands in the root namespace (only `ip` itself) and in host namespaces.

/** Runs `ip ARGS` synchronously; throws with its stderr on failure. */
function ip(args: readonly string[]): string {
  const result = spawnSync('ip', args, { encoding: 'utf8', timeout: IP_COMMAND_TIMEOUT_MS });
  if (result.error) throw new Error(`ip ${args.join(' ')}: ${result.error.message}`);
  if (result.status !== 0) {
    throw new Error(`ip ${args.join(' ')} failed (${result.status}): ${result.stderr.trim()}`);
  }
  return result.stdout;
}

/** One name for the path between two hosts, whichever way round they are given. */
function pathKey(a: Host, b: Host): string {
  return [a.name, b.name].sort().join('<->');
}

export function listNamespaces(): string[] {
  const text = ip(['-j', 'netns', 'list']).trim();
  if (text === '') return [];
  const list = JSON.parse(text) as Array<{ name: string }>;
  return list.map((entry) => entry.name);
}

function namespacePids(namespace: string): number[] {
  return ip(['netns', 'pids', namespace])
    .split('\n')
    .filter((line) => line.trim() !== '')
    .map(Number);
}

/** SIGKILLs every process left in the namespace, then deletes it. */
function removeNamespace(namespace: string): void {
  for (const pid of namespacePids(namespace)) {
    try {
      process.kill(pid, 'SIGKILL');
    } catch {
      // gone already
    }
  }
  ip(['netns', 'delete', namespace]);
}

/**
 * Removes the namespaces (and their processes and work dirs) of earlier runs with this
 * prefix whose owning process is gone: a run killed with SIGKILL cannot clean up after
 * itself. Namespaces of runs that are still going are left alone. Returns what it removed.
 */
export function cleanupStaleNetworks(prefix = PREFIX_DEFAULT): string[] {
  assertPrefix(prefix);
  const pattern = new RegExp(`^${prefix}-(\\d+)-([0-9a-z]+)-[0-9a-f]{4}-[a-z0-9]+$`);
  const removed: string[] = [];
  for (const namespace of listNamespaces()) {
    const match = pattern.exec(namespace);
    if (match === null) continue;
    const pid = Number(match[1]);
    const start = processStartTime(pid);
    const alive =
      isProcessAlive(pid) && start !== undefined && Number(start).toString(36) === match[2];
    if (alive) continue;
    removeNamespace(namespace);
    removed.push(namespace);
  }
  const runIds = new Set(removed.map((name) => name.slice(0, name.lastIndexOf('-'))));
  for (const entry of fs.readdirSync(os.tmpdir())) {
    const runId = [...runIds].find((id) => entry.startsWith(`${id}-`));
    if (runId !== undefined)
      fs.rmSync(path.join(os.tmpdir(), entry), { recursive: true, force: true });
  }
  return removed;
}

// ---------------------------------------------------------------------------------------

/** Kept on every network so that a process exit without destroy() still cleans up. */
const liveNetworks = new Set<TestNetwork>();
let exitHookInstalled = false;

function installExitHook(): void {
  if (exitHookInstalled) return;
  exitHookInstalled = true;
  // 'exit' handlers must be synchronous; destroySync() is. SIGKILL skips this, which is
  // what cleanupStaleNetworks() is for.
  process.on('exit', () => {
    for (const network of liveNetworks) network.destroySync();
  });
}

export class TestNetwork {
  /** `<prefix>-<pid>-<start>-<random>`: the common start of every name of this run. */
  readonly id: string;
  readonly prefix: string;
  /** e.g. `10.231.17.0/24`. */
  readonly subnet: string;
  readonly bridgeNamespace: string;
  readonly hosts: readonly Host[];
  /** The namespace etcd runs in (startEtcd), with its own address. */
  readonly etcdHost: Host;
  /** A temp dir for this run (etcd data, daemon data dirs); removed by destroy(). */
  readonly workDir: string;

  private readonly processes = new Set<TrackedProcess>();
  private readonly daemons = new Map<string, Set<Daemon>>();
  private readonly cut = new Set<string>();
  /** Host pairs cut from each other by cutBetween(), as pathKey()s. */
  private readonly cutPaths = new Set<string>();
  private readonly destroyHooks: Array<() => Promise<void> | void> = [];
  private namespaces: string[] = [];
  private destroyed = false;

  constructor(options: NetworkOptions) {
    const prefix = options.name ?? PREFIX_DEFAULT;
    assertPrefix(prefix);
    assert.ok(
      Number.isInteger(options.hosts) && options.hosts >= 0 && options.hosts <= HOSTS_MAX,
      `hosts must be 0..${HOSTS_MAX}`,
    );
    this.prefix = prefix;
    this.id = `${prefix}-${ownerTag(process.pid)}-${crypto.randomBytes(2).toString('hex')}`;
    // The bridge is private to this run, so concurrent runs could share a subnet; a
    // per-process third octet only keeps addresses in logs telling runs apart.
    const third = 1 + (process.pid % 250);
    const base = `${SUBNET_FIRST_OCTETS}.${third}`;
    this.subnet = `${base}.0/${SUBNET_PREFIX_LENGTH}`;
    this.bridgeNamespace = `${this.id}-br`;
    const host = (name: string, octet: number): Host => ({
      name,
      namespace: `${this.id}-${name}`,
      address: `${base}.${octet}`,
      bridgePort: `p-${name}`,
    });
    this.etcdHost = host('etcd', ETCD_HOST_OCTET);
    this.hosts = Array.from({ length: options.hosts }, (_, i) =>
      host(`h${i}`, HOST_OCTET_BASE + i),
    );
    for (const each of this.allHosts()) {
      assert.ok(each.bridgePort.length <= INTERFACE_NAME_BYTES_MAX, `${each.bridgePort} too long`);
    }
    this.workDir = fs.mkdtempSync(path.join(os.tmpdir(), `${this.id}-`));
  }

  allHosts(): Host[] {
    return [this.etcdHost, ...this.hosts];
  }

  /** A host by name (`h0`, `etcd`) or index into hosts. */
  host(which: string | number): Host {
    const found =
      typeof which === 'number' ? this.hosts[which] : this.allHosts().find((h) => h.name === which);
    assert.ok(found, `no host ${which} in ${this.id}`);
    return found;
  }

  /** Builds the namespaces, bridge and links. Called once, by createNetwork(). */
  build(): void {
    const bridge = this.bridgeNamespace;
    this.addNamespace(bridge);
    ip(['-n', bridge, 'link', 'set', 'lo', 'up']);
    // No STP and no forward delay: a port is forwarding the moment it comes up, so
    // restoreHost() takes effect at once.
    ip(['-n', bridge, 'link', 'add', BRIDGE_INTERFACE, 'type', 'bridge']);
    ip(['-n', bridge, 'link', 'set', BRIDGE_INTERFACE, 'type', 'bridge', 'stp_state', '0']);
    ip(['-n', bridge, 'link', 'set', BRIDGE_INTERFACE, 'type', 'bridge', 'forward_delay', '0']);
    ip(['-n', bridge, 'link', 'set', BRIDGE_INTERFACE, 'up']);
    for (const host of this.allHosts()) {
      this.addNamespace(host.namespace);
      // Created inside the bridge namespace with its peer placed straight into the host
      // namespace: neither end ever exists in the root namespace.
      ip(
        ['-n', bridge, 'link', 'add', host.bridgePort, 'type', 'veth'].concat([
          'peer',
          'name',
          HOST_INTERFACE,
          'netns',
          host.namespace,
        ]),
      );
      ip(['-n', bridge, 'link', 'set', host.bridgePort, 'master', BRIDGE_INTERFACE, 'up']);
      const cidr = `${host.address}/${SUBNET_PREFIX_LENGTH}`;
      ip(['-n', host.namespace, 'addr', 'add', cidr, 'dev', HOST_INTERFACE]);
      ip(['-n', host.namespace, 'link', 'set', 'lo', 'up']);
      ip(['-n', host.namespace, 'link', 'set', HOST_INTERFACE, 'up']);
    }
  }

  private addNamespace(namespace: string): void {
    // Recorded before it exists, so a failure half-way is still cleaned up.
    this.namespaces.push(namespace);
    ip(['netns', 'add', namespace]);
  }

  /** Runs ARGV in the host's namespace and collects its output. */
  exec(host: Host, argv: readonly string[], options: ExecOptions = {}): Promise<ExecResult> {
    const timeoutMs = options.timeoutMs ?? EXEC_TIMEOUT_DEFAULT_MS;
    const child = this.spawn(host, argv, options, options.input);
    let timedOut = false;
    const timer = setTimeout(() => {
      timedOut = true;
      void child.stop('SIGKILL');
    }, timeoutMs);
    return child.exited.then((exit) => {
      clearTimeout(timer);
      const result = { ...exit, stdout: child.stdout(), stderr: child.stderr() };
      const what = `${host.name}: ${argv.join(' ')}`;
      if (timedOut) throw new Error(`${what} timed out after ${timeoutMs} ms\n${result.stderr}`);
      if ((options.check ?? true) && exit.code !== 0) {
        throw new Error(`${what} failed (${JSON.stringify(exit)})\n${result.stderr}`);
      }
      return result;
    });
  }

  /** Starts ARGV in the host's namespace; it is killed by destroy() if still running. */
  spawn(
    host: Host,
    argv: readonly string[],
    options: SpawnOptions = {},
    input?: string | Buffer,
  ): NetnsProcess {
    assert.ok(!this.destroyed, `${this.id} is destroyed`);
    assert.ok(argv.length > 0, 'empty argv');
    assert.ok(this.processes.size < PROCESSES_MAX, `more than ${PROCESSES_MAX} processes`);
    assert.ok(this.allHosts().includes(host), `${host.name} is not a host of ${this.id}`);
    const child = spawnChild('ip', ['netns', 'exec', host.namespace, ...argv], {
      stdio: [input === undefined ? 'ignore' : 'pipe', 'pipe', 'pipe'],
      env: { ...process.env, ...options.env },
      cwd: options.cwd,
    });
    const tracked = new TrackedProcess(host, argv, child);
    this.processes.add(tracked);
    void tracked.exited.then(() => this.processes.delete(tracked));
    if (input !== undefined) child.stdin?.end(input);
    return tracked;
  }

  /** Processes started in this host (or all hosts) that are still running. */
  running(host?: Host): NetnsProcess[] {
    return [...this.processes].filter((p) => host === undefined || p.host === host);
  }

  /**
   * Cuts the host off the network, as if its cable were pulled at the switch: its bridge
   * port goes down. The host keeps its address and routes; packets to and from it are
   * lost, so connections hang and time out rather than being refused.
   */
  cutHost(host: Host): void {
    ip(['-n', this.bridgeNamespace, 'link', 'set', host.bridgePort, 'down']);
    this.cut.add(host.name);
  }

  restoreHost(host: Host): void {
    ip(['-n', this.bridgeNamespace, 'link', 'set', host.bridgePort, 'up']);
    this.cut.delete(host.name);
  }

  isCut(host: Host): boolean {
    return this.cut.has(host.name);
  }

  /**
   * Cuts the path between two hosts only, both ways, leaving each reachable by everyone
   * else: e.g. a daemon cut off from etcd that still talks to its peers and clients.
   * Each side gets a blackhole route to the other's address, so packets are dropped and
   * connections hang as with cutHost(). Both directions, since a one-way cut would still
   * let, say, etcd's watch events in. restoreBetween() undoes it.
   */
  cutBetween(a: Host, b: Host): void {
    assert.notEqual(a, b, 'a host cannot be cut from itself');
    const key = pathKey(a, b);
    assert.ok(!this.cutPaths.has(key), `${key} is cut already`);
    ip(['-n', a.namespace, 'route', 'add', 'blackhole', `${b.address}/32`]);
    this.cutPaths.add(key);
    ip(['-n', b.namespace, 'route', 'add', 'blackhole', `${a.address}/32`]);
  }

  restoreBetween(a: Host, b: Host): void {
    const key = pathKey(a, b);
    if (!this.cutPaths.has(key)) return;
    ip(['-n', a.namespace, 'route', 'del', 'blackhole', `${b.address}/32`]);
    ip(['-n', b.namespace, 'route', 'del', 'blackhole', `${a.address}/32`]);
    this.cutPaths.delete(key);
  }

  /**
   * kill -9 of every process the harness started in the host (a host crash). Returns
   * the daemons that were running there; `restart()` on each starts it again with the
   * same arguments (same data dir, disks and addresses).
   */
  async killHost(host: Host): Promise<Daemon[]> {
    const daemons = [...(this.daemons.get(host.name) ?? [])].filter((d) => d.running());
    await Promise.all(this.running(host).map((p) => p.stop('SIGKILL')));
    return daemons;
  }

  /** Bookkeeping for killHost(); called by startDaemon(). */
  registerDaemon(daemon: Daemon): void {
    const set = this.daemons.get(daemon.host.name) ?? new Set<Daemon>();
    set.add(daemon);
    this.daemons.set(daemon.host.name, set);
    void daemon.process.exited.then(() => set.delete(daemon));
  }

  /** Runs at the start of destroy(), last registered first (e.g. a clean daemon stop). */
  onDestroy(hook: () => Promise<void> | void): void {
    this.destroyHooks.push(hook);
  }

  /**
   * Kills every process, deletes every namespace (which deletes the links in them) and
   * the work dir. Every step runs even if an earlier one fails; the failures are thrown
   * together at the end. Idempotent.
   */
  async destroy(): Promise<void> {
    if (this.destroyed) return;
    const errors: unknown[] = [];
    for (const hook of this.destroyHooks.splice(0).reverse()) {
      try {
        await hook();
      } catch (error) {
        errors.push(error);
      }
    }
    await Promise.all(
      [...this.processes].map((p) => p.stop('SIGKILL').catch((e) => errors.push(e))),
    );
    errors.push(...this.destroySync());
    if (errors.length > 0) throw new AggregateError(errors, `destroying ${this.id} failed`);
  }

  /** The synchronous part of destroy(), also run from the process 'exit' hook. */
  destroySync(): unknown[] {
    const errors: unknown[] = [];
    this.destroyed = true;
    liveNetworks.delete(this);
    for (const p of this.processes) p.kill('SIGKILL');
    // Hosts first, bridge last: each host namespace takes its veth pair with it.
    for (const namespace of this.namespaces.splice(0).reverse()) {
      try {
        if (listNamespaces().includes(namespace)) removeNamespace(namespace);
      } catch (error) {
        errors.push(error);
      }
    }
    try {
      fs.rmSync(this.workDir, { recursive: true, force: true });
    } catch (error) {
      errors.push(error);
    }
    return errors;
  }

  /** Namespaces of this run that exist now (empty after destroy()). */
  existingNamespaces(): string[] {
    return listNamespaces().filter((name) => name.startsWith(`${this.id}-`));
  }
}

/**
 * Builds a private network of `hosts` host namespaces plus one for etcd, after removing
 * stale namespaces of crashed runs with the same prefix. On failure it is torn down.
 */
export function createNetwork(options: NetworkOptions): TestNetwork {
  cleanupStaleNetworks(options.name ?? PREFIX_DEFAULT);
  const network = new TestNetwork(options);
  installExitHook();
  liveNetworks.add(network);
  try {
    network.build();
  } catch (error) {
    const errors = network.destroySync();
    throw errors.length === 0 ? error : new AggregateError([error, ...errors], String(error));
  }
  return network;
}

// ---------------------------------------------------------------------------------------

class TrackedProcess implements NetnsProcess {
  readonly pid: number;
  readonly exited: Promise<Exit>;
  private exitValue: Exit | undefined;
  private readonly out = new OutputBuffer();
  private readonly err = new OutputBuffer();
  private readonly lineList: string[] = [];
  private linesDropped = 0;
  private readonly waiters = new Set<() => void>();

  constructor(
    readonly host: Host,
    readonly argv: readonly string[],
    private readonly child: ChildProcess,
  ) {
    assert.ok(child.pid !== undefined, `could not start ip netns exec for ${argv[0]}`);
    this.pid = child.pid;
    let partialOut = '';
    let partialErr = '';
    child.stdout?.setEncoding('utf8').on('data', (chunk: string) => {
      this.out.append(chunk);
      partialOut = this.addLines(partialOut + chunk);
    });
    child.stderr?.setEncoding('utf8').on('data', (chunk: string) => {
      this.err.append(chunk);
      partialErr = this.addLines(partialErr + chunk);
    });
    // 'close' (not 'exit') so that all output has been read when exited resolves.
    this.exited = new Promise((resolve) => {
      child.on('error', (error) => this.err.append(`spawn failed: ${error.message}\n`));
      child.on('close', (code, signal) => {
        for (const rest of [partialOut, partialErr]) if (rest !== '') this.addLines(rest + '\n');
        this.exitValue = { code, signal };
        this.notify();
        resolve(this.exitValue);
      });
    });
  }

  private addLines(text: string): string {
    const parts = text.split('\n');
    const partial = parts.pop() as string;
    for (const line of parts) {
      this.lineList.push(line);
      if (this.lineList.length > LOG_LINES_MAX) {
        this.lineList.shift();
        this.linesDropped += 1;
      }
    }
    if (parts.length > 0) this.notify();
    return partial;
  }

  private notify(): void {
    for (const waiter of [...this.waiters]) waiter();
  }

  exit(): Exit | undefined {
    return this.exitValue;
  }
  stdout(): string {
    return this.out.text();
  }
  stderr(): string {
    return this.err.text();
  }
  lines(): readonly string[] {
    return this.lineList;
  }

  kill(signal: NodeJS.Signals): void {
    if (this.exitValue === undefined) this.child.kill(signal);
  }

  waitForLine(pattern: RegExp, timeoutMs: number, from = 0): Promise<RegExpExecArray> {
    return new Promise((resolve, reject) => {
      // Absolute line numbers, so that dropping old lines does not move `from`.
      let next = from;
      const check = (): boolean => {
        for (
          let i = Math.max(next, this.linesDropped);
          i < this.linesDropped + this.lineList.length;
          i++
        ) {
          const match = pattern.exec(this.lineList[i - this.linesDropped] as string);
          if (match !== null) {
            finish();
            resolve(match);
            return true;
          }
        }
        next = this.linesDropped + this.lineList.length;
        if (this.exitValue !== undefined) {
          finish();
          reject(
            new Error(
              `${this.describe()} exited (${JSON.stringify(this.exitValue)}) ` +
                `before logging ${pattern}:\n${this.tail()}`,
            ),
          );
          return true;
        }
        return false;
      };
      const timer = setTimeout(() => {
        finish();
        reject(
          new Error(`${this.describe()}: no ${pattern} within ${timeoutMs} ms:\n${this.tail()}`),
        );
      }, timeoutMs);
      const waiter = (): void => void check();
      const finish = (): void => {
        clearTimeout(timer);
        this.waiters.delete(waiter);
      };
      if (!check()) this.waiters.add(waiter);
    });
  }

  async stop(signal: NodeJS.Signals = 'SIGTERM', timeoutMs = STOP_TIMEOUT_MS): Promise<Exit> {
    this.kill(signal);
    let timer: NodeJS.Timeout | undefined;
    const late = new Promise<undefined>((resolve) => {
      timer = setTimeout(() => resolve(undefined), timeoutMs);
    });
    const exit = await Promise.race([this.exited, late]).finally(() => clearTimeout(timer));
    if (exit !== undefined) return exit;
    this.kill('SIGKILL');
    await this.exited;
    throw new Error(`${this.describe()} did not exit within ${timeoutMs} ms of ${signal}`);
  }

  private describe(): string {
    return `${this.host.name}: ${this.argv.slice(0, 4).join(' ')} (pid ${this.pid})`;
  }

  private tail(): string {
    return this.lineList.slice(-40).join('\n');
  }
}

/** Keeps at most OUTPUT_CHARS_MAX characters and counts what it had to leave out. */
class OutputBuffer {
  private chunks: string[] = [];
  private chars = 0;
  private dropped = 0;
  append(chunk: string): void {
    if (this.chars + chunk.length > OUTPUT_CHARS_MAX) {
      this.dropped += chunk.length;
      return;
    }
    this.chunks.push(chunk);
    this.chars += chunk.length;
  }
  text(): string {
    const text = this.chunks.join('');
    return this.dropped === 0 ? text : `${text}\n[${this.dropped} more characters not kept]\n`;
  }
}

// ---------------------------------------------------------------------------------------
// etcd

export interface Etcd {
  /** The client URL, e.g. `http://10.231.17.2:2379`, reachable from every host. */
  readonly url: string;
  readonly host: Host;
  readonly dataDir: string;
  readonly process: NetnsProcess;
  stop(): Promise<Exit>;
}

/**
 * Starts a single-member etcd (/usr/bin/etcd) in the network's etcd namespace, listening
 * for clients on the test subnet, with its data in the work dir; resolves once
 * `etcdctl endpoint health` from a host namespace says it is healthy. Killed on destroy.
 */
export async function startEtcd(network: TestNetwork): Promise<Etcd> {
  const host = network.etcdHost;
  const url = `http://${host.address}:${ETCD_CLIENT_PORT}`;
  const peerUrl = `http://127.0.0.1:${ETCD_PEER_PORT}`;
  const dataDir = fs.mkdtempSync(path.join(network.workDir, 'etcd-'));
  const child = network.spawn(host, [
    'etcd',
    ...['--name', 'e0', '--data-dir', dataDir],
    ...['--listen-client-urls', `${url},http://127.0.0.1:${ETCD_CLIENT_PORT}`],
    ...['--advertise-client-urls', url],
    ...['--listen-peer-urls', peerUrl, '--initial-advertise-peer-urls', peerUrl],
    ...['--initial-cluster', `e0=${peerUrl}`, '--initial-cluster-state', 'new'],
    ...['--initial-cluster-token', network.id],
  ]);
  const etcd: Etcd = { url, host, dataDir, process: child, stop: () => child.stop('SIGTERM') };
  const deadline = Date.now() + ETCD_START_TIMEOUT_MS;
  // Probed from the first host when there is one: that proves the subnet path, not
  // only etcd's loopback.
  const probeHost = network.hosts[0] ?? host;
  for (;;) {
    const health = await etcdctl(network, probeHost, etcd, ['endpoint', 'health'], false);
    if (health.code === 0) return etcd;
    const exit = child.exit();
    if (exit !== undefined || Date.now() > deadline) {
      await child.stop('SIGKILL');
      throw new Error(
        `etcd ${exit ? `exited (${JSON.stringify(exit)})` : 'not healthy in time'}:\n` +
          `${health.stderr}\n${child.lines().slice(-30).join('\n')}`,
      );
    }
    await sleep(POLL_INTERVAL_MS * 4);
  }
}

/** Runs `etcdctl --endpoints URL ARGS` (API v3) in the host's namespace. */
export function etcdctl(
  network: TestNetwork,
  host: Host,
  etcd: Etcd,
  args: readonly string[],
  check = true,
): Promise<ExecResult> {
  return network.exec(
    host,
    ['etcdctl', `--endpoints=${etcd.url}`, '--dial-timeout=1s', '--command-timeout=2s', ...args],
    { env: { ETCDCTL_API: '3' }, check, timeoutMs: 10_000 },
  );
}

// ---------------------------------------------------------------------------------------
// Daemons and the CLI

export interface DaemonOptions {
  /**
   * Resolve once a log line matches (default: `daemon.ready`, which the daemon logs once
   * it serves); null to return at once.
   */
  ready?: RegExp | null;
  readyTimeoutMs?: number;
  env?: NodeJS.ProcessEnv;
}

/** A `cistern daemon` in a host's namespace. */
export class Daemon {
  constructor(
    readonly network: TestNetwork,
    readonly host: Host,
    /** The arguments after `cistern daemon`. */
    readonly args: readonly string[],
    readonly process: NetnsProcess,
    private readonly options: DaemonOptions,
  ) {}

  /** The value of --data-dir, if given. */
  get dataDir(): string | undefined {
    const index = this.args.indexOf('--data-dir');
    return index < 0 ? undefined : this.args[index + 1];
  }

  running(): boolean {
    return this.process.exit() === undefined;
  }

  log(): readonly string[] {
    return this.process.lines();
  }

  waitForLog(pattern: RegExp, timeoutMs: number, from?: number): Promise<RegExpExecArray> {
    return this.process.waitForLine(pattern, timeoutMs, from);
  }

  /** admin.json of its data dir, once it has written it. */
  admin(): AdminFile | undefined {
    const dir = this.dataDir;
    return dir === undefined ? undefined : readAdminFile(dir);
  }

  stop(signal: NodeJS.Signals = 'SIGTERM'): Promise<Exit> {
    return this.process.stop(signal);
  }

  /** Starts the same daemon again (after a stop or killHost()). */
  restart(options: DaemonOptions = this.options): Promise<Daemon> {
    assert.ok(!this.running(), `${this.host.name}: restart of a running daemon`);
    return startDaemon(this.network, this.host, this.args, options);
  }
}

/**
 * Spawns `node bin/cistern daemon ARGS` in the host's namespace and (by default) waits
 * for it to log `daemon.ready`. The caller picks every flag; for the single-host daemon
 * of today that is `--data-dir DIR --nbd <host.address>:PORT --admin 127.0.0.1:0`.
 */
export async function startDaemon(
  network: TestNetwork,
  host: Host,
  args: readonly string[],
  options: DaemonOptions = {},
): Promise<Daemon> {
  const child = network.spawn(host, [process.execPath, CISTERN_BIN, 'daemon', ...args], {
    ...(options.env ? { env: options.env } : {}),
  });
  const daemon = new Daemon(network, host, args, child, options);
  network.registerDaemon(daemon);
  const ready = options.ready === undefined ? /\bdaemon\.ready\b/ : options.ready;
  if (ready !== null) {
    await daemon.waitForLog(ready, options.readyTimeoutMs ?? DAEMON_START_TIMEOUT_MS);
  }
  return daemon;
}

/** Runs `cistern ARGS` in the host's namespace (where its daemon's admin API is). */
export function cistern(
  network: TestNetwork,
  host: Host,
  args: readonly string[],
  options: ExecOptions = {},
): Promise<ExecResult> {
  return network.exec(host, [process.execPath, CISTERN_BIN, ...args], options);
}

// ---------------------------------------------------------------------------------------
// Reachability probes, with node itself (no ping on a minimal machine)

const ECHO_SERVER = `
const net = require('node:net');
const [host, port] = [process.argv[1], Number(process.argv[2])];
net.createServer((socket) => socket.pipe(socket)).listen(port, host, () => console.log('listening'));
`;

const ECHO_PROBE = `
const net = require('node:net');
const [host, port, timeoutMs] = [process.argv[1], Number(process.argv[2]), Number(process.argv[3])];
const socket = net.connect({ host, port });
const timer = setTimeout(() => { console.log('timeout'); process.exit(2); }, timeoutMs);
socket.on('error', (error) => { console.log(error.code); process.exit(1); });
socket.on('connect', () => socket.write('cistern-echo'));
socket.on('data', (data) => {
  if (data.toString() === 'cistern-echo') { clearTimeout(timer); console.log('ok'); socket.end(); }
});
`;

/** A TCP echo server on the host's address; resolves once it listens. */
export async function startEchoServer(
  network: TestNetwork,
  host: Host,
  port: number,
): Promise<NetnsProcess> {
  const child = network.spawn(host, [process.execPath, '-e', ECHO_SERVER, host.address, `${port}`]);
  await child.waitForLine(/^listening$/, 10_000);
  return child;
}

/** Whether a TCP echo from `from` to address:port comes back within timeoutMs. */
export async function canReach(
  network: TestNetwork,
  from: Host,
  address: string,
  port: number,
  timeoutMs = 1000,
): Promise<boolean> {
  const result = await network.exec(
    from,
    [process.execPath, '-e', ECHO_PROBE, address, `${port}`, `${timeoutMs}`],
    { check: false, timeoutMs: timeoutMs + 10_000 },
  );
  return result.code === 0 && result.stdout.trim() === 'ok';
}

export function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}
