// Object keys and their binary form in the index. The encoding is fixed-width and
// big-endian (pool u32, volume u32, object number u40: 13 bytes), so LevelDB's byte
// order is the numeric order of (pool, volume, object): a volume's objects are one
// contiguous range, and deleting a volume is a range scan rather than a search.

import { assert } from '../util/assert';
import { CisternError } from '../util/errors';

export interface ObjectKey {
  pool: number;
  volume: number;
  /** Object number within the volume, below 2^40 (4 EiB of 4 MiB objects). */
  object: number;
}

export const OBJECT_KEY_BYTES = 13;
export const OBJECT_NUMBER_LIMIT = 2 ** 40;
const U32_LIMIT = 2 ** 32;

function isIntegerBelow(value: unknown, limit: number): value is number {
  return typeof value === 'number' && Number.isInteger(value) && value >= 0 && value < limit;
}

/** Throws EINVAL for a key the world handed us that cannot be encoded. */
export function checkObjectKey(key: ObjectKey): void {
  if (
    typeof key !== 'object' ||
    key === null ||
    !isIntegerBelow(key.pool, U32_LIMIT) ||
    !isIntegerBelow(key.volume, U32_LIMIT) ||
    !isIntegerBelow(key.object, OBJECT_NUMBER_LIMIT)
  ) {
    throw new CisternError(
      'EINVAL',
      `bad object key ${JSON.stringify(key)}: pool and volume are u32, object is below 2^40`,
    );
  }
}

export function encodeObjectKey(key: ObjectKey): Buffer {
  checkObjectKey(key);
  const bytes = Buffer.allocUnsafe(OBJECT_KEY_BYTES);
  bytes.writeUInt32BE(key.pool, 0);
  bytes.writeUInt32BE(key.volume, 4);
  bytes.writeUInt8(Math.floor(key.object / U32_LIMIT), 8);
  bytes.writeUInt32BE(key.object % U32_LIMIT, 9);
  return bytes;
}

export function decodeObjectKey(bytes: Uint8Array): ObjectKey {
  assert(bytes.length === OBJECT_KEY_BYTES, `object key is ${bytes.length} bytes`);
  const view = Buffer.from(bytes.buffer, bytes.byteOffset, bytes.length);
  const key = {
    pool: view.readUInt32BE(0),
    volume: view.readUInt32BE(4),
    object: view.readUInt8(8) * U32_LIMIT + view.readUInt32BE(9),
  };
  assert(key.object < OBJECT_NUMBER_LIMIT, 'decoded object number out of range');
  return key;
}

export interface ObjectKeyFilter {
  pool?: number;
  /** Only with `pool`: a volume number is meaningless across pools. */
  volume?: number;
}

/** The key prefix that every object matching `filter` starts with (0, 4 or 8 bytes). */
export function objectKeyPrefix(filter: ObjectKeyFilter): Buffer {
  if (filter.volume !== undefined && filter.pool === undefined) {
    throw new CisternError('EINVAL', 'listing by volume needs a pool too');
  }
  if (filter.pool === undefined) return Buffer.alloc(0);
  const probe = { pool: filter.pool, volume: filter.volume ?? 0, object: 0 };
  const encoded = encodeObjectKey(probe);
  return encoded.subarray(0, filter.volume === undefined ? 4 : 8);
}

export function formatObjectKey(key: ObjectKey): string {
  return `${key.pool}/${key.volume}/${key.object}`;
}
