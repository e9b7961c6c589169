// The gateway: object I/O from this host's front ends, sent to the host holding the
// primary of the object's PG — handled here when that is this host, else one peer
// request to it. A refusal for a stale epoch (ours or the primary's) waits, bounded,
// for this daemon's map to move past it and tries again with the new placement. FLUSH
// reaches every primary this gateway wrote through since its last flush.

import { CisternError, isCisternError } from '../util/errors';
import { ObjectKey } from '../store/key';
import { Extent } from '../volume/backend';
import { ClusterState, actingMembers, pgKey, staleKey } from '../cluster/state';
import { PlacementTable, objectToPg } from '../placement/straw2';
import { ObjectIo, PeerTransport, ownedLease } from './endpoint';
import { BufferLease } from '../store/buffer-cache';
import { MessageType } from './messages';
import { parseExtents } from './remote-disk';
import { PeerRemoteError } from './peer';
import { MapChanges, TAKEN_DOWN, unlessTakenDown } from './map-watch';
import { FlushErrors, FlushWatch } from './flush-errors';

/** Which daemon run of a primary acknowledged writes through this gateway (handler.ts). */
interface Acknowledger {
  incarnation?: string;
  restarted: boolean;
  /** The primary's count of failed flushes at the first acknowledgement (handler.ts). */
  flushErrors?: number;
  /**
   * Per PG written through this primary (`pool:pg`), the disks holding those writes: its
   * acting members as this gateway's map had them at each acknowledgement, each with its
   * stale mark's epoch then (looked up once per PG and map epoch, not per write). One the map takes down or marks stale again since leaves
   * (pruneHolders): it may have lost them with its cache. Should the primary be lost,
   * every other host's flush vouches for them only through a holder that stayed.
   */
  holders: Map<string, { epoch: number; disks: Map<number, number | undefined> }>;
}

function acknowledger(): Acknowledger {
  return { restarted: false, holders: new Map() };
}

/** Attempts of one operation across map changes before giving up. */
export const GATEWAY_ATTEMPTS_MAX = 8;
/** How long one attempt waits for this daemon's map to reach a newer epoch. */
export const EPOCH_WAIT_MS = 5000;
/**
 * How long a request waits for its PG to have `minSize` up-to-date members again (a
 * host coming back, a recovery finishing) before it fails UNAVAILABLE. Below min-size
 * I/O waits rather than risk invariant 1, but boundedly: within the 90 s a gateway
 * gives a primary, and short enough that a client sees a clear error, not a hang.
 */
export const DEGRADED_WAIT_MS = 30_000;
/** Map changes one request waits through while degraded (each is one wait), a bound of its own. */
export const DEGRADED_WAITS_MAX = 256;

export interface GatewayOptions {
  hostId: string;
  transport: PeerTransport;
  state: () => ClusterState;
  table: (poolId: number) => PlacementTable;
  /** This host's own primary engine. */
  local: ObjectIo;
  /** Resolves true once the local map has reached `epoch`. */
  waitForEpoch: (epoch: number, timeoutMs: number) => Promise<boolean>;
  /**
   * The primary disk's host could not be reached: take the disk out of the acting set
   * (as a primary does for an unreachable replica), so the next attempt goes to the
   * PG's next member. Resolves once the map says so.
   */
  onPrimaryUnreachable: (disk: number, error: CisternError) => Promise<void>;
  /** Flushes every up disk of this host. */
  flushLocalDisks: () => Promise<void>;
  /**
   * Map changes as they arrive: a flush stops waiting on a primary once the map has
   * every disk of its host down (map-watch.ts). Without it, until the request times out.
   */
  mapChanges?: MapChanges;
  /** Milliseconds for the degraded wait's bound; Date.now by default (the simulator's clock). */
  now?: () => number;
}

/**
 * Like Promise.all, but settles only once every promise has: a flush's part still under
 * way must stay visible to later flushes until it is done. Throws the first failure.
 */
async function settleAll(parts: Array<Promise<unknown>>): Promise<void> {
  const results = await Promise.allSettled(parts);
  const failed = results.find((r): r is PromiseRejectedResult => r.status === 'rejected');
  if (failed) throw failed.reason;
}

export class Gateway implements ObjectIo {
  /**
   * Primaries (hosts) written through since the last flush, with the incarnation of
   * the daemon that acknowledged those writes (handler.ts): a daemon restarted since
   * cannot flush what its former self replicated, so the flush must reach every host.
   */
  private readonly written = new Map<string, Acknowledger>();
  /**
   * Per flush under way, the primaries it has yet to hear from, with who acknowledged
   * the writes it covers there: a later flush asks them again itself (flush()).
   */
  private readonly flushesUnderWay = new Set<Map<string, Acknowledger[]>>();
  /**
   * The local engine's count of failed flushes when a change was first acknowledged here
   * since the last flush (undefined: none), and that of each flush under way: an EIO
   * there since may have dropped those writes — also one met by another caller's flush
   * (a remote gateway's PrimaryFlush), which the local engine tells only that caller and
   * later flushes no more (local.ts: told once). As flushErrors of a remote primary.
   */
  private localErrorsSeen: number | undefined;
  private readonly localErrorsUnderWay = new Set<{ count: number }>();
  /** EIOs after which the next flush started afresh, told to every connection once. */
  private readonly flushErrors = new FlushErrors();

  constructor(private readonly options: GatewayOptions) {
    options.mapChanges?.(() => this.pruneHolders());
  }

  /**
   * After every map change: each written primary's holders (pending, and those of
   * flushes under way) that the map now has down, or stale by a newer mark than at the
   * acknowledgement (a restart: markRestartedStale), leave (Acknowledger.holders).
   */
  private pruneHolders(): void {
    const state = this.options.state();
    const up = new Set(state.map.disks.filter((d) => d.up).map((d) => d.id));
    const prune = (seen: Acknowledger): void => {
      for (const [name, { disks }] of seen.holders) {
        const [pool, pg] = name.split(':').map(Number) as [number, number];
        for (const [disk, since] of disks) {
          // A mark recovery cleared keeps the disk; a new one is a restart's.
          const mark = state.staleSince[staleKey(pool, pg, disk)];
          if (!up.has(disk) || (mark !== undefined && mark !== since)) disks.delete(disk);
        }
      }
    };
    for (const seen of this.written.values()) prune(seen);
    for (const flush of this.flushesUnderWay)
      for (const list of flush.values()) for (const seen of list) prune(seen);
  }

  /** The host of the first up member of the object's PG, at the current epoch. */
  primaryOf(key: ObjectKey): string {
    return this.primaryDisk(key).host;
  }

  private primaryDisk(key: ObjectKey): { id: number; host: string } {
    const table = this.options.table(key.pool);
    return this.primaryOfPg(key.pool, objectToPg(table.pool, key.volume, key.object));
  }

  /**
   * A PG's primary: its first up member that may serve reads (not stale); failing
   * that, the first up one, which will refuse with a clear error.
   */
  primaryOfPg(poolId: number, pg: number): { id: number; host: string } {
    const state = this.options.state();
    const table = this.options.table(poolId);
    const members = actingMembers(state, table, pg);
    const chosen = members.find((m) => !m.stale) ?? members[0];
    if (chosen) {
      const disk = table.topology.disksById.get(chosen.disk);
      if (disk) return { id: chosen.disk, host: disk.host };
    }
    throw new CisternError(
      'UNAVAILABLE',
      `pg ${poolId}.${pg}: no member is up (epoch ${state.map.epoch}; see cistern status)`,
    );
  }

  /** Runs `operation` against the current primary, retrying across epoch changes. */
  private async route<T>(
    key: ObjectKey,
    local: () => Promise<T>,
    remote: (host: string, epoch: number) => Promise<T>,
    mutates: boolean,
  ): Promise<T> {
    let lastError: unknown;
    const degraded = { sinceMs: undefined as number | undefined, waits: 0 };
    for (let attempt = 0; attempt < GATEWAY_ATTEMPTS_MAX; attempt += 1) {
      const epoch = this.options.state().map.epoch;
      let primary: { id: number; host: string };
      try {
        primary = this.primaryDisk(key);
      } catch (error) {
        if (!isCisternError(error, 'UNAVAILABLE')) throw error;
        await this.waitDegraded(key, epoch, error, degraded);
        attempt -= 1; // waiting for the PG is bounded by DEGRADED_WAIT_MS, not by attempts
        continue;
      }
      const host = primary.host;
      try {
        if (host === this.options.hostId) {
          const result = await local();
          if (mutates) this.localErrorsSeen ??= this.options.local.flushErrorCount?.();
          return result;
        }
        if (mutates && !this.written.has(host)) this.written.set(host, acknowledger());
        return await remote(host, epoch);
      } catch (error) {
        // Only a primary we could not reach leaves the acting set. A refusal it sent
        // itself (UNAVAILABLE: too few up-to-date replicas while its PG recovers) comes
        // from a live host: taking its disk down would make the PG worse, not better.
        if (
          host !== this.options.hostId &&
          !(error instanceof PeerRemoteError) &&
          (isCisternError(error, 'UNAVAILABLE') || isCisternError(error, 'CLOSED'))
        ) {
          lastError = error;
          await this.options.onPrimaryUnreachable(primary.id, error as CisternError);
          continue;
        }
        // Refused by the primary itself (here, or a live remote one): its PG has fewer
        // than min-size up-to-date members. Wait for the map to change, then try again.
        if (isCisternError(error, 'UNAVAILABLE')) {
          await this.waitDegraded(key, epoch, error, degraded);
          attempt -= 1;
          continue;
        }
        if (!isCisternError(error, 'STALE_EPOCH')) throw error;
        lastError = error;
        // Someone is on a newer map than we are (or than the primary is): wait for
        // ours to move, then place the object again.
        const target = Math.max(epoch + 1, (error as CisternError & { epoch?: number }).epoch ?? 0);
        await this.options.waitForEpoch(target, EPOCH_WAIT_MS);
      }
    }
    throw new CisternError(
      'UNAVAILABLE',
      `object ${key.pool}/${key.volume}/${key.object}: the cluster map kept changing (${String(lastError)})`,
    );
  }

  /**
   * Below min-size: waits (without holding any ordering: the primary's engine has let
   * go of the object) for the map to move past `epoch`, bounded by DEGRADED_WAIT_MS from
   * the first refusal and DEGRADED_WAITS_MAX waits; then UNAVAILABLE saying so.
   */
  private async waitDegraded(
    key: ObjectKey,
    epoch: number,
    error: CisternError,
    degraded: { sinceMs: number | undefined; waits: number },
  ): Promise<void> {
    const now = this.options.now ?? Date.now;
    degraded.sinceMs ??= now();
    const remainingMs = degraded.sinceMs + DEGRADED_WAIT_MS - now();
    degraded.waits += 1;
    if (remainingMs <= 0 || degraded.waits > DEGRADED_WAITS_MAX) {
      throw new CisternError(
        'UNAVAILABLE',
        `object ${key.pool}/${key.volume}/${key.object}: waited ${DEGRADED_WAIT_MS / 1000} s for ` +
          `its PG to have enough up-to-date replicas again; still: ${error.message}`,
      );
    }
    await this.options.waitForEpoch(epoch + 1, Math.min(remainingMs, EPOCH_WAIT_MS));
  }

  private request(
    host: string,
    epoch: number,
    type: MessageType,
    metadata: unknown,
    payload?: Uint8Array,
  ): Promise<{ metadata: unknown; payload?: Uint8Array }> {
    return this.options.transport.request(host, type, epoch, metadata, payload);
  }

  /** A mutation sent to a primary; notes which incarnation of it acknowledged. */
  private async mutateRemote(
    host: string,
    epoch: number,
    type: MessageType,
    metadata: { key: ObjectKey; [field: string]: unknown },
    payload?: Uint8Array,
  ): Promise<void> {
    const reply = await this.request(host, epoch, type, metadata, payload);
    this.noteAcknowledged(host, reply.metadata, metadata.key);
  }

  /**
   * Marks `host` written (again) as its acknowledgement arrives, not only as the change
   * was sent: a FLUSH that took the marks while the change was in flight has not covered
   * it, so the next one must ask that primary.
   */
  private noteAcknowledged(host: string, metadata: unknown, key: ObjectKey): void {
    const seen = this.written.get(host) ?? acknowledger();
    const incarnation = (metadata as { incarnation?: unknown } | undefined)?.incarnation;
    if (typeof incarnation === 'string') {
      if (seen.incarnation !== undefined && seen.incarnation !== incarnation) seen.restarted = true;
      seen.incarnation = incarnation;
    }
    const flushErrors = (metadata as { flushErrors?: unknown } | undefined)?.flushErrors;
    if (typeof flushErrors === 'number') seen.flushErrors ??= flushErrors;
    this.written.set(host, seen);
    const state = this.options.state();
    const table = this.options.table(key.pool);
    const pg = objectToPg(table.pool, key.volume, key.object);
    const name = pgKey(key.pool, pg);
    const holders = seen.holders.get(name);
    // The acting members change only with the map: once per PG and epoch is enough.
    if (holders?.epoch === state.map.epoch) return;
    const disks = holders?.disks ?? new Map<number, number | undefined>();
    for (const member of actingMembers(state, table, pg))
      disks.set(member.disk, state.staleSince[staleKey(key.pool, pg, member.disk)]);
    seen.holders.set(name, { epoch: state.map.epoch, disks });
  }

  /** A copy the caller owns (readLeased lends the store's buffer instead). */
  async read(key: ObjectKey, offset: number, length: number): Promise<Uint8Array> {
    const lease = await this.readLeased(key, offset, length);
    const copy = Uint8Array.from(lease.data);
    lease.release();
    return copy;
  }

  readLeased(key: ObjectKey, offset: number, length: number): Promise<BufferLease> {
    return this.route(
      key,
      () => this.options.local.readLeased(key, offset, length),
      async (host, epoch) => {
        const reply = await this.request(host, epoch, MessageType.ObjectRead, {
          key,
          offset,
          length,
        });
        const data = reply.payload ?? new Uint8Array(0);
        if (data.length !== length)
          throw new CisternError(
            'EIO',
            `primary ${host} returned ${data.length} of ${length} bytes`,
          );
        return ownedLease(data);
      },
      false,
    );
  }

  write(key: ObjectKey, offset: number, data: Uint8Array, fua: boolean): Promise<void> {
    return this.route(
      key,
      () => this.options.local.write(key, offset, data, fua),
      async (host, epoch) => {
        await this.mutateRemote(
          host,
          epoch,
          MessageType.ObjectWrite,
          { key, offset, length: data.length, fua },
          data,
        );
      },
      true,
    );
  }

  trim(key: ObjectKey, offset: number, length: number, fua: boolean): Promise<void> {
    return this.route(
      key,
      () => this.options.local.trim(key, offset, length, fua),
      async (host, epoch) => {
        await this.mutateRemote(host, epoch, MessageType.ObjectTrim, { key, offset, length, fua });
      },
      true,
    );
  }

  zero(key: ObjectKey, offset: number, length: number, fua: boolean): Promise<void> {
    return this.route(
      key,
      () => this.options.local.zero(key, offset, length, fua),
      async (host, epoch) => {
        await this.mutateRemote(host, epoch, MessageType.ObjectZero, { key, offset, length, fua });
      },
      true,
    );
  }

  blockStatus(key: ObjectKey, offset: number, length: number): Promise<Extent[]> {
    return this.route(
      key,
      () => this.options.local.blockStatus(key, offset, length),
      async (host, epoch) =>
        parseExtents(
          (await this.request(host, epoch, MessageType.ObjectBlockStatus, { key, offset, length }))
            .metadata,
        ),
      false,
    );
  }

  deleteObject(key: ObjectKey): Promise<void> {
    return this.route(
      key,
      () => this.options.local.deleteObject(key),
      async (host, epoch) => {
        await this.mutateRemote(host, epoch, MessageType.ObjectDelete, {
          key,
          offset: 0,
          length: 0,
        });
      },
      true,
    );
  }

  /**
   * Every write acknowledged before the call becomes durable on every replica that
   * holds it. Each primary written through flushes what it replicated. A primary that
   * cannot be reached cannot be asked: its disks leave the acting set, and every other
   * host flushes all its disks instead — the replicas that primary wrote to are among
   * them, so what it acknowledged is durable on them. So does one the map takes down
   * while it is being asked (its lease lapsed: map-watch.ts), without waiting for the
   * request to time out. A primary that answers as another incarnation than the one
   * that acknowledged the writes restarted meanwhile: every host flushes, and the FLUSH
   * fails with EIO, since the restart may have lost some.
   *
   * Concurrent flushes: each takes the marks and clears them, so a later flush asks
   * again, itself, every primary an earlier one is still waiting for (the writes that
   * one covers were acknowledged before the later flush was asked for) — rather than
   * waiting for the earlier flush, which may be stuck on a host being cut off.
   */
  flushWatch(): FlushWatch {
    return this.flushErrors.watch();
  }

  flush(watch?: FlushWatch): Promise<void> {
    return this.flushErrors.run(watch, () => this.flushOnce());
  }

  private async flushOnce(): Promise<void> {
    const taken = [...this.written];
    this.written.clear();
    const localSeen = [
      this.localErrorsSeen,
      ...[...this.localErrorsUnderWay].map((u) => u.count),
    ].filter((count): count is number => count !== undefined);
    const localTaken = this.localErrorsSeen;
    this.localErrorsSeen = undefined;
    const localSample = localSeen.length > 0 ? Math.min(...localSeen) : undefined;
    const localUnderWay = localSample === undefined ? undefined : { count: localSample };
    if (localUnderWay) this.localErrorsUnderWay.add(localUnderWay);
    const own = new Map<string, Acknowledger[]>(taken.map(([host, seen]) => [host, [seen]]));
    for (const earlier of this.flushesUnderWay)
      for (const [host, seen] of earlier) own.set(host, [...(own.get(host) ?? []), ...seen]);
    this.flushesUnderWay.add(own);
    const covered = new Map(own);
    const lost: string[] = [];
    const restarted: string[] = [];
    const failedFlushes: string[] = [];
    let unheld: string[] = [];
    try {
      await settleAll([
        this.untilEpochSettles(async () => {
          await this.options.local.flush();
          const count = this.options.local.flushErrorCount?.();
          if (localSample !== undefined && count !== undefined && count > localSample)
            failedFlushes.push(this.options.hostId);
        }),
        ...[...own].map(async ([host, seen]) => {
          try {
            await this.flushPrimary(host, seen, restarted, failedFlushes);
          } catch (error) {
            if (
              error instanceof PeerRemoteError ||
              (!isCisternError(error, 'UNAVAILABLE') && !isCisternError(error, 'CLOSED'))
            )
              throw error;
            lost.push(host);
            for (const disk of this.options.state().map.disks) {
              if (disk.host === host && disk.up)
                await this.options.onPrimaryUnreachable(disk.id, error);
            }
          } finally {
            own.delete(host);
          }
        }),
      ]);
      if (lost.length > 0 || restarted.length > 0) await this.flushEveryHost(lost);
      unheld = this.heldByNone(lost, covered);
    } catch (error) {
      // Not known durable: again next time — unless EIO already told the client they
      // may be lost, after which the next FLUSH starts afresh.
      if (!isCisternError(error, 'EIO')) {
        for (const [host, seen] of taken) this.written.set(host, seen);
        if (localTaken !== undefined)
          this.localErrorsSeen = Math.min(this.localErrorsSeen ?? localTaken, localTaken);
      }
      throw error;
    } finally {
      this.flushesUnderWay.delete(own);
      if (localUnderWay) this.localErrorsUnderWay.delete(localUnderWay);
    }
    if (unheld.length > 0) {
      throw new CisternError(
        'EIO',
        `writes this flush covers, acknowledged by lost primaries, in pg ${unheld.join(', ')} ` +
          'are on no disk that stayed up to be flushed (their holders went down or ' +
          'restarted too): they may be lost',
      );
    }
    if (failedFlushes.length > 0) {
      throw new CisternError(
        'EIO',
        `primary ${failedFlushes.join(', ')} failed a flush (EIO) after acknowledging writes ` +
          'this flush covers: they may be lost',
      );
    }
    if (restarted.length > 0) {
      // The daemon that acknowledged our writes is gone, and its own copies of them may
      // have gone with its caches. Every host flushed all its disks, which keeps them
      // wherever they survived, but saying "durable" could still be a lie (invariant 1):
      // EIO. The next FLUSH starts afresh (the client has been told).
      throw new CisternError(
        'EIO',
        `primary ${restarted.join(', ')} restarted after acknowledging writes this flush ` +
          'covers: they may be lost',
      );
    }
  }

  /**
   * One primary's PrimaryFlush; UNAVAILABLE once the map has every disk of the host down
   * (it can no longer be anybody's primary). Notes the host in `restarted` when it
   * answers as another incarnation than one that acknowledged the writes covered, and
   * in `failedFlushes` when a flush there failed with EIO since it acknowledged them.
   */
  private async flushPrimary(
    host: string,
    seen: readonly Acknowledger[],
    restarted: string[],
    failedFlushes: string[],
  ): Promise<void> {
    const hostDown = (): boolean =>
      !this.options.state().map.disks.some((disk) => disk.host === host && disk.up);
    const mapChanges = this.options.mapChanges ?? (() => () => undefined);
    await this.untilEpochSettles(async (epoch) => {
      const reply = await unlessTakenDown(
        this.request(host, epoch, MessageType.PrimaryFlush, {}),
        hostDown,
        mapChanges,
      );
      if (reply === TAKEN_DOWN)
        throw new CisternError('UNAVAILABLE', `host ${host} was taken down during the flush`);
      const answer = reply.metadata as { incarnation?: unknown; flushErrors?: unknown } | undefined;
      const lostSome = seen.some(
        (by) =>
          by.restarted || (by.incarnation !== undefined && answer?.incarnation !== by.incarnation),
      );
      if (lostSome) restarted.push(host);
      // A flush there failed with EIO (and dropped its marks) since it acknowledged our
      // writes: it told whoever asked for it, but those may have been ours.
      const failedThere = seen.some(
        (by) =>
          by.flushErrors !== undefined &&
          typeof answer?.flushErrors === 'number' &&
          answer.flushErrors > by.flushErrors,
      );
      if (failedThere && !lostSome) failedFlushes.push(host);
    });
  }

  /**
   * Runs one part of a flush (this host's replication, or a PrimaryFlush), again when a
   * daemon on a newer map refused it for its stale epoch — the map moved while it was
   * on its way — once ours has caught up. A flush is idempotent (disks not known
   * flushed stay dirty), and failing it would tell the client its writes may be lost.
   */
  private async untilEpochSettles(step: (epoch: number) => Promise<void>): Promise<void> {
    for (let attempt = 1; ; attempt += 1) {
      const epoch = this.options.state().map.epoch;
      try {
        await step(epoch);
        return;
      } catch (error) {
        if (!isCisternError(error, 'STALE_EPOCH') || attempt >= GATEWAY_ATTEMPTS_MAX) throw error;
        const target = Math.max(epoch + 1, (error as CisternError & { epoch?: number }).epoch ?? 0);
        await this.options.waitForEpoch(target, EPOCH_WAIT_MS);
      }
    }
  }

  /**
   * After every other host flushed all its disks in place of the `lost` primaries: the
   * PGs whose writes through them have no holder left that stayed up (and is not on a
   * lost host) — nothing this flush made durable holds them (simulator seed 311: the
   * primary and its one replica both lost power with the writes in their caches).
   */
  private heldByNone(lost: string[], covered: Map<string, Acknowledger[]>): string[] {
    const state = this.options.state();
    const hostOf = new Map(state.map.disks.map((d) => [d.id, d.host]));
    const unheld = new Set<string>();
    for (const host of lost) {
      for (const seen of covered.get(host) ?? []) {
        for (const [name, { disks }] of seen.holders) {
          const flushed = [...disks.keys()].some((d) => !lost.includes(hostOf.get(d) ?? host));
          if (!flushed) unheld.add(name);
        }
      }
    }
    return [...unheld];
  }

  private async flushEveryHost(except: string[]): Promise<void> {
    const state = this.options.state();
    const hosts = new Set(
      state.map.disks.filter((d) => d.up && !except.includes(d.host)).map((d) => d.host),
    );
    await Promise.all(
      [...hosts].map((host) =>
        host === this.options.hostId
          ? this.options.flushLocalDisks()
          : // A map change while this runs (the lost host's disks marked down, say)
            // refuses the request as stale: ask again at the new epoch, as any flush does.
            this.untilEpochSettles(async (epoch) => {
              await this.request(host, epoch, MessageType.HostFlush, {});
            }),
      ),
    );
  }
}
