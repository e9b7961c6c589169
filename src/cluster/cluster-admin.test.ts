// Proves ClusterAdmin over a cluster store (the embedded one here; test/cluster-store/
// runs it on etcd through the CLI): pools default to failure domain host and impossible
// ones are refused before they exist; volumes are created, grown, listed and removed as
// state changes, shrinking is refused (without --allow-shrink as always, with it because
// the daemons must discard the tail first); status counts PGs by state — all members up
// active+clean, at least min-size active+degraded, fewer inactive, none known complete
// incomplete (named in a message with what to do) — and hosts up/down.

import { strict as assert } from 'node:assert';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, test } from 'node:test';
import { isCisternError } from '../util/errors';
import { ClusterAdmin, incompleteMessages, pgStates } from './cluster-admin';
import { computeTable, pgRow } from '../placement/straw2';
import { EmbeddedClusterStore } from './embedded';
import * as state from './state';

let dir: string;
let store: EmbeddedClusterStore;
let alive = new Set(['h1', 'h2', 'h3']);
let admin: ClusterAdmin;

before(async () => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'cistern-cluster-admin-'));
  store = await EmbeddedClusterStore.open(path.join(dir, 'cluster'));
  await store.update((s) => {
    for (const host of ['h1', 'h2', 'h3']) {
      state.addHost(s, host, `rack-${host}`);
      for (const n of [1, 2]) {
        state.addDisk(s, host, {
          path: `/dev/${host}d${n}`,
          uuid: `${host}${n}`,
          sizeBytes: 1 << 30,
        });
      }
    }
  });
  admin = new ClusterAdmin(store, { aliveHosts: async () => alive });
});

after(async () => {
  await store.close();
  fs.rmSync(dir, { recursive: true, force: true });
});

test('pools default to failure domain host; impossible pools are refused unmade', async () => {
  const pool = await admin.createPool({ name: 'p3', size: 3, minSize: 2, pgCount: 64 });
  assert.equal(pool.failureDomain, 'host');
  assert.equal(pool.pgsDegraded, 0);
  const epoch = store.current().map.epoch;
  await assert.rejects(admin.createPool({ name: 'p4', size: 4 }), (error) =>
    isCisternError(error, 'PLACEMENT_IMPOSSIBLE'),
  );
  assert.equal(store.current().map.epoch, epoch, 'nothing changed');
  assert.deepEqual(
    (await admin.listPools()).map((p) => p.name),
    ['p3'],
  );
});

test('volumes: create in the only pool, grow, refuse shrinking, remove', async () => {
  const created = await admin.createVolume({ name: 'v1', sizeBytes: 1 << 30 });
  assert.equal(created.pool, 'p3');
  assert.equal(created.usedBytes, 0);
  const grown = await admin.resizeVolume('v1', 2 ** 31, {});
  assert.equal(grown.sizeBytes, 2 ** 31);
  await assert.rejects(admin.resizeVolume('v1', 1 << 30, {}), (error) =>
    isCisternError(error, 'EINVAL'),
  );
  await assert.rejects(admin.resizeVolume('v1', 1 << 30, { allowShrink: true }), (error) =>
    isCisternError(error, 'ENOTSUP'),
  );
  assert.equal((await admin.volumeInfo('v1')).sizeBytes, 2 ** 31);
  assert.deepEqual(
    (await admin.listVolumes()).map((v) => v.name),
    ['v1'],
  );
  await admin.removeVolume('v1', {});
  assert.deepEqual(await admin.listVolumes(), []);
  await assert.rejects(admin.volumeInfo('v1'), (error) => isCisternError(error, 'UNKNOWN_VOLUME'));
});

test('status counts PGs by state and hosts up and down', async () => {
  const healthy = await admin.status();
  assert.equal(healthy.health, 'ok');
  assert.deepEqual(healthy.pgStates, {
    'active+clean': 64,
    'active+degraded': 0,
    inactive: 0,
    incomplete: 0,
  });
  assert.deepEqual([healthy.hostsUp, healthy.hostsDown], [['h1', 'h2', 'h3'], []]);
  assert.equal(healthy.capacityBytes, 6 * (1 << 30));

  // h3 stops: its lease lapses and (as the monitor would) its disks go down.
  alive = new Set(['h1', 'h2']);
  await store.update((s) => {
    for (const d of s.map.disks) if (d.host === 'h3') state.markDiskDown(s, d.id, 'host down');
  });
  const degraded = await admin.status();
  assert.equal(degraded.health, 'degraded');
  assert.deepEqual(degraded.hostsDown, ['h3']);
  // Size 3 over 3 hosts: every PG has one member on h3.
  assert.deepEqual(degraded.pgStates, {
    'active+clean': 0,
    'active+degraded': 64,
    inactive: 0,
    incomplete: 0,
  });
  assert.equal(degraded.pools[0]?.pgsDegraded, 64);
  assert.match(degraded.messages.join('\n'), /host h3 is down/);

  await store.update((s) => {
    for (const d of s.map.disks) if (d.host === 'h2') state.markDiskDown(s, d.id, 'host down');
  });
  const inactive = await admin.status();
  assert.equal(inactive.health, 'unavailable');
  assert.deepEqual(inactive.pgStates, {
    'active+clean': 0,
    'active+degraded': 0,
    inactive: 64,
    incomplete: 0,
  });
  const hosts = await admin.listHosts();
  assert.deepEqual(
    hosts.map((h) => [h.id, h.alive, h.disksUp, h.disksTotal]),
    [
      ['h1', true, 2, 2],
      ['h2', true, 0, 2],
      ['h3', false, 0, 2],
    ],
  );
});

test('a pool that can no longer be placed counts all its PGs inactive', () => {
  const s = structuredClone(store.current());
  for (const disk of s.map.disks) if (disk.host !== 'h1') disk.in = false;
  assert.deepEqual(pgStates(s, s.map.pools[0]!.id), {
    'active+clean': 0,
    'active+degraded': 0,
    inactive: 64,
    incomplete: 0,
  });
});

test('status names an incomplete PG, the disks it waits for and both ways out', () => {
  // Pure: a 5-host pool whose PG 0 lost both members of its record [a, b] while c was stale.
  let s = state.emptyState();
  for (let h = 0; h < 5; h += 1) {
    state.addHost(s, `h${h}`, `r${h}`);
    state.addDisk(s, `h${h}`, { path: `/d${h}`, uuid: `u${h}`, sizeBytes: 1000 });
  }
  state.createPool(s, { name: 'p', size: 3, minSize: 2, failureDomain: 'host', pgCount: 8 });
  const step = (mutate: (n: state.ClusterState) => void): void => {
    const next = structuredClone(s);
    mutate(next);
    state.markNewMembersStale(s, next);
    next.map.epoch += 1;
    s = next;
  };
  const row = [...pgRow(computeTable(s.map, 1), 0)];
  const [a, b, c] = row as [number, number, number];
  step((n) => state.markDiskDown(n, c, 'gone'));
  step((n) => (n.map.disks.find((d) => d.id === c)!.up = true));
  step((n) => state.markDiskDown(n, a, 'EIO: failed'));
  step((n) => state.markDiskDown(n, b, 'EIO: failed'));
  assert.equal(pgStates(s, 1).incomplete, 1);
  const [message, ...others] = incompleteMessages(s);
  assert.equal(others.length, 0);
  assert.match(
    message!,
    /^PG p\/0 is incomplete: only disk\(s\) \d+ on h\d \(EIO: failed\), \d+ on/,
  );
  assert.match(message!, /Bring one of those disks back/);
  assert.match(
    message!,
    new RegExp(
      `cistern pg accept-loss p/0\` serves the most complete copy left of disk\\(s\\) ${c}`,
    ),
  );
  state.acceptPgLoss(s, 1, 0);
  assert.equal(pgStates(s, 1).incomplete, 1, 'until the daemon peering it serves a copy');
  assert.match(incompleteMessages(s)[0]!, /Its loss was accepted: the daemon peering it serves/);
  assert.ok(state.serveAcceptedLoss(s, 1, 0, c));
  assert.equal(pgStates(s, 1).incomplete, 0);
  assert.deepEqual(incompleteMessages(s), []);
});
