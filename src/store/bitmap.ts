// Bit sets over small ranges (the written blocks of one object, the used slots of one
// disk). Bit i lives in byte i >> 3 at bit i & 7. Objects have at most a few thousand
// blocks, so bit-at-a-time loops are cheap next to any I/O they decide.

import { assert } from '../util/assert';

export function bitmapBytes(bits: number): number {
  return Math.ceil(bits / 8);
}

export function getBit(bitmap: Uint8Array, index: number): boolean {
  return (bitmap[index >> 3]! & (1 << (index & 7))) !== 0;
}

export function setBit(bitmap: Uint8Array, index: number): void {
  bitmap[index >> 3]! |= 1 << (index & 7);
}

export function clearBit(bitmap: Uint8Array, index: number): void {
  bitmap[index >> 3]! &= ~(1 << (index & 7));
}

export function countBits(bitmap: Uint8Array): number {
  let count = 0;
  for (let byte of bitmap) {
    while (byte !== 0) {
      byte &= byte - 1;
      count += 1;
    }
  }
  return count;
}

export interface BitRun {
  start: number;
  end: number;
  set: boolean;
}

/** Maximal runs of equal bits covering [start, end), in order. */
export function bitRuns(bitmap: Uint8Array, start: number, end: number): BitRun[] {
  assert(start >= 0 && start <= end && end <= bitmap.length * 8, `bad bit range ${start}..${end}`);
  const runs: BitRun[] = [];
  let runStart = start;
  for (let index = start + 1; index <= end; index += 1) {
    if (index === end || getBit(bitmap, index) !== getBit(bitmap, runStart)) {
      runs.push({ start: runStart, end: index, set: getBit(bitmap, runStart) });
      runStart = index;
    }
  }
  assert(runs.length <= end - start, 'more runs than bits');
  return runs;
}
