// Failures the simulator finds in code being changed right now (issue 5's peering work):
// each is named, with what it is and whose it is, and a matcher precise enough not to
// hide a different failure. sim.test.ts prints every seed a known bug fails, with its
// replay line, and fails on any failure no entry matches. Delete an entry when its fix
// lands: its seeds then must pass.

import type { Failure } from './simulation';
import {
  ACROSS_CRASH_TEXT,
  LEFT_IN_CACHE_TEXT,
  NOT_DURABLE_TEXT,
  UNNOTICED_RESTART_TEXT,
  FAILED_WRITES_TEXT,
} from './simulation';

export interface KnownBug {
  name: string;
  owner: string;
  what: string;
  matches(failure: Failure): boolean;
}

export const KNOWN_BUGS: KnownBug[] = [
  {
    name: 'flush-vouches-for-writes-lost-in-a-crash',
    owner: 'peering (issue 5: activity record; gateway.ts / local.ts flush)',
    what:
      'writes are acknowledged from volatile caches; when the members holding an ' +
      'acknowledged, unflushed write lose power before the client flushes, a later FLUSH ' +
      'still succeeds (it flushes whatever the disks hold now), telling the client the ' +
      'lost write is durable (invariant 1). A flush must fail (EIO) when a member that ' +
      'took writes since the last flush restarted meanwhile',
    matches: (f) => f.kind === 'inv1-durability' && f.text.includes(ACROSS_CRASH_TEXT),
  },
  {
    name: 'restart-within-lease-loses-cached-writes',
    owner: 'peering (issue 5: activity record)',
    what:
      '(soak --quick-restarts) a daemon that loses power and is back before its lease ' +
      'lapses is never marked down, so its disks are not stale; the acknowledged writes its ' +
      'cache lost are missing there for good and its copies differ from the others. The ' +
      'activity record (objects written since the last flush) is what will find them',
    matches: (f) => f.kind === 'inv4-replicas-differ' && f.text.includes(UNNOTICED_RESTART_TEXT),
  },
  {
    name: 'gateway-flush-forgets-writes-in-flight',
    owner: 'peering (gateway.ts flush)',
    what:
      'Gateway marks a primary as written when a write is sent, and a FLUSH takes and ' +
      'clears those marks. A flush by another client through the same gateway while a ' +
      'write is still in flight (e.g. waiting on a slow replica) clears the mark, the ' +
      "primary's own dirty set does not have the write yet, and once the write is " +
      'acknowledged no later flush through that gateway asks that primary again: the FLUSH ' +
      'returns while the write is durable nowhere (seed 1592: lost in the power loss). ' +
      'Marking the primary again when the write returns would fix it',
    matches: (f) => f.kind === 'inv1-durability' && f.text.includes(NOT_DURABLE_TEXT),
  },
  {
    name: 'flush-skips-members-taken-down',
    owner: 'peering (local.ts flush; authoritativeMembers)',
    what:
      'LocalReplication.flush skips a dirty disk the map has down (`if (!store) return`) ' +
      'and still succeeds; a member that took an acknowledged write and was taken down ' +
      'before the FLUSH keeps it only in its cache. If that member is then the one peering ' +
      'makes authoritative and its host loses power, recovery spreads its older data and ' +
      'the flushed write is gone (seed 1461)',
    matches: (f) => f.kind === 'inv1-durability' && f.text.includes(LEFT_IN_CACHE_TEXT),
  },
  {
    name: 'failed-write-leaves-replicas-divergent',
    owner: 'peering (issue 5: PG log / activity record)',
    what:
      'a write that reaches some members and then fails (the others unreachable, the map ' +
      'cannot be changed to take them out) leaves the members that took it different from ' +
      'the rest, and nothing records it: no stale mark, no log entry, so recovery never ' +
      'reconciles them (Ceph rolls such divergent entries back or forward from the PG log)',
    matches: (f) => f.kind === 'inv4-replicas-differ' && f.text.includes(FAILED_WRITES_TEXT),
  },
];

export function knownBugOf(failure: Failure): KnownBug | undefined {
  return KNOWN_BUGS.find((bug) => bug.matches(failure));
}
