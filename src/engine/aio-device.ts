// BlockDevice on the native AIO engine: a regular file or a raw block device opened
// with O_DIRECT. Reads and writes are kernel AIO; everything queued during one turn of
// the event loop crosses into C++ in one call (flushed from setImmediate), which hands
// it to io_submit in small chunks (SUBMIT_CHUNK_DEFAULT says why), and completions
// come back in batches, one JS call per eventfd wake.
//
// Two layers: a callback fast path (readWith/writeWith/flushWith) that allocates
// nothing per I/O, and the promise API of BlockDevice on top of it.
//
// Flush is IOCB_CMD_FDSYNC through the same AIO path (Linux >= 4.18); if the kernel or
// filesystem refuses it with EINVAL, the device switches to fdatasync on the libuv
// threadpool for good. Punch hole and zero range are fallocate on the threadpool
// (block devices support it too; the addon falls back to BLKZEROOUT where needed).
// No ordering holds between I/Os in flight at the same time; callers order by waiting.

import * as fs from 'node:fs';
import * as os from 'node:os';
import { assert } from '../util/assert';
import { CisternError, fromErrno } from '../util/errors';
import type { BlockDevice, WriteFlags } from '../store/device';
import { ioError, openError } from './device-errors';
import { allocAligned } from './buffer-pool';
import {
  BUFFER_ALIGN_BYTES_MIN,
  CREATE_SIZE_GRANULE_BYTES,
  IO_BYTES_MAX,
  QUEUE_DEPTH_DEFAULT,
  QUEUE_DEPTH_MAX,
  SUBMIT_CHUNK_DEFAULT,
  WAITING_IOS_MAX,
} from './limits';
import {
  type AlignmentSource,
  type NativeEngine,
  type NativeHandle,
  COMPLETE_STRIDE,
  FAILURE_REASON_MISALIGNED_BUFFER,
  FAILURE_STRIDE,
  loadNative,
  OP_FDSYNC,
  OP_READ,
  OP_WRITE,
  OP_WRITE_FUA,
  SPACE_PUNCH_HOLE,
  SPACE_ZERO_RANGE,
  SUBMIT_STRIDE,
} from './native';

/** Called once per I/O with undefined on success. */
export type IoCallback = (error: CisternError | undefined) => void;

export interface OpenDeviceOptions {
  /** Create the file, sparse, at this size if it does not exist. An existing file
   * must already have this size (nothing is ever truncated or grown). */
  create?: number;
  readOnly?: boolean;
  /** I/Os in flight at once; more wait in a bounded queue. */
  queueDepth?: number;
  /** iocbs per io_submit call, 1..queueDepth (SUBMIT_CHUNK_DEFAULT explains why small). */
  submitChunkMax?: number;
  /** false: flush with fdatasync on the threadpool instead of IOCB_CMD_FDSYNC, the path
   * taken anyway once the kernel refuses AIO fsync (default true). */
  aioFlush?: boolean;
}

// The kernel's answer when it cannot fsync through AIO.
const EINVAL = os.constants.errno.EINVAL;

const opNames: Record<number, string> = {
  [OP_READ]: 'read',
  [OP_WRITE]: 'write',
  [OP_WRITE_FUA]: 'FUA write',
  [OP_FDSYNC]: 'flush',
};

interface WaitingIo {
  op: number;
  buffer: Uint8Array | undefined;
  offset: number;
  callback: IoCallback;
}

/** Opens (and, if asked, creates) a file or block device for direct I/O. */
export async function openDevice(
  path: string,
  options: OpenDeviceOptions = {},
): Promise<AioDevice> {
  const queueDepth = options.queueDepth ?? QUEUE_DEPTH_DEFAULT;
  if (!Number.isSafeInteger(queueDepth) || queueDepth < 1 || queueDepth > QUEUE_DEPTH_MAX) {
    throw new CisternError(
      'EINVAL',
      `queue depth must be 1..${QUEUE_DEPTH_MAX}, got ${queueDepth}`,
    );
  }
  const submitChunkMax = Math.min(options.submitChunkMax ?? SUBMIT_CHUNK_DEFAULT, queueDepth);
  if (!Number.isSafeInteger(submitChunkMax) || submitChunkMax < 1) {
    throw new CisternError(
      'EINVAL',
      `submit chunk must be 1..${queueDepth}, got ${submitChunkMax}`,
    );
  }
  const created = options.create !== undefined && createSparse(path, options.create);
  try {
    const device = new AioDevice(path, options.readOnly ?? false, queueDepth, submitChunkMax);
    if (options.aioFlush === false) device.useThreadpoolFlush();
    if (options.create !== undefined && device.size !== options.create) {
      await device.close();
      throw new CisternError(
        'EINVAL',
        `${path} exists with ${device.size} usable bytes, not the ${options.create} asked for`,
      );
    }
    return device;
  } catch (error) {
    // A file we just created for a device that cannot be opened is only litter.
    if (created) fs.rmSync(path, { force: true });
    throw error;
  }
}

/** Creates a sparse file of `sizeBytes`; false if it already existed. */
function createSparse(path: string, sizeBytes: number): boolean {
  if (
    !Number.isSafeInteger(sizeBytes) ||
    sizeBytes <= 0 ||
    sizeBytes % CREATE_SIZE_GRANULE_BYTES !== 0
  ) {
    throw new CisternError(
      'EINVAL',
      `device size must be a positive multiple of ${CREATE_SIZE_GRANULE_BYTES}, got ${sizeBytes}`,
    );
  }
  let fd: number;
  try {
    fd = fs.openSync(path, 'wx', 0o600);
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code ?? 'EIO';
    if (code === 'EEXIST') return false;
    throw fromErrno(code, `cannot create ${path}: ${code}`, error);
  }
  try {
    fs.ftruncateSync(fd, sizeBytes);
  } finally {
    fs.closeSync(fd);
  }
  return true;
}

export class AioDevice implements BlockDevice {
  /** Usable bytes: a file's size rounded down to the alignment. */
  readonly size: number;
  /** Offsets, lengths and buffer addresses must be multiples of this. */
  readonly alignment: number;
  readonly isBlockDevice: boolean;
  /** How the alignment was found: 'BLKSSZGET', 'statx' (STATX_DIOALIGN) or 'st_blksize'. */
  readonly alignmentSource: AlignmentSource;

  private readonly native: NativeEngine;
  private handle: NativeHandle | undefined;
  private readonly submitArea: Float64Array;
  private readonly failureArea: Int32Array;
  private readonly completionArea: Int32Array;
  private readonly batchBuffers: (Uint8Array | undefined)[];
  private batchCount = 0;
  private batchScheduled = false;
  private readonly freeSlots: Int32Array;
  private freeSlotCount: number;
  private readonly slotCallbacks: (IoCallback | undefined)[];
  private readonly slotBuffers: (Uint8Array | undefined)[];
  private readonly slotOps: Uint8Array;
  private readonly slotOffsets: Float64Array;
  private readonly waiting: WaitingIo[] = [];
  private waitingHead = 0;
  private blockingInFlight = 0;
  private aioFdsync = true;
  private closing: Promise<void> | undefined;
  private closeDone: (() => void) | undefined;
  private readonly flushBatchBound = (): void => this.flushBatch();

  constructor(
    readonly path: string,
    readonly readOnly: boolean,
    readonly queueDepth: number,
    readonly submitChunkMax: number,
  ) {
    assert(queueDepth >= 1 && queueDepth <= QUEUE_DEPTH_MAX, 'queue depth out of range');
    assert(submitChunkMax >= 1 && submitChunkMax <= queueDepth, 'submit chunk out of range');
    this.native = loadNative();
    this.submitArea = new Float64Array(queueDepth * SUBMIT_STRIDE);
    this.failureArea = new Int32Array(this.submitArea.buffer);
    this.completionArea = new Int32Array(queueDepth * COMPLETE_STRIDE);
    let opened;
    try {
      opened = this.native.open(
        path,
        readOnly,
        queueDepth,
        submitChunkMax,
        this.submitArea,
        this.completionArea,
        (count) => this.onComplete(count),
      );
    } catch (error) {
      throw openError(path, error);
    }
    this.handle = opened.handle;
    this.alignment = Math.max(opened.offsetAlignBytes, opened.memoryAlignBytes);
    this.size = opened.sizeBytes - (opened.sizeBytes % this.alignment);
    this.isBlockDevice = opened.isBlockDevice;
    this.alignmentSource = opened.alignmentSource;
    this.batchBuffers = new Array<Uint8Array | undefined>(queueDepth).fill(undefined);
    this.freeSlots = new Int32Array(queueDepth);
    for (let slot = 0; slot < queueDepth; slot++) this.freeSlots[slot] = queueDepth - 1 - slot;
    this.freeSlotCount = queueDepth;
    this.slotCallbacks = new Array<IoCallback | undefined>(queueDepth).fill(undefined);
    this.slotBuffers = new Array<Uint8Array | undefined>(queueDepth).fill(undefined);
    this.slotOps = new Uint8Array(queueDepth);
    this.slotOffsets = new Float64Array(queueDepth);
    assert(this.alignment > 0 && this.size >= 0, 'device probe returned nonsense');
  }

  /** I/Os handed to the kernel or about to be, plus those waiting for a slot. */
  get pending(): number {
    return this.queueDepth - this.freeSlotCount + this.waiting.length - this.waitingHead;
  }

  /** Flushes with fdatasync on the threadpool from now on. */
  useThreadpoolFlush(): void {
    this.aioFdsync = false;
  }

  /** A zero-filled buffer aligned for this device (and at least to a page). */
  allocate(lengthBytes: number): Uint8Array {
    return allocAligned(lengthBytes, Math.max(this.alignment, BUFFER_ALIGN_BYTES_MIN));
  }

  // ---- callback fast path: nothing allocated per I/O. Bad arguments throw a
  // CisternError at once; I/O errors arrive through the callback. ----

  readWith(buffer: Uint8Array, offset: number, callback: IoCallback): void {
    this.checkRange('read', buffer, offset, false);
    this.enqueue(OP_READ, buffer, offset, callback);
  }

  writeWith(
    buffer: Uint8Array,
    offset: number,
    flags: WriteFlags | undefined,
    callback: IoCallback,
  ): void {
    this.checkRange('write', buffer, offset, true);
    this.enqueue(flags?.fua === true ? OP_WRITE_FUA : OP_WRITE, buffer, offset, callback);
  }

  flushWith(callback: IoCallback): void {
    this.checkOpen('flush');
    if (this.aioFdsync) this.enqueue(OP_FDSYNC, undefined, 0, callback);
    else this.fdatasyncOnThreadpool(callback);
  }

  // ---- BlockDevice ----

  read(buffer: Uint8Array, offset: number): Promise<void> {
    return new Promise((resolve, reject) => {
      this.readWith(buffer, offset, (error) => (error === undefined ? resolve() : reject(error)));
    });
  }

  write(buffer: Uint8Array, offset: number, flags?: WriteFlags): Promise<void> {
    return new Promise((resolve, reject) => {
      this.writeWith(buffer, offset, flags, (error) =>
        error === undefined ? resolve() : reject(error),
      );
    });
  }

  flush(): Promise<void> {
    return new Promise((resolve, reject) => {
      this.flushWith((error) => (error === undefined ? resolve() : reject(error)));
    });
  }

  punchHole(offset: number, length: number): Promise<void> {
    return this.fallocate(SPACE_PUNCH_HOLE, 'punch hole', offset, length);
  }

  zeroRange(offset: number, length: number): Promise<void> {
    return this.fallocate(SPACE_ZERO_RANGE, 'zero range', offset, length);
  }

  close(): Promise<void> {
    this.closing ??= new Promise<void>((resolve) => {
      this.closeDone = resolve;
      this.closeIfIdle();
    });
    return this.closing;
  }

  // ---- internals ----

  private checkOpen(what: string): void {
    if (this.closing !== undefined) {
      throw new CisternError('CLOSED', `${what} on ${this.path} after close`);
    }
  }

  private checkRange(what: string, buffer: Uint8Array, offset: number, writes: boolean): void {
    this.checkOpen(what);
    if (!(buffer instanceof Uint8Array)) {
      throw new CisternError('EINVAL', `${what} on ${this.path}: the buffer must be a Uint8Array`);
    }
    const length = buffer.byteLength;
    if (writes && this.readOnly) {
      throw new CisternError('EROFS', `${what} on ${this.path}, which is open read-only`);
    }
    const aligned =
      Number.isSafeInteger(offset) &&
      Number.isSafeInteger(length) &&
      offset % this.alignment === 0 &&
      length % this.alignment === 0;
    if (!aligned || offset < 0 || length <= 0 || length > IO_BYTES_MAX) {
      throw new CisternError(
        'EINVAL',
        `${what} of ${length} bytes at ${offset} on ${this.path}: offset and length must be ` +
          `multiples of ${this.alignment}, length 1..${IO_BYTES_MAX}`,
      );
    }
    if (offset + length > this.size) {
      throw new CisternError(
        'EINVAL',
        `${what} of ${length} bytes at ${offset} runs past the end of ${this.path} (${this.size} bytes)`,
      );
    }
  }

  private enqueue(
    op: number,
    buffer: Uint8Array | undefined,
    offset: number,
    callback: IoCallback,
  ): void {
    if (this.freeSlotCount > 0 && this.waitingHead === this.waiting.length) {
      this.place(op, buffer, offset, callback);
      return;
    }
    if (this.waiting.length - this.waitingHead >= WAITING_IOS_MAX) {
      throw new CisternError(
        'UNAVAILABLE',
        `${this.path}: more than ${WAITING_IOS_MAX} I/Os waiting beyond queue depth ${this.queueDepth}`,
      );
    }
    this.waiting.push({ op, buffer, offset, callback });
  }

  /** Takes a slot and adds the I/O to this turn's batch. */
  private place(
    op: number,
    buffer: Uint8Array | undefined,
    offset: number,
    callback: IoCallback,
  ): void {
    assert(this.freeSlotCount > 0, 'place without a free slot');
    const slot = this.freeSlots[--this.freeSlotCount] as number;
    assert(this.slotCallbacks[slot] === undefined, `slot ${slot} still busy`);
    this.slotCallbacks[slot] = callback;
    this.slotBuffers[slot] = buffer;
    this.slotOps[slot] = op;
    this.slotOffsets[slot] = offset;
    const record = this.batchCount * SUBMIT_STRIDE;
    this.submitArea[record] = op;
    this.submitArea[record + 1] = slot;
    this.submitArea[record + 2] = offset;
    this.submitArea[record + 3] = 0;
    this.batchBuffers[this.batchCount] = buffer;
    this.batchCount++;
    if (!this.batchScheduled) {
      this.batchScheduled = true;
      setImmediate(this.flushBatchBound);
    }
  }

  /** One io_submit for everything queued during this turn of the event loop. */
  private flushBatch(): void {
    this.batchScheduled = false;
    const count = this.batchCount;
    if (count === 0) return;
    assert(this.handle !== undefined, 'batch left for a closed device');
    this.batchCount = 0;
    const failed = this.native.submit(this.handle, this.batchBuffers, count);
    this.batchBuffers.fill(undefined, 0, count);
    assert(failed >= 0 && failed <= count, 'submit returned a bad failure count');
    if (failed === 0) return;
    // Copied out first: completing may queue (and never submits) more I/O.
    const failures = Array.from(this.failureArea.subarray(0, failed * FAILURE_STRIDE));
    let thrown: unknown;
    for (let index = 0; index < failed; index++) {
      const at = index * FAILURE_STRIDE;
      // Every record completes even after a callback threw (no short-circuit here).
      const callbackThrew = this.complete(
        failures[at] as number,
        failures[at + 1] as number,
        failures[at + 2] as number,
      );
      thrown ??= callbackThrew;
    }
    this.afterCompletions(thrown);
  }

  /** The addon's one call per eventfd wake, with `count` (slot, result) records. */
  private onComplete(count: number): void {
    assert(count > 0 && count <= this.queueDepth, `bad completion count ${count}`);
    let thrown: unknown;
    for (let index = 0; index < count; index++) {
      const at = index * COMPLETE_STRIDE;
      // Every record completes even after a callback threw (no short-circuit here).
      const callbackThrew = this.complete(
        this.completionArea[at] as number,
        this.completionArea[at + 1] as number,
        0,
      );
      thrown ??= callbackThrew;
    }
    this.afterCompletions(thrown);
  }

  /** Frees the slot and calls back; returns what the callback threw, if anything. */
  private complete(slot: number, result: number, reason: number): unknown {
    const callback = this.slotCallbacks[slot];
    assert(callback !== undefined, `completion for idle slot ${slot}`);
    const op = this.slotOps[slot] as number;
    const offset = this.slotOffsets[slot] as number;
    const length = this.slotBuffers[slot]?.byteLength ?? 0;
    this.slotCallbacks[slot] = undefined;
    this.slotBuffers[slot] = undefined;
    this.freeSlots[this.freeSlotCount++] = slot;
    if (op === OP_FDSYNC && result === -EINVAL && this.aioFdsync) {
      // The kernel or filesystem cannot fsync through AIO: use the threadpool from now on.
      this.aioFdsync = false;
      this.fdatasyncOnThreadpool(callback);
      return undefined;
    }
    let error: CisternError | undefined;
    if (result < 0) error = this.resultError(op, offset, length, -result, reason);
    else if (result !== length) {
      error = new CisternError(
        'EIO',
        `short ${opNames[op]}: ${result} of ${length} bytes at ${offset} on ${this.path}`,
      );
    }
    try {
      callback(error);
      return undefined;
    } catch (thrown) {
      return thrown ?? new Error('callback threw undefined');
    }
  }

  private resultError(
    op: number,
    offset: number,
    length: number,
    errno: number,
    reason: number,
  ): CisternError {
    if (reason === FAILURE_REASON_MISALIGNED_BUFFER) {
      return new CisternError(
        'EINVAL',
        `${opNames[op]} at ${offset} on ${this.path}: the buffer's address is not aligned to ` +
          `${this.alignment} bytes for O_DIRECT; use device.allocate() or a BufferPool`,
      );
    }
    const what =
      op === OP_FDSYNC
        ? `flush of ${this.path}`
        : `${opNames[op]} of ${length} bytes at ${offset} on ${this.path}`;
    return ioError(errno, what);
  }

  /** Moves waiting I/O into freed slots, then rethrows what a callback threw. */
  private afterCompletions(thrown: unknown): void {
    while (this.freeSlotCount > 0 && this.waitingHead < this.waiting.length) {
      const next = this.waiting[this.waitingHead] as WaitingIo;
      this.waiting[this.waitingHead++] = undefined as unknown as WaitingIo;
      this.place(next.op, next.buffer, next.offset, next.callback);
    }
    if (this.waitingHead === this.waiting.length) {
      this.waiting.length = 0;
      this.waitingHead = 0;
    }
    this.closeIfIdle();
    if (thrown !== undefined) throw thrown;
  }

  private fdatasyncOnThreadpool(callback: IoCallback): void {
    assert(this.handle !== undefined, 'fdatasync on a closed device');
    this.blockingInFlight++;
    this.native.fdatasync(this.handle, (errno) => {
      this.blockingInFlight--;
      const error = errno === 0 ? undefined : ioError(errno, `flush of ${this.path}`);
      try {
        callback(error);
      } finally {
        this.closeIfIdle();
      }
    });
  }

  private fallocate(space: number, what: string, offset: number, length: number): Promise<void> {
    return new Promise((resolve, reject) => {
      if (length === 0 && Number.isSafeInteger(offset) && offset >= 0 && offset <= this.size) {
        this.checkOpen(what);
        resolve();
        return;
      }
      this.checkSpaceRange(what, offset, length);
      assert(this.handle !== undefined, `${what} on a closed device`);
      this.blockingInFlight++;
      this.native.fallocate(this.handle, space, offset, length, (errno) => {
        this.blockingInFlight--;
        if (errno === 0) resolve();
        else reject(ioError(errno, `${what} of ${length} bytes at ${offset} on ${this.path}`));
        this.closeIfIdle();
      });
    });
  }

  /** Like checkRange, without the per-I/O size bound: one call may free gigabytes. */
  private checkSpaceRange(what: string, offset: number, length: number): void {
    this.checkOpen(what);
    if (this.readOnly)
      throw new CisternError('EROFS', `${what} on ${this.path}, which is open read-only`);
    const aligned =
      Number.isSafeInteger(offset) &&
      Number.isSafeInteger(length) &&
      offset % this.alignment === 0 &&
      length % this.alignment === 0;
    if (!aligned || offset < 0 || length <= 0 || offset + length > this.size) {
      throw new CisternError(
        'EINVAL',
        `${what} of ${length} bytes at ${offset} on ${this.path}: must be aligned to ` +
          `${this.alignment} and inside the device (${this.size} bytes)`,
      );
    }
  }

  private closeIfIdle(): void {
    if (this.closeDone === undefined || this.handle === undefined) return;
    if (this.pending > 0 || this.blockingInFlight > 0) return;
    assert(this.batchCount === 0, 'close with a batch not yet submitted');
    const closeDone = this.closeDone;
    this.native.close(this.handle, () => closeDone());
    this.handle = undefined;
  }
}
