// Proves that opening and closing a device thousands of times leaks nothing: the
// process's open file descriptors (/proc/self/fd) and resident memory do not grow, and
// every AIO context is destroyed. The cycle count is chosen so that leaked contexts
// would exhaust the system-wide AIO limit (/proc/sys/fs/aio-max-nr) and make io_setup
// fail, so the kernel itself checks for context leaks too. Also: a worker thread that
// ends with a device still open exits cleanly (no abort on live libuv handles), and an
// exception thrown by a completion callback reaches 'uncaughtException' without
// losing the other completions of the same batch.

import * as assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { test } from 'node:test';
import * as v8 from 'node:v8';
import * as vm from 'node:vm';
import { Worker } from 'node:worker_threads';
import { openDevice } from './aio-device';
import { allocAligned } from './buffer-pool';
import { liveEngines } from './native';
import { withScratchDir } from './testing';

const queueDepth = 128;
const cyclesMin = 2000;
const cyclesMax = 20000;
const warmupCycles = 200;
// Cycles run in this many concurrent streams: a close waits about 30 ms for io_destroy
// on the threadpool, and serial cycles would make the test take minutes.
const streams = 16;
// Generous against allocator noise, far below what leaking 2000 engines would cost
// (each holds a 128-slot iocb table, event array and JS-side slot arrays).
const rssGrowthBytesMax = 24 * 2 ** 20;

function collectGarbage(): void {
  v8.setFlagsFromString('--expose-gc');
  const gc = vm.runInNewContext('gc') as () => void;
  gc();
  gc();
}

function openFdCount(): number {
  return fs.readdirSync('/proc/self/fd').length;
}

async function cycle(file: string, buffer: Uint8Array, index: number): Promise<void> {
  const device = await openDevice(file, { queueDepth });
  // Every fourth cycle also does I/O, so the completion path is opened and closed too.
  if (index % 4 === 0) await device.read(buffer, (index % 16) * 4096);
  await device.close();
}

test('thousands of open/close cycles leak no fds, memory or AIO contexts', async () => {
  await withScratchDir(async (directory) => {
    const file = path.join(directory, 'disk');
    await (await openDevice(file, { create: 2 ** 20 })).close();
    const aioMaxNr = Number(fs.readFileSync('/proc/sys/fs/aio-max-nr', 'utf8'));
    const cycles = Math.min(cyclesMax, Math.max(cyclesMin, Math.ceil(aioMaxNr / queueDepth) * 2));
    const enginesBefore = liveEngines();
    const buffers = Array.from({ length: streams }, () => allocAligned(4096));
    const run = async (count: number): Promise<void> => {
      await Promise.all(
        buffers.map(async (buffer, stream) => {
          for (let index = stream; index < count; index += streams) {
            await cycle(file, buffer, index);
          }
        }),
      );
    };
    await run(warmupCycles);
    collectGarbage();
    const fdsBefore = openFdCount();
    const rssBefore = process.memoryUsage.rss();
    await run(cycles);
    collectGarbage();
    assert.equal(liveEngines(), enginesBefore, 'engines left open');
    assert.equal(openFdCount(), fdsBefore, 'file descriptors leaked');
    const growth = process.memoryUsage.rss() - rssBefore;
    assert.ok(growth < rssGrowthBytesMax, `RSS grew by ${growth} bytes over ${cycles} cycles`);
  });
});

const engineIndex = JSON.stringify(path.join(__dirname, 'index.js'));

test('a worker that exits with a device still open ends cleanly', async () => {
  await withScratchDir(async (directory) => {
    const source = `
      const { openDevice } = require(${engineIndex});
      (async () => {
        const device = await openDevice(${JSON.stringify(path.join(directory, 'disk'))}, {
          create: 1 << 20,
        });
        await device.read(device.allocate(4096), 0);
        process.exit(0); // leaves the device open on purpose
      })();
    `;
    const worker = new Worker(source, { eval: true });
    const exitCode = await new Promise<number>((resolve, reject) => {
      worker.on('exit', resolve);
      worker.on('error', reject);
    });
    assert.equal(exitCode, 0);
  });
});

test('a throwing completion callback reaches uncaughtException; its batch still completes', async () => {
  await withScratchDir(async (directory) => {
    const source = `
      const { openDevice } = require(${engineIndex});
      let uncaught = 0;
      process.on('uncaughtException', () => { uncaught++; });
      (async () => {
        const device = await openDevice(process.argv[1], { create: 1 << 20 });
        const buffers = Array.from({ length: 8 }, () => device.allocate(4096));
        let completed = 0;
        await new Promise((resolve) => {
          buffers.forEach((buffer, index) => device.readWith(buffer, index * 4096, () => {
            completed++;
            if (completed === 8) setImmediate(resolve);
            if (index === 0) throw new Error('callback bug');
          }));
        });
        await device.close();
        console.log(JSON.stringify({ uncaught, completed }));
      })();
    `;
    const child = spawnSync(process.execPath, ['-e', source, path.join(directory, 'disk')], {
      encoding: 'utf8',
      timeout: 30_000,
    });
    assert.equal(child.status, 0, child.stderr);
    assert.deepEqual(JSON.parse(child.stdout), { uncaught: 1, completed: 8 });
  });
});
