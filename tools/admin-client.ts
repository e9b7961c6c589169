// The admin commands' side of the admin API: finds the daemon through DIR/admin.json,
// calls it with the bearer token, and turns error bodies back into CisternErrors with
// the daemon's code, so `cistern: <message>` and the exit code come out the same as if
// the datastore had been called in-process. With --etcd (or $CISTERN_ETCD), openAdmin()
// administers the multi-host cluster in etcd directly instead (src/cluster/cluster-admin.ts).
// Also the presentation helpers the admin commands share (the options, tables).

import http from 'node:http';
import path from 'node:path';
import { parseHostPort } from '../src/daemon/address';
import { ADMIN_FILE_NAME, AdminFile, isProcessAlive, readAdminFile } from '../src/daemon/data-dir';
import { DEFAULT_DATA_DIR } from '../src/daemon/daemon';
import { ClusterAdmin } from '../src/cluster/cluster-admin';
import { ETCD_PREFIX_DEFAULT, parseEndpoints } from '../src/cluster/etcd';
import { CisternError, CisternErrorCode } from '../src/util/errors';
import type { ScrubStatus } from '../src/cluster/scrub-state';
import type { AccessChange } from '../src/cluster/iscsi-access';
import {
  CreatePoolRequest,
  CreateVolumeRequest,
  DatastoreAdmin,
  PoolInfo,
  StatusReport,
  VolumeInfo,
} from '../src/volume/admin';
import { OptionSpec, ParsedArgs, opt } from './command';

export const DATA_DIR_ENV = 'CISTERN_DATA_DIR';
export const ETCD_ENV = 'CISTERN_ETCD';
export const ETCD_PREFIX_ENV = 'CISTERN_ETCD_PREFIX';
/** Most calls answer in milliseconds; a daemon silent this long is stuck. */
export const ADMIN_CALL_TIMEOUT_MS = 60_000;
/** Removing a volume frees every object it wrote: allow for very large volumes. */
export const ADMIN_REMOVE_TIMEOUT_MS = 60 * 60_000;
/** Largest response we read (a listing of very many volumes fits easily). */
export const ADMIN_RESPONSE_MAX_BYTES = 64 * 1024 * 1024;

/** The options every admin command takes. */
export const adminOptions: OptionSpec[] = [
  {
    name: 'data-dir',
    type: 'string',
    valueName: 'DIR',
    help: `the daemon's data directory (default $${DATA_DIR_ENV}, else ./${DEFAULT_DATA_DIR})`,
  },
  {
    name: 'etcd',
    type: 'string',
    valueName: 'URL[,URL]',
    help: `administer the multi-host cluster in this etcd instead of a local daemon (default $${ETCD_ENV})`,
  },
  {
    name: 'etcd-prefix',
    type: 'string',
    valueName: 'P',
    help: `the cluster's key prefix in etcd (default $${ETCD_PREFIX_ENV}, else ${ETCD_PREFIX_DEFAULT})`,
  },
];

/** What an admin command talks to: the local daemon, or the cluster store in etcd. */
export interface CliAdmin extends DatastoreAdmin {
  /** An NBD address to print in "connect:" hints, if one is known. */
  readonly nbd: string | undefined;
  /** An iSCSI portal (HOST:PORT) for the same hints, if one is known. */
  readonly iscsi?: string | undefined;
  close(): Promise<void>;
}

/** Admins opened by commands in this process; the CLI closes them when a command ends. */
const openAdmins = new Set<CliAdmin>();

/**
 * The admin for the command's arguments: ClusterAdmin over etcd when --etcd (or
 * $CISTERN_ETCD) is given, else the daemon of the data dir. main() closes it afterwards.
 */
export async function openAdmin(args: ParsedArgs): Promise<CliAdmin> {
  const etcd = opt<string | undefined>(args, 'etcd') ?? process.env[ETCD_ENV];
  let admin: CliAdmin;
  if (etcd !== undefined && etcd !== '') {
    const prefix =
      opt<string | undefined>(args, 'etcd-prefix') ??
      process.env[ETCD_PREFIX_ENV] ??
      ETCD_PREFIX_DEFAULT;
    admin = await ClusterAdmin.openEtcd({ endpoints: parseEndpoints(etcd), prefix });
  } else {
    admin = AdminClient.forDataDir(resolveDataDir(args));
  }
  openAdmins.add(admin);
  return admin;
}

/** Closes every admin openAdmin() handed out (etcd connections keep a process alive). */
export async function closeAdmins(): Promise<void> {
  for (const admin of [...openAdmins]) {
    openAdmins.delete(admin);
    await admin.close();
  }
}

export function resolveDataDir(args: ParsedArgs): string {
  return (
    opt<string | undefined>(args, 'data-dir') ??
    process.env[DATA_DIR_ENV] ??
    `./${DEFAULT_DATA_DIR}`
  );
}

const knownCodes: ReadonlySet<string> = new Set<CisternErrorCode>([
  'EIO',
  'ENOSPC',
  'EINVAL',
  'ENOENT',
  'EEXIST',
  'EPERM',
  'ENOTSUP',
  'EROFS',
  'CORRUPT',
  'STALE_EPOCH',
  'UNKNOWN_VOLUME',
  'UNKNOWN_POOL',
  'PLACEMENT_IMPOSSIBLE',
  'BAD_REQUEST',
  'UNAVAILABLE',
  'CLOSED',
]);

export class AdminClient implements CliAdmin {
  private constructor(
    readonly dataDir: string,
    readonly file: AdminFile,
  ) {}

  get nbd(): string | undefined {
    return this.file.nbd;
  }

  get iscsi(): string | undefined {
    return this.file.iscsi;
  }

  /** Nothing to release: every call is its own connection. */
  async close(): Promise<void> {}

  /** Finds the daemon of `dataDir`, or throws UNAVAILABLE saying how to start one. */
  static forDataDir(dataDir: string): AdminClient {
    const file = readAdminFile(dataDir);
    if (file === undefined) throw noDaemon(dataDir);
    if (!isProcessAlive(file.pid)) {
      throw noDaemon(dataDir, `pid ${file.pid} in ${ADMIN_FILE_NAME} has exited`);
    }
    return new AdminClient(dataDir, file);
  }

  status(): Promise<StatusReport> {
    return this.call('GET', '/v1/status');
  }
  listPools(): Promise<PoolInfo[]> {
    return this.call('GET', '/v1/pools');
  }
  createPool(request: CreatePoolRequest): Promise<PoolInfo> {
    return this.call('POST', '/v1/pools', request);
  }
  listVolumes(): Promise<VolumeInfo[]> {
    return this.call('GET', '/v1/volumes');
  }
  createVolume(request: CreateVolumeRequest): Promise<VolumeInfo> {
    return this.call('POST', '/v1/volumes', request);
  }
  volumeInfo(name: string): Promise<VolumeInfo> {
    return this.call('GET', volumePath(name));
  }
  resizeVolume(
    name: string,
    sizeBytes: number,
    options: { allowShrink?: boolean },
  ): Promise<VolumeInfo> {
    return this.call('POST', `${volumePath(name)}/resize`, {
      sizeBytes,
      allowShrink: options.allowShrink ?? false,
    });
  }
  requestScrub(pool: string | undefined): Promise<ScrubStatus> {
    return this.call('POST', '/v1/scrub', pool === undefined ? {} : { pool });
  }
  scrubStatus(id: number): Promise<ScrubStatus> {
    return this.call('GET', `/v1/scrub/${id}`);
  }
  setVolumeAccess(name: string, change: AccessChange): Promise<VolumeInfo> {
    return this.call('POST', `${volumePath(name)}/access`, change);
  }
  async removeVolume(name: string, options: { force?: boolean }): Promise<void> {
    const query = options.force ? '?force=true' : '';
    await this.call('DELETE', volumePath(name) + query, undefined, ADMIN_REMOVE_TIMEOUT_MS);
  }

  /** One API call; error bodies become CisternErrors with the daemon's code. */
  call<T>(
    method: string,
    urlPath: string,
    body?: unknown,
    timeoutMs = ADMIN_CALL_TIMEOUT_MS,
  ): Promise<T> {
    const address = parseHostPort(this.file.address, '127.0.0.1');
    const payload = body === undefined ? undefined : JSON.stringify(body);
    return new Promise<T>((resolve, reject) => {
      const request = http.request(
        {
          host: address.host,
          port: address.port,
          method,
          path: urlPath,
          agent: false, // one connection per call: nothing keeps the CLI process alive
          headers: {
            authorization: `Bearer ${this.file.token}`,
            accept: 'application/json',
            ...(payload === undefined
              ? {}
              : {
                  'content-type': 'application/json',
                  'content-length': Buffer.byteLength(payload),
                }),
          },
        },
        (response) => {
          const chunks: Buffer[] = [];
          let receivedBytes = 0;
          response.on('data', (chunk: Buffer) => {
            receivedBytes += chunk.length;
            if (receivedBytes > ADMIN_RESPONSE_MAX_BYTES) {
              request.destroy(
                new CisternError('EIO', `admin response over ${ADMIN_RESPONSE_MAX_BYTES} bytes`),
              );
              return;
            }
            chunks.push(chunk);
          });
          response.on('error', reject);
          response.on('end', () => {
            try {
              resolve(this.decode<T>(response.statusCode ?? 0, Buffer.concat(chunks)));
            } catch (error) {
              reject(error);
            }
          });
        },
      );
      request.setTimeout(timeoutMs, () =>
        request.destroy(
          new CisternError(
            'UNAVAILABLE',
            `the daemon for ${this.dataDir} did not answer within ${timeoutMs / 1000} s`,
          ),
        ),
      );
      request.on('error', (error) => reject(this.connectionError(error)));
      request.end(payload);
    });
  }

  private decode<T>(status: number, raw: Buffer): T {
    let value: unknown;
    try {
      value = JSON.parse(raw.toString('utf8'));
    } catch {
      throw new CisternError('EIO', `the daemon sent a non-JSON reply (HTTP ${status})`);
    }
    if (status >= 200 && status < 300) return value as T;
    const error = (value as { error?: { code?: unknown; message?: unknown } }).error;
    const code = typeof error?.code === 'string' && knownCodes.has(error.code) ? error.code : 'EIO';
    const message = typeof error?.message === 'string' ? error.message : `HTTP ${status}`;
    if (status === 401) {
      throw new CisternError(
        'EPERM',
        `the daemon refused the token in ${path.join(this.dataDir, ADMIN_FILE_NAME)} (${message}); ` +
          'is another daemon using the same admin address?',
      );
    }
    throw new CisternError(code as CisternErrorCode, message);
  }

  private connectionError(error: unknown): unknown {
    if (error instanceof CisternError) return error;
    const errno = (error as NodeJS.ErrnoException).code;
    if (errno === 'ECONNREFUSED' || errno === 'ECONNRESET') {
      return noDaemon(this.dataDir, `nothing answers at ${this.file.address}`);
    }
    const message = error instanceof Error ? error.message : String(error);
    return new CisternError(
      'UNAVAILABLE',
      `cannot reach the daemon for ${this.dataDir}: ${message}`,
    );
  }
}

function volumePath(name: string): string {
  return `/v1/volumes/${encodeURIComponent(name)}`;
}

function noDaemon(dataDir: string, detail?: string): CisternError {
  const why = detail === undefined ? '' : `: ${detail}`;
  return new CisternError(
    'UNAVAILABLE',
    `no daemon is running for ${dataDir}${why} (start one with: cistern daemon --data-dir ${dataDir})`,
  );
}

// Presentation shared by the admin commands.

export interface Column {
  header: string;
  /** Numbers and sizes read best right-aligned. */
  right?: boolean;
}

/** A plain-text table with two spaces between columns; the last column is not padded. */
export function formatTable(columns: Column[], rows: string[][]): string[] {
  const widths = columns.map((column, index) =>
    Math.max(column.header.length, ...rows.map((row) => (row[index] ?? '').length)),
  );
  const line = (cells: string[]): string =>
    columns
      .map((column, index) => {
        const cell = cells[index] ?? '';
        const width = widths[index] ?? 0;
        if (column.right) return cell.padStart(width);
        return index === columns.length - 1 ? cell : cell.padEnd(width);
      })
      .join('  ')
      .trimEnd();
  return [line(columns.map((column) => column.header)), ...rows.map(line)];
}

export function percent(part: number, whole: number): string {
  return whole > 0 ? `${((part / whole) * 100).toFixed(1)}%` : '-';
}
