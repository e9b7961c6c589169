// Proves, by watching the system calls (strace) of a child process using the engine,
// what the kernel actually receives: everything queued in one event-loop turn is
// submitted together (in one io_submit when the device's chunk allows it, else in
// io_submit calls of at most SUBMIT_CHUNK_DEFAULT iocbs); a FUA write carries
// RWF_DSYNC and a plain one does not; flush is an IOCB_CMD_FDSYNC through the same AIO
// context (fdatasync when asked); every io_setup has its io_destroy.
// Skipped where strace is missing or ptrace is not allowed.

import * as assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { before, test } from 'node:test';
import { SUBMIT_CHUNK_DEFAULT } from './limits';
import { scratchParent } from './testing';

const batchSize = 64;

function canStrace(): boolean {
  const probe = spawnSync('strace', ['-f', '-e', 'trace=none', 'true'], { stdio: 'ignore' });
  return probe.status === 0;
}

const childScript = `
const { openDevice } = require(${JSON.stringify(path.join(__dirname, 'index.js'))});
(async () => {
  const options = { create: 1 << 20, queueDepth: 128, submitChunkMax: 128 };
  const device = await openDevice(process.argv[1], options);
  const buffers = Array.from({ length: ${batchSize} }, () => device.allocate(4096));
  await Promise.all(buffers.map((buffer, index) => device.write(buffer, index * 4096)));
  const chunked = await openDevice(process.argv[1], { queueDepth: 128 });
  await Promise.all(buffers.map((buffer, index) => chunked.read(buffer, index * 4096)));
  await chunked.close();
  const threadpool = await openDevice(process.argv[1], { aioFlush: false });
  await threadpool.flush();
  await threadpool.close();
  await device.write(buffers[0], 0, { fua: true });
  await device.flush();
  await device.close();
})().catch((error) => { console.error(error); process.exit(1); });
`;

let lines: string[] = [];
const available = canStrace();

before(() => {
  if (!available) return;
  const directory = fs.mkdtempSync(path.join(scratchParent(), 'cistern-'));
  try {
    const trace = path.join(directory, 'trace');
    const child = spawnSync(
      'strace',
      [
        '-f',
        '-o',
        trace,
        '-e',
        'trace=io_setup,io_submit,io_destroy,fdatasync',
        process.execPath,
        '-e',
        childScript,
        path.join(directory, 'disk'),
      ],
      { encoding: 'utf8', timeout: 60_000 },
    );
    assert.equal(child.status, 0, `child failed: ${child.stderr}`);
    lines = fs.readFileSync(trace, 'utf8').split('\n');
  } finally {
    fs.rmSync(directory, { recursive: true, force: true });
  }
});

function submits(): string[] {
  return lines.filter((line) => line.includes('io_submit('));
}

test('I/Os queued in one turn reach the kernel in one io_submit', { skip: !available }, () => {
  const batched = submits().filter((line) => new RegExp(`= ${batchSize}$`).test(line.trim()));
  assert.equal(
    batched.length,
    1,
    `expected one io_submit of ${batchSize}:\n${submits().join('\n')}`,
  );
  assert.ok(!batched[0]?.includes('RWF_DSYNC'), 'plain writes carried RWF_DSYNC');
});

test('by default io_submit gets at most SUBMIT_CHUNK_DEFAULT iocbs', { skip: !available }, () => {
  const reads = submits().filter((line) => line.includes('IOCB_CMD_PREAD'));
  const sizes = reads.map((line) => Number(/ = (\d+)$/.exec(line.trim())?.[1]));
  const total = sizes.reduce((sum, size) => sum + size, 0);
  assert.equal(total, batchSize, `not every read was submitted: ${sizes.join(',')}`);
  assert.ok(
    sizes.every((size) => size >= 1 && size <= SUBMIT_CHUNK_DEFAULT),
    sizes.join(','),
  );
});

test('a FUA write is submitted with RWF_DSYNC', { skip: !available }, () => {
  const fua = submits().filter((line) => line.includes('RWF_DSYNC'));
  assert.equal(fua.length, 1, submits().join('\n'));
  assert.ok(fua[0]?.includes('IOCB_CMD_PWRITE'));
});

test('flush is an IOCB_CMD_FDSYNC on the AIO context', { skip: !available }, () => {
  assert.equal(submits().filter((line) => line.includes('IOCB_CMD_FDSYNC')).length, 1);
});

test('with aioFlush false, flush is fdatasync on another thread', { skip: !available }, () => {
  const syncs = lines.filter((line) => line.includes('fdatasync(') && / = 0$/.test(line.trim()));
  assert.equal(syncs.length, 1, lines.join('\n'));
});

test('every io_setup has its io_destroy', { skip: !available }, () => {
  const setups = lines.filter((line) => line.includes('io_setup(') && / = 0$/.test(line.trim()));
  const destroys = lines.filter((line) => line.includes('io_destroy('));
  assert.ok(setups.length >= 1);
  assert.equal(destroys.length, setups.length);
});
