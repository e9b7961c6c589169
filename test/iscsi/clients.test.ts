// Real initiators against the iSCSI target (transport + the real SCSI logical unit over
// in-memory volumes): iscsi-ls discovery, iscsi-inq and qemu-img info/convert/compare
// through iscsi:// URLs, CHAP (one-way and mutual) through URL credentials, a wrong
// secret and an initiator outside the access list refused, and libiscsi's own iSCSI
// conformance tests of the transport (CmdSN window, DataSN, task management, read
// residuals). A missing tool fails the test (scripts/install-test-deps.sh installs them).

import { strict as assert } from 'node:assert';
import { spawnSync } from 'node:child_process';
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { createLogicalUnit } from '../../src/frontend/iscsi/scsi/logical-unit';
import { MiB, serveTarget, type ServedTarget } from './helpers';

const ALLOWED = 'iqn.2026-11.io.cistern.test:allowed';
const CHAP = { user: 'alice', secret: 'alice-secret-16b' };
const MUTUAL = { user: 'cistern-target', secret: 'target-secret-16' };

let target: ServedTarget;
let scratch: string;

before(async () => {
  target = await serveTarget(
    [
      { name: 'vol', sizeBytes: 64 * MiB },
      { name: 'copy', sizeBytes: 8 * MiB },
      { name: 'restricted', sizeBytes: 4 * MiB },
      { name: 'chap', sizeBytes: 4 * MiB },
      { name: 'mutual', sizeBytes: 4 * MiB },
    ],
    { createLogicalUnit },
  );
  target.access.rules.set('restricted', { allowedInitiators: [ALLOWED] });
  target.access.rules.set('chap', { allowedInitiators: [], chap: CHAP });
  target.access.rules.set('mutual', {
    allowedInitiators: [],
    chap: { ...CHAP, mutualUser: MUTUAL.user, mutualSecret: MUTUAL.secret },
  });
  scratch = fs.mkdtempSync(path.join(os.tmpdir(), 'cistern-iscsi-'));
});

after(async () => {
  fs.rmSync(scratch, { recursive: true, force: true });
  await target.close();
});

interface Run {
  status: number | null;
  stdout: string;
  stderr: string;
}

/** Runs a client off the event loop's thread (spawnSync would block the server). */
async function run(command: string, args: string[], timeoutMs = 60_000): Promise<Run> {
  const { spawn } = await import('node:child_process');
  return new Promise((resolve, reject) => {
    const child = spawn(command, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (chunk: Buffer) => (stdout += chunk.toString()));
    child.stderr.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
    const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
    child.once('error', (error) => {
      clearTimeout(timer);
      reject(error);
    });
    child.once('close', (status) => {
      clearTimeout(timer);
      resolve({ status, stdout, stderr });
    });
  });
}

function toolPresent(tool: string): void {
  const found = spawnSync('sh', ['-c', `command -v ${tool}`]);
  assert.equal(found.status, 0, `${tool} is missing: run scripts/install-test-deps.sh`);
}

function portal(): string {
  return `iscsi://127.0.0.1:${target.port}`;
}

describe('libiscsi tools', () => {
  test('iscsi-ls discovers every target with its portal', async () => {
    toolPresent('iscsi-ls');
    const listed = await run('iscsi-ls', ['-i', ALLOWED, portal()]);
    assert.equal(listed.status, 0, listed.stderr);
    assert.match(
      listed.stdout,
      new RegExp(`Target:iqn\\.2026-11\\.io\\.cistern:vol Portal:127\\.0\\.0\\.1:${target.port},1`),
    );
    for (const name of ['copy', 'restricted', 'chap', 'mutual']) {
      assert.match(listed.stdout, new RegExp(`Target:iqn\\.2026-11\\.io\\.cistern:${name} `));
    }
  });

  test('iscsi-ls -s logs in to each target and shows LUN 0 as a disk of the volume size', async () => {
    // A target of its own: -s gives up at the first target it cannot log in to (CHAP).
    const open = await serveTarget([{ name: 'Disk_A', sizeBytes: 64 * MiB }], {
      createLogicalUnit,
    });
    try {
      const listed = await run('iscsi-ls', ['-s', `iscsi://127.0.0.1:${open.port}`]);
      assert.equal(listed.status, 0, listed.stderr);
      assert.match(listed.stdout, /Target:iqn\.2026-11\.io\.cistern:disk_a /);
      // iscsi-ls prints the last LBA times the block size: one block short of 64 MiB.
      assert.match(listed.stdout, /Lun:0\s+Type:DIRECT_ACCESS \(Size:63M\)/);
    } finally {
      await open.close();
    }
  });

  test('an initiator outside the access list neither sees nor reaches the target', async () => {
    const listed = await run('iscsi-ls', ['-i', 'iqn.2026-11.io.cistern.test:stranger', portal()]);
    assert.equal(listed.status, 0, listed.stderr);
    assert.doesNotMatch(listed.stdout, /restricted/);
    const refused = await run('iscsi-inq', [
      '-i',
      'iqn.2026-11.io.cistern.test:stranger',
      `${portal()}/iqn.2026-11.io.cistern:restricted/0`,
    ]);
    assert.notEqual(refused.status, 0, 'a stranger got in');
    const allowed = await run('iscsi-inq', [
      '-i',
      ALLOWED,
      `${portal()}/iqn.2026-11.io.cistern:restricted/0`,
    ]);
    assert.equal(allowed.status, 0, allowed.stderr);
    assert.match(allowed.stdout, /Peripheral Device Type:DIRECT_ACCESS/);
  });

  test('CHAP: the right secret logs in, a wrong or missing one is refused', async () => {
    const good = await run('iscsi-inq', [target.url('chap', CHAP)]);
    assert.equal(good.status, 0, good.stderr);
    const wrong = await run('iscsi-inq', [
      target.url('chap', { user: CHAP.user, secret: 'not-the-secret!!' }),
    ]);
    assert.notEqual(wrong.status, 0, 'a wrong CHAP secret got in');
    const none = await run('iscsi-inq', [target.url('chap')]);
    assert.notEqual(none.status, 0, 'no CHAP secret got in');
  });

  test('mutual CHAP: the target proves its own secret to libiscsi', async () => {
    const url = `${target.url('mutual', CHAP)}?target_user=${MUTUAL.user}&target_password=${MUTUAL.secret}`;
    const good = await run('iscsi-inq', [url]);
    assert.equal(good.status, 0, good.stderr);
    const distrusted = `${target.url('mutual', CHAP)}?target_user=${MUTUAL.user}&target_password=other-secret-16b`;
    const refused = await run('iscsi-inq', [distrusted]);
    assert.notEqual(
      refused.status,
      0,
      'libiscsi accepted a target that does not know the mutual secret',
    );
  });

  test("libiscsi's iSCSI transport conformance tests pass: CmdSN window, DataSN, task management, read residuals", async () => {
    toolPresent('iscsi-test-cu');
    const suites = [
      'iSCSI.iSCSIcmdsn',
      'iSCSI.iSCSIdatasn',
      'iSCSI.iSCSITMF',
      'iSCSI.iSCSIResiduals.Read10Invalid',
      'iSCSI.iSCSIResiduals.Read10Residuals',
      'iSCSI.iSCSIResiduals.Read12Residuals',
      'iSCSI.iSCSIResiduals.Read16Residuals',
    ];
    for (const suite of suites) {
      const result = await run(
        'iscsi-test-cu',
        ['--dataloss', '-t', suite, `${portal()}/iqn.2026-11.io.cistern:vol/0`],
        120_000,
      );
      const summary = /tests\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)/.exec(result.stdout);
      assert.ok(summary !== null, `${suite}: no summary\n${result.stdout}\n${result.stderr}`);
      const [, total, ran, passed, failed] = summary.map(Number);
      assert.ok((total ?? 0) > 0, `${suite}: ran no test`);
      assert.deepEqual([ran, passed, failed], [total, total, 0], `${suite}:\n${result.stdout}`);
    }
  });
});

describe('qemu-img', () => {
  test('qemu-img info sees the volume size through an iscsi:// URL', async () => {
    toolPresent('qemu-img');
    const info = await run('qemu-img', ['info', '--output=json', target.url('vol')]);
    assert.equal(info.status, 0, info.stderr);
    assert.equal((JSON.parse(info.stdout) as { 'virtual-size': number })['virtual-size'], 64 * MiB);
  });

  test('qemu-img convert writes an image onto a volume and back; qemu-img compare finds them identical', async () => {
    const source = path.join(scratch, 'source.raw');
    const data = crypto.randomBytes(8 * MiB);
    data.fill(0, 2 * MiB, 3 * MiB); // a zero run for qemu to skip or write as zeros
    fs.writeFileSync(source, data);
    const written = await run('qemu-img', [
      'convert',
      '-n',
      '-f',
      'raw',
      '-O',
      'raw',
      source,
      target.url('copy'),
    ]);
    assert.equal(written.status, 0, written.stderr);
    const compared = await run('qemu-img', [
      'compare',
      '-f',
      'raw',
      '-F',
      'raw',
      source,
      target.url('copy'),
    ]);
    assert.equal(compared.status, 0, compared.stdout + compared.stderr);
    const back = path.join(scratch, 'back.raw');
    const read = await run('qemu-img', [
      'convert',
      '-f',
      'raw',
      '-O',
      'raw',
      target.url('copy'),
      back,
    ]);
    assert.equal(read.status, 0, read.stderr);
    assert.ok(fs.readFileSync(back).equals(data), 'bytes read back through iSCSI differ');
  });

  test('qemu-img (libiscsi) with CRC32C header digests negotiated', async () => {
    const before = target.sessions.length;
    const options = `driver=iscsi,transport=tcp,portal=127.0.0.1:${target.port},target=iqn.2026-11.io.cistern:vol,lun=0,header-digest=crc32c`;
    const info = await run('qemu-img', ['info', '--image-opts', options]);
    assert.equal(info.status, 0, info.stderr);
    const session = target.sessions.slice(before).find((candidate) => candidate.type === 'normal');
    assert.ok(session !== undefined, 'no session');
    assert.equal(
      session.params.headerDigest,
      true,
      'qemu asked for CRC32C header digests but none were negotiated',
    );
  });

  test('qemu-img with CHAP credentials and an initiator name from the access list', async () => {
    const withChap = await run('qemu-img', ['info', target.url('chap', CHAP)]);
    assert.equal(withChap.status, 0, withChap.stderr);
    const options = (initiator: string): string =>
      `driver=iscsi,transport=tcp,portal=127.0.0.1:${target.port},target=iqn.2026-11.io.cistern:restricted,lun=0,initiator-name=${initiator}`;
    const allowed = await run('qemu-img', ['info', '--image-opts', options(ALLOWED)]);
    assert.equal(allowed.status, 0, allowed.stderr);
    const stranger = await run('qemu-img', [
      'info',
      '--image-opts',
      options('iqn.2026-11.io.cistern.test:stranger'),
    ]);
    assert.notEqual(stranger.status, 0, 'qemu got in from outside the access list');
  });
});
