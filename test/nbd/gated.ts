// Test wrappers around a provider: a volume whose reads wait at a gate the test opens
// (to hold requests in flight and control completion order), one that fails on demand,
// and exports served read-only whatever the provider below says (the datastore has no
// read-only volumes). Filters in the nbdkit sense: layers around a provider, not ifs
// inside it.

import type { ExportProvider, VolumeHandle } from '../../src/volume/backend';

export class Gate {
  private waiters: Array<() => void> = [];
  private opened = false;
  /** Calls currently waiting at the gate, and the most ever waiting at once. */
  waiting = 0;
  maxWaiting = 0;

  async pass(): Promise<void> {
    if (this.opened) return;
    this.waiting += 1;
    this.maxWaiting = Math.max(this.maxWaiting, this.waiting);
    await new Promise<void>((resolve) => this.waiters.push(resolve));
    this.waiting -= 1;
  }

  open(): void {
    this.opened = true;
    for (const wake of this.waiters.splice(0)) wake();
  }
}

/** Reads at offsets for which `gateFor` returns a gate wait there first. */
export function gatedProvider(
  inner: ExportProvider,
  gateFor: (offset: number) => Gate | undefined,
): ExportProvider {
  return {
    list: () => inner.list(),
    open: async (name, options) => {
      const handle = await inner.open(name, options);
      const wrapped: VolumeHandle = Object.create(handle) as VolumeHandle;
      Object.defineProperty(wrapped, 'read', {
        value: async (offset: number, length: number) => {
          await gateFor(offset)?.pass();
          return handle.read(offset, length);
        },
      });
      return wrapped;
    },
  };
}

/** Every call on a volume throws what `failure` returns (when it returns something). */
export function failingProvider(inner: ExportProvider, failure: () => unknown): ExportProvider {
  return {
    list: () => inner.list(),
    open: async (name, options) => {
      const handle = await inner.open(name, options);
      const wrapped: VolumeHandle = Object.create(handle) as VolumeHandle;
      for (const method of [
        'read',
        'write',
        'trim',
        'writeZeroes',
        'flush',
        'blockStatus',
      ] as const) {
        Object.defineProperty(wrapped, method, {
          value: async (...args: unknown[]) => {
            const error = failure();
            if (error !== undefined) throw error;
            return (handle[method] as (...a: unknown[]) => Promise<unknown>).apply(handle, args);
          },
        });
      }
      return wrapped;
    },
  };
}

/** The named exports are listed and opened read-only; the rest pass through unchanged. */
export function readOnlyExports(inner: ExportProvider, names: readonly string[]): ExportProvider {
  const frozen = new Set(names);
  return {
    list: async () =>
      (await inner.list()).map((info) =>
        frozen.has(info.name) ? { ...info, readOnly: true } : info,
      ),
    open: (name, options) => inner.open(name, { readOnly: options.readOnly || frozen.has(name) }),
  };
}
