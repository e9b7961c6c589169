// Failures the simulator finds in code being changed right now (issue 5's peering work):
// each is named, with what it is and whose it is, and a matcher precise enough not to
// hide a different failure. sim.test.ts prints every seed a known bug fails, with its
// replay line, and fails on any failure no entry matches. Delete an entry when its fix
// lands: its seeds then must pass.

import type { Failure } from './simulation';

export interface KnownBug {
  name: string;
  owner: string;
  what: string;
  matches(failure: Failure): boolean;
}

// None: the last (flush-vouches-for-writes-lost-in-a-crash) was fixed in issue 5's final
// session; its seeds pass, as do 2 300 soak seeds.
export const KNOWN_BUGS: KnownBug[] = [];

export function knownBugOf(failure: Failure): KnownBug | undefined {
  return KNOWN_BUGS.find((bug) => bug.matches(failure));
}
