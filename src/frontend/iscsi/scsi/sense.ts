// Sense data (SPC-4 4.5): what a CHECK CONDITION tells the initiator. Command handlers
// throw a CheckCondition; the logical unit turns it into a response in one place, in
// fixed format (descriptor format only when the initiator sets D_SENSE, which we refuse
// to let it change: every initiator we serve parses fixed format).

import { ScsiStatus, type ScsiResponse } from '../scsi-task';

export const SenseKey = {
  NO_SENSE: 0x0,
  RECOVERED_ERROR: 0x1,
  NOT_READY: 0x2,
  MEDIUM_ERROR: 0x3,
  HARDWARE_ERROR: 0x4,
  ILLEGAL_REQUEST: 0x5,
  UNIT_ATTENTION: 0x6,
  DATA_PROTECT: 0x7,
  ABORTED_COMMAND: 0xb,
  MISCOMPARE: 0xe,
} as const;

/** Additional sense code and qualifier, as one pair (SPC-4 Annex D). */
export interface Asc {
  readonly asc: number;
  readonly ascq: number;
}

const asc = (code: number, qualifier: number): Asc => ({ asc: code, ascq: qualifier });

export const Ascs = {
  NO_ADDITIONAL_SENSE: asc(0x00, 0x00),
  LOGICAL_UNIT_BECOMING_READY: asc(0x04, 0x01),
  WRITE_ERROR: asc(0x0c, 0x00),
  MISCOMPARE_DURING_VERIFY: asc(0x1d, 0x00),
  UNRECOVERED_READ_ERROR: asc(0x11, 0x00),
  PARAMETER_LIST_LENGTH_ERROR: asc(0x1a, 0x00),
  INVALID_COMMAND_OPERATION_CODE: asc(0x20, 0x00),
  LBA_OUT_OF_RANGE: asc(0x21, 0x00),
  INVALID_FIELD_IN_CDB: asc(0x24, 0x00),
  LOGICAL_UNIT_NOT_SUPPORTED: asc(0x25, 0x00),
  INVALID_FIELD_IN_PARAMETER_LIST: asc(0x26, 0x00),
  SAVING_PARAMETERS_NOT_SUPPORTED: asc(0x39, 0x00),
  WRITE_PROTECTED: asc(0x27, 0x00),
  SPACE_ALLOCATION_FAILED_WRITE_PROTECT: asc(0x27, 0x07),
  POWER_ON_RESET: asc(0x29, 0x00),
  BUS_DEVICE_RESET: asc(0x29, 0x03),
  I_T_NEXUS_LOSS: asc(0x29, 0x07),
  MODE_PARAMETERS_CHANGED: asc(0x2a, 0x01),
  RESERVATIONS_PREEMPTED: asc(0x2a, 0x03),
  RESERVATIONS_RELEASED: asc(0x2a, 0x04),
  REGISTRATIONS_PREEMPTED: asc(0x2a, 0x05),
  CAPACITY_DATA_CHANGED: asc(0x2a, 0x09),
  COMMANDS_CLEARED_BY_ANOTHER_INITIATOR: asc(0x2f, 0x00),
  INSUFFICIENT_REGISTRATION_RESOURCES: asc(0x55, 0x04),
  MEDIUM_NOT_PRESENT: asc(0x3a, 0x00),
  INTERNAL_TARGET_FAILURE: asc(0x44, 0x00),
} as const;

/** Where in the CDB (or parameter list) the offending field is: the sense-key-specific field pointer. */
export interface FieldPointer {
  /** True: the field is in the CDB; false: in the parameter data. */
  readonly inCdb: boolean;
  readonly byte: number;
  /** Bit within the byte (0..7), when the field is narrower than a byte. */
  readonly bit?: number;
}

export interface SenseOptions {
  /** The INFORMATION field (e.g. the miscompare offset for COMPARE AND WRITE, SBC-3 5.2). */
  readonly information?: number;
  readonly field?: FieldPointer;
}

/** Fixed-format sense data is 18 bytes: 8 of header plus an additional length of 10. */
export const FIXED_SENSE_BYTES = 18;

/** A command ends in CHECK CONDITION with this sense; thrown by handlers, caught by the LU. */
export class CheckCondition extends Error {
  override name = 'CheckCondition';
  constructor(
    readonly key: number,
    readonly code: Asc,
    readonly options: SenseOptions = {},
  ) {
    super(`sense key ${key} asc ${code.asc.toString(16)}/${code.ascq.toString(16)}`);
  }
}

export function fixedSense(key: number, code: Asc, options: SenseOptions = {}): Uint8Array {
  const sense = Buffer.alloc(FIXED_SENSE_BYTES);
  sense[0] = 0x70; // current error, fixed format
  sense[2] = key & 0x0f;
  if (options.information !== undefined) {
    sense[0] |= 0x80; // VALID: the INFORMATION field means something
    sense.writeUInt32BE(options.information >>> 0, 3);
  }
  sense[7] = FIXED_SENSE_BYTES - 8;
  sense[12] = code.asc;
  sense[13] = code.ascq;
  if (options.field !== undefined) {
    const { inCdb, byte, bit } = options.field;
    sense[15] = 0x80 | (inCdb ? 0x40 : 0) | (bit !== undefined ? 0x08 | (bit & 0x07) : 0);
    sense.writeUInt16BE(byte, 16);
  }
  return sense;
}

export function checkConditionResponse(condition: CheckCondition): ScsiResponse {
  return {
    status: ScsiStatus.CHECK_CONDITION,
    sense: fixedSense(condition.key, condition.code, condition.options),
  };
}

// Shorthands for the conditions handlers raise most.

export function invalidOpcode(): CheckCondition {
  return new CheckCondition(SenseKey.ILLEGAL_REQUEST, Ascs.INVALID_COMMAND_OPERATION_CODE, {
    field: { inCdb: true, byte: 0 },
  });
}

export function invalidField(byte: number, bit?: number): CheckCondition {
  const field: FieldPointer =
    bit === undefined ? { inCdb: true, byte } : { inCdb: true, byte, bit };
  return new CheckCondition(SenseKey.ILLEGAL_REQUEST, Ascs.INVALID_FIELD_IN_CDB, { field });
}

export function invalidParameter(byte: number, bit?: number): CheckCondition {
  const field: FieldPointer =
    bit === undefined ? { inCdb: false, byte } : { inCdb: false, byte, bit };
  return new CheckCondition(SenseKey.ILLEGAL_REQUEST, Ascs.INVALID_FIELD_IN_PARAMETER_LIST, {
    field,
  });
}

export function parameterListLengthError(): CheckCondition {
  return new CheckCondition(SenseKey.ILLEGAL_REQUEST, Ascs.PARAMETER_LIST_LENGTH_ERROR);
}

export function lbaOutOfRange(): CheckCondition {
  return new CheckCondition(SenseKey.ILLEGAL_REQUEST, Ascs.LBA_OUT_OF_RANGE);
}

export function writeProtected(): CheckCondition {
  return new CheckCondition(SenseKey.DATA_PROTECT, Ascs.WRITE_PROTECTED);
}
