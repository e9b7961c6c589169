// Proves that nothing is served before mutual authentication: a client with the wrong
// secret is refused (EPERM naming the peer, a logged reason on the server); a client
// talking to a server with another secret is refused too, and a server that cannot prove
// the secret is rejected by the client before it sends any request; a request frame sent
// before or in the middle of the handshake closes the connection without the handler
// running; a silent connection is dropped after the handshake timeout; a recorded proof
// cannot be replayed on a new connection; a peer answering under another host id is
// refused.

import { strict as assert } from 'node:assert';
import { randomBytes } from 'node:crypto';
import * as net from 'node:net';
import { test } from 'node:test';
import { ByteQueue } from '../../src/frontend/nbd/byte-queue';
import { PeerClient, type PeerHandler } from '../../src/replication/peer';
import { isCisternError } from '../../src/util/errors';
import * as W from '../../src/replication/wire';
import { RawPeer, SECRET, WRONG_SECRET, authFrame, requestFrame, startPeerServer } from './helpers';

function countingHandler(): { handler: PeerHandler; calls: () => number } {
  let calls = 0;
  return {
    handler: async () => {
      calls += 1;
      return { metadata: 'served' };
    },
    calls: () => calls,
  };
}

test('a client with the wrong secret is refused with EPERM; the server logs why', async () => {
  const { handler, calls } = countingHandler();
  const server = await startPeerServer(handler);
  try {
    await assert.rejects(
      PeerClient.connect({ address: server.address, hostId: 'host-a', secret: WRONG_SECRET }),
      (error: unknown) => {
        assert.ok(isCisternError(error, 'EPERM'));
        assert.match(
          error.message,
          /^peer host-b \(127\.0\.0\.1:\d+\) refused authentication \(wrong cluster secret\?\)/,
        );
        return true;
      },
    );
    const refusal = server.logs.find((entry) => entry.event === 'peer.auth_refused');
    assert.ok(refusal !== undefined);
    assert.equal(refusal.fields.reason, 'wrong cluster secret');
    assert.equal(refusal.fields.claimedHostId, 'host-a');
    assert.equal(calls(), 0);
    assert.equal(server.server.stats().connections, 0);
  } finally {
    await server.close();
  }
});

test('a server with another secret refuses a client that has the right one', async () => {
  const { handler, calls } = countingHandler();
  const server = await startPeerServer(handler, { secret: WRONG_SECRET });
  try {
    await assert.rejects(
      PeerClient.connect({ address: server.address, hostId: 'host-a', secret: SECRET }),
      (error: unknown) => isCisternError(error, 'EPERM'),
    );
    assert.equal(calls(), 0);
  } finally {
    await server.close();
  }
});

test('mutual: the client rejects a server that cannot prove the secret, and sends no request', async () => {
  // A fake server that accepts any client proof but proves itself with another secret.
  const framesAfterProof: number[] = [];
  const fake = net.createServer((socket) => serveFake(socket, framesAfterProof));
  await new Promise<void>((resolve) => fake.listen(0, '127.0.0.1', resolve));
  const port = (fake.address() as net.AddressInfo).port;
  try {
    await assert.rejects(
      PeerClient.connect({ address: `127.0.0.1:${port}`, hostId: 'host-a', secret: SECRET }),
      (error: unknown) => {
        assert.ok(isCisternError(error, 'EPERM'));
        assert.match(
          error.message,
          /peer fake-host .* failed authentication.*wrong cluster secret/,
        );
        return true;
      },
    );
    await new Promise((resolve) => setTimeout(resolve, 50));
    assert.deepEqual(framesAfterProof, []);
  } finally {
    await new Promise((resolve) => fake.close(resolve));
  }
});

/** Plays the server side of the handshake with WRONG_SECRET, recording later frames. */
function serveFake(socket: net.Socket, framesAfterProof: number[]): void {
  const queue = new ByteQueue();
  const reader = new W.FrameReader(queue, {
    maxMetadataBytes: W.MAX_METADATA_BYTES,
    maxPayloadBytes: W.MAX_PAYLOAD_BYTES,
    maxSkippableBytes: 0,
    kinds: [W.FrameKind.auth, W.FrameKind.request],
  });
  const serverNonce = randomBytes(W.NONCE_BYTES);
  let transcript: W.AuthTranscript | undefined;
  let proven = false;
  socket.on('error', () => undefined);
  socket.on('data', (chunk: Buffer) => {
    queue.push(chunk);
    for (let result = reader.next(); result?.kind === 'frame'; result = reader.next()) {
      if (proven) {
        framesAfterProof.push(result.header.kind);
        continue;
      }
      const metadata = W.decodeMetadata(result.metadata);
      if (result.header.type === W.AuthStep.hello) {
        const hello = W.decodeAuthHello(metadata)!;
        transcript = {
          clientHostId: hello.hostId,
          serverHostId: 'fake-host',
          clientNonce: hello.nonce,
          serverNonce,
        };
        socket.write(authFrame(W.AuthStep.challenge, { hostId: 'fake-host', nonce: serverNonce }));
      } else if (result.header.type === W.AuthStep.clientProof && transcript !== undefined) {
        proven = true;
        const proof = W.computeProof(WRONG_SECRET, 'server', transcript);
        socket.write(authFrame(W.AuthStep.serverProof, { proof }));
      }
    }
  });
}

test('a request frame before authentication closes the connection; the handler never runs', async () => {
  const { handler, calls } = countingHandler();
  const server = await startPeerServer(handler);
  try {
    const raw = await RawPeer.open(server.target);
    raw.write(requestFrame(1, { please: 'serve me' }, Buffer.alloc(100)));
    assert.ok(await raw.closedWithin(2000), 'connection stayed open');
    assert.equal(calls(), 0);
    const refusal = server.logs.find((entry) => entry.event === 'peer.auth_refused');
    assert.match(String(refusal?.fields.reason), /unexpected frame kind 1/);
  } finally {
    await server.close();
  }
});

test('a request frame in the middle of the handshake closes the connection', async () => {
  const { handler, calls } = countingHandler();
  const server = await startPeerServer(handler);
  try {
    const raw = await RawPeer.open(server.target);
    raw.write(authFrame(W.AuthStep.hello, { hostId: 'x', nonce: randomBytes(W.NONCE_BYTES) }));
    assert.equal((await raw.readFrame())?.header.type, W.AuthStep.challenge);
    raw.write(requestFrame(1, 'skip the proof'));
    assert.ok(await raw.closedWithin(2000));
    assert.equal(calls(), 0);
  } finally {
    await server.close();
  }
});

test('a connection that never authenticates is dropped after the handshake timeout', async () => {
  const server = await startPeerServer(countingHandler().handler, {
    limits: { handshakeTimeoutMs: 150 },
  });
  try {
    const silent = await RawPeer.open(server.target);
    const started = Date.now();
    assert.ok(await silent.closedWithin(2000));
    assert.ok(Date.now() - started >= 100);
    assert.ok(server.logs.some((entry) => /in time/.test(String(entry.fields.reason))));
  } finally {
    await server.close();
  }
});

test('a recorded client proof cannot be replayed on a new connection', async () => {
  const { handler, calls } = countingHandler();
  const server = await startPeerServer(handler);
  try {
    const nonce = randomBytes(W.NONCE_BYTES);
    // First connection: a genuine exchange, recorded.
    const first = await RawPeer.open(server.target);
    first.write(authFrame(W.AuthStep.hello, { hostId: 'host-a', nonce }));
    const challenge = W.decodeAuthHello(W.decodeMetadata((await first.readFrame())!.metadata))!;
    const proof = W.computeProof(SECRET, 'client', {
      clientHostId: 'host-a',
      serverHostId: challenge.hostId,
      clientNonce: nonce,
      serverNonce: challenge.nonce,
    });
    first.write(authFrame(W.AuthStep.clientProof, { proof }));
    assert.equal((await first.readFrame())?.header.type, W.AuthStep.serverProof);
    first.destroy();
    // Second connection: same hello, same proof; the server's nonce differs.
    const replay = await RawPeer.open(server.target);
    replay.write(authFrame(W.AuthStep.hello, { hostId: 'host-a', nonce }));
    await replay.readFrame();
    replay.write(authFrame(W.AuthStep.clientProof, { proof }));
    assert.equal((await replay.readFrame())?.header.type, W.AuthStep.refused);
    assert.ok(await replay.closedWithin(2000));
    assert.equal(calls(), 0);
  } finally {
    await server.close();
  }
});

test('a client expecting another host id refuses the peer', async () => {
  const server = await startPeerServer(countingHandler().handler);
  try {
    await assert.rejects(
      PeerClient.connect({
        address: server.address,
        hostId: 'host-a',
        secret: SECRET,
        expectedPeerHostId: 'host-q',
      }),
      (error: unknown) => isCisternError(error, 'EPERM') && /expected host-q/.test(error.message),
    );
  } finally {
    await server.close();
  }
});

test('connecting to nothing fails with UNAVAILABLE, a bad address with EINVAL', async () => {
  const unused = net.createServer();
  await new Promise<void>((resolve) => unused.listen(0, '127.0.0.1', resolve));
  const port = (unused.address() as net.AddressInfo).port;
  await new Promise((resolve) => unused.close(resolve));
  await assert.rejects(
    PeerClient.connect({ address: `127.0.0.1:${port}`, hostId: 'host-a', secret: SECRET }),
    (error: unknown) => isCisternError(error, 'UNAVAILABLE'),
  );
  await assert.rejects(
    PeerClient.connect({ address: 'no-port', hostId: 'host-a', secret: SECRET }),
    (error: unknown) => isCisternError(error, 'EINVAL'),
  );
});
