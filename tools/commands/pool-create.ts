// `cistern pool create`: a pool sets how many copies of every object exist, how many a
// write needs, across which failure domains, and over how many placement groups.

import { failureDomains, FailureDomain } from '../../src/placement/map';
import { adminOptions, openAdmin } from '../admin-client';
import { Command, opt, usageError } from '../command';

export const poolCreate: Command = {
  path: ['pool', 'create'],
  summary: 'create a replicated pool',
  description: `
Every object of the pool's volumes is stored --size times, on disks in distinct failure
domains; a write succeeds while at least --min-size copies take it. On one host the
failure domain must be disk. The PG count is rounded to a power of two; by default the
datastore picks one from the number of disks.`,
  positionals: [{ name: 'NAME', help: 'pool name (letters, digits, . _ -)', required: true }],
  options: [
    ...adminOptions,
    {
      name: 'size',
      type: 'integer',
      valueName: 'N',
      help: 'copies of every object (required)',
    },
    {
      name: 'min-size',
      type: 'integer',
      valueName: 'M',
      help: 'copies a write needs to succeed (default: the datastore decides)',
    },
    {
      name: 'failure-domain',
      type: 'string',
      choices: failureDomains,
      valueName: 'disk|host|rack',
      help: 'copies go to distinct disks, hosts or racks',
    },
    { name: 'pgs', type: 'integer', valueName: 'N', help: 'placement groups' },
  ],
  async run(args, output) {
    const size = opt<number | undefined>(args, 'size');
    if (size === undefined) throw usageError('--size is required, e.g. --size 2');
    const minSize = opt<number | undefined>(args, 'min-size');
    const pgCount = opt<number | undefined>(args, 'pgs');
    if (size < 1) throw usageError('--size must be at least 1');
    if (minSize !== undefined && (minSize < 1 || minSize > size)) {
      throw usageError('--min-size must be 1..size');
    }
    if (pgCount !== undefined && pgCount < 1) throw usageError('--pgs must be at least 1');
    const failureDomain = opt<FailureDomain | undefined>(args, 'failure-domain');
    const client = await openAdmin(args);
    const pool = await client.createPool({
      name: args.positionals[0] as string,
      size,
      ...(minSize !== undefined ? { minSize } : {}),
      ...(failureDomain !== undefined ? { failureDomain } : {}),
      ...(pgCount !== undefined ? { pgCount } : {}),
    });
    if (opt<boolean>(args, 'json')) {
      output.out(JSON.stringify(pool, null, 2));
      return 0;
    }
    output.out(
      `created pool ${pool.name}: ${pool.size} copies (writes need ${pool.minSize}), ` +
        `failure domain ${pool.failureDomain}, ${pool.pgCount} PGs`,
    );
    return 0;
  },
};
