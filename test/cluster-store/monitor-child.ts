// A monitor in a process of its own, so a test can kill -9 it: argv is the etcd URL, the
// prefix and the host id; every log event goes to stdout as one JSON line.

import { EtcdClusterStore } from '../../src/cluster/etcd';

async function run(): Promise<void> {
  const [url, prefix, hostId] = process.argv.slice(2);
  if (!url || !prefix || !hostId) throw new Error('usage: monitor-child URL PREFIX HOST');
  const log = (event: string, fields: Record<string, unknown> = {}): void => {
    const record: Record<string, unknown> = { event };
    for (const [key, value] of Object.entries(fields)) {
      record[key] = value instanceof Error ? value.message : value;
    }
    process.stdout.write(JSON.stringify(record) + '\n');
  };
  const store = await EtcdClusterStore.open({ endpoints: [url], prefix, log });
  store.runMonitor({ hostId, electionTtlS: 2, checkIntervalMs: 100, downOutIntervalS: 600 });
  log('child.ready');
  process.on('SIGTERM', () => void store.close().then(() => process.exit(0)));
}

run().catch((error: unknown) => {
  process.stderr.write(`${error instanceof Error ? error.stack : String(error)}\n`);
  process.exit(1);
});
