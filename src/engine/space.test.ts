// Proves punch hole and zero range on a real file: a punched range reads as zeros and
// its blocks are freed (st_blocks drops); a zeroed range reads as zeros and stays
// allocated; both refuse misaligned or out-of-range arguments; empty ranges are no-ops.

import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { test } from 'node:test';
import { isCisternError } from '../util/errors';
import { type AioDevice, openDevice } from './aio-device';
import { fillPattern, isZero, matchesPattern, withScratchDir } from './testing';

const MiB = 2 ** 20;

async function writeAll(device: AioDevice, sizeBytes: number): Promise<void> {
  const data = device.allocate(sizeBytes);
  fillPattern(data, 11);
  await device.write(data, 0);
  await device.flush();
}

test('punch hole reads back zeros and frees the blocks', async () => {
  await withScratchDir(async (directory) => {
    const file = path.join(directory, 'disk');
    const device = await openDevice(file, { create: 4 * MiB });
    await writeAll(device, 4 * MiB);
    const blocksBefore = fs.statSync(file).blocks;
    await device.punchHole(MiB, 2 * MiB);
    const blocksAfter = fs.statSync(file).blocks;
    // st_blocks counts 512-byte units: 2 MiB is 4096 of them.
    assert.ok(blocksBefore - blocksAfter >= 4096, `st_blocks ${blocksBefore} -> ${blocksAfter}`);
    const readBack = device.allocate(4 * MiB);
    await device.read(readBack, 0);
    assert.ok(isZero(readBack.subarray(MiB, 3 * MiB)), 'punched range is not zero');
    const edges = new Uint8Array(4 * MiB);
    fillPattern(edges, 11);
    assert.ok(Buffer.from(readBack.subarray(0, MiB)).equals(edges.subarray(0, MiB)));
    assert.ok(Buffer.from(readBack.subarray(3 * MiB)).equals(edges.subarray(3 * MiB)));
    await device.close();
  });
});

test('zero range reads back zeros and keeps the blocks allocated', async () => {
  await withScratchDir(async (directory) => {
    const file = path.join(directory, 'disk');
    const device = await openDevice(file, { create: 4 * MiB });
    await writeAll(device, 4 * MiB);
    const blocksBefore = fs.statSync(file).blocks;
    await device.zeroRange(MiB, MiB);
    assert.equal(fs.statSync(file).blocks, blocksBefore, 'zero range changed the allocation');
    const readBack = device.allocate(4 * MiB);
    await device.read(readBack, 0);
    assert.ok(isZero(readBack.subarray(MiB, 2 * MiB)), 'zeroed range is not zero');
    assert.ok(!isZero(readBack.subarray(0, MiB)), 'zero range spilled before the range');
    assert.ok(!isZero(readBack.subarray(2 * MiB, 3 * MiB)), 'zero range spilled after it');
    await device.close();
  });
});

test('a punched range can be written again', async () => {
  await withScratchDir(async (directory) => {
    const device = await openDevice(path.join(directory, 'disk'), { create: MiB });
    await writeAll(device, MiB);
    await device.punchHole(0, MiB);
    const data = device.allocate(8192);
    fillPattern(data, 5);
    await device.write(data, 4096);
    const readBack = device.allocate(8192);
    await device.read(readBack, 4096);
    assert.ok(matchesPattern(readBack, 5));
    await device.close();
  });
});

test('misaligned or out-of-range punch and zero are rejected; empty ranges do nothing', async () => {
  await withScratchDir(async (directory) => {
    const device = await openDevice(path.join(directory, 'disk'), { create: MiB });
    const isInvalid = (error: unknown): boolean => isCisternError(error, 'EINVAL');
    await assert.rejects(device.punchHole(100, 4096), isInvalid);
    await assert.rejects(device.zeroRange(0, 100), isInvalid);
    await assert.rejects(device.punchHole(MiB - 4096, 8192), isInvalid);
    await assert.rejects(device.zeroRange(-4096, 4096), isInvalid);
    await device.punchHole(4096, 0);
    await device.zeroRange(MiB, 0);
    await device.close();
  });
});
