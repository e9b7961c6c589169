// iSCSI PDU wire format (RFC 7143 §11), pure codecs: the 48-byte Basic Header Segment
// of every opcode the target receives (decoded into typed requests) and sends (encoded
// from typed fields), additional header segments (extended CDB, bidirectional read
// length), data segment padding and CRC32C digests. No sockets here, so the connection,
// the test initiator and the fuzz test share one definition of the wire format.
//
// Malformed input is a CisternError BAD_REQUEST carrying the Reject reason to answer
// with (IscsiProtocolError); nothing here throws a RangeError on hostile bytes.

import { assert } from '../../util/assert';
import { CisternError } from '../../util/errors';
import { crc32c } from './crc32c';

export const BHS_BYTES = 48;
export const DIGEST_BYTES = 4;
/** ITT/TTT value meaning "no tag" (RFC 7143 §11.2.1.8). */
export const RESERVED_TAG = 0xffffffff;
/** The largest data segment the 24-bit DataSegmentLength field can describe. */
export const MAX_DATA_SEGMENT_FIELD_BYTES = 0xffffff;
/** TotalAHSLength is one byte counting 4-byte words. */
export const MAX_AHS_BYTES = 255 * 4;
/** The largest CDB an extended-CDB AHS can carry: 16 in the BHS plus the AHS's share. */
export const MAX_CDB_BYTES = 16 + MAX_AHS_BYTES - 4;

export const Opcode = {
  NOP_OUT: 0x00,
  SCSI_COMMAND: 0x01,
  TASK_MANAGEMENT: 0x02,
  LOGIN: 0x03,
  TEXT: 0x04,
  DATA_OUT: 0x05,
  LOGOUT: 0x06,
  SNACK: 0x10,
  NOP_IN: 0x20,
  SCSI_RESPONSE: 0x21,
  TASK_MANAGEMENT_RESPONSE: 0x22,
  LOGIN_RESPONSE: 0x23,
  TEXT_RESPONSE: 0x24,
  DATA_IN: 0x25,
  LOGOUT_RESPONSE: 0x26,
  R2T: 0x31,
  ASYNC_MESSAGE: 0x32,
  REJECT: 0x3f,
} as const;

/** Reject reasons (RFC 7143 §11.17.1). */
export const RejectReason = {
  DATA_DIGEST_ERROR: 0x02,
  SNACK_REJECT: 0x03,
  PROTOCOL_ERROR: 0x04,
  COMMAND_NOT_SUPPORTED: 0x05,
  IMMEDIATE_COMMAND_REJECT: 0x06,
  TASK_IN_PROGRESS: 0x07,
  INVALID_DATA_ACK: 0x08,
  INVALID_PDU_FIELD: 0x09,
  LONG_OPERATION_REJECT: 0x0a,
  WAITING_FOR_LOGOUT: 0x0c,
} as const;

/** A PDU the peer got wrong: answered with a Reject of `rejectReason`, or the connection closed. */
export class IscsiProtocolError extends CisternError {
  constructor(
    readonly rejectReason: number,
    message: string,
  ) {
    super('BAD_REQUEST', message);
  }
}

function protocolError(message: string, reason: number = RejectReason.PROTOCOL_ERROR): never {
  throw new IscsiProtocolError(reason, message);
}

// ---- Framing --------------------------------------------------------------------------

export interface Digests {
  header: boolean;
  data: boolean;
}

/** A PDU split into its segments, digests checked and stripped, padding removed. */
export interface RawPdu {
  readonly bhs: Buffer;
  readonly ahs: Buffer;
  readonly data: Buffer;
}

export function opcodeOf(bhs: Uint8Array): number {
  return (bhs[0] as number) & 0x3f;
}

export function isImmediate(bhs: Uint8Array): boolean {
  return ((bhs[0] as number) & 0x40) !== 0;
}

export function dataSegmentLengthOf(bhs: Uint8Array): number {
  return ((bhs[5] as number) << 16) | ((bhs[6] as number) << 8) | (bhs[7] as number);
}

export function ahsLengthOf(bhs: Uint8Array): number {
  return (bhs[4] as number) * 4;
}

export function padded(length: number): number {
  return (length + 3) & ~3;
}

/** Bytes the whole PDU occupies on the wire, known from its BHS alone. */
export function wireLength(bhs: Uint8Array, digests: Digests): number {
  const dataLength = dataSegmentLengthOf(bhs);
  return (
    BHS_BYTES +
    ahsLengthOf(bhs) +
    (digests.header ? DIGEST_BYTES : 0) +
    padded(dataLength) +
    (digests.data && dataLength > 0 ? DIGEST_BYTES : 0)
  );
}

export type FrameResult =
  | { kind: 'ok'; pdu: RawPdu }
  /** The header is sound but the data digest is wrong: Reject the PDU, keep the connection. */
  | { kind: 'data-digest-error'; pdu: RawPdu };

/**
 * Splits one complete PDU (`wire` is exactly wireLength bytes). A header digest error
 * throws: with ErrorRecoveryLevel 0 the stream cannot be trusted afterwards.
 */
export function splitPdu(wire: Buffer, digests: Digests): FrameResult {
  assert(wire.length >= BHS_BYTES, 'splitPdu needs a whole BHS');
  const bhs = wire.subarray(0, BHS_BYTES);
  assert(wire.length === wireLength(bhs, digests), 'splitPdu needs the whole PDU');
  let at = BHS_BYTES;
  const ahs = wire.subarray(at, at + ahsLengthOf(bhs));
  at += ahs.length;
  if (digests.header) {
    const expected = wire.readUInt32LE(at);
    if (crc32c(bhs, ahs) !== expected) protocolError('header digest error');
    at += DIGEST_BYTES;
  }
  const dataLength = dataSegmentLengthOf(bhs);
  const data = wire.subarray(at, at + dataLength);
  const paddedData = wire.subarray(at, at + padded(dataLength));
  at += paddedData.length;
  if (digests.data && dataLength > 0) {
    const expected = wire.readUInt32LE(at);
    if (crc32c(paddedData) !== expected)
      return { kind: 'data-digest-error', pdu: { bhs, ahs, data } };
  }
  return { kind: 'ok', pdu: { bhs, ahs, data } };
}

const PADDING = Buffer.alloc(4);

/**
 * The buffers to write for one PDU: the BHS (DataSegmentLength set from `data`), the
 * header digest, the data, its padding, the data digest. The data is not copied.
 */
export function framePdu(bhs: Buffer, data: Uint8Array | undefined, digests: Digests): Buffer[] {
  assert(bhs.length === BHS_BYTES, 'BHS must be 48 bytes');
  const dataLength = data?.length ?? 0;
  assert(dataLength <= MAX_DATA_SEGMENT_FIELD_BYTES, 'data segment too long');
  bhs[5] = (dataLength >>> 16) & 0xff;
  bhs[6] = (dataLength >>> 8) & 0xff;
  bhs[7] = dataLength & 0xff;
  const parts: Buffer[] = [];
  if (digests.header) {
    const header = Buffer.allocUnsafe(BHS_BYTES + DIGEST_BYTES);
    bhs.copy(header);
    header.writeUInt32LE(crc32c(bhs), BHS_BYTES);
    parts.push(header);
  } else {
    parts.push(bhs);
  }
  if (data !== undefined && dataLength > 0) {
    const body = Buffer.from(data.buffer, data.byteOffset, data.byteLength);
    parts.push(body);
    const padding = PADDING.subarray(0, padded(dataLength) - dataLength);
    if (padding.length > 0) parts.push(padding);
    if (digests.data) {
      const digest = Buffer.allocUnsafe(DIGEST_BYTES);
      digest.writeUInt32LE(crc32c(body, padding));
      parts.push(digest);
    }
  }
  return parts;
}

// ---- LUN --------------------------------------------------------------------------------

/** The LUN a malformed or unsupported 8-byte LUN field decodes to: no such logical unit. */
export const LUN_NOT_ADDRESSABLE = 0xffffffff;

/** SAM-5 single-level LUN: peripheral (00b) or flat (01b) addressing; anything else is not addressable. */
export function decodeLun(bhs: Uint8Array, offset = 8): number {
  for (let i = offset + 2; i < offset + 8; i += 1) if (bhs[i] !== 0) return LUN_NOT_ADDRESSABLE;
  const first = bhs[offset] as number;
  const second = bhs[offset + 1] as number;
  switch (first >> 6) {
    case 0:
      return (first & 0x3f) === 0 ? second : LUN_NOT_ADDRESSABLE;
    case 1:
      return ((first & 0x3f) << 8) | second;
    default:
      return LUN_NOT_ADDRESSABLE;
  }
}

export function encodeLun(lun: number, target: Buffer, offset = 8): void {
  assert(Number.isInteger(lun) && lun >= 0 && lun < 0x4000, `LUN ${lun} not encodable`);
  target.fill(0, offset, offset + 8);
  if (lun < 256) {
    target[offset + 1] = lun;
  } else {
    target[offset] = 0x40 | (lun >> 8);
    target[offset + 1] = lun & 0xff;
  }
}

// ---- Requests the target receives ---------------------------------------------------------

export const TaskAttributeCode = {
  UNTAGGED: 0,
  SIMPLE: 1,
  ORDERED: 2,
  HEAD_OF_QUEUE: 3,
  ACA: 4,
} as const;

export interface ScsiCommandPdu {
  immediate: boolean;
  final: boolean;
  read: boolean;
  write: boolean;
  attribute: number;
  lun: number;
  itt: number;
  expectedLength: number;
  cmdSN: number;
  expStatSN: number;
  cdb: Buffer;
  /** From the bidirectional-read AHS, when present. */
  bidiReadLength: number | undefined;
  data: Buffer;
}

const AHS_TYPE_EXTENDED_CDB = 1;
const AHS_TYPE_BIDI_READ_LENGTH = 2;

export function decodeScsiCommand(pdu: RawPdu): ScsiCommandPdu {
  const { bhs } = pdu;
  const flags = bhs[1] as number;
  let cdb = Buffer.from(bhs.subarray(32, 48));
  let bidiReadLength: number | undefined;
  let at = 0;
  // Each AHS: 2-byte length of its specific part, 1-byte type, then the part, padded to 4.
  while (at < pdu.ahs.length) {
    if (pdu.ahs.length - at < 4) protocolError('truncated AHS', RejectReason.INVALID_PDU_FIELD);
    const length = pdu.ahs.readUInt16BE(at);
    const type = pdu.ahs[at + 2] as number;
    const end = at + 3 + length;
    if (length === 0 || end > pdu.ahs.length) {
      protocolError('AHS length out of range', RejectReason.INVALID_PDU_FIELD);
    }
    if (type === AHS_TYPE_EXTENDED_CDB) {
      // One reserved byte, then the CDB bytes beyond the first 16.
      cdb = Buffer.concat([cdb, pdu.ahs.subarray(at + 4, end)]);
    } else if (type === AHS_TYPE_BIDI_READ_LENGTH) {
      if (length !== 5) protocolError('bad bidirectional AHS', RejectReason.INVALID_PDU_FIELD);
      bidiReadLength = pdu.ahs.readUInt32BE(at + 4);
    } else {
      protocolError(`unknown AHS type ${type}`, RejectReason.INVALID_PDU_FIELD);
    }
    at += padded(3 + length);
  }
  return {
    immediate: isImmediate(bhs),
    final: (flags & 0x80) !== 0,
    read: (flags & 0x40) !== 0,
    write: (flags & 0x20) !== 0,
    attribute: flags & 0x07,
    lun: decodeLun(bhs),
    itt: bhs.readUInt32BE(16),
    expectedLength: bhs.readUInt32BE(20),
    cmdSN: bhs.readUInt32BE(24),
    expStatSN: bhs.readUInt32BE(28),
    cdb,
    bidiReadLength,
    data: pdu.data,
  };
}

export interface DataOutPdu {
  final: boolean;
  lun: number;
  itt: number;
  ttt: number;
  expStatSN: number;
  dataSN: number;
  bufferOffset: number;
  data: Buffer;
}

export function decodeDataOut(pdu: RawPdu): DataOutPdu {
  const { bhs } = pdu;
  return {
    final: ((bhs[1] as number) & 0x80) !== 0,
    lun: decodeLun(bhs),
    itt: bhs.readUInt32BE(16),
    ttt: bhs.readUInt32BE(20),
    expStatSN: bhs.readUInt32BE(28),
    dataSN: bhs.readUInt32BE(36),
    bufferOffset: bhs.readUInt32BE(40),
    data: pdu.data,
  };
}

export interface NopOutPdu {
  immediate: boolean;
  lunField: Buffer;
  itt: number;
  ttt: number;
  cmdSN: number;
  expStatSN: number;
  data: Buffer;
}

export function decodeNopOut(pdu: RawPdu): NopOutPdu {
  const { bhs } = pdu;
  return {
    immediate: isImmediate(bhs),
    lunField: Buffer.from(bhs.subarray(8, 16)),
    itt: bhs.readUInt32BE(16),
    ttt: bhs.readUInt32BE(20),
    cmdSN: bhs.readUInt32BE(24),
    expStatSN: bhs.readUInt32BE(28),
    data: pdu.data,
  };
}

export const TmfFunction = {
  ABORT_TASK: 1,
  ABORT_TASK_SET: 2,
  CLEAR_ACA: 3,
  CLEAR_TASK_SET: 4,
  LOGICAL_UNIT_RESET: 5,
  TARGET_WARM_RESET: 6,
  TARGET_COLD_RESET: 7,
  TASK_REASSIGN: 8,
} as const;

export const TmfResponse = {
  FUNCTION_COMPLETE: 0,
  TASK_DOES_NOT_EXIST: 1,
  LUN_DOES_NOT_EXIST: 2,
  TASK_STILL_ALLEGIANT: 3,
  REASSIGNMENT_NOT_SUPPORTED: 4,
  FUNCTION_NOT_SUPPORTED: 5,
  AUTHORIZATION_FAILED: 6,
  FUNCTION_REJECTED: 255,
} as const;

export interface TaskManagementPdu {
  immediate: boolean;
  function: number;
  lun: number;
  itt: number;
  referencedTaskTag: number;
  cmdSN: number;
  expStatSN: number;
  refCmdSN: number;
  expDataSN: number;
}

export function decodeTaskManagement(pdu: RawPdu): TaskManagementPdu {
  const { bhs } = pdu;
  return {
    immediate: isImmediate(bhs),
    function: (bhs[1] as number) & 0x7f,
    lun: decodeLun(bhs),
    itt: bhs.readUInt32BE(16),
    referencedTaskTag: bhs.readUInt32BE(20),
    cmdSN: bhs.readUInt32BE(24),
    expStatSN: bhs.readUInt32BE(28),
    refCmdSN: bhs.readUInt32BE(32),
    expDataSN: bhs.readUInt32BE(36),
  };
}

/** Login stages (CSG/NSG). */
export const Stage = {
  SECURITY: 0,
  OPERATIONAL: 1,
  FULL_FEATURE: 3,
} as const;

export interface LoginRequestPdu {
  transit: boolean;
  continue: boolean;
  csg: number;
  nsg: number;
  versionMax: number;
  versionMin: number;
  /** 6 bytes. */
  isid: Buffer;
  tsih: number;
  itt: number;
  cid: number;
  cmdSN: number;
  expStatSN: number;
  data: Buffer;
}

export function decodeLoginRequest(pdu: RawPdu): LoginRequestPdu {
  const { bhs } = pdu;
  const flags = bhs[1] as number;
  return {
    transit: (flags & 0x80) !== 0,
    continue: (flags & 0x40) !== 0,
    csg: (flags >> 2) & 3,
    nsg: flags & 3,
    versionMax: bhs[2] as number,
    versionMin: bhs[3] as number,
    isid: Buffer.from(bhs.subarray(8, 14)),
    tsih: bhs.readUInt16BE(14),
    itt: bhs.readUInt32BE(16),
    cid: bhs.readUInt16BE(20),
    cmdSN: bhs.readUInt32BE(24),
    expStatSN: bhs.readUInt32BE(28),
    data: pdu.data,
  };
}

export interface TextRequestPdu {
  immediate: boolean;
  final: boolean;
  continue: boolean;
  itt: number;
  ttt: number;
  cmdSN: number;
  expStatSN: number;
  data: Buffer;
}

export function decodeTextRequest(pdu: RawPdu): TextRequestPdu {
  const { bhs } = pdu;
  const flags = bhs[1] as number;
  return {
    immediate: isImmediate(bhs),
    final: (flags & 0x80) !== 0,
    continue: (flags & 0x40) !== 0,
    itt: bhs.readUInt32BE(16),
    ttt: bhs.readUInt32BE(20),
    cmdSN: bhs.readUInt32BE(24),
    expStatSN: bhs.readUInt32BE(28),
    data: pdu.data,
  };
}

export const LogoutReason = {
  CLOSE_SESSION: 0,
  CLOSE_CONNECTION: 1,
  REMOVE_CONNECTION_FOR_RECOVERY: 2,
} as const;

export const LogoutResponseCode = {
  CLOSED: 0,
  CID_NOT_FOUND: 1,
  RECOVERY_NOT_SUPPORTED: 2,
  CLEANUP_FAILED: 3,
} as const;

export interface LogoutRequestPdu {
  immediate: boolean;
  reason: number;
  itt: number;
  cid: number;
  cmdSN: number;
  expStatSN: number;
}

export function decodeLogoutRequest(pdu: RawPdu): LogoutRequestPdu {
  const { bhs } = pdu;
  return {
    immediate: isImmediate(bhs),
    reason: (bhs[1] as number) & 0x7f,
    itt: bhs.readUInt32BE(16),
    cid: bhs.readUInt16BE(20),
    cmdSN: bhs.readUInt32BE(24),
    expStatSN: bhs.readUInt32BE(28),
  };
}

/** Opcodes an initiator may send, for telling "unknown opcode" from "not now". */
export function isInitiatorOpcode(opcode: number): boolean {
  return (
    opcode === Opcode.NOP_OUT ||
    opcode === Opcode.SCSI_COMMAND ||
    opcode === Opcode.TASK_MANAGEMENT ||
    opcode === Opcode.LOGIN ||
    opcode === Opcode.TEXT ||
    opcode === Opcode.DATA_OUT ||
    opcode === Opcode.LOGOUT ||
    opcode === Opcode.SNACK
  );
}

// ---- Responses the target sends -------------------------------------------------------------

/** The sequence numbers every target PDU after login carries. */
export interface Sequence {
  statSN: number;
  expCmdSN: number;
  maxCmdSN: number;
}

function header(opcode: number, flags: number): Buffer {
  // From node's shared pool (allocUnsafe), zeroed by hand: one BHS per PDU sent adds up.
  const bhs = Buffer.allocUnsafe(BHS_BYTES).fill(0);
  bhs[0] = opcode;
  bhs[1] = flags;
  return bhs;
}

function writeSequence(bhs: Buffer, sequence: Sequence): void {
  bhs.writeUInt32BE(sequence.statSN >>> 0, 24);
  bhs.writeUInt32BE(sequence.expCmdSN >>> 0, 28);
  bhs.writeUInt32BE(sequence.maxCmdSN >>> 0, 32);
}

export interface LoginResponseFields extends Sequence {
  transit: boolean;
  continue: boolean;
  csg: number;
  nsg: number;
  isid: Buffer;
  tsih: number;
  itt: number;
  statusClass: number;
  statusDetail: number;
}

export function encodeLoginResponse(fields: LoginResponseFields): Buffer {
  const flags =
    (fields.transit ? 0x80 : 0) |
    (fields.continue ? 0x40 : 0) |
    ((fields.csg & 3) << 2) |
    (fields.transit ? fields.nsg & 3 : 0);
  const bhs = header(Opcode.LOGIN_RESPONSE, flags);
  // Version-max and version-active: 0x00, the only version there is.
  fields.isid.copy(bhs, 8, 0, 6);
  bhs.writeUInt16BE(fields.tsih, 14);
  bhs.writeUInt32BE(fields.itt >>> 0, 16);
  writeSequence(bhs, fields);
  bhs[36] = fields.statusClass;
  bhs[37] = fields.statusDetail;
  return bhs;
}

export interface TextResponseFields extends Sequence {
  final: boolean;
  continue: boolean;
  itt: number;
  ttt: number;
}

export function encodeTextResponse(fields: TextResponseFields): Buffer {
  const bhs = header(
    Opcode.TEXT_RESPONSE,
    (fields.final ? 0x80 : 0) | (fields.continue ? 0x40 : 0),
  );
  bhs.writeUInt32BE(fields.itt >>> 0, 16);
  bhs.writeUInt32BE(fields.ttt >>> 0, 20);
  writeSequence(bhs, fields);
  return bhs;
}

/** Residual flags of SCSI Response and Data-In: overflow (O) and underflow (U). */
export interface Residual {
  overflow: boolean;
  underflow: boolean;
  count: number;
}

export const NO_RESIDUAL: Residual = { overflow: false, underflow: false, count: 0 };

export interface ScsiResponseFields extends Sequence {
  itt: number;
  /** 0x00 command completed at target, 0x01 target failure. */
  response: number;
  status: number;
  residual: Residual;
  bidiResidual?: Residual;
  expDataSN: number;
}

export function encodeScsiResponse(fields: ScsiResponseFields): Buffer {
  const bidi = fields.bidiResidual ?? NO_RESIDUAL;
  const flags =
    0x80 |
    (bidi.overflow ? 0x10 : 0) |
    (bidi.underflow ? 0x08 : 0) |
    (fields.residual.overflow ? 0x04 : 0) |
    (fields.residual.underflow ? 0x02 : 0);
  const bhs = header(Opcode.SCSI_RESPONSE, flags);
  bhs[2] = fields.response;
  bhs[3] = fields.status;
  bhs.writeUInt32BE(fields.itt >>> 0, 16);
  writeSequence(bhs, fields);
  bhs.writeUInt32BE(fields.expDataSN >>> 0, 36);
  bhs.writeUInt32BE(bidi.count >>> 0, 40);
  bhs.writeUInt32BE(fields.residual.count >>> 0, 44);
  return bhs;
}

/** The data segment of a SCSI Response carrying sense data: SenseLength, then the sense bytes. */
export function senseSegment(sense: Uint8Array): Buffer {
  const segment = Buffer.alloc(2 + sense.length);
  segment.writeUInt16BE(sense.length, 0);
  segment.set(sense, 2);
  return segment;
}

export interface DataInFields extends Sequence {
  final: boolean;
  /** Set on the last Data-In when it carries the status (phase collapse). */
  status: number | undefined;
  residual: Residual;
  lun: number;
  itt: number;
  dataSN: number;
  bufferOffset: number;
}

export function encodeDataIn(fields: DataInFields): Buffer {
  const withStatus = fields.status !== undefined;
  assert(!withStatus || fields.final, 'status only in the final Data-In');
  const flags =
    (fields.final ? 0x80 : 0) |
    (withStatus && fields.residual.overflow ? 0x04 : 0) |
    (withStatus && fields.residual.underflow ? 0x02 : 0) |
    (withStatus ? 0x01 : 0);
  const bhs = header(Opcode.DATA_IN, flags);
  if (withStatus) bhs[3] = fields.status as number;
  encodeLun(fields.lun < 0x4000 ? fields.lun : 0, bhs);
  bhs.writeUInt32BE(fields.itt >>> 0, 16);
  bhs.writeUInt32BE(RESERVED_TAG, 20);
  // StatSN is only meaningful with the S bit; the others carry ExpCmdSN/MaxCmdSN.
  writeSequence(bhs, { ...fields, statSN: withStatus ? fields.statSN : 0 });
  bhs.writeUInt32BE(fields.dataSN >>> 0, 36);
  bhs.writeUInt32BE(fields.bufferOffset >>> 0, 40);
  bhs.writeUInt32BE(withStatus ? fields.residual.count >>> 0 : 0, 44);
  return bhs;
}

export interface R2TFields extends Sequence {
  lun: number;
  itt: number;
  ttt: number;
  r2tSN: number;
  bufferOffset: number;
  desiredLength: number;
}

export function encodeR2T(fields: R2TFields): Buffer {
  const bhs = header(Opcode.R2T, 0x80);
  encodeLun(fields.lun < 0x4000 ? fields.lun : 0, bhs);
  bhs.writeUInt32BE(fields.itt >>> 0, 16);
  bhs.writeUInt32BE(fields.ttt >>> 0, 20);
  writeSequence(bhs, fields);
  bhs.writeUInt32BE(fields.r2tSN >>> 0, 36);
  bhs.writeUInt32BE(fields.bufferOffset >>> 0, 40);
  bhs.writeUInt32BE(fields.desiredLength >>> 0, 44);
  return bhs;
}

export interface NopInFields extends Sequence {
  lunField: Buffer | undefined;
  itt: number;
  ttt: number;
}

export function encodeNopIn(fields: NopInFields): Buffer {
  const bhs = header(Opcode.NOP_IN, 0x80);
  if (fields.lunField !== undefined) fields.lunField.copy(bhs, 8, 0, 8);
  bhs.writeUInt32BE(fields.itt >>> 0, 16);
  bhs.writeUInt32BE(fields.ttt >>> 0, 20);
  writeSequence(bhs, fields);
  return bhs;
}

export interface TaskManagementResponseFields extends Sequence {
  response: number;
  itt: number;
}

export function encodeTaskManagementResponse(fields: TaskManagementResponseFields): Buffer {
  const bhs = header(Opcode.TASK_MANAGEMENT_RESPONSE, 0x80);
  bhs[2] = fields.response;
  bhs.writeUInt32BE(fields.itt >>> 0, 16);
  writeSequence(bhs, fields);
  return bhs;
}

export interface LogoutResponseFields extends Sequence {
  response: number;
  itt: number;
  time2WaitSeconds: number;
  time2RetainSeconds: number;
}

export function encodeLogoutResponse(fields: LogoutResponseFields): Buffer {
  const bhs = header(Opcode.LOGOUT_RESPONSE, 0x80);
  bhs[2] = fields.response;
  bhs.writeUInt32BE(fields.itt >>> 0, 16);
  writeSequence(bhs, fields);
  bhs.writeUInt16BE(fields.time2WaitSeconds, 40);
  bhs.writeUInt16BE(fields.time2RetainSeconds, 42);
  return bhs;
}

export interface RejectFields extends Sequence {
  reason: number;
}

/** A Reject's BHS; its data segment is the rejected PDU's BHS. */
export function encodeReject(fields: RejectFields): Buffer {
  const bhs = header(Opcode.REJECT, 0x80);
  bhs[2] = fields.reason;
  bhs.writeUInt32BE(RESERVED_TAG, 16);
  writeSequence(bhs, fields);
  return bhs;
}

export const AsyncEvent = {
  /** The target asks the initiator to log out within Parameter3 seconds. */
  LOGOUT_REQUESTED: 1,
} as const;

export interface AsyncMessageFields extends Sequence {
  event: number;
  parameter3Seconds: number;
}

export function encodeAsyncMessage(fields: AsyncMessageFields): Buffer {
  const bhs = header(Opcode.ASYNC_MESSAGE, 0x80);
  bhs.writeUInt32BE(RESERVED_TAG, 16);
  writeSequence(bhs, fields);
  bhs[36] = fields.event;
  bhs.writeUInt16BE(fields.parameter3Seconds, 42);
  return bhs;
}
