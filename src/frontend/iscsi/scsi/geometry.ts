// The shape of a Cistern volume as a SCSI direct-access block device, and the limits we
// advertise in the Block Limits VPD page (SBC-3 6.5.3). One place, because READ
// CAPACITY, MODE SENSE, the VPD pages and every range check must agree.

/**
 * 512-byte logical blocks on 4096-byte physical blocks ("512e"). 512 because it is what
 * every initiator, boot loader and partition tool handles without thought (ESXi before
 * 6.5 and many firmware loaders take nothing else), and because a volume is byte-
 * addressed below us anyway: the volume layer does read-modify-write for sub-4-KiB I/O.
 * Reporting the 4096-byte physical block (LOGICAL BLOCKS PER PHYSICAL BLOCK EXPONENT 3)
 * lets modern initiators align to the volume's allocation unit and avoid that cost.
 */
export const LOGICAL_BLOCK_BYTES = 512;
export const PHYSICAL_BLOCK_EXPONENT = 3;
/** Logical blocks per 4 KiB allocation unit: the optimal granularity of transfers and unmaps. */
export const BLOCKS_PER_PHYSICAL = 1 << PHYSICAL_BLOCK_EXPONENT;

/**
 * Largest READ/WRITE/VERIFY in blocks (8 MiB). The transport buffers a whole command's
 * Data-Out before handing it to us and we buffer a whole read, so this bounds the memory
 * one command can pin; Linux and qemu split larger requests when told.
 */
export const MAX_TRANSFER_BLOCKS = 16384;
/** Transfers this large (4 MiB: one volume object) hit one object per request. */
export const OPTIMAL_TRANSFER_BLOCKS = 8192;
/**
 * COMPARE AND WRITE holds a range lock while it reads, compares and writes; 255 blocks
 * (the field's maximum, under 128 KiB) keeps that short. VMware's ATS uses one block.
 */
export const MAX_COMPARE_AND_WRITE_BLOCKS = 255;
/** UNMAP descriptors per command: 8 + 16 × 256 = 4104 bytes of parameter list at most. */
export const MAX_UNMAP_DESCRIPTORS = 256;
/** LBAs one UNMAP may discard in total (512 MiB): one command's work stays bounded (libiscsi calls above 1M "insanely big"). */
export const MAX_UNMAP_BLOCKS = 1024 * 1024;
/** WRITE SAME length bound (2 GiB): zeroing and unmapping are cheap, pattern writes are chunked. */
export const MAX_WRITE_SAME_BLOCKS = 4 * 1024 * 1024;
/** Pattern WRITE SAME writes this many bytes per volume call, so memory stays bounded. */
export const WRITE_SAME_CHUNK_BYTES = 1024 * 1024;
/** UNMAP parameter list bytes accepted: the header plus the maximum number of descriptors. */
export const MAX_UNMAP_PARAMETER_BYTES = 8 + 16 * MAX_UNMAP_DESCRIPTORS;
/** GET LBA STATUS descriptors per reply: bounded so a fragmented volume cannot blow up a reply. */
export const MAX_LBA_STATUS_DESCRIPTORS = 1024;
