// Proves the write ordering that keeps replicas identical: a write overlapping earlier
// ones starts only after all of them finished (in arrival order), disjoint writes run
// at once, a failed write still releases those behind it, and the bound holds.

import { strict as assert } from 'node:assert';
import { test } from 'node:test';
import { RangeOrdering } from './ordering';

function gate(): { promise: Promise<void>; open: () => void } {
  let open!: () => void;
  const promise = new Promise<void>((resolve) => (open = resolve));
  return { promise, open };
}

const tick = (): Promise<void> => new Promise((resolve) => setImmediate(resolve));

test('an overlapping write waits for every earlier one it overlaps; disjoint ones do not wait', async () => {
  const ordering = new RangeOrdering();
  const events: string[] = [];
  const first = gate();
  const second = gate();
  const a = ordering.run('o', 0, 4096, async () => {
    events.push('a');
    await first.promise;
  });
  const b = ordering.run('o', 8192, 12288, async () => {
    events.push('b');
    await second.promise;
  });
  // Overlaps both a and b: must wait for both.
  const c = ordering.run('o', 0, 12288, async () => {
    events.push('c');
  });
  const d = ordering.run('other', 0, 4096, async () => {
    events.push('d');
  });
  await tick();
  assert.deepEqual(events, ['a', 'b', 'd']);
  first.open();
  await tick();
  assert.deepEqual(events, ['a', 'b', 'd'], 'c still waits for b');
  second.open();
  await Promise.all([a, b, c, d]);
  assert.deepEqual(events, ['a', 'b', 'd', 'c']);
  assert.equal(ordering.pendingObjects, 0);
});

test('a failed write releases the writes queued behind it', async () => {
  const ordering = new RangeOrdering();
  const failing = ordering.run('o', 0, 10, async () => {
    await tick();
    throw new Error('disk on fire');
  });
  const next = ordering.run('o', 5, 15, async () => 'ran');
  await assert.rejects(failing, /disk on fire/);
  assert.equal(await next, 'ran');
  assert.equal(ordering.pendingObjects, 0);
});
