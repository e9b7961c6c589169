// Proves the stale-member rule of the cluster state: a disk that joins a PG's set
// through a map change, or comes back up after being down, is recorded as stale in
// exactly the PGs it is a member of; members that leave a set are forgotten; a change
// that does not touch placement records nothing; a new pool starts clean. And peering
// (authoritativeMembers), on literal sequences of map changes: a PG that falls below
// min-size records the members good just before, and the first of those back (placement
// order on ties) serves again while members that were stale — however recently up —
// wait; a PG whose record all failed for good is incomplete, and accepting its loss
// records it until the daemon peering the PG serves the copy it chose (any up member;
// dropped if a lost disk returns), refused where there is nothing to accept; a disk back
// from a crash within its lease is marked stale where listed (last in the record if the
// PG falls below min-size), never as the last good copy; a disk back from a crash while
// another recorded disk is down leaves the record (crashedMembers), and is the copy
// accept-loss serves should the other fail for good.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { computeTable, pgRow } from '../placement/straw2';
import * as state from './state';

function cluster(hosts: number): state.ClusterState {
  const s = state.emptyState();
  for (let h = 0; h < hosts; h += 1) {
    state.addHost(s, `h${h}`, `r${h}`);
    state.addDisk(s, `h${h}`, { path: `/d${h}`, uuid: `u${h}`, sizeBytes: 1000 });
  }
  state.createPool(s, { name: 'p', size: 3, minSize: 2, failureDomain: 'host', pgCount: 64 });
  return s;
}

function change(
  before: state.ClusterState,
  mutate: (s: state.ClusterState) => void,
): state.ClusterState {
  const after = structuredClone(before);
  mutate(after);
  state.markNewMembersStale(before, after);
  return after;
}

test('a new pool and an unrelated change record nothing', () => {
  const s = cluster(4);
  const after = change(s, (n) => state.createVolume(n, 'v', 1 << 20, 'p'));
  assert.deepEqual(after.staleMembers, {});
});

test('a disk back up after being down is stale in exactly its PGs', () => {
  const down = change(cluster(4), (n) => state.markDiskDown(n, 3, 'gone'));
  assert.deepEqual(down.staleMembers, {}, 'going down makes nothing stale');
  const back = change(down, (n) => {
    n.map.disks.find((d) => d.id === 3)!.up = true;
  });
  const table = computeTable(back.map, 1);
  for (let pg = 0; pg < 64; pg += 1) {
    const member = pgRow(table, pg).includes(3);
    assert.deepEqual(back.staleMembers[state.pgKey(1, pg)] ?? [], member ? [3] : [], `pg ${pg}`);
  }
});

test('an added host is stale where it joins; a member leaving is forgotten', () => {
  const before = cluster(4);
  const added = change(before, (n) => {
    state.addHost(n, 'h9', 'r9');
    state.addDisk(n, 'h9', { path: '/d9', uuid: 'u9', sizeBytes: 1000 });
  });
  const newDisk = added.map.disks.find((d) => d.host === 'h9')!.id;
  const table = computeTable(added.map, 1);
  let joined = 0;
  for (let pg = 0; pg < 64; pg += 1) {
    const stale = added.staleMembers[state.pgKey(1, pg)] ?? [];
    assert.deepEqual(stale, pgRow(table, pg).includes(newDisk) ? [newDisk] : []);
    if (stale.length > 0) joined += 1;
  }
  assert.ok(joined > 0, 'the new host joins some PGs');
  const removed = change(added, (n) => {
    n.map.disks = n.map.disks.filter((d) => d.host !== 'h9');
  });
  assert.ok(Object.values(removed.staleMembers).every((list) => !list.includes(newDisk)));
});

// Peering when a PG has no good member left (authoritativeMembers). Literal sequences
// of map changes on one PG of a size-3 pool; `row` is its placement, primary first.

function up(s: state.ClusterState, disk: number): state.ClusterState {
  return change(s, (n) => {
    n.map.disks.find((d) => d.id === disk)!.up = true;
  });
}

function down(s: state.ClusterState, ...disks: number[]): state.ClusterState {
  return change(s, (n) => {
    for (const disk of disks) state.markDiskDown(n, disk, 'gone');
  });
}

/** A PG of the 4-host cluster and its row; the fourth disk is in none of its rows. */
function onePg(): { s: state.ClusterState; pg: number; row: number[]; key: string } {
  const s = cluster(4);
  const row = [...pgRow(computeTable(s.map, 1), 0)];
  return { s, pg: 0, row, key: state.pgKey(1, 0) };
}

function good(s: state.ClusterState, pg: number): number[] {
  return state
    .actingMembers(s, computeTable(s.map, 1), pg)
    .filter((m) => !m.stale)
    .map((m) => m.disk);
}

test('the members good when the PG fell below min-size are authoritative; the others wait', () => {
  const { s, pg, row, key } = onePg();
  const [a, b, c] = row as [number, number, number];
  // c goes: two good members remain, min-size 2 still met, nothing recorded.
  let now = down(s, c);
  assert.deepEqual(now.authoritativeMembers, {});
  // b goes: below min-size, nothing more can be acknowledged; a and b hold every ack.
  now = down(now, b);
  assert.deepEqual(now.authoritativeMembers[key], [a, b]);
  now = down(now, a);
  assert.deepEqual(now.authoritativeMembers[key], [a, b], 'a going does not narrow it');
  now = up(now, c);
  assert.deepEqual(now.staleMembers[key], [c]);
  assert.deepEqual(good(now, pg), [], 'c missed writes: nobody serves');
  now = up(now, b);
  assert.deepEqual(good(now, pg), [b], 'b, good when the PG fell below min-size, serves');
  assert.equal(now.staleSince[state.staleKey(1, pg, b)], undefined);
  now = up(now, a);
  assert.deepEqual(
    now.staleMembers[key],
    [a, c].sort((x, y) => x - y),
    'a, c to recover',
  );
  // Recovery from b then clears the others as before.
  for (const disk of [a, c]) {
    const since = now.staleSince[state.staleKey(1, pg, disk)]!;
    assert.ok(state.clearStale(now, 1, pg, disk, since));
  }
  assert.deepEqual(good(now, pg).sort(), [...row].sort());
  // The next placement change sees min-size met again: the record goes.
  now = change(now, (n) => state.addHost(n, 'h9', 'r9'));
  assert.equal(now.authoritativeMembers[key], undefined);
});

test('an authoritative member lost for good: another one of the record serves', () => {
  const { s, pg, row, key } = onePg();
  const [a, b, c] = row as [number, number, number];
  let now = down(down(s, c), b); // record [a, b]
  now = down(now, a);
  // a's disk fails for good (it never comes back); b and c return.
  now = up(now, c);
  now = up(now, b);
  assert.deepEqual(good(now, pg), [b]);
  assert.deepEqual(now.authoritativeMembers[key], [a, b], 'kept until min-size is met again');
});

test('a member stale when it went down is never authoritative, even if it was up last', () => {
  const { s, pg, row, key } = onePg();
  const [a, b, c] = row as [number, number, number];
  // b was away and came back stale; then a and c go: b is up alone but lacks writes.
  let now = up(down(s, b), b);
  assert.deepEqual(now.staleMembers[key], [b]);
  now = down(now, a, c);
  assert.deepEqual(now.authoritativeMembers[key], [a, c]);
  assert.deepEqual(good(now, pg), [], 'b alone may not serve');
  now = up(now, c);
  assert.deepEqual(good(now, pg), [c], 'c, one of the last good members, is back');
  assert.deepEqual(now.staleMembers[key], [b]);
  now = up(now, a);
  assert.deepEqual(
    now.staleMembers[key],
    [a, b].sort((x, y) => x - y),
    'a returns stale',
  );
});

test('a whole PG down at once (cluster power loss): first back, in placement order, serves', () => {
  const { s, pg, row, key } = onePg();
  const [a, b, c] = row as [number, number, number];
  let now = down(s, a, b, c);
  assert.deepEqual(now.authoritativeMembers[key], [a, b, c], 'placement order');
  // Two come back in one update: the first in placement order is chosen.
  now = change(now, (n) => {
    for (const d of n.map.disks) if (d.id === c || d.id === b) d.up = true;
  });
  assert.deepEqual(good(now, pg), [b]);
  assert.deepEqual(now.staleMembers[key], [c]);
  now = up(now, a);
  assert.deepEqual(
    now.staleMembers[key],
    [a, c].sort((x, y) => x - y),
  );
  assert.deepEqual(good(now, pg), [b]);
});

test('a PG that keeps a good member records nothing', () => {
  const { s, row, key } = onePg();
  const [a] = row as [number];
  const now = up(down(s, a), a);
  assert.deepEqual(now.authoritativeMembers, {});
  assert.deepEqual(now.staleMembers[key], [a]);
  const copy = structuredClone(now);
  const unrelated = change(now, (n) => state.createVolume(n, 'v', 1 << 20, 'p'));
  assert.deepEqual(unrelated.staleMembers, copy.staleMembers);
  assert.deepEqual(unrelated.authoritativeMembers, {});
});

// Incomplete PGs: every up member stale and every authoritative member gone. The
// operator either brings one back or accepts the loss (acceptPgLoss).

/** A PG of a 5-host cluster whose record [a, b] both fail for good, c stale since before. */
function incompleteAfterTwoFailures(): {
  now: state.ClusterState;
  pg: number;
  key: string;
  a: number;
  b: number;
  c: number;
} {
  const s = cluster(5);
  const pg = 0;
  const key = state.pgKey(1, pg);
  const [a, b, c] = pgRow(computeTable(s.map, 1), pg) as unknown as [number, number, number];
  let now = up(down(s, c), c); // c missed writes: stale, being recovered
  now = down(now, a); // below min-size: record [a, b]
  now = down(now, b);
  // The operator takes the failed disks out: the PG is re-placed, its new members stale.
  now = change(now, (n) => {
    for (const d of n.map.disks) if (d.id === a || d.id === b) d.in = false;
  });
  return { now, pg, key, a, b, c };
}

test('a PG whose record failed for good is incomplete; the copy stale longest is its best', () => {
  const { now, pg, key, a, b, c } = incompleteAfterTwoFailures();
  assert.deepEqual(good(now, pg), [], 'nobody serves');
  const row = [...pgRow(computeTable(now.map, 1), pg)];
  assert.ok(row.includes(c) && !row.includes(a) && !row.includes(b));
  assert.equal(now.staleMembers[key]!.length, 3, 'c and the two new members');
  const incomplete = state.incompletePgs(now).filter((i) => i.pg === pg);
  assert.equal(incomplete.length, 1);
  assert.deepEqual([...incomplete[0]!.lost].sort(), [a, b].sort());
  assert.equal(incomplete[0]!.best, c);
  // Were either of them to come back, the PG would not be incomplete (it waits for it).
  const back = up(now, a);
  assert.ok(!state.incompletePgs(back).some((i) => i.pg === pg));
});

test('accepting the loss records it; the copy the peering daemon chooses serves; recovery completes the PG', () => {
  const { now, pg, key, c } = incompleteAfterTwoFailures();
  const accepted = structuredClone(now);
  const result = state.acceptPgLoss(accepted, 1, pg);
  assert.equal(result.best, c);
  assert.ok(result.accepted);
  assert.equal(accepted.acceptedLosses?.[key], now.map.epoch, 'recorded, nothing served yet');
  assert.deepEqual(good(accepted, pg), []);
  assert.ok(state.incompletePgs(accepted).some((i) => i.pg === pg && i.accepted));
  assert.equal(state.acceptPgLoss(accepted, 1, pg).best, c, 'accepting again changes nothing');
  // Only an up member of the PG can be served; a disk outside it is refused.
  const outside = accepted.map.disks.find((d) => !result.members.includes(d.id))!.id;
  assert.equal(state.serveAcceptedLoss(accepted, 1, pg, outside), false);
  assert.ok(state.serveAcceptedLoss(accepted, 1, pg, c));
  assert.equal(accepted.acceptedLosses?.[key], undefined);
  assert.deepEqual(good(accepted, pg), [c]);
  assert.deepEqual(accepted.authoritativeMembers[key], [c], 'the new record: c alone');
  assert.equal(accepted.staleSince[state.staleKey(1, pg, c)], undefined);
  assert.ok(!state.incompletePgs(accepted).some((i) => i.pg === pg));
  for (const disk of accepted.staleMembers[key]!) {
    const since = accepted.staleSince[state.staleKey(1, pg, disk)]!;
    assert.ok(state.clearStale(accepted, 1, pg, disk, since));
  }
  assert.equal(good(accepted, pg).length, 3);
  assert.equal(accepted.staleMembers[key], undefined);
});

test('the daemon may serve any member, not only the one stale longest', () => {
  const { now, pg, key, c } = incompleteAfterTwoFailures();
  const accepted = structuredClone(now);
  state.acceptPgLoss(accepted, 1, pg);
  const other = state
    .incompletePgs(accepted)
    .find((i) => i.pg === pg)!
    .members.find((d) => d !== c)!;
  assert.ok(state.serveAcceptedLoss(accepted, 1, pg, other));
  assert.deepEqual(good(accepted, pg), [other]);
  assert.deepEqual(accepted.authoritativeMembers[key], [other]);
});

test('an acceptance is dropped, serving nothing, once a lost disk is back', () => {
  const { now, pg, key, a, c } = incompleteAfterTwoFailures();
  const accepted = structuredClone(now);
  state.acceptPgLoss(accepted, 1, pg);
  const back = change(accepted, (n) => {
    for (const d of n.map.disks) if (d.id === a) d.in = true;
  });
  const returned = up(back, a);
  assert.ok(!state.incompletePgs(returned).some((i) => i.pg === pg), 'a serves: not incomplete');
  assert.equal(state.serveAcceptedLoss(returned, 1, pg, c), false);
  assert.equal(returned.acceptedLosses?.[key], undefined);
});

test('accept-loss is refused where there is nothing to accept', () => {
  const { now, pg } = incompleteAfterTwoFailures();
  const healthy = cluster(5);
  assert.throws(() => state.acceptPgLoss(healthy, 1, 0), { code: 'EPERM' });
  assert.throws(() => state.acceptPgLoss(now, 1, 64), { code: 'EINVAL' });
  assert.throws(() => state.acceptPgLoss(now, 9, pg), { code: 'UNKNOWN_POOL' });
  const other = [...Array(64).keys()].find(
    (p) => p !== pg && !state.incompletePgs(now).some((i) => i.pg === p),
  )!;
  assert.throws(() => state.acceptPgLoss(now, 1, other), { code: 'EPERM' });
});

// A daemon back from a crash within its lease marks its disk stale where its activity
// record says its cache may have lost writes (markRestartedStale).

test('a restarted disk is marked stale in the listed PGs where another good member remains', () => {
  const { s, pg, row, key } = onePg();
  const [a, b, c] = row as [number, number, number];
  const marked = state.markRestartedStale(s, a, [{ pool: 1, pg }]);
  assert.deepEqual(marked, [{ pool: 1, pg }]);
  assert.deepEqual(s.staleMembers[key], [a]);
  assert.equal(s.staleSince[state.staleKey(1, pg, a)], s.map.epoch + 1, 'the epoch of this update');
  assert.deepEqual(good(s, pg).sort(), [b, c].sort(), 'reads come from the others');
  assert.equal(s.authoritativeMembers[key], undefined, 'min-size still met');
  // Listed again (a second restart): already stale, nothing more.
  assert.deepEqual(state.markRestartedStale(s, a, [{ pool: 1, pg }]), []);
  // A PG the disk is not a member of, or of an unknown pool, is skipped.
  const other = [...Array(64).keys()].find((p) => !pgRow(computeTable(s.map, 1), p).includes(a))!;
  assert.deepEqual(
    state.markRestartedStale(s, a, [
      { pool: 1, pg: other },
      { pool: 9, pg },
    ]),
    [],
  );
});

test('below min-size the record holds the others, then the restarted disk; the last good stays', () => {
  const { s, pg, row, key } = onePg();
  const [a, b, c] = row as [number, number, number];
  let now = up(down(s, c), c); // c stale: a and b good, exactly min-size
  assert.deepEqual(state.markRestartedStale(now, a, [{ pool: 1, pg }]), [{ pool: 1, pg }]);
  assert.deepEqual(good(now, pg), [b]);
  assert.deepEqual(now.authoritativeMembers[key], [b, a], 'b holds every ack; a all but its crash');
  // b restarts too: it is the last good copy, and stays good.
  assert.deepEqual(state.markRestartedStale(now, b, [{ pool: 1, pg }]), []);
  assert.deepEqual(good(now, pg), [b]);
  // b fails for good: a, next in the record, serves again rather than the PG going incomplete.
  now = down(now, b);
  assert.deepEqual(good(now, pg), [a]);
  assert.ok(!state.incompletePgs(now).some((i) => i.pg === pg));
  // A disk the map has down is not touched (it comes back stale anyway).
  assert.deepEqual(state.markRestartedStale(now, b, [{ pool: 1, pg }]), []);
});

// Seed 96 of the simulator: a PG fell below min-size as a went (record [b, a]: b, still
// good, first), then lost b too; a's host had lost power with writes b holds flushed.
// Back after its lease lapsed, a must not be made good again ahead of b. (Seed 1268:
// had b restarted first, it would have stayed — nothing before it in the record.)

test('a disk back from a crash leaves the record while another recorded disk is down', () => {
  const { s, pg, row, key } = onePg();
  const [a, b, c] = row as [number, number, number];
  let now = down(up(down(s, c), c), a); // c stale, then a down: b alone good
  assert.deepEqual(now.authoritativeMembers[key], [b, a], 'b, still good, before a');
  now = down(now, b);
  // a restarts while the map has it down: it leaves the record, nothing is marked.
  assert.deepEqual(state.markRestartedStale(now, a, [{ pool: 1, pg }]), []);
  assert.deepEqual(now.authoritativeMembers[key], [b]);
  now = up(now, a);
  assert.deepEqual(good(now, pg), [], 'a comes back stale, not as the record');
  const incomplete = state.incompletePgs(now).find((i) => i.pg === pg);
  assert.deepEqual(incomplete?.lost, [b], 'incomplete, waiting for b');
  assert.equal(incomplete?.best, a, 'should b fail for good, a lacks at most what its crash took');
  now = up(now, b);
  assert.deepEqual(good(now, pg), [b], 'b, which holds every write, serves');
});

test('a disk made good as the record before its start-up peering is marked stale then', () => {
  const { s, pg, row, key } = onePg();
  const [a, b, c] = row as [number, number, number];
  let now = down(down(up(down(s, c), c), a), b);
  now = up(now, a); // the monitor saw the lease first: a is the record's first up disk
  assert.deepEqual(good(now, pg), [a]);
  assert.deepEqual(state.markRestartedStale(now, a, [{ pool: 1, pg }]), [{ pool: 1, pg }]);
  assert.deepEqual(good(now, pg), []);
  assert.deepEqual(now.authoritativeMembers[key], [b]);
  // Alone in the record (b restarted the same way), a disk stays: nothing better is known.
  now = up(now, b);
  assert.deepEqual(state.markRestartedStale(now, b, [{ pool: 1, pg }]), []);
  assert.deepEqual(good(now, pg), [b]);
});

test('the first disk of the record stays in it after a crash; the one that went first waits', () => {
  // Seed 1268: a lost power and was taken down first (record [b, a]); b, flushed
  // meanwhile, went down later. b restarts first: nothing before it in the record.
  const { s, pg, row, key } = onePg();
  const [a, b, c] = row as [number, number, number];
  let now = down(down(up(down(s, c), c), a), b);
  assert.deepEqual(now.authoritativeMembers[key], [b, a]);
  assert.deepEqual(state.markRestartedStale(now, b, [{ pool: 1, pg }]), []);
  assert.deepEqual(now.authoritativeMembers[key], [b, a], 'b stays first');
  now = up(now, a); // back first: the record's first up disk, good until its start-up peering
  assert.deepEqual(state.markRestartedStale(now, a, [{ pool: 1, pg }]), [{ pool: 1, pg }]);
  assert.deepEqual(good(now, pg), [], 'a waits (stale) for b');
  assert.deepEqual(now.authoritativeMembers[key], [b], 'a, behind a down b, leaves');
  now = up(now, b);
  assert.deepEqual(good(now, pg), [b], 'b serves, a is recovered from it');
});

test('a disk back from a crash behind one still up leaves the record too', () => {
  // Seed 1942: a restarted while b, ahead of it in the record, was up; then a came back
  // as b went down, in one change. Judged only against disks down at the restart, a
  // stayed in the record and was made the PG's source without the writes b flushed.
  const { s, pg, row, key } = onePg();
  const [a, b, c] = row as [number, number, number];
  let now = down(up(down(s, c), c), a); // c stale, a down: record [b, a], b good
  assert.deepEqual(state.markRestartedStale(now, a, [{ pool: 1, pg }]), []);
  assert.deepEqual(now.authoritativeMembers[key], [b]);
  now = change(now, (n) => {
    n.map.disks.find((d) => d.id === a)!.up = true;
    state.markDiskDown(n, b, 'cut off');
  });
  assert.deepEqual(good(now, pg), [], 'a waits (stale) for b');
  assert.equal(state.incompletePgs(now).find((i) => i.pg === pg)?.best, a);
});

test('a disk made good as the record, leaving it at start-up, hands the PG to the one before it if up', () => {
  // The real-cluster restart of every daemon: a came up first and served as the record's
  // first up disk; b came back (stale: a served); then a's start-up peering found b
  // ahead of it. No map change would run peering again: b is made good there and then.
  const { s, pg, row, key } = onePg();
  const [a, b, c] = row as [number, number, number];
  let now = down(down(up(down(s, c), c), a), b); // record [b, a]
  now = up(now, a);
  assert.deepEqual(good(now, pg), [a]);
  now = up(now, b);
  assert.deepEqual(good(now, pg), [a], 'b back stale');
  assert.deepEqual(state.markRestartedStale(now, a, [{ pool: 1, pg }]), [{ pool: 1, pg }]);
  assert.deepEqual(good(now, pg), [b], 'b serves; a is recovered from it');
  assert.deepEqual(now.authoritativeMembers[key], [b]);
});
