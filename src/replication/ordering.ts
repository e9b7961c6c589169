// Keeps replicas identical under concurrent writes: two writes to overlapping bytes
// of one object are applied in arrival order on every replica, because the later one
// starts only after the earlier finished everywhere. Writes to disjoint ranges run
// in parallel. (Without this, replica A could apply X then Y and replica B Y then X.)
//
// Every write passes through here, so the common case (nothing overlapping) allocates
// only its own entry: no promise per write, no filtered arrays. A later write that
// must wait registers one callback on each earlier entry it overlaps.

import { assert } from '../util/assert';

interface Active {
  start: number;
  end: number;
  /** Called when this write finishes; created only when a later write waits for it. */
  waiters: Array<() => void> | undefined;
}

/** Bound on overlapping writes queued on one object before new ones are refused. */
export const OVERLAPPING_WRITES_MAX = 4096;

export class RangeOrdering {
  private readonly active = new Map<string, Active[]>();

  async run<T>(key: string, start: number, end: number, operation: () => Promise<T>): Promise<T> {
    assert(end >= start, 'range ends before it starts');
    let list = this.active.get(key);
    if (!list) this.active.set(key, (list = []));
    assert(list.length < OVERLAPPING_WRITES_MAX, `too many writes queued on ${key}`);
    let overlapping = 0;
    for (const other of list) if (other.start < end && start < other.end) overlapping += 1;
    const earlier = overlapping === 0 ? undefined : this.waitFor(list, start, end, overlapping);
    const entry: Active = { start, end, waiters: undefined };
    list.push(entry);
    try {
      if (earlier !== undefined) await earlier;
      return await operation();
    } finally {
      const current = this.active.get(key);
      if (current) {
        current.splice(current.indexOf(entry), 1);
        if (current.length === 0) this.active.delete(key);
      }
      if (entry.waiters !== undefined) for (const wake of entry.waiters) wake();
    }
  }

  /** Resolves once each of the `count` entries overlapping [start, end) has finished. */
  private waitFor(list: Active[], start: number, end: number, count: number): Promise<void> {
    return new Promise<void>((resolve) => {
      let left = count;
      const finished = (): void => {
        left -= 1;
        if (left === 0) resolve();
      };
      for (const other of list) {
        if (other.start < end && start < other.end) (other.waiters ??= []).push(finished);
      }
    });
  }

  /** The objects with an operation running or waiting now. */
  pendingNames(): string[] {
    return [...this.active.keys()];
  }

  get pendingObjects(): number {
    return this.active.size;
  }
}
