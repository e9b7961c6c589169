// Proves the receive queue returns exact byte ranges across arbitrary chunk boundaries,
// returns views (no copy) when a range lies in one chunk, and that peek and discard
// leave the queue consistent.

import { strict as assert } from 'node:assert';
import { test } from 'node:test';
import { Random } from '../../util/random';
import { ByteQueue } from './byte-queue';

test('a range inside one chunk is a view of that chunk, not a copy', () => {
  const queue = new ByteQueue();
  const chunk = Buffer.from('abcdefgh');
  queue.push(chunk);
  const view = queue.take(4);
  chunk[0] = 0x7a;
  assert.equal(view.toString(), 'zbcd');
});

test('random chunking and random take/peek/discard sizes reproduce the stream exactly', () => {
  const random = new Random(7);
  const stream = Buffer.alloc(200_000);
  for (let index = 0; index < stream.length; index += 1) stream[index] = random.int(256);
  const queue = new ByteQueue();
  let pushed = 0;
  let consumed = 0;
  while (consumed < stream.length) {
    if (pushed < stream.length && (queue.length === 0 || random.bool())) {
      const size = Math.min(random.range(1, 5000), stream.length - pushed);
      queue.push(Buffer.from(stream.subarray(pushed, pushed + size)));
      pushed += size;
    }
    if (queue.length === 0) continue;
    const size = random.range(1, Math.min(queue.length, 9000));
    const expected = stream.subarray(consumed, consumed + size);
    const action = random.int(3);
    if (action === 0) {
      assert.ok(queue.peek(size).equals(expected));
      continue;
    }
    if (action === 1) assert.ok(queue.take(size).equals(expected));
    else assert.equal(queue.discard(size), size);
    consumed += size;
    assert.equal(queue.length, pushed - consumed);
  }
});

test('discard drops at most what is queued', () => {
  const queue = new ByteQueue();
  queue.push(Buffer.alloc(10));
  assert.equal(queue.discard(100), 10);
  assert.equal(queue.length, 0);
});

test('takeInto copies a range spanning chunks into a target at an offset, and consumes it', () => {
  const queue = new ByteQueue();
  queue.push(Buffer.from('abc'));
  queue.push(Buffer.from('defg'));
  queue.push(Buffer.from('hij'));
  queue.take(1);
  const target = Buffer.alloc(10, '.');
  queue.takeInto(target, 2, 7);
  assert.equal(target.toString(), '..bcdefgh.');
  assert.equal(queue.length, 2);
  assert.equal(queue.take(2).toString(), 'ij');
  assert.throws(() => queue.takeInto(target, 0, 1));
});
