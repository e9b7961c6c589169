// Proves the monitor's decision (applyLiveness) on literal states, no etcd: an absent
// host's up disks go down with the host-down reason; they go out only once the down-out
// interval has passed since the host was first seen absent; a returning host gets back
// exactly the disks the monitor took, up and in, while a disk down for its own fault
// stays down; live hosts and repeated checks change nothing; a disk its peers could not
// reach is held down while its host still shows the liveness key it had (a daemon killed
// with kill -9 keeps its key until its lease lapses), and comes back at once when its
// host re-registered or was absent meanwhile; a host is not taken out when a pool could
// then no longer be placed.

import { strict as assert } from 'node:assert';
import { test } from 'node:test';
import { LivenessChange, UnreachableHold, applyLiveness, hostDownReason } from './monitor';
import * as state from './state';

function cluster(): state.ClusterState {
  const s = state.emptyState();
  for (const host of ['h1', 'h2']) {
    state.addHost(s, host, `rack-${host}`);
    for (const n of [1, 2]) {
      state.addDisk(s, host, {
        path: `/dev/${host}d${n}`,
        uuid: `${host}${n}`,
        sizeBytes: 1 << 30,
      });
    }
  }
  return s;
}

const DOWN_OUT_MS = 600_000;

test('an absent host goes down at once, and out only after the interval', () => {
  const s = cluster();
  const alive = new Set(['h2']);
  const since = new Map([['h1', 1000]]);
  const changes = applyLiveness(s, alive, since, 1000, DOWN_OUT_MS);
  assert.deepEqual(changes, [{ host: 'h1', change: 'down', disks: [0, 1] }]);
  assert.deepEqual(
    s.map.disks.map((d) => [d.up, d.in]),
    [
      [false, true],
      [false, true],
      [true, true],
      [true, true],
    ],
  );
  assert.equal(s.disks['0']?.error, hostDownReason('h1'));
  assert.deepEqual(applyLiveness(s, alive, since, 1000 + DOWN_OUT_MS - 1, DOWN_OUT_MS), []);
  assert.deepEqual(applyLiveness(s, alive, since, 1000 + DOWN_OUT_MS, DOWN_OUT_MS), [
    { host: 'h1', change: 'out', disks: [0, 1] },
  ]);
  assert.ok(s.map.disks.slice(0, 2).every((d) => !d.in));
  assert.deepEqual(applyLiveness(s, alive, since, 1000 + DOWN_OUT_MS * 2, DOWN_OUT_MS), []);
});

test('a returning host gets back what the monitor took, not a disk that failed by itself', () => {
  const s = cluster();
  state.markDiskDown(s, 1, 'EIO: write failed');
  applyLiveness(s, new Set(['h2']), new Map([['h1', 0]]), DOWN_OUT_MS, DOWN_OUT_MS);
  assert.deepEqual(
    s.map.disks.slice(0, 2).map((d) => [d.up, d.in]),
    [
      [false, false],
      [false, true], // down for EIO before: not the monitor's, so not out either
    ],
  );
  const changes = applyLiveness(s, new Set(['h1', 'h2']), new Map(), DOWN_OUT_MS + 1, DOWN_OUT_MS);
  assert.deepEqual(changes, [{ host: 'h1', change: 'up', disks: [0] }]);
  assert.deepEqual(
    [s.map.disks[0]?.up, s.map.disks[0]?.in, s.disks['0']?.error],
    [true, true, undefined],
  );
  assert.deepEqual([s.map.disks[1]?.up, s.disks['1']?.error], [false, 'EIO: write failed']);
});

test('with every host alive nothing changes', () => {
  const s = cluster();
  const before = structuredClone(s);
  assert.deepEqual(applyLiveness(s, new Set(['h1', 'h2']), new Map(), 5, DOWN_OUT_MS), []);
  assert.deepEqual(s, before);
});

test('a disk its peers could not reach comes back with its host; a failed device does not', () => {
  const s = cluster();
  // A primary could not reach h1 (before the monitor noticed the lease lapse).
  state.markDiskDown(s, 0, `${state.UNREACHABLE_PREFIX}disk 0 on host h1 unreachable: reset`);
  state.markDiskDown(s, 1, 'EIO: write failed');
  const changes = applyLiveness(s, new Set(['h1', 'h2']), new Map(), 0, DOWN_OUT_MS);
  assert.deepEqual(changes, [{ host: 'h1', change: 'up', disks: [0] }]);
  assert.deepEqual(
    s.map.disks.slice(0, 2).map((d) => d.up),
    [true, false],
  );
});

test('a disk down with its host whose device then fails to open stays down when the host is back', () => {
  const s = cluster();
  applyLiveness(s, new Set(['h2']), new Map([['h1', 0]]), 0, DOWN_OUT_MS);
  // The daemon restarts; disk 0's device fails to open (found by the simulator, seed 4).
  assert.equal(state.markDiskDown(s, 0, 'EIO: device failed to open'), false);
  const changes = applyLiveness(s, new Set(['h1', 'h2']), new Map(), 0, DOWN_OUT_MS);
  assert.deepEqual(changes, [{ host: 'h1', change: 'up', disks: [1] }]);
  assert.equal(s.map.disks[0]?.up, false);
  assert.equal(s.disks['0']?.error, 'EIO: device failed to open');
  // A later unreachable report does not turn it back into a host-away disk.
  state.markDiskDown(s, 0, `${state.UNREACHABLE_PREFIX}disk 0 unreachable`);
  assert.equal(s.disks['0']?.error, 'EIO: device failed to open');
});

test('a disk peers could not reach stays down while its host keeps the same key, for the hold', () => {
  const s = cluster();
  state.markDiskDown(s, 0, `${state.UNREACHABLE_PREFIX}disk 0 on host h1 unreachable: reset`);
  const hold = new UnreachableHold(10_000);
  const alive = new Map([
    ['h1', { hostId: 'h1', address: 'a1', since: 'registration-1' }],
    ['h2', { hostId: 'h2', address: 'a2', since: 'registration-1' }],
  ]);
  const decide = (nowMs: number): LivenessChange[] =>
    applyLiveness(
      s,
      new Set(alive.keys()),
      new Map(),
      nowMs,
      DOWN_OUT_MS,
      hold.check(s, alive, nowMs),
    );
  // A daemon killed with kill -9 keeps its key until its lease lapses: not re-admitted.
  assert.deepEqual(decide(0), []);
  assert.deepEqual(decide(9_999), []);
  assert.equal(s.map.disks[0]?.up, false);
  // Still the same key after the hold: a live daemon, re-admitted.
  assert.deepEqual(decide(10_000), [{ host: 'h1', change: 'up', disks: [0] }]);
});

test('a disk peers could not reach comes back at once when its host re-registered or was absent', () => {
  for (const meanwhile of ['restarted', 'absent'] as const) {
    const s = cluster();
    state.markDiskDown(s, 0, `${state.UNREACHABLE_PREFIX}disk 0 on host h1 unreachable: reset`);
    const hold = new UnreachableHold(10_000);
    const h2 = { hostId: 'h2', address: 'a2', since: 'registration-1' };
    const before = new Map([
      ['h1', { hostId: 'h1', address: 'a1', since: 'registration-1' }],
      ['h2', h2],
    ]);
    assert.deepEqual([...hold.check(s, before, 0)], [0]);
    if (meanwhile === 'absent') assert.deepEqual([...hold.check(s, new Map([['h2', h2]]), 1)], []);
    const after = new Map([
      ['h1', { hostId: 'h1', address: 'a1', since: 'registration-2' }],
      ['h2', h2],
    ]);
    const held = hold.check(s, meanwhile === 'absent' ? before : after, 2);
    assert.deepEqual([...held], [], meanwhile);
    const changes = applyLiveness(s, new Set(['h1', 'h2']), new Map(), 2, DOWN_OUT_MS, held);
    assert.deepEqual(changes, [{ host: 'h1', change: 'up', disks: [0] }], meanwhile);
  }
});

test('a host away past the interval is not taken out when a pool could no longer be placed', () => {
  // Two hosts, a pool of size 2 by host: taking h1 out would leave one host. (Soak seed
  // 1280: a pool went unplaceable, and the PGs re-placed on the way back took a disk
  // in as if it held their data.)
  const s = cluster();
  state.createPool(s, { name: 'p', size: 2, minSize: 1, failureDomain: 'host', pgCount: 8 });
  const since = new Map([['h1', 0]]);
  applyLiveness(s, new Set(['h2']), since, 0, DOWN_OUT_MS);
  assert.deepEqual(applyLiveness(s, new Set(['h2']), since, DOWN_OUT_MS, DOWN_OUT_MS), []);
  assert.ok(
    s.map.disks.filter((d) => d.host === 'h1').every((d) => !d.up && d.in),
    'down, in',
  );
  // With a third host to place on, the same absence is taken out.
  state.addHost(s, 'h3', 'rack-h3');
  state.addDisk(s, 'h3', { path: '/dev/h3d1', uuid: 'h31', sizeBytes: 1 << 30 });
  assert.deepEqual(applyLiveness(s, new Set(['h2', 'h3']), since, DOWN_OUT_MS, DOWN_OUT_MS), [
    { host: 'h1', change: 'out', disks: [0, 1] },
  ]);
});
