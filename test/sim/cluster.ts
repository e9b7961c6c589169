// The simulated cluster store (what etcd is to real daemons): one authoritative state,
// changed by the real pure mutations of src/cluster/state.ts (with markNewMembersStale
// and the epoch bump, as every real store does), and one view per host incarnation to
// which each new state arrives after a seeded delay, in epoch order — so daemons run on
// maps of different epochs and the fencing matters. A host cut off from etcd neither
// receives states nor gets its updates applied (they fail with UNAVAILABLE after a
// timeout). Every state is kept by epoch, for the checkers.

import { assert } from '../../src/util/assert';
import { CisternError } from '../../src/util/errors';
import { ClusterState, markNewMembersStale } from '../../src/cluster/state';
import { ClusterStore } from '../../src/cluster/store';
import { Scheduler } from './scheduler';

/** Delay of a watch event or an update's round trip to etcd, virtual ms. */
const WATCH_LATENCY_MS_MAX = 20;
/** An update to an unreachable etcd fails after this (virtual ms). */
const UPDATE_TIMEOUT_MS = 1_000;

export class SimAuthority {
  state: ClusterState;
  /** Every state by epoch. */
  readonly history = new Map<number, ClusterState>();
  private readonly views = new Set<HostView>();
  /** Hosts cut off from etcd. */
  readonly isolated = new Set<string>();

  constructor(
    private readonly scheduler: Scheduler,
    initial: ClusterState,
  ) {
    this.state = initial;
    this.history.set(initial.map.epoch, initial);
  }

  /** Applies a mutation now, as etcd's transaction would, and publishes the result. */
  apply<T>(mutate: (state: ClusterState) => T): T {
    const next = structuredClone(this.state);
    const result = mutate(next);
    markNewMembersStale(this.state, next);
    next.map.epoch = this.state.map.epoch + 1;
    this.state = next;
    this.history.set(next.map.epoch, next);
    for (const view of this.views) view.publish(next);
    return result;
  }

  /** A view for one host incarnation, starting from the current state (read at start). */
  view(hostId: string, alive: () => boolean): HostView {
    const view = new HostView(this, this.scheduler, hostId, alive, this.state);
    this.views.add(view);
    return view;
  }

  forget(view: HostView): void {
    this.views.delete(view);
  }

  reachable(hostId: string): boolean {
    return !this.isolated.has(hostId);
  }
}

export class HostView implements ClusterStore {
  private readonly listeners = new Set<(state: ClusterState) => void>();
  private readonly waiters = new Set<{ epoch: number; resolve: (ok: boolean) => void }>();
  /** When the last published state arrives here: later ones never overtake it. */
  private lastArrivalMs = 0;

  constructor(
    private readonly authority: SimAuthority,
    private readonly scheduler: Scheduler,
    readonly hostId: string,
    private readonly alive: () => boolean,
    private state: ClusterState,
  ) {}

  current(): ClusterState {
    return this.state;
  }

  publish(next: ClusterState): void {
    if (!this.authority.reachable(this.hostId)) return; // the watch catches up on heal
    this.deliverLater(next);
  }

  /** Re-reads the authority's state (a watch resuming after etcd is reachable again). */
  resync(): void {
    this.deliverLater(this.authority.state);
  }

  private deliverLater(next: ClusterState): void {
    const arrival = Math.max(
      this.lastArrivalMs,
      this.scheduler.now + this.scheduler.random.float() * WATCH_LATENCY_MS_MAX,
    );
    this.lastArrivalMs = arrival;
    this.scheduler.schedule(
      arrival - this.scheduler.now,
      `watch ${this.hostId} e${next.map.epoch}`,
      () => this.receive(next),
      this.alive,
    );
  }

  private receive(next: ClusterState): void {
    if (next.map.epoch <= this.state.map.epoch) return;
    this.state = next;
    for (const waiter of [...this.waiters]) {
      if (next.map.epoch >= waiter.epoch) {
        this.waiters.delete(waiter);
        waiter.resolve(true);
      }
    }
    for (const listener of [...this.listeners]) listener(next);
  }

  update<T>(mutate: (state: ClusterState) => T): Promise<T> {
    const random = this.scheduler.random;
    return new Promise<T>((resolve, reject) => {
      if (!this.authority.reachable(this.hostId)) {
        this.scheduler.schedule(
          UPDATE_TIMEOUT_MS,
          `etcd.timeout ${this.hostId}`,
          () => reject(new CisternError('UNAVAILABLE', `etcd unreachable from ${this.hostId}`)),
          this.alive,
        );
        return;
      }
      this.scheduler.schedule(
        random.float() * WATCH_LATENCY_MS_MAX,
        `etcd.update ${this.hostId}`,
        () => {
          let result: T;
          try {
            result = this.authority.apply(mutate);
          } catch (error) {
            reject(error);
            return;
          }
          // As the real stores: the updater's own view has the new state when it resolves.
          const epoch = this.authority.state.map.epoch;
          this.waitForEpoch(epoch, UPDATE_TIMEOUT_MS).then((ok) => {
            if (ok) resolve(result);
            else reject(new CisternError('UNAVAILABLE', `epoch ${epoch} did not arrive`));
          }, reject);
        },
        this.alive,
      );
    });
  }

  subscribe(listener: (state: ClusterState) => void): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  waitForEpoch(epoch: number, timeoutMs: number): Promise<boolean> {
    if (this.state.map.epoch >= epoch) return Promise.resolve(true);
    assert(timeoutMs >= 0, 'negative wait');
    return new Promise((resolve) => {
      const waiter = { epoch, resolve };
      this.waiters.add(waiter);
      this.scheduler.schedule(
        timeoutMs,
        `epoch.wait ${this.hostId} e${epoch}`,
        () => {
          if (this.waiters.delete(waiter)) resolve(false);
        },
        this.alive,
      );
    });
  }

  async close(): Promise<void> {
    this.authority.forget(this);
  }
}
