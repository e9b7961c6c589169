// Proves host liveness and the monitor against a real etcd: a host whose daemon stops
// renewing its lease has its disks marked down by the monitor within the lease TTL plus
// a little, and out once downOutIntervalS has passed; the other host's disks stay up;
// when the host registers again its disks come back up and in, except a disk that was
// down for its own fault. Registration adds a host to the map once, with its address,
// and reports the send time of each renewal etcd accepts (the read fence's input).

import { strict as assert } from 'node:assert';
import { after, before, test } from 'node:test';
import { EtcdClusterStore } from '../../src/cluster/etcd';
import type { Monitor } from '../../src/cluster/monitor';
import * as state from '../../src/cluster/state';
import { EtcdServer, startEtcd, waitFor } from './etcd-server';

const TTL_S = 2;
/** etcd expires a lease up to about a second late; the monitor checks every 100 ms. */
const DOWN_SLACK_MS = 2500;
const DOWN_OUT_S = 2;
const PREFIX = '/liveness/';

let etcd: EtcdServer;
const stores: EtcdClusterStore[] = [];
const events: Array<{ event: string; host?: unknown }> = [];

before(async () => {
  etcd = await startEtcd();
  await EtcdClusterStore.initialise({ endpoints: [etcd.url], prefix: PREFIX }, state.emptyState());
});

after(async () => {
  for (const store of stores) await store.close();
  await etcd.stop();
});

async function open(): Promise<EtcdClusterStore> {
  const store = await EtcdClusterStore.open({
    endpoints: [etcd.url],
    prefix: PREFIX,
    log: (event, fields) => events.push({ event, host: fields?.['host'] }),
  });
  stores.push(store);
  return store;
}

function disksOf(store: EtcdClusterStore, host: string) {
  return store.current().map.disks.filter((d) => d.host === host);
}

test('renewals reach the read fence: at registration, then with every keepalive', async () => {
  const daemon = await open();
  const started = Date.now();
  const registration = await daemon.registerHost(
    'h9',
    { address: '10.0.0.9:7000', rack: 'r9' },
    { ttlS: TTL_S },
  );
  const renewals: number[] = [];
  registration.onRenewed((sentAtMs) => renewals.push(sentAtMs));
  assert.equal(renewals.length, 1, 'the grant counts, reported at once');
  assert.ok(renewals[0]! >= started && renewals[0]! <= Date.now());
  // etcd3 sends a keepalive every TTL/3: a few arrive within two TTLs.
  await waitFor('three renewals', () => renewals.length >= 3, TTL_S * 2000);
  for (let i = 1; i < renewals.length; i += 1) assert.ok(renewals[i]! >= renewals[i - 1]!);
  assert.ok(Date.now() - renewals[renewals.length - 1]! < TTL_S * 1000);
  await registration.revoke();
});

test('a lapsed lease takes the host down, then out; registering again brings it back', async () => {
  const daemon1 = await open();
  const daemon2 = await open();
  const watcher = await open();
  const reg1 = await daemon1.registerHost(
    'h1',
    { address: '10.0.0.1:7000', nbd: '10.0.0.1:10809', rack: 'r1' },
    { ttlS: TTL_S },
  );
  await daemon2.registerHost('h2', { address: '10.0.0.2:7000', rack: 'r2' }, { ttlS: TTL_S });
  const epochAfterRegistering = daemon2.current().map.epoch;
  await daemon1.update((s) => {
    for (const n of [1, 2]) {
      state.addDisk(s, 'h1', { path: `/dev/h1d${n}`, uuid: `h1-${n}`, sizeBytes: 2 ** 30 });
    }
    const faulty = state.addDisk(s, 'h1', { path: '/dev/h1d3', uuid: 'h1-3', sizeBytes: 2 ** 30 });
    state.markDiskDown(s, faulty, 'EIO: read failed'); // down for its own fault
  });
  await daemon2.update((s) => {
    state.addDisk(s, 'h2', { path: '/dev/h2d1', uuid: 'h2-1', sizeBytes: 2 ** 30 });
  });
  assert.ok(epochAfterRegistering >= 3, 'registration added each host in an update');
  // The watcher learns of updates through its etcd watch, a moment later under load.
  await watcher.waitForEpoch(daemon2.current().map.epoch, 10_000);
  assert.deepEqual(watcher.current().hostAddresses['h1'], {
    address: '10.0.0.1:7000',
    nbd: '10.0.0.1:10809',
  });

  const monitor: Monitor = watcher.runMonitor({
    hostId: 'mon',
    downOutIntervalS: DOWN_OUT_S,
    checkIntervalMs: 100,
    electionTtlS: 2,
  });
  await waitFor('monitor elected', () => monitor.isLeader(), 5000);
  await monitor.settled();
  assert.ok(
    watcher
      .current()
      .map.disks.filter((d) => d.id !== 2)
      .every((d) => d.up && d.in),
    'live hosts are left alone',
  );

  reg1.release(); // h1's daemon hangs: no more keepalives
  const downMs = await waitFor(
    'h1 down',
    () => disksOf(watcher, 'h1').every((d) => !d.up),
    TTL_S * 1000 + DOWN_SLACK_MS,
  );
  assert.ok(
    disksOf(watcher, 'h1').every((d) => d.in),
    'down is not yet out',
  );
  assert.match(watcher.current().disks['0']?.error ?? '', /host h1 is down/);
  assert.ok(
    disksOf(watcher, 'h2').every((d) => d.up && d.in),
    'h2 stays up',
  );
  assert.ok(events.some((e) => e.event === 'monitor.host-down' && e.host === 'h1'));

  const outMs = await waitFor(
    'h1 out',
    () =>
      disksOf(watcher, 'h1')
        .filter((d) => d.id !== 2)
        .every((d) => !d.in),
    DOWN_OUT_S * 1000 + DOWN_SLACK_MS,
  );
  assert.ok(outMs >= DOWN_OUT_S * 1000 - 500, `out after ${outMs} ms, not before the interval`);
  assert.ok(disksOf(watcher, 'h2').every((d) => d.up && d.in));
  void downMs;

  const hostsBefore = watcher.current().map.hosts.length;
  await daemon1.registerHost(
    'h1',
    { address: '10.0.0.1:7000', nbd: '10.0.0.1:10809', rack: 'r1' },
    { ttlS: TTL_S },
  );
  await waitFor(
    'h1 back',
    () =>
      disksOf(watcher, 'h1')
        .filter((d) => d.id !== 2)
        .every((d) => d.up && d.in),
    3000,
  );
  const faulty = disksOf(watcher, 'h1').find((d) => d.id === 2);
  assert.equal(faulty?.up, false, 'a disk down for its own fault stays down');
  assert.equal(watcher.current().disks['2']?.error, 'EIO: read failed');
  assert.equal(watcher.current().map.hosts.length, hostsBefore, 'registered once');
  assert.ok(events.some((e) => e.event === 'monitor.host-up' && e.host === 'h1'));
  await monitor.close();
  assert.equal(monitor.isLeader(), false);
});
