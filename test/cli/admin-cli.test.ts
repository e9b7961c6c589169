// Proves the admin CLI against a running daemon (a real `cistern daemon` child on the
// real datastore): volume create/ls/info/resize/rm and pool create/ls and status print
// readable text and, with --json, the API object; resize grows online and shrinks only
// with --allow-shrink; rm is refused while an NBD client has the volume open and --force
// overrides; the daemon's errors come out as one `cistern: …` line with exit 1 (2 for
// usage); the data dir is found from --data-dir, CISTERN_DATA_DIR or ./.cistern; a token
// the daemon does not know is refused; and status puts a degraded datastore's messages
// first (an in-process daemon over a fake store reporting a failed disk).

import { strict as assert } from 'node:assert';
import fs from 'node:fs';
import path from 'node:path';
import { after, before, test } from 'node:test';
import { NbdClient } from '../../src/frontend/nbd/client';
import { startDaemon } from '../../src/daemon/daemon';
import { ADMIN_FILE_NAME } from '../../src/daemon/data-dir';
import type { StatusReport } from '../../src/volume/admin';
import { FakeStore } from '../daemon/fake-store';
import {
  DaemonProcess,
  cistern,
  cisternOk,
  killDaemons,
  nbdTarget,
  spawnDaemon,
  tempDir,
} from '../daemon/helpers';

const MiB = 2 ** 20;
let dir: string;
let daemon: DaemonProcess;

before(async () => {
  dir = tempDir('admin-cli');
  daemon = await spawnDaemon(dir);
});

after(async () => {
  try {
    const exit = await daemon.stop();
    assert.equal(exit.code, 0, daemon.stderr());
  } finally {
    await killDaemons();
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

function admin(...args: string[]): Promise<string> {
  return cisternOk([...args, '--data-dir', dir]);
}

test('volume create, ls and info print text, and the API object with --json', async () => {
  const created = await admin('volume', 'create', 'alpha', '--size', '64M');
  assert.equal(
    created,
    `created volume alpha: 64.0 MiB in pool default\nconnect: nbd://${daemon.admin.nbd}/alpha\n`,
  );
  const json = JSON.parse(await admin('volume', 'create', 'beta', '--size', '1G', '--json'));
  assert.equal(json.name, 'beta');
  assert.equal(json.sizeBytes, 2 ** 30);
  assert.equal(json.pool, 'default');

  const table = (await admin('volume', 'ls')).trimEnd().split('\n');
  assert.match(table[0]!, /^NAME\s+POOL\s+SIZE\s+USED\s+OPEN\s+CREATED$/);
  assert.match(table[1]!, /^alpha\s+default\s+64\.0 MiB\s+0 B\s+0\s+\d{4}-/);
  assert.match(table[2]!, /^beta\s+default\s+1\.00 GiB/);
  const listed = JSON.parse(await admin('volume', 'ls', '--json'));
  assert.deepEqual(listed.map((v: { name: string }) => v.name).sort(), ['alpha', 'beta']);

  const info = await admin('volume', 'info', 'alpha');
  assert.match(info, /^name:\s+alpha$/m);
  assert.match(info, /^size:\s+64\.0 MiB \(67108864 bytes\)$/m);
  assert.match(info, new RegExp(`^nbd:\\s+nbd://${daemon.admin.nbd}/alpha$`, 'm'));
  assert.equal(JSON.parse(await admin('volume', 'info', 'alpha', '--json')).sizeBytes, 64 * MiB);
});

test('resize grows online; shrinking is refused without --allow-shrink', async () => {
  await admin('volume', 'create', 'grow', '--size', '32M');
  const client = await NbdClient.connect(nbdTarget(daemon.admin.nbd), { exportName: 'grow' });
  try {
    const grown = await admin('volume', 'resize', 'grow', '--size', '48M');
    assert.equal(
      grown,
      'resized grow: 32.0 MiB → 48.0 MiB (connected NBD clients see it when they reconnect)\n',
    );
    const refused = await cistern(['volume', 'resize', 'grow', '--size', '16M', '--data-dir', dir]);
    assert.equal(refused.code, 2);
    assert.match(
      refused.stderr,
      /^cistern: shrinking grow from 48\.0 MiB to 16\.0 MiB .*--allow-shrink/,
    );
  } finally {
    await client.disconnect();
  }
  const shrunk = JSON.parse(
    await admin('volume', 'resize', 'grow', '--size', '16M', '--allow-shrink', '--json'),
  );
  assert.equal(shrunk.sizeBytes, 16 * MiB);
});

test('rm is refused while an NBD client has the volume open; --force removes it', async () => {
  await admin('volume', 'create', 'busy', '--size', '16M');
  const client = await NbdClient.connect(nbdTarget(daemon.admin.nbd), { exportName: 'busy' });
  try {
    await client.write(0, Buffer.alloc(64 * 1024, 7));
    const refused = await cistern(['volume', 'rm', 'busy', '--data-dir', dir]);
    assert.equal(refused.code, 1);
    assert.match(refused.stderr, /^cistern: volume busy is open by 1 connection.*--force/m);
    const removed = await admin('volume', 'rm', 'busy', '--force');
    assert.match(removed, /^removing volume busy \(16\.0 MiB, .* written\)…$/m);
    assert.match(removed, /^removed volume busy in \d+\.\d s$/m);
  } finally {
    client.destroy();
  }
  await admin('volume', 'create', 'gone', '--size', '16M');
  assert.deepEqual(JSON.parse(await admin('volume', 'rm', 'gone', '--json')).removed, 'gone');
  const names = JSON.parse(await admin('volume', 'ls', '--json')).map(
    (v: { name: string }) => v.name,
  );
  assert.ok(!names.includes('busy') && !names.includes('gone'));
});

test('pool create and pool ls', async () => {
  const created = await admin(
    'pool',
    'create',
    'triple',
    '--size',
    '3',
    '--min-size',
    '2',
    '--failure-domain',
    'disk',
    '--pgs',
    '32',
  );
  assert.equal(
    created,
    'created pool triple: 3 copies (writes need 2), failure domain disk, 32 PGs\n',
  );
  const table = await admin('pool', 'ls');
  assert.match(table, /^NAME\s+SIZE\s+MIN\s+DOMAIN\s+PGS/);
  assert.match(table, /^triple\s+3\s+2\s+disk\s+32\s+0\s/m);
  const pools = JSON.parse(await admin('pool', 'ls', '--json'));
  assert.equal(pools.find((p: { name: string }) => p.name === 'triple').minSize, 2);
  // Four copies cannot be placed on three disks in distinct disk domains.
  const impossible = await cistern(['pool', 'create', 'quad', '--size', '4', '--data-dir', dir]);
  assert.equal(impossible.code, 1);
  assert.match(impossible.stderr, /^cistern: /);
  await admin('volume', 'create', 'in-triple', '--size', '8M', '--pool', 'triple');
});

test('status shows health, then disks, pools and capacity; --json parses', async () => {
  const text = await admin('status');
  const lines = text.split('\n');
  assert.equal(lines[0], 'health: ok');
  assert.match(text, /^epoch \d+, 1 host, 3 disks, \d+ pools?, \d+ volumes?; NBD on /m);
  assert.ok(text.indexOf('disks:') < text.indexOf('pools:'));
  assert.ok(text.indexOf('pools:') < text.indexOf('capacity:'));
  assert.match(text, /^\s+0\s+local\s+up\/in\s+16\.0 GiB/m);
  assert.match(text, /^capacity: .* used of 48\.0 GiB raw/m);
  const report = JSON.parse(await admin('status', '--json')) as StatusReport;
  assert.equal(report.health, 'ok');
  assert.equal(report.disks.length, 3);
  assert.equal(report.nbd, daemon.admin.nbd);
});

test("the daemon's errors are one line, exit 1; usage mistakes exit 2", async () => {
  const cases: Array<[string[], number, RegExp]> = [
    [['volume', 'info', 'nope'], 1, /^cistern: .*nope/],
    [['volume', 'rm', 'nope'], 1, /^cistern: .*nope/],
    [['volume', 'create', 'alpha', '--size', '1M'], 1, /^cistern: .*alpha/],
    [['volume', 'create', 'x', '--size', '1M', '--pool', 'nopool'], 1, /^cistern: .*nopool/],
    [['volume', 'create', 'bad/name', '--size', '1M'], 2, /^cistern: volume name must be/],
    [['volume', 'create', 'nosize'], 2, /^cistern: --size is required/],
    [['pool', 'create', 'p', '--size', '2', '--failure-domain', 'row'], 2, /must be one of/],
    [['pool', 'create', 'p'], 2, /^cistern: --size is required/],
  ];
  for (const [args, code, message] of cases) {
    const result = await cistern([...args, '--data-dir', dir]);
    assert.equal(result.code, code, `${args.join(' ')}: ${result.stderr}`);
    assert.match(result.stderr, message, args.join(' '));
    assert.equal(result.stderr.trim().split('\n').length, 1, result.stderr);
  }
});

test('the data dir comes from --data-dir, else CISTERN_DATA_DIR, else ./.cistern', async () => {
  // The issue's own form: the option before the command words.
  const leading = await cisternOk(['--data-dir', dir, 'volume', 'ls', '--json']);
  assert.ok(JSON.parse(leading).some((v: { name: string }) => v.name === 'alpha'));
  const leadingEquals = await cisternOk([`--data-dir=${dir}`, '--json', 'volume', 'info', 'alpha']);
  assert.equal(JSON.parse(leadingEquals).name, 'alpha');
  const fromEnv = await cisternOk(['volume', 'ls', '--json'], {
    env: { ...process.env, CISTERN_DATA_DIR: dir },
  });
  assert.ok(JSON.parse(fromEnv).some((v: { name: string }) => v.name === 'alpha'));
  const cwd = tempDir('admin-cli-cwd');
  try {
    fs.symlinkSync(dir, path.join(cwd, '.cistern'));
    const env = { ...process.env };
    delete env['CISTERN_DATA_DIR'];
    const fromCwd = await cistern(['volume', 'ls', '--json'], { env, cwd });
    assert.equal(fromCwd.code, 0, fromCwd.stderr);
    assert.ok(JSON.parse(fromCwd.stdout).some((v: { name: string }) => v.name === 'alpha'));
    fs.rmSync(path.join(cwd, '.cistern'));
    const none = await cistern(['status'], { env, cwd });
    assert.equal(none.code, 1);
    assert.equal(
      none.stderr,
      'cistern: no daemon is running for ./.cistern (start one with: cistern daemon --data-dir ./.cistern)\n',
    );
  } finally {
    fs.rmSync(cwd, { recursive: true, force: true });
  }
});

test('a token the daemon does not know is refused', async () => {
  const forged = tempDir('admin-cli-forged');
  try {
    const file = { ...daemon.admin, token: 'f'.repeat(64) };
    fs.writeFileSync(path.join(forged, ADMIN_FILE_NAME), JSON.stringify(file), { mode: 0o600 });
    const result = await cistern(['status', '--data-dir', forged]);
    assert.equal(result.code, 1);
    assert.match(result.stderr, /^cistern: the daemon refused the token in .*admin\.json/);
  } finally {
    fs.rmSync(forged, { recursive: true, force: true });
  }
});

test('every admin command takes --data-dir and --json; placement simulate does not list --data-dir', async () => {
  const commands = [
    ['daemon'],
    ['status'],
    ['volume', 'create'],
    ['volume', 'ls'],
    ['volume', 'info'],
    ['volume', 'resize'],
    ['volume', 'rm'],
    ['pool', 'create'],
    ['pool', 'ls'],
  ];
  for (const command of commands) {
    const help = await cisternOk([...command, '--help']);
    assert.match(help, /--data-dir DIR/, command.join(' '));
    assert.match(help, /--json/, command.join(' '));
  }
  const overview = await cisternOk(['--help']);
  for (const command of commands) assert.ok(overview.includes(command.join(' ')));
  assert.doesNotMatch(await cisternOk(['placement', 'simulate', '--help']), /--data-dir/);
});

test('status of a degraded datastore puts its messages before the tables', async () => {
  const fakeDir = tempDir('admin-cli-fake');
  const store = new FakeStore();
  const report: StatusReport = {
    health: 'degraded',
    messages: [
      'pool default is degraded: disk 2 failed (EIO on write); replace it, then: cistern disk replace 2',
    ],
    epoch: 7,
    hosts: 1,
    disks: [
      {
        id: 0,
        path: '/d0',
        host: 'local',
        up: true,
        in: true,
        sizeBytes: 2 ** 34,
        usedBytes: 2 ** 30,
      },
      {
        id: 2,
        path: '/d2',
        host: 'local',
        up: false,
        in: true,
        sizeBytes: 2 ** 34,
        usedBytes: 0,
        error: 'EIO on write',
      },
    ],
    pools: [...store.pools.values()].map((p) => ({ ...p, pgsDegraded: 40 })),
    volumes: 0,
    capacityBytes: 2 ** 35,
    usedBytes: 2 ** 30,
  };
  store.statusOverride = report;
  const running = await startDaemon({
    dataDir: fakeDir,
    disks: [],
    nbd: { host: '127.0.0.1', port: 0 },
    admin: { host: '127.0.0.1', port: 0 },
    log: () => {},
    openStore: async () => store,
  });
  try {
    const text = await cisternOk(['status', '--data-dir', fakeDir]);
    const lines = text.split('\n');
    assert.equal(lines[0], 'health: degraded');
    assert.equal(lines[1], `  ${report.messages[0]}`);
    assert.match(
      text,
      /^\s+2\s+local\s+DOWN\/in\s+16\.0 GiB\s+0 B\s+0\.0%\s+\/d2 \s+\(EIO on write\)$/m,
    );
    assert.match(text, /^\s+default\s+2\s+1\s+disk\s+64\s+0\s+0 B\s+0 B\s+40\s+0$/m);
    assert.match(text, /^capacity: 1\.00 GiB used of 32\.0 GiB raw \(3\.1%\)$/m);
    const json = JSON.parse(await cisternOk(['status', '--json', '--data-dir', fakeDir]));
    assert.deepEqual({ ...json, nbd: undefined }, { ...report, nbd: undefined });
    assert.equal(json.nbd, `127.0.0.1:${running.nbdAddress.port}`);
  } finally {
    await running.stop();
    assert.equal(store.closed, true);
    fs.rmSync(fakeDir, { recursive: true, force: true });
  }
});
