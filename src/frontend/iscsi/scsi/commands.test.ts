// Proves REPORT SUPPORTED OPERATION CODES (all commands, one command, one service
// action, with timeouts descriptors) agrees with the command table, and that MODE
// SELECT changes software write protect for every nexus with a unit attention.

import { strict as assert } from 'node:assert';
import { test } from 'node:test';
import { ScsiStatus } from '../scsi-task';
import { B, be, fixture, run, senseOf, write10 } from './testing';

const rsoc = (options: number, opcode = 0, serviceAction = 0, allocation = 65535) => [
  0xa3,
  0x0c,
  options,
  opcode,
  ...be(serviceAction, 2),
  ...be(allocation, 4),
  0,
  0,
];

test('all commands: every descriptor answers a one-command query with its CDB usage', async () => {
  const { unit } = await fixture();
  const all = Buffer.from((await run(unit, rsoc(0))).dataIn!);
  const length = all.readUInt32BE(0);
  assert.equal(length % 8, 0);
  assert.ok(length / 8 > 30);
  for (let at = 4; at < 4 + length; at += 8) {
    const opcode = all[at]!;
    const serviceAction = all.readUInt16BE(at + 2);
    const hasServiceAction = (all[at + 5]! & 0x01) !== 0;
    const one = await run(unit, rsoc(hasServiceAction ? 2 : 1, opcode, serviceAction));
    assert.equal(one.status, ScsiStatus.GOOD, `opcode ${opcode.toString(16)}`);
    const data = Buffer.from(one.dataIn!);
    assert.equal(data[1]! & 0x07, 0x03);
    assert.equal(data.readUInt16BE(2), all.readUInt16BE(at + 6));
    assert.equal(data[4], opcode);
    const wrong = await run(unit, rsoc(hasServiceAction ? 1 : 2, opcode, serviceAction));
    assert.equal(senseOf(wrong).asc, 0x24);
  }
});

test('one command that is not supported reports SUPPORT 001b', async () => {
  const { unit } = await fixture();
  const data = Buffer.from((await run(unit, rsoc(1, 0x8b))).dataIn!);
  assert.equal(data[1]! & 0x07, 0x01);
});

test('RCTD adds a command timeouts descriptor to each entry', async () => {
  const { unit } = await fixture();
  const all = Buffer.from((await run(unit, rsoc(0x80))).dataIn!);
  assert.equal(all.readUInt32BE(0) % 20, 0);
  assert.equal(all[4 + 5]! & 0x02, 0x02);
  assert.equal(all.readUInt16BE(4 + 8), 0x0a);
});

test('MODE SELECT(6) setting SWP write-protects the unit and tells the other nexus', async () => {
  const { unit } = await fixture();
  const sense = Buffer.from((await run(unit, [0x1a, 0x08, 0x0a, 0, 255, 0])).dataIn!);
  const page = Buffer.from(sense.subarray(4, 4 + 12));
  page[4]! |= 0x08;
  const list = Buffer.concat([Buffer.alloc(4), page]);
  const selected = await run(unit, [0x15, 0x10, 0, 0, list.length, 0], { dataOut: list });
  assert.equal(selected.status, ScsiStatus.GOOD);
  const written = await run(unit, write10(0, 1), { dataOut: Buffer.alloc(512) });
  assert.deepEqual([senseOf(written).key, senseOf(written).asc], [7, 0x27]);
  assert.deepEqual(senseOf(await run(unit, [0, 0, 0, 0, 0, 0], { port: B })), {
    key: 6,
    asc: 0x2a,
    ascq: 1,
  });
  const after = Buffer.from((await run(unit, [0x1a, 0x08, 0x0a, 0, 255, 0])).dataIn!);
  assert.equal(after[2]! & 0x80, 0x80);
});

test('MODE SELECT changing a bit that is not changeable is INVALID FIELD IN PARAMETER LIST', async () => {
  const { unit } = await fixture();
  const sense = Buffer.from((await run(unit, [0x1a, 0x08, 0x08, 0, 255, 0])).dataIn!);
  const page = Buffer.from(sense.subarray(4, 4 + 20));
  page[2] = 0; // clear WCE: our cache cannot be turned off
  const list = Buffer.concat([Buffer.alloc(4), page]);
  const response = await run(unit, [0x15, 0x10, 0, 0, list.length, 0], { dataOut: list });
  assert.equal(senseOf(response).asc, 0x26);
});

test('MODE SENSE of changeable values shows SWP alone', async () => {
  const { unit } = await fixture();
  const data = Buffer.from((await run(unit, [0x1a, 0x08, 0x4a, 0, 255, 0])).dataIn!);
  assert.equal(data[4 + 4], 0x08);
});
