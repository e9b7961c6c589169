// Proves UNMAP and GET LBA STATUS over a memory volume: unmapped ranges read as zeros
// and free whole 4 KiB blocks, the parameter list is checked before anything is
// discarded, and GET LBA STATUS reports mapped and deallocated extents from the volume.

import { strict as assert } from 'node:assert';
import { test } from 'node:test';
import { ScsiStatus } from '../scsi-task';
import { VOLUME, be, fixture, read10, run, senseOf, write10 } from './testing';

function unmapList(ranges: Array<[number, number]>): Buffer {
  const list = Buffer.alloc(8 + 16 * ranges.length);
  list.writeUInt16BE(list.length - 2, 0);
  list.writeUInt16BE(16 * ranges.length, 2);
  ranges.forEach(([lba, count], index) => {
    list.writeBigUInt64BE(BigInt(lba), 8 + 16 * index);
    list.writeUInt32BE(count, 16 + 16 * index);
  });
  return list;
}

const unmapCdb = (length: number) => [0x42, 0, 0, 0, 0, 0, 0, ...be(length, 2), 0];
const getLbaStatus = (lba: number, allocation: number) => [
  0x9e,
  0x12,
  ...be(lba, 8),
  ...be(allocation, 4),
  0,
  0,
];

test('UNMAP frees whole blocks and the range reads as zeros', async () => {
  const { unit, provider } = await fixture();
  await run(unit, write10(0, 32), { dataOut: Buffer.alloc(32 * 512, 0xab) });
  assert.equal(provider.allocatedBlockCount(VOLUME), 4);
  const list = unmapList([[8, 16]]);
  const response = await run(unit, unmapCdb(list.length), { dataOut: list });
  assert.equal(response.status, ScsiStatus.GOOD);
  assert.equal(provider.allocatedBlockCount(VOLUME), 2);
  const back = Buffer.from((await run(unit, read10(0, 32))).dataIn!);
  assert.ok(back.subarray(8 * 512, 24 * 512).every((byte) => byte === 0));
  assert.ok(back.subarray(0, 8 * 512).every((byte) => byte === 0xab));
});

test('UNMAP of part of a physical block zeroes those logical blocks', async () => {
  const { unit } = await fixture();
  await run(unit, write10(0, 8), { dataOut: Buffer.alloc(8 * 512, 0xab) });
  const list = unmapList([[1, 1]]);
  await run(unit, unmapCdb(list.length), { dataOut: list });
  const back = Buffer.from((await run(unit, read10(0, 3))).dataIn!);
  assert.ok(back.subarray(512, 1024).every((byte) => byte === 0));
  assert.equal(back[0], 0xab);
  assert.equal(back[1024], 0xab);
});

test('UNMAP with a parameter list length of 0 does nothing and is GOOD', async () => {
  const { unit } = await fixture();
  assert.equal((await run(unit, unmapCdb(0))).status, ScsiStatus.GOOD);
});

test('UNMAP with a descriptor beyond the end is LBA OUT OF RANGE and discards nothing', async () => {
  const { unit } = await fixture(1024 * 1024);
  await run(unit, write10(0, 8), { dataOut: Buffer.alloc(8 * 512, 0xab) });
  const list = unmapList([
    [0, 8],
    [2048, 1],
  ]);
  assert.equal(senseOf(await run(unit, unmapCdb(list.length), { dataOut: list })).asc, 0x21);
  assert.equal(Buffer.from((await run(unit, read10(0, 1))).dataIn!)[0], 0xab);
});

test('UNMAP with a short parameter list is PARAMETER LIST LENGTH ERROR', async () => {
  const { unit } = await fixture();
  assert.equal(senseOf(await run(unit, unmapCdb(4), { dataOut: Buffer.alloc(4) })).asc, 0x1a);
});

test('UNMAP on a read-only volume is WRITE PROTECTED', async () => {
  const { unit } = await fixture(1024 * 1024, { readOnly: true });
  const list = unmapList([[0, 8]]);
  assert.equal(senseOf(await run(unit, unmapCdb(list.length), { dataOut: list })).key, 7);
});

test('GET LBA STATUS reports mapped then deallocated extents', async () => {
  const { unit } = await fixture(1024 * 1024);
  await run(unit, write10(8, 8), { dataOut: Buffer.alloc(8 * 512, 1) });
  const data = Buffer.from((await run(unit, getLbaStatus(8, 1024))).dataIn!);
  assert.equal(data.readUInt32BE(0), 4 + 2 * 16);
  assert.deepEqual([Number(data.readBigUInt64BE(8)), data.readUInt32BE(16), data[20]], [8, 8, 0]);
  assert.deepEqual(
    [Number(data.readBigUInt64BE(24)), data.readUInt32BE(32), data[36]],
    [16, 2048 - 16, 1],
  );
});

test('GET LBA STATUS starting inside an extent starts its first descriptor there', async () => {
  const { unit } = await fixture(1024 * 1024);
  const data = Buffer.from((await run(unit, getLbaStatus(9, 24))).dataIn!);
  assert.equal(data.length, 24);
  assert.equal(Number(data.readBigUInt64BE(8)), 9);
  assert.equal(data[20], 1);
});

test('GET LBA STATUS at or past the end is LBA OUT OF RANGE', async () => {
  const { unit } = await fixture(1024 * 1024);
  assert.equal(senseOf(await run(unit, getLbaStatus(2048, 24))).asc, 0x21);
});
