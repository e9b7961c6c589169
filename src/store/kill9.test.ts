// Proves that a real process killed with SIGKILL at an arbitrary moment leaves a store
// that reopens (LevelDB recovers its log, the allocator is rebuilt from the index) and
// keeps invariant 2: a child process runs seeded random operations on a file-backed
// store, acknowledging each completed flush on stdout; the test kills it at a random
// moment, reopens the same file and index, and checks every block against a model of
// what the child may have done (its content at the last acknowledged flush, or a later
// write to it). Five kill/reopen cycles run on the same disk. The page cache outlives
// a killed process, so this tests the process crash, not power loss: power loss is
// crash-random.test.ts's job, with a disk that drops unflushed writes.

import { strict as assert } from 'node:assert';
import { spawn } from 'node:child_process';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { Random } from '../util/random';
import { FileDevice } from './file-device';
import { KILL9_OBJECT_BYTES, KILL9_OPS_MAX, kill9Universe } from './kill9-plan';
import { BLOCK_SIZE_BYTES } from './layout';
import { ObjectStore } from './object-store';
import { BlockModel, checkAgainstModel, randomOp, removeDir, tempDir } from './testing';

const CYCLES = 5;
/** Kill only after this many acknowledged flushes (at most), so there is something to keep. */
const ACKS_BEFORE_KILL_MAX = 12;
const KILL_DELAY_MS_MAX = 25;
/** A child that neither acknowledges nor dies within this is a failure, not a hang. */
const CHILD_TIMEOUT_MS = 30000;
let root = '';

before(async () => {
  root = await tempDir('kill9');
});
after(async () => {
  await removeDir(root);
});

interface ChildResult {
  acks: number[];
  signal: NodeJS.Signals | null;
  stderr: string;
}

/** Starts the child, kills it with SIGKILL after a random number of acks and milliseconds. */
function runAndKill(args: string[], random: Random): Promise<ChildResult> {
  const acksWanted = random.range(1, ACKS_BEFORE_KILL_MAX);
  const killDelayMs = random.int(KILL_DELAY_MS_MAX + 1);
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [join(__dirname, 'crash-child.js'), ...args], {
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    const acks: number[] = [];
    let stdout = '';
    let stderr = '';
    let killing = false;
    const timer = setTimeout(() => child.kill('SIGKILL'), CHILD_TIMEOUT_MS);
    child.stdout.on('data', (chunk: Buffer) => {
      stdout += chunk.toString();
      const lines = stdout.split('\n');
      stdout = lines.pop() ?? '';
      for (const line of lines) {
        const match = /^ACK (\d+)$/.exec(line);
        if (match) acks.push(Number(match[1]));
      }
      if (!killing && acks.length >= acksWanted) {
        killing = true;
        setTimeout(() => child.kill('SIGKILL'), killDelayMs);
      }
    });
    child.stderr.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
    child.on('error', reject);
    child.on('close', (_code, signal) => {
      clearTimeout(timer);
      resolve({ acks, signal, stderr });
    });
  });
}

test('kill -9 at a random moment: the store reopens and no block holds foreign data', async () => {
  const random = new Random(20240901);
  const devicePath = join(root, 'disk.img');
  const indexPath = join(root, 'index');
  const universe = kill9Universe();
  const model = new BlockModel(KILL9_OBJECT_BYTES);
  let firstSeq = 1;
  for (let cycle = 0; cycle < CYCLES; cycle += 1) {
    const childSeed = random.u32();
    const result = await runAndKill(
      [devicePath, indexPath, String(childSeed), cycle === 0 ? '1' : '0', String(firstSeq)],
      random,
    );
    assert.equal(result.signal, 'SIGKILL', `child was not killed (stderr: ${result.stderr})`);
    assert.ok(result.acks.length > 0, `child acknowledged no flush (stderr: ${result.stderr})`);
    // Replay the child's operations: exactly up to the last acknowledged flush, then
    // the ones it may have started before the next flush, as possible later writes.
    const lastAck = result.acks[result.acks.length - 1]!;
    const opRandom = new Random(childSeed);
    const choice = { unaligned: false, objectSizeBytes: KILL9_OBJECT_BYTES };
    for (let index = 0; index < KILL9_OPS_MAX; index += 1) {
      const op = randomOp(opRandom, universe, firstSeq + index, choice);
      if (index < lastAck) {
        model.apply(op);
        continue;
      }
      if (op.kind === 'flush') break; // the child never got past an unacknowledged flush
      model.apply(op.kind === 'write' ? { ...op, fua: false } : op);
    }
    firstSeq += KILL9_OPS_MAX;

    const device = await FileDevice.open(devicePath);
    const store = await ObjectStore.open({ device, indexPath });
    const failures = await checkAgainstModel(store, model, universe);
    assert.deepEqual(failures, [], `cycle ${cycle}: blocks hold disallowed data`);
    let listed = 0;
    for await (const key of store.listObjects()) listed += key.pool === 1 ? 1 : 0;
    assert.equal(
      store.stats().slotsUsed,
      listed,
      `cycle ${cycle}: allocator rebuilt from the index`,
    );
    for (const key of universe) {
      const content = await store.read(key, 0, KILL9_OBJECT_BYTES);
      for (let block = 0; block < KILL9_OBJECT_BYTES / BLOCK_SIZE_BYTES; block += 1) {
        model.reset(
          key,
          block,
          content.subarray(block * BLOCK_SIZE_BYTES, (block + 1) * BLOCK_SIZE_BYTES),
        );
      }
    }
    await store.close();
    await device.close();
  }
});
