// `cistern status`: health and what to do about it first, then disks, pools, capacity.

import { formatSize } from '../../src/util/units';
import { StatusReport } from '../../src/volume/admin';
import type { ClusterStatusReport } from '../../src/cluster/cluster-admin';
import { adminOptions, formatTable, percent, openAdmin } from '../admin-client';
import { Command, opt } from '../command';
import { poolTable } from './pool-ls';

export function formatStatus(report: StatusReport): string[] {
  const lines = [`health: ${report.health}`];
  for (const message of report.messages) lines.push(`  ${message}`);
  const counts = [
    `epoch ${report.epoch}`,
    plural(report.hosts, 'host'),
    plural(report.disks.length, 'disk'),
    plural(report.pools.length, 'pool'),
    plural(report.volumes, 'volume'),
  ];
  lines.push(
    '',
    counts.join(', ') +
      (report.nbd ? `; NBD on ${report.nbd}` : '') +
      (report.iscsi ? `; iSCSI on ${report.iscsi}` : ''),
  );
  const cluster = report as Partial<ClusterStatusReport>; // with --etcd
  if (cluster.hostsUp && cluster.hostsDown) {
    const down = cluster.hostsDown.length > 0 ? ` (${cluster.hostsDown.join(', ')})` : '';
    lines.push(`hosts: ${cluster.hostsUp.length} up, ${cluster.hostsDown.length} down${down}`);
  }
  if (cluster.pgStates) {
    const states = Object.entries(cluster.pgStates).map(([state, count]) => `${count} ${state}`);
    lines.push(`pgs: ${states.join(', ')}`);
  }
  const recovery = report.recovery;
  if (recovery && (recovery.objectsDegraded > 0 || recovery.objectsMisplaced > 0)) {
    const about = recovery.upperBound ? '≤' : '~';
    lines.push(
      `objects: ${about}${recovery.objectsDegraded} degraded (copies missing), ` +
        `${about}${recovery.objectsMisplaced} misplaced (copies on former members until recovery)`,
    );
  }
  if (recovery && recovery.staleMembers > 0) {
    const about = recovery.upperBound ? '≤' : '~';
    lines.push(
      `recovery: ${recovery.staleMembers} PG members stale in ${plural(recovery.pgsRecovering, 'PG')}, ` +
        `${about}${formatSize(recovery.bytesToCopy)} to copy (${about}${recovery.objectsToCopy} ` +
        `objects), ${about}${formatDuration(recovery.seconds)} at ` +
        `${formatSize(recovery.bytesPerSecond)}/s`,
    );
  }
  const done = recovery?.done;
  if (done && done.logCatchUps + done.backfills > 0) {
    lines.push(
      `recovered here: ${plural(done.logCatchUps, 'PG member')} from the PG log ` +
        `(${plural(done.logObjects, 'object')} copied), ${done.backfills} by backfill ` +
        `(${plural(done.backfillObjects, 'object')} copied)`,
    );
  }
  lines.push('', 'disks:');
  const diskRows = report.disks.map((d) => [
    String(d.id),
    d.host,
    `${d.up ? 'up' : 'DOWN'}/${d.in ? 'in' : 'OUT'}`,
    formatSize(d.sizeBytes),
    formatSize(d.usedBytes),
    percent(d.usedBytes, d.sizeBytes),
    d.path + (d.error ? `  (${d.error})` : ''),
  ]);
  const diskColumns = [
    { header: 'ID', right: true },
    { header: 'HOST' },
    { header: 'STATE' },
    { header: 'SIZE', right: true },
    { header: 'USED', right: true },
    { header: 'USE%', right: true },
    { header: 'PATH' },
  ];
  for (const line of formatTable(diskColumns, diskRows)) lines.push(`  ${line}`);
  lines.push('', 'pools:');
  for (const line of poolTable(report.pools)) lines.push(`  ${line}`);
  lines.push(
    '',
    `capacity: ${formatSize(report.usedBytes)} used of ${formatSize(report.capacityBytes)} raw ` +
      `(${percent(report.usedBytes, report.capacityBytes)})`,
  );
  return lines;
}

function formatDuration(seconds: number): string {
  if (seconds < 120) return `${seconds} s`;
  if (seconds < 7200) return `${Math.round(seconds / 60)} min`;
  return `${(seconds / 3600).toFixed(1)} h`;
}

function plural(count: number, noun: string): string {
  return `${count} ${noun}${count === 1 ? '' : 's'}`;
}

export const status: Command = {
  path: ['status'],
  summary: 'show the health, disks, pools and capacity of the datastore',
  description: `
Starts with the health (ok, degraded, unavailable) and one line per problem with what
to do about it, then lists disks, pools and the raw capacity used. Exits 0 even when
degraded; scripts read "health" from --json.`,
  options: [...adminOptions],
  async run(args, output) {
    const client = await openAdmin(args);
    const report = await client.status();
    if (opt<boolean>(args, 'json')) {
      output.out(JSON.stringify(report, null, 2));
      return 0;
    }
    for (const line of formatStatus(report)) output.out(line);
    return 0;
  },
};
