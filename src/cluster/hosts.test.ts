// Proves host drain and removal on the cluster state: draining puts weight zero on the
// host's disks, its PGs get new (stale) members while its disks stay acting
// (retained), so it still "holds" them and removal is refused; once recovery has
// cleared every stale mark the host holds nothing and removal takes it and its disks
// out of the map.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { isCisternError } from '../util/errors';
import { drainHost, hostHoldings, removeHost } from './hosts';
import * as state from './state';

function cluster(): state.ClusterState {
  const s = state.emptyState();
  for (let h = 0; h < 5; h += 1) {
    state.addHost(s, `h${h}`, `r${h}`);
    state.addDisk(s, `h${h}`, { path: `/d${h}`, uuid: `u${h}`, sizeBytes: 1000 });
  }
  state.createPool(s, { name: 'p', size: 3, minSize: 2, failureDomain: 'host', pgCount: 64 });
  return s;
}

function apply(
  before: state.ClusterState,
  mutate: (s: state.ClusterState) => void,
): state.ClusterState {
  const after = structuredClone(before);
  mutate(after);
  state.markNewMembersStale(before, after);
  after.map.epoch = before.map.epoch + 1;
  return after;
}

test('a drained host holds its PGs until recovery ends, then can be removed', () => {
  const start = cluster();
  const held = hostHoldings(start, 'h4').pgMemberships;
  assert.ok(held > 0);
  const drained = apply(start, (s) => drainHost(s, 'h4'));
  const during = hostHoldings(drained, 'h4');
  assert.equal(during.drained, true);
  assert.equal(during.pgMemberships, held, 'still acting in every PG it had');
  assert.ok(during.staleMembers > 0);
  assert.throws(
    () => removeHost(structuredClone(drained), 'h4'),
    (e) => isCisternError(e, 'EPERM') && /copying/.test(e.message),
  );
  // What recovery does: clear every stale mark it has copied.
  const recovered = apply(drained, (s) => {
    for (const [key, disks] of Object.entries(s.staleMembers)) {
      const [pool, pg] = key.split(':').map(Number) as [number, number];
      for (const disk of disks)
        state.clearStale(s, pool, pg, disk, s.staleSince[state.staleKey(pool, pg, disk)]!);
    }
  });
  assert.deepEqual(hostHoldings(recovered, 'h4').pgMemberships, 0);
  const removed = apply(recovered, (s) => removeHost(s, 'h4'));
  assert.ok(!removed.map.hosts.some((h) => h.id === 'h4'));
  assert.ok(!removed.map.disks.some((d) => d.host === 'h4'));
});

test('removing a host that was never drained is refused with the way forward', () => {
  assert.throws(() => removeHost(cluster(), 'h1'), /drain it first: cistern host drain h1/);
  assert.throws(
    () => removeHost(cluster(), 'nope'),
    (e) => isCisternError(e, 'ENOENT'),
  );
});
