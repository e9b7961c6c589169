// Shared set-up for datastore tests: a datastore on file-backed disks in a fresh
// directory on a filesystem that supports O_DIRECT (not tmpfs), removed afterwards.

import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { Datastore, DatastoreOptions } from '../../src/volume/datastore';

/** A directory for disk files: os.tmpdir() unless it is tmpfs (no O_DIRECT there). */
export function scratchDir(prefix: string): string {
  const candidates = [process.env['CISTERN_TEST_DIR'], os.tmpdir(), '/var/tmp'].filter(
    Boolean,
  ) as string[];
  for (const base of candidates) {
    const dir = fs.mkdtempSync(path.join(base, prefix));
    const probe = path.join(dir, 'probe');
    try {
      const fd = fs.openSync(
        probe,
        fs.constants.O_CREAT | fs.constants.O_RDWR | fs.constants.O_DIRECT,
      );
      fs.closeSync(fd);
      fs.rmSync(probe);
      return dir;
    } catch {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  }
  throw new Error('no directory supports O_DIRECT; set CISTERN_TEST_DIR');
}

export interface TestDatastore {
  dir: string;
  events: Array<{ event: string; fields: Record<string, unknown> }>;
  open(extra?: Partial<DatastoreOptions>): Promise<Datastore>;
  cleanup(): void;
}

/** Small disks keep tests fast: 3 × 256 MiB sparse files. */
export function testDatastore(diskCount = 3, diskSizeBytes = 256 * 2 ** 20): TestDatastore {
  const dir = scratchDir('cistern-ds-');
  const events: TestDatastore['events'] = [];
  const disks = Array.from({ length: diskCount }, (_, i) => ({
    path: path.join(dir, 'disks', `d${i}.img`),
    sizeBytes: diskSizeBytes,
  }));
  return {
    dir,
    events,
    open: (extra = {}) =>
      Datastore.open({
        dataDir: path.join(dir, 'data'),
        disks,
        log: (event, fields = {}) => events.push({ event, fields }),
        ...extra,
      }),
    cleanup: () => fs.rmSync(dir, { recursive: true, force: true }),
  };
}

/** Deterministic, self-describing data: every byte depends on (seed, position). */
export function pattern(length: number, seed: number): Buffer {
  const data = Buffer.allocUnsafe(length);
  let x = (seed * 2654435761) >>> 0 || 1;
  for (let i = 0; i < length; i += 1) {
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    data[i] = x & 0xff;
  }
  return data;
}
