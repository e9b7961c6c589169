// The messages daemons exchange over the peer protocol (wire.ts / peer.ts carry them;
// this file gives them meaning). Two families:
// - object operations, sent by a gateway (the daemon an NBD client talks to) to the
//   host holding the primary of the object's PG; the primary orders and replicates;
// - disk operations, sent by a primary to the host that holds one replica disk.
// Every message carries the sender's map epoch in the frame; a receiver on a newer
// epoch refuses it (STALE_EPOCH), which is what fences a partitioned old primary.

import { CisternError } from '../util/errors';
import { ObjectKey, checkObjectKey } from '../store/key';
import { LogTag, PgVersion, isVersion } from '../store/pg-log';

export const enum MessageType {
  ObjectRead = 1,
  ObjectWrite = 2,
  ObjectTrim = 3,
  ObjectZero = 4,
  ObjectBlockStatus = 5,
  ObjectDelete = 6,
  PrimaryFlush = 7,
  /** Flush every up disk of the receiving host (used when a primary became unreachable). */
  HostFlush = 8,

  DiskRead = 20,
  DiskWrite = 21,
  DiskTrim = 22,
  DiskZero = 23,
  DiskBlockStatus = 24,
  DiskDelete = 25,
  DiskFlush = 26,
  /** Scrub: the content checksum of one object on one disk (length = object size). */
  DiskChecksum = 27,
  /** Peering: a page of one disk's activity record for one pool (ObjectEndpoint.activeObjects). */
  DiskActiveObjects = 28,
  /** Recovery: a page of one disk's PG log, or (with `mark`) raising its versions. */
  DiskPgLog = 29,

  ListObjects = 40,
}

export interface ObjectRequest {
  key: ObjectKey;
  offset: number;
  length: number;
  fua?: boolean;
}

export interface DiskRequest extends ObjectRequest {
  disk: number;
  /** The primary's PG version of a change, for the disk's PG log (pg-log.ts). */
  log?: LogTag;
}

export interface PgLogRequest {
  disk: number;
  pool: number;
  pg: number;
  after?: PgVersion;
  /** Instead of reading: recovery made the disk whole for the PG. */
  mark?: { start: PgVersion; complete?: PgVersion };
}

export interface ListObjectsRequest {
  pool?: number;
  volume?: number;
  /** Only this disk of the receiving host (recovery lists one replica). */
  disk?: number;
  /** Keys after this one (pagination: a reply holds at most LIST_OBJECTS_MAX keys). */
  after?: ObjectKey;
}

export interface ActiveObjectsRequest {
  disk: number;
  pool: number;
  /** Only the marks an earlier run left (ObjectEndpoint.activeObjects). */
  carriedOver?: boolean;
  /** Keys after this one (pagination: a reply holds at most LIST_OBJECTS_MAX keys). */
  after?: ObjectKey;
}

function invalid(message: string): CisternError {
  return new CisternError('BAD_REQUEST', message);
}

function isRecord(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

function integer(value: unknown, name: string, max = Number.MAX_SAFE_INTEGER): number {
  if (typeof value !== 'number' || !Number.isSafeInteger(value) || value < 0 || value > max) {
    throw invalid(`${name} must be an integer in 0..${max}`);
  }
  return value;
}

/** Validates metadata from the wire: peers are authenticated, but a bug must not crash us. */
export function parseObjectRequest(metadata: unknown): ObjectRequest {
  if (!isRecord(metadata) || !isRecord(metadata['key']))
    throw invalid('object request needs a key');
  const raw = metadata['key'];
  const key: ObjectKey = {
    pool: integer(raw['pool'], 'pool', 0xffffffff),
    volume: integer(raw['volume'], 'volume', 0xffffffff),
    object: integer(raw['object'], 'object'),
  };
  checkObjectKey(key);
  const request: ObjectRequest = {
    key,
    offset: integer(metadata['offset'] ?? 0, 'offset'),
    length: integer(metadata['length'] ?? 0, 'length'),
  };
  if (metadata['fua'] === true) request.fua = true;
  return request;
}

export function parseDiskRequest(metadata: unknown): DiskRequest {
  const request: DiskRequest = {
    ...parseObjectRequest(metadata),
    disk: integer((metadata as Record<string, unknown>)['disk'], 'disk', 0x7fffffff),
  };
  const log = (metadata as Record<string, unknown>)['log'];
  if (log !== undefined) request.log = parseLogTag(log);
  return request;
}

function version(value: unknown, name: string): PgVersion {
  if (!isVersion(value)) throw invalid(`${name} must be a PG version {epoch, seq}`);
  return { epoch: value.epoch, seq: value.seq };
}

function parseLogTag(value: unknown): LogTag {
  if (!isRecord(value)) throw invalid('log tag must be a record');
  const tag: LogTag = {
    pg: integer(value['pg'], 'pg', 0xffffffff),
    version: version(value['version'], 'version'),
  };
  if (value['complete'] !== undefined) tag.complete = version(value['complete'], 'complete');
  if (value['stale'] === true) tag.stale = true;
  return tag;
}

export function parsePgLogRequest(metadata: unknown): PgLogRequest {
  if (!isRecord(metadata)) throw invalid('PG log request needs a disk, a pool and a pg');
  const request: PgLogRequest = {
    disk: integer(metadata['disk'], 'disk', 0x7fffffff),
    pool: integer(metadata['pool'], 'pool', 0xffffffff),
    pg: integer(metadata['pg'], 'pg', 0xffffffff),
  };
  if (metadata['after'] !== undefined) request.after = version(metadata['after'], 'after');
  const mark = metadata['mark'];
  if (mark !== undefined) {
    if (!isRecord(mark)) throw invalid('PG log mark must be a record');
    request.mark = { start: version(mark['start'], 'start') };
    if (mark['complete'] !== undefined)
      request.mark.complete = version(mark['complete'], 'complete');
  }
  return request;
}

export function parseListObjects(metadata: unknown): ListObjectsRequest {
  const request: ListObjectsRequest = {};
  if (!isRecord(metadata)) return request;
  if (metadata['pool'] !== undefined) request.pool = integer(metadata['pool'], 'pool', 0xffffffff);
  if (metadata['volume'] !== undefined)
    request.volume = integer(metadata['volume'], 'volume', 0xffffffff);
  if (metadata['disk'] !== undefined) request.disk = integer(metadata['disk'], 'disk', 0x7fffffff);
  if (metadata['after'] !== undefined)
    request.after = parseObjectRequest({ key: metadata['after'] }).key;
  return request;
}

export function parseActiveObjects(metadata: unknown): ActiveObjectsRequest {
  if (!isRecord(metadata)) throw invalid('activity record request needs a disk and a pool');
  const request: ActiveObjectsRequest = {
    disk: integer(metadata['disk'], 'disk', 0x7fffffff),
    pool: integer(metadata['pool'], 'pool', 0xffffffff),
  };
  if (metadata['after'] !== undefined)
    request.after = parseObjectRequest({ key: metadata['after'] }).key;
  if (metadata['carriedOver'] === true) request.carriedOver = true;
  return request;
}
