// The peer transport between daemons: a typed request/reply layer over TCP in the frame
// format of wire.ts. The replication layer defines message types and handlers on top;
// this file owns authentication, epoch fencing, pipelining, back-pressure and bounds.
//
// Authentication (mutual, before anything is served), all frames of kind `auth`:
//   client → server  hello         { hostId, nonce }      32 random bytes
//   server → client  challenge     { hostId, nonce }
//   client → server  clientProof   { proof: HMAC(secret, "client", nonces, host ids) }
//   server → client  serverProof   { proof: HMAC(secret, "server", nonces, host ids) }
//                 or refused       { reason }, then the server closes
// The server proves itself only after the client has, so a stranger learns nothing from
// a server; the client checks the server's proof before sending any request. Any other
// frame before the exchange completes closes the connection, and so does a handshake
// that takes longer than handshakeTimeoutMs.
//
// Epoch fencing (invariant 5), applied by the server before the handler runs:
//   request epoch < ours  → STALE_EPOCH carrying our epoch: the sender must refresh its
//                           map and retry (a partitioned old primary gets nothing accepted);
//   request epoch > ours  → wait (bounded, epochWaitMs) for our map to catch up through
//                           waitForEpoch; if it does not, STALE_EPOCH with our epoch (we
//                           are behind, the sender retries later);
//   equal                 → the handler runs.
// Replies carry the server's epoch in the header; error replies for STALE_EPOCH also in
// their metadata, surfaced as `PeerRemoteError.epoch`.

import { randomBytes } from 'node:crypto';
import * as net from 'node:net';
import { assert } from '../util/assert';
import { CisternError, isCisternError, type CisternErrorCode } from '../util/errors';
import { ByteQueue } from '../frontend/nbd/byte-queue';
import { BatchedWriter, ConnectionListeners, ReadGate } from '../net/connections';
import {
  AuthStep,
  FrameKind,
  FrameReader,
  MAX_AUTH_METADATA_BYTES,
  MAX_METADATA_BYTES,
  MAX_PAYLOAD_BYTES,
  MAX_SKIPPABLE_FRAME_BYTES,
  NONCE_BYTES,
  computeProof,
  decodeAuthHello,
  decodeAuthProof,
  decodeErrorMetadata,
  decodeMetadata,
  encodeErrorMetadata,
  encodeFrame,
  isHostId,
  isU32,
  proofMatches,
  type AuthTranscript,
  type FrameHeader,
  type FrameLimits,
  type OutgoingFrame,
  type ReadResult,
} from './wire';

export interface PeerRequest {
  type: number;
  epoch: number;
  metadata: unknown;
  /** A view of the received bytes; undefined when the request carried no payload. */
  payload?: Uint8Array;
  /** The authenticated host id of the sender. */
  peerHostId: string;
}

export interface PeerReply {
  metadata: unknown;
  /** Sent as raw bytes (never copied into a message); undefined or empty mean none. */
  payload?: Uint8Array;
  /** On replies a client receives: the server's map epoch when it replied. */
  epoch?: number;
}

export type PeerHandler = (request: PeerRequest) => Promise<PeerReply>;
export type PeerLog = (event: string, fields?: Record<string, unknown>) => void;

/** The error a request rejects with when the peer answered with an error reply. */
export class PeerRemoteError extends CisternError {
  constructor(
    code: CisternErrorCode,
    message: string,
    readonly peerHostId: string,
    /** The refusing daemon's epoch, when it sent one (always for STALE_EPOCH). */
    readonly epoch: number | undefined,
  ) {
    super(code, message);
  }
}

// ---- Bounds (invariant 6) -------------------------------------------------------------

export interface PeerLimits {
  /**
   * Requests a server handles at once per connection before it stops reading the socket.
   * Replication pipelines writes per PG; 256 keeps a 10–100 Gb/s link busy with 4 KiB
   * writes at sub-millisecond latency without letting one peer queue unbounded work.
   */
  maxInFlightRequests: number;
  /**
   * Request and reply bytes a server holds per connection (payloads being handled plus
   * replies not yet handed to the kernel). At least one maximal frame, so any single
   * request can be served; four of them let recovery keep a pipeline of whole objects.
   */
  maxInFlightBytes: number;
  /** Unauthenticated connections are dropped after this (slow-loris guard). */
  handshakeTimeoutMs: number;
  /**
   * How long a request from a newer epoch waits for this daemon's map to catch up. Map
   * updates propagate through etcd watches in milliseconds; two seconds covers a slow
   * watch without pinning in-flight slots for long.
   */
  epochWaitMs: number;
  /** On close(), how long in-flight requests get before their connection is dropped. */
  shutdownGraceMs: number;
  /** Connections per listener; beyond it node drops new ones as they arrive. */
  maxConnections: number;
}

export const DEFAULT_PEER_LIMITS: Readonly<PeerLimits> = {
  maxInFlightRequests: 256,
  maxInFlightBytes: 4 * MAX_PAYLOAD_BYTES,
  handshakeTimeoutMs: 5_000,
  epochWaitMs: 2_000,
  shutdownGraceMs: 5_000,
  maxConnections: 1024,
};

/** Client side: requests in flight per connection (the server's default bound). */
export const CLIENT_MAX_IN_FLIGHT_REQUESTS = DEFAULT_PEER_LIMITS.maxInFlightRequests;
/**
 * Bytes a client lets pile up in its socket's write buffer before new requests wait for
 * 'drain'. 16 MiB is several round trips of a fast link; a request may overshoot it by
 * one frame, never more.
 */
export const CLIENT_WRITE_HIGH_WATER_BYTES = 16 * 1024 * 1024;
/**
 * Callers waiting for a slot on one connection. Beyond this the peer is clearly not
 * keeping up and queueing more only adds latency and memory: the request fails with
 * UNAVAILABLE and the caller backs off.
 */
export const CLIENT_MAX_QUEUED_REQUESTS = 4096;
/** Connect plus authentication, unless the caller says otherwise. */
export const CONNECT_TIMEOUT_MS = 5_000;
/**
 * A request unanswered this long means the peer is stuck (alive to TCP, dead to us): the
 * connection is closed and every request on it fails with UNAVAILABLE, since a late reply
 * could no longer be told apart from a confused peer. A 64 MiB object at a congested
 * 10 MB/s is under 7 s; flushes and epoch waits are far shorter.
 */
export const REQUEST_TIMEOUT_MS = 30_000;
/** TCP keep-alive probes find a peer that vanished without a FIN or RST. */
export const KEEPALIVE_INITIAL_DELAY_MS = 10_000;
/** A refusing side waits this long for its refusal to reach the kernel before it hangs up. */
const REFUSAL_LINGER_MS = 1_000;

const authLimits: FrameLimits = {
  maxMetadataBytes: MAX_AUTH_METADATA_BYTES,
  maxPayloadBytes: 0,
  maxSkippableBytes: 0,
  kinds: [FrameKind.auth],
};
const serverLimits: FrameLimits = {
  maxMetadataBytes: MAX_METADATA_BYTES,
  maxPayloadBytes: MAX_PAYLOAD_BYTES,
  maxSkippableBytes: MAX_SKIPPABLE_FRAME_BYTES,
  kinds: [FrameKind.request],
};
const clientLimits: FrameLimits = {
  maxMetadataBytes: MAX_METADATA_BYTES,
  maxPayloadBytes: MAX_PAYLOAD_BYTES,
  // A server that sends what we cannot take is broken: nothing to skip, just close.
  maxSkippableBytes: 0,
  kinds: [FrameKind.reply, FrameKind.errorReply],
};

// ---- Server ---------------------------------------------------------------------------

export interface PeerServerOptions {
  hostId: string;
  secret: Buffer;
  handler: PeerHandler;
  currentEpoch: () => number;
  waitForEpoch?: (epoch: number, timeoutMs: number) => Promise<boolean>;
  log?: PeerLog;
  limits?: Partial<PeerLimits>;
  /**
   * The reply payload a request will produce (a read's length, from its metadata). It is
   * charged against maxInFlightBytes when the request is read, so requests whose replies
   * are large (reads, recovery pulls) are bounded by bytes, not only by count. Without
   * it a server holds at most maxInFlightRequests replies of whatever size handlers make.
   */
  expectedReplyBytes?: (request: PeerRequest) => number;
}

interface ServerConfig {
  hostId: string;
  secret: Buffer;
  handler: PeerHandler;
  currentEpoch: () => number;
  waitForEpoch: ((epoch: number, timeoutMs: number) => Promise<boolean>) | undefined;
  log: PeerLog;
  limits: PeerLimits;
  expectedReplyBytes: ((request: PeerRequest) => number) | undefined;
}

export interface PeerServerStats {
  connections: number;
  inFlightRequests: number;
  inFlightBytes: number;
  /** Frames refused with an error reply (over-long, unknown kind, malformed metadata). */
  badFrames: number;
}

export class PeerServer {
  private readonly config: ServerConfig;
  private readonly listeners: ConnectionListeners<ServerConnection>;
  private badFramesOfClosed = 0;

  constructor(options: PeerServerOptions) {
    assert(isHostId(options.hostId), `bad host id ${JSON.stringify(options.hostId)}`);
    assert(options.secret.length > 0, 'empty cluster secret');
    const limits = { ...DEFAULT_PEER_LIMITS, ...options.limits };
    assert(
      Number.isInteger(limits.maxInFlightRequests) && limits.maxInFlightRequests >= 1,
      'maxInFlightRequests',
    );
    assert(limits.maxInFlightBytes >= 1, 'maxInFlightBytes');
    this.config = {
      hostId: options.hostId,
      secret: options.secret,
      handler: options.handler,
      currentEpoch: options.currentEpoch,
      waitForEpoch: options.waitForEpoch,
      log: options.log ?? (() => undefined),
      limits,
      expectedReplyBytes: options.expectedReplyBytes,
    };
    const config = this.config;
    this.listeners = new ConnectionListeners({
      serverName: 'peer server',
      maxConnectionsPerListener: limits.maxConnections,
      connect: (socket) => new ServerConnection(socket, config),
      onListenerError: (error) => config.log('peer.listener_error', { error }),
      onConnectionClosed: (connection) => {
        this.badFramesOfClosed += connection.badFrames;
      },
    });
  }

  /** Listens on TCP; port 0 picks a free port. Resolves to the address actually bound. */
  async listen(host: string, port: number): Promise<{ host: string; port: number }> {
    const address = await this.listeners.listen(host, port);
    this.config.log('peer.listening', { address: `${address.host}:${address.port}` });
    return address;
  }

  stats(): PeerServerStats {
    const stats = { connections: 0, inFlightRequests: 0, inFlightBytes: 0, badFrames: 0 };
    for (const connection of this.listeners.connections) {
      stats.connections += 1;
      stats.inFlightRequests += connection.inFlightRequests;
      stats.inFlightBytes += connection.inFlightBytes;
      stats.badFrames += connection.badFrames;
    }
    stats.badFrames += this.badFramesOfClosed;
    return stats;
  }

  /** Stops accepting; in-flight requests finish (up to shutdownGraceMs). Idempotent. */
  close(): Promise<void> {
    return this.listeners.close();
  }
}

type ServerPhase = 'hello' | 'proof' | 'serving' | 'draining' | 'closed';

/** One request from being read until its reply reaches the kernel. */
interface ServerFlight {
  readonly requestId: number;
  /** Registered in `activeIds` (a real request, not a refused frame). */
  readonly tracked: boolean;
  chargeBytes: number;
  /** Reply bytes charged in advance (expectedReplyBytes). */
  reservedReplyBytes: number;
  released: boolean;
}

class ServerConnection {
  private readonly queue = new ByteQueue();
  private readonly reader = new FrameReader(this.queue, authLimits);
  private readonly remote: string;
  private readonly activeIds = new Set<number>();
  private phase: ServerPhase = 'hello';
  private transcript: Partial<AuthTranscript> = {};
  private peerHostId = '';
  private handshakeTimer: NodeJS.Timeout | undefined;
  private graceTimer: NodeJS.Timeout | undefined;
  inFlightRequests = 0;
  inFlightBytes = 0;
  badFrames = 0;
  readonly closed: Promise<void>;

  /** Replies in order, those of one tick in one batch. */
  private readonly writer: BatchedWriter;
  /** Reads paused while the connection is at a bound. */
  private readonly readGate: ReadGate;

  constructor(
    private readonly socket: net.Socket,
    private readonly config: ServerConfig,
  ) {
    this.writer = new BatchedWriter(socket);
    this.readGate = new ReadGate(socket);
    this.remote = `${socket.remoteAddress}:${socket.remotePort}`;
    this.closed = new Promise((resolve) => socket.once('close', () => resolve()));
    socket.setNoDelay(true);
    socket.setKeepAlive(true, KEEPALIVE_INITIAL_DELAY_MS);
    this.handshakeTimer = setTimeout(
      () => this.refuse('authentication did not complete in time'),
      config.limits.handshakeTimeoutMs,
    );
    socket.on('data', (chunk: Buffer) => {
      this.queue.push(chunk);
      this.pump();
    });
    socket.on('end', () => {
      if (this.phase === 'serving') this.drain();
      else if (this.phase !== 'draining') this.hardClose();
    });
    socket.on('error', () => {
      // Resets are the peer's business; 'close' follows and cleans up.
    });
    socket.on('close', () => {
      this.phase = 'closed';
      this.queue.clear();
      clearTimeout(this.handshakeTimer);
      clearTimeout(this.graceTimer);
    });
  }

  /** Server shutdown: unauthenticated connections go at once, others drain (bounded). */
  shutdown(): void {
    if (this.phase === 'closed') return;
    if (this.phase !== 'serving' && this.phase !== 'draining') {
      this.hardClose();
      return;
    }
    this.drain();
  }

  // ---- Reading --------------------------------------------------------------------------

  private pump(): void {
    this.guard(() => {
      while (this.canRead()) {
        const result = this.reader.next();
        if (result === undefined) break;
        if (this.phase === 'serving') this.onServingFrame(result);
        else this.onAuthFrame(result);
      }
      this.updateFlowControl();
    });
  }

  private canRead(): boolean {
    if (this.phase === 'hello' || this.phase === 'proof') return true;
    return this.phase === 'serving' && !this.atInFlightBound();
  }

  private atInFlightBound(): boolean {
    const limits = this.config.limits;
    return (
      this.inFlightRequests >= limits.maxInFlightRequests ||
      this.inFlightBytes >= limits.maxInFlightBytes
    );
  }

  private updateFlowControl(): void {
    if (this.phase === 'closed') return;
    const shouldPause = !this.canRead();
    this.readGate.pauseWhile(shouldPause);
  }

  // ---- Authentication -------------------------------------------------------------------

  private onAuthFrame(result: ReadResult): void {
    if (result.kind !== 'frame') {
      this.refuse(
        result.kind === 'fatal' ? result.reason : `${result.reason} before authentication`,
      );
      return;
    }
    const { header } = result;
    let metadata: unknown;
    try {
      metadata = decodeMetadata(result.metadata);
    } catch {
      this.refuse('malformed authentication metadata');
      return;
    }
    if (this.phase === 'hello' && header.type === AuthStep.hello) {
      const hello = decodeAuthHello(metadata);
      if (hello === undefined) {
        this.refuse('malformed hello');
        return;
      }
      const serverNonce = randomBytes(NONCE_BYTES);
      this.transcript = {
        clientHostId: hello.hostId,
        clientNonce: hello.nonce,
        serverHostId: this.config.hostId,
        serverNonce,
      };
      this.phase = 'proof';
      this.sendAuth(AuthStep.challenge, { hostId: this.config.hostId, nonce: serverNonce });
      return;
    }
    if (this.phase === 'proof' && header.type === AuthStep.clientProof) {
      const transcript = this.transcript as AuthTranscript;
      const proof = decodeAuthProof(metadata);
      const expected = computeProof(this.config.secret, 'client', transcript);
      if (proof === undefined || !proofMatches(expected, proof)) {
        this.refuse('wrong cluster secret', transcript.clientHostId);
        return;
      }
      this.phase = 'serving';
      this.peerHostId = transcript.clientHostId;
      clearTimeout(this.handshakeTimer);
      this.reader.setLimits(serverLimits);
      this.sendAuth(AuthStep.serverProof, {
        proof: computeProof(this.config.secret, 'server', transcript),
      });
      this.config.log('peer.authenticated', { remote: this.remote, peer: this.peerHostId });
      return;
    }
    this.refuse(`unexpected authentication step ${header.type} in phase ${this.phase}`);
  }

  private sendAuth(step: number, metadata: unknown): void {
    this.send(
      encodeFrame({
        kind: FrameKind.auth,
        type: step,
        requestId: 0,
        epoch: this.config.currentEpoch() >>> 0,
        metadata,
      }),
    );
  }

  /** Tells the peer why (so it can report it), logs it, and hangs up. */
  private refuse(reason: string, claimedHostId?: string): void {
    if (this.phase === 'closed' || this.phase === 'serving' || this.phase === 'draining') return;
    this.config.log('peer.auth_refused', {
      remote: this.remote,
      ...(claimedHostId === undefined ? {} : { claimedHostId }),
      reason,
    });
    const refusal = encodeFrame({
      kind: FrameKind.auth,
      type: AuthStep.refused,
      requestId: 0,
      epoch: 0,
      metadata: { reason },
    });
    this.phase = 'closed';
    this.queue.clear();
    this.socket.pause();
    clearTimeout(this.handshakeTimer);
    if (this.socket.destroyed || this.socket.writableEnded) return;
    this.socket.end(Buffer.concat(refusal), () => this.socket.destroy());
    setTimeout(() => this.socket.destroy(), REFUSAL_LINGER_MS).unref();
  }

  // ---- Serving --------------------------------------------------------------------------

  private onServingFrame(result: ReadResult): void {
    if (result.kind === 'fatal') {
      this.protocolError(result.reason);
      return;
    }
    const header = result.header;
    if (result.kind === 'rejected') {
      this.badFrames += 1;
      const flight = this.beginFlight(header.requestId, false, 0);
      this.replyError(flight, 'BAD_REQUEST', result.reason);
      return;
    }
    if (this.activeIds.has(header.requestId)) {
      this.protocolError(`request id ${header.requestId} is already in flight`);
      return;
    }
    const chargeBytes = result.metadata.length + (result.payload?.length ?? 0);
    const flight = this.beginFlight(header.requestId, true, chargeBytes);
    let metadata: unknown;
    try {
      metadata = decodeMetadata(result.metadata);
    } catch (error) {
      this.badFrames += 1;
      this.replyError(flight, 'BAD_REQUEST', messageOf(error));
      return;
    }
    const request: PeerRequest = {
      type: header.type,
      epoch: header.epoch,
      metadata,
      peerHostId: this.peerHostId,
    };
    if (result.payload !== undefined) request.payload = result.payload;
    this.reserveReplyBytes(flight, request);
    this.serve(request).then(
      (reply) => this.guard(() => this.replyOk(flight, header, reply)),
      (error: unknown) => this.guard(() => this.replyFailure(flight, header, error)),
    );
  }

  /** Fencing, then the handler. */
  private async serve(request: PeerRequest): Promise<PeerReply> {
    await fenceEpoch(request.epoch, this.config.currentEpoch, (epoch) => this.waitForEpoch(epoch));
    return await this.config.handler(request);
  }

  private async waitForEpoch(epoch: number): Promise<boolean> {
    const wait = this.config.waitForEpoch;
    if (wait === undefined) return false;
    try {
      return await wait(epoch, this.config.limits.epochWaitMs);
    } catch (error) {
      this.config.log('peer.bug', { where: 'waitForEpoch', error: describe(error) });
      return false;
    }
  }

  private replyOk(flight: ServerFlight, header: FrameHeader, reply: PeerReply): void {
    const payload = reply?.payload;
    if (
      typeof reply !== 'object' ||
      reply === null ||
      !(payload === undefined || payload instanceof Uint8Array)
    ) {
      this.replyFailure(flight, header, new Error('handler returned a malformed reply'));
      return;
    }
    let parts: Uint8Array[];
    try {
      parts = encodeFrame(this.frame(FrameKind.reply, flight, reply.metadata, payload));
    } catch (error) {
      this.replyFailure(flight, header, error);
      return;
    }
    this.finishFlight(flight, parts, payload?.length ?? 0);
  }

  private replyFailure(flight: ServerFlight, header: FrameHeader, error: unknown): void {
    if (isCisternError(error)) {
      this.replyError(flight, error.code, error.message, epochOf(error));
      return;
    }
    // Handlers report the world's errors as CisternErrors; anything else is a bug.
    this.config.log('peer.handler_bug', {
      peer: this.peerHostId,
      type: header.type,
      error: describe(error),
    });
    this.replyError(flight, 'EIO', `internal error in handler for message type ${header.type}`);
  }

  private replyError(
    flight: ServerFlight,
    code: CisternErrorCode,
    message: string,
    epoch?: number,
  ): void {
    const metadata = encodeErrorMetadata(code, message, epoch);
    this.finishFlight(flight, encodeFrame(this.frame(FrameKind.errorReply, flight, metadata)), 0);
  }

  private frame(
    kind: FrameKind,
    flight: ServerFlight,
    metadata: unknown,
    payload?: Uint8Array,
  ): OutgoingFrame {
    return {
      kind,
      type: 0,
      requestId: flight.requestId,
      epoch: this.config.currentEpoch() >>> 0,
      metadata,
      payload,
    };
  }

  private reserveReplyBytes(flight: ServerFlight, request: PeerRequest): void {
    const estimate = this.config.expectedReplyBytes;
    if (estimate === undefined) return;
    let bytes = 0;
    try {
      bytes = estimate(request);
    } catch (error) {
      this.config.log('peer.bug', { where: 'expectedReplyBytes', error: describe(error) });
    }
    // Hostile metadata may make an estimate absurd; no reply can exceed a frame anyway.
    bytes = Number.isFinite(bytes)
      ? Math.min(Math.max(0, Math.floor(bytes)), MAX_PAYLOAD_BYTES)
      : 0;
    flight.reservedReplyBytes = bytes;
    flight.chargeBytes += bytes;
    this.inFlightBytes += bytes;
  }

  private beginFlight(requestId: number, tracked: boolean, chargeBytes: number): ServerFlight {
    if (tracked) this.activeIds.add(requestId);
    this.inFlightRequests += 1;
    this.inFlightBytes += chargeBytes;
    return { requestId, tracked, chargeBytes, reservedReplyBytes: 0, released: false };
  }

  /** Sends the reply; the flight stops counting against the bounds once the kernel has it. */
  private finishFlight(flight: ServerFlight, parts: Uint8Array[], replyBytes: number): void {
    const extra = Math.max(0, replyBytes - flight.reservedReplyBytes);
    flight.chargeBytes += extra;
    this.inFlightBytes += extra;
    this.send(parts, () =>
      this.guard(() => {
        // A write callback can run twice when the socket fails mid-write; release once.
        if (flight.released) return;
        flight.released = true;
        if (flight.tracked) this.activeIds.delete(flight.requestId);
        this.inFlightRequests -= 1;
        this.inFlightBytes -= flight.chargeBytes;
        assert(this.inFlightRequests >= 0 && this.inFlightBytes >= 0, 'in-flight accounting');
        if (this.phase === 'draining') this.finishIfIdle();
        else if (this.phase === 'serving') this.pump();
      }),
    );
  }

  /**
   * No more requests will be read; close once every reply is out, or when the grace
   * period ends (a hung handler or a peer that never reads must not hold the connection).
   */
  private drain(): void {
    if (this.phase === 'closed') return;
    this.phase = 'draining';
    this.graceTimer ??= setTimeout(() => this.hardClose(), this.config.limits.shutdownGraceMs);
    this.updateFlowControl();
    this.finishIfIdle();
  }

  private finishIfIdle(): void {
    if (this.inFlightRequests > 0 || this.phase === 'closed') return;
    this.phase = 'closed';
    this.socket.end(() => this.socket.destroy());
  }

  private protocolError(reason: string): void {
    this.config.log('peer.protocol_error', { remote: this.remote, peer: this.peerHostId, reason });
    this.hardClose();
  }

  private hardClose(): void {
    this.phase = 'closed';
    this.queue.clear();
    this.socket.destroy();
  }

  /** Writes parts in order; writes from the same tick go out in one batch (cork/uncork). */
  private send(parts: Uint8Array[], done?: () => void): void {
    this.writer.write(parts, done);
  }

  /** Runs `work` from a callback; a bug inside it costs this connection, never the daemon. */
  private guard(work: () => void): void {
    try {
      work();
    } catch (error) {
      this.config.log('peer.bug', { remote: this.remote, error: describe(error) });
      this.hardClose();
    }
  }
}

/**
 * The fencing rule (invariant 5; see the top of this file): resolves when a request of
 * `requestEpoch` may be served now, at an equal epoch; throws STALE_EPOCH carrying the
 * receiver's epoch otherwise. Shared by the peer server and the simulator's network.
 */
export async function fenceEpoch(
  requestEpoch: number,
  currentEpoch: () => number,
  waitForEpoch: (epoch: number) => Promise<boolean>,
): Promise<void> {
  const current = currentEpoch();
  if (requestEpoch < current) {
    throw staleEpoch(current, `request from epoch ${requestEpoch} is older than ours`);
  }
  if (requestEpoch > current) {
    const caughtUp = await waitForEpoch(requestEpoch);
    const now = currentEpoch();
    if (!caughtUp || now < requestEpoch) {
      throw staleEpoch(now, `this daemon is behind the request's epoch ${requestEpoch}`);
    }
    if (now > requestEpoch) {
      throw staleEpoch(now, `request from epoch ${requestEpoch} is older than ours`);
    }
  }
}

function staleEpoch(epoch: number, message: string): PeerRemoteError {
  return new PeerRemoteError('STALE_EPOCH', `${message} (epoch ${epoch})`, '', epoch);
}

/** The epoch detail of an error, if it has one (PeerRemoteError or any error with `epoch`). */
function epochOf(error: CisternError): number | undefined {
  const epoch = (error as { epoch?: unknown }).epoch;
  return typeof epoch === 'number' && isU32(epoch) ? epoch : undefined;
}

// ---- Client ---------------------------------------------------------------------------

export interface PeerClientOptions {
  /** "ip:port" or "[ipv6]:port". */
  address: string;
  hostId: string;
  secret: Buffer;
  /** When given, a peer that authenticates as another host is refused (EPERM). */
  expectedPeerHostId?: string;
  /** Connect plus authentication; default CONNECT_TIMEOUT_MS. */
  timeoutMs?: number;
  /** Default REQUEST_TIMEOUT_MS. */
  requestTimeoutMs?: number;
}

type ClientPhase = 'connecting' | 'challenge' | 'server-proof' | 'open' | 'closed';

interface Pending {
  resolve: (reply: PeerReply) => void;
  reject: (error: Error) => void;
  timer: NodeJS.Timeout;
}

export class PeerClient {
  private readonly queue = new ByteQueue();
  private readonly reader = new FrameReader(this.queue, authLimits);
  private readonly pending = new Map<number, Pending>();
  private readonly waiters: Array<{ resolve: () => void; reject: (error: Error) => void }> = [];
  private readonly clientNonce = randomBytes(NONCE_BYTES);
  private readonly ready: Promise<void>;
  private readonly closedPromise: Promise<void>;
  private transcript: AuthTranscript | undefined;
  private phase: ClientPhase = 'connecting';
  private serverHostId = '';
  private nextRequestId = 1;
  private reserved = 0;
  private corked = false;
  private settleReady: ((error?: Error) => void) | undefined;
  private connectTimer: NodeJS.Timeout | undefined;

  private constructor(
    private readonly socket: net.Socket,
    private readonly options: PeerClientOptions,
  ) {
    this.ready = new Promise((resolve, reject) => {
      this.settleReady = (error) => (error === undefined ? resolve() : reject(error));
    });
    this.closedPromise = new Promise((resolve) => socket.once('close', () => resolve()));
    const timeoutMs = options.timeoutMs ?? CONNECT_TIMEOUT_MS;
    this.connectTimer = setTimeout(
      () =>
        this.fail(
          new CisternError(
            'UNAVAILABLE',
            `${this.describePeer()}: no connection after ${timeoutMs} ms`,
          ),
        ),
      timeoutMs,
    );
    socket.setNoDelay(true);
    socket.setKeepAlive(true, KEEPALIVE_INITIAL_DELAY_MS);
    socket.on('connect', () => this.guard(() => this.sendHello()));
    socket.on('data', (chunk: Buffer) => {
      this.queue.push(chunk);
      this.guard(() => this.pump());
    });
    socket.on('drain', () => this.wakeWaiters());
    socket.on('error', (error) =>
      this.fail(new CisternError('UNAVAILABLE', `${this.describePeer()}: ${error.message}`, error)),
    );
    socket.on('close', () =>
      this.fail(
        new CisternError(
          'UNAVAILABLE',
          this.phase === 'open'
            ? `connection to ${this.describePeer()} lost`
            : `${this.describePeer()} closed the connection during authentication`,
        ),
      ),
    );
  }

  /** Connects and authenticates; rejects with EPERM on a secret or identity mismatch. */
  static async connect(options: PeerClientOptions): Promise<PeerClient> {
    assert(isHostId(options.hostId), `bad host id ${JSON.stringify(options.hostId)}`);
    assert(options.secret.length > 0, 'empty cluster secret');
    const { host, port } = parseAddress(options.address);
    const client = new PeerClient(net.connect({ host, port }), options);
    await client.ready;
    return client;
  }

  get closed(): boolean {
    return this.phase === 'closed';
  }

  get peerHostId(): string {
    return this.serverHostId;
  }

  get inFlightRequests(): number {
    return this.pending.size;
  }

  /**
   * Sends one request and resolves with its reply. Waits (bounded) while the connection
   * has its maximum of requests in flight or a full write buffer. Rejects with the
   * server's error (PeerRemoteError: same code and message, plus its epoch when given),
   * with UNAVAILABLE when the connection is lost, CLOSED after close().
   */
  async request(
    type: number,
    epoch: number,
    metadata: unknown,
    payload?: Uint8Array,
  ): Promise<PeerReply> {
    assert(Number.isInteger(type) && type >= 0 && type <= 0xffff, `message type ${type} is u16`);
    assert(isU32(epoch), `epoch ${epoch} is u32`);
    if (this.phase !== 'open') throw this.closedError();
    if (!this.canSend() || this.waiters.length > 0) await this.waitForSlot();
    else this.reserved += 1;
    this.reserved -= 1;
    if (this.phase !== 'open') throw this.closedError();
    const requestId = this.allocateRequestId();
    let parts: Uint8Array[];
    try {
      parts = encodeFrame({ kind: FrameKind.request, type, requestId, epoch, metadata, payload });
    } catch (error) {
      this.wakeWaiters(); // the slot this request held is free again
      throw error;
    }
    const timeoutMs = this.options.requestTimeoutMs ?? REQUEST_TIMEOUT_MS;
    return new Promise<PeerReply>((resolve, reject) => {
      const timer = setTimeout(() => {
        const message = `${this.describePeer()} did not answer a type ${type} request within ${timeoutMs} ms`;
        this.fail(new CisternError('UNAVAILABLE', `${message}; connection closed`));
      }, timeoutMs);
      this.pending.set(requestId, { resolve, reject, timer });
      this.send(parts);
    });
  }

  /**
   * Gives up on the peer now: the connection closes and every pending request rejects
   * with UNAVAILABLE saying why, as when the connection is lost. For a peer the cluster
   * map has declared down — a host cut off without a FIN or RST answers nothing, and its
   * requests would otherwise wait out their whole timeout.
   */
  abandon(reason: string): void {
    this.fail(new CisternError('UNAVAILABLE', `gave up on ${this.describePeer()}: ${reason}`));
  }

  /** Closes the connection; requests still pending reject with CLOSED. */
  async close(): Promise<void> {
    if (this.phase !== 'closed') {
      this.fail(new CisternError('CLOSED', `connection to ${this.describePeer()} was closed`));
    }
    await this.closedPromise;
  }

  // ---- Flow control ---------------------------------------------------------------------

  private canSend(): boolean {
    return (
      this.pending.size + this.reserved < CLIENT_MAX_IN_FLIGHT_REQUESTS &&
      this.socket.writableLength < CLIENT_WRITE_HIGH_WATER_BYTES
    );
  }

  private waitForSlot(): Promise<void> {
    if (this.waiters.length >= CLIENT_MAX_QUEUED_REQUESTS) {
      return Promise.reject(
        new CisternError(
          'UNAVAILABLE',
          `${this.describePeer()} is not keeping up: ${this.waiters.length} requests already wait`,
        ),
      );
    }
    return new Promise((resolve, reject) => this.waiters.push({ resolve, reject }));
  }

  /** Hands free slots to waiting callers, first come first served. */
  private wakeWaiters(): void {
    while (this.waiters.length > 0 && this.phase === 'open' && this.canSend()) {
      const waiter = this.waiters.shift();
      assert(waiter !== undefined, 'waiter vanished');
      this.reserved += 1;
      waiter.resolve();
    }
  }

  private allocateRequestId(): number {
    // Ids wrap at 2^32; skipping the ones in flight takes at most maxInFlight + 1 steps.
    for (let attempt = 0; attempt <= CLIENT_MAX_IN_FLIGHT_REQUESTS; attempt += 1) {
      const id = this.nextRequestId;
      this.nextRequestId = id === 0xffffffff ? 1 : id + 1;
      if (!this.pending.has(id)) return id;
    }
    assert(false, 'no free request id with bounded requests in flight');
  }

  // ---- Reading --------------------------------------------------------------------------

  private pump(): void {
    for (;;) {
      if (this.phase === 'closed') return;
      const result = this.reader.next();
      if (result === undefined) return;
      if (this.phase === 'open') this.onReply(result);
      else this.onAuthFrame(result);
    }
  }

  private onReply(result: ReadResult): void {
    if (result.kind !== 'frame') {
      this.fail(this.protocolError(result.reason));
      return;
    }
    const { header } = result;
    const pending = this.pending.get(header.requestId);
    if (pending === undefined) {
      this.fail(this.protocolError(`reply to request ${header.requestId}, which is not in flight`));
      return;
    }
    this.pending.delete(header.requestId);
    clearTimeout(pending.timer);
    let metadata: unknown;
    try {
      metadata = decodeMetadata(result.metadata);
    } catch (error) {
      pending.reject(
        new CisternError(
          'EIO',
          `${this.describePeer()} sent a malformed reply: ${messageOf(error)}`,
        ),
      );
      this.wakeWaiters();
      return;
    }
    if (header.kind === FrameKind.errorReply) {
      const error = decodeErrorMetadata(metadata);
      pending.reject(
        new PeerRemoteError(error.code, error.message, this.serverHostId, error.epoch),
      );
    } else {
      const reply: PeerReply = { metadata, epoch: header.epoch };
      if (result.payload !== undefined) reply.payload = result.payload;
      pending.resolve(reply);
    }
    this.wakeWaiters();
  }

  private sendHello(): void {
    if (this.phase !== 'connecting') return;
    this.phase = 'challenge';
    this.sendAuth(AuthStep.hello, { hostId: this.options.hostId, nonce: this.clientNonce });
  }

  private onAuthFrame(result: ReadResult): void {
    if (result.kind !== 'frame') {
      this.fail(this.protocolError(result.reason));
      return;
    }
    let metadata: unknown;
    try {
      metadata = decodeMetadata(result.metadata);
    } catch {
      this.fail(this.protocolError('malformed authentication metadata'));
      return;
    }
    const step = result.header.type;
    if (step === AuthStep.refused) {
      const reason = (metadata as { reason?: unknown } | undefined)?.reason;
      const detail = typeof reason === 'string' ? `: ${reason.slice(0, 200)}` : '';
      this.fail(
        new CisternError(
          'EPERM',
          `${this.describePeer()} refused authentication (wrong cluster secret?)${detail}`,
        ),
      );
      return;
    }
    if (this.phase === 'challenge' && step === AuthStep.challenge) {
      this.onChallenge(metadata);
      return;
    }
    if (this.phase === 'server-proof' && step === AuthStep.serverProof) {
      this.onServerProof(metadata);
      return;
    }
    this.fail(this.protocolError(`unexpected authentication step ${step}`));
  }

  private onChallenge(metadata: unknown): void {
    const challenge = decodeAuthHello(metadata);
    if (challenge === undefined) {
      this.fail(this.protocolError('malformed challenge'));
      return;
    }
    const expected = this.options.expectedPeerHostId;
    if (expected !== undefined && challenge.hostId !== expected) {
      this.fail(
        new CisternError(
          'EPERM',
          `peer at ${this.options.address} is host ${challenge.hostId}, expected ${expected}`,
        ),
      );
      return;
    }
    this.serverHostId = challenge.hostId;
    this.transcript = {
      clientHostId: this.options.hostId,
      serverHostId: challenge.hostId,
      clientNonce: this.clientNonce,
      serverNonce: challenge.nonce,
    };
    this.phase = 'server-proof';
    this.sendAuth(AuthStep.clientProof, {
      proof: computeProof(this.options.secret, 'client', this.transcript),
    });
  }

  private onServerProof(metadata: unknown): void {
    assert(this.transcript !== undefined, 'server proof before the challenge');
    const proof = decodeAuthProof(metadata);
    const expected = computeProof(this.options.secret, 'server', this.transcript);
    if (proof === undefined || !proofMatches(expected, proof)) {
      this.fail(
        new CisternError(
          'EPERM',
          `${this.describePeer()} failed authentication: its proof does not match our cluster secret (wrong cluster secret?)`,
        ),
      );
      return;
    }
    this.phase = 'open';
    clearTimeout(this.connectTimer);
    this.reader.setLimits(clientLimits);
    this.settleReady?.();
    this.settleReady = undefined;
  }

  private sendAuth(step: number, metadata: unknown): void {
    this.send(encodeFrame({ kind: FrameKind.auth, type: step, requestId: 0, epoch: 0, metadata }));
  }

  // ---- Failure and writing ---------------------------------------------------------------

  /** Ends the connection once: the handshake, every pending request and waiter fail with `error`. */
  private fail(error: CisternError): void {
    if (this.phase === 'closed') return;
    this.phase = 'closed';
    clearTimeout(this.connectTimer);
    this.queue.clear();
    this.socket.destroy();
    this.settleReady?.(error);
    this.settleReady = undefined;
    const pending = [...this.pending.values()];
    this.pending.clear();
    for (const request of pending) {
      clearTimeout(request.timer);
      request.reject(error);
    }
    const waiters = this.waiters.splice(0);
    for (const waiter of waiters) waiter.reject(error);
  }

  private closedError(): CisternError {
    return new CisternError('CLOSED', `connection to ${this.describePeer()} is closed`);
  }

  private protocolError(reason: string): CisternError {
    return new CisternError('EIO', `protocol error from ${this.describePeer()}: ${reason}`);
  }

  private describePeer(): string {
    const name = this.serverHostId || this.options.expectedPeerHostId;
    return name ? `peer ${name} (${this.options.address})` : `peer at ${this.options.address}`;
  }

  private send(parts: Uint8Array[]): void {
    if (this.socket.destroyed || this.socket.writableEnded) return;
    if (!this.corked) {
      this.corked = true;
      this.socket.cork();
      process.nextTick(() => {
        this.corked = false;
        this.socket.uncork();
      });
    }
    for (const part of parts) this.socket.write(part);
  }

  private guard(work: () => void): void {
    try {
      work();
    } catch (error) {
      this.fail(new CisternError('EIO', `bug in peer client: ${describe(error)}`, error));
    }
  }
}

/** Splits "host:port" or "[v6]:port"; EINVAL for anything else. */
export function parseAddress(address: string): { host: string; port: number } {
  const match = /^(?:\[([^\]]+)\]|([^:\s]+)):(\d{1,5})$/.exec(address);
  const port = match === null ? NaN : Number(match[3]);
  if (match === null || !(port >= 1 && port <= 65535)) {
    throw new CisternError('EINVAL', `not a peer address: "${address}" (expected host:port)`);
  }
  return { host: (match[1] ?? match[2]) as string, port };
}

// ---- Pool -----------------------------------------------------------------------------

export interface PeerPoolOptions {
  hostId: string;
  secret: Buffer;
  /** Where a host's daemon listens ("ip:port"), from the cluster state. */
  addressOf: (hostId: string) => string | undefined;
  /** Connect plus authentication; default CONNECT_TIMEOUT_MS. */
  timeoutMs?: number;
  /** Default REQUEST_TIMEOUT_MS. */
  requestTimeoutMs?: number;
}

interface PoolEntry {
  address: string;
  connecting: Promise<PeerClient> | undefined;
  client: PeerClient | undefined;
}

/**
 * One connection per peer host, opened on first use and again after it is lost or the
 * host's address changes. A request that fails with the connection is not retried here:
 * only the caller knows whether it is safe to send again.
 */
export class PeerPool {
  private readonly entries = new Map<string, PoolEntry>();
  private closing = false;

  constructor(private readonly options: PeerPoolOptions) {
    assert(isHostId(options.hostId), `bad host id ${JSON.stringify(options.hostId)}`);
  }

  async request(
    peerHostId: string,
    type: number,
    epoch: number,
    metadata: unknown,
    payload?: Uint8Array,
  ): Promise<PeerReply> {
    const client = await this.clientFor(peerHostId);
    return client.request(type, epoch, metadata, payload);
  }

  /**
   * Gives up on `peerHostId` now (PeerTransport.abandon): its connection, or the one
   * being made, fails, and every request on it rejects with UNAVAILABLE. The next
   * request connects afresh.
   */
  abandon(peerHostId: string, reason: string): void {
    const entry = this.entries.get(peerHostId);
    if (entry === undefined) return;
    // A connection still being made is dropped as it completes (no longer our entry),
    // and its waiting requests reject with CLOSED.
    this.entries.delete(peerHostId);
    entry.client?.abandon(reason);
  }

  async close(): Promise<void> {
    this.closing = true;
    const entries = [...this.entries.values()];
    this.entries.clear();
    await Promise.all(
      entries.map(async (entry) => {
        const client = entry.client ?? (await entry.connecting?.catch(() => undefined));
        await client?.close();
      }),
    );
  }

  private async clientFor(hostId: string): Promise<PeerClient> {
    if (this.closing) throw new CisternError('CLOSED', 'peer pool is closed');
    const address = this.options.addressOf(hostId);
    if (address === undefined) {
      throw new CisternError('UNAVAILABLE', `no address known for peer host ${hostId}`);
    }
    let entry = this.entries.get(hostId);
    if (entry !== undefined && entry.address === address) {
      if (entry.client !== undefined && !entry.client.closed) return entry.client;
      if (entry.connecting !== undefined) return entry.connecting;
    }
    if (entry?.client !== undefined && !entry.client.closed) void entry.client.close();
    const fresh: PoolEntry = { address, connecting: undefined, client: undefined };
    entry = fresh;
    this.entries.set(hostId, fresh);
    fresh.connecting = PeerClient.connect({
      address,
      hostId: this.options.hostId,
      secret: this.options.secret,
      expectedPeerHostId: hostId,
      timeoutMs: this.options.timeoutMs ?? CONNECT_TIMEOUT_MS,
      requestTimeoutMs: this.options.requestTimeoutMs ?? REQUEST_TIMEOUT_MS,
    }).then(
      async (client) => {
        fresh.connecting = undefined;
        if (this.closing || this.entries.get(hostId) !== fresh) {
          await client.close();
          throw new CisternError('CLOSED', 'peer pool is closed');
        }
        fresh.client = client;
        return client;
      },
      (error: unknown) => {
        // The next request tries again.
        if (this.entries.get(hostId) === fresh) this.entries.delete(hostId);
        throw error;
      },
    );
    return fresh.connecting;
  }
}

function messageOf(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}

function describe(error: unknown): string {
  return error instanceof Error ? (error.stack ?? error.message) : String(error);
}
