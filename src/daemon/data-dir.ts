// What a running daemon leaves in its data directory for others to find:
//  - daemon.pid: the lock. Created atomically (written whole to a temp file, then
//    hard-linked into place, which fails if it exists), it names the owner's pid and the
//    kernel's start time of that process, so a pid reused by an unrelated process after a
//    crash is not mistaken for a live daemon.
//  - admin.json (mode 0600): the admin API's address and bearer token, the pid and the
//    NBD address. Written (atomically, by rename) only once everything listens, removed on
//    shutdown; the CLI reads it to find and authenticate to the daemon. File permissions
//    are the access control: whoever can read the data dir's admin.json may administer.

import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { CisternError, fromErrno } from '../util/errors';

export const PID_FILE_NAME = 'daemon.pid';
export const ADMIN_FILE_NAME = 'admin.json';
/** Bytes of randomness in the admin token: 256 bits, beyond guessing. */
export const ADMIN_TOKEN_BYTES = 32;
/**
 * Attempts to take the lock: each failed one removed a stale pid file, so more than a few
 * means something keeps recreating it, and we give up rather than loop.
 */
const LOCK_ATTEMPTS_MAX = 3;
/** admin.json and daemon.pid are tiny; anything bigger is not ours. */
const CONTROL_FILE_MAX_BYTES = 64 * 1024;

export interface AdminFile {
  /** HOST:PORT a client on this host connects to. */
  address: string;
  token: string;
  pid: number;
  nbd?: string;
  /** The iSCSI portal, HOST:PORT, when the daemon serves iSCSI. */
  iscsi?: string;
}

interface PidFile {
  pid: number;
  /** Field 22 of /proc/PID/stat (clock ticks since boot); absent where there is no /proc. */
  startTime?: string;
}

export function newAdminToken(): string {
  return crypto.randomBytes(ADMIN_TOKEN_BYTES).toString('hex');
}

function errnoOf(error: unknown): string | undefined {
  return (error as NodeJS.ErrnoException | undefined)?.code;
}

function readSmallFile(file: string): string | undefined {
  try {
    const stat = fs.statSync(file);
    if (stat.size > CONTROL_FILE_MAX_BYTES) return undefined;
    return fs.readFileSync(file, 'utf8');
  } catch (error) {
    if (errnoOf(error) === 'ENOENT') return undefined;
    throw fromErrno(errnoOf(error) ?? 'EIO', `cannot read ${file}: ${String(error)}`, error);
  }
}

/** The kernel's start time of a process, or undefined where /proc cannot tell. */
export function processStartTime(pid: number): string | undefined {
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    // The command name (field 2) is in parentheses and may contain spaces and ')'.
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return fields[19]; // field 22 overall; fields[0] is field 3
  } catch {
    return undefined;
  }
}

/** Whether `pid` is alive and, when its start time was recorded, still the same process. */
export function isProcessAlive(pid: number, startTime?: string): boolean {
  if (!Number.isSafeInteger(pid) || pid <= 0) return false;
  try {
    process.kill(pid, 0);
  } catch (error) {
    // EPERM: it exists but belongs to someone else — alive all the same.
    if (errnoOf(error) !== 'EPERM') return false;
  }
  if (startTime === undefined) return true;
  const current = processStartTime(pid);
  return current === undefined || current === startTime;
}

function parsePidFile(text: string | undefined): PidFile | undefined {
  if (text === undefined) return undefined;
  try {
    const value = JSON.parse(text) as Partial<PidFile>;
    if (typeof value.pid !== 'number' || !Number.isSafeInteger(value.pid)) return undefined;
    const startTime = typeof value.startTime === 'string' ? value.startTime : undefined;
    return { pid: value.pid, startTime };
  } catch {
    return undefined;
  }
}

/** Writes `text` to `file` whole or not at all: a reader never sees half of it. */
function writeAtomically(file: string, text: string, mode: number, replace: boolean): void {
  const temporary = `${file}.${process.pid}.${crypto.randomBytes(4).toString('hex')}.tmp`;
  fs.writeFileSync(temporary, text, { mode, flag: 'wx' });
  try {
    if (replace) fs.renameSync(temporary, file);
    else fs.linkSync(temporary, file); // EEXIST if someone holds it
  } finally {
    if (!replace) fs.rmSync(temporary, { force: true });
  }
}

export class DataDirLock {
  private released = false;
  private constructor(
    readonly dir: string,
    private readonly self: PidFile,
  ) {}

  /**
   * Takes the data dir for this process, or throws EEXIST naming the live daemon that
   * holds it. A pid file left by a dead process is removed (and reported via onStale).
   * Two daemons racing over the same stale file could both remove it; the datastore's own
   * LevelDB lock is the backstop for that window.
   */
  static acquire(dir: string, onStale: (pid: number) => void = () => {}): DataDirLock {
    const file = path.join(dir, PID_FILE_NAME);
    const self: PidFile = { pid: process.pid, startTime: processStartTime(process.pid) };
    for (let attempt = 0; attempt < LOCK_ATTEMPTS_MAX; attempt += 1) {
      try {
        writeAtomically(file, JSON.stringify(self) + '\n', 0o644, false);
        return new DataDirLock(dir, self);
      } catch (error) {
        if (errnoOf(error) !== 'EEXIST') {
          throw fromErrno(errnoOf(error) ?? 'EIO', `cannot lock ${dir}: ${String(error)}`, error);
        }
      }
      const owner = parsePidFile(readSmallFile(file));
      if (owner !== undefined && isProcessAlive(owner.pid, owner.startTime)) {
        throw new CisternError(
          'EEXIST',
          `another daemon (pid ${owner.pid}) is running for ${dir}; stop it first`,
        );
      }
      onStale(owner?.pid ?? 0);
      fs.rmSync(file, { force: true });
    }
    throw new CisternError('EEXIST', `cannot lock ${dir}: ${file} keeps reappearing`);
  }

  /** Removes the pid file if it is still ours. Idempotent. */
  release(): void {
    if (this.released) return;
    this.released = true;
    const file = path.join(this.dir, PID_FILE_NAME);
    const owner = parsePidFile(readSmallFile(file));
    if (owner?.pid === this.self.pid && owner.startTime === this.self.startTime) {
      fs.rmSync(file, { force: true });
    }
  }
}

export function writeAdminFile(dir: string, contents: AdminFile): void {
  writeAtomically(
    path.join(dir, ADMIN_FILE_NAME),
    JSON.stringify(contents, null, 2) + '\n',
    0o600,
    true,
  );
}

export function removeAdminFile(dir: string): void {
  fs.rmSync(path.join(dir, ADMIN_FILE_NAME), { force: true });
}

/** The admin file, or undefined if there is none. Throws CORRUPT if it is not ours. */
export function readAdminFile(dir: string): AdminFile | undefined {
  const file = path.join(dir, ADMIN_FILE_NAME);
  const text = readSmallFile(file);
  if (text === undefined) return undefined;
  const corrupt = (): CisternError =>
    new CisternError('CORRUPT', `${file} is not a Cistern admin file; remove it`);
  let value: Partial<AdminFile>;
  try {
    value = JSON.parse(text) as Partial<AdminFile>;
  } catch {
    throw corrupt();
  }
  if (
    typeof value.address !== 'string' ||
    typeof value.token !== 'string' ||
    typeof value.pid !== 'number' ||
    (value.nbd !== undefined && typeof value.nbd !== 'string') ||
    (value.iscsi !== undefined && typeof value.iscsi !== 'string')
  ) {
    throw corrupt();
  }
  return {
    address: value.address,
    token: value.token,
    pid: value.pid,
    nbd: value.nbd,
    ...(value.iscsi !== undefined ? { iscsi: value.iscsi } : {}),
  };
}
