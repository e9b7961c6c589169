// A first-come-first-served readers/writer lock for one object. Shared holders (reads,
// whole-block writes) run together; exclusive holders (read-modify-write, trim, zero,
// delete) run alone. FIFO order keeps a stream of readers from starving a trim. The
// number of waiters is bounded by the store's in-flight limit, not here.

import { assert } from '../util/assert';

interface Waiter {
  exclusive: boolean;
  grant: () => void;
}

export class RwLock {
  private sharedHolders = 0;
  private exclusiveHeld = false;
  private readonly waiters: Waiter[] = [];

  get idle(): boolean {
    return this.sharedHolders === 0 && !this.exclusiveHeld && this.waiters.length === 0;
  }

  /** Takes the lock if it is free for this mode and nobody waits; never queues. */
  tryAcquire(exclusive: boolean): boolean {
    if (this.waiters.length > 0 || !this.compatible(exclusive)) return false;
    this.take(exclusive);
    return true;
  }

  acquire(exclusive: boolean): Promise<void> {
    if (this.tryAcquire(exclusive)) return Promise.resolve();
    return new Promise((resolve) => {
      this.waiters.push({ exclusive, grant: resolve });
    });
  }

  release(exclusive: boolean): void {
    if (exclusive) {
      assert(this.exclusiveHeld, 'exclusive release without hold');
      this.exclusiveHeld = false;
    } else {
      assert(this.sharedHolders > 0, 'shared release without hold');
      this.sharedHolders -= 1;
    }
    while (this.waiters.length > 0 && this.compatible(this.waiters[0]!.exclusive)) {
      const waiter = this.waiters.shift()!;
      this.take(waiter.exclusive);
      waiter.grant();
    }
  }

  private compatible(exclusive: boolean): boolean {
    if (this.exclusiveHeld) return false;
    return exclusive ? this.sharedHolders === 0 : true;
  }

  private take(exclusive: boolean): void {
    if (exclusive) this.exclusiveHeld = true;
    else this.sharedHolders += 1;
    assert(!(this.exclusiveHeld && this.sharedHolders > 0), 'lock held both ways');
  }
}
