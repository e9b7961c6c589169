// The iSCSI target: listens on TCP and serves every volume of an ExportProvider as the
// target `iqn.2026-11.io.cistern:<volume>` with its disk at LUN 0. Transport only — the
// SCSI command set comes from the LogicalUnitFactory, storage from the VolumeHandle the
// logical unit is made over. One logical unit per volume, shared by every session of this
// server: opened at the first login to the volume, closed when its last session ends.
// Connections are independent: a broken or hostile initiator only loses its own.

import * as crypto from 'node:crypto';
import { ConnectionListeners } from '../../net/connections';
import { BufferCache } from '../../store/buffer-cache';
import { assert } from '../../util/assert';
import { CisternError, isCisternError } from '../../util/errors';
import type { ExportProvider } from '../../volume/backend';
import { TARGET_NAME_PREFIX, type AccessProvider, type LogicalUnitFactory } from './access';
import { IscsiConnection, type ConnectionConfig } from './connection';
import {
  initiatorAllowed,
  LoginStatuses,
  type CompletedLogin,
  type LoginContext,
  type TargetLookup,
} from './login';
import { initiatorPort, type Session } from './session';
import type { LogicalUnit } from './scsi-task';
import { validateLimits, type TargetLimits, type TextPairs } from './text';

/**
 * The largest data segment we accept (declared as our MaxRecvDataSegmentLength). 256 KiB
 * keeps PDU overhead small for large transfers while bounding what one unparsed PDU can
 * make us buffer; Linux and libiscsi both take it.
 */
export const MAX_RECV_DATA_SEGMENT_BYTES = 256 * 1024;
/** Solicited data per R2T: 1 MiB sequences keep R2T round trips rare for large writes. */
export const MAX_BURST_BYTES = 1024 * 1024;
/**
 * Unsolicited data per write (immediate plus Data-Out before the first R2T). It arrives
 * whether or not we have room, so it is what the CmdSN window multiplies: 128 × 256 KiB
 * = 32 MiB per connection at worst.
 */
export const FIRST_BURST_BYTES = 256 * 1024;
/** R2Ts outstanding per task: several sequences in flight hide the round trip. */
export const MAX_OUTSTANDING_R2T = 4;
/** CmdSN window: commands outstanding per session (qemu queues 128, Linux 128 by default). */
export const DEFAULT_MAX_TASKS_PER_SESSION = 128;
/** Solicited write and read bytes held per connection before further transfers wait. */
export const DEFAULT_MAX_BUFFERED_BYTES = 128 * 1024 * 1024;
/**
 * Largest transfer one command may ask for. Above the logical unit's advertised maximum
 * (8 MiB) so that it, not the transport, answers commands that exceed it; below what
 * would let one command pin unbounded memory.
 */
export const DEFAULT_MAX_COMMAND_BYTES = 32 * 1024 * 1024;
/**
 * Free Data-Out buffers kept per size class, for all connections: sixteen 1 MiB write
 * buffers, as many as a queue depth of 16 large writes holds at once, so a steady
 * stream of them allocates nothing; more in flight than that allocate, and the GC takes
 * what comes back beyond it (BufferCache). Idle memory: this per size class in use.
 */
export const DATA_OUT_BUFFERS_CACHED_BYTES_MAX = 16 * 1024 * 1024;
/** Replies queued unread in the socket before we stop reading requests from it. */
export const DEFAULT_MAX_SEND_BACKLOG_BYTES = 16 * 1024 * 1024;
/** Concurrent connections per listener; beyond it the kernel keeps them in the backlog. */
export const MAX_CONNECTIONS_PER_LISTENER = 1024;
/** A connection that has not finished login by then is dropped (slow-loris guard). */
export const LOGIN_TIMEOUT_MS = 30_000;
/**
 * A connection silent this long gets a NOP-In ping, and one silent for the timeout after
 * it is closed: it finds initiators that vanished without a FIN (a crashed host) within
 * a minute, while an idle but live initiator costs one small PDU each way per half minute.
 */
export const KEEPALIVE_INTERVAL_MS = 30_000;
export const KEEPALIVE_TIMEOUT_MS = 30_000;
/** On close(), how long running commands get before their connection is dropped. */
export const SHUTDOWN_GRACE_MS = 10_000;
/** The portal group every listener of this server belongs to. */
export const DEFAULT_PORTAL_GROUP_TAG = 1;
/** TSIH values are 16 bits and 0 is reserved for "new session". */
const MAX_TSIH = 0xffff;

export interface IscsiServerOptions {
  createLogicalUnit: LogicalUnitFactory;
  portalGroupTag?: number;
  maxTasksPerSession?: number;
  maxBufferedBytes?: number;
  maxCommandBytes?: number;
  loginTimeoutMs?: number;
  shutdownGraceMs?: number;
  keepaliveIntervalMs?: number;
  keepaliveTimeoutMs?: number;
  /** Bugs and unexpected backend failures; protocol violations by initiators are not reported. */
  onUnexpectedError?: (error: unknown) => void;
  /** Each session admitted to full feature phase (for logs and tests). */
  onSessionStarted?: (session: Session) => void;
}

export interface ListenAddress {
  host: string;
  port: number;
}

interface UnitEntry {
  sessions: number;
  unit: Promise<LogicalUnit>;
}

interface SessionEntry {
  session: Session;
  connection: IscsiConnection;
}

export class IscsiServer {
  private readonly config: ConnectionConfig;
  private readonly listeners: ConnectionListeners<IscsiConnection>;
  private readonly sessions = new Map<number, SessionEntry>();
  private readonly units = new Map<string, UnitEntry>();
  /** Units being closed: a new login to the volume waits for the close to finish. */
  private readonly unitsClosing = new Map<string, Promise<void>>();
  private nextTsih = 1;
  /** Admissions under way (opening a volume): close() waits for them and what they opened. */
  private readonly admitting = new Set<Promise<void>>();
  private closing: Promise<void> | undefined;
  private readonly createLogicalUnit: LogicalUnitFactory;
  private readonly onSessionStarted: (session: Session) => void;
  private readonly limits: TargetLimits = {
    maxRecvDataSegmentLength: MAX_RECV_DATA_SEGMENT_BYTES,
    maxBurstLength: MAX_BURST_BYTES,
    firstBurstLength: FIRST_BURST_BYTES,
    maxOutstandingR2T: MAX_OUTSTANDING_R2T,
  };

  constructor(
    private readonly provider: ExportProvider,
    private readonly accessProvider: AccessProvider,
    options: IscsiServerOptions,
  ) {
    validateLimits(this.limits);
    this.createLogicalUnit = options.createLogicalUnit;
    this.onSessionStarted = options.onSessionStarted ?? (() => undefined);
    const portalGroupTag = options.portalGroupTag ?? DEFAULT_PORTAL_GROUP_TAG;
    assert(
      Number.isInteger(portalGroupTag) && portalGroupTag >= 0 && portalGroupTag <= 0xffff,
      'TPGT',
    );
    const maxTasksPerSession = options.maxTasksPerSession ?? DEFAULT_MAX_TASKS_PER_SESSION;
    assert(Number.isInteger(maxTasksPerSession) && maxTasksPerSession >= 1, 'maxTasksPerSession');
    const maxCommandBytes = options.maxCommandBytes ?? DEFAULT_MAX_COMMAND_BYTES;
    const maxBufferedBytes = options.maxBufferedBytes ?? DEFAULT_MAX_BUFFERED_BYTES;
    assert(maxBufferedBytes >= maxCommandBytes, 'maxBufferedBytes below one command');
    this.config = {
      limits: this.limits,
      portalGroupTag,
      maxTasksPerSession,
      maxBufferedBytes,
      dataOutBuffers: new BufferCache(
        (length) => Buffer.allocUnsafeSlow(length),
        DATA_OUT_BUFFERS_CACHED_BYTES_MAX,
      ),
      maxCommandBytes,
      maxSendBacklogBytes: DEFAULT_MAX_SEND_BACKLOG_BYTES,
      loginTimeoutMs: options.loginTimeoutMs ?? LOGIN_TIMEOUT_MS,
      shutdownGraceMs: options.shutdownGraceMs ?? SHUTDOWN_GRACE_MS,
      keepaliveIntervalMs: options.keepaliveIntervalMs ?? KEEPALIVE_INTERVAL_MS,
      keepaliveTimeoutMs: options.keepaliveTimeoutMs ?? KEEPALIVE_TIMEOUT_MS,
      onUnexpectedError:
        options.onUnexpectedError ??
        ((error) => console.error('iscsi server: unexpected error', error)),
      loginContext: (connection) => this.loginContext(connection),
      sendTargets: (session, which, address, port) =>
        this.sendTargets(session, which, address, port),
      sessionEnded: (session) => this.sessionEnded(session),
    };
    const config = this.config;
    this.listeners = new ConnectionListeners({
      serverName: 'iSCSI server',
      maxConnectionsPerListener: MAX_CONNECTIONS_PER_LISTENER,
      connect: (socket) => new IscsiConnection(socket, config),
      onListenerError: (error) => config.onUnexpectedError(error),
    });
  }

  /** Listens on TCP; port 0 picks a free port. Resolves to the address actually bound. */
  listen(host: string, port: number): Promise<ListenAddress> {
    return this.listeners.listen(host, port);
  }

  get connectionCount(): number {
    return this.listeners.connections.size;
  }

  /** Each open connection's state, for diagnostics. */
  describeConnections(): string[] {
    return [...this.listeners.connections].map((connection) => connection.describe());
  }

  get sessionCount(): number {
    return this.sessions.size;
  }

  /** Stops accepting, lets running commands finish (up to the grace period), closes everything. Idempotent. */
  close(): Promise<void> {
    this.closing ??= this.closeAll();
    return this.closing;
  }

  private async closeAll(): Promise<void> {
    await this.listeners.close();
    await Promise.all(this.admitting);
    await Promise.all(this.unitsClosing.values());
  }

  // ---- Targets ---------------------------------------------------------------------------------

  /** The target name of a volume (IQNs are lowercase; volume names may not be). */
  static targetName(volumeName: string): string {
    return `${TARGET_NAME_PREFIX}${volumeName.toLowerCase()}`;
  }

  private async resolveTarget(targetName: string): Promise<TargetLookup> {
    const wanted = targetName.toLowerCase();
    if (!wanted.startsWith(TARGET_NAME_PREFIX)) return { kind: 'not-found' };
    const matches = (await this.provider.list()).filter(
      (info) => IscsiServer.targetName(info.name) === wanted,
    );
    if (matches.length > 1) return { kind: 'ambiguous' };
    const only = matches[0];
    return only === undefined ? { kind: 'not-found' } : { kind: 'found', volumeName: only.name };
  }

  private async sendTargets(
    session: Session,
    which: string,
    localAddress: string,
    localPort: number,
  ): Promise<TextPairs> {
    const exports = await this.provider.list();
    const names = new Map<string, string[]>();
    for (const info of exports) {
      const target = IscsiServer.targetName(info.name);
      names.set(target, [...(names.get(target) ?? []), info.name]);
    }
    let wanted: string | undefined;
    if (which === 'All') {
      if (session.type !== 'discovery') return [['SendTargets', 'Reject']];
    } else if (which === '') {
      wanted = session.targetName?.toLowerCase();
      if (wanted === undefined) return [];
    } else {
      wanted = which.toLowerCase();
    }
    const host = localAddress.includes(':') ? `[${localAddress}]` : localAddress;
    const address = `${host}:${localPort},${this.config.portalGroupTag}`;
    const pairs: TextPairs = [];
    for (const [target, volumes] of names) {
      // Two volumes whose names differ only in case have no usable target name.
      if (volumes.length !== 1 || (wanted !== undefined && target !== wanted)) continue;
      const volume = volumes[0] as string;
      let visible: boolean;
      try {
        visible = initiatorAllowed(await this.accessProvider.access(volume), session.initiatorName);
      } catch (error) {
        if (isCisternError(error, 'UNKNOWN_VOLUME')) continue;
        throw error;
      }
      if (!visible) continue;
      pairs.push(['TargetName', target], ['TargetAddress', address]);
    }
    return pairs;
  }

  // ---- Sessions ----------------------------------------------------------------------------------

  private loginContext(connection: IscsiConnection): LoginContext {
    return {
      limits: this.limits,
      portalGroupTag: this.config.portalGroupTag,
      resolveTarget: (name) => this.resolveTarget(name),
      access: (volume) => this.accessProvider.access(volume),
      admit: (login) => {
        const admitted = this.admit(connection, login);
        const settled = admitted.then(
          () => undefined,
          () => undefined,
        );
        this.admitting.add(settled);
        void settled.then(() => this.admitting.delete(settled));
        return admitted;
      },
      randomBytes: (count) => crypto.randomBytes(count),
    };
  }

  private async admit(
    connection: IscsiConnection,
    login: CompletedLogin,
  ): Promise<{ tsih: number } | { failure: (typeof LoginStatuses)[keyof typeof LoginStatuses] }> {
    if (this.closing !== undefined) return { failure: LoginStatuses.SERVICE_UNAVAILABLE };
    if (login.requestedTsih !== 0) {
      // MaxConnections=1: no connection can be added to an existing session.
      const existing = this.sessions.get(login.requestedTsih);
      return {
        failure:
          existing === undefined
            ? LoginStatuses.SESSION_DOES_NOT_EXIST
            : LoginStatuses.TOO_MANY_CONNECTIONS,
      };
    }
    // Session reinstatement: the same initiator port (name + ISID) to the same target
    // replaces its old session, whose tasks end with it.
    for (const entry of [...this.sessions.values()]) {
      const old = entry.session;
      if (
        old.initiatorName === login.initiatorName &&
        old.isid === login.isid &&
        old.targetName?.toLowerCase() === login.targetName?.toLowerCase() &&
        old.type === login.sessionType
      ) {
        await entry.connection.terminate();
      }
    }
    const tsih = this.allocateTsih();
    if (tsih === undefined) return { failure: LoginStatuses.OUT_OF_RESOURCES };
    let lu: LogicalUnit | undefined;
    if (login.sessionType === 'normal') {
      assert(
        login.volumeName !== undefined && login.targetName !== undefined,
        'normal login without a target',
      );
      try {
        lu = await this.acquireUnit(login.volumeName);
      } catch (error) {
        if (!isCisternError(error)) this.config.onUnexpectedError(error);
        return {
          failure: isCisternError(error, 'UNKNOWN_VOLUME')
            ? LoginStatuses.NOT_FOUND
            : LoginStatuses.SERVICE_UNAVAILABLE,
        };
      }
    }
    const targetName =
      login.targetName === undefined ? undefined : IscsiServer.targetName(login.volumeName ?? '');
    const session: Session = {
      tsih,
      type: login.sessionType,
      initiatorName: login.initiatorName,
      isid: login.isid,
      targetName,
      volumeName: login.volumeName,
      port:
        targetName === undefined
          ? undefined
          : initiatorPort(login.initiatorName, login.isid, targetName, this.config.portalGroupTag),
      lu,
      params: login.params,
    };
    this.sessions.set(tsih, { session, connection });
    if (!connection.attachSession(session)) {
      // The initiator went away while we opened its volume.
      await this.sessionEnded(session);
      return { failure: LoginStatuses.SERVICE_UNAVAILABLE };
    }
    this.onSessionStarted(session);
    return { tsih };
  }

  private allocateTsih(): number | undefined {
    for (let tries = 0; tries < MAX_TSIH; tries += 1) {
      const tsih = this.nextTsih;
      this.nextTsih = this.nextTsih >= MAX_TSIH ? 1 : this.nextTsih + 1;
      if (!this.sessions.has(tsih)) return tsih;
    }
    return undefined;
  }

  private async sessionEnded(session: Session): Promise<void> {
    if (this.sessions.get(session.tsih)?.session === session) this.sessions.delete(session.tsih);
    if (session.lu === undefined || session.volumeName === undefined || session.port === undefined)
      return;
    session.lu.nexusLost(session.port);
    await this.releaseUnit(session.volumeName);
  }

  private async acquireUnit(volumeName: string): Promise<LogicalUnit> {
    await this.unitsClosing.get(volumeName);
    let entry = this.units.get(volumeName);
    if (entry === undefined) {
      const unit = this.openUnit(volumeName);
      entry = { sessions: 0, unit };
      this.units.set(volumeName, entry);
      unit.catch(() => {
        if (this.units.get(volumeName) === entry) this.units.delete(volumeName);
      });
    }
    entry.sessions += 1;
    try {
      return await entry.unit;
    } catch (error) {
      entry.sessions -= 1;
      throw error;
    }
  }

  private async openUnit(volumeName: string): Promise<LogicalUnit> {
    const info = (await this.provider.list()).find((candidate) => candidate.name === volumeName);
    if (info === undefined) throw new CisternError('UNKNOWN_VOLUME', `no volume ${volumeName}`);
    const handle = await this.provider.open(volumeName, { readOnly: info.readOnly });
    return this.createLogicalUnit(handle, volumeName);
  }

  private async releaseUnit(volumeName: string): Promise<void> {
    const entry = this.units.get(volumeName);
    assert(entry !== undefined && entry.sessions > 0, `release of ${volumeName} without a session`);
    entry.sessions -= 1;
    if (entry.sessions > 0) return;
    this.units.delete(volumeName);
    const closing = entry.unit.then((unit) => unit.close());
    this.unitsClosing.set(
      volumeName,
      closing.catch(() => undefined),
    );
    try {
      await closing;
    } catch (error) {
      this.config.onUnexpectedError(error);
    } finally {
      this.unitsClosing.delete(volumeName);
    }
  }
}
