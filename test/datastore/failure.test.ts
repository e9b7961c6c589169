// Proves the single-host datastore keeps data through a failing disk and bad luck:
// a disk that starts returning I/O errors under a concurrent write load is taken out
// of service, every acknowledged write stays readable from the other replica, status
// says the pool is degraded and what to do, and the disk stays out after a restart;
// with min-size 2 the same failure makes writes fail clearly instead of keeping one
// copy; a full disk fails only the request that needs space.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { FaultyDevice } from '../../src/store/faulty-device';
import { BlockDevice } from '../../src/store/device';
import { isCisternError } from '../../src/util/errors';
import { Random } from '../../src/util/random';
import { pattern, testDatastore } from './helpers';

const MiB = 2 ** 20;

function faultyDisk(target: number): {
  wrap: (id: number, d: BlockDevice) => BlockDevice;
  faulty: () => FaultyDevice;
} {
  let faulty: FaultyDevice | undefined;
  return {
    wrap: (id, device) => {
      if (id !== target) return device;
      faulty = new FaultyDevice(device);
      return faulty;
    },
    faulty: () => {
      assert.ok(faulty, 'faulty disk was opened');
      return faulty;
    },
  };
}

test('a disk failing under load loses nothing; status says degraded; it stays out after restart', async () => {
  const t = testDatastore();
  const disk = faultyDisk(1);
  let ds = await t.open({ wrapDevice: disk.wrap });
  const random = new Random(5);
  const blockBytes = 64 * 1024;
  const blocks = 256; // 16 MiB volume of 64 KiB blocks
  const written = new Map<number, number>(); // block → seed of its acknowledged content
  try {
    await ds.createVolume({ name: 'v', sizeBytes: blocks * blockBytes });
    const volume = await ds.open('v', { readOnly: false });
    let seed = 1;
    for (let round = 0; round < 8; round += 1) {
      if (round === 3) disk.faulty().failAlways('read', 'write', 'flush', 'punchHole', 'zeroRange');
      await Promise.all(
        Array.from({ length: 32 }, async () => {
          const block = random.int(blocks);
          const mySeed = (seed += 1);
          await volume.write(block * blockBytes, pattern(blockBytes, mySeed));
          written.set(block, mySeed);
        }),
      );
      await volume.flush();
    }
    for (const [block, s] of written) {
      assert.deepEqual(
        Buffer.from(await volume.read(block * blockBytes, blockBytes)),
        pattern(blockBytes, s),
      );
    }
    const status = await ds.status();
    assert.equal(status.health, 'degraded');
    assert.equal(status.disks.find((d) => d.id === 1)?.up, false);
    assert.match(status.messages.join('\n'), /disk 1 .* out of service/);
    assert.match(status.messages.join('\n'), /pool default is degraded/);
    assert.ok(t.events.some((e) => e.event === 'disk.failed' && e.fields['disk'] === 1));
    await volume.close();
    await ds.close();

    ds = await t.open();
    assert.equal(
      (await ds.status()).disks.find((d) => d.id === 1)?.up,
      false,
      'stays down after restart',
    );
    const again = await ds.open('v', { readOnly: false });
    for (const [block, s] of written) {
      assert.deepEqual(
        Buffer.from(await again.read(block * blockBytes, blockBytes)),
        pattern(blockBytes, s),
      );
    }
    await again.close();
  } finally {
    await ds.close();
    t.cleanup();
  }
});

test('with min-size 2, losing a disk makes writes to its PGs fail clearly', async () => {
  const t = testDatastore();
  const disk = faultyDisk(0);
  const ds = await t.open({ wrapDevice: disk.wrap });
  try {
    await ds.createPool({ name: 'strict', size: 2, minSize: 2 });
    await ds.createVolume({ name: 'v', sizeBytes: 64 * MiB, pool: 'strict' });
    const volume = await ds.open('v', { readOnly: false });
    await volume.write(0, pattern(64 * MiB, 1));
    disk.faulty().failAlways('write', 'read', 'flush');
    const results = await Promise.allSettled(
      Array.from({ length: 16 }, (_, i) => volume.write(i * 4 * MiB, pattern(4096, 2))),
    );
    const failures = results.filter((r) => r.status === 'rejected');
    assert.ok(failures.length > 0, 'objects with disk 0 as a member cannot take writes');
    for (const f of failures) {
      assert.ok(
        isCisternError((f as PromiseRejectedResult).reason, 'UNAVAILABLE'),
        String((f as PromiseRejectedResult).reason),
      );
    }
    const status = await ds.status();
    assert.equal(status.health, 'unavailable');
    assert.match(status.messages.join('\n'), /fewer than min-size/);
    await volume.close();
  } finally {
    await ds.close();
    t.cleanup();
  }
});

test('a full datastore fails only the request that needs new space', async () => {
  const t = testDatastore(2, 24 * MiB); // a handful of 4 MiB slots per disk
  const ds = await t.open();
  try {
    await ds.createVolume({ name: 'v', sizeBytes: 256 * MiB });
    const volume = await ds.open('v', { readOnly: false });
    let full: unknown;
    let objects = 0;
    for (; objects < 64; objects += 1) {
      try {
        await volume.write(objects * 4 * MiB, pattern(4096, objects + 1));
      } catch (error) {
        full = error;
        break;
      }
    }
    assert.ok(isCisternError(full, 'ENOSPC'), `expected ENOSPC, got ${String(full)}`);
    assert.ok(objects >= 2, `only ${objects} objects fit`);
    // Existing objects still take writes and read back.
    await volume.write(4096, pattern(4096, 99));
    assert.deepEqual(Buffer.from(await volume.read(4096, 4096)), pattern(4096, 99));
    assert.deepEqual(Buffer.from(await volume.read(0, 4096)), pattern(4096, 1));
    await volume.close();
  } finally {
    await ds.close();
    t.cleanup();
  }
});
