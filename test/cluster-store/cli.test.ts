// Proves the cluster admin CLI against a real etcd: `cluster init` writes a 0600 secret
// whose fingerprint is stored in the state, and refuses a second run (keeping no new
// file) and an existing secret file (creating nothing); with --etcd (before or after the
// command words, or $CISTERN_ETCD) pool create/ls, volume create/ls/info/resize/rm,
// host ls and status --json work on hosts registered through registerHost; status
// reports hosts up/down and PG states, incomplete PGs with what to do, and pg
// accept-loss records the acceptance (waiting for a daemon to serve it gives up when
// none does; the served PG is no longer incomplete; refused where nothing is); a
// real `cistern` process exits by itself when done; an unreachable etcd and a missing
// cluster give one clear line and exit 1; and
// without --etcd, host ls lists the one host of a local daemon from its status.

import { strict as assert } from 'node:assert';
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, test } from 'node:test';
import { ClusterStatusReport, HostInfo } from '../../src/cluster/cluster-admin';
import { EtcdClusterStore, HostRegistration } from '../../src/cluster/etcd';
import { readSecretFile, secretFingerprint } from '../../src/cluster/secret';
import * as state from '../../src/cluster/state';
import type { PoolInfo, VolumeInfo } from '../../src/volume/admin';
import { startDaemon } from '../../src/daemon/daemon';
import { main } from '../../tools/cli';
import { FakeStore } from '../daemon/fake-store';
import { EtcdServer, startEtcd } from './etcd-server';

const GiB = 2 ** 30;
const bin = path.join(__dirname, '..', '..', '..', 'bin', 'cistern');
let etcd: EtcdServer;
let dir: string;
let daemonStore: EtcdClusterStore;
const registrations = new Map<string, HostRegistration>();

async function cli(...args: string[]): Promise<{ code: number; out: string; err: string }> {
  let out = '';
  let err = '';
  const code = await main(args, {
    out: (line) => (out += line + '\n'),
    err: (line) => (err += line + '\n'),
  });
  return { code, out, err };
}

async function ok(...args: string[]): Promise<string> {
  const result = await cli(...args);
  assert.equal(result.code, 0, `cistern ${args.join(' ')}: ${result.err}`);
  return result.out;
}

before(async () => {
  etcd = await startEtcd();
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'cistern-cluster-cli-'));
});

after(async () => {
  await daemonStore?.close();
  await etcd.stop();
  fs.rmSync(dir, { recursive: true, force: true });
});

test('cluster init writes a 0600 secret, stores its fingerprint, and refuses to run twice', async () => {
  const secretFile = path.join(dir, 'cluster.secret');
  const out = await ok('cluster', 'init', '--etcd', etcd.url, '--secret-file', secretFile);
  assert.match(out, /^created cluster at http:\/\/127\.0\.0\.1:\d+ under \/cistern\/ \(epoch 1\)/);
  assert.equal(fs.statSync(secretFile).mode & 0o777, 0o600);
  const secret = readSecretFile(secretFile);
  daemonStore = await EtcdClusterStore.open({ endpoints: [etcd.url] });
  assert.equal(daemonStore.current().secretFingerprint, secretFingerprint(secret));

  const again = path.join(dir, 'again.secret');
  const second = await cli('cluster', 'init', '--etcd', etcd.url, '--secret-file', again);
  assert.equal(second.code, 1);
  assert.equal(
    second.err,
    `cistern: cluster already initialised at ${etcd.url} under /cistern/ (epoch 1)\n`,
  );
  assert.ok(!fs.existsSync(again), 'the refused run leaves no secret file behind');

  const reused = await cli(
    'cluster',
    'init',
    '--etcd',
    etcd.url,
    '--secret-file',
    secretFile,
    '--prefix',
    '/other/',
  );
  assert.equal(reused.code, 1);
  assert.match(reused.err, /already exists; it may hold another cluster's secret/);
  assert.deepEqual(readSecretFile(secretFile), secret, 'the existing file is untouched');
  const missing = await cli('--etcd', etcd.url, '--etcd-prefix', '/other/', 'volume', 'ls');
  assert.equal(missing.code, 1);
  assert.match(missing.err, /no Cistern cluster at .* run cistern cluster init --etcd/);
});

test('hosts registered by daemons show in host ls, alive, with their disks', async () => {
  for (const n of [1, 2, 3]) {
    const host = `h${n}`;
    registrations.set(
      host,
      await daemonStore.registerHost(
        host,
        { address: `10.0.0.${n}:7000`, nbd: `10.0.0.${n}:10809`, rack: `r${n}` },
        { ttlS: 5 },
      ),
    );
    await daemonStore.update((s) => {
      for (const d of [1, 2]) {
        state.addDisk(s, host, {
          path: `/dev/${host}d${d}`,
          uuid: `${host}${d}`,
          sizeBytes: 4 * GiB,
        });
      }
    });
  }
  const text = await ok('--etcd', etcd.url, 'host', 'ls');
  assert.deepEqual(text.split('\n')[0]?.split(/\s+/), [
    'HOST',
    'RACK',
    'ADDRESS',
    'ALIVE',
    'DISKS',
    'UP',
    'NBD',
  ]);
  assert.match(text, /^h2\s+r2\s+10\.0\.0\.2:7000\s+yes\s+2\/2\s+10\.0\.0\.2:10809$/m);
  const hosts = JSON.parse(await ok('host', 'ls', '--json', '--etcd', etcd.url)) as HostInfo[];
  assert.deepEqual(
    hosts.map((h) => [h.id, h.rack, h.alive, h.disksUp, h.disksTotal]),
    [
      ['h1', 'r1', true, 2, 2],
      ['h2', 'r2', true, 2, 2],
      ['h3', 'r3', true, 2, 2],
    ],
  );
});

test('pool create and ls; an impossible pool is refused', async () => {
  const created = await ok(
    '--etcd',
    etcd.url,
    'pool',
    'create',
    'rbd',
    '--size',
    '3',
    '--min-size',
    '2',
    '--failure-domain',
    'host',
    '--pgs',
    '32',
  );
  assert.equal(
    created,
    'created pool rbd: 3 copies (writes need 2), failure domain host, 32 PGs\n',
  );
  const refused = await cli('--etcd', etcd.url, 'pool', 'create', 'wide', '--size', '4');
  assert.equal(refused.code, 1);
  assert.match(refused.err, /needs 4 distinct hosts .* but the map has 3/);
  const pools = JSON.parse(await ok('pool', 'ls', '--etcd', etcd.url, '--json')) as PoolInfo[];
  assert.deepEqual(
    pools.map((p) => [p.name, p.size, p.minSize, p.failureDomain, p.pgCount, p.pgsDegraded]),
    [['rbd', 3, 2, 'host', 32, 0]],
  );
});

test('volume create, ls, info, resize and rm through etcd ($CISTERN_ETCD works too)', async () => {
  const created = await ok('--etcd', etcd.url, 'volume', 'create', 'vm1', '--size', '10G');
  assert.match(
    created,
    /^created volume vm1: 10\.0 GiB in pool rbd\nconnect: nbd:\/\/10\.0\.0\.\d:10809\/vm1\n$/,
  );
  process.env['CISTERN_ETCD'] = etcd.url;
  try {
    const list = JSON.parse(await ok('volume', 'ls', '--json')) as VolumeInfo[];
    assert.deepEqual(
      list.map((v) => [v.name, v.pool, v.sizeBytes]),
      [['vm1', 'rbd', 10 * GiB]],
    );
  } finally {
    delete process.env['CISTERN_ETCD'];
  }
  const info = JSON.parse(await ok('volume', 'info', 'vm1', '--etcd', etcd.url, '--json'));
  assert.equal(info.sizeBytes, 10 * GiB);
  assert.match(
    await ok('--etcd', etcd.url, 'volume', 'resize', 'vm1', '--size', '20G'),
    /10\.0 GiB → 20\.0 GiB/,
  );
  const shrink = await cli('--etcd', etcd.url, 'volume', 'resize', 'vm1', '--size', '5G');
  assert.equal(shrink.code, 2);
  assert.match(shrink.err, /--allow-shrink/);
  const shrinkAllowed = await cli(
    '--etcd',
    etcd.url,
    'volume',
    'resize',
    'vm1',
    '--size',
    '5G',
    '--allow-shrink',
  );
  assert.equal(shrinkAllowed.code, 1);
  assert.match(shrinkAllowed.err, /not supported yet/);
  assert.equal(daemonStore.current().volumes[0]?.sizeBytes, 20 * GiB, 'daemons see the change');
  assert.match(await ok('--etcd', etcd.url, 'volume', 'rm', 'vm1'), /removed volume vm1/);
  assert.match(await ok('--etcd', etcd.url, 'volume', 'ls'), /^no volumes/);
  const gone = await cli('--etcd', etcd.url, 'volume', 'info', 'vm1');
  assert.equal(gone.code, 1);
  assert.equal(gone.err, 'cistern: no volume named "vm1"\n');
});

test('status --json: hosts up and down, PG states, capacity', async () => {
  const healthy = JSON.parse(
    await ok('--etcd', etcd.url, 'status', '--json'),
  ) as ClusterStatusReport;
  assert.equal(healthy.health, 'ok');
  assert.deepEqual(healthy.hostsUp, ['h1', 'h2', 'h3']);
  assert.deepEqual(healthy.pgStates, {
    'active+clean': 32,
    'active+degraded': 0,
    inactive: 0,
    incomplete: 0,
  });
  assert.equal(healthy.capacityBytes, 6 * 4 * GiB);

  // h3's daemon stops cleanly (lease revoked) and its disks are marked down.
  await registrations.get('h3')?.revoke();
  await daemonStore.update((s) => {
    for (const d of s.map.disks) if (d.host === 'h3') state.markDiskDown(s, d.id, 'host h3 down');
  });
  const degraded = JSON.parse(
    await ok('status', '--json', '--etcd', etcd.url),
  ) as ClusterStatusReport;
  assert.equal(degraded.health, 'degraded');
  assert.deepEqual([degraded.hostsUp, degraded.hostsDown], [['h1', 'h2'], ['h3']]);
  assert.deepEqual(degraded.pgStates, {
    'active+clean': 0,
    'active+degraded': 32,
    inactive: 0,
    incomplete: 0,
  });
  assert.equal(degraded.capacityBytes, 4 * 4 * GiB);
  const text = await ok('--etcd', etcd.url, 'status');
  assert.match(text, /^health: degraded$/m);
  assert.match(text, /^hosts: 2 up, 1 down \(h3\)$/m);
  assert.match(text, /^pgs: 0 active\+clean, 32 active\+degraded, 0 inactive, 0 incomplete$/m);
});

test('status names incomplete PGs; pg accept-loss records the acceptance, refused elsewhere', async () => {
  // h3 comes back (its disks stale everywhere), then h1 and h2 go: in every PG the only
  // members known to hold every acknowledged write are down, and h3's copy is stale.
  const hostDisks = (host: string) =>
    daemonStore
      .current()
      .map.disks.filter((d) => d.host === host)
      .map((d) => d.id);
  await daemonStore.update((s) => {
    for (const d of s.map.disks) if (d.host === 'h3') d.up = true;
  });
  await daemonStore.update((s) => {
    for (const id of [...hostDisks('h1'), ...hostDisks('h2')])
      state.markDiskDown(s, id, 'EIO: failed');
  });
  const report = JSON.parse(
    await ok('--etcd', etcd.url, 'status', '--json'),
  ) as ClusterStatusReport;
  assert.equal(report.health, 'unavailable');
  assert.equal(report.pgStates.incomplete, 32);
  const text = await ok('--etcd', etcd.url, 'status');
  assert.match(text, /^pgs: 0 active\+clean, 0 active\+degraded, 0 inactive, 32 incomplete$/m);
  assert.match(
    text,
    /PG rbd\/7 is incomplete: only disk\(s\) .*EIO: failed.*cistern pg accept-loss rbd\/7/,
  );

  // No daemon runs here: waiting for one to serve the PG gives up, the acceptance stays.
  const waited = await cli('--etcd', etcd.url, 'pg', 'accept-loss', 'rbd/8', '--timeout', '1');
  assert.equal(waited.code, 1);
  assert.match(waited.err, /PG rbd\/8: loss accepted, but no daemon has served it yet/);
  const accepted = await cli('--etcd', etcd.url, 'pg', 'accept-loss', 'rbd/7', '--no-wait');
  assert.equal(accepted.code, 0, accepted.err);
  assert.match(accepted.out, /^PG rbd\/7: loss accepted; the daemon peering it serves/);
  const pending = JSON.parse(
    await ok('--etcd', etcd.url, 'status', '--json'),
  ) as ClusterStatusReport;
  assert.equal(pending.pgStates.incomplete, 32, 'incomplete until a daemon serves a copy');
  assert.match(
    await ok('--etcd', etcd.url, 'status'),
    /PG rbd\/7 is incomplete: .*Its loss was accepted: the daemon peering it serves/,
  );
  // As the daemon peering it does once it has asked every member's PG log.
  await daemonStore.update((s) => {
    const pool = s.map.pools.find((p) => p.name === 'rbd')!;
    const pg = state.incompletePgs(s).find((i) => i.pool === pool.id && i.pg === 7)!;
    assert.ok(state.serveAcceptedLoss(s, pool.id, 7, pg.members[0]!));
  });
  const after = JSON.parse(await ok('--etcd', etcd.url, 'status', '--json')) as ClusterStatusReport;
  assert.equal(after.pgStates.incomplete, 31);
  assert.equal(
    after.pgStates.inactive,
    1,
    'one good member: serving needs min-size after recovery',
  );
  const again = await cli('--etcd', etcd.url, 'pg', 'accept-loss', 'rbd/7');
  assert.equal(again.code, 1);
  assert.match(again.err, /PG 1:7 is not incomplete/);
  const malformed = await cli('--etcd', etcd.url, 'pg', 'accept-loss', '7');
  assert.equal(malformed.code, 2, 'a usage mistake');
  assert.match(malformed.err, /give POOL\/PG/);

  // Put the hosts back for the tests after this one.
  await daemonStore.update((s) => {
    for (const d of s.map.disks) {
      d.up = true;
      delete s.disks[String(d.id)]!.error;
    }
    s.staleMembers = {};
    s.staleSince = {};
    s.authoritativeMembers = {};
    s.acceptedLosses = {};
  });
});

test('a real cistern process exits by itself; unreachable etcd is one clear line', async () => {
  const run = (args: string[]) =>
    new Promise<{ code: number | null; stdout: string; stderr: string }>((resolve) => {
      const child = spawn(process.execPath, [bin, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
      let stdout = '';
      let stderr = '';
      child.stdout.setEncoding('utf8').on('data', (chunk: string) => (stdout += chunk));
      child.stderr.setEncoding('utf8').on('data', (chunk: string) => (stderr += chunk));
      const killer = setTimeout(() => child.kill('SIGKILL'), 10_000);
      child.on('exit', (code) => {
        clearTimeout(killer);
        resolve({ code, stdout, stderr });
      });
    });
  const status = await run(['--etcd', etcd.url, 'status', '--json']);
  assert.equal(status.code, 0, status.stderr);
  assert.equal(JSON.parse(status.stdout).hosts, 3);
  const unreachable = await run(['--etcd', 'http://127.0.0.1:1', 'volume', 'ls']);
  assert.equal(unreachable.code, 1);
  assert.match(
    unreachable.stderr,
    /^cistern: cannot read the cluster state: etcd at http:\/\/127\.0\.0\.1:1 did not answer/,
  );
});

test("without --etcd, host ls lists the local daemon's host from its status", async () => {
  const store = new FakeStore();
  const disk = (id: number, up: boolean) => ({
    id,
    path: `/d${id}`,
    host: 'local',
    up,
    in: true,
    sizeBytes: GiB,
    usedBytes: 0,
  });
  store.statusOverride = { ...(await store.status()), disks: [disk(0, true), disk(1, false)] };
  const dataDir = path.join(dir, 'local');
  const running = await startDaemon({
    dataDir,
    disks: [],
    nbd: { host: '127.0.0.1', port: 0 },
    admin: { host: '127.0.0.1', port: 0 },
    log: () => {},
    openStore: async () => store,
  });
  try {
    const hosts = JSON.parse(await ok('host', 'ls', '--json', '--data-dir', dataDir)) as HostInfo[];
    assert.deepEqual(
      hosts.map((h) => [h.id, h.alive, h.disksUp, h.disksTotal]),
      [['local', true, 1, 2]],
    );
  } finally {
    await running.stop();
  }
});
