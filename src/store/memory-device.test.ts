// Proves the test disks behave as the crash tests assume: MemoryDevice keeps flushed
// and FUA data across a crash, loses unflushed writes (all of them without a generator),
// may keep any one version per sector when a generator chooses (so torn writes happen),
// and dies at the crash; FaultyDevice fails exactly the operations it was told to;
// FileDevice round-trips through a real file and refuses unaligned or out-of-range I/O.

import { strict as assert } from 'node:assert';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { isCisternError } from '../util/errors';
import { Random } from '../util/random';
import { FaultyDevice } from './faulty-device';
import { FileDevice } from './file-device';
import { MemoryDevice } from './memory-device';
import { removeDir, tempDir } from './testing';

const SECTOR = 4096;
let root = '';

before(async () => {
  root = await tempDir('devices');
});
after(async () => {
  await removeDir(root);
});

async function sector(device: MemoryDevice | FileDevice, index: number): Promise<Buffer> {
  const buffer = Buffer.alloc(SECTOR);
  await device.read(buffer, index * SECTOR);
  return buffer;
}

test('memory device: flushed and FUA writes survive a crash, unflushed ones are lost', async () => {
  const device = new MemoryDevice(16 * SECTOR);
  await device.write(Buffer.alloc(SECTOR, 1), 0);
  await device.flush();
  await device.write(Buffer.alloc(SECTOR, 2), 0); // unflushed overwrite
  await device.write(Buffer.alloc(SECTOR, 3), SECTOR, { fua: true });
  await device.write(Buffer.alloc(SECTOR, 4), 2 * SECTOR); // unflushed
  assert.deepEqual(await sector(device, 0), Buffer.alloc(SECTOR, 2)); // reads see the cache
  const survivor = device.crash();
  assert.deepEqual(await sector(survivor, 0), Buffer.alloc(SECTOR, 1));
  assert.deepEqual(await sector(survivor, 1), Buffer.alloc(SECTOR, 3));
  assert.deepEqual(await sector(survivor, 2), Buffer.alloc(SECTOR));
  await assert.rejects(device.read(Buffer.alloc(SECTOR), 0), (error: unknown) =>
    isCisternError(error, 'EIO'),
  );
});

test('memory device: with a generator, a crash keeps a per-sector mix of versions (torn writes)', async () => {
  const outcomes = new Set<string>();
  for (let seed = 0; seed < 64; seed += 1) {
    const device = new MemoryDevice(16 * SECTOR);
    await device.write(Buffer.alloc(4 * SECTOR, 1), 0);
    await device.write(Buffer.alloc(4 * SECTOR, 2), 0);
    const survivor = device.crash(new Random(seed));
    const kept = [];
    for (let index = 0; index < 4; index += 1) {
      const value = (await sector(survivor, index))[0]!;
      assert.ok([0, 1, 2].includes(value), 'only versions written to this sector');
      assert.ok(
        (await sector(survivor, index)).every((byte) => byte === value),
        'sectors are atomic',
      );
      kept.push(value);
    }
    outcomes.add(kept.join(''));
  }
  assert.ok(outcomes.size > 10, `only ${outcomes.size} distinct crash outcomes`);
});

test('memory device: punched sectors read as zeros and stop counting as used', async () => {
  const device = new MemoryDevice(16 * SECTOR);
  await device.write(Buffer.alloc(3 * SECTOR, 9), 0);
  assert.equal(device.sectorsInUse(), 3);
  await device.punchHole(SECTOR, SECTOR);
  assert.equal(device.sectorsInUse(), 2);
  assert.deepEqual(await sector(device, 1), Buffer.alloc(SECTOR));
});

test('faulty device: fails the chosen operations, then heals', async () => {
  const device = new FaultyDevice(new MemoryDevice(16 * SECTOR));
  device.failNext('write', 2);
  await assert.rejects(device.write(Buffer.alloc(SECTOR), 0), (error: unknown) =>
    isCisternError(error, 'EIO'),
  );
  await assert.rejects(device.write(Buffer.alloc(SECTOR), 0), (error: unknown) =>
    isCisternError(error, 'EIO'),
  );
  await device.write(Buffer.alloc(SECTOR), 0);
  device.failAlways('read', 'flush');
  await assert.rejects(device.flush(), (error: unknown) => isCisternError(error, 'EIO'));
  device.heal();
  await device.flush();
  assert.equal(device.faults, 3);
});

test('file device: round-trips through a file, flushes, and refuses bad ranges', async () => {
  const path = join(root, 'disk.img');
  const device = await FileDevice.open(path, { sizeBytes: 64 * SECTOR });
  assert.equal(device.size, 64 * SECTOR);
  await device.write(Buffer.alloc(2 * SECTOR, 5), 4 * SECTOR, { fua: true });
  await device.punchHole(5 * SECTOR, SECTOR);
  await device.flush();
  await assert.rejects(device.read(Buffer.alloc(SECTOR), 64 * SECTOR), (error: unknown) =>
    isCisternError(error, 'EINVAL'),
  );
  await device.close();
  const reopened = await FileDevice.open(path);
  assert.deepEqual(await sector(reopened, 4), Buffer.alloc(SECTOR, 5));
  assert.deepEqual(await sector(reopened, 5), Buffer.alloc(SECTOR));
  await reopened.close();
});
