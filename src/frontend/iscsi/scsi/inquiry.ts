// INQUIRY (SPC-4 6.6): the standard data and the vital product data pages a block
// device owes its initiators — 0x00 supported pages, 0x80 unit serial number, 0x83
// device identification, 0xB0 block limits, 0xB1 block device characteristics, 0xB2
// logical block provisioning (SBC-3 6.5).

import { createHash } from 'node:crypto';
import type { ScsiTask } from '../scsi-task';
import { allocationLength, cut } from './cdb';
import * as G from './geometry';
import { invalidField } from './sense';

export const VENDOR = 'CISTERN';
export const PRODUCT = 'VOLUME';
export const REVISION = '0001';
/**
 * IEEE company id in our NAA 6 names: a CID (bit 1 of the first octet set, bit 0 clear),
 * which IEEE reserves for local administration, so it can never collide with an OUI.
 */
export const NAA_COMPANY_ID = 0x0ace57;

/** Version descriptors (SPC-4 table 144): SAM-5, SPC-4, SBC-3, iSCSI (RFC 7143). */
const VERSION_DESCRIPTORS = [0x00a0, 0x0460, 0x04c0, 0x0960];

export const Vpd = {
  SUPPORTED_PAGES: 0x00,
  UNIT_SERIAL_NUMBER: 0x80,
  DEVICE_IDENTIFICATION: 0x83,
  BLOCK_LIMITS: 0xb0,
  BLOCK_DEVICE_CHARACTERISTICS: 0xb1,
  LOGICAL_BLOCK_PROVISIONING: 0xb2,
} as const;

const SUPPORTED_VPD_PAGES = [
  Vpd.SUPPORTED_PAGES,
  Vpd.UNIT_SERIAL_NUMBER,
  Vpd.DEVICE_IDENTIFICATION,
  Vpd.BLOCK_LIMITS,
  Vpd.BLOCK_DEVICE_CHARACTERISTICS,
  Vpd.LOGICAL_BLOCK_PROVISIONING,
];

/** Peripheral device type 0: direct access block device. */
const DIRECT_ACCESS = 0x00;
/** Peripheral qualifier 3: no logical unit can exist at this LUN (SPC-4 6.6.2). */
const NO_UNIT_AT_LUN = 0x7f;

export interface UnitIdentity {
  readonly volumeName: string;
  /** 16 bytes: the NAA 6 IEEE Registered Extended name of the unit. */
  readonly naa: Uint8Array;
  readonly serial: string;
}

/** A stable identity from the volume name alone, so every daemon serving the volume reports the same one (multipath). */
export function unitIdentity(volumeName: string): UnitIdentity {
  const digest = createHash('sha256').update(volumeName, 'utf8').digest();
  const naa = Buffer.alloc(16);
  // NAA 6 (4 bits), company id (24 bits), then 100 bits of vendor-specific identifier.
  naa[0] = 0x60 | (NAA_COMPANY_ID >> 20);
  naa[1] = (NAA_COMPANY_ID >> 12) & 0xff;
  naa[2] = (NAA_COMPANY_ID >> 4) & 0xff;
  naa[3] = ((NAA_COMPANY_ID & 0x0f) << 4) | (digest[0]! & 0x0f);
  digest.copy(naa, 4, 1, 13);
  return { volumeName, naa, serial: serialFor(volumeName, digest) };
}

/** Printable ASCII names up to 64 bytes serve as the serial; others are replaced by their digest. */
const SERIAL_MAX_BYTES = 64;
function serialFor(volumeName: string, digest: Buffer): string {
  const printable = /^[\x21-\x7e]+$/.test(volumeName);
  return printable && volumeName.length <= SERIAL_MAX_BYTES
    ? volumeName
    : digest.subarray(0, 16).toString('hex');
}

export function inquiry(
  task: ScsiTask,
  identity: UnitIdentity,
  geometry: G.Geometry,
  lunExists: boolean,
): Uint8Array {
  const cdb = task.cdb;
  const evpd = (cdb[1]! & 0x01) !== 0;
  if ((cdb[1]! & 0x02) !== 0) throw invalidField(1, 1); // CMDDT: obsolete
  const pageCode = cdb[2]!;
  const allocation = allocationLength(cdb, 3, 2);
  if (!evpd) {
    if (pageCode !== 0) throw invalidField(2);
    return cut(standardInquiry(lunExists), allocation);
  }
  if (!lunExists) throw invalidField(1, 0);
  return cut(vpdPage(pageCode, task, identity, geometry), allocation);
}

function standardInquiry(lunExists: boolean): Uint8Array {
  const data = Buffer.alloc(66);
  data[0] = lunExists ? DIRECT_ACCESS : NO_UNIT_AT_LUN;
  data[1] = 0x00; // not removable
  data[2] = 0x06; // SPC-4
  data[3] = 0x12; // HISUP, response data format 2
  data[4] = data.length - 5;
  data[5] = 0x00; // no SCCS, no ALUA (TPGS 0), no third-party copy, no protection
  data[6] = 0x00;
  data[7] = 0x02; // CMDQUE: full task management
  data.write(VENDOR.padEnd(8, ' '), 8, 'ascii');
  data.write(PRODUCT.padEnd(16, ' '), 16, 'ascii');
  data.write(REVISION.padEnd(4, ' '), 32, 'ascii');
  VERSION_DESCRIPTORS.forEach((descriptor, index) =>
    data.writeUInt16BE(descriptor, 58 + 2 * index),
  );
  return data;
}

function vpdPage(
  pageCode: number,
  task: ScsiTask,
  identity: UnitIdentity,
  geometry: G.Geometry,
): Uint8Array {
  switch (pageCode) {
    case Vpd.SUPPORTED_PAGES:
      return page(pageCode, Uint8Array.from(SUPPORTED_VPD_PAGES));
    case Vpd.UNIT_SERIAL_NUMBER:
      return page(pageCode, Buffer.from(identity.serial, 'ascii'));
    case Vpd.DEVICE_IDENTIFICATION:
      return page(pageCode, deviceIdentification(task, identity));
    case Vpd.BLOCK_LIMITS:
      return page(pageCode, blockLimits(geometry));
    case Vpd.BLOCK_DEVICE_CHARACTERISTICS:
      return page(pageCode, blockDeviceCharacteristics());
    case Vpd.LOGICAL_BLOCK_PROVISIONING:
      return page(pageCode, logicalBlockProvisioning());
    default:
      throw invalidField(2);
  }
}

function page(pageCode: number, body: Uint8Array): Uint8Array {
  const data = Buffer.alloc(4 + body.length);
  data[0] = DIRECT_ACCESS;
  data[1] = pageCode;
  data.writeUInt16BE(body.length, 2);
  data.set(body, 4);
  return data;
}

const CodeSet = { BINARY: 1, ASCII: 2, UTF8: 3 } as const;
const Association = { LOGICAL_UNIT: 0, TARGET_PORT: 1, TARGET_DEVICE: 2 } as const;
const DesignatorType = { T10_VENDOR: 1, NAA: 3, RELATIVE_TARGET_PORT: 4, SCSI_NAME: 8 } as const;
/** Protocol identifier of iSCSI (SPC-4 table 362), given with PIV for port designators. */
const PROTOCOL_ISCSI = 0x5;

function designator(codeSet: number, association: number, type: number, value: Uint8Array): Buffer {
  const entry = Buffer.alloc(4 + value.length);
  const portLevel = association !== Association.LOGICAL_UNIT;
  entry[0] = (portLevel ? PROTOCOL_ISCSI << 4 : 0) | codeSet;
  entry[1] = (portLevel ? 0x80 : 0) | (association << 4) | type; // PIV for port designators
  entry[3] = value.length;
  entry.set(value, 4);
  return entry;
}

/** A SCSI name string: null-terminated, padded to a multiple of 4 bytes (SPC-4 7.8.6.11). */
function scsiName(name: string): Buffer {
  const bytes = Buffer.from(name, 'utf8');
  const padded = Buffer.alloc(Math.ceil((bytes.length + 1) / 4) * 4);
  bytes.copy(padded);
  return padded;
}

function deviceIdentification(task: ScsiTask, identity: UnitIdentity): Uint8Array {
  const t10 = Buffer.concat([
    Buffer.from(VENDOR.padEnd(8, ' '), 'ascii'),
    Buffer.from(Buffer.from(identity.naa).toString('hex'), 'ascii'),
  ]);
  const relativePort = Buffer.alloc(4);
  relativePort.writeUInt16BE(1, 2); // one target port per target
  const descriptors = [
    designator(CodeSet.BINARY, Association.LOGICAL_UNIT, DesignatorType.NAA, identity.naa),
    designator(CodeSet.ASCII, Association.LOGICAL_UNIT, DesignatorType.T10_VENDOR, t10),
    designator(
      CodeSet.BINARY,
      Association.TARGET_PORT,
      DesignatorType.RELATIVE_TARGET_PORT,
      relativePort,
    ),
    designator(
      CodeSet.UTF8,
      Association.TARGET_DEVICE,
      DesignatorType.SCSI_NAME,
      scsiName(task.port.targetName),
    ),
  ];
  return Buffer.concat(descriptors);
}

function blockLimits(geometry: G.Geometry): Uint8Array {
  const body = Buffer.alloc(0x3c);
  body[0] = 0x00; // WSNZ clear: WRITE SAME with zero blocks means "to the end", within the max length
  body[1] = G.maxCompareAndWriteBlocks(geometry);
  body.writeUInt16BE(G.granularityBlocks(geometry), 2); // optimal transfer length granularity
  body.writeUInt32BE(G.maxTransferBlocks(geometry), 4);
  body.writeUInt32BE(G.optimalTransferBlocks(geometry), 8);
  body.writeUInt32BE(G.maxTransferBlocks(geometry), 12); // maximum prefetch length
  body.writeUInt32BE(G.MAX_UNMAP_BLOCKS, 16);
  body.writeUInt32BE(G.MAX_UNMAP_DESCRIPTORS, 20);
  body.writeUInt32BE(G.unmapGranularityBlocks(geometry), 24); // optimal unmap granularity
  body.writeUInt32BE(0x80000000, 28); // UGAVALID, alignment 0
  body.writeBigUInt64BE(BigInt(G.maxWriteSameBlocks(geometry)), 32);
  return body;
}

function blockDeviceCharacteristics(): Uint8Array {
  const body = Buffer.alloc(0x3c);
  body.writeUInt16BE(0x0001, 0); // medium rotation rate 1: non-rotating (solid state)
  return body;
}

/** LBPU, LBPWS, LBPWS10 and LBPRZ, provisioning type 2 (thin). */
export const LBP_FLAGS = 0x80 | 0x40 | 0x20 | 0x04;
function logicalBlockProvisioning(): Uint8Array {
  const body = Buffer.alloc(4);
  body[0] = 0; // threshold exponent: no thresholds
  body[1] = LBP_FLAGS;
  body[2] = 0x02; // provisioning type: thin provisioned
  return body;
}
