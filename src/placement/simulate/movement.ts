// Data movement between two placements of the same PGs: how many replica bytes must
// be copied, which disks receive them, and how much moved between disks that had
// nothing to do with the change (a good placement moves none).

import { assert } from '../../util/assert';

export interface Rows {
  size: number;
  pgCount: number;
  disks: Int32Array;
}

export interface Movement {
  /** Replica bytes copied to a disk that did not hold them. */
  movedBytes: number;
  movedFraction: number;
  /** Moves in which neither end is one of the involved disks. */
  movedBetweenOthersBytes: number;
  /** Disks that receive data. */
  receivingDisks: Set<number>;
}

export function compareRows(
  before: Rows,
  after: Rows,
  pgBytes: Float64Array,
  involved: ReadonlySet<number>,
): Movement {
  assert(
    before.pgCount === after.pgCount && before.size === after.size,
    'placements differ in shape',
  );
  const size = before.size;
  let movedBytes = 0;
  let othersBytes = 0;
  let totalBytes = 0;
  const receivingDisks = new Set<number>();
  for (let pg = 0; pg < before.pgCount; pg += 1) {
    const bytes = pgBytes[pg] as number;
    totalBytes += bytes * size;
    const old = before.disks.subarray(pg * size, (pg + 1) * size);
    const now = after.disks.subarray(pg * size, (pg + 1) * size);
    let gained = 0;
    let lost = 0;
    let involvedMoves = 0;
    for (let r = 0; r < size; r += 1) {
      const added = now[r] as number;
      if (!old.includes(added)) {
        gained += 1;
        receivingDisks.add(added);
        if (involved.has(added)) involvedMoves += 1;
      }
      const removed = old[r] as number;
      if (!now.includes(removed)) {
        lost += 1;
        if (involved.has(removed)) involvedMoves += 1;
      }
    }
    const moves = Math.max(gained, lost);
    movedBytes += bytes * gained;
    othersBytes += bytes * Math.max(0, moves - involvedMoves);
  }
  return {
    movedBytes,
    movedFraction: totalBytes > 0 ? movedBytes / totalBytes : 0,
    movedBetweenOthersBytes: othersBytes,
    receivingDisks,
  };
}
