// Proves the aligned buffer pool: every buffer's address is aligned as asked, released
// buffers are reused instead of allocating, the pool never hands out more than its
// bound (UNAVAILABLE beyond it), and releasing a foreign buffer is caught.

import * as assert from 'node:assert/strict';
import { test } from 'node:test';
import { AssertionError } from '../util/assert';
import { isCisternError } from '../util/errors';
import { BufferPool, addressAlignment, allocAligned } from './buffer-pool';

test('allocAligned returns zeroed memory at the asked alignment', () => {
  for (const alignBytes of [512, 4096, 65536]) {
    const buffer = allocAligned(3 * 4096, alignBytes);
    assert.ok(addressAlignment(buffer) >= alignBytes, `alignment ${alignBytes}`);
    assert.ok(buffer.every((byte) => byte === 0));
  }
});

test('pool buffers are aligned, distinct, and reused after release', () => {
  const pool = new BufferPool({ blockSizeBytes: 8192, buffersMax: 64, slabBytes: 65536 });
  const buffers = Array.from({ length: 20 }, () => pool.acquire());
  for (const buffer of buffers) assert.ok(addressAlignment(buffer) >= 4096);
  buffers[0]?.fill(1);
  assert.ok(
    buffers.slice(1).every((buffer) => buffer[0] === 0),
    'buffers overlap',
  );
  const allocated = pool.allocated;
  for (const buffer of buffers) pool.release(buffer);
  for (let index = 0; index < 20; index++) pool.acquire();
  assert.equal(pool.allocated, allocated, 'reacquiring allocated new memory');
  assert.equal(pool.inUse, 20);
});

test('the pool refuses to grow past buffersMax', () => {
  const pool = new BufferPool({ blockSizeBytes: 4096, buffersMax: 3 });
  pool.acquire();
  pool.acquire();
  const last = pool.acquire();
  assert.throws(
    () => pool.acquire(),
    (error) => isCisternError(error, 'UNAVAILABLE'),
  );
  pool.release(last);
  assert.equal(pool.acquire(), last);
});

test('releasing a buffer twice or from elsewhere is an assertion failure', () => {
  const pool = new BufferPool({ blockSizeBytes: 4096, buffersMax: 4 });
  const buffer = pool.acquire();
  pool.release(buffer);
  assert.throws(() => pool.release(buffer), AssertionError);
  assert.throws(() => pool.release(allocAligned(4096)), AssertionError);
});
