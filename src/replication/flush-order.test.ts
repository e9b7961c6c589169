// Proves FlushOrder: a flush completes only after every flush started before it, and
// fails if one of those failed; a flush started later does not hold an earlier one up.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { FlushOrder } from './flush-order';

function gate(): { promise: Promise<void>; open: () => void; fail: (e: Error) => void } {
  let open!: () => void;
  let fail!: (e: Error) => void;
  const promise = new Promise<void>((resolve, reject) => {
    open = resolve;
    fail = reject;
  });
  return { promise, open, fail };
}

test('a second flush waits for a first one still flushing', async () => {
  const order = new FlushOrder();
  const first = gate();
  const events: string[] = [];
  const a = order.run(() => first.promise).then(() => events.push('first'));
  const b = order.run(async () => undefined).then(() => events.push('second'));
  await new Promise((resolve) => setImmediate(resolve));
  assert.deepEqual(events, [], 'the second flush must not return before the first');
  first.open();
  await Promise.all([a, b]);
  assert.deepEqual(events, ['first', 'second']);
  assert.equal(order.pending, 0);
});

test('an earlier flush that fails fails the later one too', async () => {
  const order = new FlushOrder();
  const first = gate();
  const a = order.run(() => first.promise);
  const b = order.run(async () => undefined);
  first.fail(new Error('disk gone'));
  await assert.rejects(a, /disk gone/);
  await assert.rejects(b, /disk gone/);
});

test('a later flush does not hold up an earlier one', async () => {
  const order = new FlushOrder();
  const first = gate();
  const second = gate();
  const a = order.run(() => first.promise);
  const b = order.run(() => second.promise);
  first.open();
  await a; // returns although the later flush is still running
  assert.equal(order.pending, 1);
  second.open();
  await b;
  assert.equal(order.pending, 0);
});
