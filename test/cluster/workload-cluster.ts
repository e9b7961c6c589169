// The shared part of the cluster tests that run under a verified write workload
// (failures.test.ts, peering.test.ts, catch-up.test.ts): a real etcd and `cistern daemon --etcd` processes
// in their own network namespaces (harness.ts), a pool `rep` of size 3, min-size 2,
// failure domain host, and the workload process (workload.ts) driven from a client
// namespace. Not a test file: the tests keep their own faults and their own judgement of
// how many writes a step must show; what they share is how the cluster is set up, how
// the workload is started, watched, paused and stopped, and how a volume is verified.
// (workload.ts is the program that runs in the client namespace; this is the test's
// side of it, kept apart so that the workload process never loads the harness.)

import { strict as assert } from 'node:assert';
import fs from 'node:fs';
import path from 'node:path';
import type { TestContext } from 'node:test';
import { unpack } from 'msgpackr';
import type { ClusterState } from '../../src/cluster/state';
import {
  cistern,
  createNetwork,
  Daemon,
  Etcd,
  etcdctl,
  ExecResult,
  Host,
  NBD_PORT,
  NetnsProcess,
  sleep,
  startDaemon,
  startEtcd,
  TestNetwork,
} from './harness';
import type { RunConfig, RunSummary, Target, VerifyConfig, VerifySummary } from './workload';

const MiB = 1024 * 1024;
export const PEER_PORT = 10811;
export const VOLUME_BYTES = 64 * MiB;
const WORKLOAD = path.join(__dirname, 'workload.js');
/** How often `waitForStatus` asks: each ask is one `cistern status` process. */
const STATUS_POLL_MS = 500;
/** How often `Workload.writes` looks at the workload's progress lines (printed every 200 ms). */
const PROGRESS_POLL_MS = 100;
/** A progress line must follow a pause request within this (the workload prints every 200 ms). */
const PROGRESS_LINE_TIMEOUT_MS = 5000;
/** The workload notes a crash window between two requests: well within this. */
const CRASH_WINDOW_TIMEOUT_MS = 10_000;

/** What `cistern status --json` tells the tests. */
export interface Status {
  health: string;
  epoch: number;
  hostsUp: string[];
  hostsDown: string[];
  disks: Array<{ id: number; host: string; path: string; up: boolean; in: boolean }>;
  pgStates: Record<'active+clean' | 'active+degraded' | 'inactive', number>;
  recovery: { objectsDegraded: number; objectsMisplaced: number; staleMembers: number };
}

export interface Workload {
  volume: string;
  /** The volume's id in the cluster map (placement: objectToPg). */
  id: number;
  process: NetnsProcess;
  /** Resolves once the workload has made `count` more writes than it had at the call. */
  writes(count: number): Promise<void>;
  /** Stops starting requests; resolves once none is in flight. */
  pause(): Promise<void>;
  resume(): void;
  /**
   * Announces a crash of every daemon ('open', SIGUSR1) or that they are back ('closed',
   * SIGUSR2); resolves once the workload has noted it (kill the daemons only then).
   */
  crashWindow(state: 'open' | 'closed'): Promise<void>;
  stop(): Promise<RunSummary>;
}

export interface WorkloadClusterOptions {
  /** Hosts h0… that run a daemon from the start. */
  clusterHosts: number;
  /** Hosts after those that run no daemon at first; the last one is the client. */
  otherHosts: number;
  /** How long a wait for every PG active+clean may take. */
  cleanTimeoutMs: number;
  /** How long `Workload.writes` and `Workload.pause` may take. */
  progressTimeoutMs: number;
  /** How long the workload retries one request (RunConfig.retryMsMax). */
  retryMsMax: number;
  /** A bound on a workload's run even if it is never stopped. */
  workloadDurationMsMax: number;
  /** PGs of the pool `rep` (default: the CLI's). */
  pgCount?: number;
}

export class WorkloadCluster {
  readonly network: TestNetwork;
  /** Runs no daemon: the workload, the CLI and the checks run here. */
  readonly client: Host;
  etcd!: Etcd;
  secretFile!: string;
  /** The daemon running on each host now. */
  readonly daemons = new Map<string, Daemon>();
  /** Volumes whose workload has stopped, each with its model file. */
  readonly models = new Map<string, string>();
  /** Every volume a workload was started on, with its size. */
  readonly sizes = new Map<string, number>();

  constructor(readonly options: WorkloadClusterOptions) {
    assert.ok(options.otherHosts >= 1, 'no host left for the client');
    // Made here, before anything that can fail, so that destroy() always has it.
    this.network = createNetwork({ hosts: options.clusterHosts + options.otherHosts });
    this.client = this.network.host(options.clusterHosts + options.otherHosts - 1);
  }

  /** etcd, `cluster init`, a daemon on each cluster host, then the pool `rep`. */
  async start(): Promise<void> {
    this.etcd = await startEtcd(this.network);
    this.secretFile = path.join(this.network.workDir, 'cluster.secret');
    await cistern(this.network, this.client, [
      ...['cluster', 'init', '--etcd', this.etcd.url, '--secret-file', this.secretFile],
    ]);
    const hosts = this.network.hosts.slice(0, this.options.clusterHosts);
    const started = await Promise.all(
      hosts.map((host) => startDaemon(this.network, host, this.daemonArgs(host))),
    );
    for (const daemon of started) this.daemons.set(daemon.host.name, daemon);
    await this.admin([
      ...['pool', 'create', 'rep', '--size', '3', '--min-size', '2'],
      ...['--failure-domain', 'host'],
      ...(this.options.pgCount === undefined ? [] : ['--pgs', `${this.options.pgCount}`]),
    ]);
  }

  /** Keeps every daemon's log when asked to (the work dir is removed), then tears down. */
  async destroy(): Promise<void> {
    const keep = process.env.CISTERN_TEST_LOG_DIR;
    if (keep !== undefined) {
      fs.mkdirSync(keep, { recursive: true });
      for (const running of this.network.running()) {
        const name = `${running.host.name}-${running.pid}.log`;
        fs.writeFileSync(path.join(keep, name), running.lines().join('\n'));
      }
    }
    await this.network.destroy();
  }

  daemonArgs(host: Host): string[] {
    const dataDir = path.join(this.network.workDir, `data-${host.name}`);
    return [
      ...['--etcd', this.etcd.url, '--host-id', host.name],
      ...['--listen', `${host.address}:${PEER_PORT}`, '--secret-file', this.secretFile],
      ...['--disk', `${dataDir}/disk0.img:1G`, '--data-dir', dataDir],
      ...['--nbd', `${host.address}:${NBD_PORT}`, '--admin', '127.0.0.1:0'],
    ];
  }

  admin(args: string[]): Promise<ExecResult> {
    return cistern(this.network, this.client, ['--etcd', this.etcd.url, ...args]);
  }

  async status(): Promise<Status> {
    return JSON.parse((await this.admin(['status', '--json'])).stdout) as Status;
  }

  /** The whole cluster state, straight from etcd (as every daemon sees it). */
  async readState(): Promise<ClusterState> {
    const result = await etcdctl(this.network, this.client, this.etcd, [
      ...['get', '/cistern/state', '-w', 'json'],
    ]);
    const reply = JSON.parse(result.stdout) as { kvs?: Array<{ value: string }> };
    const value = reply.kvs?.[0]?.value;
    assert.ok(value, 'no cluster state in etcd');
    return unpack(Buffer.from(value, 'base64')) as ClusterState;
  }

  async waitForStatus(
    what: string,
    done: (s: Status) => boolean,
    timeoutMs: number,
  ): Promise<Status> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const now = await this.status();
      if (done(now)) return now;
      if (Date.now() > deadline) {
        assert.fail(`${what}: not within ${timeoutMs} ms; status:\n${JSON.stringify(now)}`);
      }
      await sleep(STATUS_POLL_MS);
    }
  }

  /** Every host alive, every disk up and in, every PG active+clean (no stale member). */
  async waitForClean(t: TestContext): Promise<Status> {
    const started = Date.now();
    const s = await this.waitForStatus(
      'cluster clean',
      (s) =>
        s.health === 'ok' &&
        s.hostsDown.length === 0 &&
        s.disks.every((d) => d.up && d.in) &&
        s.pgStates['active+degraded'] === 0 &&
        s.pgStates.inactive === 0,
      this.options.cleanTimeoutMs,
    );
    t.diagnostic(`clean after ${Date.now() - started} ms (epoch ${s.epoch})`);
    return s;
  }

  /** Creates `volume` in pool `rep` and starts a workload on it through `gateways`. */
  async startWorkload(
    volume: string,
    gateways: Host[],
    seed: number,
    sizeBytes = VOLUME_BYTES,
  ): Promise<Workload> {
    const { network, models, options } = this;
    await this.admin(['volume', 'create', volume, '--size', `${sizeBytes}`, '--pool', 'rep']);
    this.sizes.set(volume, sizeBytes);
    const state = await this.readState();
    const spec = state.volumes.find((v) => v.name === volume);
    assert.ok(spec, `no volume ${volume}`);
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
      durationMsMax: options.workloadDurationMsMax,
      flushEvery: 32,
      queueDepth: 8,
      readPercent: 40,
      seed,
      progressMs: 200,
      retryMsMax: options.retryMsMax,
    };
    const child = network.spawn(this.client, [
      ...[process.execPath, WORKLOAD, JSON.stringify(config)],
    ]);
    type Progress = { writes: number; paused: boolean; inFlight: number };
    const progress = (): Progress | undefined => {
      const lines = child.lines();
      for (let i = lines.length - 1; i >= 0; i -= 1) {
        if ((lines[i] as string).startsWith('{"progress"')) {
          return (JSON.parse(lines[i] as string) as { progress: Progress }).progress;
        }
      }
      return undefined;
    };
    const writesNow = (): number => progress()?.writes ?? 0;
    const timeoutMs = options.progressTimeoutMs;
    return {
      volume,
      id: spec.id,
      process: child,
      async writes(count: number): Promise<void> {
        const goal = writesNow() + count;
        const deadline = Date.now() + timeoutMs;
        while (writesNow() < goal) {
          assert.ok(child.exit() === undefined, `workload exited: ${child.stderr()}`);
          assert.ok(
            Date.now() < deadline,
            `the workload made fewer than ${count} writes in ${timeoutMs} ms:\n` +
              child.lines().slice(-5).join('\n'),
          );
          await sleep(PROGRESS_POLL_MS);
        }
      },
      async pause(): Promise<void> {
        fs.writeFileSync(pauseFile, '');
        const deadline = Date.now() + timeoutMs;
        for (;;) {
          // A line printed after this call, so that it reflects the pause.
          const from = child.lines().length;
          await child.waitForLine(/^\{"progress"/, PROGRESS_LINE_TIMEOUT_MS, from);
          const now = progress();
          if (now?.paused && now.inFlight === 0) return;
          assert.ok(Date.now() < deadline, `the workload did not go idle: ${JSON.stringify(now)}`);
        }
      },
      resume(): void {
        fs.rmSync(pauseFile);
      },
      async crashWindow(state: 'open' | 'closed'): Promise<void> {
        const from = child.lines().length;
        process.kill(child.pid, state === 'open' ? 'SIGUSR1' : 'SIGUSR2');
        const line = new RegExp(`"crashWindow":"${state}"`);
        await child.waitForLine(line, CRASH_WINDOW_TIMEOUT_MS, from);
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

  /**
   * Reads the whole volume through `host`'s export and checks it against the model of
   * `modelOf` (by default its own; another volume's model is for showing the check can
   * fail, and then mismatches are returned, not asserted).
   */
  async verifyThrough(host: Host, volume: string, modelOf = volume): Promise<VerifySummary> {
    const modelFile = this.models.get(modelOf);
    assert.ok(modelFile, `no model for ${volume}`);
    const config: VerifyConfig = {
      mode: 'verify',
      targets: [target(host)],
      exportName: volume,
      modelFile,
    };
    const result = await this.network.exec(this.client, [
      ...[process.execPath, WORKLOAD, JSON.stringify(config)],
    ]);
    const verified = (
      JSON.parse(result.stdout.trim().split('\n').pop() as string) as { verify: VerifySummary }
    ).verify;
    assert.equal(verified.blocks, (this.sizes.get(volume) ?? VOLUME_BYTES) / 4096);
    assert.ok(verified.blocksWritten > 0);
    if (modelOf !== volume) return verified;
    assert.equal(
      verified.mismatches,
      0,
      `${volume} through ${host.name}: ${JSON.stringify(verified.mismatchDetails)}`,
    );
    return verified;
  }
}

export function target(host: Host): Target {
  return { host: host.address, port: NBD_PORT };
}

/**
 * Checks a workload's summary: nothing wrong seen, every failure retried to success, at
 * least `writesMin` writes (each test knows how many its steps waited for).
 */
export function judge(t: TestContext, summary: RunSummary, writesMin: number): void {
  const { mismatchDetails, errorDetails, ...counts } = summary;
  t.diagnostic(`workload: ${JSON.stringify(counts)}`);
  if (errorDetails.length > 0) t.diagnostic(`first errors: ${JSON.stringify(errorDetails)}`);
  assert.equal(summary.mismatches, 0, `mismatches: ${JSON.stringify(mismatchDetails)}`);
  assert.equal(summary.unresolved, 0, `writes never acknowledged: ${JSON.stringify(counts)}`);
  assert.ok(summary.writes >= writesMin, `too few writes: ${summary.writes} < ${writesMin}`);
  assert.ok(summary.reads > 0, 'no reads were verified');
  assert.ok(summary.flushes > 0, 'no flushes');
}
