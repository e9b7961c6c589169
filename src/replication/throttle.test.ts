// Proves the background throttle's pacing on a manual clock (no real time): with quiet
// clients a copy is paced at the configured bandwidth; while clients are busy at the
// busy share (slower, never stopped); clients going quiet mid-wait speed it up again
// once CLIENT_QUIET_MS has passed; an idle spell banks at most THROTTLE_BURST_MS of
// allowance; bad settings are refused.

import { strict as assert } from 'node:assert';
import { test } from 'node:test';
import {
  BackgroundThrottle,
  CLIENT_BUSY_SHARE,
  CLIENT_QUIET_MS,
  THROTTLE_BURST_MS,
  THROTTLE_STEP_MS,
  ThrottleClock,
} from './throttle';

const MiB = 2 ** 20;

class ManualClock implements ThrottleClock {
  time = 1_000_000;
  slept = 0;
  /** Runs before each sleep returns: lets a test change the clients mid-wait. */
  onSleep: (time: number) => void = () => undefined;
  now(): number {
    return this.time;
  }
  sleep(ms: number): Promise<void> {
    assert.ok(ms > 0 && ms <= THROTTLE_STEP_MS, `sleep of ${ms} ms`);
    this.time += ms;
    this.slept += ms;
    this.onSleep(this.time);
    return Promise.resolve();
  }
}

function throttle(clock: ManualClock, busy: () => boolean, bytesPerSecond = MiB) {
  return new BackgroundThrottle({ bytesPerSecond, clientBusy: busy, clock });
}

test('with quiet clients a copy is paced at the configured bandwidth', async () => {
  const clock = new ManualClock();
  const pacer = throttle(clock, () => false);
  await pacer.take(MiB);
  assert.ok(Math.abs(clock.slept - 1000) <= 1, `slept ${clock.slept} ms for 1 MiB at 1 MiB/s`);
  await pacer.take(MiB / 2);
  assert.ok(Math.abs(clock.slept - 1500) <= 2, `slept ${clock.slept} ms in all`);
  assert.equal(pacer.rate(), MiB);
});

test('while clients are busy the copy runs at the busy share, not zero', async () => {
  const clock = new ManualClock();
  const pacer = throttle(clock, () => true);
  await pacer.take(MiB / 16);
  const expected = 1000 / 16 / CLIENT_BUSY_SHARE;
  assert.ok(Math.abs(clock.slept - expected) <= 1, `slept ${clock.slept} ms, ${expected} expected`);
  assert.equal(pacer.rate(), MiB * CLIENT_BUSY_SHARE);
});

test('clients going quiet mid-wait speed the copy up after CLIENT_QUIET_MS', async () => {
  const clock = new ManualClock();
  let busy = true;
  const quietAt = clock.time + 500;
  clock.onSleep = (time) => {
    if (time >= quietAt) busy = false;
  };
  const pacer = throttle(clock, () => busy);
  await pacer.take(MiB);
  // Busy until 500 ms, counted busy for CLIENT_QUIET_MS more, then at full rate.
  const busyMs = 500 + CLIENT_QUIET_MS;
  const paidWhileBusy = (busyMs / 1000) * MiB * CLIENT_BUSY_SHARE;
  const expected = busyMs + ((MiB - paidWhileBusy) / MiB) * 1000;
  // Clients are sampled once per step and a step is credited at the rate at its end, so
  // the switch lands within two steps of the ideal.
  assert.ok(
    Math.abs(clock.slept - expected) <= 2 * THROTTLE_STEP_MS,
    `slept ${clock.slept} ms, about ${Math.round(expected)} expected`,
  );
  assert.equal(pacer.rate(), MiB);
});

test('an idle spell banks at most THROTTLE_BURST_MS of allowance', async () => {
  const clock = new ManualClock();
  const pacer = throttle(clock, () => false);
  await pacer.take(0);
  clock.time += 60_000; // a minute with nothing to copy
  await pacer.take(MiB);
  const expected = 1000 - THROTTLE_BURST_MS;
  assert.ok(Math.abs(clock.slept - expected) <= 1, `slept ${clock.slept} ms, ${expected} expected`);
});

test('a zero, negative or infinite bandwidth and a bad byte count are bugs', async () => {
  const clock = new ManualClock();
  for (const bad of [0, -1, Number.POSITIVE_INFINITY, Number.NaN]) {
    assert.throws(() => throttle(clock, () => false, bad), /bandwidth must be positive/);
  }
  await assert.rejects(throttle(clock, () => false).take(-1), /bad byte count/);
});
