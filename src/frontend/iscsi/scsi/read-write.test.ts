// Proves the block commands beyond plain READ/WRITE over a memory volume: READ/WRITE(6)
// and (12), VERIFY with each BYTCHK, WRITE AND VERIFY, COMPARE AND WRITE (match,
// miscompare with the offset in INFORMATION, a wrong Data-Out size, atomicity against a
// racing write), WRITE SAME with and without UNMAP, PRE-FETCH, and the length checks.

import { strict as assert } from 'node:assert';
import { test } from 'node:test';
import { ScsiStatus } from '../scsi-task';
import { GEOMETRY_512E } from './geometry';
import { ScsiLogicalUnit } from './logical-unit';
import { B, VOLUME, be, fixture, read10, run, senseOf, task, write10 } from './testing';

const blocks = (count: number, fill: number) => Buffer.alloc(count * 512, fill);

async function readBack(
  unit: Awaited<ReturnType<typeof fixture>>['unit'],
  lba: number,
  count: number,
) {
  return Buffer.from((await run(unit, read10(lba, count))).dataIn!);
}

test('WRITE(6) and READ(6): 21-bit LBA, a length of 0 means 256 blocks', async () => {
  const { unit } = await fixture();
  const data = blocks(256, 0x66);
  const written = await run(unit, [0x0a, 0, ...be(300, 2), 0, 0], { dataOut: data });
  assert.equal(written.dataOutLength, 256 * 512);
  const back = await run(unit, [0x08, 0, ...be(300, 2), 0, 0]);
  assert.ok(Buffer.from(back.dataIn!).equals(data));
});

test('WRITE(12) and READ(12) move the same blocks', async () => {
  const { unit } = await fixture();
  const data = blocks(3, 0x12);
  await run(unit, [0xaa, 0, ...be(40, 4), ...be(3, 4), 0, 0], { dataOut: data });
  const back = await run(unit, [0xa8, 0, ...be(40, 4), ...be(3, 4), 0, 0]);
  assert.ok(Buffer.from(back.dataIn!).equals(data));
});

test('a zero-length READ(10) is GOOD with no data, but not past the end', async () => {
  const { unit } = await fixture(1024 * 1024);
  const response = await run(unit, read10(0, 0));
  assert.equal(response.status, ScsiStatus.GOOD);
  assert.equal(response.dataIn!.length, 0);
  assert.equal(senseOf(await run(unit, read10(2049, 0))).asc, 0x21);
});

test('a READ(16) above the maximum transfer length is INVALID FIELD IN CDB', async () => {
  const { unit } = await fixture(64 * 1024 * 1024);
  const sense = senseOf(await run(unit, [0x88, 0, ...be(0, 8), ...be(65537, 4), 0, 0]));
  assert.equal(sense.asc, 0x24);
  assert.equal(sense.field!.byte, 10);
});

test('a WRITE(10) with less Data-Out than the CDB describes writes the whole blocks sent', async () => {
  const { unit } = await fixture();
  await run(unit, write10(0, 3), { dataOut: blocks(3, 0x11) });
  const data = Buffer.concat([blocks(1, 0x77), Buffer.alloc(100, 0x77)]);
  const response = await run(unit, write10(0, 3), { dataOut: data });
  assert.equal(response.status, ScsiStatus.GOOD);
  assert.equal(response.dataOutLength, 3 * 512); // the transport reports the overflow residual
  const back = await readBack(unit, 0, 3);
  assert.ok(back.subarray(0, 512).equals(blocks(1, 0x77)));
  assert.ok(back.subarray(512).equals(blocks(2, 0x11)), 'a partial block is never written');
});

test('VERIFY(10) with BYTCHK 0 reads the medium; BYTCHK 1 compares', async () => {
  const { unit } = await fixture();
  await run(unit, write10(10, 2), { dataOut: blocks(2, 0x5a) });
  assert.equal((await run(unit, [0x2f, 0, ...be(10, 4), 0, 0, 2, 0])).status, ScsiStatus.GOOD);
  const same = await run(unit, [0x2f, 0x02, ...be(10, 4), 0, 0, 2, 0], {
    dataOut: blocks(2, 0x5a),
  });
  assert.equal(same.status, ScsiStatus.GOOD);
  const other = blocks(2, 0x5a);
  other[700] = 0;
  const sense = senseOf(
    await run(unit, [0x2f, 0x02, ...be(10, 4), 0, 0, 2, 0], { dataOut: other }),
  );
  assert.deepEqual([sense.key, sense.asc, sense.information], [0x0e, 0x1d, 700]);
});

test('VERIFY(16) with BYTCHK 3 compares one block against every block', async () => {
  const { unit } = await fixture();
  await run(unit, write10(0, 4), { dataOut: blocks(4, 0x33) });
  const cdb = [0x8f, 0x06, ...be(0, 8), ...be(4, 4), 0, 0];
  assert.equal((await run(unit, cdb, { dataOut: blocks(1, 0x33) })).status, ScsiStatus.GOOD);
  assert.equal(senseOf(await run(unit, cdb, { dataOut: blocks(1, 0x34) })).key, 0x0e);
});

test('WRITE AND VERIFY(10) writes the blocks', async () => {
  const { unit } = await fixture();
  const data = blocks(2, 0x9c);
  const response = await run(unit, [0x2e, 0x02, ...be(5, 4), 0, 0, 2, 0], { dataOut: data });
  assert.equal(response.status, ScsiStatus.GOOD);
  assert.ok((await readBack(unit, 5, 2)).equals(data));
});

const compareAndWrite = (lba: number, count: number, flags = 0) => [
  0x89,
  flags,
  ...be(lba, 8),
  0,
  0,
  0,
  count,
  0,
  0,
];

test('COMPARE AND WRITE writes when the blocks match', async () => {
  const { unit } = await fixture();
  await run(unit, write10(20, 1), { dataOut: blocks(1, 0x01) });
  const response = await run(unit, compareAndWrite(20, 1), {
    dataOut: Buffer.concat([blocks(1, 0x01), blocks(1, 0x02)]),
  });
  assert.equal(response.status, ScsiStatus.GOOD);
  assert.ok((await readBack(unit, 20, 1)).equals(blocks(1, 0x02)));
});

test('COMPARE AND WRITE miscompare: MISCOMPARE with the offset, nothing written', async () => {
  const { unit } = await fixture();
  const current = blocks(2, 0x01);
  current[600] = 0xee;
  await run(unit, write10(20, 2), { dataOut: current });
  const response = await run(unit, compareAndWrite(20, 2), {
    dataOut: Buffer.concat([blocks(2, 0x01), blocks(2, 0x02)]),
  });
  const sense = senseOf(response);
  assert.deepEqual([sense.key, sense.asc, sense.ascq, sense.information], [0x0e, 0x1d, 0, 600]);
  assert.ok((await readBack(unit, 20, 2)).equals(current));
});

test('COMPARE AND WRITE with Data-Out that is not twice the blocks is refused', async () => {
  const { unit } = await fixture();
  const response = await run(unit, compareAndWrite(0, 1), { dataOut: blocks(4, 0) });
  assert.equal(response.status, ScsiStatus.CHECK_CONDITION);
  assert.equal(senseOf(response).key, 5);
});

test('COMPARE AND WRITE is atomic against a racing WRITE to the same blocks', async () => {
  const { unit } = await fixture();
  await run(unit, write10(0, 1), { dataOut: blocks(1, 0xaa) });
  // Started together: either the compare sees 0xaa and writes 0xbb before the racing
  // write lands (final 0xcc), or the racing write lands first and the compare fails.
  const results = await Promise.all([
    run(unit, compareAndWrite(0, 1), {
      dataOut: Buffer.concat([blocks(1, 0xaa), blocks(1, 0xbb)]),
    }),
    run(unit, write10(0, 1), { dataOut: blocks(1, 0xcc), port: B }),
  ]);
  const final = await readBack(unit, 0, 1);
  if (results[0].status === ScsiStatus.GOOD) assert.ok(final.equals(blocks(1, 0xcc)));
  else assert.equal(senseOf(results[0]).key, 0x0e);
  assert.ok(!final.equals(blocks(1, 0xbb)), 'a compare-and-write undone by nothing cannot be last');
});

test('WRITE SAME(10) repeats a pattern block', async () => {
  const { unit } = await fixture();
  const cdb = [0x41, 0, ...be(100, 4), 0, ...be(3, 2), 0];
  assert.equal((await run(unit, cdb, { dataOut: blocks(1, 0x4d) })).status, ScsiStatus.GOOD);
  assert.ok((await readBack(unit, 100, 3)).equals(blocks(3, 0x4d)));
});

test('WRITE SAME(16) with UNMAP deallocates whole 4 KiB blocks and reads zeros', async () => {
  const { unit, provider } = await fixture();
  await run(unit, write10(0, 16), { dataOut: blocks(16, 0x99) });
  const before = provider.allocatedBlockCount(VOLUME);
  const cdb = [0x93, 0x08, ...be(0, 8), ...be(16, 4), 0, 0];
  assert.equal((await run(unit, cdb, { dataOut: blocks(1, 0) })).status, ScsiStatus.GOOD);
  assert.equal(provider.allocatedBlockCount(VOLUME), before - 2);
  assert.ok((await readBack(unit, 0, 16)).every((byte) => byte === 0));
});

test('WRITE SAME with UNMAP unmaps whatever the pattern: the blocks read as zeros', async () => {
  const { unit } = await fixture();
  await run(unit, write10(0, 8), { dataOut: blocks(8, 0x99) });
  const cdb = [0x41, 0x08, ...be(0, 4), 0, ...be(8, 2), 0];
  assert.equal((await run(unit, cdb, { dataOut: blocks(1, 1) })).status, ScsiStatus.GOOD);
  assert.ok((await readBack(unit, 0, 8)).every((byte) => byte === 0));
});

test('WRITE SAME whose Data-Out is not one block is refused', async () => {
  const { unit } = await fixture();
  const cdb = [0x41, 0, ...be(0, 4), 0, ...be(8, 2), 0];
  assert.equal(senseOf(await run(unit, cdb, { dataOut: blocks(2, 1) })).asc, 0x24);
});

test('WRITE SAME(10) with 0 blocks writes to the end of the volume', async () => {
  const { unit } = await fixture(1024 * 1024);
  const cdb = [0x41, 0, ...be(2040, 4), 0, 0, 0, 0];
  assert.equal((await run(unit, cdb, { dataOut: blocks(1, 0x21) })).status, ScsiStatus.GOOD);
  assert.ok((await readBack(unit, 2040, 8)).equals(blocks(8, 0x21)));
});

test('WRITE SAME(16) with NDOB zeroes without a Data-Out buffer', async () => {
  const { unit } = await fixture();
  await run(unit, write10(0, 2), { dataOut: blocks(2, 0x99) });
  const cdb = [0x93, 0x01, ...be(0, 8), ...be(2, 4), 0, 0];
  assert.equal((await run(unit, cdb)).status, ScsiStatus.GOOD);
  assert.ok((await readBack(unit, 0, 2)).every((byte) => byte === 0));
});

test('PRE-FETCH(10) is GOOD in range and LBA OUT OF RANGE beyond it', async () => {
  const { unit } = await fixture(1024 * 1024);
  assert.equal((await run(unit, [0x34, 0, ...be(0, 4), 0, 0, 8, 0])).status, ScsiStatus.GOOD);
  assert.equal(senseOf(await run(unit, [0x34, 0, ...be(2048, 4), 0, 0, 1, 0])).asc, 0x21);
});

test('SYNCHRONIZE CACHE(16) beyond the end is LBA OUT OF RANGE', async () => {
  const { unit } = await fixture(1024 * 1024);
  const response = await run(unit, [0x91, 0, ...be(4000, 8), ...be(1, 4), 0, 0]);
  assert.equal(senseOf(response).asc, 0x21);
});

test('READ sends a lent buffer as it is and hands its release to the transport; without leases it owns a copy', async () => {
  const { provider, unit } = await fixture();
  await run(unit, write10(8, 2), { dataOut: blocks(2, 0x5a) });
  const handle = await provider.open(VOLUME, { readOnly: false });
  let released = 0;
  const lent = Buffer.alloc(1024, 0x5a);
  const leasing = Object.assign(Object.create(handle) as typeof handle, {
    readLeased: async (offset: number, length: number) => {
      assert.deepEqual([offset, length], [8 * 512, 1024]);
      return { data: lent, release: () => (released += 1) };
    },
  });
  const leased = new ScsiLogicalUnit(leasing, VOLUME, GEOMETRY_512E);
  await leased.execute(task([0x00, 0, 0, 0, 0, 0]));
  const response = await leased.execute(task(read10(8, 2)));
  assert.equal(response.dataIn, lent, 'the lent bytes, not a copy');
  assert.equal(released, 0, 'still lent until the transport is done');
  response.release!();
  assert.equal(released, 1);
  const plain = await run(unit, read10(8, 2));
  assert.equal(plain.release, undefined);
  assert.ok(Buffer.from(plain.dataIn!).equals(blocks(2, 0x5a)));
});
