// Proves, with libnbd's nbdinfo as an independent client, that the handshake (LIST,
// INFO/GO with name, description and block size, meta contexts) is what the spec says:
// exports are listed with their descriptions, every capability flag we advertise is seen
// (and read-only exports drop the write ones), and --map shows holes and data where the
// volume has them. Every test runs against the memory provider and the real datastore.

import { strict as assert } from 'node:assert';
import { after, before, describe, test } from 'node:test';
import { BACKENDS, serveBackend, type BackendServer } from './backends';
import { MiB, run, runStatus } from './helpers';

for (const backend of BACKENDS) {
  describe(`nbdinfo against the ${backend} backend`, () => {
    let server: BackendServer;

    before(async () => {
      server = await serveBackend(backend, [
        { name: 'alpha', sizeBytes: 16 * MiB, description: 'the first volume' },
        { name: 'beta', sizeBytes: 8 * MiB },
        { name: 'frozen', sizeBytes: 4 * MiB, readOnly: true },
      ]);
    });

    after(() => server.close());

    test('nbdinfo --list shows every export with its size and description', async () => {
      const { stdout } = await run('nbdinfo', ['--list', '--json', server.uri('')]);
      const listing = JSON.parse(stdout) as {
        exports: Array<{ 'export-name': string; description?: string; 'export-size': number }>;
      };
      const byName = new Map(listing.exports.map((entry) => [entry['export-name'], entry]));
      assert.deepEqual([...byName.keys()].sort(), ['alpha', 'beta', 'frozen']);
      const described = (await server.provider.list()).find((info) => info.name === 'alpha');
      assert.ok(described !== undefined && described.description !== '');
      if (backend === 'memory') assert.equal(described.description, 'the first volume');
      assert.equal(byName.get('alpha')?.description, described.description);
      assert.equal(byName.get('alpha')?.['export-size'], 16 * MiB);
      assert.equal(byName.get('frozen')?.['export-size'], 4 * MiB);
    });

    test('nbdinfo reports block size constraints 1 / 4096 / 32 MiB and structured replies', async () => {
      const { stdout } = await run('nbdinfo', [server.uri('alpha')]);
      assert.match(stdout, /block_size_minimum: 1\b/);
      assert.match(stdout, /block_size_preferred: 4096\b/);
      assert.match(stdout, /block_size_maximum: 33554432\b/);
      assert.match(stdout, /using structured packets/);
    });

    for (const capability of [
      'flush',
      'trim',
      'zero',
      'fast-zero',
      'fua',
      'multi-conn',
      'cache',
      'df',
    ]) {
      test(`nbdinfo --can ${capability} is true on a writable export`, async () => {
        assert.equal(await runStatus('nbdinfo', ['--can', capability, server.uri('alpha')]), 0);
      });
    }

    test('a read-only export says read-only and cannot trim, zero or fua', async () => {
      assert.equal(await runStatus('nbdinfo', ['--is', 'read-only', server.uri('frozen')]), 0);
      assert.equal(await runStatus('nbdinfo', ['--is', 'read-only', server.uri('alpha')]), 2);
      for (const capability of ['trim', 'zero', 'fua']) {
        assert.equal(await runStatus('nbdinfo', ['--can', capability, server.uri('frozen')]), 2);
      }
      assert.equal(await runStatus('nbdinfo', ['--can', 'flush', server.uri('frozen')]), 0);
    });

    test('nbdinfo --map shows written data and holes at the right offsets', async () => {
      const handle = await server.open('beta');
      try {
        await handle.write(1 * MiB, Buffer.alloc(1 * MiB, 0xee));
      } finally {
        await handle.close();
      }
      const { stdout } = await run('nbdinfo', ['--map', '--json', server.uri('beta')]);
      const map = JSON.parse(stdout) as Array<{ offset: number; length: number; type: number }>;
      assert.deepEqual(
        map.map(({ offset, length, type }) => ({ offset, length, type })),
        [
          { offset: 0, length: 1 * MiB, type: 3 }, // hole + zero
          { offset: 1 * MiB, length: 1 * MiB, type: 0 }, // data
          { offset: 2 * MiB, length: 6 * MiB, type: 3 },
        ],
      );
    });

    test('an unknown export name is refused by GO with a clear error', async () => {
      assert.notEqual(await runStatus('nbdinfo', [server.uri('missing')]), 0);
    });
  });
}
