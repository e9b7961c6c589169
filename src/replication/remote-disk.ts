// A replica disk on another host, seen by a primary as an ObjectEndpoint. Each call is
// one peer request carrying the primary's map epoch. A host that cannot be reached is
// reported as EIO on that disk, so the primary takes the disk out of the acting set
// (through the cluster map) exactly as it does for a local disk that fails.

import { CisternError, isCisternError } from '../util/errors';
import { ObjectKey } from '../store/key';
import { Extent } from '../volume/backend';
import { ObjectEndpoint, PeerTransport } from './endpoint';
import { MessageType, parseObjectRequest } from './messages';

/** Pages of one activity record listing (each at most LIST_OBJECTS_MAX keys) before giving up. */
const ACTIVE_OBJECT_PAGES_MAX = 64;
import { ObjectChecksum } from './checksum';
import { LogTag, PgLogEntry, PgLogState, PgVersion, isVersion } from '../store/pg-log';

/** Pages of one PG log (each at most PG_LOG_PAGE_MAX entries) before giving up. */
const PG_LOG_PAGES_MAX = 64;

/**
 * A replica disk's daemon restarted after taking changes not yet flushed (UNREACHABLE: to
 * recovery a device failure, which takes the target out). A client flush that meets it
 * fails with EIO (LocalReplication.flush): the changes may be gone with the daemon's
 * caches; the disk stays in (its restart marked it stale where they may be: restart.ts).
 */
export class MemberRestarted extends CisternError {
  constructor(message: string) {
    super('UNREACHABLE', message);
  }
}

interface ChangedBy {
  incarnation?: string;
  restarted: boolean;
}

export class RemoteDisk implements ObjectEndpoint {
  /**
   * The incarnation of the daemon that took this disk's changes since the last flush
   * (handler.ts), and whether more than one did: a flush answered by another one would
   * vouch for changes the restarted daemon may have lost.
   */
  private changedBy: ChangedBy = { restarted: false };
  /** What flushes still under way took: a later flush checks those changes too. */
  private readonly flushesUnderWay = new Set<ChangedBy>();

  constructor(
    private readonly transport: PeerTransport,
    readonly hostId: string,
    readonly disk: number,
    private readonly epoch: () => number,
  ) {}

  /** A change's reply: notes which incarnation of the disk's daemon took it. */
  private noteChange(metadata: unknown): void {
    const incarnation = (metadata as { incarnation?: unknown } | undefined)?.incarnation;
    if (typeof incarnation !== 'string') return;
    const seen = this.changedBy.incarnation;
    if (seen !== undefined && seen !== incarnation) this.changedBy.restarted = true;
    this.changedBy.incarnation = incarnation;
  }

  private call(
    type: MessageType,
    key: ObjectKey,
    offset: number,
    length: number,
    extra: Record<string, unknown> = {},
    payload?: Uint8Array,
  ): Promise<{ metadata: unknown; payload?: Uint8Array }> {
    return this.request(type, { disk: this.disk, key, offset, length, ...extra }, payload);
  }

  private async request(
    type: MessageType,
    metadata: Record<string, unknown>,
    payload?: Uint8Array,
  ): Promise<{ metadata: unknown; payload?: Uint8Array }> {
    try {
      return await this.transport.request(this.hostId, type, this.epoch(), metadata, payload);
    } catch (error) {
      if (isCisternError(error, 'UNAVAILABLE') || isCisternError(error, 'CLOSED')) {
        // The primary takes the disk out for this: what it took since the last flush is
        // recovery's business when it comes back (stale), not a later flush's.
        this.changedBy = { restarted: false };
        throw new CisternError(
          'UNREACHABLE',
          `disk ${this.disk} on host ${this.hostId} unreachable: ${error.message}`,
          error,
        );
      }
      throw error;
    }
  }

  async read(key: ObjectKey, offset: number, length: number): Promise<Uint8Array> {
    const reply = await this.call(MessageType.DiskRead, key, offset, length);
    const data = reply.payload ?? new Uint8Array(0);
    if (data.length !== length) {
      throw new CisternError(
        'EIO',
        `disk ${this.disk} on ${this.hostId} returned ${data.length} of ${length} bytes`,
      );
    }
    return data;
  }

  async write(
    key: ObjectKey,
    offset: number,
    data: Uint8Array,
    options: { fua?: boolean; log?: LogTag } = {},
  ): Promise<void> {
    const reply = await this.call(
      MessageType.DiskWrite,
      key,
      offset,
      data.length,
      { fua: options.fua === true, ...(options.log ? { log: options.log } : {}) },
      data,
    );
    this.noteChange(reply.metadata);
  }

  async trim(key: ObjectKey, offset: number, length: number, log?: LogTag): Promise<void> {
    const extra = log ? { log } : {};
    this.noteChange((await this.call(MessageType.DiskTrim, key, offset, length, extra)).metadata);
  }

  async zero(key: ObjectKey, offset: number, length: number, log?: LogTag): Promise<void> {
    const extra = log ? { log } : {};
    this.noteChange((await this.call(MessageType.DiskZero, key, offset, length, extra)).metadata);
  }

  async blockStatus(key: ObjectKey, offset: number, length: number): Promise<Extent[]> {
    const reply = await this.call(MessageType.DiskBlockStatus, key, offset, length);
    return parseExtents(reply.metadata);
  }

  async deleteObject(key: ObjectKey, log?: LogTag): Promise<boolean> {
    const reply = await this.call(MessageType.DiskDelete, key, 0, 0, log ? { log } : {});
    this.noteChange(reply.metadata);
    return (reply.metadata as { existed?: unknown } | undefined)?.existed === true;
  }

  /** Scrub: the object's content checksum, computed by the disk's host. */
  async checksum(key: ObjectKey, objectSizeBytes: number): Promise<ObjectChecksum> {
    const reply = await this.call(MessageType.DiskChecksum, key, 0, objectSizeBytes);
    const { digest, bytesRead } = (reply.metadata ?? {}) as Partial<ObjectChecksum>;
    if (typeof digest !== 'string' || typeof bytesRead !== 'number') {
      throw new CisternError(
        'EIO',
        `disk ${this.disk} on ${this.hostId} sent a malformed checksum`,
      );
    }
    return { digest, bytesRead };
  }

  /** Peering: this disk's activity record for `pool`, fetched page by page. */
  async activeObjects(pool: number, carriedOver = false): Promise<ObjectKey[]> {
    const keys: ObjectKey[] = [];
    let after: ObjectKey | undefined;
    for (let page = 0; page < ACTIVE_OBJECT_PAGES_MAX; page += 1) {
      const reply = await this.request(MessageType.DiskActiveObjects, {
        disk: this.disk,
        pool,
        ...(carriedOver ? { carriedOver } : {}),
        ...(after ? { after } : {}),
      });
      const { keys: batch, truncated } = (reply.metadata ?? {}) as {
        keys?: unknown;
        truncated?: unknown;
      };
      if (!Array.isArray(batch))
        throw new CisternError('EIO', `disk ${this.disk} on ${this.hostId} sent no key list`);
      for (const raw of batch) keys.push(parseObjectRequest({ key: raw }).key);
      if (truncated !== true || batch.length === 0) return keys;
      after = keys[keys.length - 1];
    }
    throw new CisternError('EIO', `activity record of disk ${this.disk} did not end`);
  }

  /** Recovery: the disk's PG log, fetched page by page (handler.ts PG_LOG_PAGE_MAX). */
  async pgLog(pool: number, pg: number, after?: PgVersion): Promise<PgLogState> {
    const result: PgLogState = { entries: [] };
    let from = after;
    for (let page = 0; page < PG_LOG_PAGES_MAX; page += 1) {
      const reply = await this.request(MessageType.DiskPgLog, {
        disk: this.disk,
        pool,
        pg,
        ...(from ? { after: from } : {}),
      });
      const m = (reply.metadata ?? {}) as Record<string, unknown>;
      if (!Array.isArray(m['entries']))
        throw new CisternError('EIO', `disk ${this.disk} on ${this.hostId} sent no PG log`);
      if (page === 0) {
        if (isVersion(m['complete'])) result.complete = m['complete'];
        if (isVersion(m['start'])) result.start = m['start'];
      }
      const batch = (m['entries'] as unknown[]).map((raw) => parseEntry(raw, this.disk));
      result.entries.push(...batch);
      if (m['truncated'] !== true || batch.length === 0) return result;
      from = batch[batch.length - 1]!.version;
    }
    throw new CisternError('EIO', `PG log of disk ${this.disk} did not end`);
  }

  async markPgLog(
    pool: number,
    pg: number,
    mark: { start: PgVersion; complete?: PgVersion },
  ): Promise<void> {
    await this.request(MessageType.DiskPgLog, { disk: this.disk, pool, pg, mark });
  }

  /**
   * Flushes the disk. When the daemon answering is not the one that took the changes
   * since the last flush (it restarted), those may be lost: UNREACHABLE, so the primary
   * takes the disk out (it comes back stale and is recovered) rather than count it.
   */
  async flush(): Promise<void> {
    const changedBy = this.changedBy;
    this.changedBy = { restarted: false };
    // Changes an earlier flush took and has not yet seen flushed were acknowledged before
    // this one was asked for: this flush vouches for them as well.
    const covered = [changedBy, ...this.flushesUnderWay];
    this.flushesUnderWay.add(changedBy);
    let reply: { metadata: unknown };
    try {
      reply = await this.call(MessageType.DiskFlush, { pool: 0, volume: 0, object: 0 }, 0, 0);
    } finally {
      this.flushesUnderWay.delete(changedBy);
    }
    const now = (reply.metadata as { incarnation?: unknown } | undefined)?.incarnation;
    const lost = covered.some(
      (by) =>
        by.restarted ||
        (by.incarnation !== undefined && typeof now === 'string' && now !== by.incarnation),
    );
    if (lost) {
      throw new MemberRestarted(
        `disk ${this.disk} on host ${this.hostId}: its daemon restarted after taking writes ` +
          'not yet flushed; they may be lost',
      );
    }
  }
}

function parseEntry(raw: unknown, disk: number): PgLogEntry {
  const e = raw as Partial<PgLogEntry> | null;
  if (typeof e !== 'object' || e === null || !isVersion(e.version))
    throw new CisternError('EIO', `disk ${disk} sent a malformed PG log entry`);
  return { version: e.version, key: parseObjectRequest({ key: e.key }).key };
}

/** Extents from a peer's reply, checked: a malformed reply is an I/O error, not a crash. */
export function parseExtents(metadata: unknown): Extent[] {
  const list = (metadata as { extents?: unknown } | undefined)?.extents;
  if (!Array.isArray(list)) throw new CisternError('EIO', 'peer sent block status without extents');
  return list.map((item: unknown) => {
    const e = item as Partial<Extent>;
    if (typeof e.length !== 'number' || !Number.isSafeInteger(e.length) || e.length < 0) {
      throw new CisternError('EIO', 'peer sent a malformed extent');
    }
    return { length: e.length, hole: e.hole === true, zero: e.zero === true };
  });
}
