// Reusable device buffers for the object store's data path. An O_DIRECT device hands
// out aligned memory through posix_memalign (device.allocate), and a fresh buffer per
// I/O cost more than the I/O itself in the NBD benchmark (perf/RESULTS.md): allocation
// and zero-fill, external-memory accounting, a finalizer per buffer for the GC, and for
// 1 MiB an mmap/munmap pair with page faults. So buffers are kept by power-of-two size
// class and handed out again.
//
// A reused buffer holds whatever its last user put there: another object's, another
// volume's data. Every caller must overwrite or zero every byte it exposes (DESIGN
// invariant 2: never foreign data); `take` says so in its name, and the store's read
// and stage paths zero what the device does not fill.
//
// A lease is given back once (a second release is a bug that would hand one buffer to
// two users, so it asserts). A lease that is never given back is only garbage: the
// cache keeps no list of what it lent.

import { assert } from '../util/assert';

/** Smallest class: the store's block. */
export const BUFFER_CLASS_MIN_BYTES = 4096;
/** Largest class kept; bigger requests get a one-off buffer (objects are 4 MiB by default). */
export const BUFFER_CLASS_MAX_BYTES = 4 * 2 ** 20;
/**
 * Free bytes kept per size class: 256 blocks of 4 KiB (two connections' worth of
 * in-flight 4 KiB requests), sixteen 1 MiB buffers. Bounds idle memory per store to
 * about 11 classes × this, in practice the one or two classes a workload uses.
 */
export const BUFFER_CLASS_CACHED_BYTES_MAX = 16 * 2 ** 20;
/** Free buffers kept per class, whatever their size. */
export const BUFFER_CLASS_CACHED_COUNT_MAX = 256;

/** Bytes lent out by the store; `release()` gives them back once the caller is done. */
export interface BufferLease {
  readonly data: Uint8Array;
  release(): void;
}

export class BufferCache {
  private readonly classes = new Map<number, Uint8Array[]>();

  /**
   * `allocate` returns a buffer of exactly the asked length, suitably aligned.
   * `cachedBytesMax`: free bytes kept per size class (the store's bound by default).
   */
  constructor(
    private readonly allocate: (lengthBytes: number) => Uint8Array,
    private readonly cachedBytesMax = BUFFER_CLASS_CACHED_BYTES_MAX,
  ) {}

  /**
   * A lease on at least `lengthBytes` bytes (data is exactly that long) holding
   * arbitrary old contents: the caller overwrites or zeros all of it before exposing it.
   */
  takeDirty(lengthBytes: number): BufferLease {
    assert(
      Number.isSafeInteger(lengthBytes) && lengthBytes > 0,
      `bad buffer length ${lengthBytes}`,
    );
    const size = classOf(lengthBytes);
    const free = size === undefined ? undefined : this.classes.get(size);
    const whole = free?.pop() ?? this.allocate(size ?? lengthBytes);
    assert(whole.length === (size ?? lengthBytes), 'allocator returned the wrong length');
    return new Lease(this, whole, lengthBytes);
  }

  /** Free buffers kept now, in bytes (for tests and status). */
  get cachedBytes(): number {
    let total = 0;
    for (const [size, free] of this.classes) total += size * free.length;
    return total;
  }

  /** @internal Called by Lease.release. */
  giveBack(whole: Uint8Array): void {
    const size = classOf(whole.length);
    if (size !== whole.length) return; // a one-off buffer: the GC frees it
    let free = this.classes.get(size);
    if (!free) this.classes.set(size, (free = []));
    const countMax = Math.min(
      BUFFER_CLASS_CACHED_COUNT_MAX,
      Math.floor(this.cachedBytesMax / size),
    );
    if (free.length < countMax) free.push(whole);
  }
}

class Lease implements BufferLease {
  readonly data: Uint8Array;
  private released = false;

  constructor(
    private readonly cache: BufferCache,
    private readonly whole: Uint8Array,
    lengthBytes: number,
  ) {
    this.data = lengthBytes === whole.length ? whole : whole.subarray(0, lengthBytes);
  }

  release(): void {
    assert(!this.released, 'buffer lease released twice');
    this.released = true;
    this.cache.giveBack(this.whole);
  }
}

/** The power-of-two class holding `lengthBytes`, or undefined above the largest class. */
function classOf(lengthBytes: number): number | undefined {
  if (lengthBytes > BUFFER_CLASS_MAX_BYTES) return undefined;
  let size = BUFFER_CLASS_MIN_BYTES;
  while (size < lengthBytes) size *= 2;
  return size;
}

/** A lease on memory nobody else holds (zeros, copies): releasing it does nothing. */
export function ownedLease(data: Uint8Array): BufferLease {
  return { data, release: () => undefined };
}
