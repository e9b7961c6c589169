// Proves a round trip of random data through nbdcopy (libnbd, several connections and
// many requests in flight) is byte for byte exact, in both directions, against the
// memory provider and the real datastore.

import { strict as assert } from 'node:assert';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { BACKENDS, serveBackend, type BackendServer } from './backends';
import { MiB, randomBytes, run, tempDir } from './helpers';

for (const backend of BACKENDS) {
  describe(`nbdcopy against the ${backend} backend`, () => {
    let server: BackendServer;
    let dir: string;

    before(async () => {
      dir = tempDir('nbdcopy');
      server = await serveBackend(backend, [{ name: 'copy', sizeBytes: 48 * MiB }]);
    });

    after(async () => {
      try {
        await server.close();
      } finally {
        fs.rmSync(dir, { recursive: true, force: true });
      }
    });

    test('nbdcopy file → export → file preserves every byte', async () => {
      const source = path.join(dir, 'in.raw');
      const back = path.join(dir, 'out.raw');
      const data = Buffer.alloc(48 * MiB);
      randomBytes(20 * MiB, 1).copy(data, 0);
      randomBytes(12 * MiB, 2).copy(data, 30 * MiB); // leaves a hole nbdcopy will zero or skip
      fs.writeFileSync(source, data);
      await run('nbdcopy', ['--connections=4', '--requests=32', source, server.uri('copy')]);
      await run('nbdcopy', ['--connections=4', '--requests=32', server.uri('copy'), back]);
      const copied = fs.readFileSync(back);
      assert.equal(copied.length, data.length);
      assert.ok(copied.equals(data), 'copied data differs');
    });
  });
}
