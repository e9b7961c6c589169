// The seam between the iSCSI transport (PDUs, login, sessions: this folder) and the
// SCSI command set (scsi/): the transport collects a command's Data-Out completely
// (immediate data, unsolicited Data-Out, R2T-solicited Data-Out), hands the whole task
// to the logical unit, and turns the response into Data-In PDUs, a SCSI Response and
// residual counts. The logical unit never sees a PDU; the transport never decodes a CDB.

/** One I_T nexus: who is asking, through which target port (SPC-4 persistent reservations key on it). */
export interface InitiatorPort {
  /** The initiator's iSCSI name, as sent at login (lowercased). */
  readonly initiatorName: string;
  /** The session's ISID, 12 lowercase hex digits. */
  readonly isid: string;
  /** The target's iSCSI name. */
  readonly targetName: string;
  /** Target portal group tag. */
  readonly tpgt: number;
  /** Stable identity of the nexus: `${initiatorName},i,0x${isid}` (the SCSI initiator port name). */
  readonly nexus: string;
}

export type DataDirection = 'none' | 'read' | 'write' | 'bidirectional';

export type TaskAttribute = 'untagged' | 'simple' | 'ordered' | 'head-of-queue' | 'aca';

export interface ScsiTask {
  /** The CDB as received (16 bytes from the BHS, longer with an extended-CDB AHS); unused trailing bytes are zero. */
  readonly cdb: Uint8Array;
  /** Logical unit number addressed (decoded from the 8-byte LUN field). */
  readonly lun: number;
  readonly port: InitiatorPort;
  readonly direction: DataDirection;
  /** Expected Data Transfer Length from the SCSI Command PDU. */
  readonly expectedLength: number;
  /** For writes: the bytes received, exactly `expectedLength` of them. Undefined otherwise. */
  readonly dataOut?: Uint8Array;
  readonly attribute: TaskAttribute;
  /** Initiator task tag, for logs and ABORT TASK. */
  readonly tag: number;
}

export const ScsiStatus = {
  GOOD: 0x00,
  CHECK_CONDITION: 0x02,
  CONDITION_MET: 0x04,
  BUSY: 0x08,
  RESERVATION_CONFLICT: 0x18,
  TASK_SET_FULL: 0x28,
  ACA_ACTIVE: 0x30,
  TASK_ABORTED: 0x40,
} as const;

export interface ScsiResponse {
  status: number;
  /** Sense data (fixed or descriptor format) when status is CHECK CONDITION. */
  sense?: Uint8Array;
  /**
   * Data for the initiator, as long as the command itself asks for (already cut to the
   * CDB's allocation length). The transport sends at most `expectedLength` of it and
   * reports an overflow residual for the rest, or an underflow when it is shorter.
   */
  dataIn?: Uint8Array;
  /**
   * For writes: the bytes the CDB itself transfers (e.g. blocks × block size). The
   * transport reports the difference from `expectedLength` as a residual.
   */
  dataOutLength?: number;
  /**
   * Set when `dataIn` is lent by the volume layer (a read lease) rather than owned: the
   * transport calls it exactly once, when the bytes have reached the kernel or the task
   * ended without sending them, and not before. It saves a copy per read.
   */
  release?: () => void;
}

/** One volume as a SCSI logical unit, shared by every session on this daemon. */
export interface LogicalUnit {
  execute(task: ScsiTask): Promise<ScsiResponse>;
  /** LOGICAL UNIT RESET / TARGET WARM or COLD RESET from `port` (tasks already aborted by the transport). */
  reset(port: InitiatorPort): void;
  /** The nexus is gone (session closed): SPC-2 reservations it held are released. */
  nexusLost(port: InitiatorPort): void;
  /** Releases the volume handle once the last session is gone. */
  close(): Promise<void>;
}
