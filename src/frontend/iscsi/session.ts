// Session-wide state of the full feature phase: the CmdSN window (RFC 7143 §4.2.2.1) with
// serial-number arithmetic (RFC 1982), and the Session record the server keeps per TSIH.
// With MaxConnections=1 a session has exactly one connection; the connection owns the
// tasks, the session owns the identity (I_T nexus) and the logical unit it reaches.

import { assert } from '../../util/assert';
import type { InitiatorPort, LogicalUnit } from './scsi-task';
import type { SessionParameters } from './text';

const SERIAL_HALF = 2 ** 31;

/** a < b in 32-bit serial number arithmetic. */
export function snLess(a: number, b: number): boolean {
  const x = a >>> 0;
  const y = b >>> 0;
  return x !== y && ((x < y && y - x < SERIAL_HALF) || (x > y && x - y > SERIAL_HALF));
}

export function snLessOrEqual(a: number, b: number): boolean {
  return a >>> 0 === b >>> 0 || snLess(a, b);
}

export function snAdd(a: number, n: number): number {
  return (a + n) >>> 0;
}

/**
 * Which non-immediate commands the target takes: CmdSN in [ExpCmdSN, MaxCmdSN], each
 * once. Commands outside are dropped silently (RFC 7143 §4.2.2.1), duplicates too.
 * Accepted commands are delivered in CmdSN order; one that arrives ahead of a gap waits
 * (bounded: only in-window CmdSNs are kept). MaxCmdSN follows the free task slots so the
 * initiator never has more commands outstanding than `slots`, and never moves back.
 */
export class CmdSnWindow {
  private exp: number;
  private max: number;
  private nextDelivery: number;
  private readonly waiting = new Map<number, () => void>();

  constructor(
    initialCmdSN: number,
    private readonly slots: number,
  ) {
    assert(Number.isInteger(slots) && slots >= 1, 'window slots');
    this.exp = initialCmdSN >>> 0;
    this.nextDelivery = this.exp;
    this.max = snAdd(this.exp, slots - 1);
  }

  get expCmdSN(): number {
    return this.exp;
  }

  get maxCmdSN(): number {
    return this.max;
  }

  inWindow(cmdSN: number): boolean {
    return snLessOrEqual(this.exp, cmdSN) && snLessOrEqual(cmdSN, this.max);
  }

  /** Takes a non-immediate command; false when it is dropped. `deliver` runs in CmdSN order. */
  accept(cmdSN: number, deliver: () => void): boolean {
    const sn = cmdSN >>> 0;
    if (!this.inWindow(sn) || this.waiting.has(sn)) return false;
    this.waiting.set(sn, deliver);
    while (this.waiting.has(this.exp)) this.exp = snAdd(this.exp, 1);
    // Deliver after advancing, so a delivered command sees the ExpCmdSN that counts it.
    while (this.nextDelivery !== this.exp) {
      const next = this.waiting.get(this.nextDelivery);
      assert(next !== undefined, 'gap below ExpCmdSN');
      this.waiting.delete(this.nextDelivery);
      this.nextDelivery = snAdd(this.nextDelivery, 1);
      next();
    }
    return true;
  }

  /** Commands accepted but waiting for an earlier CmdSN. */
  get waitingCount(): number {
    return this.waiting.size;
  }

  /** Recomputes MaxCmdSN from the slots in use (tasks outstanding + commands waiting). */
  update(slotsInUse: number): void {
    const free = Math.max(0, this.slots - slotsInUse - this.waiting.size);
    const candidate = snAdd(this.exp, free - 1);
    if (snLess(this.max, candidate)) this.max = candidate;
  }
}

export type SessionType = 'discovery' | 'normal';

/** One logged-in session, as the server keeps it (by TSIH). */
export interface Session {
  readonly tsih: number;
  readonly type: SessionType;
  readonly initiatorName: string;
  readonly isid: string;
  readonly targetName: string | undefined;
  readonly volumeName: string | undefined;
  /** The I_T nexus, for normal sessions. */
  readonly port: InitiatorPort | undefined;
  /** The volume's logical unit, for normal sessions. */
  readonly lu: LogicalUnit | undefined;
  readonly params: SessionParameters;
}

export function initiatorPort(
  initiatorName: string,
  isid: string,
  targetName: string,
  tpgt: number,
): InitiatorPort {
  const name = initiatorName.toLowerCase();
  return {
    initiatorName: name,
    isid,
    targetName,
    tpgt,
    nexus: `${name},i,0x${isid}`,
  };
}
