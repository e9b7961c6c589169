// Proves that qemu's NBD client (qemu-img, qemu-io) works against the server: image
// info, convert in and out, compare, map of holes/zeros/data, pattern writes and reads,
// write-zeroes, discard, and writes refused on a read-only export. Every test runs
// against the memory provider and the real datastore.

import { strict as assert } from 'node:assert';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { BACKENDS, serveBackend, type BackendServer } from './backends';
import { MiB, randomBytes, run, runStatus, tempDir } from './helpers';

for (const backend of BACKENDS) {
  describe(`qemu-img and qemu-io against the ${backend} backend`, () => {
    let server: BackendServer;
    let dir: string;

    before(async () => {
      dir = tempDir('qemu');
      server = await serveBackend(backend, [
        { name: 'disk', sizeBytes: 32 * MiB },
        { name: 'patterns', sizeBytes: 8 * MiB },
        { name: 'frozen', sizeBytes: 4 * MiB, readOnly: true },
      ]);
    });

    after(async () => {
      try {
        await server.close();
      } finally {
        fs.rmSync(dir, { recursive: true, force: true });
      }
    });

    test('qemu-img info sees a raw image of the export size', async () => {
      const { stdout } = await run('qemu-img', ['info', '--output=json', server.uri('disk')]);
      const info = JSON.parse(stdout) as { 'virtual-size': number; format: string };
      assert.equal(info['virtual-size'], 32 * MiB);
      assert.equal(info.format, 'raw');
    });

    test('qemu-img convert to and from the export, then compare, is byte-identical', async () => {
      const source = path.join(dir, 'source.raw');
      const back = path.join(dir, 'back.raw');
      const image = Buffer.alloc(32 * MiB);
      randomBytes(3 * MiB, 11).copy(image, 0);
      randomBytes(1 * MiB, 12).copy(image, 20 * MiB); // with a sparse middle
      fs.writeFileSync(source, image);
      await run('qemu-img', [
        'convert',
        '-n',
        '-f',
        'raw',
        '-O',
        'raw',
        source,
        server.uri('disk'),
      ]);
      await run('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', source, server.uri('disk')]);
      await run('qemu-img', ['convert', '-f', 'raw', '-O', 'raw', server.uri('disk'), back]);
      assert.ok(fs.readFileSync(back).equals(image));
    });

    test('qemu-img map reports data where written and zeros elsewhere', async () => {
      const { stdout } = await run('qemu-img', [
        'map',
        '--output=json',
        '-f',
        'raw',
        server.uri('disk'),
      ]);
      const map = JSON.parse(stdout) as Array<{
        start: number;
        length: number;
        data: boolean;
        zero: boolean;
      }>;
      const dataAt = (offset: number) =>
        map.find((entry) => entry.start <= offset && offset < entry.start + entry.length);
      assert.equal(dataAt(0)?.data, true);
      assert.equal(dataAt(10 * MiB)?.data, false);
      assert.equal(dataAt(10 * MiB)?.zero, true);
      assert.equal(dataAt(20 * MiB)?.data, true);
    });

    test('qemu-io pattern writes read back; write -z and discard read as zeros', async () => {
      const uri = server.uri('patterns');
      const { stdout } = await run('qemu-io', [
        '-f',
        'raw',
        '-c',
        'write -P 0xab 0 1M',
        '-c',
        'read -P 0xab 0 1M',
        '-c',
        'write -P 0xcd 1536 5000', // unaligned
        '-c',
        'read -P 0xcd 1536 5000',
        '-c',
        'write -P 0x11 2M 2M',
        '-c',
        'write -z 2M 1M',
        '-c',
        'read -P 0 2M 1M',
        '-c',
        'read -P 0x11 3M 1M',
        '-c',
        'discard 3M 1M',
        '-c',
        'read -P 0 3M 1M',
        '-c',
        'flush',
        uri,
      ]);
      assert.doesNotMatch(stdout, /Pattern verification failed/);
      assert.equal((stdout.match(/^read /gm) ?? []).length, 5);
    });

    test('qemu-io cannot write to a read-only export', async () => {
      assert.notEqual(
        await runStatus('qemu-io', ['-f', 'raw', '-c', 'write 0 4k', server.uri('frozen')]),
        0,
      );
      await run('qemu-io', ['-f', 'raw', '-r', '-c', 'read -P 0 0 4k', server.uri('frozen')]);
    });
  });
}
