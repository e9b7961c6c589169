// What the benchmarks of a host leaving a cluster share (recovery.ts: killed, its data
// re-replicated; catch-up.ts: cut off and back, then drained), none of which measures
// anything by itself: the four-host cluster filled whole before the host leaves (a real
// etcd, `cistern daemon --etcd` on h0–h3 in their own network namespaces, pool size 3,
// one volume written with 1 MiB writes through h0 from the client namespace h4), the
// status they poll, and the daemons' log lines they time recovery by.

import {
  cistern,
  type Daemon,
  type Host,
  startEtcd,
  type TestNetwork,
} from '../test/cluster/harness';
import { MiB } from './bench';
import { runFio, startCluster, type Target } from './cluster';

export const GiB = 2 ** 30;
export const CLUSTER_HOSTS = 4;
/** The namespace the clients and the admin commands run in: no daemon. */
export const CLIENT_INDEX = CLUSTER_HOSTS;
/** The host that leaves: not h0, which serves the client's NBD export. */
export const VICTIM_INDEX = 3;
/** Room for the store's header and slot rounding: after the loss each survivor holds all. */
const DISK_SLACK_BYTES = 256 * MiB;
/** Recovery of a few GiB on a shared 2-core machine: minutes; beyond this it is stuck. */
export const RECOVERY_TIMEOUT_MS = 30 * 60_000;

/** What `cistern status --json` tells the benchmarks. */
export interface Status {
  hostsDown: string[];
  disks: Array<{ id: number; host: string; up: boolean; in: boolean }>;
  pgStates: Record<'active+clean' | 'active+degraded' | 'inactive', number>;
}

export interface FilledCluster {
  etcdUrl: string;
  target: Target;
  daemons: Daemon[];
  client: Host;
  victim: Host;
  /** How long writing the volume whole took. */
  fillMs: number;
  status(): Promise<Status>;
}

/**
 * etcd and the cluster on `network` (CLUSTER_HOSTS + 1 hosts), files in `directory`, one
 * volume of `sizeBytes` written whole; `daemonArgs` go to every daemon.
 */
export async function startFilledCluster(
  network: TestNetwork,
  directory: string,
  sizeBytes: number,
  daemonArgs: readonly string[] = [],
): Promise<FilledCluster> {
  const client = network.host(CLIENT_INDEX);
  const etcd = await startEtcd(network);
  const { target, daemons } = await startCluster(network, etcd.url, {
    hosts: CLUSTER_HOSTS,
    directory,
    diskBytes: sizeBytes + DISK_SLACK_BYTES,
    volumeBytes: sizeBytes,
    daemonArgs,
  });
  const started = Date.now();
  await runFio(network, client, target.uri, {
    rw: 'write',
    blockBytes: MiB,
    iodepth: 8,
    sizeBytes,
  });
  return {
    etcdUrl: etcd.url,
    target,
    daemons,
    client,
    victim: network.host(VICTIM_INDEX),
    fillMs: Date.now() - started,
    status: async () =>
      JSON.parse(
        (await cistern(network, client, ['--etcd', etcd.url, 'status', '--json'])).stdout,
      ) as Status,
  };
}

/** Every PG active, none degraded. */
export function allClean(status: Status): boolean {
  return status.pgStates['active+degraded'] === 0 && status.pgStates.inactive === 0;
}

/** The time of a daemon's log line (`ISO-time event key=value…`). */
export function logTime(line: string): number {
  return Date.parse(line.slice(0, line.indexOf(' ')));
}

/** A numeric `name=` field of a log line. */
export function field(line: string, name: string): number {
  const match = new RegExp(`\\b${name}=(\\d+)`).exec(line);
  if (!match) throw new Error(`no ${name}= in ${line}`);
  return Number(match[1]);
}

/** The daemons' `recovery.pg-done` lines logged at or after `from` (of `disk` only, if given). */
export function pgDoneLines(daemons: readonly Daemon[], from: number, disk?: number): string[] {
  return daemons
    .flatMap((daemon) => daemon.log())
    .filter(
      (line) =>
        /\brecovery\.pg-done\b/.test(line) &&
        logTime(line) >= from &&
        (disk === undefined || field(line, 'disk') === disk),
    );
}

export function check(condition: boolean, message: string): asserts condition {
  if (!condition) throw new Error(message);
}
