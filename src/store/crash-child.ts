// The process that the kill -9 test (kill9.test.ts) starts and kills: it opens an object
// store on a file device and runs the seeded operation sequence that the test replays
// in its model, printing "ACK n" once the flush that is operation n-1 has completed.
// Not a test itself. Arguments: devicePath indexPath seed format(0|1) firstSeq.

import { writeSync } from 'node:fs';
import { Random } from '../util/random';
import { FileDevice } from './file-device';
import { ObjectStore } from './object-store';
import { applyToStore, randomOp } from './testing';
import { KILL9_DEVICE_BYTES, KILL9_OBJECT_BYTES, KILL9_OPS_MAX, kill9Universe } from './kill9-plan';

async function main(): Promise<void> {
  const [devicePath, indexPath, seedText, formatText, firstSeqText] = process.argv.slice(2);
  if (!devicePath || !indexPath || !seedText || !formatText || !firstSeqText) {
    throw new Error('usage: crash-child devicePath indexPath seed format firstSeq');
  }
  const format = formatText === '1';
  const device = await FileDevice.open(devicePath, format ? { sizeBytes: KILL9_DEVICE_BYTES } : {});
  const store = await ObjectStore.open({
    device,
    indexPath,
    objectSizeBytes: KILL9_OBJECT_BYTES,
    format,
  });
  writeSync(1, 'READY\n');
  const random = new Random(Number(seedText));
  const universe = kill9Universe();
  for (let index = 0; index < KILL9_OPS_MAX; index += 1) {
    const op = randomOp(random, universe, Number(firstSeqText) + index, {
      unaligned: false,
      objectSizeBytes: KILL9_OBJECT_BYTES,
    });
    await applyToStore(store, op);
    if (op.kind === 'flush') writeSync(1, `ACK ${index + 1}\n`);
  }
  writeSync(1, 'DONE\n');
  await store.close();
  await device.close();
}

main().catch((error: unknown) => {
  writeSync(
    2,
    `crash-child: ${error instanceof Error ? (error.stack ?? error.message) : String(error)}\n`,
  );
  process.exit(1);
});
