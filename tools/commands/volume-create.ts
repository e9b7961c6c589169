// `cistern volume create`: a new thin volume, served at once as an NBD export.

import { formatSize } from '../../src/util/units';
import { adminOptions, openAdmin } from '../admin-client';
import { Command, opt, usageError } from '../command';

export const volumeCreate: Command = {
  path: ['volume', 'create'],
  summary: 'create a thin-provisioned volume',
  description: `
Creates a volume of the given size in a pool (default: the datastore's default pool).
Volumes are thin: no space is taken until blocks are written. The volume is served at
once as the NBD export of the same name, and as iSCSI target
iqn.2026-11.io.cistern:NAME (LUN 0) when the daemon serves iSCSI.`,
  positionals: [{ name: 'NAME', help: 'volume name (letters, digits, . _ -)', required: true }],
  options: [
    ...adminOptions,
    { name: 'size', type: 'size', valueName: 'SIZE', help: 'volume size, e.g. 10G (required)' },
    { name: 'pool', type: 'string', valueName: 'POOL', help: 'pool to create it in' },
  ],
  async run(args, output) {
    const sizeBytes = opt<number | undefined>(args, 'size');
    if (sizeBytes === undefined) throw usageError('--size is required, e.g. --size 10G');
    if (sizeBytes <= 0) throw usageError('--size must be more than 0');
    const client = await openAdmin(args);
    const name = args.positionals[0] as string;
    const pool = opt<string | undefined>(args, 'pool');
    const info = await client.createVolume({ name, sizeBytes, ...(pool ? { pool } : {}) });
    if (opt<boolean>(args, 'json')) {
      output.out(JSON.stringify(info, null, 2));
      return 0;
    }
    output.out(`created volume ${info.name}: ${formatSize(info.sizeBytes)} in pool ${info.pool}`);
    if (client.nbd) output.out(`connect: nbd://${client.nbd}/${info.name}`);
    if (client.iscsi && info.iscsi) {
      output.out(`connect: iscsi://${client.iscsi}/${info.iscsi.target}/0`);
    }
    return 0;
  },
};
