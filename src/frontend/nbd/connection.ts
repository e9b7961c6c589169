// One NBD client connection: the fixed-newstyle handshake, then the transmission phase.
//
// Reading is a state machine over a ByteQueue, driven by `pump()` whenever bytes arrive or
// work completes. It stops reading the socket (back-pressure) whenever it cannot take on
// more: an option is being answered, the in-flight request or byte bound is reached, or
// the connection is winding down. Requests run concurrently and are answered in whatever
// order they finish, matched by cookie. A request stays "in flight" until its reply has
// been handed to the kernel, so a client that sends but never reads stops being read too:
// memory per connection is bounded by the limits below whatever the client does.

import type { Socket } from 'node:net';
import { assert } from '../../util/assert';
import { CisternError, isCisternError } from '../../util/errors';
import type { ExportProvider, Extent, VolumeHandle } from '../../volume/backend';
import { ByteQueue } from './byte-queue';
import { BatchedWriter, ReadGate } from '../../net/connections';
import * as P from './protocol';

/** Everything a connection needs from its server; the server owns the defaults. */
export interface ConnectionConfig {
  provider: ExportProvider;
  readOnly: boolean;
  defaultExport: string | undefined;
  maxInFlightRequests: number;
  maxInFlightBytes: number;
  blockSize: P.BlockSizeConstraints;
  handshakeTimeoutMs: number;
  shutdownGraceMs: number;
  onUnexpectedError: (error: unknown) => void;
}

/**
 * Options one handshake may send. nbdinfo --list sends a few per export, so this is
 * generous; its job is to end a client that loops forever in option haggling.
 */
export const MAX_OPTIONS_PER_HANDSHAKE = 16384;

type Phase =
  | 'client-flags'
  | 'option-header'
  | 'option-data'
  | 'option-skip'
  | 'option-busy'
  | 'request-header'
  | 'write-payload'
  | 'write-skip'
  | 'draining'
  | 'closed';

/** A request between being read and its reply reaching the kernel. */
interface InFlight {
  readonly request: P.Request;
  /** Bytes it holds in memory (write payload or read buffer), counted against maxInFlightBytes. */
  readonly chargeBytes: number;
  replied: boolean;
  /** Its charge has been given back (set once, whatever the socket does). */
  released: boolean;
  /** Gives a lent read buffer back to the volume layer once the reply is out. */
  releaseData: (() => void) | undefined;
}

interface MetaSelection {
  exportName: string;
  contexts: string[];
}

const zeroes64KiB = Buffer.alloc(64 * 1024);

export class NbdConnection {
  private readonly queue = new ByteQueue();
  private phase: Phase = 'client-flags';
  private noZeroes = false;
  private structuredReplies = false;
  private metaSelection: MetaSelection | undefined;
  private optionCount = 0;
  private currentOption: P.OptionHeader | undefined;
  private skipRemainingBytes = 0;
  private currentRequest: P.Request | undefined;
  private handle: VolumeHandle | undefined;
  private exportReadOnly = false;
  private blockStatusEnabled = false;
  private inFlightRequests = 0;
  private inFlightBytes = 0;
  private shuttingDown = false;
  private graceTimer: NodeJS.Timeout | undefined;
  private readonly closedPromise: Promise<void>;

  /** Replies in order, those of one tick in one batch. */
  private readonly writer: BatchedWriter;
  /** Reads paused while the connection is at a bound. */
  private readonly readGate: ReadGate;

  constructor(
    private readonly socket: Socket,
    private readonly config: ConnectionConfig,
  ) {
    this.writer = new BatchedWriter(socket);
    this.readGate = new ReadGate(socket);
    let resolveClosed!: () => void;
    this.closedPromise = new Promise((resolve) => (resolveClosed = resolve));
    socket.setNoDelay(true);
    socket.setTimeout(config.handshakeTimeoutMs);
    socket.on('timeout', () => {
      if (this.inHandshake()) socket.destroy();
    });
    socket.on('data', (chunk: Buffer) => {
      this.queue.push(chunk);
      this.pump();
    });
    socket.on('end', () => {
      // The client will send nothing more; finish what is in flight, then close.
      if (this.phase !== 'closed') this.drain();
    });
    socket.on('error', () => {
      // ECONNRESET and friends: 'close' follows and does the cleanup.
    });
    socket.on('close', () => {
      this.onClosed().then(resolveClosed, (error: unknown) => {
        this.config.onUnexpectedError(error);
        resolveClosed();
      });
    });
    this.send([P.encodeGreeting(P.NBD_FLAG_FIXED_NEWSTYLE | P.NBD_FLAG_NO_ZEROES)]);
  }

  /** Resolves when the socket has closed and the volume handle is released. */
  get closed(): Promise<void> {
    return this.closedPromise;
  }

  /**
   * Server shutdown: a connection still negotiating is dropped; one in transmission stops
   * reading, finishes its in-flight requests, then closes. After the grace period it is
   * dropped regardless (a client that never reads its replies must not block shutdown).
   */
  shutdown(): void {
    if (this.phase === 'closed') return;
    this.shuttingDown = true;
    if (this.inHandshake()) {
      this.socket.destroy();
      return;
    }
    this.graceTimer = setTimeout(() => this.socket.destroy(), this.config.shutdownGraceMs);
    this.graceTimer.unref();
    this.drain();
  }

  private inHandshake(): boolean {
    return (
      this.phase === 'client-flags' ||
      this.phase === 'option-header' ||
      this.phase === 'option-data' ||
      this.phase === 'option-skip' ||
      this.phase === 'option-busy'
    );
  }

  // ---- Reading --------------------------------------------------------------------------

  private pump(): void {
    try {
      while (this.step()) {
        // Each step consumed input or changed phase; loop until it cannot.
      }
      this.updateFlowControl();
    } catch (error) {
      this.config.onUnexpectedError(error);
      this.socket.destroy();
    }
  }

  private updateFlowControl(): void {
    const shouldPause =
      this.phase === 'option-busy' ||
      this.phase === 'draining' ||
      this.phase === 'closed' ||
      this.atInFlightBound();
    this.readGate.pauseWhile(shouldPause);
  }

  private atInFlightBound(): boolean {
    return (
      this.inFlightRequests >= this.config.maxInFlightRequests ||
      this.inFlightBytes >= this.config.maxInFlightBytes
    );
  }

  /** One unit of progress; false when waiting for bytes or for work to finish. */
  private step(): boolean {
    switch (this.phase) {
      case 'client-flags':
        return this.readClientFlags();
      case 'option-header':
        return this.readOptionHeader();
      case 'option-data':
        return this.readOptionData();
      case 'option-skip':
        return this.skipOption();
      case 'request-header':
        return this.readRequestHeader();
      case 'write-payload':
        return this.readWritePayload();
      case 'write-skip':
        return this.skipWritePayload();
      case 'option-busy':
      case 'draining':
      case 'closed':
        return false;
    }
  }

  private readClientFlags(): boolean {
    if (this.queue.length < P.CLIENT_FLAGS_BYTES) return false;
    const flags = this.queue.take(P.CLIENT_FLAGS_BYTES).readUInt32BE(0);
    // The spec: the server MUST drop the connection on flags it does not know.
    if ((flags & ~P.NBD_CLIENT_FLAGS_KNOWN) !== 0) return this.hardClose();
    this.noZeroes = (flags & P.NBD_FLAG_C_NO_ZEROES) !== 0;
    this.phase = 'option-header';
    return true;
  }

  private readOptionHeader(): boolean {
    if (this.queue.length < P.OPTION_HEADER_BYTES) return false;
    const header = P.decodeOptionHeader(this.queue.take(P.OPTION_HEADER_BYTES));
    if (header.magic !== P.NBD_IHAVEOPT) return this.hardClose();
    this.optionCount += 1;
    if (this.optionCount > MAX_OPTIONS_PER_HANDSHAKE) return this.hardClose();
    this.currentOption = header;
    if (header.length > P.MAX_OPTION_DATA_BYTES) {
      if (header.length > P.MAX_SKIPPABLE_OPTION_BYTES) return this.hardClose();
      this.skipRemainingBytes = header.length;
      this.phase = 'option-skip';
      return true;
    }
    this.phase = 'option-data';
    return true;
  }

  private readOptionData(): boolean {
    const option = this.currentOption;
    assert(option !== undefined, 'option data without a header');
    if (this.queue.length < option.length) return false;
    const data = this.queue.take(option.length);
    this.phase = 'option-busy';
    this.handleOption(option.option, data).then(
      (next) =>
        this.guard(() => {
          if (this.phase !== 'option-busy') return; // closed meanwhile
          this.phase = next;
          if (next === 'request-header') this.socket.setTimeout(0);
          if (next === 'draining') this.drain();
          this.pump();
        }),
      (error: unknown) => {
        this.config.onUnexpectedError(error);
        this.socket.destroy();
      },
    );
    return false;
  }

  private skipOption(): boolean {
    const option = this.currentOption;
    assert(option !== undefined, 'option skip without a header');
    this.skipRemainingBytes -= this.queue.discard(this.skipRemainingBytes);
    if (this.skipRemainingBytes > 0) return false;
    this.sendOptionReply(option.option, P.NBD_REP_ERR_TOO_BIG, 'option data too large');
    this.phase = 'option-header';
    return true;
  }

  private readRequestHeader(): boolean {
    if (this.atInFlightBound()) return false;
    if (this.queue.length < P.REQUEST_HEADER_BYTES) return false;
    const request = P.decodeRequest(this.queue.take(P.REQUEST_HEADER_BYTES));
    // A bad magic means we have lost the framing: nothing after it can be trusted.
    if (request.magic !== P.NBD_REQUEST_MAGIC) return this.hardClose();
    if (request.type === P.NBD_CMD_WRITE && request.length > 0) {
      if (request.length > P.MAX_REQUEST_PAYLOAD_BYTES) {
        if (request.length > P.MAX_SKIPPABLE_WRITE_BYTES) return this.hardClose();
        this.currentRequest = request;
        this.skipRemainingBytes = request.length;
        this.phase = 'write-skip';
        return true;
      }
      this.currentRequest = request;
      this.phase = 'write-payload';
      return true;
    }
    this.dispatch(request, undefined);
    return true;
  }

  private readWritePayload(): boolean {
    const request = this.currentRequest;
    assert(request !== undefined, 'write payload without a request');
    if (this.queue.length < request.length) return false;
    const payload = this.queue.take(request.length);
    this.currentRequest = undefined;
    this.phase = 'request-header';
    this.dispatch(request, payload);
    return true;
  }

  private skipWritePayload(): boolean {
    const request = this.currentRequest;
    assert(request !== undefined, 'write skip without a request');
    this.skipRemainingBytes -= this.queue.discard(this.skipRemainingBytes);
    if (this.skipRemainingBytes > 0) return false;
    this.currentRequest = undefined;
    this.phase = 'request-header';
    this.replyError(
      this.beginRequest(request, 0),
      P.NBD_EINVAL,
      `write of ${request.length} bytes exceeds the ${P.MAX_REQUEST_PAYLOAD_BYTES}-byte maximum`,
    );
    return true;
  }

  private hardClose(): boolean {
    this.phase = 'closed';
    this.queue.clear();
    this.socket.destroy();
    return false;
  }

  // ---- Handshake ------------------------------------------------------------------------

  private async handleOption(option: number, data: Buffer): Promise<Phase> {
    switch (option) {
      case P.NBD_OPT_EXPORT_NAME:
        return this.optionExportName(data);
      case P.NBD_OPT_ABORT:
        this.sendOptionReply(option, P.NBD_REP_ACK);
        return 'draining';
      case P.NBD_OPT_LIST:
        return this.optionList(data);
      case P.NBD_OPT_INFO:
      case P.NBD_OPT_GO:
        return this.optionInfoOrGo(option, data);
      case P.NBD_OPT_STRUCTURED_REPLY:
        if (data.length !== 0) return this.refuse(option, P.NBD_REP_ERR_INVALID, 'takes no data');
        this.structuredReplies = true;
        this.sendOptionReply(option, P.NBD_REP_ACK);
        return 'option-header';
      case P.NBD_OPT_LIST_META_CONTEXT:
      case P.NBD_OPT_SET_META_CONTEXT:
        return this.optionMetaContext(option, data);
      default:
        // STARTTLS included: this server runs in the spec's NOTLS mode.
        return this.refuse(option, P.NBD_REP_ERR_UNSUP, `option ${option} is not supported`);
    }
  }

  private refuse(option: number, replyType: number, message: string): Phase {
    this.sendOptionReply(option, replyType, message);
    return 'option-header';
  }

  private resolveExportName(requested: string): string {
    return requested === '' ? (this.config.defaultExport ?? '') : requested;
  }

  private async optionExportName(data: Buffer): Promise<Phase> {
    // This option cannot be answered with an error: the spec says hang up instead.
    let name: string;
    try {
      name = this.resolveExportName(P.decodeExportName(data));
    } catch {
      this.hardClose();
      return 'closed';
    }
    const handle = await this.openExport(name);
    if (handle === undefined || this.phase !== 'option-busy') {
      await handle?.close();
      this.hardClose();
      return 'closed';
    }
    this.enterTransmission(handle, name);
    this.send([P.encodeExportNameReply(handle.size, this.transmissionFlags(), this.noZeroes)]);
    return 'request-header';
  }

  private async optionList(data: Buffer): Promise<Phase> {
    if (data.length !== 0)
      return this.refuse(P.NBD_OPT_LIST, P.NBD_REP_ERR_INVALID, 'takes no data');
    if (this.shuttingDown)
      return this.refuse(P.NBD_OPT_LIST, P.NBD_REP_ERR_SHUTDOWN, 'shutting down');
    for (const info of await this.config.provider.list()) {
      const reply = P.encodeServerReply(info.name, info.description);
      this.sendOptionReply(P.NBD_OPT_LIST, P.NBD_REP_SERVER, reply);
    }
    this.sendOptionReply(P.NBD_OPT_LIST, P.NBD_REP_ACK);
    return 'option-header';
  }

  private async optionInfoOrGo(option: number, data: Buffer): Promise<Phase> {
    let request: P.InfoRequest;
    try {
      request = P.decodeInfoRequest(data);
    } catch (error) {
      return this.refuse(option, P.NBD_REP_ERR_INVALID, messageOf(error));
    }
    if (this.shuttingDown) return this.refuse(option, P.NBD_REP_ERR_SHUTDOWN, 'shutting down');
    const name = this.resolveExportName(request.exportName);
    let description: string | undefined;
    if (request.infoTypes.includes(P.NBD_INFO_DESCRIPTION)) {
      const exports = await this.config.provider.list();
      description = exports.find((info) => info.name === name)?.description ?? '';
    }
    let handle: VolumeHandle;
    try {
      handle = await this.config.provider.open(name, { readOnly: this.config.readOnly });
    } catch (error) {
      return this.refuse(option, openFailureReply(error), messageOf(error));
    }
    if (this.phase !== 'option-busy') {
      await handle.close(); // the connection ended while the volume was opening
      return 'closed';
    }
    const readOnly = this.config.readOnly || handle.readOnly;
    const flags = this.transmissionFlags(readOnly);
    const replies: Buffer[] = [P.encodeInfoExport(handle.size, flags)];
    if (request.infoTypes.includes(P.NBD_INFO_NAME)) {
      replies.push(P.encodeInfoString(P.NBD_INFO_NAME, name));
    }
    if (description !== undefined) {
      replies.push(P.encodeInfoString(P.NBD_INFO_DESCRIPTION, description));
    }
    // Sent whether asked or not (the spec allows it): the maximum tells clients our bound.
    replies.push(P.encodeInfoBlockSize(this.config.blockSize));
    for (const reply of replies) this.sendOptionReply(option, P.NBD_REP_INFO, reply);
    this.sendOptionReply(option, P.NBD_REP_ACK);
    if (option === P.NBD_OPT_INFO) {
      await handle.close();
      return 'option-header';
    }
    this.enterTransmission(handle, name);
    return 'request-header';
  }

  private async optionMetaContext(option: number, data: Buffer): Promise<Phase> {
    if (!this.structuredReplies) {
      return this.refuse(option, P.NBD_REP_ERR_INVALID, 'negotiate structured replies first');
    }
    let request: P.MetaContextRequest;
    try {
      request = P.decodeMetaContextRequest(data);
    } catch (error) {
      return this.refuse(option, P.NBD_REP_ERR_INVALID, messageOf(error));
    }
    const name = this.resolveExportName(request.exportName);
    const exports = await this.config.provider.list();
    if (!exports.some((info) => info.name === name)) {
      return this.refuse(option, P.NBD_REP_ERR_UNKNOWN, `no export named "${name}"`);
    }
    const isSet = option === P.NBD_OPT_SET_META_CONTEXT;
    const contexts = P.matchMetaContexts(request.queries, !isSet);
    for (const context of contexts) {
      // LIST replies carry id 0 (the spec reserves it there); SET assigns the real id.
      const id = isSet ? P.BASE_ALLOCATION_CONTEXT_ID : 0;
      this.sendOptionReply(option, P.NBD_REP_META_CONTEXT, P.encodeMetaContextReply(id, context));
    }
    if (isSet) this.metaSelection = { exportName: name, contexts };
    this.sendOptionReply(option, P.NBD_REP_ACK);
    return 'option-header';
  }

  private async openExport(name: string): Promise<VolumeHandle | undefined> {
    if (this.shuttingDown) return undefined;
    try {
      return await this.config.provider.open(name, { readOnly: this.config.readOnly });
    } catch (error) {
      if (!isCisternError(error)) this.config.onUnexpectedError(error);
      return undefined;
    }
  }

  private enterTransmission(handle: VolumeHandle, name: string): void {
    this.handle = handle;
    this.exportReadOnly = this.config.readOnly || handle.readOnly;
    // Contexts chosen for another export do not carry over (the spec ties them to a name).
    const selection = this.metaSelection;
    this.blockStatusEnabled =
      selection !== undefined &&
      selection.exportName === name &&
      selection.contexts.includes(P.BASE_ALLOCATION);
  }

  private transmissionFlags(readOnly = this.exportReadOnly): number {
    let flags =
      P.NBD_FLAG_HAS_FLAGS |
      P.NBD_FLAG_SEND_FLUSH |
      P.NBD_FLAG_SEND_CACHE |
      P.NBD_FLAG_CAN_MULTI_CONN;
    // Every reply to a READ is one chunk, so "don't fragment" costs us nothing.
    if (this.structuredReplies) flags |= P.NBD_FLAG_SEND_DF;
    if (readOnly) flags |= P.NBD_FLAG_READ_ONLY;
    else {
      flags |= P.NBD_FLAG_SEND_FUA | P.NBD_FLAG_SEND_TRIM;
      flags |= P.NBD_FLAG_SEND_WRITE_ZEROES | P.NBD_FLAG_SEND_FAST_ZERO;
    }
    return flags;
  }

  private sendOptionReply(option: number, replyType: number, data: Buffer | string = ''): void {
    const payload =
      typeof data === 'string' ? P.truncateUtf8(data, P.MAX_ERROR_MESSAGE_BYTES) : data;
    this.send([P.encodeOptionReply(option, replyType, payload)]);
  }

  // ---- Transmission ---------------------------------------------------------------------

  private dispatch(request: P.Request, payload: Buffer | undefined): void {
    if (request.type === P.NBD_CMD_DISC) {
      this.drain();
      return;
    }
    const flight = this.beginRequest(request, Math.max(payload?.length ?? 0, readBytesOf(request)));
    const problem = this.validate(request);
    if (problem !== undefined) {
      this.replyError(flight, problem.errno, problem.message);
      return;
    }
    this.execute(flight, payload).then(
      (reply) => this.guard(reply),
      (error: unknown) =>
        this.guard(() => {
          if (!isCisternError(error)) this.config.onUnexpectedError(error);
          // A failed read sends no data, so the error covers the request from its start.
          const atOffset = request.type === P.NBD_CMD_READ ? Number(request.offset) : undefined;
          this.replyError(flight, P.nbdErrnoFor(error), messageOf(error), atOffset);
        }),
    );
  }

  /** Checks a request against the negotiated features and the export; undefined when fine. */
  private validate(request: P.Request): { errno: number; message: string } | undefined {
    const handle = this.handle;
    assert(handle !== undefined, 'transmission without a volume handle');
    if (this.shuttingDown) return { errno: P.NBD_ESHUTDOWN, message: 'server shutting down' };
    const allowed = P.NBD_CMD_FLAGS_ALLOWED.get(request.type);
    if (allowed === undefined)
      return { errno: P.NBD_EINVAL, message: `unknown command ${request.type}` };
    if (
      (request.flags & ~allowed) !== 0 ||
      ((request.flags & P.NBD_CMD_FLAG_DF) !== 0 && !this.structuredReplies)
    ) {
      return {
        errno: P.NBD_EINVAL,
        message: `flags 0x${request.flags.toString(16)} not valid here`,
      };
    }
    if (request.type === P.NBD_CMD_FLUSH) {
      if (request.offset !== 0n || request.length !== 0) {
        return { errno: P.NBD_EINVAL, message: 'flush takes no offset or length' };
      }
      return undefined;
    }
    const writes =
      request.type === P.NBD_CMD_WRITE ||
      request.type === P.NBD_CMD_TRIM ||
      request.type === P.NBD_CMD_WRITE_ZEROES;
    if (writes && this.exportReadOnly)
      return { errno: P.NBD_EPERM, message: 'export is read-only' };
    if (request.type === P.NBD_CMD_BLOCK_STATUS && !this.blockStatusEnabled) {
      return { errno: P.NBD_EINVAL, message: 'no metadata context was selected' };
    }
    if (request.length === 0) return { errno: P.NBD_EINVAL, message: 'zero-length request' };
    if (request.type === P.NBD_CMD_READ && request.length > P.MAX_REQUEST_PAYLOAD_BYTES) {
      return {
        errno: P.NBD_EOVERFLOW,
        message: `read of ${request.length} bytes exceeds the ${P.MAX_REQUEST_PAYLOAD_BYTES}-byte maximum`,
      };
    }
    if (request.offset + BigInt(request.length) > BigInt(handle.size)) {
      const grows = request.type === P.NBD_CMD_WRITE || request.type === P.NBD_CMD_WRITE_ZEROES;
      return {
        errno: grows ? P.NBD_ENOSPC : P.NBD_EINVAL,
        message: 'beyond the end of the export',
      };
    }
    return undefined;
  }

  /** Runs a valid request against the volume; resolves to the function that sends its reply. */
  private async execute(flight: InFlight, payload: Buffer | undefined): Promise<() => void> {
    const request = flight.request;
    const handle = this.handle;
    assert(handle !== undefined, 'transmission without a volume handle');
    const offset = Number(request.offset);
    const length = request.length;
    const fua = (request.flags & P.NBD_CMD_FLAG_FUA) !== 0;
    switch (request.type) {
      case P.NBD_CMD_READ: {
        // Lent bytes go to the socket as they are and back to the volume layer once the
        // kernel has them (finishRequest); handles without leases return owned copies.
        let data: Uint8Array;
        if (handle.readLeased !== undefined) {
          const lease = await handle.readLeased(offset, length);
          flight.releaseData = () => lease.release();
          data = lease.data;
        } else {
          data = await handle.read(offset, length);
        }
        if (data.length !== length) {
          this.releaseData(flight);
          throw new CisternError(
            'EIO',
            `volume returned ${data.length} bytes for a ${length}-byte read`,
          );
        }
        return () => this.replyRead(flight, data);
      }
      case P.NBD_CMD_WRITE:
        assert(payload !== undefined && payload.length === length, 'write without its payload');
        await handle.write(offset, payload, { fua });
        break;
      case P.NBD_CMD_FLUSH:
        await handle.flush();
        break;
      case P.NBD_CMD_TRIM:
        await handle.trim(offset, length, { fua });
        break;
      case P.NBD_CMD_CACHE:
        await handle.cache(offset, length);
        break;
      case P.NBD_CMD_WRITE_ZEROES:
        await handle.writeZeroes(offset, length, {
          fua,
          noHole: (request.flags & P.NBD_CMD_FLAG_NO_HOLE) !== 0,
          fastZero: (request.flags & P.NBD_CMD_FLAG_FAST_ZERO) !== 0,
        });
        break;
      case P.NBD_CMD_BLOCK_STATUS: {
        const extents = await handle.blockStatus(offset, length);
        const reqOne = (request.flags & P.NBD_CMD_FLAG_REQ_ONE) !== 0;
        const descriptors = toDescriptors(extents, length, reqOne ? 1 : P.MAX_BLOCK_STATUS_EXTENTS);
        const chunk = P.encodeBlockStatusChunk(
          request.cookie,
          P.NBD_REPLY_FLAG_DONE,
          P.BASE_ALLOCATION_CONTEXT_ID,
          descriptors,
        );
        return () => this.finishRequest(flight, [chunk]);
      }
      default:
        assert(false, `validated command ${request.type} has no handler`);
    }
    return () => this.finishRequest(flight, [P.encodeSimpleReply(request.cookie, 0)]);
  }

  private replyRead(flight: InFlight, data: Uint8Array): void {
    const cookie = flight.request.cookie;
    if (!this.structuredReplies) {
      this.finishRequest(flight, [P.encodeSimpleReply(cookie, 0), data]);
      return;
    }
    const offset = Number(flight.request.offset);
    const done = P.NBD_REPLY_FLAG_DONE;
    if (isAllZero(data)) {
      this.finishRequest(flight, [P.encodeOffsetHoleChunk(cookie, done, offset, data.length)]);
      return;
    }
    // The data goes to the socket as the volume returned it: no copy into a reply buffer.
    const header = P.encodeOffsetDataHeader(cookie, done, offset, data.length);
    this.finishRequest(flight, [header, data]);
  }

  private replyError(flight: InFlight, errno: number, message: string, offset?: number): void {
    assert(errno !== 0, 'error reply without an error');
    const cookie = flight.request.cookie;
    if (!this.structuredReplies) {
      // Simple replies to a failed READ carry no payload (the spec forbids it).
      this.finishRequest(flight, [P.encodeSimpleReply(cookie, errno)]);
      return;
    }
    this.finishRequest(flight, [P.encodeErrorChunk(cookie, errno, message, offset)]);
  }

  private beginRequest(request: P.Request, chargeBytes: number): InFlight {
    this.inFlightRequests += 1;
    this.inFlightBytes += chargeBytes;
    return { request, chargeBytes, replied: false, released: false, releaseData: undefined };
  }

  private releaseData(flight: InFlight): void {
    const release = flight.releaseData;
    flight.releaseData = undefined;
    release?.();
  }

  /** Sends the reply; the request stops counting against the bounds once the kernel has it. */
  private finishRequest(flight: InFlight, parts: Uint8Array[]): void {
    assert(!flight.replied, `second reply to cookie ${flight.request.cookie}`);
    flight.replied = true;
    this.send(parts, () =>
      this.guard(() => {
        // Node can call a write callback twice when the socket fails mid-write (seen under
        // the fuzz test: once from the failed write, once when the buffer is errored out);
        // the charge must be released exactly once.
        if (flight.released) return;
        flight.released = true;
        this.releaseData(flight);
        this.inFlightRequests -= 1;
        this.inFlightBytes -= flight.chargeBytes;
        assert(this.inFlightRequests >= 0 && this.inFlightBytes >= 0, 'in-flight accounting broke');
        this.afterReply();
      }),
    );
  }

  /** Runs `work` from a callback; a bug inside it costs this connection, never the server. */
  private guard(work: () => void): void {
    try {
      work();
    } catch (error) {
      this.config.onUnexpectedError(error);
      this.socket.destroy();
    }
  }

  private afterReply(): void {
    if (this.phase === 'draining') this.finishIfIdle();
    else if (this.phase !== 'closed') this.pump();
  }

  /** No more requests will be read; close once every reply is out. */
  private drain(): void {
    if (this.phase === 'closed') return;
    this.phase = 'draining';
    this.updateFlowControl();
    this.finishIfIdle();
  }

  private finishIfIdle(): void {
    if (this.inFlightRequests > 0 || this.phase === 'closed') return;
    this.phase = 'closed';
    this.socket.end(() => this.socket.destroy());
  }

  /** Writes parts in order; writes from the same tick go out in one batch (cork/uncork). */
  private send(parts: Uint8Array[], done?: () => void): void {
    this.writer.write(parts, done);
  }

  private async onClosed(): Promise<void> {
    this.phase = 'closed';
    this.queue.clear();
    if (this.graceTimer !== undefined) clearTimeout(this.graceTimer);
    const handle = this.handle;
    this.handle = undefined;
    // VolumeHandle.close waits for its outstanding calls, so in-flight requests finish first.
    if (handle !== undefined) await handle.close();
  }
}

/** Bytes a READ will pin in memory once the volume answers. */
function readBytesOf(request: P.Request): number {
  return request.type === P.NBD_CMD_READ
    ? Math.min(request.length, P.MAX_REQUEST_PAYLOAD_BYTES)
    : 0;
}

/**
 * Turns volume extents into base:allocation descriptors: clipped to the request, merged
 * when equal, never zero-length, at most `maxDescriptors`. The volume layer is trusted
 * with nothing here (nbdkit's habit): an unusable answer becomes EIO.
 */
export function toDescriptors(
  extents: readonly Extent[],
  requestBytes: number,
  maxDescriptors: number,
): P.BlockStatusDescriptor[] {
  const descriptors: P.BlockStatusDescriptor[] = [];
  let covered = 0;
  for (const extent of extents) {
    if (covered >= requestBytes) break;
    if (!Number.isSafeInteger(extent.length) || extent.length < 0) {
      throw new CisternError('EIO', `volume returned an extent of length ${extent.length}`);
    }
    const length = Math.min(extent.length, requestBytes - covered);
    if (length === 0) continue;
    const flags = (extent.hole ? P.NBD_STATE_HOLE : 0) | (extent.zero ? P.NBD_STATE_ZERO : 0);
    const last = descriptors[descriptors.length - 1];
    if (last !== undefined && last.flags === flags) last.length += length;
    else {
      if (descriptors.length === maxDescriptors) break;
      descriptors.push({ length, flags });
    }
    covered += length;
  }
  if (descriptors.length === 0) throw new CisternError('EIO', 'volume returned no extents');
  return descriptors;
}

function isAllZero(data: Uint8Array): boolean {
  const view = Buffer.from(data.buffer, data.byteOffset, data.length);
  for (let at = 0; at < view.length; at += zeroes64KiB.length) {
    const end = Math.min(at + zeroes64KiB.length, view.length);
    if (!view.subarray(at, end).equals(zeroes64KiB.subarray(0, end - at))) return false;
  }
  return true;
}

function openFailureReply(error: unknown): number {
  if (isCisternError(error, 'UNKNOWN_VOLUME') || isCisternError(error, 'ENOENT')) {
    return P.NBD_REP_ERR_UNKNOWN;
  }
  if (isCisternError(error, 'CLOSED')) return P.NBD_REP_ERR_SHUTDOWN;
  return P.NBD_REP_ERR_POLICY;
}

function messageOf(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}
