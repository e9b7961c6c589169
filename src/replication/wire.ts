// The peer wire format between daemons: constants, bounds and pure codecs. No sockets
// here: every function maps bytes to values or values to bytes, so the server, the client
// and the fuzz test share one definition of the format and it is unit-tested without I/O.
//
// One frame per message, big-endian like NBD:
//
//   offset  size  field
//   0       4     magic            0x43535450 ("CSTP")
//   4       1     version          1
//   5       1     kind             1 request, 2 reply, 3 error reply, 4 auth
//   6       2     type             message type (opaque here; auth step for kind 4)
//   8       4     request id       chosen by the client, echoed in the reply
//   12      4     epoch            the sender's cluster map epoch
//   16      4     metadata length  bytes of msgpack metadata that follow the header
//   20      4     payload length   bytes of raw payload that follow the metadata
//   24            metadata, then payload
//
// Metadata is msgpackr; zero bytes of metadata mean `undefined`. The payload is raw
// bytes — data blocks are never msgpack-encoded — and is handed to the receiver as a view
// of the received bytes whenever they arrived in one socket read.

import { createHmac, timingSafeEqual } from 'node:crypto';
import { pack, unpack } from 'msgpackr';
import { assert } from '../util/assert';
import { CisternError, type CisternErrorCode } from '../util/errors';
import { OBJECT_SIZE_MAX_BYTES } from '../store/layout';
import type { ByteQueue } from '../frontend/nbd/byte-queue';

export const PEER_MAGIC = 0x43535450; // "CSTP": Cistern peer
export const PEER_PROTOCOL_VERSION = 1;
export const FRAME_HEADER_BYTES = 24;

export const FrameKind = {
  request: 1,
  reply: 2,
  errorReply: 3,
  auth: 4,
} as const;
export type FrameKind = (typeof FrameKind)[keyof typeof FrameKind];

/** Auth steps, carried in the `type` field of auth frames (see the exchange in peer.ts). */
export const AuthStep = {
  hello: 1,
  challenge: 2,
  clientProof: 3,
  serverProof: 4,
  refused: 5,
} as const;

// ---- Bounds (invariant 6: every one named, with its reason) ---------------------------

/**
 * Metadata describes one operation: object key, offsets, versions, a chunk of a PG log.
 * 64 KiB is far beyond any of those; anything larger is data and belongs in the payload.
 */
export const MAX_METADATA_BYTES = 64 * 1024;
/**
 * The largest message is one whole object during recovery or backfill, and objects are
 * at most OBJECT_SIZE_MAX_BYTES (64 MiB). Callers split anything larger; the bound caps
 * what one frame can make a daemon buffer before it even looks at the request.
 */
export const MAX_PAYLOAD_BYTES = OBJECT_SIZE_MAX_BYTES;
/**
 * An over-long frame whose header is otherwise sound is read and thrown away (never
 * buffered) so the sender gets an error reply and the stream stays in step. Beyond this
 * the sender is broken or hostile and would occupy the connection for gigabytes: close.
 */
export const MAX_SKIPPABLE_FRAME_BYTES = 2 * (MAX_METADATA_BYTES + MAX_PAYLOAD_BYTES);
/** Auth frames carry a host id and a nonce or proof: 1 KiB is plenty; they have no payload. */
export const MAX_AUTH_METADATA_BYTES = 1024;
/** Host ids are names of hosts in the cluster map; 255 bytes is a DNS name's limit. */
export const MAX_HOST_ID_BYTES = 255;
/** Nonces are 32 random bytes from node:crypto: collisions are out of the question. */
export const NONCE_BYTES = 32;
/** HMAC-SHA256 output. */
export const PROOF_BYTES = 32;
/** Messages in error replies are for people; longer ones are cut. */
export const MAX_ERROR_MESSAGE_CHARS = 1024;
export const MAX_U32 = 0xffffffff;

// ---- Header ---------------------------------------------------------------------------

export interface FrameHeader {
  magic: number;
  version: number;
  kind: number;
  type: number;
  requestId: number;
  epoch: number;
  metadataBytes: number;
  payloadBytes: number;
}

export function encodeHeader(header: FrameHeader, into?: Buffer): Buffer {
  assert(isU32(header.requestId) && isU32(header.epoch), 'request id and epoch are u32');
  assert(Number.isInteger(header.type) && header.type >= 0 && header.type <= 0xffff, 'type u16');
  assert(isU32(header.metadataBytes) && isU32(header.payloadBytes), 'lengths are u32');
  const bytes = into ?? Buffer.allocUnsafe(FRAME_HEADER_BYTES);
  assert(bytes.length >= FRAME_HEADER_BYTES, 'header buffer too small');
  bytes.writeUInt32BE(header.magic >>> 0, 0);
  bytes.writeUInt8(header.version, 4);
  bytes.writeUInt8(header.kind, 5);
  bytes.writeUInt16BE(header.type, 6);
  bytes.writeUInt32BE(header.requestId, 8);
  bytes.writeUInt32BE(header.epoch, 12);
  bytes.writeUInt32BE(header.metadataBytes, 16);
  bytes.writeUInt32BE(header.payloadBytes, 20);
  return bytes;
}

export function decodeHeader(bytes: Buffer): FrameHeader {
  assert(bytes.length >= FRAME_HEADER_BYTES, `header needs ${FRAME_HEADER_BYTES} bytes`);
  return {
    magic: bytes.readUInt32BE(0),
    version: bytes.readUInt8(4),
    kind: bytes.readUInt8(5),
    type: bytes.readUInt16BE(6),
    requestId: bytes.readUInt32BE(8),
    epoch: bytes.readUInt32BE(12),
    metadataBytes: bytes.readUInt32BE(16),
    payloadBytes: bytes.readUInt32BE(20),
  };
}

export function isU32(value: number): boolean {
  return Number.isInteger(value) && value >= 0 && value <= MAX_U32;
}

// ---- Frames ---------------------------------------------------------------------------

export interface OutgoingFrame {
  kind: FrameKind;
  type: number;
  requestId: number;
  epoch: number;
  metadata: unknown;
  payload?: Uint8Array | undefined;
}

/**
 * Encodes a frame as the parts to write: header and metadata in one buffer (a small copy),
 * then the payload as given (no copy). Throws EINVAL when the metadata cannot be encoded
 * or a bound is exceeded — the caller's mistake, reported, never a broken frame.
 */
export function encodeFrame(
  frame: OutgoingFrame,
  maxMetadataBytes = MAX_METADATA_BYTES,
  maxPayloadBytes = MAX_PAYLOAD_BYTES,
): Uint8Array[] {
  const metadata = encodeMetadata(frame.metadata);
  if (metadata.length > maxMetadataBytes) {
    throw new CisternError(
      'EINVAL',
      `metadata of ${metadata.length} bytes exceeds the ${maxMetadataBytes}-byte maximum`,
    );
  }
  const payloadBytes = frame.payload?.length ?? 0;
  if (payloadBytes > maxPayloadBytes) {
    throw new CisternError(
      'EINVAL',
      `payload of ${payloadBytes} bytes exceeds the ${maxPayloadBytes}-byte maximum`,
    );
  }
  const head = Buffer.allocUnsafe(FRAME_HEADER_BYTES + metadata.length);
  encodeHeader(
    {
      magic: PEER_MAGIC,
      version: PEER_PROTOCOL_VERSION,
      kind: frame.kind,
      type: frame.type,
      requestId: frame.requestId,
      epoch: frame.epoch,
      metadataBytes: metadata.length,
      payloadBytes,
    },
    head,
  );
  metadata.copy(head, FRAME_HEADER_BYTES);
  return payloadBytes > 0 && frame.payload !== undefined ? [head, frame.payload] : [head];
}

const emptyBuffer = Buffer.alloc(0);

export function encodeMetadata(metadata: unknown): Buffer {
  if (metadata === undefined) return emptyBuffer;
  try {
    return pack(metadata);
  } catch (error) {
    throw new CisternError('EINVAL', `metadata cannot be encoded: ${messageOf(error)}`, error);
  }
}

/** Decodes received metadata; malformed bytes are the sender's fault: BAD_REQUEST. */
export function decodeMetadata(bytes: Buffer): unknown {
  if (bytes.length === 0) return undefined;
  try {
    return unpack(bytes);
  } catch (error) {
    throw new CisternError('BAD_REQUEST', `malformed metadata: ${messageOf(error)}`, error);
  }
}

// ---- Incremental frame reader ---------------------------------------------------------

export interface FrameLimits {
  maxMetadataBytes: number;
  maxPayloadBytes: number;
  /** Frames over the limits but within this many body bytes are skipped, else fatal. */
  maxSkippableBytes: number;
  /** Kinds this side accepts; any other kind is skipped like an over-long frame. */
  kinds: readonly FrameKind[];
}

export type ReadResult =
  | { kind: 'frame'; header: FrameHeader; metadata: Buffer; payload: Buffer | undefined }
  /** A whole frame was read and discarded; the stream is still in step. */
  | { kind: 'rejected'; header: FrameHeader; reason: string }
  /** The stream cannot be trusted any more: close the connection. */
  | { kind: 'fatal'; reason: string };

/**
 * Cuts frames out of a ByteQueue. `next()` returns a result, or undefined when it needs
 * more bytes. It buffers at most one frame within the limits: an over-long frame's body
 * is discarded as it arrives, never accumulated.
 */
export class FrameReader {
  private header: FrameHeader | undefined;
  private skipRemainingBytes = 0;
  private skipReason = '';

  constructor(
    private readonly queue: ByteQueue,
    private limits: FrameLimits,
  ) {}

  setLimits(limits: FrameLimits): void {
    assert(this.header === undefined, 'limits change in the middle of a frame');
    this.limits = limits;
  }

  /** True between frames (no partial frame consumed). */
  get atFrameBoundary(): boolean {
    return this.header === undefined;
  }

  next(): ReadResult | undefined {
    if (this.header === undefined) {
      if (this.queue.length < FRAME_HEADER_BYTES) return undefined;
      const header = decodeHeader(this.queue.take(FRAME_HEADER_BYTES));
      const verdict = checkHeader(header, this.limits);
      if (verdict.kind === 'fatal') return verdict;
      this.header = header;
      if (verdict.kind === 'skip') {
        this.skipRemainingBytes = header.metadataBytes + header.payloadBytes;
        this.skipReason = verdict.reason;
      }
    }
    const header = this.header;
    if (this.skipReason !== '') {
      this.skipRemainingBytes -= this.queue.discard(this.skipRemainingBytes);
      if (this.skipRemainingBytes > 0) return undefined;
      const reason = this.skipReason;
      this.header = undefined;
      this.skipReason = '';
      return { kind: 'rejected', header, reason };
    }
    if (this.queue.length < header.metadataBytes + header.payloadBytes) return undefined;
    this.header = undefined;
    const metadata = this.queue.take(header.metadataBytes);
    const payload = header.payloadBytes > 0 ? this.queue.take(header.payloadBytes) : undefined;
    return { kind: 'frame', header, metadata, payload };
  }
}

type HeaderVerdict =
  { kind: 'ok' } | { kind: 'skip'; reason: string } | { kind: 'fatal'; reason: string };

/** Judges a header: bad magic or version lose the framing; bad sizes or kinds can be skipped. */
export function checkHeader(header: FrameHeader, limits: FrameLimits): HeaderVerdict {
  if (header.magic !== PEER_MAGIC) {
    return { kind: 'fatal', reason: `bad magic 0x${header.magic.toString(16)}` };
  }
  if (header.version !== PEER_PROTOCOL_VERSION) {
    return { kind: 'fatal', reason: `unsupported protocol version ${header.version}` };
  }
  const bodyBytes = header.metadataBytes + header.payloadBytes;
  let reason: string | undefined;
  if (!(limits.kinds as readonly number[]).includes(header.kind)) {
    reason = `unexpected frame kind ${header.kind}`;
  } else if (header.metadataBytes > limits.maxMetadataBytes) {
    reason = `metadata of ${header.metadataBytes} bytes exceeds the ${limits.maxMetadataBytes}-byte maximum`;
  } else if (header.payloadBytes > limits.maxPayloadBytes) {
    reason = `payload of ${header.payloadBytes} bytes exceeds the ${limits.maxPayloadBytes}-byte maximum`;
  }
  if (reason === undefined) return { kind: 'ok' };
  if (bodyBytes > limits.maxSkippableBytes) {
    return { kind: 'fatal', reason: `${reason}, too large to skip` };
  }
  return { kind: 'skip', reason };
}

// ---- Error replies --------------------------------------------------------------------

/** Every code, so a code read off the wire can be checked (the compiler keeps it complete). */
const knownCodes: Record<CisternErrorCode, true> = {
  EIO: true,
  UNREACHABLE: true,
  ENOSPC: true,
  EINVAL: true,
  ENOENT: true,
  EEXIST: true,
  EPERM: true,
  ENOTSUP: true,
  EROFS: true,
  CORRUPT: true,
  STALE_EPOCH: true,
  UNKNOWN_VOLUME: true,
  UNKNOWN_POOL: true,
  PLACEMENT_IMPOSSIBLE: true,
  BAD_REQUEST: true,
  UNAVAILABLE: true,
  CLOSED: true,
};

export interface ErrorReplyMetadata {
  code: CisternErrorCode;
  message: string;
  /** For STALE_EPOCH (and any error carrying one): the epoch of the daemon that refused. */
  epoch?: number;
}

export function encodeErrorMetadata(
  code: CisternErrorCode,
  message: string,
  epoch?: number,
): ErrorReplyMetadata {
  const text =
    message.length > MAX_ERROR_MESSAGE_CHARS
      ? message.slice(0, MAX_ERROR_MESSAGE_CHARS) + '…'
      : message;
  return epoch === undefined ? { code, message: text } : { code, message: text, epoch };
}

/** Reads error-reply metadata from the wire; anything unrecognisable becomes EIO. */
export function decodeErrorMetadata(metadata: unknown): ErrorReplyMetadata {
  if (typeof metadata !== 'object' || metadata === null) {
    return { code: 'EIO', message: 'peer sent a malformed error reply' };
  }
  const fields = metadata as Record<string, unknown>;
  const code =
    typeof fields.code === 'string' && Object.hasOwn(knownCodes, fields.code)
      ? (fields.code as CisternErrorCode)
      : 'EIO';
  const message =
    typeof fields.message === 'string'
      ? fields.message.slice(0, MAX_ERROR_MESSAGE_CHARS)
      : 'peer sent an error without a message';
  const epoch = typeof fields.epoch === 'number' && isU32(fields.epoch) ? fields.epoch : undefined;
  return epoch === undefined ? { code, message } : { code, message, epoch };
}

// ---- Authentication -------------------------------------------------------------------

export interface AuthHello {
  hostId: string;
  nonce: Buffer;
}

/** Validates hello / challenge metadata; undefined when malformed. */
export function decodeAuthHello(metadata: unknown): AuthHello | undefined {
  if (typeof metadata !== 'object' || metadata === null) return undefined;
  const fields = metadata as Record<string, unknown>;
  if (!isHostId(fields.hostId)) return undefined;
  if (!(fields.nonce instanceof Uint8Array) || fields.nonce.length !== NONCE_BYTES)
    return undefined;
  return { hostId: fields.hostId, nonce: Buffer.from(fields.nonce) };
}

/** Validates proof metadata; undefined when malformed. */
export function decodeAuthProof(metadata: unknown): Buffer | undefined {
  if (typeof metadata !== 'object' || metadata === null) return undefined;
  const proof = (metadata as Record<string, unknown>).proof;
  if (!(proof instanceof Uint8Array) || proof.length !== PROOF_BYTES) return undefined;
  return Buffer.from(proof);
}

export function isHostId(value: unknown): value is string {
  return (
    typeof value === 'string' && value.length > 0 && Buffer.byteLength(value) <= MAX_HOST_ID_BYTES
  );
}

export type ProofRole = 'client' | 'server';

export interface AuthTranscript {
  clientHostId: string;
  serverHostId: string;
  clientNonce: Buffer;
  serverNonce: Buffer;
}

/**
 * HMAC-SHA256 under the cluster secret over a role label, both nonces and both host ids,
 * each length-prefixed so no two transcripts encode alike. The role label keeps a
 * server's proof from being replayed as a client's (reflection); fresh nonces on both
 * sides keep a recorded proof from being replayed on another connection.
 */
export function computeProof(secret: Buffer, role: ProofRole, transcript: AuthTranscript): Buffer {
  assert(secret.length > 0, 'empty cluster secret');
  const hmac = createHmac('sha256', secret);
  for (const part of [
    Buffer.from(`cistern-peer-v${PEER_PROTOCOL_VERSION} ${role}`),
    transcript.clientNonce,
    transcript.serverNonce,
    Buffer.from(transcript.clientHostId),
    Buffer.from(transcript.serverHostId),
  ]) {
    const length = Buffer.allocUnsafe(2);
    length.writeUInt16BE(part.length, 0);
    hmac.update(length);
    hmac.update(part);
  }
  return hmac.digest();
}

/** Constant-time check of a received proof. */
export function proofMatches(expected: Buffer, received: Buffer): boolean {
  return received.length === expected.length && timingSafeEqual(expected, received);
}

function messageOf(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}
