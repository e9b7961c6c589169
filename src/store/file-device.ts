// A BlockDevice on an ordinary file through the page cache (fs.promises): flush is
// fdatasync, FUA is a write followed by fdatasync. It needs no native code, so it is
// the fallback where the AIO engine is unavailable and the device of the kill -9 tests.
// Node has no fallocate, so punchHole and zeroRange write zeros: correct, but they do
// not return space to the file system (the native engine does).

import { open, type FileHandle } from 'node:fs/promises';
import { AssertionError, assert } from '../util/assert';
import { CisternError, fromErrno } from '../util/errors';
import type { BlockDevice, WriteFlags } from './device';

export const FILE_DEVICE_ALIGNMENT_BYTES = 4096;
/** Zeros written per call by punchHole/zeroRange: bounds the zero buffer. */
const ZERO_CHUNK_BYTES = 1024 * 1024;
const ZEROS = new Uint8Array(ZERO_CHUNK_BYTES);
/** Bounds the retry loop of short reads and writes (each makes progress or fails). */
const SHORT_TRANSFER_LIMIT = 1024;

export interface FileDeviceOptions {
  /** Create (or extend) the file to this size, sparse. Without it the file's size is used. */
  sizeBytes?: number;
}

export class FileDevice implements BlockDevice {
  readonly alignment = FILE_DEVICE_ALIGNMENT_BYTES;
  private inFlight = 0;
  private idle: (() => void) | null = null;
  private closed = false;

  private constructor(
    private readonly handle: FileHandle,
    readonly size: number,
    readonly path: string,
  ) {}

  static async open(path: string, options: FileDeviceOptions = {}): Promise<FileDevice> {
    let handle: FileHandle;
    try {
      handle = await open(path, options.sizeBytes === undefined ? 'r+' : 'a+');
      if (options.sizeBytes !== undefined) {
        // 'a+' creates; reopen 'r+' so that positioned writes are not appends.
        await handle.close();
        handle = await open(path, 'r+');
      }
    } catch (error) {
      throw wrap(error, `open ${path}`);
    }
    const stat = await handle.stat();
    let size = stat.size;
    if (options.sizeBytes !== undefined && options.sizeBytes > size) {
      await handle.truncate(options.sizeBytes);
      size = options.sizeBytes;
    }
    return new FileDevice(handle, size - (size % FILE_DEVICE_ALIGNMENT_BYTES), path);
  }

  read(buffer: Uint8Array, offset: number): Promise<void> {
    return this.run('read', offset, buffer.length, async () => {
      let done = 0;
      for (let attempt = 0; done < buffer.length; attempt += 1) {
        assert(attempt < SHORT_TRANSFER_LIMIT, 'read made no progress');
        const { bytesRead } = await this.handle.read(
          buffer,
          done,
          buffer.length - done,
          offset + done,
        );
        if (bytesRead === 0)
          throw new CisternError('EIO', `short read at ${offset + done} in ${this.path}`);
        done += bytesRead;
      }
    });
  }

  write(buffer: Uint8Array, offset: number, flags: WriteFlags = {}): Promise<void> {
    return this.run('write', offset, buffer.length, async () => {
      await this.writeAll(buffer, offset);
      if (flags.fua) await this.handle.datasync();
    });
  }

  flush(): Promise<void> {
    return this.run('flush', 0, 0, () => this.handle.datasync());
  }

  punchHole(offset: number, length: number): Promise<void> {
    return this.run('punchHole', offset, length, async () => {
      for (let done = 0; done < length; done += ZERO_CHUNK_BYTES) {
        await this.writeAll(
          ZEROS.subarray(0, Math.min(ZERO_CHUNK_BYTES, length - done)),
          offset + done,
        );
      }
    });
  }

  zeroRange(offset: number, length: number): Promise<void> {
    return this.punchHole(offset, length);
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    if (this.inFlight > 0) await new Promise<void>((resolve) => (this.idle = resolve));
    await this.handle.close();
  }

  private async writeAll(buffer: Uint8Array, offset: number): Promise<void> {
    let done = 0;
    for (let attempt = 0; done < buffer.length; attempt += 1) {
      assert(attempt < SHORT_TRANSFER_LIMIT, 'write made no progress');
      const { bytesWritten } = await this.handle.write(
        buffer,
        done,
        buffer.length - done,
        offset + done,
      );
      done += bytesWritten;
    }
  }

  private async run(
    operation: string,
    offset: number,
    length: number,
    body: () => Promise<void>,
  ): Promise<void> {
    if (this.closed) throw new CisternError('CLOSED', `${operation} on closed device ${this.path}`);
    assert(
      offset % this.alignment === 0 && length % this.alignment === 0,
      `${operation} ${offset}+${length} is not aligned to ${this.alignment}`,
    );
    if (offset < 0 || offset + length > this.size) {
      throw new CisternError(
        'EINVAL',
        `${operation} ${offset}+${length} beyond ${this.path} (${this.size} bytes)`,
      );
    }
    this.inFlight += 1;
    try {
      await body();
    } catch (error) {
      throw wrap(error, `${operation} at ${offset} in ${this.path}`);
    } finally {
      this.inFlight -= 1;
      if (this.inFlight === 0 && this.idle) this.idle();
    }
  }
}

function wrap(error: unknown, context: string): Error {
  if (error instanceof CisternError || error instanceof AssertionError) return error;
  const code = (error as { code?: unknown } | null)?.code;
  const message = `${context}: ${error instanceof Error ? error.message : String(error)}`;
  return fromErrno(typeof code === 'string' ? code : 'EIO', message, error);
}
