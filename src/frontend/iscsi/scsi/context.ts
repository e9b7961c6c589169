// What command handlers see of their logical unit: the volume, its geometry, the range
// lock, and block I/O helpers that turn the volume layer's typed errors into sense data
// in one place (read failures are MEDIUM ERROR / UNRECOVERED READ ERROR, write failures
// MEDIUM ERROR / WRITE ERROR, a full pool DATA PROTECT / SPACE ALLOCATION FAILED, ...).

import { isCisternError } from '../../../util/errors';
import type { VolumeHandle } from '../../../volume/backend';
import type { ScsiTask } from '../scsi-task';
import type { BlockRange } from './cdb';
import { maxTransferBlocks, type Geometry } from './geometry';
import type { RangeLock, Release } from './range-lock';
import {
  Ascs,
  CheckCondition,
  SenseKey,
  invalidField,
  lbaOutOfRange,
  writeProtected,
  type Asc,
} from './sense';

export interface UnitContext {
  readonly handle: VolumeHandle;
  readonly volumeName: string;
  readonly lock: RangeLock;
  readonly geometry: Geometry;
  /** Software write protect (control mode page SWP) or a read-only volume. */
  readonly writeProtected: boolean;
}

export function blockCount(unit: UnitContext): number {
  return Math.floor(unit.handle.size / unit.geometry.blockBytes);
}

/** LBA OUT OF RANGE unless lba .. lba + blocks lies within the volume (SBC-3 4.5). */
export function checkRange(unit: UnitContext, range: BlockRange): void {
  if (range.lba + range.blocks > blockCount(unit)) throw lbaOutOfRange();
}

/** Transfers beyond MAXIMUM TRANSFER LENGTH are refused (SBC-3 6.5.3); the length field's byte is blamed. */
export function checkTransferLength(
  unit: UnitContext,
  blocks: number,
  lengthFieldByte: number,
): void {
  if (blocks > maxTransferBlocks(unit.geometry)) throw invalidField(lengthFieldByte);
}

export function checkWritable(unit: UnitContext): void {
  if (unit.writeProtected || unit.handle.readOnly) throw writeProtected();
}

/** The Data-Out bytes of a command that needs exactly `bytes` of them (parameter lists, compare data). */
export function dataOut(task: ScsiTask, bytes: number): Uint8Array {
  const data = task.dataOut ?? new Uint8Array(0);
  if (data.length < bytes) {
    throw new CheckCondition(SenseKey.ILLEGAL_REQUEST, Ascs.INVALID_FIELD_IN_CDB);
  }
  return data.subarray(0, bytes);
}

/**
 * The whole blocks of a write's Data-Out, at most `blocks` of them. An initiator whose
 * Expected Data Transfer Length is below the CDB's gets the blocks it sent written and
 * an overflow residual for the rest (RFC 7143 11.4.5.2; libiscsi's residual tests ask
 * for exactly this); a partial block is never written.
 */
export function writeData(unit: UnitContext, task: ScsiTask, blocks: number): Uint8Array {
  const data = task.dataOut ?? new Uint8Array(0);
  const whole = Math.min(blocks, Math.floor(data.length / unit.geometry.blockBytes));
  return data.subarray(0, whole * unit.geometry.blockBytes);
}

export async function readBlocks(unit: UnitContext, range: BlockRange): Promise<Uint8Array> {
  try {
    const bytes = unit.geometry.blockBytes;
    return await unit.handle.read(range.lba * bytes, range.blocks * bytes);
  } catch (error) {
    throw senseForVolumeError(error, Ascs.UNRECOVERED_READ_ERROR);
  }
}

/** Like readBlocks, but the bytes may be lent by the volume: the caller must call `release` once done with them. */
export async function readBlocksLeased(
  unit: UnitContext,
  range: BlockRange,
): Promise<{ data: Uint8Array; release: (() => void) | undefined }> {
  if (unit.handle.readLeased === undefined) {
    return { data: await readBlocks(unit, range), release: undefined };
  }
  try {
    const bytes = unit.geometry.blockBytes;
    const lease = await unit.handle.readLeased(range.lba * bytes, range.blocks * bytes);
    return { data: lease.data, release: () => lease.release() };
  } catch (error) {
    throw senseForVolumeError(error, Ascs.UNRECOVERED_READ_ERROR);
  }
}

export async function writeBlocks(
  unit: UnitContext,
  lba: number,
  data: Uint8Array,
  fua: boolean,
): Promise<void> {
  try {
    await unit.handle.write(lba * unit.geometry.blockBytes, data, { fua });
  } catch (error) {
    throw senseForVolumeError(error, Ascs.WRITE_ERROR);
  }
}

/** Runs a volume call that changes data (trim, zero, flush) with write-error sense on failure. */
export async function volumeWrite(operation: () => Promise<void>): Promise<void> {
  try {
    await operation();
  } catch (error) {
    throw senseForVolumeError(error, Ascs.WRITE_ERROR);
  }
}

export async function holdRange(unit: UnitContext, range: BlockRange): Promise<Release> {
  return unit.lock.acquire(range.lba, range.lba + range.blocks);
}

/**
 * The one map from the volume layer's errors to sense data. Errors that are not the
 * world's (assertions) propagate: a bug must not look like a bad disk.
 */
export function senseForVolumeError(error: unknown, mediumAsc: Asc): unknown {
  if (error instanceof CheckCondition || !isCisternError(error)) return error;
  switch (error.code) {
    case 'EROFS':
    case 'EPERM':
      return writeProtected();
    case 'ENOSPC':
      return new CheckCondition(SenseKey.DATA_PROTECT, Ascs.SPACE_ALLOCATION_FAILED_WRITE_PROTECT);
    case 'EINVAL':
      return lbaOutOfRange();
    case 'UNAVAILABLE':
    case 'UNREACHABLE':
    case 'STALE_EPOCH':
      // The cluster cannot serve the range right now: initiators retry NOT READY /
      // BECOMING READY, so the I/O is delayed rather than failed to the application.
      return new CheckCondition(SenseKey.NOT_READY, Ascs.LOGICAL_UNIT_BECOMING_READY);
    case 'CLOSED':
      return new CheckCondition(SenseKey.HARDWARE_ERROR, Ascs.INTERNAL_TARGET_FAILURE);
    default:
      return new CheckCondition(SenseKey.MEDIUM_ERROR, mediumAsc);
  }
}
