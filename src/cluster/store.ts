// Where the cluster state lives. One host: an embedded LevelDB (embedded.ts). Many
// hosts: etcd. Both apply the same pure mutations from state.ts atomically and bump
// the map epoch on every change.

import { ClusterState } from './state';

export interface ClusterStore {
  /** The state as of the last completed update. */
  current(): ClusterState;
  /**
   * Applies `mutate` to a copy of the state and stores the result atomically and
   * durably, with the map epoch bumped. Updates are serialised. If `mutate` throws,
   * nothing changes and the error propagates.
   */
  update<T>(mutate: (state: ClusterState) => T): Promise<T>;
  /**
   * Calls `listener` with the new state after every change, whoever made it (on etcd,
   * other daemons' changes arrive through a watch). Returns an unsubscribe function.
   */
  subscribe(listener: (state: ClusterState) => void): () => void;
  close(): Promise<void>;
}
