// NBD wire constants and pure codecs, written from the NBD project's protocol
// specification (doc/proto.md). No sockets here: every function maps bytes to values or
// values to bytes, so the server, the client and the fuzz test share one definition of
// the wire format and it can be unit-tested without I/O.

import { CisternError, isCisternError, type CisternErrorCode } from '../../util/errors';

// ---- Magic numbers --------------------------------------------------------------------

export const NBD_MAGIC = 0x4e42444d41474943n; // "NBDMAGIC"
export const NBD_IHAVEOPT = 0x49484156454f5054n; // "IHAVEOPT"
export const NBD_OPTION_REPLY_MAGIC = 0x3e889045565a9n;
export const NBD_REQUEST_MAGIC = 0x25609513;
export const NBD_SIMPLE_REPLY_MAGIC = 0x67446698;
export const NBD_STRUCTURED_REPLY_MAGIC = 0x668e33ef;

// ---- Handshake flags ------------------------------------------------------------------

export const NBD_FLAG_FIXED_NEWSTYLE = 1 << 0;
export const NBD_FLAG_NO_ZEROES = 1 << 1;
export const NBD_FLAG_C_FIXED_NEWSTYLE = 1 << 0;
export const NBD_FLAG_C_NO_ZEROES = 1 << 1;
export const NBD_CLIENT_FLAGS_KNOWN = NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES;

// ---- Transmission flags ---------------------------------------------------------------

export const NBD_FLAG_HAS_FLAGS = 1 << 0;
export const NBD_FLAG_READ_ONLY = 1 << 1;
export const NBD_FLAG_SEND_FLUSH = 1 << 2;
export const NBD_FLAG_SEND_FUA = 1 << 3;
export const NBD_FLAG_ROTATIONAL = 1 << 4;
export const NBD_FLAG_SEND_TRIM = 1 << 5;
export const NBD_FLAG_SEND_WRITE_ZEROES = 1 << 6;
export const NBD_FLAG_SEND_DF = 1 << 7;
export const NBD_FLAG_CAN_MULTI_CONN = 1 << 8;
export const NBD_FLAG_SEND_RESIZE = 1 << 9;
export const NBD_FLAG_SEND_CACHE = 1 << 10;
export const NBD_FLAG_SEND_FAST_ZERO = 1 << 11;

// ---- Options and option replies -------------------------------------------------------

export const NBD_OPT_EXPORT_NAME = 1;
export const NBD_OPT_ABORT = 2;
export const NBD_OPT_LIST = 3;
export const NBD_OPT_STARTTLS = 5;
export const NBD_OPT_INFO = 6;
export const NBD_OPT_GO = 7;
export const NBD_OPT_STRUCTURED_REPLY = 8;
// The spec's early drafts numbered these 10 and 11; 9 and 10 are what was assigned and
// what qemu, libnbd and nbdkit send.
export const NBD_OPT_LIST_META_CONTEXT = 9;
export const NBD_OPT_SET_META_CONTEXT = 10;
export const NBD_OPT_EXTENDED_HEADERS = 11;

export const NBD_REP_ACK = 1;
export const NBD_REP_SERVER = 2;
export const NBD_REP_INFO = 3;
export const NBD_REP_META_CONTEXT = 4;
const NBD_REP_FLAG_ERROR = 0x80000000;
export const NBD_REP_ERR_UNSUP = NBD_REP_FLAG_ERROR + 1;
export const NBD_REP_ERR_POLICY = NBD_REP_FLAG_ERROR + 2;
export const NBD_REP_ERR_INVALID = NBD_REP_FLAG_ERROR + 3;
export const NBD_REP_ERR_PLATFORM = NBD_REP_FLAG_ERROR + 4;
export const NBD_REP_ERR_TLS_REQD = NBD_REP_FLAG_ERROR + 5;
export const NBD_REP_ERR_UNKNOWN = NBD_REP_FLAG_ERROR + 6;
export const NBD_REP_ERR_SHUTDOWN = NBD_REP_FLAG_ERROR + 7;
export const NBD_REP_ERR_BLOCK_SIZE_REQD = NBD_REP_FLAG_ERROR + 8;
export const NBD_REP_ERR_TOO_BIG = NBD_REP_FLAG_ERROR + 9;

export function isOptionReplyError(replyType: number): boolean {
  return (replyType & NBD_REP_FLAG_ERROR) !== 0;
}

export const NBD_INFO_EXPORT = 0;
export const NBD_INFO_NAME = 1;
export const NBD_INFO_DESCRIPTION = 2;
export const NBD_INFO_BLOCK_SIZE = 3;

/** The one metadata context this server knows. */
export const BASE_ALLOCATION = 'base:allocation';
/** Context id the server assigns to base:allocation on SET_META_CONTEXT (any non-reused id works). */
export const BASE_ALLOCATION_CONTEXT_ID = 1;
export const NBD_STATE_HOLE = 1 << 0;
export const NBD_STATE_ZERO = 1 << 1;

// ---- Commands -------------------------------------------------------------------------

export const NBD_CMD_READ = 0;
export const NBD_CMD_WRITE = 1;
export const NBD_CMD_DISC = 2;
export const NBD_CMD_FLUSH = 3;
export const NBD_CMD_TRIM = 4;
export const NBD_CMD_CACHE = 5;
export const NBD_CMD_WRITE_ZEROES = 6;
export const NBD_CMD_BLOCK_STATUS = 7;

export const NBD_CMD_FLAG_FUA = 1 << 0;
export const NBD_CMD_FLAG_NO_HOLE = 1 << 1;
export const NBD_CMD_FLAG_DF = 1 << 2;
export const NBD_CMD_FLAG_REQ_ONE = 1 << 3;
export const NBD_CMD_FLAG_FAST_ZERO = 1 << 4;

/**
 * Command flags each command accepts. FUA is valid on every command once SEND_FUA is
 * advertised (the spec says the server MUST accept it, even by ignoring it); anything
 * else outside this table gets EINVAL.
 */
export const NBD_CMD_FLAGS_ALLOWED: ReadonlyMap<number, number> = new Map([
  [NBD_CMD_READ, NBD_CMD_FLAG_FUA | NBD_CMD_FLAG_DF],
  [NBD_CMD_WRITE, NBD_CMD_FLAG_FUA],
  [NBD_CMD_DISC, NBD_CMD_FLAG_FUA],
  [NBD_CMD_FLUSH, NBD_CMD_FLAG_FUA],
  [NBD_CMD_TRIM, NBD_CMD_FLAG_FUA],
  [NBD_CMD_CACHE, NBD_CMD_FLAG_FUA],
  [NBD_CMD_WRITE_ZEROES, NBD_CMD_FLAG_FUA | NBD_CMD_FLAG_NO_HOLE | NBD_CMD_FLAG_FAST_ZERO],
  [NBD_CMD_BLOCK_STATUS, NBD_CMD_FLAG_FUA | NBD_CMD_FLAG_REQ_ONE],
]);

export const NBD_REPLY_FLAG_DONE = 1 << 0;
export const NBD_REPLY_TYPE_NONE = 0;
export const NBD_REPLY_TYPE_OFFSET_DATA = 1;
export const NBD_REPLY_TYPE_OFFSET_HOLE = 2;
export const NBD_REPLY_TYPE_BLOCK_STATUS = 5;
export const NBD_REPLY_TYPE_ERROR = (1 << 15) + 1;
export const NBD_REPLY_TYPE_ERROR_OFFSET = (1 << 15) + 2;

export function isReplyTypeError(type: number): boolean {
  return (type & (1 << 15)) !== 0;
}

// ---- Error values (the only ones the spec allows on the wire) -------------------------

export const NBD_EPERM = 1;
export const NBD_EIO = 5;
export const NBD_ENOMEM = 12;
export const NBD_EINVAL = 22;
export const NBD_ENOSPC = 28;
export const NBD_EOVERFLOW = 75;
export const NBD_ENOTSUP = 95;
export const NBD_ESHUTDOWN = 108;

// ---- Sizes of fixed wire structures ---------------------------------------------------

export const GREETING_BYTES = 18; // NBDMAGIC, IHAVEOPT, 16-bit handshake flags
export const CLIENT_FLAGS_BYTES = 4;
export const OPTION_HEADER_BYTES = 16; // IHAVEOPT, option, length
export const OPTION_REPLY_HEADER_BYTES = 20; // magic, option, type, length
export const EXPORT_NAME_REPLY_ZEROES_BYTES = 124;
export const REQUEST_HEADER_BYTES = 28;
export const SIMPLE_REPLY_HEADER_BYTES = 16;
export const STRUCTURED_REPLY_HEADER_BYTES = 20;

// ---- Bounds (invariant 6: every one named, with its reason) ---------------------------

/**
 * Largest READ or WRITE payload. The spec lets clients assume 32 MiB when no maximum is
 * advertised, and qemu, libnbd and the Linux kernel never send more; one request's buffer
 * therefore stays well within what a connection may pin in memory.
 */
export const MAX_REQUEST_PAYLOAD_BYTES = 32 * 1024 * 1024;
/**
 * An over-long WRITE's payload is read and thrown away (no buffering) so the client gets
 * an error and the stream stays in sync. Beyond this a client is either broken or hostile
 * and skipping would let it occupy the connection for gigabytes: we hard-disconnect.
 */
export const MAX_SKIPPABLE_WRITE_BYTES = 2 * MAX_REQUEST_PAYLOAD_BYTES;
/** The spec: strings MUST be no longer than 4096 bytes (export names, messages). */
export const MAX_STRING_BYTES = 4096;
/**
 * Largest option payload we parse. The biggest legitimate one is SET_META_CONTEXT with
 * an export name and a handful of queries; 64 KiB leaves room for sixteen 4 KiB strings.
 */
export const MAX_OPTION_DATA_BYTES = 64 * 1024;
/** Over-long options up to this are skipped and refused with ERR_TOO_BIG, beyond it we hang up. */
export const MAX_SKIPPABLE_OPTION_BYTES = 1024 * 1024;
/** Bounds on counts inside options, to refuse absurd values before looping over them. */
export const MAX_INFO_REQUESTS = 64;
export const MAX_META_CONTEXT_QUERIES = 64;
/**
 * Error messages on the wire are for people; 512 bytes is plenty and keeps every
 * error chunk small whatever the backend put in its message.
 */
export const MAX_ERROR_MESSAGE_BYTES = 512;
/**
 * Block status descriptors per reply. The spec lets the server return fewer extents than
 * the range needs; clients ask again from where the reply stopped. 1024 × 8 bytes keeps
 * each reply below 9 KiB.
 */
export const MAX_BLOCK_STATUS_EXTENTS = 1024;
/** Lengths in a 32-bit field: block status descriptors and hole sizes. */
export const MAX_U32 = 0xffffffff;

// ---- Errno mapping: the one place CisternError codes and NBD errors meet --------------

const errnoByCode: Record<CisternErrorCode, number> = {
  EIO: NBD_EIO,
  UNREACHABLE: NBD_EIO,
  ENOSPC: NBD_ENOSPC,
  EINVAL: NBD_EINVAL,
  BAD_REQUEST: NBD_EINVAL,
  ENOENT: NBD_EIO,
  EEXIST: NBD_EIO,
  EPERM: NBD_EPERM,
  EROFS: NBD_EPERM,
  ENOTSUP: NBD_ENOTSUP,
  CORRUPT: NBD_EIO,
  STALE_EPOCH: NBD_EIO,
  UNKNOWN_VOLUME: NBD_EIO,
  UNKNOWN_POOL: NBD_EIO,
  PLACEMENT_IMPOSSIBLE: NBD_EIO,
  UNAVAILABLE: NBD_EIO,
  CLOSED: NBD_ESHUTDOWN,
};

/** The NBD error value a failed request is answered with. Unknown failures are EIO. */
export function nbdErrnoFor(error: unknown): number {
  if (error instanceof CisternError) return errnoByCode[error.code] ?? NBD_EIO;
  // V8 throws RangeError when an ArrayBuffer cannot be allocated: the one real ENOMEM.
  if (error instanceof RangeError && /allocat/i.test(error.message)) return NBD_ENOMEM;
  return NBD_EIO;
}

const codeByErrno: ReadonlyMap<number, CisternErrorCode> = new Map<number, CisternErrorCode>([
  [NBD_EPERM, 'EPERM'],
  [NBD_EIO, 'EIO'],
  [NBD_EINVAL, 'EINVAL'],
  [NBD_ENOSPC, 'ENOSPC'],
  [NBD_EOVERFLOW, 'EINVAL'],
  [NBD_ENOTSUP, 'ENOTSUP'],
  [NBD_ESHUTDOWN, 'CLOSED'],
]);

export const NBD_ERRNO_NAMES: ReadonlyMap<number, string> = new Map([
  [NBD_EPERM, 'EPERM'],
  [NBD_EIO, 'EIO'],
  [NBD_ENOMEM, 'ENOMEM'],
  [NBD_EINVAL, 'EINVAL'],
  [NBD_ENOSPC, 'ENOSPC'],
  [NBD_EOVERFLOW, 'EOVERFLOW'],
  [NBD_ENOTSUP, 'ENOTSUP'],
  [NBD_ESHUTDOWN, 'ESHUTDOWN'],
]);

/** A request the server answered with an error; `errno` is the NBD error value. */
export class NbdRequestError extends CisternError {
  constructor(
    readonly errno: number,
    message: string,
  ) {
    super(codeByErrno.get(errno) ?? 'EIO', message);
  }
  get errnoName(): string {
    return NBD_ERRNO_NAMES.get(this.errno) ?? `errno ${this.errno}`;
  }
}

export function isNbdRequestError(error: unknown, errno?: number): error is NbdRequestError {
  return (
    isCisternError(error) &&
    error instanceof NbdRequestError &&
    (errno === undefined || error.errno === errno)
  );
}

// ---- Handshake codecs -----------------------------------------------------------------

export function encodeGreeting(handshakeFlags: number): Buffer {
  const buffer = Buffer.alloc(GREETING_BYTES);
  buffer.writeBigUInt64BE(NBD_MAGIC, 0);
  buffer.writeBigUInt64BE(NBD_IHAVEOPT, 8);
  buffer.writeUInt16BE(handshakeFlags, 16);
  return buffer;
}

export interface OptionHeader {
  magic: bigint;
  option: number;
  length: number;
}

export function decodeOptionHeader(bytes: Uint8Array): OptionHeader {
  const view = asBuffer(bytes);
  return {
    magic: view.readBigUInt64BE(0),
    option: view.readUInt32BE(8),
    length: view.readUInt32BE(12),
  };
}

export function encodeOption(option: number, data: Uint8Array = Buffer.alloc(0)): Buffer {
  const buffer = Buffer.alloc(OPTION_HEADER_BYTES + data.length);
  buffer.writeBigUInt64BE(NBD_IHAVEOPT, 0);
  buffer.writeUInt32BE(option, 8);
  buffer.writeUInt32BE(data.length, 12);
  buffer.set(data, OPTION_HEADER_BYTES);
  return buffer;
}

export function encodeOptionReply(
  option: number,
  replyType: number,
  data: Uint8Array = Buffer.alloc(0),
): Buffer {
  const buffer = Buffer.alloc(OPTION_REPLY_HEADER_BYTES + data.length);
  buffer.writeBigUInt64BE(NBD_OPTION_REPLY_MAGIC, 0);
  buffer.writeUInt32BE(option, 8);
  buffer.writeUInt32BE(replyType >>> 0, 12);
  buffer.writeUInt32BE(data.length, 16);
  buffer.set(data, OPTION_REPLY_HEADER_BYTES);
  return buffer;
}

export interface OptionReplyHeader {
  magic: bigint;
  option: number;
  replyType: number;
  length: number;
}

export function decodeOptionReplyHeader(bytes: Uint8Array): OptionReplyHeader {
  const view = asBuffer(bytes);
  return {
    magic: view.readBigUInt64BE(0),
    option: view.readUInt32BE(8),
    replyType: view.readUInt32BE(12),
    length: view.readUInt32BE(16),
  };
}

/** Payload of an NBD_REP_SERVER reply: the export name, then a description for people. */
export function encodeServerReply(name: string, description: string): Buffer {
  const nameBytes = Buffer.from(name, 'utf8');
  const descriptionBytes = Buffer.from(description, 'utf8');
  const buffer = Buffer.alloc(4 + nameBytes.length + descriptionBytes.length);
  buffer.writeUInt32BE(nameBytes.length, 0);
  nameBytes.copy(buffer, 4);
  descriptionBytes.copy(buffer, 4 + nameBytes.length);
  return buffer;
}

export function decodeServerReply(bytes: Uint8Array): { name: string; description: string } {
  const view = asBuffer(bytes);
  if (view.length < 4) throw invalid('NBD_REP_SERVER shorter than 4 bytes');
  const nameLength = view.readUInt32BE(0);
  if (nameLength > view.length - 4) throw invalid('NBD_REP_SERVER name overruns the reply');
  return {
    name: view.toString('utf8', 4, 4 + nameLength),
    description: view.toString('utf8', 4 + nameLength),
  };
}

export function encodeInfoExport(sizeBytes: number, transmissionFlags: number): Buffer {
  const buffer = Buffer.alloc(12);
  buffer.writeUInt16BE(NBD_INFO_EXPORT, 0);
  buffer.writeBigUInt64BE(BigInt(sizeBytes), 2);
  buffer.writeUInt16BE(transmissionFlags, 10);
  return buffer;
}

export function encodeInfoString(infoType: number, text: string): Buffer {
  const textBytes = truncateUtf8(text, MAX_STRING_BYTES);
  const buffer = Buffer.alloc(2 + textBytes.length);
  buffer.writeUInt16BE(infoType, 0);
  textBytes.copy(buffer, 2);
  return buffer;
}

export interface BlockSizeConstraints {
  minimumBytes: number;
  preferredBytes: number;
  maximumBytes: number;
}

export function encodeInfoBlockSize(constraints: BlockSizeConstraints): Buffer {
  const buffer = Buffer.alloc(14);
  buffer.writeUInt16BE(NBD_INFO_BLOCK_SIZE, 0);
  buffer.writeUInt32BE(constraints.minimumBytes, 2);
  buffer.writeUInt32BE(constraints.preferredBytes, 6);
  buffer.writeUInt32BE(constraints.maximumBytes, 10);
  return buffer;
}

/** What an NBD_REP_INFO reply says; unknown info types are returned as `unknown`. */
export type InfoReply =
  | { type: 'export'; sizeBytes: number; transmissionFlags: number }
  | { type: 'name'; name: string }
  | { type: 'description'; description: string }
  | { type: 'block-size'; constraints: BlockSizeConstraints }
  | { type: 'unknown'; infoType: number };

export function decodeInfoReply(bytes: Uint8Array): InfoReply {
  const view = asBuffer(bytes);
  if (view.length < 2) throw invalid('NBD_REP_INFO shorter than 2 bytes');
  const infoType = view.readUInt16BE(0);
  switch (infoType) {
    case NBD_INFO_EXPORT: {
      if (view.length !== 12) throw invalid(`NBD_INFO_EXPORT of ${view.length} bytes`);
      const size = view.readBigUInt64BE(2);
      if (size > BigInt(Number.MAX_SAFE_INTEGER)) throw invalid('export size beyond 2^53');
      return { type: 'export', sizeBytes: Number(size), transmissionFlags: view.readUInt16BE(10) };
    }
    case NBD_INFO_NAME:
      return { type: 'name', name: view.toString('utf8', 2) };
    case NBD_INFO_DESCRIPTION:
      return { type: 'description', description: view.toString('utf8', 2) };
    case NBD_INFO_BLOCK_SIZE:
      if (view.length !== 14) throw invalid(`NBD_INFO_BLOCK_SIZE of ${view.length} bytes`);
      return {
        type: 'block-size',
        constraints: {
          minimumBytes: view.readUInt32BE(2),
          preferredBytes: view.readUInt32BE(6),
          maximumBytes: view.readUInt32BE(10),
        },
      };
    default:
      return { type: 'unknown', infoType };
  }
}

/** Data of NBD_OPT_INFO and NBD_OPT_GO: an export name and the info types asked for. */
export interface InfoRequest {
  exportName: string;
  infoTypes: number[];
}

export function encodeInfoRequest(request: InfoRequest): Buffer {
  const name = Buffer.from(request.exportName, 'utf8');
  const buffer = Buffer.alloc(4 + name.length + 2 + 2 * request.infoTypes.length);
  buffer.writeUInt32BE(name.length, 0);
  name.copy(buffer, 4);
  buffer.writeUInt16BE(request.infoTypes.length, 4 + name.length);
  request.infoTypes.forEach((infoType, index) => {
    buffer.writeUInt16BE(infoType, 4 + name.length + 2 + 2 * index);
  });
  return buffer;
}

/** Throws CisternError BAD_REQUEST when the option data is malformed. */
export function decodeInfoRequest(bytes: Uint8Array): InfoRequest {
  const reader = new FieldReader(bytes, 'NBD_OPT_INFO/GO');
  const exportName = reader.string32(MAX_STRING_BYTES);
  const count = reader.u16();
  if (count > MAX_INFO_REQUESTS)
    throw invalid(`${count} info requests (at most ${MAX_INFO_REQUESTS})`);
  const infoTypes: number[] = [];
  for (let index = 0; index < count; index += 1) infoTypes.push(reader.u16());
  reader.end();
  return { exportName, infoTypes };
}

/** Data of NBD_OPT_LIST_META_CONTEXT and NBD_OPT_SET_META_CONTEXT. */
export interface MetaContextRequest {
  exportName: string;
  queries: string[];
}

export function encodeMetaContextRequest(request: MetaContextRequest): Buffer {
  const parts: Buffer[] = [];
  const name = Buffer.from(request.exportName, 'utf8');
  parts.push(u32(name.length), name, u32(request.queries.length));
  for (const query of request.queries) {
    const bytes = Buffer.from(query, 'utf8');
    parts.push(u32(bytes.length), bytes);
  }
  return Buffer.concat(parts);
}

/** Throws CisternError BAD_REQUEST when the option data is malformed. */
export function decodeMetaContextRequest(bytes: Uint8Array): MetaContextRequest {
  const reader = new FieldReader(bytes, 'NBD_OPT_*_META_CONTEXT');
  const exportName = reader.string32(MAX_STRING_BYTES);
  const count = reader.u32();
  if (count > MAX_META_CONTEXT_QUERIES) {
    throw invalid(`${count} meta context queries (at most ${MAX_META_CONTEXT_QUERIES})`);
  }
  const queries: string[] = [];
  for (let index = 0; index < count; index += 1) queries.push(reader.string32(MAX_STRING_BYTES));
  reader.end();
  return { exportName, queries };
}

export function encodeMetaContextReply(contextId: number, name: string): Buffer {
  const nameBytes = Buffer.from(name, 'utf8');
  const buffer = Buffer.alloc(4 + nameBytes.length);
  buffer.writeUInt32BE(contextId, 0);
  nameBytes.copy(buffer, 4);
  return buffer;
}

export function decodeMetaContextReply(bytes: Uint8Array): { contextId: number; name: string } {
  const view = asBuffer(bytes);
  if (view.length < 4) throw invalid('NBD_REP_META_CONTEXT shorter than 4 bytes');
  return { contextId: view.readUInt32BE(0), name: view.toString('utf8', 4) };
}

/**
 * Which of our contexts a query names. For LIST, an empty query list means "all" and a
 * namespace ("base:") matches every context in it; for SET, only exact names select.
 */
export function matchMetaContexts(queries: readonly string[], forList: boolean): string[] {
  if (queries.length === 0) return forList ? [BASE_ALLOCATION] : [];
  const matched = new Set<string>();
  for (const query of queries) {
    if (query === BASE_ALLOCATION || (forList && query === 'base:')) matched.add(BASE_ALLOCATION);
  }
  return [...matched];
}

/** Data of NBD_OPT_EXPORT_NAME: the whole option is the name. BAD_REQUEST when not a valid string. */
export function decodeExportName(bytes: Uint8Array): string {
  return checkedString(asBuffer(bytes), 'NBD_OPT_EXPORT_NAME');
}

/** Reply to NBD_OPT_EXPORT_NAME: size, transmission flags, and 124 zeroes unless NO_ZEROES. */
export function encodeExportNameReply(
  sizeBytes: number,
  transmissionFlags: number,
  noZeroes: boolean,
): Buffer {
  const buffer = Buffer.alloc(10 + (noZeroes ? 0 : EXPORT_NAME_REPLY_ZEROES_BYTES));
  buffer.writeBigUInt64BE(BigInt(sizeBytes), 0);
  buffer.writeUInt16BE(transmissionFlags, 8);
  return buffer;
}

// ---- Transmission codecs --------------------------------------------------------------

export interface Request {
  magic: number;
  flags: number;
  type: number;
  cookie: bigint;
  /** Beyond 2^53 it is out of range for any export: kept as bigint so nothing is lost. */
  offset: bigint;
  length: number;
}

export function decodeRequest(bytes: Uint8Array): Request {
  const view = asBuffer(bytes);
  return {
    magic: view.readUInt32BE(0),
    flags: view.readUInt16BE(4),
    type: view.readUInt16BE(6),
    cookie: view.readBigUInt64BE(8),
    offset: view.readBigUInt64BE(16),
    length: view.readUInt32BE(24),
  };
}

export function encodeRequest(request: Omit<Request, 'magic'> & { magic?: number }): Buffer {
  const buffer = Buffer.alloc(REQUEST_HEADER_BYTES);
  buffer.writeUInt32BE(request.magic ?? NBD_REQUEST_MAGIC, 0);
  buffer.writeUInt16BE(request.flags, 4);
  buffer.writeUInt16BE(request.type, 6);
  buffer.writeBigUInt64BE(request.cookie, 8);
  buffer.writeBigUInt64BE(request.offset, 16);
  buffer.writeUInt32BE(request.length, 24);
  return buffer;
}

export function encodeSimpleReply(cookie: bigint, errno: number): Buffer {
  const buffer = Buffer.alloc(SIMPLE_REPLY_HEADER_BYTES);
  buffer.writeUInt32BE(NBD_SIMPLE_REPLY_MAGIC, 0);
  buffer.writeUInt32BE(errno, 4);
  buffer.writeBigUInt64BE(cookie, 8);
  return buffer;
}

/** A structured chunk header followed by `prefix` (payload fields before any bulk data). */
export function encodeChunkHeader(
  cookie: bigint,
  flags: number,
  type: number,
  payloadBytes: number,
  prefix: Uint8Array = Buffer.alloc(0),
): Buffer {
  const buffer = Buffer.alloc(STRUCTURED_REPLY_HEADER_BYTES + prefix.length);
  buffer.writeUInt32BE(NBD_STRUCTURED_REPLY_MAGIC, 0);
  buffer.writeUInt16BE(flags, 4);
  buffer.writeUInt16BE(type, 6);
  buffer.writeBigUInt64BE(cookie, 8);
  buffer.writeUInt32BE(payloadBytes, 16);
  buffer.set(prefix, STRUCTURED_REPLY_HEADER_BYTES);
  return buffer;
}

export interface ChunkHeader {
  flags: number;
  type: number;
  cookie: bigint;
  length: number;
}

/** Decodes the 20-byte structured chunk header (the magic is checked by the caller). */
export function decodeChunkHeader(bytes: Uint8Array): ChunkHeader {
  const view = asBuffer(bytes);
  return {
    flags: view.readUInt16BE(4),
    type: view.readUInt16BE(6),
    cookie: view.readBigUInt64BE(8),
    length: view.readUInt32BE(16),
  };
}

/** Header + offset of an OFFSET_DATA chunk; the data itself is written after it, uncopied. */
export function encodeOffsetDataHeader(
  cookie: bigint,
  flags: number,
  offset: number,
  dataBytes: number,
): Buffer {
  const prefix = Buffer.alloc(8);
  prefix.writeBigUInt64BE(BigInt(offset), 0);
  return encodeChunkHeader(cookie, flags, NBD_REPLY_TYPE_OFFSET_DATA, 8 + dataBytes, prefix);
}

export function encodeOffsetHoleChunk(
  cookie: bigint,
  flags: number,
  offset: number,
  holeBytes: number,
): Buffer {
  const payload = Buffer.alloc(12);
  payload.writeBigUInt64BE(BigInt(offset), 0);
  payload.writeUInt32BE(holeBytes, 8);
  return encodeChunkHeader(cookie, flags, NBD_REPLY_TYPE_OFFSET_HOLE, 12, payload);
}

/** An ERROR chunk, or ERROR_OFFSET when `offset` is given. Always the final chunk here. */
export function encodeErrorChunk(
  cookie: bigint,
  errno: number,
  message: string,
  offset?: number,
): Buffer {
  const text = truncateUtf8(message, MAX_ERROR_MESSAGE_BYTES);
  const payload = Buffer.alloc(6 + text.length + (offset === undefined ? 0 : 8));
  payload.writeUInt32BE(errno, 0);
  payload.writeUInt16BE(text.length, 4);
  text.copy(payload, 6);
  if (offset !== undefined) payload.writeBigUInt64BE(BigInt(offset), 6 + text.length);
  const type = offset === undefined ? NBD_REPLY_TYPE_ERROR : NBD_REPLY_TYPE_ERROR_OFFSET;
  return encodeChunkHeader(cookie, NBD_REPLY_FLAG_DONE, type, payload.length, payload);
}

export function decodeErrorPayload(
  type: number,
  bytes: Uint8Array,
): { errno: number; message: string; offset?: number } {
  const view = asBuffer(bytes);
  if (view.length < 6) throw invalid('error chunk shorter than 6 bytes');
  const errno = view.readUInt32BE(0);
  const messageBytes = view.readUInt16BE(4);
  if (messageBytes > view.length - 6) throw invalid('error message overruns its chunk');
  const message = view.toString('utf8', 6, 6 + messageBytes);
  if (type === NBD_REPLY_TYPE_ERROR_OFFSET) {
    if (view.length !== 6 + messageBytes + 8) throw invalid('ERROR_OFFSET chunk of wrong length');
    return { errno, message, offset: Number(view.readBigUInt64BE(6 + messageBytes)) };
  }
  return { errno, message };
}

export interface BlockStatusDescriptor {
  length: number;
  flags: number;
}

export function encodeBlockStatusChunk(
  cookie: bigint,
  flags: number,
  contextId: number,
  descriptors: readonly BlockStatusDescriptor[],
): Buffer {
  const payload = Buffer.alloc(4 + 8 * descriptors.length);
  payload.writeUInt32BE(contextId, 0);
  descriptors.forEach((descriptor, index) => {
    payload.writeUInt32BE(descriptor.length, 4 + 8 * index);
    payload.writeUInt32BE(descriptor.flags, 8 + 8 * index);
  });
  return encodeChunkHeader(cookie, flags, NBD_REPLY_TYPE_BLOCK_STATUS, payload.length, payload);
}

export function decodeBlockStatusPayload(bytes: Uint8Array): {
  contextId: number;
  descriptors: BlockStatusDescriptor[];
} {
  const view = asBuffer(bytes);
  if (view.length < 12 || (view.length - 4) % 8 !== 0) {
    throw invalid(`BLOCK_STATUS chunk of ${view.length} bytes`);
  }
  const descriptors: BlockStatusDescriptor[] = [];
  for (let at = 4; at < view.length; at += 8) {
    descriptors.push({ length: view.readUInt32BE(at), flags: view.readUInt32BE(at + 4) });
  }
  return { contextId: view.readUInt32BE(0), descriptors };
}

// ---- Helpers --------------------------------------------------------------------------

function asBuffer(bytes: Uint8Array): Buffer {
  return Buffer.isBuffer(bytes) ? bytes : Buffer.from(bytes.buffer, bytes.byteOffset, bytes.length);
}

function u32(value: number): Buffer {
  const buffer = Buffer.alloc(4);
  buffer.writeUInt32BE(value, 0);
  return buffer;
}

function invalid(message: string): CisternError {
  return new CisternError('BAD_REQUEST', message);
}

/** UTF-8 bytes of `text`, cut at a character boundary so the result is at most `maxBytes`. */
export function truncateUtf8(text: string, maxBytes: number): Buffer {
  const bytes = Buffer.from(text, 'utf8');
  if (bytes.length <= maxBytes) return bytes;
  let end = maxBytes;
  // Step back over continuation bytes (10xxxxxx) so no character is cut in half.
  while (end > 0 && ((bytes[end] ?? 0) & 0xc0) === 0x80) end -= 1;
  return bytes.subarray(0, end);
}

/** A spec-conforming string: at most MAX_STRING_BYTES, valid UTF-8, no NUL. */
function checkedString(bytes: Buffer, what: string): string {
  if (bytes.length > MAX_STRING_BYTES) throw invalid(`${what}: string of ${bytes.length} bytes`);
  if (bytes.includes(0)) throw invalid(`${what}: string contains NUL`);
  const text = bytes.toString('utf8');
  // A string that does not survive a UTF-8 round trip was not valid UTF-8.
  if (!Buffer.from(text, 'utf8').equals(bytes)) throw invalid(`${what}: string is not UTF-8`);
  return text;
}

/** Reads length-checked fields from option data; any overrun is BAD_REQUEST, never a throw from Buffer. */
class FieldReader {
  private at = 0;
  private readonly view: Buffer;
  constructor(
    bytes: Uint8Array,
    private readonly what: string,
  ) {
    this.view = asBuffer(bytes);
  }
  private need(count: number): void {
    if (this.view.length - this.at < count) throw invalid(`${this.what}: data ends early`);
  }
  u16(): number {
    this.need(2);
    const value = this.view.readUInt16BE(this.at);
    this.at += 2;
    return value;
  }
  u32(): number {
    this.need(4);
    const value = this.view.readUInt32BE(this.at);
    this.at += 4;
    return value;
  }
  string32(maxBytes: number): string {
    const length = this.u32();
    if (length > maxBytes)
      throw invalid(`${this.what}: string of ${length} bytes (max ${maxBytes})`);
    this.need(length);
    const bytes = this.view.subarray(this.at, this.at + length);
    this.at += length;
    return checkedString(bytes, this.what);
  }
  end(): void {
    if (this.at !== this.view.length)
      throw invalid(`${this.what}: ${this.view.length - this.at} trailing bytes`);
  }
}
