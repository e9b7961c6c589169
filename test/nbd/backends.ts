// The providers the real-client tests run against, behind one set-up call: the in-memory
// provider (protocol behaviour alone) and the real Datastore on sparse file-backed disks
// driven by the native O_DIRECT engine (the storage stack a daemon serves). A client test
// is written once and run against each, so a client that works against memory but not
// against real disks fails a test rather than going unnoticed.

import { strict as assert } from 'node:assert';
import { spawn, type ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { NbdServer, type NbdServerOptions } from '../../src/frontend/nbd/server';
import type { ExportProvider, VolumeHandle } from '../../src/volume/backend';
import { Datastore } from '../../src/volume/datastore';
import { MemoryExportProvider } from '../../src/volume/memory-volume';
import { scratchDir, testDatastore } from '../datastore/helpers';
import { cisternOk, nbdTarget, spawnDaemon } from '../daemon/helpers';
import { readOnlyExports } from './gated';
import { MiB } from './helpers';

export type BackendName = 'memory' | 'datastore';
export const BACKENDS: readonly BackendName[] = ['memory', 'datastore'];

/**
 * Disks of the datastore backend: three sparse files, so a pool of size 2 holds
 * 3 × 512 / 2 = 768 MiB of data — room for every export a client test creates.
 */
export const DATASTORE_DISK_COUNT = 3;
export const DATASTORE_DISK_BYTES = 512 * MiB;

export interface ExportSpec {
  name: string;
  sizeBytes: number;
  readOnly?: boolean;
  /** Kept by the memory provider; the datastore describes its volumes itself. */
  description?: string;
}

export interface BackendServer {
  backend: BackendName;
  server: NbdServer;
  /** What the server serves (for the datastore, read-only exports are a filter on top). */
  provider: ExportProvider;
  /** Set for the datastore backend. */
  datastore: Datastore | undefined;
  target: { host: string; port: number };
  uri(exportName: string): string;
  /** Errors the server reported as unexpected (bugs); close() fails if there are any. */
  unexpectedErrors: unknown[];
  /** Opens an export directly, bypassing NBD: to set up or check state. */
  open(name: string): Promise<VolumeHandle>;
  /**
   * Closes the server and the backend. Fails if the server saw an unexpected error or
   * the datastore is not healthy (a disk taken out during a test that expected none).
   */
  close(): Promise<void>;
}

interface OpenedBackend {
  provider: ExportProvider;
  datastore: Datastore | undefined;
  close(): Promise<void>;
}

function openMemory(exports: readonly ExportSpec[]): OpenedBackend {
  const memory = new MemoryExportProvider();
  for (const { name, sizeBytes, readOnly, description } of exports) {
    memory.create(name, sizeBytes, { readOnly, description });
  }
  return { provider: memory, datastore: undefined, close: async () => undefined };
}

async function openDatastore(exports: readonly ExportSpec[]): Promise<OpenedBackend> {
  const scratch = testDatastore(DATASTORE_DISK_COUNT, DATASTORE_DISK_BYTES);
  let datastore: Datastore | undefined;
  try {
    datastore = await scratch.open();
    for (const spec of exports) {
      await datastore.createVolume({ name: spec.name, sizeBytes: spec.sizeBytes });
    }
  } catch (error) {
    await datastore?.close();
    scratch.cleanup();
    throw error;
  }
  const opened = datastore;
  const readOnlyNames = exports.filter((spec) => spec.readOnly).map((spec) => spec.name);
  return {
    // The datastore has no read-only volumes; a read-only export is a layer above it.
    provider: readOnlyExports(opened, readOnlyNames),
    datastore: opened,
    close: async () => {
      try {
        const status = await opened.status();
        assert.equal(status.health, 'ok', status.messages.join('\n'));
      } finally {
        await opened.close();
        scratch.cleanup();
      }
    },
  };
}

/** An NBD server on 127.0.0.1 (a free port) serving `exports` from a fresh backend. */
export async function serveBackend(
  backend: BackendName,
  exports: readonly ExportSpec[],
  options: NbdServerOptions = {},
): Promise<BackendServer> {
  const {
    provider,
    datastore,
    close: closeBackend,
  } = backend === 'memory' ? openMemory(exports) : await openDatastore(exports);
  const unexpectedErrors: unknown[] = [];
  const server = new NbdServer(provider, {
    onUnexpectedError: (error) => unexpectedErrors.push(error),
    ...options,
  });
  const address = await server.listen('127.0.0.1', 0).catch(async (error: unknown) => {
    await closeBackend();
    throw error;
  });
  return {
    backend,
    server,
    provider,
    datastore,
    target: { host: '127.0.0.1', port: address.port },
    uri: (exportName) => `nbd://127.0.0.1:${address.port}/${exportName}`,
    unexpectedErrors,
    open: (name) => provider.open(name, { readOnly: false }),
    close: async () => {
      try {
        await server.close();
      } finally {
        await closeBackend();
      }
      assert.deepEqual(unexpectedErrors, []);
    },
  };
}

/** A server in a process of its own, for tests that block in calls it must answer. */
export interface BackendProcess {
  backend: BackendName;
  uri(exportName: string): string;
  /**
   * SIGTERM, then fails unless the process exited 0 (the memory server exits 3 after an
   * unexpected error) and, for the daemon, its log shows no unexpected error or failed disk.
   */
  stop(): Promise<void>;
}

/**
 * memory: test/nbd/serve-memory.js. datastore: the real daemon (`cistern daemon`) on
 * sparse file disks in a scratch directory, its volumes created with `cistern volume create`.
 */
export async function serveBackendProcess(
  backend: BackendName,
  exports: readonly ExportSpec[],
): Promise<BackendProcess> {
  assert.ok(
    exports.every((spec) => !spec.readOnly),
    'read-only exports are served in-process only',
  );
  return backend === 'memory' ? serveMemoryProcess(exports) : serveDaemonProcess(exports);
}

async function serveMemoryProcess(exports: readonly ExportSpec[]): Promise<BackendProcess> {
  const child = spawn(
    process.execPath,
    [
      path.join(__dirname, 'serve-memory.js'),
      ...exports.map((spec) => `${spec.name}:${spec.sizeBytes}`),
    ],
    { stdio: ['ignore', 'pipe', 'inherit'] },
  );
  const exited = new Promise<number | null>((resolve) => child.once('exit', resolve));
  const port = await new Promise<number>((resolve, reject) => {
    void exited.then((code) => reject(new Error(`memory server exited with ${code}`)));
    child.stdout?.once('data', (chunk: Buffer) =>
      resolve((JSON.parse(chunk.toString()) as { port: number }).port),
    );
  }).catch((error: unknown) => {
    child.kill('SIGKILL');
    throw error;
  });
  return {
    backend: 'memory',
    uri: (exportName) => `nbd://127.0.0.1:${port}/${exportName}`,
    stop: async () => {
      await stopChild(child, exited);
      assert.equal(await exited, 0, 'memory server reported unexpected errors');
    },
  };
}

async function serveDaemonProcess(exports: readonly ExportSpec[]): Promise<BackendProcess> {
  const dir = scratchDir('cistern-nbd-daemon-');
  const dataDir = path.join(dir, 'data');
  try {
    const daemon = await spawnDaemon(dataDir, [
      ...daemonDiskArgs(dir),
      ...['--nbd', '127.0.0.1:0', '--admin', '127.0.0.1:0'],
    ]);
    try {
      for (const spec of exports) {
        await cisternOk([
          'volume',
          'create',
          spec.name,
          '--size',
          String(spec.sizeBytes),
          '--data-dir',
          dataDir,
        ]);
      }
    } catch (error) {
      await daemon.stop('SIGKILL');
      throw error;
    }
    const { host, port } = nbdTarget(daemon.admin.nbd);
    return {
      backend: 'datastore',
      uri: (exportName) => `nbd://${host}:${port}/${exportName}`,
      stop: async () => {
        try {
          const status = await cisternOk(['status', '--data-dir', dataDir]);
          assert.match(status, /^health: ok/, status);
        } finally {
          const exit = await daemon.stop('SIGTERM');
          assert.deepEqual(exit, { code: 0, signal: null }, daemon.stderr());
          assert.doesNotMatch(daemon.stderr(), /nbd\.unexpected_error|disk\.failed/);
          fs.rmSync(dir, { recursive: true, force: true });
        }
      },
    };
  } catch (error) {
    fs.rmSync(dir, { recursive: true, force: true });
    throw error;
  }
}

/** `--disk` arguments for the datastore backend's disks, as sparse files under `dir`. */
export function daemonDiskArgs(dir: string): string[] {
  return Array.from({ length: DATASTORE_DISK_COUNT }, (_, index) => [
    '--disk',
    `${path.join(dir, 'disks', `d${index}.img`)}:${DATASTORE_DISK_BYTES}`,
  ]).flat();
}

/** SIGTERM; SIGKILL if it has not exited within the bound. */
async function stopChild(child: ChildProcess, exited: Promise<unknown>): Promise<void> {
  const STOP_TIMEOUT_MS = 20_000;
  child.kill('SIGTERM');
  let timer: NodeJS.Timeout | undefined;
  const timedOut = await Promise.race([
    exited.then(() => false),
    new Promise<boolean>((resolve) => (timer = setTimeout(() => resolve(true), STOP_TIMEOUT_MS))),
  ]);
  clearTimeout(timer);
  if (timedOut) {
    child.kill('SIGKILL');
    assert.fail(`server did not exit within ${STOP_TIMEOUT_MS} ms of SIGTERM`);
  }
}
