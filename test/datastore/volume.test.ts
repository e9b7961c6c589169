// Proves the single-host datastore's volume behaviour on real file-backed disks with
// the native engine: byte ranges across object boundaries and unaligned ones round
// trip; unwritten space reads as zeros and block status reports it as holes; trim and
// zeroing free space; resize grows online and shrinks only when asked, leaving zeros
// behind; delete returns space; flushed data survives a restart; every replica of an
// object holds identical bytes, also after concurrent overlapping writes.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { isCisternError } from '../../src/util/errors';
import { pattern, testDatastore } from './helpers';

const MiB = 2 ** 20;

test('writes across object boundaries and unaligned ranges read back exactly', async () => {
  const t = testDatastore();
  const ds = await t.open();
  try {
    await ds.createVolume({ name: 'v', sizeBytes: 64 * MiB });
    const volume = await ds.open('v', { readOnly: false });
    const big = pattern(9 * MiB + 123, 1); // spans three objects
    await volume.write(3 * MiB + 77, big);
    const odd = pattern(1000, 2);
    await volume.write(40 * MiB + 1, odd);
    assert.deepEqual(Buffer.from(await volume.read(3 * MiB + 77, big.length)), big);
    assert.deepEqual(Buffer.from(await volume.read(40 * MiB + 1, odd.length)), odd);
    assert.deepEqual(Buffer.from(await volume.read(50 * MiB, 8192)), Buffer.alloc(8192));
    await assert.rejects(volume.write(64 * MiB - 10, Buffer.alloc(20)), (e) =>
      isCisternError(e, 'EINVAL'),
    );
    await volume.close();
  } finally {
    await ds.close();
    t.cleanup();
  }
});

test('block status shows holes; trim and zeroing free space and read as zeros', async () => {
  const t = testDatastore();
  const ds = await t.open();
  try {
    await ds.createVolume({ name: 'v', sizeBytes: 32 * MiB });
    const volume = await ds.open('v', { readOnly: false });
    await volume.write(8 * MiB, pattern(8 * MiB, 3));
    const extents = await volume.blockStatus(0, 32 * MiB);
    assert.deepEqual(
      extents.map((e) => [e.length, e.hole]),
      [
        [8 * MiB, true],
        [8 * MiB, false],
        [16 * MiB, true],
      ],
    );
    await volume.trim(8 * MiB, 4 * MiB);
    await volume.writeZeroes(12 * MiB, 4 * MiB);
    assert.deepEqual(Buffer.from(await volume.read(8 * MiB, 8 * MiB)), Buffer.alloc(8 * MiB));
    await volume.flush();
    const info = await ds.volumeInfo('v');
    assert.equal(info.usedBytes, 0, 'freed objects give their slots back');
    await assert.rejects(volume.writeZeroes(0, 4096, { noHole: true, fastZero: true }), (e) =>
      isCisternError(e, 'ENOTSUP'),
    );
    await volume.writeZeroes(0, 4096, { noHole: true });
    assert.equal(
      (await volume.blockStatus(0, 4096))[0]?.hole,
      false,
      'NO_HOLE zeros stay allocated',
    );
    await volume.close();
  } finally {
    await ds.close();
    t.cleanup();
  }
});

test('resize grows online, shrinks only when asked, and a regrown tail reads as zeros', async () => {
  const t = testDatastore();
  const ds = await t.open();
  try {
    await ds.createVolume({ name: 'v', sizeBytes: 16 * MiB });
    const volume = await ds.open('v', { readOnly: false });
    await volume.write(10 * MiB, pattern(6 * MiB, 4));
    await volume.close();
    assert.equal((await ds.resizeVolume('v', 32 * MiB, {})).sizeBytes, 32 * MiB);
    await assert.rejects(ds.resizeVolume('v', 8 * MiB, {}), /allow-shrink/);
    await ds.resizeVolume('v', 11 * MiB, { allowShrink: true });
    await ds.resizeVolume('v', 32 * MiB, {});
    const again = await ds.open('v', { readOnly: false });
    assert.deepEqual(
      Buffer.from(await again.read(10 * MiB, MiB)),
      pattern(6 * MiB, 4).subarray(0, MiB),
    );
    assert.deepEqual(Buffer.from(await again.read(11 * MiB, 5 * MiB)), Buffer.alloc(5 * MiB));
    await again.close();
  } finally {
    await ds.close();
    t.cleanup();
  }
});

test('deleting a volume returns its space; an open volume is refused without force', async () => {
  const t = testDatastore();
  const ds = await t.open();
  try {
    await ds.createVolume({ name: 'v', sizeBytes: 64 * MiB });
    const volume = await ds.open('v', { readOnly: false });
    await volume.write(0, pattern(20 * MiB, 5));
    await volume.flush();
    const usedBefore = (await ds.status()).usedBytes;
    assert.ok(usedBefore >= 2 * 20 * MiB, `used ${usedBefore}`);
    await assert.rejects(ds.removeVolume('v', {}), (e) => isCisternError(e, 'EPERM'));
    await volume.close();
    await ds.removeVolume('v', {});
    assert.equal((await ds.status()).usedBytes, 0);
    await assert.rejects(ds.volumeInfo('v'), (e) => isCisternError(e, 'UNKNOWN_VOLUME'));
  } finally {
    await ds.close();
    t.cleanup();
  }
});

test('flushed data survives a restart, and the map remembers pools and volumes', async () => {
  const t = testDatastore();
  const data = pattern(5 * MiB, 6);
  let ds = await t.open();
  try {
    await ds.createPool({ name: 'single', size: 1, minSize: 1 });
    await ds.createVolume({ name: 'v', sizeBytes: 16 * MiB, pool: 'single' });
    const volume = await ds.open('v', { readOnly: false });
    await volume.write(MiB, data);
    await volume.flush();
    await volume.close();
    await ds.close();
    ds = await t.open();
    assert.deepEqual((await ds.listPools()).map((p) => p.name).sort(), ['default', 'single']);
    const reopened = await ds.open('v', { readOnly: false });
    assert.deepEqual(Buffer.from(await reopened.read(MiB, data.length)), data);
    await reopened.close();
  } finally {
    await ds.close();
    t.cleanup();
  }
});

test('every replica holds identical bytes, also after concurrent overlapping writes', async () => {
  const t = testDatastore();
  const ds = await t.open();
  try {
    await ds.createVolume({ name: 'v', sizeBytes: 16 * MiB });
    const volume = await ds.open('v', { readOnly: false });
    // 64 overlapping writes to one object, all in flight at once.
    await Promise.all(
      Array.from({ length: 64 }, (_, i) =>
        volume.write((i % 7) * 4096 + (i % 3) * 100, pattern(64 * 1024, 100 + i)),
      ),
    );
    await volume.flush();
    await volume.close();
    const replicas = await ds.readReplicas('v', 0, 128 * 1024);
    assert.equal(replicas.length, 2, 'pool size 2 keeps two replicas');
    assert.equal(new Set(replicas.map((r) => r.disk)).size, 2, 'on two different disks');
    assert.deepEqual(Buffer.from(replicas[0]!.data), Buffer.from(replicas[1]!.data));
    assert.notDeepEqual(Buffer.from(replicas[0]!.data), Buffer.alloc(128 * 1024));
  } finally {
    await ds.close();
    t.cleanup();
  }
});
