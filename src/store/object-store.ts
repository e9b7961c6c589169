// One object store per disk: the device is cut into fixed slots, one object per slot,
// and a LevelDB index maps each object key to its slot and to the 4 KiB blocks of it
// that were ever written. Unwritten blocks read as zeros without touching the device;
// an object takes a slot only once written (thin provisioning).
//
// Crash safety (DESIGN invariants 1 and 2) rests on three orderings, argued where
// they are enforced:
//   1. data before the bitmap that exposes it (commit: snapshot, device flush, batch);
//   2. a freed slot is reused only after the free is durable (pendingFree → free);
//   3. hole punches finish before their slot can be handed to anyone else.
// Metadata is group-committed at flush boundaries, never synced per write.

import { ClassicLevel } from 'classic-level';
import { AssertionError, assert } from '../util/assert';
import { CisternError, fromErrno, isCisternError } from '../util/errors';
import type { Extent } from '../volume/backend';
import { bitRuns, bitmapBytes, clearBit, getBit, setBit } from './bitmap';
import { BufferCache, type BufferLease, ownedLease } from './buffer-cache';
import type { BlockDevice } from './device';
import {
  checkObjectKey,
  decodeObjectKey,
  encodeObjectKey,
  formatObjectKey,
  objectKeyPrefix,
  type ObjectKey,
  type ObjectKeyFilter,
} from './key';
import {
  BLOCK_SIZE_BYTES,
  OBJECT_SIZE_DEFAULT_BYTES,
  SUPERBLOCK_BYTES,
  SUPERBLOCK_INDEX_KEY,
  activityIndexKey,
  activityIndexRange,
  checkObjectSize,
  decodeRecord,
  decodeSuperblock,
  encodeRecord,
  encodeSuperblock,
  newGeometry,
  objectIndexKey,
  objectIndexRange,
  objectKeyOfActivityKey,
  objectKeyOfIndexKey,
  type Geometry,
} from './layout';
import { RwLock } from './rw-lock';
import { LogTag, PgLogBook, PgLogState, PgVersion, pgLogIndexRanges } from './pg-log';

/** Operations running at once; more wait in a queue. Bounds device queue depth from one store. */
export const MAX_IN_FLIGHT_OPS = 256;
/** Operations waiting for admission; beyond this a request fails with UNAVAILABLE. */
export const MAX_QUEUED_OPS = 4096;
/** Objects changed since the last commit; reaching it forces a commit (bounds memory and batch). */
export const MAX_DIRTY_OBJECTS = 8192;
/**
 * PG-log index operations (pg-log.ts: an entry put per change, the trimmed entry's delete
 * and the PG's versions) waiting for a commit; reaching it forces one, as the dirty-object
 * bound does. *Why:* a client that never flushes (fio over NBD does not) may rewrite a
 * few objects forever — the dirty set stays small while the journal grew without end,
 * in memory and into one commit batch (a journal of ~125 000 spread into a call
 * overflowed the stack and took every disk out). 32 768 operations are 2 to 3 MB and one
 * commit per 11 000 to 33 000 changes: rare beside a client's own flushes, a quarter of
 * that overflow, and a batch LevelDB writes in milliseconds.
 */
export const MAX_LOG_JOURNAL_OPS = 32_768;
/** Records per LevelDB batch; a bigger commit is split (each record stands alone). */
export const MAX_COMMIT_BATCH_RECORDS = 8192;
/** Clean object records kept in memory (about 200 bytes each at 4 MiB objects). */
export const MAX_CACHED_OBJECTS = 65536;
/**
 * The activity record (objects that may have changed since the last flush, so replicas
 * may differ on them after a crash) keeps a mark at least this long after the object's
 * last change, and past a commit. Longer than it takes a dead primary to reach the map
 * (a 10 s lease, a monitor tick) plus the 30 s peer request timeout that ends the
 * writes it had in flight: the new primary asks for the marks before they go.
 */
export const ACTIVITY_MARK_RETAIN_MS = 60_000;
/**
 * Marks kept at most, about: beyond it a commit clears every mark idle for one commit
 * interval whatever its age (the retention above shortens under extreme load rather
 * than the record growing). Peering compares or copies each marked object after a crash.
 */
export const ACTIVITY_MARKS_MAX = 16_384;
/** How far eviction looks for a clean, idle record before giving up for now. */
const EVICTION_SCAN_MAX = 64;

export interface OpenOptions {
  device: BlockDevice;
  /** Directory of this disk's LevelDB index. */
  indexPath: string;
  /** Power of two; default 4 MiB. When opening, must match the disk if given. */
  objectSizeBytes?: number;
  /** Initialise a new disk: writes a superblock and creates an empty index. */
  format?: boolean;
}

export interface WriteOptions {
  /** Durable (data and metadata) when the call resolves. */
  fua?: boolean;
  /** The primary's PG version of this change, recorded in the PG log once it completed. */
  log?: LogTag;
}

export interface StoreStats {
  uuid: string;
  objectSizeBytes: number;
  slotsTotal: number;
  /** Slots holding an object. */
  slotsUsed: number;
  /** Freed slots waiting for the commit that makes the free durable. */
  slotsPendingFree: number;
  slotsFree: number;
  /** Bytes in blocks marked written (what reads would fetch from the device). */
  bytesWritten: number;
  objectsDirty: number;
  objectsCached: number;
  /** PG-log index operations waiting for the next commit (bounded by MAX_LOG_JOURNAL_OPS). */
  logJournalOps: number;
  commits: number;
}

interface Mark {
  keyBytes: Buffer;
  /** `snapshots` when the object last began a change: kept while a commit may miss it. */
  changedAtSnapshot: number;
  changedAtMs: number;
  /** Changes running now: a mark is never cleared under one. */
  changing: number;
  /** Left by an earlier run (loaded at open): a crash may have torn the object. */
  carriedOver?: boolean;
}

interface Waiter {
  resolve: () => void;
  reject: (error: unknown) => void;
}

interface Entry {
  readonly key: ObjectKey;
  readonly keyBytes: Buffer;
  readonly cacheKey: string;
  /** Slot in memory; the durable index may still hold an older one until the next commit. */
  slot: number | null;
  written: Uint8Array;
  writtenCount: number;
  /** Bumped on every change; a commit cleans the entry only if nothing changed since its snapshot. */
  changeCount: number;
  /** Operations holding or waiting for the lock: such entries are never evicted. */
  users: number;
  readonly lock: RwLock;
}

type Db = ClassicLevel<Buffer, Buffer>;

export class ObjectStore {
  readonly objectSizeBytes: number;
  private readonly blocksPerObject: number;
  private readonly entries = new Map<string, Entry>();
  private readonly loading = new Map<string, Promise<Entry>>();
  private readonly dirty = new Set<Entry>();
  /** Bit per slot: held by an object, or freed but not yet durably. */
  private readonly slotBusy: Uint8Array;
  private slotsUsed = 0;
  private slotSearchFrom = 0;
  private pendingFree: number[] = [];
  private committingFree: number[] = [];
  private blocksWritten = 0;
  private runningCommit: Promise<void> | null = null;
  private queuedCommit: Promise<void> | null = null;
  private commits = 0;
  private inFlight = 0;
  private readonly admissionQueue: Array<() => void> = [];
  private drained: (() => void) | null = null;
  private closing: Promise<void> | null = null;
  private closed = false;
  /** Device buffers reused across reads and staged writes (buffer-cache.ts says why). */
  private readonly buffers = new BufferCache((lengthBytes) => this.allocate(lengthBytes));

  /** Durable activity marks by cache key: when the object last changed, in commits and ms. */
  private readonly marks = new Map<string, Mark>();
  /** Marks waiting for the next mark batch (one synced LevelDB batch for all of them). */
  private pendingMarks = new Map<string, { keyBytes: Buffer; waiters: Array<Waiter> }>();
  private markBatchRunning = false;
  /** Marks a running commit is deleting: a new change waits for that commit, then marks again. */
  private clearingMarks = new Set<string>();
  /** Commits that have taken their snapshot (a mark records the count at its last change). */
  private snapshots = 0;
  /** The PG logs (pg-log.ts): entries recorded as changes complete, persisted by commits. */
  private readonly pgLogs = new PgLogBook(true);
  /** Injectable for tests: milliseconds for the activity record's retention. */
  now: () => number = Date.now;

  private constructor(
    private readonly device: BlockDevice,
    private readonly db: Db,
    readonly geometry: Geometry,
  ) {
    this.objectSizeBytes = geometry.objectSizeBytes;
    this.blocksPerObject = geometry.objectSizeBytes / BLOCK_SIZE_BYTES;
    this.slotBusy = new Uint8Array(bitmapBytes(geometry.slotCount));
    assert(
      Number.isInteger(this.blocksPerObject) && this.blocksPerObject >= 8,
      'blocks per object',
    );
  }

  static async open(options: OpenOptions): Promise<ObjectStore> {
    const { device } = options;
    assert(
      device.alignment > 0 && BLOCK_SIZE_BYTES % device.alignment === 0,
      `device alignment ${device.alignment} must divide ${BLOCK_SIZE_BYTES}`,
    );
    if (options.objectSizeBytes !== undefined) checkObjectSize(options.objectSizeBytes);
    // The disk is checked before the index is touched: a blank or foreign disk gets
    // that answer, not a complaint about a missing index.
    const onDisk = options.format ? null : await readDiskGeometry(device, options);
    const db = await openIndex(options.indexPath, options.format === true);
    try {
      const geometry = onDisk
        ? await checkIndex(db, onDisk)
        : await formatDisk(device, db, options.objectSizeBytes ?? OBJECT_SIZE_DEFAULT_BYTES);
      const store = new ObjectStore(device, db, geometry);
      await store.rebuildAllocator();
      await store.loadMarks();
      await store.loadPgLogs();
      return store;
    } catch (error) {
      await db.close();
      throw error;
    }
  }

  // ---- public operations ------------------------------------------------------------

  /** Exactly `length` bytes; unwritten blocks and missing objects read as zeros. */
  async read(key: ObjectKey, offset: number, length: number): Promise<Uint8Array> {
    const lease = await this.readLeased(key, offset, length);
    // A copy the caller owns; the data path uses readLeased and sends the lent bytes.
    const copy = new Uint8Array(lease.data);
    lease.release();
    return copy;
  }

  /**
   * Like read, but the bytes stay in the store's buffer: release the lease once they
   * have been sent (the NBD reply writes them to the socket without a copy). Until
   * then the buffer is the caller's alone.
   */
  async readLeased(key: ObjectKey, offset: number, length: number): Promise<BufferLease> {
    this.checkRange(key, offset, length);
    if (length === 0) return ownedLease(new Uint8Array(0));
    return this.operate(key, false, (entry) => this.readBlocks(entry, offset, length));
  }

  /**
   * Any byte range within the object. Whole 4 KiB blocks go straight to the device;
   * a partial block at either end is read-modify-written under the object's exclusive
   * lock, so concurrent writes to other bytes of that block are not lost.
   */
  async write(
    key: ObjectKey,
    offset: number,
    data: Uint8Array,
    options: WriteOptions = {},
  ): Promise<void> {
    assert(data instanceof Uint8Array, 'write data must be a Uint8Array');
    this.checkRange(key, offset, data.length);
    const partial =
      offset % BLOCK_SIZE_BYTES !== 0 || (offset + data.length) % BLOCK_SIZE_BYTES !== 0;
    await this.operate(key, partial, async (entry) => {
      if (this.uncommittedOverBound()) await this.requestCommit();
      await this.changing(entry, async () => {
        if (data.length > 0) await this.writeBlocks(entry, offset, data);
      });
      if (options.log) this.pgLogs.record(key, options.log);
      // FUA shares the group commit: the commit flushes the device, then the metadata.
      if (options.fua) await this.requestCommit();
    });
  }

  /** Frees the whole blocks the range covers; partial blocks at the ends are left as they are. */
  async trim(key: ObjectKey, offset: number, length: number, log?: LogTag): Promise<void> {
    this.checkRange(key, offset, length);
    if (length === 0) return;
    await this.operate(key, true, async (entry) => {
      if (this.uncommittedOverBound()) await this.requestCommit();
      await this.changing(entry, () => this.discard(entry, offset, length, false));
      if (log) this.pgLogs.record(key, log);
    });
  }

  /** The range reads as zeros: whole blocks are freed, partial blocks get zeros written. */
  async zero(key: ObjectKey, offset: number, length: number, log?: LogTag): Promise<void> {
    this.checkRange(key, offset, length);
    if (length === 0) return;
    await this.operate(key, true, async (entry) => {
      if (this.uncommittedOverBound()) await this.requestCommit();
      await this.changing(entry, () => this.discard(entry, offset, length, true));
      if (log) this.pgLogs.record(key, log);
    });
  }

  /** Extents exactly covering the range: written blocks are data, the rest holes of zeros. */
  async blockStatus(key: ObjectKey, offset: number, length: number): Promise<Extent[]> {
    this.checkRange(key, offset, length);
    if (length === 0) return [];
    return this.operate(key, false, async (entry) => this.extentsOf(entry, offset, length));
  }

  /** Returns whether the object held a slot. */
  async deleteObject(key: ObjectKey, log?: LogTag): Promise<boolean> {
    checkObjectKey(key);
    return this.operate(key, true, async (entry) => {
      if (this.uncommittedOverBound()) await this.requestCommit();
      if (entry.slot === null) {
        if (log) this.pgLogs.record(key, log);
        return false;
      }
      await this.changing(entry, async () => {
        this.clearWritten(entry, 0, this.blocksPerObject);
        await this.releaseSlot(entry);
      });
      if (log) this.pgLogs.record(key, log);
      return true;
    });
  }

  /**
   * One PG's log (pg-log.ts): its `complete` and `start` versions and the entries after
   * `after` (default: after its own `complete`), at most `limit`. What it reports is made
   * durable before it returns — it is read first, then a commit runs (whose snapshot is
   * later, so it covers every change the answer reflects) — so recovery never relies on
   * a version a crash of this disk could take back.
   */
  async pgLog(pool: number, pg: number, after?: PgVersion, limit?: number): Promise<PgLogState> {
    this.checkOpen();
    const own = this.pgLogs.state(pool, pg, undefined, 0);
    const state = this.pgLogs.state(pool, pg, after ?? own.complete, limit);
    // A commit taken or running past its snapshot may not hold it all: join or start one.
    if (this.pgLogs.journalPending || this.runningCommit) await this.requestCommit();
    return state;
  }

  /** Stray removal is about to delete the PG's objects here (pg-log.ts `forget`). */
  forgetPgLog(pool: number, pg: number, start: PgVersion): void {
    this.checkOpen();
    this.pgLogs.forget(pool, pg, start);
  }

  /**
   * Recovery made this disk whole for the PG (pg-log.ts `mark`). Durable with the next
   * commit: recovery flushes the disk right after, before it clears the stale mark.
   */
  async markPgLog(
    pool: number,
    pg: number,
    mark: { start: PgVersion; complete?: PgVersion },
  ): Promise<void> {
    this.checkOpen();
    this.pgLogs.mark(pool, pg, mark);
  }

  /**
   * The activity record: objects that may have changed since the last flush (marked
   * durably before a change reaches the device; cleared lazily by a commit once idle for
   * ACTIVITY_MARK_RETAIN_MS), so after a crash — of this host or of a primary writing to
   * it — these are the objects whose replicas may differ. Sorted by key.
   */
  async activeObjects(pool?: number, carriedOver = false): Promise<ObjectKey[]> {
    this.checkOpen();
    const prefix = objectKeyPrefix(pool === undefined ? {} : { pool });
    const keys: string[] = [];
    for (const [cacheKey, mark] of this.marks) {
      if (carriedOver && !mark.carriedOver) continue;
      if (mark.keyBytes.subarray(0, prefix.length).equals(prefix)) keys.push(cacheKey);
    }
    // `carriedOver`: only the marks an earlier run left (what a crash may have torn).
    if (carriedOver) return keys.sort().map(cacheKeyToKey);
    for (const [cacheKey, pending] of this.pendingMarks) {
      if (!this.marks.has(cacheKey) && pending.keyBytes.subarray(0, prefix.length).equals(prefix))
        keys.push(cacheKey);
    }
    return keys.sort().map(cacheKeyToKey);
  }

  /** Objects holding a slot, in key order, including changes not yet committed. */
  async *listObjects(filter: ObjectKeyFilter = {}): AsyncGenerator<ObjectKey> {
    this.checkOpen();
    const prefix = objectKeyPrefix(filter);
    // Uncommitted changes first, then the durable index, merged in key order.
    const removed = new Set<string>();
    const added: string[] = [];
    for (const entry of this.dirty) {
      if (!entry.keyBytes.subarray(0, prefix.length).equals(prefix)) continue;
      if (entry.slot === null) removed.add(entry.cacheKey);
      else added.push(entry.cacheKey);
    }
    added.sort();
    let next = 0;
    for await (const indexKey of this.db.keys(objectIndexRange(prefix))) {
      const cacheKey = Buffer.from(objectKeyOfIndexKey(indexKey)).toString('latin1');
      while (next < added.length && added[next]! < cacheKey) yield cacheKeyToKey(added[next++]!);
      if (next < added.length && added[next] === cacheKey) next += 1;
      if (!removed.has(cacheKey)) yield cacheKeyToKey(cacheKey);
    }
    while (next < added.length) yield cacheKeyToKey(added[next++]!);
  }

  /**
   * Every write completed before this call is durable, with its metadata, when it
   * resolves. Concurrent callers share commits: a caller joins the commit that has not
   * yet taken its snapshot, or starts one; never one already past its snapshot.
   */
  flush(): Promise<void> {
    this.checkOpen();
    return this.requestCommit();
  }

  stats(): StoreStats {
    const pending = this.pendingFree.length + this.committingFree.length;
    return {
      uuid: this.geometry.uuid,
      objectSizeBytes: this.objectSizeBytes,
      slotsTotal: this.geometry.slotCount,
      slotsUsed: this.slotsUsed,
      slotsPendingFree: pending,
      slotsFree: this.geometry.slotCount - this.slotsUsed - pending,
      bytesWritten: this.blocksWritten * BLOCK_SIZE_BYTES,
      objectsDirty: this.dirty.size,
      objectsCached: this.entries.size,
      logJournalOps: this.pgLogs.journalLength,
      commits: this.commits,
    };
  }

  /**
   * Refuses new operations, waits for those admitted, commits, closes the index. The
   * device stays open: whoever opened it closes it.
   */
  close(): Promise<void> {
    if (this.closing === null) this.closing = this.shutDown();
    return this.closing;
  }

  // ---- admission and per-object locking ---------------------------------------------

  /**
   * Every store operation runs here. Each step has a synchronous fast path (a free
   * in-flight place, a cached record, an uncontended lock), taken without an await:
   * every await costs a trip through the microtask queue, and this is once per I/O.
   */
  private async operate<T>(
    key: ObjectKey,
    exclusive: boolean,
    body: (entry: Entry) => Promise<T>,
  ): Promise<T> {
    if (!this.tryAdmit()) await this.admit();
    try {
      const entry = this.cachedEntry(key) ?? (await this.entryFor(key));
      try {
        if (!entry.lock.tryAcquire(exclusive)) await entry.lock.acquire(exclusive);
        try {
          return await body(entry);
        } finally {
          entry.lock.release(exclusive);
        }
      } finally {
        entry.users -= 1;
        assert(entry.users >= 0, 'entry users underflow');
      }
    } catch (error) {
      throw asCisternError(error);
    } finally {
      this.leave();
    }
  }

  /** Takes an in-flight place if one is free and nobody queues for one. */
  private tryAdmit(): boolean {
    this.checkOpen();
    if (this.inFlight >= MAX_IN_FLIGHT_OPS || this.admissionQueue.length > 0) return false;
    this.inFlight += 1;
    return true;
  }

  private async admit(): Promise<void> {
    this.checkOpen();
    if (this.inFlight < MAX_IN_FLIGHT_OPS) {
      this.inFlight += 1;
      return;
    }
    if (this.admissionQueue.length >= MAX_QUEUED_OPS) {
      throw new CisternError('UNAVAILABLE', `object store queue full (${MAX_QUEUED_OPS} waiting)`);
    }
    // leave() hands its in-flight place straight to the first waiter.
    await new Promise<void>((resolve) => this.admissionQueue.push(resolve));
  }

  private leave(): void {
    const next = this.admissionQueue.shift();
    if (next) {
      next();
      return;
    }
    this.inFlight -= 1;
    assert(this.inFlight >= 0, 'in-flight underflow');
    if (this.inFlight === 0 && this.drained) this.drained();
  }

  /** The cached entry for `key`, pinned by `users`, or undefined when it must be loaded. */
  private cachedEntry(key: ObjectKey): Entry | undefined {
    const cacheKey = encodeObjectKey(key).toString('latin1');
    const cached = this.entries.get(cacheKey);
    if (cached === undefined) return undefined;
    this.entries.delete(cacheKey); // re-insert: Map order is our LRU order
    this.entries.set(cacheKey, cached);
    cached.users += 1;
    return cached;
  }

  /** The entry for `key`, loaded once however many callers ask, pinned by `users`. */
  private async entryFor(key: ObjectKey): Promise<Entry> {
    const keyBytes = encodeObjectKey(key);
    const cacheKey = keyBytes.toString('latin1');
    // Eviction may drop an entry between its load and our resumption; then load again.
    for (let attempt = 0; attempt < 8; attempt += 1) {
      const cached = this.entries.get(cacheKey);
      if (cached) {
        this.entries.delete(cacheKey); // re-insert: Map order is our LRU order
        this.entries.set(cacheKey, cached);
        cached.users += 1;
        return cached;
      }
      let load = this.loading.get(cacheKey);
      if (!load) {
        load = this.loadEntry(keyBytes, cacheKey).finally(() => this.loading.delete(cacheKey));
        this.loading.set(cacheKey, load);
      }
      const loaded = await load;
      if (this.entries.get(cacheKey) === loaded) {
        loaded.users += 1;
        return loaded;
      }
    }
    throw new AssertionError(`entry ${formatObjectKey(key)} evicted on every load`);
  }

  private async loadEntry(keyBytes: Buffer, cacheKey: string): Promise<Entry> {
    const raw = await this.db.get(objectIndexKey(keyBytes));
    const key = decodeObjectKey(keyBytes);
    const record = raw ? decodeRecord(raw, this.geometry, `object ${formatObjectKey(key)}`) : null;
    const entry: Entry = {
      key,
      keyBytes,
      cacheKey,
      slot: record ? record.slot : null,
      written: record ? record.written : new Uint8Array(bitmapBytes(this.blocksPerObject)),
      writtenCount: record ? record.writtenCount : 0,
      changeCount: 0,
      users: 0,
      lock: new RwLock(),
    };
    assert(!this.entries.has(cacheKey), 'entry loaded twice');
    this.entries.set(cacheKey, entry);
    this.evictIdle();
    return entry;
  }

  private evictIdle(): void {
    let scanned = 0;
    for (const [cacheKey, entry] of this.entries) {
      if (this.entries.size <= MAX_CACHED_OBJECTS || scanned >= EVICTION_SCAN_MAX) break;
      scanned += 1;
      if (entry.users === 0 && !this.dirty.has(entry) && entry.lock.idle)
        this.entries.delete(cacheKey);
    }
  }

  private markChanged(entry: Entry): void {
    entry.changeCount += 1;
    this.dirty.add(entry);
  }

  // ---- reading and writing ----------------------------------------------------------

  private async readBlocks(entry: Entry, offset: number, length: number): Promise<BufferLease> {
    if (entry.slot === null) return ownedLease(Buffer.alloc(length));
    const blockFirst = Math.floor(offset / BLOCK_SIZE_BYTES);
    const blockEnd = Math.ceil((offset + length) / BLOCK_SIZE_BYTES);
    const lease = this.buffers.takeDirty((blockEnd - blockFirst) * BLOCK_SIZE_BYTES);
    const buffer = lease.data;
    const base = this.slotOffset(entry.slot);
    const reads: Promise<void>[] = [];
    // One device read per run of written blocks. The buffer is reused, so unwritten
    // runs are zeroed here: they must read as zeros, never as a former user's bytes.
    for (const run of bitRuns(entry.written, blockFirst, blockEnd)) {
      const from = (run.start - blockFirst) * BLOCK_SIZE_BYTES;
      const to = (run.end - blockFirst) * BLOCK_SIZE_BYTES;
      if (!run.set) buffer.fill(0, from, to);
      else
        reads.push(
          this.device.read(buffer.subarray(from, to), base + run.start * BLOCK_SIZE_BYTES),
        );
    }
    try {
      await settleAll(reads);
    } catch (error) {
      lease.release(); // settleAll waited: no read still lands in the buffer
      throw error;
    }
    const start = offset - blockFirst * BLOCK_SIZE_BYTES;
    if (start === 0 && length === buffer.length) return lease;
    return { data: buffer.subarray(start, start + length), release: () => lease.release() };
  }

  private async writeBlocks(entry: Entry, offset: number, data: Uint8Array): Promise<void> {
    const blockFirst = Math.floor(offset / BLOCK_SIZE_BYTES);
    const blockEnd = Math.ceil((offset + data.length) / BLOCK_SIZE_BYTES);
    const slot = await this.ensureSlot(entry);
    let staged: BufferLease | undefined;
    try {
      staged = await this.stage(entry, slot, offset, data, blockFirst, blockEnd);
      await this.device.write(staged.data, this.slotOffset(slot) + blockFirst * BLOCK_SIZE_BYTES);
    } catch (error) {
      this.releaseIfUnused(entry);
      throw error;
    } finally {
      // The device write has completed (or failed) either way: the buffer is free again.
      staged?.release();
    }
    // Only now, with the write complete, may the bitmap expose these blocks: a commit
    // snapshots bitmaps before it flushes the device, so it can only ever record blocks
    // whose writes completed before that flush started (ordering 1).
    assert(entry.slot === slot, 'slot changed under a write');
    for (let block = blockFirst; block < blockEnd; block += 1) {
      if (getBit(entry.written, block)) continue;
      setBit(entry.written, block);
      entry.writtenCount += 1;
      this.blocksWritten += 1;
    }
    this.markChanged(entry);
  }

  /**
   * The block-aligned bytes to write. Whole blocks with no address requirement are the
   * caller's own buffer (no copy). Otherwise one aligned copy into a reused buffer, with
   * partial end blocks filled from the device if written (read-modify-write, under the
   * exclusive lock) or zeroed if not: a reused buffer holds a former user's bytes, and
   * none of them may reach the disk.
   */
  private async stage(
    entry: Entry,
    slot: number,
    offset: number,
    data: Uint8Array,
    blockFirst: number,
    blockEnd: number,
  ): Promise<BufferLease> {
    const headPartial = offset % BLOCK_SIZE_BYTES !== 0;
    const tailPartial = (offset + data.length) % BLOCK_SIZE_BYTES !== 0;
    if (!headPartial && !tailPartial && this.device.allocate === undefined) {
      return ownedLease(data);
    }
    const lease = this.buffers.takeDirty((blockEnd - blockFirst) * BLOCK_SIZE_BYTES);
    const staged = lease.data;
    const dataStart = offset - blockFirst * BLOCK_SIZE_BYTES;
    const dataEnd = dataStart + data.length;
    // Zero what the data does not cover, before any device read fills a whole block.
    staged.fill(0, 0, dataStart);
    staged.fill(0, dataEnd);
    const base = this.slotOffset(slot);
    const fills: Promise<void>[] = [];
    if (headPartial && getBit(entry.written, blockFirst)) {
      fills.push(
        this.device.read(
          staged.subarray(0, BLOCK_SIZE_BYTES),
          base + blockFirst * BLOCK_SIZE_BYTES,
        ),
      );
    }
    const tailBlock = blockEnd - 1;
    if (
      tailPartial &&
      (tailBlock !== blockFirst || !headPartial) &&
      getBit(entry.written, tailBlock)
    ) {
      const at = (tailBlock - blockFirst) * BLOCK_SIZE_BYTES;
      fills.push(
        this.device.read(
          staged.subarray(at, at + BLOCK_SIZE_BYTES),
          base + tailBlock * BLOCK_SIZE_BYTES,
        ),
      );
    }
    try {
      await settleAll(fills);
    } catch (error) {
      lease.release();
      throw error;
    }
    staged.set(data, dataStart);
    return lease;
  }

  // ---- trim, zero, delete -----------------------------------------------------------

  private async discard(
    entry: Entry,
    offset: number,
    length: number,
    zeroPartial: boolean,
  ): Promise<void> {
    if (entry.slot === null) return;
    const end = offset + length;
    const wholeFirst = Math.ceil(offset / BLOCK_SIZE_BYTES);
    const wholeEnd = Math.max(wholeFirst, Math.floor(end / BLOCK_SIZE_BYTES));
    if (zeroPartial) await this.zeroPartialBlocks(entry, entry.slot, offset, end);
    const freed = this.clearWritten(entry, wholeFirst, wholeEnd);
    if (entry.writtenCount === 0) {
      await this.releaseSlot(entry);
      return;
    }
    // Punch while holding the exclusive lock: once it is released, a write may reuse
    // these blocks, and a punch landing after that write would erase it (ordering 3).
    const base = this.slotOffset(entry.slot);
    await settleAll(
      freed.map((run) =>
        this.device.punchHole(
          base + run.start * BLOCK_SIZE_BYTES,
          (run.end - run.start) * BLOCK_SIZE_BYTES,
        ),
      ),
    );
  }

  /** Writes zeros into the written partial blocks at either end of [offset, end). */
  private async zeroPartialBlocks(
    entry: Entry,
    slot: number,
    offset: number,
    end: number,
  ): Promise<void> {
    const partials = new Set<number>();
    if (offset % BLOCK_SIZE_BYTES !== 0) partials.add(Math.floor(offset / BLOCK_SIZE_BYTES));
    if (end % BLOCK_SIZE_BYTES !== 0) partials.add(Math.floor(end / BLOCK_SIZE_BYTES));
    assert(partials.size <= 2, 'at most two partial blocks');
    for (const block of partials) {
      if (!getBit(entry.written, block)) continue; // unwritten: already reads as zeros
      const blockOffset = block * BLOCK_SIZE_BYTES;
      const buffer = this.allocate(BLOCK_SIZE_BYTES);
      const at = this.slotOffset(slot) + blockOffset;
      await this.device.read(buffer, at);
      buffer.fill(
        0,
        Math.max(offset, blockOffset) - blockOffset,
        Math.min(end, blockOffset + BLOCK_SIZE_BYTES) - blockOffset,
      );
      await this.device.write(buffer, at);
    }
  }

  /** Clears written bits in [blockFirst, blockEnd); returns the runs that were set. */
  private clearWritten(
    entry: Entry,
    blockFirst: number,
    blockEnd: number,
  ): Array<{ start: number; end: number }> {
    if (blockFirst >= blockEnd) return [];
    const freed = bitRuns(entry.written, blockFirst, blockEnd).filter((run) => run.set);
    for (const run of freed) {
      for (let block = run.start; block < run.end; block += 1) clearBit(entry.written, block);
      entry.writtenCount -= run.end - run.start;
      this.blocksWritten -= run.end - run.start;
    }
    assert(entry.writtenCount >= 0 && this.blocksWritten >= 0, 'written counts underflow');
    if (freed.length > 0) this.markChanged(entry);
    return freed;
  }

  // ---- slot allocation --------------------------------------------------------------

  private async ensureSlot(entry: Entry): Promise<number> {
    if (entry.slot !== null) return entry.slot;
    let slot = this.takeFreeSlot();
    if (slot === null && this.pendingFree.length + this.committingFree.length > 0) {
      // Freed slots become usable once their free is durable: commit, then look again.
      await this.requestCommit();
      if (entry.slot !== null) return entry.slot; // a concurrent writer got one meanwhile
      slot = this.takeFreeSlot();
    }
    if (slot === null) {
      throw new CisternError(
        'ENOSPC',
        `disk ${this.geometry.uuid} is full: all ${this.geometry.slotCount} object slots are in use`,
      );
    }
    assert(entry.writtenCount === 0, 'slotless entry with written blocks');
    // A fresh slot may hold a former owner's bytes: the empty bitmap hides them. Not
    // marked changed yet: the record is worth committing once a write has completed.
    entry.slot = slot;
    this.slotsUsed += 1;
    return slot;
  }

  private takeFreeSlot(): number | null {
    const count = this.geometry.slotCount;
    if (this.slotsUsed + this.pendingFree.length + this.committingFree.length >= count) return null;
    for (let step = 0; step < count; step += 1) {
      const slot = (this.slotSearchFrom + step) % count;
      if (getBit(this.slotBusy, slot)) continue;
      setBit(this.slotBusy, slot);
      this.slotSearchFrom = (slot + 1) % count;
      return slot;
    }
    throw new AssertionError('slot counts say free but every slot is busy');
  }

  /**
   * Takes the slot from the object; it joins pendingFree and is handed out again only
   * after a commit has durably recorded that this object no longer uses it (ordering 2):
   * before that, a crash would bring back the index saying the object still lives there,
   * and a new owner's bytes would read as the old object's blocks.
   */
  private async releaseSlot(entry: Entry): Promise<void> {
    const slot = entry.slot;
    assert(slot !== null && entry.writtenCount === 0, 'release of a slot in use');
    // Punch first, while the slot is still ours (ordering 3).
    await this.device.punchHole(this.slotOffset(slot), this.objectSizeBytes);
    entry.slot = null;
    this.slotsUsed -= 1;
    this.pendingFree.push(slot);
    this.markChanged(entry);
  }

  /** After a failed first write, gives back a slot no other operation is using. */
  private releaseIfUnused(entry: Entry): void {
    if (entry.slot === null || entry.writtenCount !== 0 || entry.users !== 1) return;
    this.pendingFree.push(entry.slot);
    entry.slot = null;
    this.slotsUsed -= 1;
    this.markChanged(entry);
  }

  private async rebuildAllocator(): Promise<void> {
    // The allocator is not stored: the index is the truth, and every slot no record
    // names is free (its free, if any, was committed, or it was never committed at all).
    for await (const [indexKey, raw] of this.db.iterator(objectIndexRange(Buffer.alloc(0)))) {
      const key = decodeObjectKey(objectKeyOfIndexKey(indexKey));
      const record = decodeRecord(raw, this.geometry, `object ${formatObjectKey(key)}`);
      if (getBit(this.slotBusy, record.slot)) {
        throw new CisternError(
          'CORRUPT',
          `index names slot ${record.slot} twice (again for ${formatObjectKey(key)})`,
        );
      }
      setBit(this.slotBusy, record.slot);
      this.slotsUsed += 1;
      this.blocksWritten += record.writtenCount;
    }
    assert(this.slotsUsed <= this.geometry.slotCount, 'more records than slots');
  }

  // ---- activity record ---------------------------------------------------------------

  /**
   * Runs one change of an object with its activity mark durable first. Concurrent first
   * changes of different objects share one synced batch; an object already marked pays
   * nothing.
   */
  private async changing<T>(entry: Entry, change: () => Promise<T>): Promise<T> {
    let mark = this.marks.get(entry.cacheKey);
    // A commit over the record's bound may clear a fresh mark before we use it: again.
    for (let attempt = 0; !mark; attempt += 1) {
      assert(attempt < 64, 'activity mark cleared again and again');
      await this.markDurably(entry);
      mark = this.marks.get(entry.cacheKey);
    }
    mark.changedAtSnapshot = this.snapshots;
    mark.changing += 1;
    try {
      return await change();
    } finally {
      mark.changing -= 1;
      mark.changedAtSnapshot = this.snapshots;
      mark.changedAtMs = this.now();
    }
  }

  private async markDurably(entry: Entry): Promise<void> {
    // A commit deleting this object's old mark must land before the new one is put.
    while (this.clearingMarks.has(entry.cacheKey)) await this.runningCommit?.catch(() => undefined);
    if (this.marks.has(entry.cacheKey)) return;
    if (this.marks.size >= ACTIVITY_MARKS_MAX) await this.requestCommit();
    await new Promise<void>((resolve, reject) => {
      const pending = this.pendingMarks.get(entry.cacheKey);
      if (pending) pending.waiters.push({ resolve, reject });
      else
        this.pendingMarks.set(entry.cacheKey, {
          keyBytes: entry.keyBytes,
          waiters: [{ resolve, reject }],
        });
      if (!this.markBatchRunning) void this.writeMarks();
    });
  }

  /** Writes every pending mark in one synced batch, again while more arrived meanwhile. */
  private async writeMarks(): Promise<void> {
    this.markBatchRunning = true;
    try {
      while (this.pendingMarks.size > 0) {
        const batch = this.pendingMarks;
        this.pendingMarks = new Map();
        try {
          await this.db.batch(
            [...batch.values()].map((m) => ({
              type: 'put' as const,
              key: activityIndexKey(m.keyBytes),
              value: Buffer.alloc(0),
            })),
            { sync: true },
          );
        } catch (error) {
          const failure = asCisternError(error, 'activity record write failed');
          for (const m of batch.values()) for (const w of m.waiters) w.reject(failure);
          continue;
        }
        const now = this.now();
        for (const [cacheKey, m] of batch) {
          this.marks.set(cacheKey, {
            keyBytes: m.keyBytes,
            changedAtSnapshot: this.snapshots,
            changedAtMs: now,
            changing: 0,
          });
          for (const w of m.waiters) w.resolve();
        }
      }
    } finally {
      this.markBatchRunning = false;
    }
  }

  /** The PG logs as the last commit left them. */
  private async loadPgLogs(): Promise<void> {
    for (const range of pgLogIndexRanges()) {
      for await (const [indexKey, value] of this.db.iterator(range))
        this.pgLogs.load(indexKey, value);
    }
  }

  /** Marks left by the last run (a crash, or changes too recent to clear): kept as fresh. */
  private async loadMarks(): Promise<void> {
    const now = this.now();
    for await (const indexKey of this.db.keys(activityIndexRange())) {
      const keyBytes = Buffer.from(objectKeyOfActivityKey(indexKey));
      this.marks.set(keyBytes.toString('latin1'), {
        keyBytes,
        changedAtSnapshot: this.snapshots,
        changedAtMs: now,
        changing: 0,
        carriedOver: true,
      });
    }
  }

  /**
   * At a commit's snapshot: the marks this commit may delete — objects with no change
   * running, none since the previous snapshot (their changes are all before this
   * commit's device flush), and none for the retention time (unless the record is over
   * its bound). They leave `marks` now, so a change arriving meanwhile marks anew.
   */
  private marksToClear(): Buffer[] {
    const retainMs = this.marks.size >= ACTIVITY_MARKS_MAX ? 0 : ACTIVITY_MARK_RETAIN_MS;
    const now = this.now();
    const cleared: Buffer[] = [];
    for (const [cacheKey, mark] of this.marks) {
      if (mark.changing > 0 || mark.changedAtSnapshot >= this.snapshots) continue;
      if (now - mark.changedAtMs < retainMs) continue;
      this.marks.delete(cacheKey);
      this.clearingMarks.add(cacheKey);
      cleared.push(activityIndexKey(mark.keyBytes));
    }
    return cleared;
  }

  /** A failed commit deleted no mark for sure: they are marks again. */
  private restoreMarks(cleared: Buffer[]): void {
    for (const key of cleared) {
      const keyBytes = Buffer.from(objectKeyOfActivityKey(key));
      const cacheKey = keyBytes.toString('latin1');
      if (!this.marks.has(cacheKey)) {
        this.marks.set(cacheKey, {
          keyBytes,
          changedAtSnapshot: this.snapshots,
          changedAtMs: this.now(),
          changing: 0,
        });
      }
    }
  }

  // ---- group commit -----------------------------------------------------------------

  /**
   * Whether what waits for a commit reached a bound (dirty objects, the PG-log journal):
   * a change then commits first. Checked inside the change's operation, so close()
   * (which waits for operations) never closes the index under the commit.
   */
  private uncommittedOverBound(): boolean {
    return this.dirty.size >= MAX_DIRTY_OBJECTS || this.pgLogs.journalLength >= MAX_LOG_JOURNAL_OPS;
  }

  private requestCommit(): Promise<void> {
    if (this.queuedCommit) return this.queuedCommit;
    if (!this.runningCommit) return this.startCommit();
    const queued = this.runningCommit
      .catch(() => undefined)
      .then(() => {
        this.queuedCommit = null;
        return this.startCommit();
      });
    this.queuedCommit = queued;
    return queued;
  }

  private startCommit(): Promise<void> {
    assert(this.runningCommit === null, 'two commits at once');
    const running: Promise<void> = this.commit().finally(() => {
      if (this.runningCommit === running) this.runningCommit = null;
    });
    this.runningCommit = running;
    return running;
  }

  /**
   * 1. Snapshot the dirty records (bitmaps copied now). A bitmap bit is set only after
   *    its write completed, so every block in the snapshot was written before step 2.
   * 2. Flush the device: those writes are now durable.
   * 3. Write the snapshot to LevelDB with sync. Only now can a crash expose the blocks,
   *    and they hold their data. A torn or lost write in flight is never in a snapshot.
   * 4. Slots freed before the snapshot are free for reuse: the records saying they
   *    are no longer used are durable.
   * On failure nothing is lost from memory: the entries stay dirty, frees stay pending.
   */
  private async commit(): Promise<void> {
    const snapshot = [...this.dirty].map((entry) => ({
      entry,
      changeCount: entry.changeCount,
      indexKey: objectIndexKey(entry.keyBytes),
      value:
        entry.slot === null
          ? null
          : encodeRecord({
              slot: entry.slot,
              written: entry.written,
              writtenCount: entry.writtenCount,
            }),
    }));
    assert(this.committingFree.length === 0, 'frees of an earlier commit still in flight');
    this.committingFree = this.pendingFree;
    this.pendingFree = [];
    const clearedMarks = this.marksToClear();
    // Log entries of changes completed by now, like the records: durable only with them.
    const logOps = this.pgLogs.takeJournal();
    this.snapshots += 1;
    try {
      await this.device.flush();
      const chunks = Math.max(1, Math.ceil(snapshot.length / MAX_COMMIT_BATCH_RECORDS));
      for (let index = 0; index < chunks; index += 1) {
        const first = index * MAX_COMMIT_BATCH_RECORDS;
        const chunk = snapshot.slice(first, first + MAX_COMMIT_BATCH_RECORDS);
        const ops: Array<
          { type: 'put'; key: Buffer; value: Buffer } | { type: 'del'; key: Buffer }
        > = chunk.map((item) =>
          item.value === null
            ? { type: 'del' as const, key: item.indexKey }
            : { type: 'put' as const, key: item.indexKey, value: item.value },
        );
        // In the last batch, after every record: a version a crash keeps never claims a
        // change whose record it lost (the batches land in order, each atomically).
        // (A loop, not push(...logOps): between flushes the journal can outgrow the
        // arguments a call may take — a client that never flushes, say.)
        if (index === chunks - 1) for (const op of logOps) ops.push(op);
        if (ops.length > 0) await this.db.batch(ops, { sync: true });
      }
      // After the records: a mark goes only once what it covers is durable. Not synced:
      // a lost delete only leaves a mark that peering checks once more.
      for (let first = 0; first < clearedMarks.length; first += MAX_COMMIT_BATCH_RECORDS) {
        const chunk = clearedMarks.slice(first, first + MAX_COMMIT_BATCH_RECORDS);
        await this.db.batch(chunk.map((key) => ({ type: 'del' as const, key })));
      }
    } catch (error) {
      this.pendingFree = this.committingFree.concat(this.pendingFree);
      this.committingFree = [];
      this.restoreMarks(clearedMarks);
      this.pgLogs.restoreJournal(logOps);
      throw asCisternError(error, 'commit failed');
    } finally {
      for (const key of clearedMarks) {
        this.clearingMarks.delete(Buffer.from(objectKeyOfActivityKey(key)).toString('latin1'));
      }
    }
    for (const slot of this.committingFree) clearBit(this.slotBusy, slot);
    this.committingFree = [];
    for (const item of snapshot) {
      if (item.entry.changeCount === item.changeCount) this.dirty.delete(item.entry);
    }
    this.commits += 1;
    this.evictIdle();
  }

  // ---- lifecycle and helpers --------------------------------------------------------

  private async shutDown(): Promise<void> {
    this.checkOpen();
    const stopping = new Promise<void>((resolve) => {
      this.drained = resolve;
    });
    // Set after the check above so that close() itself is not refused.
    this.closed = true;
    if (this.inFlight > 0) await stopping;
    let failure: unknown = null;
    try {
      await this.requestCommit();
    } catch (error) {
      failure = error;
    }
    await this.db.close();
    if (failure !== null) throw failure;
  }

  private checkOpen(): void {
    if (this.closed)
      throw new CisternError('CLOSED', `object store ${this.geometry.uuid} is closed`);
  }

  private checkRange(key: ObjectKey, offset: number, length: number): void {
    checkObjectKey(key);
    const valid =
      Number.isSafeInteger(offset) &&
      Number.isSafeInteger(length) &&
      offset >= 0 &&
      length >= 0 &&
      offset + length <= this.objectSizeBytes;
    if (!valid) {
      throw new CisternError(
        'EINVAL',
        `range ${offset}+${length} is outside object ${formatObjectKey(key)} of ${this.objectSizeBytes} bytes`,
      );
    }
  }

  private slotOffset(slot: number): number {
    assert(slot >= 0 && slot < this.geometry.slotCount, `slot ${slot} out of range`);
    return this.geometry.dataOffsetBytes + slot * this.objectSizeBytes;
  }

  private allocate(lengthBytes: number): Uint8Array {
    assert(lengthBytes % BLOCK_SIZE_BYTES === 0, 'device buffers are whole blocks');
    const buffer = this.device.allocate
      ? this.device.allocate(lengthBytes)
      : Buffer.alloc(lengthBytes);
    assert(buffer.length === lengthBytes, 'device allocated the wrong length');
    return buffer;
  }

  private extentsOf(entry: Entry, offset: number, length: number): Extent[] {
    const end = offset + length;
    if (entry.slot === null) return [{ length, hole: true, zero: true }];
    const blockFirst = Math.floor(offset / BLOCK_SIZE_BYTES);
    const blockEnd = Math.ceil(end / BLOCK_SIZE_BYTES);
    const extents = bitRuns(entry.written, blockFirst, blockEnd).map((run) => ({
      length:
        Math.min(end, run.end * BLOCK_SIZE_BYTES) - Math.max(offset, run.start * BLOCK_SIZE_BYTES),
      hole: !run.set,
      zero: !run.set,
    }));
    assert(
      extents.reduce((sum, extent) => sum + extent.length, 0) === length,
      'extents miss the range',
    );
    return extents;
  }
}

async function formatDisk(device: BlockDevice, db: Db, objectSizeBytes: number): Promise<Geometry> {
  if ((await db.get(SUPERBLOCK_INDEX_KEY)) !== undefined) {
    throw new CisternError(
      'EEXIST',
      `index ${db.location} already belongs to a store; refusing to format over it`,
    );
  }
  const geometry = newGeometry(device.size, objectSizeBytes);
  const superblock = encodeSuperblock(geometry);
  const buffer = device.allocate
    ? device.allocate(SUPERBLOCK_BYTES)
    : Buffer.alloc(SUPERBLOCK_BYTES);
  buffer.set(superblock);
  // The disk first, then the index: a crash between leaves a disk that refuses to open
  // (no index) rather than an index pointing at a disk with no superblock.
  await device.write(buffer, 0);
  await device.flush();
  await db.put(SUPERBLOCK_INDEX_KEY, superblock, { sync: true });
  return geometry;
}

async function readDiskGeometry(device: BlockDevice, options: OpenOptions): Promise<Geometry> {
  const buffer = device.allocate
    ? device.allocate(SUPERBLOCK_BYTES)
    : Buffer.alloc(SUPERBLOCK_BYTES);
  await device.read(buffer, 0);
  const geometry = decodeSuperblock(buffer, 'disk');
  if (geometry === null) {
    throw new CisternError(
      'EINVAL',
      'not a Cistern object store disk (no superblock); open with format: true to initialise it',
    );
  }
  if (
    options.objectSizeBytes !== undefined &&
    options.objectSizeBytes !== geometry.objectSizeBytes
  ) {
    throw new CisternError(
      'EINVAL',
      `disk ${geometry.uuid} has ${geometry.objectSizeBytes}-byte objects, asked for ${options.objectSizeBytes}`,
    );
  }
  if (device.size < geometry.dataOffsetBytes + geometry.slotCount * geometry.objectSizeBytes) {
    throw new CisternError(
      'EINVAL',
      `device of ${device.size} bytes is smaller than disk ${geometry.uuid} as formatted (${geometry.deviceSizeBytes})`,
    );
  }
  return geometry;
}

async function openIndex(indexPath: string, create: boolean): Promise<Db> {
  const db: Db = new ClassicLevel<Buffer, Buffer>(indexPath, {
    keyEncoding: 'buffer',
    valueEncoding: 'buffer',
  });
  try {
    await db.open({ createIfMissing: create });
    return db;
  } catch (error) {
    const cause = (error as { cause?: { code?: unknown } }).cause;
    if (cause?.code === 'LEVEL_LOCKED') {
      throw new CisternError(
        'UNAVAILABLE',
        `index ${indexPath} is open in another store or process`,
        error,
      );
    }
    if (!create && /does not exist/.test(String((cause as Error | undefined)?.message))) {
      throw new CisternError(
        'CORRUPT',
        `index ${indexPath} is missing but the disk is formatted`,
        error,
      );
    }
    throw new CisternError('EIO', `cannot open index ${indexPath}: ${describe(error)}`, error);
  }
}

async function checkIndex(db: Db, geometry: Geometry): Promise<Geometry> {
  const indexed = await db.get(SUPERBLOCK_INDEX_KEY);
  const indexGeometry = indexed ? decodeSuperblock(indexed, `index ${db.location}`) : null;
  if (indexGeometry === null) {
    throw new CisternError(
      'CORRUPT',
      `index ${db.location} is empty but disk ${geometry.uuid} is formatted`,
    );
  }
  if (indexGeometry.uuid !== geometry.uuid) {
    throw new CisternError(
      'EINVAL',
      `wrong disk: index ${db.location} belongs to disk ${indexGeometry.uuid}, this device is ${geometry.uuid}`,
    );
  }
  assert(
    indexGeometry.slotCount === geometry.slotCount,
    'index and disk agree on uuid but not geometry',
  );
  return geometry;
}

function cacheKeyToKey(cacheKey: string): ObjectKey {
  return decodeObjectKey(Buffer.from(cacheKey, 'latin1'));
}

/** Waits for every promise (no I/O left running into a buffer), then throws the first error. */
async function settleAll(promises: Promise<void>[]): Promise<void> {
  const results = await Promise.allSettled(promises);
  for (const result of results) if (result.status === 'rejected') throw result.reason;
}

function describe(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}

/** Bugs stay bugs; world errors keep or get a stable code. */
function asCisternError(error: unknown, context?: string): Error {
  if (isCisternError(error) || error instanceof AssertionError) return error;
  const prefix = context ? `${context}: ` : '';
  const code = (error as { code?: unknown } | null)?.code;
  if (typeof code === 'string') return fromErrno(code, `${prefix}${describe(error)}`, error);
  return new CisternError('EIO', `${prefix}${describe(error)}`, error);
}
