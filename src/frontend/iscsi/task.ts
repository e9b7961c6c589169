// The data phases of one SCSI task, pure: collecting a write's Data-Out (immediate data,
// the unsolicited burst, R2T-solicited sequences with their DataSN/offset rules, RFC 7143
// §4.2.5, §11.7) and planning a command's answer (Data-In PDUs cut to the initiator's
// MaxRecvDataSegmentLength and MaxBurstLength, status in the last Data-In or a SCSI
// Response, residual counts, §11.4.5). The connection does the I/O around them.

import { assert } from '../../util/assert';
import type { BufferCache, BufferLease } from '../../store/buffer-cache';
import {
  IscsiProtocolError,
  RejectReason,
  RESERVED_TAG,
  type Residual,
  type DataOutPdu,
} from './pdu';
import { ScsiStatus, type DataDirection, type ScsiResponse } from './scsi-task';
import type { SessionParameters } from './text';

/** A Data-Out that breaks the task's data rules: the task ends with CHECK CONDITION. */
export class DataOutError extends Error {}

export interface R2TRequest {
  ttt: number;
  r2tSN: number;
  offset: number;
  length: number;
}

interface OutstandingR2T extends R2TRequest {
  received: number;
  nextDataSN: number;
}

/**
 * Collects the bytes of one write. Data-Out payloads are kept as received (views of the
 * socket's buffers) and joined once, in offset order, when the last byte is in — unless
 * the connection asked for the whole buffer (receiveBuffer) to read payloads straight
 * into it: then every piece lands there and nothing is joined at the end.
 *
 * The whole buffer (received into, or joined) comes from `buffers` when given: a fresh
 * 1 MiB buffer per large write cost about a quarter of the target's time in GC. Such a
 * buffer holds an older write's bytes until this one has filled it; it is only exposed
 * by take() once complete, when every byte of it was received (the sequence rules make
 * the pieces disjoint), and it goes back through take()'s release, which the caller
 * calls once nothing holds the data any more (the write's execution has settled).
 */
export class DataOutCollector {
  private readonly pieces: Array<{ offset: number; data: Buffer }> = [];
  /** The whole transfer's buffer, once asked for; pieces are copied (or received) into it. */
  private whole: Buffer | undefined;
  /** The lease `whole` is on, when it came from `buffers`. */
  private wholeLease: BufferLease | undefined;
  private receivedBytes = 0;
  /**
   * End of the unsolicited range (immediate data plus unsolicited Data-Out): at most
   * min(FirstBurstLength, EDTL); an initiator may end it sooner with the F bit.
   */
  unsolicitedEnd: number;
  /** Unsolicited Data-Out may still come: R2Ts wait, as they must follow it in offset order. */
  private unsolicitedOpen: boolean;
  private unsolicitedNext: number;
  private unsolicitedDataSN = 0;
  /** Next offset an R2T will ask for. */
  private solicitNext: number;
  private r2tSN = 0;
  private readonly outstanding = new Map<number, OutstandingR2T>();

  constructor(
    readonly expectedLength: number,
    immediate: Buffer,
    noUnsolicitedDataOut: boolean,
    private readonly params: SessionParameters,
    private readonly buffers?: BufferCache,
  ) {
    const firstBurst = Math.min(params.firstBurstLength, expectedLength);
    if (immediate.length > 0) {
      if (!params.immediateData) throw protocol('immediate data not negotiated');
      if (immediate.length > firstBurst) throw protocol('immediate data beyond FirstBurstLength');
    }
    this.unsolicitedEnd =
      params.initialR2T || noUnsolicitedDataOut
        ? immediate.length
        : Math.max(firstBurst, immediate.length);
    this.unsolicitedNext = immediate.length;
    this.unsolicitedOpen = this.unsolicitedEnd > immediate.length;
    this.solicitNext = this.unsolicitedEnd;
    if (immediate.length > 0) this.add(0, immediate);
  }

  get complete(): boolean {
    return this.receivedBytes === this.expectedLength;
  }

  get r2tCount(): number {
    return this.r2tSN;
  }

  /** Bytes R2Ts will ask for (charged against the connection's buffer bound); known once unsolicited data is done. */
  get solicitedBytes(): number {
    return this.unsolicitedOpen ? 0 : this.expectedLength - this.unsolicitedEnd;
  }

  /** Whether R2Ts can be planned: the unsolicited sequence (if any) has ended. */
  get solicitable(): boolean {
    return !this.unsolicitedOpen;
  }

  /** The R2Ts to send now, up to MaxOutstandingR2T at a time, each at most MaxBurstLength. */
  nextR2Ts(allocateTtt: () => number): R2TRequest[] {
    const requests: R2TRequest[] = [];
    while (
      !this.unsolicitedOpen &&
      this.solicitNext < this.expectedLength &&
      this.outstanding.size < this.params.maxOutstandingR2T
    ) {
      const length = Math.min(this.params.maxBurstLength, this.expectedLength - this.solicitNext);
      const ttt = allocateTtt();
      assert(ttt !== RESERVED_TAG && !this.outstanding.has(ttt), 'TTT reused');
      const r2t: OutstandingR2T = {
        ttt,
        r2tSN: this.r2tSN,
        offset: this.solicitNext,
        length,
        received: 0,
        nextDataSN: 0,
      };
      this.r2tSN += 1;
      this.solicitNext += length;
      this.outstanding.set(ttt, r2t);
      requests.push(r2t);
    }
    return requests;
  }

  /** One Data-Out for this task. Throws DataOutError when it breaks the sequence rules. */
  accept(pdu: DataOutPdu): void {
    if (pdu.ttt === RESERVED_TAG) {
      if (!this.unsolicitedOpen)
        throw new DataOutError('unsolicited Data-Out after its sequence ended');
      if (pdu.dataSN !== this.unsolicitedDataSN)
        throw new DataOutError('unsolicited DataSN out of order');
      if (pdu.bufferOffset !== this.unsolicitedNext)
        throw new DataOutError('unsolicited offset out of order');
      if (pdu.bufferOffset + pdu.data.length > this.unsolicitedEnd) {
        throw new DataOutError('unsolicited data beyond FirstBurstLength');
      }
      this.unsolicitedDataSN += 1;
      this.unsolicitedNext += pdu.data.length;
      this.add(pdu.bufferOffset, pdu.data);
      if (pdu.final || this.unsolicitedNext === this.unsolicitedEnd) {
        // The sequence is over: what it did not bring, R2Ts ask for.
        this.unsolicitedOpen = false;
        this.unsolicitedEnd = this.unsolicitedNext;
        this.solicitNext = this.unsolicitedNext;
      }
      return;
    }
    const r2t = this.outstanding.get(pdu.ttt);
    if (r2t === undefined) throw new DataOutError('Data-Out for no outstanding R2T');
    if (pdu.dataSN !== r2t.nextDataSN) throw new DataOutError('DataSN out of order');
    if (pdu.bufferOffset !== r2t.offset + r2t.received)
      throw new DataOutError('offset out of order');
    if (r2t.received + pdu.data.length > r2t.length) throw new DataOutError('data beyond the R2T');
    r2t.nextDataSN += 1;
    r2t.received += pdu.data.length;
    this.add(pdu.bufferOffset, pdu.data);
    if (r2t.received === r2t.length) this.outstanding.delete(r2t.ttt);
  }

  /**
   * The buffer a Data-Out payload for [offset, offset + length) may be received into
   * before accept(): a payload that spans socket chunks is then copied once instead of
   * twice (assembled, then joined). Undefined when the range lies outside the transfer.
   * A payload that accept() then refuses fails the whole task, so what it overwrote
   * is never used.
   */
  receiveBuffer(offset: number, length: number): Buffer | undefined {
    if (length === 0 || offset + length > this.expectedLength) return undefined;
    return this.wholeBuffer();
  }

  /**
   * The whole payload, once complete, and what gives its buffer back to `buffers` (call
   * it once, when nothing uses the data any more; not calling it only leaves it to GC).
   */
  take(): { data: Buffer; release: () => void } {
    assert(this.complete, 'take before the data is complete');
    if (this.expectedLength === 0) return { data: Buffer.alloc(0), release: () => undefined };
    const only = this.pieces[0];
    if (this.whole === undefined && this.pieces.length === 1 && only !== undefined) {
      return { data: only.data, release: () => undefined };
    }
    const data = this.wholeBuffer();
    const lease = this.wholeLease;
    this.whole = undefined;
    this.wholeLease = undefined;
    return { data, release: () => lease?.release() };
  }

  /** The whole transfer's buffer, made (from `buffers` if given) on first use with the pieces so far in it. */
  private wholeBuffer(): Buffer {
    if (this.whole !== undefined) return this.whole;
    let whole: Buffer;
    if (this.buffers === undefined) {
      whole = Buffer.allocUnsafe(this.expectedLength);
    } else {
      this.wholeLease = this.buffers.takeDirty(this.expectedLength);
      const { buffer, byteOffset, length } = this.wholeLease.data;
      whole = Buffer.from(buffer, byteOffset, length);
    }
    for (const piece of this.pieces) piece.data.copy(whole, piece.offset);
    this.pieces.length = 0;
    this.whole = whole;
    return whole;
  }

  private add(offset: number, data: Buffer): void {
    if (data.length === 0) return;
    assert(offset + data.length <= this.expectedLength, 'piece beyond the transfer');
    const whole = this.whole;
    if (whole === undefined) this.pieces.push({ offset, data });
    else if (data.buffer !== whole.buffer || data.byteOffset !== whole.byteOffset + offset) {
      data.copy(whole, offset);
    }
    this.receivedBytes += data.length;
  }
}

function protocol(message: string): IscsiProtocolError {
  return new IscsiProtocolError(RejectReason.PROTOCOL_ERROR, message);
}

// ---- The answer -----------------------------------------------------------------------------

export interface DataInSegment {
  offset: number;
  length: number;
  /** F bit: the last PDU of a MaxBurstLength sequence, or of the transfer. */
  final: boolean;
  /** Carries the status (S bit): the last segment when there is no sense data. */
  withStatus: boolean;
}

export interface ResponsePlan {
  /** The bytes to send, at most expectedLength of them. */
  data: Uint8Array;
  segments: DataInSegment[];
  residual: Residual;
  bidiResidual: Residual | undefined;
  /** False when the last Data-In carries the status. */
  scsiResponse: boolean;
  /** Data segment of the SCSI Response (SenseLength + sense), if any. */
  sense: Uint8Array | undefined;
}

function residualOf(transferred: number, expected: number): Residual {
  if (transferred > expected)
    return { overflow: true, underflow: false, count: transferred - expected };
  if (transferred < expected)
    return { overflow: false, underflow: true, count: expected - transferred };
  return { overflow: false, underflow: false, count: 0 };
}

export interface PlannedTask {
  direction: DataDirection;
  expectedLength: number;
  /** The read side's expected length of a bidirectional command. */
  bidiReadLength: number | undefined;
}

export function planResponse(
  task: PlannedTask,
  response: ScsiResponse,
  params: Pick<SessionParameters, 'initiatorMaxRecvDataSegmentLength' | 'maxBurstLength'>,
): ResponsePlan {
  const readLength =
    task.direction === 'bidirectional'
      ? (task.bidiReadLength ?? 0)
      : task.direction === 'write'
        ? 0
        : task.expectedLength;
  const produced = response.dataIn ?? new Uint8Array(0);
  // Without the R bit nothing goes back, whatever the unit produced (it shows as overflow).
  const sendable = task.direction === 'none' ? 0 : readLength;
  const data = produced.subarray(0, Math.min(produced.length, sendable));
  let residual: Residual;
  let bidiResidual: Residual | undefined;
  const writeResidual = residualOf(
    response.dataOutLength ?? task.expectedLength,
    task.expectedLength,
  );
  const readResidual = residualOf(produced.length, readLength);
  if (task.direction === 'write') residual = writeResidual;
  else if (task.direction === 'bidirectional') {
    residual = writeResidual;
    bidiResidual = readResidual;
  } else if (task.direction === 'read') residual = readResidual;
  else residual = residualOf(produced.length, task.expectedLength);

  const hasSense = response.sense !== undefined && response.sense.length > 0;
  const collapse =
    data.length > 0 &&
    !hasSense &&
    response.status !== ScsiStatus.CHECK_CONDITION &&
    task.direction !== 'bidirectional';
  const segments: DataInSegment[] = [];
  const segmentMax = params.initiatorMaxRecvDataSegmentLength;
  let burstUsed = 0;
  for (let offset = 0; offset < data.length;) {
    const length = Math.min(segmentMax, data.length - offset, params.maxBurstLength - burstUsed);
    const last = offset + length === data.length;
    burstUsed += length;
    const burstFull = burstUsed === params.maxBurstLength;
    segments.push({ offset, length, final: last || burstFull, withStatus: last && collapse });
    if (burstFull) burstUsed = 0;
    offset += length;
  }
  return {
    data,
    segments,
    residual,
    bidiResidual,
    scsiResponse: !collapse,
    sense: hasSense ? response.sense : undefined,
  };
}

/** Fixed-format sense data (SPC-4 §4.5.3) for failures the transport itself detects. */
export function transportSense(senseKey: number, asc: number, ascq: number): Uint8Array {
  const sense = new Uint8Array(18);
  sense[0] = 0x70;
  sense[2] = senseKey & 0x0f;
  sense[7] = 10;
  sense[12] = asc;
  sense[13] = ascq;
  return sense;
}

export const TransportSense = {
  /** ABORTED COMMAND / PROTOCOL SERVICE CRC ERROR: a data digest did not match. */
  dataDigest: (): Uint8Array => transportSense(0x0b, 0x47, 0x05),
  /** ABORTED COMMAND / DATA PHASE ERROR: Data-Out out of sequence. */
  dataPhase: (): Uint8Array => transportSense(0x0b, 0x4b, 0x00),
  /** ILLEGAL REQUEST / INVALID FIELD IN CDB: a transfer beyond what we buffer. */
  transferTooLong: (): Uint8Array => transportSense(0x05, 0x24, 0x00),
};
