// Test support for the object store (not a test file itself): self-identifying data,
// random operations from a seed, and a model of what every 4 KiB block may read as
// after a crash. Data written by write number `seq` to byte p of an object carries
// (seq, p, object, pool/volume) in every 16 bytes, so a block holding another block's,
// another object's or a freed slot's bytes can never match an allowed value.

import { createHash } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { assert } from '../util/assert';
import type { Random } from '../util/random';
import { formatObjectKey, type ObjectKey } from './key';
import { BLOCK_SIZE_BYTES } from './layout';
import type { ObjectStore } from './object-store';

const PATTERN_UNIT_BYTES = 16;

export function pattern(key: ObjectKey, seq: number, offset: number, length: number): Buffer {
  const first = Math.floor(offset / PATTERN_UNIT_BYTES) * PATTERN_UNIT_BYTES;
  const end = Math.ceil((offset + length) / PATTERN_UNIT_BYTES) * PATTERN_UNIT_BYTES;
  const bytes = Buffer.alloc(end - first);
  for (let at = first; at < end; at += PATTERN_UNIT_BYTES) {
    const unit = at - first;
    bytes.writeUInt32LE(seq, unit);
    bytes.writeUInt32LE(at, unit + 4);
    bytes.writeUInt32LE(key.object % 2 ** 32, unit + 8);
    bytes.writeUInt32LE((((key.volume & 0xffff) << 16) | (key.pool & 0xffff)) >>> 0, unit + 12);
  }
  return bytes.subarray(offset - first, offset - first + length);
}

/** What the first 16 bytes of a block claim to be, for failure messages. */
export function describeBlock(content: Uint8Array): string {
  const bytes = Buffer.from(content.buffer, content.byteOffset, content.byteLength);
  if (bytes.every((byte) => byte === 0)) return 'zeros';
  return `seq ${bytes.readUInt32LE(0)} offset ${bytes.readUInt32LE(4)} object ${bytes.readUInt32LE(8)} pool/volume ${bytes.readUInt32LE(12).toString(16)}`;
}

export type ModelOp =
  | { kind: 'write'; key: ObjectKey; offset: number; length: number; seq: number; fua: boolean }
  | { kind: 'trim' | 'zero'; key: ObjectKey; offset: number; length: number }
  | { kind: 'delete'; key: ObjectKey }
  | { kind: 'flush' };

export interface OpChoice {
  /** Allow byte ranges that are not whole blocks. */
  unaligned: boolean;
  objectSizeBytes: number;
}

export function randomOp(
  random: Random,
  universe: ObjectKey[],
  seq: number,
  choice: OpChoice,
): ModelOp {
  const key = random.pick(universe);
  const roll = random.int(100);
  if (roll < 10) return { kind: 'flush' };
  if (roll < 14) return { kind: 'delete', key };
  const { offset, length } = randomRange(random, choice);
  if (roll < 22) return { kind: 'trim', key, offset, length };
  if (roll < 30) return { kind: 'zero', key, offset, length };
  return { kind: 'write', key, offset, length, seq, fua: random.bool(0.05) };
}

function randomRange(random: Random, choice: OpChoice): { offset: number; length: number } {
  const blocks = choice.objectSizeBytes / BLOCK_SIZE_BYTES;
  if (!choice.unaligned || random.bool(0.6)) {
    const first = random.int(blocks);
    const count = random.range(1, Math.min(4, blocks - first));
    return { offset: first * BLOCK_SIZE_BYTES, length: count * BLOCK_SIZE_BYTES };
  }
  const offset = random.int(choice.objectSizeBytes - 1);
  const length = random.range(1, Math.min(3 * BLOCK_SIZE_BYTES, choice.objectSizeBytes - offset));
  return { offset, length };
}

export async function applyToStore(store: ObjectStore, op: ModelOp): Promise<void> {
  switch (op.kind) {
    case 'write':
      return store.write(op.key, op.offset, pattern(op.key, op.seq, op.offset, op.length), {
        fua: op.fua,
      });
    case 'trim':
      return store.trim(op.key, op.offset, op.length);
    case 'zero':
      return store.zero(op.key, op.offset, op.length);
    case 'delete':
      await store.deleteObject(op.key);
      return;
    case 'flush':
      return store.flush();
  }
}

const ZERO_BLOCK = Buffer.alloc(BLOCK_SIZE_BYTES);
const ZERO_HASH = hash(ZERO_BLOCK);

function hash(bytes: Uint8Array): string {
  return createHash('sha1').update(bytes).digest('hex');
}

interface BlockState {
  current: Buffer;
  /** Hashes of the content at the last acknowledged flush and of every later write. */
  allowed: Set<string>;
}

/** The reference: per block, what reads return now and what a crash may bring back. */
export class BlockModel {
  private readonly blocks = new Map<string, BlockState>();

  constructor(readonly objectSizeBytes: number) {}

  /** Applies a completed (or, conservatively, possibly completed) operation. */
  apply(op: ModelOp): void {
    switch (op.kind) {
      case 'write': {
        const data = pattern(op.key, op.seq, op.offset, op.length);
        this.overwrite(op.key, op.offset, op.length, (block, from, to, at) => {
          data.copy(block, from, at, at + (to - from));
        });
        if (op.fua) this.settleRange(op.key, op.offset, op.length);
        return;
      }
      case 'trim': // frees whole blocks only; they then read as zeros
        this.overwrite(op.key, op.offset, op.length, (block, from, to) => {
          if (from === 0 && to === BLOCK_SIZE_BYTES) block.fill(0);
        });
        return;
      case 'zero':
        this.overwrite(op.key, op.offset, op.length, (block, from, to) => block.fill(0, from, to));
        return;
      case 'delete':
        this.overwrite(op.key, 0, this.objectSizeBytes, (block) => block.fill(0));
        return;
      case 'flush':
        this.flushed();
        return;
    }
  }

  /** A flush was acknowledged: every block's only allowed content is its current one. */
  flushed(): void {
    for (const state of this.blocks.values()) state.allowed = new Set([hash(state.current)]);
  }

  current(key: ObjectKey, block: number): Buffer {
    return this.blocks.get(blockId(key, block))?.current ?? ZERO_BLOCK;
  }

  /** Null when allowed, else why not. */
  check(key: ObjectKey, block: number, content: Uint8Array): string | null {
    const state = this.blocks.get(blockId(key, block));
    const allowed = state ? state.allowed : new Set([ZERO_HASH]);
    if (allowed.has(hash(content))) return null;
    return `${formatObjectKey(key)} block ${block} reads as ${describeBlock(content)}; allowed ${allowed.size} values, current ${describeBlock(this.current(key, block))}`;
  }

  /** After recovery, what the store reads is the new durable truth. */
  reset(key: ObjectKey, block: number, content: Uint8Array): void {
    const current = Buffer.from(content);
    this.blocks.set(blockId(key, block), { current, allowed: new Set([hash(current)]) });
  }

  private overwrite(
    key: ObjectKey,
    offset: number,
    length: number,
    change: (block: Buffer, from: number, to: number, dataOffset: number) => void,
  ): void {
    const end = offset + length;
    assert(end <= this.objectSizeBytes, 'model op beyond object');
    for (
      let block = Math.floor(offset / BLOCK_SIZE_BYTES);
      block * BLOCK_SIZE_BYTES < end;
      block += 1
    ) {
      const blockStart = block * BLOCK_SIZE_BYTES;
      const from = Math.max(offset, blockStart) - blockStart;
      const to = Math.min(end, blockStart + BLOCK_SIZE_BYTES) - blockStart;
      const id = blockId(key, block);
      const state = this.blocks.get(id) ?? { current: ZERO_BLOCK, allowed: new Set([ZERO_HASH]) };
      const next = Buffer.from(state.current);
      change(next, from, to, blockStart + from - offset);
      state.current = next;
      state.allowed.add(hash(next));
      this.blocks.set(id, state);
    }
  }

  private settleRange(key: ObjectKey, offset: number, length: number): void {
    const end = offset + length;
    for (
      let block = Math.floor(offset / BLOCK_SIZE_BYTES);
      block * BLOCK_SIZE_BYTES < end;
      block += 1
    ) {
      const state = this.blocks.get(blockId(key, block));
      assert(state !== undefined, 'settling an untouched block');
      state.allowed = new Set([hash(state.current)]);
    }
  }
}

function blockId(key: ObjectKey, block: number): string {
  return `${formatObjectKey(key)}#${block}`;
}

/** Reads every block of every key and checks it against the model; returns the failures. */
export async function checkAgainstModel(
  store: ObjectStore,
  model: BlockModel,
  universe: ObjectKey[],
): Promise<string[]> {
  const failures: string[] = [];
  for (const key of universe) {
    const content = await store.read(key, 0, store.objectSizeBytes);
    for (let block = 0; block < store.objectSizeBytes / BLOCK_SIZE_BYTES; block += 1) {
      const bytes = content.subarray(block * BLOCK_SIZE_BYTES, (block + 1) * BLOCK_SIZE_BYTES);
      const failure = model.check(key, block, bytes);
      if (failure) failures.push(failure);
    }
  }
  return failures;
}

export function keyUniverse(pools: number, volumes: number, objects: number): ObjectKey[] {
  const keys: ObjectKey[] = [];
  for (let pool = 1; pool <= pools; pool += 1) {
    for (let volume = 1; volume <= volumes; volume += 1) {
      for (let object = 0; object < objects; object += 1) keys.push({ pool, volume, object });
    }
  }
  return keys;
}

/** A fresh directory under the system temp dir; remove it with `rm(dir, { recursive: true })`. */
export function tempDir(label: string): Promise<string> {
  return mkdtemp(join(tmpdir(), `cistern-${label}-`));
}

export async function removeDir(dir: string): Promise<void> {
  await rm(dir, { recursive: true, force: true });
}
