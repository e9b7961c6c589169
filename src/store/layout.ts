// The on-disk and in-index formats of one object store.
//
// Device:  [ header area: HEADER_AREA_BYTES, superblock in its first 4 KiB ]
//          [ slot 0 ][ slot 1 ] … [ slot slotCount-1 ]   each objectSizeBytes long
// The header area is 1 MiB so that slots start on a boundary that suits RAID stripes
// and SSD erase blocks, the same reason partitions start at 1 MiB.
//
// Index (LevelDB, keys are bytes):
//   0x00 'superblock'        → the superblock bytes (a copy, to tie index and disk together)
//   0x01 + ObjectKey (13 B)  → object record: version u8, slot u48, written-block count u32,
//                              bitmap of written 4 KiB blocks (objectSizeBytes / 32 KiB bytes)
//   0x02 + ObjectKey (13 B)  → empty: the activity record — the object may have been
//                              changed since the last flush (replicas may differ on it)
//   0x03 + pool u32 + pg u32 + epoch u32 + seq u64 → ObjectKey: one PG log entry (pg-log.ts)
//   0x04 + pool u32 + pg u32 → the PG log's `complete` and `start` versions (pg-log.ts)

import { randomUUID } from 'node:crypto';
import { crc32 } from 'node:zlib';
import { assert } from '../util/assert';
import { CisternError } from '../util/errors';
import { bitmapBytes, countBits } from './bitmap';
import { OBJECT_KEY_BYTES } from './key';

/** The unit of the written-block bitmap, of zero-fill and of read-modify-write. */
export const BLOCK_SIZE_BYTES = 4096;
export const HEADER_AREA_BYTES = 1024 * 1024;
export const SUPERBLOCK_BYTES = 4096;
export const FORMAT_VERSION = 1;
export const OBJECT_SIZE_DEFAULT_BYTES = 4 * 1024 * 1024;
/** At least 8 blocks, so a bitmap is whole bytes. */
export const OBJECT_SIZE_MIN_BYTES = 8 * BLOCK_SIZE_BYTES;
/** Bounds the largest single request and the bitmap per record (2 KiB at 64 MiB). */
export const OBJECT_SIZE_MAX_BYTES = 64 * 1024 * 1024;

const MAGIC = Buffer.from('CISTERN-OBJSTORE', 'latin1');
const SUPERBLOCK_CHECKED_BYTES = 72;
const RECORD_VERSION = 1;
const RECORD_HEADER_BYTES = 11;

export interface Geometry {
  uuid: string;
  objectSizeBytes: number;
  slotCount: number;
  dataOffsetBytes: number;
  deviceSizeBytes: number;
}

export function checkObjectSize(objectSizeBytes: number): void {
  const isPowerOfTwo =
    Number.isInteger(objectSizeBytes) &&
    objectSizeBytes > 0 &&
    (objectSizeBytes & (objectSizeBytes - 1)) === 0;
  if (
    !isPowerOfTwo ||
    objectSizeBytes < OBJECT_SIZE_MIN_BYTES ||
    objectSizeBytes > OBJECT_SIZE_MAX_BYTES
  ) {
    throw new CisternError(
      'EINVAL',
      `object size ${objectSizeBytes} must be a power of two from ${OBJECT_SIZE_MIN_BYTES} to ${OBJECT_SIZE_MAX_BYTES}`,
    );
  }
}

export function newGeometry(deviceSizeBytes: number, objectSizeBytes: number): Geometry {
  checkObjectSize(objectSizeBytes);
  const slotCount = Math.floor((deviceSizeBytes - HEADER_AREA_BYTES) / objectSizeBytes);
  if (slotCount < 1) {
    throw new CisternError(
      'EINVAL',
      `device of ${deviceSizeBytes} bytes is too small for one ${objectSizeBytes}-byte object after the ${HEADER_AREA_BYTES}-byte header`,
    );
  }
  return {
    uuid: randomUUID(),
    objectSizeBytes,
    slotCount,
    dataOffsetBytes: HEADER_AREA_BYTES,
    deviceSizeBytes,
  };
}

function writeU64(bytes: Buffer, value: number, offset: number): void {
  assert(Number.isSafeInteger(value) && value >= 0, `u64 field out of range: ${value}`);
  bytes.writeBigUInt64BE(BigInt(value), offset);
}

function readU64(bytes: Buffer, offset: number): number {
  const value = bytes.readBigUInt64BE(offset);
  if (value > BigInt(Number.MAX_SAFE_INTEGER)) {
    throw new CisternError('CORRUPT', `superblock field at ${offset} is out of range`);
  }
  return Number(value);
}

/** Layout: magic 16, version u32, block size u32, object size u32, 0 u32, data offset u64,
 *  slot count u64, device size u64, uuid 16, crc32 of the preceding 72 bytes. */
export function encodeSuperblock(geometry: Geometry): Buffer {
  const bytes = Buffer.alloc(SUPERBLOCK_BYTES);
  MAGIC.copy(bytes, 0);
  bytes.writeUInt32BE(FORMAT_VERSION, 16);
  bytes.writeUInt32BE(BLOCK_SIZE_BYTES, 20);
  bytes.writeUInt32BE(geometry.objectSizeBytes, 24);
  writeU64(bytes, geometry.dataOffsetBytes, 32);
  writeU64(bytes, geometry.slotCount, 40);
  writeU64(bytes, geometry.deviceSizeBytes, 48);
  const uuidBytes = Buffer.from(geometry.uuid.replace(/-/g, ''), 'hex');
  assert(uuidBytes.length === 16, `bad uuid ${geometry.uuid}`);
  uuidBytes.copy(bytes, 56);
  bytes.writeUInt32BE(crc32(bytes.subarray(0, SUPERBLOCK_CHECKED_BYTES)), SUPERBLOCK_CHECKED_BYTES);
  return bytes;
}

/** Returns null when the bytes carry no Cistern magic at all (blank or foreign disk). */
export function decodeSuperblock(raw: Uint8Array, where: string): Geometry | null {
  const bytes = Buffer.from(raw.buffer, raw.byteOffset, raw.byteLength);
  assert(bytes.length >= SUPERBLOCK_CHECKED_BYTES + 4, 'superblock buffer too short');
  if (!bytes.subarray(0, MAGIC.length).equals(MAGIC)) return null;
  const expectedCrc = bytes.readUInt32BE(SUPERBLOCK_CHECKED_BYTES);
  if (crc32(bytes.subarray(0, SUPERBLOCK_CHECKED_BYTES)) !== expectedCrc) {
    throw new CisternError('CORRUPT', `${where}: superblock checksum mismatch`);
  }
  const version = bytes.readUInt32BE(16);
  if (version !== FORMAT_VERSION) {
    throw new CisternError(
      'ENOTSUP',
      `${where}: format version ${version}, this build reads ${FORMAT_VERSION}`,
    );
  }
  if (bytes.readUInt32BE(20) !== BLOCK_SIZE_BYTES) {
    throw new CisternError(
      'ENOTSUP',
      `${where}: block size ${bytes.readUInt32BE(20)} is not ${BLOCK_SIZE_BYTES}`,
    );
  }
  const hex = bytes.subarray(56, 72).toString('hex');
  const uuid = `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;
  const geometry = {
    uuid,
    objectSizeBytes: bytes.readUInt32BE(24),
    dataOffsetBytes: readU64(bytes, 32),
    slotCount: readU64(bytes, 40),
    deviceSizeBytes: readU64(bytes, 48),
  };
  checkObjectSize(geometry.objectSizeBytes);
  return geometry;
}

export const SUPERBLOCK_INDEX_KEY = Buffer.concat([Buffer.from([0x00]), Buffer.from('superblock')]);
const OBJECT_TABLE = 0x01;
const ACTIVITY_TABLE = 0x02;

export function objectIndexKey(keyBytes: Uint8Array): Buffer {
  assert(keyBytes.length === OBJECT_KEY_BYTES, 'object key length');
  const indexKey = Buffer.allocUnsafe(1 + OBJECT_KEY_BYTES);
  indexKey[0] = OBJECT_TABLE;
  indexKey.set(keyBytes, 1);
  return indexKey;
}

/** The activity record's index key of an object (see the schema above). */
export function activityIndexKey(keyBytes: Uint8Array): Buffer {
  assert(keyBytes.length === OBJECT_KEY_BYTES, 'object key length');
  const indexKey = Buffer.allocUnsafe(1 + OBJECT_KEY_BYTES);
  indexKey[0] = ACTIVITY_TABLE;
  indexKey.set(keyBytes, 1);
  return indexKey;
}

/** [gte, lt) bounds of every activity record key. */
export function activityIndexRange(): { gte: Buffer; lt: Buffer } {
  return { gte: Buffer.from([ACTIVITY_TABLE]), lt: Buffer.from([ACTIVITY_TABLE + 1]) };
}

export function objectKeyOfActivityKey(indexKey: Uint8Array): Uint8Array {
  assert(
    indexKey.length === 1 + OBJECT_KEY_BYTES && indexKey[0] === ACTIVITY_TABLE,
    'not an activity record key',
  );
  return indexKey.subarray(1);
}

/** [gte, lt) bounds of the index keys of objects whose key starts with `prefix`. */
export function objectIndexRange(prefix: Uint8Array): { gte: Buffer; lt: Buffer } {
  const gte = Buffer.concat([Buffer.from([OBJECT_TABLE]), prefix]);
  const lt = Buffer.from(gte);
  // The smallest key above every key with this prefix: increment the last byte that
  // is not 0xff and cut after it. The table byte is below 0xff, so this always ends.
  let index = lt.length - 1;
  while (lt[index] === 0xff) index -= 1;
  assert(index >= 0, 'prefix of all 0xff');
  lt[index]! += 1;
  return { gte, lt: lt.subarray(0, index + 1) };
}

export function objectKeyOfIndexKey(indexKey: Uint8Array): Uint8Array {
  assert(
    indexKey.length === 1 + OBJECT_KEY_BYTES && indexKey[0] === OBJECT_TABLE,
    'not an object index key',
  );
  return indexKey.subarray(1);
}

export interface ObjectRecord {
  slot: number;
  written: Uint8Array;
  writtenCount: number;
}

export function encodeRecord(record: ObjectRecord): Buffer {
  const bytes = Buffer.allocUnsafe(RECORD_HEADER_BYTES + record.written.length);
  bytes.writeUInt8(RECORD_VERSION, 0);
  bytes.writeUIntBE(record.slot, 1, 6);
  bytes.writeUInt32BE(record.writtenCount, 7);
  bytes.set(record.written, RECORD_HEADER_BYTES);
  return bytes;
}

export function decodeRecord(raw: Uint8Array, geometry: Geometry, where: string): ObjectRecord {
  const bytes = Buffer.from(raw.buffer, raw.byteOffset, raw.byteLength);
  const blocksPerObject = geometry.objectSizeBytes / BLOCK_SIZE_BYTES;
  if (
    bytes.length !== RECORD_HEADER_BYTES + bitmapBytes(blocksPerObject) ||
    bytes[0] !== RECORD_VERSION
  ) {
    throw new CisternError(
      'CORRUPT',
      `${where}: object record of ${bytes.length} bytes, version ${bytes[0]}`,
    );
  }
  const record = {
    slot: bytes.readUIntBE(1, 6),
    writtenCount: bytes.readUInt32BE(7),
    // A copy: the record outlives the buffer LevelDB handed us and is mutated in place.
    written: new Uint8Array(bytes.subarray(RECORD_HEADER_BYTES)),
  };
  if (record.slot >= geometry.slotCount || countBits(record.written) !== record.writtenCount) {
    throw new CisternError(
      'CORRUPT',
      `${where}: slot ${record.slot} or written count ${record.writtenCount} is inconsistent`,
    );
  }
  return record;
}
