// Proves the LBA range lock: disjoint ranges are held at once, an overlapping request
// waits for the holder, overlapping waiters are granted in arrival order (no starvation
// of a large range by a stream of small ones), and a release wakes only what it blocked.

import { strict as assert } from 'node:assert';
import { test } from 'node:test';
import { RangeLock } from './range-lock';

const settle = () => new Promise((resolve) => setImmediate(resolve));

test('disjoint ranges are held together', async () => {
  const lock = new RangeLock();
  const first = await lock.acquire(0, 8);
  const second = await lock.acquire(8, 16);
  assert.equal(lock.size, 2);
  first();
  second();
  assert.equal(lock.size, 0);
});

test('an overlapping range waits until the holder releases', async () => {
  const lock = new RangeLock();
  const holder = await lock.acquire(0, 8);
  let granted = false;
  const waiting = lock.acquire(7, 9).then((release) => {
    granted = true;
    return release;
  });
  await settle();
  assert.equal(granted, false);
  holder();
  (await waiting)();
  assert.equal(granted, true);
});

test('overlapping waiters are granted in arrival order', async () => {
  const lock = new RangeLock();
  const holder = await lock.acquire(0, 1);
  const order: string[] = [];
  const big = lock.acquire(0, 100).then((release) => {
    order.push('big');
    return release;
  });
  // Overlaps the waiting big range only: it must queue behind it, not jump ahead.
  const small = lock.acquire(50, 51).then((release) => {
    order.push('small');
    return release;
  });
  await settle();
  assert.deepEqual(order, []);
  holder();
  (await big)();
  (await small)();
  assert.deepEqual(order, ['big', 'small']);
});

test('a release twice is a bug', async () => {
  const lock = new RangeLock();
  const release = await lock.acquire(0, 1);
  release();
  assert.throws(release, /released twice/);
});
