// Proves a daemon survives hostile peers: hundreds of connections send random bytes and
// handshakes and frames mutated by a seeded generator (bit flips, cut and spliced frames,
// absurd lengths, unknown kinds and versions, random metadata, stale and future epochs),
// both before authentication and after it (the fuzzer knows the secret, so it reaches the
// request parser). Throughout, a healthy client keeps getting exactly its own data back;
// afterwards the server has logged no bug, holds no fuzz connection, and serves a new
// client. The client's reply parser gets the same treatment from a hostile server that
// authenticates and then answers with mutated frames: every request settles, every
// failure is a CisternError. A failure replays with PEER_FUZZ_SEED.

import { strict as assert } from 'node:assert';
import { randomBytes } from 'node:crypto';
import * as net from 'node:net';
import { after, before, test } from 'node:test';
import { ByteQueue } from '../../src/frontend/nbd/byte-queue';
import { PeerClient } from '../../src/replication/peer';
import { CisternError } from '../../src/util/errors';
import { Random } from '../../src/util/random';
import * as W from '../../src/replication/wire';
import {
  RawPeer,
  SECRET,
  authFrame,
  bugEvents,
  rawHeader,
  requestFrame,
  sleep,
  startPeerServer,
  waitUntil,
  type TestPeerServer,
} from './helpers';

const SEED = Number(process.env.PEER_FUZZ_SEED ?? 20_261_126);
const CONNECTIONS = 400;
const CONCURRENCY = 16;
/** How long a fuzz connection lives before we drop it (the server waits for bytes). */
const CONNECTION_LIFETIME_MS = 60;
const FUZZER = 'fuzzer';
/** Sessions against the hostile server (each settles within its request timeout). */
const SESSIONS = 80;

let server: TestPeerServer;
let fuzzRequestsServed = 0;

before(async () => {
  server = await startPeerServer(
    async (request) => {
      if (request.peerHostId === FUZZER) fuzzRequestsServed += 1;
      switch (request.type) {
        case 2:
          throw new CisternError('ENOSPC', 'no space for fuzz');
        case 3:
          await sleep(1);
          return { metadata: request.metadata, payload: request.payload };
        default:
          return { metadata: request.metadata, payload: request.payload };
      }
    },
    {
      limits: {
        handshakeTimeoutMs: 300,
        maxInFlightRequests: 16,
        maxInFlightBytes: 4 * 1024 * 1024,
        epochWaitMs: 5,
        shutdownGraceMs: 500,
      },
      waitForEpoch: async (_epoch, timeoutMs) => {
        await sleep(timeoutMs);
        return false;
      },
    },
  );
});

after(async () => {
  await server.close();
});

test(`${CONNECTIONS} hostile connections (seed ${SEED}) never disturb a healthy client`, async (t) => {
  const random = new Random(SEED);
  const healthy = runHealthyClient(new Random(random.u32()));
  let next = 0;
  let authenticated = 0;
  const worker = async (): Promise<void> => {
    while (next < CONNECTIONS) {
      next += 1;
      if (await fuzzOneConnection(new Random(random.u32()))) authenticated += 1;
    }
  };
  await Promise.all(Array.from({ length: CONCURRENCY }, worker));
  const healthyOps = await healthy.stop();

  assert.deepEqual(bugEvents(server.logs), []);
  assert.ok(authenticated > CONNECTIONS / 2, `only ${authenticated} fuzz sessions authenticated`);
  assert.ok(
    fuzzRequestsServed > 100,
    `only ${fuzzRequestsServed} fuzz requests reached the handler`,
  );
  const stats = server.server.stats();
  const closedForProtocolErrors = server.logs.filter(
    (e) => e.event === 'peer.protocol_error',
  ).length;
  t.diagnostic(
    `authenticated ${authenticated}, fuzz requests served ${fuzzRequestsServed}, ` +
      `bad frames refused ${stats.badFrames}, closed for protocol errors ${closedForProtocolErrors}, ` +
      `healthy requests ${healthyOps}`,
  );
  assert.ok(stats.badFrames > 30, `only ${stats.badFrames} bad frames were refused`);
  assert.ok(closedForProtocolErrors > 30, `only ${closedForProtocolErrors} connections closed`);
  assert.ok(healthyOps > 50, `healthy client completed only ${healthyOps} requests`);
  await waitUntil(() => server.server.stats().connections === 0, 5000);

  const fresh = await PeerClient.connect({
    address: server.address,
    hostId: 'host-a',
    secret: SECRET,
  });
  assert.equal((await fresh.request(1, 10, 'still alive')).metadata, 'still alive');
  await fresh.close();
});

/** Requests with random payloads, each checked byte for byte, until stopped. */
function runHealthyClient(random: Random): { stop(): Promise<number> } {
  let stopping = false;
  const done = (async () => {
    const client = await PeerClient.connect({
      address: server.address,
      hostId: 'healthy',
      secret: SECRET,
    });
    let operations = 0;
    while (!stopping) {
      const payload = randomBytes(random.int(64 * 1024));
      const metadata = { n: operations, tag: random.u32() };
      const reply = await client.request(1, 10, metadata, payload);
      assert.deepEqual(reply.metadata, metadata);
      assert.ok(Buffer.from(reply.payload ?? []).equals(payload), 'healthy payload corrupted');
      operations += 1;
    }
    await client.close();
    return operations;
  })();
  return {
    stop: async () => {
      stopping = true;
      return done;
    },
  };
}

/** One hostile connection; true if it got past authentication. */
async function fuzzOneConnection(random: Random): Promise<boolean> {
  const postAuth = random.bool(0.75);
  let raw: RawPeer;
  try {
    raw = postAuth
      ? await RawPeer.authenticated(server.target, SECRET, FUZZER)
      : await RawPeer.open(server.target);
  } catch (error) {
    if (postAuth) throw error; // a genuine handshake must always work
    return false;
  }
  try {
    if (random.bool(0.2)) raw.socket.pause(); // a peer that never reads
    const bytes = Buffer.concat(postAuth ? postAuthFrames(random) : [preAuthBytes(random)]);
    if (random.bool(0.3)) {
      for (let at = 0; at < bytes.length;) {
        const piece = random.range(1, 64);
        raw.write(bytes.subarray(at, at + piece));
        at += piece;
      }
    } else {
      raw.write(bytes);
    }
    await sleep(random.int(CONNECTION_LIFETIME_MS));
  } finally {
    raw.destroy();
  }
  return postAuth;
}

function preAuthBytes(random: Random): Buffer {
  const hello = authFrame(W.AuthStep.hello, { hostId: 'intruder', nonce: randomBytes(32) });
  switch (random.int(6)) {
    case 0:
      return randomBytes(random.range(1, 200));
    case 1:
      return mutate(random, hello);
    case 2:
      return requestFrame(1, 'serve me first');
    case 3:
      return Buffer.concat([hello, authFrame(W.AuthStep.clientProof, { proof: randomBytes(32) })]);
    case 4:
      return Buffer.concat([
        hello,
        mutate(random, authFrame(W.AuthStep.clientProof, { proof: randomBytes(32) })),
      ]);
    default:
      return authFrame(random.int(8), randomMetadata(random, 2));
  }
}

function postAuthFrames(random: Random): Buffer[] {
  const frames: Buffer[] = [];
  const count = random.range(1, 12);
  for (let i = 0; i < count; i += 1) {
    const valid = requestFrame(
      random.u32(),
      randomMetadata(random, 3),
      random.bool(0.5) ? randomBytes(random.int(4096)) : undefined,
      { type: random.range(1, 4), epoch: random.pick([9, 10, 10, 10, 11]) },
    );
    switch (random.int(8)) {
      case 0:
      case 1:
      case 2:
        frames.push(valid);
        break;
      case 3:
        frames.push(mutate(random, valid));
        break;
      case 4:
        frames.push(
          rawHeader({
            kind: random.range(0, 6),
            requestId: random.u32(),
            metadataBytes: random.bool(0.5) ? random.int(200) : random.u32(),
            payloadBytes: random.bool(0.5) ? random.int(200) : random.u32(),
          }),
          randomBytes(random.int(300)),
        );
        break;
      case 5:
        frames.push(valid.subarray(0, random.int(valid.length)));
        break;
      case 6:
        frames.push(randomBytes(random.range(1, 100)));
        break;
      default: {
        // a frame whose metadata is random bytes of the declared length
        const metadata = randomBytes(random.int(100));
        frames.push(
          rawHeader({ requestId: random.u32(), metadataBytes: metadata.length }),
          metadata,
        );
      }
    }
  }
  return frames;
}

/** Flips bits, overwrites bytes, or cuts and splices. */
function mutate(random: Random, frame: Buffer): Buffer {
  const copy = Buffer.from(frame);
  const edits = random.range(1, 4);
  for (let i = 0; i < edits; i += 1) {
    const at = random.int(copy.length);
    if (random.bool()) copy[at] = copy[at]! ^ (1 << random.int(8));
    else copy[at] = random.int(256);
  }
  if (random.bool(0.2)) {
    const cut = random.int(copy.length);
    return Buffer.concat([copy.subarray(0, cut), randomBytes(random.int(50)), copy.subarray(cut)]);
  }
  return copy;
}

function randomMetadata(random: Random, depth: number): unknown {
  const kind = random.int(depth > 0 ? 8 : 6);
  switch (kind) {
    case 0:
      return random.u32();
    case 1:
      return random.float() * 1e9 - 5e8;
    case 2:
      return 'x'.repeat(random.int(50));
    case 3:
      return randomBytes(random.int(64));
    case 4:
      return random.bool() ? null : undefined;
    case 5:
      return random.bool();
    case 6:
      return Array.from({ length: random.int(5) }, () => randomMetadata(random, depth - 1));
    default: {
      // fromEntries defines '__proto__' as an own key, as a hostile encoder would send it.
      const keys = ['key', 'offset', '__proto__', 'constructor', 'epoch', 'n'];
      return Object.fromEntries(
        Array.from({ length: random.int(5) }, () => [
          random.pick(keys),
          randomMetadata(random, depth - 1),
        ]),
      );
    }
  }
}

test(`the client survives a hostile server: ${SESSIONS} sessions of mutated replies (seed ${SEED})`, async (t) => {
  const random = new Random(SEED ^ 0x5eed);
  let session = new Random(1);
  // A server that authenticates properly, then answers every request with garbage.
  const hostile = net.createServer((socket) => {
    const queue = new ByteQueue();
    const reader = new W.FrameReader(queue, {
      maxMetadataBytes: W.MAX_METADATA_BYTES,
      maxPayloadBytes: W.MAX_PAYLOAD_BYTES,
      maxSkippableBytes: 0,
      kinds: [W.FrameKind.auth, W.FrameKind.request],
    });
    const serverNonce = randomBytes(W.NONCE_BYTES);
    let transcript: W.AuthTranscript | undefined;
    socket.on('error', () => undefined);
    socket.on('data', (chunk: Buffer) => {
      queue.push(chunk);
      for (let result = reader.next(); result?.kind === 'frame'; result = reader.next()) {
        const { header } = result;
        if (header.kind === W.FrameKind.auth && header.type === W.AuthStep.hello) {
          const hello = W.decodeAuthHello(W.decodeMetadata(result.metadata))!;
          transcript = {
            clientHostId: hello.hostId,
            serverHostId: 'hostile',
            clientNonce: hello.nonce,
            serverNonce,
          };
          socket.write(authFrame(W.AuthStep.challenge, { hostId: 'hostile', nonce: serverNonce }));
        } else if (header.kind === W.FrameKind.auth && transcript !== undefined) {
          const proof = W.computeProof(SECRET, 'server', transcript);
          socket.write(authFrame(W.AuthStep.serverProof, { proof }));
        } else if (header.kind === W.FrameKind.request) {
          socket.write(hostileReply(session, header.requestId));
        }
      }
    });
  });
  await new Promise<void>((resolve) => hostile.listen(0, '127.0.0.1', resolve));
  const address = `127.0.0.1:${(hostile.address() as net.AddressInfo).port}`;
  const outcomes = new Map<string, number>();
  try {
    for (let i = 0; i < SESSIONS; i += 1) {
      session = new Random(random.u32());
      const client = await PeerClient.connect({
        address,
        hostId: 'host-a',
        secret: SECRET,
        requestTimeoutMs: 50, // truncated replies leave requests waiting
      });
      const results = await Promise.allSettled(
        Array.from({ length: 8 }, (_, n) => client.request(1, 10, { n }, randomBytes(n * 100))),
      );
      for (const result of results) {
        const key =
          result.status === 'fulfilled'
            ? 'reply'
            : result.reason instanceof CisternError
              ? result.reason.code
              : `not a CisternError: ${String(result.reason)}`;
        outcomes.set(key, (outcomes.get(key) ?? 0) + 1);
      }
      await client.close();
    }
  } finally {
    await new Promise((resolve) => hostile.close(resolve));
  }
  t.diagnostic(`outcomes: ${JSON.stringify(Object.fromEntries(outcomes))}`);
  assert.deepEqual(
    [...outcomes.keys()].filter((key) => key.startsWith('not a')),
    [],
    'every failure is a CisternError',
  );
  assert.ok((outcomes.get('reply') ?? 0) > 0 && (outcomes.get('EIO') ?? 0) > 0);
});

function hostileReply(random: Random, requestId: number): Buffer {
  const kind = random.pick([W.FrameKind.reply, W.FrameKind.errorReply]);
  const metadata =
    kind === W.FrameKind.errorReply
      ? {
          code: random.pick(['ENOSPC', 'STALE_EPOCH', 'nonsense', 5]),
          message: 'x',
          epoch: random.u32(),
        }
      : randomMetadata(random, 2);
  const frame = Buffer.concat(
    W.encodeFrame({
      kind,
      type: 0,
      requestId: random.bool(0.8) ? requestId : random.u32(),
      epoch: 10,
      metadata,
      payload: random.bool() ? randomBytes(random.int(1000)) : undefined,
    }),
  );
  switch (random.int(4)) {
    case 0:
      return frame;
    case 1:
      return mutate(random, frame);
    case 2:
      return frame.subarray(0, random.int(frame.length));
    default:
      return randomBytes(random.range(1, 64));
  }
}
