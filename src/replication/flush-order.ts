// Concurrent FLUSHes. A flush takes the set of disks (or primaries) written since the
// last one and clears it; a second flush that starts while the first is still flushing
// finds that set empty, yet the writes the first took may have been acknowledged before
// the second was asked for. So a flush is complete only once every flush started before
// it is complete too — found by the simulator (test/sim, the fault-free seeds): a FLUSH
// returned while a write it covered sat in a replica's cache, its flush still on the way.

export class FlushOrder {
  private readonly inFlight = new Set<Promise<void>>();

  /** Runs `flushOnce`, then waits for every flush that started before it. */
  async run(flushOnce: () => Promise<void>): Promise<void> {
    const earlier = [...this.inFlight];
    const own = flushOnce();
    this.inFlight.add(own);
    try {
      await own;
      // An earlier flush that failed failed for its own caller too; ours cannot vouch
      // for what it held, so it fails the same way.
      await Promise.all(earlier);
    } finally {
      this.inFlight.delete(own);
    }
  }

  get pending(): number {
    return this.inFlight.size;
  }
}
