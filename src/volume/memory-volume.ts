// An in-memory ExportProvider: sparse volumes of 4 KiB blocks in a Map, so front ends can be
// built and tested before the real volume layer exists, and so protocol tests run without
// disks. It honours the whole VolumeHandle contract (range checks, read-only, holes in
// block status, fast zero) because the real volume layer will be held to the same tests.
// Every handle opened on one volume shares its blocks: what one connection writes, another
// reads at once (the NBD server advertises CAN_MULTI_CONN on that promise).

import { assert } from '../util/assert';
import { CisternError } from '../util/errors';
import type {
  ExportInfo,
  ExportProvider,
  Extent,
  IoFlags,
  VolumeHandle,
  ZeroFlags,
} from './backend';

/** Allocation unit: a write of one byte allocates one block, a trim frees whole blocks only. */
export const MEMORY_BLOCK_BYTES = 4096;
/**
 * Default bound on allocated bytes across all volumes of one provider, so a test (or a
 * client filling a huge thin volume) gets ENOSPC rather than exhausting the process.
 */
export const MEMORY_CAPACITY_DEFAULT_BYTES = 2 * 1024 * 1024 * 1024;
/** Largest volume size: offsets must stay exact in a double. */
export const MEMORY_VOLUME_MAX_BYTES = Number.MAX_SAFE_INTEGER - MEMORY_BLOCK_BYTES;

export interface MemoryVolumeOptions {
  description?: string;
  readOnly?: boolean;
  /** When false, writeZeroes with fastZero fails with ENOTSUP (as a backend that cannot zero fast). */
  fastZero?: boolean;
}

export interface MemoryProviderOptions {
  capacityBytes?: number;
}

interface MemoryVolume {
  readonly name: string;
  readonly sizeBytes: number;
  readonly description: string;
  readonly readOnly: boolean;
  readonly fastZero: boolean;
  readonly blocks: Map<number, Buffer>;
  flushCount: number;
}

export class MemoryExportProvider implements ExportProvider {
  private readonly volumes = new Map<string, MemoryVolume>();
  private readonly capacityBytes: number;
  private allocatedBytes = 0;

  constructor(options: MemoryProviderOptions = {}) {
    this.capacityBytes = options.capacityBytes ?? MEMORY_CAPACITY_DEFAULT_BYTES;
    assert(this.capacityBytes >= 0, 'capacity must not be negative');
  }

  /** Creates an empty (all holes) volume. Throws EEXIST or EINVAL. */
  create(name: string, sizeBytes: number, options: MemoryVolumeOptions = {}): void {
    if (this.volumes.has(name)) throw new CisternError('EEXIST', `volume ${name} exists`);
    if (!Number.isSafeInteger(sizeBytes) || sizeBytes < 0 || sizeBytes > MEMORY_VOLUME_MAX_BYTES) {
      throw new CisternError('EINVAL', `bad volume size ${sizeBytes}`);
    }
    this.volumes.set(name, {
      name,
      sizeBytes,
      description: options.description ?? '',
      readOnly: options.readOnly ?? false,
      fastZero: options.fastZero ?? true,
      blocks: new Map(),
      flushCount: 0,
    });
  }

  delete(name: string): void {
    const volume = this.volumes.get(name);
    if (volume === undefined) throw new CisternError('UNKNOWN_VOLUME', `no volume ${name}`);
    this.allocatedBytes -= volume.blocks.size * MEMORY_BLOCK_BYTES;
    volume.blocks.clear();
    this.volumes.delete(name);
  }

  async list(): Promise<ExportInfo[]> {
    return [...this.volumes.values()].map((volume) => ({
      name: volume.name,
      description: volume.description,
      size: volume.sizeBytes,
      readOnly: volume.readOnly,
    }));
  }

  async open(name: string, options: { readOnly: boolean }): Promise<VolumeHandle> {
    const volume = this.volumes.get(name);
    if (volume === undefined) throw new CisternError('UNKNOWN_VOLUME', `no volume ${name}`);
    return new MemoryVolumeHandle(volume, options.readOnly || volume.readOnly, this);
  }

  /** For tests: bytes held by allocated blocks, and flushes seen by a volume. */
  get allocatedBytesTotal(): number {
    return this.allocatedBytes;
  }
  flushCount(name: string): number {
    return this.volumes.get(name)?.flushCount ?? 0;
  }
  allocatedBlockCount(name: string): number {
    return this.volumes.get(name)?.blocks.size ?? 0;
  }

  /** Called by handles: one place accounts for capacity. */
  allocate(volume: MemoryVolume, blockIndex: number): Buffer {
    const existing = volume.blocks.get(blockIndex);
    if (existing !== undefined) return existing;
    if (this.allocatedBytes + MEMORY_BLOCK_BYTES > this.capacityBytes) {
      throw new CisternError('ENOSPC', `memory provider full (${this.capacityBytes} bytes)`);
    }
    const block = Buffer.alloc(MEMORY_BLOCK_BYTES);
    volume.blocks.set(blockIndex, block);
    this.allocatedBytes += MEMORY_BLOCK_BYTES;
    return block;
  }

  release(volume: MemoryVolume, blockIndex: number): void {
    if (volume.blocks.delete(blockIndex)) this.allocatedBytes -= MEMORY_BLOCK_BYTES;
    assert(this.allocatedBytes >= 0, 'allocated bytes went negative');
  }
}

class MemoryVolumeHandle implements VolumeHandle {
  private closed = false;

  constructor(
    private readonly volume: MemoryVolume,
    readonly readOnly: boolean,
    private readonly provider: MemoryExportProvider,
  ) {}

  get name(): string {
    return this.volume.name;
  }
  get size(): number {
    return this.volume.sizeBytes;
  }

  async read(offset: number, length: number): Promise<Uint8Array> {
    this.checkRange(offset, length, 'EINVAL');
    // A copy, never a view of a block: the caller may still be sending it when a later
    // write changes the block.
    const result = Buffer.allocUnsafe(length);
    this.forEachBlockPiece(offset, length, (blockIndex, inBlock, pieceBytes, at) => {
      const block = this.volume.blocks.get(blockIndex);
      if (block === undefined) result.fill(0, at, at + pieceBytes);
      else block.copy(result, at, inBlock, inBlock + pieceBytes);
    });
    return result;
  }

  async write(offset: number, data: Uint8Array, _flags?: IoFlags): Promise<void> {
    this.checkWritable();
    this.checkRange(offset, data.length, 'ENOSPC');
    this.forEachBlockPiece(offset, data.length, (blockIndex, inBlock, pieceBytes, at) => {
      const block = this.provider.allocate(this.volume, blockIndex);
      block.set(data.subarray(at, at + pieceBytes), inBlock);
    });
  }

  async trim(offset: number, length: number, _flags?: IoFlags): Promise<void> {
    this.checkWritable();
    this.checkRange(offset, length, 'EINVAL');
    this.zeroRange(offset, length, false);
  }

  async writeZeroes(offset: number, length: number, flags: ZeroFlags = {}): Promise<void> {
    this.checkWritable();
    this.checkRange(offset, length, 'ENOSPC');
    if (flags.fastZero && !this.volume.fastZero) {
      throw new CisternError('ENOTSUP', 'this volume cannot zero fast');
    }
    this.zeroRange(offset, length, flags.noHole ?? false);
  }

  async flush(): Promise<void> {
    this.checkOpen();
    this.volume.flushCount += 1;
  }

  async blockStatus(offset: number, length: number): Promise<Extent[]> {
    this.checkRange(offset, length, 'EINVAL');
    const extents: Extent[] = [];
    const push = (extentBytes: number, hole: boolean, zero: boolean): void => {
      const last = extents[extents.length - 1];
      if (last !== undefined && last.hole === hole && last.zero === zero)
        last.length += extentBytes;
      else extents.push({ length: extentBytes, hole, zero });
    };
    const end = offset + length;
    let at = offset;
    for (const blockIndex of this.allocatedBlocksIn(offset, length)) {
      const blockStart = blockIndex * MEMORY_BLOCK_BYTES;
      if (blockStart > at) push(blockStart - at, true, true);
      const pieceEnd = Math.min(blockStart + MEMORY_BLOCK_BYTES, end);
      const start = Math.max(blockStart, at);
      const block = this.volume.blocks.get(blockIndex);
      assert(block !== undefined, 'listed block vanished');
      push(pieceEnd - start, false, isAllZero(block));
      at = pieceEnd;
    }
    if (at < end) push(end - at, true, true);
    return extents;
  }

  async cache(offset: number, length: number): Promise<void> {
    this.checkRange(offset, length, 'EINVAL');
  }

  async close(): Promise<void> {
    this.closed = true;
  }

  /** Sorted indexes of allocated blocks overlapping the range, found the cheaper way. */
  private allocatedBlocksIn(offset: number, length: number): number[] {
    if (length === 0) return [];
    const first = Math.floor(offset / MEMORY_BLOCK_BYTES);
    const last = Math.floor((offset + length - 1) / MEMORY_BLOCK_BYTES);
    const blocks = this.volume.blocks;
    if (last - first + 1 <= blocks.size) {
      const found: number[] = [];
      for (let index = first; index <= last; index += 1) if (blocks.has(index)) found.push(index);
      return found;
    }
    return [...blocks.keys()]
      .filter((index) => index >= first && index <= last)
      .sort((a, b) => a - b);
  }

  /** Zeroes the range: whole blocks are freed (or kept allocated when noHole), partial ones cleared. */
  private zeroRange(offset: number, length: number, noHole: boolean): void {
    if (!noHole) {
      for (const blockIndex of this.allocatedBlocksIn(offset, length)) {
        const blockStart = blockIndex * MEMORY_BLOCK_BYTES;
        const inBlock = Math.max(offset - blockStart, 0);
        const pieceEnd = Math.min(blockStart + MEMORY_BLOCK_BYTES, offset + length) - blockStart;
        if (inBlock === 0 && pieceEnd === MEMORY_BLOCK_BYTES)
          this.provider.release(this.volume, blockIndex);
        else this.volume.blocks.get(blockIndex)?.fill(0, inBlock, pieceEnd);
      }
      return;
    }
    this.forEachBlockPiece(offset, length, (blockIndex, inBlock, pieceBytes) => {
      this.provider.allocate(this.volume, blockIndex).fill(0, inBlock, inBlock + pieceBytes);
    });
  }

  private forEachBlockPiece(
    offset: number,
    length: number,
    visit: (blockIndex: number, inBlock: number, pieceBytes: number, at: number) => void,
  ): void {
    let at = 0;
    while (at < length) {
      const position = offset + at;
      const blockIndex = Math.floor(position / MEMORY_BLOCK_BYTES);
      const inBlock = position - blockIndex * MEMORY_BLOCK_BYTES;
      const pieceBytes = Math.min(MEMORY_BLOCK_BYTES - inBlock, length - at);
      visit(blockIndex, inBlock, pieceBytes, at);
      at += pieceBytes;
    }
  }

  private checkRange(offset: number, length: number, beyondEndCode: 'EINVAL' | 'ENOSPC'): void {
    this.checkOpen();
    if (
      !Number.isSafeInteger(offset) ||
      !Number.isSafeInteger(length) ||
      offset < 0 ||
      length < 0
    ) {
      throw new CisternError('EINVAL', `bad range ${offset}+${length}`);
    }
    if (offset + length > this.volume.sizeBytes) {
      throw new CisternError(
        beyondEndCode,
        `range ${offset}+${length} beyond the end of ${this.volume.name} (${this.volume.sizeBytes} bytes)`,
      );
    }
  }

  private checkWritable(): void {
    if (this.readOnly)
      throw new CisternError('EROFS', `volume ${this.volume.name} is read-only here`);
  }

  private checkOpen(): void {
    if (this.closed) throw new CisternError('CLOSED', 'volume handle is closed');
  }
}

function isAllZero(block: Buffer): boolean {
  return block.equals(zeroBlock);
}
const zeroBlock = Buffer.alloc(MEMORY_BLOCK_BYTES);
