// Proves that only one monitor acts at a time and that another takes over when it dies:
// monitor A runs in a child process and wins the election; monitor B (in this process)
// waits, and when a host's lease lapses only A marks it down; after kill -9 of A, B is
// elected once A's campaign lease runs out and handles the host's return.

import { strict as assert } from 'node:assert';
import { ChildProcess, spawn } from 'node:child_process';
import path from 'node:path';
import { after, before, test } from 'node:test';
import { EtcdClusterStore } from '../../src/cluster/etcd';
import * as state from '../../src/cluster/state';
import { EtcdServer, startEtcd, waitFor } from './etcd-server';

const PREFIX = '/takeover/';
const TTL_S = 2;
let etcd: EtcdServer;
let child: ChildProcess | undefined;
const stores: EtcdClusterStore[] = [];
/** Closed in `after`, also when an assertion failed first (else the run hangs on it). */
const monitors: Array<{ close(): Promise<void> }> = [];

before(async () => {
  etcd = await startEtcd();
  await EtcdClusterStore.initialise({ endpoints: [etcd.url], prefix: PREFIX }, state.emptyState());
});

after(async () => {
  child?.kill('SIGKILL');
  for (const monitor of monitors) await monitor.close();
  for (const store of stores) await store.close();
  await etcd.stop();
});

test('one monitor acts; when it is killed, the other takes over', async () => {
  const childLines: Array<{ event: string; host?: string }> = [];
  child = spawn(
    process.execPath,
    [path.join(__dirname, 'monitor-child.js'), etcd.url, PREFIX, 'mon-a'],
    { stdio: ['ignore', 'pipe', 'inherit'] },
  );
  let buffered = '';
  child.stdout?.setEncoding('utf8').on('data', (chunk: string) => {
    buffered += chunk;
    const lines = buffered.split('\n');
    buffered = lines.pop() ?? '';
    for (const line of lines) childLines.push(JSON.parse(line));
  });
  const bEvents: Array<{ event: string; host?: unknown }> = [];
  const storeB = await EtcdClusterStore.open({
    endpoints: [etcd.url],
    prefix: PREFIX,
    log: (event, fields) => bEvents.push({ event, host: fields?.['host'] }),
  });
  stores.push(storeB);
  const daemon = await EtcdClusterStore.open({ endpoints: [etcd.url], prefix: PREFIX });
  stores.push(daemon);
  const registration = await daemon.registerHost(
    'h1',
    { address: '10.0.0.1:7000', rack: 'r1' },
    { ttlS: TTL_S },
  );
  await daemon.update((s) => {
    state.addDisk(s, 'h1', { path: '/dev/h1d1', uuid: 'h1-1', sizeBytes: 2 ** 30 });
  });

  await waitFor('A elected', () => childLines.some((l) => l.event === 'monitor.elected'), 10_000);
  const monitorB = storeB.runMonitor({ hostId: 'mon-b', electionTtlS: 2, checkIntervalMs: 100 });
  monitors.push(monitorB);
  assert.equal(await storeB.monitorLeader(), 'mon-a');

  registration.release();
  await waitFor('h1 down', () => storeB.current().map.disks.every((d) => !d.up), 6000);
  // A's log line comes through a pipe, B's map through the etcd watch: either may be
  // first (under load the watch was, and the line had not arrived yet).
  await waitFor(
    'A acted',
    () => childLines.some((l) => l.event === 'monitor.host-down' && l.host === 'h1'),
    6000,
  );
  assert.equal(monitorB.isLeader(), false, 'B only waits');
  assert.ok(!bEvents.some((e) => e.event.startsWith('monitor.host-')), 'B did not act');

  child.kill('SIGKILL');
  const takeoverMs = await waitFor('B elected', () => monitorB.isLeader(), 6000);
  assert.ok(takeoverMs < 6000);
  assert.equal(await storeB.monitorLeader(), 'mon-b');

  await daemon.registerHost('h1', { address: '10.0.0.1:7000', rack: 'r1' }, { ttlS: TTL_S });
  await waitFor('h1 up', () => storeB.current().map.disks.every((d) => d.up && d.in), 3000);
  assert.ok(
    bEvents.some((e) => e.event === 'monitor.host-up' && e.host === 'h1'),
    'B acted',
  );
});
