// The bounded PG log of one disk (DESIGN "Replication": a PG version per write, a
// bounded log of recent versions → objects). The PG's primary gives every change
// (write, trim, zero, delete) a version (epoch, seq); each member records, per PG, the
// changes it applied, newest PG_LOG_ENTRIES_MAX of them, plus two versions:
//   - `complete`: this disk holds the effect of every change of the PG up to it. Only
//     the primary can know that (it sees every change settle), so it sends its
//     watermark with each change, and a member that is not stale takes it.
//   - `start`: the log lists every change this disk holds past it. Raised when the
//     oldest entry is trimmed, and to a change's version whenever the disk takes one
//     while stale (it missed changes before it: a hole in its log), and by recovery.
// Recovery of a stale member asks its `complete`: if the primary's log reaches back
// to it (the primary's `start` ≤ it), only the objects logged after it are copied.
//
// Pure: the ObjectStore persists what `takeJournal` returns in its commit batch (the
// same batch as the object records the entries cover), and the simulator's disk keeps
// a durable and a current book. No clock, no I/O.

import { assert } from '../util/assert';
import { ObjectKey, OBJECT_KEY_BYTES, decodeObjectKey, encodeObjectKey } from './key';

/**
 * Entries kept per PG on each disk. *Why 2048:* the log only has to cover a member's
 * brief absence — a restart, a cut cable, a lease that lapsed — and at a busy 40
 * changes per second per PG (10 000 writes/s over 256 PGs) that is about 50 s; a
 * longer absence is backfilled (compared object by object). Memory and index cost per
 * disk: about 100 PGs × 2048 × ~100 bytes ≈ 20 MB at most, loaded at open.
 */
export const PG_LOG_ENTRIES_MAX = 2048;

export interface PgVersion {
  epoch: number;
  seq: number;
}

/** What the primary sends with a change to each member. */
export interface LogTag {
  pg: number;
  version: PgVersion;
  /** The primary's watermark: every change of the PG up to it has settled on every member. */
  complete?: PgVersion;
  /** The member is stale: it missed changes, so its log has a hole before this one. */
  stale?: boolean;
}

export interface PgLogEntry {
  version: PgVersion;
  key: ObjectKey;
}

/** One PG's log as a disk reports it. */
export interface PgLogState {
  complete?: PgVersion;
  start?: PgVersion;
  /** Entries newer than the `after` asked for, oldest first. */
  entries: PgLogEntry[];
}

/** A LevelDB operation, for the store's commit batch. */
export type JournalOp = { type: 'put'; key: Buffer; value: Buffer } | { type: 'del'; key: Buffer };

export function compareVersions(a: PgVersion, b: PgVersion): number {
  return a.epoch !== b.epoch ? a.epoch - b.epoch : a.seq - b.seq;
}

export function maxVersion(
  a: PgVersion | undefined,
  b: PgVersion | undefined,
): PgVersion | undefined {
  if (!a) return b;
  if (!b) return a;
  return compareVersions(a, b) >= 0 ? a : b;
}

export function isVersion(value: unknown): value is PgVersion {
  const v = value as PgVersion | null;
  return (
    typeof v === 'object' &&
    v !== null &&
    Number.isSafeInteger(v.epoch) &&
    Number.isSafeInteger(v.seq) &&
    v.epoch >= 0 &&
    v.epoch <= 0xffffffff &&
    v.seq >= 0
  );
}

export function formatVersion(v: PgVersion | undefined): string {
  return v ? `${v.epoch}.${v.seq}` : 'none';
}

// Index schema (layout.ts lists the tables): 0x03 ‖ pool u32 ‖ pg u32 ‖ epoch u32 ‖
// seq u64 → object key; 0x04 ‖ pool u32 ‖ pg u32 → complete and start.
const LOG_TABLE = 0x03;
const LOG_META_TABLE = 0x04;
const PG_PREFIX_BYTES = 1 + 8;
const ENTRY_KEY_BYTES = PG_PREFIX_BYTES + 12;
const META_BYTES = 2 * 13;

function pgPrefix(table: number, pool: number, pg: number): Buffer {
  const bytes = Buffer.allocUnsafe(PG_PREFIX_BYTES);
  bytes.writeUInt8(table, 0);
  bytes.writeUInt32BE(pool, 1);
  bytes.writeUInt32BE(pg, 5);
  return bytes;
}

function writeVersion(bytes: Buffer, offset: number, v: PgVersion): void {
  bytes.writeUInt32BE(v.epoch, offset);
  bytes.writeUInt32BE(Math.floor(v.seq / 2 ** 32), offset + 4);
  bytes.writeUInt32BE(v.seq % 2 ** 32, offset + 8);
}

function readVersion(bytes: Buffer, offset: number): PgVersion {
  return {
    epoch: bytes.readUInt32BE(offset),
    seq: bytes.readUInt32BE(offset + 4) * 2 ** 32 + bytes.readUInt32BE(offset + 8),
  };
}

function entryIndexKey(pool: number, pg: number, v: PgVersion): Buffer {
  const bytes = Buffer.alloc(ENTRY_KEY_BYTES);
  pgPrefix(LOG_TABLE, pool, pg).copy(bytes, 0);
  writeVersion(bytes, PG_PREFIX_BYTES, v);
  return bytes;
}

/** [gte, lt) of every log entry key, and of every meta key. */
export function pgLogIndexRanges(): Array<{ gte: Buffer; lt: Buffer }> {
  return [
    { gte: Buffer.from([LOG_TABLE]), lt: Buffer.from([LOG_TABLE + 1]) },
    { gte: Buffer.from([LOG_META_TABLE]), lt: Buffer.from([LOG_META_TABLE + 1]) },
  ];
}

class PgLog {
  /** Oldest first. Changes arrive nearly in version order; an insert keeps the order. */
  entries: PgLogEntry[] = [];
  complete: PgVersion | undefined;
  start: PgVersion | undefined;
}

export class PgLogBook {
  private readonly logs = new Map<string, PgLog>();
  private journal: JournalOp[] = [];

  /** `journaling`: keep the index operations each change implies (the ObjectStore does). */
  constructor(private readonly journaling = false) {}

  private log(pool: number, pg: number): PgLog {
    const name = `${pool}:${pg}`;
    let log = this.logs.get(name);
    if (!log) {
      log = new PgLog();
      this.logs.set(name, log);
    }
    return log;
  }

  /** A change of `key` tagged `tag` has completed on this disk. */
  record(key: ObjectKey, tag: LogTag): void {
    assert(isVersion(tag.version), 'log tag without a version');
    const log = this.log(key.pool, tag.pg);
    const entry = { version: { ...tag.version }, key: { ...key } };
    let at = log.entries.length;
    while (at > 0 && compareVersions(log.entries[at - 1]!.version, entry.version) > 0) at -= 1;
    const same = log.entries[at - 1];
    if (!same || compareVersions(same.version, entry.version) !== 0) {
      log.entries.splice(at, 0, entry);
      if (this.journaling) {
        this.journal.push({
          type: 'put',
          key: entryIndexKey(key.pool, tag.pg, entry.version),
          value: encodeObjectKey(key),
        });
      }
    }
    let meta = false;
    if (tag.stale) {
      // Changes before this one may be missing here: the log is whole only after it.
      log.start = maxVersion(log.start, entry.version);
      meta = true;
    } else if (tag.complete && isVersion(tag.complete)) {
      const next = maxVersion(log.complete, tag.complete);
      meta = next !== log.complete;
      log.complete = next;
    }
    while (log.entries.length > PG_LOG_ENTRIES_MAX) {
      const oldest = log.entries.shift()!;
      log.start = maxVersion(log.start, oldest.version);
      meta = true;
      if (this.journaling)
        this.journal.push({ type: 'del', key: entryIndexKey(key.pool, tag.pg, oldest.version) });
    }
    if (meta) this.journalMeta(key.pool, tag.pg, log);
  }

  /**
   * Recovery made this disk whole for the PG up to `complete` (if given); its log lists
   * nothing before `start` reliably (the changes it missed were copied, not logged).
   */
  mark(pool: number, pg: number, mark: { start: PgVersion; complete?: PgVersion }): void {
    const log = this.log(pool, pg);
    log.start = maxVersion(log.start, mark.start);
    log.complete = maxVersion(log.complete, mark.complete);
    this.journalMeta(pool, pg, log);
  }

  /**
   * The disk's copies of the PG's objects are being removed without versions (stray
   * removal, once the PG moved away): it no longer holds what its log says. Entries and
   * `complete` go; `start` is raised to `start` (were the disk to rejoin the PG, it is
   * recovered as one that holds nothing of it).
   */
  forget(pool: number, pg: number, start: PgVersion): void {
    const log = this.log(pool, pg);
    if (this.journaling) {
      for (const entry of log.entries)
        this.journal.push({ type: 'del', key: entryIndexKey(pool, pg, entry.version) });
    }
    log.entries = [];
    log.complete = undefined;
    log.start = maxVersion(log.start, start);
    this.journalMeta(pool, pg, log);
  }

  /** The PG's log: its versions and the entries newer than `after`, at most `limit`. */
  state(pool: number, pg: number, after?: PgVersion, limit = PG_LOG_ENTRIES_MAX): PgLogState {
    const log = this.logs.get(`${pool}:${pg}`);
    if (!log) return { entries: [] };
    const entries = log.entries
      .filter((e) => !after || compareVersions(e.version, after) > 0)
      .slice(0, limit)
      .map((e) => ({ version: { ...e.version }, key: { ...e.key } }));
    return {
      ...(log.complete ? { complete: { ...log.complete } } : {}),
      ...(log.start ? { start: { ...log.start } } : {}),
      entries,
    };
  }

  /** Whether changes wait for a commit (what `state` says may not be durable yet). */
  get journalPending(): boolean {
    return this.journal.length > 0;
  }

  /** Index operations waiting for a commit (the store bounds them: MAX_LOG_JOURNAL_OPS). */
  get journalLength(): number {
    return this.journal.length;
  }

  /** The index operations since the last call (the commit's snapshot takes them). */
  takeJournal(): JournalOp[] {
    const taken = this.journal;
    this.journal = [];
    return taken;
  }

  /** A failed commit: its operations go first again, before any taken since. */
  restoreJournal(ops: JournalOp[]): void {
    this.journal = ops.concat(this.journal);
  }

  /** Rebuilds the book from the index at open (keys and values of pgLogIndexRanges). */
  load(indexKey: Buffer, value: Buffer): void {
    const pool = indexKey.readUInt32BE(1);
    const pg = indexKey.readUInt32BE(5);
    const log = this.log(pool, pg);
    if (indexKey[0] === LOG_TABLE) {
      assert(indexKey.length === ENTRY_KEY_BYTES && value.length === OBJECT_KEY_BYTES, 'log entry');
      // Keys come in index order, which is version order.
      log.entries.push({
        version: readVersion(indexKey, PG_PREFIX_BYTES),
        key: decodeObjectKey(value),
      });
    } else {
      assert(indexKey[0] === LOG_META_TABLE && value.length === META_BYTES, 'log meta');
      if (value[0] === 1) log.complete = readVersion(value, 1);
      if (value[13] === 1) log.start = readVersion(value, 14);
    }
  }

  /** A copy (the simulator's disk keeps a durable book and replays onto it). */
  clone(): PgLogBook {
    const copy = new PgLogBook(this.journaling);
    for (const [name, log] of this.logs) {
      const c = new PgLog();
      c.entries = log.entries.map((e) => ({ version: { ...e.version }, key: { ...e.key } }));
      c.complete = log.complete;
      c.start = log.start;
      copy.logs.set(name, c);
    }
    return copy;
  }

  private journalMeta(pool: number, pg: number, log: PgLog): void {
    if (!this.journaling) return;
    const value = Buffer.alloc(META_BYTES);
    if (log.complete) {
      value[0] = 1;
      writeVersion(value, 1, log.complete);
    }
    if (log.start) {
      value[13] = 1;
      writeVersion(value, 14, log.start);
    }
    this.journal.push({ type: 'put', key: pgPrefix(LOG_META_TABLE, pool, pg), value });
  }
}
