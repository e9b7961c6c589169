// Proves the stale-member rule of the cluster state: a disk that joins a PG's set
// through a map change, or comes back up after being down, is recorded as stale in
// exactly the PGs it is a member of; members that leave a set are forgotten; a change
// that does not touch placement records nothing; a new pool starts clean.

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
