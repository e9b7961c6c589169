// Shared by the kill -9 test and its child process: the disk and the operations, so
// that the test can replay in its model exactly what the child was doing.

import type { ObjectKey } from './key';
import { HEADER_AREA_BYTES } from './layout';
import { keyUniverse } from './testing';

export const KILL9_OBJECT_BYTES = 64 * 1024;
/** More slots than objects (8): the child never meets ENOSPC, so every op takes effect. */
export const KILL9_SLOTS = 12;
export const KILL9_DEVICE_BYTES = HEADER_AREA_BYTES + KILL9_SLOTS * KILL9_OBJECT_BYTES;
/** The child stops here if no one kills it. */
export const KILL9_OPS_MAX = 100000;

export function kill9Universe(): ObjectKey[] {
  return keyUniverse(1, 2, 4);
}
