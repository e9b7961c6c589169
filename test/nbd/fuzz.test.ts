// Proves the server survives hostile input: hundreds of connections send random bytes,
// and valid handshakes and requests mutated by a seeded generator (bit flips, cut and
// spliced bytes, absurd lengths, unknown options, commands and flags). Throughout, a
// healthy client of our own keeps writing and reading back its own export and must see
// exactly its data; afterwards the server has reported no unexpected error, holds no
// connection, and still serves new clients. A failure replays with NBD_FUZZ_SEED.

import { strict as assert } from 'node:assert';
import { after, before, test } from 'node:test';
import { NbdClient } from '../../src/frontend/nbd/client';
import * as P from '../../src/frontend/nbd/protocol';
import { Random } from '../../src/util/random';
import { MiB, RawConnection, startServer, type TestServer } from './helpers';

const SEED = Number(process.env.NBD_FUZZ_SEED ?? 20_240_611);
const CONNECTIONS = 400;
const CONCURRENCY = 16;
/** How long a fuzz connection may live before we drop it (the server waits for bytes). */
const CONNECTION_LIFETIME_MS = 150;
const EXPORT_BYTES = 1 * MiB;

let server: TestServer;

before(async () => {
  server = await startServer(
    (provider) => {
      provider.create('fuzz', EXPORT_BYTES);
      provider.create('healthy', EXPORT_BYTES);
      provider.create('frozen', EXPORT_BYTES, { readOnly: true });
    },
    { maxInFlightRequests: 8, handshakeTimeoutMs: 1000, shutdownGraceMs: 1000 },
  );
});

after(async () => {
  await server.close();
});

test(`${CONNECTIONS} hostile connections (seed ${SEED}) never disturb a healthy client`, async () => {
  const random = new Random(SEED);
  const healthy = runHealthyClient();
  let next = 0;
  let transmitted = 0;
  const worker = async (): Promise<void> => {
    while (next < CONNECTIONS) {
      next += 1;
      if (await fuzzOneConnection(new Random(random.u32()))) transmitted += 1;
    }
  };
  await Promise.all(Array.from({ length: CONCURRENCY }, worker));
  // The mutations must not all die in the handshake, or transmission goes unfuzzed.
  assert.ok(transmitted > CONNECTIONS / 10, `only ${transmitted} sessions reached transmission`);
  const healthyOps = await healthy.stop();
  assert.ok(healthyOps > 50, `healthy client completed only ${healthyOps} operations`);
  assert.deepEqual(server.unexpectedErrors, []);
  await waitUntil(() => server.server.connectionCount === 0, 5000);

  const fresh = await NbdClient.connect(server.target, { exportName: 'fuzz' });
  await fresh.write(0, Buffer.from('still alive'));
  assert.equal((await fresh.read(0, 11)).toString(), 'still alive');
  await fresh.disconnect();
});

/** Writes random data at random offsets and checks every read against a model. */
function runHealthyClient(): { stop: () => Promise<number> } {
  let stopping = false;
  const random = new Random(SEED ^ 0x5eed);
  const done = (async () => {
    const client = await NbdClient.connect(server.target, { exportName: 'healthy' });
    const model = Buffer.alloc(EXPORT_BYTES);
    let ops = 0;
    while (!stopping) {
      const length = random.range(1, 64 * 1024);
      const offset = random.int(EXPORT_BYTES - length + 1);
      if (random.bool(0.5)) {
        const data = Buffer.alloc(length);
        for (let index = 0; index < length; index += 97) data[index] = random.int(256);
        await client.write(offset, data);
        data.copy(model, offset);
      } else {
        const data = await client.read(offset, length);
        assert.ok(
          data.equals(model.subarray(offset, offset + length)),
          `healthy read at ${offset} differs`,
        );
      }
      ops += 1;
    }
    await client.disconnect();
    return ops;
  })();
  return {
    stop: () => {
      stopping = true;
      return done;
    },
  };
}

/** Resolves true if the session reached transmission and got at least one reply. */
async function fuzzOneConnection(random: Random): Promise<boolean> {
  const raw = await RawConnection.open(server.target);
  let received = Buffer.alloc(0);
  raw.socket.on('data', (chunk: Buffer) => {
    // Replies are kept only to see how far the session got; some connections instead
    // pause and read nothing.
    if (received.length < 64 * 1024) received = Buffer.concat([received, chunk]);
  });
  if (random.bool(0.1)) raw.socket.pause();
  const script = random.bool(0.15)
    ? randomBytes(random, random.int(600))
    : mutate(random, validScript(random));
  // Send in random pieces so the server's parser sees every possible split.
  let at = 0;
  while (at < script.length) {
    const piece = random.range(1, 512);
    raw.write(script.subarray(at, at + piece));
    at += piece;
    if (random.bool(0.2)) await new Promise((resolve) => setImmediate(resolve));
  }
  if (random.bool(0.3)) raw.socket.end();
  await raw.closesWithin(random.int(CONNECTION_LIFETIME_MS));
  raw.destroy();
  const simpleMagic = Buffer.alloc(4);
  simpleMagic.writeUInt32BE(P.NBD_SIMPLE_REPLY_MAGIC, 0);
  const structuredMagic = Buffer.alloc(4);
  structuredMagic.writeUInt32BE(P.NBD_STRUCTURED_REPLY_MAGIC, 0);
  return received.includes(simpleMagic) || received.includes(structuredMagic);
}

/** A plausible session: greeting reply, options, maybe transmission with requests. */
function validScript(random: Random): Buffer {
  const parts: Buffer[] = [];
  const flags = Buffer.alloc(4);
  flags.writeUInt32BE(random.pick([0, 1, 2, 3]), 0);
  parts.push(flags);
  const name = random.bool(0.7) ? 'fuzz' : random.pick(['frozen', 'nope', '']);
  const optionCount = random.int(3);
  for (let index = 0; index < optionCount; index += 1) parts.push(randomOption(random, name));
  const enter = random.int(3);
  if (enter === 0) {
    parts.push(P.encodeOption(P.NBD_OPT_STRUCTURED_REPLY));
    parts.push(
      P.encodeOption(
        P.NBD_OPT_SET_META_CONTEXT,
        P.encodeMetaContextRequest({ exportName: name, queries: [P.BASE_ALLOCATION] }),
      ),
    );
    parts.push(
      P.encodeOption(P.NBD_OPT_GO, P.encodeInfoRequest({ exportName: name, infoTypes: [1, 2, 3] })),
    );
  } else if (enter === 1) {
    parts.push(P.encodeOption(P.NBD_OPT_EXPORT_NAME, Buffer.from(name)));
  }
  if (enter !== 2) {
    const requestCount = random.int(30);
    for (let index = 0; index < requestCount; index += 1) parts.push(randomRequest(random));
  }
  return Buffer.concat(parts);
}

function randomOption(random: Random, name: string): Buffer {
  switch (random.int(9)) {
    case 0:
      return P.encodeOption(P.NBD_OPT_LIST);
    case 1:
      return P.encodeOption(
        P.NBD_OPT_INFO,
        P.encodeInfoRequest({ exportName: name, infoTypes: [random.int(6)] }),
      );
    case 2:
      return P.encodeOption(P.NBD_OPT_STRUCTURED_REPLY);
    case 3:
      return P.encodeOption(
        P.NBD_OPT_LIST_META_CONTEXT,
        P.encodeMetaContextRequest({ exportName: name, queries: random.bool() ? [] : ['base:'] }),
      );
    case 4:
      return P.encodeOption(
        P.NBD_OPT_SET_META_CONTEXT,
        P.encodeMetaContextRequest({ exportName: name, queries: ['base:allocation', 'x-y:z'] }),
      );
    case 5:
      return P.encodeOption(random.int(64), randomBytes(random, random.int(40)));
    case 6:
      return P.encodeOption(P.NBD_OPT_STARTTLS);
    case 7: {
      // A header that lies about its length.
      const option = P.encodeOption(P.NBD_OPT_GO, randomBytes(random, random.int(20)));
      option.writeUInt32BE(random.pick([0, 1, 0xffff, 0x10001, 0xffffffff]), 12);
      return option;
    }
    default:
      return P.encodeOption(P.NBD_OPT_ABORT);
  }
}

function randomRequest(random: Random): Buffer {
  const type = random.bool(0.9) ? random.int(8) : random.int(65536);
  const flags = random.bool(0.7) ? random.pick([0, 1, 2, 4, 8, 16, 3, 0x12]) : random.int(65536);
  const offset = random.bool(0.9)
    ? BigInt(random.int(EXPORT_BYTES))
    : BigInt(random.u32()) << BigInt(random.int(33));
  const length = random.bool(0.9) ? random.int(70_000) : random.u32();
  const cookie = BigInt(random.u32());
  const header = P.encodeRequest({ flags, type, cookie, offset, length });
  if (type !== P.NBD_CMD_WRITE) return header;
  // Usually the whole payload; sometimes less (the connection then stalls until dropped).
  const payloadBytes = random.bool(0.9) ? Math.min(length, 70_000) : random.int(1000);
  return Buffer.concat([header, randomBytes(random, payloadBytes)]);
}

function mutate(random: Random, script: Buffer): Buffer {
  const bytes = Buffer.from(script);
  const mutations = random.int(4);
  let result = bytes;
  for (let index = 0; index < mutations && result.length > 0; index += 1) {
    const at = random.int(result.length);
    switch (random.int(4)) {
      case 0:
        result[at] = (result[at] ?? 0) ^ (1 << random.int(8));
        break;
      case 1:
        result[at] = random.int(256);
        break;
      case 2:
        result = Buffer.concat([result.subarray(0, at), result.subarray(at + random.int(16))]);
        break;
      default:
        result = Buffer.concat([
          result.subarray(0, at),
          randomBytes(random, random.int(16)),
          result.subarray(at),
        ]);
    }
  }
  return result;
}

function randomBytes(random: Random, length: number): Buffer {
  const bytes = Buffer.alloc(length);
  for (let index = 0; index < length; index += 1) bytes[index] = random.int(256);
  return bytes;
}

async function waitUntil(condition: () => boolean, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error('condition not met in time');
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}
