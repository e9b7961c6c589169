// Bounds of the I/O engine, each with its reason. The native side (native/engine.h)
// has the same numbers and checks them again; native.ts asserts they agree on load.

/** In-flight I/Os per device when the caller does not choose: enough to keep an NVMe
 * queue busy at 4 KiB, small enough that a context costs little kernel memory. */
export const QUEUE_DEPTH_DEFAULT = 128;

/** Upper bound on a device's queue depth; each context takes this many of the
 * system-wide aio-max-nr (65536 by default) events. */
export const QUEUE_DEPTH_MAX = 1024;

/** Largest single read or write: results cross to JS as int32, and no caller in the
 * object store moves more than a few MiB at once. */
export const IO_BYTES_MAX = 64 * 2 ** 20;

/** I/Os waiting for a free slot beyond the queue depth. Past this, callers get
 * UNAVAILABLE instead of growing memory without bound. */
export const WAITING_IOS_MAX = 16384;

/** A created file's size must be a multiple of this: 4 KiB is a multiple of every
 * logical block size in use (512 B and 4 KiB), so any discovered alignment divides it. */
export const CREATE_SIZE_GRANULE_BYTES = 4096;

/** Buffers from the engine are aligned to at least a page, whatever the device needs. */
export const BUFFER_ALIGN_BYTES_MIN = 4096;

/** iocbs per io_submit call. A turn's batch crosses into C++ in one call, but the
 * kernel plugs the block layer for io_submit of more than two iocbs, so one io_submit
 * per turn sends the whole batch to the device as one burst that then completes as one,
 * and the queue convoys instead of staying full. Measured on virtio at QD 32 (see
 * perf/RESULTS.md): about 0.6-0.8x fio's IOPS with one io_submit per turn, about
 * 0.9-1.0x with chunks of 2. A device option can raise it (e.g. on NVMe, where plugging
 * saves doorbell writes). */
export const SUBMIT_CHUNK_DEFAULT = 2;
