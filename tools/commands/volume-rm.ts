// `cistern volume rm`: removes a volume and frees its objects. Refused while NBD clients
// have it open, unless --force. Freeing a big volume takes a while, so it says what it
// is doing and keeps saying so.

import { formatSize } from '../../src/util/units';
import { adminOptions, openAdmin } from '../admin-client';
import { Command, opt } from '../command';

/** How often a long removal reports that it is still running. */
export const REMOVE_PROGRESS_INTERVAL_MS = 5000;

export const volumeRm: Command = {
  path: ['volume', 'rm'],
  summary: 'remove a volume and free its space',
  positionals: [{ name: 'NAME', help: 'volume name', required: true }],
  options: [
    ...adminOptions,
    {
      name: 'force',
      type: 'boolean',
      help: 'remove it even while NBD clients have it open (their I/O fails)',
    },
  ],
  async run(args, output) {
    const name = args.positionals[0] as string;
    const force = opt<boolean | undefined>(args, 'force') ?? false;
    const json = opt<boolean>(args, 'json');
    const client = await openAdmin(args);
    const info = await client.volumeInfo(name);
    const started = Date.now();
    let ticker: NodeJS.Timeout | undefined;
    if (!json) {
      output.out(
        `removing volume ${name} (${formatSize(info.sizeBytes)}, ` +
          `${formatSize(info.usedBytes)} written)…`,
      );
      ticker = setInterval(() => {
        const seconds = Math.round((Date.now() - started) / 1000);
        output.out(`  still freeing ${name}'s objects (${seconds} s)…`);
      }, REMOVE_PROGRESS_INTERVAL_MS);
    }
    try {
      // Refused with EPERM while connections have it open (the message names --force).
      await client.removeVolume(name, { force });
    } finally {
      if (ticker !== undefined) clearInterval(ticker);
    }
    const elapsedMs = Date.now() - started;
    if (json) {
      output.out(JSON.stringify({ removed: name, elapsedMs }, null, 2));
      return 0;
    }
    output.out(`removed volume ${name} in ${(elapsedMs / 1000).toFixed(1)} s`);
    return 0;
  },
};
