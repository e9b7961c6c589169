// A stand-alone NBD server on the in-memory provider, for tests that must not share a
// process with the server: a test that touches a filesystem mounted through nbdfuse
// would otherwise block its own event loop on I/O that only that event loop can serve.
// Usage: node serve-memory.js NAME:SIZE_BYTES...; prints {"port":N} once listening and
// closes on SIGTERM.

import { NbdServer } from '../../src/frontend/nbd/server';
import { MemoryExportProvider } from '../../src/volume/memory-volume';

async function main(): Promise<void> {
  const provider = new MemoryExportProvider();
  for (const spec of process.argv.slice(2)) {
    const [name, size] = spec.split(':');
    if (name === undefined || size === undefined) throw new Error(`bad export spec ${spec}`);
    provider.create(name, Number(size));
  }
  let unexpected = 0;
  const server = new NbdServer(provider, {
    onUnexpectedError: (error) => {
      unexpected += 1;
      console.error('unexpected server error', error);
    },
  });
  const { port } = await server.listen('127.0.0.1', 0);
  process.stdout.write(`${JSON.stringify({ port })}\n`);
  process.once('SIGTERM', () => {
    void server.close().then(() => process.exit(unexpected === 0 ? 0 : 3));
  });
}

main().catch((error: unknown) => {
  console.error(error);
  process.exit(1);
});
