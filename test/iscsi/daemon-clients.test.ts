// Proves the daemon's iSCSI front end with real initiators against a real `cistern daemon
// --iscsi` on the real datastore: the portal is announced (log, admin.json, status,
// `volume info`); `iscsi-ls` discovers every volume as iqn.2026-11.io.cistern:<volume>
// with the portal group tag and a direct-access LUN 0 of the volume's size; `qemu-img
// info`, `convert` (in and out) and `compare` work through iscsi:// URLs; a block
// written through NBD reads back through iSCSI and one written through iSCSI reads back
// through NBD (one volume, both front ends); a new volume is a target at once; an iSCSI
// address in use or malformed is refused at start with a clear message and nothing left
// behind; and SIGTERM stops the daemon cleanly with the iSCSI server closed.

import { strict as assert } from 'node:assert';
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { after, before, test } from 'node:test';
import { NbdClient } from '../../src/frontend/nbd/client';
import net from 'node:net';
import {
  DaemonProcess,
  cisternOk,
  daemonRefused,
  killDaemons,
  nbdTarget,
  tempDir,
} from '../daemon/helpers';
import { clientOk, createVolume, runClient, spawnIscsiDaemon, volumeUrl } from './real-daemon';

const MiB = 2 ** 20;
let dir: string;
let daemon: DaemonProcess & { portal: string };

before(async () => {
  dir = tempDir('iscsi-clients');
  daemon = await spawnIscsiDaemon(dir);
  await createVolume(dir, 'alpha', '64M');
  await createVolume(dir, 'beta', '16M');
});

after(async () => {
  try {
    if (daemon.child.exitCode === null) await daemon.stop('SIGKILL');
  } finally {
    await killDaemons();
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

function admin(...args: string[]): Promise<string> {
  return cisternOk([...args, '--data-dir', dir]);
}

test('the portal is logged, in admin.json and status, and volume info gives the URL', async () => {
  assert.match(daemon.stderr(), new RegExp(`iscsi\\.listening address=${daemon.portal}`));
  const status = JSON.parse(await admin('status', '--json'));
  assert.equal(status.iscsi, daemon.portal);
  assert.match(
    await admin('status'),
    new RegExp(`; NBD on [^;]+; iSCSI on ${daemon.portal}$`, 'm'),
  );
  const info = await admin('volume', 'info', 'alpha');
  assert.match(info, /^iscsi target:\s+iqn\.2026-11\.io\.cistern:alpha \(LUN 0\)$/m);
  assert.ok(info.includes(`iscsi://${daemon.portal}/iqn.2026-11.io.cistern:alpha/0`), info);
});

test('iscsi-ls discovers every volume with its portal group tag and LUN 0', async () => {
  const listing = await clientOk('iscsi-ls', ['-s', `iscsi://${daemon.portal}`]);
  for (const [volume, mib] of [
    ['alpha', 64],
    ['beta', 16],
  ] as const) {
    const target = `Target:iqn.2026-11.io.cistern:${volume} Portal:${daemon.portal},1`;
    assert.ok(listing.includes(target), `${target} missing from:\n${listing}`);
    const block = listing.slice(listing.indexOf(target)).split('\nTarget:')[0] ?? '';
    // iscsi-ls prints the last LBA's byte offset in whole MiB: one MiB short of the size.
    assert.match(block, new RegExp(`Lun:0\\s+Type:DIRECT_ACCESS \\(Size:${mib - 1}M\\)`), block);
  }
  await createVolume(dir, 'gamma', '8M');
  const again = await clientOk('iscsi-ls', [`iscsi://${daemon.portal}`]);
  assert.ok(again.includes('Target:iqn.2026-11.io.cistern:gamma'), again);
});

test('qemu-img info, convert and compare work through iscsi:// URLs', async () => {
  const url = volumeUrl(daemon.portal, 'alpha');
  const info = JSON.parse(await clientOk('qemu-img', ['info', '--output=json', url]));
  assert.equal(info['virtual-size'], 64 * MiB);

  const source = path.join(dir, 'source.raw');
  const image = Buffer.alloc(64 * MiB);
  for (const offset of [0, 5 * MiB + 512, 33 * MiB, 64 * MiB - 4096]) {
    crypto.randomFillSync(image, offset, Math.min(3 * MiB, 64 * MiB - offset));
  }
  fs.writeFileSync(source, image);
  await clientOk('qemu-img', ['convert', '-n', '-f', 'raw', '-O', 'raw', source, url]);
  await clientOk('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', source, url]);

  const copy = path.join(dir, 'copy.raw');
  await clientOk('qemu-img', ['convert', '-f', 'raw', '-O', 'raw', url, copy]);
  assert.ok(fs.readFileSync(copy).equals(image), 'the image read back through iSCSI differs');

  // compare must be able to fail: one byte changed in the source.
  image[33 * MiB + 7] = (image[33 * MiB + 7] ?? 0) ^ 0xff;
  fs.writeFileSync(source, image);
  const compared = await runClient('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', source, url]);
  assert.equal(
    compared.code,
    1,
    `qemu-img compare should find the difference:\n${compared.stdout}`,
  );
  const at = Number(/Content mismatch at offset (\d+)/.exec(compared.stdout)?.[1]);
  assert.ok(at >= 33 * MiB && at <= 33 * MiB + 7, compared.stdout); // sector or byte offset
});

test('NBD and iSCSI serve the same volume: each reads what the other wrote', async () => {
  const nbd = await NbdClient.connect(nbdTarget(daemon.admin.nbd), { exportName: 'beta' });
  try {
    const block = crypto.randomBytes(64 * 1024);
    await nbd.write(MiB, block);
    await nbd.flush();
    const out = path.join(dir, 'beta.raw');
    await clientOk('qemu-img', [
      'convert',
      '-f',
      'raw',
      '-O',
      'raw',
      volumeUrl(daemon.portal, 'beta'),
      out,
    ]);
    const read = fs.readFileSync(out);
    assert.ok(
      read.subarray(MiB, MiB + block.length).equals(block),
      'iSCSI did not read the NBD write',
    );

    await clientOk('qemu-io', [
      ...['-f', 'raw', '-c', `write -P 0x5a ${3 * MiB} 131072`, '-c', 'flush'],
      volumeUrl(daemon.portal, 'beta'),
    ]);
    const back = await nbd.read(3 * MiB, 131072);
    assert.ok(
      back.every((byte) => byte === 0x5a),
      'NBD did not read the iSCSI write',
    );
  } finally {
    await nbd.disconnect();
  }
});

test('an iSCSI address in use or malformed is refused at start, leaving nothing', async () => {
  const other = tempDir('iscsi-refused');
  const holder = net.createServer();
  await new Promise<void>((resolve) => holder.listen(0, '127.0.0.1', resolve));
  try {
    const port = (holder.address() as net.AddressInfo).port;
    const args = ['--nbd', '127.0.0.1:0', '--admin', '127.0.0.1:0', '--iscsi'];
    const taken = await daemonRefused(other, [...args, `127.0.0.1:${port}`]);
    assert.equal(taken.exit.code, 1, taken.stderr);
    assert.match(
      taken.stderr,
      /cistern: the iSCSI address is in use .*choose another with --iscsi HOST:PORT/,
    );
    assert.deepEqual(
      fs.readdirSync(other).filter((f) => /admin\.json|daemon\.pid/.test(f)),
      [],
    );
    const malformed = await daemonRefused(other, [...args, 'not-an-address']);
    assert.equal(malformed.exit.code, 2, malformed.stderr);
    assert.match(malformed.stderr, /not a HOST:PORT address: "not-an-address"/);
  } finally {
    holder.close();
    fs.rmSync(other, { recursive: true, force: true });
  }
});

test('SIGTERM stops the daemon cleanly, closing the iSCSI server', async () => {
  const exit = await daemon.stop();
  assert.equal(exit.code, 0, daemon.stderr());
  assert.match(daemon.stderr(), /iscsi\.closed/);
  assert.match(daemon.stderr(), /daemon\.stopped/);
  assert.equal(fs.existsSync(path.join(dir, 'admin.json')), false);
});
