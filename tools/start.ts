// `npm start`: a one-host datastore in ./.cistern for trying Cistern out. Starts the
// daemon (NBD on 127.0.0.1:10809, iSCSI on 127.0.0.1:3260, admin API on 127.0.0.1:10810),
// creates volume vol0 on first start, prints how to connect, and runs until Ctrl-C.

import path from 'node:path';
import { formatHostPort } from '../src/daemon/address';
import {
  DEFAULT_DATA_DIR,
  ISCSI_DEFAULT_PORT,
  NBD_DEFAULT_HOST,
  RunningDaemon,
  serveUntilSignalled,
  startDaemon,
} from '../src/daemon/daemon';
import { Log, createLog } from '../src/daemon/log';
import { VolumeInfo } from '../src/volume/admin';
import { isCisternError } from '../src/util/errors';
import { formatSize } from '../src/util/units';
import { targetNameOf } from '../src/cluster/iscsi-access';

export const START_VOLUME_NAME = 'vol0';
export const START_VOLUME_SIZE_BYTES = 8 * 2 ** 30;

async function main(): Promise<void> {
  const log = createLog();
  const dataDir = path.resolve(DEFAULT_DATA_DIR);
  await serveUntilSignalled(async () => {
    const daemon = await startDaemon({
      dataDir,
      disks: [],
      log,
      iscsi: { host: NBD_DEFAULT_HOST, port: ISCSI_DEFAULT_PORT },
    });
    try {
      await firstStart(daemon, log);
    } catch (error) {
      await daemon.stop('start failed');
      throw error;
    }
    printInstructions(daemon, dataDir, await daemon.store.listVolumes());
    return daemon;
  }, log);
}

/** An empty datastore gets one volume to connect to; later starts leave volumes alone. */
async function firstStart(daemon: RunningDaemon, log: Log): Promise<void> {
  if ((await daemon.store.listVolumes()).length > 0) return;
  await daemon.store.createVolume({ name: START_VOLUME_NAME, sizeBytes: START_VOLUME_SIZE_BYTES });
  log('start.volume_created', { name: START_VOLUME_NAME, size: START_VOLUME_SIZE_BYTES });
}

function printInstructions(daemon: RunningDaemon, dataDir: string, volumes: VolumeInfo[]): void {
  const nbd = formatHostPort(daemon.nbdAddress);
  const iscsi = daemon.iscsiAddress ? formatHostPort(daemon.iscsiAddress) : undefined;
  const relative = path.relative(process.cwd(), dataDir) || '.';
  const example = volumes[0]?.name ?? 'VOLUME';
  const lines = [
    '',
    `Cistern is running: data in ${relative}/, NBD on ${nbd}, ` +
      (iscsi ? `iSCSI on ${iscsi}, ` : '') +
      `admin API on ${formatHostPort(daemon.adminAddress)}.`,
    `Volumes: ${volumes.map((v) => `${v.name} (${formatSize(v.sizeBytes)})`).join(', ') || 'none'}`,
    '',
    'Connect:',
    `  qemu-img info nbd://${nbd}/${example}`,
    `  nbdinfo nbd://${nbd}/${example}`,
    ...(iscsi
      ? [
          `  qemu-img info iscsi://${iscsi}/${targetNameOf(example)}/0`,
          `  iscsi-ls -s iscsi://${iscsi}`,
        ]
      : []),
    '',
    'Administer (in another terminal):',
    `  ./bin/cistern status --data-dir ${relative}`,
    `  ./bin/cistern volume create vol1 --size 10G --data-dir ${relative}`,
    '',
    'Ctrl-C stops it (in-flight I/O finishes and everything is flushed first).',
    '',
  ];
  process.stdout.write(lines.join('\n') + '\n');
}

// Only when run as the program: tests import the constants above.
if (require.main === module) {
  main().catch((error: unknown) => {
    if (isCisternError(error)) process.stderr.write(`cistern: ${error.message}\n`);
    else process.stderr.write(`cistern: ${error instanceof Error ? error.stack : String(error)}\n`);
    process.exitCode = 1;
  });
}
