// `cistern pg accept-loss POOL/PG`: the operator's way out of an incomplete PG (see
// `cistern status`) whose only complete copies were on disks that cannot come back. The
// PG's most complete remaining copy becomes authoritative (state.acceptPgLoss) and
// recovery copies it to the other members; the writes only the lost disks held are gone.

import { CisternError } from '../../src/util/errors';
import { acceptPgLoss } from '../../src/cluster/state';
import { adminOptions } from '../admin-client';
import { Command, opt } from '../command';
import { clusterAdmin } from './host-drain';

/** "POOL/PG" as status prints it: a pool name, a slash, a PG number. */
const PG_ID_PATTERN = /^([a-zA-Z0-9][a-zA-Z0-9._-]{0,63})\/([0-9]{1,9})$/;

export const pgAcceptLoss: Command = {
  path: ['pg', 'accept-loss'],
  summary: 'serve an incomplete PG from its best remaining copy, losing what only lost disks held',
  description: `
An incomplete PG (cistern status names it) has no up member known to hold every
acknowledged write: the disks that did all failed or are away. If one of them can come
back with its data, bring it back instead: the PG then recovers from it with nothing
lost. If none can, this makes the most complete remaining copy (the member stale for
longest, named by status) authoritative; recovery copies it to the other members, and
writes only the lost disks held are gone for good. Refused for a PG that is not
incomplete.`,
  positionals: [
    { name: 'POOL/PG', help: 'the PG, as status names it (e.g. default/12)', required: true },
  ],
  options: [...adminOptions],
  async run(args, output) {
    const text = args.positionals[0] as string;
    const match = PG_ID_PATTERN.exec(text);
    if (!match)
      throw new CisternError('EINVAL', `"${text}" is not a PG: give POOL/PG, e.g. default/12`);
    const [, poolName, pgText] = match as unknown as [string, string, string];
    const admin = await clusterAdmin(args, 'pg accept-loss');
    const accepted = await admin.store.update((s) => {
      const pool = s.map.pools.find((p) => p.name === poolName);
      if (!pool)
        throw new CisternError(
          'UNKNOWN_POOL',
          `no pool named "${poolName}" (see: cistern pool ls)`,
        );
      return acceptPgLoss(s, pool.id, Number(pgText));
    });
    if (opt<boolean>(args, 'json')) {
      output.out(JSON.stringify(accepted, null, 2));
      return 0;
    }
    output.out(
      `PG ${text} is served from disk ${accepted.best}; ` +
        (accepted.lost.length > 0
          ? `writes only disk(s) ${accepted.lost.join(', ')} held are lost. `
          : '') +
        'Recovery now copies it to the other members (see: cistern status).',
    );
    return 0;
  },
};
