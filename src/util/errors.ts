// Typed errors for what the world can do to us. Each carries a stable `code` that
// callers, the CLI and the protocol front ends switch on; the message is for people.

export type CisternErrorCode =
  | 'EIO'
  | 'ENOSPC'
  | 'EINVAL'
  | 'ENOENT'
  | 'EEXIST'
  | 'EPERM'
  | 'ENOTSUP'
  | 'EROFS'
  | 'CORRUPT'
  | 'STALE_EPOCH'
  | 'UNKNOWN_VOLUME'
  | 'UNKNOWN_POOL'
  | 'PLACEMENT_IMPOSSIBLE'
  | 'BAD_REQUEST'
  | 'UNAVAILABLE'
  | 'CLOSED'
  /** A peer host could not be reached: its disks leave the acting set until it is back. */
  | 'UNREACHABLE';

export class CisternError extends Error {
  override name = 'CisternError';
  constructor(
    readonly code: CisternErrorCode,
    message: string,
    override readonly cause?: unknown,
  ) {
    super(message);
  }
}

export function isCisternError(error: unknown, code?: CisternErrorCode): error is CisternError {
  return error instanceof CisternError && (code === undefined || error.code === code);
}

const errnoCodes: Record<string, CisternErrorCode> = {
  EIO: 'EIO',
  ENOSPC: 'ENOSPC',
  EDQUOT: 'ENOSPC',
  EINVAL: 'EINVAL',
  ENOENT: 'ENOENT',
  EEXIST: 'EEXIST',
  EPERM: 'EPERM',
  EACCES: 'EPERM',
  EROFS: 'EROFS',
  EOPNOTSUPP: 'ENOTSUP',
  ENOTSUP: 'ENOTSUP',
};

/** The one place errno names become Cistern codes. Unknown errnos are I/O errors. */
export function fromErrno(errno: string, message: string, cause?: unknown): CisternError {
  return new CisternError(errnoCodes[errno] ?? 'EIO', message, cause);
}
