// Proves a real multi-host cluster on one machine: a real etcd and four `cistern daemon
// --etcd` processes, each in its own network namespace with its own address
// (harness.ts), started at the same moment; a pool of size 3, min-size 2, failure
// domain host. Then, with real clients run in host namespaces:
// - data written through one host's NBD export reads back through another's: nbdcopy
//   of random data compared byte for byte, qemu-io patterns checked with `read -P`,
//   fio random writes with verify=crc32c and a verify-only pass through another host
//   (and each check is shown able to fail: a wrong pattern, an unwritten volume);
// - security and fencing, from a fifth namespace that runs no daemon: a daemon with
//   another cluster's secret is refused at start with a clear message; a peer
//   connection with a wrong secret is refused (EPERM); a DiskWrite with the right secret
//   on epoch − 1 is refused with STALE_EPOCH and the replica block it aimed at is
//   unchanged, while the same message on the current epoch is accepted (control);
// - a burst of garbage on a daemon's peer port (random bytes, truncated and absurd
//   frames, before and after authentication) while NBD I/O goes through that daemon:
//   the I/O completes and verifies, the daemon logs no bug and keeps running;
// - finally, after every daemon stops cleanly (SIGTERM, exit 0), each host's disk store
//   is opened read-only from this process: every object of every written volume is on
//   exactly three hosts, and the volumes hold exactly the objects that were written.
// A missing tool or a failing client fails the test; nothing is skipped.

import { strict as assert } from 'node:assert';
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { openDevice } from '../../src/engine';
import { ObjectStore } from '../../src/store/object-store';
import {
  cistern,
  createNetwork,
  Daemon,
  Etcd,
  ExecResult,
  Host,
  NBD_PORT,
  sleep,
  startDaemon,
  startEtcd,
  TestNetwork,
} from './harness';

const MiB = 1024 * 1024;
const OBJECT_BYTES = 4 * MiB;
const CLUSTER_HOSTS = 4;
const PEER_PORT = 10811;
const VOLUME_BYTES = 32 * MiB;
/** The peer probe, compiled beside this file. */
const PROBE = path.join(__dirname, 'peer-probe.js');

interface DiskStatus {
  id: number;
  path: string;
  host: string;
  up: boolean;
}

describe('a four-host cluster in network namespaces', () => {
  let network: TestNetwork;
  let etcd: Etcd;
  let secretFile: string;
  let daemons: Daemon[];
  /** h4: a namespace on the same network that runs no daemon (probes, intruders). */
  let outsider: Host;
  const dataDirs = new Map<string, string>();
  const written = new Map<string, number[]>();

  const admin = (args: string[]): Promise<ExecResult> =>
    cistern(network, network.host(0), ['--etcd', etcd.url, ...args]);
  const json = async <T>(args: string[]): Promise<T> =>
    JSON.parse((await admin([...args, '--json'])).stdout) as T;
  const uri = (host: Host, volume: string): string => `nbd://${host.address}:${NBD_PORT}/${volume}`;
  const peerAddress = (host: Host): string => `${host.address}:${PEER_PORT}`;
  const secretHex = (): string => fs.readFileSync(secretFile, 'utf8').trim();

  const daemonArgs = (host: Host, secret: string): string[] => {
    const dataDir = path.join(network.workDir, `data-${host.name}`);
    return [
      ...['--etcd', etcd.url, '--host-id', host.name, '--listen', peerAddress(host)],
      ...['--secret-file', secret, '--disk', `${dataDir}/disk0.img:512M`],
      ...['--data-dir', dataDir, '--nbd', `${host.address}:${NBD_PORT}`],
      ...['--admin', '127.0.0.1:0'],
    ];
  };

  /** Runs the peer probe in the host's namespace; its one JSON line, as a record. */
  const probe = async (
    host: Host,
    request: Record<string, unknown>,
  ): Promise<Record<string, unknown>> => {
    const result = await network.exec(host, [process.execPath, PROBE, JSON.stringify(request)]);
    return JSON.parse(result.stdout.trim().split('\n').pop() as string);
  };

  before(async () => {
    network = createNetwork({ hosts: CLUSTER_HOSTS + 1 });
    outsider = network.host(CLUSTER_HOSTS);
    etcd = await startEtcd(network);
    secretFile = path.join(network.workDir, 'cluster.secret');
    await cistern(network, network.host(0), [
      ...['cluster', 'init', '--etcd', etcd.url, '--secret-file', secretFile],
    ]);
    const hosts = network.hosts.slice(0, CLUSTER_HOSTS);
    for (const host of hosts)
      dataDirs.set(host.name, path.join(network.workDir, `data-${host.name}`));
    // All at once, as a cluster's hosts boot: their disks join the map concurrently.
    daemons = await Promise.all(
      hosts.map((host) => startDaemon(network, host, daemonArgs(host, secretFile))),
    );
    await admin([
      ...['pool', 'create', 'rep', '--size', '3', '--min-size', '2'],
      ...['--failure-domain', 'host'],
    ]);
    for (const volume of ['copy', 'patterns', 'fio', 'blank', 'fence']) {
      await admin(['volume', 'create', volume, '--size', `${VOLUME_BYTES}`, '--pool', 'rep']);
    }
  });

  after(async () => {
    await network?.destroy();
  });

  test('four daemons joined at once: every host alive with its disk up', async () => {
    const hosts = await json<Array<{ id: string; alive: boolean; disksUp: number }>>([
      'host',
      'ls',
    ]);
    assert.deepEqual(
      hosts.map((h) => [h.id, h.alive, h.disksUp]).sort(),
      ['h0', 'h1', 'h2', 'h3'].map((id) => [id, true, 1]),
    );
    const status = await json<{ disks: DiskStatus[] }>(['status']);
    assert.equal(new Set(status.disks.map((d) => d.id)).size, CLUSTER_HOSTS);
    assert.deepEqual(status.disks.map((d) => d.host).sort(), ['h0', 'h1', 'h2', 'h3']);
  });

  test('nbdcopy: random data written through h0 reads back byte for byte through h2', async () => {
    const [h0, h2] = [network.host(0), network.host(2)];
    const source = path.join(network.workDir, 'copy-source.bin');
    const back = path.join(network.workDir, 'copy-back.bin');
    const data = crypto.randomBytes(16 * MiB);
    fs.writeFileSync(source, data);
    await network.exec(h0, ['nbdcopy', '--flush', source, uri(h0, 'copy')]);
    await network.exec(h2, ['nbdcopy', uri(h2, 'copy'), back]);
    const copied = fs.readFileSync(back);
    assert.equal(copied.length, VOLUME_BYTES);
    assert.ok(copied.subarray(0, data.length).equals(data), 'the copy differs from the source');
    assert.ok(copied.subarray(data.length).equals(Buffer.alloc(VOLUME_BYTES - data.length)));
    written.set('copy', [0, 1, 2, 3]);
  });

  test('qemu-io: patterns written through h1 read back with read -P through h3', async () => {
    const [h1, h3] = [network.host(1), network.host(3)];
    // Across an object boundary (4 MiB), unaligned, and a FUA write.
    await network.exec(
      h1,
      qemuIo(uri(h1, 'patterns'), [
        'write -P 0xa5 0 1M',
        'write -P 0x5a 4095k 2M',
        'write -P 0x3c 12345 777',
        'write -f -P 0x66 20M 64k',
        'flush',
      ]),
    );
    const good = await network.exec(
      h3,
      qemuIo(uri(h3, 'patterns'), [
        'read -P 0xa5 0 12288',
        'read -P 0x3c 12345 777',
        'read -P 0xa5 13122 1035454',
        'read -P 0x5a 4095k 2M',
        'read -P 0x66 20M 64k',
        'read -P 0 24M 8M',
      ]),
    );
    assert.doesNotMatch(good.stdout + good.stderr, /Pattern verification failed/);
    assert.equal((good.stdout.match(/^read /gm) ?? []).length, 6, good.stdout);
    // read -P does compare: the wrong pattern is caught.
    const wrong = await network.exec(h3, qemuIo(uri(h3, 'patterns'), ['read -P 0x5a 0 4k']), {
      check: false,
    });
    assert.match(wrong.stdout + wrong.stderr, /Pattern verification failed/);
    written.set('patterns', [0, 1, 5]);
  });

  test('fio: crc32c-verified random writes through h2, then a verify-only pass through h3', async () => {
    const [h2, h3] = [network.host(2), network.host(3)];
    const job = (host: Host, volume: string, extra: string[]): string[] => [
      'fio',
      '--name=verify',
      '--ioengine=nbd',
      `--uri=${uri(host, volume)}`,
      '--rw=randwrite',
      '--bs=4k',
      '--iodepth=16',
      `--size=${VOLUME_BYTES}`,
      '--verify=crc32c',
      '--verify_fatal=1',
      // A failed verify (the control below) would leave a state file in the cwd.
      '--verify_state_save=0',
      '--output-format=json',
      ...extra,
    ];
    // Writes every 4 KiB block once in random order, then reads them back and checks
    // them through the same host.
    const write = await network.exec(h2, job(h2, 'fio', []));
    assert.equal(fioBytes(write.stdout, 'write'), VOLUME_BYTES);
    // The same job regenerates the same blocks and only reads and checks them.
    const verify = await network.exec(h3, job(h3, 'fio', ['--verify_only']));
    assert.equal(fioBytes(verify.stdout, 'read'), VOLUME_BYTES);
    // The verify pass can fail: against a volume never written it does.
    const blank = await network.exec(h3, job(h3, 'blank', ['--verify_only']), { check: false });
    assert.notEqual(blank.code, 0, 'verify-only of an unwritten volume passed');
    assert.match(blank.stdout + blank.stderr, /verify/i);
    written.set(
      'fio',
      Array.from({ length: VOLUME_BYTES / OBJECT_BYTES }, (_, i) => i),
    );
  });

  test('a daemon holding another cluster’s secret is refused at start', async () => {
    const wrongSecret = path.join(network.workDir, 'other.secret');
    fs.writeFileSync(wrongSecret, crypto.randomBytes(32).toString('hex') + '\n', { mode: 0o600 });
    const daemon = await startDaemon(network, outsider, daemonArgs(outsider, wrongSecret), {
      ready: null,
    });
    const exit = await daemon.process.exited;
    assert.notEqual(exit.code, 0);
    assert.match(daemon.process.stderr(), /secret file does not belong to this cluster/);
    assert.doesNotMatch(daemon.process.stderr(), /internal error|AssertionError/);
    const hosts = await json<Array<{ id: string }>>(['host', 'ls']);
    assert.ok(!hosts.some((h) => h.id === outsider.name), 'the refused host joined the map');
  });

  test('a peer connection with a wrong secret is refused (EPERM); the right one is served', async () => {
    const target = peerAddress(network.host(1));
    const wrong = await probe(outsider, {
      mode: 'auth',
      address: target,
      secretHex: crypto.randomBytes(32).toString('hex'),
    });
    assert.equal(wrong.connected, false, JSON.stringify(wrong));
    assert.equal(wrong.code, 'EPERM', JSON.stringify(wrong));
    const right = await probe(outsider, { mode: 'auth', address: target, secretHex: secretHex() });
    assert.deepEqual(right, { connected: true });
  });

  test('a DiskWrite on epoch − 1 is refused with STALE_EPOCH; the replica is unchanged', async (t) => {
    const h2 = network.host(2);
    const status = await json<{ disks: DiskStatus[] }>(['status']);
    const disk = status.disks.find((d) => d.host === h2.name);
    assert.ok(disk?.up, 'h2 has an up disk');
    const pools = await json<Array<{ id: number; name: string }>>(['pool', 'ls']);
    const volume = await json<{ id: number }>(['volume', 'info', 'copy']);
    const result = await probe(outsider, {
      mode: 'stale-write',
      address: peerAddress(h2),
      secretHex: secretHex(),
      disk: disk.id,
      pool: pools.find((p) => p.name === 'rep')?.id,
      volume: volume.id,
    });
    const detail = JSON.stringify(result);
    t.diagnostic(detail);
    assert.equal(result.staleCode, 'STALE_EPOCH', detail);
    assert.equal(result.staleEpochInReply, result.currentEpoch, detail);
    assert.equal(result.after, result.before, `the stale write changed the replica: ${detail}`);
    assert.equal(result.beforeIsForged, false, detail);
    assert.equal(result.controlAccepted, true, `control write on the current epoch: ${detail}`);
    // And the block still reads as nbdcopy's data through the cluster.
    const back = path.join(network.workDir, 'copy-back-2.bin');
    await network.exec(h2, ['nbdcopy', uri(h2, 'copy'), back]);
    const before = fs.readFileSync(path.join(network.workDir, 'copy-back.bin'));
    assert.ok(fs.readFileSync(back).equals(before), 'the volume changed');
  });

  test('garbage on a daemon’s peer port: it keeps serving NBD I/O and logs no bug', async (t) => {
    const h1 = network.host(1);
    const victim = daemons[1] as Daemon;
    const logFrom = victim.log().length;
    const io = (async () => {
      for (let round = 0; round < 6; round += 1) {
        const pattern = `0x${(0x10 + round).toString(16)}`;
        const offset = `${24 + (round % 2) * 4}M`;
        const result = await network.exec(
          h1,
          qemuIo(uri(h1, 'patterns'), [
            `write -P ${pattern} ${offset} 1M`,
            'flush',
            `read -P ${pattern} ${offset} 1M`,
          ]),
        );
        assert.doesNotMatch(result.stdout + result.stderr, /Pattern verification failed|error/i);
      }
    })();
    const burst = await probe(outsider, {
      mode: 'garbage',
      address: peerAddress(h1),
      secretHex: secretHex(),
      seed: 4242,
      connections: 200,
    });
    await io;
    assert.equal(burst.sent, 200, JSON.stringify(burst));
    assert.ok(Number(burst.authenticated) >= 40, JSON.stringify(burst));
    assert.ok(victim.running(), 'the daemon died');
    const lines = victim.log().slice(logFrom);
    assert.deepEqual(
      lines.filter((line) => /peer\.(handler_)?bug/.test(line)),
      [],
    );
    // The garbage reached the parsers: the daemon refused it, connection by connection.
    const refused = lines.filter((line) => /peer\.(protocol_error|auth_refused)/.test(line));
    t.diagnostic(`${JSON.stringify(burst)}; ${refused.length} refusals logged`);
    assert.ok(refused.length >= 60, `only ${refused.length} refusals logged`);
    // Still a full member: what went through h1 reads back through h0.
    const h0 = network.host(0);
    const read = await network.exec(h0, qemuIo(uri(h0, 'patterns'), ['read -P 0x15 28M 1M']));
    assert.doesNotMatch(read.stdout + read.stderr, /Pattern verification failed/);
    written.set('patterns', [0, 1, 5, 6, 7]);
  });

  test('a daemon cut off from etcd lags behind: its writes are not accepted, nothing diverges', async (t) => {
    const [h0, h1, h3] = [network.host(0), network.host(1), network.host(3)];
    const fence = (host: Host): string => uri(host, 'fence');
    await network.exec(h0, qemuIo(fence(h0), ['write -P 0x11 0 16M', 'flush']));
    const ownEpoch = async (host: Host): Promise<number> =>
      (
        JSON.parse(
          (
            await cistern(network, host, [
              ...['status', '--json', '--data-dir', dataDirs.get(host.name) as string],
            ])
          ).stdout,
        ) as { epoch: number }
      ).epoch;

    // h3 keeps its peers and clients but loses etcd: its lease lapses, the monitor marks
    // it down in a newer map, and h3 cannot learn of it.
    network.cutBetween(h3, network.etcdHost);
    let clusterEpoch: number;
    try {
      // Down in the map, not only absent from the live hosts: the lease lapses before the
      // monitor's next check writes the map, and a status read in between shows the
      // epoch h3 still has (a flake under load).
      clusterEpoch = await waitFor(async () => {
        const status = await json<{ epoch: number; hostsDown: string[]; disks: DiskStatus[] }>([
          'status',
        ]);
        const h3Disks = status.disks.filter((disk) => disk.host === h3.name);
        const markedDown = h3Disks.length > 0 && h3Disks.every((disk) => !disk.up);
        return status.hostsDown.includes(h3.name) && markedDown ? status.epoch : undefined;
      }, 30_000);
      const lagging = await ownEpoch(h3);
      assert.ok(lagging < clusterEpoch, `h3 is not behind (${lagging} ≥ ${clusterEpoch})`);

      const write = network.spawn(h3, qemuIo(fence(h3), ['write -P 0x99 0 16M', 'flush']));
      await sleep(3000);
      const early = write.exit();
      assert.ok(early === undefined || early.code !== 0, `acknowledged: ${write.stdout()}`);
      for (const host of [h0, h1]) {
        const read = await network.exec(host, qemuIo(fence(host), ['read -P 0x11 0 16M']), {
          check: false,
        });
        assert.doesNotMatch(read.stdout + read.stderr, /Pattern verification failed/, host.name);
        assert.equal(read.code, 0, read.stderr);
      }
      network.restoreBetween(h3, network.etcdHost);
      // Back on the current map, the pending write may go through (a new write now) or
      // have failed; either way every block is one of the two patterns, on every host.
      const late = await write.exited;
      t.diagnostic(
        `h3 on epoch ${lagging}, the cluster on ${clusterEpoch}; after 3 s the write was ` +
          `${early === undefined ? 'pending' : 'refused'}; after the restore it ` +
          `${late.code === 0 ? 'went through' : 'failed'}`,
      );
    } finally {
      network.restoreBetween(h3, network.etcdHost);
    }
    await waitFor(async () => {
      const status = await json<{ health: string; epoch: number }>(['status']);
      return status.health === 'ok' && (await ownEpoch(h3)) >= status.epoch ? true : undefined;
    }, 30_000);
    const images = await Promise.all(
      [h0, h3].map(async (host) => {
        const file = path.join(network.workDir, `fence-${host.name}.bin`);
        await network.exec(host, ['nbdcopy', fence(host), file]);
        return fs.readFileSync(file).subarray(0, 16 * MiB);
      }),
    );
    assert.ok(images[0]?.equals(images[1] as Buffer), 'h0 and h3 serve different data');
    for (let offset = 0; offset < 16 * MiB; offset += 4096) {
      const block = (images[0] as Buffer).subarray(offset, offset + 4096);
      assert.ok(
        block.equals(Buffer.alloc(4096, 0x11)) || block.equals(Buffer.alloc(4096, 0x99)),
        `block at ${offset} is neither pattern`,
      );
    }
    written.set('fence', [0, 1, 2, 3]);
  });

  test('after a clean stop, every written object is on exactly three hosts', async () => {
    const status = await json<{ disks: DiskStatus[] }>(['status']);
    const pools = await json<Array<{ id: number; name: string }>>(['pool', 'ls']);
    const poolId = pools.find((p) => p.name === 'rep')?.id;
    const volumeIds = new Map<string, number>();
    for (const name of written.keys()) {
      volumeIds.set(name, (await json<{ id: number }>(['volume', 'info', name])).id);
    }
    assert.deepEqual([...written.keys()].sort(), ['copy', 'fence', 'fio', 'patterns']);

    const exits = await Promise.all(daemons.map((daemon) => daemon.stop('SIGTERM')));
    assert.deepEqual(
      exits,
      daemons.map(() => ({ code: 0, signal: null })),
    );

    // volume name → object number → hosts holding it
    const holders = new Map<string, Map<number, string[]>>();
    for (const disk of status.disks) {
      const dataDir = dataDirs.get(disk.host);
      assert.ok(dataDir, `disk ${disk.id} on unknown host ${disk.host}`);
      const device = await openDevice(disk.path, { readOnly: true });
      try {
        const store = await ObjectStore.open({
          device,
          indexPath: path.join(dataDir, 'index', `disk-${disk.id}`),
        });
        try {
          for (const [name, id] of volumeIds) {
            const objects = holders.get(name) ?? new Map<number, string[]>();
            holders.set(name, objects);
            for await (const key of store.listObjects({ pool: poolId, volume: id })) {
              objects.set(key.object, [...(objects.get(key.object) ?? []), disk.host]);
            }
          }
        } finally {
          await store.close();
        }
      } finally {
        await device.close();
      }
    }
    for (const [name, objects] of written) {
      const found = holders.get(name) ?? new Map<number, string[]>();
      assert.deepEqual(
        [...found.keys()].sort((a, b) => a - b),
        objects,
        `objects of volume ${name}`,
      );
      for (const [object, hosts] of found) {
        assert.equal(
          new Set(hosts).size,
          3,
          `${name} object ${object} is on ${hosts.join(', ')}, not on three hosts`,
        );
        assert.equal(hosts.length, 3, `${name} object ${object}: ${hosts.join(', ')}`);
      }
    }
  });
});

/** Polls `probe` until it returns a value (not undefined); fails after timeoutMs. */
async function waitFor<T>(probe: () => Promise<T | undefined>, timeoutMs: number): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await probe();
    if (value !== undefined) return value;
    if (Date.now() > deadline) throw new Error(`condition not met within ${timeoutMs} ms`);
    await sleep(250);
  }
}

function qemuIo(uri: string, commands: string[]): string[] {
  return ['qemu-io', '-f', 'raw', ...commands.flatMap((c) => ['-c', c]), uri];
}

/** Bytes fio moved on one side, from its JSON output (notes may precede the document). */
function fioBytes(stdout: string, side: 'read' | 'write'): number {
  const start = stdout.indexOf('{');
  assert.ok(start >= 0, `no JSON from fio:\n${stdout.slice(0, 2000)}`);
  const document = JSON.parse(stdout.slice(start)) as {
    jobs: Array<Record<string, { io_bytes: number }> & { error: number }>;
  };
  const job = document.jobs[0];
  assert.ok(job, 'fio reported no job');
  assert.equal(job.error, 0);
  return (job[side] as { io_bytes: number }).io_bytes;
}
