// The pace of background copying (recovery, backfill): a token bucket that lets it run at
// the configured bandwidth while clients are quiet, and at a small share of it while
// clients are writing through this daemon, so client I/O keeps most of the disks, the
// network and — on a small host — the CPU. Never zero: under constant client load
// recovery still progresses at the share, or redundancy would never come back.
//
// Pure apart from the clock it is given; the caller charges the bytes it has moved
// (`take`) and is held back until the bucket has paid for them.

import { assert } from '../util/assert';

/** Time as the throttle sees it; tests pass a manual clock. */
export interface ThrottleClock {
  now(): number;
  sleep(ms: number): Promise<void>;
}

export const systemClock: ThrottleClock = {
  now: () => Date.now(),
  sleep: (ms) => new Promise((resolve) => setTimeout(resolve, ms)),
};

/**
 * Share of the bandwidth background copying gets while clients write here. Measured on
 * the shared 2-core CI machine (perf/recovery.ts, perf/RESULTS.md): with no throttle the
 * client kept 0.18 of its IOPS during recovery at 128 MiB/s, with 1/8 0.21, with 1/16
 * 0.85 (at 128 and at 32 MiB/s).
 */
export const CLIENT_BUSY_SHARE = 1 / 16;
/**
 * Clients count as active for this long after they were last seen busy: a client
 * between two requests (or whose requests the poll missed) is still a client.
 */
export const CLIENT_QUIET_MS = 1000;
/** How often a waiting copy looks at the clients again (a change of rate acts this fast). */
export const THROTTLE_STEP_MS = 50;
/**
 * Unused allowance kept at most (so a long idle spell does not turn into a burst at full
 * speed just when clients return): this many milliseconds' worth at the current rate.
 */
export const THROTTLE_BURST_MS = 250;

export interface ThrottleOptions {
  /** The configured bound (cistern daemon --recovery-bandwidth). */
  bytesPerSecond: number;
  /** True while client operations are in flight or queued on this daemon. */
  clientBusy: () => boolean;
  clock?: ThrottleClock;
}

export class BackgroundThrottle {
  private readonly clock: ThrottleClock;
  /** Bytes that may be moved now; negative: a debt to wait off. */
  private tokens = 0;
  private updatedAt: number;
  private clientSeenAt = Number.NEGATIVE_INFINITY;

  constructor(private readonly options: ThrottleOptions) {
    assert(
      Number.isFinite(options.bytesPerSecond) && options.bytesPerSecond > 0,
      `throttle bandwidth must be positive, got ${options.bytesPerSecond}`,
    );
    this.clock = options.clock ?? systemClock;
    this.updatedAt = this.clock.now();
  }

  /** Bytes per second allowed now: the full bound, or the clients-busy share. */
  rate(): number {
    const busy = this.clock.now() - this.clientSeenAt < CLIENT_QUIET_MS;
    return busy ? this.options.bytesPerSecond * CLIENT_BUSY_SHARE : this.options.bytesPerSecond;
  }

  /** Charges `bytes` already moved; resolves once the bucket has paid for them. */
  async take(bytes: number): Promise<void> {
    assert(Number.isSafeInteger(bytes) && bytes >= 0, `bad byte count ${bytes}`);
    this.update();
    this.tokens -= bytes;
    // Each step pays at least rate × step (the slowest rate is the busy share), so the
    // wait ends within this many steps; more means the clock or the arithmetic is wrong.
    const slowest = (this.options.bytesPerSecond * CLIENT_BUSY_SHARE * THROTTLE_STEP_MS) / 1000;
    const stepsMax = Math.ceil(-this.tokens / slowest) + 2;
    for (let step = 0; this.tokens < 0; step += 1) {
      assert(step <= stepsMax, `throttle did not pay ${bytes} bytes in ${stepsMax} steps`);
      const waitMs = Math.min(THROTTLE_STEP_MS, Math.ceil((-this.tokens / this.rate()) * 1000));
      await this.clock.sleep(Math.max(1, waitMs));
      this.update();
    }
  }

  /** Looks at the clients, then credits the time since the last update at the rate now. */
  private update(): void {
    const now = this.clock.now();
    if (this.options.clientBusy()) this.clientSeenAt = now;
    const rate = this.rate();
    const elapsedMs = Math.max(0, now - this.updatedAt);
    this.tokens = Math.min(
      (rate * THROTTLE_BURST_MS) / 1000,
      this.tokens + (rate * elapsedMs) / 1000,
    );
    this.updatedAt = now;
  }
}
