// Read fencing by the host's liveness lease (invariant 3 under partitions). Writes are
// fenced by epochs (a replica refuses an older map), but a read is served by the
// primary from its own disk, asking nobody: a host cut off from etcd keeps its last map
// and would keep serving the PGs it was primary of while the rest of the cluster has
// taken its disks down and acknowledged newer writes elsewhere. The rest of the
// cluster can take this host's disks down only (a) once its lease has lapsed in etcd, at
// least a TTL after the last renewal etcd accepted, or (b) once a request to it has gone
// unanswered for the peer request timeout — a request sent after its last successful
// renewal, since before that it still reached etcd and saw the map. So a primary may
// serve reads for at most min(TTL, request timeout) after sending its last successful
// renewal, less a margin for clocks and the latency of the map reaching the others'
// data path; past that it waits (bounded) for a renewal, then fails the read with
// UNAVAILABLE naming the reason. The daemon renews through its etcd lease keepalive
// (HostRegistration), the simulator from its monitor.

import { assert } from '../util/assert';
import { CisternError } from '../util/errors';
import type { Clock } from '../util/clock';

/**
 * The share of min(TTL, request timeout) a renewal lets reads be served for. A quarter
 * is left for clock rate differences and for the latency between others deciding and
 * acting; the etcd keepalive (every TTL/3) renews well within it.
 */
export const READ_LEASE_SHARE = 3 / 4;
/** How long a read waits for a renewal once the lease has run out, before UNAVAILABLE. */
export const READ_FENCE_WAIT_MS_DEFAULT = 5_000;

/** How long after sending a successful renewal reads may be served (see the top). */
export function readLeaseMs(leaseTtlMs: number, requestTimeoutMs: number): number {
  assert(leaseTtlMs > 0 && requestTimeoutMs > 0, 'lease and timeout must be positive');
  return Math.floor(Math.min(leaseTtlMs, requestTimeoutMs) * READ_LEASE_SHARE);
}

export interface ReadFenceOptions {
  clock: Clock;
  hostId: string;
  /** readLeaseMs(...) */
  leaseMs: number;
  waitMs?: number;
  /**
   * Reads wait for started() too: a daemon back from a crash first marks its disks stale
   * where its cache may have lost writes (state.markRestartedStale).
   */
  holdUntilStarted?: boolean;
}

export class ReadFence {
  /** Reads may be served until this time (clock ms); none before the first renewal. */
  private validUntilMs = -Infinity;
  private readonly waiters = new Set<() => void>();
  private readonly waitMs: number;
  private held: boolean;

  constructor(private readonly options: ReadFenceOptions) {
    assert(options.leaseMs > 0, 'read lease must be positive');
    this.waitMs = options.waitMs ?? READ_FENCE_WAIT_MS_DEFAULT;
    this.held = options.holdUntilStarted === true;
  }

  /** The daemon's start-up peering is done: reads may be served (while the lease is valid). */
  started(): void {
    this.held = false;
    if (this.valid()) for (const wake of [...this.waiters]) wake();
  }

  /** A renewal sent at `sentAtMs` (clock ms) succeeded. */
  renewed(sentAtMs: number): void {
    this.validUntilMs = Math.max(this.validUntilMs, sentAtMs + this.options.leaseMs);
    if (!this.valid()) return;
    for (const wake of [...this.waiters]) wake();
  }

  valid(): boolean {
    return !this.held && this.options.clock.now() < this.validUntilMs;
  }

  /**
   * Undefined when reads may be served now (the hot path allocates nothing); otherwise
   * a promise that resolves once a renewal comes, or rejects with UNAVAILABLE after
   * waiting `waitMs`.
   */
  check(): Promise<void> | undefined {
    if (this.valid()) return undefined;
    return new Promise<void>((resolve, reject) => {
      const wake = (): void => {
        this.waiters.delete(wake);
        timer.cancel();
        resolve();
      };
      const timer = this.options.clock.setTimer(this.waitMs, () => {
        this.waiters.delete(wake);
        reject(
          new CisternError(
            'UNAVAILABLE',
            this.held
              ? `host ${this.options.hostId} is still starting (marking what its cache may have ` +
                  'lost before it serves reads): try again shortly'
              : `host ${this.options.hostId} could not renew its liveness lease (etcd unreachable?) ` +
                  `for ${this.waitMs} ms more than its read lease: reads are refused here, since ` +
                  'other hosts may have taken its disks over and written newer data (see: cistern status)',
          ),
        );
      });
      this.waiters.add(wake);
    });
  }
}
