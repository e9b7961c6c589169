// Proves how the primary engine (LocalReplication) and recovery treat members that fail
// or change under them, on in-memory disks and a MemoryClusterStore (one host, three
// disks, pool size 3 / min-size 2, one PG): recovery takes a target disk whose device
// fails out of service — when copying to it, flushing it, or listing it — as a client
// write does, instead of retrying it forever; and a change goes out only while this host
// is the PG's primary at the map it goes out with — not when the map moved another host
// in while the change waited in the object's ordering queue; and a write is acknowledged
// only if, once its failed members are out, min-size members the map still has good
// hold it — not when other hosts took the members that took it down (or back, stale)
// meanwhile (regressions the simulator found); and a flush that one holder refused (a
// replica on a newer map) leaves the next flush owing only the writes it did not make
// durable — a real cluster under map churn failed FLUSH with EIO for writes flushed on
// two members — while one after every holder of a write was lost still fails with EIO.

import { strict as assert } from 'node:assert';
import { test } from 'node:test';
import { CisternError } from '../util/errors';
import { ObjectKey, ObjectKeyFilter } from '../store/key';
import { Extent } from '../volume/backend';
import * as state from '../cluster/state';
import { MemoryClusterStore } from '../cluster/memory';
import { PlacementTable, computeTable, pgRow } from '../placement/straw2';
import { LocalDisk } from './endpoint';
import { LocalReplication } from './local';
import { RecoveryWorker } from './recovery';

const OBJECT_BYTES = 64 * 1024;

/** One disk's objects in memory; `failing` makes every call answer EIO, as a dead device. */
class MemoryDisk implements LocalDisk {
  readonly objects = new Map<string, { key: ObjectKey; data: Uint8Array }>();
  failing = false;
  writes = 0;

  constructor(readonly id: number) {}

  private check(): void {
    if (this.failing) throw new CisternError('EIO', `disk ${this.id} failed`);
  }

  private object(key: ObjectKey): Uint8Array {
    const name = `${key.pool}/${key.volume}/${key.object}`;
    let entry = this.objects.get(name);
    if (!entry) {
      entry = { key, data: new Uint8Array(OBJECT_BYTES) };
      this.objects.set(name, entry);
    }
    return entry.data;
  }

  async read(key: ObjectKey, offset: number, length: number): Promise<Uint8Array> {
    this.check();
    return this.object(key).slice(offset, offset + length);
  }

  /** Every object it holds: the superset ObjectEndpoint.activeObjects allows. */
  async activeObjects(pool: number): Promise<ObjectKey[]> {
    this.check();
    return [...this.objects.values()].filter((o) => o.key.pool === pool).map((o) => o.key);
  }

  async write(key: ObjectKey, offset: number, data: Uint8Array): Promise<void> {
    this.check();
    this.writes += 1;
    this.object(key).set(data, offset);
  }

  async trim(key: ObjectKey, offset: number, length: number): Promise<void> {
    this.check();
    this.object(key).fill(0, offset, offset + length);
  }

  async zero(key: ObjectKey, offset: number, length: number): Promise<void> {
    await this.trim(key, offset, length);
  }

  async blockStatus(key: ObjectKey, _offset: number, length: number): Promise<Extent[]> {
    this.check();
    const held = this.objects.has(`${key.pool}/${key.volume}/${key.object}`);
    return [{ length, hole: !held, zero: false }];
  }

  async deleteObject(key: ObjectKey): Promise<boolean> {
    this.check();
    return this.objects.delete(`${key.pool}/${key.volume}/${key.object}`);
  }

  async flush(): Promise<void> {
    this.check();
  }

  async *listObjects(filter: ObjectKeyFilter = {}): AsyncIterable<ObjectKey> {
    this.check();
    for (const { key } of this.objects.values()) {
      if (filter.pool === undefined || filter.pool === key.pool) yield key;
    }
  }
}

interface Harness {
  cluster: MemoryClusterStore;
  disks: MemoryDisk[];
  replication: LocalReplication;
  table(): PlacementTable;
  row: number[];
  key: ObjectKey;
  up(disk: number): boolean;
}

/**
 * One host with the three disks, or (`spread`) three hosts with one each; the engine
 * runs as `hostId` (by default the host of the PG's first member).
 */
function harness(
  options: {
    spread?: boolean;
    hostId?: string;
    /** Runs as a failed disk is being taken out, before the map says so. */
    whileTakingOut?: (disk: number, cluster: MemoryClusterStore) => Promise<void>;
  } = {},
): Harness {
  const initial = state.emptyState();
  for (let d = 0; d < 3; d += 1) {
    const host = options.spread ? `h${d + 1}` : 'h1';
    state.addHost(initial, host, `r${d + 1}`);
    state.addDisk(initial, host, { path: `d${d}`, uuid: `u${d}`, sizeBytes: 1 << 30 });
  }
  const pool = state.createPool(initial, {
    name: 'p',
    size: 3,
    minSize: 2,
    failureDomain: options.spread ? 'host' : 'disk',
    pgCount: 1,
  });
  const volume = state.createVolume(initial, 'v', 1 << 30, 'p');
  volume.objectSizeBytes = OBJECT_BYTES;
  const cluster = new MemoryClusterStore(initial);
  const disks = [0, 1, 2].map((id) => new MemoryDisk(id));
  const table = (): PlacementTable => computeTable(cluster.current().map, pool.id);
  const up = (disk: number): boolean =>
    cluster.current().map.disks.find((d) => d.id === disk)?.up === true;
  const first = pgRow(table(), 0)[0] as number;
  const replication = new LocalReplication({
    table,
    store: (disk) => (up(disk) ? disks[disk] : undefined),
    acting: (t, pg) => state.actingMembers(cluster.current(), t, pg),
    onDiskFailure: async (disk, error) => {
      await options.whileTakingOut?.(disk, cluster);
      await cluster.update((s) => state.markDiskDown(s, disk, `${error.code}: ${error.message}`));
    },
    hostId: options.hostId ?? initial.map.disks.find((d) => d.id === first)!.host,
  });
  return {
    cluster,
    disks,
    replication,
    table,
    row: [...pgRow(table(), 0)],
    key: { pool: pool.id, volume: volume.id, object: 7 },
    up,
  };
}

/** Marks `disk` a stale member of the one PG, as a map change bringing it back would. */
async function markStale(h: Harness, disk: number): Promise<void> {
  await h.cluster.update((s) => {
    s.staleMembers[state.pgKey(h.key.pool, 0)] = [disk];
    s.staleSince[state.staleKey(h.key.pool, 0, disk)] = s.map.epoch + 1;
  });
}

test('recovery copying to a target whose device fails takes the target out', async () => {
  const h = harness();
  await h.replication.write(h.key, 0, new Uint8Array(4096).fill(7), false);
  const target = h.row[2] as number;
  await markStale(h, target);
  h.disks[target]!.failing = true;
  await assert.rejects(h.replication.recoverObject(h.key, target, OBJECT_BYTES), /EIO|failed/);
  assert.equal(h.up(target), false, 'the failed target is down in the map');
  assert.match(h.cluster.current().disks[String(target)]!.error ?? '', /^EIO/);
  for (const disk of h.row.slice(0, 2)) assert.equal(h.up(disk), true, `source disk ${disk}`);
});

function worker(h: Harness, events: string[]): RecoveryWorker {
  return new RecoveryWorker({
    hostId: 'h1',
    cluster: h.cluster,
    table: () => h.table(),
    primaryOfPg: () => ({ id: h.row[0] as number, host: 'h1' }),
    primary: h.replication,
    localStore: (disk) => (h.up(disk) ? h.disks[disk] : undefined),
    transport: undefined,
    log: (event) => events.push(event),
    sleep: async () => undefined,
  });
}

test('a recovery pass whose target cannot even be listed takes the target out', async () => {
  const h = harness();
  await h.replication.write(h.key, 0, new Uint8Array(4096).fill(9), false);
  const target = h.row[2] as number;
  await markStale(h, target);
  h.disks[target]!.failing = true;
  const events: string[] = [];
  const recovery = worker(h, events);
  recovery.start();
  await recovery.idle();
  await recovery.close();
  assert.equal(h.up(target), false, `target taken out (events: ${events.join(' ')})`);
  assert.ok(events.includes('recovery.failed'));
});

test('a recovery pass whose target fails only its flush takes the target out', async () => {
  const h = harness();
  const target = h.row[1] as number;
  await markStale(h, target);
  const disk = h.disks[target]!;
  disk.flush = async () => {
    throw new CisternError('EIO', `disk ${target} failed its flush`);
  };
  const events: string[] = [];
  const recovery = worker(h, events);
  recovery.start();
  await recovery.idle();
  await recovery.close();
  assert.equal(h.up(target), false, `target taken out (events: ${events.join(' ')})`);
});

test('a write that waited while another host became primary is refused, sent to no member', async () => {
  const h = harness({ spread: true });
  const [primary, second] = h.row as [number, number];
  // The first write holds the object's ordering: its write to `second` waits on a gate.
  let open: () => void = () => undefined;
  const gate = new Promise<void>((resolve) => (open = resolve));
  const disk = h.disks[second]!;
  const write = disk.write.bind(disk);
  let gated = true;
  disk.write = async (key, offset, data) => {
    if (gated) {
      gated = false;
      await gate;
    }
    return write(key, offset, data);
  };
  const first = h.replication.write(h.key, 0, new Uint8Array(4096).fill(1), false);
  const later = h.replication.write(h.key, 0, new Uint8Array(4096).fill(2), false);
  // Meanwhile the map makes the primary's disk stale: `second`'s host is primary now.
  await markStale(h, primary);
  const before = h.disks.map((d) => d.writes);
  open();
  await first; // checked and sent before the change: acknowledged
  await assert.rejects(later, (error: unknown) => (error as CisternError).code === 'STALE_EPOCH');
  assert.deepEqual(
    h.disks.map((d) => d.writes),
    before.map((count, i) => (i === second ? count + 1 : count)),
    'only the first write’s gated replica write landed after the change',
  );
});

test('recovery stops changing the target once another host is primary', async () => {
  const h = harness({ spread: true });
  await h.replication.write(h.key, 0, new Uint8Array(4096).fill(3), false);
  const [primary, , target] = h.row as [number, number, number];
  await h.cluster.update((s) => {
    s.staleMembers[state.pgKey(h.key.pool, 0)] = [primary, target];
  });
  const before = h.disks[target]!.writes;
  await assert.rejects(
    h.replication.recoverObject(h.key, target, OBJECT_BYTES),
    (error: unknown) => (error as CisternError).code === 'STALE_EPOCH',
  );
  assert.equal(h.disks[target]!.writes, before);
});

/**
 * A harness whose third member answers EIO to writes; `meanwhile` changes the map (as
 * other hosts would) while the primary is taking that member out.
 */
function racing(meanwhile: (cluster: MemoryClusterStore, holders: number[]) => Promise<void>): {
  h: Harness;
  failing: number;
} {
  let failing = -1;
  let holders: number[] = [];
  const h = harness({
    spread: true,
    whileTakingOut: async (disk, cluster) => {
      if (disk === failing) await meanwhile(cluster, holders);
    },
  });
  failing = h.row[2] as number;
  holders = h.row.slice(0, 2);
  const disk = h.disks[failing]!;
  disk.write = async () => {
    throw new CisternError('EIO', `disk ${failing} failed`);
  };
  return { h, failing };
}

test('a write whose holders were taken down while a failed member was taken out is not acknowledged', async () => {
  const { h, failing } = racing(async (cluster, holders) => {
    // Other hosts could not reach the members that took the write: down in the map.
    for (const disk of holders)
      await cluster.update((s) => state.markDiskDown(s, disk, 'UNREACHABLE: other host'));
  });
  await assert.rejects(
    h.replication.write(h.key, 0, new Uint8Array(4096).fill(5), true),
    (error: unknown) => (error as CisternError).code === 'STALE_EPOCH',
  );
  assert.equal(h.up(failing), false, 'the failed member is out');
  // Peering records the members good when the PG fell below min-size, the failed one
  // among them, as authoritative: right only because the write it missed was never
  // acknowledged.
  const record = h.cluster.current().authoritativeMembers[state.pgKey(h.key.pool, 0)] ?? [];
  assert.ok(record.includes(failing), `record ${JSON.stringify(record)}`);
});

test('a write whose holders came back stale meanwhile is not acknowledged', async () => {
  const { h } = racing(async (cluster, holders) => {
    // One holder was taken down and came back: stale, so it does not count.
    const disk = holders[0]!;
    await cluster.update((s) => state.markDiskDown(s, disk, 'UNREACHABLE: other host'));
    await cluster.update((s) => {
      s.map.disks.find((d) => d.id === disk)!.up = true;
    });
    assert.deepEqual(cluster.current().staleMembers[state.pgKey(1, 0)], [disk]);
  });
  const write = h.replication.write(h.key, 0, new Uint8Array(4096).fill(6), false);
  await assert.rejects(write, (error: unknown) => (error as CisternError).code === 'STALE_EPOCH');
});

test('a write held by min-size good members after a failed one is out is acknowledged', async () => {
  const { h, failing } = racing(async () => undefined);
  await h.replication.write(h.key, 0, new Uint8Array(4096).fill(7), false);
  assert.equal(h.up(failing), false);
});

test('a flush one holder refused does not make the next flush fail writes the first made durable', async () => {
  const h = harness();
  await h.replication.write(h.key, 0, new Uint8Array(4096).fill(8), false);
  const refusing = h.row[2] as number;
  const disk = h.disks[refusing]!;
  const flush = disk.flush.bind(disk);
  disk.flush = async () => {
    disk.flush = flush;
    throw new CisternError('STALE_EPOCH', 'a replica on a newer map refused the flush');
  };
  await assert.rejects(
    h.replication.flush(),
    (error: unknown) => (error as CisternError).code === 'STALE_EPOCH',
  );
  // Meanwhile the member that refused is taken out (another host could not reach it):
  // the write is durable on the two members the first flush did flush.
  await h.cluster.update((s) => state.markDiskDown(s, refusing, 'UNREACHABLE: other host'));
  await h.replication.flush();
});

test('a flush after every holder of a write was taken out fails with EIO', async () => {
  const h = harness();
  await h.replication.write(h.key, 0, new Uint8Array(4096).fill(9), false);
  for (const disk of h.row.slice(0, 2))
    await h.cluster.update((s) => state.markDiskDown(s, disk, 'UNREACHABLE: other host'));
  h.disks[h.row[2] as number]!.flush = async () => {
    throw new CisternError('EIO', 'the last holder failed its flush');
  };
  await assert.rejects(
    h.replication.flush(),
    (error: unknown) => (error as CisternError).code === 'EIO',
  );
});
