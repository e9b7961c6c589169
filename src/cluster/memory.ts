// A cluster store in memory, shared by several datastores in one process: the
// multi-host tests and the deterministic simulator run whole clusters on it. Same
// contract as the embedded and etcd stores (serialised atomic updates, epoch bumped,
// subscribers called in epoch order), without durability.

import { CisternError } from '../util/errors';
import { ClusterState, emptyState, markNewMembersStale } from './state';
import { ClusterStore } from './store';

export class MemoryClusterStore implements ClusterStore {
  private state: ClusterState;
  private readonly listeners = new Set<(state: ClusterState) => void>();
  private closed = false;

  constructor(initial: ClusterState = emptyState()) {
    this.state = structuredClone(initial);
  }

  current(): ClusterState {
    return this.state;
  }

  async update<T>(mutate: (state: ClusterState) => T): Promise<T> {
    if (this.closed) throw new CisternError('CLOSED', 'cluster store is closed');
    const next = structuredClone(this.state);
    const result = mutate(next);
    markNewMembersStale(this.state, next);
    next.map.epoch = this.state.map.epoch + 1;
    this.state = next;
    for (const listener of this.listeners) listener(next);
    return result;
  }

  subscribe(listener: (state: ClusterState) => void): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  /**
   * Resolves true once the epoch is reached — at once if it is (every reader shares the
   * state), else when an update brings it or false after `timeoutMs` (0: no wait).
   */
  async waitForEpoch(epoch: number, timeoutMs = 0): Promise<boolean> {
    if (this.state.map.epoch >= epoch) return true;
    if (timeoutMs <= 0 || this.closed) return false;
    return new Promise<boolean>((resolve) => {
      const done = (reached: boolean): void => {
        clearTimeout(timer);
        unsubscribe();
        resolve(reached);
      };
      const timer = setTimeout(() => done(false), timeoutMs);
      const unsubscribe = this.subscribe((next) => {
        if (next.map.epoch >= epoch) done(true);
      });
    });
  }

  async close(): Promise<void> {
    this.closed = true;
  }
}
