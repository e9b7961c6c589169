// Proves a round trip of random data through nbdcopy (libnbd, several connections and
// many requests in flight) is byte for byte exact, in both directions.

import { strict as assert } from 'node:assert';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { after, before, test } from 'node:test';
import { MiB, randomBytes, run, startServer, tempDir, type TestServer } from './helpers';

let server: TestServer;
let dir: string;

before(async () => {
  dir = tempDir('nbdcopy');
  server = await startServer((provider) => provider.create('copy', 48 * MiB));
});

after(async () => {
  await server.close();
  fs.rmSync(dir, { recursive: true, force: true });
  assert.deepEqual(server.unexpectedErrors, []);
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
