// Stable 32-bit hashes for placement. Every daemon, CLI and release must compute the
// same values forever: changing anything here moves every object in every cluster.
// Built from the murmur3 finaliser (good avalanche, two multiplies) so that a PG
// draw over thousands of disks stays cheap.

/** murmur3 fmix32: a bijective avalanche of one 32-bit word. */
export function mix32(value: number): number {
  let h = value >>> 0;
  h ^= h >>> 16;
  h = Math.imul(h, 0x85ebca6b);
  h ^= h >>> 13;
  h = Math.imul(h, 0xc2b2ae35);
  h ^= h >>> 16;
  return h >>> 0;
}

/** Folds one more word into a running hash (murmur3 block step). */
function fold(hash: number, word: number): number {
  let k = Math.imul(word >>> 0, 0xcc9e2d51);
  k = (k << 15) | (k >>> 17);
  k = Math.imul(k, 0x1b873593);
  let h = (hash ^ k) >>> 0;
  h = (h << 13) | (h >>> 19);
  return (Math.imul(h, 5) + 0xe6546b64) >>> 0;
}

const OBJECT_SEED = 0x43495354; // "CIST"
const TWO_POW_32 = 4294967296;

/**
 * Hash of one object's name: (pool, volume, object number). Object numbers reach
 * 2^42 (a 16 EiB volume of 4 MiB objects), so both halves are folded in.
 */
export function objectHash(pool: number, volume: number, objectNumber: number): number {
  const low = objectNumber % TWO_POW_32;
  const high = Math.floor(objectNumber / TWO_POW_32);
  let h = fold(OBJECT_SEED, pool);
  h = fold(h, volume);
  h = fold(h, low);
  h = fold(h, high);
  return mix32(h ^ 16);
}

/** Seed of one PG's draw: every disk's straw for this PG derives from it. */
export function pgSeed(pool: number, pg: number): number {
  return mix32(fold(fold(0x50470000, pool), pg));
}

/** Per-disk salt, so that the straw of (PG, disk) is mix32(seed ^ salt). */
export function diskSalt(diskId: number): number {
  return mix32(Math.imul(diskId + 1, 0x9e3779b1));
}

/** The straw drawn by one disk for one PG: a uniform 32-bit value. */
export function straw(seed: number, salt: number): number {
  return mix32(seed ^ salt);
}
