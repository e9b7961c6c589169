// The two narrow interfaces of the replication layer:
// - ObjectEndpoint: one disk's objects, local (an ObjectStore) or on another host
//   (RemoteDisk over the peer protocol); what a primary writes its replicas through;
// - ObjectIo: replicated object I/O, what the volume layer calls; LocalReplication
//   (this host is the primary) and Gateway (route to the primary's host) implement it.

import { ObjectKey, ObjectKeyFilter } from '../store/key';
import { Extent } from '../volume/backend';
import { BufferLease } from '../store/buffer-cache';
import { LogTag, PgLogState, PgVersion } from '../store/pg-log';
import type { FlushWatch } from './flush-errors';

export interface ObjectEndpoint {
  read(key: ObjectKey, offset: number, length: number): Promise<Uint8Array>;
  /** Like read without a copy, where the endpoint can lend its buffer (a local store). */
  readLeased?(key: ObjectKey, offset: number, length: number): Promise<BufferLease>;
  /** `log`: the primary's PG version of a client change, for the disk's PG log (pg-log.ts). */
  write(
    key: ObjectKey,
    offset: number,
    data: Uint8Array,
    options?: { fua?: boolean; log?: LogTag },
  ): Promise<void>;
  trim(key: ObjectKey, offset: number, length: number, log?: LogTag): Promise<void>;
  zero(key: ObjectKey, offset: number, length: number, log?: LogTag): Promise<void>;
  blockStatus(key: ObjectKey, offset: number, length: number): Promise<Extent[]>;
  deleteObject(key: ObjectKey, log?: LogTag): Promise<boolean>;
  flush(): Promise<void>;
  /**
   * Recovery: one PG's log on this disk — `complete`, `start` and the entries after
   * `after` (default: after its own `complete`), all of them (a remote disk pages).
   * What it reports is durable. An endpoint without a log lacks it: recovery backfills.
   */
  pgLog?(pool: number, pg: number, after?: PgVersion): Promise<PgLogState>;
  /** Recovery made the disk whole for the PG: raise its log's `start` (and `complete`). */
  markPgLog?(
    pool: number,
    pg: number,
    mark: { start: PgVersion; complete?: PgVersion },
  ): Promise<void>;
  /**
   * Scrub: the object's content checksum (checksum.ts) where the disk is; a local store
   * has none and is checksummed in place.
   */
  checksum?(
    key: ObjectKey,
    objectSizeBytes: number,
  ): Promise<{ digest: string; bytesRead: number }>;
  /**
   * Peering: the keys of `pool`'s objects in this disk's activity record, in key order.
   * Contract: a key is in the record from before any change to the object (write, trim,
   * zero, delete) reaches the disk — the record is durable first and survives a crash
   * of the host — until the change is durable and the object has then been left alone
   * for a while (ACTIVITY_MARK_RETAIN_MS in object-store.ts: longer than a dead primary
   * takes to leave the map plus the peer timeout that ends its writes in flight). So
   * an object not listed has had no change that is still in flight or not yet durable:
   * members that took the same acknowledged writes hold the same content of it. Listing
   * more than that is allowed (a superset only costs a comparison); listing less is not.
   * About ACTIVITY_MARKS_MAX keys at most per disk. `carriedOver`: only the keys an
   * earlier run of the disk's daemon left — the objects its crash may have torn (a
   * superset is allowed here too) — for log catch-up, which needs no more.
   */
  activeObjects(pool: number, carriedOver?: boolean): Promise<ObjectKey[]>;
}

/**
 * One of this host's own disks: an ObjectEndpoint that also lists what it holds (for
 * recovery, scrub and ListObjects). ObjectStore implements it; so does the simulator's
 * disk (test/sim/), which is why the replication layer names this and not ObjectStore.
 */
export interface LocalDisk extends ObjectEndpoint {
  listObjects(filter?: ObjectKeyFilter): AsyncIterable<ObjectKey>;
  /**
   * Stray removal: the PG's copies here are about to be deleted without versions, so its
   * log no longer describes them (pg-log.ts `forget`); in effect before the next commit.
   */
  forgetPgLog?(pool: number, pg: number, start: PgVersion): void;
}

export interface ObjectIo {
  read(key: ObjectKey, offset: number, length: number): Promise<Uint8Array>;
  /** The bytes lent until `release()`: the NBD reply sends them without a copy. */
  readLeased(key: ObjectKey, offset: number, length: number): Promise<BufferLease>;
  write(key: ObjectKey, offset: number, data: Uint8Array, fua: boolean): Promise<void>;
  trim(key: ObjectKey, offset: number, length: number, fua: boolean): Promise<void>;
  zero(key: ObjectKey, offset: number, length: number, fua: boolean): Promise<void>;
  blockStatus(key: ObjectKey, offset: number, length: number): Promise<Extent[]>;
  deleteObject(key: ObjectKey): Promise<void>;
  /**
   * Every write acknowledged before the call is durable on every replica that took it.
   * With a connection's `watch` (flushErrors()), also EIO once if a flush through this
   * daemon failed with EIO since the connection last looked (flush-errors.ts).
   */
  flush(watch?: FlushWatch): Promise<void>;
  /** A new connection's sample of this daemon's flush errors, where it keeps them. */
  flushWatch?(): FlushWatch;
  /** How many flushes failed with EIO here so far (flush-errors.ts). */
  flushErrorCount?(): number;
}

/** What the replication layer needs of the peer transport (PeerPool implements it). */
export interface PeerTransport {
  request(
    peerHostId: string,
    type: number,
    epoch: number,
    metadata: unknown,
    payload?: Uint8Array,
  ): Promise<{ metadata: unknown; payload?: Uint8Array }>;
  /**
   * The cluster map declared `peerHostId` down: requests in flight to it fail now with
   * UNAVAILABLE instead of waiting out their timeout (a host cut off answers nothing).
   */
  abandon?(peerHostId: string, reason: string): void;
}

/** A lease over bytes nobody else owns (a peer's reply): releasing it does nothing. */
export function ownedLease(data: Uint8Array): BufferLease {
  return { data, release: () => undefined };
}
