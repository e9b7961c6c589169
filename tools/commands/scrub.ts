// `cistern scrub [--pool P]`: compares every object's replicas and repairs those that
// differ from the primary's copy. Records a scrub request (through the daemon on one
// host, straight in etcd with --etcd), then waits until every live host has reported on
// the PGs it is primary of, printing each report as it arrives, and the totals. Exits 1
// if a disagreement was left unrepaired or an object could not be compared.

import { CisternError } from '../../src/util/errors';
import type { ScrubReport, ScrubStatus } from '../../src/cluster/scrub-state';
import { adminOptions, openAdmin } from '../admin-client';
import { Command, opt } from '../command';

/** How often the CLI asks how the scrub stands. */
export const SCRUB_POLL_MS = 500;
/** Default wait for every host's report; a big cluster scrubs for hours. */
export const SCRUB_TIMEOUT_DEFAULT_S = 24 * 3600;

export interface ScrubTotals {
  hosts: number;
  pgs: number;
  objects: number;
  disagreements: number;
  repaired: number;
  errors: number;
  examples: string[];
}

export function scrubTotals(reports: readonly ScrubReport[]): ScrubTotals {
  const totals: ScrubTotals = {
    hosts: reports.length,
    pgs: 0,
    objects: 0,
    disagreements: 0,
    repaired: 0,
    errors: 0,
    examples: [],
  };
  for (const report of reports) {
    totals.pgs += report.pgs;
    totals.objects += report.objects;
    totals.disagreements += report.disagreements;
    totals.repaired += report.repaired;
    totals.errors += report.errors;
    totals.examples.push(...report.examples.map((example) => `${report.host}: ${example}`));
  }
  return totals;
}

function reportLine(report: ScrubReport): string {
  return (
    `  ${report.host}: ${report.pgs} PGs, ${report.objects} objects, ` +
    `${report.disagreements} disagreements (${report.repaired} repaired), ` +
    `${report.errors} errors, ${(report.ms / 1000).toFixed(1)} s`
  );
}

export const scrub: Command = {
  path: ['scrub'],
  summary: "compare replicas' checksums and repair those that differ",
  description: `
Every daemon compares, for the PGs it is primary of, a checksum of each object's
content on every up-to-date member, under the object's write ordering, and copies the
primary's copy over any member that differs. Waits until every live host has reported.
Exits 1 if a disagreement could not be repaired or an object could not be compared.`,
  options: [
    ...adminOptions,
    { name: 'pool', type: 'string', valueName: 'P', help: 'scrub only this pool' },
    {
      name: 'timeout',
      type: 'integer',
      valueName: 'S',
      help: `seconds to wait for every host's report (default ${SCRUB_TIMEOUT_DEFAULT_S})`,
    },
  ],
  async run(args, output) {
    const json = opt<boolean>(args, 'json');
    const pool = opt<string | undefined>(args, 'pool');
    const timeoutS = opt<number | undefined>(args, 'timeout') ?? SCRUB_TIMEOUT_DEFAULT_S;
    if (!(timeoutS > 0)) throw new CisternError('EINVAL', '--timeout must be positive');
    const client = await openAdmin(args);
    if (!client.requestScrub || !client.scrubStatus)
      throw new CisternError('ENOTSUP', 'this datastore has no scrub');
    let status: ScrubStatus = await client.requestScrub(pool);
    const id = status.id;
    if (status.hosts.length === 0) {
      // Nobody would scrub: "clean" would be a lie.
      throw new CisternError(
        'UNAVAILABLE',
        `scrub ${id}: no live host to scrub (see: cistern status)`,
      );
    }
    if (!json) {
      output.out(
        `scrub ${id} requested${pool ? ` for pool ${pool}` : ''}; waiting for ` +
          `${status.hosts.length} host(s): ${status.hosts.join(', ')}`,
      );
    }
    const deadline = Date.now() + timeoutS * 1000;
    const printed = new Set<string>();
    // Bounded by the deadline.
    for (;;) {
      for (const report of status.reports) {
        if (printed.has(report.host) || json) continue;
        printed.add(report.host);
        output.out(reportLine(report));
      }
      if (status.done) break;
      if (Date.now() >= deadline) {
        const missing = status.hosts.filter((h) => !status.reports.some((r) => r.host === h));
        throw new CisternError(
          'UNAVAILABLE',
          `scrub ${id}: no report from ${missing.join(', ')} within ${timeoutS} s ` +
            `(see: cistern status; reports may still arrive)`,
        );
      }
      await new Promise((resolve) => setTimeout(resolve, SCRUB_POLL_MS));
      status = await client.scrubStatus(id);
    }
    const totals = scrubTotals(status.reports);
    const failed = totals.disagreements > totals.repaired || totals.errors > 0;
    if (json) {
      output.out(JSON.stringify({ ...status, totals }, null, 2));
      return failed ? 1 : 0;
    }
    output.out(
      `scrub ${id}: ${totals.hosts} host(s), ${totals.pgs} PGs, ${totals.objects} objects compared, ` +
        `${totals.disagreements} disagreements, ${totals.repaired} repaired, ${totals.errors} errors`,
    );
    for (const example of totals.examples) output.out(`  ${example}`);
    if (failed) output.err('cistern: scrub found replicas it could not make identical');
    return failed ? 1 : 0;
  },
};
