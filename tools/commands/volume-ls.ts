// `cistern volume ls`: every volume with its size, use and open connections.

import { formatSize } from '../../src/util/units';
import { adminOptions, formatTable, openAdmin } from '../admin-client';
import { Command, opt } from '../command';

export const volumeLs: Command = {
  path: ['volume', 'ls'],
  summary: 'list volumes',
  options: [...adminOptions],
  async run(args, output) {
    const client = await openAdmin(args);
    const volumes = await client.listVolumes();
    if (opt<boolean>(args, 'json')) {
      output.out(JSON.stringify(volumes, null, 2));
      return 0;
    }
    if (volumes.length === 0) {
      output.out('no volumes (create one with: cistern volume create NAME --size 10G)');
      return 0;
    }
    const rows = [...volumes]
      .sort((a, b) => a.name.localeCompare(b.name))
      .map((v) => [
        v.name,
        v.pool,
        formatSize(v.sizeBytes),
        formatSize(v.usedBytes),
        String(v.openHandles),
        v.createdAt,
      ]);
    const columns = [
      { header: 'NAME' },
      { header: 'POOL' },
      { header: 'SIZE', right: true },
      { header: 'USED', right: true },
      { header: 'OPEN', right: true },
      { header: 'CREATED' },
    ];
    for (const line of formatTable(columns, rows)) output.out(line);
    return 0;
  },
};
