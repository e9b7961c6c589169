// Several datastores ("hosts") in one process on a shared in-memory cluster store and
// an in-process peer transport: the multi-host data path without sockets or etcd.

import path from 'node:path';
import { MemoryClusterStore } from '../../src/cluster/memory';
import { LoopbackNetwork } from '../../src/replication/loopback';
import { Datastore } from '../../src/volume/datastore';
import { scratchDir } from '../datastore/helpers';
import fs from 'node:fs';
import { CisternError } from '../../src/util/errors';

export interface InProcessCluster {
  dir: string;
  /** Starts one more host (a new datastore) in the running cluster. */
  addHost(hostId: string, rack?: string): Promise<Datastore>;
  store: MemoryClusterStore;
  network: LoopbackNetwork;
  hosts: Map<string, Datastore>;
  events: Array<{ host: string; event: string; fields: Record<string, unknown> }>;
  close(): Promise<void>;
}

export async function inProcessCluster(
  hostCount: number,
  disksPerHost = 1,
): Promise<InProcessCluster> {
  const dir = scratchDir('cistern-mh-');
  const store = new MemoryClusterStore();
  const network = new LoopbackNetwork();
  const hosts = new Map<string, Datastore>();
  const events: InProcessCluster['events'] = [];
  const addHost = async (hostId: string, rack = `rack-${hostId}`): Promise<Datastore> => {
    // Answering before the datastore opens, as a daemon's peer server does (it refuses
    // until then): the map has the new disks as soon as open adds them, and a recovery
    // that found the host unreachable would take them out as failed.
    let handler: ReturnType<Datastore['peerHandler']> | undefined;
    network.register(
      hostId,
      async (request) => {
        if (!handler) throw new CisternError('UNAVAILABLE', `host ${hostId} is still starting`);
        return handler(request);
      },
      () => store.current().map.epoch,
    );
    const datastore = await Datastore.open({
      dataDir: path.join(dir, hostId),
      disks: Array.from({ length: disksPerHost }, (_, d) => ({
        path: path.join(dir, hostId, `disk${d}.img`),
        sizeBytes: 256 * 2 ** 20,
      })),
      hostId,
      rack,
      log: (event, fields = {}) => events.push({ host: hostId, event, fields }),
      cluster: {
        store,
        transport: network.transport(hostId),
        waitForEpoch: (epoch, timeoutMs) => store.waitForEpoch(epoch, timeoutMs),
      },
    });
    handler = datastore.peerHandler();
    hosts.set(hostId, datastore);
    return datastore;
  };
  for (let h = 1; h <= hostCount; h += 1) await addHost(`h${h}`, `rack-${h}`);
  return {
    dir,
    addHost,
    store,
    network,
    hosts,
    events,
    close: async () => {
      for (const datastore of hosts.values()) await datastore.close();
      await store.close();
      fs.rmSync(dir, { recursive: true, force: true });
    },
  };
}

/**
 * The common set-up: pool `rep` (size 3, min-size 2, failure domain host) and a 64 MiB
 * volume `v` in it, created through h1, with a writable handle on h1.
 */
export async function replicatedVolume(cluster: InProcessCluster) {
  const h1 = cluster.hosts.get('h1');
  if (!h1) throw new Error('cluster has no h1');
  await h1.createPool({ name: 'rep', size: 3, minSize: 2, failureDomain: 'host' });
  const info = await h1.createVolume({ name: 'v', sizeBytes: 64 * 2 ** 20, pool: 'rep' });
  const writer = await h1.open('v', { readOnly: false });
  const poolId = cluster.store.current().map.pools.find((p) => p.name === 'rep')?.id ?? -1;
  return { h1, info, writer, poolId };
}
