// A layer that makes any operation of the device below fail with EIO on demand, the
// way nbdkit's error filter does: the volume layer uses it to prove that a failing
// disk is taken out of service, and the store's tests that one failed I/O fails one
// request only.

import { assert } from '../util/assert';
import { CisternError } from '../util/errors';
import type { BlockDevice, WriteFlags } from './device';

export type DeviceOperation = 'read' | 'write' | 'flush' | 'punchHole' | 'zeroRange';

export class FaultyDevice implements BlockDevice {
  private readonly failing = new Set<DeviceOperation>();
  private readonly failNextCounts = new Map<DeviceOperation, number>();
  /** Faults injected so far. */
  faults = 0;

  constructor(readonly inner: BlockDevice) {}

  get size(): number {
    return this.inner.size;
  }

  get alignment(): number {
    return this.inner.alignment;
  }

  /** Every call of these operations fails until heal(). */
  failAlways(...operations: DeviceOperation[]): void {
    for (const operation of operations) this.failing.add(operation);
  }

  /** The next `count` calls of `operation` fail. */
  failNext(operation: DeviceOperation, count = 1): void {
    assert(Number.isInteger(count) && count > 0, `bad fault count ${count}`);
    this.failNextCounts.set(operation, (this.failNextCounts.get(operation) ?? 0) + count);
  }

  heal(): void {
    this.failing.clear();
    this.failNextCounts.clear();
  }

  async read(buffer: Uint8Array, offset: number): Promise<void> {
    this.maybeFail('read', offset);
    return this.inner.read(buffer, offset);
  }

  async write(buffer: Uint8Array, offset: number, flags?: WriteFlags): Promise<void> {
    this.maybeFail('write', offset);
    return this.inner.write(buffer, offset, flags);
  }

  async flush(): Promise<void> {
    this.maybeFail('flush', 0);
    return this.inner.flush();
  }

  async punchHole(offset: number, length: number): Promise<void> {
    this.maybeFail('punchHole', offset);
    return this.inner.punchHole(offset, length);
  }

  async zeroRange(offset: number, length: number): Promise<void> {
    this.maybeFail('zeroRange', offset);
    return this.inner.zeroRange(offset, length);
  }

  allocate(lengthBytes: number): Uint8Array {
    return this.inner.allocate ? this.inner.allocate(lengthBytes) : Buffer.alloc(lengthBytes);
  }

  close(): Promise<void> {
    return this.inner.close();
  }

  private maybeFail(operation: DeviceOperation, offset: number): void {
    const pending = this.failNextCounts.get(operation) ?? 0;
    if (pending > 0) this.failNextCounts.set(operation, pending - 1);
    else if (!this.failing.has(operation)) return;
    this.faults += 1;
    throw new CisternError('EIO', `injected ${operation} failure at ${offset}`);
  }
}
