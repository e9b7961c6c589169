// Proves the simulator's checkers can fail: with a bug planted on purpose (SimOptions
// mutation), each one is caught on every seed tried, by the checker meant for it —
//   - the network serving requests of any epoch: invariant 5's fence checker (on most
//     seeds: it needs a request to meet a map change, and a known bug may end a run
//     before that);
//   - disks acknowledging flushes without persisting: invariant 1 (flushed writes lost
//     in the power loss of every host at the end);
//   - one disk silently dropping writes: invariants 1–4 (a read or the replica compare).

import { strict as assert } from 'node:assert';
import { test } from 'node:test';
import { runSimulation } from './simulation';

const SEEDS = [1, 2, 3, 4, 5];

test('a network without the epoch fence is caught (invariant 5)', async () => {
  // A run ends at its first failure, and a known bug (the gateway's flush race) may come
  // first; the fence checker must catch the planted bug on most of the other seeds.
  let caught = 0;
  for (let seed = 1; seed <= 10; seed += 1) {
    const result = await runSimulation({ seed, mutation: 'fence-off' });
    if (result.failures.some((f) => f.kind === 'inv5-fence')) caught += 1;
  }
  assert.ok(caught >= 5, `caught on ${caught} of 10 seeds`);
});

/** Fault-free seeds whose run without a planted bug is clean: a failure there is the bug's. */
async function cleanSeeds(count: number): Promise<number[]> {
  const seeds: number[] = [];
  for (let seed = 1; seeds.length < count && seed <= 100; seed += 1) {
    if ((await runSimulation({ seed, faults: false })).failures.length === 0) seeds.push(seed);
  }
  assert.equal(seeds.length, count, 'enough clean fault-free seeds');
  return seeds;
}

test('flushes that persist nothing are caught (invariant 1)', async () => {
  for (const seed of await cleanSeeds(SEEDS.length)) {
    const result = await runSimulation({ seed, faults: false, mutation: 'flush-lies' });
    assert.equal(result.failures[0]?.kind, 'inv1-durability', `seed ${seed}`);
  }
});

test('a replica that drops writes is caught', async () => {
  for (const seed of await cleanSeeds(SEEDS.length)) {
    const result = await runSimulation({ seed, faults: false, mutation: 'replica-drops-writes' });
    assert.ok(result.failures.length > 0, `seed ${seed}`);
    assert.match(result.failures[0]!.kind, /^inv[1-4]-/);
  }
});
