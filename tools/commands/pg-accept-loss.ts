// `cistern pg accept-loss POOL/PG`: the operator's way out of an incomplete PG (see
// `cistern status`) whose only complete copies were on disks that cannot come back. The
// acceptance is recorded in the map (state.acceptPgLoss); the daemon that peers the PG
// asks its members' PG logs which copy is complete furthest and serves that one
// (RecoveryWorker, state.serveAcceptedLoss), and recovery copies it to the other members;
// the writes only the lost disks held are gone. Waits until a copy is served.

import { CisternError } from '../../src/util/errors';
import { acceptPgLoss, pgKey } from '../../src/cluster/state';
import { adminOptions } from '../admin-client';
import { Command, opt } from '../command';
import { clusterAdmin, freshState } from './host-drain';

/** "POOL/PG" as status prints it: a pool name, a slash, a PG number. */
const PG_ID_PATTERN = /^([a-zA-Z0-9][a-zA-Z0-9._-]{0,63})\/([0-9]{1,9})$/;
/** How often the map is read while waiting for the daemon to serve the PG. */
const POLL_INTERVAL_MS = 500;

export const pgAcceptLoss: Command = {
  path: ['pg', 'accept-loss'],
  summary: 'serve an incomplete PG from its best remaining copy, losing what only lost disks held',
  description: `
An incomplete PG (cistern status names it) has no up member known to hold every
acknowledged write: the disks that did all failed or are away. If one of them can come
back with its data, bring it back instead: the PG then recovers from it with nothing
lost. If none can, this accepts the loss: the daemon that peers the PG asks every
remaining member's PG log how far it is complete and serves the most complete copy;
recovery copies it to the other members, and writes only the lost disks held are gone
for good. Waits until the copy is served (every member must answer). Refused for a PG
that is not incomplete.`,
  positionals: [
    { name: 'POOL/PG', help: 'the PG, as status names it (e.g. default/12)', required: true },
  ],
  options: [
    ...adminOptions,
    { name: 'no-wait', type: 'boolean', help: 'record the acceptance and return' },
    {
      name: 'timeout',
      type: 'integer',
      valueName: 'S',
      default: 300,
      help: 'give up waiting after S seconds',
    },
  ],
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
    const key = pgKey(accepted.pool, accepted.pg);
    const lost =
      accepted.lost.length > 0
        ? `writes only disk(s) ${accepted.lost.join(', ')} held are lost. `
        : '';
    let served: number | undefined;
    let done = false;
    if (!opt<boolean>(args, 'no-wait')) {
      const deadline = Date.now() + opt<number>(args, 'timeout') * 1000;
      for (;;) {
        const now = await freshState(admin);
        if (now.acceptedLosses?.[key] === undefined) {
          done = true;
          served = now.authoritativeMembers[key]?.[0];
          break;
        }
        if (Date.now() >= deadline) break;
        await new Promise((resolve) => setTimeout(resolve, POLL_INTERVAL_MS));
      }
    }
    if (opt<boolean>(args, 'json')) {
      output.out(
        JSON.stringify({ ...accepted, ...(served !== undefined ? { served } : {}) }, null, 2),
      );
      return done || opt<boolean>(args, 'no-wait') ? 0 : 1;
    }
    if (done && served === undefined) {
      output.out(`PG ${text} is no longer incomplete: a disk holding every write came back.`);
      return 0;
    }
    if (served !== undefined) {
      output.out(
        `PG ${text} is served from disk ${served}; ${lost}` +
          'Recovery now copies it to the other members (see: cistern status).',
      );
      return 0;
    }
    const where = `disk(s) ${accepted.members.join(', ')}`;
    if (opt<boolean>(args, 'no-wait')) {
      output.out(
        `PG ${text}: loss accepted; the daemon peering it serves the most complete copy of ` +
          `${where} once it has asked each (see: cistern status).`,
      );
      return 0;
    }
    output.err(
      `PG ${text}: loss accepted, but no daemon has served it yet: each of ${where} must ` +
        'answer its PG log (are their daemons running?); it is served once they do (see: cistern status)',
    );
    return 1;
  },
};
