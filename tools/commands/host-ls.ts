// `cistern host ls`: every host of the cluster with its rack, peer address, whether its
// liveness lease is current, and how many of its disks are up. Without --etcd, the one
// host of the local datastore, from its daemon's status.

import { HostInfo, hostsFromStatus } from '../../src/cluster/cluster-admin';
import { adminOptions, formatTable, openAdmin } from '../admin-client';
import { Command, opt } from '../command';

export const hostLs: Command = {
  path: ['host', 'ls'],
  summary: 'list hosts, whether they are alive, and their disks',
  options: [...adminOptions],
  async run(args, output) {
    const client = await openAdmin(args);
    const lister = client as Partial<{ listHosts(): Promise<HostInfo[]> }>;
    const hosts = lister.listHosts
      ? await lister.listHosts.call(client)
      : hostsFromStatus(await client.status());
    if (opt<boolean>(args, 'json')) {
      output.out(JSON.stringify(hosts, null, 2));
      return 0;
    }
    if (hosts.length === 0) {
      output.out('no hosts (a daemon joins the cluster when it starts)');
      return 0;
    }
    const rows = [...hosts]
      .sort((a, b) => a.id.localeCompare(b.id))
      .map((h) => [
        h.id,
        h.rack,
        h.address,
        h.alive ? 'yes' : 'NO',
        `${h.disksUp}/${h.disksTotal}`,
        h.nbd ?? '-',
      ]);
    const columns = [
      { header: 'HOST' },
      { header: 'RACK' },
      { header: 'ADDRESS' },
      { header: 'ALIVE' },
      { header: 'DISKS UP', right: true },
      { header: 'NBD' },
    ];
    for (const line of formatTable(columns, rows)) output.out(line);
    return 0;
  },
};
