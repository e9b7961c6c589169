// Benchmark of the native AIO engine against fio on the same file, in the same run:
// 4 KiB random reads and random writes at queue depth 32 on a 2 GiB file with O_DIRECT,
// each about 10 s, fio as `--ioengine=libaio --direct=1 --bs=4k --iodepth=32`. The file
// is fully written first so neither side reads unwritten extents. Prints our IOPS,
// fio's, the ratio ours : fio, CPU time per side, the machine and the date; and, for
// comparison, the engine with one io_submit per loop turn instead of small chunks.
//
//   npx tsc -p . && node dist/perf/engine.js [--seconds 10] [--size-gib 2] [--rounds 1]
//
// The file goes under $CISTERN_PERF_DIR, else os.tmpdir(); tmpfs is refused (its
// O_DIRECT never reaches a disk). Our side uses the callback fast path (writeWith /
// readWith) with buffers from a BufferPool: no allocation per I/O, like fio.

import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { type AioDevice, type IoCallback, openDevice } from '../src/engine/aio-device';
import { BufferPool } from '../src/engine/buffer-pool';
import { Random } from '../src/util/random';
import { commandLine, machine, scratchDirectory, toolVersion } from './bench';

const BLOCK_BYTES = 4096;
const QUEUE_DEPTH = 32;

type Pattern = 'randread' | 'randwrite';

interface Measurement {
  iops: number;
  cpuSeconds: number;
}

function fio(args: string[]): Record<string, unknown> {
  const run = spawnSync('fio', ['--output-format=json', ...args], {
    encoding: 'utf8',
    maxBuffer: 64 * 2 ** 20,
  });
  if (run.status !== 0) throw new Error(`fio failed: ${run.stderr}`);
  // fio may print notes before the JSON document.
  return JSON.parse(run.stdout.slice(run.stdout.indexOf('{'))) as Record<string, unknown>;
}

function layOut(file: string, sizeBytes: number): void {
  fio([
    '--name=layout',
    `--filename=${file}`,
    `--size=${sizeBytes}`,
    '--rw=write',
    '--bs=1M',
    '--direct=1',
    '--ioengine=libaio',
    '--iodepth=8',
  ]);
}

function runFio(file: string, sizeBytes: number, pattern: Pattern, seconds: number): Measurement {
  const result = fio([
    '--name=peer',
    `--filename=${file}`,
    `--size=${sizeBytes}`,
    `--rw=${pattern}`,
    '--ioengine=libaio',
    '--direct=1',
    `--bs=${BLOCK_BYTES}`,
    `--iodepth=${QUEUE_DEPTH}`,
    `--runtime=${seconds}`,
    '--time_based',
    '--norandommap',
    '--randrepeat=0',
  ]);
  const job = (result['jobs'] as Array<Record<string, unknown>>)[0] as Record<string, unknown>;
  const side = job[pattern === 'randread' ? 'read' : 'write'] as { iops: number };
  const cpuPercent = (job['usr_cpu'] as number) + (job['sys_cpu'] as number);
  return { iops: side.iops, cpuSeconds: (cpuPercent / 100) * seconds };
}

/** Keeps QUEUE_DEPTH I/Os in flight until the deadline; resolves with IOPS. */
function runOurs(device: AioDevice, pattern: Pattern, seconds: number): Promise<Measurement> {
  const pool = new BufferPool({ blockSizeBytes: BLOCK_BYTES, buffersMax: QUEUE_DEPTH });
  const random = new Random(Date.now() >>> 0);
  const blocks = device.size / BLOCK_BYTES;
  const writes = pattern === 'randwrite';
  const cpuBefore = process.cpuUsage();
  const startMs = performance.now();
  const deadlineMs = startMs + seconds * 1000;
  let completed = 0;
  let active = QUEUE_DEPTH;
  return new Promise((resolve, reject) => {
    const finish = (): void => {
      const elapsedSeconds = (performance.now() - startMs) / 1000;
      const cpu = process.cpuUsage(cpuBefore);
      resolve({ iops: completed / elapsedSeconds, cpuSeconds: (cpu.user + cpu.system) / 1e6 });
    };
    for (let index = 0; index < QUEUE_DEPTH; index++) {
      const buffer = pool.acquire();
      for (let byte = 0; byte < buffer.length; byte++) buffer[byte] = random.u32() & 0xff;
      // One callback per buffer, made once: nothing is allocated per I/O.
      const issue = (): void => {
        const offset = random.int(blocks) * BLOCK_BYTES;
        if (writes) device.writeWith(buffer, offset, undefined, done);
        else device.readWith(buffer, offset, done);
      };
      const done: IoCallback = (error) => {
        if (error !== undefined) {
          reject(error);
          return;
        }
        completed++;
        if (performance.now() < deadlineMs) issue();
        else if (--active === 0) finish();
      };
      issue();
    }
  });
}

const USAGE = `usage: node dist/perf/engine.js [options]
The native AIO engine vs fio on the same file, in one run (perf/RESULTS.md).
  --seconds S    each pattern's run (default 10)
  --size-gib N   the file (default 2)
  --rounds N     rounds; figures are medians (default 1)`;

function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.floor(sorted.length / 2)] as number;
}

async function main(): Promise<void> {
  const { positive, gibBytes } = commandLine(USAGE);
  const seconds = positive('--seconds', 10);
  const sizeBytes = gibBytes('--size-gib', 2);
  const rounds = positive('--rounds', 1);
  const { parent, directory } = scratchDirectory('cistern-perf-');
  const file = path.join(directory, 'disk');
  try {
    console.log(`# Engine (native AIO) vs fio — ${new Date().toISOString()}`);
    console.log(`# ${machine()}, ${toolVersion('fio', ['--version'])}`);
    console.log(
      `# ${sizeBytes / 2 ** 30} GiB file in ${parent}, 4 KiB, QD ${QUEUE_DEPTH}, ${seconds} s per run`,
    );
    layOut(file, sizeBytes);
    const device = await openDevice(file, { queueDepth: QUEUE_DEPTH });
    // The same engine with one io_submit per loop turn, to show what chunking buys.
    const unchunked = await openDevice(file, {
      queueDepth: QUEUE_DEPTH,
      submitChunkMax: QUEUE_DEPTH,
    });
    console.log(
      `| pattern | Cistern IOPS (chunk ${device.submitChunkMax}) | fio IOPS | ratio | ` +
        'Cistern, one io_submit per turn | ratio | Cistern CPU s | fio CPU s |',
    );
    console.log('| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |');
    for (const pattern of ['randread', 'randwrite'] as const) {
      const ours: Measurement[] = [];
      const whole: Measurement[] = [];
      const peer: Measurement[] = [];
      for (let round = 0; round < rounds; round++) {
        peer.push(runFio(file, sizeBytes, pattern, seconds));
        ours.push(await runOurs(device, pattern, seconds));
        whole.push(await runOurs(unchunked, pattern, seconds));
      }
      const oursIops = median(ours.map((m) => m.iops));
      const wholeIops = median(whole.map((m) => m.iops));
      const peerIops = median(peer.map((m) => m.iops));
      const oursCpu = median(ours.map((m) => m.cpuSeconds));
      const peerCpu = median(peer.map((m) => m.cpuSeconds));
      console.log(
        `| ${pattern} | ${Math.round(oursIops)} | ${Math.round(peerIops)} | ` +
          `${(oursIops / peerIops).toFixed(2)} | ${Math.round(wholeIops)} | ` +
          `${(wholeIops / peerIops).toFixed(2)} | ${oursCpu.toFixed(1)} | ${peerCpu.toFixed(1)} |`,
      );
    }
    await unchunked.close();
    await device.close();
  } finally {
    fs.rmSync(directory, { recursive: true, force: true });
  }
}

main().catch((error: unknown) => {
  console.error(error);
  process.exitCode = 1;
});
