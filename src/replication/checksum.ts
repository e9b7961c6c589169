// The content checksum scrub compares across replicas: SHA-256 over every 4 KiB block of
// the object that does not read as zeros, each block with its offset. Two replicas that
// read the same — whatever their holes, zero extents, allocated zeros or whether the
// object exists at all — have the same checksum; replicas that read differently do not.
// Computed where the disk is (a remote disk's host answers DiskChecksum), so only the
// digest crosses the network.

import crypto from 'node:crypto';
import { assert } from '../util/assert';
import { ObjectKey } from '../store/key';
import { ObjectEndpoint } from './endpoint';

/** Granularity of the zero test (the store's block size). */
export const CHECKSUM_BLOCK_BYTES = 4096;
/** Largest read one checksum makes at a time. */
export const CHECKSUM_READ_MAX_BYTES = 2 ** 20;
/** Largest object checksummed (the wire's metadata bound on objectSizeBytes). */
export const CHECKSUM_OBJECT_MAX_BYTES = 2 ** 30;

export interface ObjectChecksum {
  /** Hex SHA-256 of the non-zero blocks and their offsets. */
  digest: string;
  /** Bytes of data extents read to compute it (for the bandwidth bound). */
  bytesRead: number;
}

export async function checksumObject(
  endpoint: Pick<ObjectEndpoint, 'blockStatus' | 'read'>,
  key: ObjectKey,
  objectSizeBytes: number,
): Promise<ObjectChecksum> {
  assert(checksumSizeValid(objectSizeBytes), `bad object size ${objectSizeBytes}`);
  const hash = crypto.createHash('sha256');
  const offsetBytes = Buffer.alloc(8);
  let offset = 0;
  let bytesRead = 0;
  // Each round advances by at least one extent of positive length, or stops.
  while (offset < objectSizeBytes) {
    const extents = await endpoint.blockStatus(key, offset, objectSizeBytes - offset);
    if (extents.length === 0) break;
    for (const extent of extents) {
      const length = Math.min(extent.length, objectSizeBytes - offset);
      if (length <= 0) continue;
      if (!extent.hole && !extent.zero) {
        for (let done = 0; done < length; done += CHECKSUM_READ_MAX_BYTES) {
          const chunk = Math.min(CHECKSUM_READ_MAX_BYTES, length - done);
          const data = await endpoint.read(key, offset + done, chunk);
          assert(data.length === chunk, 'short read');
          bytesRead += chunk;
          hashNonZeroBlocks(hash, offsetBytes, offset + done, data);
        }
      }
      offset += length;
    }
    if (extents.every((extent) => extent.length <= 0)) break;
  }
  return { digest: hash.digest('hex'), bytesRead };
}

function hashNonZeroBlocks(
  hash: crypto.Hash,
  offsetBytes: Buffer,
  start: number,
  data: Uint8Array,
): void {
  for (let at = 0; at < data.length; at += CHECKSUM_BLOCK_BYTES) {
    const block = data.subarray(at, Math.min(data.length, at + CHECKSUM_BLOCK_BYTES));
    if (isZero(block)) continue;
    offsetBytes.writeBigUInt64BE(BigInt(start + at));
    hash.update(offsetBytes);
    hash.update(block);
  }
}

const ZERO_BLOCK = Buffer.alloc(CHECKSUM_BLOCK_BYTES);

function isZero(block: Uint8Array): boolean {
  return Buffer.compare(block, ZERO_BLOCK.subarray(0, block.length)) === 0;
}

/** Whether a peer's requested object size is one checksumObject accepts. */
export function checksumSizeValid(objectSizeBytes: number): boolean {
  return (
    Number.isSafeInteger(objectSizeBytes) &&
    objectSizeBytes > 0 &&
    objectSizeBytes <= CHECKSUM_OBJECT_MAX_BYTES &&
    objectSizeBytes % CHECKSUM_BLOCK_BYTES === 0
  );
}
