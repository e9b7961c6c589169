// Proves what the daemon leaves in its data dir is safe to rely on: the pid lock refuses
// a second owner while the first lives, is taken over from a dead process and from a pid
// that was reused by another process (start time differs), and is released only by its
// owner; admin.json is written whole with mode 0600 and a file that is not ours is
// reported as CORRUPT rather than trusted.

import { strict as assert } from 'node:assert';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterEach, beforeEach, test } from 'node:test';
import {
  ADMIN_FILE_NAME,
  DataDirLock,
  PID_FILE_NAME,
  isProcessAlive,
  newAdminToken,
  processStartTime,
  readAdminFile,
  removeAdminFile,
  writeAdminFile,
} from '../../src/daemon/data-dir';
import { isCisternError } from '../../src/util/errors';

let dir: string;

beforeEach(() => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'cistern-datadir-'));
});

afterEach(() => {
  fs.rmSync(dir, { recursive: true, force: true });
});

/** The pid of a process that has certainly exited. */
function deadPid(): number {
  const child = spawnSync(process.execPath, ['-e', 'process.stdout.write(String(process.pid))'], {
    encoding: 'utf8',
  });
  const pid = Number(child.stdout);
  assert.ok(pid > 0 && !isProcessAlive(pid));
  return pid;
}

test('the lock refuses a second owner while the first lives, and frees on release', () => {
  const lock = DataDirLock.acquire(dir);
  const owner = JSON.parse(fs.readFileSync(path.join(dir, PID_FILE_NAME), 'utf8'));
  assert.equal(owner.pid, process.pid);
  assert.throws(
    () => DataDirLock.acquire(dir),
    (error) =>
      isCisternError(error, 'EEXIST') &&
      /another daemon \(pid \d+\) is running/.test(error.message),
  );
  lock.release();
  assert.equal(fs.existsSync(path.join(dir, PID_FILE_NAME)), false);
  DataDirLock.acquire(dir).release();
});

test('a pid file left by a dead process is taken over and reported', () => {
  const pid = deadPid();
  fs.writeFileSync(path.join(dir, PID_FILE_NAME), JSON.stringify({ pid }));
  const stale: number[] = [];
  const lock = DataDirLock.acquire(dir, (stalePid) => stale.push(stalePid));
  assert.deepEqual(stale, [pid]);
  lock.release();
});

test('a live pid with another start time is a reused pid, not the owner', () => {
  assert.notEqual(processStartTime(process.pid), undefined, 'needs /proc');
  fs.writeFileSync(
    path.join(dir, PID_FILE_NAME),
    JSON.stringify({ pid: process.pid, startTime: '1' }),
  );
  const lock = DataDirLock.acquire(dir);
  lock.release();
});

test('an unreadable pid file is stale; release leaves a pid file that is not ours', () => {
  fs.writeFileSync(path.join(dir, PID_FILE_NAME), 'garbage');
  const lock = DataDirLock.acquire(dir);
  // Someone else took over (e.g. after we were presumed dead): release must not remove it.
  fs.writeFileSync(path.join(dir, PID_FILE_NAME), JSON.stringify({ pid: 1 }));
  lock.release();
  assert.equal(fs.existsSync(path.join(dir, PID_FILE_NAME)), true);
});

test('admin.json is written with mode 0600, read back, and removed', () => {
  const contents = {
    address: '127.0.0.1:10810',
    token: newAdminToken(),
    pid: process.pid,
    nbd: '127.0.0.1:10809',
  };
  assert.equal(contents.token.length, 64);
  writeAdminFile(dir, contents);
  const file = path.join(dir, ADMIN_FILE_NAME);
  assert.equal(fs.statSync(file).mode & 0o777, 0o600);
  assert.deepEqual(readAdminFile(dir), contents);
  // Rewriting replaces it atomically (no temporary files left beside it).
  writeAdminFile(dir, { ...contents, pid: 1 });
  assert.equal(readAdminFile(dir)?.pid, 1);
  assert.deepEqual(fs.readdirSync(dir), [ADMIN_FILE_NAME]);
  removeAdminFile(dir);
  assert.equal(readAdminFile(dir), undefined);
});

test('an admin.json that is not ours is CORRUPT, not trusted', () => {
  for (const text of ['{', '[]', '{"address": 1, "token": "x", "pid": 1}', '{"token": "x"}']) {
    fs.writeFileSync(path.join(dir, ADMIN_FILE_NAME), text);
    assert.throws(
      () => readAdminFile(dir),
      (error) => isCisternError(error, 'CORRUPT'),
    );
  }
});
