// Proves invariant 2 (never foreign data) and invariant 1 (flushed data survives) under
// random operations and crashes. For each seed: random writes (aligned and not, some
// FUA), trims, zeros, deletes and flushes over more objects than the disk has slots
// (so slots are freed and reused and ENOSPC happens), checked against a model as they
// go; then a burst of concurrent operations, a crash after a random number of event
// loop turns (the disk keeps a random, per-sector torn subset of unflushed writes),
// and a restart. Every block of every object must then read as its content at the
// last acknowledged flush or as a later write to that same block; every 16 bytes of
// data names its write, block and object, so foreign data cannot pass. The allocator
// rebuilt from the index must agree with the objects listed. CISTERN_CRASH_SEEDS sets
// the number of seeds; a failure names its seed.

import { strict as assert } from 'node:assert';
import { after, before, test } from 'node:test';
import { isCisternError } from '../util/errors';
import { Random } from '../util/random';
import type { ObjectKey } from './key';
import { BLOCK_SIZE_BYTES, HEADER_AREA_BYTES } from './layout';
import { MemoryDevice } from './memory-device';
import { ObjectStore } from './object-store';
import {
  BlockModel,
  applyToStore,
  checkAgainstModel,
  keyUniverse,
  pattern,
  randomOp,
  removeDir,
  tempDir,
  type ModelOp,
} from './testing';

const SEEDS = Number(process.env.CISTERN_CRASH_SEEDS ?? 150);
const OBJECT_BYTES = 64 * 1024;
const SLOTS = 10;
const ROUNDS_PER_SEED = 3;
const OPS_PER_ROUND_MAX = 60;
const BURST_OPS_MAX = 5;
const CRASH_TICKS_MAX = 24;
let root = '';

before(async () => {
  root = await tempDir('crash');
});
after(async () => {
  await removeDir(root);
});

async function runSeed(seed: number): Promise<void> {
  const random = new Random(seed);
  const universe = keyUniverse(2, 2, 4); // 16 objects for 10 slots
  const choice = { unaligned: true, objectSizeBytes: OBJECT_BYTES };
  const indexPath = `${root}/seed-${seed}`;
  let memory = new MemoryDevice(HEADER_AREA_BYTES + SLOTS * OBJECT_BYTES, {
    random: new Random(seed ^ 0x5eed),
    latencyTicksMax: 2,
  });
  // Format does not wipe: the slots keep a former life's bytes, which must never show.
  const formerLife = { pool: 0xdead, volume: 0xbeef, object: 0 };
  await memory.write(pattern(formerLife, 0, 0, SLOTS * OBJECT_BYTES), HEADER_AREA_BYTES);
  await memory.flush();
  let store = await ObjectStore.open({
    device: memory,
    indexPath,
    objectSizeBytes: OBJECT_BYTES,
    format: true,
  });
  const model = new BlockModel(OBJECT_BYTES);
  let seq = 1;
  for (let round = 0; round < ROUNDS_PER_SEED; round += 1) {
    const where = `seed ${seed} round ${round}`;
    // Sequential phase: every operation completes before the next, so the model is exact.
    const opCount = random.int(OPS_PER_ROUND_MAX);
    for (let index = 0; index < opCount; index += 1) {
      const op = randomOp(random, universe, seq++, choice);
      if (await appliedOrNoSpace(store, op, where)) model.apply(op);
      if (random.bool(0.1)) await checkReadYourWrites(store, model, random.pick(universe), where);
    }
    // Burst: concurrent operations on distinct objects, then a crash at a random moment.
    const burst = distinctKeys(random, universe, random.int(BURST_OPS_MAX + 1)).map((key) => {
      const op = randomOp(random, [key], seq++, choice);
      // It may or may not land: the model allows both, and a flush here settles nothing.
      if (op.kind !== 'flush') model.apply(op.kind === 'write' ? { ...op, fua: false } : op);
      return applyToStore(store, op).catch(() => undefined); // ENOSPC, or EIO after the crash
    });
    const ticks = random.int(CRASH_TICKS_MAX + 1);
    for (let tick = 0; tick < ticks; tick += 1)
      await new Promise((resolve) => setImmediate(resolve));
    const survivor = memory.crash(random);
    await Promise.allSettled(burst);
    await store.close().catch(() => undefined); // its device is dead: nothing more commits
    memory = survivor;
    store = await ObjectStore.open({ device: memory, indexPath });
    const failures = await checkAgainstModel(store, model, universe);
    assert.deepEqual(failures, [], `${where}: ${failures.length} blocks hold disallowed data`);
    await checkAllocator(store, universe, where);
    for (const key of universe) await adoptRecovered(store, model, key);
  }
  await store.close();
  await removeDir(indexPath);
}

async function appliedOrNoSpace(store: ObjectStore, op: ModelOp, where: string): Promise<boolean> {
  try {
    await applyToStore(store, op);
    return true;
  } catch (error) {
    if (op.kind === 'write' && isCisternError(error, 'ENOSPC')) return false;
    throw new Error(`${where}: ${op.kind} failed: ${String(error)}`);
  }
}

async function checkReadYourWrites(
  store: ObjectStore,
  model: BlockModel,
  key: ObjectKey,
  where: string,
) {
  const content = Buffer.from(await store.read(key, 0, OBJECT_BYTES));
  for (let block = 0; block < OBJECT_BYTES / BLOCK_SIZE_BYTES; block += 1) {
    const bytes = content.subarray(block * BLOCK_SIZE_BYTES, (block + 1) * BLOCK_SIZE_BYTES);
    assert.ok(
      bytes.equals(model.current(key, block)),
      `${where}: read-your-writes of block ${block}`,
    );
  }
}

/** Slots in use must be exactly the listed objects; holes in block status must read as zeros. */
async function checkAllocator(store: ObjectStore, universe: ObjectKey[], where: string) {
  let listed = 0;
  for await (const key of store.listObjects()) {
    listed += 1;
    void key;
  }
  const stats = store.stats();
  assert.equal(stats.slotsUsed, listed, `${where}: slots used vs objects listed`);
  assert.equal(stats.slotsUsed + stats.slotsFree, SLOTS, `${where}: slots add up`);
  for (const key of universe) {
    let offset = 0;
    for (const extent of await store.blockStatus(key, 0, OBJECT_BYTES)) {
      if (extent.zero) {
        const bytes = Buffer.from(await store.read(key, offset, extent.length));
        assert.ok(
          bytes.equals(Buffer.alloc(extent.length)),
          `${where}: a zero extent is not zeros`,
        );
      }
      offset += extent.length;
    }
  }
}

async function adoptRecovered(store: ObjectStore, model: BlockModel, key: ObjectKey) {
  const content = await store.read(key, 0, OBJECT_BYTES);
  for (let block = 0; block < OBJECT_BYTES / BLOCK_SIZE_BYTES; block += 1) {
    model.reset(
      key,
      block,
      content.subarray(block * BLOCK_SIZE_BYTES, (block + 1) * BLOCK_SIZE_BYTES),
    );
  }
}

function distinctKeys(random: Random, universe: ObjectKey[], count: number): ObjectKey[] {
  const pool = [...universe];
  const chosen: ObjectKey[] = [];
  for (let index = 0; index < count && pool.length > 0; index += 1) {
    chosen.push(pool.splice(random.int(pool.length), 1)[0]!);
  }
  return chosen;
}

test(`random operations and crashes never expose foreign data (${SEEDS} seeds)`, async () => {
  for (let seed = 1; seed <= SEEDS; seed += 1) {
    try {
      await runSeed(seed);
    } catch (error) {
      throw new Error(
        `seed ${seed} failed (replay: CISTERN_CRASH_SEEDS and this seed): ${String(error)}`,
        {
          cause: error,
        },
      );
    }
  }
});
