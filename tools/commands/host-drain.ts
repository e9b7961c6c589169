// `cistern host drain ID`: moves every PG off a host. Its disks' placement weight goes
// to zero; each PG gets new members, which recovery fills while the host's disks keep
// serving (they stay acting members until the copy is done). Waits, printing progress,
// until the host holds nothing and can be powered off.

import { ClusterAdmin } from '../../src/cluster/cluster-admin';
import { EtcdClusterStore } from '../../src/cluster/etcd';
import { drainHost, hostHoldings } from '../../src/cluster/hosts';
import { ClusterState } from '../../src/cluster/state';
import { CisternError } from '../../src/util/errors';
import { adminOptions, openAdmin } from '../admin-client';
import { Command, opt } from '../command';

/** How often progress is printed while waiting. */
const PROGRESS_INTERVAL_MS = 2000;

export async function clusterAdmin(
  args: Parameters<typeof openAdmin>[0],
  what: string,
): Promise<ClusterAdmin> {
  const admin = await openAdmin(args);
  if (!(admin instanceof ClusterAdmin)) {
    throw new CisternError('EINVAL', `${what} works on a multi-host cluster: pass --etcd URL`);
  }
  return admin;
}

export async function freshState(admin: ClusterAdmin): Promise<ClusterState> {
  return admin.store instanceof EtcdClusterStore ? admin.store.refresh() : admin.store.current();
}

export const hostDrain: Command = {
  path: ['host', 'drain'],
  summary: 'move every PG off a host, then say when it can be powered off',
  description: `
Sets the placement weight of every disk of the host to zero. Each of its PGs gets a new
member elsewhere; recovery copies the PG there while the host keeps serving it (no PG
loses a replica during the move). The command waits and prints progress until the host
holds no PG (--no-wait returns at once). Then the host can be powered off and removed
with cistern host rm ID.`,
  positionals: [{ name: 'ID', help: 'the host to drain', required: true }],
  options: [
    ...adminOptions,
    { name: 'no-wait', type: 'boolean', help: 'start the drain and return' },
    {
      name: 'timeout',
      type: 'integer',
      valueName: 'S',
      default: 3600,
      help: 'give up waiting after S seconds',
    },
  ],
  async run(args, output) {
    const hostId = args.positionals[0] as string;
    const admin = await clusterAdmin(args, 'host drain');
    const disks = await admin.store.update((s) => drainHost(s, hostId));
    output.err(`draining host ${hostId}: placement weight of disk(s) ${disks.join(', ')} set to 0`);
    let holdings = hostHoldings(await freshState(admin), hostId);
    if (opt<boolean>(args, 'no-wait')) {
      if (opt<boolean>(args, 'json')) output.out(JSON.stringify({ host: hostId, ...holdings }));
      return 0;
    }
    const deadline = Date.now() + opt<number>(args, 'timeout') * 1000;
    while (holdings.pgMemberships > 0 && Date.now() < deadline) {
      output.err(
        `host ${hostId}: ${holdings.pgMemberships} PG(s) still on it; ` +
          `${holdings.staleMembers} PG member(s) cluster-wide being recovered`,
      );
      await new Promise((resolve) => setTimeout(resolve, PROGRESS_INTERVAL_MS));
      holdings = hostHoldings(await freshState(admin), hostId);
    }
    if (opt<boolean>(args, 'json')) output.out(JSON.stringify({ host: hostId, ...holdings }));
    if (holdings.pgMemberships > 0) {
      output.err(
        `host ${hostId} still holds ${holdings.pgMemberships} PG(s); the drain goes on in the background`,
      );
      return 1;
    }
    output.out(
      `host ${hostId} holds no data: it can be powered off and removed (cistern host rm ${hostId})`,
    );
    return 0;
  },
};
