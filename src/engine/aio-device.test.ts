// Proves the AIO device's data path on a real file opened with O_DIRECT: data written
// at random aligned offsets reads back exactly; hundreds of concurrent I/Os (beyond the
// queue depth) all complete correctly; bad arguments, reads past the end and short
// reads fail with typed errors; tmpfs is refused by name; close waits for I/O in
// flight; a closed or read-only device refuses what it must.

import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { test } from 'node:test';
import { isCisternError } from '../util/errors';
import { Random } from '../util/random';
import { openDevice } from './aio-device';
import { liveEngines } from './native';
import { fillPattern, isMemoryFilesystem, matchesPattern, withScratchDir } from './testing';

const MiB = 2 ** 20;
const blockBytes = 4096;

test('writes at random aligned offsets read back exactly', async () => {
  await withScratchDir(async (directory) => {
    const sizeBytes = 16 * MiB;
    const device = await openDevice(path.join(directory, 'disk'), { create: sizeBytes });
    const model = new Uint8Array(sizeBytes);
    const random = new Random(7);
    for (let round = 0; round < 200; round++) {
      const blocks = random.range(1, 16);
      const offset = random.int(sizeBytes / blockBytes - blocks + 1) * blockBytes;
      const data = device.allocate(blocks * blockBytes);
      fillPattern(data, round);
      await device.write(data, offset);
      model.set(data, offset);
    }
    const whole = device.allocate(sizeBytes);
    await device.read(whole, 0);
    assert.ok(Buffer.from(whole).equals(Buffer.from(model)), 'device content differs from model');
    await device.close();
  });
});

test('1024 concurrent I/Os at queue depth 256 all complete with the right data', async () => {
  await withScratchDir(async (directory) => {
    const ios = 1024;
    const device = await openDevice(path.join(directory, 'disk'), {
      create: ios * blockBytes,
      queueDepth: 256,
    });
    const buffers = Array.from({ length: ios }, (_, index) => {
      const buffer = device.allocate(blockBytes);
      fillPattern(buffer, index + 1);
      return buffer;
    });
    await Promise.all(buffers.map((buffer, index) => device.write(buffer, index * blockBytes)));
    assert.ok(device.pending === 0, 'writes left pending');
    const readBack = buffers.map(() => device.allocate(blockBytes));
    await Promise.all(readBack.map((buffer, index) => device.read(buffer, index * blockBytes)));
    readBack.forEach((buffer, index) => {
      assert.ok(matchesPattern(buffer, index + 1), `block ${index} has the wrong data`);
    });
    await device.close();
  });
});

test('a FUA write and a flush round-trip', async () => {
  await withScratchDir(async (directory) => {
    const device = await openDevice(path.join(directory, 'disk'), { create: MiB });
    const data = device.allocate(2 * blockBytes);
    fillPattern(data, 3);
    await device.write(data, blockBytes, { fua: true });
    await device.flush();
    await device.close();
    const reopened = await openDevice(path.join(directory, 'disk'), { readOnly: true });
    const readBack = reopened.allocate(2 * blockBytes);
    await reopened.read(readBack, blockBytes);
    assert.ok(matchesPattern(readBack, 3), 'FUA write did not read back');
    await reopened.flush(); // a read-only device can still be flushed
    await reopened.close();
  });
});

test('reads and writes past the end are rejected with EINVAL', async () => {
  await withScratchDir(async (directory) => {
    const device = await openDevice(path.join(directory, 'disk'), { create: MiB });
    const buffer = device.allocate(2 * blockBytes);
    await assert.rejects(device.read(buffer, MiB - blockBytes), (error) =>
      isCisternError(error, 'EINVAL'),
    );
    await assert.rejects(device.write(buffer, MiB), (error) => isCisternError(error, 'EINVAL'));
    await device.close();
  });
});

test('a short read (the file shrank under the device) is EIO, not zeros', async () => {
  await withScratchDir(async (directory) => {
    const file = path.join(directory, 'disk');
    const device = await openDevice(file, { create: MiB });
    fs.truncateSync(file, MiB / 2);
    const buffer = device.allocate(blockBytes);
    await assert.rejects(device.read(buffer, MiB - blockBytes), (error) =>
      isCisternError(error, 'EIO'),
    );
    await device.close();
  });
});

test('misaligned offsets, lengths and buffer addresses are rejected with EINVAL', async () => {
  await withScratchDir(async (directory) => {
    const device = await openDevice(path.join(directory, 'disk'), { create: MiB });
    const aligned = device.allocate(2 * blockBytes);
    const isInvalid = (error: unknown): boolean => isCisternError(error, 'EINVAL');
    await assert.rejects(device.read(aligned, 100), isInvalid);
    await assert.rejects(device.read(aligned.subarray(0, 100), 0), isInvalid);
    await assert.rejects(device.write(aligned, -blockBytes), isInvalid);
    await assert.rejects(device.write(aligned, 1.5), isInvalid);
    await assert.rejects(device.read(aligned.subarray(0, 0), 0), isInvalid);
    // Only the addon sees addresses: a view 16 bytes into an aligned buffer fails there.
    const shifted = device.allocate(blockBytes + 512).subarray(16, 16 + blockBytes);
    await assert.rejects(device.read(shifted, 0), (error: unknown) => {
      return isInvalid(error) && /not aligned/.test((error as Error).message);
    });
    await device.punchHole(0, blockBytes); // the device still works after refusals
    await device.close();
  });
});

test('a file on tmpfs is refused with ENOTSUP naming the path', async (context) => {
  if (!fs.existsSync('/dev/shm') || !isMemoryFilesystem('/dev/shm')) {
    context.skip('/dev/shm is not tmpfs here');
    return;
  }
  const file = path.join('/dev/shm', `cistern-test-${process.pid}`);
  await assert.rejects(openDevice(file, { create: MiB }), (error: unknown) => {
    return isCisternError(error, 'ENOTSUP') && error.message.includes(file);
  });
  assert.ok(!fs.existsSync(file), 'the refused file was left behind');
});

test('close waits for every I/O in flight, then releases the engine', async () => {
  await withScratchDir(async (directory) => {
    const before = liveEngines();
    const device = await openDevice(path.join(directory, 'disk'), {
      create: 4 * MiB,
      queueDepth: 32,
    });
    const events: string[] = [];
    const writes = Array.from({ length: 256 }, (_, index) => {
      const buffer = device.allocate(blockBytes);
      fillPattern(buffer, index);
      return device.write(buffer, index * blockBytes).then(() => events.push('write'));
    });
    const closed = device.close().then(() => events.push('close'));
    await Promise.all([...writes, closed]);
    assert.equal(events.length, 257);
    assert.equal(events.at(-1), 'close', 'close resolved before a write');
    assert.equal(liveEngines(), before);
  });
});

test('after close, I/O fails with CLOSED and close is idempotent', async () => {
  await withScratchDir(async (directory) => {
    const device = await openDevice(path.join(directory, 'disk'), { create: MiB });
    const buffer = device.allocate(blockBytes);
    await device.close();
    await device.close();
    const isClosed = (error: unknown): boolean => isCisternError(error, 'CLOSED');
    await assert.rejects(device.read(buffer, 0), isClosed);
    await assert.rejects(device.flush(), isClosed);
    await assert.rejects(device.punchHole(0, blockBytes), isClosed);
  });
});

test('a read-only device refuses writes, punch and zero with EROFS', async () => {
  await withScratchDir(async (directory) => {
    const file = path.join(directory, 'disk');
    await (await openDevice(file, { create: MiB })).close();
    const device = await openDevice(file, { readOnly: true });
    const buffer = device.allocate(blockBytes);
    const isReadOnly = (error: unknown): boolean => isCisternError(error, 'EROFS');
    await assert.rejects(device.write(buffer, 0), isReadOnly);
    await assert.rejects(device.punchHole(0, blockBytes), isReadOnly);
    await assert.rejects(device.zeroRange(0, blockBytes), isReadOnly);
    await device.read(buffer, 0);
    await device.close();
  });
});

test('create opens an existing file of the same size and refuses another size', async () => {
  await withScratchDir(async (directory) => {
    const file = path.join(directory, 'disk');
    await (await openDevice(file, { create: MiB })).close();
    const again = await openDevice(file, { create: MiB });
    assert.equal(again.size, MiB);
    await again.close();
    await assert.rejects(openDevice(file, { create: 2 * MiB }), (error) =>
      isCisternError(error, 'EINVAL'),
    );
    await assert.rejects(openDevice(path.join(directory, 'missing')), (error) =>
      isCisternError(error, 'ENOENT'),
    );
  });
});

test('the alignment is discovered from the kernel, not assumed', async () => {
  await withScratchDir(async (directory) => {
    const device = await openDevice(path.join(directory, 'disk'), { create: MiB });
    assert.ok(['statx', 'st_blksize'].includes(device.alignmentSource));
    assert.ok(device.alignment >= 512 && device.alignment <= 65536, `${device.alignment}`);
    assert.equal(device.alignment & (device.alignment - 1), 0, 'alignment not a power of two');
    assert.equal(device.isBlockDevice, false);
    await device.close();
  });
});
