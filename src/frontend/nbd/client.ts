// A small NBD client: fixed newstyle, NBD_OPT_GO, structured replies, base:allocation,
// and the data commands. Used by our CLI and tests (npm has no maintained NBD client).
// It pipelines: any number of requests may be outstanding and replies are matched by
// cookie, in whatever order the server sends them. It trusts the server no more than the
// server trusts it: malformed or oversized replies end the connection with an error.

import * as net from 'node:net';
import { assert } from '../../util/assert';
import { CisternError } from '../../util/errors';
import { ByteQueue } from './byte-queue';
import * as P from './protocol';

export type NbdTarget = { host: string; port: number } | { path: string };

export interface NbdConnectOptions {
  /** Export to open; '' asks for the server's default export. */
  exportName?: string;
  /** Negotiate structured replies (default true). */
  structuredReplies?: boolean;
  /** Select base:allocation so blockStatus works (default true; needs structured replies). */
  blockStatus?: boolean;
  /** Give up on connecting and negotiating after this long. */
  handshakeTimeoutMs?: number;
}

export interface NbdExtent {
  length: number;
  hole: boolean;
  zero: boolean;
}

export interface NbdExportListing {
  name: string;
  description: string;
}

/** Largest reply chunk we accept: a full-size read plus its offset field. */
const MAX_REPLY_CHUNK_BYTES = P.MAX_REQUEST_PAYLOAD_BYTES + 8;
const MAX_OPTION_REPLY_BYTES = P.MAX_OPTION_DATA_BYTES;
const DEFAULT_HANDSHAKE_TIMEOUT_MS = 30_000;

interface Pending {
  type: number;
  offset: number;
  length: number;
  resolve: (value: unknown) => void;
  reject: (error: Error) => void;
  /** READ: the buffer chunks fill; BLOCK_STATUS: descriptors collected. */
  buffer?: Buffer;
  coveredBytes: number;
  descriptors?: P.BlockStatusDescriptor[];
  error?: P.NbdRequestError;
}

export class NbdClient {
  private readonly queue = new ByteQueue();
  private readonly pending = new Map<bigint, Pending>();
  private nextCookie = 1n;
  private waiter:
    { count: number; resolve: (bytes: Buffer) => void; reject: (error: Error) => void } | undefined;
  private handshaking = true;
  private failure: Error | undefined;
  private readonly closedPromise: Promise<void>;

  exportName = '';
  sizeBytes = 0;
  transmissionFlags = 0;
  structuredReplies = false;
  blockStatusContextId: number | undefined;
  blockSize: P.BlockSizeConstraints | undefined;
  description: string | undefined;

  private constructor(private readonly socket: net.Socket) {
    this.closedPromise = new Promise((resolve) => socket.once('close', () => resolve()));
    socket.setNoDelay(true);
    socket.on('data', (chunk: Buffer) => {
      this.queue.push(chunk);
      if (this.handshaking) this.satisfyWaiter();
      else this.parseReplies();
    });
    socket.on('error', (error) => this.fail(error));
    socket.on('close', () => this.fail(new CisternError('CLOSED', 'NBD connection closed')));
  }

  /** Connects, negotiates and enters transmission on one export. */
  static async connect(target: NbdTarget, options: NbdConnectOptions = {}): Promise<NbdClient> {
    const client = new NbdClient(await openSocket(target));
    const timeoutMs = options.handshakeTimeoutMs ?? DEFAULT_HANDSHAKE_TIMEOUT_MS;
    const timer = setTimeout(
      () => client.fail(new CisternError('UNAVAILABLE', 'NBD handshake timed out')),
      timeoutMs,
    );
    try {
      await client.greet();
      await client.negotiate(options);
      client.handshaking = false;
      client.parseReplies();
      return client;
    } catch (error) {
      client.socket.destroy();
      throw error;
    } finally {
      clearTimeout(timer);
    }
  }

  /** The server's export list (NBD_OPT_LIST), then a polite NBD_OPT_ABORT. */
  static async list(target: NbdTarget): Promise<NbdExportListing[]> {
    const client = new NbdClient(await openSocket(target));
    try {
      await client.greet();
      client.sendOption(P.NBD_OPT_LIST);
      const exports: NbdExportListing[] = [];
      for (;;) {
        const reply = await client.readOptionReply(P.NBD_OPT_LIST);
        if (reply.replyType === P.NBD_REP_ACK) break;
        if (reply.replyType !== P.NBD_REP_SERVER) throw optionError('NBD_OPT_LIST', reply);
        exports.push(P.decodeServerReply(reply.data));
      }
      client.sendOption(P.NBD_OPT_ABORT);
      client.socket.end();
      return exports;
    } finally {
      client.socket.destroy();
    }
  }

  get size(): number {
    return this.sizeBytes;
  }
  get readOnly(): boolean {
    return this.hasFlag(P.NBD_FLAG_READ_ONLY);
  }
  get canFlush(): boolean {
    return this.hasFlag(P.NBD_FLAG_SEND_FLUSH);
  }
  get canFua(): boolean {
    return this.hasFlag(P.NBD_FLAG_SEND_FUA);
  }
  get canTrim(): boolean {
    return this.hasFlag(P.NBD_FLAG_SEND_TRIM);
  }
  get canWriteZeroes(): boolean {
    return this.hasFlag(P.NBD_FLAG_SEND_WRITE_ZEROES);
  }
  get canFastZero(): boolean {
    return this.hasFlag(P.NBD_FLAG_SEND_FAST_ZERO);
  }
  get canCache(): boolean {
    return this.hasFlag(P.NBD_FLAG_SEND_CACHE);
  }
  get canMultiConn(): boolean {
    return this.hasFlag(P.NBD_FLAG_CAN_MULTI_CONN);
  }
  get inFlight(): number {
    return this.pending.size;
  }
  /** Resolves when the socket has closed, for whatever reason. */
  get closed(): Promise<void> {
    return this.closedPromise;
  }

  read(
    offset: number,
    length: number,
    flags: { fua?: boolean; df?: boolean } = {},
  ): Promise<Buffer> {
    const bits = (flags.fua ? P.NBD_CMD_FLAG_FUA : 0) | (flags.df ? P.NBD_CMD_FLAG_DF : 0);
    return this.request(P.NBD_CMD_READ, bits, offset, length) as Promise<Buffer>;
  }

  async write(offset: number, data: Uint8Array, flags: { fua?: boolean } = {}): Promise<void> {
    await this.request(
      P.NBD_CMD_WRITE,
      flags.fua ? P.NBD_CMD_FLAG_FUA : 0,
      offset,
      data.length,
      data,
    );
  }

  async flush(): Promise<void> {
    await this.request(P.NBD_CMD_FLUSH, 0, 0, 0);
  }

  async trim(offset: number, length: number, flags: { fua?: boolean } = {}): Promise<void> {
    await this.request(P.NBD_CMD_TRIM, flags.fua ? P.NBD_CMD_FLAG_FUA : 0, offset, length);
  }

  async writeZeroes(
    offset: number,
    length: number,
    flags: { fua?: boolean; noHole?: boolean; fastZero?: boolean } = {},
  ): Promise<void> {
    const bits =
      (flags.fua ? P.NBD_CMD_FLAG_FUA : 0) |
      (flags.noHole ? P.NBD_CMD_FLAG_NO_HOLE : 0) |
      (flags.fastZero ? P.NBD_CMD_FLAG_FAST_ZERO : 0);
    await this.request(P.NBD_CMD_WRITE_ZEROES, bits, offset, length);
  }

  async cache(offset: number, length: number): Promise<void> {
    await this.request(P.NBD_CMD_CACHE, 0, offset, length);
  }

  /** base:allocation extents from `offset`; they may cover less than `length`. */
  async blockStatus(
    offset: number,
    length: number,
    flags: { reqOne?: boolean } = {},
  ): Promise<NbdExtent[]> {
    const bits = flags.reqOne ? P.NBD_CMD_FLAG_REQ_ONE : 0;
    const descriptors = (await this.request(
      P.NBD_CMD_BLOCK_STATUS,
      bits,
      offset,
      length,
    )) as P.BlockStatusDescriptor[];
    return descriptors.map((descriptor) => ({
      length: descriptor.length,
      hole: (descriptor.flags & P.NBD_STATE_HOLE) !== 0,
      zero: (descriptor.flags & P.NBD_STATE_ZERO) !== 0,
    }));
  }

  /**
   * Sends any request, for tests that need what the typed methods refuse to send (unknown
   * commands, bad flags). Resolves like the matching typed method would.
   */
  request(
    type: number,
    flags: number,
    offset: number,
    length: number,
    payload?: Uint8Array,
  ): Promise<unknown> {
    if (this.failure !== undefined) return Promise.reject(this.failure);
    assert(Number.isSafeInteger(offset) && offset >= 0, `bad offset ${offset}`);
    assert(Number.isInteger(length) && length >= 0 && length <= P.MAX_U32, `bad length ${length}`);
    const cookie = this.nextCookie;
    this.nextCookie += 1n;
    return new Promise((resolve, reject) => {
      this.pending.set(cookie, { type, offset, length, resolve, reject, coveredBytes: 0 });
      const header = P.encodeRequest({ flags, type, cookie, offset: BigInt(offset), length });
      this.socket.cork();
      this.socket.write(header);
      if (payload !== undefined) this.socket.write(payload);
      process.nextTick(() => this.socket.uncork());
    });
  }

  /** Soft disconnect: NBD_CMD_DISC after every outstanding reply, then close. */
  async disconnect(): Promise<void> {
    if (this.failure === undefined) {
      await Promise.allSettled(
        [...this.pending.values()].map(
          (pending) =>
            new Promise((resolve) => {
              const { resolve: original, reject } = pending;
              pending.resolve = (value) => (original(value), resolve(undefined));
              pending.reject = (error) => (reject(error), resolve(undefined));
            }),
        ),
      );
      const header = P.encodeRequest({
        flags: 0,
        type: P.NBD_CMD_DISC,
        cookie: 0n,
        offset: 0n,
        length: 0,
      });
      this.socket.end(header);
    }
    await this.closedPromise;
  }

  /** Hard disconnect. */
  destroy(): void {
    this.socket.destroy();
  }

  private hasFlag(flag: number): boolean {
    return (this.transmissionFlags & flag) !== 0;
  }

  // ---- Handshake ----------------------------------------------------------------------

  private async greet(): Promise<void> {
    const greeting = await this.readBytes(P.GREETING_BYTES);
    if (
      greeting.readBigUInt64BE(0) !== P.NBD_MAGIC ||
      greeting.readBigUInt64BE(8) !== P.NBD_IHAVEOPT
    ) {
      throw new CisternError('BAD_REQUEST', 'not a fixed-newstyle NBD server');
    }
    const handshakeFlags = greeting.readUInt16BE(16);
    if ((handshakeFlags & P.NBD_FLAG_FIXED_NEWSTYLE) === 0) {
      throw new CisternError('ENOTSUP', 'server does not speak fixed newstyle');
    }
    const clientFlags = Buffer.alloc(4);
    clientFlags.writeUInt32BE(
      P.NBD_FLAG_C_FIXED_NEWSTYLE |
        (handshakeFlags & P.NBD_FLAG_NO_ZEROES ? P.NBD_FLAG_C_NO_ZEROES : 0),
      0,
    );
    this.socket.write(clientFlags);
  }

  private async negotiate(options: NbdConnectOptions): Promise<void> {
    this.exportName = options.exportName ?? '';
    if (options.structuredReplies ?? true) {
      this.sendOption(P.NBD_OPT_STRUCTURED_REPLY);
      const reply = await this.readOptionReply(P.NBD_OPT_STRUCTURED_REPLY);
      this.structuredReplies = reply.replyType === P.NBD_REP_ACK;
    }
    if (this.structuredReplies && (options.blockStatus ?? true)) {
      const data = P.encodeMetaContextRequest({
        exportName: this.exportName,
        queries: [P.BASE_ALLOCATION],
      });
      this.sendOption(P.NBD_OPT_SET_META_CONTEXT, data);
      for (;;) {
        const reply = await this.readOptionReply(P.NBD_OPT_SET_META_CONTEXT);
        if (reply.replyType === P.NBD_REP_ACK) break;
        if (reply.replyType !== P.NBD_REP_META_CONTEXT)
          throw optionError('NBD_OPT_SET_META_CONTEXT', reply);
        const context = P.decodeMetaContextReply(reply.data);
        if (context.name === P.BASE_ALLOCATION) this.blockStatusContextId = context.contextId;
      }
    }
    const infoTypes = [P.NBD_INFO_NAME, P.NBD_INFO_DESCRIPTION, P.NBD_INFO_BLOCK_SIZE];
    this.sendOption(P.NBD_OPT_GO, P.encodeInfoRequest({ exportName: this.exportName, infoTypes }));
    let sawExport = false;
    for (;;) {
      const reply = await this.readOptionReply(P.NBD_OPT_GO);
      if (reply.replyType === P.NBD_REP_ACK) break;
      if (reply.replyType !== P.NBD_REP_INFO) throw optionError('NBD_OPT_GO', reply);
      const info = P.decodeInfoReply(reply.data);
      if (info.type === 'export') {
        sawExport = true;
        this.sizeBytes = info.sizeBytes;
        this.transmissionFlags = info.transmissionFlags;
      } else if (info.type === 'block-size') this.blockSize = info.constraints;
      else if (info.type === 'description') this.description = info.description;
    }
    if (!sawExport)
      throw new CisternError('BAD_REQUEST', 'NBD_OPT_GO succeeded without NBD_INFO_EXPORT');
  }

  private sendOption(option: number, data?: Uint8Array): void {
    this.socket.write(P.encodeOption(option, data));
  }

  private async readOptionReply(option: number): Promise<{ replyType: number; data: Buffer }> {
    const header = P.decodeOptionReplyHeader(await this.readBytes(P.OPTION_REPLY_HEADER_BYTES));
    if (header.magic !== P.NBD_OPTION_REPLY_MAGIC || header.option !== option) {
      throw new CisternError('BAD_REQUEST', `bad reply to option ${option}`);
    }
    if (header.length > MAX_OPTION_REPLY_BYTES) {
      throw new CisternError('BAD_REQUEST', `option reply of ${header.length} bytes`);
    }
    return { replyType: header.replyType, data: await this.readBytes(header.length) };
  }

  private readBytes(count: number): Promise<Buffer> {
    assert(this.waiter === undefined, 'two handshake reads at once');
    if (this.failure !== undefined) return Promise.reject(this.failure);
    return new Promise((resolve, reject) => {
      this.waiter = { count, resolve, reject };
      this.satisfyWaiter();
    });
  }

  private satisfyWaiter(): void {
    const waiter = this.waiter;
    if (waiter === undefined || this.queue.length < waiter.count) return;
    this.waiter = undefined;
    waiter.resolve(this.queue.take(waiter.count));
  }

  // ---- Transmission replies ------------------------------------------------------------

  private parseReplies(): void {
    try {
      while (this.parseOneReply()) {
        // keep going while whole replies are queued
      }
    } catch (error) {
      this.fail(error instanceof Error ? error : new Error(String(error)));
      this.socket.destroy();
    }
  }

  private parseOneReply(): boolean {
    if (this.queue.length < 4) return false;
    const magic = this.queue.peek(4).readUInt32BE(0);
    if (magic === P.NBD_SIMPLE_REPLY_MAGIC) return this.parseSimple();
    if (magic === P.NBD_STRUCTURED_REPLY_MAGIC) return this.parseChunk();
    throw new CisternError('BAD_REQUEST', `bad reply magic 0x${magic.toString(16)}`);
  }

  /** Consumes a simple reply only once all of it (with a read's data) has arrived. */
  private parseSimple(): boolean {
    if (this.queue.length < P.SIMPLE_REPLY_HEADER_BYTES) return false;
    const header = this.queue.peek(P.SIMPLE_REPLY_HEADER_BYTES);
    const errno = header.readUInt32BE(4);
    const cookie = header.readBigUInt64BE(8);
    const pending = this.pending.get(cookie);
    if (pending === undefined)
      throw new CisternError('BAD_REQUEST', `reply to unknown cookie ${cookie}`);
    const dataBytes = pending.type === P.NBD_CMD_READ && errno === 0 ? pending.length : 0;
    if (this.queue.length < P.SIMPLE_REPLY_HEADER_BYTES + dataBytes) return false;
    this.queue.discard(P.SIMPLE_REPLY_HEADER_BYTES);
    this.pending.delete(cookie);
    if (errno !== 0) {
      const name = P.NBD_ERRNO_NAMES.get(errno) ?? `errno ${errno}`;
      pending.reject(new P.NbdRequestError(errno, `server replied ${name}`));
    } else if (pending.type === P.NBD_CMD_READ) {
      pending.resolve(Buffer.from(this.queue.take(dataBytes)));
    } else if (pending.type === P.NBD_CMD_BLOCK_STATUS) {
      pending.reject(new CisternError('BAD_REQUEST', 'simple reply to BLOCK_STATUS'));
    } else pending.resolve(undefined);
    return true;
  }

  /** Consumes one structured chunk once all of it has arrived. */
  private parseChunk(): boolean {
    if (this.queue.length < P.STRUCTURED_REPLY_HEADER_BYTES) return false;
    const header = P.decodeChunkHeader(this.queue.peek(P.STRUCTURED_REPLY_HEADER_BYTES));
    if (header.length > MAX_REPLY_CHUNK_BYTES) {
      throw new CisternError('BAD_REQUEST', `reply chunk of ${header.length} bytes`);
    }
    if (this.queue.length < P.STRUCTURED_REPLY_HEADER_BYTES + header.length) return false;
    this.queue.discard(P.STRUCTURED_REPLY_HEADER_BYTES);
    const payload = this.queue.take(header.length);
    const pending = this.pending.get(header.cookie);
    if (pending === undefined) {
      throw new CisternError('BAD_REQUEST', `chunk for unknown cookie ${header.cookie}`);
    }
    this.applyChunk(pending, header, payload);
    if ((header.flags & P.NBD_REPLY_FLAG_DONE) !== 0) {
      this.pending.delete(header.cookie);
      this.complete(pending);
    }
    return true;
  }

  private applyChunk(pending: Pending, header: P.ChunkHeader, payload: Buffer): void {
    if (P.isReplyTypeError(header.type)) {
      const error = P.decodeErrorPayload(header.type, payload);
      pending.error ??= new P.NbdRequestError(
        error.errno,
        error.message || `server replied errno ${error.errno}`,
      );
      return;
    }
    switch (header.type) {
      case P.NBD_REPLY_TYPE_NONE:
        if (header.length !== 0) throw new CisternError('BAD_REQUEST', 'NONE chunk with a payload');
        return;
      case P.NBD_REPLY_TYPE_OFFSET_DATA:
      case P.NBD_REPLY_TYPE_OFFSET_HOLE: {
        if (pending.type !== P.NBD_CMD_READ)
          throw new CisternError('BAD_REQUEST', 'data chunk for a non-read');
        const isData = header.type === P.NBD_REPLY_TYPE_OFFSET_DATA;
        if ((isData && payload.length < 9) || (!isData && payload.length !== 12)) {
          throw new CisternError('BAD_REQUEST', 'malformed read chunk');
        }
        const offset = Number(payload.readBigUInt64BE(0));
        const bytes = isData ? payload.length - 8 : payload.readUInt32BE(8);
        const at = offset - pending.offset;
        if (at < 0 || bytes === 0 || at + bytes > pending.length) {
          throw new CisternError('BAD_REQUEST', 'read chunk outside the request');
        }
        pending.buffer ??= Buffer.alloc(pending.length);
        if (isData) payload.copy(pending.buffer, at, 8);
        else pending.buffer.fill(0, at, at + bytes);
        pending.coveredBytes += bytes;
        return;
      }
      case P.NBD_REPLY_TYPE_BLOCK_STATUS: {
        if (pending.type !== P.NBD_CMD_BLOCK_STATUS)
          throw new CisternError('BAD_REQUEST', 'block status for another command');
        const status = P.decodeBlockStatusPayload(payload);
        if (status.contextId === this.blockStatusContextId)
          pending.descriptors = status.descriptors;
        return;
      }
      default:
        throw new CisternError('BAD_REQUEST', `unknown reply chunk type ${header.type}`);
    }
  }

  private complete(pending: Pending): void {
    if (pending.error !== undefined) {
      pending.reject(pending.error);
      return;
    }
    if (pending.type === P.NBD_CMD_READ) {
      // Chunks never overlap (checked by sum), so full coverage means every byte arrived.
      if (pending.coveredBytes !== pending.length) {
        pending.reject(
          new CisternError(
            'BAD_REQUEST',
            `read reply covered ${pending.coveredBytes} of ${pending.length} bytes`,
          ),
        );
      } else pending.resolve(pending.buffer ?? Buffer.alloc(0));
      return;
    }
    if (pending.type === P.NBD_CMD_BLOCK_STATUS) {
      if (pending.descriptors === undefined || pending.descriptors.length === 0) {
        pending.reject(new CisternError('BAD_REQUEST', 'block status reply without descriptors'));
      } else pending.resolve(pending.descriptors);
      return;
    }
    pending.resolve(undefined);
  }

  private fail(error: Error): void {
    this.failure ??= error;
    const waiter = this.waiter;
    this.waiter = undefined;
    waiter?.reject(this.failure);
    for (const pending of this.pending.values()) pending.reject(this.failure);
    this.pending.clear();
  }
}

function openSocket(target: NbdTarget): Promise<net.Socket> {
  return new Promise((resolve, reject) => {
    const socket =
      'path' in target ? net.connect(target.path) : net.connect(target.port, target.host);
    socket.once('connect', () => {
      socket.off('error', reject);
      resolve(socket);
    });
    socket.once('error', reject);
  });
}

function optionError(what: string, reply: { replyType: number; data: Buffer }): CisternError {
  const message = reply.data.toString('utf8');
  const code = reply.replyType === P.NBD_REP_ERR_UNKNOWN ? 'UNKNOWN_VOLUME' : 'EINVAL';
  return new CisternError(code, `${what} refused (0x${reply.replyType.toString(16)}): ${message}`);
}
