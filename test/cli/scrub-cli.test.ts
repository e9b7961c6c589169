// Proves `cistern --data-dir D scrub` on one host through the real daemon (a
// `cistern daemon` child on the real datastore, replicas across its disks): a clean
// datastore with data written over NBD scrubs clean — every PG of the default pool by
// the one host, every object compared — in text and --json, exit 0; an unknown pool is
// refused with exit 1; and `status` shows PG states and the recovery figures, its
// estimate at the bandwidth given by `--recovery-bandwidth` (7 MiB/s here) — which is
// how that option reaches the datastore's recovery settings.

import { strict as assert } from 'node:assert';
import fs from 'node:fs';
import { after, before, test } from 'node:test';
import { NbdClient } from '../../src/frontend/nbd/client';
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
const RECOVERY_MIB_PER_S = 7;
let dir: string;
let daemon: DaemonProcess;

before(async () => {
  dir = tempDir('scrub-cli');
  daemon = await spawnDaemon(dir, [
    ...['--nbd', '127.0.0.1:0', '--admin', '127.0.0.1:0'],
    ...['--recovery-bandwidth', `${RECOVERY_MIB_PER_S}`],
  ]);
  await cisternOk(['--data-dir', dir, 'volume', 'create', 'v', '--size', '64M']);
  const client = await NbdClient.connect(nbdTarget(daemon.admin.nbd), { exportName: 'v' });
  try {
    await client.write(0, Buffer.alloc(10 * MiB, 0x5a)); // three objects of 4 MiB
    await client.flush();
  } finally {
    await client.disconnect();
  }
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

test('a clean datastore scrubs clean through the daemon, text and --json', async () => {
  const text = await cisternOk(['--data-dir', dir, 'scrub']);
  assert.match(text, /^scrub \d+ requested; waiting for 1 host\(s\): local$/m);
  assert.match(text, /^ {2}local: \d+ PGs, 3 objects, 0 disagreements \(0 repaired\), 0 errors/m);
  assert.match(
    text,
    /^scrub \d+: 1 host\(s\), \d+ PGs, 3 objects compared, 0 disagreements, 0 repaired, 0 errors$/m,
  );
  const json = JSON.parse(
    await cisternOk(['--data-dir', dir, 'scrub', '--pool', 'default', '--json']),
  );
  assert.equal(json.done, true);
  assert.equal(json.pool, 'default');
  const pool = JSON.parse(await cisternOk(['--data-dir', dir, 'pool', 'ls', '--json']))[0];
  assert.equal(json.totals.pgs, pool.pgCount, 'the one host scrubs every PG');
  assert.equal(json.totals.objects, 3);
  assert.equal(json.totals.disagreements, 0);
});

test('scrub of an unknown pool is refused', async () => {
  const result = await cistern(['--data-dir', dir, 'scrub', '--pool', 'nope']);
  assert.equal(result.code, 1);
  assert.match(result.stderr, /^cistern: no pool named "nope"/m);
});

test('status shows PG states and recovery figures', async () => {
  const text = await cisternOk(['--data-dir', dir, 'status']);
  assert.match(text, /^pgs: \d+ active\+clean, 0 active\+degraded, 0 inactive, 0 incomplete$/m);
  assert.doesNotMatch(text, /^recovery:/m, 'nothing to recover');
  const report = JSON.parse(await cisternOk(['--data-dir', dir, 'status', '--json']));
  assert.equal(report.recovery.staleMembers, 0);
  assert.equal(report.recovery.bytesToCopy, 0);
  assert.equal(report.recovery.upperBound, false);
  assert.deepEqual([report.recovery.objectsDegraded, report.recovery.objectsMisplaced], [0, 0]);
  assert.equal(report.recovery.bytesPerSecond, RECOVERY_MIB_PER_S * MiB, '--recovery-bandwidth');
});
