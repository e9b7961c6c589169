// Proves the in-memory provider keeps the VolumeHandle contract the NBD server relies
// on: sparse reads of zeros, unaligned writes, trim and write-zeroes with and without
// NO_HOLE, block status reporting holes, range and read-only checks with the right
// codes, a capacity bound, and one shared state across handles (multi-connection).

import { strict as assert } from 'node:assert';
import { test } from 'node:test';
import { isCisternError } from '../util/errors';
import { MEMORY_BLOCK_BYTES, MemoryExportProvider } from './memory-volume';

const KiB = 1024;

async function fresh(sizeBytes = 1024 * KiB) {
  const provider = new MemoryExportProvider();
  provider.create('v', sizeBytes, { description: 'test' });
  return { provider, handle: await provider.open('v', { readOnly: false }) };
}

test('unwritten ranges read as zeros and take no space', async () => {
  const { provider, handle } = await fresh();
  assert.ok((await handle.read(1000, 10_000)).every((byte) => byte === 0));
  assert.equal(provider.allocatedBytesTotal, 0);
});

test('an unaligned write spanning blocks reads back exactly', async () => {
  const { handle } = await fresh();
  const data = Buffer.alloc(10_000, 0x5a);
  await handle.write(4000, data);
  assert.ok(Buffer.from(await handle.read(4000, 10_000)).equals(data));
  const around = Buffer.from(await handle.read(3999, 10_002));
  assert.equal(around[0], 0);
  assert.equal(around[10_001], 0);
});

test('block status reports holes and data, merged, covering the range', async () => {
  const { handle } = await fresh();
  await handle.write(8 * KiB, Buffer.alloc(8 * KiB, 1));
  const extents = await handle.blockStatus(0, 64 * KiB);
  assert.deepEqual(extents, [
    { length: 8 * KiB, hole: true, zero: true },
    { length: 8 * KiB, hole: false, zero: false },
    { length: 48 * KiB, hole: true, zero: true },
  ]);
});

test('trim frees whole blocks and zeroes partial ones', async () => {
  const { provider, handle } = await fresh();
  await handle.write(0, Buffer.alloc(16 * KiB, 7));
  await handle.trim(2 * KiB, 8 * KiB);
  assert.equal(provider.allocatedBlockCount('v'), 3); // block 1 freed, 0 and 2 partly zeroed
  const data = Buffer.from(await handle.read(0, 16 * KiB));
  assert.ok(data.subarray(2 * KiB, 10 * KiB).every((byte) => byte === 0));
  assert.ok(data.subarray(10 * KiB).every((byte) => byte === 7));
});

test('write zeroes with noHole keeps the range allocated and reports it as zero', async () => {
  const { provider, handle } = await fresh();
  await handle.writeZeroes(0, 8 * KiB, { noHole: true });
  assert.equal(provider.allocatedBlockCount('v'), 2);
  assert.deepEqual(await handle.blockStatus(0, 8 * KiB), [
    { length: 8 * KiB, hole: false, zero: true },
  ]);
  await handle.writeZeroes(0, 8 * KiB);
  assert.equal(provider.allocatedBlockCount('v'), 0);
});

test('fast zero fails with ENOTSUP on a volume that cannot zero fast', async () => {
  const provider = new MemoryExportProvider();
  provider.create('slow', 64 * KiB, { fastZero: false });
  const handle = await provider.open('slow', { readOnly: false });
  await assert.rejects(handle.writeZeroes(0, 4096, { fastZero: true }), (error) =>
    isCisternError(error, 'ENOTSUP'),
  );
  await handle.writeZeroes(0, 4096);
});

test('ranges beyond the end fail: EINVAL for reads, ENOSPC for writes', async () => {
  const { handle } = await fresh(64 * KiB);
  await assert.rejects(handle.read(64 * KiB - 1, 2), (error) => isCisternError(error, 'EINVAL'));
  await assert.rejects(handle.write(64 * KiB, Buffer.alloc(1)), (error) =>
    isCisternError(error, 'ENOSPC'),
  );
  await assert.rejects(handle.read(-1, 1), (error) => isCisternError(error, 'EINVAL'));
});

test('read-only handles and read-only volumes refuse writes with EROFS', async () => {
  const provider = new MemoryExportProvider();
  provider.create('v', 64 * KiB);
  provider.create('ro', 64 * KiB, { readOnly: true });
  const readOnlyHandle = await provider.open('v', { readOnly: true });
  const readOnlyVolume = await provider.open('ro', { readOnly: false });
  assert.equal(readOnlyVolume.readOnly, true);
  for (const handle of [readOnlyHandle, readOnlyVolume]) {
    await assert.rejects(handle.write(0, Buffer.alloc(1)), (error) =>
      isCisternError(error, 'EROFS'),
    );
    await assert.rejects(handle.trim(0, 1), (error) => isCisternError(error, 'EROFS'));
    await assert.rejects(handle.writeZeroes(0, 1), (error) => isCisternError(error, 'EROFS'));
  }
});

test('handles on one volume share state; unknown volumes are UNKNOWN_VOLUME', async () => {
  const { provider, handle } = await fresh();
  const other = await provider.open('v', { readOnly: false });
  await handle.write(0, Buffer.from('shared'));
  assert.equal(Buffer.from(await other.read(0, 6)).toString(), 'shared');
  await assert.rejects(provider.open('nope', { readOnly: false }), (error) =>
    isCisternError(error, 'UNKNOWN_VOLUME'),
  );
});

test('the capacity bound turns allocation beyond it into ENOSPC', async () => {
  const provider = new MemoryExportProvider({ capacityBytes: 2 * MEMORY_BLOCK_BYTES });
  provider.create('v', 1024 * KiB);
  const handle = await provider.open('v', { readOnly: false });
  await handle.write(0, Buffer.alloc(2 * MEMORY_BLOCK_BYTES, 1));
  await assert.rejects(handle.write(1024 * KiB - 1, Buffer.alloc(1)), (error) =>
    isCisternError(error, 'ENOSPC'),
  );
});

test('a closed handle refuses I/O with CLOSED', async () => {
  const { handle } = await fresh();
  await handle.close();
  await assert.rejects(handle.read(0, 1), (error) => isCisternError(error, 'CLOSED'));
});
