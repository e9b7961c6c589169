// Proves the workload model's floor for a block (what a read may return at the oldest):
// a write acknowledged after the last power loss must read back — unless that power loss
// dropped it from a replica's cache before the acknowledgement went out (the primary
// counted the replica's answer; nothing can tell that crash from one just after the
// acknowledgement, which already lowers the floor). Quick-restart soak seed 96 failed on
// exactly that: the write's other holder then failed for good. Literal sequences, no run.

import { strict as assert } from 'node:assert';
import { test } from 'node:test';
import { Model } from './model';

test('a write dropped by a crash before its acknowledgement does not raise the floor', () => {
  const model = new Model(1, 1);
  const block = model.block(0, 0);
  const first = model.issue(block, 0);
  model.acked(block, first, 5, true); // durable (FUA)
  const second = model.issue(block, 10);
  model.crashes.push(20);
  model.dropped(block, second.id); // a replica had it cached, and lost it
  model.acked(block, second, 30, false);
  assert.deepEqual(model.allowed(block, 40), {
    floor: first.id,
    ids: new Set([first.id, second.id]),
  });
});

test('a write acknowledged after a crash that did not drop it still must read back', () => {
  const model = new Model(1, 1);
  const block = model.block(0, 0);
  const first = model.issue(block, 0);
  model.acked(block, first, 5, true);
  const second = model.issue(block, 10);
  model.crashes.push(20);
  model.acked(block, second, 30, false);
  assert.deepEqual(model.allowed(block, 40), { floor: second.id, ids: new Set([second.id]) });
  // A recovery copy of it dropped by a later crash: the crash lowers the floor as ever.
  model.crashes.push(50);
  model.dropped(block, second.id);
  assert.equal(second.droppedBeforeAck, undefined);
  assert.equal(model.allowed(block, 60).floor, first.id);
});
