// Proves that reusing device buffers cannot leak data (DESIGN invariant 2): the cache
// hands back the same memory, dirty, and the store still returns zeros for every byte
// it did not read from its own blocks, and never writes a former user's bytes around a
// partial write. Also: leases are exact-length, single-release, and the cache bounded.

import { strict as assert } from 'node:assert';
import { after, before, test } from 'node:test';
import { AssertionError } from '../util/assert';
import {
  BUFFER_CLASS_CACHED_BYTES_MAX,
  BUFFER_CLASS_CACHED_COUNT_MAX,
  BufferCache,
} from './buffer-cache';
import type { BlockDevice } from './device';
import { HEADER_AREA_BYTES } from './layout';
import { MemoryDevice } from './memory-device';
import { ObjectStore } from './object-store';
import { removeDir, tempDir } from './testing';

const OBJECT_BYTES = 64 * 1024;
let root = '';

before(async () => {
  root = await tempDir('buffer-cache');
});
after(async () => {
  await removeDir(root);
});

test('a released buffer is handed out again, dirty, with the exact length asked', () => {
  const cache = new BufferCache((length) => new Uint8Array(length));
  const first = cache.takeDirty(12 * 1024);
  assert.equal(first.data.length, 12 * 1024);
  first.data.fill(0xee);
  first.release();
  const second = cache.takeDirty(16 * 1024); // the same 16 KiB class
  assert.equal(second.data.length, 16 * 1024);
  assert.equal(second.data.buffer, first.data.buffer);
  assert.equal(second.data[0], 0xee, 'reuse is dirty: callers must zero');
});

test('a lease released twice is a bug', () => {
  const cache = new BufferCache((length) => new Uint8Array(length));
  const lease = cache.takeDirty(4096);
  lease.release();
  assert.throws(() => lease.release(), AssertionError);
});

test('free buffers kept per class are bounded', () => {
  const cache = new BufferCache((length) => new Uint8Array(length));
  const small = Array.from({ length: BUFFER_CLASS_CACHED_COUNT_MAX + 10 }, () =>
    cache.takeDirty(4096),
  );
  for (const lease of small) lease.release();
  assert.equal(cache.cachedBytes, BUFFER_CLASS_CACHED_COUNT_MAX * 4096);
  const big = Array.from({ length: 40 }, () => cache.takeDirty(2 ** 20));
  for (const lease of big) lease.release();
  assert.equal(
    cache.cachedBytes - BUFFER_CLASS_CACHED_COUNT_MAX * 4096,
    BUFFER_CLASS_CACHED_BYTES_MAX,
  );
});

/** A memory disk that asks for staged copies, as an O_DIRECT device does. */
function stagingDevice(): BlockDevice {
  const inner = new MemoryDevice(HEADER_AREA_BYTES + 8 * OBJECT_BYTES);
  return Object.assign(inner, { allocate: (length: number) => new Uint8Array(length) });
}

test('reused buffers never expose another object’s bytes, on reads or around partial writes', async () => {
  const store = await ObjectStore.open({
    device: stagingDevice(),
    indexPath: `${root}/index`,
    objectSizeBytes: OBJECT_BYTES,
    format: true,
  });
  const secret = { pool: 1, volume: 1, object: 0 };
  const other = { pool: 1, volume: 2, object: 0 };
  await store.write(secret, 0, new Uint8Array(OBJECT_BYTES).fill(0xaa));
  for (const length of [4096, 8192, 16384, OBJECT_BYTES]) {
    // Fills the cache's classes with buffers full of the secret.
    (await store.readLeased(secret, 0, length)).release();
  }
  // A partial write into an unwritten block: its staged block must be zeros around the data.
  await store.write(other, 4096 + 100, new Uint8Array(50).fill(0x11));
  // A read spanning written and unwritten blocks of the other object.
  for (const length of [8192, 16384, OBJECT_BYTES]) {
    const lease = await store.readLeased(other, 0, length);
    const expected = new Uint8Array(length);
    expected.fill(0x11, 4096 + 100, 4096 + 150);
    assert.deepEqual(Buffer.from(lease.data), Buffer.from(expected), `read of ${length}`);
    lease.release();
  }
  await store.flush();
  await store.close();
});
