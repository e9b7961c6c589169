// A simulated disk: what one ObjectStore offers the replication layer (LocalDisk), over
// an in-memory medium with a volatile write cache. Every operation completes after a
// seeded delay (so concurrent operations reorder) and takes effect when it completes;
// reads see every completed write. A flush makes durable what had completed when it was
// issued. A crash (the host's power lost) keeps the durable state plus, per 4 KiB block
// of each unflushed change, a seeded choice of whether it reached the medium — so a
// crash drops, keeps or tears unflushed writes, in order, never inventing data. A failed
// medium answers EIO to everything. The medium outlives the host's incarnations; each
// incarnation gets its own SimDisk whose pending completions die with it.
//
// Whole 4 KiB blocks only: the workload and recovery never write less, and the real
// store's read-modify-write of partial blocks is its own unit tests' business.

import { assert } from '../../src/util/assert';
import { CisternError } from '../../src/util/errors';
import { ObjectKey, ObjectKeyFilter, encodeObjectKey } from '../../src/store/key';
import { Extent } from '../../src/volume/backend';
import { LocalDisk } from '../../src/replication/endpoint';
import { ACTIVITY_MARK_RETAIN_MS } from '../../src/store/object-store';
import { Scheduler } from './scheduler';
import { LogTag, PgLogBook, PgLogState, PgVersion } from '../../src/store/pg-log';

export const SIM_BLOCK_BYTES = 4096;
/** Latency of one simulated disk operation, virtual milliseconds. */
const DISK_LATENCY_MS_MIN = 0.05;
const DISK_LATENCY_MS_MAX = 2;
/** A flush takes longer (a cache flush on a real device). */
const FLUSH_LATENCY_MS_MAX = 5;

type Blocks = Map<number, Uint8Array>;
type Objects = Map<string, { key: ObjectKey; blocks: Blocks }>;

export type Change =
  | { kind: 'write'; key: ObjectKey; block: number; data: Uint8Array }
  | { kind: 'discard'; key: ObjectKey; block: number }
  | { kind: 'delete'; key: ObjectKey }
  // PG log changes (pg-log.ts): durable only through a flush, never by luck in a crash —
  // the real store writes them in the commit batch after the device flush.
  | { kind: 'log'; key: ObjectKey; tag: LogTag }
  | {
      kind: 'log-mark';
      pool: number;
      pg: number;
      mark: { start: PgVersion; complete?: PgVersion };
    }
  | { kind: 'log-forget'; pool: number; pg: number; start: PgVersion };

export function keyName(key: ObjectKey): string {
  return `${key.pool}/${key.volume}/${key.object}`;
}

/** One disk's contents: durable, plus the unflushed changes on top, in order. */
export class DiskMedium {
  readonly durable: Objects = new Map();
  readonly current: Objects = new Map();
  /** The PG logs as a flush left them, and with every completed change. */
  durableLog = new PgLogBook();
  currentLog = new PgLogBook();
  /** Completed changes not yet known durable, oldest first. */
  unflushed: Change[] = [];
  failed = false;

  /** Planted bugs (checkers.test.ts): flushes persist nothing; every nth write vanishes. */
  flushLies = false;
  dropEvery = 0;
  private writes = 0;

  /** The changes the last power loss dropped (the model learns which writes: simulation.ts). */
  lostInLastCrash: Change[] = [];

  /** Debugging: sees every change as it completes (simulation.ts wires TRACE_OBJECT). */
  onChange: ((change: Change) => void) | undefined;
  onPersist: ((persisted: number, left: number) => void) | undefined;

  /**
   * The activity record, as the real store keeps it (ObjectStore.activeObjects): a mark
   * per object, durable before its change reaches the medium (so a crash keeps it), and
   * cleared only once a flush has made the object's changes durable and it has been
   * idle for ACTIVITY_MARK_RETAIN_MS.
   */
  readonly marks = new Map<string, { key: ObjectKey; changedAtMs: number; durable: boolean }>();

  constructor(readonly id: number) {}

  /** Records the activity mark of a change about to be applied at `nowMs`. */
  mark(key: ObjectKey, nowMs: number): void {
    this.marks.set(keyName(key), { key: { ...key }, changedAtMs: nowMs, durable: false });
  }

  /** Objects whose marks are not cleared at `nowMs`, in `pool`. */
  activeKeys(pool: number, nowMs: number): ObjectKey[] {
    return [...this.marks.values()]
      .filter(
        (m) =>
          m.key.pool === pool && (!m.durable || nowMs - m.changedAtMs < ACTIVITY_MARK_RETAIN_MS),
      )
      .map((m) => ({ ...m.key }));
  }

  apply(change: Change): void {
    if (change.kind === 'write' && this.dropEvery > 0 && ++this.writes % this.dropEvery === 0)
      return;
    applyTo(this.current, change, this.currentLog);
    this.unflushed.push(change);
    this.onChange?.(change);
  }

  /** The first `count` unflushed changes reached the medium. */
  persist(count: number): void {
    if (this.flushLies) return;
    const done = this.unflushed.splice(0, count);
    this.onPersist?.(done.length, this.unflushed.length);
    for (const change of done) applyTo(this.durable, change, this.durableLog);
    // Activity marks: an object's is cleared (after the retention) once none of its data
    // changes is unflushed. PG log changes carry no data and leave marks alone.
    const dataChange = (change: Change): change is Change & { key: ObjectKey } =>
      change.kind === 'write' || change.kind === 'discard' || change.kind === 'delete';
    const pending = new Set(this.unflushed.filter(dataChange).map((c) => keyName(c.key)));
    for (const change of done.filter(dataChange)) {
      const mark = this.marks.get(keyName(change.key));
      if (mark && !pending.has(keyName(change.key))) mark.durable = true;
    }
  }

  /**
   * Power lost: each unflushed change survives or not by the seeded `survives`; the
   * durable state with the survivors applied in order is what the next incarnation sees.
   * Returns how many changes were lost.
   */
  crash(survives: () => boolean): number {
    let lost = 0;
    this.lostInLastCrash = [];
    for (const change of this.unflushed) {
      if (change.kind === 'log' || change.kind === 'log-mark' || change.kind === 'log-forget')
        continue;
      if (survives()) applyTo(this.durable, change, this.durableLog);
      else {
        lost += 1;
        this.lostInLastCrash.push(change);
      }
    }
    this.unflushed = [];
    this.currentLog = this.durableLog.clone();
    this.current.clear();
    for (const [name, object] of this.durable)
      this.current.set(name, { key: object.key, blocks: new Map(object.blocks) });
    return lost;
  }

  /** The bytes of one block as reads see them now (zeros for a hole). */
  block(key: ObjectKey, block: number): Uint8Array {
    return this.current.get(keyName(key))?.blocks.get(block) ?? ZEROS;
  }
}

const ZEROS = new Uint8Array(SIM_BLOCK_BYTES);

function applyTo(objects: Objects, change: Change, log: PgLogBook): void {
  if (change.kind === 'log') {
    log.record(change.key, change.tag);
    return;
  }
  if (change.kind === 'log-mark') {
    log.mark(change.pool, change.pg, change.mark);
    return;
  }
  if (change.kind === 'log-forget') {
    log.forget(change.pool, change.pg, change.start);
    return;
  }
  const name = keyName(change.key);
  if (change.kind === 'delete') {
    objects.delete(name);
    return;
  }
  let object = objects.get(name);
  if (!object) {
    object = { key: { ...change.key }, blocks: new Map() };
    objects.set(name, object);
  }
  if (change.kind === 'write') object.blocks.set(change.block, change.data);
  else object.blocks.delete(change.block);
}

/** One incarnation's view of a medium: the LocalDisk the replication code is given. */
export class SimDisk implements LocalDisk {
  constructor(
    readonly medium: DiskMedium,
    private readonly scheduler: Scheduler,
    private readonly alive: () => boolean,
    private readonly label: string,
  ) {}

  /** Runs `effect` when the operation completes, after a seeded latency. */
  private complete<T>(name: string, effect: () => T, maxMs = DISK_LATENCY_MS_MAX): Promise<T> {
    const random = this.scheduler.random;
    const delay = DISK_LATENCY_MS_MIN + random.float() * (maxMs - DISK_LATENCY_MS_MIN);
    return new Promise<T>((resolve, reject) => {
      this.scheduler.schedule(
        delay,
        `${this.label}.${name}`,
        () => {
          if (this.medium.failed) {
            reject(new CisternError('EIO', `simulated disk ${this.medium.id} failed`));
            return;
          }
          try {
            resolve(effect());
          } catch (error) {
            reject(error);
          }
        },
        this.alive,
      );
    });
  }

  read(key: ObjectKey, offset: number, length: number): Promise<Uint8Array> {
    const [first, count] = blocksOf(offset, length);
    return this.complete('read', () => {
      const out = new Uint8Array(length);
      for (let i = 0; i < count; i += 1)
        out.set(this.medium.block(key, first + i), i * SIM_BLOCK_BYTES);
      return out;
    });
  }

  write(
    key: ObjectKey,
    offset: number,
    data: Uint8Array,
    options: { fua?: boolean; log?: LogTag } = {},
  ): Promise<void> {
    const [first, count] = blocksOf(offset, data.length);
    // The caller may reuse its buffer once we return: keep our own copy now.
    const copy = Uint8Array.from(data);
    return this.complete('write', () => {
      for (let i = 0; i < count; i += 1) {
        const bytes = copy.subarray(i * SIM_BLOCK_BYTES, (i + 1) * SIM_BLOCK_BYTES);
        this.medium.mark(key, this.scheduler.now);
        this.medium.apply({ kind: 'write', key: { ...key }, block: first + i, data: bytes });
      }
      this.logged(key, options.log);
      if (options.fua) this.medium.persist(this.medium.unflushed.length);
    });
  }

  trim(key: ObjectKey, offset: number, length: number, log?: LogTag): Promise<void> {
    return this.discard('trim', key, offset, length, log);
  }

  zero(key: ObjectKey, offset: number, length: number, log?: LogTag): Promise<void> {
    return this.discard('zero', key, offset, length, log);
  }

  /** A change completed: its PG log entry follows it, in the same step. */
  private logged(key: ObjectKey, tag: LogTag | undefined): void {
    if (tag) this.medium.apply({ kind: 'log', key: { ...key }, tag });
  }

  private discard(
    name: string,
    key: ObjectKey,
    offset: number,
    length: number,
    log?: LogTag,
  ): Promise<void> {
    const [first, count] = blocksOf(offset, length);
    return this.complete(name, () => {
      const object = this.medium.current.get(keyName(key));
      for (let i = 0; i < count; i += 1) {
        if (object?.blocks.has(first + i)) {
          this.medium.mark(key, this.scheduler.now);
          this.medium.apply({ kind: 'discard', key: { ...key }, block: first + i });
        }
      }
      this.logged(key, log);
    });
  }

  blockStatus(key: ObjectKey, offset: number, length: number): Promise<Extent[]> {
    const [first, count] = blocksOf(offset, length);
    return this.complete('status', () => {
      const blocks = this.medium.current.get(keyName(key))?.blocks;
      const extents: Extent[] = [];
      for (let i = 0; i < count; i += 1) {
        const data = blocks?.has(first + i) === true;
        const last = extents[extents.length - 1];
        if (last && last.hole === !data) last.length += SIM_BLOCK_BYTES;
        else extents.push({ length: SIM_BLOCK_BYTES, hole: !data, zero: !data });
      }
      return extents;
    });
  }

  deleteObject(key: ObjectKey, log?: LogTag): Promise<boolean> {
    return this.complete('delete', () => {
      const existed = this.medium.current.has(keyName(key));
      if (existed) {
        this.medium.mark(key, this.scheduler.now);
        this.medium.apply({ kind: 'delete', key: { ...key } });
      }
      this.logged(key, log);
      return existed;
    });
  }

  /**
   * The PG log (ObjectEndpoint.pgLog). As the real store does, what it reports is made
   * durable first (a flush), so a crash cannot take back a version recovery relied on.
   */
  async pgLog(pool: number, pg: number, after?: PgVersion): Promise<PgLogState> {
    const own = this.medium.currentLog.state(pool, pg, undefined, 0);
    const state = this.medium.currentLog.state(pool, pg, after ?? own.complete);
    await this.flush();
    return state;
  }

  /** Stray removal (LocalDisk.forgetPgLog): durable with the next flush, as in the store. */
  forgetPgLog(pool: number, pg: number, start: PgVersion): void {
    this.medium.apply({ kind: 'log-forget', pool, pg, start });
  }

  async markPgLog(
    pool: number,
    pg: number,
    mark: { start: PgVersion; complete?: PgVersion },
  ): Promise<void> {
    // Durable with the next flush, as in the store (recovery flushes right after).
    await this.complete('log-mark', () => this.medium.apply({ kind: 'log-mark', pool, pg, mark }));
  }

  flush(): Promise<void> {
    // What had completed when the flush was issued: a prefix of the unflushed list then,
    // and (persisting always takes a prefix) what remains of it is a prefix still.
    const issued = new Set(this.medium.unflushed);
    return this.complete(
      'flush',
      () => {
        let count = 0;
        while (count < this.medium.unflushed.length && issued.has(this.medium.unflushed[count]!))
          count += 1;
        this.medium.persist(count);
      },
      FLUSH_LATENCY_MS_MAX,
    );
  }

  /**
   * Peering's activity record (ObjectEndpoint.activeObjects): the medium's marks, kept
   * as the real store keeps them (DiskMedium.marks) — every object changed since its
   * last flush, or within ACTIVITY_MARK_RETAIN_MS, crash or not.
   */
  activeObjects(pool: number): Promise<ObjectKey[]> {
    return this.complete('active', () => this.medium.activeKeys(pool, this.scheduler.now));
  }

  async *listObjects(filter: ObjectKeyFilter = {}): AsyncGenerator<ObjectKey> {
    const keys = await this.complete('list', () =>
      [...this.medium.current.values()]
        .map((o) => o.key)
        .filter(
          (k) =>
            (filter.pool === undefined || k.pool === filter.pool) &&
            (filter.volume === undefined || k.volume === filter.volume),
        )
        .sort((a, b) => Buffer.compare(encodeObjectKey(a), encodeObjectKey(b))),
    );
    for (const key of keys) yield { ...key };
  }
}

function blocksOf(offset: number, length: number): [number, number] {
  assert(
    offset % SIM_BLOCK_BYTES === 0 && length % SIM_BLOCK_BYTES === 0,
    `simulated disk takes whole blocks, got ${offset}+${length}`,
  );
  return [offset / SIM_BLOCK_BYTES, length / SIM_BLOCK_BYTES];
}
