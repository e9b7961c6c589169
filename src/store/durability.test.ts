// Proves the object store's durability rules one at a time on a disk that loses its
// volatile cache (MemoryDevice.crash): flushed data survives a crash and a restart; a
// FUA write survives without a flush; concurrent flushes share one commit; metadata is
// never committed when the device flush fails (so a slot's former bytes never show);
// and a freed slot is not handed out again until the free itself is durable.

import { strict as assert } from 'node:assert';
import { after, before, test } from 'node:test';
import { isCisternError } from '../util/errors';
import { Random } from '../util/random';
import { FaultyDevice } from './faulty-device';
import type { ObjectKey } from './key';
import { HEADER_AREA_BYTES } from './layout';
import { MemoryDevice } from './memory-device';
import { ObjectStore } from './object-store';
import { pattern, removeDir, tempDir } from './testing';

const OBJECT_BYTES = 64 * 1024;
const A: ObjectKey = { pool: 1, volume: 1, object: 1 };
const B: ObjectKey = { pool: 1, volume: 1, object: 2 };
let root = '';
let counter = 0;

before(async () => {
  root = await tempDir('durability');
});
after(async () => {
  await removeDir(root);
});

async function fresh(slots: number) {
  const memory = new MemoryDevice(HEADER_AREA_BYTES + slots * OBJECT_BYTES);
  const faulty = new FaultyDevice(memory);
  const indexPath = `${root}/index-${counter++}`;
  const store = await ObjectStore.open({
    device: faulty,
    indexPath,
    objectSizeBytes: OBJECT_BYTES,
    format: true,
  });
  return { store, memory, faulty, indexPath };
}

/** Power loss: the store is abandoned (its index closed without a commit), the disk crashes. */
async function crashAndReopen(
  store: ObjectStore,
  memory: MemoryDevice,
  indexPath: string,
  random?: Random,
) {
  const survivor = memory.crash(random);
  await store.close().catch((error: unknown) => assert.ok(isCisternError(error, 'EIO')));
  return { store: await ObjectStore.open({ device: survivor, indexPath }), memory: survivor };
}

async function readBytes(store: ObjectStore, key: ObjectKey, offset: number, length: number) {
  return Buffer.from(await store.read(key, offset, length));
}

test('flushed data survives a crash that drops every unflushed write', async () => {
  const { store, memory, indexPath } = await fresh(4);
  await store.write(A, 0, pattern(A, 1, 0, 8192));
  await store.flush();
  await store.write(A, 8192, pattern(A, 2, 8192, 4096)); // not flushed: may be lost
  const after = await crashAndReopen(store, memory, indexPath);
  assert.deepEqual(await readBytes(after.store, A, 0, 8192), pattern(A, 1, 0, 8192));
  assert.deepEqual(await readBytes(after.store, A, 8192, 4096), Buffer.alloc(4096));
  assert.equal(after.store.stats().slotsUsed, 1);
  await after.store.close();
});

test('a clean close commits, and a restart reads everything back', async () => {
  const { store, faulty, indexPath } = await fresh(4);
  await store.write(A, 100, pattern(A, 1, 100, 5000));
  await store.write(B, 0, pattern(B, 2, 0, OBJECT_BYTES));
  await store.close();
  const again = await ObjectStore.open({ device: faulty, indexPath });
  assert.deepEqual(await readBytes(again, A, 100, 5000), pattern(A, 1, 100, 5000));
  assert.deepEqual(await readBytes(again, B, 0, OBJECT_BYTES), pattern(B, 2, 0, OBJECT_BYTES));
  assert.equal(again.stats().slotsUsed, 2);
  assert.equal(again.stats().bytesWritten, 2 * 4096 + OBJECT_BYTES);
  await again.close();
});

test('a FUA write is durable when it resolves, without a flush', async () => {
  const { store, memory, indexPath } = await fresh(4);
  await store.write(A, 4096, pattern(A, 1, 4096, 4096), { fua: true });
  const after = await crashAndReopen(store, memory, indexPath);
  assert.deepEqual(await readBytes(after.store, A, 4096, 4096), pattern(A, 1, 4096, 4096));
  await after.store.close();
});

test('concurrent flushes share commits (group commit), one device flush each', async () => {
  const { store, memory } = await fresh(8);
  const commitsBefore = store.stats().commits;
  const flushesBefore = memory.flushCount;
  const writes = [];
  for (let block = 0; block < 16; block += 1) {
    writes.push(store.write(A, block * 4096, pattern(A, block, block * 4096, 4096)));
  }
  await Promise.all(writes);
  await Promise.all(Array.from({ length: 32 }, () => store.flush()));
  // The first caller starts a commit; the other 31 join the one queued behind it, or,
  // if nothing was running, the first. Never 32.
  assert.ok(
    store.stats().commits - commitsBefore <= 2,
    `commits: ${store.stats().commits - commitsBefore}`,
  );
  assert.ok(memory.flushCount - flushesBefore <= 2);
  assert.equal(store.stats().objectsDirty, 0);
  await store.close();
});

test("when the device flush fails, no metadata is committed: a slot's old bytes never show", async () => {
  // Format does not wipe the disk: the slot still holds a former life's bytes.
  const memory = new MemoryDevice(HEADER_AREA_BYTES + OBJECT_BYTES);
  await memory.write(Buffer.alloc(OBJECT_BYTES, 0xab), HEADER_AREA_BYTES);
  await memory.flush();
  const faulty = new FaultyDevice(memory);
  const indexPath = `${root}/index-${counter++}`;
  const store = await ObjectStore.open({
    device: faulty,
    indexPath,
    objectSizeBytes: OBJECT_BYTES,
    format: true,
  });
  await store.write(B, 0, pattern(B, 2, 0, 4096)); // lands in the cache only
  faulty.failNext('flush');
  await assert.rejects(store.flush(), (error: unknown) => isCisternError(error, 'EIO'));
  // Had the index been committed before (or despite) the device flush, block 0 would
  // now be exposed over the old 0xab bytes.
  const after = await crashAndReopen(store, memory, indexPath);
  assert.deepEqual(await readBytes(after.store, B, 0, OBJECT_BYTES), Buffer.alloc(OBJECT_BYTES));
  assert.equal(after.store.stats().slotsUsed, 0);
  await after.store.close();
});

test('a freed slot is not reused until its free is durable', async () => {
  const { store, memory, faulty, indexPath } = await fresh(1);
  await store.write(A, 0, pattern(A, 1, 0, OBJECT_BYTES));
  await store.flush();
  await store.deleteObject(A); // only slot: now pending free, not free
  assert.equal(store.stats().slotsPendingFree, 1);
  assert.equal(store.stats().slotsFree, 0);
  // If the commit that records the free fails, B must not get the slot: a crash would
  // bring back A's record pointing at it, and A would read B's bytes.
  faulty.failNext('flush');
  await assert.rejects(store.write(B, 0, pattern(B, 2, 0, 4096)), (error: unknown) =>
    isCisternError(error, 'EIO'),
  );
  assert.equal(store.stats().slotsUsed, 0);
  // Once the free commits, B gets the slot; crash before B is flushed: A is gone for
  // good (its free was durable) and B's unflushed block is not exposed.
  const commitsBefore = store.stats().commits;
  await store.write(B, 0, pattern(B, 3, 0, 4096));
  assert.equal(
    store.stats().commits,
    commitsBefore + 1,
    'the write committed the free before reusing the slot',
  );
  const after = await crashAndReopen(store, memory, indexPath, new Random(7));
  assert.deepEqual(await readBytes(after.store, A, 0, OBJECT_BYTES), Buffer.alloc(OBJECT_BYTES));
  const b = await readBytes(after.store, B, 0, 4096);
  assert.ok(b.equals(Buffer.alloc(4096)) || b.equals(pattern(B, 3, 0, 4096)));
  await after.store.close();
});

test('a trim that was never flushed may come back, never as other data', async () => {
  const { store, memory, indexPath } = await fresh(2);
  await store.write(A, 0, pattern(A, 1, 0, 2 * 4096));
  await store.flush();
  await store.trim(A, 0, 4096);
  const after = await crashAndReopen(store, memory, indexPath, new Random(3));
  const block = await readBytes(after.store, A, 0, 4096);
  assert.ok(block.equals(pattern(A, 1, 0, 4096)) || block.equals(Buffer.alloc(4096)));
  assert.deepEqual(await readBytes(after.store, A, 4096, 4096), pattern(A, 1, 4096, 4096));
  await after.store.close();
});
