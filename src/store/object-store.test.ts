// Proves the object store's contract on a healthy in-memory disk: byte-exact round
// trips (aligned and not), zeros for whatever was never written, thin provisioning,
// space returned by trim/zero/delete, block status, key-ordered listing, range checks,
// ENOSPC for one request while other objects carry on, EIO for one request, and that a
// foreign, blank or mismatched disk is refused with a clear error.

import { strict as assert } from 'node:assert';
import { after, before, describe, test } from 'node:test';
import { isCisternError } from '../util/errors';
import { FaultyDevice } from './faulty-device';
import { decodeObjectKey, encodeObjectKey, type ObjectKey } from './key';
import { HEADER_AREA_BYTES } from './layout';
import { MemoryDevice } from './memory-device';
import { ObjectStore } from './object-store';
import { pattern, removeDir, tempDir } from './testing';

const OBJECT_BYTES = 64 * 1024;
const KEY: ObjectKey = { pool: 1, volume: 2, object: 3 };
let root = '';
let counter = 0;

before(async () => {
  root = await tempDir('store');
});
after(async () => {
  await removeDir(root);
});

async function fresh(slots = 8, device?: MemoryDevice | FaultyDevice) {
  const disk = device ?? new MemoryDevice(HEADER_AREA_BYTES + slots * OBJECT_BYTES);
  const indexPath = `${root}/index-${counter++}`;
  const store = await ObjectStore.open({
    device: disk,
    indexPath,
    objectSizeBytes: OBJECT_BYTES,
    format: true,
  });
  return { store, disk, indexPath };
}

function rejectsWith(code: string) {
  return (error: unknown) => {
    assert.ok(isCisternError(error), `expected a CisternError, got ${String(error)}`);
    assert.equal(error.code, code, error.message);
    return true;
  };
}

describe('object keys', () => {
  test('encode and decode round-trip, up to the 2^40 object limit', () => {
    for (const key of [
      { pool: 0, volume: 0, object: 0 },
      { pool: 2 ** 32 - 1, volume: 7, object: 2 ** 40 - 1 },
      { pool: 5, volume: 2 ** 32 - 1, object: 2 ** 33 + 17 },
    ]) {
      assert.deepEqual(decodeObjectKey(encodeObjectKey(key)), key);
    }
    assert.throws(
      () => encodeObjectKey({ pool: 1, volume: 1, object: 2 ** 40 }),
      rejectsWith('EINVAL'),
    );
    assert.throws(() => encodeObjectKey({ pool: -1, volume: 1, object: 0 }), rejectsWith('EINVAL'));
  });

  test('byte order of encoded keys is numeric order of (pool, volume, object)', () => {
    const keys = [
      { pool: 2, volume: 0, object: 0 },
      { pool: 1, volume: 1, object: 2 ** 32 },
      { pool: 1, volume: 1, object: 255 },
      { pool: 1, volume: 2, object: 0 },
      { pool: 1, volume: 1, object: 256 },
    ];
    const byBytes = [...keys].sort((a, b) =>
      Buffer.compare(encodeObjectKey(a), encodeObjectKey(b)),
    );
    const numeric = [...keys].sort(
      (a, b) => a.pool - b.pool || a.volume - b.volume || a.object - b.object,
    );
    assert.deepEqual(byBytes, numeric);
  });
});

describe('object store', () => {
  test('whole-block writes read back byte for byte', async () => {
    const { store } = await fresh();
    const data = pattern(KEY, 1, 8192, 3 * 4096);
    await store.write(KEY, 8192, data);
    assert.deepEqual(Buffer.from(await store.read(KEY, 8192, data.length)), data);
    await store.close();
  });

  test('unaligned writes merge with neighbouring bytes (read-modify-write)', async () => {
    const { store } = await fresh();
    const first = pattern(KEY, 1, 0, OBJECT_BYTES);
    await store.write(KEY, 0, first);
    const second = pattern(KEY, 2, 4000, 5000);
    await store.write(KEY, 4000, second);
    const expected = Buffer.from(first);
    second.copy(expected, 4000);
    assert.deepEqual(Buffer.from(await store.read(KEY, 0, OBJECT_BYTES)), expected);
    assert.deepEqual(Buffer.from(await store.read(KEY, 4001, 10)), expected.subarray(4001, 4011));
    await store.close();
  });

  test('concurrent unaligned writes to one block lose neither', async () => {
    const { store } = await fresh();
    const writes = [];
    for (let index = 0; index < 8; index += 1) {
      writes.push(store.write(KEY, index * 512, pattern(KEY, index + 1, index * 512, 512)));
    }
    await Promise.all(writes);
    const block = Buffer.from(await store.read(KEY, 0, 4096));
    for (let index = 0; index < 8; index += 1) {
      assert.deepEqual(
        block.subarray(index * 512, index * 512 + 512),
        pattern(KEY, index + 1, index * 512, 512),
      );
    }
    await store.close();
  });

  test('unwritten blocks and missing objects read as zeros without device reads', async () => {
    const { store } = await fresh();
    assert.deepEqual(
      Buffer.from(await store.read(KEY, 0, OBJECT_BYTES)),
      Buffer.alloc(OBJECT_BYTES),
    );
    await store.write(KEY, 4096, pattern(KEY, 1, 4096, 4096));
    const bytes = Buffer.from(await store.read(KEY, 0, 3 * 4096));
    assert.deepEqual(bytes.subarray(0, 4096), Buffer.alloc(4096));
    assert.deepEqual(bytes.subarray(8192), Buffer.alloc(4096));
    await store.close();
  });

  test('thin provisioning: a slot is taken on first write only', async () => {
    const { store } = await fresh();
    assert.equal(store.stats().slotsUsed, 0);
    await store.read(KEY, 0, 4096);
    assert.equal(store.stats().slotsUsed, 0);
    await store.write(KEY, 0, pattern(KEY, 1, 0, 4096));
    await store.write(KEY, 8192, pattern(KEY, 2, 8192, 4096));
    assert.equal(store.stats().slotsUsed, 1);
    assert.equal(store.stats().bytesWritten, 8192);
    await store.close();
  });

  test('trim and zero free whole blocks; the last one frees the slot and punches the device', async () => {
    const { store, disk } = await fresh();
    await store.write(KEY, 0, pattern(KEY, 1, 0, 4 * 4096));
    assert.equal((disk as MemoryDevice).sectorsInUse(), 1 + 4); // superblock + data
    await store.trim(KEY, 0, 4096 + 100); // the partial second block stays
    assert.equal(store.stats().bytesWritten, 3 * 4096);
    assert.deepEqual(Buffer.from(await store.read(KEY, 0, 4096)), Buffer.alloc(4096));
    await store.zero(KEY, 4096 + 100, 100); // partial: zeros written, block kept
    const second = Buffer.from(await store.read(KEY, 4096, 4096));
    const expected = Buffer.from(pattern(KEY, 1, 4096, 4096));
    expected.fill(0, 100, 200);
    assert.deepEqual(second, expected);
    await store.zero(KEY, 4096, 3 * 4096);
    assert.equal(store.stats().slotsUsed, 0);
    assert.equal(store.stats().slotsPendingFree, 1);
    assert.equal((disk as MemoryDevice).sectorsInUse(), 1);
    await store.flush();
    assert.equal(store.stats().slotsPendingFree, 0);
    assert.equal(store.stats().slotsFree, 8);
    await store.close();
  });

  test('deleteObject frees the slot; a second delete is a no-op', async () => {
    const { store } = await fresh();
    await store.write(KEY, 0, pattern(KEY, 1, 0, 4096));
    assert.equal(await store.deleteObject(KEY), true);
    assert.equal(await store.deleteObject(KEY), false);
    assert.deepEqual(Buffer.from(await store.read(KEY, 0, 4096)), Buffer.alloc(4096));
    assert.equal(store.stats().slotsUsed, 0);
    await store.close();
  });

  test('block status reports data and holes exactly over the asked range', async () => {
    const { store } = await fresh();
    assert.deepEqual(await store.blockStatus(KEY, 0, 10000), [
      { length: 10000, hole: true, zero: true },
    ]);
    await store.write(KEY, 4096, pattern(KEY, 1, 4096, 8192));
    assert.deepEqual(await store.blockStatus(KEY, 100, 5 * 4096), [
      { length: 4096 - 100, hole: true, zero: true },
      { length: 8192, hole: false, zero: false },
      { length: 2 * 4096 + 100, hole: true, zero: true },
    ]);
    await store.close();
  });

  test('listObjects scans one volume in key order, with uncommitted changes', async () => {
    const { store } = await fresh(16);
    const keys = [
      { pool: 1, volume: 1, object: 5 },
      { pool: 1, volume: 2, object: 9 },
      { pool: 1, volume: 2, object: 2 ** 35 },
      { pool: 1, volume: 2, object: 1 },
      { pool: 2, volume: 2, object: 0 },
    ];
    for (const [index, key] of keys.entries())
      await store.write(key, 0, pattern(key, index, 0, 4096));
    await store.flush();
    await store.deleteObject({ pool: 1, volume: 2, object: 9 });
    await store.write({ pool: 1, volume: 2, object: 3 }, 0, pattern(KEY, 9, 0, 4096));
    const listed = [];
    for await (const key of store.listObjects({ pool: 1, volume: 2 })) listed.push(key.object);
    assert.deepEqual(listed, [1, 3, 2 ** 35]);
    const all = [];
    for await (const key of store.listObjects()) all.push(key);
    assert.equal(all.length, 5);
    await assert.rejects(async () => {
      for await (const key of store.listObjects({ volume: 1 })) void key;
    }, rejectsWith('EINVAL'));
    await store.close();
  });

  test('ranges outside the object are refused with EINVAL', async () => {
    const { store } = await fresh();
    await assert.rejects(store.read(KEY, OBJECT_BYTES - 10, 11), rejectsWith('EINVAL'));
    await assert.rejects(store.write(KEY, -1, Buffer.alloc(1)), rejectsWith('EINVAL'));
    await assert.rejects(store.trim(KEY, 0.5, 1), rejectsWith('EINVAL'));
    assert.equal((await store.read(KEY, OBJECT_BYTES, 0)).length, 0);
    await store.close();
  });

  test('a full disk fails the request that needs a slot with ENOSPC, and nothing else', async () => {
    const { store } = await fresh(2);
    const a = { pool: 1, volume: 1, object: 1 };
    const b = { pool: 1, volume: 1, object: 2 };
    const c = { pool: 1, volume: 1, object: 3 };
    await store.write(a, 0, pattern(a, 1, 0, 4096));
    await store.write(b, 0, pattern(b, 2, 0, 4096));
    await assert.rejects(store.write(c, 0, pattern(c, 3, 0, 4096)), rejectsWith('ENOSPC'));
    await store.write(a, 8192, pattern(a, 4, 8192, 4096)); // objects with slots carry on
    await store.flush();
    assert.deepEqual(Buffer.from(await store.read(a, 8192, 4096)), pattern(a, 4, 8192, 4096));
    // A delete frees a slot; the write that needs it commits the free, then succeeds.
    await store.deleteObject(b);
    await store.write(c, 0, pattern(c, 5, 0, 4096));
    assert.deepEqual(Buffer.from(await store.read(c, 0, 4096)), pattern(c, 5, 0, 4096));
    await store.close();
  });

  test('a device error fails that request only', async () => {
    const faulty = new FaultyDevice(new MemoryDevice(HEADER_AREA_BYTES + 4 * OBJECT_BYTES));
    const { store } = await fresh(4, faulty);
    await store.write(KEY, 0, pattern(KEY, 1, 0, 4096));
    faulty.failNext('write');
    await assert.rejects(store.write(KEY, 4096, pattern(KEY, 2, 4096, 4096)), rejectsWith('EIO'));
    faulty.failNext('read');
    await assert.rejects(store.read(KEY, 0, 4096), rejectsWith('EIO'));
    faulty.failNext('flush');
    await assert.rejects(store.flush(), rejectsWith('EIO'));
    await store.write(KEY, 4096, pattern(KEY, 3, 4096, 4096));
    await store.flush();
    assert.deepEqual(
      Buffer.from(await store.read(KEY, 0, 8192)),
      pattern(KEY, 1, 0, 8192).fill(pattern(KEY, 3, 4096, 4096), 4096),
    );
    assert.equal(faulty.faults, 3);
    await store.close();
  });

  test('close waits for operations in flight, then refuses new ones', async () => {
    const { store } = await fresh();
    const writes = [];
    for (let block = 0; block < 16; block += 1) {
      writes.push(store.write(KEY, block * 4096, pattern(KEY, block, block * 4096, 4096)));
    }
    await store.close();
    await Promise.all(writes);
    await assert.rejects(store.read(KEY, 0, 1), rejectsWith('CLOSED'));
  });
});

describe('opening disks', () => {
  test('a blank disk is refused without format', async () => {
    const device = new MemoryDevice(HEADER_AREA_BYTES + 4 * OBJECT_BYTES);
    await assert.rejects(
      ObjectStore.open({ device, indexPath: `${root}/blank-${counter++}`, format: false }),
      (error: unknown) => isCisternError(error, 'EINVAL') && /format: true/.test(error.message),
    );
  });

  test('a foreign disk (not ours) is refused as not a Cistern disk', async () => {
    const device = new MemoryDevice(HEADER_AREA_BYTES + 4 * OBJECT_BYTES);
    await device.write(Buffer.alloc(4096, 0xeb), 0); // someone else's boot sector
    const other = await fresh(4); // a valid index of another disk
    await other.store.close();
    const indexPath = other.indexPath;
    await assert.rejects(ObjectStore.open({ device, indexPath }), rejectsWith('EINVAL'));
  });

  test("another disk's index is refused as the wrong disk", async () => {
    const one = await fresh(4);
    const two = await fresh(4);
    await one.store.close();
    await two.store.close();
    await assert.rejects(
      ObjectStore.open({ device: one.disk, indexPath: two.indexPath }),
      (error: unknown) => isCisternError(error, 'EINVAL') && /wrong disk/.test(error.message),
    );
  });

  test('a corrupted superblock is refused as CORRUPT; a mismatched object size as EINVAL', async () => {
    const { store, disk, indexPath } = await fresh(4);
    await store.close();
    await assert.rejects(
      ObjectStore.open({ device: disk, indexPath, objectSizeBytes: 2 * OBJECT_BYTES }),
      rejectsWith('EINVAL'),
    );
    const superblock = Buffer.alloc(4096);
    await disk.read(superblock, 0);
    superblock[30] ^= 1;
    await disk.write(superblock, 0);
    await assert.rejects(ObjectStore.open({ device: disk, indexPath }), rejectsWith('CORRUPT'));
  });

  test('an index held open by another store is refused as UNAVAILABLE', async () => {
    const { store, disk, indexPath } = await fresh(4);
    await assert.rejects(ObjectStore.open({ device: disk, indexPath }), rejectsWith('UNAVAILABLE'));
    await store.close();
  });

  test('formatting over an index in use is refused with EEXIST', async () => {
    const { store, disk, indexPath } = await fresh(4);
    await store.close();
    await assert.rejects(
      ObjectStore.open({ device: disk, indexPath, format: true }),
      rejectsWith('EEXIST'),
    );
  });
});
