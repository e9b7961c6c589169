// Proves when a BackgroundPasses worker runs its passes: one at start, one per map
// change, one per period (timers chained, so the next is armed only after one fired),
// and none once closed (the subscription dropped, the timer cancelled). A hand-driven
// clock fires timers when the test says; a counter stands for the pass.

import { strict as assert } from 'node:assert';
import { test } from 'node:test';
import type { Clock } from '../util/clock';
import { BackgroundPasses, type PassSchedule } from './passes';

class HandClock implements Clock {
  readonly armed: Array<{ ms: number; callback: () => void; cancelled: boolean }> = [];
  now(): number {
    return 0;
  }
  setTimer(ms: number, callback: () => void) {
    const timer = { ms, callback, cancelled: false };
    this.armed.push(timer);
    return { cancel: () => (timer.cancelled = true) };
  }
  sleep(): Promise<void> {
    return Promise.resolve();
  }
  /** Fires the last timer armed. */
  fire(): void {
    const timer = this.armed[this.armed.length - 1];
    assert.ok(timer && !timer.cancelled, 'no live timer to fire');
    timer.callback();
  }
}

/** Counts its passes. */
class Counting extends BackgroundPasses {
  passes = 0;
  constructor(schedule: PassSchedule) {
    super(schedule);
  }
  protected async pass(): Promise<void> {
    this.passes += 1;
  }
}

test('a pass at start, on every map change and every period; none after close', async () => {
  const clock = new HandClock();
  const listeners = new Set<() => void>();
  const worker = new Counting({
    subscribe: (listener) => {
      listeners.add(listener);
      return () => listeners.delete(listener);
    },
    clock,
    periodMs: 1000,
  });
  worker.start();
  await worker.idle();
  assert.equal(worker.passes, 1, 'no pass at start');
  assert.deepEqual(
    clock.armed.map((t) => t.ms),
    [1000],
  );
  for (const listener of listeners) listener();
  await worker.idle();
  assert.equal(worker.passes, 2, 'no pass on a map change');
  clock.fire();
  await worker.idle();
  assert.equal(worker.passes, 3, 'no pass when the period ran out');
  assert.equal(clock.armed.length, 2, 'the next period was not armed');
  await worker.close();
  assert.equal(listeners.size, 0, 'still subscribed after close');
  assert.ok(clock.armed[1]?.cancelled, 'the period timer outlived close');
  worker.kick();
  await worker.idle();
  assert.equal(worker.passes, 3, 'a pass ran after close');
});

test('without a period no timer is armed', async () => {
  const clock = new HandClock();
  const worker = new Counting({ subscribe: () => () => undefined, clock });
  worker.start();
  await worker.close();
  assert.equal(worker.passes, 1);
  assert.equal(clock.armed.length, 0);
});
