// A peer-protocol client for cluster tests, run as its own process inside a host's
// network namespace (`node dist/test/cluster/peer-probe.js '<json>'`), so that what it
// sends to a daemon comes from another "machine" on the test network, as an attacker's
// or a lagging primary's would. It prints one JSON line with what it saw; the test
// decides what that means. Not a test file: without an argument it does nothing.
//
//   { "mode": "auth", address, secretHex }           connect and authenticate
//   { "mode": "stale-write", address, secretHex, disk, pool, volume }
//        learn the daemon's epoch, read a replica block it holds, send a DiskWrite of
//        other bytes on epoch − 1, read the block again; then, as a control, the same
//        DiskWrite on the current epoch to an object of no volume, read and delete it
//   { "mode": "garbage", address, secretHex, seed, connections }
//        a burst of hostile connections: random bytes, truncated and absurd frames,
//        before and after authentication

import { createHash, randomBytes } from 'node:crypto';
import * as net from 'node:net';
import { MessageType } from '../../src/replication/messages';
import { PeerClient, PeerRemoteError, type PeerReply } from '../../src/replication/peer';
import { ByteQueue } from '../../src/frontend/nbd/byte-queue';
import * as W from '../../src/replication/wire';
import type { ObjectKey } from '../../src/store/key';
import { isCisternError } from '../../src/util/errors';
import { Random } from '../../src/util/random';

const PROBE_HOST_ID = 'probe';
/** STALE_EPOCH retries while the map moves under us (it rarely does in these tests). */
const EPOCH_ATTEMPTS_MAX = 20;
const BLOCK_BYTES = 4096;
/** A volume id no cluster in these tests reaches: the control write's object is stray. */
const STRAY_VOLUME = 0x7fff_fff0;
/** Hostile connections open at once: enough to overlap, few enough to stay a burst. */
const GARBAGE_CONCURRENCY = 8;

interface Common {
  address: string;
  secretHex: string;
}
type Probe =
  | ({ mode: 'auth' } & Common)
  | ({ mode: 'stale-write'; disk: number; pool: number; volume: number } & Common)
  | ({ mode: 'garbage'; seed: number; connections: number } & Common);

function errorCode(error: unknown): string {
  return isCisternError(error) ? error.code : `not a CisternError: ${String(error)}`;
}

function digest(bytes: Uint8Array): string {
  return createHash('sha256').update(bytes).digest('hex');
}

async function connect(probe: Common): Promise<PeerClient> {
  return PeerClient.connect({
    address: probe.address,
    hostId: PROBE_HOST_ID,
    secret: Buffer.from(probe.secretHex, 'hex'),
  });
}

async function auth(probe: Common): Promise<unknown> {
  try {
    const client = await connect(probe);
    await client.close();
    return { connected: true };
  } catch (error) {
    return { connected: false, code: errorCode(error), message: String(error) };
  }
}

/** A request on the daemon's current epoch, learning it from STALE_EPOCH refusals. */
class EpochTracker {
  epoch = 0;
  constructor(private readonly client: PeerClient) {}

  async request(type: number, metadata: unknown, payload?: Uint8Array): Promise<PeerReply> {
    for (let attempt = 1; ; attempt += 1) {
      try {
        const reply = await this.client.request(type, this.epoch, metadata, payload);
        if (reply.epoch !== undefined) this.epoch = reply.epoch;
        return reply;
      } catch (error) {
        const epoch = error instanceof PeerRemoteError ? error.epoch : undefined;
        if (!isCisternError(error, 'STALE_EPOCH') || epoch === undefined) throw error;
        if (attempt >= EPOCH_ATTEMPTS_MAX) throw error;
        this.epoch = epoch;
      }
    }
  }
}

async function staleWrite(probe: Extract<Probe, { mode: 'stale-write' }>): Promise<unknown> {
  const client = await connect(probe);
  try {
    const daemon = new EpochTracker(client);
    const listed = await daemon.request(MessageType.ListObjects, {
      pool: probe.pool,
      volume: probe.volume,
    });
    const keys = (listed.metadata as { keys: ObjectKey[] }).keys;
    const key = keys[0];
    if (key === undefined) return { error: 'the daemon holds no object of the volume' };
    const block = { key, offset: 0, length: BLOCK_BYTES, disk: probe.disk };
    const read = async (request: typeof block): Promise<Uint8Array> =>
      (await daemon.request(MessageType.DiskRead, request)).payload ?? new Uint8Array(0);

    const before = await read(block);
    const currentEpoch = daemon.epoch;
    const forged = randomBytes(BLOCK_BYTES);
    let staleCode = 'accepted';
    let staleEpochInReply: number | undefined;
    try {
      await client.request(MessageType.DiskWrite, currentEpoch - 1, block, forged);
    } catch (error) {
      staleCode = errorCode(error);
      staleEpochInReply = error instanceof PeerRemoteError ? error.epoch : undefined;
    }
    const after = await read(block);

    // Control: the very same message shape on the current epoch is accepted, so the
    // refusal above was the epoch's doing. Its object belongs to no volume.
    const stray = { ...block, key: { ...key, volume: STRAY_VOLUME } };
    await daemon.request(MessageType.DiskWrite, stray, forged);
    const strayRead = await read(stray);
    await daemon.request(MessageType.DiskDelete, stray);
    return {
      key,
      currentEpoch,
      staleEpoch: currentEpoch - 1,
      staleCode,
      staleEpochInReply,
      before: digest(before),
      after: digest(after),
      beforeIsForged: digest(before) === digest(forged),
      controlAccepted: digest(strayRead) === digest(forged),
    };
  } finally {
    await client.close();
  }
}

// ---- garbage --------------------------------------------------------------------------

function frame(header: Partial<W.FrameHeader>, body: Uint8Array = new Uint8Array(0)): Buffer {
  const head = W.encodeHeader({
    magic: W.PEER_MAGIC,
    version: W.PEER_PROTOCOL_VERSION,
    kind: W.FrameKind.request,
    type: MessageType.DiskWrite,
    requestId: 1,
    epoch: 1,
    metadataBytes: body.length,
    payloadBytes: 0,
    ...header,
  });
  return Buffer.concat([head, body]);
}

function authFrame(step: number, metadata: unknown): Buffer {
  return Buffer.concat(
    W.encodeFrame({ kind: W.FrameKind.auth, type: step, requestId: 0, epoch: 0, metadata }),
  );
}

function noise(random: Random, length: number): Buffer {
  const bytes = Buffer.allocUnsafe(length);
  for (let i = 0; i < length; i += 1) bytes[i] = random.int(256);
  return bytes;
}

/** One hostile message: the bytes to send on a connection, chosen by the generator. */
function hostileBytes(random: Random): Buffer {
  const bytes = (n: number): Buffer => noise(random, n);
  switch (random.int(8)) {
    case 0: // plain noise
      return bytes(1 + random.int(64 * 1024));
    case 1: // a header cut short
      return frame({ kind: W.FrameKind.auth }).subarray(
        0,
        1 + random.int(W.FRAME_HEADER_BYTES - 1),
      );
    case 2: // absurd lengths
      return frame({ metadataBytes: 0xffffffff, payloadBytes: 0xffffffff });
    case 3: // bad magic, version, kind
      return frame({
        magic: random.int(0x1_0000_0000),
        version: random.int(256),
        kind: random.int(256),
      });
    case 4: // a hello whose metadata is cut off
      return authFrame(W.AuthStep.hello, {
        hostId: 'garbage',
        nonce: bytes(W.NONCE_BYTES),
      }).subarray(0, W.FRAME_HEADER_BYTES + 3);
    case 5: // a hello, then noise in place of a proof
      return Buffer.concat([
        authFrame(W.AuthStep.hello, { hostId: 'garbage', nonce: bytes(W.NONCE_BYTES) }),
        bytes(1 + random.int(4096)),
      ]);
    case 6: // a request before authentication
      return frame({}, Buffer.from(W.encodeMetadata({ disk: 0, key: {}, length: 4096 })));
    default: // metadata bytes that are not msgpack
      return frame({ kind: W.FrameKind.auth, type: W.AuthStep.hello }, bytes(200));
  }
}

/** Hostile bytes sent after a real handshake, at the request parser. */
function hostileRequest(random: Random): Buffer {
  const bytes = (n: number): Buffer => noise(random, n);
  switch (random.int(5)) {
    case 0: // a DiskWrite whose payload never fully arrives
      return frame(
        { payloadBytes: 1024 * 1024 },
        Buffer.from(W.encodeMetadata({ disk: 0, key: {}, offset: 0, length: 1024 * 1024 })),
      ).subarray(0, W.FRAME_HEADER_BYTES + 40);
    case 1: // metadata that is not msgpack
      return frame({}, bytes(1 + random.int(1000)));
    case 2: // well-formed msgpack of the wrong shape, for every message type
      return frame(
        { type: random.pick([1, 2, 20, 21, 24, 25, 40, 999]) },
        Buffer.from(W.encodeMetadata({ key: random.int(10), disk: 'x', offset: -1 })),
      );
    case 3: // over-long lengths after auth
      return frame({ metadataBytes: W.MAX_METADATA_BYTES + 1 });
    default:
      return bytes(1 + random.int(16 * 1024));
  }
}

function openSocket(address: string): Promise<net.Socket> {
  const { host, port } = parseAddress(address);
  return new Promise((resolve, reject) => {
    const socket = net.connect({ host, port }, () => {
      socket.off('error', reject);
      socket.on('error', () => undefined); // resets are what hostile input earns
      resolve(socket);
    });
    socket.once('error', reject);
  });
}

function parseAddress(address: string): { host: string; port: number } {
  const colon = address.lastIndexOf(':');
  return { host: address.slice(0, colon), port: Number(address.slice(colon + 1)) };
}

const pause = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

async function garbage(probe: Extract<Probe, { mode: 'garbage' }>): Promise<unknown> {
  const random = new Random(probe.seed);
  const secret = Buffer.from(probe.secretHex, 'hex');
  let sent = 0;
  let authenticated = 0;
  const one = async (index: number): Promise<void> => {
    const socket = await openSocket(probe.address);
    try {
      if (index % 4 === 3) {
        // Authenticate for real (by hand, so the raw socket stays ours), then attack.
        const nonce = randomBytes(W.NONCE_BYTES);
        const queue = new ByteQueue();
        const reader = new W.FrameReader(queue, {
          maxMetadataBytes: W.MAX_AUTH_METADATA_BYTES,
          maxPayloadBytes: 0,
          maxSkippableBytes: 0,
          kinds: [W.FrameKind.auth],
        });
        const challenge = await nextFrame(socket, queue, reader, () =>
          socket.write(authFrame(W.AuthStep.hello, { hostId: 'garbage', nonce })),
        );
        const hello = W.decodeAuthHello(W.decodeMetadata(challenge));
        if (hello === undefined) throw new Error('no challenge');
        const transcript: W.AuthTranscript = {
          clientHostId: 'garbage',
          serverHostId: hello.hostId,
          clientNonce: nonce,
          serverNonce: hello.nonce,
        };
        await nextFrame(socket, queue, reader, () =>
          socket.write(
            authFrame(W.AuthStep.clientProof, {
              proof: W.computeProof(secret, 'client', transcript),
            }),
          ),
        );
        authenticated += 1;
        socket.write(hostileRequest(random));
      } else {
        socket.write(hostileBytes(random));
      }
      sent += 1;
      await pause(random.int(50));
    } finally {
      socket.destroy();
    }
  };
  let next = 0;
  await Promise.all(
    Array.from({ length: GARBAGE_CONCURRENCY }, async () => {
      while (next < probe.connections) await one(next++);
    }),
  );
  return { sent, authenticated };
}

/** Sends with `send`, then waits (bounded) for one whole auth frame; returns its metadata. */
function nextFrame(
  socket: net.Socket,
  queue: ByteQueue,
  reader: W.FrameReader,
  send: () => void,
): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => finish(new Error('no auth frame within 5 s')), 5000);
    const onData = (): void => {
      const result = reader.next();
      if (result === undefined) return;
      if (result.kind !== 'frame') finish(new Error(`bad auth frame: ${result.reason}`));
      else finish(undefined, result.metadata);
    };
    const finish = (error?: Error, metadata?: Buffer): void => {
      clearTimeout(timer);
      socket.off('data', onChunk);
      socket.off('close', onClose);
      if (error) reject(error);
      else resolve(metadata as Buffer);
    };
    const onChunk = (chunk: Buffer): void => {
      queue.push(chunk);
      onData();
    };
    const onClose = (): void => finish(new Error('closed during authentication'));
    socket.on('data', onChunk);
    socket.on('close', onClose);
    send();
  });
}

async function main(): Promise<void> {
  const argument = process.argv[2];
  if (argument === undefined) return;
  const probe = JSON.parse(argument) as Probe;
  let result: unknown;
  switch (probe.mode) {
    case 'auth':
      result = await auth(probe);
      break;
    case 'stale-write':
      result = await staleWrite(probe);
      break;
    case 'garbage':
      result = await garbage(probe);
      break;
  }
  console.log(JSON.stringify(result));
}

if (require.main === module) {
  main().catch((error: unknown) => {
    console.error(error);
    process.exitCode = 1;
  });
}
