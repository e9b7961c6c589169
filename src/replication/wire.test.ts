// Proves the peer frame codecs: the header sits at the documented byte offsets, frames
// round-trip through the incremental reader however the bytes are split, a payload inside
// one chunk is handed over as a view, over-long frames and unknown kinds are skipped with
// the stream still in step, bad magic, bad version and unskippable sizes are fatal,
// malformed metadata is BAD_REQUEST, error replies decode defensively, and the
// authentication proof depends on role, secret, both nonces and both host ids.

import { strict as assert } from 'node:assert';
import { test } from 'node:test';
import { ByteQueue } from '../frontend/nbd/byte-queue';
import { isCisternError } from '../util/errors';
import { Random } from '../util/random';
import * as W from './wire';

const serverLimits: W.FrameLimits = {
  maxMetadataBytes: W.MAX_METADATA_BYTES,
  maxPayloadBytes: W.MAX_PAYLOAD_BYTES,
  maxSkippableBytes: W.MAX_SKIPPABLE_FRAME_BYTES,
  kinds: [W.FrameKind.request],
};

function frameBytes(frame: W.OutgoingFrame): Buffer {
  return Buffer.concat(W.encodeFrame(frame));
}

function request(requestId: number, metadata: unknown, payload?: Uint8Array): W.OutgoingFrame {
  return { kind: W.FrameKind.request, type: 7, requestId, epoch: 42, metadata, payload };
}

function readAll(reader: W.FrameReader): W.ReadResult[] {
  const results: W.ReadResult[] = [];
  for (let result = reader.next(); result !== undefined; result = reader.next()) {
    results.push(result);
  }
  return results;
}

test('the header fields sit at the documented big-endian offsets', () => {
  const bytes = W.encodeHeader({
    magic: W.PEER_MAGIC,
    version: 1,
    kind: W.FrameKind.errorReply,
    type: 0x1234,
    requestId: 0xdeadbeef,
    epoch: 0x01020304,
    metadataBytes: 0x10,
    payloadBytes: 0x200000,
  });
  assert.equal(bytes.length, W.FRAME_HEADER_BYTES);
  assert.equal(bytes.subarray(0, 4).toString('latin1'), 'CSTP');
  assert.deepEqual(
    [...bytes],
    [
      0x43, 0x53, 0x54, 0x50, 1, 3, 0x12, 0x34, 0xde, 0xad, 0xbe, 0xef, 1, 2, 3, 4, 0, 0, 0, 0x10,
      0, 0x20, 0, 0,
    ],
  );
  assert.deepEqual(W.decodeHeader(bytes), {
    magic: W.PEER_MAGIC,
    version: 1,
    kind: 3,
    type: 0x1234,
    requestId: 0xdeadbeef,
    epoch: 0x01020304,
    metadataBytes: 0x10,
    payloadBytes: 0x200000,
  });
});

test('frames round-trip through the reader however the bytes are split', () => {
  const random = new Random(7);
  const payload = Buffer.alloc(100_000);
  for (let i = 0; i < payload.length; i += 1) payload[i] = random.u32() & 0xff;
  const metadata = {
    object: 'pool1/vol/17',
    offset: 4096,
    versions: [1, 2, 3],
    blob: Buffer.from('x'),
  };
  const stream = Buffer.concat([
    frameBytes(request(1, metadata, payload)),
    frameBytes(request(2, undefined)),
    frameBytes(request(3, 'only metadata')),
  ]);
  for (let trial = 0; trial < 50; trial += 1) {
    const queue = new ByteQueue();
    const reader = new W.FrameReader(queue, serverLimits);
    const results: W.ReadResult[] = [];
    for (let at = 0; at < stream.length;) {
      const piece = trial === 0 ? 1 : random.range(1, 5000);
      queue.push(stream.subarray(at, at + piece));
      at += piece;
      results.push(...readAll(reader));
    }
    assert.equal(results.length, 3);
    const [first, second, third] = results.map((result) => {
      assert.equal(result.kind, 'frame');
      return result as Extract<W.ReadResult, { kind: 'frame' }>;
    });
    assert.deepEqual(W.decodeMetadata(first!.metadata), metadata);
    assert.ok(first!.payload !== undefined && first!.payload.equals(payload));
    assert.equal(first!.header.epoch, 42);
    assert.equal(first!.header.type, 7);
    assert.equal(second!.header.requestId, 2);
    assert.equal(W.decodeMetadata(second!.metadata), undefined);
    assert.equal(second!.payload, undefined);
    assert.equal(W.decodeMetadata(third!.metadata), 'only metadata');
    assert.ok(reader.atFrameBoundary);
  }
});

test('a payload that arrived in one chunk is handed over as a view, not a copy', () => {
  const chunk = frameBytes(request(9, { a: 1 }, Buffer.alloc(8192, 0xab)));
  const queue = new ByteQueue();
  queue.push(chunk);
  const result = new W.FrameReader(queue, serverLimits).next();
  assert.ok(result?.kind === 'frame' && result.payload !== undefined);
  assert.equal(result.payload.buffer, chunk.buffer);
});

test('over-long metadata and payloads and unknown kinds are skipped; the next frame still parses', () => {
  const limits = { ...serverLimits, maxMetadataBytes: 16, maxPayloadBytes: 64 };
  const tooMuchMetadata = frameBytes(request(1, 'x'.repeat(100)));
  const tooMuchPayload = frameBytes(request(2, 1, Buffer.alloc(65)));
  const reply = frameBytes({ ...request(3, 1), kind: W.FrameKind.reply });
  const unknownKind = frameBytes(request(4, 1));
  unknownKind[5] = 99;
  const good = frameBytes(request(5, 'ok', Buffer.alloc(64)));
  const queue = new ByteQueue();
  queue.push(Buffer.concat([tooMuchMetadata, tooMuchPayload, reply, unknownKind, good]));
  const results = readAll(new W.FrameReader(queue, limits));
  assert.deepEqual(
    results.map((result) => [result.kind, 'header' in result ? result.header.requestId : -1]),
    [
      ['rejected', 1],
      ['rejected', 2],
      ['rejected', 3],
      ['rejected', 4],
      ['frame', 5],
    ],
  );
  assert.match((results[0] as { reason: string }).reason, /metadata of 102 bytes exceeds/);
  assert.match((results[3] as { reason: string }).reason, /unexpected frame kind 99/);
});

test('bad magic, bad version and frames too large to skip are fatal', () => {
  const cases: Array<[string, (bytes: Buffer) => void, RegExp]> = [
    ['magic', (bytes) => bytes.writeUInt32BE(0x12345678, 0), /bad magic/],
    ['version', (bytes) => bytes.writeUInt8(2, 4), /unsupported protocol version 2/],
    ['size', (bytes) => bytes.writeUInt32BE(0xffffffff, 20), /too large to skip/],
  ];
  for (const [name, mutate, reason] of cases) {
    const bytes = frameBytes(request(1, 'x'));
    mutate(bytes);
    const queue = new ByteQueue();
    queue.push(bytes);
    const result = new W.FrameReader(queue, serverLimits).next();
    assert.ok(result?.kind === 'fatal', name);
    assert.match(result.reason, reason);
  }
});

test('encodeFrame refuses metadata and payloads beyond the bounds with EINVAL', () => {
  assert.throws(
    () => W.encodeFrame(request(1, Buffer.alloc(W.MAX_METADATA_BYTES))),
    (error) => isCisternError(error, 'EINVAL'),
  );
  assert.throws(
    () => W.encodeFrame(request(1, 1, { length: W.MAX_PAYLOAD_BYTES + 1 } as Uint8Array)),
    (error) => isCisternError(error, 'EINVAL'),
  );
  const cyclic: Record<string, unknown> = {};
  cyclic.self = cyclic;
  for (const metadata of [Symbol('x'), cyclic]) {
    assert.throws(
      () => W.encodeFrame(request(1, metadata)),
      (error) => isCisternError(error, 'EINVAL'),
    );
  }
});

test('malformed metadata is BAD_REQUEST, including trailing bytes', () => {
  for (const bytes of [
    Buffer.from([0xdd, 0xff, 0xff, 0xff, 0xff]),
    Buffer.from([0x92, 1]),
    Buffer.from([1, 2]),
  ]) {
    assert.throws(
      () => W.decodeMetadata(bytes),
      (error) => isCisternError(error, 'BAD_REQUEST'),
    );
  }
});

test('error replies decode defensively: unknown codes become EIO, the epoch survives', () => {
  assert.deepEqual(W.decodeErrorMetadata(W.encodeErrorMetadata('STALE_EPOCH', 'behind', 12)), {
    code: 'STALE_EPOCH',
    message: 'behind',
    epoch: 12,
  });
  assert.deepEqual(W.decodeErrorMetadata({ code: 'toString', message: 'x' }), {
    code: 'EIO',
    message: 'x',
  });
  assert.equal(W.decodeErrorMetadata(null).code, 'EIO');
  assert.equal(W.decodeErrorMetadata({ code: 'EIO', message: 5, epoch: -1 }).epoch, undefined);
  assert.ok(W.encodeErrorMetadata('EIO', 'x'.repeat(5000)).message.length <= 1025);
});

test('the proof depends on role, secret, both nonces and both host ids', () => {
  const transcript: W.AuthTranscript = {
    clientHostId: 'host-a',
    serverHostId: 'host-b',
    clientNonce: Buffer.alloc(32, 1),
    serverNonce: Buffer.alloc(32, 2),
  };
  const secret = Buffer.from('cluster secret');
  const base = W.computeProof(secret, 'client', transcript);
  assert.equal(base.length, W.PROOF_BYTES);
  assert.ok(W.proofMatches(base, W.computeProof(secret, 'client', { ...transcript })));
  const variants = [
    W.computeProof(secret, 'server', transcript),
    W.computeProof(Buffer.from('other secret'), 'client', transcript),
    W.computeProof(secret, 'client', { ...transcript, clientNonce: Buffer.alloc(32, 3) }),
    W.computeProof(secret, 'client', { ...transcript, serverNonce: Buffer.alloc(32, 3) }),
    W.computeProof(secret, 'client', {
      ...transcript,
      clientHostId: 'host-b',
      serverHostId: 'host-a',
    }),
    W.computeProof(secret, 'client', {
      ...transcript,
      clientHostId: 'host-ah',
      serverHostId: 'ost-b',
    }),
  ];
  for (const variant of variants) assert.ok(!W.proofMatches(base, variant));
  assert.ok(!W.proofMatches(base, base.subarray(0, 31)));
});

test('auth metadata is validated: host id length and nonce size', () => {
  const nonce = Buffer.alloc(W.NONCE_BYTES);
  assert.ok(W.decodeAuthHello({ hostId: 'h', nonce }) !== undefined);
  assert.equal(W.decodeAuthHello({ hostId: '', nonce }), undefined);
  assert.equal(W.decodeAuthHello({ hostId: 'h'.repeat(256), nonce }), undefined);
  assert.equal(W.decodeAuthHello({ hostId: 'h', nonce: nonce.subarray(1) }), undefined);
  assert.equal(W.decodeAuthHello([1, 2]), undefined);
  assert.equal(W.decodeAuthProof({ proof: 'x'.repeat(32) }), undefined);
});
