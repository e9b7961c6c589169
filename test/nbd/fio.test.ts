// Proves fio's own NBD engine (libnbd) can hammer the server with deep queues of random
// writes and then verify every block by crc32c: out-of-order replies are matched to the
// right requests and no write is lost or misplaced, against the memory provider and the
// real datastore.

import { strict as assert } from 'node:assert';
import * as fs from 'node:fs';
import { after, before, describe, test } from 'node:test';
import { BACKENDS, serveBackend, type BackendServer } from './backends';
import { MiB, run, tempDir } from './helpers';

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
      const { stdout } = await run(
        'fio',
        [
          '--name=verify',
          '--ioengine=nbd',
          `--uri=${server.uri('fio')}`,
          '--rw=randwrite',
          '--bsrange=4k-128k',
          '--size=32M',
          '--iodepth=32',
          '--verify=crc32c',
          '--do_verify=1',
          '--verify_fatal=1',
          '--verify_state_save=0',
          '--output-format=json',
        ],
        { cwd: dir, timeoutMs: 120_000 },
      );
      const report = JSON.parse(stdout.slice(stdout.indexOf('{'))) as {
        jobs: Array<{ error: number; write: { io_bytes: number }; read: { io_bytes: number } }>;
      };
      const job = report.jobs[0];
      assert.ok(job !== undefined);
      assert.equal(job.error, 0);
      assert.ok(job.write.io_bytes >= 32 * MiB, `wrote only ${job.write.io_bytes} bytes`);
      assert.ok(job.read.io_bytes >= 32 * MiB, `verified only ${job.read.io_bytes} bytes`);
    });
  });
}
