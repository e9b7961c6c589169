// Shared pieces of the peer protocol tests: a server on loopback that records its log and
// handler calls, and a raw socket that speaks frames by hand (optionally authenticating
// first) so tests can send what no well-behaved client would.

import { randomBytes } from 'node:crypto';
import * as net from 'node:net';
import { ByteQueue } from '../../src/frontend/nbd/byte-queue';
import {
  PeerServer,
  type PeerHandler,
  type PeerLimits,
  type PeerServerOptions,
} from '../../src/replication/peer';
import * as W from '../../src/replication/wire';

export const SECRET = Buffer.from('the cluster secret of the test cluster');
export const WRONG_SECRET = Buffer.from('some other cluster secret');
export const MiB = 1024 * 1024;

export interface LogEntry {
  event: string;
  fields: Record<string, unknown>;
}

export interface TestPeerServer {
  server: PeerServer;
  address: string;
  target: { host: string; port: number };
  logs: LogEntry[];
  epoch: { value: number };
  close(): Promise<void>;
}

export async function startPeerServer(
  handler: PeerHandler,
  options: Partial<Omit<PeerServerOptions, 'handler' | 'limits'>> & {
    limits?: Partial<PeerLimits>;
    port?: number;
  } = {},
): Promise<TestPeerServer> {
  const logs: LogEntry[] = [];
  const epoch = { value: 10 };
  const { port, ...serverOptions } = options;
  const server = new PeerServer({
    hostId: 'host-b',
    secret: SECRET,
    currentEpoch: () => epoch.value,
    log: (event, fields = {}) => logs.push({ event, fields }),
    ...serverOptions,
    handler,
  });
  const target = await server.listen('127.0.0.1', port ?? 0);
  return {
    server,
    address: `127.0.0.1:${target.port}`,
    target,
    logs,
    epoch,
    close: () => server.close(),
  };
}

/** Log events that mean a bug in the peer code or a handler, never a hostile peer. */
export function bugEvents(logs: readonly LogEntry[]): LogEntry[] {
  return logs.filter((entry) => entry.event === 'peer.bug' || entry.event === 'peer.handler_bug');
}

export async function waitUntil(condition: () => boolean, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error(`condition not met within ${timeoutMs} ms`);
    await sleep(10);
  }
}

export function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

const permissiveLimits: W.FrameLimits = {
  maxMetadataBytes: W.MAX_METADATA_BYTES,
  maxPayloadBytes: W.MAX_PAYLOAD_BYTES,
  maxSkippableBytes: 0,
  kinds: [W.FrameKind.request, W.FrameKind.reply, W.FrameKind.errorReply, W.FrameKind.auth],
};

export type Frame = Extract<W.ReadResult, { kind: 'frame' }>;

/** A socket that writes raw bytes and reads frames, for input no real client sends. */
export class RawPeer {
  private readonly queue = new ByteQueue();
  private readonly reader = new W.FrameReader(this.queue, permissiveLimits);
  private waiter: (() => void) | undefined;
  private ended = false;
  readonly closed: Promise<void>;

  private constructor(readonly socket: net.Socket) {
    this.closed = new Promise((resolve) => socket.once('close', () => resolve()));
    socket.on('data', (chunk: Buffer) => {
      this.queue.push(chunk);
      this.waiter?.();
    });
    socket.on('error', () => {
      // resets are a legitimate outcome for hostile input; 'close' follows
    });
    socket.on('close', () => {
      this.ended = true;
      this.waiter?.();
    });
  }

  get isClosed(): boolean {
    return this.ended;
  }

  static open(target: { host: string; port: number }): Promise<RawPeer> {
    return new Promise((resolve, reject) => {
      const socket = net.connect(target.port, target.host, () => {
        socket.off('error', reject);
        resolve(new RawPeer(socket));
      });
      socket.once('error', reject);
    });
  }

  /** Opens a connection and completes the handshake by hand with `secret`. */
  static async authenticated(
    target: { host: string; port: number },
    secret = SECRET,
    hostId = 'raw-peer',
  ): Promise<RawPeer> {
    const peer = await RawPeer.open(target);
    const clientNonce = randomBytes(W.NONCE_BYTES);
    peer.write(authFrame(W.AuthStep.hello, { hostId, nonce: clientNonce }));
    const challenge = await peer.readFrame();
    const hello = challenge && W.decodeAuthHello(W.decodeMetadata(challenge.metadata));
    if (hello === undefined) throw new Error('no challenge from the server');
    const transcript: W.AuthTranscript = {
      clientHostId: hostId,
      serverHostId: hello.hostId,
      clientNonce,
      serverNonce: hello.nonce,
    };
    peer.write(
      authFrame(W.AuthStep.clientProof, { proof: W.computeProof(secret, 'client', transcript) }),
    );
    const proof = await peer.readFrame();
    if (proof?.header.type !== W.AuthStep.serverProof) throw new Error('authentication failed');
    return peer;
  }

  write(bytes: Uint8Array): void {
    if (!this.socket.destroyed) this.socket.write(bytes);
  }

  /** The next frame, or undefined if the connection closes (or sends garbage) first. */
  async readFrame(timeoutMs = 10_000): Promise<Frame | undefined> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const result = this.reader.next();
      if (result !== undefined) return result.kind === 'frame' ? result : undefined;
      if (this.ended) return undefined;
      if (Date.now() > deadline) throw new Error('timed out waiting for a frame');
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, Math.max(1, deadline - Date.now()));
        this.waiter = () => {
          clearTimeout(timer);
          resolve();
        };
      });
      this.waiter = undefined;
    }
  }

  /** True if the server closed the connection within `timeoutMs`. */
  async closedWithin(timeoutMs: number): Promise<boolean> {
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<boolean>((resolve) => {
      timer = setTimeout(() => resolve(false), timeoutMs);
    });
    const result = await Promise.race([this.closed.then(() => true), timeout]);
    clearTimeout(timer);
    return result;
  }

  destroy(): void {
    this.socket.destroy();
  }
}

export function authFrame(step: number, metadata: unknown): Buffer {
  return Buffer.concat(
    W.encodeFrame({ kind: W.FrameKind.auth, type: step, requestId: 0, epoch: 0, metadata }),
  );
}

export function requestFrame(
  requestId: number,
  metadata: unknown,
  payload?: Uint8Array,
  options: { type?: number; epoch?: number } = {},
): Buffer {
  return Buffer.concat(
    W.encodeFrame({
      kind: W.FrameKind.request,
      type: options.type ?? 1,
      requestId,
      epoch: options.epoch ?? 10,
      metadata,
      payload,
    }),
  );
}

/** A frame header alone, with any field values, for lengths no encoder would produce. */
export function rawHeader(fields: Partial<W.FrameHeader>): Buffer {
  return W.encodeHeader({
    magic: W.PEER_MAGIC,
    version: W.PEER_PROTOCOL_VERSION,
    kind: W.FrameKind.request,
    type: 1,
    requestId: 1,
    epoch: 10,
    metadataBytes: 0,
    payloadBytes: 0,
    ...fields,
  });
}
