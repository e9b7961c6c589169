// Proves fio's own NBD engine (libnbd) can hammer the server with deep queues of random
// writes and then verify every block by crc32c: out-of-order replies are matched to the
// right requests and no write is lost or misplaced, against the memory provider and the
// real datastore.

import { strict as assert } from 'node:assert';
import * as fs from 'node:fs';
import { after, before, describe, test } from 'node:test';
import { BACKENDS, serveBackend, type BackendServer } from './backends';
import { MiB, fioVerify, tempDir } from './helpers';

for (const backend of BACKENDS) {
  describe(`fio against the ${backend} backend`, () => {
    let server: BackendServer;
    let dir: string;

    before(async () => {
      dir = tempDir('fio');
      server = await serveBackend(backend, [{ name: 'fio', sizeBytes: 64 * MiB }]);
    });

    after(async () => {
      try {
        await server.close();
      } finally {
        fs.rmSync(dir, { recursive: true, force: true });
      }
    });

    test('fio --ioengine=nbd randwrite with verify=crc32c finds no corruption', async () => {
      const job = await fioVerify(server.uri('fio'), 32 * MiB, { cwd: dir });
      assert.equal(job.error, 0);
      assert.ok(job.writtenBytes >= 32 * MiB, `wrote only ${job.writtenBytes} bytes`);
      assert.ok(job.readBytes >= 32 * MiB, `verified only ${job.readBytes} bytes`);
    });
  });
}
