// The deterministic simulator in CI (test/sim/README in docs/ARCHITECTURE.md, "Tests"):
// several daemons running the real replication code in one process over a simulated
// network and simulated disks, faults and checkers for invariants 1–5 (simulation.ts).
//   - Fault-free seeds (concurrency and slow messages only) must pass, or fail with a
//     known bug.
//   - Faulty seeds 1..SIM_SEEDS (default 300) must pass, or fail with a bug named in
//     known-bugs.ts (found by this simulator in code being changed right now). Every such
//     seed is printed with its bug and the line that replays it; a failure no known bug
//     matches fails the test, printed with its events and replay line.

import { strict as assert } from 'node:assert';
import { test } from 'node:test';
import { runSimulation } from './simulation';
import { KNOWN_BUGS, knownBugOf } from './known-bugs';
import { formatFailure, replayLine } from './main';

/** Seeds per CI run: about 20 s on a 2-core machine (most runs take 30–100 ms). */
const CI_SEEDS_DEFAULT = 300;
const FAULT_FREE_SEEDS = 30;

test('fault-free runs: nothing but the known bugs', async () => {
  const unknown: string[] = [];
  let clean = 0;
  for (let seed = 1; seed <= FAULT_FREE_SEEDS; seed += 1) {
    const result = await runSimulation({ seed, faults: false });
    assert.ok(result.stats.readsChecked! > 0 && result.stats.writesAcked! > 0, 'the workload ran');
    if (result.failures.length === 0) clean += 1;
    else if (!knownBugOf(result.failures[0]!))
      unknown.push(formatFailure(result, false, false, true));
    else console.log(`fault-free seed ${seed}: known bug ${knownBugOf(result.failures[0]!)!.name}`);
  }
  console.log(`simulator: ${clean}/${FAULT_FREE_SEEDS} fault-free seeds clean`);
  assert.equal(unknown.length, 0, `failures no known bug explains:\n${unknown.join('\n')}`);
  assert.ok(clean > 0, 'some fault-free seed must run to its end checks');
});

test('faulty runs: no failure but the known bugs, each printed with its seeds', async () => {
  const seeds = Number(process.env.SIM_SEEDS ?? CI_SEEDS_DEFAULT);
  const byBug = new Map<string, number[]>();
  const unknown: string[] = [];
  let clean = 0;
  let crashes = 0;
  let partitions = 0;
  for (let seed = 1; seed <= seeds; seed += 1) {
    const result = await runSimulation({ seed });
    crashes += result.stats.crashes!;
    partitions += result.stats.partitions!;
    if (result.failures.length === 0) {
      clean += 1;
      continue;
    }
    const bug = knownBugOf(result.failures[0]!);
    if (bug) byBug.set(bug.name, [...(byBug.get(bug.name) ?? []), seed]);
    else unknown.push(formatFailure(result));
  }
  console.log(
    `simulator: ${clean}/${seeds} faulty seeds clean (${crashes} crashes, ${partitions} partitions)`,
  );
  for (const bug of KNOWN_BUGS) {
    const hit = byBug.get(bug.name) ?? [];
    console.log(
      `KNOWN BUG ${bug.name} (${bug.owner}): ${hit.length} seed(s)` +
        (hit.length > 0
          ? `, e.g. ${replayLine(hit[0]!)}; seeds ${hit.join(' ')}`
          : ' in this range (rare here, or fixed: soak before removing it)'),
    );
    console.log(`  ${bug.what}`);
  }
  assert.equal(unknown.length, 0, `failures no known bug explains:\n${unknown.join('\n')}`);
  assert.ok(clean > 0, 'some seed must run to its end checks');
});
