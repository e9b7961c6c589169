// Proves that an accepted loss of an incomplete PG is served from the member whose PG log
// is complete furthest, chosen by the daemon that peers the PG (RecoveryWorker,
// chooseAcceptedCopy) — not from the member the map alone points to (the one stale for
// longest), which may hold far less: the simulator's soak seed 1774 served a disk that
// joined when the failed disks went out over a former member re-marked stale later,
// losing writes the latter held. On a MemoryClusterStore (one host, five disks, pool size
// 3 / min-size 2, one PG) the PG is made incomplete by literal map changes, each disk
// answers its PG log's `complete`, the operator accepts the loss, and one recovery pass
// serves the PG; then the pure choice on literal candidates (ties: the map's order).

import { strict as assert } from 'node:assert';
import { test } from 'node:test';
import { CisternError } from '../util/errors';
import { ObjectKey } from '../store/key';
import { PgLogState, PgVersion } from '../store/pg-log';
import { Extent } from '../volume/backend';
import * as state from '../cluster/state';
import { MemoryClusterStore } from '../cluster/memory';
import { PlacementTable, computeTable, pgRow } from '../placement/straw2';
import { LocalDisk } from './endpoint';
import { LocalReplication } from './local';
import { RecoveryWorker, chooseAcceptedCopy } from './recovery';

/** A disk holding no object whose PG log answers a given `complete`. */
class LoggedDisk implements LocalDisk {
  complete: PgVersion | undefined;
  asked = 0;

  constructor(readonly id: number) {}

  async pgLog(): Promise<PgLogState> {
    this.asked += 1;
    return { ...(this.complete ? { complete: this.complete } : {}), entries: [] };
  }
  async markPgLog(): Promise<void> {}
  async read(_key: ObjectKey, _offset: number, length: number): Promise<Uint8Array> {
    return new Uint8Array(length);
  }
  async write(): Promise<void> {}
  async trim(): Promise<void> {}
  async zero(): Promise<void> {}
  async blockStatus(_key: ObjectKey, _offset: number, length: number): Promise<Extent[]> {
    return [{ length, hole: true, zero: true }];
  }
  async deleteObject(): Promise<boolean> {
    return false;
  }
  async flush(): Promise<void> {}
  async activeObjects(): Promise<ObjectKey[]> {
    return [];
  }
  async *listObjects(): AsyncIterable<ObjectKey> {}
}

/** Marks disks down (`up` false) or back up, as the monitor would; the store marks stale. */
async function setUp(cluster: MemoryClusterStore, disks: number[], up: boolean): Promise<void> {
  await cluster.update((s) => {
    for (const d of s.map.disks) if (disks.includes(d.id)) d.up = up;
  });
}

/**
 * The PG made incomplete as the first test describes, each disk's log answering what
 * `completes` sets (given c, stale longest, and the two members that joined late),
 * `adjust` applied to the map before the acceptance; one recovery pass serves it.
 */
async function serveAccepted(
  completes: (disks: LoggedDisk[], c: number, joined: number[]) => void,
  adjust: (s: state.ClusterState, key: string, joined: number[]) => void = () => undefined,
): Promise<{
  served: number | undefined;
  c: number;
  joined: number[];
  after: state.ClusterState;
  key: string;
  disks: LoggedDisk[];
  members: number[];
  events: Array<[string, Record<string, unknown> | undefined]>;
}> {
  const initial = state.emptyState();
  state.addHost(initial, 'h1', 'r1');
  for (let d = 0; d < 5; d += 1)
    state.addDisk(initial, 'h1', { path: `d${d}`, uuid: `u${d}`, sizeBytes: 1 << 30 });
  const pool = state.createPool(initial, {
    name: 'p',
    size: 3,
    minSize: 2,
    failureDomain: 'disk',
    pgCount: 1,
  });
  const cluster = new MemoryClusterStore(initial);
  const table = (): PlacementTable => computeTable(cluster.current().map, pool.id);
  const [a, b, c] = pgRow(table(), 0) as unknown as [number, number, number];
  const key = state.pgKey(pool.id, 0);
  // c misses writes (stale, the earliest mark); a and b, the record, fail for good; the
  // operator takes them out and the PG is re-placed on two new members, stale later.
  await setUp(cluster, [c], false);
  await setUp(cluster, [c], true);
  await setUp(cluster, [a], false);
  await setUp(cluster, [b], false);
  await cluster.update((s) => {
    for (const d of s.map.disks) if (d.id === a || d.id === b) d.in = false;
  });
  const incomplete = state.incompletePgs(cluster.current());
  assert.equal(incomplete.length, 1, 'the PG is incomplete');
  assert.equal(incomplete[0]!.best, c, 'the map alone points to c, stale longest');
  const joined = incomplete[0]!.members.filter((d) => d !== c);
  assert.equal(joined.length, 2);
  const disks = [0, 1, 2, 3, 4].map((id) => new LoggedDisk(id));
  completes(disks, c, joined);
  await cluster.update((s) => adjust(s, key, joined));
  const up = (disk: number): boolean =>
    cluster.current().map.disks.find((d) => d.id === disk)?.up === true;
  const primaryOfPg = (): { id: number; host: string } => {
    const members = state.actingMembers(cluster.current(), table(), 0);
    const chosen = members.find((m) => !m.stale) ?? members[0];
    if (!chosen) throw new CisternError('UNAVAILABLE', 'no member up');
    return { id: chosen.disk, host: 'h1' };
  };
  const replication = new LocalReplication({
    table,
    store: (disk) => (up(disk) ? disks[disk] : undefined),
    acting: (t, pg) => state.actingMembers(cluster.current(), t, pg),
    onDiskFailure: async (disk, error) => {
      await cluster.update((s) => state.markDiskDown(s, disk, `${error.code}: ${error.message}`));
    },
    hostId: 'h1',
  });
  const events: Array<[string, Record<string, unknown> | undefined]> = [];
  const recovery = new RecoveryWorker({
    hostId: 'h1',
    cluster,
    table,
    primaryOfPg,
    primary: replication,
    localStore: (disk) => (up(disk) ? disks[disk] : undefined),
    transport: undefined,
    log: (event, fields) => events.push([event, fields]),
    sleep: async () => undefined,
  });

  await cluster.update((s) => state.acceptPgLoss(s, pool.id, 0));
  recovery.start();
  await recovery.idle();
  await recovery.close();
  const after = cluster.current();
  const served = events.find(([event]) => event === 'recovery.loss-accepted')?.[1]?.['disk'];
  return {
    served: typeof served === 'number' ? served : undefined,
    c,
    joined,
    after,
    key,
    disks,
    members: incomplete[0]!.members,
    events,
  };
}

test('an accepted loss is served from the member whose PG log is complete furthest', async () => {
  // What the logs say: one of the late members holds more than c (say c's mark came
  // before a long run of writes it missed, while that member took them).
  const { served, joined, after, key, disks, members, events } = await serveAccepted(
    (disks, c, joined) => {
      disks[c]!.complete = { epoch: 5, seq: 40 };
      disks[joined[0]!]!.complete = { epoch: 9, seq: 7 };
    },
  );
  assert.deepEqual(after.authoritativeMembers[key], [joined[0]], 'served from the fuller copy');
  assert.equal(after.acceptedLosses?.[key], undefined, 'the acceptance is done');
  for (const disk of members) assert.ok(disks[disk]!.asked > 0, `disk ${disk} asked`);
  assert.equal(served, joined[0]);
  // Recovery then brings the others in line: the PG ends clean.
  assert.equal(after.staleMembers[key], undefined, `clean (events: ${events.map((e) => e[0])})`);
});

test('among copies complete equally far, one that left the record after a crash is served', async () => {
  // Simulator seed 114: the logs tied, and the copy stale longest lacked writes that a
  // disk which had left peering's record after its crash (crashedMembers) still held.
  const { served, joined } = await serveAccepted(
    (disks) => {
      for (const disk of disks) disk.complete = { epoch: 5, seq: 40 };
    },
    (s, key, joined) => {
      s.crashedMembers[key] = [joined[1]!];
    },
  );
  assert.equal(served, joined[1]);
});

test('the choice: furthest complete; a member without a version only if none has one; ties to the first', () => {
  assert.equal(
    chooseAcceptedCopy([
      { disk: 4, complete: { epoch: 5, seq: 40 } },
      { disk: 2 },
      { disk: 7, complete: { epoch: 9, seq: 1 } },
    ]),
    7,
  );
  assert.equal(chooseAcceptedCopy([{ disk: 4 }, { disk: 2 }]), 4, 'no version anywhere: the first');
  assert.equal(
    chooseAcceptedCopy([
      { disk: 3, complete: { epoch: 9, seq: 5 } },
      { disk: 1, complete: { epoch: 9, seq: 5 } },
    ]),
    3,
    'equal: the first (stale longest)',
  );
  assert.equal(
    chooseAcceptedCopy([{ disk: 3 }, { disk: 1, complete: { epoch: 1, seq: 1 } }]),
    1,
    'any version beats none',
  );
  assert.throws(() => chooseAcceptedCopy([]), { code: 'UNAVAILABLE' });
});
