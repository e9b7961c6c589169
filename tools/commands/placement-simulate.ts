// `cistern placement simulate`: the placement engine measured at scale in memory.

import fs from 'node:fs';
import { failureDomains, FailureDomain } from '../../src/placement/map';
import { fillHistogramSvg } from '../../src/placement/simulate/plot';
import { simulate, SimulationReport } from '../../src/placement/simulate/simulate';
import { formatSize } from '../../src/util/units';
import { Command, opt, usageError } from '../command';

/** The targets the reference installation must meet (issue 2). */
export const targets = {
  balancedMaxOverMean: 1.03,
  addHostOverIdeal: 1.1,
  fanOutFraction: 0.9,
  lookupsPerSecond: 2_000_000,
  recomputeMs: 3000,
};

function percent(value: number, digits = 1): string {
  return `${(value * 100).toFixed(digits)}%`;
}

function rate(value: number): string {
  return value >= 1e6 ? `${(value / 1e6).toFixed(1)} M` : `${(value / 1e3).toFixed(0)} k`;
}

function verdict(ok: boolean): string {
  return ok ? 'ok' : 'MISSED';
}

export function formatReport(r: SimulationReport): string {
  const p = r.parameters;
  const ring = r.baselines.ring;
  const modulo = r.baselines.modulo;
  const row = (
    label: string,
    straw: string,
    ringText: string,
    moduloText: string,
    target = '',
  ): string =>
    `${label.padEnd(40)}${straw.padStart(12)}${ringText.padStart(12)}${moduloText.padStart(12)}  ${target}`;
  const lines = [
    `placement simulation, seed ${p.seed}: ${p.hosts} hosts × ${p.disksPerHost} disks = ${r.disks} disks ` +
      `in ${p.racks} racks, ${formatSize(p.diskSizeBytes)} each; size ${p.size}, failure domain ${p.failureDomain}, ` +
      `${r.pgs} PGs (${p.pgsPerDisk}/disk)`,
    `population: ${r.population.volumes} thin volumes, ${formatSize(r.population.provisionedBytes)} provisioned, ` +
      `${formatSize(r.population.writtenBytes)} written (${percent(p.fillFraction, 0)} of raw with replicas); ` +
      `${r.population.objectsTotal} objects, ${r.population.objectsHashed} hashed`,
    '',
    row('', 'straw2', 'ring', 'modulo', 'target'),
    row(
      'fill max/mean',
      r.balance.maxOverMean.toFixed(3),
      ring.balance.maxOverMean.toFixed(3),
      modulo.balance.maxOverMean.toFixed(3),
    ),
    row(
      'fill stddev/mean',
      percent(r.balance.stddevOverMean),
      percent(ring.balance.stddevOverMean),
      percent(modulo.balance.stddevOverMean),
    ),
    row(
      'fill max/mean after balancer',
      r.balanced.maxOverMean.toFixed(3),
      '-',
      '-',
      `≤ ${targets.balancedMaxOverMean} ${verdict(r.balanced.maxOverMean <= targets.balancedMaxOverMean)}`,
    ),
    row(
      '  data moved by the balancer',
      percent(r.balanced.movedFraction, 2),
      '-',
      '-',
      `${r.balanced.items} items`,
    ),
    row(
      'add host: moved / ideal',
      r.addHost.overIdeal.toFixed(3),
      ring.addHost.overIdeal.toFixed(3),
      modulo.addHost.overIdeal.toFixed(3),
      `≤ ${targets.addHostOverIdeal} ${verdict(r.addHost.overIdeal <= targets.addHostOverIdeal)} ` +
        `(ideal ${percent(r.addHost.idealFraction, 3)})`,
    ),
    row(
      'remove host: moved / ideal',
      r.removeHost.overIdeal.toFixed(3),
      ring.removeHost.overIdeal.toFixed(3),
      modulo.removeHost.overIdeal.toFixed(3),
    ),
    row(
      'remove host: moved between others',
      percent(r.removeHost.movedBetweenOthers, 3),
      percent(ring.removeHost.movedBetweenOthers, 3),
      percent(modulo.removeHost.movedBetweenOthers, 3),
      `= 0 ${verdict(r.removeHost.movedBetweenOthers === 0)}`,
    ),
    row(
      'reweight disk: moved between others',
      percent(r.reweight.movedBetweenOthers, 3),
      percent(ring.reweight.movedBetweenOthers, 3),
      percent(modulo.reweight.movedBetweenOthers, 3),
      `= 0 ${verdict(r.reweight.movedBetweenOthers === 0)}`,
    ),
    row(
      'balanced: add/remove/reweight, others',
      [r.balanced.addHost, r.balanced.removeHost, r.balanced.reweight]
        .map((change) => percent(change.movedBetweenOthers, 2))
        .join('/'),
      '-',
      '-',
    ),
    row(
      'fail host: disks receiving its data',
      `${r.failHost.fanOutDisks} ${percent(r.failHost.fanOutFraction, 0)}`,
      `${ring.failHost.fanOutDisks} ${percent(ring.failHost.fanOutFraction, 0)}`,
      `${modulo.failHost.fanOutDisks} ${percent(modulo.failHost.fanOutFraction, 0)}`,
      `≥ ${percent(targets.fanOutFraction, 0)} ${verdict(r.failHost.fanOutFraction >= targets.fanOutFraction)} ` +
        `(of ${r.failHost.otherDisks}; ${r.failHost.fanOutHosts} hosts)`,
    ),
    row(
      'object look-ups per second, one core',
      rate(r.lookupsPerSecond),
      rate(ring.lookupsPerSecond),
      rate(modulo.lookupsPerSecond),
      `≥ 2 M ${verdict(r.lookupsPerSecond >= targets.lookupsPerSecond)}`,
    ),
    row(
      'recompute every PG (ms)',
      r.recomputeMs.toFixed(0),
      ring.recomputeMs.toFixed(0),
      modulo.recomputeMs.toFixed(0),
      `≤ ${targets.recomputeMs} ${verdict(r.recomputeMs <= targets.recomputeMs)}`,
    ),
    row(
      'look-up table memory',
      formatSize(r.tableBytes),
      formatSize(ring.tableBytes),
      formatSize(modulo.tableBytes),
    ),
    '',
    `${r.machine}; ${r.date}; ${(r.elapsedMs / 1000).toFixed(1)} s`,
  ];
  return lines.join('\n');
}

export const placementSimulate: Command = {
  path: ['placement', 'simulate'],
  summary: 'simulate placement on a large cluster and compare straw2 with a ring and modulo',
  description: `
Builds a cluster map in memory, fills it with many thin volumes of mixed sizes (about
70% of raw capacity including replicas), and measures, for the straw2 engine and in
the same run for a consistent-hash ring (128 virtual nodes per host) and plain modulo:
per-disk fill before and after the balancer, data moved when a host is added or
removed or one disk is reweighted (and how much of it moved between disks the change
did not involve), how many disks receive a failed host's data, object look-ups per
second, the time to recompute every PG and the memory of the PG table. All three
place the same PGs and bytes. Runs in memory only; the reference installation takes
about half a minute and a few hundred MiB.`,
  options: [
    { name: 'hosts', type: 'integer', default: 512, help: 'hosts in the cluster' },
    { name: 'disks-per-host', type: 'integer', default: 8, help: 'disks in every host' },
    { name: 'racks', type: 'integer', default: 16, help: 'racks the hosts are spread over' },
    {
      name: 'disk-size',
      type: 'size',
      default: '4TB',
      valueName: 'SIZE',
      help: 'capacity of each disk (binary units)',
    },
    { name: 'size', type: 'integer', default: 3, help: 'replicas of every object' },
    {
      name: 'failure-domain',
      type: 'string',
      default: 'host',
      choices: failureDomains,
      help: 'replicas go to distinct disks, hosts or racks',
    },
    {
      name: 'pgs-per-disk',
      type: 'integer',
      default: 100,
      help: 'PG replicas per disk (PG count rounds to a power of two)',
    },
    {
      name: 'fill',
      type: 'number',
      default: 0.7,
      help: 'fraction of raw capacity the population fills',
    },
    { name: 'seed', type: 'integer', default: 1, help: 'seed of the volume population' },
    {
      name: 'plot',
      type: 'string',
      valueName: 'FILE.svg',
      help: 'write a histogram of per-disk fill',
    },
  ],
  async run(args, output) {
    const hosts = opt<number>(args, 'hosts');
    const disksPerHost = opt<number>(args, 'disks-per-host');
    const racks = opt<number>(args, 'racks');
    const size = opt<number>(args, 'size');
    const pgsPerDisk = opt<number>(args, 'pgs-per-disk');
    const fill = opt<number>(args, 'fill');
    if (hosts < 2 || hosts > 100_000) throw usageError('--hosts must be 2..100000');
    if (disksPerHost < 1 || disksPerHost > 1024)
      throw usageError('--disks-per-host must be 1..1024');
    if (racks < 1 || racks > hosts) throw usageError('--racks must be 1..hosts');
    if (size < 1 || size > 16) throw usageError('--size must be 1..16');
    if (pgsPerDisk < 1 || pgsPerDisk > 10_000) throw usageError('--pgs-per-disk must be 1..10000');
    if (!(fill > 0 && fill <= 1)) throw usageError('--fill must be in (0, 1]');
    if (opt<number>(args, 'disk-size') < 2 ** 30)
      throw usageError('--disk-size must be at least 1G');
    const report = simulate({
      hosts,
      disksPerHost,
      racks,
      diskSizeBytes: opt<number>(args, 'disk-size'),
      size,
      failureDomain: opt<string>(args, 'failure-domain') as FailureDomain,
      pgsPerDisk,
      fillFraction: fill,
      seed: opt<number>(args, 'seed'),
    });
    const plot = opt<string | undefined>(args, 'plot');
    if (plot) {
      const title = `Per-disk fill, ${report.disks} disks, ${report.pgs} PGs, size ${size}`;
      fs.writeFileSync(
        plot,
        fillHistogramSvg(title, [
          { label: 'straw2', values: report.fill.straw2 },
          { label: 'straw2 + balancer', values: report.fill.balanced },
          { label: 'ring (128 vnodes/host)', values: report.fill.ring },
          { label: 'modulo', values: report.fill.modulo },
        ]),
      );
    }
    if (opt<boolean>(args, 'json')) {
      const { fill: _perDisk, ...summary } = report;
      output.out(JSON.stringify(summary, null, 2));
    } else {
      output.out(formatReport(report));
      if (plot) output.out(`plot written to ${plot}`);
    }
    return 0;
  },
};
