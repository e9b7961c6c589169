// The shape of a Cistern volume as a SCSI direct-access block device, and the limits we
// advertise in the Block Limits VPD page (SBC-3 6.5.3). One place, because READ
// CAPACITY, MODE SENSE, the VPD pages and every range check must agree.

export interface Geometry {
  /** Logical block size: the unit of every LBA and transfer length. */
  readonly blockBytes: number;
  /** LOGICAL BLOCKS PER PHYSICAL BLOCK EXPONENT of READ CAPACITY(16). */
  readonly physicalExponent: number;
}

/**
 * The volume's allocation unit: the memory volume and the object store allocate, trim
 * and checksum in 4 KiB blocks, and anything smaller costs a read-modify-write below us.
 */
export const ALLOCATION_UNIT_BYTES = 4096;

/**
 * The default: 4096-byte logical blocks ("4Kn"), so one logical block is one allocation
 * unit. Every write is whole units (no read-modify-write), every UNMAP frees exactly what
 * it names, and GET LBA STATUS is exact per LBA — libiscsi's GET LBA STATUS tests assume
 * one logical block per physical block and fail on 512e. qemu, Linux, Windows Server
 * 2012+ and libiscsi handle 4Kn; an initiator that cannot (ESXi takes 4Kn only on local
 * disks, old BIOS boot loaders) is served 512e by creating the unit with GEOMETRY_512E.
 */
export const GEOMETRY_4KN: Geometry = { blockBytes: 4096, physicalExponent: 0 };
/** 512-byte logical blocks on 4 KiB physical blocks: for initiators that require 512. */
export const GEOMETRY_512E: Geometry = { blockBytes: 512, physicalExponent: 3 };
export const DEFAULT_GEOMETRY = GEOMETRY_4KN;

/**
 * Largest READ/WRITE/VERIFY in bytes (32 MiB). The transport buffers a whole command's
 * Data-Out before handing it to us and we buffer a whole read, so this bounds the memory
 * one command pins; it equals the transport's per-command bound, and Linux and qemu
 * split larger requests when told.
 */
export const MAX_TRANSFER_BYTES = 32 * 1024 * 1024;
/** Transfers of 4 MiB (one volume object) hit one object per request. */
export const OPTIMAL_TRANSFER_BYTES = 4 * 1024 * 1024;
/**
 * COMPARE AND WRITE holds a range lock while it reads, compares and writes; a bound of
 * 64 KiB keeps that short (VMware's ATS uses one block).
 */
export const MAX_COMPARE_AND_WRITE_BYTES = 64 * 1024;
/** UNMAP descriptors per command: 8 + 16 × 256 = 4104 bytes of parameter list at most. */
export const MAX_UNMAP_DESCRIPTORS = 256;
/**
 * LBAs one UNMAP may cover (2^20, the most libiscsi calls sane): one command's work
 * stays bounded in time.
 */
export const MAX_UNMAP_BLOCKS = 1024 * 1024;
/**
 * Bytes one WRITE SAME may cover (128 MiB): bounded in time like UNMAP. In blocks this
 * stays below 65536 for 4Kn, so libiscsi expects a refusal of a 65536-block WRITE SAME
 * rather than writing 256 MiB in one WRITE(16) to prepare it.
 */
export const MAX_WRITE_SAME_BYTES = 128 * 1024 * 1024;
/** Pattern WRITE SAME writes this many bytes per volume call, so memory stays bounded. */
export const WRITE_SAME_CHUNK_BYTES = 1024 * 1024;
/** UNMAP parameter list bytes accepted: the header plus the maximum number of descriptors. */
export const MAX_UNMAP_PARAMETER_BYTES = 8 + 16 * MAX_UNMAP_DESCRIPTORS;
/** GET LBA STATUS descriptors per reply: bounded so a fragmented volume cannot blow up a reply. */
export const MAX_LBA_STATUS_DESCRIPTORS = 1024;
/** Bytes of the volume one GET LBA STATUS looks at; the initiator asks again from where a reply ends. */
export const LBA_STATUS_SPAN_BYTES = 1024 * 1024 * 1024;

export function maxWriteSameBlocks(geometry: Geometry): number {
  return MAX_WRITE_SAME_BYTES / geometry.blockBytes;
}

export function maxTransferBlocks(geometry: Geometry): number {
  return MAX_TRANSFER_BYTES / geometry.blockBytes;
}

export function optimalTransferBlocks(geometry: Geometry): number {
  return OPTIMAL_TRANSFER_BYTES / geometry.blockBytes;
}

export function maxCompareAndWriteBlocks(geometry: Geometry): number {
  return Math.min(255, Math.max(1, MAX_COMPARE_AND_WRITE_BYTES / geometry.blockBytes));
}

/** Logical blocks per allocation unit: the optimal transfer and unmap granularity. */
export function granularityBlocks(geometry: Geometry): number {
  return Math.max(1, ALLOCATION_UNIT_BYTES / geometry.blockBytes);
}

/**
 * OPTIMAL UNMAP GRANULARITY for VPD 0xB0: the allocation unit in blocks, or 0 ("not
 * reported") when one logical block is the whole unit. Reporting 1 there adds nothing
 * an initiator can use, and qemu (7.2 and later, block/iscsi.c) then keeps an
 * allocation map of 4 KiB clusters and asks block status over a 512-aligned length
 * that is not a multiple of a 4096-byte block — an assertion that aborts qemu on its
 * first large read of a thin 4Kn LUN. With 0, qemu keeps no map and reads plainly.
 */
export function unmapGranularityBlocks(geometry: Geometry): number {
  const blocks = granularityBlocks(geometry);
  return blocks === 1 ? 0 : blocks;
}
