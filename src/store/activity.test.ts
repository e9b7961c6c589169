// Proves the object store's activity record (the objects replicas may differ on after a
// crash) on a disk that loses its volatile cache (MemoryDevice.crash) and a real
// LevelDB index: every object whose content a crash could have changed since its last
// flush is listed after the crash; concurrent first changes of many objects share one
// synced batch instead of one sync each; marks are cleared lazily — kept for the
// retention time and past a commit, then dropped by a commit, durably — on a clock the
// test drives; and a change after that marks the object again.

import { strict as assert } from 'node:assert';
import { after, before, test } from 'node:test';
import { isCisternError } from '../util/errors';
import { Random } from '../util/random';
import type { ObjectKey } from './key';
import { HEADER_AREA_BYTES } from './layout';
import { MemoryDevice } from './memory-device';
import { ACTIVITY_MARK_RETAIN_MS, ObjectStore } from './object-store';
import { pattern, removeDir, tempDir } from './testing';

const OBJECT_BYTES = 64 * 1024;
let root = '';
let counter = 0;

before(async () => {
  root = await tempDir('activity');
});
after(async () => {
  await removeDir(root);
});

async function fresh(slots: number) {
  const memory = new MemoryDevice(HEADER_AREA_BYTES + slots * OBJECT_BYTES);
  const indexPath = `${root}/index-${counter++}`;
  const store = await ObjectStore.open({
    device: memory,
    indexPath,
    objectSizeBytes: OBJECT_BYTES,
    format: true,
  });
  return { store, memory, indexPath };
}

const key = (object: number, pool = 1): ObjectKey => ({ pool, volume: 7, object });
const names = (keys: ObjectKey[]): string[] => keys.map((k) => `${k.pool}/${k.object}`);

test('after a crash, every object a change may have reached since its last flush is listed', async () => {
  for (let seed = 1; seed <= 20; seed += 1) {
    const random = new Random(seed);
    const { store, memory, indexPath } = await fresh(64);
    const objects = Array.from({ length: 24 }, (_, i) => key(i));
    for (const k of objects) await store.write(k, 0, pattern(k, 1, 0, 8192));
    await store.flush();
    const before = new Map<string, Buffer>();
    for (const k of objects) before.set(names([k])[0]!, Buffer.from(await store.read(k, 0, 8192)));
    // A burst of changes of several kinds, crashed at a random moment.
    const burst = objects.filter(() => random.bool(0.5));
    const running = burst.map((k, i) => {
      const kind = i % 4;
      const change =
        kind === 0
          ? store.write(k, 4096, pattern(k, 2, 4096, 4096))
          : kind === 1
            ? store.trim(k, 0, 4096)
            : kind === 2
              ? store.zero(k, 1000, 3000)
              : store.deleteObject(k);
      return change.catch(() => undefined);
    });
    for (let tick = random.int(6); tick > 0; tick -= 1)
      await new Promise((resolve) => setImmediate(resolve));
    const survivor = memory.crash(random);
    await Promise.allSettled(running);
    await store.close().catch((error: unknown) => assert.ok(isCisternError(error, 'EIO')));
    const reopened = await ObjectStore.open({ device: survivor, indexPath });
    const listed = new Set(names(await reopened.activeObjects(1)));
    for (const k of objects) {
      const name = names([k])[0]!;
      const now = Buffer.from(await reopened.read(k, 0, 8192));
      if (!now.equals(before.get(name)!)) {
        assert.ok(listed.has(name), `seed ${seed}: ${name} changed but is not in the record`);
      }
    }
    assert.deepEqual(names(await reopened.activeObjects(2)), [], 'another pool lists nothing');
    await reopened.close();
  }
});

test('concurrent first changes of many objects share one synced batch', async () => {
  const { store } = await fresh(64);
  const db = (store as unknown as { db: { batch: (ops: unknown[], o?: unknown) => unknown } }).db;
  const batch = db.batch.bind(db);
  let synced = 0;
  db.batch = (ops: unknown[], options?: unknown) => {
    if ((options as { sync?: boolean } | undefined)?.sync === true) synced += 1;
    return batch(ops, options);
  };
  const objects = Array.from({ length: 32 }, (_, i) => key(i));
  await Promise.all(objects.map((k) => store.write(k, 0, pattern(k, 1, 0, 4096))));
  assert.ok(synced >= 1 && synced <= 2, `${synced} synced batches for 32 first writes`);
  assert.equal((await store.activeObjects(1)).length, 32);
  // Writes to objects already marked sync nothing.
  synced = 0;
  await Promise.all(objects.map((k) => store.write(k, 4096, pattern(k, 2, 4096, 4096))));
  assert.equal(synced, 0);
  await store.close();
});

test('marks are cleared lazily by a commit after the retention time, durably', async () => {
  const { store, memory, indexPath } = await fresh(8);
  let now = 1_000_000;
  store.now = () => now;
  const a = key(1);
  const b = key(2);
  await store.write(a, 0, pattern(a, 1, 0, 4096));
  await store.write(b, 0, pattern(b, 1, 0, 4096));
  await store.flush();
  await store.flush();
  assert.deepEqual(names(await store.activeObjects()), ['1/1', '1/2'], 'kept within retention');
  now += ACTIVITY_MARK_RETAIN_MS;
  await store.write(b, 0, pattern(b, 2, 0, 4096)); // b changes again: it stays
  await store.flush();
  assert.deepEqual(names(await store.activeObjects()), ['1/2'], 'idle a gone, busy b kept');
  await store.close();
  const reopened = await ObjectStore.open({ device: memory, indexPath });
  assert.deepEqual(names(await reopened.activeObjects()), ['1/2'], 'the clearing was durable');
  await reopened.write(a, 0, pattern(a, 3, 0, 4096));
  assert.deepEqual(names(await reopened.activeObjects()), ['1/1', '1/2'], 'a changed: marked');
  await reopened.close();
});
