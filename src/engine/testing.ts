// Helpers for the engine's tests: scratch directories on a filesystem with real
// O_DIRECT (never tmpfs), and a deterministic fill pattern to check data with.

import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';

const TMPFS_MAGIC = 0x01021994;
const RAMFS_MAGIC = 0x858458f6;

export function isMemoryFilesystem(directory: string): boolean {
  const type = fs.statfsSync(directory).type;
  return type === TMPFS_MAGIC || type === RAMFS_MAGIC;
}

/** os.tmpdir() unless it is tmpfs; then CISTERN_TEST_DIR or .cistern/tmp in the cwd. */
export function scratchParent(): string {
  const fromEnvironment = process.env['CISTERN_TEST_DIR'];
  if (fromEnvironment !== undefined && fromEnvironment !== '') return fromEnvironment;
  if (!isMemoryFilesystem(os.tmpdir())) return os.tmpdir();
  const fallback = path.join(process.cwd(), '.cistern', 'tmp');
  fs.mkdirSync(fallback, { recursive: true });
  return fallback;
}

export async function withScratchDir<T>(body: (directory: string) => Promise<T>): Promise<T> {
  const directory = fs.mkdtempSync(path.join(scratchParent(), 'cistern-'));
  try {
    return await body(directory);
  } finally {
    fs.rmSync(directory, { recursive: true, force: true });
  }
}

/** Fills `buffer` with bytes that depend on `seed` and the position, never all zero. */
export function fillPattern(buffer: Uint8Array, seed: number): void {
  let state = (seed * 2654435761 + 1) >>> 0;
  for (let index = 0; index < buffer.length; index++) {
    state = (Math.imul(state, 1664525) + 1013904223) >>> 0;
    buffer[index] = (state >>> 24) | 1;
  }
}

export function matchesPattern(buffer: Uint8Array, seed: number): boolean {
  const expected = new Uint8Array(buffer.length);
  fillPattern(expected, seed);
  return (
    Buffer.compare(Buffer.from(buffer.buffer, buffer.byteOffset, buffer.length), expected) === 0
  );
}

export function isZero(buffer: Uint8Array): boolean {
  return buffer.every((byte) => byte === 0);
}
