// Proves the volume layer's failures become the right sense data and nothing else:
// EIO on read is MEDIUM ERROR / UNRECOVERED READ ERROR, EIO on write MEDIUM ERROR /
// WRITE ERROR, a full pool DATA PROTECT / SPACE ALLOCATION FAILED, an unavailable
// cluster NOT READY / BECOMING READY (which initiators retry), a bug (an assertion)
// is not disguised as sense data, and a resized volume raises CAPACITY DATA HAS CHANGED.

import { strict as assert } from 'node:assert';
import { test } from 'node:test';
import { AssertionError } from '../../../util/assert';
import { CisternError, type CisternErrorCode } from '../../../util/errors';
import type { VolumeHandle } from '../../../volume/backend';
import { MemoryExportProvider } from '../../../volume/memory-volume';
import { GEOMETRY_512E } from './geometry';
import { ScsiLogicalUnit } from './logical-unit';
import { A, VOLUME, read10, run, senseOf, write10 } from './testing';

const MiB = 1024 * 1024;

/** A handle whose reads and writes fail with `error` while it is set. */
async function failingUnit(options: { capacityBytes?: number; sizeBytes?: number } = {}) {
  const provider = new MemoryExportProvider({ capacityBytes: options.capacityBytes ?? 64 * MiB });
  provider.create(VOLUME, options.sizeBytes ?? 8 * MiB);
  const inner = await provider.open(VOLUME, { readOnly: false });
  const state: { error?: Error; size?: number } = {};
  const handle: VolumeHandle = Object.create(inner, {
    size: { get: () => state.size ?? inner.size },
    read: {
      value: async (offset: number, length: number) => {
        if (state.error) throw state.error;
        return inner.read(offset, length);
      },
    },
    write: {
      value: async (offset: number, data: Uint8Array) => {
        if (state.error) throw state.error;
        return inner.write(offset, data);
      },
    },
  });
  const unit = new ScsiLogicalUnit(handle, VOLUME, GEOMETRY_512E);
  await run(unit, [0, 0, 0, 0, 0, 0]);
  return { unit, state };
}

const cisternError = (code: CisternErrorCode) => new CisternError(code, `injected ${code}`);

test('EIO on read is MEDIUM ERROR / UNRECOVERED READ ERROR', async () => {
  const { unit, state } = await failingUnit();
  state.error = cisternError('EIO');
  assert.deepEqual(senseOf(await run(unit, read10(0, 1))), { key: 3, asc: 0x11, ascq: 0 });
});

test('EIO on write is MEDIUM ERROR / WRITE ERROR', async () => {
  const { unit, state } = await failingUnit();
  state.error = cisternError('EIO');
  const response = await run(unit, write10(0, 1), { dataOut: Buffer.alloc(512) });
  assert.deepEqual(senseOf(response), { key: 3, asc: 0x0c, ascq: 0 });
});

test('a full pool is DATA PROTECT / SPACE ALLOCATION FAILED WRITE PROTECT', async () => {
  const { unit } = await failingUnit({ capacityBytes: 4096, sizeBytes: 8 * MiB });
  const response = await run(unit, write10(0, 16), { dataOut: Buffer.alloc(16 * 512, 1) });
  assert.deepEqual(senseOf(response), { key: 7, asc: 0x27, ascq: 0x07 });
});

test('an unavailable cluster is NOT READY / BECOMING READY', async () => {
  const { unit, state } = await failingUnit();
  state.error = cisternError('UNAVAILABLE');
  assert.deepEqual(senseOf(await run(unit, read10(0, 1))), { key: 2, asc: 0x04, ascq: 0x01 });
});

test('an assertion failure below is thrown, not reported as sense data', async () => {
  const { unit, state } = await failingUnit();
  state.error = new AssertionError('a bug');
  await assert.rejects(run(unit, read10(0, 1)), AssertionError);
});

test('a resized volume raises CAPACITY DATA HAS CHANGED once per nexus', async () => {
  const { unit, state } = await failingUnit();
  state.size = 16 * MiB;
  assert.deepEqual(senseOf(await run(unit, read10(0, 1), { port: A })), {
    key: 6,
    asc: 0x2a,
    ascq: 0x09,
  });
  const capacity = Buffer.from((await run(unit, [0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0])).dataIn!);
  assert.equal(capacity.readUInt32BE(0), (16 * MiB) / 512 - 1);
});
