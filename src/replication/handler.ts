// What a daemon answers on the peer protocol. Object operations arrive from gateways
// and are served by this host's primary engine — after checking that this host really
// holds the primary of the object's PG at the (fenced, hence current) epoch. Disk
// operations arrive from primaries and are served by one of this host's up disks.

import { randomUUID } from 'node:crypto';
import { CisternError } from '../util/errors';
import { ObjectKey, encodeObjectKey } from '../store/key';
import { LocalDisk, ObjectIo } from './endpoint';
import { checksumObject, checksumSizeValid } from './checksum';
import {
  MessageType,
  parseActiveObjects,
  parseDiskRequest,
  parseListObjects,
  parseObjectRequest,
  parsePgLogRequest,
} from './messages';

export interface HandlerContext {
  hostId: string;
  /** This host's primary engine. */
  primary: ObjectIo;
  /** The host of the object's current primary. */
  primaryOf(key: ObjectKey): string;
  /** An up disk of this host, or undefined. */
  localStore(disk: number): LocalDisk | undefined;
  /** Every up disk of this host. */
  localStores(): LocalDisk[];
  /**
   * Names this handler's daemon run; a random one by default. Mutations and PrimaryFlush
   * answer with it, so a gateway notices a primary that restarted between its writes
   * and its FLUSH (the new run has not got the old one's replica writes to flush).
   */
  incarnation?: string;
}

export interface HandlerRequest {
  type: number;
  metadata: unknown;
  payload?: Uint8Array;
  peerHostId: string;
}

export interface HandlerReply {
  metadata: unknown;
  payload?: Uint8Array;
}

/** Bound on keys one ListObjects reply carries (a reply's metadata is bounded too). */
export const LIST_OBJECTS_MAX = 2000;
/**
 * Bound on PG log entries one DiskPgLog reply carries: an entry is about 40 bytes of
 * msgpack, so 1000 stay well inside MAX_METADATA_BYTES (64 KiB).
 */
export const PG_LOG_PAGE_MAX = 1000;

export function makeHandler(
  context: HandlerContext,
): (request: HandlerRequest) => Promise<HandlerReply> {
  const ok: HandlerReply = { metadata: {} };
  const incarnation = context.incarnation ?? randomUUID();
  const acknowledged: HandlerReply = { metadata: { incarnation } };
  // A gateway's changes and flushes are answered with the count of flushes this primary
  // failed with EIO too: one after a gateway's writes were acknowledged may have dropped
  // them (flush-errors.ts), and that gateway's next FLUSH must then fail as well.
  const primaryAcknowledged = (): HandlerReply => ({
    metadata: { incarnation, flushErrors: context.primary.flushErrorCount?.() ?? 0 },
  });

  const asPrimary = (key: ObjectKey): ObjectIo => {
    const primary = context.primaryOf(key);
    if (primary !== context.hostId) {
      // Both sides are on the same epoch (fencing), so the sender's placement equals
      // ours: this means a bug, or a map change between check and use; let it retry.
      throw new CisternError(
        'STALE_EPOCH',
        `host ${context.hostId} is not the primary of this object (${primary} is)`,
      );
    }
    return context.primary;
  };

  const disk = (id: number): LocalDisk => {
    const store = context.localStore(id);
    if (!store)
      throw new CisternError('EIO', `disk ${id} is not an up disk of host ${context.hostId}`);
    return store;
  };

  return async (request) => {
    switch (request.type) {
      case MessageType.ObjectRead: {
        const r = parseObjectRequest(request.metadata);
        // A copy: the reply may be queued behind others, so it must own its bytes.
        return { metadata: {}, payload: await asPrimary(r.key).read(r.key, r.offset, r.length) };
      }
      case MessageType.ObjectWrite: {
        const r = parseObjectRequest(request.metadata);
        const data = request.payload ?? new Uint8Array(0);
        if (data.length !== r.length)
          throw new CisternError('BAD_REQUEST', 'write length and payload differ');
        await asPrimary(r.key).write(r.key, r.offset, data, r.fua === true);
        return primaryAcknowledged();
      }
      case MessageType.ObjectTrim: {
        const r = parseObjectRequest(request.metadata);
        await asPrimary(r.key).trim(r.key, r.offset, r.length, r.fua === true);
        return primaryAcknowledged();
      }
      case MessageType.ObjectZero: {
        const r = parseObjectRequest(request.metadata);
        await asPrimary(r.key).zero(r.key, r.offset, r.length, r.fua === true);
        return primaryAcknowledged();
      }
      case MessageType.ObjectBlockStatus: {
        const r = parseObjectRequest(request.metadata);
        return {
          metadata: { extents: await asPrimary(r.key).blockStatus(r.key, r.offset, r.length) },
        };
      }
      case MessageType.ObjectDelete: {
        const r = parseObjectRequest(request.metadata);
        await asPrimary(r.key).deleteObject(r.key);
        return primaryAcknowledged();
      }
      case MessageType.PrimaryFlush:
        await context.primary.flush();
        return primaryAcknowledged();
      case MessageType.HostFlush:
        await Promise.all(context.localStores().map((store) => store.flush()));
        return ok;
      case MessageType.DiskRead: {
        const r = parseDiskRequest(request.metadata);
        return { metadata: {}, payload: await disk(r.disk).read(r.key, r.offset, r.length) };
      }
      case MessageType.DiskWrite: {
        const r = parseDiskRequest(request.metadata);
        const data = request.payload ?? new Uint8Array(0);
        if (data.length !== r.length)
          throw new CisternError('BAD_REQUEST', 'write length and payload differ');
        await disk(r.disk).write(r.key, r.offset, data, {
          fua: r.fua === true,
          ...(r.log ? { log: r.log } : {}),
        });
        return acknowledged;
      }
      case MessageType.DiskTrim: {
        const r = parseDiskRequest(request.metadata);
        await disk(r.disk).trim(r.key, r.offset, r.length, r.log);
        return acknowledged;
      }
      case MessageType.DiskZero: {
        const r = parseDiskRequest(request.metadata);
        await disk(r.disk).zero(r.key, r.offset, r.length, r.log);
        return acknowledged;
      }
      case MessageType.DiskBlockStatus: {
        const r = parseDiskRequest(request.metadata);
        return { metadata: { extents: await disk(r.disk).blockStatus(r.key, r.offset, r.length) } };
      }
      case MessageType.DiskDelete: {
        const r = parseDiskRequest(request.metadata);
        return {
          metadata: { incarnation, existed: await disk(r.disk).deleteObject(r.key, r.log) },
        };
      }
      case MessageType.DiskFlush: {
        const r = parseDiskRequest(request.metadata);
        await disk(r.disk).flush();
        return acknowledged;
      }
      case MessageType.DiskChecksum: {
        const r = parseDiskRequest(request.metadata);
        if (!checksumSizeValid(r.length))
          throw new CisternError('BAD_REQUEST', `no checksum over ${r.length} bytes`);
        return { metadata: await checksumObject(disk(r.disk), r.key, r.length) };
      }
      case MessageType.DiskActiveObjects: {
        const r = parseActiveObjects(request.metadata);
        const after = r.after ? encodeObjectKey(r.after) : undefined;
        const all = await disk(r.disk).activeObjects(r.pool, r.carriedOver === true);
        const rest = after
          ? all.filter((key) => Buffer.compare(encodeObjectKey(key), after) > 0)
          : all;
        return {
          metadata: {
            keys: rest.slice(0, LIST_OBJECTS_MAX),
            truncated: rest.length > LIST_OBJECTS_MAX,
          },
        };
      }
      case MessageType.DiskPgLog: {
        const r = parsePgLogRequest(request.metadata);
        const store = disk(r.disk);
        if (!store.pgLog || !store.markPgLog)
          throw new CisternError('ENOTSUP', `disk ${r.disk} keeps no PG log`);
        if (r.mark) {
          await store.markPgLog(r.pool, r.pg, r.mark);
          return ok;
        }
        const state = await store.pgLog(r.pool, r.pg, r.after);
        return {
          metadata: {
            ...state,
            entries: state.entries.slice(0, PG_LOG_PAGE_MAX),
            truncated: state.entries.length > PG_LOG_PAGE_MAX,
          },
        };
      }
      case MessageType.ListObjects: {
        const r = parseListObjects(request.metadata);
        const stores = r.disk === undefined ? context.localStores() : [disk(r.disk)];
        const after = r.after ? encodeObjectKey(r.after) : undefined;
        const keys: ObjectKey[] = [];
        let truncated = false;
        const filter = {
          ...(r.pool !== undefined ? { pool: r.pool } : {}),
          ...(r.volume !== undefined ? { volume: r.volume } : {}),
        };
        for (const store of stores) {
          for await (const key of store.listObjects(filter)) {
            if (after && Buffer.compare(encodeObjectKey(key), after) <= 0) continue;
            if (keys.length >= LIST_OBJECTS_MAX) {
              truncated = true;
              break;
            }
            keys.push(key);
          }
        }
        return { metadata: { keys, truncated } };
      }
      default:
        throw new CisternError('BAD_REQUEST', `unknown message type ${request.type}`);
    }
  };
}
