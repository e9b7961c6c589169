// Proves persistent reservations and SPC-2 RESERVE/RELEASE between two nexuses A and B
// on one unit: registration rules, each reservation type's access table (SPC-4 5.9),
// release, clear and preempt with their unit attentions, the PERSISTENT RESERVE IN
// reports, and the conflicts RESERVE(6) causes. Commands go through execute(), so the
// conflict check is the one real initiators meet.

import { strict as assert } from 'node:assert';
import { test } from 'node:test';
import { ScsiStatus, type InitiatorPort } from '../scsi-task';
import type { ScsiLogicalUnit } from './logical-unit';
import { A, B, be, fixture, read10, run, senseOf, write10 } from './testing';

const KEY_A = 0xa1n;
const KEY_B = 0xb2n;

async function prOut(
  unit: ScsiLogicalUnit,
  port: InitiatorPort,
  action: number,
  key: bigint,
  actionKey: bigint,
  type = 0,
  flags = 0,
) {
  const list = Buffer.alloc(24);
  list.writeBigUInt64BE(key, 0);
  list.writeBigUInt64BE(actionKey, 8);
  list[20] = flags;
  return run(unit, [0x5f, action, type, 0, 0, ...be(24, 4), 0], { port, dataOut: list });
}

const register = (unit: ScsiLogicalUnit, port: InitiatorPort, key: bigint) =>
  prOut(unit, port, 6, 0n, key);
const reserve = (unit: ScsiLogicalUnit, port: InitiatorPort, key: bigint, type: number) =>
  prOut(unit, port, 1, key, 0n, type);

async function prIn(unit: ScsiLogicalUnit, port: InitiatorPort, action: number) {
  return Buffer.from(
    (await run(unit, [0x5e, action, 0, 0, 0, 0, 0, ...be(1024, 2), 0], { port })).dataIn!,
  );
}

async function canRead(unit: ScsiLogicalUnit, port: InitiatorPort) {
  return (await run(unit, read10(0, 1), { port })).status === ScsiStatus.GOOD;
}
async function canWrite(unit: ScsiLogicalUnit, port: InitiatorPort) {
  return (
    (await run(unit, write10(0, 1), { port, dataOut: Buffer.alloc(512) })).status ===
    ScsiStatus.GOOD
  );
}

/** [registered B can read, can write, unregistered B can read, can write] per type (SPC-4 table 47). */
const ACCESS: Array<[number, string, boolean[]]> = [
  [1, 'WRITE EXCLUSIVE', [true, false, true, false]],
  [3, 'EXCLUSIVE ACCESS', [false, false, false, false]],
  [5, 'WRITE EXCLUSIVE - REGISTRANTS ONLY', [true, true, true, false]],
  [6, 'EXCLUSIVE ACCESS - REGISTRANTS ONLY', [true, true, false, false]],
  [7, 'WRITE EXCLUSIVE - ALL REGISTRANTS', [true, true, true, false]],
  [8, 'EXCLUSIVE ACCESS - ALL REGISTRANTS', [true, true, false, false]],
];

for (const [type, name, expected] of ACCESS) {
  test(`${name}: the holder reads and writes; B's access registered and not`, async () => {
    const { unit } = await fixture();
    assert.equal((await register(unit, A, KEY_A)).status, ScsiStatus.GOOD);
    assert.equal((await register(unit, B, KEY_B)).status, ScsiStatus.GOOD);
    assert.equal((await reserve(unit, A, KEY_A, type)).status, ScsiStatus.GOOD);
    assert.ok(await canRead(unit, A));
    assert.ok(await canWrite(unit, A));
    const registered = [await canRead(unit, B), await canWrite(unit, B)];
    assert.equal((await prOut(unit, B, 0, KEY_B, 0n)).status, ScsiStatus.GOOD); // unregister
    const unregistered = [await canRead(unit, B), await canWrite(unit, B)];
    assert.deepEqual([...registered, ...unregistered], expected);
  });
}

test('REGISTER with a wrong current key is RESERVATION CONFLICT', async () => {
  const { unit } = await fixture();
  await register(unit, A, KEY_A);
  assert.equal((await prOut(unit, A, 0, 0x99n, 0x55n)).status, ScsiStatus.RESERVATION_CONFLICT);
  assert.equal((await prOut(unit, B, 0, 0x99n, 0x55n)).status, ScsiStatus.RESERVATION_CONFLICT);
});

test('READ KEYS lists registered keys and counts the generation', async () => {
  const { unit } = await fixture();
  await register(unit, A, KEY_A);
  await register(unit, B, KEY_B);
  const data = await prIn(unit, A, 0);
  assert.equal(data.readUInt32BE(0), 2);
  assert.equal(data.readUInt32BE(4), 16);
  assert.deepEqual([data.readBigUInt64BE(8), data.readBigUInt64BE(16)], [KEY_A, KEY_B]);
});

test('READ RESERVATION reports the holder key and type; zero key for all-registrants', async () => {
  const { unit } = await fixture();
  await register(unit, A, KEY_A);
  assert.equal((await prIn(unit, A, 1)).readUInt32BE(4), 0);
  await reserve(unit, A, KEY_A, 1);
  let data = await prIn(unit, B, 1);
  assert.equal(data.readUInt32BE(4), 16);
  assert.equal(data.readBigUInt64BE(8), KEY_A);
  assert.equal(data[21], 1);
  await prOut(unit, A, 2, KEY_A, 0n, 1);
  await reserve(unit, A, KEY_A, 7);
  data = await prIn(unit, B, 1);
  assert.equal(data.readBigUInt64BE(8), 0n);
  assert.equal(data[21], 7);
});

test('REPORT CAPABILITIES: type mask valid, no PTPL', async () => {
  const { unit } = await fixture();
  const data = await prIn(unit, A, 2);
  assert.equal(data.readUInt16BE(0), 8);
  assert.equal(data[2]! & 0x01, 0);
  assert.equal(data[3]! & 0x80, 0x80);
  assert.equal(data.readUInt16BE(4), 0xea01);
});

test('READ FULL STATUS gives each registrant with its iSCSI TransportID and the holder', async () => {
  const { unit } = await fixture();
  await register(unit, A, KEY_A);
  await reserve(unit, A, KEY_A, 3);
  const data = await prIn(unit, A, 3);
  assert.equal(data.readBigUInt64BE(8), KEY_A);
  assert.equal(data[8 + 12], 0x01);
  assert.equal(data[8 + 13], 3);
  const idLength = data.readUInt32BE(8 + 20);
  const transportId = data.subarray(8 + 24, 8 + 24 + idLength);
  assert.equal(transportId[0], 0x45);
  assert.ok(
    transportId.subarray(4).toString('utf8').startsWith(`${A.initiatorName},i,0x${A.isid}`),
  );
});

test('APTPL is refused: INVALID FIELD IN PARAMETER LIST', async () => {
  const { unit } = await fixture();
  const sense = senseOf(await prOut(unit, A, 6, 0n, KEY_A, 0, 0x01));
  assert.deepEqual([sense.key, sense.asc], [5, 0x26]);
});

test('RESERVE of an unknown type is INVALID FIELD IN CDB', async () => {
  const { unit } = await fixture();
  await register(unit, A, KEY_A);
  assert.equal(senseOf(await reserve(unit, A, KEY_A, 2)).asc, 0x24);
});

test('RELEASE of a registrants-only reservation tells the other registrants', async () => {
  const { unit } = await fixture();
  await register(unit, A, KEY_A);
  await register(unit, B, KEY_B);
  await reserve(unit, A, KEY_A, 5);
  assert.equal((await prOut(unit, A, 2, KEY_A, 0n, 5)).status, ScsiStatus.GOOD);
  assert.deepEqual(senseOf(await run(unit, [0, 0, 0, 0, 0, 0], { port: B })), {
    key: 6,
    asc: 0x2a,
    ascq: 4,
  });
});

test('RELEASE with the wrong type is INVALID RELEASE OF PERSISTENT RESERVATION', async () => {
  const { unit } = await fixture();
  await register(unit, A, KEY_A);
  await reserve(unit, A, KEY_A, 1);
  const sense = senseOf(await prOut(unit, A, 2, KEY_A, 0n, 3));
  assert.deepEqual([sense.asc, sense.ascq], [0x26, 0x04]);
});

test('CLEAR drops every registration and the reservation; others get RESERVATIONS PREEMPTED', async () => {
  const { unit } = await fixture();
  await register(unit, A, KEY_A);
  await register(unit, B, KEY_B);
  await reserve(unit, A, KEY_A, 3);
  assert.equal((await prOut(unit, A, 3, KEY_A, 0n)).status, ScsiStatus.GOOD);
  assert.equal((await prIn(unit, A, 0)).readUInt32BE(4), 0);
  assert.deepEqual(senseOf(await run(unit, read10(0, 1), { port: B })), {
    key: 6,
    asc: 0x2a,
    ascq: 3,
  });
  assert.ok(await canWrite(unit, B));
});

test('PREEMPT of the holder moves the reservation and removes its registration', async () => {
  const { unit } = await fixture();
  await register(unit, A, KEY_A);
  await register(unit, B, KEY_B);
  await reserve(unit, A, KEY_A, 3);
  assert.equal((await prOut(unit, B, 4, KEY_B, KEY_A, 3)).status, ScsiStatus.GOOD);
  assert.deepEqual(senseOf(await run(unit, read10(0, 1), { port: A })), {
    key: 6,
    asc: 0x2a,
    ascq: 5,
  });
  assert.equal(
    (await run(unit, read10(0, 1), { port: A })).status,
    ScsiStatus.RESERVATION_CONFLICT,
  );
  const keys = await prIn(unit, B, 0);
  assert.equal(keys.readUInt32BE(4), 8);
  assert.equal(keys.readBigUInt64BE(8), KEY_B);
  assert.ok(await canWrite(unit, B));
});

test('PREEMPT of a key nobody holds is RESERVATION CONFLICT', async () => {
  const { unit } = await fixture();
  await register(unit, A, KEY_A);
  assert.equal((await prOut(unit, A, 4, KEY_A, 0x77n, 1)).status, ScsiStatus.RESERVATION_CONFLICT);
});

test('PREEMPT AND ABORT removes a registration without a reservation', async () => {
  const { unit } = await fixture();
  await register(unit, A, KEY_A);
  await register(unit, B, KEY_B);
  assert.equal((await prOut(unit, A, 5, KEY_A, KEY_B, 1)).status, ScsiStatus.GOOD);
  assert.equal((await prIn(unit, A, 0)).readUInt32BE(4), 8);
});

test('RESERVE(6) holds the unit against the other nexus until RELEASE(6)', async () => {
  const { unit } = await fixture();
  assert.equal((await run(unit, [0x16, 0, 0, 0, 0, 0])).status, ScsiStatus.GOOD);
  assert.equal((await run(unit, [0x16, 0, 0, 0, 0, 0])).status, ScsiStatus.GOOD);
  assert.equal(
    (await run(unit, [0x16, 0, 0, 0, 0, 0], { port: B })).status,
    ScsiStatus.RESERVATION_CONFLICT,
  );
  assert.equal(
    (await run(unit, [0x1a, 0, 0x3f, 0, 255, 0], { port: B })).status,
    ScsiStatus.RESERVATION_CONFLICT,
  );
  assert.equal((await run(unit, [0x17, 0, 0, 0, 0, 0], { port: B })).status, ScsiStatus.GOOD);
  assert.equal((await run(unit, [0x12, 0, 0, 0, 36, 0], { port: B })).status, ScsiStatus.GOOD);
  assert.ok(await canRead(unit, A));
  assert.equal((await run(unit, [0x17, 0, 0, 0, 0, 0])).status, ScsiStatus.GOOD);
  assert.equal((await run(unit, [0x16, 0, 0, 0, 0, 0], { port: B })).status, ScsiStatus.GOOD);
});

test('a RESERVE(6) reservation goes with its nexus and with a LOGICAL UNIT RESET', async () => {
  const { unit } = await fixture();
  await run(unit, [0x16, 0, 0, 0, 0, 0]);
  unit.nexusLost(A);
  assert.equal((await run(unit, [0x16, 0, 0, 0, 0, 0], { port: B })).status, ScsiStatus.GOOD);
  unit.reset(B);
  await run(unit, [0, 0, 0, 0, 0, 0], { port: A });
  await run(unit, [0, 0, 0, 0, 0, 0], { port: A });
  assert.equal((await run(unit, [0x16, 0, 0, 0, 0, 0], { port: A })).status, ScsiStatus.GOOD);
});
