// The embedded cluster store for one host: the whole state as one msgpack record in a
// LevelDB of its own, replaced by a synced write on every change. The state is small
// (one host's disks, pools and volumes), so one record keeps every update atomic.

import { ClassicLevel } from 'classic-level';
import { pack, unpack } from 'msgpackr';
import { assert } from '../util/assert';
import { CisternError } from '../util/errors';
import { ClusterState, emptyState, markNewMembersStale } from './state';
import { ClusterStore } from './store';

const STATE_KEY = 'state';

export class EmbeddedClusterStore implements ClusterStore {
  private state: ClusterState;
  private queue: Promise<unknown> = Promise.resolve();
  private readonly listeners = new Set<(state: ClusterState) => void>();
  private closed = false;

  private constructor(
    private readonly db: ClassicLevel<string, Buffer>,
    state: ClusterState,
    readonly created: boolean,
  ) {
    this.state = state;
  }

  static async open(path: string): Promise<EmbeddedClusterStore> {
    const db = new ClassicLevel<string, Buffer>(path, {
      keyEncoding: 'utf8',
      valueEncoding: 'buffer',
    });
    try {
      await db.open();
    } catch (error) {
      throw new CisternError(
        'EPERM',
        `cannot open the cluster store at ${path} (is another daemon using this data dir?): ${String(error)}`,
        error,
      );
    }
    const raw = await db.get(STATE_KEY);
    if (raw === undefined) {
      const state = emptyState();
      await db.put(STATE_KEY, pack(state), { sync: true });
      return new EmbeddedClusterStore(db, state, true);
    }
    const state = unpack(raw) as ClusterState;
    state.hostAddresses ??= {}; // written before multi-host support
    state.staleMembers ??= {};
    state.staleSince ??= {};
    state.scrubRequests ??= [];
    state.retainedMembers ??= {};
    state.authoritativeMembers ??= {};
    state.crashedMembers ??= {};
    assert(
      state && state.map && Array.isArray(state.volumes),
      `cluster state at ${path} is malformed`,
    );
    return new EmbeddedClusterStore(db, state, false);
  }

  current(): ClusterState {
    return this.state;
  }

  update<T>(mutate: (state: ClusterState) => T): Promise<T> {
    const run = async (): Promise<T> => {
      if (this.closed) throw new CisternError('CLOSED', 'cluster store is closed');
      const next = structuredClone(this.state);
      const result = mutate(next);
      markNewMembersStale(this.state, next);
      next.map.epoch = this.state.map.epoch + 1;
      await this.db.put(STATE_KEY, pack(next), { sync: true });
      this.state = next;
      for (const listener of this.listeners) listener(next);
      return result;
    };
    const result = this.queue.then(run, run);
    this.queue = result.catch(() => undefined);
    return result;
  }

  subscribe(listener: (state: ClusterState) => void): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  async close(): Promise<void> {
    await this.queue;
    this.closed = true;
    await this.db.close();
  }
}
