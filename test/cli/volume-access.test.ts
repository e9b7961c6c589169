// Proves `cistern volume access` against a real daemon (a `cistern daemon` child on the
// real datastore): without options it shows the default rules (any initiator, no CHAP);
// --allow/--deny edit the initiator list; CHAP and mutual CHAP are set from owner-only
// secret files and removed with --no-mutual/--no-chap; `volume info` shows the rules;
// no secret ever appears in the CLI's output, --json or the daemon's log; bad input gets
// one clear `cistern: …` line (exit 2 for usage and validation, 1 for a world-readable
// secret file or an unknown volume); and the rules survive a daemon restart, because
// they are stored with the volume in the cluster state.

import { strict as assert } from 'node:assert';
import fs from 'node:fs';
import path from 'node:path';
import { after, before, test } from 'node:test';
import {
  CliResult,
  DaemonProcess,
  cistern,
  cisternOk,
  killDaemons,
  spawnDaemon,
  tempDir,
} from '../daemon/helpers';

const A = 'iqn.2026-01.com.example:host-a';
const B = 'iqn.2026-01.com.example:host-b';
const SECRET = 'secret-of-alice-1';
const MUTUAL_SECRET = 'secret-of-target-2';
let dir: string;
let daemon: DaemonProcess;

before(async () => {
  dir = tempDir('volume-access');
  daemon = await spawnDaemon(dir);
  await admin('volume', 'create', 'vol', '--size', '16M');
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

function attempt(...args: string[]): Promise<CliResult> {
  return cistern([...args, '--data-dir', dir]);
}

function secretFile(name: string, content: string, mode = 0o600): string {
  const file = path.join(dir, name);
  fs.writeFileSync(file, content, { mode });
  fs.chmodSync(file, mode);
  return file;
}

function assertNoSecret(text: string): void {
  assert.ok(!text.includes(SECRET), `the CHAP secret leaked:\n${text}`);
  assert.ok(!text.includes(MUTUAL_SECRET), `the mutual secret leaked:\n${text}`);
}

test('without options it shows the default rules: any initiator, no CHAP', async () => {
  const text = await admin('volume', 'access', 'vol');
  assert.match(text, /^iscsi target:\s+iqn\.2026-11\.io\.cistern:vol \(LUN 0\)$/m);
  assert.match(text, /^initiators:\s+any$/m);
  assert.match(text, /^chap:\s+none$/m);
  const json = JSON.parse(await admin('volume', 'access', 'vol', '--json'));
  assert.deepEqual(json, {
    volume: 'vol',
    target: 'iqn.2026-11.io.cistern:vol',
    allowedInitiators: [],
    chap: 'none',
  });
});

test('--allow and --deny edit the initiator list; the last one is not removed silently', async () => {
  await admin('volume', 'create', 'listed', '--size', '16M');
  const json = JSON.parse(
    await admin('volume', 'access', 'listed', '--allow', A.toUpperCase(), '--allow', B, '--json'),
  );
  assert.deepEqual(json.allowedInitiators, [A, B]);
  assert.match(
    await admin('volume', 'access', 'listed', '--deny', B),
    new RegExp(`^initiators:\\s+${A}$`, 'm'),
  );
  const last = await attempt('volume', 'access', 'listed', '--deny', A);
  assert.equal(last.code, 2, last.stderr);
  assert.match(
    last.stderr,
    /^cistern: removing the last initiator would let any initiator log in to listed; use allow-any/,
  );
  const any = JSON.parse(await admin('volume', 'access', 'listed', '--allow-any', '--json'));
  assert.deepEqual(any.allowedInitiators, []);
  const bad = await attempt('volume', 'access', 'listed', '--allow', 'not-an-iqn');
  assert.equal(bad.code, 2);
  assert.match(bad.stderr, /^cistern: "not-an-iqn" is not an iSCSI initiator name/);
});

test('CHAP and mutual CHAP from secret files; volume info shows users, never secrets', async () => {
  const chapFile = secretFile('alice.secret', SECRET + '\n');
  const mutualFile = secretFile('target.secret', MUTUAL_SECRET);
  const set = await admin(
    'volume',
    'access',
    'vol',
    '--allow',
    A,
    '--chap-user',
    'alice',
    '--chap-secret-file',
    chapFile,
    '--mutual-user',
    'target',
    '--mutual-secret-file',
    mutualFile,
  );
  assert.match(set, /^chap:\s+mutual \(user alice, target answers as target\)$/m);
  assertNoSecret(set);
  const info = await admin('volume', 'info', 'vol');
  assert.match(info, new RegExp(`^initiators:\\s+${A}$`, 'm'));
  assert.match(info, /^chap:\s+mutual/m);
  assertNoSecret(info);
  const infoJson = await admin('volume', 'info', 'vol', '--json');
  assert.deepEqual(JSON.parse(infoJson).iscsi, {
    target: 'iqn.2026-11.io.cistern:vol',
    allowedInitiators: [A],
    chap: 'mutual',
    chapUser: 'alice',
    mutualUser: 'target',
  });
  assertNoSecret(infoJson);
  assertNoSecret(await admin('volume', 'ls', '--json'));
  assertNoSecret(await admin('status', '--json'));

  assert.match(
    await admin('volume', 'access', 'vol', '--no-mutual'),
    /^chap:\s+one-way \(user alice\)$/m,
  );
  assert.match(await admin('volume', 'access', 'vol', '--no-chap'), /^chap:\s+none$/m);
  assertNoSecret(daemon.stderr());
  assert.match(daemon.stderr(), /volume\.access-changed volume=vol/);
});

test('secret files must be owner-only, one line, 12+ printable bytes', async () => {
  const open = secretFile('open.secret', SECRET, 0o644);
  const world = await attempt(
    'volume',
    'access',
    'vol',
    '--chap-user',
    'u',
    '--chap-secret-file',
    open,
  );
  assert.equal(world.code, 1);
  assert.match(
    world.stderr,
    /has mode 0644: a CHAP secret file must be readable by its owner only \(run: chmod 600/,
  );

  const short = secretFile('short.secret', 'elevenbytes');
  const tooShort = await attempt(
    'volume',
    'access',
    'vol',
    '--chap-user',
    'u',
    '--chap-secret-file',
    short,
  );
  assert.equal(tooShort.code, 2);
  assert.match(tooShort.stderr, /is 11 bytes; a CHAP secret must be 12-255 bytes/);
  assert.ok(!tooShort.stderr.includes('elevenbytes'), 'the refused secret is not echoed');

  const missing = await attempt(
    'volume',
    'access',
    'vol',
    '--chap-user',
    'u',
    '--chap-secret-file',
    path.join(dir, 'none'),
  );
  assert.equal(missing.code, 1);
  assert.match(missing.stderr, /cannot read --chap-secret-file/);

  const alone = await attempt('volume', 'access', 'vol', '--chap-user', 'u');
  assert.equal(alone.code, 2);
  assert.match(alone.stderr, /--chap-user and --chap-secret-file go together/);

  const same = secretFile('same.secret', SECRET);
  const chapFile = secretFile('alice2.secret', SECRET);
  const equal = await attempt(
    'volume',
    'access',
    'vol',
    '--chap-user',
    'a',
    '--chap-secret-file',
    chapFile,
    '--mutual-user',
    't',
    '--mutual-secret-file',
    same,
  );
  assert.equal(equal.code, 2);
  assert.match(equal.stderr, /mutual CHAP secret must differ/);
  const mutualOnly = await attempt(
    'volume',
    'access',
    'vol',
    '--mutual-user',
    't',
    '--mutual-secret-file',
    same,
  );
  assert.equal(mutualOnly.code, 2);
  assert.match(mutualOnly.stderr, /mutual CHAP needs CHAP/);
});

test('unknown volumes and contradictory options are refused; --help explains', async () => {
  const unknown = await attempt('volume', 'access', 'nope', '--allow', A);
  assert.equal(unknown.code, 1);
  assert.match(unknown.stderr, /^cistern: no volume named "nope"/);
  const contradiction = await attempt('volume', 'access', 'vol', '--allow-any', '--allow', A);
  assert.equal(contradiction.code, 2);
  const help = await cisternOk(['volume', 'access', '--help']);
  assert.match(help, /usage: cistern volume access NAME/);
  assert.match(help, /--chap-secret-file F/);
  assert.match(help, /readable by its owner only/);
});

test('the rules are kept with the volume across a daemon restart', async () => {
  await admin('volume', 'create', 'kept', '--size', '16M');
  const chapFile = secretFile('kept.secret', SECRET);
  await admin(
    'volume',
    'access',
    'kept',
    '--allow',
    B,
    '--chap-user',
    'keeper',
    '--chap-secret-file',
    chapFile,
  );
  const exit = await daemon.stop();
  assert.equal(exit.code, 0, daemon.stderr());
  daemon = await spawnDaemon(dir);
  const json = JSON.parse(await admin('volume', 'access', 'kept', '--json'));
  assert.deepEqual(json.allowedInitiators, [B]);
  assert.equal(json.chap, 'one-way');
  assert.equal(json.chapUser, 'keeper');
});
