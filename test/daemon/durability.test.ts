// Proves the durability promises of the real daemon process (`cistern daemon` on sparse
// file disks, the native O_DIRECT engine), checked byte for byte against a model of the
// whole volume after a restart, by our NBD client and by qemu-img compare:
// - after a FLUSH on one connection, every write acknowledged before it on any connection
//   (our client on two connections, nbdcopy, qemu-io pattern writes, zero writes and
//   discards) survives kill -9 (invariant 1; CAN_MULTI_CONN's promise);
// - writes acknowledged after the last flush and then lost to kill -9 leave each 4 KiB
//   block holding its flushed content or a later write to it, never anything else
//   (invariant 2);
// - a clean SIGTERM stop keeps every acknowledged write, flushed or not;
// - FUA writes, FUA zero writes and FUA discards survive kill -9 with no flush at all,
//   both on objects that already existed and on objects the FUA write created.

import { strict as assert } from 'node:assert';
import fs from 'node:fs';
import path from 'node:path';
import { after, test } from 'node:test';
import { NbdClient } from '../../src/frontend/nbd/client';
import { Random } from '../../src/util/random';
import { scratchDir } from '../datastore/helpers';
import { daemonDiskArgs } from '../nbd/backends';
import { randomBytes, run } from '../nbd/helpers';
import { killDaemons, RestartableDaemon } from './helpers';

const MiB = 2 ** 20;
const KiB = 2 ** 10;
const BLOCK_BYTES = 4 * KiB;
const OBJECT_BYTES = 4 * MiB;
const VOLUME_NAME = 'v';
const VOLUME_BYTES = 128 * MiB;
/** Reads for verification are split into requests of this size. */
const VERIFY_CHUNK_BYTES = 4 * MiB;

const dirs: string[] = [];

after(async () => {
  await killDaemons();
  for (const dir of dirs) fs.rmSync(dir, { recursive: true, force: true });
});

/** A daemon on a scratch dir with three file disks; restartable on the same dir. */
function newHost(): RestartableDaemon {
  const dir = scratchDir('cistern-durability-');
  dirs.push(dir);
  return new RestartableDaemon(dir, VOLUME_NAME, daemonDiskArgs(dir));
}

interface Range {
  offset: number;
  length: number;
}

function overlaps(a: Range, b: Range): boolean {
  return a.offset < b.offset + b.length && b.offset < a.offset + a.length;
}

/** A range of a shape clients send: tiny and unaligned, aligned, across an object edge, big. */
function randomRange(random: Random, limitBytes: number): Range {
  const shape = random.int(10);
  let length: number;
  let offset: number;
  if (shape === 0) {
    length = random.range(1, 600);
    offset = random.int(limitBytes - length);
  } else if (shape <= 6) {
    length = random.range(1, 64) * BLOCK_BYTES;
    offset = random.int((limitBytes - length) / BLOCK_BYTES) * BLOCK_BYTES;
  } else if (shape <= 8) {
    length = random.range(2, 256) * 512;
    const edge = random.range(1, limitBytes / OBJECT_BYTES - 1) * OBJECT_BYTES;
    offset = edge - random.range(1, length - 1);
  } else {
    length = random.range(256 * KiB, 1 * MiB);
    offset = random.int(limitBytes - length);
  }
  return { offset, length };
}

/** Up to `count` ranges below `limitBytes`, none overlapping another (so order is moot). */
function disjointRanges(random: Random, count: number, limitBytes: number): Range[] {
  const ranges: Range[] = [];
  for (let attempt = 0; attempt < count * 4 && ranges.length < count; attempt += 1) {
    const range = randomRange(random, limitBytes);
    if (!ranges.some((other) => overlaps(other, range))) ranges.push(range);
  }
  return ranges;
}

/**
 * Rounds of concurrent writes, zero writes and discards spread over `clients`; the
 * model follows. A discarded range may read as anything the volume chooses, but it must
 * keep reading that: the model takes what a read returns right after the discard.
 */
async function randomLoad(
  clients: readonly NbdClient[],
  model: Buffer,
  random: Random,
  rounds: number,
): Promise<void> {
  let seed = random.u32();
  for (let round = 0; round < rounds; round += 1) {
    const discarded: Range[] = [];
    await Promise.all(
      disjointRanges(random, 16, model.length).map(async (range) => {
        const client = random.pick(clients);
        const kind = random.int(10);
        if (kind < 8) {
          const data = randomBytes(range.length, (seed += 1));
          await client.write(range.offset, data);
          data.copy(model, range.offset);
        } else if (kind === 8) {
          await client.writeZeroes(range.offset, range.length);
          model.fill(0, range.offset, range.offset + range.length);
        } else {
          await client.trim(range.offset, range.length);
          discarded.push(range);
        }
      }),
    );
    for (const range of discarded) {
      (await random.pick(clients).read(range.offset, range.length)).copy(model, range.offset);
    }
  }
}

/** The whole volume equals the model: by our client (first bad offset) and by qemu-img. */
async function assertVolumeEquals(
  host: RestartableDaemon,
  model: Buffer,
  scratch: string,
): Promise<void> {
  const client = await host.connect();
  try {
    assert.equal(client.size, model.length);
    for (let offset = 0; offset < model.length; offset += VERIFY_CHUNK_BYTES) {
      const expected = model.subarray(offset, offset + VERIFY_CHUNK_BYTES);
      const actual = await client.read(offset, expected.length);
      if (!actual.equals(expected)) {
        let at = 0;
        while (actual[at] === expected[at]) at += 1;
        assert.fail(`volume differs from the model at byte ${offset + at}`);
      }
    }
  } finally {
    await client.disconnect();
  }
  const file = path.join(scratch, 'model.raw');
  fs.writeFileSync(file, model);
  await run('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', file, host.uri()]);
}

async function dropClients(clients: readonly NbdClient[]): Promise<void> {
  // The daemon is gone: each connection closes, failing whatever it still had in flight.
  await Promise.all(clients.map((client) => client.closed));
}

test('everything acknowledged before a FLUSH survives kill -9: our client, nbdcopy, qemu-io', async () => {
  const host = newHost();
  await host.start();
  await host.createVolume(VOLUME_BYTES);
  const model = Buffer.alloc(VOLUME_BYTES);
  const random = new Random(1);

  // nbdcopy writes the start of the volume from a file, with its own connections.
  const copied = randomBytes(24 * MiB, 7);
  const source = path.join(host.dir, 'source.raw');
  fs.writeFileSync(source, copied);
  await run('nbdcopy', ['--connections=4', '--requests=16', source, host.uri()]);
  copied.copy(model, 0);

  // qemu-io: pattern writes, a zero write and a discard on data written above.
  await run('qemu-io', [
    ...['-f', 'raw'],
    ...['-c', `write -P 0x5a ${40 * MiB + 512} ${3 * MiB}`],
    ...['-c', `write -z ${41 * MiB} ${512 * KiB}`],
    ...['-c', `write -P 0xc3 ${OBJECT_BYTES * 20 - 5000} 10000`],
    ...['-c', `discard ${8 * MiB} ${4 * MiB}`],
    host.uri(),
  ]);
  model.fill(0x5a, 40 * MiB + 512, 43 * MiB + 512);
  model.fill(0, 41 * MiB, 41 * MiB + 512 * KiB);
  model.fill(0xc3, OBJECT_BYTES * 20 - 5000, OBJECT_BYTES * 20 + 5000);
  const clients = [await host.connect(), await host.connect()];
  (await clients[0]!.read(8 * MiB, 4 * MiB)).copy(model, 8 * MiB);

  // Last (qemu-io flushes as it exits), our client on two connections: writes, zero
  // writes and discards everywhere, over what the others wrote.
  await randomLoad(clients, model, random, 24);

  // One FLUSH on one connection covers what every connection had acknowledged.
  await clients[1]!.flush();
  await host.stop('SIGKILL');
  await dropClients(clients);

  await host.start();
  await assertVolumeEquals(host, model, host.dir);
  await host.stop('SIGTERM');
});

test('after kill -9, each block written since the last flush holds its old or a new content', async () => {
  const host = newHost();
  await host.start();
  await host.createVolume(VOLUME_BYTES);
  const limitBytes = 32 * MiB;
  const flushed = randomBytes(16 * MiB, 21); // objects 0-3 exist; 4-7 are new below
  const client = await host.connect();
  await client.write(0, flushed);
  await client.flush();

  // Unflushed: whole blocks, acknowledged ones and a batch still in flight at the kill.
  const random = new Random(2);
  const ranges = disjointRanges(random, 96, limitBytes).map(({ offset, length }) => {
    const start = Math.floor(offset / BLOCK_BYTES) * BLOCK_BYTES;
    const end = Math.ceil((offset + length) / BLOCK_BYTES) * BLOCK_BYTES;
    return { offset: start, length: end - start };
  });
  const later = new Map<number, Buffer[]>(); // block → every content written to it
  const writes = ranges.map((range, index) => {
    const data = randomBytes(range.length, 1000 + index);
    for (let at = 0; at < range.length; at += BLOCK_BYTES) {
      const block = (range.offset + at) / BLOCK_BYTES;
      later.set(block, [...(later.get(block) ?? []), data.subarray(at, at + BLOCK_BYTES)]);
    }
    return { range, data };
  });
  const half = writes.length / 2;
  await Promise.all(
    writes.slice(0, half).map(({ range, data }) => client.write(range.offset, data)),
  );
  const inFlight = writes
    .slice(half)
    .map(({ range, data }) => client.write(range.offset, data).catch(() => undefined));
  await host.stop('SIGKILL');
  await Promise.all(inFlight);
  await dropClients([client]);

  await host.start();
  const again = await host.connect();
  try {
    const actual = await again.read(0, limitBytes);
    for (let block = 0; block < limitBytes / BLOCK_BYTES; block += 1) {
      const offset = block * BLOCK_BYTES;
      const content = actual.subarray(offset, offset + BLOCK_BYTES);
      const old =
        offset < flushed.length
          ? flushed.subarray(offset, offset + BLOCK_BYTES)
          : Buffer.alloc(BLOCK_BYTES);
      const candidates = later.get(block) ?? [];
      if (candidates.some((candidate) => candidate.equals(content))) continue;
      assert.ok(content.equals(old), `block ${block} (byte ${offset}) is foreign data`);
    }
  } finally {
    await again.disconnect();
  }
  await host.stop('SIGTERM');
});

test('a SIGTERM stop keeps every acknowledged write, flushed or not', async () => {
  const host = newHost();
  await host.start();
  await host.createVolume(VOLUME_BYTES);
  const model = Buffer.alloc(VOLUME_BYTES);
  const copied = randomBytes(12 * MiB, 31);
  const source = path.join(host.dir, 'source.raw');
  fs.writeFileSync(source, copied);
  await run('nbdcopy', ['--connections=2', source, host.uri()]); // no --flush
  copied.copy(model, 0);
  const clients = [await host.connect(), await host.connect()];
  await randomLoad(clients, model, new Random(3), 16);
  await run('qemu-io', ['-f', 'raw', '-c', `write -P 0x7e ${100 * MiB} ${2 * MiB}`, host.uri()]);
  model.fill(0x7e, 100 * MiB, 102 * MiB);

  await host.stop('SIGTERM');
  await dropClients(clients);
  await host.start();
  await assertVolumeEquals(host, model, host.dir);
  await host.stop('SIGTERM');
});

test('FUA writes, zero writes and discards survive kill -9 without any flush', async () => {
  const host = newHost();
  await host.start();
  await host.createVolume(VOLUME_BYTES);
  const model = Buffer.alloc(VOLUME_BYTES);
  const client = await host.connect();
  const base = randomBytes(16 * MiB, 41); // objects 0-3, flushed
  await client.write(0, base);
  await client.flush();
  base.copy(model, 0);

  const random = new Random(4);
  let seed = 500;
  const fuaWrites = [
    ...disjointRanges(random, 24, 16 * MiB), // into existing objects
    ...disjointRanges(random, 24, 64 * MiB).filter((range) => range.offset >= 16 * MiB), // new
  ];
  await Promise.all(
    fuaWrites.map(async (range) => {
      const data = randomBytes(range.length, (seed += 1));
      await client.write(range.offset, data, { fua: true });
      data.copy(model, range.offset);
    }),
  );
  assert.ok(
    fuaWrites.some((range) => range.offset >= 16 * MiB),
    'no FUA write made an object',
  );
  await client.writeZeroes(5 * MiB + 100, 700 * KiB, { fua: true });
  model.fill(0, 5 * MiB + 100, 5 * MiB + 100 + 700 * KiB);
  await client.trim(12 * MiB, 2 * MiB, { fua: true });
  (await client.read(12 * MiB, 2 * MiB)).copy(model, 12 * MiB);

  await host.stop('SIGKILL');
  await dropClients([client]);
  await host.start();
  await assertVolumeEquals(host, model, host.dir);
  await host.stop('SIGTERM');
});
