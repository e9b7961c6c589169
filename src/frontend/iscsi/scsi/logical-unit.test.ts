// Proves the logical unit's core commands over a memory volume, one command per test:
// INQUIRY (standard data and each VPD page), TEST UNIT READY, READ CAPACITY(10)/(16),
// READ/WRITE(10)/(16) with FUA, REPORT LUNS, SYNCHRONIZE CACHE, MODE SENSE, and the
// sense data of unknown opcodes, bad LBAs, other LUNs and unit attentions. Each test
// builds CDB bytes, runs them through execute() and asserts on data and sense bytes.

import { strict as assert } from 'node:assert';
import { test } from 'node:test';
import { ScsiStatus } from '../scsi-task';
import { ScsiLogicalUnit } from './logical-unit';
import {
  A,
  B,
  VOLUME,
  be,
  fixture,
  port,
  read10,
  read16,
  run,
  senseOf,
  write10,
  write16,
} from './testing';

const MiB = 1024 * 1024;

test('a new nexus first gets POWER ON unit attention, then GOOD', async () => {
  const { unit } = await fixture();
  const fresh = port('iqn.2026-11.test:new');
  const first = await run(unit, [0x00, 0, 0, 0, 0, 0], { port: fresh });
  assert.equal(first.status, ScsiStatus.CHECK_CONDITION);
  assert.deepEqual(senseOf(first), { key: 6, asc: 0x29, ascq: 0x00 });
  assert.equal((await run(unit, [0x00, 0, 0, 0, 0, 0], { port: fresh })).status, ScsiStatus.GOOD);
});

test('INQUIRY is not held up by a unit attention', async () => {
  const { unit } = await fixture();
  const response = await run(unit, [0x12, 0, 0, 0, 96, 0], { port: port('iqn.2026-11.test:x') });
  assert.equal(response.status, ScsiStatus.GOOD);
});

test('standard INQUIRY: direct access, SPC-4, CMDQUE, vendor and product', async () => {
  const { unit } = await fixture();
  const response = await run(unit, [0x12, 0, 0, 0, 255, 0]);
  const data = Buffer.from(response.dataIn!);
  assert.equal(data[0], 0x00);
  assert.equal(data[2], 0x06);
  assert.equal(data[3]! & 0x0f, 2);
  assert.equal(data[4], data.length - 5);
  assert.equal(data[7]! & 0x02, 0x02);
  assert.equal(data.subarray(8, 16).toString('ascii'), 'CISTERN ');
  assert.equal(data.subarray(16, 32).toString('ascii').trimEnd(), 'VOLUME');
});

test('INQUIRY data is cut to the allocation length', async () => {
  const { unit } = await fixture();
  const response = await run(unit, [0x12, 0, 0, 0, 5, 0]);
  assert.equal(response.dataIn!.length, 5);
});

test('INQUIRY with a page code but no EVPD is INVALID FIELD IN CDB at byte 2', async () => {
  const { unit } = await fixture();
  const sense = senseOf(await run(unit, [0x12, 0, 0x80, 0, 255, 0]));
  assert.deepEqual(sense, { key: 5, asc: 0x24, ascq: 0, field: { inCdb: true, byte: 2 } });
});

test('VPD 0x00 lists 0x00, 0x80, 0x83, 0xB0, 0xB1, 0xB2', async () => {
  const { unit } = await fixture();
  const data = Buffer.from((await run(unit, [0x12, 1, 0x00, 0, 255, 0])).dataIn!);
  assert.deepEqual([...data.subarray(4)], [0x00, 0x80, 0x83, 0xb0, 0xb1, 0xb2]);
  assert.equal(data.readUInt16BE(2), 6);
});

test('VPD 0x80 serial number is the volume name', async () => {
  const { unit } = await fixture();
  const data = Buffer.from((await run(unit, [0x12, 1, 0x80, 0, 255, 0])).dataIn!);
  assert.equal(data[1], 0x80);
  assert.equal(data.subarray(4).toString('ascii'), VOLUME);
});

test('VPD 0x83 carries an NAA 6 and a T10 vendor id designator for the unit, stable per volume name', async () => {
  const { unit } = await fixture();
  const data = Buffer.from((await run(unit, [0x12, 1, 0x83, 0, 255, 0])).dataIn!);
  const naa = data.subarray(4, 4 + 4 + 16);
  assert.equal(naa[0]! & 0x0f, 1); // binary
  assert.equal(naa[1]! & 0x3f, 0x03); // LU association, NAA
  assert.equal(naa[3], 16);
  assert.equal(naa[4]! >> 4, 6);
  const t10 = data.subarray(24);
  assert.equal(t10[1]! & 0x3f, 0x01);
  assert.equal(t10.subarray(4, 12).toString('ascii'), 'CISTERN ');
  const again = new ScsiLogicalUnit(unit.handle, VOLUME);
  assert.deepEqual(again.identity.naa, unit.identity.naa);
  assert.notDeepEqual(new ScsiLogicalUnit(unit.handle, 'other').identity.naa, unit.identity.naa);
});

test('VPD 0xB0 block limits (512e): transfer and unmap limits, 4 KiB granularity', async () => {
  const { unit } = await fixture();
  const data = Buffer.from((await run(unit, [0x12, 1, 0xb0, 0, 255, 0])).dataIn!);
  assert.equal(data.readUInt16BE(2), 0x3c);
  assert.equal(data.readUInt16BE(6), 8);
  assert.equal(data.readUInt32BE(8), 65536); // 32 MiB
  assert.ok(data.readUInt32BE(20) > 0);
  assert.ok(data.readUInt32BE(24) > 0);
  assert.equal(data.readUInt32BE(28), 8);
  assert.equal(data.readUInt32BE(32), 0x80000000);
});

test('VPD 0xB1 reports a non-rotating medium', async () => {
  const { unit } = await fixture();
  const data = Buffer.from((await run(unit, [0x12, 1, 0xb1, 0, 255, 0])).dataIn!);
  assert.equal(data.readUInt16BE(4), 1);
});

test('VPD 0xB2 sets LBPU, LBPWS, LBPWS10 and LBPRZ, thin provisioning', async () => {
  const { unit } = await fixture();
  const data = Buffer.from((await run(unit, [0x12, 1, 0xb2, 0, 255, 0])).dataIn!);
  assert.equal(data[5], 0x80 | 0x40 | 0x20 | 0x04);
  assert.equal(data[6]! & 0x07, 2);
});

test('an unknown VPD page is INVALID FIELD IN CDB', async () => {
  const { unit } = await fixture();
  assert.deepEqual(senseOf(await run(unit, [0x12, 1, 0x99, 0, 255, 0])).asc, 0x24);
});

test('READ CAPACITY(10) reports the last LBA and 512-byte blocks', async () => {
  const { unit } = await fixture(64 * MiB);
  const data = Buffer.from((await run(unit, [0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0])).dataIn!);
  assert.equal(data.readUInt32BE(0), (64 * MiB) / 512 - 1);
  assert.equal(data.readUInt32BE(4), 512);
});

test('READ CAPACITY(16) reports 4 KiB physical blocks, LBPME and LBPRZ', async () => {
  const { unit } = await fixture(64 * MiB);
  const data = Buffer.from(
    (await run(unit, [0x9e, 0x10, ...be(0, 8), ...be(32, 4), 0, 0])).dataIn!,
  );
  assert.equal(Number(data.readBigUInt64BE(0)), (64 * MiB) / 512 - 1);
  assert.equal(data.readUInt32BE(8), 512);
  assert.equal(data[13]! & 0x0f, 3);
  assert.equal(data[14]! & 0xc0, 0xc0);
});

test('WRITE(10) then READ(10) returns the data; unwritten blocks read as zeros', async () => {
  const { unit } = await fixture();
  const data = Buffer.alloc(2 * 512, 0xab);
  const written = await run(unit, write10(100, 2), { dataOut: data });
  assert.equal(written.status, ScsiStatus.GOOD);
  assert.equal(written.dataOutLength, 1024);
  const back = await run(unit, read10(99, 4));
  const bytes = Buffer.from(back.dataIn!);
  assert.equal(bytes.length, 2048);
  assert.ok(bytes.subarray(0, 512).every((byte) => byte === 0));
  assert.ok(bytes.subarray(512, 1536).equals(data));
});

test('WRITE(16) with FUA reaches the volume and READ(16) reads it', async () => {
  const { unit } = await fixture();
  const data = Buffer.alloc(512, 0x11);
  assert.equal((await run(unit, write16(7, 1, 0x08), { dataOut: data })).status, ScsiStatus.GOOD);
  assert.ok(Buffer.from((await run(unit, read16(7, 1))).dataIn!).equals(data));
});

test('READ(10) past the end is LBA OUT OF RANGE', async () => {
  const { unit } = await fixture(1 * MiB);
  const sense = senseOf(await run(unit, read10(2048, 1)));
  assert.deepEqual([sense.key, sense.asc, sense.ascq], [5, 0x21, 0]);
});

test('READ(16) at LBA 2^64-1 is LBA OUT OF RANGE', async () => {
  const { unit } = await fixture();
  const response = await run(unit, [0x88, 0, ...Array(8).fill(0xff), ...be(1, 4), 0, 0]);
  assert.equal(senseOf(response).asc, 0x21);
});

test('READ(10) with RDPROTECT set is INVALID FIELD IN CDB (no protection information)', async () => {
  const { unit } = await fixture();
  const sense = senseOf(await run(unit, read10(0, 1, 0x20)));
  assert.equal(sense.asc, 0x24);
  assert.deepEqual(sense.field, { inCdb: true, byte: 1, bit: 7 });
});

test('WRITE(10) to a read-only volume is DATA PROTECT / WRITE PROTECTED', async () => {
  const { unit } = await fixture(1 * MiB, { readOnly: true });
  const sense = senseOf(await run(unit, write10(0, 1), { dataOut: Buffer.alloc(512) }));
  assert.deepEqual([sense.key, sense.asc, sense.ascq], [7, 0x27, 0]);
});

test('REPORT LUNS lists LUN 0 alone', async () => {
  const { unit } = await fixture();
  const data = Buffer.from((await run(unit, [0xa0, 0, 0, 0, 0, 0, ...be(256, 4), 0, 0])).dataIn!);
  assert.equal(data.readUInt32BE(0), 8);
  assert.equal(data.length, 16);
  assert.ok(data.subarray(8).every((byte) => byte === 0));
});

test('SYNCHRONIZE CACHE(10) flushes the volume', async () => {
  const { unit, provider } = await fixture();
  const before = provider.flushCount(VOLUME);
  assert.equal((await run(unit, [0x35, 0, 0, 0, 0, 0, 0, 0, 0, 0])).status, ScsiStatus.GOOD);
  assert.equal(provider.flushCount(VOLUME), before + 1);
});

test('MODE SENSE(6) of all pages: caching with WCE, control, a block descriptor', async () => {
  const { unit } = await fixture(1 * MiB);
  const data = Buffer.from((await run(unit, [0x1a, 0, 0x3f, 0, 255, 0])).dataIn!);
  assert.equal(data[0], data.length - 1);
  assert.equal(data[3], 8);
  assert.equal(data.readUIntBE(4 + 1, 3), 2048);
  const caching = data.subarray(12, 32);
  assert.equal(caching[0], 0x08);
  assert.equal(caching[2]! & 0x04, 0x04);
  assert.equal(data[32], 0x0a);
});

test('MODE SENSE(10) with LLBAA returns a long block descriptor', async () => {
  const { unit } = await fixture(1 * MiB);
  const data = Buffer.from((await run(unit, [0x5a, 0x10, 0x08, 0, 0, 0, 0, 0, 255, 0])).dataIn!);
  assert.equal(data[4]! & 1, 1);
  assert.equal(data.readUInt16BE(6), 16);
  assert.equal(Number(data.readBigUInt64BE(8)), 2048);
});

test('MODE SENSE of saved values is SAVING PARAMETERS NOT SUPPORTED', async () => {
  const { unit } = await fixture();
  assert.equal(senseOf(await run(unit, [0x1a, 0, 0xc8, 0, 255, 0])).asc, 0x39);
});

test('an unknown opcode is INVALID COMMAND OPERATION CODE', async () => {
  const { unit } = await fixture();
  const sense = senseOf(await run(unit, [0x8b, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]));
  assert.deepEqual([sense.key, sense.asc, sense.ascq], [5, 0x20, 0]);
});

test('a command to another LUN is LOGICAL UNIT NOT SUPPORTED; INQUIRY there says no unit', async () => {
  const { unit } = await fixture();
  assert.equal(senseOf(await run(unit, read10(0, 1), { lun: 1 })).asc, 0x25);
  const data = Buffer.from((await run(unit, [0x12, 0, 0, 0, 36, 0], { lun: 1 })).dataIn!);
  assert.equal(data[0], 0x7f);
});

test('LOGICAL UNIT RESET raises a unit attention for every nexus', async () => {
  const { unit } = await fixture();
  unit.reset(A);
  assert.deepEqual(senseOf(await run(unit, [0, 0, 0, 0, 0, 0], { port: B })), {
    key: 6,
    asc: 0x29,
    ascq: 3,
  });
  assert.equal(senseOf(await run(unit, [0, 0, 0, 0, 0, 0], { port: A })).asc, 0x29);
});

test('REQUEST SENSE returns and clears a pending unit attention', async () => {
  const { unit } = await fixture();
  unit.reset(A);
  const data = Buffer.from((await run(unit, [0x03, 0, 0, 0, 18, 0])).dataIn!);
  assert.equal(data[2], 6);
  assert.equal(data[12], 0x29);
  assert.equal((await run(unit, [0, 0, 0, 0, 0, 0])).status, ScsiStatus.GOOD);
});
