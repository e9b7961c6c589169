// `cistern daemon`: the storage daemon in the foreground, logging one line per event.

import fs from 'node:fs';
import path from 'node:path';
import { parseHostPort } from '../../src/daemon/address';
import { ADMIN_DEFAULT_HOST, ADMIN_DEFAULT_PORT } from '../../src/daemon/admin-server';
import {
  ISCSI_DEFAULT_PORT,
  NBD_DEFAULT_HOST,
  NBD_DEFAULT_PORT,
  runDaemon,
} from '../../src/daemon/daemon';
import { createLog } from '../../src/daemon/log';
import { isCisternError } from '../../src/util/errors';
import { parseSize } from '../../src/util/units';
import { adminOptions, resolveDataDir } from '../admin-client';
import { Command, ParsedArgs, opt, usageError } from '../command';
import { ClusterOptions } from '../../src/daemon/cluster';
import { parseEndpoints } from '../../src/cluster/etcd';
import { RECOVERY_BYTES_PER_SECOND_DEFAULT } from '../../src/replication/recovery';
import { SCRUB_BYTES_PER_SECOND_DEFAULT } from '../../src/replication/scrub';
import { BackgroundBandwidth } from '../../src/daemon/daemon';

const MiB = 2 ** 20;
/**
 * Upper bound of --recovery-bandwidth and --scrub-bandwidth: 64 GiB/s is beyond any
 * host's disks and network today, so a larger figure is a typo (bytes for MiB, say).
 */
export const BACKGROUND_BANDWIDTH_MIB_PER_S_MAX = 65536;

/**
 * `--disk PATH[:SIZE]`. Device names may contain ':' (`/dev/disk/by-path/pci-0000:00:1f.2`),
 * so an existing path is taken whole; otherwise a suffix after the last ':' that starts
 * with a digit must be a size.
 */
export function parseDiskSpec(text: string): { path: string; sizeBytes?: number } {
  if (text === '') throw usageError('--disk needs a path');
  const colon = text.lastIndexOf(':');
  const suffix = colon === -1 ? '' : text.slice(colon + 1);
  if (colon <= 0 || !/^\d/.test(suffix) || fs.existsSync(text)) return { path: text };
  let sizeBytes: number;
  try {
    sizeBytes = parseSize(suffix);
  } catch (error) {
    if (isCisternError(error)) throw usageError(`--disk ${text}: ${error.message}`);
    throw error;
  }
  if (sizeBytes <= 0) throw usageError(`--disk ${text}: the size must be more than 0`);
  return { path: text.slice(0, colon), sizeBytes };
}

export const daemon: Command = {
  path: ['daemon'],
  summary: 'run the storage daemon in the foreground (NBD and iSCSI servers, admin API)',
  description: `
Opens the datastore in the data directory and serves its volumes over NBD (export name
= volume name), with --iscsi also over iSCSI (target iqn.2026-11.io.cistern:VOLUME,
LUN 0; who may log in: cistern volume access), and its administration over an HTTP
admin API on loopback. On a new data
directory with no --disk, it creates three sparse 16 GiB disk files in DIR/disks; disks
are remembered, so later starts need no --disk. Once everything listens it writes
DIR/admin.json (mode 0600: admin address, bearer token, pid, NBD and iSCSI addresses) for the admin
commands to find it; a second daemon on the same directory is refused. SIGINT or
SIGTERM stops it cleanly: NBD requests in flight finish, the datastore is flushed, and
admin.json is removed. Logs go to stderr, one line per event (--json: one JSON object).`,
  options: [
    ...adminOptions,
    {
      name: 'disk',
      type: 'list',
      valueName: 'PATH[:SIZE]',
      help: 'a disk: a block device, or a file (created sparse at SIZE if missing)',
    },
    {
      name: 'nbd',
      type: 'string',
      valueName: 'HOST:PORT',
      default: `${NBD_DEFAULT_HOST}:${NBD_DEFAULT_PORT}`,
      help: 'where the NBD server listens (port 0: any free port)',
    },
    {
      name: 'iscsi',
      type: 'string',
      valueName: 'HOST:PORT',
      help: `also serve every volume as an iSCSI target here (e.g. 127.0.0.1:${ISCSI_DEFAULT_PORT}; port 0: any free port); off by default`,
    },
    {
      name: 'host-id',
      type: 'string',
      valueName: 'ID',
      help: "multi-host: this host's id in the cluster (with --etcd)",
    },
    {
      name: 'listen',
      type: 'string',
      valueName: 'IP:PORT',
      help: 'multi-host: where other daemons reach this one (peer protocol)',
    },
    {
      name: 'rack',
      type: 'string',
      valueName: 'R',
      help: "multi-host: this host's rack (default rack-0)",
    },
    {
      name: 'secret-file',
      type: 'string',
      valueName: 'F',
      help: 'multi-host: the cluster secret written by cistern cluster init (mode 0600)',
    },
    {
      name: 'down-out-interval',
      type: 'integer',
      valueName: 'S',
      help: 'multi-host: seconds a host may be down before its data is re-placed (default 600)',
    },
    {
      name: 'recovery-bandwidth',
      type: 'number',
      valueName: 'MIB_PER_S',
      help:
        'multi-host: bound on recovery/backfill traffic from this daemon, MiB/s ' +
        `(default ${RECOVERY_BYTES_PER_SECOND_DEFAULT / MiB}; at most ${BACKGROUND_BANDWIDTH_MIB_PER_S_MAX})`,
    },
    {
      name: 'scrub-bandwidth',
      type: 'number',
      valueName: 'MIB_PER_S',
      help:
        'bound on the bytes scrub reads per second on this daemon, MiB/s ' +
        `(default ${SCRUB_BYTES_PER_SECOND_DEFAULT / MiB}; at most ${BACKGROUND_BANDWIDTH_MIB_PER_S_MAX})`,
    },
    {
      name: 'admin',
      type: 'string',
      valueName: 'HOST:PORT',
      default: `${ADMIN_DEFAULT_HOST}:${ADMIN_DEFAULT_PORT}`,
      help: 'where the admin API listens; keep it on loopback (port 0: any free port)',
    },
  ],
  async run(args) {
    const dataDir = path.resolve(resolveDataDir(args));
    const disks = opt<string[]>(args, 'disk').map(parseDiskSpec);
    const nbd = parseHostPort(opt<string>(args, 'nbd'), NBD_DEFAULT_HOST);
    const iscsiText = opt<string | undefined>(args, 'iscsi');
    const iscsi = iscsiText === undefined ? undefined : parseHostPort(iscsiText, NBD_DEFAULT_HOST);
    const admin = parseHostPort(opt<string>(args, 'admin'), ADMIN_DEFAULT_HOST);
    const log = createLog({ json: opt<boolean>(args, 'json') });
    const cluster = clusterOptions(args);
    const bandwidth = bandwidthOptions(args);
    await runDaemon({
      dataDir,
      disks,
      nbd,
      ...(iscsi ? { iscsi } : {}),
      admin,
      log,
      bandwidth,
      ...(cluster ? { cluster } : {}),
    });
    return 0;
  },
};

/** --recovery-bandwidth and --scrub-bandwidth (MiB/s) as bytes per second. */
export function bandwidthOptions(args: ParsedArgs): BackgroundBandwidth {
  const bytesPerSecond = (name: string): number | undefined => {
    const mibPerS = opt<number | undefined>(args, name);
    if (mibPerS === undefined) return undefined;
    if (!(mibPerS > 0) || mibPerS > BACKGROUND_BANDWIDTH_MIB_PER_S_MAX) {
      throw usageError(
        `--${name} must be more than 0 and at most ${BACKGROUND_BANDWIDTH_MIB_PER_S_MAX} (MiB/s), got ${mibPerS}`,
      );
    }
    return Math.round(mibPerS * MiB);
  };
  const recovery = bytesPerSecond('recovery-bandwidth');
  const scrub = bytesPerSecond('scrub-bandwidth');
  return {
    ...(recovery !== undefined ? { recoveryBytesPerSecond: recovery } : {}),
    ...(scrub !== undefined ? { scrubBytesPerSecond: scrub } : {}),
  };
}

/** The multi-host flags, all or none: --etcd with --host-id, --listen and --secret-file. */
function clusterOptions(args: ParsedArgs): ClusterOptions | undefined {
  const etcd = (args.options['etcd'] as string | undefined) ?? process.env['CISTERN_ETCD'];
  const hostId = opt<string | undefined>(args, 'host-id');
  const listen = opt<string | undefined>(args, 'listen');
  const secretFile = opt<string | undefined>(args, 'secret-file');
  if (!etcd) {
    if (hostId || listen || secretFile) {
      throw usageError(
        '--host-id, --listen and --secret-file go with --etcd URL (a multi-host cluster)',
      );
    }
    return undefined;
  }
  if (!hostId || !listen || !secretFile) {
    throw usageError(
      'a cluster daemon needs --etcd URL, --host-id ID, --listen IP:PORT and --secret-file F',
    );
  }
  const down = opt<number | undefined>(args, 'down-out-interval');
  const prefix = args.options['etcd-prefix'] as string | undefined;
  return {
    endpoints: parseEndpoints(etcd),
    hostId,
    listen: parseHostPort(listen, '0.0.0.0'),
    rack: opt<string | undefined>(args, 'rack') ?? 'rack-0',
    secretFile,
    ...(down !== undefined ? { downOutIntervalS: down } : {}),
    ...(prefix !== undefined ? { prefix } : {}),
  };
}
