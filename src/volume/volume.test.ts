// Proves that a volume write spanning objects settles only once every object's part has,
// even when one part failed at once: a caller (the iSCSI target's Data-Out buffer pool)
// reuses the write's buffer as soon as the write settles, so a part still running then
// would write another command's bytes. A stub replication layer fails the first part at
// once and holds the second until the test lets it finish.

import { strict as assert } from 'node:assert';
import { test } from 'node:test';
import { CisternError } from '../util/errors';
import type { ObjectIo } from '../replication/endpoint';
import { Volume } from './volume';

const OBJECT_BYTES = 4096;

test('a write spanning two objects waits for the second part after the first failed', async () => {
  let finishSecond!: () => void;
  const seen: Array<{ object: number; bytes: string }> = [];
  const replication = {
    write(key, _offset, data): Promise<void> {
      if (key.object === 0) return Promise.reject(new CisternError('EIO', 'first part fails'));
      return new Promise<void>((resolve) => {
        finishSecond = () => {
          seen.push({ object: key.object, bytes: Buffer.from(data).toString() });
          resolve();
        };
      });
    },
  } as Partial<ObjectIo> as ObjectIo;
  const spec = {
    ...{ id: 1, name: 'v', pool: 1, sizeBytes: 4 * OBJECT_BYTES },
    ...{ objectSizeBytes: OBJECT_BYTES, createdAt: '' },
  };
  const volume = new Volume(spec, replication, false, () => undefined);
  const data = Buffer.from('a'.repeat(OBJECT_BYTES) + 'b'.repeat(OBJECT_BYTES));
  let settled = false;
  const write = volume.write(0, data).finally(() => (settled = true));
  write.catch(() => undefined);
  for (let turn = 0; turn < 10; turn += 1) await new Promise((resolve) => setImmediate(resolve));
  assert.equal(settled, false, 'the write settled while its second part was still running');
  finishSecond();
  await assert.rejects(write, /first part fails/);
  assert.deepEqual(seen, [{ object: 1, bytes: 'b'.repeat(OBJECT_BYTES) }]);
});
