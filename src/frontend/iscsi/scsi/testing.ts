// Helpers for the SCSI unit tests: a logical unit over a memory volume, tasks built from
// CDB bytes, and decoders for the sense data the tests assert on.

import { MemoryExportProvider } from '../../../volume/memory-volume';
import type { DataDirection, InitiatorPort, ScsiResponse, ScsiTask } from '../scsi-task';
import { GEOMETRY_512E, type Geometry } from './geometry';
import { ScsiLogicalUnit } from './logical-unit';

export const VOLUME = 'vol1';
export const TARGET = `iqn.2026-11.io.cistern:${VOLUME}`;

export function port(initiator = 'iqn.2026-11.test:a', isid = '400001370000'): InitiatorPort {
  return {
    initiatorName: initiator,
    isid,
    targetName: TARGET,
    tpgt: 1,
    nexus: `${initiator},i,0x${isid}`,
  };
}

export const A = port();
export const B = port('iqn.2026-11.test:b', '400001370001');

export interface Fixture {
  provider: MemoryExportProvider;
  unit: ScsiLogicalUnit;
}

/**
 * A unit over a fresh memory volume. The tests that count bytes are written for 512e
 * (512-byte LBAs on 4 KiB allocation units, where partial units matter); pass
 * `geometry` for the 4Kn default.
 */
export async function fixture(
  sizeBytes = 64 * 1024 * 1024,
  options: { readOnly?: boolean; geometry?: Geometry } = {},
): Promise<Fixture> {
  const provider = new MemoryExportProvider();
  provider.create(VOLUME, sizeBytes, { readOnly: options.readOnly ?? false });
  const handle = await provider.open(VOLUME, { readOnly: false });
  const unit = new ScsiLogicalUnit(handle, VOLUME, options.geometry ?? GEOMETRY_512E);
  // Consume the POWER ON unit attention of the nexuses tests use.
  await unit.execute(task([0x00, 0, 0, 0, 0, 0], { port: A }));
  await unit.execute(task([0x00, 0, 0, 0, 0, 0], { port: B }));
  return { provider, unit };
}

export interface TaskOptions {
  port?: InitiatorPort;
  dataOut?: Uint8Array;
  expectedLength?: number;
  lun?: number;
  direction?: DataDirection;
}

export function task(cdbBytes: readonly number[], options: TaskOptions = {}): ScsiTask {
  const cdb = new Uint8Array(16);
  cdb.set(cdbBytes);
  const dataOut = options.dataOut;
  return {
    cdb,
    lun: options.lun ?? 0,
    port: options.port ?? A,
    direction: options.direction ?? (dataOut !== undefined ? 'write' : 'read'),
    expectedLength: options.expectedLength ?? dataOut?.length ?? 0,
    ...(dataOut !== undefined ? { dataOut } : {}),
    attribute: 'simple',
    tag: 1,
  };
}

export async function run(
  unit: ScsiLogicalUnit,
  cdbBytes: readonly number[],
  options: TaskOptions = {},
): Promise<ScsiResponse> {
  return unit.execute(task(cdbBytes, options));
}

export interface DecodedSense {
  key: number;
  asc: number;
  ascq: number;
  information?: number;
  /** Sense-key-specific field pointer, when SKSV is set. */
  field?: { inCdb: boolean; byte: number; bit?: number };
}

export function senseOf(response: ScsiResponse): DecodedSense {
  const sense = Buffer.from(response.sense ?? new Uint8Array(0));
  if (sense.length < 18) throw new Error(`no fixed sense in response (status ${response.status})`);
  const decoded: DecodedSense = { key: sense[2]! & 0x0f, asc: sense[12]!, ascq: sense[13]! };
  if ((sense[0]! & 0x80) !== 0) decoded.information = sense.readUInt32BE(3);
  if ((sense[15]! & 0x80) !== 0) {
    decoded.field = { inCdb: (sense[15]! & 0x40) !== 0, byte: sense.readUInt16BE(16) };
    if ((sense[15]! & 0x08) !== 0) decoded.field.bit = sense[15]! & 0x07;
  }
  return decoded;
}

/** Big-endian bytes of a number, for building CDBs. */
export function be(value: number, bytes: number): number[] {
  const out: number[] = [];
  for (let index = bytes - 1; index >= 0; index -= 1)
    out.push(Math.floor(value / 2 ** (8 * index)) % 256);
  return out;
}

export const read10 = (lba: number, blocks: number, flags = 0) => [
  0x28,
  flags,
  ...be(lba, 4),
  0,
  ...be(blocks, 2),
  0,
];
export const write10 = (lba: number, blocks: number, flags = 0) => [
  0x2a,
  flags,
  ...be(lba, 4),
  0,
  ...be(blocks, 2),
  0,
];
export const read16 = (lba: number, blocks: number, flags = 0) => [
  0x88,
  flags,
  ...be(lba, 8),
  ...be(blocks, 4),
  0,
  0,
];
export const write16 = (lba: number, blocks: number, flags = 0) => [
  0x8a,
  flags,
  ...be(lba, 8),
  ...be(blocks, 4),
  0,
  0,
];
