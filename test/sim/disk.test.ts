// Proves the simulated disk's crash model (disk.ts), on which the simulator's invariant
// checks rest: completed writes are read back; a flush makes durable exactly what had
// completed when it was issued; a power loss keeps the durable state and, of unflushed
// changes, only what the seeded choice keeps (never data that was not written); FUA
// persists at once; a failed medium answers EIO; listing is in key order.

import { strict as assert } from 'node:assert';
import { test } from 'node:test';
import { isCisternError } from '../../src/util/errors';
import { DiskMedium, SimDisk, SIM_BLOCK_BYTES } from './disk';
import { Scheduler, drainMicrotasks } from './scheduler';

const key = { pool: 1, volume: 1, object: 7 };

function block(fill: number): Buffer {
  return Buffer.alloc(SIM_BLOCK_BYTES, fill);
}

/** Byte equality whatever the view type (Buffer or Uint8Array). */
function same(actual: Uint8Array, expected: Uint8Array): void {
  assert.ok(Buffer.from(actual).equals(Buffer.from(expected)), 'bytes differ');
}

async function settle<T>(scheduler: Scheduler, promise: Promise<T>): Promise<T> {
  let done = false;
  const result = promise.finally(() => (done = true));
  result.catch(() => undefined); // handled by the caller, after the steps
  await drainMicrotasks();
  while (!done && (await scheduler.step()));
  return result;
}

async function list(disk: SimDisk, pool?: number): Promise<number[]> {
  const objects: number[] = [];
  for await (const k of disk.listObjects(pool === undefined ? {} : { pool }))
    objects.push(k.object);
  return objects;
}

function setup(): { scheduler: Scheduler; medium: DiskMedium; disk: () => SimDisk } {
  const scheduler = new Scheduler(7);
  const medium = new DiskMedium(0);
  return { scheduler, medium, disk: () => new SimDisk(medium, scheduler, () => true, 'd0') };
}

test('flushed writes survive a power loss; unflushed ones only as the crash chooses', async () => {
  const { scheduler, medium, disk } = setup();
  const d = disk();
  await settle(scheduler, d.write(key, 0, block(1)));
  await settle(scheduler, d.flush());
  await settle(scheduler, d.write(key, 0, block(2)));
  await settle(scheduler, d.write(key, SIM_BLOCK_BYTES, block(3)));
  same(await settle(scheduler, d.read(key, 0, SIM_BLOCK_BYTES)), block(2));
  assert.equal(
    medium.crash(() => false),
    2,
    'both unflushed changes dropped',
  );
  const after = disk();
  same(
    await settle(scheduler, after.read(key, 0, 2 * SIM_BLOCK_BYTES)),
    Buffer.concat([block(1), block(0)]),
  );
});

test('a torn sequence keeps each unflushed block or not, in order', async () => {
  const { scheduler, medium, disk } = setup();
  const d = disk();
  await settle(scheduler, d.write(key, 0, Buffer.concat([block(4), block(5)])));
  const choices = [false, true];
  medium.crash(() => choices.shift()!);
  const bytes = await settle(scheduler, disk().read(key, 0, 2 * SIM_BLOCK_BYTES));
  same(bytes, Buffer.concat([block(0), block(5)]));
});

test('a flush covers what completed before it was issued, not what completed after', async () => {
  const { scheduler, medium, disk } = setup();
  const d = disk();
  await settle(scheduler, d.write(key, 0, block(1)));
  const flush = d.flush();
  await settle(scheduler, d.write(key, SIM_BLOCK_BYTES, block(2))); // may complete before the flush
  await settle(scheduler, flush);
  medium.crash(() => false);
  const bytes = await settle(scheduler, disk().read(key, 0, 2 * SIM_BLOCK_BYTES));
  same(bytes.subarray(0, SIM_BLOCK_BYTES), block(1));
  same(bytes.subarray(SIM_BLOCK_BYTES), block(0));
});

test('FUA persists at once; a failed medium answers EIO; listing is in key order', async () => {
  const { scheduler, medium, disk } = setup();
  const d = disk();
  await settle(scheduler, d.write({ ...key, object: 9 }, 0, block(6), { fua: true }));
  await settle(scheduler, d.write(key, 0, block(7)));
  medium.crash(() => false);
  assert.deepEqual(await settle(scheduler, list(disk(), 1)), [9], 'the FUA write only');
  await settle(scheduler, disk().write(key, 0, block(1)));
  assert.deepEqual(await settle(scheduler, list(disk())), [7, 9]);
  medium.failed = true;
  await assert.rejects(settle(scheduler, disk().read(key, 0, SIM_BLOCK_BYTES)), (error) =>
    isCisternError(error, 'EIO'),
  );
});
