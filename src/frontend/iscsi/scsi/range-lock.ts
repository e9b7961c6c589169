// A per-logical-unit lock on LBA ranges, so COMPARE AND WRITE is atomic against every
// other write to the same blocks (SBC-3 5.2): each write, unmap, write same and compare
// and write holds its range while it runs. Requests are granted in arrival order among
// those that overlap, so a stream of small writes cannot starve a large one.

import { assert } from '../../../util/assert';

interface Entry {
  readonly start: number;
  readonly end: number;
  granted: boolean;
  readonly grant: () => void;
}

export type Release = () => void;

export class RangeLock {
  /** Held and waiting entries, in arrival order. */
  private readonly entries: Entry[] = [];
  /** Entries not yet granted: when none wait, a release has nobody to wake (the common case). */
  private waiting = 0;

  /** Resolves once [start, end) is held by the caller; call the result exactly once. */
  async acquire(start: number, end: number): Promise<Release> {
    assert(start <= end, `bad range ${start}..${end}`);
    let grant!: () => void;
    const granted = new Promise<void>((resolve) => (grant = resolve));
    const entry: Entry = { start, end, granted: false, grant };
    this.entries.push(entry);
    // Only the newcomer can be granted now: nothing ahead of it changed.
    if (this.entries.some((other) => other !== entry && overlaps(other, entry))) this.waiting += 1;
    else {
      entry.granted = true;
      grant();
    }
    await granted;
    let released = false;
    return () => {
      assert(!released, 'range released twice');
      released = true;
      const index = this.entries.indexOf(entry);
      assert(index >= 0 && entry.granted, 'released a range that was not held');
      this.entries.splice(index, 1);
      if (this.waiting > 0) this.grantWaiting();
    };
  }

  /** For tests: entries held or waiting. */
  get size(): number {
    return this.entries.length;
  }

  private grantWaiting(): void {
    for (let index = 0; index < this.entries.length; index += 1) {
      const entry = this.entries[index]!;
      if (entry.granted) continue;
      let blocked = false;
      for (let earlier = 0; earlier < index && !blocked; earlier += 1) {
        blocked = overlaps(this.entries[earlier]!, entry);
      }
      if (!blocked) {
        entry.granted = true;
        this.waiting -= 1;
        entry.grant();
      }
    }
  }
}

function overlaps(a: Entry, b: Entry): boolean {
  // Empty ranges still serialise against ranges that contain their start.
  const aEnd = Math.max(a.end, a.start + 1);
  const bEnd = Math.max(b.end, b.start + 1);
  return a.start < bEnd && b.start < aEnd;
}
