// A disk in memory that behaves like one with a volatile write cache: a write lands in
// the cache; flush() or a FUA write makes it durable; crash() returns the disk as it
// would come back after power loss. For every 4 KiB sector written since the last
// flush, the crashed disk holds either the durable content or any one of the versions
// written since (the cache may have written an older one back and lost the newer), so
// unflushed writes are lost, reordered and torn at sector granularity. The choice
// comes from a seeded Random: a failing simulation replays exactly.

import { assert } from '../util/assert';
import { CisternError } from '../util/errors';
import type { Random } from '../util/random';
import type { BlockDevice, WriteFlags } from './device';

export const MEMORY_SECTOR_BYTES = 4096;
const ZERO_SECTOR = new Uint8Array(MEMORY_SECTOR_BYTES);

export interface MemoryDeviceOptions {
  /** Required alignment of offsets and lengths; at most (and dividing) 4096. Default 4096. */
  alignment?: number;
  /**
   * With a generator, each operation completes after 0..latencyTicksMax event-loop
   * turns and takes effect only then, so concurrent operations finish in random order.
   */
  random?: Random;
  latencyTicksMax?: number;
}

export class MemoryDevice implements BlockDevice {
  readonly alignment: number;
  /** Sector → durable content; absent sectors are zeros (the device is sparse). */
  private readonly durable = new Map<number, Uint8Array>();
  /** Sector → versions written since the last flush, oldest first. */
  private readonly cached = new Map<number, Uint8Array[]>();
  private crashed = false;
  private closed = false;
  flushCount = 0;
  writeCount = 0;

  constructor(
    readonly size: number,
    private readonly options: MemoryDeviceOptions = {},
  ) {
    this.alignment = options.alignment ?? MEMORY_SECTOR_BYTES;
    assert(
      MEMORY_SECTOR_BYTES % this.alignment === 0,
      `alignment ${this.alignment} must divide 4096`,
    );
    assert(Number.isSafeInteger(size) && size % MEMORY_SECTOR_BYTES === 0, `bad size ${size}`);
  }

  async read(buffer: Uint8Array, offset: number): Promise<void> {
    await this.begin('read', offset, buffer.length);
    for (let at = 0; at < buffer.length; at += MEMORY_SECTOR_BYTES) {
      buffer.set(this.current((offset + at) / MEMORY_SECTOR_BYTES), at);
    }
  }

  async write(buffer: Uint8Array, offset: number, flags: WriteFlags = {}): Promise<void> {
    // Copy at submission, as the kernel would pin the pages: the caller may reuse its buffer.
    const copy = new Uint8Array(buffer);
    await this.begin('write', offset, buffer.length);
    this.writeCount += 1;
    for (let at = 0; at < copy.length; at += MEMORY_SECTOR_BYTES) {
      this.store(
        (offset + at) / MEMORY_SECTOR_BYTES,
        copy.subarray(at, at + MEMORY_SECTOR_BYTES),
        flags.fua,
      );
    }
  }

  async flush(): Promise<void> {
    await this.begin('flush', 0, 0);
    this.flushCount += 1;
    for (const [sector, versions] of this.cached)
      this.settle(sector, versions[versions.length - 1]!);
    this.cached.clear();
  }

  async punchHole(offset: number, length: number): Promise<void> {
    await this.begin('punchHole', offset, length);
    for (let at = 0; at < length; at += MEMORY_SECTOR_BYTES) {
      this.store((offset + at) / MEMORY_SECTOR_BYTES, ZERO_SECTOR, false);
    }
  }

  zeroRange(offset: number, length: number): Promise<void> {
    return this.punchHole(offset, length);
  }

  async close(): Promise<void> {
    this.closed = true;
  }

  /**
   * The disk after a power loss: this device dies (every later call fails with EIO, as
   * I/O of a dead process never lands) and the returned one holds what survived.
   * Without a generator, every unflushed write is lost (the harshest cache).
   */
  crash(random?: Random): MemoryDevice {
    assert(!this.crashed, 'device crashed twice');
    this.crashed = true;
    const survivor = new MemoryDevice(this.size, this.options);
    for (const [sector, content] of this.durable) survivor.durable.set(sector, content);
    for (const [sector, versions] of this.cached) {
      const choice = random ? random.int(versions.length + 1) : 0;
      if (choice > 0) survivor.settle(sector, versions[choice - 1]!);
    }
    return survivor;
  }

  /** Sectors whose current content is not all zeros: the space a thin disk would use. */
  sectorsInUse(): number {
    let count = 0;
    const sectors = new Set([...this.durable.keys(), ...this.cached.keys()]);
    for (const sector of sectors) if (this.current(sector) !== ZERO_SECTOR) count += 1;
    return count;
  }

  private async begin(operation: string, offset: number, length: number): Promise<void> {
    this.checkAlive(operation);
    assert(
      offset % this.alignment === 0 && length % this.alignment === 0,
      `${operation} ${offset}+${length} is not aligned to ${this.alignment}`,
    );
    assert(
      offset % MEMORY_SECTOR_BYTES === 0 && length % MEMORY_SECTOR_BYTES === 0,
      'sub-sector I/O',
    );
    if (offset < 0 || offset + length > this.size) {
      throw new CisternError(
        'EINVAL',
        `${operation} ${offset}+${length} beyond device of ${this.size} bytes`,
      );
    }
    const { random, latencyTicksMax = 0 } = this.options;
    const ticks = random && latencyTicksMax > 0 ? random.int(latencyTicksMax + 1) : 0;
    for (let tick = 0; tick < ticks; tick += 1)
      await new Promise((resolve) => setImmediate(resolve));
    if (ticks === 0) await Promise.resolve();
    this.checkAlive(operation); // a crash during the latency means the I/O never happened
  }

  private checkAlive(operation: string): void {
    if (this.crashed) throw new CisternError('EIO', `${operation} on a crashed device`);
    if (this.closed) throw new CisternError('CLOSED', `${operation} on a closed device`);
  }

  private current(sector: number): Uint8Array {
    const versions = this.cached.get(sector);
    if (versions) return versions[versions.length - 1]!;
    return this.durable.get(sector) ?? ZERO_SECTOR;
  }

  private store(sector: number, content: Uint8Array, fua: boolean | undefined): void {
    const stored = isZero(content) ? ZERO_SECTOR : content;
    if (fua) {
      // Durable now; older cached versions of the sector can no longer come back.
      this.cached.delete(sector);
      this.settle(sector, stored);
      return;
    }
    const versions = this.cached.get(sector);
    if (versions) versions.push(stored);
    else this.cached.set(sector, [stored]);
  }

  private settle(sector: number, content: Uint8Array): void {
    if (content === ZERO_SECTOR) this.durable.delete(sector);
    else this.durable.set(sector, content);
  }
}

function isZero(bytes: Uint8Array): boolean {
  for (let index = 0; index < bytes.length; index += 1) if (bytes[index] !== 0) return false;
  return true;
}
