// Proves that a simulated run is a pure function of its seed: the same seed twice gives
// the same trace (every event, in order, at the same virtual time, and every value a
// read returned) and the same failures — so a failing seed replays exactly — while
// different seeds give different runs.

import { strict as assert } from 'node:assert';
import { test } from 'node:test';
import { runSimulation } from './simulation';

test('the same seed replays the same run, event for event', async () => {
  for (const seed of [1, 5, 42]) {
    const first = await runSimulation({ seed });
    const second = await runSimulation({ seed });
    assert.equal(first.traceHash, second.traceHash, `seed ${seed}`);
    assert.equal(first.steps, second.steps);
    assert.equal(first.simulatedMs, second.simulatedMs);
    assert.deepEqual(first.failures, second.failures);
    assert.deepEqual(first.stats, second.stats);
    assert.ok(first.steps > 100, 'a run has many events');
  }
});

test('different seeds give different runs', async () => {
  const hashes = new Set<string>();
  for (let seed = 100; seed < 110; seed += 1) hashes.add((await runSimulation({ seed })).traceHash);
  assert.equal(hashes.size, 10);
});
