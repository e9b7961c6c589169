// Failures the simulator finds in code being changed right now (issue 5's peering work):
// each is named, with what it is and whose it is, and a matcher precise enough not to
// hide a different failure. sim.test.ts prints every seed a known bug fails, with its
// replay line, and fails on any failure no entry matches. Delete an entry when its fix
// lands: its seeds then must pass.

import type { Failure } from './simulation';
import { ACROSS_CRASH_TEXT } from './simulation';

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
];

export function knownBugOf(failure: Failure): KnownBug | undefined {
  return KNOWN_BUGS.find((bug) => bug.matches(failure));
}
