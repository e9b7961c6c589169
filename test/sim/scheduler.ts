// The simulator's scheduler: virtual time, one seeded generator, and a queue of events.
// Each step takes the earliest event (ties in the order they were scheduled), advances
// the clock to it, runs it, then lets every promise continuation it caused run to
// completion before the next step (setImmediate runs after the microtask queue is
// empty). Nothing in a simulated run touches a real timer, socket or file, so the whole
// run — including the order in which concurrent promises of the real replication code
// resume — is a function of the seed. Every event is folded into a trace hash: two runs
// of one seed must produce the same hash (determinism.test.ts proves it).

import crypto from 'node:crypto';
import { assert } from '../../src/util/assert';
import { Random } from '../../src/util/random';
import { Clock, Timer } from '../../src/util/clock';

/** Virtual time starts here (a fixed date, so ISO timestamps in the state are stable too). */
export const SIM_EPOCH_MS = Date.UTC(2026, 0, 1);

interface Event {
  at: number;
  order: number;
  label: string;
  run: () => void;
  /** Owner that must still be alive for the event to run (a host incarnation). */
  alive: () => boolean;
}

export class Scheduler {
  readonly random: Random;
  private nowMs = SIM_EPOCH_MS;
  private order = 0;
  /** A binary heap on (at, order). */
  private readonly heap: Event[] = [];
  private readonly hash = crypto.createHash('sha256');
  steps = 0;
  /** The last few events, printed with a failure. */
  readonly recent: string[] = [];

  constructor(readonly seed: number) {
    this.random = new Random(seed);
  }

  get now(): number {
    return this.nowMs;
  }

  /** Milliseconds since the start of the run. */
  get elapsedMs(): number {
    return this.nowMs - SIM_EPOCH_MS;
  }

  schedule(delayMs: number, label: string, run: () => void, alive: () => boolean = always): Timer {
    assert(Number.isFinite(delayMs) && delayMs >= 0, `bad delay ${delayMs}`);
    let cancelled = false;
    this.push({
      at: this.nowMs + delayMs,
      order: this.order++,
      label,
      run: () => {
        if (!cancelled) run();
      },
      alive: () => !cancelled && alive(),
    });
    return { cancel: () => (cancelled = true) };
  }

  /** A Clock on virtual time for one owner: its timers die with it. */
  clock(alive: () => boolean = always, label = 'timer'): Clock {
    return {
      now: () => this.nowMs,
      setTimer: (ms, callback) => this.schedule(ms, label, callback, alive),
      sleep: (ms) => new Promise((resolve) => this.schedule(ms, `${label}.sleep`, resolve, alive)),
    };
  }

  get pending(): number {
    return this.heap.length;
  }

  /** Runs the next live event; false when the queue is empty. */
  async step(): Promise<boolean> {
    for (;;) {
      const event = this.pop();
      if (!event) return false;
      if (!event.alive()) continue;
      assert(event.at >= this.nowMs, 'time went backwards');
      this.nowMs = event.at;
      this.steps += 1;
      this.hash.update(`${event.at}:${event.label}\n`);
      this.recent.push(`${event.at - SIM_EPOCH_MS}ms ${event.label}`);
      if (this.recent.length > RECENT_EVENTS_KEPT) this.recent.shift();
      event.run();
      await drainMicrotasks();
      return true;
    }
  }

  /** Folds an observation (a read's result, a checker's view) into the trace. */
  note(text: string): void {
    this.hash.update(`${this.nowMs}:${text}\n`);
  }

  traceHash(): string {
    return this.hash.copy().digest('hex');
  }

  private push(event: Event): void {
    const heap = this.heap;
    heap.push(event);
    let i = heap.length - 1;
    while (i > 0) {
      const parent = (i - 1) >> 1;
      if (!before(heap[i]!, heap[parent]!)) break;
      [heap[i], heap[parent]] = [heap[parent]!, heap[i]!];
      i = parent;
    }
  }

  private pop(): Event | undefined {
    const heap = this.heap;
    if (heap.length === 0) return undefined;
    const top = heap[0]!;
    const last = heap.pop()!;
    if (heap.length > 0) {
      heap[0] = last;
      let i = 0;
      for (;;) {
        const left = 2 * i + 1;
        const right = left + 1;
        let smallest = i;
        if (left < heap.length && before(heap[left]!, heap[smallest]!)) smallest = left;
        if (right < heap.length && before(heap[right]!, heap[smallest]!)) smallest = right;
        if (smallest === i) break;
        [heap[i], heap[smallest]] = [heap[smallest]!, heap[i]!];
        i = smallest;
      }
    }
    return top;
  }
}

/** Events remembered for a failure report. */
const RECENT_EVENTS_KEPT = 40;

function always(): boolean {
  return true;
}

function before(a: Event, b: Event): boolean {
  return a.at < b.at || (a.at === b.at && a.order < b.order);
}

/** Resolves once every microtask queued so far, and every one they queue, has run. */
export function drainMicrotasks(): Promise<void> {
  return new Promise((resolve) => setImmediate(resolve));
}
