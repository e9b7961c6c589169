// `cistern pool ls`: every pool with its replication settings, use and PG health.

import { formatSize } from '../../src/util/units';
import { PoolInfo } from '../../src/volume/admin';
import { adminOptions, formatTable, openAdmin } from '../admin-client';
import { Command, opt } from '../command';

export function poolTable(pools: PoolInfo[]): string[] {
  const columns = [
    { header: 'NAME' },
    { header: 'SIZE', right: true },
    { header: 'MIN', right: true },
    { header: 'DOMAIN' },
    { header: 'PGS', right: true },
    { header: 'VOLUMES', right: true },
    { header: 'PROVISIONED', right: true },
    { header: 'STORED', right: true },
    { header: 'DEGRADED', right: true },
    { header: 'UNAVAILABLE', right: true },
  ];
  const rows = pools.map((p) => [
    p.name,
    String(p.size),
    String(p.minSize),
    p.failureDomain,
    String(p.pgCount),
    String(p.volumes),
    formatSize(p.provisionedBytes),
    formatSize(p.storedBytes),
    String(p.pgsDegraded),
    String(p.pgsUnavailable),
  ]);
  return formatTable(columns, rows);
}

export const poolLs: Command = {
  path: ['pool', 'ls'],
  summary: 'list pools',
  options: [...adminOptions],
  async run(args, output) {
    const client = await openAdmin(args);
    const pools = await client.listPools();
    if (opt<boolean>(args, 'json')) {
      output.out(JSON.stringify(pools, null, 2));
      return 0;
    }
    if (pools.length === 0) {
      output.out('no pools (create one with: cistern pool create NAME --size 2)');
      return 0;
    }
    for (const line of poolTable(pools)) output.out(line);
    return 0;
  },
};
