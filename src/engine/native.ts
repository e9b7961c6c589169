// The only module that loads the native addon (build/Release, else build/Debug, as
// node-gyp builds them from binding.gyp). Everything else imports the typed surface
// below; nothing else knows the addon exists. Loading is lazy so that code paths that
// never touch a disk (placement, the CLI's help) work without a compiler.

import * as fs from 'node:fs';
import * as path from 'node:path';
import { assert } from '../util/assert';
import { CisternError } from '../util/errors';
import { IO_BYTES_MAX, QUEUE_DEPTH_MAX } from './limits';

declare const handleBrand: unique symbol;
/** An opaque engine handle; only the addon looks inside. */
export interface NativeHandle {
  readonly [handleBrand]: true;
}

export type AlignmentSource = 'BLKSSZGET' | 'statx' | 'st_blksize';

export interface NativeOpenResult {
  handle: NativeHandle;
  sizeBytes: number;
  offsetAlignBytes: number;
  memoryAlignBytes: number;
  isBlockDevice: boolean;
  alignmentSource: AlignmentSource;
}

/** What the addon throws for a failed system call. */
export interface NativeSyscallError extends Error {
  errno: number;
  syscall: string;
  /** '' or a stable hint: 'tmpfs', 'no-direct-io', 'not-block-or-file'. */
  reason: string;
}

export interface NativeEngine {
  /** Opens with O_DIRECT and sets up an AIO context of `queueDepth` slots.
   * Submission records are SUBMIT_STRIDE doubles (op, slot, offset, spare); the
   * completion area receives COMPLETE_STRIDE int32s (slot, result) per completion. */
  open(
    path: string,
    readOnly: boolean,
    queueDepth: number,
    submitChunkMax: number,
    submitArea: Float64Array,
    completionArea: Int32Array,
    onComplete: (count: number) => void,
  ): NativeOpenResult;
  /** Submits `count` records (in io_submit calls of submitChunkMax); returns how many failed at submission, whose
   * FAILURE_STRIDE int32 records (slot, -errno, reason) overwrite the submit area. */
  submit(handle: NativeHandle, buffers: readonly (Uint8Array | undefined)[], count: number): number;
  /** The caller has waited for every I/O. Calls back once the fd and the AIO context
   * are released (io_destroy sleeps for an RCU grace period, so it runs off-loop). */
  close(handle: NativeHandle, callback: () => void): void;
  fdatasync(handle: NativeHandle, callback: (errno: number) => void): void;
  fallocate(
    handle: NativeHandle,
    space: number,
    offset: number,
    length: number,
    callback: (errno: number) => void,
  ): void;
  allocAligned(sizeBytes: number, alignBytes: number): ArrayBuffer;
  addressAlignment(view: Uint8Array): number;
  liveEngines(): number;
  readonly maxQueueDepth: number;
  readonly maxIoBytes: number;
}

export const SUBMIT_STRIDE = 4;
export const COMPLETE_STRIDE = 2;
export const FAILURE_STRIDE = 3;

export const OP_READ = 1;
export const OP_WRITE = 2;
export const OP_WRITE_FUA = 3;
export const OP_FDSYNC = 4;

export const SPACE_PUNCH_HOLE = 1;
export const SPACE_ZERO_RANGE = 2;

export const FAILURE_REASON_MISALIGNED_BUFFER = 1;

const addonName = 'cistern_engine.node';
// dist/src/engine and src/engine sit two or three levels below the repository root.
const rootSearchLevelsMax = 4;

let loaded: NativeEngine | undefined;

export function isNativeSyscallError(error: unknown): error is NativeSyscallError {
  return error instanceof Error && typeof (error as Partial<NativeSyscallError>).errno === 'number';
}

export function loadNative(): NativeEngine {
  if (loaded !== undefined) return loaded;
  const candidates: string[] = [];
  let directory = __dirname;
  for (let level = 0; level <= rootSearchLevelsMax; level++) {
    for (const flavour of ['Release', 'Debug']) {
      candidates.push(path.join(directory, 'build', flavour, addonName));
    }
    directory = path.dirname(directory);
  }
  const found = candidates.find((candidate) => fs.existsSync(candidate));
  if (found === undefined) {
    throw new CisternError(
      'UNAVAILABLE',
      `the native I/O engine is not built (no build/Release/${addonName} or build/Debug/` +
        `${addonName} above ${__dirname}); run \`npm run install\` (node-gyp rebuild)`,
    );
  }
  const engine = require(found) as NativeEngine;
  assert(engine.maxQueueDepth === QUEUE_DEPTH_MAX, 'addon and limits.ts disagree on queue depth');
  assert(engine.maxIoBytes === IO_BYTES_MAX, 'addon and limits.ts disagree on I/O size');
  loaded = engine;
  return engine;
}

/** Engines opened and not yet closed in this process (the leak test watches it). */
export function liveEngines(): number {
  return loadNative().liveEngines();
}
