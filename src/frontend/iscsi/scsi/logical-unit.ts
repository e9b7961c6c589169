// One volume as a SCSI direct-access logical unit (SBC-3 over SPC-4), shared by every
// session on this daemon. The unit decodes each CDB through the command table, reports
// unit attentions and reservation conflicts before running anything (SAM-5 5.14, SPC-4
// 5.9), and turns every failure into sense data — a command never throws at the
// transport unless we have a bug.

import { AssertionError } from '../../../util/assert';
import type { VolumeHandle } from '../../../volume/backend';
import type { LogicalUnitFactory } from '../access';
import {
  ScsiStatus,
  type InitiatorPort,
  type LogicalUnit,
  type ScsiResponse,
  type ScsiTask,
} from '../scsi-task';
import { Op } from './cdb';
import { lookup } from './commands';
import { blockCount, senseForVolumeError } from './context';
import { DEFAULT_GEOMETRY, type Geometry } from './geometry';
import { inquiry, unitIdentity, type UnitIdentity } from './inquiry';
import type { ModeState } from './mode';
import { RangeLock } from './range-lock';
import { Reservations } from './reservations';
import {
  Ascs,
  CheckCondition,
  SenseKey,
  checkConditionResponse,
  fixedSense,
  invalidOpcode,
  type Asc,
} from './sense';
import type { Unit } from './unit';

/**
 * Unit attentions queued per nexus. SAM-5 lets a unit drop older ones when it runs out of
 * room; a nexus that never asks can then only lose stale news, never grow our memory.
 */
export const MAX_UNIT_ATTENTIONS_PER_NEXUS = 16;
/** Nexuses remembered for unit attentions; the oldest are forgotten beyond it (they get POWER ON again). */
export const MAX_KNOWN_NEXUSES = 4096;

/** Commands a pending unit attention does not stop (SAM-5 5.14): they report, not act. */
const UNIT_ATTENTION_EXEMPT = new Set<number>([Op.INQUIRY, Op.REPORT_LUNS, Op.REQUEST_SENSE]);

export class ScsiLogicalUnit implements LogicalUnit, Unit {
  readonly lock = new RangeLock();
  readonly identity: UnitIdentity;
  readonly mode: ModeState = { swp: false };
  readonly reservations: Reservations;
  /** Pending unit attentions per nexus; a nexus first seen gets POWER ON, RESET OCCURRED. */
  private readonly attentions = new Map<string, Asc[]>();
  private knownBlockCount: number;
  private closed = false;

  constructor(
    readonly handle: VolumeHandle,
    readonly volumeName: string,
    readonly geometry: Geometry = DEFAULT_GEOMETRY,
  ) {
    this.identity = unitIdentity(volumeName);
    this.reservations = new Reservations((nexus, condition) => this.queue(nexus, condition));
    this.knownBlockCount = blockCount(this);
  }

  get writeProtected(): boolean {
    return this.mode.swp;
  }

  async execute(task: ScsiTask): Promise<ScsiResponse> {
    try {
      return await this.dispatch(task);
    } catch (error) {
      if (error instanceof AssertionError) throw error;
      const mapped = senseForVolumeError(error, Ascs.UNRECOVERED_READ_ERROR);
      if (mapped instanceof CheckCondition) return checkConditionResponse(mapped);
      throw mapped;
    }
  }

  private async dispatch(task: ScsiTask): Promise<ScsiResponse> {
    const opcode = task.cdb[0]!;
    if (task.lun !== 0) return this.missingUnit(task);
    this.noticeNexus(task.port.nexus);
    this.noticeCapacity();
    const command = lookup(task.cdb);
    if (command === undefined) throw invalidOpcode();
    if (!UNIT_ATTENTION_EXEMPT.has(opcode)) {
      const pending = this.takeUnitAttention(task);
      if (pending !== undefined)
        return checkConditionResponse(new CheckCondition(SenseKey.UNIT_ATTENTION, pending));
    }
    const conflict = this.reservations.conflict(task.port.nexus, opcode, command.access);
    if (conflict !== undefined) return conflict;
    return command.run(this, task);
  }

  /** Any LUN but 0: INQUIRY says nothing is there, REPORT LUNS still answers, the rest fail (SPC-4 4.6.2). */
  private async missingUnit(task: ScsiTask): Promise<ScsiResponse> {
    const opcode = task.cdb[0]!;
    if (opcode === Op.INQUIRY)
      return {
        status: ScsiStatus.GOOD,
        dataIn: inquiry(task, this.identity, this.geometry, false),
      };
    if (opcode === Op.REPORT_LUNS) return lookup(task.cdb)!.run(this, task);
    if (opcode === Op.REQUEST_SENSE) {
      return {
        status: ScsiStatus.GOOD,
        dataIn: fixedSense(SenseKey.ILLEGAL_REQUEST, Ascs.LOGICAL_UNIT_NOT_SUPPORTED),
      };
    }
    return checkConditionResponse(
      new CheckCondition(SenseKey.ILLEGAL_REQUEST, Ascs.LOGICAL_UNIT_NOT_SUPPORTED),
    );
  }

  takeUnitAttention(task: ScsiTask): Asc | undefined {
    const queue = this.attentions.get(task.port.nexus);
    return queue?.shift();
  }

  notifyOthers(except: string, condition: Asc): void {
    for (const nexus of this.attentions.keys()) if (nexus !== except) this.queue(nexus, condition);
  }

  reset(port: InitiatorPort): void {
    this.reservations.reset();
    // Every nexus learns of the reset; the one that asked for it too (SAM-5 6.3.3).
    for (const queue of this.attentions.values()) {
      queue.length = 0;
      queue.push(Ascs.BUS_DEVICE_RESET);
    }
    this.noticeNexus(port.nexus);
  }

  nexusLost(port: InitiatorPort): void {
    this.reservations.nexusLost(port.nexus);
    // A new session of the same initiator port starts as after power on.
    this.attentions.delete(port.nexus);
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await this.handle.close();
  }

  private noticeNexus(nexus: string): void {
    if (this.attentions.has(nexus)) return;
    if (this.attentions.size >= MAX_KNOWN_NEXUSES) {
      const oldest = this.attentions.keys().next().value as string;
      this.attentions.delete(oldest);
    }
    this.attentions.set(nexus, [Ascs.POWER_ON_RESET]);
  }

  /** A resized volume raises CAPACITY DATA HAS CHANGED for every nexus (SBC-3 4.10). */
  private noticeCapacity(): void {
    const count = blockCount(this);
    if (count === this.knownBlockCount) return;
    this.knownBlockCount = count;
    for (const nexus of this.attentions.keys()) this.queue(nexus, Ascs.CAPACITY_DATA_CHANGED);
  }

  private queue(nexus: string, condition: Asc): void {
    let queue = this.attentions.get(nexus);
    if (queue === undefined) {
      // A nexus we have not seen yet starts with POWER ON, which covers any later news.
      this.noticeNexus(nexus);
      return;
    }
    if (queue.some((pending) => pending.asc === condition.asc && pending.ascq === condition.ascq))
      return;
    if (queue.length >= MAX_UNIT_ATTENTIONS_PER_NEXUS) queue.shift();
    queue.push(condition);
  }
}

export const createLogicalUnit: LogicalUnitFactory = (handle: VolumeHandle, volumeName: string) =>
  new ScsiLogicalUnit(handle, volumeName);
