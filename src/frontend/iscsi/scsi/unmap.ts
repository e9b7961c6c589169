// Thin provisioning commands (SBC-3 5.28, 5.4): UNMAP discards block ranges, GET LBA
// STATUS reports which blocks are mapped, from the volume's block status extents.

import type { ScsiResponse, ScsiTask } from '../scsi-task';
import { ScsiStatus } from '../scsi-task';
import { allocationLength, cut, u16, u32, u64, type BlockRange } from './cdb';
import {
  blockCount,
  checkRange,
  checkWritable,
  holdRange,
  volumeWrite,
  type UnitContext,
} from './context';
import * as G from './geometry';
import { invalidField, invalidParameter, lbaOutOfRange, parameterListLengthError } from './sense';

const UNMAP_HEADER_BYTES = 8;
const UNMAP_DESCRIPTOR_BYTES = 16;

/** Decodes and checks the whole parameter list before anything is discarded (all or nothing). */
function unmapRanges(unit: UnitContext, task: ScsiTask): BlockRange[] {
  const cdb = task.cdb;
  if ((cdb[1]! & 0x01) !== 0) throw invalidField(1, 0); // ANCHOR: ANC_SUP is clear
  const listLength = u16(cdb, 7);
  if (listLength === 0) return [];
  if (listLength < UNMAP_HEADER_BYTES) throw parameterListLengthError();
  if (listLength > G.MAX_UNMAP_PARAMETER_BYTES) throw invalidField(7);
  const data = task.dataOut ?? new Uint8Array(0);
  if (data.length < listLength) throw parameterListLengthError();
  const list = data.subarray(0, listLength);
  const descriptorBytes = u16(list, 2);
  if (descriptorBytes % UNMAP_DESCRIPTOR_BYTES !== 0) throw invalidParameter(2);
  if (UNMAP_HEADER_BYTES + descriptorBytes > listLength) throw parameterListLengthError();
  const count = descriptorBytes / UNMAP_DESCRIPTOR_BYTES;
  if (count > G.MAX_UNMAP_DESCRIPTORS) throw invalidParameter(2);
  const ranges: BlockRange[] = [];
  let total = 0;
  for (let index = 0; index < count; index += 1) {
    const at = UNMAP_HEADER_BYTES + index * UNMAP_DESCRIPTOR_BYTES;
    const range = { lba: u64(list, at), blocks: u32(list, at + 8) };
    checkRange(unit, range);
    total += range.blocks;
    if (total > G.MAX_UNMAP_BLOCKS) throw invalidParameter(at + 8);
    if (range.blocks > 0) ranges.push(range);
  }
  return ranges;
}

/** UNMAP: each range is zeroed by deallocation, so it reads as zeros afterwards (LBPRZ). */
export async function unmap(unit: UnitContext, task: ScsiTask): Promise<ScsiResponse> {
  checkWritable(unit);
  const ranges = unmapRanges(unit, task);
  for (const range of ranges) {
    const release = await holdRange(unit, range);
    try {
      await volumeWrite(() =>
        unit.handle.writeZeroes(
          range.lba * unit.geometry.blockBytes,
          range.blocks * unit.geometry.blockBytes,
        ),
      );
    } finally {
      release();
    }
  }
  return { status: ScsiStatus.GOOD, dataOutLength: u16(task.cdb, 7) };
}

const Provisioning = { MAPPED: 0, DEALLOCATED: 1 } as const;
const LBA_STATUS_HEADER_BYTES = 8;
const LBA_STATUS_DESCRIPTOR_BYTES = 16;

interface Status {
  lba: number;
  blocks: number;
  provisioning: number;
}

/** GET LBA STATUS: descriptors from the starting LBA on, as many as the allocation length holds. */
export async function getLbaStatus(unit: UnitContext, task: ScsiTask): Promise<ScsiResponse> {
  const cdb = task.cdb;
  const start = u64(cdb, 2);
  const allocation = allocationLength(cdb, 10, 4);
  const count = blockCount(unit);
  if (start >= count) throw lbaOutOfRange();
  const wanted = Math.max(
    1,
    Math.min(
      G.MAX_LBA_STATUS_DESCRIPTORS,
      Math.floor((allocation - LBA_STATUS_HEADER_BYTES) / LBA_STATUS_DESCRIPTOR_BYTES),
    ),
  );
  // One look at a bounded span: enough for the descriptors asked for in all but the most
  // fragmented volumes, and the initiator asks again from where the reply ends.
  const spanBlocks = Math.min(count - start, G.LBA_STATUS_SPAN_BYTES / unit.geometry.blockBytes);
  const extents = await unit.handle.blockStatus(
    start * unit.geometry.blockBytes,
    spanBlocks * unit.geometry.blockBytes,
  );
  const statuses: Status[] = [];
  let byte = start * unit.geometry.blockBytes;
  let lba = start;
  for (const extent of extents) {
    byte += extent.length;
    const provisioning = extent.hole ? Provisioning.DEALLOCATED : Provisioning.MAPPED;
    // A block only partly deallocated is still mapped: round mapped extents outwards.
    const endByte = Math.min(byte, (start + spanBlocks) * unit.geometry.blockBytes);
    const end =
      provisioning === Provisioning.MAPPED
        ? Math.ceil(endByte / unit.geometry.blockBytes)
        : Math.floor(endByte / unit.geometry.blockBytes);
    if (end <= lba) continue;
    const last = statuses[statuses.length - 1];
    if (last !== undefined && last.provisioning === provisioning) last.blocks += end - lba;
    else statuses.push({ lba, blocks: end - lba, provisioning });
    lba = end;
    if (lba >= start + spanBlocks) break;
  }
  const shown = statuses.slice(0, wanted);
  const data = Buffer.alloc(LBA_STATUS_HEADER_BYTES + shown.length * LBA_STATUS_DESCRIPTOR_BYTES);
  data.writeUInt32BE(data.length - 4, 0);
  shown.forEach((status, index) => {
    const at = LBA_STATUS_HEADER_BYTES + index * LBA_STATUS_DESCRIPTOR_BYTES;
    data.writeBigUInt64BE(BigInt(status.lba), at);
    data.writeUInt32BE(Math.min(status.blocks, 0xffffffff), at + 8);
    data[at + 12] = status.provisioning;
  });
  return { status: ScsiStatus.GOOD, dataIn: cut(data, allocation) };
}
