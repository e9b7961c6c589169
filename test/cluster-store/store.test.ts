// Proves the etcd cluster store against a real etcd: an update is one atomic change that
// bumps the epoch and is what a fresh reader sees; a mutation that throws changes
// nothing; two stores updating at once both land, through compare-and-swap retries, with
// no lost update; a third store's subscribers see every change in increasing epoch
// order; waitForEpoch resolves when another store's change arrives and times out
// otherwise; and the errors for an unreachable etcd, a missing cluster and a second
// initialisation say what to do.

import { strict as assert } from 'node:assert';
import { after, before, test } from 'node:test';
import { EtcdClusterStore } from '../../src/cluster/etcd';
import * as state from '../../src/cluster/state';
import { isCisternError } from '../../src/util/errors';
import { EtcdServer, startEtcd } from './etcd-server';

let etcd: EtcdServer;
let prefixCount = 0;
const stores: EtcdClusterStore[] = [];

before(async () => {
  etcd = await startEtcd();
});

after(async () => {
  for (const store of stores) await store.close();
  await etcd.stop();
});

/** A fresh cluster under its own prefix, so tests do not see each other's changes. */
async function newCluster(): Promise<string> {
  prefixCount += 1;
  const prefix = `/store-test-${prefixCount}/`;
  await EtcdClusterStore.initialise({ endpoints: [etcd.url], prefix }, state.emptyState());
  return prefix;
}

async function open(prefix: string): Promise<EtcdClusterStore> {
  const store = await EtcdClusterStore.open({ endpoints: [etcd.url], prefix });
  stores.push(store);
  return store;
}

function withHostAndDisk(s: state.ClusterState, host: string): number {
  state.addHost(s, host, 'rack-1');
  return state.addDisk(s, host, { path: `/dev/${host}`, uuid: host, sizeBytes: 2 ** 30 });
}

test('an update changes everything at once, bumps the epoch, and a fresh reader sees it', async () => {
  const prefix = await newCluster();
  const store = await open(prefix);
  assert.equal(store.current().map.epoch, 1);
  const diskId = await store.update((s) => {
    const id = withHostAndDisk(s, 'h1');
    state.createPool(s, { name: 'p', size: 1, failureDomain: 'disk', pgCount: 8 });
    return id;
  });
  assert.equal(diskId, 0);
  assert.equal(store.current().map.epoch, 2);
  const reader = await open(prefix);
  assert.equal(reader.current().map.epoch, 2);
  assert.deepEqual(reader.current(), store.current());
  assert.equal(reader.current().map.pools[0]?.name, 'p');
  assert.equal(reader.current().disks['0']?.path, '/dev/h1');
});

test('a mutation that throws changes nothing, in etcd or in current()', async () => {
  const prefix = await newCluster();
  const store = await open(prefix);
  await store.update((s) => withHostAndDisk(s, 'h1'));
  const before = structuredClone(store.current());
  await assert.rejects(
    store.update((s) => {
      state.addHost(s, 'h2', 'rack-2'); // applied to the copy, then the mutation fails
      state.createVolume(s, 'v', 2 ** 20, 'no-such-pool');
    }),
    (error) => isCisternError(error, 'UNKNOWN_POOL'),
  );
  assert.deepEqual(store.current(), before);
  const reader = await open(prefix);
  assert.deepEqual(reader.current(), before);
  // The store still works after a failed mutation.
  await store.update((s) => state.addHost(s, 'h3', 'rack-3'));
  assert.equal(store.current().map.epoch, before.map.epoch + 1);
});

test('two stores updating at once both land: conflicts are retried, nothing is lost', async () => {
  const prefix = await newCluster();
  const a = await open(prefix);
  const b = await open(prefix);
  await a.update((s) => {
    withHostAndDisk(s, 'h1');
    state.createPool(s, { name: 'p', size: 1, failureDomain: 'disk', pgCount: 8 });
  });
  const start = a.current().map.epoch;
  const perStore = 25;
  const writes = (store: EtcdClusterStore, tag: string) =>
    Promise.all(
      Array.from({ length: perStore }, (_, i) =>
        store.update((s) => state.createVolume(s, `${tag}${i}`, 2 ** 20, 'p')),
      ),
    );
  await Promise.all([writes(a, 'a'), writes(b, 'b')]);
  const reader = await open(prefix);
  const names = reader.current().volumes.map((v) => v.name);
  assert.equal(names.length, 2 * perStore, 'every volume of both stores is there');
  assert.equal(new Set(reader.current().volumes.map((v) => v.id)).size, 2 * perStore);
  assert.equal(reader.current().map.epoch, start + 2 * perStore, 'one epoch per update');
  assert.ok(a.conflictsRetried + b.conflictsRetried > 0, 'the stores did race');
});

test("subscribers see other stores' changes in increasing epoch order", async () => {
  const prefix = await newCluster();
  const writer1 = await open(prefix);
  const writer2 = await open(prefix);
  const watcher = await open(prefix);
  const seen: number[] = [];
  watcher.subscribe((s) => seen.push(s.map.epoch));
  const rounds = 15;
  await Promise.all(
    [writer1, writer2].map((w, index) =>
      Promise.all(
        Array.from({ length: rounds }, (_, i) =>
          w.update((s) => state.addHost(s, `w${index}-${i}`, 'r')),
        ),
      ),
    ),
  );
  const final = writer1.current().map.epoch > writer2.current().map.epoch ? writer1 : writer2;
  await watcher.waitForEpoch(final.current().map.epoch, 5000);
  assert.equal(watcher.current().map.epoch, 1 + 2 * rounds);
  assert.equal(watcher.current().map.hosts.length, 2 * rounds);
  for (let i = 1; i < seen.length; i += 1) {
    assert.ok((seen[i] as number) > (seen[i - 1] as number), `epochs ${seen.join(',')}`);
  }
  assert.equal(seen.at(-1), 1 + 2 * rounds);
});

test('waitForEpoch resolves when the epoch arrives from elsewhere, and times out', async () => {
  const prefix = await newCluster();
  const waiter = await open(prefix);
  const writer = await open(prefix);
  const now = waiter.current().map.epoch;
  assert.equal((await waiter.waitForEpoch(now, 0)).map.epoch, now, 'reached already');
  const waiting = waiter.waitForEpoch(now + 1, 5000);
  await writer.update((s) => state.addHost(s, 'h1', 'r'));
  assert.equal((await waiting).map.epoch, now + 1);
  await assert.rejects(waiter.waitForEpoch(now + 5, 100), (error) =>
    isCisternError(error, 'UNAVAILABLE'),
  );
});

test('errors name the URL: unreachable etcd, no cluster yet, cluster already there', async () => {
  const unreachable = 'http://127.0.0.1:1';
  await assert.rejects(EtcdClusterStore.open({ endpoints: [unreachable] }), (error) => {
    assert.ok(isCisternError(error, 'UNAVAILABLE'));
    assert.match(error.message, /etcd at http:\/\/127\.0\.0\.1:1 did not answer/);
    return true;
  });
  await assert.rejects(
    EtcdClusterStore.open({ endpoints: [etcd.url], prefix: '/never-initialised/' }),
    (error) => {
      assert.ok(isCisternError(error, 'ENOENT'));
      assert.match(error.message, /run cistern cluster init --etcd .* --secret-file F first/);
      return true;
    },
  );
  const prefix = await newCluster();
  const store = await open(prefix);
  await store.update((s) => state.addHost(s, 'h1', 'r'));
  await assert.rejects(
    EtcdClusterStore.initialise({ endpoints: [etcd.url], prefix }, state.emptyState()),
    (error) => {
      assert.ok(isCisternError(error, 'EEXIST'));
      assert.equal(
        error.message,
        `cluster already initialised at ${etcd.url} under ${prefix} (epoch 2)`,
      );
      return true;
    },
  );
});
