// Turns what the kernel says (a negative errno in a completion, or an Error thrown by
// the addon) into CisternErrors. Errno names become codes only in util/errors.ts
// (fromErrno); this module only names the operation, the range and the path.

import * as util from 'node:util';
import { CisternError, fromErrno } from '../util/errors';
import { isNativeSyscallError } from './native';

/** 'EIO' for 5, and so on; 'E<number>' when Node does not know the number. */
export function errnoName(errno: number): string {
  try {
    return util.getSystemErrorName(-Math.abs(errno));
  } catch {
    return `E${errno}`;
  }
}

export function ioError(errno: number, what: string): CisternError {
  const name = errnoName(errno);
  return fromErrno(name, `${what} failed: ${name}`, { errno });
}

/** Why open() failed, said so that an operator knows what to change. */
export function openError(devicePath: string, error: unknown): CisternError {
  if (!isNativeSyscallError(error)) {
    return new CisternError('EIO', `cannot open ${devicePath}: ${String(error)}`, error);
  }
  const name = errnoName(error.errno);
  const why =
    'does not support O_DIRECT; put disks on a filesystem that does (ext4, xfs, btrfs) ' +
    'or on a raw block device';
  if (error.reason === 'tmpfs') {
    return new CisternError(
      'ENOTSUP',
      `${devicePath} is on tmpfs or ramfs, which does not support real O_DIRECT: data stays ` +
        'in memory and would not survive a crash; put disks on a filesystem that does ' +
        '(ext4, xfs, btrfs) or on a raw block device',
      error,
    );
  }
  if (error.reason === 'no-direct-io' || (error.syscall === 'open' && name === 'EINVAL')) {
    return new CisternError('ENOTSUP', `${devicePath}: its filesystem ${why}`, error);
  }
  if (error.reason === 'not-block-or-file') {
    return new CisternError(
      'EINVAL',
      `${devicePath} is neither a regular file nor a block device`,
      error,
    );
  }
  return fromErrno(name, `cannot open ${devicePath}: ${error.syscall}: ${name}`, error);
}
