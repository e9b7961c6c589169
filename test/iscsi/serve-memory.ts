// A stand-alone iSCSI target over in-memory volumes and the real SCSI logical unit, for
// running real clients (iscsi-test-cu, qemu) against the transport by hand or from a test
// in another process. Usage: node serve-memory.js [--port N] NAME:SIZE_BYTES...; prints
// {"port":N} once listening and closes on SIGTERM.

import { createLogicalUnit } from '../../src/frontend/iscsi/scsi/logical-unit';
import { serveTarget } from './helpers';

async function main(): Promise<void> {
  const args = process.argv.slice(2);
  let port = 0;
  if (args[0] === '--port') {
    port = Number(args[1]);
    args.splice(0, 2);
  }
  const volumes = args.map((spec) => {
    const [name, size] = spec.split(':');
    if (name === undefined || size === undefined) throw new Error(`bad volume spec ${spec}`);
    return { name, sizeBytes: Number(size) };
  });
  const target = await serveTarget(volumes, { createLogicalUnit }, port);
  process.stdout.write(`${JSON.stringify({ port: target.port })}\n`);
  process.once('SIGTERM', () => {
    void target.close().then(
      () => process.exit(0),
      (error: unknown) => {
        console.error(error);
        process.exit(3);
      },
    );
  });
}

main().catch((error: unknown) => {
  console.error(error);
  process.exit(1);
});
