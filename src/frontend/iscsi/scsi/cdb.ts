// CDB layouts (SPC-4, SBC-3): operation codes and decoders that turn bytes into checked
// fields. Every decoder validates reserved bits and unsupported options here, raising
// INVALID FIELD IN CDB with the field pointer, so handlers only see commands they can do.

import { assert } from '../../../util/assert';
import { invalidField } from './sense';

export const Op = {
  TEST_UNIT_READY: 0x00,
  REQUEST_SENSE: 0x03,
  READ_6: 0x08,
  WRITE_6: 0x0a,
  INQUIRY: 0x12,
  MODE_SELECT_6: 0x15,
  RESERVE_6: 0x16,
  RELEASE_6: 0x17,
  MODE_SENSE_6: 0x1a,
  START_STOP_UNIT: 0x1b,
  PREVENT_ALLOW_MEDIUM_REMOVAL: 0x1e,
  READ_CAPACITY_10: 0x25,
  READ_10: 0x28,
  WRITE_10: 0x2a,
  WRITE_AND_VERIFY_10: 0x2e,
  VERIFY_10: 0x2f,
  PRE_FETCH_10: 0x34,
  SYNCHRONIZE_CACHE_10: 0x35,
  WRITE_SAME_10: 0x41,
  UNMAP: 0x42,
  MODE_SELECT_10: 0x55,
  RESERVE_10: 0x56,
  RELEASE_10: 0x57,
  MODE_SENSE_10: 0x5a,
  PERSISTENT_RESERVE_IN: 0x5e,
  PERSISTENT_RESERVE_OUT: 0x5f,
  READ_16: 0x88,
  COMPARE_AND_WRITE: 0x89,
  WRITE_16: 0x8a,
  WRITE_AND_VERIFY_16: 0x8e,
  VERIFY_16: 0x8f,
  PRE_FETCH_16: 0x90,
  SYNCHRONIZE_CACHE_16: 0x91,
  WRITE_SAME_16: 0x93,
  SERVICE_ACTION_IN_16: 0x9e,
  REPORT_LUNS: 0xa0,
  MAINTENANCE_IN: 0xa3,
  READ_12: 0xa8,
  WRITE_12: 0xaa,
  WRITE_AND_VERIFY_12: 0xae,
  VERIFY_12: 0xaf,
} as const;

/** Service actions of SERVICE ACTION IN(16) and MAINTENANCE IN that we serve. */
export const ServiceAction = {
  READ_CAPACITY_16: 0x10,
  GET_LBA_STATUS: 0x12,
  REPORT_SUPPORTED_OPERATION_CODES: 0x0c,
} as const;

/** An LBA too large for a double; every range check treats it as beyond the end. */
export const LBA_UNREPRESENTABLE = Number.POSITIVE_INFINITY;

export function u16(cdb: Uint8Array, at: number): number {
  return (cdb[at]! << 8) | cdb[at + 1]!;
}

export function u24(cdb: Uint8Array, at: number): number {
  return (cdb[at]! << 16) | (cdb[at + 1]! << 8) | cdb[at + 2]!;
}

export function u32(cdb: Uint8Array, at: number): number {
  return ((cdb[at]! << 24) >>> 0) + ((cdb[at + 1]! << 16) | (cdb[at + 2]! << 8) | cdb[at + 3]!);
}

/** A 64-bit big-endian field as a number, or LBA_UNREPRESENTABLE beyond 2^53. */
export function u64(cdb: Uint8Array, at: number): number {
  const high = u32(cdb, at);
  const low = u32(cdb, at + 4);
  const value = high * 2 ** 32 + low;
  return high >= 2 ** 21 ? LBA_UNREPRESENTABLE : value;
}

/** The fields every block-transfer command shares (READ/WRITE/VERIFY/WRITE AND VERIFY, 6..16). */
export interface BlockRange {
  readonly lba: number;
  readonly blocks: number;
}

export interface TransferCdb extends BlockRange {
  /** Force unit access: the data goes to (or comes from) durable storage. */
  readonly fua: boolean;
  /** RDPROTECT / WRPROTECT / VRPROTECT: must be 0 since we keep no protection information. */
  readonly protect: number;
  /** BYTCHK of VERIFY / WRITE AND VERIFY (0 for other commands). */
  readonly byteCheck: number;
}

/** The CDB length of each group code (SAM-5: the top three bits of the operation code). */
export function cdbLength(opcode: number): number {
  const group = opcode >> 5;
  if (group === 0) return 6;
  if (group === 1 || group === 2) return 10;
  if (group === 4) return 16;
  if (group === 5) return 12;
  return 16;
}

/** READ/WRITE(6): 21-bit LBA, 8-bit length where 0 means 256 blocks (SBC-3 5.13, 5.30). */
export function decodeTransfer6(cdb: Uint8Array): TransferCdb {
  const lba = ((cdb[1]! & 0x1f) << 16) | u16(cdb, 2);
  const blocks = cdb[4] === 0 ? 256 : cdb[4]!;
  return { lba, blocks, fua: false, protect: 0, byteCheck: 0 };
}

/**
 * READ/WRITE/VERIFY/WRITE AND VERIFY 10, 12 and 16. Byte 1 carries PROTECT (bits 7..5),
 * DPO (4), FUA (3; BYTCHK bits 2..1 for the verify commands), and FUA_NV (1, obsolete).
 */
export function decodeTransfer(cdb: Uint8Array, verify: boolean): TransferCdb {
  const length = cdbLength(cdb[0]!);
  let lba: number;
  let blocks: number;
  if (length === 10) {
    lba = u32(cdb, 2);
    blocks = u16(cdb, 7);
  } else if (length === 12) {
    lba = u32(cdb, 2);
    blocks = u32(cdb, 6);
  } else {
    assert(length === 16, `no transfer CDB of ${length} bytes`);
    lba = u64(cdb, 2);
    blocks = u32(cdb, 10);
  }
  const protect = cdb[1]! >> 5;
  if (protect !== 0) throw invalidField(1, 7);
  return {
    lba,
    blocks,
    fua: !verify && (cdb[1]! & 0x08) !== 0,
    protect,
    byteCheck: verify ? (cdb[1]! >> 1) & 0x03 : 0,
  };
}

export interface WriteSameCdb extends BlockRange {
  readonly unmap: boolean;
  readonly anchor: boolean;
  /** NDOB (16 only): no data-out buffer, the pattern is zeros. */
  readonly noDataOut: boolean;
}

/** WRITE SAME(10)/(16) (SBC-3 5.42, 5.43). */
export function decodeWriteSame(cdb: Uint8Array): WriteSameCdb {
  const sixteen = cdb[0] === 0x93;
  const flags = cdb[1]!;
  if (flags >> 5 !== 0) throw invalidField(1, 7); // WRPROTECT: no protection information
  // PBDATA and LBDATA (bits 2, 1) ask to write addresses into each block: obsolete in SBC-3 and not done.
  if ((flags & 0x06) !== 0) throw invalidField(1, (flags & 0x04) !== 0 ? 2 : 1);
  const anchor = (flags & 0x10) !== 0;
  const unmap = (flags & 0x08) !== 0;
  const noDataOut = sixteen && (flags & 0x01) !== 0;
  if (!sixteen && (flags & 0x01) !== 0) throw invalidField(1, 0);
  const lba = sixteen ? u64(cdb, 2) : u32(cdb, 2);
  const blocks = sixteen ? u32(cdb, 10) : u16(cdb, 7);
  return { lba, blocks, unmap, anchor, noDataOut };
}

/** The allocation length a data-in command may return, from its CDB. */
export function allocationLength(cdb: Uint8Array, at: number, bytes: 1 | 2 | 4): number {
  if (bytes === 1) return cdb[at]!;
  if (bytes === 2) return u16(cdb, at);
  return u32(cdb, at);
}

/** Cuts reply data to the allocation length (SPC-4 4.2.5.6: never an error in itself). */
export function cut(data: Uint8Array, allocation: number): Uint8Array {
  return data.length <= allocation ? data : data.subarray(0, allocation);
}
