// Aligned buffers for O_DIRECT. V8 cannot allocate at a chosen alignment, so memory
// comes from posix_memalign in the addon. A BufferPool carves big slabs into equal
// blocks and reuses them, so steady-state I/O allocates nothing.

import { assert } from '../util/assert';
import { CisternError } from '../util/errors';
import { BUFFER_ALIGN_BYTES_MIN } from './limits';
import { loadNative } from './native';

/** Slab size when the caller does not choose: few allocations, little waste. */
const SLAB_BYTES_DEFAULT = 4 * 2 ** 20;

/** A zero-filled buffer of `sizeBytes` whose address is a multiple of `alignBytes`. */
export function allocAligned(sizeBytes: number, alignBytes = BUFFER_ALIGN_BYTES_MIN): Uint8Array {
  assert(Number.isSafeInteger(sizeBytes) && sizeBytes > 0, `bad buffer size ${sizeBytes}`);
  assert(isPowerOfTwo(alignBytes), `alignment must be a power of two, got ${alignBytes}`);
  const buffer = new Uint8Array(loadNative().allocAligned(sizeBytes, alignBytes));
  assert(buffer.byteLength === sizeBytes, 'allocAligned returned the wrong size');
  return buffer;
}

/** The largest power of two (up to 1 MiB) dividing the buffer's address. */
export function addressAlignment(buffer: Uint8Array): number {
  return loadNative().addressAlignment(buffer);
}

export interface BufferPoolOptions {
  blockSizeBytes: number;
  /** Most buffers handed out at once; acquire() beyond it throws UNAVAILABLE. */
  buffersMax: number;
  alignBytes?: number;
  slabBytes?: number;
}

export class BufferPool {
  readonly blockSizeBytes: number;
  readonly buffersMax: number;
  readonly alignBytes: number;
  private readonly blocksPerSlab: number;
  private readonly free: Uint8Array[] = [];
  private readonly outstanding = new Set<Uint8Array>();
  private allocatedCount = 0;

  constructor(options: BufferPoolOptions) {
    const alignBytes = options.alignBytes ?? BUFFER_ALIGN_BYTES_MIN;
    assert(isPowerOfTwo(alignBytes), `alignment must be a power of two, got ${alignBytes}`);
    assert(
      Number.isSafeInteger(options.blockSizeBytes) &&
        options.blockSizeBytes > 0 &&
        options.blockSizeBytes % alignBytes === 0,
      `block size ${options.blockSizeBytes} must be a positive multiple of ${alignBytes}`,
    );
    assert(Number.isSafeInteger(options.buffersMax) && options.buffersMax > 0, 'bad buffersMax');
    this.blockSizeBytes = options.blockSizeBytes;
    this.buffersMax = options.buffersMax;
    this.alignBytes = alignBytes;
    const slabBytes = options.slabBytes ?? SLAB_BYTES_DEFAULT;
    this.blocksPerSlab = Math.max(1, Math.floor(slabBytes / options.blockSizeBytes));
  }

  /** Buffers handed out and not yet released. */
  get inUse(): number {
    return this.outstanding.size;
  }

  /** Buffers carved so far (in use or free). */
  get allocated(): number {
    return this.allocatedCount;
  }

  acquire(): Uint8Array {
    if (this.free.length === 0) this.grow();
    const buffer = this.free.pop();
    if (buffer === undefined) {
      throw new CisternError(
        'UNAVAILABLE',
        `buffer pool exhausted: all ${this.buffersMax} buffers of ${this.blockSizeBytes} bytes in use`,
      );
    }
    this.outstanding.add(buffer);
    return buffer;
  }

  release(buffer: Uint8Array): void {
    assert(this.outstanding.delete(buffer), 'released a buffer this pool did not hand out');
    this.free.push(buffer);
  }

  private grow(): void {
    const blocks = Math.min(this.blocksPerSlab, this.buffersMax - this.allocatedCount);
    if (blocks <= 0) return;
    const slab = loadNative().allocAligned(blocks * this.blockSizeBytes, this.alignBytes);
    for (let index = blocks - 1; index >= 0; index--) {
      this.free.push(new Uint8Array(slab, index * this.blockSizeBytes, this.blockSizeBytes));
    }
    this.allocatedCount += blocks;
  }
}

function isPowerOfTwo(value: number): boolean {
  return Number.isSafeInteger(value) && value > 0 && (value & (value - 1)) === 0;
}
