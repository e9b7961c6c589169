// An informal throughput probe of the peer transport over loopback (not a test, not a
// benchmark with a peer figure): one client connection, a handler that answers at once,
// requests kept `depth` deep. Writes send the payload in the request; reads get it in the
// reply. Run: node dist/test/peer/throughput.js [seconds-per-case]

import { PeerClient } from '../../src/replication/peer';
import { MiB, SECRET, startPeerServer } from './helpers';

async function main(): Promise<void> {
  const seconds = Number(process.argv[2] ?? 2);
  const cases = [
    { name: '4 KiB write', bytes: 4096, write: true, depth: 64 },
    { name: '4 KiB read', bytes: 4096, write: false, depth: 64 },
    { name: '1 MiB write', bytes: MiB, write: true, depth: 8 },
    { name: '1 MiB read', bytes: MiB, write: false, depth: 8 },
    { name: 'empty', bytes: 0, write: true, depth: 64 },
  ];
  for (const spec of cases) {
    const data = Buffer.alloc(spec.bytes, 0x5a);
    const server = await startPeerServer(async (request) =>
      request.type === 1 ? { metadata: { ok: true } } : { metadata: { ok: true }, payload: data },
    );
    const client = await PeerClient.connect({
      address: server.address,
      hostId: 'bench',
      secret: SECRET,
    });
    const deadline = Date.now() + seconds * 1000;
    let requests = 0;
    const started = process.hrtime.bigint();
    const lane = async (): Promise<void> => {
      while (Date.now() < deadline) {
        const metadata = { object: 'pool/vol/1', offset: 0, length: spec.bytes };
        if (spec.write) await client.request(1, 10, metadata, data);
        else await client.request(2, 10, metadata);
        requests += 1;
      }
    };
    await Promise.all(Array.from({ length: spec.depth }, lane));
    const elapsedS = Number(process.hrtime.bigint() - started) / 1e9;
    const perSecond = requests / elapsedS;
    const mibPerSecond = (requests * spec.bytes) / MiB / elapsedS;
    console.log(
      `${spec.name.padEnd(12)} depth ${String(spec.depth).padStart(2)}: ` +
        `${Math.round(perSecond).toLocaleString('en')} requests/s, ${mibPerSecond.toFixed(0)} MiB/s`,
    );
    await client.close();
    await server.close();
  }
}

main().catch((error: unknown) => {
  console.error(error);
  process.exit(1);
});
