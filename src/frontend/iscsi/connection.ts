// One iSCSI connection (and, with MaxConnections=1, its session's tasks): login, then the
// full feature phase — SCSI commands with their Data-Out collected (task.ts), handed to
// the logical unit, answered with Data-In / SCSI Response; NOP, task management, text
// (SendTargets), logout, Reject for what we cannot take.
//
// Reading is a loop over a ByteQueue that frames whole PDUs (pdu.ts). A PDU that breaks
// the rules gets a Reject and the connection goes on; one that breaks the framing (an
// oversized data segment, a header digest error) ends the connection. Memory is bounded:
// one PDU of at most our MaxRecvDataSegmentLength is buffered unparsed; the CmdSN window
// bounds the tasks; solicited write data and read data wait for room under
// maxBufferedBytes; and the socket stops being read while our replies back up unread.

import type { Socket } from 'node:net';
import { assert } from '../../util/assert';
import type { BufferCache } from '../../store/buffer-cache';
import { BatchedWriter, ReadGate } from '../../net/connections';
import { ByteQueue } from '../nbd/byte-queue';
import { LoginNegotiation, type CompletedLogin, type LoginContext } from './login';
import * as P from './pdu';
import { CmdSnWindow, snAdd, type Session } from './session';
import {
  ScsiStatus,
  type DataDirection,
  type ScsiResponse,
  type ScsiTask,
  type TaskAttribute,
} from './scsi-task';
import { DataOutCollector, DataOutError, planResponse, TransportSense } from './task';
import {
  DEFAULT_PARAMETERS,
  encodeText,
  MAX_TEXT_BYTES,
  NOT_UNDERSTOOD,
  parseText,
  type SessionParameters,
  type TargetLimits,
  type TextPairs,
} from './text';

/** Everything a connection needs from its server; the server owns the defaults. */
export interface ConnectionConfig {
  limits: TargetLimits;
  portalGroupTag: number;
  /** Tasks (SCSI commands) outstanding per session: the CmdSN window. */
  maxTasksPerSession: number;
  /** Write and read payload bytes held per connection before new transfers wait. */
  maxBufferedBytes: number;
  /** Where writes' whole Data-Out buffers come from and go back to (shared by the server's connections). */
  dataOutBuffers: BufferCache;
  /** Largest ExpectedDataTransferLength a command may ask for. */
  maxCommandBytes: number;
  /** Replies queued in the socket before we stop reading requests. */
  maxSendBacklogBytes: number;
  loginTimeoutMs: number;
  shutdownGraceMs: number;
  /** Silence from the initiator after which we ping it with a NOP-In. */
  keepaliveIntervalMs: number;
  /** How long a pinged initiator that sends nothing keeps its connection. */
  keepaliveTimeoutMs: number;
  onUnexpectedError: (error: unknown) => void;
  /** The server's side of login (target lookup, access, admission), for this connection. */
  loginContext(connection: IscsiConnection): LoginContext;
  /** SendTargets answer: TargetName/TargetAddress pairs the initiator may see. */
  sendTargets(
    session: Session,
    which: string,
    localAddress: string,
    localPort: number,
  ): Promise<TextPairs>;
  /** The session ended (its connection is gone and its tasks are finished). */
  sessionEnded(session: Session): Promise<void>;
}

/** Immediate commands allowed beyond the CmdSN window (they do not consume CmdSN). */
export const MAX_IMMEDIATE_TASKS = 16;

type Phase = 'login' | 'full-feature' | 'logout' | 'closed';

type TaskState = 'collecting' | 'waiting' | 'executing' | 'done';

interface Task {
  readonly command: P.ScsiCommandPdu;
  readonly direction: DataDirection;
  readonly immediate: boolean;
  state: TaskState;
  /** Delivered in CmdSN order (immediate commands at once). */
  delivered: boolean;
  /** Order of delivery, for task attributes. */
  deliverySeq: number;
  aborted: boolean;
  collector: DataOutCollector | undefined;
  /** The R2T part of a write got its buffer budget. */
  solicitedCharged: boolean;
  chargedBytes: number;
  /** R2Ts sent, for the SCSI Response's ExpDataSN. */
  r2tCount: number;
  dataInCount: number;
  /** Settles when the task is finished (answered, aborted or failed). */
  readonly finished: Promise<void>;
  finish(): void;
}

interface TextContinuation {
  ttt: number;
  /** Answer bytes not sent yet. */
  remaining: Buffer;
  /** The initiator's request came with the C bit: its next piece is expected. */
  awaitingKeys: boolean;
}

const EMPTY = Buffer.alloc(0);

export class IscsiConnection {
  private readonly queue = new ByteQueue();
  private phase: Phase = 'login';
  private digests: P.Digests = { header: false, data: false };
  private login: LoginNegotiation | undefined;
  private loginBusy = false;
  private session: Session | undefined;
  private params: SessionParameters = { ...DEFAULT_PARAMETERS };
  private statSN = 1;
  private window: CmdSnWindow | undefined;
  /** Login responses carry the login's CmdSN as ExpCmdSN. */
  private loginCmdSN = 0;
  private readonly tasks = new Map<number, Task>();
  private immediateTasks = 0;
  private nextTtt = 1;
  private bufferedBytes = 0;
  private readonly budgetWaiters: Task[] = [];
  /** Tasks whose data is in but whose task attribute makes them wait for others. */
  private readonly orderWaiters = new Set<Task>();
  /** ORDERED tasks not yet done (0: no attribute check needed). */
  private orderedTasks = 0;
  private nextDeliverySeq = 0;
  private textContinuation: TextContinuation | undefined;
  private textRequestBytes: Buffer[] = [];
  private readonly loginTimer: NodeJS.Timeout;
  private graceTimer: NodeJS.Timeout | undefined;
  private keepaliveTimer: NodeJS.Timeout | undefined;
  private lastReceivedAt = Date.now();
  /** Our outstanding NOP-In ping: its TTT and when it went out. */
  private ping: { ttt: number; sentAt: number } | undefined;
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
    this.loginTimer = setTimeout(() => {
      if (this.phase === 'login') socket.destroy();
    }, config.loginTimeoutMs);
    this.loginTimer.unref();
    socket.on('data', (chunk: Buffer) => {
      // Once logging out nothing more is taken; reading on lets us see the initiator's FIN.
      if (this.phase === 'logout' || this.phase === 'closed') return;
      this.lastReceivedAt = Date.now();
      this.queue.push(chunk);
      this.pump();
    });
    socket.on('drain', () => this.pump());
    socket.on('end', () => {
      // The initiator sends nothing more: finish what is running, then close.
      void this.finishAndClose();
    });
    socket.on('error', () => {
      // ECONNRESET and the like: 'close' follows and cleans up.
    });
    socket.on('close', () => {
      this.onClosed().then(resolveClosed, (error: unknown) => {
        this.config.onUnexpectedError(error);
        resolveClosed();
      });
    });
  }

  get closed(): Promise<void> {
    return this.closedPromise;
  }

  /** What the connection is doing, for diagnostics. */
  describe(): string {
    const tasks = [...this.tasks.values()].map(
      (task) => `${task.command.itt}:${task.state}${task.aborted ? '!' : ''}`,
    );
    return `phase=${this.phase} loginBusy=${this.loginBusy} destroyed=${this.socket.destroyed} tasks=[${tasks.join(',')}] buffered=${this.bufferedBytes}`;
  }

  get currentSession(): Session | undefined {
    return this.session;
  }

  /** The server admitted this login: the connection serves `session` from now on. False if it is already gone. */
  attachSession(session: Session): boolean {
    assert(this.session === undefined, 'session attached twice');
    if (this.phase === 'closed') return false;
    this.session = session;
    return true;
  }

  /** Ends the connection now (session reinstatement, login failure, server close). */
  terminate(): Promise<void> {
    this.socket.destroy();
    return this.closedPromise;
  }

  /** Server shutdown: stop reading, let running tasks finish for a grace period, close. */
  shutdown(): void {
    if (this.phase === 'closed') return;
    if (this.phase === 'login') {
      this.socket.destroy();
      return;
    }
    this.graceTimer = setTimeout(() => this.socket.destroy(), this.config.shutdownGraceMs);
    this.graceTimer.unref();
    void this.finishAndClose();
  }

  // ---- Reading -------------------------------------------------------------------------------

  private pump(): void {
    try {
      while (this.readPdu()) {
        // Each round consumed one PDU.
      }
      this.updateFlowControl();
    } catch (error) {
      this.fatal(error);
    }
  }

  private fatal(error: unknown): void {
    if (!(error instanceof P.IscsiProtocolError)) this.config.onUnexpectedError(error);
    this.socket.destroy();
  }

  private updateFlowControl(): void {
    const shouldPause =
      this.phase === 'closed' ||
      this.loginBusy ||
      this.socket.writableLength > this.config.maxSendBacklogBytes;
    this.readGate.pauseWhile(shouldPause);
  }

  private readPdu(): boolean {
    if (this.phase === 'closed' || this.phase === 'logout' || this.loginBusy) return false;
    if (this.socket.writableLength > this.config.maxSendBacklogBytes) return false;
    if (this.queue.length < P.BHS_BYTES) return false;
    const bhs = this.queue.peek(P.BHS_BYTES);
    if (P.dataSegmentLengthOf(bhs) > this.config.limits.maxRecvDataSegmentLength) {
      throw new P.IscsiProtocolError(P.RejectReason.PROTOCOL_ERROR, 'data segment too long');
    }
    const total = P.wireLength(bhs, this.digests);
    if (this.queue.length < total) return false;
    if (this.phase === 'full-feature' && this.receiveDataOut(bhs, total)) return true;
    const framed = P.splitPdu(this.queue.take(total), this.digests);
    if (this.phase === 'login') {
      this.onLoginPdu(framed.pdu);
      return true;
    }
    if (framed.kind === 'data-digest-error') {
      this.onDataDigestError(framed.pdu);
      return true;
    }
    try {
      this.dispatch(framed.pdu);
    } catch (error) {
      if (!(error instanceof P.IscsiProtocolError)) throw error;
      this.reject(error.rejectReason, framed.pdu.bhs);
    }
    return true;
  }

  /**
   * A Data-Out whose payload can go straight into its write's buffer (one copy from the
   * socket's chunks, where framing and joining would copy a payload that spans chunks
   * twice). Only for a task whose whole transfer is already paid for in the buffer
   * budget (its R2T part charged, or no more than a first burst), so an initiator cannot
   * make us allocate what it never sends; and only without digests and AHS, which the
   * framing path checks. False: the PDU is left for the ordinary path.
   */
  private receiveDataOut(bhs: Buffer, total: number): boolean {
    if (P.opcodeOf(bhs) !== P.Opcode.DATA_OUT) return false;
    if (this.digests.header || this.digests.data || P.ahsLengthOf(bhs) !== 0) return false;
    const length = P.dataSegmentLengthOf(bhs);
    const task = this.tasks.get(bhs.readUInt32BE(16));
    const collector = task?.collector;
    if (task === undefined || collector === undefined || task.state !== 'collecting') return false;
    // A payload that is the whole transfer is kept as the socket's view: no copy at all.
    if (length === collector.expectedLength) return false;
    if (!task.solicitedCharged && collector.expectedLength > this.params.firstBurstLength)
      return false;
    const offset = bhs.readUInt32BE(40);
    const target = collector.receiveBuffer(offset, length);
    if (target === undefined) return false;
    // The BHS is copied: its view would pin the socket chunk the payload was copied out of.
    const header = Buffer.from(this.queue.take(P.BHS_BYTES));
    this.queue.takeInto(target, offset, length);
    this.queue.discard(total - P.BHS_BYTES - length);
    const pdu: P.RawPdu = {
      bhs: header,
      ahs: EMPTY,
      data: target.subarray(offset, offset + length),
    };
    try {
      this.dispatch(pdu);
    } catch (error) {
      if (!(error instanceof P.IscsiProtocolError)) throw error;
      this.reject(error.rejectReason, pdu.bhs);
    }
    return true;
  }

  // ---- Login -------------------------------------------------------------------------------

  private onLoginPdu(pdu: P.RawPdu): void {
    if (P.opcodeOf(pdu.bhs) !== P.Opcode.LOGIN) {
      throw new P.IscsiProtocolError(P.RejectReason.PROTOCOL_ERROR, 'expected a Login Request');
    }
    const request = P.decodeLoginRequest(pdu);
    if (this.login === undefined) {
      this.login = new LoginNegotiation(this.config.loginContext(this));
      this.loginCmdSN = request.cmdSN;
    }
    const negotiation = this.login;
    this.loginBusy = true;
    negotiation.handle(request).then(
      (answer) => {
        this.loginBusy = false;
        if (this.phase === 'closed') return;
        const bhs = P.encodeLoginResponse({
          transit: answer.transit,
          continue: answer.continue,
          csg: answer.csg,
          nsg: answer.nsg,
          isid: request.isid,
          tsih: answer.tsih,
          itt: request.itt,
          statSN: this.nextStatSN(),
          expCmdSN: this.loginCmdSN,
          maxCmdSN: snAdd(this.loginCmdSN, this.config.maxTasksPerSession - 1),
          statusClass: answer.status.statusClass,
          statusDetail: answer.status.statusDetail,
        });
        this.send(bhs, answer.data);
        if (answer.next === 'close') {
          this.hangUp();
          this.phase = 'closed';
          return;
        }
        if (answer.next === 'full-feature') this.enterFullFeature(negotiation.result);
        this.pump();
      },
      (error: unknown) => {
        this.loginBusy = false;
        this.fatal(error);
      },
    );
  }

  private enterFullFeature(result: CompletedLogin | undefined): void {
    assert(result !== undefined && this.session !== undefined, 'full feature without a session');
    clearTimeout(this.loginTimer);
    this.params = result.params;
    this.digests = { header: result.params.headerDigest, data: result.params.dataDigest };
    this.window = new CmdSnWindow(this.loginCmdSN, this.config.maxTasksPerSession);
    this.phase = 'full-feature';
    this.scheduleKeepalive();
  }

  /**
   * Target-initiated NOP-In (RFC 7143 §11.19): after keepaliveIntervalMs of silence we
   * ping; an initiator that then stays silent for keepaliveTimeoutMs is gone (a host that
   * died without a FIN), and its session is ended so its tasks and reservations go too.
   */
  private scheduleKeepalive(): void {
    const check = Math.max(
      1,
      Math.min(this.config.keepaliveIntervalMs, this.config.keepaliveTimeoutMs) / 2,
    );
    this.keepaliveTimer = setTimeout(() => this.keepalive(), check);
    this.keepaliveTimer.unref();
  }

  private keepalive(): void {
    if (this.phase !== 'full-feature') return;
    const now = Date.now();
    if (this.ping !== undefined && this.lastReceivedAt < this.ping.sentAt) {
      if (now - this.ping.sentAt >= this.config.keepaliveTimeoutMs) {
        this.socket.destroy();
        return;
      }
    } else if (now - this.lastReceivedAt >= this.config.keepaliveIntervalMs) {
      this.ping = { ttt: this.allocateTtt(), sentAt: now };
      this.send(
        P.encodeNopIn({
          ...this.sequence(false),
          lunField: undefined,
          itt: P.RESERVED_TAG,
          ttt: this.ping.ttt,
        }),
      );
    }
    this.scheduleKeepalive();
  }

  // ---- Full feature phase: dispatch ------------------------------------------------------------

  private dispatch(pdu: P.RawPdu): void {
    const opcode = P.opcodeOf(pdu.bhs);
    const discovery = this.session?.type === 'discovery';
    switch (opcode) {
      case P.Opcode.SCSI_COMMAND:
        if (discovery) throw protocol('SCSI command in a discovery session');
        this.onScsiCommand(P.decodeScsiCommand(pdu));
        return;
      case P.Opcode.DATA_OUT:
        if (discovery) throw protocol('Data-Out in a discovery session');
        this.onDataOut(P.decodeDataOut(pdu));
        return;
      case P.Opcode.NOP_OUT:
        this.onNopOut(P.decodeNopOut(pdu));
        return;
      case P.Opcode.TASK_MANAGEMENT:
        if (discovery) throw protocol('task management in a discovery session');
        this.onTaskManagement(P.decodeTaskManagement(pdu));
        return;
      case P.Opcode.TEXT:
        this.onText(P.decodeTextRequest(pdu));
        return;
      case P.Opcode.LOGOUT:
        this.onLogout(P.decodeLogoutRequest(pdu));
        return;
      case P.Opcode.LOGIN:
        throw protocol('Login Request in full feature phase');
      case P.Opcode.SNACK:
        // ErrorRecoveryLevel 0: there is nothing to retransmit from.
        throw new P.IscsiProtocolError(P.RejectReason.COMMAND_NOT_SUPPORTED, 'SNACK at ERL 0');
      default:
        throw new P.IscsiProtocolError(P.RejectReason.COMMAND_NOT_SUPPORTED, `opcode ${opcode}`);
    }
  }

  /** Runs `deliver` in CmdSN order, or now for an immediate command; drops what is out of window. */
  private ordered(immediate: boolean, cmdSN: number, deliver: () => void): void {
    const window = this.requireWindow();
    if (immediate) deliver();
    else window.accept(cmdSN, deliver);
  }

  private requireWindow(): CmdSnWindow {
    assert(this.window !== undefined, 'no CmdSN window before full feature phase');
    return this.window;
  }

  // ---- SCSI commands -----------------------------------------------------------------------------

  private onScsiCommand(command: P.ScsiCommandPdu): void {
    if (command.itt === P.RESERVED_TAG) throw invalidField('reserved ITT on a command');
    if (!command.write && command.data.length > 0) throw protocol('data with a non-write command');
    const window = this.requireWindow();
    if (!command.immediate && !window.inWindow(command.cmdSN)) return;
    if (this.tasks.has(command.itt))
      throw new P.IscsiProtocolError(P.RejectReason.TASK_IN_PROGRESS, 'ITT in use');
    if (command.immediate && this.immediateTasks >= MAX_IMMEDIATE_TASKS) {
      throw new P.IscsiProtocolError(
        P.RejectReason.IMMEDIATE_COMMAND_REJECT,
        'too many immediate commands',
      );
    }
    const direction: DataDirection =
      command.read && command.write
        ? 'bidirectional'
        : command.read
          ? 'read'
          : command.write
            ? 'write'
            : 'none';
    let finish!: () => void;
    const finished = new Promise<void>((resolve) => (finish = resolve));
    const task: Task = {
      command,
      direction,
      immediate: command.immediate,
      state: 'collecting',
      delivered: false,
      deliverySeq: 0,
      aborted: false,
      collector: undefined,
      solicitedCharged: false,
      chargedBytes: 0,
      r2tCount: 0,
      dataInCount: 0,
      finished,
      finish,
    };
    const tooLong =
      command.expectedLength > this.config.maxCommandBytes ||
      (command.bidiReadLength ?? 0) > this.config.maxCommandBytes;
    if (!tooLong && (direction === 'write' || direction === 'bidirectional')) {
      task.collector = new DataOutCollector(
        command.expectedLength,
        command.data,
        command.final,
        this.params,
        this.config.dataOutBuffers,
      );
      this.charge(task, command.data.length);
    }
    this.tasks.set(command.itt, task);
    if (command.immediate) this.immediateTasks += 1;
    if (command.attribute === P.TaskAttributeCode.ORDERED) this.orderedTasks += 1;
    const deliver = (): void => {
      task.delivered = true;
      task.deliverySeq = this.nextDeliverySeq;
      this.nextDeliverySeq += 1;
      if (tooLong) this.failTask(task, TransportSense.transferTooLong());
      else this.advance(task);
    };
    if (command.immediate) deliver();
    else if (!window.accept(command.cmdSN, deliver)) {
      // A duplicate CmdSN: dropped like any command outside the window.
      this.tasks.delete(command.itt);
      if (command.attribute === P.TaskAttributeCode.ORDERED) this.orderedTasks -= 1;
      this.release(task);
    }
  }

  private onDataOut(dataOut: P.DataOutPdu): void {
    const task = this.tasks.get(dataOut.itt);
    // A Data-Out for a task that is gone (aborted, failed) is dropped, as its sender expects nothing.
    if (task === undefined || task.collector === undefined || task.state !== 'collecting') return;
    if (dataOut.ttt === P.RESERVED_TAG) this.charge(task, dataOut.data.length);
    try {
      task.collector.accept(dataOut);
    } catch (error) {
      if (!(error instanceof DataOutError)) throw error;
      this.failTask(task, TransportSense.dataPhase());
      return;
    }
    this.advance(task);
  }

  private onDataDigestError(pdu: P.RawPdu): void {
    this.reject(P.RejectReason.DATA_DIGEST_ERROR, pdu.bhs);
    const opcode = P.opcodeOf(pdu.bhs);
    if (opcode !== P.Opcode.DATA_OUT && opcode !== P.Opcode.SCSI_COMMAND) return;
    // Without recovery the task cannot get its data again: it ends with CHECK CONDITION.
    const task = this.tasks.get(pdu.bhs.readUInt32BE(16));
    if (task !== undefined && task.state === 'collecting')
      this.failTask(task, TransportSense.dataDigest());
  }

  /** Moves a task on: more R2Ts, or execution once its data is in and its turn has come. */
  private advance(task: Task): void {
    if (task.state !== 'collecting' || task.aborted) return;
    const collector = task.collector;
    if (collector !== undefined && !collector.complete) {
      if (!task.solicitedCharged && collector.solicitedBytes > 0) {
        if (!this.tryCharge(task, collector.solicitedBytes)) return;
        task.solicitedCharged = true;
      }
      if (task.solicitedCharged) this.sendR2Ts(task, collector);
      return;
    }
    if (!task.delivered) return;
    if (!this.orderAllows(task)) {
      this.orderWaiters.add(task);
      return;
    }
    this.orderWaiters.delete(task);
    if (collector === undefined) {
      const readBytes = task.direction === 'read' ? task.command.expectedLength : 0;
      if (readBytes > 0 && task.chargedBytes === 0 && !this.tryCharge(task, readBytes)) return;
    }
    this.execute(task);
  }

  /**
   * SAM task attributes: an ORDERED task runs once every older task is done, and tasks
   * delivered after it wait for it; HEAD OF QUEUE runs at once; SIMPLE (and untagged,
   * ACA) only wait for older ORDERED tasks. Data transfer goes on meanwhile.
   */
  private orderAllows(task: Task): boolean {
    const attribute = task.command.attribute;
    if (attribute === P.TaskAttributeCode.HEAD_OF_QUEUE) return true;
    if (this.orderedTasks === 0 && attribute !== P.TaskAttributeCode.ORDERED) return true;
    for (const other of this.tasks.values()) {
      if (other === task || !other.delivered || other.deliverySeq > task.deliverySeq) continue;
      if (attribute === P.TaskAttributeCode.ORDERED) return false;
      if (other.command.attribute === P.TaskAttributeCode.ORDERED) return false;
    }
    return true;
  }

  private wakeOrderWaiters(): void {
    const waiting = [...this.orderWaiters].sort((a, b) => a.deliverySeq - b.deliverySeq);
    for (const task of waiting) {
      if (task.state !== 'collecting' || task.aborted) this.orderWaiters.delete(task);
      else this.advance(task);
    }
  }

  private sendR2Ts(task: Task, collector: DataOutCollector): void {
    const requests = collector.nextR2Ts(() => this.allocateTtt());
    for (const request of requests) {
      this.send(
        P.encodeR2T({
          ...this.sequence(false),
          lun: task.command.lun,
          itt: task.command.itt,
          ttt: request.ttt,
          r2tSN: request.r2tSN,
          bufferOffset: request.offset,
          desiredLength: request.length,
        }),
      );
    }
  }

  private allocateTtt(): number {
    const ttt = this.nextTtt;
    this.nextTtt = this.nextTtt >= 0x7fffffff ? 1 : this.nextTtt + 1;
    return ttt;
  }

  private execute(task: Task): void {
    task.state = 'executing';
    const session = this.session;
    assert(
      session?.lu !== undefined && session.port !== undefined,
      'SCSI task without a logical unit',
    );
    const { command } = task;
    const dataOut = task.collector?.take();
    const scsiTask: ScsiTask = {
      cdb: command.cdb,
      lun: command.lun,
      port: session.port,
      direction: task.direction,
      expectedLength: command.expectedLength,
      dataOut: dataOut?.data,
      attribute: taskAttribute(command.attribute),
      tag: command.itt,
    };
    task.r2tCount = task.collector?.r2tCount ?? 0;
    task.collector = undefined;
    // The Data-Out buffer is reused once the command has settled: the logical unit
    // settles only after every volume write that holds it has (volume.ts waits for every
    // part of a write, even after one failed). A task aborted meanwhile still settles here.
    session.lu.execute(scsiTask).then(
      (response) => {
        dataOut?.release();
        this.respond(task, response);
      },
      (error: unknown) => {
        dataOut?.release();
        // The logical unit answers failures itself; a rejection is a bug there.
        this.config.onUnexpectedError(error);
        this.respond(task, { status: ScsiStatus.CHECK_CONDITION, sense: targetFailureSense() });
      },
    );
  }

  private respond(task: Task, response: ScsiResponse): void {
    if (task.aborted || this.phase === 'closed') {
      response.release?.();
      this.endTask(task)();
      return;
    }
    // Ended first, so the MaxCmdSN of the answer already counts the slot it frees.
    const endTask = this.endTask(task);
    const lent = response.release;
    // Lent read data stays the volume's until the kernel has taken the last PDU of it.
    const release =
      lent === undefined
        ? endTask
        : (): void => {
            endTask();
            lent();
          };
    const { command } = task;
    const plan = planResponse(
      {
        direction: task.direction,
        expectedLength: command.expectedLength,
        bidiReadLength: command.bidiReadLength,
      },
      response,
      this.params,
    );
    const r2tCount = task.r2tCount;
    const lastSegment = plan.segments.length - 1;
    plan.segments.forEach((segment, index) => {
      const bhs = P.encodeDataIn({
        ...this.sequence(segment.withStatus),
        final: segment.final,
        status: segment.withStatus ? response.status : undefined,
        residual: plan.residual,
        lun: command.lun,
        itt: command.itt,
        dataSN: task.dataInCount,
        bufferOffset: segment.offset,
      });
      task.dataInCount += 1;
      const data = plan.data.subarray(segment.offset, segment.offset + segment.length);
      this.send(bhs, data, index === lastSegment && !plan.scsiResponse ? release : undefined);
    });
    if (plan.scsiResponse) {
      const bhs = P.encodeScsiResponse({
        ...this.sequence(true),
        itt: command.itt,
        response: 0,
        status: response.status,
        residual: plan.residual,
        bidiResidual: plan.bidiResidual,
        expDataSN: task.dataInCount + r2tCount,
      });
      this.send(bhs, plan.sense === undefined ? undefined : P.senseSegment(plan.sense), release);
    }
  }

  /** Ends a task the transport itself fails (bad Data-Out, digest, size): CHECK CONDITION, no execution. */
  private failTask(task: Task, sense: Uint8Array): void {
    task.r2tCount = task.collector?.r2tCount ?? 0;
    task.collector = undefined;
    task.state = 'executing';
    this.respond(task, { status: ScsiStatus.CHECK_CONDITION, sense, dataOutLength: 0 });
  }

  /**
   * Removes the task; returns what gives its buffer charge back and settles it, to be
   * called once what was sent for it has reached the kernel (or at once, if nothing was).
   */
  private endTask(task: Task): () => void {
    if (task.state === 'done') return () => undefined;
    task.state = 'done';
    task.collector = undefined;
    if (this.tasks.get(task.command.itt) === task) this.tasks.delete(task.command.itt);
    if (task.immediate) this.immediateTasks -= 1;
    if (task.command.attribute === P.TaskAttributeCode.ORDERED) this.orderedTasks -= 1;
    this.orderWaiters.delete(task);
    if (this.orderWaiters.size > 0) queueMicrotask(() => this.wakeOrderWaiters());
    let released = false;
    return () => {
      if (released) return;
      released = true;
      this.release(task);
      task.finish();
    };
  }

  // ---- Buffer budget ---------------------------------------------------------------------------

  private charge(task: Task, bytes: number): void {
    task.chargedBytes += bytes;
    this.bufferedBytes += bytes;
  }

  /** Charges `bytes` if they fit (or nothing else is held); otherwise queues the task to retry. */
  private tryCharge(task: Task, bytes: number): boolean {
    const fits =
      this.bufferedBytes === 0 || this.bufferedBytes + bytes <= this.config.maxBufferedBytes;
    if (!fits || (this.budgetWaiters.length > 0 && this.budgetWaiters[0] !== task)) {
      if (!this.budgetWaiters.includes(task)) this.budgetWaiters.push(task);
      return false;
    }
    if (this.budgetWaiters[0] === task) this.budgetWaiters.shift();
    this.charge(task, bytes);
    return true;
  }

  private release(task: Task): void {
    this.bufferedBytes -= task.chargedBytes;
    task.chargedBytes = 0;
    assert(this.bufferedBytes >= 0, 'buffer budget below zero');
    const index = this.budgetWaiters.indexOf(task);
    if (index >= 0) this.budgetWaiters.splice(index, 1);
    this.wakeBudgetWaiters();
    this.window?.update(this.tasks.size - this.immediateTasks);
  }

  private wakeBudgetWaiters(): void {
    // Each retry either charges (and leaves the queue) or stops: bounded by the queue length.
    for (let rounds = this.budgetWaiters.length; rounds > 0; rounds -= 1) {
      const head = this.budgetWaiters[0];
      if (head === undefined) return;
      if (head.state !== 'collecting' || head.aborted) {
        this.budgetWaiters.shift();
        continue;
      }
      const before = this.budgetWaiters.length;
      this.advance(head);
      if (this.budgetWaiters.length >= before && this.budgetWaiters[0] === head) return;
    }
  }

  // ---- NOP, text, task management, logout ------------------------------------------------------

  private onNopOut(nop: P.NopOutPdu): void {
    if (nop.itt === P.RESERVED_TAG) {
      // An answer to a NOP-In of ours, or a ping that wants no answer.
      if (!nop.immediate) throw protocol('NOP-Out without a tag must be immediate');
      if (this.ping !== undefined && nop.ttt === this.ping.ttt) this.ping = undefined;
      return;
    }
    if (nop.ttt !== P.RESERVED_TAG) throw invalidField('NOP-Out with ITT and TTT');
    this.ordered(nop.immediate, nop.cmdSN, () => {
      const data = nop.data.subarray(0, this.params.initiatorMaxRecvDataSegmentLength);
      this.send(
        P.encodeNopIn({
          ...this.sequence(true),
          lunField: nop.lunField,
          itt: nop.itt,
          ttt: P.RESERVED_TAG,
        }),
        data,
      );
    });
  }

  private onText(request: P.TextRequestPdu): void {
    if (request.ttt !== P.RESERVED_TAG) {
      const continuation = this.textContinuation;
      if (continuation === undefined || continuation.ttt !== request.ttt)
        throw invalidField('unknown text TTT');
      if (!continuation.awaitingKeys) {
        this.ordered(request.immediate, request.cmdSN, () => this.sendTextChunk(request.itt));
        return;
      }
      // The next piece of a request that came in pieces (C bit): gathered below.
    } else {
      this.textRequestBytes = [];
    }
    this.textContinuation = undefined;
    const total =
      this.textRequestBytes.reduce((sum, part) => sum + part.length, 0) + request.data.length;
    if (total > MAX_TEXT_BYTES) {
      this.textRequestBytes = [];
      throw protocol('text request too long');
    }
    this.textRequestBytes.push(request.data);
    this.ordered(request.immediate, request.cmdSN, () => {
      if (request.continue) {
        // More keys follow: acknowledge with an empty, non-final response.
        this.textContinuation = { ttt: this.allocateTtt(), remaining: EMPTY, awaitingKeys: true };
        this.sendTextChunk(request.itt);
        return;
      }
      const text = Buffer.concat(this.textRequestBytes);
      this.textRequestBytes = [];
      this.answerText(request.itt, text);
    });
  }

  private answerText(itt: number, text: Buffer): void {
    let pairs: TextPairs;
    try {
      pairs = parseText(text);
    } catch (error) {
      if (!(error instanceof P.IscsiProtocolError)) throw error;
      this.textContinuation = {
        ttt: P.RESERVED_TAG,
        remaining: encodeText([['Error', 'Reject']]),
        awaitingKeys: false,
      };
      this.sendTextChunk(itt);
      return;
    }
    const session = this.session;
    assert(session !== undefined, 'text without a session');
    const answers: Array<Promise<TextPairs>> = pairs.map(([key, value]) => {
      if (key === 'SendTargets') {
        return this.config.sendTargets(
          session,
          value,
          this.socket.localAddress ?? '',
          this.socket.localPort ?? 0,
        );
      }
      return Promise.resolve<TextPairs>([[key, NOT_UNDERSTOOD]]);
    });
    Promise.all(answers).then(
      (parts) => {
        if (this.phase !== 'full-feature') return;
        this.textContinuation = {
          ttt: P.RESERVED_TAG,
          remaining: encodeText(parts.flat()),
          awaitingKeys: false,
        };
        this.sendTextChunk(itt);
      },
      (error: unknown) => this.fatal(error),
    );
  }

  /** Sends the next piece of a text answer; a long one continues (C bit) on the initiator's empty requests. */
  private sendTextChunk(itt: number): void {
    const continuation = this.textContinuation;
    assert(continuation !== undefined, 'no text answer to send');
    const limit = this.params.initiatorMaxRecvDataSegmentLength;
    const chunk = continuation.remaining.subarray(0, limit);
    const rest = continuation.remaining.subarray(chunk.length);
    let ttt = P.RESERVED_TAG;
    if (rest.length > 0) {
      ttt = continuation.ttt === P.RESERVED_TAG ? this.allocateTtt() : continuation.ttt;
      this.textContinuation = { ttt, remaining: rest, awaitingKeys: false };
    } else if (continuation.awaitingKeys) {
      ttt = continuation.ttt;
    } else {
      this.textContinuation = undefined;
    }
    this.send(
      P.encodeTextResponse({
        ...this.sequence(true),
        final: ttt === P.RESERVED_TAG,
        continue: rest.length > 0,
        itt,
        ttt,
      }),
      chunk,
    );
  }

  private onTaskManagement(request: P.TaskManagementPdu): void {
    this.ordered(request.immediate, request.cmdSN, () => {
      this.taskManagement(request).then(
        (response) => {
          if (this.phase === 'closed') return;
          this.send(
            P.encodeTaskManagementResponse({ ...this.sequence(true), response, itt: request.itt }),
          );
          if (request.function === P.TmfFunction.TARGET_COLD_RESET) this.hangUp();
        },
        (error: unknown) => this.fatal(error),
      );
    });
  }

  private async taskManagement(request: P.TaskManagementPdu): Promise<number> {
    const session = this.session;
    assert(session?.lu !== undefined && session.port !== undefined, 'TMF without a logical unit');
    switch (request.function) {
      case P.TmfFunction.ABORT_TASK: {
        const task = this.tasks.get(request.referencedTaskTag);
        // A task already answered (or never received) is not there to abort.
        if (task === undefined) return P.TmfResponse.TASK_DOES_NOT_EXIST;
        await this.abortTasks([task]);
        return P.TmfResponse.FUNCTION_COMPLETE;
      }
      case P.TmfFunction.ABORT_TASK_SET:
      case P.TmfFunction.CLEAR_TASK_SET:
        if (request.lun !== 0) return P.TmfResponse.LUN_DOES_NOT_EXIST;
        await this.abortTasks([...this.tasks.values()]);
        return P.TmfResponse.FUNCTION_COMPLETE;
      case P.TmfFunction.LOGICAL_UNIT_RESET:
        if (request.lun !== 0) return P.TmfResponse.LUN_DOES_NOT_EXIST;
        await this.abortTasks([...this.tasks.values()]);
        session.lu.reset(session.port);
        return P.TmfResponse.FUNCTION_COMPLETE;
      case P.TmfFunction.TARGET_WARM_RESET:
      case P.TmfFunction.TARGET_COLD_RESET:
        await this.abortTasks([...this.tasks.values()]);
        session.lu.reset(session.port);
        return P.TmfResponse.FUNCTION_COMPLETE;
      case P.TmfFunction.TASK_REASSIGN:
        return P.TmfResponse.REASSIGNMENT_NOT_SUPPORTED;
      default:
        return P.TmfResponse.FUNCTION_NOT_SUPPORTED;
    }
  }

  /** Aborts tasks: no answer is sent for them; resolves once running ones have finished. */
  private async abortTasks(tasks: Task[]): Promise<void> {
    const running: Array<Promise<void>> = [];
    for (const task of tasks) {
      if (task.state === 'done') continue;
      task.aborted = true;
      if (task.state === 'executing') running.push(task.finished);
      else this.endTask(task)();
    }
    await Promise.all(running);
  }

  private onLogout(request: P.LogoutRequestPdu): void {
    this.ordered(request.immediate, request.cmdSN, () => {
      if (request.reason === P.LogoutReason.REMOVE_CONNECTION_FOR_RECOVERY) {
        this.sendLogoutResponse(request.itt, P.LogoutResponseCode.RECOVERY_NOT_SUPPORTED);
        return;
      }
      const sessionCid = this.login?.result?.cid;
      if (request.reason === P.LogoutReason.CLOSE_CONNECTION && request.cid !== sessionCid) {
        this.sendLogoutResponse(request.itt, P.LogoutResponseCode.CID_NOT_FOUND);
        return;
      }
      this.phase = 'logout';
      this.updateFlowControl();
      this.settleTasks().then(
        () => {
          if (this.phase === 'closed') return;
          this.sendLogoutResponse(request.itt, P.LogoutResponseCode.CLOSED);
          this.hangUp();
        },
        (error: unknown) => this.fatal(error),
      );
    });
  }

  private sendLogoutResponse(itt: number, response: number): void {
    this.send(
      P.encodeLogoutResponse({
        ...this.sequence(true),
        response,
        itt,
        time2WaitSeconds: 0,
        time2RetainSeconds: 0,
      }),
    );
  }

  /** Tasks still waiting for data are aborted; running ones finish and answer. */
  private async settleTasks(): Promise<void> {
    const waiting: Array<Promise<void>> = [];
    for (const task of [...this.tasks.values()]) {
      if (task.state === 'executing') waiting.push(task.finished);
      else {
        task.aborted = true;
        this.endTask(task)();
      }
    }
    await Promise.all(waiting);
  }

  private async finishAndClose(): Promise<void> {
    if (this.phase === 'closed') return;
    if (this.phase === 'login') {
      this.socket.destroy();
      return;
    }
    this.phase = 'logout';
    this.updateFlowControl();
    await this.settleTasks();
    this.hangUp();
  }

  private async onClosed(): Promise<void> {
    this.phase = 'closed';
    clearTimeout(this.loginTimer);
    if (this.graceTimer !== undefined) clearTimeout(this.graceTimer);
    if (this.keepaliveTimer !== undefined) clearTimeout(this.keepaliveTimer);
    this.queue.clear();
    await this.abortTasks([...this.tasks.values()]);
    this.budgetWaiters.length = 0;
    const session = this.session;
    if (session !== undefined) await this.config.sessionEnded(session);
  }

  // ---- Sending ---------------------------------------------------------------------------------

  /**
   * Closes our side once what was sent has gone out, then the socket: an initiator that
   * keeps its side open after a logout or a refused login must not keep the connection.
   */
  private hangUp(): void {
    this.socket.end(() => this.socket.destroy());
  }

  private nextStatSN(): number {
    const statSN = this.statSN;
    this.statSN = snAdd(this.statSN, 1);
    return statSN;
  }

  /** StatSN (advanced for status-bearing PDUs), ExpCmdSN, MaxCmdSN. */
  private sequence(advanceStatSN: boolean): P.Sequence {
    const window = this.requireWindow();
    window.update(this.tasks.size - this.immediateTasks);
    return {
      statSN: advanceStatSN ? this.nextStatSN() : this.statSN,
      expCmdSN: window.expCmdSN,
      maxCmdSN: window.maxCmdSN,
    };
  }

  private reject(reason: number, rejected: Buffer): void {
    if (this.window === undefined) throw protocol('malformed PDU during login');
    this.send(P.encodeReject({ ...this.sequence(true), reason }), Buffer.from(rejected));
  }

  /** Writes one PDU; PDUs of the same tick go out in one batch (cork/uncork). `done` runs once it is written. */
  private send(bhs: Buffer, data?: Uint8Array, done?: () => void): void {
    if (this.phase === 'closed') {
      done?.();
      return;
    }
    this.writer.write(P.framePdu(bhs, data, this.digests), done);
  }
}

function protocol(message: string): P.IscsiProtocolError {
  return new P.IscsiProtocolError(P.RejectReason.PROTOCOL_ERROR, message);
}

function invalidField(message: string): P.IscsiProtocolError {
  return new P.IscsiProtocolError(P.RejectReason.INVALID_PDU_FIELD, message);
}

function taskAttribute(code: number): TaskAttribute {
  switch (code) {
    case P.TaskAttributeCode.UNTAGGED:
      return 'untagged';
    case P.TaskAttributeCode.ORDERED:
      return 'ordered';
    case P.TaskAttributeCode.HEAD_OF_QUEUE:
      return 'head-of-queue';
    case P.TaskAttributeCode.ACA:
      return 'aca';
    default:
      return 'simple';
  }
}

/** HARDWARE ERROR / INTERNAL TARGET FAILURE, for a logical unit that threw. */
function targetFailureSense(): Uint8Array {
  const sense = new Uint8Array(18);
  sense[0] = 0x70;
  sense[2] = 0x04;
  sense[7] = 10;
  sense[12] = 0x44;
  return sense;
}
