// `cistern volume resize`: grow a volume online; shrinking discards data, so it takes
// an explicit --allow-shrink.

import { formatSize } from '../../src/util/units';
import { adminOptions, openAdmin } from '../admin-client';
import { Command, opt, usageError } from '../command';

export const volumeResize: Command = {
  path: ['volume', 'resize'],
  summary: 'grow (or, with --allow-shrink, shrink) a volume',
  description: `
Growing is online: the volume stays served. NBD has no way to tell a connected client
that the size changed, so clients see the new size when they next connect. Shrinking
discards everything beyond the new end and is refused without --allow-shrink.`,
  positionals: [{ name: 'NAME', help: 'volume name', required: true }],
  options: [
    ...adminOptions,
    { name: 'size', type: 'size', valueName: 'SIZE', help: 'the new size, e.g. 20G (required)' },
    {
      name: 'allow-shrink',
      type: 'boolean',
      help: 'allow a smaller size (the data beyond it is lost)',
    },
  ],
  async run(args, output) {
    const sizeBytes = opt<number | undefined>(args, 'size');
    if (sizeBytes === undefined) throw usageError('--size is required, e.g. --size 20G');
    if (sizeBytes <= 0) throw usageError('--size must be more than 0');
    const name = args.positionals[0] as string;
    const allowShrink = opt<boolean | undefined>(args, 'allow-shrink') ?? false;
    const client = await openAdmin(args);
    const before = await client.volumeInfo(name);
    // The datastore refuses too; checking here lets the message name the flag.
    if (sizeBytes < before.sizeBytes && !allowShrink) {
      throw usageError(
        `shrinking ${name} from ${formatSize(before.sizeBytes)} to ${formatSize(sizeBytes)} ` +
          'discards the data beyond the new end; pass --allow-shrink to do it anyway',
      );
    }
    const after = await client.resizeVolume(name, sizeBytes, { allowShrink });
    if (opt<boolean>(args, 'json')) {
      output.out(JSON.stringify(after, null, 2));
      return 0;
    }
    output.out(
      `resized ${name}: ${formatSize(before.sizeBytes)} → ${formatSize(after.sizeBytes)}` +
        (before.openHandles > 0 ? ' (connected NBD clients see it when they reconnect)' : ''),
    );
    return 0;
  },
};
