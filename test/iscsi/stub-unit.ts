// A deliberately small SCSI logical unit for the transport's own tests: TEST UNIT READY,
// INQUIRY, REPORT LUNS, READ CAPACITY(10), READ(10), WRITE(10) over a VolumeHandle, and
// a hook to hold commands so tests can abort them mid-flight. It lets the transport be
// tested apart from the real command set (src/frontend/iscsi/scsi/), which real-client
// tests use instead.

import type { VolumeHandle } from '../../src/volume/backend';
import {
  ScsiStatus,
  type InitiatorPort,
  type LogicalUnit,
  type ScsiResponse,
  type ScsiTask,
} from '../../src/frontend/iscsi/scsi-task';

export const STUB_BLOCK_BYTES = 512;

function checkCondition(senseKey: number, asc: number): ScsiResponse {
  const sense = new Uint8Array(18);
  sense[0] = 0x70;
  sense[2] = senseKey;
  sense[7] = 10;
  sense[12] = asc;
  return { status: ScsiStatus.CHECK_CONDITION, sense };
}

export class StubUnit implements LogicalUnit {
  readonly executed: ScsiTask[] = [];
  readonly resets: InitiatorPort[] = [];
  readonly nexusesLost: InitiatorPort[] = [];
  closed = false;
  /** When set, commands wait on it before they run (to test aborts). */
  gate: Promise<void> | undefined;

  constructor(private readonly handle: VolumeHandle) {}

  async execute(task: ScsiTask): Promise<ScsiResponse> {
    this.executed.push(task);
    if (this.gate !== undefined) await this.gate;
    const cdb = Buffer.from(task.cdb);
    const opcode = cdb[0];
    if (task.lun !== 0 && opcode !== 0x12 && opcode !== 0xa0) return checkCondition(0x05, 0x25);
    switch (opcode) {
      case 0x00:
        return { status: ScsiStatus.GOOD };
      case 0x12:
        return this.inquiry(cdb, task.lun);
      case 0xa0: {
        const data = Buffer.alloc(16);
        data.writeUInt32BE(8, 0);
        return {
          status: ScsiStatus.GOOD,
          dataIn: data.subarray(0, Math.min(16, cdb.readUInt32BE(6))),
        };
      }
      case 0x25: {
        const data = Buffer.alloc(8);
        data.writeUInt32BE(this.handle.size / STUB_BLOCK_BYTES - 1, 0);
        data.writeUInt32BE(STUB_BLOCK_BYTES, 4);
        return { status: ScsiStatus.GOOD, dataIn: data };
      }
      case 0x28: {
        const lba = cdb.readUInt32BE(2);
        const blocks = cdb.readUInt16BE(7);
        if ((lba + blocks) * STUB_BLOCK_BYTES > this.handle.size) return checkCondition(0x05, 0x21);
        const data = await this.handle.read(lba * STUB_BLOCK_BYTES, blocks * STUB_BLOCK_BYTES);
        return { status: ScsiStatus.GOOD, dataIn: data };
      }
      case 0x2a: {
        const lba = cdb.readUInt32BE(2);
        const bytes = cdb.readUInt16BE(7) * STUB_BLOCK_BYTES;
        if (lba * STUB_BLOCK_BYTES + bytes > this.handle.size) return checkCondition(0x05, 0x21);
        const data = task.dataOut ?? new Uint8Array(0);
        await this.handle.write(
          lba * STUB_BLOCK_BYTES,
          data.subarray(0, Math.min(bytes, data.length)),
        );
        return { status: ScsiStatus.GOOD, dataOutLength: bytes };
      }
      default:
        return checkCondition(0x05, 0x20);
    }
  }

  private inquiry(cdb: Buffer, lun: number): ScsiResponse {
    const allocation = cdb.readUInt16BE(3);
    if ((cdb[1] as number) & 1) return checkCondition(0x05, 0x24);
    const data = Buffer.alloc(36, 0x20);
    data[0] = lun === 0 ? 0x00 : 0x7f;
    data[1] = 0;
    data[2] = 0x06;
    data[3] = 0x02;
    data[4] = 31;
    data[5] = 0;
    data[6] = 0;
    data[7] = 0x02;
    data.write('CISTERN ', 8, 'latin1');
    data.write('STUB            ', 16, 'latin1');
    data.write('0001', 32, 'latin1');
    return { status: ScsiStatus.GOOD, dataIn: data.subarray(0, Math.min(36, allocation)) };
  }

  reset(port: InitiatorPort): void {
    this.resets.push(port);
  }

  nexusLost(port: InitiatorPort): void {
    this.nexusesLost.push(port);
  }

  async close(): Promise<void> {
    this.closed = true;
    await this.handle.close();
  }
}
