// Set-up shared by the iSCSI tests: an IscsiServer on 127.0.0.1 (a free port) over
// in-memory volumes, an access provider the test edits, and URLs for real clients.

import { strict as assert } from 'node:assert';
import type {
  AccessProvider,
  LogicalUnitFactory,
  VolumeAccess,
} from '../../src/frontend/iscsi/access';
import { IscsiServer, type IscsiServerOptions } from '../../src/frontend/iscsi/server';
import type { Session } from '../../src/frontend/iscsi/session';
import { CisternError } from '../../src/util/errors';
import { MemoryExportProvider } from '../../src/volume/memory-volume';
import { StubUnit } from './stub-unit';

export const MiB = 1024 * 1024;

/** Access rules kept in a map: volumes without an entry admit any initiator without CHAP. */
export class MemoryAccess implements AccessProvider {
  readonly rules = new Map<string, VolumeAccess>();

  constructor(private readonly provider: MemoryExportProvider) {}

  async access(volumeName: string): Promise<VolumeAccess> {
    const exists = (await this.provider.list()).some((info) => info.name === volumeName);
    if (!exists) throw new CisternError('UNKNOWN_VOLUME', `no volume ${volumeName}`);
    return this.rules.get(volumeName) ?? { allowedInitiators: [] };
  }
}

export interface VolumeSpec {
  name: string;
  sizeBytes: number;
  readOnly?: boolean;
}

export interface ServedTarget {
  server: IscsiServer;
  provider: MemoryExportProvider;
  access: MemoryAccess;
  port: number;
  /** Logical units made by the stub factory, by volume name (the last one made). */
  units: Map<string, StubUnit>;
  unexpectedErrors: unknown[];
  /** Every session the server admitted, in order. */
  sessions: Session[];
  url(volume: string, credentials?: { user: string; secret: string }): string;
  /** Closes the server; fails if it reported an unexpected error. */
  close(): Promise<void>;
}

export async function serveTarget(
  volumes: readonly VolumeSpec[],
  options: Partial<IscsiServerOptions> & { createLogicalUnit?: LogicalUnitFactory } = {},
  listenPort = 0,
): Promise<ServedTarget> {
  const provider = new MemoryExportProvider();
  for (const volume of volumes)
    provider.create(volume.name, volume.sizeBytes, { readOnly: volume.readOnly });
  const access = new MemoryAccess(provider);
  const units = new Map<string, StubUnit>();
  const unexpectedErrors: unknown[] = [];
  const sessions: Session[] = [];
  const createLogicalUnit: LogicalUnitFactory =
    options.createLogicalUnit ??
    ((handle, name) => {
      const unit = new StubUnit(handle);
      units.set(name, unit);
      return unit;
    });
  const server = new IscsiServer(provider, access, {
    ...options,
    createLogicalUnit,
    onUnexpectedError: (error) => unexpectedErrors.push(error),
    onSessionStarted: (session) => sessions.push(session),
  });
  const { port } = await server.listen('127.0.0.1', listenPort);
  return {
    server,
    provider,
    access,
    port,
    units,
    unexpectedErrors,
    sessions,
    url: (volume, credentials) => {
      const auth =
        credentials === undefined
          ? ''
          : `${encodeURIComponent(credentials.user)}%${encodeURIComponent(credentials.secret)}@`;
      return `iscsi://${auth}127.0.0.1:${port}/${IscsiServer.targetName(volume)}/0`;
    },
    close: async () => {
      await server.close();
      assert.deepEqual(unexpectedErrors, [], 'the server reported unexpected errors');
    },
  };
}
