// PDU codecs: the framing length from a BHS, digests verified and produced, padding, the
// LUN encodings, every request decoder on hand-built bytes, the encoders' field offsets
// (RFC 7143 §11), and hostile AHS bytes turning into IscsiProtocolError, never a
// RangeError.

import { strict as assert } from 'node:assert';
import { test } from 'node:test';
import { Random } from '../../util/random';
import { crc32c } from './crc32c';
import * as P from './pdu';

const NO_DIGESTS: P.Digests = { header: false, data: false };
const DIGESTS: P.Digests = { header: true, data: true };

function join(parts: Buffer[]): Buffer {
  return Buffer.concat(parts);
}

test('framePdu pads the data segment and splitPdu takes it apart again, with and without digests', () => {
  for (const digests of [NO_DIGESTS, DIGESTS]) {
    const bhs = Buffer.alloc(P.BHS_BYTES);
    bhs[0] = P.Opcode.NOP_OUT;
    const wire = join(P.framePdu(bhs, Buffer.from('hello'), digests));
    assert.equal(wire.length, 48 + 8 + (digests.header ? 8 : 0));
    assert.equal(P.wireLength(wire, digests), wire.length);
    const framed = P.splitPdu(wire, digests);
    assert.equal(framed.kind, 'ok');
    assert.equal(framed.pdu.data.toString(), 'hello');
    assert.equal(P.dataSegmentLengthOf(framed.pdu.bhs), 5);
  }
});

test('digests cover the BHS and the padded data, least significant byte first', () => {
  const bhs = Buffer.alloc(P.BHS_BYTES);
  const wire = join(P.framePdu(bhs, Buffer.from('abc'), DIGESTS));
  assert.equal(wire.readUInt32LE(48), crc32c(wire.subarray(0, 48)));
  assert.equal(wire.readUInt32LE(56), crc32c(Buffer.from([0x61, 0x62, 0x63, 0])));
});

test('a bad header digest throws; a bad data digest is reported with the PDU', () => {
  const bhs = Buffer.alloc(P.BHS_BYTES);
  const wire = join(P.framePdu(bhs, Buffer.from('data'), DIGESTS));
  const badHeader = Buffer.from(wire);
  badHeader[50] = (badHeader[50] as number) ^ 1;
  assert.throws(() => P.splitPdu(badHeader, DIGESTS), P.IscsiProtocolError);
  const badData = Buffer.from(wire);
  badData[wire.length - 1] = (badData[wire.length - 1] as number) ^ 1;
  assert.equal(P.splitPdu(badData, DIGESTS).kind, 'data-digest-error');
});

test('LUNs: peripheral and flat addressing decode, anything else is not addressable', () => {
  const bhs = Buffer.alloc(P.BHS_BYTES);
  P.encodeLun(5, bhs);
  assert.equal(P.decodeLun(bhs), 5);
  P.encodeLun(300, bhs);
  assert.equal(bhs[8], 0x41);
  assert.equal(P.decodeLun(bhs), 300);
  bhs[8] = 0x80;
  assert.equal(P.decodeLun(bhs), P.LUN_NOT_ADDRESSABLE);
  bhs.fill(0, 8, 16);
  bhs[12] = 1;
  assert.equal(P.decodeLun(bhs), P.LUN_NOT_ADDRESSABLE);
});

test('SCSI Command: flags, fields, and an extended CDB from the AHS', () => {
  const bhs = Buffer.alloc(P.BHS_BYTES);
  bhs[0] = 0x40 | P.Opcode.SCSI_COMMAND;
  bhs[1] = 0x80 | 0x20 | 2;
  bhs[4] = 5; // 20 bytes of AHS
  bhs.writeUInt32BE(0x11223344, 16);
  bhs.writeUInt32BE(4096, 20);
  bhs.writeUInt32BE(7, 24);
  bhs.fill(0xcd, 32, 48);
  const ahs = Buffer.alloc(20);
  ahs.writeUInt16BE(17, 0); // reserved byte + 16 more CDB bytes
  ahs[2] = 1;
  ahs.fill(0xee, 4, 20);
  const command = P.decodeScsiCommand({ bhs, ahs, data: Buffer.alloc(0) });
  assert.deepEqual(
    [command.immediate, command.final, command.read, command.write, command.attribute],
    [true, true, false, true, 2],
  );
  assert.deepEqual([command.itt, command.expectedLength, command.cmdSN], [0x11223344, 4096, 7]);
  assert.equal(command.cdb.length, 32);
  assert.equal(command.cdb[31], 0xee);
});

test('hostile AHS bytes are IscsiProtocolError', () => {
  const random = new Random(3);
  for (let round = 0; round < 500; round += 1) {
    const bhs = Buffer.alloc(P.BHS_BYTES);
    bhs[0] = P.Opcode.SCSI_COMMAND;
    const ahs = Buffer.alloc(4 * random.int(6));
    for (let i = 0; i < ahs.length; i += 1)
      ahs[i] = random.bool(0.7) ? random.int(4) : random.int(256);
    try {
      P.decodeScsiCommand({ bhs, ahs, data: Buffer.alloc(0) });
    } catch (error) {
      assert.ok(error instanceof P.IscsiProtocolError, String(error));
    }
  }
});

test('Login Request decoding and Login Response encoding put each field where RFC 7143 says', () => {
  const bhs = Buffer.alloc(P.BHS_BYTES);
  bhs[0] = 0x43;
  bhs[1] = 0x87; // T, CSG=1, NSG=3
  Buffer.from('800000123456', 'hex').copy(bhs, 8);
  bhs.writeUInt32BE(9, 16);
  bhs.writeUInt16BE(2, 20);
  bhs.writeUInt32BE(100, 24);
  const request = P.decodeLoginRequest({ bhs, ahs: Buffer.alloc(0), data: Buffer.alloc(0) });
  assert.deepEqual(
    [request.transit, request.csg, request.nsg, request.cid, request.cmdSN],
    [true, 1, 3, 2, 100],
  );
  const response = P.encodeLoginResponse({
    transit: true,
    continue: false,
    csg: 1,
    nsg: 3,
    isid: request.isid,
    tsih: 0x1234,
    itt: 9,
    statSN: 5,
    expCmdSN: 100,
    maxCmdSN: 227,
    statusClass: 2,
    statusDetail: 3,
  });
  assert.equal(response[0], 0x23);
  assert.equal(response[1], 0x87);
  assert.equal(response.subarray(8, 14).toString('hex'), '800000123456');
  assert.equal(response.readUInt16BE(14), 0x1234);
  assert.deepEqual(
    [response.readUInt32BE(24), response.readUInt32BE(28), response.readUInt32BE(32)],
    [5, 100, 227],
  );
  assert.deepEqual([response[36], response[37]], [2, 3]);
});

test('Data-In with status carries S, residual flags and count; without status it carries neither', () => {
  const sequence = { statSN: 10, expCmdSN: 20, maxCmdSN: 30 };
  const last = P.encodeDataIn({
    ...sequence,
    final: true,
    status: 0,
    residual: { overflow: false, underflow: true, count: 64 },
    lun: 0,
    itt: 1,
    dataSN: 2,
    bufferOffset: 8192,
  });
  assert.equal(last[1], 0x80 | 0x02 | 0x01);
  assert.deepEqual(
    [last.readUInt32BE(24), last.readUInt32BE(36), last.readUInt32BE(40), last.readUInt32BE(44)],
    [10, 2, 8192, 64],
  );
  const middle = P.encodeDataIn({
    ...sequence,
    final: false,
    status: undefined,
    residual: P.NO_RESIDUAL,
    lun: 0,
    itt: 1,
    dataSN: 0,
    bufferOffset: 0,
  });
  assert.equal(middle[1], 0);
  assert.equal(middle.readUInt32BE(20), P.RESERVED_TAG);
});

test('SCSI Response, R2T, Reject and Logout Response fields', () => {
  const sequence = { statSN: 1, expCmdSN: 2, maxCmdSN: 3 };
  const response = P.encodeScsiResponse({
    ...sequence,
    itt: 4,
    response: 0,
    status: 2,
    residual: { overflow: true, underflow: false, count: 512 },
    expDataSN: 6,
  });
  assert.deepEqual(
    [response[1], response[3], response.readUInt32BE(36), response.readUInt32BE(44)],
    [0x84, 2, 6, 512],
  );
  const r2t = P.encodeR2T({
    ...sequence,
    lun: 0,
    itt: 4,
    ttt: 9,
    r2tSN: 1,
    bufferOffset: 4096,
    desiredLength: 8192,
  });
  assert.deepEqual(
    [
      r2t[0],
      r2t.readUInt32BE(20),
      r2t.readUInt32BE(36),
      r2t.readUInt32BE(40),
      r2t.readUInt32BE(44),
    ],
    [0x31, 9, 1, 4096, 8192],
  );
  const reject = P.encodeReject({ ...sequence, reason: P.RejectReason.PROTOCOL_ERROR });
  assert.deepEqual([reject[0], reject[2], reject.readUInt32BE(16)], [0x3f, 4, P.RESERVED_TAG]);
  const logout = P.encodeLogoutResponse({
    ...sequence,
    response: 0,
    itt: 4,
    time2WaitSeconds: 2,
    time2RetainSeconds: 0,
  });
  assert.deepEqual([logout[0], logout.readUInt16BE(40)], [0x26, 2]);
  assert.deepEqual([...P.senseSegment(Uint8Array.from([0x70, 0, 5]))], [0, 3, 0x70, 0, 5]);
});
