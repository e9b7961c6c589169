// CRC32C against the test vectors of RFC 3720 appendix B.4 (the bytes as they go on the
// wire, least significant first) and the check value of the Castagnoli CRC; the
// slicing-by-8 path agrees with a bit-at-a-time reference on random lengths and splits.

import { strict as assert } from 'node:assert';
import { test } from 'node:test';
import { Random } from '../../util/random';
import { crc32c, crc32cUpdate } from './crc32c';

function wireBytes(crc: number): string {
  const bytes = Buffer.alloc(4);
  bytes.writeUInt32LE(crc);
  return bytes.toString('hex');
}

function reference(data: Uint8Array): number {
  let crc = 0xffffffff;
  for (const byte of data) {
    crc ^= byte;
    for (let bit = 0; bit < 8; bit += 1) crc = crc & 1 ? (crc >>> 1) ^ 0x82f63b78 : crc >>> 1;
  }
  return ~crc >>> 0;
}

test('RFC 3720 B.4 vectors: 32 bytes of zeros, of ones, ascending, descending', () => {
  assert.equal(wireBytes(crc32c(Buffer.alloc(32, 0))), 'aa36918a');
  assert.equal(wireBytes(crc32c(Buffer.alloc(32, 0xff))), '43aba862');
  const ascending = Buffer.from(Array.from({ length: 32 }, (_, i) => i));
  assert.equal(wireBytes(crc32c(ascending)), '4e79dd46');
  const descending = Buffer.from(Array.from({ length: 32 }, (_, i) => 31 - i));
  assert.equal(wireBytes(crc32c(descending)), '5cdb3f11');
});

test('the CRC-32C check value of "123456789" is 0xe3069283', () => {
  assert.equal(crc32c(Buffer.from('123456789')), 0xe3069283);
});

test('table-driven result equals the bitwise reference for any length and any split', () => {
  const random = new Random(7);
  for (let round = 0; round < 200; round += 1) {
    const data = Buffer.alloc(random.int(300));
    for (let i = 0; i < data.length; i += 1) data[i] = random.int(256);
    const split = random.int(data.length + 1);
    assert.equal(crc32c(data), reference(data));
    assert.equal(
      crc32cUpdate(crc32cUpdate(0, data.subarray(0, split)), data.subarray(split)),
      reference(data),
    );
  }
});
