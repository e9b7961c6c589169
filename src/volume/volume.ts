// A volume as a front end sees it: byte ranges split into object ranges (4 MiB
// objects by default), each handed to the replication layer. Thin: objects exist only
// where something was written. Every range is checked here again, whatever the front
// end already checked.

import { assert } from '../util/assert';
import { CisternError } from '../util/errors';
import { ObjectIo } from '../replication/endpoint';
import type { FlushWatch } from '../replication/flush-errors';
import { VolumeSpec } from '../cluster/state';
import { ObjectKey } from '../store/key';
import { Extent, IoFlags, ReadLease, VolumeHandle, ZeroFlags } from './backend';

/** Largest zero range written as real zeros (NO_HOLE) per request to the store. */
const ZERO_WRITE_CHUNK_BYTES = 1 << 20;

interface Part {
  key: ObjectKey;
  offsetInObject: number;
  length: number;
  /** Where this part starts within the request. */
  requestOffset: number;
}

export class Volume implements VolumeHandle {
  private closed = false;
  private inFlight = 0;
  private idle: (() => void) | undefined;

  /** This handle's (connection's) sample of the daemon's flush errors (flush-errors.ts). */
  private readonly flushWatch: FlushWatch | undefined;

  constructor(
    private readonly spec: VolumeSpec,
    private readonly replication: ObjectIo,
    readonly readOnly: boolean,
    private readonly onClose: () => void,
  ) {
    this.flushWatch = replication.flushWatch?.();
  }

  get name(): string {
    return this.spec.name;
  }

  get size(): number {
    return this.spec.sizeBytes;
  }

  private parts(offset: number, length: number): Part[] {
    if (this.closed) throw new CisternError('CLOSED', `volume ${this.name} handle is closed`);
    if (
      !Number.isSafeInteger(offset) ||
      !Number.isSafeInteger(length) ||
      offset < 0 ||
      length < 0
    ) {
      throw new CisternError('EINVAL', `bad range ${offset}+${length}`);
    }
    if (offset + length > this.size) {
      throw new CisternError(
        'EINVAL',
        `range ${offset}+${length} ends past the end of ${this.name} (${this.size} bytes)`,
      );
    }
    const objectSize = this.spec.objectSizeBytes;
    const parts: Part[] = [];
    let position = offset;
    const end = offset + length;
    while (position < end) {
      const object = Math.floor(position / objectSize);
      const offsetInObject = position - object * objectSize;
      const partLength = Math.min(objectSize - offsetInObject, end - position);
      parts.push({
        key: { pool: this.spec.pool, volume: this.spec.id, object },
        offsetInObject,
        length: partLength,
        requestOffset: position - offset,
      });
      position += partLength;
    }
    return parts;
  }

  private async track<T>(operation: () => Promise<T>): Promise<T> {
    this.inFlight += 1;
    try {
      return await operation();
    } finally {
      this.inFlight -= 1;
      if (this.inFlight === 0) this.idle?.();
    }
  }

  private checkWritable(): void {
    if (this.readOnly) throw new CisternError('EPERM', `volume ${this.name} is open read-only`);
  }

  async read(offset: number, length: number): Promise<Uint8Array> {
    const lease = await this.readLeased(offset, length);
    const copy = new Uint8Array(lease.data);
    lease.release();
    return copy;
  }

  /**
   * A read inside one object lends the store's buffer as it is (the NBD reply sends it
   * without a copy). One spanning objects is assembled in a buffer of its own, each
   * part's lease released as soon as it is copied.
   */
  async readLeased(offset: number, length: number): Promise<ReadLease> {
    const parts = this.parts(offset, length);
    return this.track(async () => {
      if (parts.length === 1) {
        const part = parts[0] as Part;
        return this.replication.readLeased(part.key, part.offsetInObject, part.length);
      }
      const result = Buffer.allocUnsafe(length);
      await Promise.all(
        parts.map(async (part) => {
          const lease = await this.replication.readLeased(
            part.key,
            part.offsetInObject,
            part.length,
          );
          try {
            assert(lease.data.length === part.length, 'store returned a short read');
            result.set(lease.data, part.requestOffset);
          } finally {
            lease.release();
          }
        }),
      );
      return { data: result, release: () => undefined };
    });
  }

  async write(offset: number, data: Uint8Array, flags: IoFlags = {}): Promise<void> {
    this.checkWritable();
    const parts = this.parts(offset, data.length);
    return this.track(async () => {
      // Every part settles before the write does, even after one failed: the caller may
      // reuse `data` once this returns (the iSCSI target's Data-Out buffers), and a part
      // still running would then write someone else's bytes.
      const results = await Promise.allSettled(
        parts.map((part) =>
          this.replication.write(
            part.key,
            part.offsetInObject,
            data.subarray(part.requestOffset, part.requestOffset + part.length),
            flags.fua === true,
          ),
        ),
      );
      for (const result of results) if (result.status === 'rejected') throw result.reason;
    });
  }

  async trim(offset: number, length: number, flags: IoFlags = {}): Promise<void> {
    this.checkWritable();
    const parts = this.parts(offset, length);
    return this.track(async () => {
      await Promise.all(
        parts.map((part) =>
          this.replication.trim(part.key, part.offsetInObject, part.length, flags.fua === true),
        ),
      );
    });
  }

  async writeZeroes(offset: number, length: number, flags: ZeroFlags = {}): Promise<void> {
    this.checkWritable();
    const parts = this.parts(offset, length);
    if (flags.noHole && flags.fastZero) {
      // Keeping zeros allocated means writing them: not fast, so say so at once.
      return Promise.reject(new CisternError('ENOTSUP', 'allocated zeros cannot be written fast'));
    }
    return this.track(async () => {
      for (const part of parts) {
        if (!flags.noHole) {
          await this.replication.zero(
            part.key,
            part.offsetInObject,
            part.length,
            flags.fua === true,
          );
          continue;
        }
        for (let done = 0; done < part.length; done += ZERO_WRITE_CHUNK_BYTES) {
          const chunk = Math.min(ZERO_WRITE_CHUNK_BYTES, part.length - done);
          await this.replication.write(
            part.key,
            part.offsetInObject + done,
            new Uint8Array(chunk),
            flags.fua === true,
          );
        }
      }
    });
  }

  async flush(): Promise<void> {
    if (this.closed)
      return Promise.reject(new CisternError('CLOSED', `volume ${this.name} handle is closed`));
    return this.track(() => this.replication.flush(this.flushWatch));
  }

  async blockStatus(offset: number, length: number): Promise<Extent[]> {
    const parts = this.parts(offset, length);
    return this.track(async () => {
      const extents: Extent[] = [];
      for (const part of parts) {
        for (const extent of await this.replication.blockStatus(
          part.key,
          part.offsetInObject,
          part.length,
        )) {
          const last = extents[extents.length - 1];
          if (last && last.hole === extent.hole && last.zero === extent.zero)
            last.length += extent.length;
          else extents.push({ ...extent });
        }
      }
      return extents;
    });
  }

  async cache(offset: number, length: number): Promise<void> {
    this.parts(offset, length); // validates; the page cache is not ours to warm (O_DIRECT)
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    if (this.inFlight > 0) await new Promise<void>((resolve) => (this.idle = resolve));
    this.onClose();
  }
}
