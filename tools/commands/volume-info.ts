// `cistern volume info`: one volume in detail, with the URI to connect to it.

import { formatSize } from '../../src/util/units';
import { adminOptions, percent, openAdmin } from '../admin-client';
import { Command, opt } from '../command';
import { accessLines } from './volume-access';

export const volumeInfo: Command = {
  path: ['volume', 'info'],
  summary: 'show one volume',
  positionals: [{ name: 'NAME', help: 'volume name', required: true }],
  options: [...adminOptions],
  async run(args, output) {
    const client = await openAdmin(args);
    const info = await client.volumeInfo(args.positionals[0] as string);
    if (opt<boolean>(args, 'json')) {
      output.out(JSON.stringify(info, null, 2));
      return 0;
    }
    const lines: Array<[string, string]> = [
      ['name', info.name],
      ['id', String(info.id)],
      ['pool', info.pool],
      ['size', `${formatSize(info.sizeBytes)} (${info.sizeBytes} bytes)`],
      ['used', `${formatSize(info.usedBytes)} (${percent(info.usedBytes, info.sizeBytes)})`],
      ['object size', formatSize(info.objectSizeBytes)],
      ['open connections', String(info.openHandles)],
      ['created', info.createdAt],
    ];
    if (client.nbd) lines.push(['nbd', `nbd://${client.nbd}/${info.name}`]);
    if (info.iscsi) lines.push(...accessLines(info.iscsi, client.iscsi));
    for (const [key, value] of lines) output.out(`${(key + ':').padEnd(18)}${value}`);
    return 0;
  },
};
