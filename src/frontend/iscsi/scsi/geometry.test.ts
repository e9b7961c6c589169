// Proves the default geometry, 4096-byte logical blocks (4Kn), reaches every place that
// reports or uses the block size: READ CAPACITY(10)/(16), the MODE SENSE block
// descriptor, the Block Limits VPD page, and LBA arithmetic of READ/WRITE and UNMAP.

import { strict as assert } from 'node:assert';
import { test } from 'node:test';
import { MemoryExportProvider } from '../../../volume/memory-volume';
import { DEFAULT_GEOMETRY } from './geometry';
import { createLogicalUnit } from './logical-unit';
import { VOLUME, be, fixture, read10, run, write10 } from './testing';

const MiB = 1024 * 1024;
const fourKn = { geometry: DEFAULT_GEOMETRY };

test('the default unit made by createLogicalUnit has 4096-byte blocks', async () => {
  const provider = new MemoryExportProvider();
  provider.create(VOLUME, 8 * MiB);
  const unit = createLogicalUnit(await provider.open(VOLUME, { readOnly: false }), VOLUME);
  await unit.execute(taskOf([0, 0, 0, 0, 0, 0])); // takes the power-on unit attention
  const data = Buffer.from((await unit.execute(taskOf([0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0]))).dataIn!);
  assert.equal(data.readUInt32BE(4), 4096);
  assert.equal(data.readUInt32BE(0), (8 * MiB) / 4096 - 1);
});

function taskOf(cdbBytes: number[]) {
  const cdb = new Uint8Array(16);
  cdb.set(cdbBytes);
  return {
    cdb,
    lun: 0,
    port: {
      initiatorName: 'iqn.x',
      isid: '000000000001',
      targetName: 't',
      tpgt: 1,
      nexus: 'iqn.x,i,0x000000000001',
    },
    direction: 'read' as const,
    expectedLength: 0,
    attribute: 'simple' as const,
    tag: 1,
  };
}

test('READ CAPACITY(16) with 4Kn: one logical block per physical block', async () => {
  const { unit } = await fixture(8 * MiB, fourKn);
  const data = Buffer.from(
    (await run(unit, [0x9e, 0x10, ...be(0, 8), ...be(32, 4), 0, 0])).dataIn!,
  );
  assert.equal(Number(data.readBigUInt64BE(0)), 2047);
  assert.equal(data.readUInt32BE(8), 4096);
  assert.equal(data[13]! & 0x0f, 0);
});

test('Block Limits with 4Kn: 32 MiB transfers are 8192 blocks, transfer granularity 1, unmap granularity not reported (qemu), write same below 65536', async () => {
  const { unit } = await fixture(8 * MiB, fourKn);
  const data = Buffer.from((await run(unit, [0x12, 1, 0xb0, 0, 255, 0])).dataIn!);
  assert.equal(data.readUInt16BE(6), 1);
  assert.equal(data.readUInt32BE(8), 8192);
  assert.equal(data.readUInt32BE(28), 0);
  assert.ok(Number(data.readBigUInt64BE(36)) < 65536);
});

test('MODE SENSE(6) block descriptor with 4Kn', async () => {
  const { unit } = await fixture(8 * MiB, fourKn);
  const data = Buffer.from((await run(unit, [0x1a, 0, 0x08, 0, 255, 0])).dataIn!);
  assert.equal(data.readUIntBE(5, 3), 2048);
  assert.equal(data.readUIntBE(9, 3), 4096);
});

test('WRITE(10) at LBA 3 with 4Kn lands at byte 12288', async () => {
  const { unit } = await fixture(8 * MiB, fourKn);
  await run(unit, write10(3, 1), { dataOut: Buffer.alloc(4096, 0x3c) });
  assert.equal((await unit.handle.read(12288, 1))[0], 0x3c);
  assert.equal((await unit.handle.read(12287, 1))[0], 0);
  assert.equal(Buffer.from((await run(unit, read10(3, 1))).dataIn!).length, 4096);
});
