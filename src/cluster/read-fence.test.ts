// Proves the read fence (read-fence.ts) on a hand-driven clock: the read lease is
// min(TTL, request timeout) less a quarter; reads pass with no wait while a renewal is
// recent, none pass before the first; once the lease has run out a read waits and goes
// on when a renewal comes, or fails with UNAVAILABLE naming the host after the bounded
// wait; a late answer to an old renewal never shortens the lease; a fence held until
// start-up peering is done serves nothing before started(), however fresh the lease.

import { strict as assert } from 'node:assert';
import { test } from 'node:test';
import { ReadFence, readLeaseMs } from './read-fence';
import type { Clock } from '../util/clock';

class HandClock implements Clock {
  nowMs = 1_000_000;
  private timers: Array<{ at: number; callback: () => void; live: boolean }> = [];
  now(): number {
    return this.nowMs;
  }
  setTimer(ms: number, callback: () => void) {
    const timer = { at: this.nowMs + ms, callback, live: true };
    this.timers.push(timer);
    return { cancel: () => (timer.live = false) };
  }
  sleep(ms: number): Promise<void> {
    return new Promise((resolve) => this.setTimer(ms, resolve));
  }
  advance(ms: number): void {
    this.nowMs += ms;
    for (const timer of this.timers.filter((t) => t.live && t.at <= this.nowMs)) {
      timer.live = false;
      timer.callback();
    }
  }
}

test('the read lease is three quarters of the shorter of TTL and request timeout', () => {
  assert.equal(readLeaseMs(10_000, 30_000), 7_500);
  assert.equal(readLeaseMs(300_000, 30_000), 22_500);
  assert.throws(() => readLeaseMs(0, 1));
});

test('reads pass while a renewal is recent, and not before the first', () => {
  const clock = new HandClock();
  const fence = new ReadFence({ clock, hostId: 'h1', leaseMs: 750 });
  assert.ok(!fence.valid(), 'no renewal yet');
  fence.renewed(clock.now());
  assert.equal(fence.check(), undefined, 'no wait, no promise');
  clock.advance(749);
  assert.equal(fence.check(), undefined);
  clock.advance(1);
  assert.ok(fence.check() instanceof Promise, 'the lease ran out at sent + 750');
  fence.renewed(clock.now() - 1000); // a late answer to an old keepalive
  assert.ok(!fence.valid(), 'an older renewal does not extend it');
});

test('a read waits for a renewal once the lease ran out, then goes on', async () => {
  const clock = new HandClock();
  const fence = new ReadFence({ clock, hostId: 'h1', leaseMs: 750, waitMs: 5_000 });
  fence.renewed(clock.now());
  clock.advance(1_000);
  let state = 'waiting';
  fence.check()!.then(() => (state = 'served'));
  clock.advance(4_000);
  await Promise.resolve();
  assert.equal(state, 'waiting');
  fence.renewed(clock.now());
  await Promise.resolve();
  assert.equal(state, 'served');
});

test('with no renewal a read fails with UNAVAILABLE after the bounded wait', async () => {
  const clock = new HandClock();
  const fence = new ReadFence({ clock, hostId: 'h7', leaseMs: 750, waitMs: 5_000 });
  const waiting = fence.check()!;
  clock.advance(5_000);
  await assert.rejects(waiting, (error: Error & { code?: string }) => {
    assert.equal(error.code, 'UNAVAILABLE');
    assert.match(error.message, /host h7 could not renew its liveness lease/);
    return true;
  });
});

test('held until started: a fresh lease serves nothing before start-up peering is done', async () => {
  const clock = new HandClock();
  const fence = new ReadFence({ clock, hostId: 'h2', leaseMs: 750, holdUntilStarted: true });
  fence.renewed(clock.now());
  assert.ok(!fence.valid());
  let served = false;
  void fence.check()!.then(() => (served = true));
  fence.started();
  await Promise.resolve();
  assert.ok(served, 'started() lets the waiting read through');
  assert.equal(fence.check(), undefined);
  const held = new ReadFence({ clock, hostId: 'h3', leaseMs: 750, holdUntilStarted: true });
  held.renewed(clock.now());
  const waiting = held.check()!;
  clock.advance(5_000);
  await assert.rejects(waiting, /host h3 is still starting/);
});
