// A realistic volume population for the simulator: many thin volumes of mixed sizes
// (log-uniform from 10 GiB to 64 TiB), each having written a random fraction of
// itself, together filling a target fraction of raw capacity. Turned into bytes per
// PG by hashing object names exactly as the data path does; above a budget of hashed
// objects, a uniform stride sample of each volume stands for the whole (the report
// says how many were hashed).

import { assert } from '../../util/assert';
import { Random } from '../../util/random';
import { PoolSpec } from '../map';
import { objectToPg } from '../straw2';

export interface PopulationOptions {
  rawCapacityBytes: number;
  /** Fraction of raw capacity the replicas fill. */
  fillFraction: number;
  size: number;
  objectSizeBytes: number;
  /** Most object names hashed; above it each volume is sampled with a stride. */
  objectsHashedMax: number;
  random: Random;
}

export interface Population {
  volumes: number;
  provisionedBytes: number;
  /** Bytes written by clients (one copy). */
  writtenBytes: number;
  objectsTotal: number;
  objectsHashed: number;
  /** Bytes of one copy of each PG's objects. */
  pgBytes: Float64Array;
}

const VOLUME_SIZE_MIN_BYTES = 10 * 2 ** 30;
const VOLUME_SIZE_MAX_BYTES = 64 * 2 ** 40;
/** Bound on the population, whatever the capacity: keeps the simulator's memory flat. */
const VOLUMES_MAX = 1 << 20;

interface Volume {
  id: number;
  writtenObjects: number;
}

export function buildPopulation(pool: PoolSpec, options: PopulationOptions): Population {
  const { random, objectSizeBytes } = options;
  const targetBytes = (options.rawCapacityBytes * options.fillFraction) / options.size;
  assert(targetBytes > 0, 'population target must be positive');
  const volumes: Volume[] = [];
  let provisionedBytes = 0;
  let writtenBytes = 0;
  const logMin = Math.log(VOLUME_SIZE_MIN_BYTES);
  const logMax = Math.log(
    Math.min(VOLUME_SIZE_MAX_BYTES, Math.max(VOLUME_SIZE_MIN_BYTES, targetBytes)),
  );
  while (writtenBytes < targetBytes && volumes.length < VOLUMES_MAX) {
    const sizeBytes = Math.exp(logMin + random.float() * (logMax - logMin));
    const objects = Math.max(1, Math.ceil(sizeBytes / objectSizeBytes));
    const writtenFraction = 0.05 + 0.95 * random.float();
    let writtenObjects = Math.max(1, Math.round(objects * writtenFraction));
    const remaining = Math.ceil((targetBytes - writtenBytes) / objectSizeBytes);
    writtenObjects = Math.min(writtenObjects, remaining);
    volumes.push({ id: volumes.length + 1, writtenObjects });
    provisionedBytes += objects * objectSizeBytes;
    writtenBytes += writtenObjects * objectSizeBytes;
  }

  const objectsTotal = volumes.reduce((sum, v) => sum + v.writtenObjects, 0);
  const stride = Math.max(1, Math.ceil(objectsTotal / options.objectsHashedMax));
  const pgBytes = new Float64Array(pool.pgCount);
  let objectsHashed = 0;
  for (const volume of volumes) {
    // Object numbers written: a volume fills from its start (thin, like a guest
    // filesystem that has not touched its tail). Sampled with a random phase.
    const phase = stride > 1 ? random.int(stride) : 0;
    let counted = 0;
    for (let object = phase; object < volume.writtenObjects; object += stride) {
      const pg = objectToPg(pool, volume.id, object);
      pgBytes[pg] = (pgBytes[pg] as number) + 1;
      counted += 1;
    }
    objectsHashed += counted;
  }
  // Each hashed object stands for `stride` objects on average; scale so that the
  // total matches exactly what was written.
  const bytesPerHashed = objectsHashed > 0 ? writtenBytes / objectsHashed : 0;
  for (let pg = 0; pg < pgBytes.length; pg += 1)
    pgBytes[pg] = (pgBytes[pg] as number) * bytesPerHashed;
  return {
    volumes: volumes.length,
    provisionedBytes,
    writtenBytes,
    objectsTotal,
    objectsHashed,
    pgBytes,
  };
}
