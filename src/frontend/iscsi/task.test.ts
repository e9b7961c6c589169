// The data phases of a task: Data-Out collection (immediate, unsolicited up to
// FirstBurstLength, R2Ts of at most MaxBurstLength with at most MaxOutstandingR2T in
// flight, DataSN and offset rules) and the answer plan (Data-In cut to the initiator's
// MaxRecvDataSegmentLength and bursts, phase collapse, residuals of every kind).

import { strict as assert } from 'node:assert';
import { test } from 'node:test';
import { BufferCache } from '../../store/buffer-cache';
import { IscsiProtocolError, RESERVED_TAG, type DataOutPdu } from './pdu';
import { ScsiStatus } from './scsi-task';
import { DataOutCollector, DataOutError, planResponse } from './task';
import { DEFAULT_PARAMETERS, type SessionParameters } from './text';

function params(overrides: Partial<SessionParameters>): SessionParameters {
  return { ...DEFAULT_PARAMETERS, ...overrides };
}

function dataOut(ttt: number, dataSN: number, offset: number, bytes: number, fill = 1): DataOutPdu {
  return {
    final: false,
    lun: 0,
    itt: 1,
    ttt,
    expStatSN: 0,
    dataSN,
    bufferOffset: offset,
    data: Buffer.alloc(bytes, fill),
  };
}

test('immediate + unsolicited data, then R2Ts for the rest, at most MaxOutstandingR2T at a time', () => {
  const session = params({
    initialR2T: false,
    firstBurstLength: 8192,
    maxBurstLength: 16384,
    maxOutstandingR2T: 2,
  });
  const collector = new DataOutCollector(65536, Buffer.alloc(4096, 1), false, session);
  assert.equal(collector.unsolicitedEnd, 8192);
  let ttt = 100;
  assert.deepEqual(
    collector.nextR2Ts(() => ttt++),
    [],
    'R2Ts before the unsolicited data is in',
  );
  collector.accept(dataOut(RESERVED_TAG, 0, 4096, 4096));
  const first = collector.nextR2Ts(() => ttt++);
  assert.deepEqual(
    first.map((r2t) => [r2t.r2tSN, r2t.offset, r2t.length]),
    [
      [0, 8192, 16384],
      [1, 24576, 16384],
    ],
  );
  collector.accept(dataOut(100, 0, 8192, 8192));
  collector.accept(dataOut(100, 1, 16384, 8192));
  const next = collector.nextR2Ts(() => ttt++);
  assert.deepEqual(
    next.map((r2t) => [r2t.r2tSN, r2t.offset, r2t.length]),
    [[2, 40960, 16384]],
  );
  collector.accept(dataOut(101, 0, 24576, 16384));
  assert.deepEqual(
    collector.nextR2Ts(() => ttt++).map((r2t) => [r2t.offset, r2t.length]),
    [[57344, 8192]],
  );
  collector.accept(dataOut(102, 0, 40960, 16384));
  collector.accept(dataOut(103, 0, 57344, 8192, 7));
  assert.ok(collector.complete);
  const { data } = collector.take();
  assert.equal(data.length, 65536);
  assert.equal(data[65535], 7);
  assert.equal(collector.r2tCount, 4);
});

test('an unsolicited sequence ended early by the F bit leaves the rest to R2Ts', () => {
  const session = params({ initialR2T: false, firstBurstLength: 8192, maxBurstLength: 65536 });
  const collector = new DataOutCollector(16384, Buffer.alloc(0), false, session);
  collector.accept({ ...dataOut(RESERVED_TAG, 0, 0, 2048), final: true });
  assert.deepEqual(
    collector.nextR2Ts(() => 9).map((r2t) => [r2t.offset, r2t.length]),
    [[2048, 14336]],
  );
  assert.throws(() => collector.accept(dataOut(RESERVED_TAG, 1, 2048, 512)), DataOutError);
});

test('Data-Out out of sequence is a DataOutError; immediate data not negotiated is a protocol error', () => {
  const session = params({ initialR2T: true, maxBurstLength: 8192 });
  const collector = new DataOutCollector(8192, Buffer.alloc(0), true, session);
  const [r2t] = collector.nextR2Ts(() => 5);
  assert.ok(r2t !== undefined);
  assert.throws(() => collector.accept(dataOut(5, 1, 0, 512)), DataOutError, 'DataSN 1 first');
  assert.throws(() => collector.accept(dataOut(5, 0, 512, 512)), DataOutError, 'offset skips');
  assert.throws(() => collector.accept(dataOut(6, 0, 0, 512)), DataOutError, 'unknown TTT');
  assert.throws(
    () => collector.accept(dataOut(RESERVED_TAG, 0, 0, 512)),
    DataOutError,
    'unsolicited with InitialR2T=Yes',
  );
  assert.throws(() => collector.accept(dataOut(5, 0, 0, 9000)), DataOutError, 'beyond the R2T');
  assert.throws(
    () => new DataOutCollector(4096, Buffer.alloc(512), true, params({ immediateData: false })),
    IscsiProtocolError,
  );
});

test('Data-In is cut to MaxRecvDataSegmentLength, F at burst ends, status in the last PDU', () => {
  const plan = planResponse(
    { direction: 'read', expectedLength: 20000, bidiReadLength: undefined },
    { status: ScsiStatus.GOOD, dataIn: new Uint8Array(20000) },
    { initiatorMaxRecvDataSegmentLength: 4096, maxBurstLength: 8192 },
  );
  assert.deepEqual(
    plan.segments.map((s) => [s.offset, s.length, s.final, s.withStatus]),
    [
      [0, 4096, false, false],
      [4096, 4096, true, false],
      [8192, 4096, false, false],
      [12288, 4096, true, false],
      [16384, 3616, true, true],
    ],
  );
  assert.equal(plan.scsiResponse, false);
});

test('residuals: read underflow and overflow, write overflow and underflow, sense forces a SCSI Response', () => {
  const limits = { initiatorMaxRecvDataSegmentLength: 8192, maxBurstLength: 262144 };
  const under = planResponse(
    { direction: 'read', expectedLength: 100, bidiReadLength: undefined },
    { status: 0, dataIn: new Uint8Array(36) },
    limits,
  );
  assert.deepEqual(under.residual, { overflow: false, underflow: true, count: 64 });
  const over = planResponse(
    { direction: 'read', expectedLength: 512, bidiReadLength: undefined },
    { status: 0, dataIn: new Uint8Array(1024) },
    limits,
  );
  assert.deepEqual(
    [over.data.length, over.residual.overflow, over.residual.count],
    [512, true, 512],
  );
  const writeOver = planResponse(
    { direction: 'write', expectedLength: 0, bidiReadLength: undefined },
    { status: 0, dataOutLength: 512 },
    limits,
  );
  assert.deepEqual(writeOver.residual, { overflow: true, underflow: false, count: 512 });
  const writeUnder = planResponse(
    { direction: 'write', expectedLength: 10000, bidiReadLength: undefined },
    { status: 0, dataOutLength: 512 },
    limits,
  );
  assert.deepEqual(writeUnder.residual, { overflow: false, underflow: true, count: 9488 });
  const failed = planResponse(
    { direction: 'read', expectedLength: 512, bidiReadLength: undefined },
    { status: ScsiStatus.CHECK_CONDITION, sense: new Uint8Array(18) },
    limits,
  );
  assert.deepEqual(
    [failed.scsiResponse, failed.segments.length, failed.residual.count],
    [true, 0, 512],
  );
});

test('payloads received straight into the whole buffer and pieces kept as views join to the same bytes', () => {
  const session = params({ initialR2T: true, maxBurstLength: 16384, maxOutstandingR2T: 4 });
  const immediate = Buffer.alloc(4096, 7);
  const collector = new DataOutCollector(32768, immediate, false, session);
  let ttt = 1;
  const r2ts = collector.nextR2Ts(() => ttt++);
  assert.deepEqual(
    r2ts.map((r2t) => [r2t.offset, r2t.length]),
    [
      [4096, 16384],
      [20480, 12288],
    ],
  );
  // First Data-Out kept as a view; the second is received into the whole buffer, which
  // must then also hold the immediate data and the first piece.
  collector.accept(dataOut(1, 0, 4096, 8192, 8));
  const whole = collector.receiveBuffer(12288, 8192);
  assert.ok(whole !== undefined && whole.length === 32768);
  assert.equal(collector.receiveBuffer(30000, 4096), undefined, 'a range beyond the transfer');
  whole.fill(9, 12288, 20480);
  collector.accept({ ...dataOut(1, 1, 12288, 0), data: whole.subarray(12288, 20480) });
  // A piece from elsewhere after the whole buffer exists is copied into it.
  collector.accept(dataOut(2, 0, 20480, 12288, 10));
  assert.ok(collector.complete);
  const { data: bytes } = collector.take();
  assert.equal(bytes, whole, 'no join when the whole buffer was used');
  const expected = Buffer.concat([
    Buffer.alloc(4096, 7),
    Buffer.alloc(8192, 8),
    Buffer.alloc(8192, 9),
    Buffer.alloc(12288, 10),
  ]);
  assert.ok(bytes.equals(expected));
});

test('a pooled whole buffer is handed out again only after take()’s release, and holds the new write whole', () => {
  const session = params({ initialR2T: true, maxBurstLength: 65536, maxOutstandingR2T: 1 });
  let allocations = 0;
  const buffers = new BufferCache((length) => {
    allocations += 1;
    return Buffer.alloc(length);
  });
  // Immediate data plus one Data-Out: two pieces, joined into a pooled buffer at take().
  const collect = (fill: number) => {
    const collector = new DataOutCollector(
      65536,
      Buffer.alloc(4096, fill),
      false,
      session,
      buffers,
    );
    collector.nextR2Ts(() => 1);
    collector.accept(dataOut(1, 0, 4096, 61440, fill));
    assert.ok(collector.complete);
    return collector.take();
  };
  const first = collect(1);
  const second = collect(2); // the first still holds its buffer: a second one
  assert.equal(allocations, 2);
  assert.notEqual(second.data.buffer, first.data.buffer);
  assert.ok(first.data.equals(Buffer.alloc(65536, 1)), 'the first write changed under it');
  const firstMemory = first.data.buffer;
  first.release();
  const third = collect(3);
  assert.equal(allocations, 2, 'the released buffer was not reused');
  assert.equal(third.data.buffer, firstMemory);
  assert.ok(third.data.equals(Buffer.alloc(65536, 3)), 'old bytes showed through');
  assert.throws(() => first.release(), /released twice/);
});
