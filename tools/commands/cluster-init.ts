// `cistern cluster init`: creates a multi-host cluster in etcd and its shared secret.
// The secret goes to a new file of mode 0600 (copied to every host's daemon); etcd gets
// only its fingerprint, so a daemon can check it holds the right secret.

import { ETCD_PREFIX_DEFAULT, EtcdClusterStore, parseEndpoints } from '../../src/cluster/etcd';
import { newSecret, secretFingerprint, writeSecretFile } from '../../src/cluster/secret';
import { emptyState } from '../../src/cluster/state';
import fs from 'node:fs';
import { Command, opt, usageError } from '../command';

export const clusterInit: Command = {
  path: ['cluster', 'init'],
  summary: 'create a multi-host cluster in etcd and its secret file',
  description: `
Writes the initial cluster state under the prefix in etcd (refused if a cluster is
already there) and a new 32-byte secret to --secret-file, mode 0600 (refused if the file
exists). Copy the secret file to every host; daemons refuse a secret whose fingerprint
differs from the one stored in etcd.`,
  options: [
    { name: 'etcd', type: 'string', valueName: 'URL[,URL]', help: 'etcd client URLs (required)' },
    {
      name: 'secret-file',
      type: 'string',
      valueName: 'F',
      help: 'where to write the cluster secret (required; must not exist)',
    },
    {
      name: 'prefix',
      type: 'string',
      valueName: 'P',
      default: ETCD_PREFIX_DEFAULT,
      help: "the cluster's key prefix in etcd",
    },
  ],
  async run(args, output) {
    const etcd = opt<string | undefined>(args, 'etcd') ?? process.env['CISTERN_ETCD'];
    if (!etcd) throw usageError('--etcd URL is required, e.g. --etcd http://127.0.0.1:2379');
    const secretFile = opt<string | undefined>(args, 'secret-file');
    if (!secretFile) throw usageError('--secret-file F is required');
    const endpoints = parseEndpoints(etcd);
    const prefix = opt<string>(args, 'prefix');
    const secret = newSecret();
    const state = emptyState();
    state.secretFingerprint = secretFingerprint(secret);
    // The file first: if it cannot be written, nothing is created in etcd. If etcd
    // refuses (a cluster is there already), the new file is removed again.
    writeSecretFile(secretFile, secret);
    try {
      await EtcdClusterStore.initialise({ endpoints, prefix }, state);
    } catch (error) {
      fs.rmSync(secretFile, { force: true });
      throw error;
    }
    const result = {
      etcd: endpoints,
      prefix,
      epoch: state.map.epoch,
      secretFile,
      secretFingerprint: state.secretFingerprint,
    };
    if (opt<boolean>(args, 'json')) {
      output.out(JSON.stringify(result, null, 2));
      return 0;
    }
    output.out(
      `created cluster at ${endpoints.join(',')} under ${prefix} (epoch ${state.map.epoch})`,
    );
    output.out(`secret written to ${secretFile} (mode 0600): copy it to every host's daemon`);
    return 0;
  },
};
