// The run loop the background workers (recovery, strays, scrub) share: a pass runs when
// kicked; a kick during a pass runs one more pass right after it (never two at once,
// never a lost wake-up); close() stops kicks and waits for the pass in progress.
// BackgroundPasses adds when they are kicked: map changes, a period, start and close.

import { systemClock, type Clock, type Timer } from '../util/clock';

export class PassRunner {
  private running: Promise<void> | undefined;
  private again = false;
  private closed = false;

  constructor(
    private readonly pass: () => Promise<void>,
    /** Skips a kick when there is nothing to do (checked before a pass starts). */
    private readonly wanted: () => boolean = () => true,
  ) {}

  kick(): void {
    if (this.closed) return;
    if (this.running) {
      this.again = true;
      return;
    }
    if (!this.wanted()) return;
    this.running = this.pass().finally(() => {
      this.running = undefined;
      if (this.again) {
        this.again = false;
        this.kick();
      }
    });
  }

  get isClosed(): boolean {
    return this.closed;
  }

  /** Resolves when no pass is running. */
  async idle(): Promise<void> {
    while (this.running) await this.running;
  }

  async close(): Promise<void> {
    this.closed = true;
    await this.idle();
  }
}

/** When a BackgroundPasses worker runs a pass besides its own kicks. */
export interface PassSchedule {
  /** Map changes: every one kicks a pass (returns what unsubscribes). */
  subscribe(listener: () => void): () => void;
  clock: Clock;
  /** A pass this often as well (one-shot timers chained); none when undefined. */
  periodMs?: number;
}

/** Passes on the changes of `cluster`'s map, on `clock` (the system's by default). */
export function mapSchedule(
  cluster: { subscribe(listener: () => void): () => void },
  clock: Clock | undefined,
  periodMs?: number,
): PassSchedule {
  return {
    subscribe: (listener) => cluster.subscribe(listener),
    clock: clock ?? systemClock,
    periodMs,
  };
}

/**
 * The life of a background worker (recovery, strays, scrub), which extends it with its
 * pass: from start() a pass on every map change and every `periodMs`, and one at once;
 * close() stops both and waits for the pass in progress. Passes run through a
 * PassRunner (never two at once, never a lost wake-up).
 */
export abstract class BackgroundPasses {
  /** The schedule's clock, for the worker's own timing. */
  protected readonly clock: Clock;
  private readonly runner: PassRunner;
  private timer: Timer | undefined;
  private unsubscribe: (() => void) | undefined;

  protected constructor(private readonly schedule: PassSchedule) {
    this.clock = schedule.clock;
    this.runner = new PassRunner(
      () => this.pass(),
      () => this.wanted(),
    );
  }

  /** One pass; it should return early once `closed`. */
  protected abstract pass(): Promise<void>;

  /** Skips a kick when there is nothing to do (checked before a pass starts). */
  protected wanted(): boolean {
    return true;
  }

  /** close() was called: a pass in progress should stop at its next step. */
  protected get closed(): boolean {
    return this.runner.isClosed;
  }

  start(): void {
    this.unsubscribe = this.schedule.subscribe(() => this.kick());
    this.passLater();
    this.kick();
  }

  private passLater(): void {
    const periodMs = this.schedule.periodMs;
    if (periodMs === undefined) return;
    this.timer = this.clock.setTimer(periodMs, () => {
      if (this.closed) return;
      this.kick();
      this.passLater();
    });
  }

  /** Runs a pass now, or right after the one in progress. */
  kick(): void {
    this.runner.kick();
  }

  /** Resolves when no pass is running (tests wait on it). */
  async idle(): Promise<void> {
    await this.runner.idle();
  }

  async close(): Promise<void> {
    this.unsubscribe?.();
    this.timer?.cancel();
    await this.runner.close();
  }
}
