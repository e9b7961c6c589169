// Proves that the access rules set with `cistern volume access` are what a real
// `cistern daemon --iscsi` enforces at login, with libiscsi's tools and qemu-img as the
// initiators: a volume with an access list admits a listed initiator name and refuses
// another; one-way CHAP admits the right secret and refuses a wrong or missing one;
// mutual CHAP completes when the initiator expects the target's real secret, and the
// initiator refuses a target that cannot prove the secret it expects; a rule change
// applies to the next login without a restart; and after every refusal the daemon
// keeps serving.

import { strict as assert } from 'node:assert';
import fs from 'node:fs';
import path from 'node:path';
import { after, before, test } from 'node:test';
import { DaemonProcess, cisternOk, killDaemons, tempDir } from '../daemon/helpers';
import {
  ClientResult,
  clientOk,
  createVolume,
  runClient,
  spawnIscsiDaemon,
  volumeUrl,
} from './real-daemon';

const ALLOWED = 'iqn.2026-01.io.cistern.test:allowed';
const STRANGER = 'iqn.2026-01.io.cistern.test:stranger';
const CHAP = { user: 'alice', secret: 'alice-secret-123' };
const MUTUAL = { user: 'cistern-target', secret: 'target-secret-456' };
let dir: string;
let daemon: DaemonProcess & { portal: string };

before(async () => {
  dir = tempDir('iscsi-access');
  daemon = await spawnIscsiDaemon(dir);
  await createVolume(dir, 'open', '16M'); // no rules: proves the daemon still serves
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

function access(...args: string[]): Promise<string> {
  return cisternOk(['volume', 'access', ...args, '--data-dir', dir]);
}

function secretFile(name: string, secret: string): string {
  const file = path.join(dir, name);
  fs.writeFileSync(file, secret + '\n', { mode: 0o600 });
  return file;
}

/** A login plus INQUIRY: `iscsi-inq` as initiator `name` (libiscsi's own default if none). */
function inquiry(url: string, name?: string, env?: NodeJS.ProcessEnv): Promise<ClientResult> {
  return runClient('iscsi-inq', [...(name ? ['-i', name] : []), url], env ? { env } : {});
}

/** The target's login reply (RFC 7143 §11.13.5) as libiscsi reports it. */
const AUTHORIZATION_FAILURE = /Failed to log in to target\. Status: Authorization failure\(514\)/;
const AUTHENTICATION_FAILURE = /Failed to log in to target\. Status: Authentication failure\(513\)/;
/** libiscsi's own verdict on a target that answered mutual CHAP with the wrong secret. */
const TARGET_NOT_PROVEN = /Invalid CHAP_R response from the target/;

function assertRefused(result: ClientResult, why: string, reason: RegExp): void {
  assert.notEqual(result.code, 0, `${why}: the login should have been refused:\n${result.stdout}`);
  assert.match(result.stderr, reason, why);
}

async function assertStillServing(): Promise<void> {
  const listing = await clientOk('iscsi-ls', [`iscsi://${daemon.portal}`]);
  assert.match(listing, /Target:iqn\.2026-11\.io\.cistern:open /);
  const login = await inquiry(volumeUrl(daemon.portal, 'open'));
  assert.equal(login.code, 0, login.stderr);
}

test('an initiator outside the access list is refused; a listed one logs in', async () => {
  await createVolume(dir, 'listed', '16M');
  await access('listed', '--allow', ALLOWED);
  const url = volumeUrl(daemon.portal, 'listed');
  const ok = await inquiry(url, ALLOWED);
  assert.equal(ok.code, 0, ok.stderr);
  assert.match(ok.stdout, /Peripheral Device Type:\s*0|DIRECT_ACCESS|Vendor/i);
  assertRefused(await inquiry(url, STRANGER), 'a name not on the list', AUTHORIZATION_FAILURE);
  // qemu logs in as its own default name, which is not on the list either.
  const qemu = await runClient('qemu-img', ['info', url]);
  assert.notEqual(qemu.code, 0, qemu.stdout);
  await assertStillServing();

  // A change applies to the next login, no restart.
  await access('listed', '--allow', STRANGER);
  const now = await inquiry(url, STRANGER);
  assert.equal(now.code, 0, now.stderr);
});

test('one-way CHAP: the right secret logs in, a wrong or missing one is refused', async () => {
  await createVolume(dir, 'chap', '16M');
  await access(
    'chap',
    '--chap-user',
    CHAP.user,
    '--chap-secret-file',
    secretFile('chap', CHAP.secret),
  );
  const good = await inquiry(volumeUrl(daemon.portal, 'chap', CHAP));
  assert.equal(good.code, 0, good.stderr);
  const info = JSON.parse(
    await clientOk('qemu-img', ['info', '--output=json', volumeUrl(daemon.portal, 'chap', CHAP)]),
  );
  assert.equal(info['virtual-size'], 16 * 2 ** 20);

  const wrong = { user: CHAP.user, secret: 'not-the-secret-1' };
  assertRefused(
    await inquiry(volumeUrl(daemon.portal, 'chap', wrong)),
    'a wrong secret',
    AUTHENTICATION_FAILURE,
  );
  const wrongUser = { user: 'mallory', secret: CHAP.secret };
  assertRefused(
    await inquiry(volumeUrl(daemon.portal, 'chap', wrongUser)),
    'a wrong user',
    AUTHENTICATION_FAILURE,
  );
  assertRefused(
    await inquiry(volumeUrl(daemon.portal, 'chap')),
    'no CHAP at all',
    AUTHENTICATION_FAILURE,
  );
  const qemu = await runClient('qemu-img', ['info', volumeUrl(daemon.portal, 'chap', wrong)]);
  assert.notEqual(qemu.code, 0, 'qemu-img with a wrong secret');
  await assertStillServing();
});

test('mutual CHAP: the target proves its secret; an initiator expecting another refuses', async () => {
  await createVolume(dir, 'mutual', '16M');
  await access(
    ...['mutual', '--chap-user', CHAP.user, '--chap-secret-file', secretFile('m1', CHAP.secret)],
    ...['--mutual-user', MUTUAL.user, '--mutual-secret-file', secretFile('m2', MUTUAL.secret)],
  );
  const url = volumeUrl(daemon.portal, 'mutual', CHAP);
  const expecting = (secret: string): NodeJS.ProcessEnv => ({
    LIBISCSI_CHAP_TARGET_USERNAME: MUTUAL.user,
    LIBISCSI_CHAP_TARGET_PASSWORD: secret,
  });
  const good = await inquiry(url, undefined, expecting(MUTUAL.secret));
  assert.equal(good.code, 0, good.stderr);
  // The target answers with its real secret; an initiator expecting another one must
  // find the target's response wrong and give up.
  assertRefused(
    await inquiry(url, undefined, expecting('some-other-secret')),
    'a wrong target secret',
    TARGET_NOT_PROVEN,
  );
  // The initiator's side of mutual CHAP is still checked.
  const wrong = volumeUrl(daemon.portal, 'mutual', { user: CHAP.user, secret: 'not-the-secret-1' });
  assertRefused(
    await inquiry(wrong, undefined, expecting(MUTUAL.secret)),
    'a wrong initiator secret',
    AUTHENTICATION_FAILURE,
  );
  await assertStillServing();
});

test('access list and CHAP together: both must hold', async () => {
  await createVolume(dir, 'both', '16M');
  await access(
    ...['both', '--allow', ALLOWED, '--chap-user', CHAP.user],
    ...['--chap-secret-file', secretFile('both', CHAP.secret)],
  );
  const ok = await inquiry(volumeUrl(daemon.portal, 'both', CHAP), ALLOWED);
  assert.equal(ok.code, 0, ok.stderr);
  assertRefused(
    await inquiry(volumeUrl(daemon.portal, 'both', CHAP), STRANGER),
    'right secret, wrong name',
    AUTHORIZATION_FAILURE,
  );
  assertRefused(
    await inquiry(volumeUrl(daemon.portal, 'both'), ALLOWED),
    'right name, no secret',
    AUTHENTICATION_FAILURE,
  );
  await assertStillServing();
});
