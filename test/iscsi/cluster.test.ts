// Proves iSCSI from any host of a real multi-host cluster (test/cluster/harness.ts: a
// real etcd and two `cistern daemon --etcd … --iscsi` in their own network namespaces,
// a pool of size 2 across hosts): every host's portal discovers every volume; a pattern
// written with qemu-io through h0's portal reads back with qemu-img through h1's (and
// the unwritten space as zeros); and access rules set with `cistern --etcd volume
// access` — no daemon involved — are enforced by both daemons at the next login: CHAP
// with the right secret logs in on either host, a wrong one and a stranger's initiator
// name are refused. Every daemon then stops cleanly.

import { strict as assert } from 'node:assert';
import fs from 'node:fs';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { targetNameOf } from '../../src/cluster/iscsi-access';
import {
  Daemon,
  Etcd,
  ExecResult,
  Host,
  NBD_PORT,
  TestNetwork,
  cistern,
  createNetwork,
  startDaemon,
  startEtcd,
} from '../cluster/harness';

const HOSTS = 2;
const PEER_PORT = 10811;
const ISCSI_PORT = 3260;
const ALLOWED = 'iqn.2026-01.io.cistern.test:hypervisor';
const CHAP = { user: 'hv', secret: 'cluster-chap-secret' };

describe('iSCSI on a two-host cluster', () => {
  let network: TestNetwork;
  let etcd: Etcd;
  let daemons: Daemon[];

  const admin = (args: string[]): Promise<ExecResult> =>
    cistern(network, network.host(0), ['--etcd', etcd.url, ...args]);
  const portal = (host: Host): string => `${host.address}:${ISCSI_PORT}`;
  const url = (host: Host, volume: string, chap?: { user: string; secret: string }): string =>
    `iscsi://${chap ? `${chap.user}%${chap.secret}@` : ''}${portal(host)}/${targetNameOf(volume)}/0`;

  before(async () => {
    network = createNetwork({ hosts: HOSTS });
    etcd = await startEtcd(network);
    const secretFile = path.join(network.workDir, 'cluster.secret');
    await admin(['cluster', 'init', '--secret-file', secretFile]);
    daemons = await Promise.all(
      network.hosts.slice(0, HOSTS).map((host) => {
        const dataDir = path.join(network.workDir, `data-${host.name}`);
        return startDaemon(network, host, [
          ...['--etcd', etcd.url, '--host-id', host.name],
          ...['--listen', `${host.address}:${PEER_PORT}`, '--secret-file', secretFile],
          ...['--data-dir', dataDir, '--disk', `${dataDir}/disk0.img:256M`],
          ...['--nbd', `${host.address}:${NBD_PORT}`, '--admin', '127.0.0.1:0'],
          ...['--iscsi', portal(host)],
        ]);
      }),
    );
    await admin(['pool', 'create', 'rep', '--size', '2', '--min-size', '1']);
    for (const volume of ['shared', 'guarded']) {
      await admin(['volume', 'create', volume, '--size', '16M', '--pool', 'rep']);
    }
  });

  after(async () => {
    await network?.destroy();
  });

  test('every host discovers every volume', async () => {
    for (const host of network.hosts.slice(0, HOSTS)) {
      const listing = (await network.exec(host, ['iscsi-ls', `iscsi://${portal(host)}`])).stdout;
      for (const volume of ['shared', 'guarded']) {
        assert.ok(
          listing.includes(`Target:${targetNameOf(volume)} Portal:${portal(host)},1`),
          `${host.name}:\n${listing}`,
        );
      }
    }
  });

  test('written through h0, read back through h1', async () => {
    const [h0, h1] = [network.host(0), network.host(1)];
    const write = ['qemu-io', '-f', 'raw', '-c', 'write -P 0xc5 1M 256k', url(h0, 'shared')];
    await network.exec(h0, write);
    const copy = path.join(network.workDir, 'shared.raw');
    await network.exec(h1, ['qemu-img', 'convert', '-O', 'raw', url(h1, 'shared'), copy]);
    const read = fs.readFileSync(copy);
    assert.equal(read.length, 16 * 2 ** 20);
    assert.ok(read.subarray(2 ** 20, 2 ** 20 + 262144).every((byte) => byte === 0xc5));
    assert.ok(
      read.subarray(0, 2 ** 20).every((byte) => byte === 0),
      'unwritten space is zeros',
    );
  });

  test('rules set through etcd are enforced by every daemon at the next login', async () => {
    const secretFile = path.join(network.workDir, 'hv.secret');
    fs.writeFileSync(secretFile, CHAP.secret, { mode: 0o600 });
    const set = await admin([
      ...['volume', 'access', 'guarded', '--allow', ALLOWED],
      ...['--chap-user', CHAP.user, '--chap-secret-file', secretFile, '--json'],
    ]);
    assert.deepEqual(JSON.parse(set.stdout).allowedInitiators, [ALLOWED]);
    const inq = (host: Host, target: string, name: string): Promise<ExecResult> =>
      network.exec(host, ['iscsi-inq', '-i', name, target], { check: false });
    for (const host of network.hosts.slice(0, HOSTS)) {
      const ok = await inq(host, url(host, 'guarded', CHAP), ALLOWED);
      assert.equal(ok.code, 0, `${host.name}: ${ok.stderr}`);
      const wrong = await inq(
        host,
        url(host, 'guarded', { ...CHAP, secret: 'wrong-secret-99' }),
        ALLOWED,
      );
      assert.match(wrong.stderr, /Authentication failure/, `${host.name}: a wrong secret`);
      const stranger = await inq(host, url(host, 'guarded', CHAP), 'iqn.2026-01.io.cistern.test:x');
      assert.match(stranger.stderr, /Authorization failure/, `${host.name}: a stranger`);
    }
  });

  test('every daemon stops cleanly', async () => {
    for (const daemon of daemons) {
      const exit = await daemon.stop();
      assert.equal(exit.code, 0, daemon.log().slice(-40).join('\n'));
      assert.ok(daemon.log().some((line) => /iscsi\.closed/.test(line)));
    }
  });
});
