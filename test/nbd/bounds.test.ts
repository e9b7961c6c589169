// Proves every bound on what a client can make the server hold: requests in flight per
// connection (the socket stops being read, even for a client that never reads replies),
// request size (oversized reads EOVERFLOW, oversized writes skipped with EINVAL, absurd
// writes hang up), option size and count, export name length, handshake time; and that
// hostile handshakes get the error reply or hard disconnect the spec prescribes.

import { strict as assert } from 'node:assert';
import { after, test } from 'node:test';
import { NbdClient } from '../../src/frontend/nbd/client';
import * as P from '../../src/frontend/nbd/protocol';
import { Gate, gatedProvider } from './gated';
import { MiB, RawConnection, startServer, type TestServer } from './helpers';

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

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

test('no more than maxInFlightRequests reach the volume at once; the rest wait unread', async () => {
  const gate = new Gate();
  const server = await serve((provider) => provider.create('v', 1 * MiB), {
    maxInFlightRequests: 4,
    wrap: (provider) => gatedProvider(provider, () => gate),
  });
  const client = await NbdClient.connect(server.target, { exportName: 'v' });
  const reads = Array.from({ length: 20 }, (_, index) => client.read(index * 4096, 4096));
  await sleep(100);
  assert.equal(gate.waiting, 4);
  gate.open();
  for (const read of reads) assert.equal((await read).length, 4096);
  assert.equal(gate.maxWaiting, 4);
  await client.disconnect();
});

test('a client that never reads its replies stops being read (memory stays bounded)', async () => {
  let volumeReads = 0;
  const server = await serve((provider) => provider.create('v', 64 * MiB), {
    maxInFlightRequests: 16,
    wrap: (provider) =>
      gatedProvider(provider, () => {
        volumeReads += 1;
        return undefined;
      }),
  });
  // Data, not holes: a hole is answered by a 32-byte OFFSET_HOLE chunk, not 1 MiB.
  const handle = await server.provider.open('v', { readOnly: false });
  await handle.write(0, Buffer.alloc(64 * MiB, 0x5a));
  const raw = await RawConnection.open(server.target);
  await raw.handshake('v', true);
  raw.socket.pause(); // from here on nothing is read from the socket
  const requests = 2000; // 2000 × 1 MiB of replies it will never read
  for (let index = 0; index < requests; index += 1) {
    const offset = BigInt((index % 64) * MiB);
    raw.write(
      P.encodeRequest({
        flags: 0,
        type: P.NBD_CMD_READ,
        cookie: BigInt(index),
        offset,
        length: MiB,
      }),
    );
  }
  await sleep(500);
  assert.ok(volumeReads < 200, `server read ${volumeReads} MiB for a client that reads nothing`);
  raw.destroy();
});

test('a read larger than 32 MiB is EOVERFLOW; the connection continues', async () => {
  const server = await serve((provider) => provider.create('v', 64 * MiB));
  const client = await NbdClient.connect(server.target, { exportName: 'v' });
  await assert.rejects(client.read(0, P.MAX_REQUEST_PAYLOAD_BYTES + 1), (error) =>
    P.isNbdRequestError(error, P.NBD_EOVERFLOW),
  );
  assert.equal(
    (await client.read(0, P.MAX_REQUEST_PAYLOAD_BYTES)).length,
    P.MAX_REQUEST_PAYLOAD_BYTES,
  );
  await client.disconnect();
});

test('a write larger than 32 MiB is skipped and refused with EINVAL; the stream stays in sync', async () => {
  const server = await serve((provider) => provider.create('v', 64 * MiB));
  const client = await NbdClient.connect(server.target, { exportName: 'v' });
  const tooBig = Buffer.alloc(P.MAX_REQUEST_PAYLOAD_BYTES + 4096, 0x77);
  await assert.rejects(client.write(0, tooBig), (error) =>
    P.isNbdRequestError(error, P.NBD_EINVAL),
  );
  assert.ok((await client.read(0, 4096)).equals(Buffer.alloc(4096)), 'oversized write landed');
  await client.write(0, Buffer.from('after'));
  assert.equal((await client.read(0, 5)).toString(), 'after');
  await client.disconnect();
});

test('a write header announcing more than we would ever skip closes the connection', async () => {
  const server = await serve((provider) => provider.create('v', 1 * MiB));
  const raw = await RawConnection.open(server.target);
  await raw.handshake('v');
  const length = P.MAX_SKIPPABLE_WRITE_BYTES + 1;
  raw.write(P.encodeRequest({ flags: 0, type: P.NBD_CMD_WRITE, cookie: 1n, offset: 0n, length }));
  assert.ok(await raw.closesWithin(2000));
});

test('a request with a bad magic closes the connection (framing is lost)', async () => {
  const server = await serve((provider) => provider.create('v', 1 * MiB));
  const raw = await RawConnection.open(server.target);
  await raw.handshake('v');
  raw.write(
    P.encodeRequest({ magic: 0x12345678, flags: 0, type: 0, cookie: 1n, offset: 0n, length: 1 }),
  );
  assert.ok(await raw.closesWithin(2000));
});

test('an option over 64 KiB is skipped with ERR_TOO_BIG; one over 1 MiB hangs up', async () => {
  const server = await serve((provider) => provider.create('v', 1 * MiB));
  const raw = await RawConnection.open(server.target);
  await raw.greet();
  raw.write(P.encodeOption(P.NBD_OPT_GO, Buffer.alloc(P.MAX_OPTION_DATA_BYTES + 1)));
  assert.equal((await raw.readOptionReply()).replyType, P.NBD_REP_ERR_TOO_BIG);
  raw.write(P.encodeOption(P.NBD_OPT_GO, P.encodeInfoRequest({ exportName: 'v', infoTypes: [] })));
  assert.equal((await raw.readOptionReply()).replyType, P.NBD_REP_INFO); // still negotiating
  raw.destroy();

  const hostile = await RawConnection.open(server.target);
  await hostile.greet();
  const header = P.encodeOption(P.NBD_OPT_GO).subarray(0, P.OPTION_HEADER_BYTES);
  header.writeUInt32BE(P.MAX_SKIPPABLE_OPTION_BYTES + 1, 12);
  hostile.write(header);
  assert.ok(await hostile.closesWithin(2000));
});

test('option replies for unknown, unsupported and malformed options', async () => {
  const server = await serve((provider) => provider.create('v', 1 * MiB));
  const raw = await RawConnection.open(server.target);
  await raw.greet();
  const ask = async (option: number, data?: Buffer) => {
    raw.write(P.encodeOption(option, data));
    return (await raw.readOptionReply()).replyType;
  };
  assert.equal(await ask(999), P.NBD_REP_ERR_UNSUP);
  assert.equal(await ask(P.NBD_OPT_STARTTLS), P.NBD_REP_ERR_UNSUP);
  assert.equal(await ask(P.NBD_OPT_EXTENDED_HEADERS), P.NBD_REP_ERR_UNSUP);
  assert.equal(await ask(P.NBD_OPT_LIST, Buffer.alloc(3)), P.NBD_REP_ERR_INVALID);
  assert.equal(await ask(P.NBD_OPT_STRUCTURED_REPLY, Buffer.alloc(1)), P.NBD_REP_ERR_INVALID);
  const meta = P.encodeMetaContextRequest({ exportName: 'v', queries: [P.BASE_ALLOCATION] });
  assert.equal(await ask(P.NBD_OPT_SET_META_CONTEXT, meta), P.NBD_REP_ERR_INVALID); // no SR yet
  const longName = P.encodeInfoRequest({
    exportName: 'n'.repeat(P.MAX_STRING_BYTES + 1),
    infoTypes: [],
  });
  assert.equal(await ask(P.NBD_OPT_INFO, longName), P.NBD_REP_ERR_INVALID);
  assert.equal(await ask(P.NBD_OPT_INFO, Buffer.alloc(3)), P.NBD_REP_ERR_INVALID);
  const unknown = P.encodeInfoRequest({ exportName: 'nope', infoTypes: [] });
  assert.equal(await ask(P.NBD_OPT_GO, unknown), P.NBD_REP_ERR_UNKNOWN);
  assert.equal(await ask(P.NBD_OPT_ABORT), P.NBD_REP_ACK);
  assert.ok(await raw.closesWithin(2000));
});

test('NBD_OPT_EXPORT_NAME: unknown name hangs up (the spec allows no error reply); known works', async () => {
  const server = await serve((provider) => provider.create('v', 1 * MiB));
  const raw = await RawConnection.open(server.target);
  await raw.greet();
  raw.write(P.encodeOption(P.NBD_OPT_EXPORT_NAME, Buffer.from('nope')));
  assert.ok(await raw.closesWithin(2000));

  const good = await RawConnection.open(server.target);
  await good.greet(P.NBD_FLAG_C_FIXED_NEWSTYLE); // without NO_ZEROES: expect the 124 zeroes
  good.write(P.encodeOption(P.NBD_OPT_EXPORT_NAME, Buffer.from('v')));
  const reply = await good.read(10 + P.EXPORT_NAME_REPLY_ZEROES_BYTES);
  assert.ok(reply !== undefined);
  assert.equal(reply.readBigUInt64BE(0), BigInt(1 * MiB));
  assert.ok(reply.subarray(10).equals(Buffer.alloc(P.EXPORT_NAME_REPLY_ZEROES_BYTES)));
  good.write(
    P.encodeRequest({ flags: 0, type: P.NBD_CMD_READ, cookie: 7n, offset: 0n, length: 16 }),
  );
  const simple = await good.read(P.SIMPLE_REPLY_HEADER_BYTES + 16);
  assert.ok(simple !== undefined);
  assert.equal(simple.readUInt32BE(0), P.NBD_SIMPLE_REPLY_MAGIC);
  assert.equal(simple.readBigUInt64BE(8), 7n);
  good.destroy();
});

test('unknown client flags and silent clients are disconnected', async () => {
  const server = await serve((provider) => provider.create('v', 1 * MiB), {
    handshakeTimeoutMs: 200,
  });
  const badFlags = await RawConnection.open(server.target);
  await badFlags.greet(0x80);
  assert.ok(await badFlags.closesWithin(2000));
  const silent = await RawConnection.open(server.target);
  assert.ok(await silent.closesWithin(2000), 'a silent client was not timed out');
});
