// Proves the daemon's lifecycle as a real process on the real datastore (`node
// bin/cistern daemon` on a temp dir, ports 0): on a new dir it creates three sparse 16 GiB
// disks, records the real ports in admin.json (mode 0600) only once it serves, and logs
// one `time event key=value` line per event; a second daemon on the same dir is refused
// and the first keeps serving; SIGTERM with an NBD client connected exits 0, removes
// admin.json and the pid file, and flushes, so data written without a FLUSH reads back
// after a restart; after kill -9 the CLI says no daemon runs and a new one takes over;
// an NBD port in use is a clear error that leaves nothing behind.

import { strict as assert } from 'node:assert';
import crypto from 'node:crypto';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { after, test } from 'node:test';
import { NbdClient } from '../../src/frontend/nbd/client';
import { ADMIN_FILE_NAME, PID_FILE_NAME } from '../../src/daemon/data-dir';
import {
  cistern,
  cisternOk,
  daemonRefused,
  killDaemons,
  nbdTarget,
  spawnDaemon,
  tempDir,
} from './helpers';

const GiB = 2 ** 30;
const dirs: string[] = [];

function newDir(): string {
  const dir = tempDir('daemon');
  dirs.push(dir);
  return dir;
}

after(async () => {
  await killDaemons();
  for (const dir of dirs) fs.rmSync(dir, { recursive: true, force: true });
});

const LOG_LINE =
  /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z [a-z0-9_.-]+( [A-Za-z0-9_]+=(\S+|"(?:[^"\\]|\\.)*"))*$/;

test('a new data dir gets three sparse 16 GiB disks, admin.json with real ports, line logs', async () => {
  const dir = newDir();
  const daemon = await spawnDaemon(dir);
  try {
    const disks = fs.readdirSync(path.join(dir, 'disks')).sort();
    assert.deepEqual(disks, ['disk-0.img', 'disk-1.img', 'disk-2.img']);
    for (const disk of disks) {
      const stat = fs.statSync(path.join(dir, 'disks', disk));
      assert.equal(stat.size, 16 * GiB);
      assert.ok(stat.blocks * 512 < GiB, `${disk} is not sparse`);
    }
    const file = path.join(dir, ADMIN_FILE_NAME);
    assert.equal(fs.statSync(file).mode & 0o777, 0o600);
    assert.match(daemon.admin.address, /^127\.0\.0\.1:[1-9]\d*$/);
    assert.match(daemon.admin.nbd ?? '', /^127\.0\.0\.1:[1-9]\d*$/);
    assert.match(daemon.admin.token, /^[0-9a-f]{64}$/);
    const lines = daemon.stderr().trim().split('\n');
    for (const line of lines) assert.match(line, LOG_LINE);
    assert.ok(lines.some((line) => line.includes(` nbd.listening address=${daemon.admin.nbd}`)));
    assert.ok(lines.some((line) => / daemon\.ready /.test(line)));
    // The NBD port in admin.json is the one that serves.
    const exports = await NbdClient.list(nbdTarget(daemon.admin.nbd));
    assert.deepEqual(exports, []);
  } finally {
    await daemon.stop();
  }
});

test('a second daemon on the same data dir is refused and the first keeps serving', async () => {
  const dir = newDir();
  const first = await spawnDaemon(dir);
  try {
    const refused = await daemonRefused(dir, ['--nbd', '127.0.0.1:0', '--admin', '127.0.0.1:0']);
    assert.equal(refused.exit.code, 1);
    assert.match(
      refused.stderr,
      new RegExp(`cistern: another daemon \\(pid ${first.child.pid}\\) is running for`),
    );
    const admin = JSON.parse(fs.readFileSync(path.join(dir, ADMIN_FILE_NAME), 'utf8'));
    assert.equal(admin.pid, first.child.pid);
    assert.match(await cisternOk(['status', '--data-dir', dir]), /^health: ok/);
  } finally {
    await first.stop();
  }
});

test('SIGTERM with a client connected exits 0, cleans up, and flushes what was written', async () => {
  const dir = newDir();
  let daemon = await spawnDaemon(dir);
  const data = crypto.randomBytes(256 * 1024);
  try {
    await cisternOk(['volume', 'create', 'keep', '--size', '64M', '--data-dir', dir]);
    const client = await NbdClient.connect(nbdTarget(daemon.admin.nbd), { exportName: 'keep' });
    await client.write(4096 * 3, data); // acknowledged, never flushed by the client
    const closed = client.closed;
    const exit = await daemon.stop('SIGTERM');
    assert.deepEqual(exit, { code: 0, signal: null }, daemon.stderr());
    await closed; // the server closed the idle connection on its way out
    assert.equal(fs.existsSync(path.join(dir, ADMIN_FILE_NAME)), false);
    assert.equal(fs.existsSync(path.join(dir, PID_FILE_NAME)), false);
    const log = daemon.stderr();
    for (const event of ['daemon.stopping reason=SIGTERM', 'datastore.closed', 'daemon.stopped']) {
      assert.ok(log.includes(event), `log lacks ${event}:\n${log}`);
    }
    const result = await cistern(['volume', 'ls', '--data-dir', dir]);
    assert.equal(result.code, 1);
    assert.equal(
      result.stderr,
      `cistern: no daemon is running for ${dir} (start one with: cistern daemon --data-dir ${dir})\n`,
    );

    // A restart needs no --disk (disks are remembered) and finds the volume and its data.
    daemon = await spawnDaemon(dir);
    const again = await NbdClient.connect(nbdTarget(daemon.admin.nbd), { exportName: 'keep' });
    try {
      assert.equal(again.size, 64 * 2 ** 20);
      assert.ok((await again.read(4096 * 3, data.length)).equals(data));
    } finally {
      await again.disconnect();
    }
  } finally {
    await daemon.stop();
  }
});

test('after kill -9 the CLI says no daemon runs, and a new daemon takes the dir over', async () => {
  const dir = newDir();
  const killed = await spawnDaemon(dir);
  const exit = await killed.stop('SIGKILL');
  assert.equal(exit.signal, 'SIGKILL');
  assert.equal(fs.existsSync(path.join(dir, ADMIN_FILE_NAME)), true, 'left behind by kill -9');
  const result = await cistern(['status', '--data-dir', dir]);
  assert.equal(result.code, 1);
  assert.match(
    result.stderr,
    new RegExp(`no daemon is running for ${dir}: pid ${killed.child.pid} in admin.json has exited`),
  );
  const next = await spawnDaemon(dir);
  try {
    assert.match(next.stderr(), /daemon\.stale_lock_removed pid=\d+/);
    assert.match(await cisternOk(['status', '--data-dir', dir]), /^health: ok/);
  } finally {
    await next.stop();
  }
});

test('an NBD address in use is a clear error and leaves no lock or admin.json', async () => {
  const blocker = net.createServer();
  await new Promise<void>((resolve) => blocker.listen(0, '127.0.0.1', resolve));
  const port = (blocker.address() as net.AddressInfo).port;
  const dir = newDir();
  try {
    const refused = await daemonRefused(dir, ['--nbd', `127.0.0.1:${port}`, '--admin', ':0']);
    assert.equal(refused.exit.code, 1);
    assert.match(refused.stderr, /cistern: the NBD address is in use .*choose another with --nbd/);
    assert.equal(fs.existsSync(path.join(dir, ADMIN_FILE_NAME)), false);
    assert.equal(fs.existsSync(path.join(dir, PID_FILE_NAME)), false);
  } finally {
    blocker.close();
  }
});
