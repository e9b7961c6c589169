// A daemon's membership of a multi-host cluster: the shared map in etcd, the peer
// server other daemons call, the pool of connections to them, the host's liveness
// lease, its candidacy as monitor, and the datastore in multi-host mode on top. What
// the rest of the daemon sees is the same DaemonStore as on one host; closing it
// leaves the cluster in the reverse order it joined.

import { CisternError } from '../util/errors';
import { EtcdClusterStore, HostRegistration } from '../cluster/etcd';
import { Monitor } from '../cluster/monitor';
import { ReadFence, readLeaseMs } from '../cluster/read-fence';
import { systemClock } from '../util/clock';
import { checkSecret, readSecretFile } from '../cluster/secret';
import { PeerPool, PeerServer, REQUEST_TIMEOUT_MS } from '../replication/peer';
import { HandlerReply, HandlerRequest } from '../replication/handler';
import { MessageType } from '../replication/messages';
import { Datastore } from '../volume/datastore';
import type { ScrubStatus } from '../cluster/scrub-state';
import type { AccessChange } from '../cluster/iscsi-access';
import type { VolumeAccess } from '../frontend/iscsi/access';
import { ExportInfo, VolumeHandle } from '../volume/backend';
import {
  CreatePoolRequest,
  CreateVolumeRequest,
  PoolInfo,
  StatusReport,
  VolumeInfo,
} from '../volume/admin';
import { HostPort, formatHostPort } from './address';
import type { DaemonStore, StoreOptions } from './daemon';

export interface ClusterOptions {
  endpoints: string[];
  prefix?: string;
  hostId: string;
  /** Where the peer server listens; other daemons connect here. */
  listen: HostPort;
  rack: string;
  secretFile: string;
  downOutIntervalS?: number;
  leaseTtlS?: number;
}

/** Three times the replica request timeout: see where the gateway pool is made. */
const GATEWAY_REQUEST_TIMEOUT_MS = 3 * REQUEST_TIMEOUT_MS;

/** How long a request from a newer epoch waits for this daemon's map to catch up. */
const EPOCH_CATCH_UP_MS = 5000;

export class ClusterMember implements DaemonStore {
  private constructor(
    readonly datastore: Datastore,
    private readonly leave: Array<[string, () => Promise<void>]>,
    private readonly log: StoreOptions['log'],
  ) {}

  static async join(options: StoreOptions, cluster: ClusterOptions): Promise<ClusterMember> {
    const { log } = options;
    const secret = readSecretFile(cluster.secretFile);
    const leave: Array<[string, () => Promise<void>]> = [];
    const undo = async (): Promise<void> => {
      for (const [, step] of leave.reverse()) await step().catch(() => undefined);
    };
    try {
      const etcd = await EtcdClusterStore.open({
        endpoints: cluster.endpoints,
        ...(cluster.prefix !== undefined ? { prefix: cluster.prefix } : {}),
        log,
      });
      leave.push(['cluster.store-closed', () => etcd.close()]);
      checkSecret(secret, etcd.current().secretFingerprint);
      const waitForEpoch = async (epoch: number, timeoutMs: number): Promise<boolean> => {
        try {
          await etcd.waitForEpoch(epoch, timeoutMs);
          return true;
        } catch {
          return false;
        }
      };

      // The peer server listens before the host is announced, so that nobody is told
      // an address that does not answer; until the datastore is open it refuses.
      let handler: ((request: HandlerRequest) => Promise<HandlerReply>) | undefined;
      const server = new PeerServer({
        hostId: cluster.hostId,
        secret,
        currentEpoch: () => etcd.current().map.epoch,
        waitForEpoch: (epoch) => waitForEpoch(epoch, EPOCH_CATCH_UP_MS),
        log,
        handler: (request) => {
          if (!handler)
            throw new CisternError('UNAVAILABLE', `host ${cluster.hostId} is still starting`);
          return handler(request);
        },
        expectedReplyBytes: (request) =>
          request.type === MessageType.ObjectRead || request.type === MessageType.DiskRead
            ? Number((request.metadata as { length?: unknown } | undefined)?.length ?? 0) || 0
            : 0,
      });
      const bound = await server.listen(cluster.listen.host, cluster.listen.port);
      leave.push(['peer.closed', () => server.close()]);
      const address = formatHostPort({ host: cluster.listen.host, port: bound.port });

      const registration: HostRegistration = await etcd.registerHost(
        cluster.hostId,
        { address, rack: cluster.rack },
        cluster.leaseTtlS !== undefined ? { ttlS: cluster.leaseTtlS } : {},
      );
      leave.push(['cluster.left', () => registration.revoke()]);
      // Replicas give up on this host after REQUEST_TIMEOUT_MS, the monitor after the
      // lease TTL: reads stop before either can have moved a PG on (read-fence.ts).
      const readFence = new ReadFence({
        clock: systemClock,
        hostId: cluster.hostId,
        leaseMs: readLeaseMs(registration.ttlS * 1000, REQUEST_TIMEOUT_MS),
        holdUntilStarted: true, // until Datastore.open has marked what a crash may have cost
      });
      registration.onRenewed((sentAtMs) => readFence.renewed(sentAtMs));

      const peers = new PeerPool({
        hostId: cluster.hostId,
        secret,
        addressOf: (host) => etcd.current().hostAddresses[host]?.address,
      });
      leave.push(['peer.pool-closed', () => peers.close()]);
      // Gateway → primary requests wait longer than primary → replica ones: a primary
      // whose replica host went silent answers once it has given up on that replica
      // (REQUEST_TIMEOUT_MS); if the gateway gave up at the same moment, it would take
      // the live primary's disk down too and leave its PGs with no up-to-date member.
      const gatewayPeers = new PeerPool({
        hostId: cluster.hostId,
        secret,
        addressOf: (host) => etcd.current().hostAddresses[host]?.address,
        requestTimeoutMs: GATEWAY_REQUEST_TIMEOUT_MS,
      });
      leave.push(['peer.gateway-pool-closed', () => gatewayPeers.close()]);

      const datastore = await Datastore.open({
        dataDir: options.dataDir,
        disks: options.disks,
        log,
        ...(options.bandwidth ? { bandwidth: options.bandwidth } : {}),
        hostId: cluster.hostId,
        rack: cluster.rack,
        cluster: {
          store: etcd,
          transport: peers,
          gatewayTransport: gatewayPeers,
          waitForEpoch,
          readFence,
        },
      });
      leave.push(['datastore.closed', () => datastore.close()]);
      handler = datastore.peerHandler();

      const monitor: Monitor = etcd.runMonitor({
        hostId: cluster.hostId,
        log,
        ...(cluster.downOutIntervalS !== undefined
          ? { downOutIntervalS: cluster.downOutIntervalS }
          : {}),
      });
      leave.push(['monitor.resigned', () => monitor.close()]);
      log('cluster.joined', { host: cluster.hostId, address, epoch: etcd.current().map.epoch });
      return new ClusterMember(datastore, leave, log);
    } catch (error) {
      await undo();
      throw error;
    }
  }

  async close(): Promise<void> {
    // Reverse order of joining: stop campaigning, close the datastore (flushes through
    // the peers), then the pool, leave (revoke the lease), stop serving peers, etcd.
    let firstError: unknown;
    for (const [event, step] of [...this.leave].reverse()) {
      try {
        await step();
        this.log(event);
      } catch (error) {
        this.log('cluster.leave-failed', { step: event, error });
        firstError ??= error;
      }
    }
    if (firstError !== undefined) throw firstError;
  }

  list(): Promise<ExportInfo[]> {
    return this.datastore.list();
  }
  open(name: string, options: { readOnly: boolean }): Promise<VolumeHandle> {
    return this.datastore.open(name, options);
  }
  createPool(request: CreatePoolRequest): Promise<PoolInfo> {
    return this.datastore.createPool(request);
  }
  listPools(): Promise<PoolInfo[]> {
    return this.datastore.listPools();
  }
  createVolume(request: CreateVolumeRequest): Promise<VolumeInfo> {
    return this.datastore.createVolume(request);
  }
  listVolumes(): Promise<VolumeInfo[]> {
    return this.datastore.listVolumes();
  }
  volumeInfo(name: string): Promise<VolumeInfo> {
    return this.datastore.volumeInfo(name);
  }
  resizeVolume(
    name: string,
    sizeBytes: number,
    options: { allowShrink?: boolean },
  ): Promise<VolumeInfo> {
    return this.datastore.resizeVolume(name, sizeBytes, options);
  }
  removeVolume(name: string, options: { force?: boolean }): Promise<void> {
    return this.datastore.removeVolume(name, options);
  }
  requestScrub(pool: string | undefined): Promise<ScrubStatus> {
    return this.datastore.requestScrub(pool);
  }
  scrubStatus(id: number): Promise<ScrubStatus> {
    return this.datastore.scrubStatus(id);
  }
  status(): Promise<StatusReport> {
    return this.datastore.status();
  }
  setVolumeAccess(name: string, change: AccessChange): Promise<VolumeInfo> {
    return this.datastore.setVolumeAccess(name, change);
  }
  access(volumeName: string): Promise<VolumeAccess> {
    return this.datastore.access(volumeName);
  }
}
