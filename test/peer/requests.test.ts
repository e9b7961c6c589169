// Proves the request/reply transport over loopback: metadata and payloads from 0 bytes to
// several MiB round-trip intact; many requests are in flight on one connection and
// replies return out of order, each matched to its request; the client itself never has
// more than its bound in flight; handler errors reach the caller with their code, message
// and epoch, other throws become EIO and are logged; epoch fencing refuses older epochs
// and waits (bounded) for newer ones; losing the connection rejects every pending request
// with UNAVAILABLE naming the peer, and so does a request left unanswered past its
// timeout; close() lets in-flight requests finish; the pool keeps
// one connection per host and reconnects after loss or an address change; giving up on
// a host (the map declared it down) rejects the requests waiting on it at once.

import { strict as assert } from 'node:assert';
import { createHash } from 'node:crypto';
import { test } from 'node:test';
import {
  CLIENT_MAX_IN_FLIGHT_REQUESTS,
  PeerClient,
  PeerPool,
  PeerRemoteError,
  type PeerReply,
  type PeerRequest,
} from '../../src/replication/peer';
import { CisternError, isCisternError } from '../../src/util/errors';
import { Random } from '../../src/util/random';
import { MiB, SECRET, bugEvents, sleep, startPeerServer, waitUntil } from './helpers';

function sha(bytes: Uint8Array | undefined): string {
  return createHash('sha256')
    .update(bytes ?? new Uint8Array(0))
    .digest('hex');
}

/** Echoes what it got: metadata, sender, a digest, and the payload reversed. */
async function echo(request: PeerRequest): Promise<PeerReply> {
  const payload =
    request.payload === undefined ? undefined : Buffer.from(request.payload).reverse();
  return {
    metadata: {
      got: request.metadata,
      type: request.type,
      epoch: request.epoch,
      from: request.peerHostId,
      bytes: request.payload?.length ?? 0,
      sha: sha(request.payload),
    },
    payload,
  };
}

function connect(address: string, hostId = 'host-a'): Promise<PeerClient> {
  return PeerClient.connect({ address, hostId, secret: SECRET, expectedPeerHostId: 'host-b' });
}

test('metadata and payloads from 0 bytes to 8 MiB round-trip intact', async () => {
  const server = await startPeerServer(echo);
  const client = await connect(server.address);
  try {
    assert.equal(client.peerHostId, 'host-b');
    const random = new Random(1);
    for (const size of [0, 1, 4095, 4096, 65_537, 1 * MiB + 3, 8 * MiB]) {
      const payload = Buffer.alloc(size);
      for (let i = 0; i < size; i += 1) payload[i] = random.u32() & 0xff;
      const metadata = {
        object: `pool/vol/${size}`,
        offset: size * 3,
        list: [1, 'two', null],
        bin: Buffer.from([1, 2]),
      };
      const reply = await client.request(3, 10, metadata, size === 0 ? undefined : payload);
      const got = reply.metadata as Record<string, unknown>;
      assert.deepEqual(got.got, metadata);
      assert.equal(got.type, 3);
      assert.equal(got.epoch, 10);
      assert.equal(got.from, 'host-a');
      assert.equal(got.bytes, size);
      assert.equal(got.sha, sha(payload));
      assert.equal(reply.epoch, 10);
      if (size === 0) assert.equal(reply.payload, undefined);
      else assert.ok(Buffer.from(reply.payload!).equals(Buffer.from(payload).reverse()));
    }
    // An empty payload is the same as none on the wire.
    const empty = await client.request(3, 10, 'x', new Uint8Array(0));
    assert.equal((empty.metadata as { bytes: number }).bytes, 0);
    assert.equal((await client.request(4, 10, undefined)).metadata !== undefined, true);
  } finally {
    await client.close();
    await server.close();
  }
});

test('200 requests in flight at once, answered in shuffled order, each matched to its request', async () => {
  const held: Array<{ request: PeerRequest; resolve: (reply: PeerReply) => void }> = [];
  const server = await startPeerServer(
    (request) => new Promise((resolve) => held.push({ request, resolve })),
  );
  const client = await connect(server.address);
  try {
    const count = 200;
    const replies = Array.from({ length: count }, (_, index) =>
      client.request(1, 10, { index }, Buffer.alloc(index * 10, index & 0xff)),
    );
    await waitUntil(() => held.length === count, 5000);
    const random = new Random(2);
    for (let i = held.length - 1; i > 0; i -= 1) {
      const j = random.int(i + 1);
      [held[i], held[j]] = [held[j]!, held[i]!];
    }
    for (const { request, resolve } of held) {
      const index = (request.metadata as { index: number }).index;
      resolve({ metadata: { index }, payload: request.payload });
      if (random.bool(0.3)) await sleep(0);
    }
    const results = await Promise.all(replies);
    results.forEach((reply, index) => {
      assert.deepEqual(reply.metadata, { index });
      assert.ok(Buffer.from(reply.payload ?? []).equals(Buffer.alloc(index * 10, index & 0xff)));
    });
  } finally {
    await client.close();
    await server.close();
  }
});

test('a client with more requests than its bound keeps at most the bound in flight', async () => {
  let active = 0;
  let maxActive = 0;
  const server = await startPeerServer(async () => {
    active += 1;
    maxActive = Math.max(maxActive, active);
    await sleep(2);
    active -= 1;
    return { metadata: 'ok' };
  });
  const client = await connect(server.address);
  try {
    const count = CLIENT_MAX_IN_FLIGHT_REQUESTS * 4;
    const replies = Array.from({ length: count }, () => client.request(1, 10, null));
    assert.ok(client.inFlightRequests <= CLIENT_MAX_IN_FLIGHT_REQUESTS);
    await Promise.all(replies);
    assert.ok(maxActive <= CLIENT_MAX_IN_FLIGHT_REQUESTS, `${maxActive} handled at once`);
    assert.ok(maxActive > 16, `only ${maxActive} in flight: no pipelining`);
  } finally {
    await client.close();
    await server.close();
  }
});

test('handler errors reach the client: same code and message, epoch detail; other throws are EIO', async () => {
  const server = await startPeerServer(async (request) => {
    switch (request.type) {
      case 1:
        throw new CisternError('ENOSPC', 'disk 3 is full');
      case 2:
        throw new PeerRemoteError('STALE_EPOCH', 'PG 7 moved', '', 12);
      case 3:
        throw new TypeError('a handler bug');
      default:
        return { metadata: { fine: true } };
    }
  });
  const client = await connect(server.address);
  try {
    await assert.rejects(client.request(1, 10, null), (error: unknown) => {
      assert.ok(error instanceof PeerRemoteError);
      assert.equal(error.code, 'ENOSPC');
      assert.equal(error.message, 'disk 3 is full');
      assert.equal(error.peerHostId, 'host-b');
      return true;
    });
    await assert.rejects(client.request(2, 10, null), (error: unknown) => {
      assert.ok(error instanceof PeerRemoteError && error.code === 'STALE_EPOCH');
      assert.equal(error.epoch, 12);
      return true;
    });
    await assert.rejects(client.request(3, 10, null), (error: unknown) => {
      assert.ok(isCisternError(error, 'EIO'));
      assert.doesNotMatch(error.message, /a handler bug/); // internals stay in the log
      return true;
    });
    assert.equal(bugEvents(server.logs).length, 1);
    assert.match(String(bugEvents(server.logs)[0]!.fields.error), /a handler bug/);
    assert.deepEqual((await client.request(4, 10, null)).metadata, { fine: true });
  } finally {
    await client.close();
    await server.close();
  }
});

test('a request from an older epoch is refused with STALE_EPOCH and the server epoch; the handler never runs', async () => {
  let calls = 0;
  const server = await startPeerServer(async () => {
    calls += 1;
    return { metadata: null };
  });
  const client = await connect(server.address);
  try {
    await assert.rejects(client.request(1, 9, null), (error: unknown) => {
      assert.ok(error instanceof PeerRemoteError && error.code === 'STALE_EPOCH');
      assert.equal(error.epoch, 10);
      return true;
    });
    assert.equal(calls, 0);
  } finally {
    await client.close();
    await server.close();
  }
});

test('a request from a newer epoch waits for this daemon to catch up, else STALE_EPOCH', async () => {
  const waits: Array<[number, number]> = [];
  let catchUp = true;
  const server = await startPeerServer(async (request) => ({ metadata: request.epoch }), {
    limits: { epochWaitMs: 300 },
    waitForEpoch: async (epoch, timeoutMs) => {
      waits.push([epoch, timeoutMs]);
      if (!catchUp) {
        await sleep(timeoutMs);
        return false;
      }
      await sleep(30);
      server.epoch.value = epoch;
      return true;
    },
  });
  const client = await connect(server.address);
  try {
    const reply = await client.request(1, 11, null);
    assert.equal(reply.metadata, 11);
    assert.equal(reply.epoch, 11);
    assert.deepEqual(waits, [[11, 300]]);

    catchUp = false;
    const started = Date.now();
    await assert.rejects(client.request(1, 12, null), (error: unknown) => {
      assert.ok(error instanceof PeerRemoteError && error.code === 'STALE_EPOCH');
      assert.equal(error.epoch, 11);
      assert.match(error.message, /behind/);
      return true;
    });
    assert.ok(Date.now() - started >= 290);
  } finally {
    await client.close();
    await server.close();
  }
});

test('without waitForEpoch a newer epoch is refused at once', async () => {
  const server = await startPeerServer(echo);
  const client = await connect(server.address);
  try {
    await assert.rejects(
      client.request(1, 11, null),
      (error: unknown) => error instanceof PeerRemoteError && error.epoch === 10,
    );
  } finally {
    await client.close();
    await server.close();
  }
});

test('losing the connection rejects every pending request with UNAVAILABLE naming the peer', async () => {
  const server = await startPeerServer(() => new Promise<PeerReply>(() => undefined), {
    limits: { shutdownGraceMs: 50 },
  });
  const client = await connect(server.address);
  const pending = Array.from({ length: 20 }, () =>
    client.request(1, 10, null).then(
      () => assert.fail('a request was answered'),
      (error: unknown) => error,
    ),
  );
  await waitUntil(() => server.server.stats().inFlightRequests === 20, 2000);
  await server.close(); // the grace period runs out: the connection is dropped
  for (const request of pending) {
    await assert.rejects(Promise.reject(await request), (error: unknown) => {
      assert.ok(isCisternError(error, 'UNAVAILABLE'));
      assert.match(error.message, /peer host-b \(127\.0\.0\.1:\d+\)/);
      return true;
    });
  }
  assert.ok(client.closed);
  await assert.rejects(client.request(1, 10, null), (error) => isCisternError(error, 'CLOSED'));
});

test('a request left unanswered past requestTimeoutMs fails with UNAVAILABLE and closes the connection', async () => {
  const server = await startPeerServer(() => new Promise<PeerReply>(() => undefined), {
    limits: { shutdownGraceMs: 50 },
  });
  const client = await PeerClient.connect({
    address: server.address,
    hostId: 'host-a',
    secret: SECRET,
    requestTimeoutMs: 100,
  });
  const started = Date.now();
  await assert.rejects(client.request(5, 10, null), (error: unknown) => {
    assert.ok(isCisternError(error, 'UNAVAILABLE'));
    assert.match(error.message, /peer host-b .* did not answer a type 5 request within 100 ms/);
    return true;
  });
  assert.ok(Date.now() - started >= 95);
  assert.ok(client.closed);
  await server.close();
});

test('close() on the client rejects its pending requests with CLOSED', async () => {
  const server = await startPeerServer(() => new Promise<PeerReply>(() => undefined), {
    limits: { shutdownGraceMs: 50 },
  });
  const client = await connect(server.address);
  const pending = client.request(1, 10, null).then(
    () => assert.fail('the request was answered'),
    (error: unknown) => error,
  );
  await waitUntil(() => server.server.stats().inFlightRequests === 1, 2000);
  await client.close();
  await assert.rejects(Promise.reject(await pending), (error) => isCisternError(error, 'CLOSED'));
  await server.close();
});

test('server close() lets in-flight requests finish before closing', async () => {
  const server = await startPeerServer(async () => {
    await sleep(100);
    return { metadata: 'finished' };
  });
  const client = await connect(server.address);
  const reply = client.request(1, 10, null);
  await waitUntil(() => server.server.stats().inFlightRequests === 1, 2000);
  const closed = server.close();
  assert.equal((await reply).metadata, 'finished');
  await closed;
  await waitUntil(() => client.closed, 2000);
});

test('the pool keeps one connection per host and reconnects after loss or an address change', async () => {
  const hostB = await startPeerServer(echo);
  const hostC = await startPeerServer(echo, { hostId: 'host-c' });
  const addresses = new Map([
    ['host-b', hostB.address],
    ['host-c', hostC.address],
  ]);
  const pool = new PeerPool({
    hostId: 'host-a',
    secret: SECRET,
    addressOf: (h) => addresses.get(h),
  });
  let hostB2: Awaited<ReturnType<typeof startPeerServer>> | undefined;
  let hostC2: Awaited<ReturnType<typeof startPeerServer>> | undefined;
  try {
    const first = await Promise.all([
      ...Array.from({ length: 10 }, () => pool.request('host-b', 1, 10, 'b')),
      ...Array.from({ length: 10 }, () => pool.request('host-c', 1, 10, 'c')),
    ]);
    assert.ok(first.every((reply) => (reply.metadata as { from: string }).from === 'host-a'));
    assert.equal(hostB.server.stats().connections, 1);
    assert.equal(hostC.server.stats().connections, 1);

    await assert.rejects(pool.request('host-z', 1, 10, null), (error) =>
      isCisternError(error, 'UNAVAILABLE'),
    );

    // host-b moves: its old daemon stops, a new one listens elsewhere.
    await hostB.close();
    hostB2 = await startPeerServer(echo);
    addresses.set('host-b', hostB2.address);
    const moved = await pool.request('host-b', 1, 10, 'again');
    assert.deepEqual((moved.metadata as { got: unknown }).got, 'again');

    // host-c's daemon restarts on the same port: one request fails, the next reconnects.
    await hostC.close();
    await assert.rejects(pool.request('host-c', 1, 10, null), (error) =>
      isCisternError(error, 'UNAVAILABLE'),
    );
    hostC2 = await startPeerServer(echo, { hostId: 'host-c', port: hostC.target.port });
    assert.deepEqual(
      ((await pool.request('host-c', 1, 10, 'back')).metadata as { got: unknown }).got,
      'back',
    );
    assert.equal(hostC2.server.stats().connections, 1);
  } finally {
    await pool.close();
    await hostB.close();
    await hostC.close();
    await hostB2?.close();
    await hostC2?.close();
  }
  await assert.rejects(pool.request('host-b', 1, 10, null), (error) =>
    isCisternError(error, 'CLOSED'),
  );
});

test('the pool refuses a host that answers under another name', async () => {
  const server = await startPeerServer(echo, { hostId: 'host-c' });
  const pool = new PeerPool({ hostId: 'host-a', secret: SECRET, addressOf: () => server.address });
  try {
    await assert.rejects(pool.request('host-b', 1, 10, null), (error: unknown) => {
      assert.ok(isCisternError(error, 'EPERM'));
      assert.match(error.message, /is host host-c, expected host-b/);
      return true;
    });
  } finally {
    await pool.close();
    await server.close();
  }
});

test('the pool gives up on a host at once: requests waiting on it reject, the next reconnects', async () => {
  // Type 9 is never answered, as by a host cut off without a reset.
  const silent = new Promise<PeerReply>(() => undefined);
  const server = await startPeerServer((request) => (request.type === 9 ? silent : echo(request)));
  const pool = new PeerPool({ hostId: 'host-a', secret: SECRET, addressOf: () => server.address });
  try {
    await pool.request('host-b', 1, 10, 'connect');
    const waiting = pool.request('host-b', 9, 10, 'never answered');
    await waitUntil(() => server.server.stats().inFlightRequests === 1, 2000);
    pool.abandon('host-b', 'the map has no disk of it up');
    await assert.rejects(waiting, (error: unknown) => {
      assert.ok(isCisternError(error, 'UNAVAILABLE'));
      assert.match(error.message, /gave up on peer host-b .*: the map has no disk of it up/);
      return true;
    });
    pool.abandon('host-z', 'unknown hosts are ignored');
    const again = await pool.request('host-b', 1, 10, 'again');
    assert.deepEqual((again.metadata as { got: unknown }).got, 'again');
  } finally {
    await pool.close();
    await server.close();
  }
});
