// `cistern host rm ID`: removes a drained host from the cluster map. Refused while the
// host holds any PG, or while its daemon is still running.

import { removeHost } from '../../src/cluster/hosts';
import { CisternError } from '../../src/util/errors';
import { adminOptions } from '../admin-client';
import { Command } from '../command';
import { clusterAdmin } from './host-drain';

export const hostRm: Command = {
  path: ['host', 'rm'],
  summary: 'remove a drained host from the cluster',
  description: `
Removes the host and its disks from the cluster map. Refused while the host holds any
PG (drain it first: cistern host drain ID) or while its daemon is running (stop it:
its liveness lease must have lapsed).`,
  positionals: [{ name: 'ID', help: 'the host to remove', required: true }],
  options: [...adminOptions],
  async run(args, output) {
    const hostId = args.positionals[0] as string;
    const admin = await clusterAdmin(args, 'host rm');
    const host = (await admin.listHosts()).find((h) => h.id === hostId);
    if (host?.alive) {
      throw new CisternError(
        'EPERM',
        `host ${hostId} is running; stop its daemon before removing it`,
      );
    }
    await admin.store.update((s) => removeHost(s, hostId));
    output.out(`removed host ${hostId} from the cluster`);
    return 0;
  },
};
