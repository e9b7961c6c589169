// Proves the simulated daemon starts in Datastore.open's order: a host restarted within
// its lease first marks its disks stale where its crash may have cost writes
// (restart.ts), and only then runs its background workers. Started the other way round,
// its start-up peering — it is still the primary of PGs whose copies its crash emptied —
// copied its own copy over the members holding an acknowledged write (quick-restart soak
// seed 1: the write read back older). Deterministic: three simulated hosts on a few
// seeds; the primary loses power with the write in its disk's cache only and is
// restarted at once; after a few virtual seconds every member must hold the write.

import { strict as assert } from 'node:assert';
import { test } from 'node:test';
import * as state from '../../src/cluster/state';
import { computeTable, objectToPg, pgRow } from '../../src/placement/straw2';
import { SimAuthority } from './cluster';
import { DiskMedium, SIM_BLOCK_BYTES } from './disk';
import { SimHost } from './host';
import { SimNetwork } from './network';
import { Scheduler } from './scheduler';

/** Events one scenario may take (a bound, far above what it needs). */
const STEPS_MAX = 200_000;
/** Virtual time the restarted host is given to peer and recover. */
const SETTLE_MS = 5_000;

async function scenario(seed: number): Promise<void> {
  const scheduler = new Scheduler(seed);
  const authority = new SimAuthority(scheduler, state.emptyState());
  const bugs: string[] = [];
  const network = new SimNetwork(
    scheduler,
    () => undefined,
    (text) => bugs.push(text),
  );
  const media = new Map<string, Map<number, DiskMedium>>();
  const ids = authority.apply((s) => {
    for (const host of ['h1', 'h2', 'h3']) {
      state.addHost(s, host, `rack-${host}`);
      const id = state.addDisk(s, host, { path: host, uuid: host, sizeBytes: 2 ** 40 });
      media.set(host, new Map([[id, new DiskMedium(id)]]));
    }
    const pool = state.createPool(s, {
      name: 'p',
      size: 3,
      minSize: 2,
      failureDomain: 'host',
      pgCount: 1,
    });
    const volume = state.createVolume(s, 'v', 2 ** 30, 'p');
    return { pool: pool.id, volume: volume.id };
  });
  const hosts = new Map(
    [...media].map(([id, disks]) => [
      id,
      new SimHost(id, disks, scheduler, authority, network, () => undefined),
    ]),
  );
  for (const host of hosts.values()) host.start();
  const until = async <T>(work: Promise<T>): Promise<T> => {
    let outcome: { value: T } | { error: unknown } | undefined;
    work.then(
      (value) => (outcome = { value }),
      (error: unknown) => (outcome = { error }),
    );
    for (let step = 0; outcome === undefined && step < STEPS_MAX; step += 1) await scheduler.step();
    assert.ok(outcome, 'the operation finished');
    if ('error' in outcome) throw outcome.error;
    return outcome.value;
  };
  const key = { pool: ids.pool, volume: ids.volume, object: 0 };
  const s = authority.state;
  const table = computeTable(s.map, ids.pool);
  const primaryDisk = pgRow(table, objectToPg(table.pool, key.volume, key.object))[0]!;
  const primary = s.map.disks.find((d) => d.id === primaryDisk)!.host;
  const gateway = [...hosts.values()].find((h) => h.id !== primary)!.running!.gateway;
  const older = new Uint8Array(SIM_BLOCK_BYTES).fill(1);
  const newer = new Uint8Array(SIM_BLOCK_BYTES).fill(2);
  await until(gateway.write(key, 0, older, false));
  await until(gateway.flush());
  await until(gateway.write(key, 0, newer, false)); // acknowledged: every member has it cached
  hosts.get(primary)!.crash(() => false); // its disk loses the newer write
  hosts.get(primary)!.start(); // back before its lease lapsed: nobody noticed
  const end = scheduler.now + SETTLE_MS;
  for (let step = 0; scheduler.now < end && step < STEPS_MAX; step += 1) await scheduler.step();
  assert.deepEqual(bugs, []);
  for (const [host, disks] of media) {
    for (const medium of disks.values())
      assert.equal(medium.block(key, 0)[0], 2, `seed ${seed}: disk ${medium.id} on ${host}`);
  }
}

test('a host restarted within its lease marks its disks before peering copies from them', async () => {
  for (let seed = 1; seed <= 8; seed += 1) await scenario(seed);
});
