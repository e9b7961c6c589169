// The CmdSN window: serial-number comparison across the 2^32 wrap, commands outside
// [ExpCmdSN, MaxCmdSN] and duplicates dropped, in-order delivery across a gap, and
// MaxCmdSN following free task slots without ever moving back.

import { strict as assert } from 'node:assert';
import { test } from 'node:test';
import { CmdSnWindow, snLess, snLessOrEqual } from './session';

test('serial arithmetic wraps', () => {
  assert.ok(snLess(0xfffffff0, 5));
  assert.ok(!snLess(5, 0xfffffff0));
  assert.ok(snLessOrEqual(7, 7));
  assert.ok(snLess(1, 2));
});

test('in-window commands are delivered in CmdSN order; others and duplicates are dropped', () => {
  const window = new CmdSnWindow(0xfffffffe, 8);
  const delivered: number[] = [];
  assert.equal(
    window.accept(0xfffffffe + 8, () => delivered.push(-1)),
    false,
    'beyond MaxCmdSN',
  );
  assert.equal(
    window.accept(0xfffffffd, () => delivered.push(-2)),
    false,
    'below ExpCmdSN',
  );
  assert.ok(window.accept(0, () => delivered.push(0)));
  assert.ok(window.accept(0xffffffff, () => delivered.push(0xffffffff)));
  assert.equal(delivered.length, 0, 'delivered across a gap');
  assert.ok(window.accept(0xfffffffe, () => delivered.push(0xfffffffe)));
  assert.deepEqual(delivered, [0xfffffffe, 0xffffffff, 0]);
  assert.equal(window.expCmdSN, 1);
  assert.equal(
    window.accept(0, () => delivered.push(99)),
    false,
    'duplicate',
  );
});

test('MaxCmdSN tracks free slots and never decreases', () => {
  const window = new CmdSnWindow(10, 4);
  assert.equal(window.maxCmdSN, 13);
  for (let sn = 10; sn < 14; sn += 1) window.accept(sn, () => undefined);
  window.update(4);
  assert.equal(window.maxCmdSN, 13, 'full window: no room');
  assert.equal(
    window.accept(14, () => undefined),
    false,
  );
  window.update(1);
  assert.equal(window.maxCmdSN, 16);
  window.update(4);
  assert.equal(window.maxCmdSN, 16, 'MaxCmdSN moved back');
});
