// Discovers what O_DIRECT needs of a freshly opened file or block device: its size and
// the alignment of offsets, lengths and buffer addresses. Nothing is assumed:
//   block device  BLKSSZGET (logical sector size) for both alignments, BLKGETSIZE64;
//   regular file  statx(STATX_DIOALIGN) where the kernel and filesystem report it
//                 (Linux >= 6.1); otherwise st_blksize, the filesystem block size,
//                 which is a multiple of the device's logical sector size and so a
//                 safe (if sometimes larger than needed) alignment.
// Filesystems whose O_DIRECT is not real are refused here: tmpfs and ramfs accept the
// flag since Linux 6.6 but keep data in memory, so nothing written there is durable.

#include "engine.h"

#include <fcntl.h>
#include <linux/fs.h>
#include <linux/magic.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/statfs.h>

#include <cerrno>

namespace cistern {

namespace {

bool ProbeBlockDevice(int fd, DeviceInfo* info, SyscallFailure* failure) {
  int sectorBytes = 0;
  if (ioctl(fd, BLKSSZGET, &sectorBytes) != 0) {
    *failure = {errno, "ioctl(BLKSSZGET)", ""};
    return false;
  }
  uint64_t sizeBytes = 0;
  if (ioctl(fd, BLKGETSIZE64, &sizeBytes) != 0) {
    *failure = {errno, "ioctl(BLKGETSIZE64)", ""};
    return false;
  }
  info->isBlockDevice = true;
  info->sizeBytes = sizeBytes;
  info->offsetAlignBytes = static_cast<uint32_t>(sectorBytes);
  info->memoryAlignBytes = static_cast<uint32_t>(sectorBytes);
  info->alignmentSource = "BLKSSZGET";
  return true;
}

// Returns true when statx reported direct-I/O alignment; false to fall back.
bool ProbeStatxDioAlign(int fd, DeviceInfo* info, SyscallFailure* failure, bool* refused) {
#ifdef STATX_DIOALIGN
  struct statx result {};
  if (statx(fd, "", AT_EMPTY_PATH, STATX_DIOALIGN, &result) != 0) return false;
  if ((result.stx_mask & STATX_DIOALIGN) == 0) return false;
  if (result.stx_dio_offset_align == 0) {
    // The filesystem answered, and the answer is "no direct I/O on this file".
    *failure = {EOPNOTSUPP, "statx(STATX_DIOALIGN)", "no-direct-io"};
    *refused = true;
    return false;
  }
  info->offsetAlignBytes = result.stx_dio_offset_align;
  info->memoryAlignBytes = result.stx_dio_mem_align;
  info->alignmentSource = "statx";
  return true;
#else
  (void)fd;
  (void)info;
  (void)failure;
  (void)refused;
  return false;
#endif
}

bool ProbeRegularFile(int fd, const struct stat& status, DeviceInfo* info,
                      SyscallFailure* failure) {
  struct statfs filesystem {};
  if (fstatfs(fd, &filesystem) != 0) {
    *failure = {errno, "fstatfs", ""};
    return false;
  }
  if (filesystem.f_type == TMPFS_MAGIC || filesystem.f_type == RAMFS_MAGIC) {
    *failure = {EOPNOTSUPP, "fstatfs", "tmpfs"};
    return false;
  }
  bool refused = false;
  if (!ProbeStatxDioAlign(fd, info, failure, &refused)) {
    if (refused) return false;
    info->offsetAlignBytes = static_cast<uint32_t>(status.st_blksize);
    info->memoryAlignBytes = static_cast<uint32_t>(status.st_blksize);
    info->alignmentSource = "st_blksize";
  }
  info->isBlockDevice = false;
  info->sizeBytes = static_cast<uint64_t>(status.st_size);
  return true;
}

bool IsPowerOfTwo(uint32_t value) { return value != 0 && (value & (value - 1)) == 0; }

}  // namespace

bool ProbeDevice(int fd, DeviceInfo* info, SyscallFailure* failure) {
  struct stat status {};
  if (fstat(fd, &status) != 0) {
    *failure = {errno, "fstat", ""};
    return false;
  }
  bool ok = false;
  if (S_ISBLK(status.st_mode)) {
    ok = ProbeBlockDevice(fd, info, failure);
  } else if (S_ISREG(status.st_mode)) {
    ok = ProbeRegularFile(fd, status, info, failure);
  } else {
    *failure = {EINVAL, "fstat", "not-block-or-file"};
    return false;
  }
  if (!ok) return false;
  // Alignments are checked with a mask, here and in JS; anything else is a surprise
  // worth refusing rather than guessing around.
  if (!IsPowerOfTwo(info->offsetAlignBytes) || !IsPowerOfTwo(info->memoryAlignBytes)) {
    *failure = {EINVAL, "probe", "alignment-not-power-of-two"};
    return false;
  }
  return true;
}

}  // namespace cistern
