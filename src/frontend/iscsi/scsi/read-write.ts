// The block transfer commands (SBC-3 5): READ, WRITE, VERIFY and WRITE AND VERIFY in
// their 6/10/12/16-byte forms, COMPARE AND WRITE, WRITE SAME(10)/(16), SYNCHRONIZE
// CACHE(10)/(16) and PRE-FETCH(10)/(16). Every command that changes blocks holds its
// range in the unit's RangeLock, which is what makes COMPARE AND WRITE atomic.

import { ScsiStatus, type ScsiResponse, type ScsiTask } from '../scsi-task';
import {
  Op,
  decodeTransfer,
  decodeTransfer6,
  decodeWriteSame,
  u16,
  u32,
  u64,
  type BlockRange,
} from './cdb';
import {
  blockCount,
  checkRange,
  checkTransferLength,
  checkWritable,
  dataOut,
  holdRange,
  readBlocks,
  readBlocksLeased,
  volumeWrite,
  writeBlocks,
  writeData,
  type UnitContext,
} from './context';
import * as G from './geometry';
import { Ascs, CheckCondition, SenseKey, invalidField } from './sense';

const GOOD: ScsiResponse = { status: ScsiStatus.GOOD };

/** Byte of the transfer length field in each CDB size, blamed when it exceeds the maximum. */
function lengthFieldByte(cdb: Uint8Array): number {
  const opcode = cdb[0]!;
  if (opcode >= 0x80 && opcode < 0xa0) return 10;
  if (opcode >= 0xa0) return 6;
  return 7;
}

function transferOf(cdb: Uint8Array, verify: boolean) {
  return cdb[0] === Op.READ_6 || cdb[0] === Op.WRITE_6
    ? decodeTransfer6(cdb)
    : decodeTransfer(cdb, verify);
}

export async function read(unit: UnitContext, task: ScsiTask): Promise<ScsiResponse> {
  const transfer = transferOf(task.cdb, false);
  checkRange(unit, transfer);
  checkTransferLength(unit, transfer.blocks, lengthFieldByte(task.cdb));
  if (transfer.blocks === 0) return { status: ScsiStatus.GOOD, dataIn: new Uint8Array(0) };
  // FUA on a read asks for the medium, not a cache: the volume layer keeps no read cache
  // that could be stale, so every read already is one.
  // The volume's buffer goes to the socket as it is; the transport releases it once sent.
  const { data, release } = await readBlocksLeased(unit, transfer);
  return { status: ScsiStatus.GOOD, dataIn: data, release };
}

export async function write(unit: UnitContext, task: ScsiTask): Promise<ScsiResponse> {
  const transfer = transferOf(task.cdb, false);
  return writeHeld(unit, task, transfer, (data) =>
    writeBlocks(unit, transfer.lba, data, transfer.fua),
  );
}

/**
 * What WRITE and WRITE AND VERIFY share: the checks, the whole blocks of the Data-Out,
 * and `store` of them with their range held in the unit's RangeLock.
 */
async function writeHeld(
  unit: UnitContext,
  task: ScsiTask,
  transfer: BlockRange,
  store: (data: Uint8Array, range: BlockRange) => Promise<void>,
): Promise<ScsiResponse> {
  checkRange(unit, transfer);
  checkTransferLength(unit, transfer.blocks, lengthFieldByte(task.cdb));
  checkWritable(unit);
  const bytes = transfer.blocks * unit.geometry.blockBytes;
  const data = writeData(unit, task, transfer.blocks);
  if (data.length === 0) return { status: ScsiStatus.GOOD, dataOutLength: bytes };
  const range = { lba: transfer.lba, blocks: data.length / unit.geometry.blockBytes };
  const release = await holdRange(unit, range);
  try {
    await store(data, range);
  } finally {
    release();
  }
  return { status: ScsiStatus.GOOD, dataOutLength: bytes };
}

/**
 * VERIFY: BYTCHK 0 checks the medium can be read (reads it), 1 compares the Data-Out
 * with the blocks, 3 compares one block of Data-Out against every block (SBC-3 5.33).
 */
export async function verify(unit: UnitContext, task: ScsiTask): Promise<ScsiResponse> {
  const transfer = decodeTransfer(task.cdb, true);
  if (transfer.byteCheck === 2) throw invalidField(1, 2);
  checkRange(unit, transfer);
  checkTransferLength(unit, transfer.blocks, lengthFieldByte(task.cdb));
  const outBytes =
    transfer.byteCheck === 0
      ? 0
      : transfer.byteCheck === 1
        ? transfer.blocks * unit.geometry.blockBytes
        : transfer.blocks === 0
          ? 0
          : unit.geometry.blockBytes;
  if (transfer.blocks === 0) return { status: ScsiStatus.GOOD, dataOutLength: 0 };
  const expected = outBytes === 0 ? undefined : dataOut(task, outBytes);
  const blocks = await readBlocks(unit, transfer);
  if (expected !== undefined) {
    const at =
      transfer.byteCheck === 1
        ? firstDifference(blocks, expected)
        : firstRepeatDifference(blocks, expected);
    if (at >= 0) throw miscompare(at);
  }
  return { status: ScsiStatus.GOOD, dataOutLength: outBytes };
}

/** WRITE AND VERIFY: the write, then (BYTCHK 1) a read-back compared with what was sent. */
export async function writeAndVerify(unit: UnitContext, task: ScsiTask): Promise<ScsiResponse> {
  const transfer = decodeTransfer(task.cdb, true);
  if (transfer.byteCheck > 1) throw invalidField(1, 2);
  return writeHeld(unit, task, transfer, async (data, range) => {
    // Verification means the data is on the medium: a FUA write, then a read of it.
    await writeBlocks(unit, range.lba, data, true);
    const back = await readBlocks(unit, range);
    const at = firstDifference(back, data);
    if (at >= 0) throw miscompare(at);
  });
}

/**
 * COMPARE AND WRITE (SBC-3 5.2): Data-Out holds the verify blocks then the write blocks;
 * the write happens only if the blocks equal the verify data, and no other write to
 * those blocks can land between the compare and the write (the range lock).
 */
export async function compareAndWrite(unit: UnitContext, task: ScsiTask): Promise<ScsiResponse> {
  const cdb = task.cdb;
  if (cdb[1]! >> 5 !== 0) throw invalidField(1, 7); // WRPROTECT
  const range: BlockRange = { lba: u64(cdb, 2), blocks: cdb[13]! };
  const fua = (cdb[1]! & 0x08) !== 0;
  if (range.blocks > G.maxCompareAndWriteBlocks(unit.geometry)) throw invalidField(13);
  checkRange(unit, range);
  checkWritable(unit);
  const bytes = range.blocks * unit.geometry.blockBytes;
  // The Data-Out must be exactly both buffers: a mismatch means initiator and target
  // disagree on which bytes are the compare data, so nothing may be written.
  if (task.expectedLength !== 2 * bytes) throw invalidField(13);
  if (bytes === 0) return { status: ScsiStatus.GOOD, dataOutLength: 0 };
  const both = dataOut(task, 2 * bytes);
  const expected = both.subarray(0, bytes);
  const replacement = both.subarray(bytes);
  const release = await holdRange(unit, range);
  try {
    const current = await readBlocks(unit, range);
    const at = firstDifference(current, expected);
    if (at >= 0) throw miscompare(at);
    await writeBlocks(unit, range.lba, replacement, fua);
  } finally {
    release();
  }
  return { status: ScsiStatus.GOOD, dataOutLength: 2 * bytes };
}

/**
 * WRITE SAME(10)/(16): UNMAP set (or a zero pattern) becomes a zeroing of the range,
 * which the volume layer does by deallocating whole blocks — so unmapped blocks read as
 * zeros, as LBPRZ promises (trim alone only "may" read as zeros). Other patterns are
 * written in bounded chunks. The Data-Out must be exactly one block (or none with NDOB).
 */
export async function writeSame(unit: UnitContext, task: ScsiTask): Promise<ScsiResponse> {
  const command = decodeWriteSame(task.cdb);
  const sixteen = task.cdb[0] === Op.WRITE_SAME_16;
  if (command.anchor) throw invalidField(1, 4); // ANC_SUP is clear: anchored blocks are not a state we keep
  const count = blockCount(unit);
  if (command.lba > count) throw lbaOutOfRangeFor();
  const blocks = command.blocks === 0 ? count - command.lba : command.blocks;
  const range: BlockRange = { lba: command.lba, blocks };
  checkRange(unit, range);
  if (blocks > G.maxWriteSameBlocks(unit.geometry)) throw invalidField(sixteen ? 10 : 7);
  checkWritable(unit);
  const patternBytes = command.noDataOut ? 0 : unit.geometry.blockBytes;
  if (task.expectedLength !== patternBytes) throw invalidField(sixteen ? 10 : 7);
  const pattern = command.noDataOut
    ? new Uint8Array(unit.geometry.blockBytes)
    : dataOut(task, unit.geometry.blockBytes);
  if (blocks === 0) return { status: ScsiStatus.GOOD, dataOutLength: patternBytes };
  // UNMAP deallocates whatever the pattern: unmapped blocks read as zeros (LBPRZ), which
  // is what initiators (and libiscsi's tests) expect after WRITE SAME with UNMAP.
  const zero = command.unmap || pattern.every((byte) => byte === 0);
  const release = await holdRange(unit, range);
  try {
    if (zero) {
      await volumeWrite(() =>
        unit.handle.writeZeroes(
          range.lba * unit.geometry.blockBytes,
          blocks * unit.geometry.blockBytes,
        ),
      );
    } else {
      await writePattern(unit, range, pattern);
    }
  } finally {
    release();
  }
  return { status: ScsiStatus.GOOD, dataOutLength: patternBytes };
}

async function writePattern(
  unit: UnitContext,
  range: BlockRange,
  pattern: Uint8Array,
): Promise<void> {
  const chunkBlocks = G.WRITE_SAME_CHUNK_BYTES / unit.geometry.blockBytes;
  const chunk = Buffer.alloc(Math.min(range.blocks, chunkBlocks) * unit.geometry.blockBytes);
  for (let at = 0; at < chunk.length; at += unit.geometry.blockBytes) chunk.set(pattern, at);
  for (let done = 0; done < range.blocks; done += chunkBlocks) {
    const blocks = Math.min(chunkBlocks, range.blocks - done);
    await writeBlocks(
      unit,
      range.lba + done,
      chunk.subarray(0, blocks * unit.geometry.blockBytes),
      false,
    );
  }
}

/** SYNCHRONIZE CACHE(10)/(16): the range is checked, then everything is flushed (the volume flushes whole). */
export async function synchronizeCache(unit: UnitContext, task: ScsiTask): Promise<ScsiResponse> {
  checkRange(unit, cacheRange(task.cdb, Op.SYNCHRONIZE_CACHE_16));
  await volumeWrite(() => unit.handle.flush());
  return GOOD;
}

/** PRE-FETCH(10)/(16): a cache hint to the volume; GOOD (we cannot promise the data stays cached). */
export async function preFetch(unit: UnitContext, task: ScsiTask): Promise<ScsiResponse> {
  const range = cacheRange(task.cdb, Op.PRE_FETCH_16);
  checkRange(unit, range);
  if (range.blocks > 0) {
    await unit.handle
      .cache(range.lba * unit.geometry.blockBytes, range.blocks * unit.geometry.blockBytes)
      .catch(() => undefined); // a hint that failed changes nothing the initiator can see
  }
  return GOOD;
}

/** The range of SYNCHRONIZE CACHE and PRE-FETCH, whose 10- and 16-byte CDBs are laid out alike. */
function cacheRange(cdb: Uint8Array, opcode16: number): BlockRange {
  return cdb[0] === opcode16
    ? { lba: u64(cdb, 2), blocks: u32(cdb, 10) }
    : { lba: u32(cdb, 2), blocks: u16(cdb, 7) };
}

function lbaOutOfRangeFor(): CheckCondition {
  return new CheckCondition(SenseKey.ILLEGAL_REQUEST, Ascs.LBA_OUT_OF_RANGE);
}

/** MISCOMPARE with the offset of the first differing byte in the INFORMATION field (SBC-3 5.2). */
function miscompare(offset: number): CheckCondition {
  return new CheckCondition(SenseKey.MISCOMPARE, Ascs.MISCOMPARE_DURING_VERIFY, {
    information: offset,
  });
}

function firstDifference(a: Uint8Array, b: Uint8Array): number {
  if (
    Buffer.from(a.buffer, a.byteOffset, a.length).equals(
      Buffer.from(b.buffer, b.byteOffset, b.length),
    )
  ) {
    return -1;
  }
  for (let index = 0; index < a.length; index += 1) if (a[index] !== b[index]) return index;
  return a.length;
}

function firstRepeatDifference(blocks: Uint8Array, block: Uint8Array): number {
  for (let at = 0; at < blocks.length; at += block.length) {
    const differs = firstDifference(blocks.subarray(at, at + block.length), block);
    if (differs >= 0) return at + differs;
  }
  return -1;
}
