// The storage daemon of one host: takes the data dir (pid lock), opens the datastore,
// serves its volumes over NBD (and iSCSI, when asked) and its administration over the
// admin API, and announces
// itself in DIR/admin.json once everything listens. On SIGINT/SIGTERM it stops accepting,
// lets NBD connections finish their in-flight requests, closes (flushes) the datastore,
// removes admin.json and releases the lock. Storage logic lives in the datastore; this
// file only wires and sequences.

import fs from 'node:fs';
import { assert } from '../util/assert';
import { CisternError, isCisternError } from '../util/errors';
import { NbdServer } from '../frontend/nbd/server';
import { IscsiServer } from '../frontend/iscsi/server';
import { createLogicalUnit } from '../frontend/iscsi/scsi/logical-unit';
import type { AccessProvider } from '../frontend/iscsi/access';
import type { DatastoreAdmin } from '../volume/admin';
import type { ExportProvider } from '../volume/backend';
import { Datastore } from '../volume/datastore';
import { HostPort, connectableAddress, formatHostPort, isLoopback } from './address';
import { ADMIN_DEFAULT_HOST, ADMIN_DEFAULT_PORT, AdminServer } from './admin-server';
import { DataDirLock, newAdminToken, removeAdminFile, writeAdminFile } from './data-dir';
import { Log } from './log';
import { ClusterMember, ClusterOptions } from './cluster';

export const NBD_DEFAULT_HOST = '127.0.0.1';
export const NBD_DEFAULT_PORT = 10809;
/**
 * iSCSI's well-known port. `cistern daemon` serves iSCSI only when --iscsi is given (a
 * host often runs its own target on 3260 already); `npm start` uses loopback:3260.
 */
export const ISCSI_DEFAULT_PORT = 3260;
export const DEFAULT_DATA_DIR = '.cistern';
/**
 * After a clean stop, the process should exit by itself; if a leaked handle keeps it
 * alive this long, it exits anyway (everything has been flushed by then).
 */
export const EXIT_WATCHDOG_MS = 5000;

/**
 * What the daemon needs of a datastore: administration, exports, the volumes' iSCSI
 * access rules, and a flushing close.
 */
export interface DaemonStore extends DatastoreAdmin, ExportProvider, AccessProvider {
  close(): Promise<void>;
}

/** Bounds on background traffic (bytes per second); absent: the workers' defaults. */
export interface BackgroundBandwidth {
  recoveryBytesPerSecond?: number;
  scrubBytesPerSecond?: number;
}

export interface StoreOptions {
  dataDir: string;
  disks: Array<{ path: string; sizeBytes?: number }>;
  log: Log;
  bandwidth?: BackgroundBandwidth;
}

export interface DaemonOptions {
  dataDir: string;
  disks: Array<{ path: string; sizeBytes?: number }>;
  nbd?: HostPort;
  /** Where to serve iSCSI; not served when absent. */
  iscsi?: HostPort;
  admin?: HostPort;
  log: Log;
  /** Opens the storage; tests pass an in-memory one. Default: the real Datastore. */
  openStore?: (options: StoreOptions) => Promise<DaemonStore>;
  /** Join a multi-host cluster (etcd, peers) instead of serving one host's datastore. */
  cluster?: ClusterOptions;
  bandwidth?: BackgroundBandwidth;
}

export interface RunningDaemon {
  readonly dataDir: string;
  readonly nbdAddress: HostPort;
  /** Where iSCSI is served, when it is. */
  readonly iscsiAddress: HostPort | undefined;
  readonly adminAddress: HostPort;
  readonly token: string;
  readonly store: DaemonStore;
  /** Shuts everything down in order; idempotent. */
  stop(reason?: string): Promise<void>;
}

type Cleanup = () => Promise<void> | void;

/** Starts the daemon; resolves once it listens and admin.json is written. */
export async function startDaemon(options: DaemonOptions): Promise<RunningDaemon> {
  const log = options.log;
  const nbdWanted = options.nbd ?? { host: NBD_DEFAULT_HOST, port: NBD_DEFAULT_PORT };
  const adminWanted = options.admin ?? { host: ADMIN_DEFAULT_HOST, port: ADMIN_DEFAULT_PORT };
  const cluster = options.cluster;
  const openStore =
    options.openStore ??
    ((storeOptions: StoreOptions): Promise<DaemonStore> =>
      cluster ? ClusterMember.join(storeOptions, cluster) : Datastore.open(storeOptions));
  // Undone in reverse if a later step fails, so a failed start leaves nothing behind.
  const cleanups: Cleanup[] = [];
  const undo = async (): Promise<void> => {
    for (const cleanup of cleanups.reverse()) {
      await Promise.resolve(cleanup()).catch((error: unknown) =>
        log('daemon.cleanup_failed', { error }),
      );
    }
  };
  try {
    log('daemon.starting', { pid: process.pid, dataDir: options.dataDir });
    fs.mkdirSync(options.dataDir, { recursive: true, mode: 0o700 });
    const lock = DataDirLock.acquire(options.dataDir, (pid) =>
      log('daemon.stale_lock_removed', { pid }),
    );
    cleanups.push(() => lock.release());
    // A previous daemon that died without cleaning up left an admin.json that lies.
    removeAdminFile(options.dataDir);

    const store = await openStore({
      dataDir: options.dataDir,
      disks: options.disks,
      log,
      ...(options.bandwidth ? { bandwidth: options.bandwidth } : {}),
    });
    cleanups.push(() => store.close());
    log('datastore.open', { dataDir: options.dataDir });

    const nbd = new NbdServer(store, {
      onUnexpectedError: (error) => log('nbd.unexpected_error', { error: stackOf(error) }),
    });
    cleanups.push(() => nbd.close());
    const nbdAddress = await listenOrExplain('NBD', '--nbd', () =>
      nbd.listen(nbdWanted.host, nbdWanted.port),
    );
    const nbdText = formatHostPort(connectableAddress(nbdAddress));
    log('nbd.listening', { address: formatHostPort(nbdAddress) });

    const iscsi = options.iscsi ? await serveIscsi(store, options.iscsi, log) : undefined;
    if (iscsi) cleanups.push(() => iscsi.server.close());
    const iscsiText = iscsi ? formatHostPort(connectableAddress(iscsi.address)) : undefined;

    const token = newAdminToken();
    const adminServer = new AdminServer(store, {
      token,
      log,
      nbdAddress: nbdText,
      ...(iscsiText !== undefined ? { iscsiAddress: iscsiText } : {}),
    });
    cleanups.push(() => adminServer.close());
    const adminAddress = await listenOrExplain('admin', '--admin', () =>
      adminServer.listen(adminWanted.host, adminWanted.port),
    );
    if (!isLoopback(adminAddress.host)) {
      // Allowed (the token still guards it), but the token travels in clear over HTTP.
      log('admin.exposed', {
        address: formatHostPort(adminAddress),
        warning: 'admin API reachable from the network without TLS',
      });
    }
    log('admin.listening', { address: formatHostPort(adminAddress) });

    writeAdminFile(options.dataDir, {
      address: formatHostPort(connectableAddress(adminAddress)),
      token,
      pid: process.pid,
      nbd: nbdText,
      ...(iscsiText !== undefined ? { iscsi: iscsiText } : {}),
    });
    cleanups.push(() => removeAdminFile(options.dataDir));
    log('daemon.ready', {
      nbd: nbdText,
      ...(iscsiText !== undefined ? { iscsi: iscsiText } : {}),
      admin: formatHostPort(adminAddress),
    });

    let stopping: Promise<void> | undefined;
    const stop = (reason = 'requested'): Promise<void> => {
      stopping ??= (async () => {
        log('daemon.stopping', { reason });
        // Order: the admin API first (no new administration against a closing store),
        // then the file that advertises it, then NBD and iSCSI (connections finish
        // in-flight requests), then the datastore (flushes), and the lock last. A step that fails
        // is logged and the rest still run, so a failed flush does not also leave a
        // stale admin.json and lock behind; the first failure is rethrown at the end.
        const iscsiStep: Array<[string, () => Promise<void>]> = iscsi
          ? [['iscsi.closed', () => iscsi.server.close()]]
          : [];
        const steps: Array<[string, () => Promise<void> | void]> = [
          ['admin.closed', () => adminServer.close()],
          ['admin.file_removed', () => removeAdminFile(options.dataDir)],
          ['nbd.closed', () => nbd.close()],
          ...iscsiStep,
          ['datastore.closed', () => store.close()],
          ['daemon.unlocked', () => lock.release()],
        ];
        let firstError: unknown;
        for (const [event, step] of steps) {
          try {
            await step();
            log(event);
          } catch (error) {
            log(`${event.split('.')[0]}.stop_failed`, { error });
            firstError ??= error;
          }
        }
        if (firstError !== undefined) throw firstError;
        log('daemon.stopped');
      })();
      return stopping;
    };
    return {
      dataDir: options.dataDir,
      nbdAddress,
      iscsiAddress: iscsi?.address,
      adminAddress,
      token,
      store,
      stop,
    };
  } catch (error) {
    log('daemon.start_failed', { error });
    await undo();
    throw error;
  }
}

/** The iSCSI target over the same volumes: every volume a target, its disk at LUN 0. */
async function serveIscsi(
  store: DaemonStore,
  wanted: HostPort,
  log: Log,
): Promise<{ server: IscsiServer; address: HostPort }> {
  const server = new IscsiServer(store, store, {
    createLogicalUnit,
    onUnexpectedError: (error) => log('iscsi.unexpected_error', { error: stackOf(error) }),
  });
  let address: HostPort;
  try {
    address = await listenOrExplain('iSCSI', '--iscsi', () =>
      server.listen(wanted.host, wanted.port),
    );
  } catch (error) {
    await server.close();
    throw error;
  }
  log('iscsi.listening', {
    address: formatHostPort(address),
    targets: 'iqn.2026-11.io.cistern:<volume>, LUN 0',
  });
  if (!isLoopback(address.host)) {
    // Allowed, but by default any initiator may log in without CHAP.
    log('iscsi.exposed', {
      address: formatHostPort(address),
      warning:
        'iSCSI reachable from the network; restrict each volume with cistern volume access (initiators, CHAP)',
    });
  }
  return { server, address };
}

async function listenOrExplain(
  what: string,
  flag: string,
  listen: () => Promise<HostPort>,
): Promise<HostPort> {
  try {
    return await listen();
  } catch (error) {
    if (isCisternError(error)) throw error;
    const errno = (error as NodeJS.ErrnoException).code;
    const message = error instanceof Error ? error.message : String(error);
    if (errno === 'EADDRINUSE') {
      throw new CisternError(
        'UNAVAILABLE',
        `the ${what} address is in use (${message}); is another daemon running? choose another with ${flag} HOST:PORT`,
        error,
      );
    }
    throw new CisternError('UNAVAILABLE', `cannot listen for ${what}: ${message}`, error);
  }
}

function stackOf(error: unknown): string {
  return error instanceof Error ? (error.stack ?? error.message) : String(error);
}

/**
 * Serves until SIGINT or SIGTERM, then stops cleanly. The handlers go in before `start`
 * runs, so a signal that arrives while starting (or just after admin.json appears) stops
 * the daemon cleanly once it is up instead of killing it half-way. A second signal exits
 * at once: that is a crash as far as the data is concerned, which the datastore survives
 * (only unflushed writes may be lost, as the protocols allow).
 */
export async function serveUntilSignalled(
  start: () => Promise<RunningDaemon>,
  log: Log,
): Promise<void> {
  const signals: NodeJS.Signals[] = ['SIGINT', 'SIGTERM'];
  let received: NodeJS.Signals | undefined;
  let wake: (signal: NodeJS.Signals) => void = () => {};
  const signalled = new Promise<NodeJS.Signals>((resolve) => (wake = resolve));
  const onSignal = (signal: NodeJS.Signals): void => {
    if (received !== undefined) {
      log('daemon.forced_exit', { signal });
      process.exit(1);
    }
    received = signal;
    wake(signal);
  };
  for (const signal of signals) process.on(signal, onSignal);
  let daemon: RunningDaemon;
  try {
    daemon = await start();
  } catch (error) {
    for (const signal of signals) process.off(signal, onSignal);
    throw error;
  }
  const signal = await signalled;
  assert(received === signal, 'woke without a signal');
  await daemon.stop(signal);
  // A leaked handle must not keep a stopped daemon around; unref'd, so a clean exit
  // does not wait for it.
  setTimeout(() => {
    log('daemon.exit_watchdog', { afterMs: EXIT_WATCHDOG_MS });
    process.exit(0);
  }, EXIT_WATCHDOG_MS).unref();
}

/** `cistern daemon`: start, serve until signalled, stop. */
export async function runDaemon(options: DaemonOptions): Promise<void> {
  await serveUntilSignalled(() => startDaemon(options), options.log);
}
