// Proves the multi-host test harness (test/cluster/harness.ts) before any multi-host
// daemon exists: the private network comes up (hosts exchange TCP across namespaces) and
// is isolated from the root namespace (no address, route or link of the test subnet
// there, and no route out of a host namespace); a real etcd starts in its own namespace
// and answers put/get from a host namespace; today's single-host daemon, run in host
// h0's namespace on h0's address, serves NBD to real clients (nbdinfo, qemu-io, nbdcopy)
// run in host h1's namespace; kill -9 of a host and restart of its daemon keep flushed
// data; cutting a host makes it unreachable and restoring it makes it reachable again;
// cutting the path between two hosts (both ways) leaves each reachable by the others;
// destroy() leaves no namespace, process or temp dir behind; and the namespaces of a run
// killed with SIGKILL are found and removed by the next run. Tools are required: a
// missing one fails its test.

import { strict as assert } from 'node:assert';
import { spawn, spawnSync } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import {
  canReach,
  cistern,
  cleanupStaleNetworks,
  createNetwork,
  Daemon,
  Etcd,
  etcdctl,
  listNamespaces,
  NBD_PORT,
  startDaemon,
  startEchoServer,
  startEtcd,
  TestNetwork,
} from './harness';

const MiB = 1024 * 1024;
const ECHO_PORT = 7007;

describe('multi-host harness', () => {
  let network: TestNetwork;
  let etcd: Etcd;

  before(async () => {
    network = createNetwork({ hosts: 3 });
    etcd = await startEtcd(network);
  });

  after(async () => {
    await network?.destroy();
  });

  test('every host reaches every other host by its test address', async () => {
    const [h0, h1, h2] = [network.host(0), network.host(1), network.host(2)];
    assert.equal(new Set([h0.address, h1.address, h2.address]).size, 3);
    await Promise.all(network.hosts.map((host) => startEchoServer(network, host, ECHO_PORT)));
    for (const from of network.hosts) {
      for (const to of network.hosts) {
        if (from === to) continue;
        assert.ok(
          await canReach(network, from, to.address, ECHO_PORT),
          `${from.name} → ${to.name}`,
        );
      }
    }
  });

  test('the test subnet does not exist in the root namespace, nor a way out of a host', async () => {
    const root = rootNetworkState();
    const base = network.subnet.split('/')[0]?.split('.').slice(0, 3).join('.') as string;
    assert.ok(!root.addresses.some((a) => a.startsWith(`${base}.`)), root.addresses.join(' '));
    assert.ok(!root.routes.some((r) => r.startsWith(`${base}.`)), root.routes.join(' '));
    assert.ok(!root.links.some((l) => l.startsWith('p-') || l === 'br0'), root.links.join(' '));
    // A host has its link to the bridge and loopback, and a route to the subnet only.
    const links = JSON.parse((await network.exec(network.host(0), ['ip', '-j', 'link'])).stdout);
    assert.deepEqual(links.map((l: { ifname: string }) => l.ifname).sort(), ['lo', 'veth0']);
    const routes = JSON.parse((await network.exec(network.host(0), ['ip', '-j', 'route'])).stdout);
    assert.deepEqual(
      routes.map((r: { dst: string }) => r.dst),
      [network.subnet],
    );
  });

  test('etcd answers put and get from a host namespace', async () => {
    assert.match(
      etcd.url,
      new RegExp(`^http://${network.etcdHost.address.replace(/\./g, '\\.')}:`),
    );
    const value = crypto.randomBytes(8).toString('hex');
    await etcdctl(network, network.host(1), etcd, ['put', '/cistern-test/key', value]);
    const got = await etcdctl(network, network.host(2), etcd, [
      'get',
      '--print-value-only',
      '/cistern-test/key',
    ]);
    assert.equal(got.stdout.trim(), value);
  });

  describe('a single-host daemon in h0 serving clients in h1', () => {
    let daemon: Daemon;
    let uri: string;

    before(async () => {
      const h0 = network.host(0);
      const dataDir = fs.mkdtempSync(path.join(network.workDir, 'daemon-'));
      daemon = await startDaemon(network, h0, [
        ...['--data-dir', dataDir, '--disk', `${dataDir}/d0.img:256M`],
        ...['--nbd', `${h0.address}:${NBD_PORT}`, '--admin', '127.0.0.1:0'],
      ]);
      await cistern(network, h0, ['pool', 'create', 'p1', '--size', '1', '--data-dir', dataDir]);
      await cistern(network, h0, [
        ...['volume', 'create', 'vol', '--size', '64M', '--pool', 'p1', '--data-dir', dataDir],
      ]);
      uri = `nbd://${h0.address}:${NBD_PORT}/vol`;
    });

    test('it listens on h0 address, and nbdinfo in h1 sees the volume', async () => {
      await daemon.waitForLog(
        new RegExp(`nbd\\.listening address=${network.host(0).address}:`),
        1000,
      );
      const info = await network.exec(network.host(1), ['nbdinfo', '--size', uri]);
      assert.equal(Number(info.stdout.trim()), 64 * MiB);
    });

    test('qemu-io in h1 writes patterns and reads them back', async () => {
      const h1 = network.host(1);
      await network.exec(h1, qemuIo(uri, ['write -P 0xa5 0 1M', 'write -P 0x5a 3M 64k', 'flush']));
      const read = await network.exec(
        h1,
        qemuIo(uri, ['read -P 0xa5 0 1M', 'read -P 0x5a 3M 64k', 'read -P 0 1M 2M']),
      );
      assert.doesNotMatch(read.stdout + read.stderr, /Pattern verification failed/);
    });

    test('nbdcopy in h1 round-trips a file through the volume', async () => {
      const h1 = network.host(1);
      const source = path.join(network.workDir, 'source.bin');
      const back = path.join(network.workDir, 'back.bin');
      fs.writeFileSync(source, crypto.randomBytes(8 * MiB));
      await network.exec(h1, ['nbdcopy', '--flush', source, uri]);
      await network.exec(h1, ['nbdcopy', uri, back]);
      const copied = fs.readFileSync(back);
      assert.equal(copied.length, 64 * MiB);
      assert.ok(copied.subarray(0, 8 * MiB).equals(fs.readFileSync(source)));
    });

    test('killHost kills the daemon with -9; restart serves the flushed data again', async () => {
      const [h0, h1] = [network.host(0), network.host(1)];
      await network.exec(h1, qemuIo(uri, ['write -P 0x3c 8M 256k', 'flush']));
      const killed = await network.killHost(h0);
      assert.deepEqual(killed, [daemon]);
      assert.deepEqual(daemon.process.exit(), { code: null, signal: 'SIGKILL' });
      assert.equal(network.running(h0).length, 0);
      daemon = await daemon.restart();
      const read = await network.exec(h1, qemuIo(uri, ['read -P 0x3c 8M 256k']));
      assert.doesNotMatch(read.stdout + read.stderr, /Pattern verification failed/);
    });

    test('the daemon stops cleanly on SIGTERM', async () => {
      assert.deepEqual(await daemon.stop('SIGTERM'), { code: 0, signal: null });
      assert.equal(daemon.admin(), undefined);
    });
  });

  test('a cut host is unreachable, and reachable again once restored', async () => {
    const [h1, h2] = [network.host(1), network.host(2)];
    const port = ECHO_PORT + 1;
    await Promise.all([h1, h2].map((host) => startEchoServer(network, host, port)));
    assert.ok(await canReach(network, h1, h2.address, port));
    network.cutHost(h2);
    try {
      assert.ok(network.isCut(h2));
      assert.equal(await canReach(network, h1, h2.address, port, 500), false);
      assert.equal(await canReach(network, h2, h1.address, port, 500), false);
    } finally {
      network.restoreHost(h2);
    }
    assert.ok(await canReach(network, h1, h2.address, port, 3000));
    assert.ok(await canReach(network, h2, h1.address, port, 3000));
  });

  test('cutBetween cuts only the path between two hosts, both ways, until restored', async () => {
    const [h0, h1, h2] = [network.host(0), network.host(1), network.host(2)];
    const port = ECHO_PORT + 2;
    await Promise.all([h0, h1, h2].map((host) => startEchoServer(network, host, port)));
    network.cutBetween(h1, h2);
    try {
      assert.equal(await canReach(network, h1, h2.address, port, 500), false);
      assert.equal(await canReach(network, h2, h1.address, port, 500), false);
      assert.ok(await canReach(network, h0, h1.address, port));
      assert.ok(await canReach(network, h2, h0.address, port));
    } finally {
      network.restoreBetween(h2, h1);
    }
    assert.ok(await canReach(network, h1, h2.address, port, 3000));
    assert.ok(await canReach(network, h2, h1.address, port, 3000));
  });
});

describe('teardown', () => {
  test('destroy() removes every namespace, process and the work dir', async () => {
    const network = createNetwork({ hosts: 2, name: 'cstnd' });
    const echo = await startEchoServer(network, network.host(0), ECHO_PORT);
    assert.equal(network.existingNamespaces().length, 4); // bridge, etcd, h0, h1
    await network.destroy();
    assert.deepEqual(
      listNamespaces().filter((n) => n.startsWith(network.id)),
      [],
    );
    assert.notEqual(echo.exit(), undefined);
    assert.equal(fs.existsSync(network.workDir), false);
    const root = rootNetworkState();
    assert.ok(!root.links.some((l) => l.startsWith('p-h') || l === 'br0'), root.links.join(' '));
  });

  test('the namespaces of a run killed with SIGKILL are removed by the next run', async () => {
    // A child creates a network and a process in it, reports, and is then killed -9,
    // so neither destroy() nor its exit hook runs.
    const script = `
      const h = require(${JSON.stringify(path.join(__dirname, 'harness.js'))});
      const network = h.createNetwork({ hosts: 1, name: 'cstns' });
      h.startEchoServer(network, network.host(0), ${ECHO_PORT}).then((echo) => {
        console.log(JSON.stringify({ id: network.id, workDir: network.workDir, echo: echo.pid }));
      });`;
    const child = spawn(process.execPath, ['-e', script], { stdio: ['ignore', 'pipe', 'inherit'] });
    const line = await new Promise<string>((resolve) =>
      child.stdout.once('data', (d) => resolve(`${d}`)),
    );
    const crashed = JSON.parse(line) as { id: string; workDir: string; echo: number };
    child.kill('SIGKILL');
    await new Promise((resolve) => child.once('exit', resolve));
    assert.equal(listNamespaces().filter((n) => n.startsWith(crashed.id)).length, 3);

    const removed = cleanupStaleNetworks('cstns');
    assert.deepEqual(removed.sort(), [
      `${crashed.id}-br`,
      `${crashed.id}-etcd`,
      `${crashed.id}-h0`,
    ]);
    assert.deepEqual(
      listNamespaces().filter((n) => n.startsWith(crashed.id)),
      [],
    );
    assert.equal(fs.existsSync(crashed.workDir), false);
    assert.ok(
      await exitsWithin(crashed.echo, 2000),
      'the echo server in the stale namespace was killed',
    );
  });

  test('stale cleanup leaves the namespaces of a live run alone', async () => {
    const network = createNetwork({ hosts: 1, name: 'cstnl' });
    try {
      assert.deepEqual(cleanupStaleNetworks('cstnl'), []);
      assert.equal(network.existingNamespaces().length, 3);
    } finally {
      await network.destroy();
    }
  });
});

function qemuIo(uri: string, commands: string[]): string[] {
  return ['qemu-io', '-f', 'raw', ...commands.flatMap((c) => ['-c', c]), uri];
}

/** Addresses, route destinations and link names of the root namespace. */
function rootNetworkState(): { addresses: string[]; routes: string[]; links: string[] } {
  const json = (args: string[]): unknown => {
    const result = spawnSync('ip', ['-j', ...args], { encoding: 'utf8' });
    assert.equal(result.status, 0, result.stderr);
    return JSON.parse(result.stdout);
  };
  const addrs = json(['-4', 'addr']) as Array<{ addr_info: Array<{ local: string }> }>;
  const routes = json(['-4', 'route', 'show', 'table', 'all']) as Array<{ dst: string }>;
  const links = json(['link']) as Array<{ ifname: string }>;
  return {
    addresses: addrs.flatMap((a) => a.addr_info.map((i) => i.local)),
    routes: routes.map((r) => r.dst),
    links: links.map((l) => l.ifname),
  };
}

/** Whether the process is gone or a zombie (killed, not yet reaped by its new parent). */
async function exitsWithin(pid: number, timeoutMs: number): Promise<boolean> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    let state: string;
    try {
      state = fs.readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1]?.[0] ?? '';
    } catch {
      return true;
    }
    if (state === 'Z') return true;
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
  return false;
}
