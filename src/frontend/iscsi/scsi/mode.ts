// MODE SENSE(6)/(10) and MODE SELECT(6)/(10) (SPC-4 6.11-6.14) with the two pages a
// block device is asked for: caching (SBC-3 6.4.5; WCE set, since writes are volatile
// in the volume layer until a flush or FUA) and control (SPC-4 7.5.8). The only bit an
// initiator may change is SWP, software write protect, shared by every nexus.

import type { ScsiTask } from '../scsi-task';
import { allocationLength, cut, u16 } from './cdb';
import {
  Ascs,
  CheckCondition,
  SenseKey,
  invalidField,
  invalidParameter,
  parameterListLengthError,
} from './sense';

export const ModePage = {
  CACHING: 0x08,
  CONTROL: 0x0a,
  ALL: 0x3f,
} as const;

/** Page control field of MODE SENSE. */
const PageControl = { CURRENT: 0, CHANGEABLE: 1, DEFAULT: 2, SAVED: 3 } as const;
/** Subpage 0xff asks for every subpage of the page(s). */
const ALL_SUBPAGES = 0xff;
/** Control page byte 4 bit 3: software write protect. */
const SWP_BIT = 0x08;

export interface ModeState {
  /** Software write protect: the unit refuses writes while set. */
  swp: boolean;
}

export interface ModeUnit {
  readonly blockCount: number;
  readonly blockBytes: number;
  readonly readOnly: boolean;
  readonly mode: ModeState;
}

function cachingPage(control: number): Buffer {
  const page = Buffer.alloc(20);
  page[0] = ModePage.CACHING;
  page[1] = page.length - 2;
  if (control !== PageControl.CHANGEABLE) page[2] = 0x04; // WCE; RCD clear (reads are cached)
  return page;
}

function controlPage(control: number, mode: ModeState): Buffer {
  const page = Buffer.alloc(12);
  page[0] = ModePage.CONTROL;
  page[1] = page.length - 2;
  if (control === PageControl.CHANGEABLE) {
    page[4] = SWP_BIT;
    return page;
  }
  page[2] = 0x00; // TST 0 (one task set), D_SENSE clear: fixed-format sense
  page[3] = 0x10; // queue algorithm modifier 1: unrestricted reordering; QERR 0
  page[4] = control === PageControl.CURRENT && mode.swp ? SWP_BIT : 0;
  page[5] = 0x40; // TAS: aborted tasks of other nexuses end with TASK ABORTED
  page.writeUInt16BE(0xffff, 8); // busy timeout period: unlimited
  return page;
}

function pages(pageCode: number, subpage: number, control: number, mode: ModeState): Buffer {
  if (subpage !== 0 && subpage !== ALL_SUBPAGES) throw invalidField(3);
  switch (pageCode) {
    case ModePage.CACHING:
      return cachingPage(control);
    case ModePage.CONTROL:
      return controlPage(control, mode);
    case ModePage.ALL:
      return Buffer.concat([cachingPage(control), controlPage(control, mode)]);
    default:
      throw invalidField(2, 5);
  }
}

function pageControl(cdb: Uint8Array): number {
  const control = cdb[2]! >> 6;
  if (control === PageControl.SAVED) {
    throw new CheckCondition(SenseKey.ILLEGAL_REQUEST, Ascs.SAVING_PARAMETERS_NOT_SUPPORTED);
  }
  return control;
}

function deviceSpecific(unit: ModeUnit): number {
  // WP for read-only volumes or SWP; DPOFUA: we honour FUA (and accept DPO).
  return (unit.readOnly || unit.mode.swp ? 0x80 : 0) | 0x10;
}

export function modeSense6(task: ScsiTask, unit: ModeUnit): Uint8Array {
  const cdb = task.cdb;
  const disableBlockDescriptors = (cdb[1]! & 0x08) !== 0;
  const body = pages(cdb[2]! & 0x3f, cdb[3]!, pageControl(cdb), unit.mode);
  const descriptor = disableBlockDescriptors ? Buffer.alloc(0) : shortDescriptor(unit);
  const header = Buffer.alloc(4);
  header[0] = header.length - 1 + descriptor.length + body.length;
  header[2] = deviceSpecific(unit);
  header[3] = descriptor.length;
  return cut(Buffer.concat([header, descriptor, body]), allocationLength(cdb, 4, 1));
}

export function modeSense10(task: ScsiTask, unit: ModeUnit): Uint8Array {
  const cdb = task.cdb;
  const longLba = (cdb[1]! & 0x10) !== 0;
  const disableBlockDescriptors = (cdb[1]! & 0x08) !== 0;
  const body = pages(cdb[2]! & 0x3f, cdb[3]!, pageControl(cdb), unit.mode);
  const descriptor = disableBlockDescriptors
    ? Buffer.alloc(0)
    : longLba
      ? longDescriptor(unit)
      : shortDescriptor(unit);
  const header = Buffer.alloc(8);
  header.writeUInt16BE(header.length - 2 + descriptor.length + body.length, 0);
  header[3] = deviceSpecific(unit);
  header[4] = longLba && !disableBlockDescriptors ? 0x01 : 0x00;
  header.writeUInt16BE(descriptor.length, 6);
  return cut(Buffer.concat([header, descriptor, body]), allocationLength(cdb, 7, 2));
}

function shortDescriptor({ blockCount, blockBytes }: ModeUnit): Buffer {
  const descriptor = Buffer.alloc(8);
  descriptor.writeUIntBE(Math.min(blockCount, 0xffffff), 1, 3); // 0xffffff: "more than fits"
  descriptor.writeUIntBE(blockBytes, 5, 3);
  return descriptor;
}

function longDescriptor({ blockCount, blockBytes }: ModeUnit): Buffer {
  const descriptor = Buffer.alloc(16);
  descriptor.writeBigUInt64BE(BigInt(blockCount), 0);
  descriptor.writeUInt32BE(blockBytes, 12);
  return descriptor;
}

/** MODE SELECT parameter list length of the CDB. */
export function modeSelectLength(cdb: Uint8Array): number {
  return cdb[0] === 0x15 ? cdb[4]! : u16(cdb, 7);
}

/**
 * MODE SELECT(6)/(10): accepts pages whose bits equal the current values except for
 * changeable ones (SWP). Returns true when a parameter changed, so the LU can raise
 * MODE PARAMETERS CHANGED for the other nexuses.
 */
export function modeSelect(task: ScsiTask, unit: ModeUnit): boolean {
  const cdb = task.cdb;
  const six = cdb[0] === 0x15;
  if ((cdb[1]! & 0x01) !== 0) throw invalidField(1, 0); // SP: nothing is saved
  const length = modeSelectLength(cdb);
  if (length === 0) return false;
  const data = task.dataOut ?? new Uint8Array(0);
  if (data.length < length) throw parameterListLengthError();
  const list = Buffer.from(data.buffer, data.byteOffset, length);
  const headerBytes = six ? 4 : 8;
  if (list.length < headerBytes) throw parameterListLengthError();
  const descriptorBytes = six ? list[3]! : list.readUInt16BE(6);
  let at = headerBytes;
  if (descriptorBytes !== 0) {
    const expected = six || (list[4]! & 0x01) === 0 ? 8 : 16;
    if (descriptorBytes !== expected) throw invalidParameter(six ? 3 : 6);
    if (at + descriptorBytes > list.length) throw parameterListLengthError();
    const blockLength = list.readUIntBE(at + descriptorBytes - 3, 3);
    if (blockLength !== unit.blockBytes && blockLength !== 0) {
      throw invalidParameter(at + descriptorBytes - 3);
    }
    at += descriptorBytes;
  }
  let swp = unit.mode.swp;
  while (at < list.length) {
    if (at + 2 > list.length) throw parameterListLengthError();
    const code = list[at]! & 0x3f;
    if ((list[at]! & 0x40) !== 0) throw invalidParameter(at, 6); // SPF: no subpages here
    const pageLength = list[at + 1]! + 2;
    if (at + pageLength > list.length) throw parameterListLengthError();
    const given = list.subarray(at, at + pageLength);
    if (code === ModePage.CONTROL) swp = (given[4]! & SWP_BIT) !== 0;
    const current =
      code === ModePage.CACHING
        ? cachingPage(PageControl.CURRENT)
        : code === ModePage.CONTROL
          ? controlPage(PageControl.CURRENT, { swp })
          : undefined;
    if (current === undefined) throw invalidParameter(at);
    if (current.length !== pageLength) throw invalidParameter(at + 1);
    for (let index = 2; index < pageLength; index += 1) {
      if (given[index] !== current[index]) throw invalidParameter(at + index);
    }
    at += pageLength;
  }
  const changed = swp !== unit.mode.swp;
  unit.mode.swp = swp;
  return changed;
}
