// A stand-alone Cistern NBD server for benchmarks: opens a Datastore on file-backed
// disks in a directory, creates one pool of the asked size and one volume in it, and
// serves it with NbdServer on a Unix socket. Runs as its own process so that the
// benchmark can sample its RSS and profile it (node --cpu-prof) without fio or the
// harness in the same process, and without depending on the daemon.
//
//   node dist/perf/serve-datastore.js --dir DIR --socket PATH --disks N
//       --disk-bytes B --pool-size S --volume-bytes V
//
// Prints {"pid":N,"socket":PATH} once listening; on SIGTERM closes the server and the
// datastore (which flushes) and exits.

import * as path from 'node:path';
import { NbdServer } from '../src/frontend/nbd/server';
import { Datastore } from '../src/volume/datastore';

const BENCH_POOL = 'bench';
const BENCH_VOLUME = 'bench';

function option(name: string): number | string {
  const index = process.argv.indexOf(`--${name}`);
  const value = index < 0 ? undefined : process.argv[index + 1];
  if (value === undefined) throw new Error(`--${name} is required`);
  return /^\d+$/.test(value) ? Number(value) : value;
}

async function main(): Promise<void> {
  const dir = String(option('dir'));
  const socket = String(option('socket'));
  const diskCount = Number(option('disks'));
  const diskBytes = Number(option('disk-bytes'));
  const poolSize = Number(option('pool-size'));
  const volumeBytes = Number(option('volume-bytes'));
  const datastore = await Datastore.open({
    dataDir: path.join(dir, 'data'),
    disks: Array.from({ length: diskCount }, (_, i) => ({
      path: path.join(dir, `disk-${i}.img`),
      sizeBytes: diskBytes,
    })),
    log: () => undefined,
  });
  await datastore.createPool({ name: BENCH_POOL, size: poolSize, minSize: 1 });
  await datastore.createVolume({ name: BENCH_VOLUME, sizeBytes: volumeBytes, pool: BENCH_POOL });
  let unexpected = 0;
  const server = new NbdServer(datastore, {
    onUnexpectedError: (error) => {
      unexpected += 1;
      console.error('unexpected server error', error);
    },
  });
  await server.listenUnix(socket);
  process.stdout.write(`${JSON.stringify({ pid: process.pid, socket })}\n`);
  process.once('SIGTERM', () => {
    void server
      .close()
      .then(() => datastore.close())
      .then(() => process.exit(unexpected === 0 ? 0 : 3));
  });
}

main().catch((error: unknown) => {
  console.error(error);
  process.exit(1);
});
