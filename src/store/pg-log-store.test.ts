// Proves that the object store's PG log (pg-log.ts) is persisted with the object index
// and group-committed with it: entries and versions survive a close and reopen; after a
// crash of a disk that loses or tears unflushed writes (MemoryDevice.crash, seeded),
// the reopened log never claims a change the disk lost — every entry it lists and every
// change up to its `complete` reads back — and reading a PG's log makes what it
// reported durable. Changes go to distinct blocks, so "reads back" is exact. And the
// activity record tells the marks a previous run left from those made since. And the
// journal of changes waiting for a commit stays within its bound however long nobody
// flushes (writes, zeroes, trims), committed as it fills.

import { strict as assert } from 'node:assert';
import { after, before, test } from 'node:test';
import { Random } from '../util/random';
import type { ObjectKey } from './key';
import { HEADER_AREA_BYTES } from './layout';
import { MemoryDevice } from './memory-device';
import { MAX_LOG_JOURNAL_OPS, ObjectStore } from './object-store';
import { LogTag, PG_LOG_ENTRIES_MAX, PgVersion, compareVersions } from './pg-log';
import { pattern, removeDir, tempDir } from './testing';

const OBJECT_BYTES = 64 * 1024;
const BLOCKS = OBJECT_BYTES / 4096;
let root = '';
let counter = 0;

before(async () => {
  root = await tempDir('pglog');
});
after(async () => {
  await removeDir(root);
});

async function fresh() {
  const memory = new MemoryDevice(HEADER_AREA_BYTES + 32 * OBJECT_BYTES);
  const indexPath = `${root}/index-${counter++}`;
  const store = await ObjectStore.open({
    device: memory,
    indexPath,
    objectSizeBytes: OBJECT_BYTES,
    format: true,
  });
  return { store, memory, indexPath };
}

/** Change `i` writes block i % BLOCKS of object floor(i / BLOCKS): one block each. */
const place = (i: number): { key: ObjectKey; offset: number } => ({
  key: { pool: 1, volume: 1, object: Math.floor(i / BLOCKS) },
  offset: (i % BLOCKS) * 4096,
});
const version = (i: number): PgVersion => ({ epoch: 7, seq: 1000 + i });

test('the log survives a close and a reopen', async () => {
  const { store, memory, indexPath } = await fresh();
  for (let i = 0; i < 20; i += 1) {
    const { key, offset } = place(i);
    const complete = i > 0 ? { complete: version(i - 1) } : {};
    await store.write(key, offset, pattern(key, i, offset, 4096), {
      log: { pg: 5, version: version(i), ...complete },
    });
  }
  await store.deleteObject({ pool: 1, volume: 1, object: 30 }, { pg: 5, version: version(20) });
  await store.markPgLog(1, 6, { start: version(3) });
  const before = await store.pgLog(1, 5, { epoch: 0, seq: 0 });
  assert.equal(before.entries.length, 21);
  assert.deepEqual(before.complete, version(18));
  await store.close();
  const reopened = await ObjectStore.open({ device: memory, indexPath });
  assert.deepEqual(await reopened.pgLog(1, 5, { epoch: 0, seq: 0 }), before);
  assert.deepEqual((await reopened.pgLog(1, 6)).start, version(3));
  assert.deepEqual(
    (await reopened.pgLog(1, 5)).entries.map((e) => e.version),
    [version(19), version(20)],
    'by default, the entries after its complete',
  );
  await reopened.close();
});

test('after a crash the log never claims a change the disk lost', async () => {
  for (let seed = 1; seed <= 12; seed += 1) {
    const random = new Random(seed);
    const { store, memory, indexPath } = await fresh();
    // A primary's view: a change's `complete` is the highest version below which every
    // change has completed (as LocalReplication sends it).
    const done = new Set<number>();
    let complete = -1;
    const running: Array<Promise<unknown>> = [];
    const total = 200;
    let crashed: MemoryDevice | undefined;
    for (let i = 0; i < total && !crashed; i += 1) {
      const { key, offset } = place(i);
      const tag = {
        pg: 1,
        version: version(i),
        ...(complete >= 0 ? { complete: version(complete) } : {}),
      };
      running.push(
        store
          .write(key, offset, pattern(key, i, offset, 4096), { log: tag, fua: random.bool(0.05) })
          .then(() => {
            done.add(i);
            while (done.has(complete + 1)) complete += 1;
          })
          .catch(() => undefined),
      );
      if (random.bool(0.1)) running.push(store.flush().catch(() => undefined));
      if (random.bool(0.05)) running.push(store.pgLog(1, 1).catch(() => undefined));
      if (random.bool(0.3)) await new Promise((resolve) => setImmediate(resolve));
      if (i > 20 && random.bool(0.02)) crashed = memory.crash(random);
    }
    crashed ??= memory.crash(random);
    await Promise.allSettled(running);
    await store.close().catch(() => undefined);
    const reopened = await ObjectStore.open({ device: crashed, indexPath });
    const log = await reopened.pgLog(1, 1, { epoch: 0, seq: 0 });
    const claimed = new Set(log.entries.map((e) => e.version.seq - 1000));
    if (log.complete) for (let i = 0; i <= log.complete.seq - 1000; i += 1) claimed.add(i);
    for (const i of claimed) {
      const { key, offset } = place(i);
      const now = Buffer.from(await reopened.read(key, offset, 4096));
      assert.ok(
        now.equals(pattern(key, i, offset, 4096)),
        `seed ${seed}: change ${i} is claimed by the log (complete ${log.complete?.seq}) but lost`,
      );
    }
    for (let i = 1; i < log.entries.length; i += 1)
      assert.ok(compareVersions(log.entries[i - 1]!.version, log.entries[i]!.version) < 0);
    await reopened.close();
  }
});

test('the activity record tells the marks an earlier run left (what catch-up compares)', async () => {
  const { store, memory, indexPath } = await fresh();
  const a = { pool: 1, volume: 1, object: 1 };
  const b = { pool: 1, volume: 1, object: 2 };
  await store.write(a, 0, pattern(a, 1, 0, 4096));
  await store.flush();
  assert.deepEqual(await store.activeObjects(1, true), [], 'nothing from an earlier run');
  await store.close();
  const reopened = await ObjectStore.open({ device: memory, indexPath });
  await reopened.write(b, 0, pattern(b, 1, 0, 4096));
  assert.deepEqual(await reopened.activeObjects(1, true), [a], 'left by the last run');
  assert.deepEqual(await reopened.activeObjects(1), [a, b], 'all of them');
  await reopened.close();
});

/**
 * Runs `changes` changes of one object through `change` with no flush, as a client that
 * never flushes does, and returns the largest PG-log journal seen between them.
 */
async function unflushed(
  store: ObjectStore,
  changes: number,
  change: (key: ObjectKey, tag: LogTag) => Promise<unknown>,
): Promise<number> {
  const key: ObjectKey = { pool: 1, volume: 1, object: 0 };
  let largest = 0;
  for (let i = 0; i < changes; i += 1) {
    await change(key, { pg: 5, version: version(i) });
    largest = Math.max(largest, store.stats().logJournalOps);
  }
  return largest;
}

test('a client that never flushes: the journal stays bounded, committed as it reaches the bound', async () => {
  const { store, memory, indexPath } = await fresh();
  // Each change journals its entry, and past the log's bound the entry it trims and the
  // PG's versions: over 200 000 operations without the bound, more than a spread call's
  // arguments could hold (the commit failed: "Maximum call stack size exceeded").
  const changes = 80_000;
  const data = pattern({ pool: 1, volume: 1, object: 0 }, 0, 0, 4096);
  const largest = await unflushed(store, changes, (key, log) => store.write(key, 0, data, { log }));
  // One change in flush at a time here: the bound is overshot by one change's operations.
  assert.ok(largest <= MAX_LOG_JOURNAL_OPS + 3, `journal reached ${largest}`);
  assert.ok(store.stats().commits >= 6, `${store.stats().commits} commits`);
  await store.flush();
  await store.close();
  const reopened = await ObjectStore.open({ device: memory, indexPath });
  const log = await reopened.pgLog(1, 5, { epoch: 0, seq: 0 });
  assert.deepEqual(log.entries[log.entries.length - 1]?.version, version(changes - 1));
  assert.equal(log.entries.length, PG_LOG_ENTRIES_MAX);
  await reopened.close();
});

test('zeroes and trims are bounded too (no data written: no dirty-object bound to help)', async () => {
  const { store } = await fresh();
  const changes = 3 * MAX_LOG_JOURNAL_OPS;
  const largest = await unflushed(store, changes, (key, log) =>
    log.version.seq % 2 === 0 ? store.zero(key, 0, 4096, log) : store.trim(key, 0, 4096, log),
  );
  assert.ok(largest <= MAX_LOG_JOURNAL_OPS + 3, `journal reached ${largest}`);
  await store.close();
});
