// Proves the real daemon survives hostile iSCSI initiators: a seeded stream of
// connections to `cistern daemon --iscsi` sends random bytes, truncated headers, and
// valid login requests with random bytes flipped, lengths lied about or the connection
// dropped mid-PDU, while a healthy initiator (iscsi-inq) keeps logging in beside them.
// Afterwards the daemon still serves discovery and I/O, reported no unexpected error
// (a bug) in its log, and stops cleanly. ISCSI_HOSTILE_SEED=n replays one sequence.
// (The transport's own fuzz test covers the parser in depth, in process; this one is
// about the daemon as a whole staying up.)

import { strict as assert } from 'node:assert';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { after, before, test } from 'node:test';
import { DaemonProcess, killDaemons, tempDir } from '../daemon/helpers';
import { clientOk, createVolume, runClient, spawnIscsiDaemon, volumeUrl } from './real-daemon';

/** Hostile connections per run: enough variety, a few seconds on a loaded machine. */
const HOSTILE_CONNECTIONS = 120;
/** At most this many at once, so the healthy initiator competes with a crowd. */
const HOSTILE_PARALLEL = 8;
/** A hostile connection we opened is given up (by us) after this long. */
const HOSTILE_LINGER_MS = 300;
const BHS_BYTES = 48;
const seed = Number(process.env['ISCSI_HOSTILE_SEED'] ?? Date.now() % 100_000);
let dir: string;
let daemon: DaemonProcess & { portal: string };

before(async () => {
  dir = tempDir('iscsi-hostile');
  daemon = await spawnIscsiDaemon(dir);
  await createVolume(dir, 'victim', '16M');
});

after(async () => {
  await killDaemons();
  fs.rmSync(dir, { recursive: true, force: true });
});

/** xorshift32: every choice of a run comes from the seed. */
function generator(start: number): () => number {
  let state = start >>> 0 || 1;
  return () => {
    state ^= state << 13;
    state >>>= 0;
    state ^= state >>> 17;
    state ^= state << 5;
    state >>>= 0;
    return state / 2 ** 32;
  };
}

/** A well-formed Login Request (security stage, T=1 to operational) for the victim. */
function loginRequest(itt: number): Buffer {
  const text = Buffer.from(
    [
      'InitiatorName=iqn.2026-01.io.cistern.test:hostile',
      'SessionType=Normal',
      'TargetName=iqn.2026-11.io.cistern:victim',
      'AuthMethod=None',
      '',
    ].join('\0'),
  );
  const padded = Buffer.alloc(Math.ceil(text.length / 4) * 4);
  text.copy(padded);
  const bhs = Buffer.alloc(BHS_BYTES);
  bhs[0] = 0x43; // immediate, Login Request
  bhs[1] = 0x81; // T, CSG 0 (security), NSG 1 (operational)
  bhs.writeUIntBE(text.length, 5, 3); // DataSegmentLength (without padding)
  bhs.writeUIntBE(0x400000123456, 8, 6); // ISID: random-qualifier format
  bhs.writeUInt32BE(itt, 16);
  return Buffer.concat([bhs, padded]);
}

function hostilePayload(random: () => number): Buffer {
  const kind = Math.floor(random() * 5);
  const login = loginRequest(Math.floor(random() * 2 ** 32));
  switch (kind) {
    case 0: {
      // Pure noise of any length up to a few PDUs.
      const noise = Buffer.alloc(1 + Math.floor(random() * 400));
      for (let i = 0; i < noise.length; i += 1) noise[i] = Math.floor(random() * 256);
      return noise;
    }
    case 1:
      // A header cut short.
      return login.subarray(0, Math.floor(random() * BHS_BYTES));
    case 2: {
      // A valid login with a few bytes flipped anywhere.
      const flips = 1 + Math.floor(random() * 6);
      for (let i = 0; i < flips; i += 1) {
        const at = Math.floor(random() * login.length);
        login[at] = (login[at] ?? 0) ^ (1 + Math.floor(random() * 255));
      }
      return login;
    }
    case 3: {
      // Lengths that lie: a huge data segment or AHS, or zero with data following.
      const lie = Math.floor(random() * 3);
      if (lie === 0) login.writeUIntBE(0xffffff, 5, 3);
      else if (lie === 1) login[4] = 0xff;
      else login.writeUIntBE(0, 5, 3);
      return login;
    }
    default: {
      // A valid login followed by garbage PDUs of random opcodes.
      const extra = Buffer.alloc(BHS_BYTES * (1 + Math.floor(random() * 3)));
      for (let i = 0; i < extra.length; i += 1) extra[i] = Math.floor(random() * 256);
      return Buffer.concat([login, extra]);
    }
  }
}

/** Sends one hostile payload and lingers until the target hangs up or we give up. */
function hostileConnection(portal: string, payload: Buffer): Promise<void> {
  const colon = portal.lastIndexOf(':');
  return new Promise((resolve) => {
    const socket = net.connect(Number(portal.slice(colon + 1)), portal.slice(0, colon));
    const done = (): void => {
      clearTimeout(timer);
      socket.destroy();
      resolve();
    };
    const timer = setTimeout(done, HOSTILE_LINGER_MS);
    socket.on('error', done);
    socket.on('close', done);
    socket.on('data', () => undefined); // whatever the target answers (a reject, a login reply)
    socket.on('connect', () => socket.write(payload));
  });
}

test(`hostile initiators do not take the daemon down (seed ${seed})`, async () => {
  const random = generator(seed);
  const payloads = Array.from({ length: HOSTILE_CONNECTIONS }, () => hostilePayload(random));
  let healthyLogins = 0;
  let hostileDone = false;
  const healthy = (async () => {
    while (!hostileDone) {
      const login = await runClient('iscsi-inq', [volumeUrl(daemon.portal, 'victim')]);
      assert.equal(login.code, 0, `a healthy login failed beside hostile ones: ${login.stderr}`);
      healthyLogins += 1;
    }
  })();
  const workers = Array.from({ length: HOSTILE_PARALLEL }, async () => {
    for (let payload = payloads.pop(); payload; payload = payloads.pop()) {
      await hostileConnection(daemon.portal, payload);
    }
  });
  await Promise.all(workers);
  hostileDone = true;
  await healthy;
  assert.ok(healthyLogins >= 1, 'the healthy initiator never got to log in');

  const listing = await clientOk('iscsi-ls', [`iscsi://${daemon.portal}`]);
  assert.match(listing, /Target:iqn\.2026-11\.io\.cistern:victim /);
  await clientOk('qemu-io', [
    '-f',
    'raw',
    '-c',
    'write -P 0x33 0 65536',
    volumeUrl(daemon.portal, 'victim'),
  ]);
  const copy = path.join(dir, 'victim.raw');
  await clientOk('qemu-img', ['convert', '-O', 'raw', volumeUrl(daemon.portal, 'victim'), copy]);
  const read = fs.readFileSync(copy);
  assert.ok(
    read.subarray(0, 65536).every((byte) => byte === 0x33),
    'the write did not read back',
  );
  assert.doesNotMatch(daemon.stderr(), /iscsi\.unexpected_error/, `seed ${seed}`);
  const exit = await daemon.stop();
  assert.equal(exit.code, 0, daemon.stderr().slice(-4000));
});
