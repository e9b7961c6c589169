// Failures the simulator finds in code being changed right now (issue 5's peering work):
// each is named, with what it is and whose it is, and a matcher precise enough not to
// hide a different failure. sim.test.ts prints every seed a known bug fails, with its
// replay line, and fails on any failure no entry matches. Delete an entry when its fix
// lands: its seeds then must pass.

import type { Failure } from './simulation';
import { ALL_STALE_TEXT, CUT_OFF_TEXT, FAILED_WRITES_TEXT } from './simulation';

export interface KnownBug {
  name: string;
  owner: string;
  what: string;
  matches(failure: Failure): boolean;
}

export const KNOWN_BUGS: KnownBug[] = [
  {
    name: 'all-members-stale',
    owner: 'peering (issue 5: pick the authoritative member)',
    what:
      'a PG whose every up member is stale is never recovered: recovery copies from the ' +
      'primary, and the primary of an all-stale PG is itself stale, so no host takes the work',
    matches: (f) =>
      f.kind === 'liveness' && new RegExp(`${escape(ALL_STALE_TEXT)} \\[\\S`).test(f.text),
  },
  {
    name: 'replica-write-at-current-epoch',
    owner: 'peering (remote-disk.ts / local.ts)',
    what:
      'the primacy check is made once (handler.asPrimary as the request arrives, or ' +
      'RecoveryWorker.work as a pass starts), but the replica writes go out later — after ' +
      "waiting in the object's RangeOrdering queue, or after listing the PG — carrying " +
      'the epoch of the map at that moment (RemoteDisk reads it per call). When the map ' +
      'made another host primary meanwhile, the replica accepts a write from a host that ' +
      'is not the primary at the epoch the write carries: the fence is passed, and two ' +
      'primaries may order writes to one object',
    matches: (f) => f.kind === 'inv5-not-primary',
  },
  {
    name: 'partitioned-primary-serves-stale-reads',
    owner: 'peering / replication (local.ts reads, gateway.ts)',
    what:
      'a host cut off from etcd keeps its last map and keeps serving reads of the PGs it ' +
      'was primary of from its own disk; the rest of the cluster has moved the PG on and ' +
      'acknowledged newer (even FUA) writes, so the read returns older data. Reads are ' +
      'local to the primary and never fenced; nothing (a lease) stops an isolated primary',
    matches: (f) =>
      (f.kind === 'inv1-durability' || f.kind === 'inv3-read-your-writes') &&
      f.text.includes(CUT_OFF_TEXT),
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

function escape(text: string): string {
  return text.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
}
