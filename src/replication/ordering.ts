// Keeps replicas identical under concurrent writes: two writes to overlapping bytes
// of one object are applied in arrival order on every replica, because the later one
// starts only after the earlier finished everywhere. Writes to disjoint ranges run
// in parallel. (Without this, replica A could apply X then Y and replica B Y then X.)

import { assert } from '../util/assert';

interface Active {
  start: number;
  end: number;
  done: Promise<void>;
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
    const earlier = list.filter((a) => a.start < end && start < a.end).map((a) => a.done);
    let release!: () => void;
    const entry: Active = { start, end, done: new Promise<void>((resolve) => (release = resolve)) };
    list.push(entry);
    try {
      if (earlier.length > 0) await Promise.all(earlier);
      return await operation();
    } finally {
      release();
      const current = this.active.get(key);
      if (current) {
        current.splice(current.indexOf(entry), 1);
        if (current.length === 0) this.active.delete(key);
      }
    }
  }

  get pendingObjects(): number {
    return this.active.size;
  }
}
