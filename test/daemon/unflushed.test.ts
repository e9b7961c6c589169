// Proves the real daemon (`cistern daemon` on two file disks: the default pool of size 2
// puts every change on both) takes a client that never flushes at scale: fio's NBD
// engine overwrites a small volume with ~100 000 random 4 KiB writes and no FLUSH in
// between, reads every block back (fio's crc32c verify, which also checks each block
// holds its latest write), then our client flushes. Every disk must stay up, the FLUSH
// must succeed, and the data must verify again after kill -9 and a restart; a second
// unflushed burst must survive a clean stop (whose own commit takes it all at once).
// *Why so many:* each change a disk takes journals its PG-log entry (and, past the
// log's bound, the one it trims) until the next commit; a journal spread into one call
// overflowed the stack at ~125 000 operations, every commit failed and every disk was
// taken out — what a 1 GiB perf/recovery run found, and no smaller test reached.

import { strict as assert } from 'node:assert';
import fs from 'node:fs';
import path from 'node:path';
import { after, test } from 'node:test';
import type { StatusReport } from '../../src/volume/admin';
import { scratchDir } from '../datastore/helpers';
import { fioVerify } from '../nbd/helpers';
import { cisternOk, killDaemons, RestartableDaemon } from './helpers';

const MiB = 2 ** 20;
const BLOCK_BYTES = 4096;
const VOLUME_NAME = 'v';
/** Two 4 MiB objects: every change lands in one of at most two PGs, whose logs trim. */
const VOLUME_BYTES = 8 * MiB;
/**
 * Writes per burst, none flushed. Each disk takes all of them (size 2 on two disks) and
 * journals two to three index operations for each: well past the ~125 000 arguments a
 * spread call took, with room to spare for an engine that allows a few more.
 */
const UNFLUSHED_WRITES = 100_000;
const DISK_BYTES = 256 * MiB;

const dirs: string[] = [];

after(async () => {
  await killDaemons();
  for (const dir of dirs) fs.rmSync(dir, { recursive: true, force: true });
});

/** fio over NBD: the burst of random 4 KiB overwrites with no flush, or only its verify. */
async function fio(host: RestartableDaemon, seed: number, verifyOnly = false): Promise<void> {
  const job = await fioVerify(host.uri(), VOLUME_BYTES, {
    cwd: host.dir,
    verifyOnly,
    overwrite: { writeBytes: UNFLUSHED_WRITES * BLOCK_BYTES, blockBytes: BLOCK_BYTES, seed },
  });
  assert.equal(job.error, 0, 'fio job error');
  assert.equal(job.writes, UNFLUSHED_WRITES, 'fio wrote (or replayed) the whole burst');
  assert.equal(job.readBytes, VOLUME_BYTES, 'fio verified every block');
}

async function flush(host: RestartableDaemon): Promise<void> {
  const client = await host.connect();
  try {
    await client.flush();
  } finally {
    await client.disconnect();
  }
}

/** Both disks up and in, the datastore healthy. */
async function assertHealthy(host: RestartableDaemon, when: string): Promise<void> {
  const status = JSON.parse(
    await cisternOk(['status', '--json', '--data-dir', host.dataDir]),
  ) as StatusReport;
  assert.equal(status.disks.length, 2, when);
  for (const disk of status.disks) {
    assert.ok(disk.up && disk.in, `${when}: disk ${disk.id} is ${JSON.stringify(disk)}`);
  }
  assert.equal(status.health, 'ok', `${when}: ${status.messages.join('; ')}`);
}

test('100 000 unflushed writes: flushed, they survive kill -9; a clean stop keeps the next 100 000', async () => {
  const dir = scratchDir('cistern-unflushed-');
  dirs.push(dir);
  const disks = [0, 1].flatMap((i) => ['--disk', `${path.join(dir, `d${i}.img`)}:${DISK_BYTES}`]);
  const host = new RestartableDaemon(dir, VOLUME_NAME, disks);
  await host.start();
  await host.createVolume(VOLUME_BYTES);

  await fio(host, 1); // its verify reads every block back before any flush
  await flush(host); // was: EIO, every disk taken out ('Maximum call stack size exceeded')
  await assertHealthy(host, 'after the flush');
  await host.stop('SIGKILL');
  await host.start();
  await assertHealthy(host, 'after kill -9 and a restart');
  await fio(host, 1, true); // the flushed writes survived the crash

  // No flush at all: the clean stop's own commit takes the whole burst.
  await fio(host, 2);
  await host.stop('SIGTERM');
  await host.start();
  await assertHealthy(host, 'after a clean stop and a restart');
  await fio(host, 2, true);
  await host.stop('SIGTERM');
});
