// Text keys of Login and Text PDUs (RFC 7143 §6, §13): `key=value\0` pairs with bounds,
// and the target's side of operational parameter negotiation. Pure: a negotiation is a
// function of the initiator's offers and our limits, so login.ts can be tested without
// sockets and every key's rule sits in one table.

import { assert } from '../../util/assert';
import { IscsiProtocolError, RejectReason } from './pdu';

/** RFC 7143 §6.1: key names are at most 63 bytes. */
export const MAX_KEY_BYTES = 63;
/**
 * Longest value we accept. Most values are bounded at 255 bytes; CHAP binary values may
 * be longer (a 1024-byte challenge in hex is 2050 characters); 8 KiB covers every key.
 */
export const MAX_VALUE_BYTES = 8192;
/** Text of one negotiation, summed over its continuation PDUs (C bit). */
export const MAX_TEXT_BYTES = 64 * 1024;
/** Pairs in one negotiation: far above the ~25 keys RFC 7143 defines. */
export const MAX_PAIRS = 256;

export type TextPairs = Array<[string, string]>;

/** Parses `key=value\0...`; a last pair without its NUL is accepted. */
export function parseText(data: Uint8Array): TextPairs {
  if (data.length > MAX_TEXT_BYTES) throw textError('text segment too long');
  const pairs: TextPairs = [];
  let start = 0;
  while (start < data.length) {
    let end = data.indexOf(0, start);
    if (end < 0) end = data.length;
    if (end > start) {
      if (pairs.length >= MAX_PAIRS) throw textError('too many text keys');
      pairs.push(parsePair(Buffer.from(data.buffer, data.byteOffset + start, end - start)));
    }
    start = end + 1;
  }
  return pairs;
}

function parsePair(bytes: Buffer): [string, string] {
  const equals = bytes.indexOf(0x3d);
  if (equals <= 0) throw textError('text pair without a key');
  if (equals > MAX_KEY_BYTES) throw textError('text key too long');
  if (bytes.length - equals - 1 > MAX_VALUE_BYTES) throw textError('text value too long');
  const key = bytes.toString('latin1', 0, equals);
  if (!/^[A-Za-z0-9.\-+@_]+$/.test(key)) throw textError('bad character in text key');
  return [key, bytes.toString('utf8', equals + 1)];
}

function textError(message: string): IscsiProtocolError {
  return new IscsiProtocolError(RejectReason.PROTOCOL_ERROR, message);
}

export function encodeText(pairs: TextPairs): Buffer {
  return Buffer.concat(pairs.map(([key, value]) => Buffer.from(`${key}=${value}\0`, 'utf8')));
}

// ---- Operational parameters -----------------------------------------------------------

/** What a session runs with once login is done (RFC 7143 §13 defaults until negotiated). */
export interface SessionParameters {
  headerDigest: boolean;
  dataDigest: boolean;
  maxConnections: number;
  initialR2T: boolean;
  immediateData: boolean;
  /** The initiator's MaxRecvDataSegmentLength: the largest data segment we may send it. */
  initiatorMaxRecvDataSegmentLength: number;
  maxBurstLength: number;
  firstBurstLength: number;
  defaultTime2Wait: number;
  defaultTime2Retain: number;
  maxOutstandingR2T: number;
  dataPduInOrder: boolean;
  dataSequenceInOrder: boolean;
  errorRecoveryLevel: number;
}

export const DEFAULT_PARAMETERS: Readonly<SessionParameters> = {
  headerDigest: false,
  dataDigest: false,
  maxConnections: 1,
  initialR2T: true,
  immediateData: true,
  initiatorMaxRecvDataSegmentLength: 8192,
  maxBurstLength: 262144,
  firstBurstLength: 65536,
  defaultTime2Wait: 2,
  defaultTime2Retain: 20,
  maxOutstandingR2T: 1,
  dataPduInOrder: true,
  dataSequenceInOrder: true,
  errorRecoveryLevel: 0,
};

/** What this target supports, the other side of every negotiation. */
export interface TargetLimits {
  /** The largest data segment we accept; declared to the initiator. */
  maxRecvDataSegmentLength: number;
  maxBurstLength: number;
  firstBurstLength: number;
  maxOutstandingR2T: number;
}

/** RFC 7143 ranges. */
const SEGMENT_MIN = 512;
const SEGMENT_MAX = 0xffffff;
const TIME_MAX_SECONDS = 3600;

export function validateLimits(limits: TargetLimits): void {
  for (const value of [
    limits.maxRecvDataSegmentLength,
    limits.maxBurstLength,
    limits.firstBurstLength,
  ]) {
    assert(
      Number.isInteger(value) && value >= SEGMENT_MIN && value <= SEGMENT_MAX,
      `limit ${value}`,
    );
  }
  assert(limits.firstBurstLength <= limits.maxBurstLength, 'FirstBurstLength above MaxBurstLength');
  assert(limits.maxOutstandingR2T >= 1 && limits.maxOutstandingR2T <= 65535, 'MaxOutstandingR2T');
}

/** Answer values that are not a negotiated value. */
export const NOT_UNDERSTOOD = 'NotUnderstood';
export const IRRELEVANT = 'Irrelevant';
export const REJECT = 'Reject';

/**
 * Parses a numerical value (decimal, or hex with 0x, RFC 7143 §5.1); undefined when it
 * is not one or lies outside [min, max].
 */
export function parseNumber(value: string, min: number, max: number): number | undefined {
  let parsed: number;
  if (/^[0-9]{1,10}$/.test(value)) parsed = Number(value);
  else if (/^0[xX][0-9a-fA-F]{1,8}$/.test(value)) parsed = Number.parseInt(value.slice(2), 16);
  else return undefined;
  return parsed >= min && parsed <= max ? parsed : undefined;
}

function parseBoolean(value: string): boolean | undefined {
  if (value === 'Yes') return true;
  if (value === 'No') return false;
  return undefined;
}

const yesNo = (value: boolean): string => (value ? 'Yes' : 'No');

/**
 * One operational key offered by the initiator: updates `params` with the negotiated
 * result and returns the value to answer with, or undefined for a declaration that
 * needs no answer. Keys this module does not know answer NotUnderstood.
 */
export function negotiateKey(
  key: string,
  value: string,
  params: SessionParameters,
  limits: TargetLimits,
): string | undefined {
  switch (key) {
    case 'HeaderDigest':
    case 'DataDigest': {
      // A list in the initiator's order of preference; we support both values.
      const choice = value.split(',').find((item) => item === 'CRC32C' || item === 'None');
      if (choice === undefined) return REJECT;
      if (key === 'HeaderDigest') params.headerDigest = choice === 'CRC32C';
      else params.dataDigest = choice === 'CRC32C';
      return choice;
    }
    case 'MaxConnections':
      return numberMin(value, 1, 65535, 1, (n) => (params.maxConnections = n));
    case 'InitialR2T':
      // OR: we are happy without, so the result is the initiator's value.
      return booleanResult(value, (offer) => (params.initialR2T = offer));
    case 'ImmediateData':
      // AND: we take immediate data, so again the initiator's value.
      return booleanResult(value, (offer) => (params.immediateData = offer));
    case 'MaxRecvDataSegmentLength': {
      const parsed = parseNumber(value, SEGMENT_MIN, SEGMENT_MAX);
      if (parsed === undefined) return REJECT;
      params.initiatorMaxRecvDataSegmentLength = parsed;
      return undefined;
    }
    case 'MaxBurstLength':
      return numberMin(value, SEGMENT_MIN, SEGMENT_MAX, limits.maxBurstLength, (n) => {
        params.maxBurstLength = n;
      });
    case 'FirstBurstLength':
      return numberMin(value, SEGMENT_MIN, SEGMENT_MAX, limits.firstBurstLength, (n) => {
        params.firstBurstLength = n;
      });
    case 'DefaultTime2Wait': {
      const parsed = parseNumber(value, 0, TIME_MAX_SECONDS);
      if (parsed === undefined) return REJECT;
      params.defaultTime2Wait = Math.max(parsed, DEFAULT_PARAMETERS.defaultTime2Wait);
      return String(params.defaultTime2Wait);
    }
    case 'DefaultTime2Retain':
      // Without connection recovery we keep nothing after a connection is gone.
      return numberMin(value, 0, TIME_MAX_SECONDS, 0, (n) => (params.defaultTime2Retain = n));
    case 'MaxOutstandingR2T':
      return numberMin(value, 1, 65535, limits.maxOutstandingR2T, (n) => {
        params.maxOutstandingR2T = n;
      });
    case 'DataPDUInOrder':
      // OR with our Yes: always Yes, which is what we implement.
      return parseBoolean(value) === undefined ? REJECT : yesNo((params.dataPduInOrder = true));
    case 'DataSequenceInOrder':
      return parseBoolean(value) === undefined
        ? REJECT
        : yesNo((params.dataSequenceInOrder = true));
    case 'ErrorRecoveryLevel':
      return numberMin(value, 0, 2, 0, (n) => (params.errorRecoveryLevel = n));
    case 'IFMarker':
    case 'OFMarker':
      // RFC 3720 keys dropped by RFC 7143; old initiators still offer No. AND with our No.
      return parseBoolean(value) === undefined ? REJECT : 'No';
    case 'IFMarkInt':
    case 'OFMarkInt':
      return IRRELEVANT;
    default:
      return NOT_UNDERSTOOD;
  }
}

function numberMin(
  value: string,
  min: number,
  max: number,
  ours: number,
  apply: (result: number) => void,
): string {
  const parsed = parseNumber(value, min, max);
  if (parsed === undefined) return REJECT;
  const result = Math.min(parsed, ours);
  apply(result);
  return String(result);
}

function booleanResult(value: string, apply: (result: boolean) => void): string {
  const parsed = parseBoolean(value);
  if (parsed === undefined) return REJECT;
  apply(parsed);
  return yesNo(parsed);
}

/** Burst lengths that hold together whatever order the keys came in. */
export function finishParameters(params: SessionParameters): SessionParameters {
  return { ...params, firstBurstLength: Math.min(params.firstBurstLength, params.maxBurstLength) };
}
