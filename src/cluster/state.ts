// The cluster state every daemon agrees on: the placement map plus what placement
// does not need — volumes, where each disk lives, and id counters. Mutations are pure
// functions of the state, so the embedded and the etcd store apply the same ones.

import { assert } from '../util/assert';
import { CisternError } from '../util/errors';
import { ClusterMap, FailureDomain, PoolSpec, validatePool } from '../placement/map';
import { pgCountFor } from '../placement/build';
import { PlacementTable, computeTable, pgRow } from '../placement/straw2';
import { POOL_NAME_PATTERN, VOLUME_NAME_PATTERN } from '../volume/admin';
import type { ScrubRequest } from './scrub-state';
import type { IscsiAccessRecord } from './iscsi-access';

export interface VolumeSpec {
  id: number;
  name: string;
  pool: number;
  sizeBytes: number;
  objectSizeBytes: number;
  createdAt: string;
  /** iSCSI access rules (iscsi-access.ts); absent: any initiator, no CHAP. */
  iscsi?: IscsiAccessRecord;
}

export interface DiskLocation {
  path: string;
  /** The object store's UUID: a different disk at the same path is refused. */
  uuid: string;
  sizeBytes: number;
  /** Why the disk was taken out of service, if it was. */
  error?: string;
}

export interface HostLocation {
  /** Where the host's daemon takes peer connections, "IP:PORT". */
  address: string;
  /** Where its NBD front end listens, if anywhere. */
  nbd?: string;
}

export interface ClusterState {
  map: ClusterMap;
  volumes: VolumeSpec[];
  disks: Record<string, DiskLocation>;
  /** Peer addresses of hosts (multi-host clusters; empty on one host). */
  hostAddresses: Record<string, HostLocation>;
  /** A fingerprint of the cluster secret, so a daemon with the wrong one is refused at start. */
  secretFingerprint?: string;
  /**
   * Per PG (`pool:pg`), members that may lack data since they joined the set or came
   * back up: they take writes but serve no reads (see markNewMembersStale).
   */
  staleMembers: Record<string, number[]>;
  /**
   * Per stale member (`pool:pg:disk`), the epoch that (re)marked it. Recovery clears a
   * mark only if it is still the one it started from: a disk that went away and came
   * back during recovery is marked again and must be recovered again.
   */
  staleSince: Record<string, number>;
  /**
   * Per PG, disks that left its set in a placement change while holding good data
   * (up, not stale): they stay acting members — written, read, counted — until the
   * PG's new members are recovered, so a drain or rebalance never lowers redundancy.
   */
  retainedMembers: Record<string, number[]>;
  /**
   * Per PG left without any up member that has every acknowledged write (every up
   * member stale, or none up): the members that had them last — its good members (up,
   * not stale) just before the change that took the last of them away, in placement
   * order. Every acknowledged write reached every acting member, so each of these holds
   * all of them; the first to come back up is made the PG's good member again (peering
   * in markNewMembersStale) and recovery brings the others in line from it.
   */
  authoritativeMembers: Record<string, number[]>;
  /**
   * Per incomplete PG whose loss the operator accepted (`cistern pg accept-loss`), the
   * epoch of the acceptance: the daemon that peers the PG asks its members' PG logs which
   * copy is complete furthest and serves it (serveAcceptedLoss). Absent in states
   * written before it.
   */
  acceptedLosses?: Record<string, number>;
  /**
   * Per PG with a record (authoritativeMembers), the disks that left it after a crash
   * while a disk before them in it was down (markRestartedStale): each holds every
   * acknowledged write but those its crash took — the map's best copy should the others
   * fail for good (IncompletePg.best). Dropped with the record.
   */
  crashedMembers: Record<string, number[]>;
  /** Recent scrub requests and the hosts' reports (scrub-state.ts). */
  scrubRequests: ScrubRequest[];
  nextVolumeId: number;
  nextPoolId: number;
  nextDiskId: number;
}

/** Volume sizes: at least one block, at most what 2^40 objects of 4 MiB hold (4 PiB). */
export const VOLUME_SIZE_MIN_BYTES = 4096;
export const VOLUME_SIZE_MAX_BYTES = 2 ** 52;
export const VOLUMES_MAX = 1 << 20;
export const OBJECT_SIZE_DEFAULT_BYTES = 4 * 2 ** 20;

export function emptyState(): ClusterState {
  return {
    map: { epoch: 1, hosts: [], disks: [], pools: [] },
    volumes: [],
    disks: {},
    hostAddresses: {},
    staleMembers: {},
    staleSince: {},
    retainedMembers: {},
    authoritativeMembers: {},
    crashedMembers: {},
    scrubRequests: [],
    nextVolumeId: 1,
    nextPoolId: 1,
    nextDiskId: 0,
  };
}

export function findVolume(state: ClusterState, name: string): VolumeSpec {
  const volume = state.volumes.find((v) => v.name === name);
  if (!volume) throw new CisternError('UNKNOWN_VOLUME', `no volume named "${name}"`);
  return volume;
}

function checkVolumeSize(sizeBytes: number): void {
  if (
    !Number.isSafeInteger(sizeBytes) ||
    sizeBytes < VOLUME_SIZE_MIN_BYTES ||
    sizeBytes > VOLUME_SIZE_MAX_BYTES
  ) {
    throw new CisternError(
      'EINVAL',
      `volume size must be ${VOLUME_SIZE_MIN_BYTES} bytes to 4 PiB, got ${sizeBytes}`,
    );
  }
  if (sizeBytes % 512 !== 0) {
    throw new CisternError(
      'EINVAL',
      `volume size must be a multiple of 512 bytes (sectors), got ${sizeBytes}`,
    );
  }
}

export function addHost(state: ClusterState, id: string, rack: string): void {
  if (!state.map.hosts.some((h) => h.id === id)) state.map.hosts.push({ id, rack });
}

export function addDisk(state: ClusterState, host: string, location: DiskLocation): number {
  assert(
    state.map.hosts.some((h) => h.id === host),
    `disk on unknown host ${host}`,
  );
  const id = state.nextDiskId;
  state.nextDiskId += 1;
  state.map.disks.push({ id, host, weight: location.sizeBytes, up: true, in: true });
  state.disks[String(id)] = location;
  return id;
}

/** What a disk's `error` says when it went down because its host could not be reached. */
export const UNREACHABLE_PREFIX = 'UNREACHABLE: ';

/**
 * Whether a down disk's recorded reason is its host being away (lease lapsed, or
 * peers could not reach it) rather than its own device failing: such a disk comes
 * back when its host does.
 */
export function downBecauseHostAway(error: string | undefined, monitorReason?: string): boolean {
  if (error === undefined) return false;
  if (error.startsWith(UNREACHABLE_PREFIX)) return true;
  return monitorReason !== undefined
    ? error === monitorReason
    : / is down: its daemon stopped renewing /.test(error);
}

/**
 * Takes a disk out of service with the reason; returns whether it was up. A disk down
 * already because its host was away that now fails for its own fault (its device does
 * not open when the daemon restarts) gets the new reason: otherwise the monitor would
 * bring it back up with its host, and nothing would take it down again.
 */
export function markDiskDown(state: ClusterState, diskId: number, error: string): boolean {
  const disk = state.map.disks.find((d) => d.id === diskId);
  assert(disk, `unknown disk ${diskId}`);
  if (!disk.up) {
    const location = state.disks[String(diskId)];
    if (location && downBecauseHostAway(location.error) && !downBecauseHostAway(error))
      location.error = error;
    return false;
  }
  disk.up = false;
  const location = state.disks[String(diskId)];
  if (location) location.error = error;
  return true;
}

export interface PoolRequest {
  name: string;
  size: number;
  minSize?: number;
  failureDomain?: FailureDomain;
  pgCount?: number;
}

export function createPool(state: ClusterState, request: PoolRequest): PoolSpec {
  if (!POOL_NAME_PATTERN.test(request.name)) {
    throw new CisternError(
      'EINVAL',
      `pool name "${request.name}" must be 1-64 letters, digits, ".", "_" or "-"`,
    );
  }
  if (state.map.pools.some((p) => p.name === request.name)) {
    throw new CisternError('EEXIST', `pool "${request.name}" already exists`);
  }
  const size = request.size;
  const pool: PoolSpec = {
    id: state.nextPoolId,
    name: request.name,
    size,
    minSize: request.minSize ?? Math.max(1, size - 1),
    pgCount:
      request.pgCount ?? pgCountFor(Math.max(1, state.map.disks.length), 100, Math.max(1, size)),
    failureDomain: request.failureDomain ?? 'host',
    upmap: [],
  };
  validatePool(pool);
  state.nextPoolId += 1;
  state.map.pools.push(pool);
  computeTable(state.map, pool.id); // an impossible pool is refused before it exists
  return pool;
}

export function createVolume(
  state: ClusterState,
  name: string,
  sizeBytes: number,
  poolName: string,
): VolumeSpec {
  if (!VOLUME_NAME_PATTERN.test(name)) {
    throw new CisternError(
      'EINVAL',
      `volume name "${name}" must be 1-64 letters, digits, ".", "_" or "-"`,
    );
  }
  if (state.volumes.some((v) => v.name === name))
    throw new CisternError('EEXIST', `volume "${name}" already exists`);
  if (state.volumes.length >= VOLUMES_MAX)
    throw new CisternError('ENOSPC', `at most ${VOLUMES_MAX} volumes`);
  checkVolumeSize(sizeBytes);
  const pool = state.map.pools.find((p) => p.name === poolName);
  if (!pool)
    throw new CisternError('UNKNOWN_POOL', `no pool named "${poolName}" (see: cistern pool ls)`);
  const volume: VolumeSpec = {
    id: state.nextVolumeId,
    name,
    pool: pool.id,
    sizeBytes,
    objectSizeBytes: OBJECT_SIZE_DEFAULT_BYTES,
    createdAt: new Date().toISOString(),
  };
  state.nextVolumeId += 1;
  state.volumes.push(volume);
  return volume;
}

export function resizeVolume(
  state: ClusterState,
  name: string,
  sizeBytes: number,
  allowShrink: boolean,
): VolumeSpec {
  const volume = findVolume(state, name);
  checkVolumeSize(sizeBytes);
  if (sizeBytes < volume.sizeBytes && !allowShrink) {
    throw new CisternError(
      'EINVAL',
      `shrinking ${name} from ${volume.sizeBytes} to ${sizeBytes} bytes discards its tail; ` +
        'pass --allow-shrink if that is what you want',
    );
  }
  volume.sizeBytes = sizeBytes;
  return volume;
}

export function removeVolume(state: ClusterState, name: string): VolumeSpec {
  const volume = findVolume(state, name);
  state.volumes = state.volumes.filter((v) => v.id !== volume.id);
  return volume;
}

/** Key of one stale member in `staleSince`. */
export function staleKey(pool: number, pg: number, disk: number): string {
  return `${pool}:${pg}:${disk}`;
}

/**
 * Recovery has copied everything `disk` missed in this PG since the mark of epoch
 * `since`: clear the mark, unless the disk was marked again meanwhile. Returns
 * whether it was cleared.
 */
export function clearStale(
  state: ClusterState,
  pool: number,
  pg: number,
  disk: number,
  since: number,
): boolean {
  const key = pgKey(pool, pg);
  if (state.staleSince[staleKey(pool, pg, disk)] !== since) return false;
  delete state.staleSince[staleKey(pool, pg, disk)];
  const rest = (state.staleMembers[key] ?? []).filter((d) => d !== disk);
  if (rest.length > 0) state.staleMembers[key] = rest;
  else {
    delete state.staleMembers[key];
    delete state.retainedMembers[key]; // the new set holds everything: the old members go
  }
  return true;
}

/** Key of a PG in `staleMembers`. */
export function pgKey(pool: number, pg: number): string {
  return `${pool}:${pg}`;
}

/** What decides placement: which disks are drawable, with what weight, in which domain. */
function placementInputs(state: ClusterState): string {
  const disks = state.map.disks.map(
    (d) => `${d.id}@${d.host}:${d.weight}:${d.in ? 1 : 0}:${d.up ? 1 : 0}`,
  );
  const hosts = state.map.hosts.map((h) => `${h.id}@${h.rack}`);
  const pools = state.map.pools.map(
    (p) => `${p.id}:${p.size}:${p.pgCount}:${p.failureDomain}:${p.upmap.length}`,
  );
  return `${disks.join(',')}|${hosts.join(',')}|${pools.join(',')}`;
}

/**
 * Marks, per PG, the members that may lack data: a disk that joined the PG's set in
 * this change (re-placement after a disk went out, a host was added, a weight changed)
 * and a disk that came back up after being down (it missed the writes made meanwhile).
 * A stale member takes new writes but serves no reads and does not count towards
 * min-size, so data it lacks can never be read back; recovery (copying what it missed)
 * is what clears it. Members that left a PG's set are forgotten. Then peers each PG
 * (peerPg): one left with no good member gets its authoritative member back. Called by
 * every cluster store on every update, after the mutation.
 */
export function markNewMembersStale(before: ClusterState, after: ClusterState): void {
  after.staleMembers ??= {};
  after.staleSince ??= {};
  after.retainedMembers ??= {};
  after.authoritativeMembers ??= {};
  after.crashedMembers ??= {};
  const epoch = before.map.epoch + 1; // the epoch this update will carry
  if (placementInputs(before) === placementInputs(after)) return;
  const wasUp = new Map(before.map.disks.map((d) => [d.id, d.up]));
  const upAfter = new Map(after.map.disks.map((d) => [d.id, d.up]));
  for (const pool of after.map.pools) {
    const old = before.map.pools.find((p) => p.id === pool.id);
    if (!old || old.pgCount !== pool.pgCount) continue; // a new pool has no data yet
    let previous: PlacementTable;
    let next: PlacementTable;
    try {
      previous = computeTable(before.map, pool.id);
      next = computeTable(after.map, pool.id);
    } catch {
      continue; // unplaceable on one side: nothing is served from it there
    }
    for (let pg = 0; pg < pool.pgCount; pg += 1) {
      const key = pgKey(pool.id, pg);
      const was = pgRow(previous, pg);
      const now = pgRow(next, pg);
      const staleBefore = before.staleMembers?.[key] ?? [];
      const retainedBefore = before.retainedMembers?.[key] ?? [];
      // Members that held good data before this change: up, not stale, in the set or retained.
      const good = [...new Set([...was, ...retainedBefore])].filter(
        (d) => wasUp.get(d) === true && !staleBefore.includes(d),
      );

      const stale = new Set<number>();
      for (const disk of after.staleMembers[key] ?? []) {
        if (now.includes(disk)) stale.add(disk);
        else delete after.staleSince[staleKey(pool.id, pg, disk)];
      }
      for (const disk of now) {
        const returned = wasUp.get(disk) === false && upAfter.get(disk) === true;
        const joined = !was.includes(disk) && !retainedBefore.includes(disk);
        if (joined || returned) {
          stale.add(disk);
          after.staleSince[staleKey(pool.id, pg, disk)] = epoch;
        }
      }
      // Keep good members that left the set while the set has members to recover.
      const retained = new Set(
        stale.size === 0 ? [] : good.filter((d) => !now.includes(d) && upAfter.get(d) === true),
      );
      peerPg(after, key, pool.minSize, now, good, stale, retained, upAfter);
      for (const disk of now) {
        if (!stale.has(disk)) delete after.staleSince[staleKey(pool.id, pg, disk)];
      }
      if (stale.size > 0) after.staleMembers[key] = [...stale].sort((a, b) => a - b);
      else delete after.staleMembers[key];
      if (stale.size > 0 && retained.size > 0)
        after.retainedMembers[key] = [...retained].sort((a, b) => a - b);
      else delete after.retainedMembers[key];
    }
  }
}

/**
 * Peering, the part decided in the map: which members of a PG hold every acknowledged
 * write. A write is acknowledged only once every acting member has it and at least
 * `minSize` good members (up, not stale) do, so every good member holds all of them,
 * and nothing is acknowledged while fewer than `minSize` are good. Hence when a change
 * takes the PG below `minSize` good members, the good members just before it are a
 * complete record — each holds every write the PG ever acknowledged, and no later one
 * is acknowledged until it has `minSize` good members again — and are kept as its
 * `authoritativeMembers` until then: first those still good after the change, then
 * those it took away, each group as placement lists them. (One taken away may have
 * been taken for a power loss, its unflushed writes gone with it, while those still
 * good went on being flushed: a FLUSH may have made those writes durable on them
 * alone — simulator seed 1268.) When the PG
 * has no good member left (the last went down while the others were stale: a network
 * cut with requests in flight, a whole-cluster restart), the first of those that is up
 * (ties: placement order) has its stale mark cleared in the same update — or is kept
 * as a retained member if it left the set — and recovery copies from it to the others.
 * A member that was stale when the PG fell below `minSize` is never in the record,
 * however recently it was up. `stale` and `retained` are this change's results for
 * the PG, updated in place.
 */
function peerPg(
  after: ClusterState,
  key: string,
  minSize: number,
  now: ArrayLike<number> & Iterable<number>,
  goodBefore: readonly number[],
  stale: Set<number>,
  retained: Set<number>,
  upAfter: ReadonlyMap<number, boolean>,
): void {
  const row = [...now];
  const goodNow = (): number =>
    row.filter((d) => upAfter.get(d) === true && !stale.has(d)).length +
    [...retained].filter((d) => upAfter.get(d) === true && !row.includes(d)).length;
  const good = goodNow();
  if (good >= minSize) {
    delete after.authoritativeMembers[key];
    delete after.crashedMembers[key];
    return;
  }
  // Fell below min-size in this change (or had no record yet): the good members before it.
  if (
    goodBefore.length >= minSize ||
    (after.authoritativeMembers[key] === undefined && goodBefore.length > 0)
  ) {
    const stays = (d: number): boolean => upAfter.get(d) === true && !stale.has(d);
    after.authoritativeMembers[key] = [
      ...goodBefore.filter(stays),
      ...goodBefore.filter((d) => !stays(d)),
    ];
    delete after.crashedMembers[key];
  }
  if (good > 0) return;
  const authoritative = after.authoritativeMembers[key] ?? [];
  const back = authoritative.find((d) => upAfter.get(d) === true);
  if (back === undefined) return;
  if (row.includes(back)) stale.delete(back);
  else if (stale.size > 0) retained.add(back);
  // else: a set with nothing to recover and the holder outside it: wait for placement
}

export interface ActingMember {
  disk: number;
  /** May lack writes: written to, never read, not counted towards min-size. */
  stale: boolean;
}

/**
 * The members a PG's I/O goes to: its placement row, then the retained members, up
 * ones only, each marked stale or not. Reads come from the first non-stale one.
 */
export function actingMembers(
  state: ClusterState,
  table: PlacementTable,
  pg: number,
): ActingMember[] {
  const key = pgKey(table.pool.id, pg);
  const stale = state.staleMembers[key] ?? [];
  const members: ActingMember[] = [];
  // The table's topology is of the same epoch as the state (tables are cached per epoch).
  const up = (disk: number): boolean => table.topology.disksById.get(disk)?.up === true;
  for (const disk of pgRow(table, pg))
    if (up(disk)) members.push({ disk, stale: stale.includes(disk) });
  for (const disk of state.retainedMembers[key] ?? []) {
    if (up(disk) && !members.some((m) => m.disk === disk)) members.push({ disk, stale: false });
  }
  return members;
}

/**
 * A PG that cannot serve because no up member is known to hold every acknowledged
 * write: each up member is stale, and none of its authoritative members (the good
 * members when it fell below min-size, the only ones known to hold every acknowledged
 * write) is up. While one of those can still come back with its disk, the PG waits for
 * it; if none can (their disks failed for good), the writes only they held are lost —
 * possible when a pool acknowledges writes with fewer than `size` copies (min-size) and
 * then loses those disks too — and only the operator can accept that (acceptPgLoss).
 */
export interface IncompletePg {
  pool: number;
  pg: number;
  /** The authoritative members, none of them up (empty: no record). */
  lost: number[];
  /**
   * The most complete copy the map alone can point to: the first up disk that left
   * the record after a crash (crashedMembers: it lacks at most what that crash took);
   * failing that, the up member stale for longest (the earliest mark), which has taken
   * every write since its mark and had recovery the longest. Ties: placement order. The
   * map cannot tell what a stale copy holds, so an accepted loss is served from the
   * member whose PG log is complete furthest (RecoveryWorker, chooseAcceptedCopy); this
   * is only the tie-break among equals.
   */
  best: number;
  /** Up members (all stale), in acting order: the candidates accept-loss chooses from. */
  members: number[];
  /** The operator has accepted the loss; the daemon that peers the PG chooses the copy. */
  accepted: boolean;
}

/** Every incomplete PG of the pools that can be placed (see IncompletePg). */
export function incompletePgs(state: ClusterState): IncompletePg[] {
  const found: IncompletePg[] = [];
  for (const pool of state.map.pools) {
    let table: PlacementTable;
    try {
      table = computeTable(state.map, pool.id);
    } catch {
      continue; // unplaceable: inactive as a whole, said by the pool's state
    }
    for (let pg = 0; pg < pool.pgCount; pg += 1) {
      const incomplete = incompletePg(state, table, pg);
      if (incomplete) found.push(incomplete);
    }
  }
  return found;
}

/** Whether PG `pg` of `table`'s pool is incomplete, and how (see IncompletePg). */
export function incompletePg(
  state: ClusterState,
  table: PlacementTable,
  pg: number,
): IncompletePg | undefined {
  const members = actingMembers(state, table, pg);
  if (members.length === 0 || members.some((m) => !m.stale)) return undefined;
  const key = pgKey(table.pool.id, pg);
  const lost = state.authoritativeMembers?.[key] ?? [];
  if (lost.some((d) => table.topology.disksById.get(d)?.up === true)) return undefined;
  const since = (disk: number): number =>
    state.staleSince[staleKey(table.pool.id, pg, disk)] ?? Number.MAX_SAFE_INTEGER;
  const crashed = (state.crashedMembers?.[key] ?? []).find((d) =>
    members.some((m) => m.disk === d),
  );
  let best = crashed ?? members[0]!.disk;
  if (crashed === undefined)
    for (const member of members) if (since(member.disk) < since(best)) best = member.disk;
  return {
    pool: table.pool.id,
    pg,
    lost: [...lost],
    best,
    members: members.map((m) => m.disk),
    accepted: state.acceptedLosses?.[key] !== undefined,
  };
}

/**
 * The operator accepts that an incomplete PG's authoritative members are lost for good.
 * Recorded in the map (`acceptedLosses`); the daemon that peers the PG then asks every
 * up member's PG log how far it is complete and serves the best copy (serveAcceptedLoss)
 * — the map alone cannot tell how complete a stale copy is. Writes only the lost
 * members held are gone; nothing else is. Refused (EPERM) for a PG that is not
 * incomplete — one with a good member, or whose authoritative member is up — where
 * nothing needs accepting. Accepting again is harmless (the first acceptance stands).
 */
export function acceptPgLoss(state: ClusterState, poolId: number, pg: number): IncompletePg {
  const pool = state.map.pools.find((p) => p.id === poolId);
  if (!pool) throw new CisternError('UNKNOWN_POOL', `no pool with id ${poolId}`);
  if (!Number.isInteger(pg) || pg < 0 || pg >= pool.pgCount)
    throw new CisternError(
      'EINVAL',
      `pool ${pool.name} has PGs 0 to ${pool.pgCount - 1}, not ${pg}`,
    );
  let table: PlacementTable;
  try {
    table = computeTable(state.map, poolId);
  } catch (error) {
    throw new CisternError('EINVAL', `pool ${pool.name} cannot be placed now`, error);
  }
  const incomplete = incompletePg(state, table, pg);
  if (!incomplete) {
    throw new CisternError(
      'EPERM',
      `PG ${pgKey(poolId, pg)} is not incomplete (it has a member holding every ` +
        'acknowledged write, or one that does is up): there is no loss to accept',
    );
  }
  const key = pgKey(poolId, pg);
  state.acceptedLosses ??= {};
  state.acceptedLosses[key] ??= state.map.epoch;
  return { ...incomplete, accepted: true };
}

/**
 * The daemon that peers an incomplete PG whose loss was accepted serves it from `best`,
 * the member whose PG log it found complete furthest: `best` becomes the PG's good
 * member and its record, and recovery copies it to the others. Returns whether it did:
 * not if the acceptance is gone, or `best` is no longer an up member; and if the PG is
 * no longer incomplete (an authoritative member came back: nothing is lost after all),
 * the acceptance is dropped and nothing else changes.
 */
export function serveAcceptedLoss(
  state: ClusterState,
  poolId: number,
  pg: number,
  best: number,
): boolean {
  const key = pgKey(poolId, pg);
  if (state.acceptedLosses?.[key] === undefined) return false;
  let incomplete: IncompletePg | undefined;
  try {
    incomplete = incompletePg(state, computeTable(state.map, poolId), pg);
  } catch {
    return false; // unplaceable now: the acceptance waits
  }
  if (!incomplete) {
    delete state.acceptedLosses[key];
    return false;
  }
  if (!incomplete.members.includes(best)) return false;
  const rest = (state.staleMembers[key] ?? []).filter((d) => d !== best);
  if (rest.length > 0) state.staleMembers[key] = rest;
  else {
    delete state.staleMembers[key];
    delete state.retainedMembers[key];
  }
  delete state.staleSince[staleKey(poolId, pg, best)];
  state.authoritativeMembers[key] = [best];
  delete state.acceptedLosses[key];
  delete state.crashedMembers[key];
  return true;
}

/**
 * A daemon that lost power and came back before its lease lapsed was never marked down,
 * so nothing says its disks may lack writes: those its volatile cache lost. Its disks'
 * activity records list the objects changed since their last flush (with every object
 * whose change a crash may have dropped); before serving, the daemon marks `disk` stale
 * in the PGs of those objects (`pgs`), so reads come from the other members and recovery
 * copies the PG back to it. Only where `disk` is an up, good member of the PG's row and
 * another good member (up, not stale) remains: the last good copy stays good. When the
 * mark takes the PG below min-size, peering's record (authoritativeMembers) is the good
 * members just before, this disk last: the others hold every acknowledged write, and
 * this one every write but the unflushed ones its crash took (which a crash may take) —
 * so should the others fail for good it serves again, rather than the PG being left
 * incomplete with a nearly complete copy looking no better than members that missed far
 * more (the simulator found exactly that when the record named only the others).
 *
 * A disk in that record behind another (the PG fell below min-size with both good, the
 * other listed first: it stayed good as long or longer) is no longer vouched for: it
 * leaves the record (kept in crashedMembers) — down itself (back after its lease
 * lapsed) or up, brought back good as the record's first up disk, which it then stops
 * being (marked stale, the PG incomplete) — since the other may hold, flushed, the
 * writes its crash took, and a FLUSH may have said so. The PG waits for that disk, or
 * for the operator to accept the loss (acceptPgLoss).
 * Returns the PGs marked. Called by every store as an update (the epoch bumps).
 */
export function markRestartedStale(
  state: ClusterState,
  disk: number,
  pgs: ReadonlyArray<{ pool: number; pg: number }>,
): Array<{ pool: number; pg: number }> {
  const epoch = state.map.epoch + 1; // the epoch this update will carry
  const marked: Array<{ pool: number; pg: number }> = [];
  const tables = new Map<number, PlacementTable | undefined>();
  for (const { pool: poolId, pg } of pgs) {
    const pool = state.map.pools.find((p) => p.id === poolId);
    if (!pool || pg < 0 || pg >= pool.pgCount) continue;
    if (!tables.has(poolId)) {
      try {
        tables.set(poolId, computeTable(state.map, poolId));
      } catch {
        tables.set(poolId, undefined); // unplaceable: nothing serves from it
      }
    }
    const table = tables.get(poolId);
    if (!table) continue;
    const key = pgKey(poolId, pg);
    const record = state.authoritativeMembers[key] ?? [];
    // A disk before it in peering's record stayed good at least as long, and holds
    // every write, among them those this disk's crash took: this one must not be made
    // the PG's source ahead of it — now, or later when that one is down and this one
    // comes back (soak seed 1942: checked only against disks down at the restart, the
    // crashed disk was revived the moment the other went down). One after it is no
    // better: it went away first, or lacks its own crash's writes.
    const rivals = record.slice(0, Math.max(0, record.indexOf(disk)));
    const vouches = record.includes(disk) && rivals.length > 0;
    if (vouches) {
      state.authoritativeMembers[key] = record.filter((d) => d !== disk);
      state.crashedMembers[key] = [
        ...(state.crashedMembers[key] ?? []).filter((d) => d !== disk),
        disk,
      ];
    }
    if (!pgRow(table, pg).includes(disk)) continue;
    const members = actingMembers(state, table, pg);
    const self = members.find((m) => m.disk === disk);
    if (!self || self.stale) continue;
    const others = members.filter((m) => !m.stale && m.disk !== disk).map((m) => m.disk);
    if (others.length === 0 && !vouches) continue;
    state.staleMembers[key] = [...(state.staleMembers[key] ?? []), disk].sort((a, b) => a - b);
    state.staleSince[staleKey(poolId, pg, disk)] = epoch;
    if (others.length === 0) {
      // Brought back as the record's first up disk: it waits for the disks before it,
      // stale (the PG incomplete), rather than serve without its lost writes — unless
      // one of them is up already (back stale while this one served): that one is made
      // good now, as peering would have made it (no map change comes to run peerPg
      // again; the real-cluster restart of every daemon stalled on exactly that).
      const back = (state.authoritativeMembers[key] ?? []).find(
        (d) => d !== disk && members.some((m) => m.disk === d),
      );
      if (back !== undefined) {
        state.staleMembers[key] = state.staleMembers[key]!.filter((d) => d !== back);
        delete state.staleSince[staleKey(poolId, pg, back)];
      }
      marked.push({ pool: poolId, pg });
      continue;
    }
    // Below min-size now: the record peering keeps (peerPg), with this disk last.
    const fell = others.length < pool.minSize && others.length + 1 >= pool.minSize;
    if (fell || (others.length < pool.minSize && state.authoritativeMembers[key] === undefined))
      state.authoritativeMembers[key] = [...others, disk];
    marked.push({ pool: poolId, pg });
  }
  return marked;
}
