// `npm start`: a one-host datastore in ./.cistern for trying Cistern out. Starts the
// daemon (NBD on 127.0.0.1:10809, admin API on 127.0.0.1:10810), creates volume vol0 on
// first start, prints how to connect, and runs until Ctrl-C.

import path from 'node:path';
import { formatHostPort } from '../src/daemon/address';
import { DEFAULT_DATA_DIR, runUntilSignalled, startDaemon } from '../src/daemon/daemon';
import { createLog } from '../src/daemon/log';
import { isCisternError } from '../src/util/errors';
import { formatSize } from '../src/util/units';

export const START_VOLUME_NAME = 'vol0';
export const START_VOLUME_SIZE_BYTES = 8 * 2 ** 30;

async function main(): Promise<void> {
  const log = createLog();
  const dataDir = path.resolve(DEFAULT_DATA_DIR);
  const daemon = await startDaemon({ dataDir, disks: [], log });
  try {
    // First start: an empty datastore gets one volume to connect to. Later starts leave
    // the administrator's volumes alone.
    if ((await daemon.store.listVolumes()).length === 0) {
      await daemon.store.createVolume({
        name: START_VOLUME_NAME,
        sizeBytes: START_VOLUME_SIZE_BYTES,
      });
      log('start.volume_created', { name: START_VOLUME_NAME, size: START_VOLUME_SIZE_BYTES });
    }
  } catch (error) {
    await daemon.stop('start failed');
    throw error;
  }
  const nbd = formatHostPort(daemon.nbdAddress);
  const volumes = await daemon.store.listVolumes();
  const relative = path.relative(process.cwd(), dataDir) || '.';
  const lines = [
    '',
    `Cistern is running: data in ${relative}/, NBD on ${nbd}, admin API on ${formatHostPort(daemon.adminAddress)}.`,
    `Volumes: ${volumes.map((v) => `${v.name} (${formatSize(v.sizeBytes)})`).join(', ')}`,
    '',
    'Connect:',
    `  qemu-img info nbd://${nbd}/${volumes[0]?.name ?? START_VOLUME_NAME}`,
    `  nbdinfo nbd://${nbd}/${volumes[0]?.name ?? START_VOLUME_NAME}`,
    '',
    'Administer (in another terminal):',
    `  ./bin/cistern status --data-dir ${relative}`,
    `  ./bin/cistern volume create vol1 --size 10G --data-dir ${relative}`,
    '',
    'Ctrl-C stops it (in-flight I/O finishes and everything is flushed first).',
    '',
  ];
  process.stdout.write(lines.join('\n') + '\n');
  await runUntilSignalled(daemon, log);
}

// Only when run as the program: tests import the constants above.
if (require.main === module) {
  main().catch((error: unknown) => {
    if (isCisternError(error)) process.stderr.write(`cistern: ${error.message}\n`);
    else process.stderr.write(`cistern: ${error instanceof Error ? error.stack : String(error)}\n`);
    process.exitCode = 1;
  });
}
