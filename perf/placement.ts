// Micro-benchmark of the placement engine at the reference installation (512 hosts ×
// 8 disks, size 3, failure domain host, ~100 PGs per disk), with the `benchmark`
// package: object look-ups per second and the time to recompute every PG, for straw2
// and, in the same run, the consistent-hash ring and plain modulo. Prints each
// figure, the ratio straw2 : peer, the machine and the date.
//
//   npm run build && node dist/perf/placement.js [--hosts N]

import Benchmark from 'benchmark';
import { buildCluster, makePool, pgCountFor } from '../src/placement/build';
import { computeTable, locateObject } from '../src/placement/straw2';
import { moduloPlacement, ringPlacement } from '../src/placement/simulate/baselines';
import { machineDescription } from '../src/placement/simulate/simulate';

const hostsArg = process.argv.indexOf('--hosts');
const hosts = hostsArg > 0 ? Number(process.argv[hostsArg + 1]) : 512;
const disksPerHost = 8;
const map = buildCluster({ hosts, disksPerHost, racks: 16, diskSizeBytes: 4 * 2 ** 40 });
const pgCount = pgCountFor(hosts * disksPerHost, 100, 3);
const pool = makePool(1, 'bench', 3, pgCount, 'host');
map.pools.push(pool);

const LOOKUPS_PER_OP = 1000;
const straw2 = computeTable(map, pool.id);
const ring = ringPlacement(map, pool);
const modulo = moduloPlacement(map, pool);
const out = new Int32Array(3);
let sink = 0;
let cursor = 0;

function runSuite(
  title: string,
  cases: Array<[string, () => void]>,
  scale: number,
  unit: string,
): Map<string, number> {
  const results = new Map<string, number>();
  const suite = new Benchmark.Suite(title);
  for (const [name, fn] of cases) suite.add(name, fn, { minSamples: 5, maxTime: 4 });
  suite.on('cycle', (event: Benchmark.Event) => {
    const bench = event.target as unknown as Benchmark;
    results.set(String(bench.name), (bench.hz ?? 0) * scale);
  });
  suite.run();
  console.log(`\n${title}`);
  const ours = results.get('straw2') as number;
  for (const [name, value] of results) {
    const ratio = name === 'straw2' ? '' : `   straw2 : ${name} = ${(ours / value).toFixed(2)}`;
    console.log(
      `  ${name.padEnd(8)} ${value.toFixed(value < 100 ? 2 : 0).padStart(14)} ${unit}${ratio}`,
    );
  }
  return results;
}

console.log(
  `placement benchmark: ${hosts} hosts × ${disksPerHost} disks, ${pgCount} PGs, size 3, failure domain host`,
);
console.log(`${machineDescription()}; ${new Date().toISOString()}`);

runSuite(
  'object look-ups per second (one core; one op = 1000 look-ups)',
  [
    [
      'straw2',
      () => {
        for (let i = 0; i < LOOKUPS_PER_OP; i += 1, cursor += 1)
          sink += locateObject(straw2, 1 + (cursor & 1023), cursor >>> 10)[0] as number;
      },
    ],
    [
      'ring',
      () => {
        for (let i = 0; i < LOOKUPS_PER_OP; i += 1, cursor += 1) {
          ring.locateObject(1 + (cursor & 1023), cursor >>> 10, out);
          sink += out[0] as number;
        }
      },
    ],
    [
      'modulo',
      () => {
        for (let i = 0; i < LOOKUPS_PER_OP; i += 1, cursor += 1) {
          modulo.locateObject(1 + (cursor & 1023), cursor >>> 10, out);
          sink += out[0] as number;
        }
      },
    ],
  ],
  LOOKUPS_PER_OP,
  'look-ups/s',
);

// Recompute: rates → milliseconds per full table.
const recompute = runSuite(
  'full recompute of every PG (ops per second)',
  [
    ['straw2', () => void computeTable(map, pool.id)],
    ['ring', () => void ringPlacement(map, pool)],
    ['modulo', () => void moduloPlacement(map, pool)],
  ],
  1,
  'recomputes/s',
);
console.log('\nfull recompute time');
for (const [name, hz] of recompute)
  console.log(`  ${name.padEnd(8)} ${(1000 / hz).toFixed(1).padStart(10)} ms`);
if (sink === 0.5) console.log(''); // keeps the look-up loops from being optimised away
