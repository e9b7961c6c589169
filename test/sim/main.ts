// Runs simulations from the command line: one seed (to replay a failure exactly), or
// many (a soak). Each failing seed is printed with its checker's message, its last
// events and the line that replays it; at the end, the failing seeds per cause. Exit
// status 1 when a failure is not a known bug (known-bugs.ts), or with --strict on any.
//
//   SEED=123 node dist/test/sim/main.js       replay one seed (VERBOSE=1: its events;
//                                             TRACE_OBJECT=n: every change to object n;
//                                             FAULT_FREE=1: the fault-free run of it)
//   npm run sim:soak -- --seeds 1000 [--from 5000] [--quick-restarts] [--etcd-everywhere] [--strict]

import { runSimulation, SimResult } from './simulation';
import { knownBugOf } from './known-bugs';

export function replayLine(
  seed: number,
  quickRestarts = false,
  etcdEverywhere = false,
  faultFree = false,
): string {
  const flags =
    `${quickRestarts ? ' QUICK_RESTARTS=1' : ''}${etcdEverywhere ? ' ETCD_EVERYWHERE=1' : ''}` +
    `${faultFree ? ' FAULT_FREE=1' : ''}`;
  return `SEED=${seed}${flags} node dist/test/sim/main.js`;
}

export function formatFailure(
  result: SimResult,
  quickRestarts = false,
  etcdEverywhere = false,
  faultFree = false,
): string {
  return [
    `seed ${result.seed} FAILED (${result.config}; ${result.steps} steps, ${result.simulatedMs.toFixed(0)} ms simulated)`,
    ...result.failures
      .slice(0, 5)
      .map(
        (f) =>
          `  [${f.kind}]${knownBugOf(f) ? ` (known bug: ${knownBugOf(f)!.name})` : ''} at ${f.atMs.toFixed(1)} ms: ${f.text}`,
      ),
    '  last events:',
    ...result.recent.slice(-15).map((line) => `    ${line}`),
    `  replay: ${replayLine(result.seed, quickRestarts, etcdEverywhere, faultFree)}`,
  ].join('\n');
}

async function main(): Promise<void> {
  const args = process.argv.slice(2);
  const option = (name: string): string | undefined => {
    const at = args.indexOf(name);
    return at >= 0 ? args[at + 1] : undefined;
  };
  const quickRestarts = args.includes('--quick-restarts') || process.env.QUICK_RESTARTS === '1';
  const etcdEverywhere = args.includes('--etcd-everywhere') || process.env.ETCD_EVERYWHERE === '1';
  const strict = args.includes('--strict');
  const faultFree = args.includes('--fault-free') || process.env.FAULT_FREE === '1';
  const verbose = process.env.VERBOSE === '1';
  let seeds: number[];
  if (process.env.SEED !== undefined) seeds = [Number(process.env.SEED)];
  else {
    const count = Number(option('--seeds') ?? '100');
    const from = Number(option('--from') ?? String(Date.now() % 1_000_000_000));
    seeds = Array.from({ length: count }, (_, i) => from + i);
  }
  let failed = 0;
  let unknown = 0;
  const byCause = new Map<string, number[]>();
  const started = Date.now();
  for (const seed of seeds) {
    const result = await runSimulation({
      seed,
      quickRestarts,
      etcdEverywhere,
      verbose,
      ...(faultFree ? { faults: false } : {}),
    });
    if (result.failures.length > 0) {
      failed += 1;
      const first = result.failures[0]!;
      const cause = knownBugOf(first)?.name ?? `NEW ${first.kind}`;
      if (!knownBugOf(first)) unknown += 1;
      byCause.set(cause, [...(byCause.get(cause) ?? []), seed]);
      console.log(formatFailure(result, quickRestarts, etcdEverywhere, faultFree));
    } else if (seeds.length === 1 || verbose) {
      console.log(
        `seed ${seed} ok (${result.config}; ${result.steps} steps, ${result.simulatedMs.toFixed(0)} ms simulated, trace ${result.traceHash.slice(0, 16)}) ${JSON.stringify(result.stats)}`,
      );
    }
  }
  console.log(
    `${seeds.length - failed}/${seeds.length} seeds passed (${seeds[0]}..${seeds[seeds.length - 1]}) in ${((Date.now() - started) / 1000).toFixed(1)} s`,
  );
  for (const [cause, list] of byCause)
    console.log(`  ${cause}: ${list.length} seed(s): ${list.join(' ')}`);
  process.exitCode = unknown > 0 || (strict && failed > 0) ? 1 : 0;
}

if (require.main === module) void main();
