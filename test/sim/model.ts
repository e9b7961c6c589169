// The workload's model of what each block may read as (invariants 1–3). Every write of
// the workload is to whole 4 KiB blocks, each block's bytes naming the write (its id,
// object and block, then a fill derived from the id), so a read tells exactly which
// write it returns — or that it returns another block's data or garbage (invariant 2).
//
// For one block, writes are issued one at a time (the workload never overlaps two
// writes to a block), so they form a sequence. A read may return the *floor* — the
// latest write known to be there — or any write issued after it (those may or may not
// have landed yet), never anything older. The floor is the latest write that either
// was covered by a completed FLUSH or FUA (durable: invariant 1), or was acknowledged
// with no host crash since (invariant 3: read your writes; a crash may take back an
// unflushed acknowledged write, invariant 2 allows its block to read as the flushed
// content or later) — nor one before that dropped it from a replica's cache while it
// was still unacknowledged (the primary cannot tell that crash from a later one). A write whose outcome is unknown (it failed, or its gateway died)
// may still land while the system settles it, so its block is left alone for
// QUIESCE_MS before it is written again.

import { assert } from '../../src/util/assert';
import { SIM_BLOCK_BYTES } from './disk';

/** How long a write of unknown outcome may still land (virtual ms; the gateway's retries are bounded well within). */
export const QUIESCE_MS = 30_000;

export interface Version {
  id: number;
  issuedAt: number;
  ackedAt?: number;
  durableAt?: number;
  failedAt?: number;
  /** When acknowledged, no good member (up, not stale) held it (see known-bugs.ts). */
  ackedWithNoUpHolder?: boolean;
  /** Disks whose cache still held it, unflushed, when a FLUSH covering it returned. */
  leftInCacheOf?: number[];
  /**
   * A power loss dropped it from a disk's cache before it was acknowledged: a replica had
   * taken it and answered, and lost it before the primary's acknowledgement went out.
   * The acknowledgement then promises no more than one followed by that crash would.
   */
  droppedBeforeAck?: boolean;
  /**
   * When the operator accepted the loss of its PG (an incomplete PG: every disk known
   * to hold it failed for good, and no surviving disk held every acknowledged write), and
   * the copy served from then on did not have it: it is gone, inherently (see revert).
   */
  lostAt?: number;
}

export interface BlockModel {
  object: number;
  block: number;
  versions: Version[];
  /** A write to this block is in flight. */
  busy: boolean;
  /** No new write before this time (an unknown outcome is settling). */
  quietUntil: number;
}

export function encodeBlock(id: number, object: number, block: number): Uint8Array {
  const bytes = new Uint8Array(SIM_BLOCK_BYTES);
  const view = new DataView(bytes.buffer);
  view.setUint32(0, id);
  view.setUint32(4, object);
  view.setUint32(8, block);
  view.setUint32(12, ~id >>> 0);
  const fill = Math.imul(id, 2654435761) >>> 0;
  for (let offset = 16; offset < SIM_BLOCK_BYTES; offset += 4)
    view.setUint32(offset, fill ^ offset);
  return bytes;
}

/** The write a block's bytes name (0: never written, zeros), or why they are not one. */
export function decodeBlock(
  bytes: Uint8Array,
  object: number,
  block: number,
): { id: number } | { error: string } {
  assert(bytes.length === SIM_BLOCK_BYTES, 'one block');
  if (bytes.every((b) => b === 0)) return { id: 0 };
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const id = view.getUint32(0);
  if (view.getUint32(12) !== ~id >>> 0) return { error: 'garbage (no write header)' };
  if (view.getUint32(4) !== object || view.getUint32(8) !== block) {
    return {
      error: `foreign data: write ${id} of object ${view.getUint32(4)} block ${view.getUint32(8)}`,
    };
  }
  const expected = encodeBlock(id, object, block);
  if (!expected.every((b, i) => b === bytes[i]))
    return { error: `write ${id} torn inside a block` };
  return { id };
}

export class Model {
  readonly blocks: BlockModel[] = [];
  /** Times of every host power loss. */
  readonly crashes: number[] = [];
  private nextId = 1;

  constructor(objects: number, blocksPerObject: number) {
    for (let object = 0; object < objects; object += 1) {
      for (let block = 0; block < blocksPerObject; block += 1) {
        this.blocks.push({ object, block, versions: [], busy: false, quietUntil: 0 });
      }
    }
  }

  block(object: number, block: number): BlockModel {
    const found = this.blocks.find((b) => b.object === object && b.block === block);
    assert(found, `no block ${object}/${block}`);
    return found;
  }

  writable(block: BlockModel, now: number): boolean {
    return !block.busy && block.quietUntil <= now;
  }

  issue(block: BlockModel, now: number): Version {
    assert(!block.busy, 'one write per block at a time');
    const version: Version = { id: this.nextId++, issuedAt: now };
    block.versions.push(version);
    block.busy = true;
    return version;
  }

  acked(block: BlockModel, version: Version, now: number, durable: boolean): void {
    version.ackedAt = now;
    if (durable) version.durableAt = now;
    block.busy = false;
  }

  /** Failed, or its gateway died: it may still land until it settles. */
  unknown(block: BlockModel, version: Version, now: number): void {
    version.failedAt = now;
    block.busy = false;
    block.quietUntil = now + QUIESCE_MS;
  }

  /**
   * A power loss dropped write `id` of the block from some disk's cache: if it was not
   * acknowledged yet, its acknowledgement will not hold it against crashes (the primary
   * counted a replica whose cache was already gone). A dropped recovery copy of an older
   * write changes nothing: that one's acknowledgement preceded the crash anyway.
   */
  dropped(block: BlockModel, id: number): void {
    const version = block.versions.find((v) => v.id === id);
    if (version && version.ackedAt === undefined) version.droppedBeforeAck = true;
  }

  /** Which ids a read issued at `issuedAt` and completed `now` may return. */
  allowed(block: BlockModel, issuedAt: number): { floor: number; ids: Set<number> } {
    const lastCrash = this.crashes.length > 0 ? this.crashes[this.crashes.length - 1]! : -1;
    let floorIndex = -1;
    block.versions.forEach((v, i) => {
      if (v.lostAt !== undefined) return;
      const durable = v.durableAt !== undefined && v.durableAt <= issuedAt;
      const acked =
        v.ackedAt !== undefined &&
        v.ackedAt <= issuedAt &&
        v.ackedAt > lastCrash &&
        v.droppedBeforeAck !== true;
      if (durable || acked) floorIndex = i;
    });
    const ids = new Set<number>();
    if (floorIndex < 0) ids.add(0);
    for (let i = Math.max(0, floorIndex); i < block.versions.length; i += 1)
      ids.add(block.versions[i]!.id);
    return { floor: floorIndex < 0 ? 0 : block.versions[floorIndex]!.id, ids };
  }

  /** The latest version acknowledged and not lost, if any (for the end checks). */
  latestAcked(block: BlockModel): Version | undefined {
    return [...block.versions]
      .reverse()
      .find((v) => v.ackedAt !== undefined && v.lostAt === undefined);
  }

  /**
   * An accepted loss: the block is served from a copy holding write `id` (0: none), and
   * every acknowledged write after it is gone. Only for a loss the simulation proved
   * inherent (no surviving copy held every acknowledged write of the PG).
   */
  revert(block: BlockModel, id: number, now: number): void {
    assert(id === 0 || block.versions.some((v) => v.id === id), `no write ${id} of the block`);
    for (const version of block.versions)
      if (version.id > id && version.ackedAt !== undefined) version.lostAt ??= now;
  }
}
