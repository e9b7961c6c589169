// Proves the server's transmission semantics with our own client: every command in both
// reply modes, replies out of order and matched by cookie, state shared across
// connections (CAN_MULTI_CONN), read-only exports refusing writes with EPERM, errors
// mapped from the volume to NBD errno values, invalid requests answered with EINVAL
// without harming the connection, and close() finishing in-flight requests first.

import { strict as assert } from 'node:assert';
import { after, test } from 'node:test';
import { NbdClient } from '../../src/frontend/nbd/client';
import * as P from '../../src/frontend/nbd/protocol';
import { CisternError } from '../../src/util/errors';
import { Gate, failingProvider, gatedProvider } from './gated';
import { MiB, randomBytes, startServer, type TestServer } from './helpers';

const servers: TestServer[] = [];
after(async () => {
  for (const server of servers) await server.close();
  for (const server of servers) assert.deepEqual(server.unexpectedErrors, []);
});

async function serve(...args: Parameters<typeof startServer>): Promise<TestServer> {
  const server = await startServer(...args);
  servers.push(server);
  return server;
}

function rejectsWith(errno: number) {
  return (error: unknown) => P.isNbdRequestError(error, errno);
}

for (const structuredReplies of [true, false]) {
  test(`every command works with ${structuredReplies ? 'structured' : 'simple'} replies`, async () => {
    const server = await serve((provider) => provider.create('v', 4 * MiB));
    const client = await NbdClient.connect(server.target, { exportName: 'v', structuredReplies });
    assert.equal(client.size, 4 * MiB);
    assert.equal(client.structuredReplies, structuredReplies);
    const data = randomBytes(300_000, 5);
    await client.write(12_345, data, { fua: true });
    assert.ok((await client.read(12_345, data.length)).equals(data));
    assert.ok((await client.read(3 * MiB, 4096)).equals(Buffer.alloc(4096))); // a hole
    await client.writeZeroes(12_345, 1000, { noHole: true });
    assert.ok((await client.read(12_345, 1000)).equals(Buffer.alloc(1000)));
    await client.trim(1 * MiB, 1 * MiB);
    await client.cache(0, 4096);
    await client.flush();
    assert.ok(server.provider.flushCount('v') >= 1);
    if (structuredReplies) {
      const extents = await client.blockStatus(0, 4 * MiB);
      assert.deepEqual(extents[0], { length: 12_288, hole: true, zero: true }); // blocks 0-2
      assert.equal(
        extents.reduce((sum, extent) => sum + extent.length, 0),
        4 * MiB,
      );
      assert.equal((await client.blockStatus(0, 4 * MiB, { reqOne: true })).length, 1);
    } else {
      await assert.rejects(client.blockStatus(0, 4096), rejectsWith(P.NBD_EINVAL));
    }
    await client.disconnect();
  });
}

test('replies come back out of order, each matched to its request by cookie', async () => {
  const slow = new Gate();
  const server = await serve((provider) => provider.create('v', 1 * MiB), {
    wrap: (provider) => gatedProvider(provider, (offset) => (offset === 0 ? slow : undefined)),
  });
  const client = await NbdClient.connect(server.target, { exportName: 'v' });
  await client.write(0, Buffer.alloc(4096, 0xaa));
  await client.write(4096, Buffer.alloc(4096, 0xbb));
  const order: string[] = [];
  const first = client.read(0, 4096).then((data) => (order.push('first'), data));
  const second = client.read(4096, 4096).then((data) => (order.push('second'), data));
  assert.equal((await second)[0], 0xbb);
  assert.deepEqual(order, ['second']);
  slow.open();
  assert.equal((await first)[0], 0xaa);
  assert.deepEqual(order, ['second', 'first']);
  await client.disconnect();
});

test('connections share state: a write on one is read on another (multi-conn)', async () => {
  const server = await serve((provider) => provider.create('v', 1 * MiB));
  const writer = await NbdClient.connect(server.target, { exportName: 'v' });
  const reader = await NbdClient.connect(server.target, { exportName: 'v' });
  assert.ok(writer.canMultiConn && reader.canMultiConn);
  const data = randomBytes(65536, 9);
  await writer.write(4096, data);
  await writer.flush();
  assert.ok((await reader.read(4096, data.length)).equals(data));
  await reader.trim(4096, 65536);
  await reader.flush();
  assert.ok((await writer.read(4096, 65536)).equals(Buffer.alloc(65536)));
  await writer.disconnect();
  await reader.disconnect();
});

test('a read-only server refuses write, trim and zero with EPERM and still reads', async () => {
  const server = await serve((provider) => provider.create('v', 1 * MiB), { readOnly: true });
  const client = await NbdClient.connect(server.target, { exportName: 'v' });
  assert.equal(client.readOnly, true);
  assert.equal(client.canTrim, false);
  await assert.rejects(client.write(0, Buffer.alloc(512)), rejectsWith(P.NBD_EPERM));
  await assert.rejects(client.trim(0, 512), rejectsWith(P.NBD_EPERM));
  await assert.rejects(client.writeZeroes(0, 512), rejectsWith(P.NBD_EPERM));
  assert.ok((await client.read(0, 512)).equals(Buffer.alloc(512)));
  await client.flush();
  await client.disconnect();
});

test('a volume that is read-only is served read-only by a writable server', async () => {
  const server = await serve((provider) => provider.create('ro', 1 * MiB, { readOnly: true }));
  const client = await NbdClient.connect(server.target, { exportName: 'ro' });
  assert.equal(client.readOnly, true);
  await assert.rejects(client.write(0, Buffer.alloc(1)), rejectsWith(P.NBD_EPERM));
  await client.disconnect();
});

test('volume errors reach the client as NBD errno values, and the connection lives on', async () => {
  let next: unknown;
  const server = await serve((provider) => provider.create('v', 1 * MiB), {
    wrap: (provider) => failingProvider(provider, () => next),
  });
  const client = await NbdClient.connect(server.target, { exportName: 'v' });
  const cases: Array<[unknown, number]> = [
    [new CisternError('EIO', 'disk on fire'), P.NBD_EIO],
    [new CisternError('ENOSPC', 'pool full'), P.NBD_ENOSPC],
    [new CisternError('CORRUPT', 'checksum'), P.NBD_EIO],
    [new CisternError('CLOSED', 'going away'), P.NBD_ESHUTDOWN],
  ];
  for (const [error, errno] of cases) {
    next = error;
    await assert.rejects(client.read(0, 4096), rejectsWith(errno));
    await assert.rejects(client.write(0, Buffer.alloc(10)), rejectsWith(errno));
    await assert.rejects(client.flush(), rejectsWith(errno));
  }
  next = undefined;
  await client.write(0, Buffer.from('fine'));
  assert.equal((await client.read(0, 4)).toString(), 'fine');
  await client.disconnect();
});

test('a bug in the volume layer is EIO to the client and reported as unexpected', async () => {
  let fail = true;
  const reported: unknown[] = [];
  const server = await serve((provider) => provider.create('v', 1 * MiB), {
    wrap: (provider) => failingProvider(provider, () => (fail ? new TypeError('oops') : undefined)),
    onUnexpectedError: (error) => reported.push(error),
  });
  const client = await NbdClient.connect(server.target, { exportName: 'v' });
  await assert.rejects(client.read(0, 1), rejectsWith(P.NBD_EIO));
  assert.equal(reported.length, 1);
  fail = false;
  await client.read(0, 1);
  await client.disconnect();
});

test('fast zero on a volume that cannot zero fast is ENOTSUP', async () => {
  const server = await serve((provider) => provider.create('v', 1 * MiB, { fastZero: false }));
  const client = await NbdClient.connect(server.target, { exportName: 'v' });
  await assert.rejects(client.writeZeroes(0, 4096, { fastZero: true }), rejectsWith(P.NBD_ENOTSUP));
  await client.writeZeroes(0, 4096);
  await client.disconnect();
});

test('invalid requests get EINVAL or ENOSPC and the connection keeps serving', async () => {
  const server = await serve((provider) => provider.create('v', 1 * MiB));
  const client = await NbdClient.connect(server.target, { exportName: 'v' });
  await assert.rejects(client.read(1 * MiB - 1, 2), rejectsWith(P.NBD_EINVAL));
  await assert.rejects(client.write(1 * MiB, Buffer.alloc(1)), rejectsWith(P.NBD_ENOSPC));
  await assert.rejects(client.writeZeroes(1 * MiB - 1, 2), rejectsWith(P.NBD_ENOSPC));
  await assert.rejects(client.trim(2 ** 50, 1), rejectsWith(P.NBD_EINVAL));
  await assert.rejects(client.read(0, 0), rejectsWith(P.NBD_EINVAL));
  await assert.rejects(client.request(42, 0, 0, 512), rejectsWith(P.NBD_EINVAL)); // unknown command
  await assert.rejects(client.request(P.NBD_CMD_READ, 1 << 9, 0, 512), rejectsWith(P.NBD_EINVAL));
  await assert.rejects(
    client.request(P.NBD_CMD_WRITE, P.NBD_CMD_FLAG_REQ_ONE, 0, 1, Buffer.alloc(1)),
    rejectsWith(P.NBD_EINVAL),
  );
  await assert.rejects(client.request(P.NBD_CMD_FLUSH, 0, 4096, 0), rejectsWith(P.NBD_EINVAL));
  assert.ok((await client.read(0, 512, { df: true })).equals(Buffer.alloc(512)));
  await client.disconnect();
});

test('block status needs a selected context; without one it is EINVAL', async () => {
  const server = await serve((provider) => provider.create('v', 1 * MiB));
  const client = await NbdClient.connect(server.target, { exportName: 'v', blockStatus: false });
  await assert.rejects(client.blockStatus(0, 4096), rejectsWith(P.NBD_EINVAL));
  await client.disconnect();
});

test('the default export is served for an empty name when configured', async () => {
  const server = await serve((provider) => provider.create('main', 1 * MiB), {
    defaultExport: 'main',
  });
  const client = await NbdClient.connect(server.target, { exportName: '' });
  assert.equal(client.size, 1 * MiB);
  await client.disconnect();
});

test('close() lets in-flight requests finish, then closes connections', async () => {
  const gate = new Gate();
  const server = await startServer((provider) => provider.create('v', 1 * MiB), {
    wrap: (provider) => gatedProvider(provider, () => gate),
  });
  const client = await NbdClient.connect(server.target, { exportName: 'v' });
  const pending = client.read(0, 4096);
  while (gate.waiting === 0) await new Promise((resolve) => setTimeout(resolve, 5));
  let closed = false;
  const closing = server.close().then(() => (closed = true));
  await new Promise((resolve) => setTimeout(resolve, 50));
  assert.equal(closed, false, 'close() returned with a request in flight');
  gate.open();
  assert.ok((await pending).equals(Buffer.alloc(4096)));
  await closing;
  await client.closed;
  assert.equal(server.server.connectionCount, 0);
  await assert.rejects(server.server.listen('127.0.0.1', 0), /closed/);
});

test('NBD_CMD_DISC answers outstanding requests before the connection closes', async () => {
  const gate = new Gate();
  const server = await serve((provider) => provider.create('v', 1 * MiB), {
    wrap: (provider) => gatedProvider(provider, () => gate),
  });
  const client = await NbdClient.connect(server.target, { exportName: 'v' });
  const reads = [client.read(0, 100), client.read(100, 100)];
  while (gate.waiting < 2) await new Promise((resolve) => setTimeout(resolve, 5));
  const disconnected = client.disconnect();
  setTimeout(() => gate.open(), 20);
  for (const read of reads) assert.equal((await read).length, 100);
  await disconnected;
});
