// Reservations: SPC-4 persistent reservations (PERSISTENT RESERVE IN/OUT, 5.9 and 6.15,
// 6.16) and SPC-2 RESERVE/RELEASE(6)/(10). State lives in the logical unit, in memory,
// keyed by the I_T nexus; APTPL (persist through power loss) is refused with INVALID
// FIELD IN PARAMETER LIST, and REPORT CAPABILITIES says PTPL_C = 0. A daemon restart
// therefore clears every reservation, which initiators see as a power-on reset.
// PREEMPT AND ABORT preempts like PREEMPT; the transport owns task abort, and our
// commands hold no queue that could keep the preempted nexus's tasks waiting.

import type { InitiatorPort, ScsiResponse, ScsiTask } from '../scsi-task';
import { ScsiStatus } from '../scsi-task';
import { allocationLength, cut, u32 } from './cdb';
import {
  Ascs,
  CheckCondition,
  SenseKey,
  invalidField,
  invalidParameter,
  parameterListLengthError,
  type Asc,
} from './sense';

export const ReservationType = {
  WRITE_EXCLUSIVE: 1,
  EXCLUSIVE_ACCESS: 3,
  WRITE_EXCLUSIVE_REGISTRANTS_ONLY: 5,
  EXCLUSIVE_ACCESS_REGISTRANTS_ONLY: 6,
  WRITE_EXCLUSIVE_ALL_REGISTRANTS: 7,
  EXCLUSIVE_ACCESS_ALL_REGISTRANTS: 8,
} as const;

const VALID_TYPES = new Set<number>(Object.values(ReservationType));

const OutAction = {
  REGISTER: 0,
  RESERVE: 1,
  RELEASE: 2,
  CLEAR: 3,
  PREEMPT: 4,
  PREEMPT_AND_ABORT: 5,
  REGISTER_AND_IGNORE_EXISTING_KEY: 6,
} as const;

const InAction = {
  READ_KEYS: 0,
  READ_RESERVATION: 1,
  REPORT_CAPABILITIES: 2,
  READ_FULL_STATUS: 3,
} as const;

/** PERSISTENT RESERVE OUT parameter list length for every service action we serve (SPC-4 6.16.3). */
const PROUT_PARAMETER_BYTES = 24;
/**
 * Registrations per logical unit: each is one initiator port. Far above any cluster's
 * initiator count (VMware allows 64 hosts per datastore); beyond it REGISTER fails with
 * INSUFFICIENT REGISTRATION RESOURCES rather than growing without bound.
 */
export const MAX_REGISTRATIONS = 1024;
/** iSCSI's protocol identifier in TransportIDs (SPC-4 table 362). */
const PROTOCOL_ISCSI = 0x5;

/** How a command is treated when another nexus holds a reservation (SPC-4 5.9.1, SBC-3 4.17). */
export type AccessClass = 'always' | 'read' | 'write';

interface Registration {
  key: bigint;
  port: InitiatorPort;
}

interface Reservation {
  /** The nexus that reserved; for the all-registrants types every registrant holds it. */
  holder: string;
  type: number;
}

const GOOD: ScsiResponse = { status: ScsiStatus.GOOD };
/** Commands another nexus may still send while an SPC-2 reservation is held: INQUIRY, REQUEST SENSE, RELEASE(6)/(10), REPORT LUNS. */
const LEGACY_ALLOWED = new Set<number>([0x12, 0x03, 0x17, 0x57, 0xa0]);
const CONFLICT: ScsiResponse = { status: ScsiStatus.RESERVATION_CONFLICT };

export type Notify = (nexus: string, condition: Asc) => void;

function allRegistrants(type: number): boolean {
  return (
    type === ReservationType.WRITE_EXCLUSIVE_ALL_REGISTRANTS ||
    type === ReservationType.EXCLUSIVE_ACCESS_ALL_REGISTRANTS
  );
}

function registrantsOnly(type: number): boolean {
  return (
    type === ReservationType.WRITE_EXCLUSIVE_REGISTRANTS_ONLY ||
    type === ReservationType.EXCLUSIVE_ACCESS_REGISTRANTS_ONLY
  );
}

function exclusiveAccess(type: number): boolean {
  return (
    type === ReservationType.EXCLUSIVE_ACCESS ||
    type === ReservationType.EXCLUSIVE_ACCESS_REGISTRANTS_ONLY ||
    type === ReservationType.EXCLUSIVE_ACCESS_ALL_REGISTRANTS
  );
}

export class Reservations {
  private readonly registrations = new Map<string, Registration>();
  private reservation: Reservation | undefined;
  /** PRgeneration: counts successful REGISTER, CLEAR and PREEMPT actions (SPC-4 6.15.2). */
  private generation = 0;
  /** The nexus holding an SPC-2 RESERVE(6)/(10) reservation. */
  private legacyHolder: string | undefined;

  constructor(private readonly notify: Notify) {}

  /** RESERVATION CONFLICT for `nexus` running `opcode` of this access class, or undefined to go on. */
  conflict(nexus: string, opcode: number, access: AccessClass): ScsiResponse | undefined {
    if (this.legacyHolder !== undefined && this.legacyHolder !== nexus) {
      // SPC-2 5.5.1: everything but these conflicts; RELEASE succeeds without releasing.
      return LEGACY_ALLOWED.has(opcode) ? undefined : CONFLICT;
    }
    if (access === 'always') return undefined;
    const reservation = this.reservation;
    if (reservation === undefined || this.holds(nexus)) return undefined;
    const registered = this.registrations.has(nexus);
    if ((registrantsOnly(reservation.type) || allRegistrants(reservation.type)) && registered) {
      return undefined;
    }
    if (access === 'read' && !exclusiveAccess(reservation.type)) return undefined;
    return CONFLICT;
  }

  /** Whether `nexus` is a persistent reservation holder (SPC-4 5.9.10). */
  private holds(nexus: string): boolean {
    const reservation = this.reservation;
    if (reservation === undefined) return false;
    if (allRegistrants(reservation.type)) return this.registrations.has(nexus);
    return reservation.holder === nexus;
  }

  /** SPC-2 RESERVE(6)/(10): one nexus holds the whole unit; refused while persistent reservations are in use. */
  reserveLegacy(port: InitiatorPort, cdb: Uint8Array): ScsiResponse {
    if (cdb[0] === 0x16 && (cdb[1]! & 0x01) !== 0) throw invalidField(1, 0); // extents: obsolete
    if (cdb[0] === 0x56 && (cdb[1]! & 0x02) !== 0) throw invalidField(1, 1); // LONGID: third party
    if (this.reservation !== undefined || this.registrations.size > 0) return CONFLICT;
    if (this.legacyHolder !== undefined && this.legacyHolder !== port.nexus) return CONFLICT;
    this.legacyHolder = port.nexus;
    return GOOD;
  }

  releaseLegacy(port: InitiatorPort): ScsiResponse {
    if (this.reservation !== undefined) return CONFLICT;
    if (this.legacyHolder === port.nexus) this.legacyHolder = undefined;
    return GOOD;
  }

  /** The nexus is gone or reset: its SPC-2 reservation goes (persistent ones stay, SPC-4 5.9.1). */
  nexusLost(nexus: string): void {
    if (this.legacyHolder === nexus) this.legacyHolder = undefined;
  }

  /** LOGICAL UNIT RESET releases SPC-2 reservations (SAM-5 6.3.3); persistent ones stay. */
  reset(): void {
    this.legacyHolder = undefined;
  }

  in(task: ScsiTask): ScsiResponse {
    const cdb = task.cdb;
    const action = cdb[1]! & 0x1f;
    const allocation = allocationLength(cdb, 7, 2);
    let data: Buffer;
    switch (action) {
      case InAction.READ_KEYS:
        data = this.readKeys();
        break;
      case InAction.READ_RESERVATION:
        data = this.readReservation();
        break;
      case InAction.REPORT_CAPABILITIES:
        data = reportCapabilities();
        break;
      case InAction.READ_FULL_STATUS:
        data = this.readFullStatus();
        break;
      default:
        throw invalidField(1, 4);
    }
    return { status: ScsiStatus.GOOD, dataIn: cut(data, allocation) };
  }

  private readKeys(): Buffer {
    const keys = [...this.registrations.values()];
    const data = Buffer.alloc(8 + 8 * keys.length);
    data.writeUInt32BE(this.generation >>> 0, 0);
    data.writeUInt32BE(8 * keys.length, 4);
    keys.forEach((registration, index) => data.writeBigUInt64BE(registration.key, 8 + 8 * index));
    return data;
  }

  private readReservation(): Buffer {
    const reservation = this.reservation;
    const data = Buffer.alloc(reservation === undefined ? 8 : 24);
    data.writeUInt32BE(this.generation >>> 0, 0);
    if (reservation === undefined) return data;
    data.writeUInt32BE(16, 4);
    // The all-registrants types have no single holder: the key reads as zero (SPC-4 6.15.3.3).
    const key = allRegistrants(reservation.type)
      ? 0n
      : (this.registrations.get(reservation.holder)?.key ?? 0n);
    data.writeBigUInt64BE(key, 8);
    data[21] = reservation.type; // scope 0: logical unit
    return data;
  }

  private readFullStatus(): Buffer {
    const descriptors = [...this.registrations.entries()].map(([nexus, registration]) => {
      const transportId = transportIdOf(registration.port);
      const descriptor = Buffer.alloc(24 + transportId.length);
      descriptor.writeBigUInt64BE(registration.key, 0);
      if (this.holds(nexus)) {
        descriptor[12] = 0x01; // R_HOLDER
        descriptor[13] = this.reservation!.type;
      }
      descriptor.writeUInt16BE(1, 18); // relative target port identifier
      descriptor.writeUInt32BE(transportId.length, 20);
      transportId.copy(descriptor, 24);
      return descriptor;
    });
    const body = Buffer.concat(descriptors);
    const header = Buffer.alloc(8);
    header.writeUInt32BE(this.generation >>> 0, 0);
    header.writeUInt32BE(body.length, 4);
    return Buffer.concat([header, body]);
  }

  out(task: ScsiTask): ScsiResponse {
    const cdb = task.cdb;
    const action = cdb[1]! & 0x1f;
    const scope = cdb[2]! >> 4;
    const type = cdb[2]! & 0x0f;
    if (action > OutAction.REGISTER_AND_IGNORE_EXISTING_KEY) throw invalidField(1, 4);
    const listLength = u32(cdb, 5);
    if (listLength !== PROUT_PARAMETER_BYTES) throw parameterListLengthError();
    const data = task.dataOut ?? new Uint8Array(0);
    if (data.length < PROUT_PARAMETER_BYTES) throw parameterListLengthError();
    const list = Buffer.from(data.buffer, data.byteOffset, PROUT_PARAMETER_BYTES);
    const key = list.readBigUInt64BE(0);
    const actionKey = list.readBigUInt64BE(8);
    const flags = list[20]!;
    if ((flags & 0x08) !== 0) throw invalidParameter(20, 3); // SPEC_I_PT: not supported
    if ((flags & 0x04) !== 0) throw invalidParameter(20, 2); // ALL_TG_PT: not supported
    if ((flags & 0x01) !== 0) throw invalidParameter(20, 0); // APTPL: state is in memory only
    const port = task.port;
    const response = (() => {
      switch (action) {
        case OutAction.REGISTER:
        case OutAction.REGISTER_AND_IGNORE_EXISTING_KEY:
          return this.register(port, key, actionKey, action === OutAction.REGISTER);
        case OutAction.RESERVE:
          return this.reserve(port, key, scope, type);
        case OutAction.RELEASE:
          return this.release(port, key, scope, type);
        case OutAction.CLEAR:
          return this.clear(port, key);
        default:
          return this.preempt(port, key, actionKey, scope, type);
      }
    })();
    return { ...response, dataOutLength: PROUT_PARAMETER_BYTES };
  }

  private register(
    port: InitiatorPort,
    key: bigint,
    newKey: bigint,
    checkKey: boolean,
  ): ScsiResponse {
    const existing = this.registrations.get(port.nexus);
    if (existing === undefined) {
      if (checkKey && key !== 0n) return CONFLICT;
      if (newKey === 0n) return GOOD;
      if (this.registrations.size >= MAX_REGISTRATIONS) {
        throw new CheckCondition(
          SenseKey.ILLEGAL_REQUEST,
          Ascs.INSUFFICIENT_REGISTRATION_RESOURCES,
        );
      }
      this.registrations.set(port.nexus, { key: newKey, port });
      this.generation += 1;
      return GOOD;
    }
    if (checkKey && key !== existing.key) return CONFLICT;
    this.generation += 1;
    if (newKey !== 0n) {
      existing.key = newKey;
      return GOOD;
    }
    this.unregister(port.nexus);
    return GOOD;
  }

  /** Removes a registration; a reservation held through it is released (SPC-4 5.9.11.3). */
  private unregister(nexus: string): void {
    this.registrations.delete(nexus);
    const reservation = this.reservation;
    if (reservation === undefined) return;
    if (allRegistrants(reservation.type)) {
      if (this.registrations.size === 0) this.reservation = undefined;
      return;
    }
    if (reservation.holder !== nexus) return;
    this.reservation = undefined;
    if (registrantsOnly(reservation.type)) {
      for (const other of this.registrations.keys()) this.notify(other, Ascs.RESERVATIONS_RELEASED);
    }
  }

  private checkRegistered(port: InitiatorPort, key: bigint): boolean {
    const registration = this.registrations.get(port.nexus);
    return registration !== undefined && registration.key === key;
  }

  private checkScopeAndType(scope: number, type: number): void {
    if (scope !== 0) throw invalidField(2, 7);
    if (!VALID_TYPES.has(type)) throw invalidField(2, 3);
  }

  private reserve(port: InitiatorPort, key: bigint, scope: number, type: number): ScsiResponse {
    if (!this.checkRegistered(port, key)) return CONFLICT;
    this.checkScopeAndType(scope, type);
    const reservation = this.reservation;
    if (reservation === undefined) {
      this.reservation = { holder: port.nexus, type };
      return GOOD;
    }
    return this.holds(port.nexus) && reservation.type === type ? GOOD : CONFLICT;
  }

  private release(port: InitiatorPort, key: bigint, scope: number, type: number): ScsiResponse {
    if (!this.checkRegistered(port, key)) return CONFLICT;
    const reservation = this.reservation;
    if (reservation === undefined || !this.holds(port.nexus)) return GOOD;
    if (scope !== 0 || reservation.type !== type) {
      throw new CheckCondition(SenseKey.ILLEGAL_REQUEST, { asc: 0x26, ascq: 0x04 }); // INVALID RELEASE OF PERSISTENT RESERVATION
    }
    this.reservation = undefined;
    if (registrantsOnly(type) || allRegistrants(type)) {
      for (const other of this.registrations.keys()) {
        if (other !== port.nexus) this.notify(other, Ascs.RESERVATIONS_RELEASED);
      }
    }
    return GOOD;
  }

  private clear(port: InitiatorPort, key: bigint): ScsiResponse {
    if (!this.checkRegistered(port, key)) return CONFLICT;
    for (const other of this.registrations.keys()) {
      if (other !== port.nexus) this.notify(other, Ascs.RESERVATIONS_PREEMPTED);
    }
    this.registrations.clear();
    this.reservation = undefined;
    this.generation += 1;
    return GOOD;
  }

  private preempt(
    port: InitiatorPort,
    key: bigint,
    victimKey: bigint,
    scope: number,
    type: number,
  ): ScsiResponse {
    if (!this.checkRegistered(port, key)) return CONFLICT;
    const reservation = this.reservation;
    const removeWithKey = (match: (registrationKey: bigint) => boolean): number => {
      let removed = 0;
      for (const [nexus, registration] of [...this.registrations]) {
        if (nexus === port.nexus || !match(registration.key)) continue;
        this.registrations.delete(nexus);
        this.notify(nexus, Ascs.REGISTRATIONS_PREEMPTED);
        removed += 1;
      }
      return removed;
    };
    if (reservation !== undefined && allRegistrants(reservation.type) && victimKey === 0n) {
      // Preempting an all-registrants reservation with key 0 takes it over alone (SPC-4 5.9.11.4.3).
      this.checkScopeAndType(scope, type);
      removeWithKey(() => true);
      this.reservation = { holder: port.nexus, type };
      this.generation += 1;
      return GOOD;
    }
    const holderKey =
      reservation !== undefined && !allRegistrants(reservation.type)
        ? this.registrations.get(reservation.holder)?.key
        : undefined;
    if (reservation === undefined || holderKey !== victimKey) {
      if (victimKey === 0n) throw invalidParameter(8);
      const removed = removeWithKey((registrationKey) => registrationKey === victimKey);
      const ownKeyMatches = this.registrations.get(port.nexus)?.key === victimKey;
      if (removed === 0 && !ownKeyMatches) return CONFLICT;
      if (reservation !== undefined && !this.registrations.has(reservation.holder)) {
        this.reservation = undefined;
      }
      this.generation += 1;
      return GOOD;
    }
    // The holder's key: its registrations go and the issuer holds a reservation of the new type.
    this.checkScopeAndType(scope, type);
    removeWithKey((registrationKey) => registrationKey === victimKey);
    const changed = reservation.type !== type;
    this.reservation = { holder: port.nexus, type };
    if (changed) {
      for (const other of this.registrations.keys()) {
        if (other !== port.nexus) this.notify(other, Ascs.RESERVATIONS_RELEASED);
      }
    }
    this.generation += 1;
    return GOOD;
  }
}

function reportCapabilities(): Buffer {
  const data = Buffer.alloc(8);
  data.writeUInt16BE(8, 0);
  data[2] = 0x00; // no CRH, SIP_C, ATP_C or PTPL_C: none of those options are served
  data[3] = 0x80 | (1 << 4); // TMV: the type mask is valid; ALLOW COMMANDS 001b
  data[4] = 0x80 | 0x40 | 0x20 | 0x08 | 0x02; // WR_EX_AR, EX_AC_RO, WR_EX_RO, EX_AC, WR_EX
  data[5] = 0x01; // EX_AC_AR
  return data;
}

/** The iSCSI TransportID of an initiator port: format 01b, name plus ",i,0x" and ISID (SPC-4 7.6.4.6). */
function transportIdOf(port: InitiatorPort): Buffer {
  const name = Buffer.from(`${port.initiatorName},i,0x${port.isid}`, 'utf8');
  const padded = Math.ceil((name.length + 1) / 4) * 4;
  const id = Buffer.alloc(4 + padded);
  id[0] = 0x40 | PROTOCOL_ISCSI;
  id.writeUInt16BE(padded, 2);
  name.copy(id, 4);
  return id;
}
