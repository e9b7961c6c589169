// Proves the server's bounds on authenticated connections (invariant 6): over-long
// metadata and payloads, unknown frame kinds and malformed metadata get a BAD_REQUEST
// error reply and the connection keeps working; bad magic, a bad version, a frame too
// large to skip and a reused request id close the connection; throughout, another client
// keeps being served. Back-pressure: a peer that sends requests but never reads replies
// makes the server stop reading it, so the handler sees a bounded number of requests and
// the server holds bounded bytes, while other peers are still served.

import { strict as assert } from 'node:assert';
import { after, before, test } from 'node:test';
import { PeerClient, PeerRemoteError, type PeerReply } from '../../src/replication/peer';
import * as W from '../../src/replication/wire';
import {
  MiB,
  RawPeer,
  SECRET,
  bugEvents,
  rawHeader,
  requestFrame,
  sleep,
  startPeerServer,
  waitUntil,
  type Frame,
  type TestPeerServer,
} from './helpers';

let server: TestPeerServer;
let healthy: PeerClient;
let holdReplies = false;
const held: Array<() => void> = [];
let handlerCalls = 0;

before(async () => {
  server = await startPeerServer(
    async (request) => {
      handlerCalls += 1;
      if (request.type === 2) {
        // a 1 MiB reply
        return { metadata: 'big', payload: Buffer.alloc(MiB, 7) };
      }
      if (request.type === 3 && holdReplies) {
        await new Promise<void>((resolve) => held.push(resolve));
      }
      return { metadata: request.metadata, payload: request.payload };
    },
    {
      limits: { maxInFlightBytes: 4 * MiB, maxInFlightRequests: 64 },
      expectedReplyBytes: (request) => (request.type === 2 ? MiB : 0),
    },
  );
  healthy = await PeerClient.connect({ address: server.address, hostId: 'host-a', secret: SECRET });
});

after(async () => {
  await healthy.close();
  await server.close();
  assert.deepEqual(bugEvents(server.logs), []);
});

async function stillServing(): Promise<void> {
  const payload = Buffer.from('still here');
  const reply = await healthy.request(1, 10, { check: true }, payload);
  assert.deepEqual(reply.metadata, { check: true });
  assert.ok(Buffer.from(reply.payload!).equals(payload));
}

function errorOf(frame: Frame | undefined): W.ErrorReplyMetadata {
  assert.ok(frame !== undefined, 'no reply');
  assert.equal(frame.header.kind, W.FrameKind.errorReply);
  return W.decodeErrorMetadata(W.decodeMetadata(frame.metadata));
}

test('over-long metadata gets BAD_REQUEST for that request id; the connection keeps working', async () => {
  const raw = await RawPeer.authenticated(server.target);
  const metadata = Buffer.alloc(W.MAX_METADATA_BYTES + 1, 0xc0); // msgpack nils
  raw.write(rawHeader({ requestId: 77, metadataBytes: metadata.length }));
  raw.write(metadata);
  raw.write(requestFrame(78, 'next'));
  const first = await raw.readFrame();
  assert.equal(first?.header.requestId, 77);
  assert.equal(errorOf(first).code, 'BAD_REQUEST');
  assert.match(errorOf(first).message, /metadata of 65537 bytes exceeds the 65536-byte maximum/);
  const second = await raw.readFrame();
  assert.equal(second?.header.kind, W.FrameKind.reply);
  assert.equal(W.decodeMetadata(second!.metadata), 'next');
  raw.destroy();
  await stillServing();
});

test('an over-long payload is skipped without buffering and refused with BAD_REQUEST', async () => {
  const raw = await RawPeer.authenticated(server.target);
  raw.write(rawHeader({ requestId: 5, payloadBytes: W.MAX_PAYLOAD_BYTES + 1 }));
  const chunk = Buffer.alloc(MiB);
  for (let sent = 0; sent < W.MAX_PAYLOAD_BYTES + 1; sent += chunk.length) {
    const piece = Math.min(chunk.length, W.MAX_PAYLOAD_BYTES + 1 - sent);
    raw.write(chunk.subarray(0, piece));
  }
  raw.write(requestFrame(6, 'after'));
  const reply = await raw.readFrame();
  assert.equal(reply?.header.requestId, 5);
  assert.match(errorOf(reply).message, /payload of 67108865 bytes exceeds/);
  assert.equal((await raw.readFrame())?.header.requestId, 6);
  raw.destroy();
  await stillServing();
});

test('an unknown frame kind and malformed metadata get BAD_REQUEST; the stream stays in step', async () => {
  const raw = await RawPeer.authenticated(server.target);
  const unknownKind = requestFrame(1, 'x', Buffer.alloc(10));
  unknownKind[5] = 42;
  raw.write(unknownKind);
  const reply = requestFrame(2, 'y');
  reply[5] = W.FrameKind.reply; // a reply sent to a server
  raw.write(reply);
  raw.write(rawHeader({ requestId: 3, metadataBytes: 2 }));
  raw.write(Buffer.from([0x92, 0x01])); // an array of two with one element
  raw.write(requestFrame(4, 'fine'));
  const replies = [await raw.readFrame(), await raw.readFrame(), await raw.readFrame()];
  assert.deepEqual(
    replies.map((frame) => [frame?.header.requestId, errorOf(frame).code]),
    [
      [1, 'BAD_REQUEST'],
      [2, 'BAD_REQUEST'],
      [3, 'BAD_REQUEST'],
    ],
  );
  assert.match(errorOf(replies[2]).message, /malformed metadata/);
  assert.equal(W.decodeMetadata((await raw.readFrame())!.metadata), 'fine');
  raw.destroy();
  await stillServing();
});

test('bad magic, a bad version, an unskippable length and a reused request id close the connection', async () => {
  const cases: Array<[string, Buffer[]]> = [
    ['magic', [rawHeader({ magic: 0x47455420 })]], // "GET " — someone's HTTP client
    ['version', [rawHeader({ version: 9 })]],
    ['length', [rawHeader({ metadataBytes: 0xffffffff, payloadBytes: 0xffffffff })]],
    [
      'reused id',
      [requestFrame(9, 'a', undefined, { type: 3 }), requestFrame(9, 'b', undefined, { type: 3 })],
    ],
  ];
  holdReplies = true;
  try {
    for (const [name, frames] of cases) {
      const raw = await RawPeer.authenticated(server.target);
      for (const frame of frames) raw.write(frame);
      assert.ok(await raw.closedWithin(2000), `${name}: connection stayed open`);
      await stillServing();
    }
  } finally {
    holdReplies = false;
    held.splice(0).forEach((resolve) => resolve());
  }
  const reasons = server.logs
    .filter((entry) => entry.event === 'peer.protocol_error')
    .map((entry) => String(entry.fields.reason));
  assert.ok(reasons.some((reason) => /bad magic 0x47455420/.test(reason)));
  assert.ok(reasons.some((reason) => /unsupported protocol version 9/.test(reason)));
  assert.ok(reasons.some((reason) => /too large to skip/.test(reason)));
  assert.ok(reasons.some((reason) => /request id 9 is already in flight/.test(reason)));
});

test('a peer that never reads its replies makes the server stop reading it', async () => {
  const raw = await RawPeer.authenticated(server.target);
  try {
    await neverReading(raw);
  } finally {
    raw.destroy();
  }
});

async function neverReading(raw: RawPeer): Promise<void> {
  raw.socket.pause(); // never read: 1 MiB replies pile up in the kernel, then in the server
  const before = handlerCalls;
  const requests = 400;
  for (let id = 1; id <= requests; id += 1)
    raw.write(requestFrame(id, null, undefined, { type: 2 }));
  // Let the server take what it will; then the count must stop growing.
  let settled = handlerCalls;
  for (let round = 0; round < 50; round += 1) {
    await sleep(40);
    if (handlerCalls === settled && round > 3) break;
    settled = handlerCalls;
  }
  const served = handlerCalls - before;
  const stats = server.server.stats();
  // Four 1 MiB replies fill the byte bound (expectedReplyBytes charges them up front).
  assert.ok(served < 100, `server handled ${served} of ${requests}: it kept reading`);
  assert.ok(stats.inFlightBytes <= 4 * MiB + MiB, `server holds ${stats.inFlightBytes} bytes`);
  // Others are still served meanwhile.
  await stillServing();
  // Once the peer reads, everything is answered.
  raw.socket.resume();
  let answered = 0;
  while (answered < requests) {
    const frame = await raw.readFrame();
    assert.equal(frame?.header.kind, W.FrameKind.reply);
    answered += 1;
  }
}

test('requests beyond the in-flight bound wait instead of piling up in the server', async () => {
  holdReplies = true;
  const replies: Array<Promise<PeerReply>> = [];
  try {
    const client = await PeerClient.connect({
      address: server.address,
      hostId: 'host-a',
      secret: SECRET,
    });
    for (let i = 0; i < 200; i += 1) replies.push(client.request(3, 10, i));
    await waitUntil(() => held.length === 64, 2000);
    await sleep(50);
    assert.equal(held.length, 64, 'the server took more than maxInFlightRequests');
    holdReplies = false;
    while (held.length > 0) held.splice(0).forEach((resolve) => resolve());
    const results = await Promise.all(replies);
    assert.deepEqual(
      results.map((reply) => reply.metadata),
      Array.from({ length: 200 }, (_, i) => i),
    );
    await client.close();
  } finally {
    holdReplies = false;
    held.splice(0).forEach((resolve) => resolve());
  }
});

test('an error from the handler never disturbs the accounting: STALE_EPOCH on a busy connection', async () => {
  const results = await Promise.allSettled(
    Array.from({ length: 300 }, (_, i) => healthy.request(1, i % 2 === 0 ? 9 : 10, i)),
  );
  results.forEach((result, i) => {
    if (i % 2 === 0) {
      assert.ok(result.status === 'rejected' && result.reason instanceof PeerRemoteError);
      assert.equal(result.reason.code, 'STALE_EPOCH');
    } else {
      assert.ok(result.status === 'fulfilled' && result.value.metadata === i);
    }
  });
  await waitUntil(() => server.server.stats().inFlightRequests === 0, 2000);
  assert.equal(server.server.stats().inFlightBytes, 0);
});
