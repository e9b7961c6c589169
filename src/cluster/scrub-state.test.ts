// Proves the bookkeeping of scrub and recovery figures on literal states, no daemon:
// scrub requests get increasing ids, at most SCRUB_REQUESTS_MAX are kept, an unknown
// pool is refused; a report lands under its request and the request is done once every
// live host reported; old requests are not acted on; the recovery estimate counts
// stale members, bytes to copy and time at the bandwidth bound, which status prints; and
// object copies are degraded (missing: a member down, or stale with nothing retained)
// or misplaced (a stale member whose data a retained former member still holds).

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { isCisternError } from '../util/errors';
import * as state from './state';
import {
  SCRUB_REQUESTS_MAX,
  SCRUB_REQUEST_TTL_MS,
  ScrubReport,
  pendingScrubs,
  recordScrubReport,
  requestScrub,
  scrubStatusOf,
} from './scrub-state';
import { recoveryStatus } from './recovery-status';
import { computeTable, pgRow } from '../placement/straw2';
import { formatStatus } from '../../tools/commands/status';

function cluster(): state.ClusterState {
  const s = state.emptyState();
  for (let h = 0; h < 4; h += 1) {
    state.addHost(s, `h${h}`, `r${h}`);
    state.addDisk(s, `h${h}`, { path: `/d${h}`, uuid: `u${h}`, sizeBytes: 1000 });
  }
  state.createPool(s, { name: 'p', size: 3, minSize: 2, failureDomain: 'host', pgCount: 8 });
  return s;
}

function report(host: string): ScrubReport {
  return {
    host,
    finishedAt: new Date().toISOString(),
    ms: 5,
    pgs: 2,
    objects: 10,
    disagreements: 1,
    repaired: 1,
    errors: 0,
    examples: ['1/1/0: repaired'],
  };
}

test('scrub requests: increasing ids, bounded, unknown pool refused', () => {
  const s = cluster();
  const now = new Date();
  const ids: number[] = [];
  for (let i = 0; i < SCRUB_REQUESTS_MAX + 3; i += 1) {
    ids.push(requestScrub(s, i % 2 === 0 ? 'p' : undefined, now).id);
    s.map.epoch += 1; // what the store does after each update
  }
  assert.ok(ids.every((id, i) => i === 0 || id > ids[i - 1]!));
  assert.equal(s.scrubRequests.length, SCRUB_REQUESTS_MAX);
  assert.equal(s.scrubRequests[0]!.id, ids[3], 'the oldest were dropped');
  assert.throws(
    () => requestScrub(s, 'nope', now),
    (error) => isCisternError(error, 'UNKNOWN_POOL'),
  );
});

test('reports land under their request; done once every live host reported', () => {
  const s = cluster();
  const { id } = requestScrub(s, 'p', new Date());
  assert.equal(pendingScrubs(s, 'h0', new Date()).length, 1);
  assert.ok(recordScrubReport(s, id, report('h0')));
  assert.equal(pendingScrubs(s, 'h0', new Date()).length, 0, 'h0 is done with it');
  assert.equal(scrubStatusOf(s, id, ['h0', 'h1']).done, false);
  recordScrubReport(s, id, report('h1'));
  const status = scrubStatusOf(s, id, ['h0', 'h1']);
  assert.equal(status.done, true);
  assert.equal(status.pool, 'p');
  assert.equal(recordScrubReport(s, id + 100, report('h2')), false, 'unknown request ignored');
  assert.throws(
    () => scrubStatusOf(s, id + 100, []),
    (error) => isCisternError(error, 'ENOENT'),
  );
  const later = new Date(Date.now() + SCRUB_REQUEST_TTL_MS + 1000);
  assert.deepEqual(pendingScrubs(s, 'h3', later), [], 'too old to act on');
});

test('recovery estimate: stale members × one PG copy ÷ bandwidth, printed by status', () => {
  const s = cluster();
  s.staleMembers = { '1:0': [3], '1:5': [2, 3] };
  const MiB = 2 ** 20;
  const recovery = recoveryStatus(s, () => ({ objects: 16, bytes: 64 * MiB }), false, 64 * MiB);
  assert.equal(recovery.pgsRecovering, 2);
  assert.equal(recovery.staleMembers, 3);
  assert.equal(recovery.objectsToCopy, 48);
  assert.equal(recovery.bytesToCopy, 192 * MiB);
  assert.ok(recovery.bytesPerSecond >= 64 * MiB);
  assert.equal(recovery.seconds, Math.ceil((192 * MiB) / recovery.bytesPerSecond));
  const lines = formatStatus({
    health: 'degraded',
    messages: [],
    epoch: 3,
    hosts: 4,
    disks: [],
    pools: [],
    volumes: 0,
    capacityBytes: 0,
    usedBytes: 0,
    recovery,
  });
  assert.ok(
    lines.some((line) =>
      /^recovery: 3 PG members stale in 2 PGs, ~192 MiB to copy \(~48 objects\), ~\d+ s at \d+ MiB\/s$/.test(
        line,
      ),
    ),
    lines.join('\n'),
  );
});

test('degraded and misplaced object copies, and the status line that shows them', () => {
  const MiB = 2 ** 20;
  const copy = () => ({ objects: 10, bytes: 40 * MiB });
  const clean = cluster();
  const none = recoveryStatus(clean, copy, false, 64 * MiB);
  assert.deepEqual([none.objectsDegraded, none.objectsMisplaced], [0, 0]);

  // A rebalance: pg 0's third member is new (stale) and a former member still holds it.
  const table = computeTable(clean.map, 1);
  const row = [...pgRow(table, 0)];
  const former = clean.map.disks.map((d) => d.id).find((d) => !row.includes(d))!;
  const moving = structuredClone(clean);
  moving.staleMembers = { '1:0': [row[2]!] };
  moving.retainedMembers = { '1:0': [former] };
  const rebalance = recoveryStatus(moving, copy, false, 64 * MiB);
  assert.deepEqual([rebalance.objectsDegraded, rebalance.objectsMisplaced], [0, 10]);

  // The same without the former member (it failed): a copy is missing, not misplaced.
  const failed = structuredClone(moving);
  failed.retainedMembers = {};
  const lost = recoveryStatus(failed, copy, false, 64 * MiB);
  assert.deepEqual([lost.objectsDegraded, lost.objectsMisplaced], [10, 0]);

  // A disk down (not yet out): every PG it is in misses one copy.
  const down = structuredClone(clean);
  state.markDiskDown(down, 3, 'host h3 is down');
  const downTable = computeTable(down.map, 1);
  let withDisk = 0;
  for (let pg = 0; pg < 8; pg += 1) if (pgRow(downTable, pg).includes(3)) withDisk += 1;
  const degraded = recoveryStatus(down, copy, true, 64 * MiB);
  assert.deepEqual([degraded.objectsDegraded, degraded.objectsMisplaced], [withDisk * 10, 0]);

  const lines = formatStatus({
    health: 'degraded',
    messages: [],
    epoch: 3,
    hosts: 4,
    disks: [],
    pools: [],
    volumes: 0,
    capacityBytes: 0,
    usedBytes: 0,
    recovery: degraded,
  });
  assert.ok(
    lines.includes(
      `objects: ≤${withDisk * 10} degraded (copies missing), ≤0 misplaced (copies on former members until recovery)`,
    ),
    lines.join('\n'),
  );
});
