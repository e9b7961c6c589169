// A small iSCSI initiator for the transport's tests: it speaks exactly what a test asks
// (login with chosen keys and CHAP, SCSI commands with immediate/unsolicited/solicited
// data, NOP, task management, text, logout) and can send raw or mangled PDUs, which the
// real clients (libiscsi, qemu) cannot be made to do. It checks what it can of the
// target's answers (digests, sequence numbers are left to the tests).

import { strict as assert } from 'node:assert';
import * as crypto from 'node:crypto';
import * as net from 'node:net';
import { ByteQueue } from '../../src/frontend/nbd/byte-queue';
import * as P from '../../src/frontend/iscsi/pdu';
import { chapResponse, decodeBinary } from '../../src/frontend/iscsi/login';
import { encodeText, parseText, type TextPairs } from '../../src/frontend/iscsi/text';

export interface ReceivedPdu {
  opcode: number;
  bhs: Buffer;
  data: Buffer;
}

export interface LoginOptions {
  initiatorName?: string;
  targetName?: string;
  discovery?: boolean;
  isid?: Buffer;
  /** Operational keys to offer (defaults: none, so RFC defaults apply). */
  keys?: TextPairs;
  chap?: { user: string; secret: string; mutual?: { user: string; secret: string } };
  /** Offer AuthMethod=None only (no CHAP). */
  authMethods?: string;
}

export interface LoginResult {
  statusClass: number;
  statusDetail: number;
  /** Every key the target sent during login. */
  keys: Map<string, string>;
  tsih: number;
}

export interface CommandResult {
  status: number;
  /** SCSI Response "response" byte (undefined when the status came in a Data-In). */
  response: number | undefined;
  data: Buffer;
  sense: Buffer | undefined;
  residualFlags: { overflow: boolean; underflow: boolean };
  residual: number;
  dataInCount: number;
  r2tCount: number;
  statSN: number;
}

export interface CommandOptions {
  lun?: number;
  read?: number;
  write?: Buffer;
  /** ExpectedDataTransferLength if not the data's length. */
  expectedLength?: number;
  /** Bytes of the write sent as immediate data. */
  immediateBytes?: number;
  /** Bytes sent as unsolicited Data-Out after the command (InitialR2T=No). */
  unsolicitedBytes?: number;
  /** Data-Out segment size. */
  segmentBytes?: number;
  immediate?: boolean;
  cmdSN?: number;
  itt?: number;
  /** Mangles each Data-Out BHS before it is sent. */
  mangleDataOut?: (bhs: Buffer, index: number) => void;
}

export const DEFAULT_INITIATOR = 'iqn.2026-11.io.cistern.test:initiator';

export class TestInitiator {
  private readonly queue = new ByteQueue();
  private waiting: (() => void) | undefined;
  private ended = false;
  digests: P.Digests = { header: false, data: false };
  cmdSN = 1;
  expStatSN = 0;
  private nextItt = 1;

  private constructor(private readonly socket: net.Socket) {
    socket.on('data', (chunk: Buffer) => {
      this.queue.push(chunk);
      this.wake();
    });
    socket.on('close', () => {
      this.ended = true;
      this.wake();
    });
    socket.on('error', () => undefined);
  }

  static async connect(port: number): Promise<TestInitiator> {
    const socket = net.connect(port, '127.0.0.1');
    await new Promise<void>((resolve, reject) => {
      socket.once('connect', resolve);
      socket.once('error', reject);
    });
    socket.setNoDelay(true);
    return new TestInitiator(socket);
  }

  get closed(): boolean {
    return this.ended;
  }

  itt(): number {
    const itt = this.nextItt;
    this.nextItt += 1;
    return itt;
  }

  private wake(): void {
    const waiting = this.waiting;
    this.waiting = undefined;
    waiting?.();
  }

  writeRaw(bytes: Buffer): void {
    this.socket.write(bytes);
  }

  send(bhs: Buffer, data?: Buffer): void {
    for (const part of P.framePdu(bhs, data, this.digests)) this.socket.write(part);
  }

  /** The next PDU, or undefined when the connection closes (or `timeoutMs` passes). */
  async receive(timeoutMs = 5000): Promise<ReceivedPdu | undefined> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      if (this.queue.length >= P.BHS_BYTES) {
        const bhs = this.queue.peek(P.BHS_BYTES);
        const total = P.wireLength(bhs, this.digests);
        if (this.queue.length >= total) {
          const framed = P.splitPdu(this.queue.take(total), this.digests);
          assert.equal(framed.kind, 'ok', 'target sent a bad data digest');
          const pdu = framed.pdu;
          return {
            opcode: P.opcodeOf(pdu.bhs),
            bhs: Buffer.from(pdu.bhs),
            data: Buffer.from(pdu.data),
          };
        }
      }
      if (this.ended) return undefined;
      const left = deadline - Date.now();
      if (left <= 0) return undefined;
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, left);
        this.waiting = () => {
          clearTimeout(timer);
          resolve();
        };
      });
    }
  }

  async expect(opcode: number, timeoutMs?: number): Promise<ReceivedPdu> {
    const pdu = await this.receive(timeoutMs);
    assert.ok(
      pdu !== undefined,
      `expected opcode 0x${opcode.toString(16)}, connection closed or silent`,
    );
    assert.equal(
      pdu.opcode,
      opcode,
      `expected opcode 0x${opcode.toString(16)}, got 0x${pdu.opcode.toString(16)}`,
    );
    return pdu;
  }

  /** Waits for the target to close the connection; true if it did within the time. */
  async waitClosed(timeoutMs = 5000): Promise<boolean> {
    const deadline = Date.now() + timeoutMs;
    while (!this.ended && Date.now() < deadline) {
      const pdu = await this.receive(deadline - Date.now());
      if (pdu === undefined) break;
    }
    return this.ended;
  }

  close(): void {
    this.socket.destroy();
  }

  // ---- Login -------------------------------------------------------------------------------

  loginPdu(fields: {
    transit: boolean;
    csg: number;
    nsg: number;
    isid: Buffer;
    tsih?: number;
    itt: number;
    continue?: boolean;
    versionMin?: number;
  }): Buffer {
    const bhs = Buffer.alloc(P.BHS_BYTES);
    bhs[0] = 0x40 | P.Opcode.LOGIN;
    bhs[1] =
      (fields.transit ? 0x80 : 0) |
      (fields.continue ? 0x40 : 0) |
      (fields.csg << 2) |
      (fields.transit ? fields.nsg : 0);
    bhs[3] = fields.versionMin ?? 0;
    fields.isid.copy(bhs, 8);
    bhs.writeUInt16BE(fields.tsih ?? 0, 14);
    bhs.writeUInt32BE(fields.itt, 16);
    bhs.writeUInt32BE(this.cmdSN, 24);
    bhs.writeUInt32BE(this.expStatSN, 28);
    return bhs;
  }

  private async loginStep(
    bhs: Buffer,
    pairs: TextPairs,
    keys: Map<string, string>,
  ): Promise<ReceivedPdu> {
    this.send(bhs, encodeText(pairs));
    const response = await this.expect(P.Opcode.LOGIN_RESPONSE);
    this.expStatSN = (response.bhs.readUInt32BE(24) + 1) >>> 0;
    for (const [key, value] of parseText(response.data)) keys.set(key, value);
    return response;
  }

  async login(options: LoginOptions = {}): Promise<LoginResult> {
    const isid = options.isid ?? Buffer.from([0x80, 0, 0, 0x12, 0x34, 0x56]);
    const itt = this.itt();
    const keys = new Map<string, string>();
    const first: TextPairs = [['InitiatorName', options.initiatorName ?? DEFAULT_INITIATOR]];
    if (options.discovery) first.push(['SessionType', 'Discovery']);
    else first.push(['TargetName', options.targetName ?? 'iqn.2026-11.io.cistern:vol']);
    first.push(['AuthMethod', options.authMethods ?? (options.chap ? 'CHAP,None' : 'None')]);
    const done = (response: ReceivedPdu): LoginResult => ({
      statusClass: response.bhs[36] as number,
      statusDetail: response.bhs[37] as number,
      keys,
      tsih: response.bhs.readUInt16BE(14),
    });
    let response = await this.loginStep(
      this.loginPdu({ transit: options.chap === undefined, csg: 0, nsg: 1, isid, itt }),
      first,
      keys,
    );
    if (response.bhs[36] !== 0) return done(response);
    if (options.chap !== undefined && keys.get('AuthMethod') === 'CHAP') {
      response = await this.loginStep(
        this.loginPdu({ transit: false, csg: 0, nsg: 1, isid, itt }),
        [['CHAP_A', '5']],
        keys,
      );
      if (response.bhs[36] !== 0) return done(response);
      const identifier = Number(keys.get('CHAP_I'));
      const challenge = decodeBinary(keys.get('CHAP_C'));
      assert.ok(challenge !== undefined && challenge.length >= 16, 'target challenge too short');
      const answer: TextPairs = [
        ['CHAP_N', options.chap.user],
        ['CHAP_R', `0x${chapResponse(identifier, options.chap.secret, challenge).toString('hex')}`],
      ];
      const mutualChallenge = crypto.randomBytes(16);
      if (options.chap.mutual !== undefined) {
        answer.push(['CHAP_I', '7'], ['CHAP_C', `0x${mutualChallenge.toString('hex')}`]);
      }
      response = await this.loginStep(
        this.loginPdu({ transit: true, csg: 0, nsg: 1, isid, itt }),
        answer,
        keys,
      );
      if (response.bhs[36] !== 0) return done(response);
      if (options.chap.mutual !== undefined) {
        assert.equal(keys.get('CHAP_N'), options.chap.mutual.user);
        const expected = chapResponse(7, options.chap.mutual.secret, mutualChallenge);
        assert.deepEqual(decodeBinary(keys.get('CHAP_R')), expected, 'target failed mutual CHAP');
      }
    }
    response = await this.loginStep(
      this.loginPdu({ transit: true, csg: 1, nsg: 3, isid, itt }),
      options.keys ?? [],
      keys,
    );
    const result = done(response);
    if (result.statusClass === 0 && ((response.bhs[1] as number) & 0x83) === 0x83) {
      this.digests = {
        header: keys.get('HeaderDigest') === 'CRC32C',
        data: keys.get('DataDigest') === 'CRC32C',
      };
    }
    return result;
  }

  // ---- Full feature phase ----------------------------------------------------------------------

  commandPdu(
    cdb: Buffer,
    options: {
      read: boolean;
      write: boolean;
      final: boolean;
      expectedLength: number;
      lun?: number;
      immediate?: boolean;
      cmdSN?: number;
      itt: number;
      /** Task attribute code (default 1, SIMPLE). */
      attribute?: number;
    },
  ): Buffer {
    const bhs = Buffer.alloc(P.BHS_BYTES);
    bhs[0] = (options.immediate ? 0x40 : 0) | P.Opcode.SCSI_COMMAND;
    bhs[1] =
      (options.final ? 0x80 : 0) |
      (options.read ? 0x40 : 0) |
      (options.write ? 0x20 : 0) |
      (options.attribute ?? P.TaskAttributeCode.SIMPLE);
    P.encodeLun(options.lun ?? 0, bhs);
    bhs.writeUInt32BE(options.itt, 16);
    bhs.writeUInt32BE(options.expectedLength, 20);
    bhs.writeUInt32BE(options.cmdSN ?? this.cmdSN, 24);
    bhs.writeUInt32BE(this.expStatSN, 28);
    cdb.copy(bhs, 32, 0, Math.min(16, cdb.length));
    return bhs;
  }

  dataOutPdu(fields: {
    final: boolean;
    itt: number;
    ttt: number;
    dataSN: number;
    offset: number;
    lun?: number;
  }): Buffer {
    const bhs = Buffer.alloc(P.BHS_BYTES);
    bhs[0] = P.Opcode.DATA_OUT;
    bhs[1] = fields.final ? 0x80 : 0;
    P.encodeLun(fields.lun ?? 0, bhs);
    bhs.writeUInt32BE(fields.itt, 16);
    bhs.writeUInt32BE(fields.ttt >>> 0, 20);
    bhs.writeUInt32BE(this.expStatSN, 28);
    bhs.writeUInt32BE(fields.dataSN, 36);
    bhs.writeUInt32BE(fields.offset, 40);
    return bhs;
  }

  /** Sends a SCSI command, its data as told, answers R2Ts, and collects the answer. */
  async command(cdb: Buffer, options: CommandOptions = {}): Promise<CommandResult> {
    const write = options.write;
    const expectedLength = options.expectedLength ?? write?.length ?? options.read ?? 0;
    const itt = options.itt ?? this.itt();
    const immediateBytes = Math.min(options.immediateBytes ?? 0, write?.length ?? 0);
    const unsolicitedBytes = options.unsolicitedBytes ?? 0;
    const segment = options.segmentBytes ?? 8192;
    const bhs = this.commandPdu(cdb, {
      read: options.read !== undefined,
      write: write !== undefined,
      final: unsolicitedBytes === 0,
      expectedLength,
      lun: options.lun,
      immediate: options.immediate,
      cmdSN: options.cmdSN,
      itt,
    });
    if (!options.immediate && options.cmdSN === undefined) this.cmdSN += 1;
    this.send(bhs, write?.subarray(0, immediateBytes));
    let dataOutIndex = 0;
    const sendData = (ttt: number, offset: number, length: number): void => {
      assert.ok(write !== undefined);
      let dataSN = 0;
      for (let at = offset; at < offset + length; at += segment) {
        const piece = Math.min(segment, offset + length - at);
        const out = this.dataOutPdu({
          final: at + piece === offset + length,
          itt,
          ttt,
          dataSN,
          offset: at,
          lun: options.lun,
        });
        options.mangleDataOut?.(out, dataOutIndex);
        dataOutIndex += 1;
        dataSN += 1;
        this.send(out, write.subarray(at, at + piece));
      }
    };
    if (unsolicitedBytes > 0)
      sendData(P.RESERVED_TAG, immediateBytes, unsolicitedBytes - immediateBytes);
    const chunks: Array<{ offset: number; data: Buffer }> = [];
    let dataInCount = 0;
    let r2tCount = 0;
    for (;;) {
      const pdu = await this.receive();
      assert.ok(pdu !== undefined, 'connection closed before the command was answered');
      if (pdu.opcode === P.Opcode.NOP_IN && pdu.bhs.readUInt32BE(16) === P.RESERVED_TAG) {
        this.nopReply(pdu.bhs.readUInt32BE(20)); // the target's keepalive, as any initiator answers it
        continue;
      }
      if (pdu.opcode === P.Opcode.R2T) {
        assert.equal(pdu.bhs.readUInt32BE(16), itt);
        assert.equal(pdu.bhs.readUInt32BE(36), r2tCount, 'R2TSN');
        r2tCount += 1;
        sendData(pdu.bhs.readUInt32BE(20), pdu.bhs.readUInt32BE(40), pdu.bhs.readUInt32BE(44));
        continue;
      }
      if (pdu.opcode === P.Opcode.DATA_IN) {
        assert.equal(pdu.bhs.readUInt32BE(16), itt);
        assert.equal(pdu.bhs.readUInt32BE(36), dataInCount, 'DataSN');
        dataInCount += 1;
        chunks.push({ offset: pdu.bhs.readUInt32BE(40), data: pdu.data });
        const flags = pdu.bhs[1] as number;
        if (flags & 0x01) {
          this.expStatSN = (pdu.bhs.readUInt32BE(24) + 1) >>> 0;
          return {
            status: pdu.bhs[3] as number,
            response: undefined,
            data: assemble(chunks),
            sense: undefined,
            residualFlags: { overflow: (flags & 0x04) !== 0, underflow: (flags & 0x02) !== 0 },
            residual: pdu.bhs.readUInt32BE(44),
            dataInCount,
            r2tCount,
            statSN: pdu.bhs.readUInt32BE(24),
          };
        }
        continue;
      }
      if (pdu.opcode === P.Opcode.SCSI_RESPONSE) {
        assert.equal(pdu.bhs.readUInt32BE(16), itt);
        this.expStatSN = (pdu.bhs.readUInt32BE(24) + 1) >>> 0;
        const flags = pdu.bhs[1] as number;
        const senseLength = pdu.data.length >= 2 ? pdu.data.readUInt16BE(0) : 0;
        return {
          status: pdu.bhs[3] as number,
          response: pdu.bhs[2] as number,
          data: assemble(chunks),
          sense: senseLength > 0 ? pdu.data.subarray(2, 2 + senseLength) : undefined,
          residualFlags: { overflow: (flags & 0x04) !== 0, underflow: (flags & 0x02) !== 0 },
          residual: pdu.bhs.readUInt32BE(44),
          dataInCount,
          r2tCount,
          statSN: pdu.bhs.readUInt32BE(24),
        };
      }
      assert.fail(
        `unexpected opcode 0x${pdu.opcode.toString(16)} while waiting for a command's answer`,
      );
    }
  }

  nopOut(data: Buffer, options: { itt?: number; immediate?: boolean } = {}): number {
    const itt = options.itt ?? this.itt();
    const bhs = Buffer.alloc(P.BHS_BYTES);
    bhs[0] = ((options.immediate ?? true) ? 0x40 : 0) | P.Opcode.NOP_OUT;
    bhs[1] = 0x80;
    bhs.writeUInt32BE(itt, 16);
    bhs.writeUInt32BE(P.RESERVED_TAG, 20);
    bhs.writeUInt32BE(this.cmdSN, 24);
    bhs.writeUInt32BE(this.expStatSN, 28);
    if (!(options.immediate ?? true)) this.cmdSN += 1;
    this.send(bhs, data);
    return itt;
  }

  /** Answers a target's NOP-In ping (ITT reserved, its TTT echoed). */
  nopReply(ttt: number): void {
    const bhs = Buffer.alloc(P.BHS_BYTES);
    bhs[0] = 0x40 | P.Opcode.NOP_OUT;
    bhs[1] = 0x80;
    bhs.writeUInt32BE(P.RESERVED_TAG, 16);
    bhs.writeUInt32BE(ttt >>> 0, 20);
    bhs.writeUInt32BE(this.cmdSN, 24);
    bhs.writeUInt32BE(this.expStatSN, 28);
    this.send(bhs);
  }

  taskManagement(
    fn: number,
    fields: { referencedTaskTag?: number; refCmdSN?: number; lun?: number } = {},
  ): number {
    const itt = this.itt();
    const bhs = Buffer.alloc(P.BHS_BYTES);
    bhs[0] = 0x40 | P.Opcode.TASK_MANAGEMENT;
    bhs[1] = 0x80 | fn;
    P.encodeLun(fields.lun ?? 0, bhs);
    bhs.writeUInt32BE(itt, 16);
    bhs.writeUInt32BE(fields.referencedTaskTag ?? P.RESERVED_TAG, 20);
    bhs.writeUInt32BE(this.cmdSN, 24);
    bhs.writeUInt32BE(this.expStatSN, 28);
    bhs.writeUInt32BE(fields.refCmdSN ?? 0, 32);
    this.send(bhs);
    return itt;
  }

  textRequest(
    pairs: TextPairs,
    fields: { ttt?: number; final?: boolean; continue?: boolean } = {},
  ): number {
    const itt = this.itt();
    const bhs = Buffer.alloc(P.BHS_BYTES);
    bhs[0] = P.Opcode.TEXT;
    bhs[1] = ((fields.final ?? true) ? 0x80 : 0) | (fields.continue ? 0x40 : 0);
    bhs.writeUInt32BE(itt, 16);
    bhs.writeUInt32BE((fields.ttt ?? P.RESERVED_TAG) >>> 0, 20);
    bhs.writeUInt32BE(this.cmdSN, 24);
    bhs.writeUInt32BE(this.expStatSN, 28);
    this.cmdSN += 1;
    this.send(bhs, encodeText(pairs));
    return itt;
  }

  /** SendTargets=<which>, following continuations; the whole answer. */
  async sendTargets(which = 'All'): Promise<TextPairs> {
    this.textRequest([['SendTargets', which]]);
    const parts: Buffer[] = [];
    for (;;) {
      const pdu = await this.expect(P.Opcode.TEXT_RESPONSE);
      this.expStatSN = (pdu.bhs.readUInt32BE(24) + 1) >>> 0;
      parts.push(pdu.data);
      if (((pdu.bhs[1] as number) & 0x80) !== 0) break;
      this.textRequest([], { ttt: pdu.bhs.readUInt32BE(20) });
    }
    return parseText(Buffer.concat(parts));
  }

  async logout(reason = 0): Promise<ReceivedPdu> {
    const bhs = Buffer.alloc(P.BHS_BYTES);
    bhs[0] = 0x40 | P.Opcode.LOGOUT;
    bhs[1] = 0x80 | reason;
    bhs.writeUInt32BE(this.itt(), 16);
    bhs.writeUInt32BE(this.cmdSN, 24);
    bhs.writeUInt32BE(this.expStatSN, 28);
    this.send(bhs);
    return this.expect(P.Opcode.LOGOUT_RESPONSE);
  }
}

function assemble(chunks: Array<{ offset: number; data: Buffer }>): Buffer {
  const sorted = [...chunks].sort((a, b) => a.offset - b.offset);
  let expected = 0;
  for (const chunk of sorted) {
    assert.equal(chunk.offset, expected, 'Data-In offsets not contiguous');
    expected += chunk.data.length;
  }
  return Buffer.concat(sorted.map((chunk) => chunk.data));
}

export function read10(lba: number, blocks: number): Buffer {
  const cdb = Buffer.alloc(10);
  cdb[0] = 0x28;
  cdb.writeUInt32BE(lba, 2);
  cdb.writeUInt16BE(blocks, 7);
  return cdb;
}

export function write10(lba: number, blocks: number): Buffer {
  const cdb = Buffer.alloc(10);
  cdb[0] = 0x2a;
  cdb.writeUInt32BE(lba, 2);
  cdb.writeUInt16BE(blocks, 7);
  return cdb;
}

export function inquiry(allocation: number): Buffer {
  const cdb = Buffer.alloc(6);
  cdb[0] = 0x12;
  cdb.writeUInt16BE(allocation, 3);
  return cdb;
}
