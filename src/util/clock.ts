// Time, passed in (STYLE.md: sockets, files, timers and randomness are passed in). The
// background workers of the replication layer (recovery, scrub) take a Clock so that the
// deterministic simulator (test/sim/) can run them on virtual time: there every timer is
// an event of its seeded scheduler, and a run is a pure function of the seed. Daemons
// use systemClock.

import { assert } from './assert';

export interface Timer {
  /** Stops the timer if it has not fired; harmless afterwards. */
  cancel(): void;
}

export interface Clock {
  /** Milliseconds since the epoch (virtual in a simulation). */
  now(): number;
  /**
   * Calls `callback` once, after `ms`. A system timer does not keep the process alive:
   * the workers that use it are background work, stopped by their close().
   */
  setTimer(ms: number, callback: () => void): Timer;
  /** Resolves after `ms`. */
  sleep(ms: number): Promise<void>;
}

export const systemClock: Clock = {
  now: () => Date.now(),
  setTimer: (ms, callback) => {
    assert(ms >= 0, `negative timer ${ms} ms`);
    const timer = setTimeout(callback, ms);
    timer.unref();
    return { cancel: () => clearTimeout(timer) };
  },
  sleep: (ms) => new Promise((resolve) => setTimeout(resolve, ms)),
};
