// Proves a disk failing under client load loses nothing and the client never notices:
// fio (--ioengine=nbd, random writes of 4–128 KiB, 32 in flight) writes through the NBD
// server into a real datastore on three file disks while one disk starts failing every
// read, write, flush and discard part-way through the writes. fio sees no error and its
// crc32c verification of every block passes; status() reports the disk down and the
// pool degraded; after a restart (the disk stays out) fio's verify-only pass still finds
// every block, so what was acknowledged during the failure is on the surviving replica.

import { strict as assert } from 'node:assert';
import * as fs from 'node:fs';
import { after, test } from 'node:test';
import { NbdServer } from '../../src/frontend/nbd/server';
import { BlockDevice } from '../../src/store/device';
import { FaultyDevice } from '../../src/store/faulty-device';
import { Datastore } from '../../src/volume/datastore';
import { testDatastore } from '../datastore/helpers';
import { DATASTORE_DISK_BYTES, DATASTORE_DISK_COUNT } from './backends';
import { MiB, fioVerify, tempDir } from './helpers';

const FAILING_DISK = 1;
/** Writes the failing disk takes from fio before it fails: well inside the write phase. */
const WRITES_BEFORE_FAILURE = 150;
const VOLUME_BYTES = 128 * MiB;
const FIO_BYTES = 64 * MiB;

/** A device that fails everything once it has taken `writesBeforeFailure` writes after arm(). */
class FailingAfterWrites extends FaultyDevice {
  private writesLeft: number | undefined;

  arm(writesBeforeFailure: number): void {
    this.writesLeft = writesBeforeFailure;
  }

  get failed(): boolean {
    return this.writesLeft === 0;
  }

  override async write(...args: Parameters<BlockDevice['write']>): Promise<void> {
    if (this.writesLeft !== undefined && this.writesLeft > 0 && (this.writesLeft -= 1) === 0) {
      this.failAlways('read', 'write', 'flush', 'punchHole', 'zeroRange');
    }
    return super.write(...args);
  }
}

/**
 * A healthy disk that counts the writes it takes once `after()` says so: proof that the
 * failure hit the load. (Counting writes the failing disk was still sent after it failed
 * depended on a race: whether any reached it before it was taken out, which on a busy
 * machine none sometimes did.)
 */
class CountingWrites extends FaultyDevice {
  writesAfter = 0;

  constructor(
    inner: BlockDevice,
    private readonly after: () => boolean,
  ) {
    super(inner);
  }

  override async write(...args: Parameters<BlockDevice['write']>): Promise<void> {
    if (this.after()) this.writesAfter += 1;
    return super.write(...args);
  }
}

const dir = tempDir('disk-failure');
const scratch = testDatastore(DATASTORE_DISK_COUNT, DATASTORE_DISK_BYTES);

after(() => {
  fs.rmSync(dir, { recursive: true, force: true });
  scratch.cleanup();
});

async function serve(
  datastore: Datastore,
): Promise<{ server: NbdServer; uri: string; errors: unknown[] }> {
  const errors: unknown[] = [];
  const server = new NbdServer(datastore, { onUnexpectedError: (error) => errors.push(error) });
  const { port } = await server.listen('127.0.0.1', 0);
  return { server, uri: `nbd://127.0.0.1:${port}/v`, errors };
}

test('fio randwrite + crc32c verify passes while a disk fails under it; data survives a restart', async () => {
  let failing: FailingAfterWrites | undefined;
  const survivors: CountingWrites[] = [];
  let datastore = await scratch.open({
    wrapDevice: (id, device) => {
      if (id !== FAILING_DISK) {
        const counting = new CountingWrites(device, () => failing?.failed === true);
        survivors.push(counting);
        return counting;
      }
      failing = new FailingAfterWrites(device);
      return failing;
    },
  });
  try {
    assert.ok(failing !== undefined, 'the failing disk was opened');
    await datastore.createVolume({ name: 'v', sizeBytes: VOLUME_BYTES });
    const served = await serve(datastore);
    try {
      failing.arm(WRITES_BEFORE_FAILURE);
      const job = await fioVerify(served.uri, FIO_BYTES, { cwd: dir });
      assert.equal(job.error, 0);
      assert.ok(job.writtenBytes >= FIO_BYTES, `wrote only ${job.writtenBytes} bytes`);
      assert.ok(job.readBytes >= FIO_BYTES, `verified only ${job.readBytes} bytes`);
    } finally {
      await served.server.close();
    }
    assert.deepEqual(served.errors, []);
    assert.ok(failing.faults > 0, 'the disk never failed');
    const writesAfter = survivors.reduce((sum, disk) => sum + disk.writesAfter, 0);
    assert.ok(writesAfter > 0, 'the disk failed after the load had ended');

    const status = await datastore.status();
    assert.equal(status.health, 'degraded');
    assert.equal(status.disks.find((disk) => disk.id === FAILING_DISK)?.up, false);
    assert.deepEqual(
      status.disks.filter((disk) => disk.up).map((disk) => disk.id),
      [0, 1, 2].filter((id) => id !== FAILING_DISK),
    );
    assert.match(status.messages.join('\n'), new RegExp(`disk ${FAILING_DISK} .* out of service`));
    await datastore.close();

    // Restart without the fault: the disk stays out, the data is on the other replicas.
    datastore = await scratch.open();
    assert.equal((await datastore.status()).health, 'degraded');
    const again = await serve(datastore);
    try {
      const check = await fioVerify(again.uri, FIO_BYTES, { cwd: dir, verifyOnly: true });
      assert.equal(check.error, 0);
      assert.ok(check.readBytes >= FIO_BYTES, `verified only ${check.readBytes} bytes`);
    } finally {
      await again.server.close();
    }
    assert.deepEqual(again.errors, []);
  } finally {
    await datastore.close();
  }
});
