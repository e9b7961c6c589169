// Parsing and printing sizes the way administrators write them: 10G, 4TB, 512MiB.
// Binary multiples throughout (a "4TB" disk is 4 TiB) — block storage sizes are
// powers of two, and mixing bases is how volumes end up a few percent short.

import { CisternError } from './errors';

const multipliers: Record<string, number> = {
  '': 1,
  B: 1,
  K: 2 ** 10,
  M: 2 ** 20,
  G: 2 ** 30,
  T: 2 ** 40,
  P: 2 ** 50,
};

/** Parses "10G", "4TB", "512MiB", "4096". Throws EINVAL with the offending text. */
export function parseSize(text: string): number {
  const match = /^\s*(\d+(?:\.\d+)?)\s*([KMGTP]?)(i?B)?\s*$/i.exec(text);
  if (!match) throw new CisternError('EINVAL', `not a size: "${text}" (examples: 4096, 10G, 4TB)`);
  const unit = (match[2] ?? '').toUpperCase();
  const bytes = Number(match[1]) * (multipliers[unit] ?? 1);
  if (!Number.isSafeInteger(Math.round(bytes)) || bytes < 0) {
    throw new CisternError('EINVAL', `size out of range: "${text}"`);
  }
  return Math.round(bytes);
}

export function formatSize(bytes: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB', 'PiB', 'EiB'];
  let value = bytes;
  let index = 0;
  while (Math.abs(value) >= 1024 && index < units.length - 1) {
    value /= 1024;
    index += 1;
  }
  const digits = index === 0 || value >= 100 ? 0 : value >= 10 ? 1 : 2;
  return `${value.toFixed(digits)} ${units[index]}`;
}
