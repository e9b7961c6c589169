// Failures the simulator finds in code being changed right now (issue 5's peering work):
// each is named, with what it is and whose it is, and a matcher precise enough not to
// hide a different failure. sim.test.ts prints every seed a known bug fails, with its
// replay line, and fails on any failure no entry matches. Delete an entry when its fix
// lands: its seeds then must pass.

import type { Failure } from './simulation';
import { ACROSS_CRASH_TEXT, FAILED_WRITES_TEXT, WRONG_COPY_TEXT } from './simulation';

export interface KnownBug {
  name: string;
  owner: string;
  what: string;
  matches(failure: Failure): boolean;
}

export const KNOWN_BUGS: KnownBug[] = [
  {
    name: 'flush-vouches-for-writes-lost-in-a-crash',
    owner: 'flush (gateway.ts: a primary it could not reach) / peering',
    what:
      'writes are acknowledged from volatile caches; a FLUSH must fail (EIO) when writes ' +
      'it covers may have been lost with a cache. It does when a member that took them ' +
      'answers as a restarted daemon, when a holder left unflushed is in the PG ' +
      'authoritative record, and an EIO reaches every connection (local.ts, remote-disk.ts, ' +
      'gateway.ts, flush-errors.ts). Left (2 of the 300 CI seeds, 5 and 111; 12 before ' +
      'those fixes): a primary the gateway cannot reach (it lost power) is replaced by ' +
      'every other host flushing all its disks, and the FLUSH succeeds — also when the ' +
      'other holders of its writes lost them in a crash too before it, or peering later ' +
      'serves a member that crashed with them unflushed',
    matches: (f) => f.kind === 'inv1-durability' && f.text.includes(ACROSS_CRASH_TEXT),
  },
  {
    name: 'accept-loss-passes-over-a-complete-copy',
    owner: 'peering (state.ts incomplete PGs, acceptPgLoss: the best copy)',
    what:
      'an incomplete PG accepted as lost is served from the copy stale longest although ' +
      'another surviving disk holds every acknowledged write (seed 138: PG 3 served from ' +
      'disk 7 while disk 3 held them all; soak seed 1774: disk 2, which joined when the ' +
      'failed disks went out, over disk 4, a former member re-marked stale later). The ' +
      'map alone cannot tell how complete a stale copy is (its mark epoch says when, not ' +
      'what it holds); the PG log now can: accept-loss should serve the member whose log ' +
      'is complete furthest (PgLogState.complete), asked by the daemon that peers the PG',
    matches: (f) => f.kind === 'inv1-durability' && f.text.includes(WRONG_COPY_TEXT),
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
