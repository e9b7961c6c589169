// The cluster secret: 32 random bytes that peers prove they hold (HMAC challenge) before
// any request is served. `cistern cluster init` writes it to a file only its owner can
// read; the cluster state keeps only a fingerprint, so a daemon started with the wrong
// file is refused at start without the secret itself ever being stored in etcd.

import crypto from 'node:crypto';
import fs from 'node:fs';
import { assert } from '../util/assert';
import { CisternError, fromErrno } from '../util/errors';

export const SECRET_BYTES = 32;
/** Fixed input of the fingerprint HMAC: a digest of the secret, never the secret. */
const FINGERPRINT_LABEL = 'cistern-fingerprint';
/** Mode bits that would let anyone but the owner read or change the file. */
const GROUP_OTHER_MODE_BITS = 0o077;
/** The file holds the secret as hex plus a newline; anything much longer is not ours. */
const SECRET_FILE_MAX_BYTES = 4096;

export function newSecret(): Buffer {
  const secret = crypto.randomBytes(SECRET_BYTES);
  assert(secret.length === SECRET_BYTES, 'short random secret');
  return secret;
}

/** hex(HMAC-SHA256(secret, "cistern-fingerprint")): safe to store and to compare openly. */
export function secretFingerprint(secret: Buffer): string {
  assert(secret.length === SECRET_BYTES, `secret must be ${SECRET_BYTES} bytes`);
  return crypto.createHmac('sha256', secret).update(FINGERPRINT_LABEL).digest('hex');
}

/**
 * Writes the secret (hex, one line) to a new file with mode 0600. Refuses to overwrite
 * an existing file: that file may hold the secret of a running cluster.
 */
export function writeSecretFile(filePath: string, secret: Buffer): void {
  assert(secret.length === SECRET_BYTES, `secret must be ${SECRET_BYTES} bytes`);
  let fd: number;
  try {
    fd = fs.openSync(filePath, 'wx', 0o600);
  } catch (error) {
    const errno = (error as NodeJS.ErrnoException).code ?? 'EIO';
    if (errno === 'EEXIST') {
      throw new CisternError(
        'EEXIST',
        `${filePath} already exists; it may hold another cluster's secret, so it is not ` +
          'overwritten (remove it or choose another --secret-file)',
      );
    }
    throw fromErrno(errno, `cannot create the secret file ${filePath}: ${String(error)}`, error);
  }
  try {
    fs.fchmodSync(fd, 0o600); // the umask may have narrowed it; never widened
    fs.writeSync(fd, secret.toString('hex') + '\n');
    fs.fsyncSync(fd);
  } finally {
    fs.closeSync(fd);
  }
}

/** Reads a secret file, refusing one that its group or others can read or write. */
export function readSecretFile(filePath: string): Buffer {
  let stat: fs.Stats;
  let text: string;
  try {
    stat = fs.statSync(filePath);
    if (stat.size > SECRET_FILE_MAX_BYTES) {
      throw new CisternError('EINVAL', `${filePath} is not a Cistern secret file (too long)`);
    }
    text = fs.readFileSync(filePath, 'utf8');
  } catch (error) {
    if (error instanceof CisternError) throw error;
    const errno = (error as NodeJS.ErrnoException).code ?? 'EIO';
    throw fromErrno(errno, `cannot read the secret file ${filePath}: ${String(error)}`, error);
  }
  if ((stat.mode & GROUP_OTHER_MODE_BITS) !== 0) {
    const mode = (stat.mode & 0o777).toString(8).padStart(4, '0');
    throw new CisternError(
      'EPERM',
      `${filePath} has mode ${mode}: the cluster secret must be readable by its owner only ` +
        `(run: chmod 600 ${filePath})`,
    );
  }
  const hex = text.trim();
  if (!/^[0-9a-f]+$/i.test(hex) || hex.length !== SECRET_BYTES * 2) {
    throw new CisternError(
      'EINVAL',
      `${filePath} is not a Cistern secret file (expected ${SECRET_BYTES * 2} hex digits)`,
    );
  }
  return Buffer.from(hex, 'hex');
}

/** Refuses a secret whose fingerprint is not the one the cluster was created with. */
export function checkSecret(secret: Buffer, expectedFingerprint: string | undefined): void {
  if (expectedFingerprint === undefined) return; // one-host datastores have no secret
  const actual = Buffer.from(secretFingerprint(secret), 'hex');
  const expected = Buffer.from(expectedFingerprint, 'hex');
  if (actual.length !== expected.length || !crypto.timingSafeEqual(actual, expected)) {
    throw new CisternError(
      'EPERM',
      'the secret file does not belong to this cluster (its fingerprint differs from the one ' +
        'stored by cistern cluster init)',
    );
  }
}
