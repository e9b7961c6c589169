// The command table: every operation code (and service action) the unit serves, with
// its CDB usage map for REPORT SUPPORTED OPERATION CODES (SPC-4 6.35), how reservations
// treat it, and its handler. Anything absent is INVALID COMMAND OPERATION CODE — ORWRITE,
// XDWRITE, EXTENDED COPY, SANITIZE, WRITE ATOMIC and friends on purpose.

import { ScsiStatus, type ScsiResponse, type ScsiTask } from '../scsi-task';
import { Op, ServiceAction, allocationLength, cut, u32 } from './cdb';
import { blockCount } from './context';
import { inquiry } from './inquiry';
import { modeSelect, modeSense10, modeSense6 } from './mode';
import * as rw from './read-write';
import type { AccessClass } from './reservations';
import { Ascs, fixedSense, invalidField } from './sense';
import type { Unit } from './unit';
import { getLbaStatus, unmap } from './unmap';

export interface Command {
  readonly opcode: number;
  readonly serviceAction?: number;
  readonly name: string;
  /** CDB usage data: byte 0 the opcode, the service action in its field, else the bits we read. */
  readonly usage: readonly number[];
  readonly access: AccessClass;
  readonly run: (unit: Unit, task: ScsiTask) => Promise<ScsiResponse> | ScsiResponse;
}

const GOOD: ScsiResponse = { status: ScsiStatus.GOOD };
const F = 0xff;

function dataIn(data: Uint8Array): ScsiResponse {
  return { status: ScsiStatus.GOOD, dataIn: data };
}

/** The ten-byte read/write usage map: PROTECT, DPO, FUA, LBA, group, length. */
const rw10 = (opcode: number, flags: number) => [opcode, flags, F, F, F, F, 0x1f, F, F, 0];
const rw12 = (opcode: number, flags: number) => [opcode, flags, F, F, F, F, F, F, F, F, 0x1f, 0];
const rw16 = (opcode: number, flags: number) => [
  opcode,
  flags,
  F,
  F,
  F,
  F,
  F,
  F,
  F,
  F,
  F,
  F,
  F,
  F,
  0x1f,
  0,
];

const READ_FLAGS = 0xfa; // RDPROTECT (refused unless 0), DPO, FUA, FUA_NV
const VERIFY_FLAGS = 0xf6; // VRPROTECT, DPO, BYTCHK

const commands: Command[] = [
  {
    opcode: Op.TEST_UNIT_READY,
    name: 'TEST UNIT READY',
    usage: [0x00, 0, 0, 0, 0, 0],
    access: 'always',
    run: () => GOOD,
  },
  {
    opcode: Op.REQUEST_SENSE,
    name: 'REQUEST SENSE',
    usage: [Op.REQUEST_SENSE, 0x01, 0, 0, F, 0],
    access: 'always',
    run: requestSense,
  },
  {
    opcode: Op.READ_6,
    name: 'READ(6)',
    usage: [Op.READ_6, 0x1f, F, F, F, 0],
    access: 'read',
    run: rw.read,
  },
  {
    opcode: Op.WRITE_6,
    name: 'WRITE(6)',
    usage: [Op.WRITE_6, 0x1f, F, F, F, 0],
    access: 'write',
    run: rw.write,
  },
  {
    opcode: Op.INQUIRY,
    name: 'INQUIRY',
    usage: [Op.INQUIRY, 0x01, F, F, F, 0],
    access: 'always',
    run: (unit, task) => dataIn(inquiry(task, unit.identity, unit.geometry, true)),
  },
  {
    opcode: Op.MODE_SELECT_6,
    name: 'MODE SELECT(6)',
    usage: [Op.MODE_SELECT_6, 0x11, 0, 0, F, 0],
    access: 'write',
    run: runModeSelect,
  },
  {
    opcode: Op.RESERVE_6,
    name: 'RESERVE(6)',
    usage: [Op.RESERVE_6, 0, 0, 0, 0, 0],
    access: 'write',
    run: (unit, task) => unit.reservations.reserveLegacy(task.port, task.cdb),
  },
  {
    opcode: Op.RELEASE_6,
    name: 'RELEASE(6)',
    usage: [Op.RELEASE_6, 0, 0, 0, 0, 0],
    access: 'write',
    run: (unit, task) => unit.reservations.releaseLegacy(task.port),
  },
  {
    opcode: Op.MODE_SENSE_6,
    name: 'MODE SENSE(6)',
    usage: [Op.MODE_SENSE_6, 0x08, F, F, F, 0],
    access: 'read',
    run: (unit, task) => dataIn(modeSense6(task, modeUnit(unit))),
  },
  {
    opcode: Op.READ_CAPACITY_10,
    name: 'READ CAPACITY(10)',
    usage: [Op.READ_CAPACITY_10, 0, F, F, F, F, 0, 0, 0x01, 0],
    access: 'always',
    run: readCapacity10,
  },
  {
    opcode: Op.READ_10,
    name: 'READ(10)',
    usage: rw10(Op.READ_10, READ_FLAGS),
    access: 'read',
    run: rw.read,
  },
  {
    opcode: Op.WRITE_10,
    name: 'WRITE(10)',
    usage: rw10(Op.WRITE_10, READ_FLAGS),
    access: 'write',
    run: rw.write,
  },
  {
    opcode: Op.WRITE_AND_VERIFY_10,
    name: 'WRITE AND VERIFY(10)',
    usage: rw10(Op.WRITE_AND_VERIFY_10, 0xf2),
    access: 'write',
    run: rw.writeAndVerify,
  },
  {
    opcode: Op.VERIFY_10,
    name: 'VERIFY(10)',
    usage: rw10(Op.VERIFY_10, VERIFY_FLAGS),
    access: 'read',
    run: rw.verify,
  },
  {
    opcode: Op.PRE_FETCH_10,
    name: 'PRE-FETCH(10)',
    usage: rw10(Op.PRE_FETCH_10, 0x02),
    access: 'read',
    run: rw.preFetch,
  },
  {
    opcode: Op.SYNCHRONIZE_CACHE_10,
    name: 'SYNCHRONIZE CACHE(10)',
    usage: rw10(Op.SYNCHRONIZE_CACHE_10, 0x02),
    access: 'write',
    run: rw.synchronizeCache,
  },
  {
    opcode: Op.WRITE_SAME_10,
    name: 'WRITE SAME(10)',
    usage: rw10(Op.WRITE_SAME_10, 0xe8),
    access: 'write',
    run: rw.writeSame,
  },
  {
    opcode: Op.UNMAP,
    name: 'UNMAP',
    usage: [Op.UNMAP, 0x01, 0, 0, 0, 0, 0x1f, F, F, 0],
    access: 'write',
    run: unmap,
  },
  {
    opcode: Op.MODE_SELECT_10,
    name: 'MODE SELECT(10)',
    usage: [Op.MODE_SELECT_10, 0x11, 0, 0, 0, 0, 0, F, F, 0],
    access: 'write',
    run: runModeSelect,
  },
  {
    opcode: Op.RESERVE_10,
    name: 'RESERVE(10)',
    usage: [Op.RESERVE_10, 0x02, 0, 0, 0, 0, 0, 0, 0, 0],
    access: 'write',
    run: (unit, task) => unit.reservations.reserveLegacy(task.port, task.cdb),
  },
  {
    opcode: Op.RELEASE_10,
    name: 'RELEASE(10)',
    usage: [Op.RELEASE_10, 0, 0, 0, 0, 0, 0, 0, 0, 0],
    access: 'write',
    run: (unit, task) => unit.reservations.releaseLegacy(task.port),
  },
  {
    opcode: Op.MODE_SENSE_10,
    name: 'MODE SENSE(10)',
    usage: [Op.MODE_SENSE_10, 0x18, F, F, 0, 0, 0, F, F, 0],
    access: 'read',
    run: (unit, task) => dataIn(modeSense10(task, modeUnit(unit))),
  },
  ...[0, 1, 2, 3].map((action): Command => ({
    opcode: Op.PERSISTENT_RESERVE_IN,
    serviceAction: action,
    name: 'PERSISTENT RESERVE IN',
    usage: [Op.PERSISTENT_RESERVE_IN, action, 0, 0, 0, 0, 0, F, F, 0],
    access: 'always',
    run: (unit, task) => unit.reservations.in(task),
  })),
  ...[0, 1, 2, 3, 4, 5, 6].map((action): Command => ({
    opcode: Op.PERSISTENT_RESERVE_OUT,
    serviceAction: action,
    name: 'PERSISTENT RESERVE OUT',
    usage: [Op.PERSISTENT_RESERVE_OUT, action, F, 0, 0, F, F, F, F, 0],
    access: 'always',
    run: (unit, task) => unit.reservations.out(task),
  })),
  {
    opcode: Op.READ_16,
    name: 'READ(16)',
    usage: rw16(Op.READ_16, READ_FLAGS),
    access: 'read',
    run: rw.read,
  },
  {
    opcode: Op.COMPARE_AND_WRITE,
    name: 'COMPARE AND WRITE',
    usage: [Op.COMPARE_AND_WRITE, 0xf8, F, F, F, F, F, F, F, F, 0, 0, 0, F, 0x1f, 0],
    access: 'write',
    run: rw.compareAndWrite,
  },
  {
    opcode: Op.WRITE_16,
    name: 'WRITE(16)',
    usage: rw16(Op.WRITE_16, READ_FLAGS),
    access: 'write',
    run: rw.write,
  },
  {
    opcode: Op.WRITE_AND_VERIFY_16,
    name: 'WRITE AND VERIFY(16)',
    usage: rw16(Op.WRITE_AND_VERIFY_16, 0xf2),
    access: 'write',
    run: rw.writeAndVerify,
  },
  {
    opcode: Op.VERIFY_16,
    name: 'VERIFY(16)',
    usage: rw16(Op.VERIFY_16, VERIFY_FLAGS),
    access: 'read',
    run: rw.verify,
  },
  {
    opcode: Op.PRE_FETCH_16,
    name: 'PRE-FETCH(16)',
    usage: rw16(Op.PRE_FETCH_16, 0x02),
    access: 'read',
    run: rw.preFetch,
  },
  {
    opcode: Op.SYNCHRONIZE_CACHE_16,
    name: 'SYNCHRONIZE CACHE(16)',
    usage: rw16(Op.SYNCHRONIZE_CACHE_16, 0x02),
    access: 'write',
    run: rw.synchronizeCache,
  },
  {
    opcode: Op.WRITE_SAME_16,
    name: 'WRITE SAME(16)',
    usage: rw16(Op.WRITE_SAME_16, 0xe9),
    access: 'write',
    run: rw.writeSame,
  },
  {
    opcode: Op.SERVICE_ACTION_IN_16,
    serviceAction: ServiceAction.READ_CAPACITY_16,
    name: 'READ CAPACITY(16)',
    usage: [
      Op.SERVICE_ACTION_IN_16,
      ServiceAction.READ_CAPACITY_16,
      0,
      0,
      0,
      0,
      0,
      0,
      0,
      0,
      F,
      F,
      F,
      F,
      0,
      0,
    ],
    access: 'always',
    run: readCapacity16,
  },
  {
    opcode: Op.SERVICE_ACTION_IN_16,
    serviceAction: ServiceAction.GET_LBA_STATUS,
    name: 'GET LBA STATUS',
    usage: [
      Op.SERVICE_ACTION_IN_16,
      ServiceAction.GET_LBA_STATUS,
      F,
      F,
      F,
      F,
      F,
      F,
      F,
      F,
      F,
      F,
      F,
      F,
      0,
      0,
    ],
    access: 'read',
    run: getLbaStatus,
  },
  {
    opcode: Op.REPORT_LUNS,
    name: 'REPORT LUNS',
    usage: [Op.REPORT_LUNS, 0, F, 0, 0, 0, F, F, F, F, 0, 0],
    access: 'always',
    run: reportLuns,
  },
  {
    opcode: Op.MAINTENANCE_IN,
    serviceAction: ServiceAction.REPORT_SUPPORTED_OPERATION_CODES,
    name: 'REPORT SUPPORTED OPERATION CODES',
    usage: [
      Op.MAINTENANCE_IN,
      ServiceAction.REPORT_SUPPORTED_OPERATION_CODES,
      0x87,
      F,
      F,
      F,
      F,
      F,
      F,
      F,
      0,
      0,
    ],
    access: 'always',
    run: reportSupportedOperationCodes,
  },
  {
    opcode: Op.READ_12,
    name: 'READ(12)',
    usage: rw12(Op.READ_12, READ_FLAGS),
    access: 'read',
    run: rw.read,
  },
  {
    opcode: Op.WRITE_12,
    name: 'WRITE(12)',
    usage: rw12(Op.WRITE_12, READ_FLAGS),
    access: 'write',
    run: rw.write,
  },
  {
    opcode: Op.WRITE_AND_VERIFY_12,
    name: 'WRITE AND VERIFY(12)',
    usage: rw12(Op.WRITE_AND_VERIFY_12, 0xf2),
    access: 'write',
    run: rw.writeAndVerify,
  },
  {
    opcode: Op.VERIFY_12,
    name: 'VERIFY(12)',
    usage: rw12(Op.VERIFY_12, VERIFY_FLAGS),
    access: 'read',
    run: rw.verify,
  },
];

/** Opcodes whose second byte holds a service action (SPC-4 4.2.5.1). */
const SERVICE_ACTION_OPCODES = new Set(
  commands.filter((c) => c.serviceAction !== undefined).map((c) => c.opcode),
);

export function hasServiceActions(opcode: number): boolean {
  return SERVICE_ACTION_OPCODES.has(opcode);
}

const byKey = new Map(
  commands.map((command) => [key(command.opcode, command.serviceAction), command]),
);

function key(opcode: number, serviceAction: number | undefined): number {
  return opcode * 0x10000 + (serviceAction ?? 0xffff);
}

/**
 * The command a CDB asks for: undefined for an unknown opcode; an unknown service action
 * of a known opcode throws INVALID FIELD IN CDB pointing at it.
 */
export function lookup(cdb: Uint8Array): Command | undefined {
  const opcode = cdb[0]!;
  if (!hasServiceActions(opcode)) return byKey.get(key(opcode, undefined));
  const command = byKey.get(key(opcode, cdb[1]! & 0x1f));
  if (command === undefined) throw invalidField(1, 4);
  return command;
}

function modeUnit(unit: Unit) {
  return {
    blockCount: blockCount(unit),
    blockBytes: unit.geometry.blockBytes,
    readOnly: unit.handle.readOnly,
    mode: unit.mode,
  };
}

function runModeSelect(unit: Unit, task: ScsiTask): ScsiResponse {
  if ((task.cdb[1]! & 0x10) === 0) throw invalidField(1, 4); // PF: only SPC-format pages
  const changed = modeSelect(task, modeUnit(unit));
  if (changed) unit.notifyOthers(task.port.nexus, Ascs.MODE_PARAMETERS_CHANGED);
  return {
    status: ScsiStatus.GOOD,
    dataOutLength:
      task.cdb[0] === Op.MODE_SELECT_6 ? task.cdb[4]! : (task.cdb[7]! << 8) | task.cdb[8]!,
  };
}

function requestSense(unit: Unit, task: ScsiTask): ScsiResponse {
  if ((task.cdb[1]! & 0x01) !== 0) throw invalidField(1, 0); // DESC: we only produce fixed format
  const pending = unit.takeUnitAttention(task);
  const sense =
    pending === undefined ? fixedSense(0, Ascs.NO_ADDITIONAL_SENSE) : fixedSense(0x6, pending);
  return dataIn(cut(sense, allocationLength(task.cdb, 4, 1)));
}

function readCapacity10(unit: Unit, task: ScsiTask): ScsiResponse {
  const cdb = task.cdb;
  // PMI is obsolete; an LBA without it is an error (SBC-3 5.15).
  if ((cdb[8]! & 0x01) === 0 && u32(cdb, 2) !== 0) throw invalidField(2);
  const data = Buffer.alloc(8);
  const last = Math.max(blockCount(unit) - 1, 0);
  data.writeUInt32BE(Math.min(last, 0xffffffff), 0); // 0xffffffff: ask READ CAPACITY(16)
  data.writeUInt32BE(unit.geometry.blockBytes, 4);
  return dataIn(data);
}

function readCapacity16(unit: Unit, task: ScsiTask): ScsiResponse {
  const data = Buffer.alloc(32);
  data.writeBigUInt64BE(BigInt(Math.max(blockCount(unit) - 1, 0)), 0);
  data.writeUInt32BE(unit.geometry.blockBytes, 8);
  data[12] = 0x00; // no protection information
  data[13] = unit.geometry.physicalExponent;
  data[14] = 0x80 | 0x40; // LBPME (thin provisioned), LBPRZ (unmapped blocks read as zeros); lowest aligned LBA 0
  return dataIn(cut(data, allocationLength(task.cdb, 10, 4)));
}

/** REPORT LUNS: one volume per target, so LUN 0 alone (SPC-4 6.33). */
function reportLuns(_unit: Unit, task: ScsiTask): ScsiResponse {
  const cdb = task.cdb;
  const select = cdb[2]!;
  if (select > 0x02) throw invalidField(2);
  const allocation = allocationLength(cdb, 6, 4);
  if (allocation < 16) throw invalidField(6); // SPC-4: the header and one LUN must fit
  const data = Buffer.alloc(16);
  data.writeUInt32BE(8, 0); // one eight-byte LUN (LUN 0 is all zeros)
  return dataIn(cut(data, allocation));
}

/** Command timeouts descriptor (SPC-4 6.35.4): we give none, which the fields say with zeros. */
function timeoutsDescriptor(): Buffer {
  const descriptor = Buffer.alloc(12);
  descriptor.writeUInt16BE(0x0a, 0);
  return descriptor;
}

function reportSupportedOperationCodes(_unit: Unit, task: ScsiTask): ScsiResponse {
  const cdb = task.cdb;
  const timeouts = (cdb[2]! & 0x80) !== 0;
  const options = cdb[2]! & 0x07;
  const opcode = cdb[3]!;
  const serviceAction = (cdb[4]! << 8) | cdb[5]!;
  const allocation = allocationLength(cdb, 6, 4);
  if (options === 0) {
    const descriptors = commands.map((command) => {
      const descriptor = Buffer.alloc(8);
      descriptor[0] = command.opcode;
      descriptor.writeUInt16BE(command.serviceAction ?? 0, 2);
      descriptor[5] = (timeouts ? 0x02 : 0) | (command.serviceAction !== undefined ? 0x01 : 0);
      descriptor.writeUInt16BE(command.usage.length, 6);
      return timeouts ? Buffer.concat([descriptor, timeoutsDescriptor()]) : descriptor;
    });
    const body = Buffer.concat(descriptors);
    const header = Buffer.alloc(4);
    header.writeUInt32BE(body.length, 0);
    return dataIn(cut(Buffer.concat([header, body]), allocation));
  }
  let command: Command | undefined;
  if (options === 1) {
    if (hasServiceActions(opcode)) throw invalidField(2, 2);
    command = byKey.get(key(opcode, undefined));
  } else if (options === 2) {
    if (!hasServiceActions(opcode)) throw invalidField(2, 2);
    command = byKey.get(key(opcode, serviceAction));
  } else if (options === 3) {
    command = hasServiceActions(opcode)
      ? byKey.get(key(opcode, serviceAction))
      : serviceAction === 0
        ? byKey.get(key(opcode, undefined))
        : undefined;
  } else {
    throw invalidField(2, 2);
  }
  const usage = command === undefined ? [] : command.usage;
  const header = Buffer.alloc(4);
  header[1] = (timeouts ? 0x80 : 0) | (command === undefined ? 0x01 : 0x03); // CTDP, SUPPORT
  header.writeUInt16BE(usage.length, 2);
  const parts: Uint8Array[] = [header, Buffer.from(usage)];
  if (timeouts) parts.push(timeoutsDescriptor());
  return dataIn(cut(Buffer.concat(parts), allocation));
}
