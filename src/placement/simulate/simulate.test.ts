// Proves the placement simulator measures what it claims, at a scale CI can afford:
// its report has every field `--json` promises, straw2 moves nothing between
// uninvolved disks when a host is removed or a disk reweighted, moves about the ideal
// share when a host is added, the balancer meets its goal, and the baselines behave
// as their designs predict (modulo reshuffles almost everything on a host change).

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { simulate } from './simulate';
import { fillHistogramSvg } from './plot';

const report = simulate({
  hosts: 24,
  disksPerHost: 4,
  racks: 4,
  pgsPerDisk: 100,
  lookups: 100_000,
  objectsHashedMax: 1 << 20,
});

test('the report has every field the JSON output promises', () => {
  for (const path of [
    'disks',
    'pgs',
    'balance.maxOverMean',
    'balanced.maxOverMean',
    'addHost.movedFraction',
    'addHost.idealFraction',
    'removeHost.movedFraction',
    'removeHost.idealFraction',
    'removeHost.movedBetweenOthers',
    'reweight.movedBetweenOthers',
    'failHost.fanOutDisks',
    'lookupsPerSecond',
    'recomputeMs',
    'baselines.ring.balance.maxOverMean',
    'baselines.ring.addHost.movedFraction',
    'baselines.modulo.removeHost.movedFraction',
  ]) {
    const value = path
      .split('.')
      .reduce<unknown>((node, key) => (node as Record<string, unknown>)[key], report);
    assert.equal(typeof value, 'number', `${path} is ${String(value)}`);
    assert.ok(Number.isFinite(value as number), `${path} is not finite`);
  }
  assert.equal(report.disks, 96);
  assert.equal(report.pgs, 4096);
});

test('straw2 moves nothing between uninvolved disks, and about the ideal share on add', () => {
  assert.equal(report.removeHost.movedBetweenOthers, 0);
  assert.equal(report.reweight.movedBetweenOthers, 0);
  assert.equal(report.addHost.movedBetweenOthers, 0);
  assert.ok(
    report.addHost.overIdeal > 0.8 && report.addHost.overIdeal < 1.2,
    `add/ideal ${report.addHost.overIdeal}`,
  );
  assert.ok(
    report.balanced.removeHost.movedBetweenOthers === 0,
    'carried balancer items move nothing between others',
  );
});

test('the balancer evens out fill and the population fills the cluster as asked', () => {
  assert.ok(report.balance.maxOverMean > report.balanced.maxOverMean);
  assert.ok(report.balanced.maxOverMean <= 1.03, `balanced ${report.balanced.maxOverMean}`);
  const raw = report.disks * report.parameters.diskSizeBytes;
  const filled = (report.population.writtenBytes * report.parameters.size) / raw;
  assert.ok(Math.abs(filled - 0.7) < 0.01, `population fills ${filled} of raw`);
  assert.ok(report.population.volumes > 10);
});

test('the baselines behave as their designs predict', () => {
  assert.ok(
    report.baselines.modulo.addHost.movedFraction > 0.5,
    'modulo reshuffles on a host change',
  );
  assert.equal(report.baselines.ring.removeHost.movedBetweenOthers, 0);
  assert.ok(
    report.failHost.fanOutDisks > 0 && report.failHost.fanOutDisks <= report.failHost.otherDisks,
  );
});

test('the plot is an SVG with one panel per placement', () => {
  const svg = fillHistogramSvg('t', [
    { label: 'a', values: report.fill.straw2 },
    { label: 'b', values: report.fill.ring },
  ]);
  assert.match(svg, /^<svg /);
  assert.equal(svg.match(/disks<\/text>|disks,/g)?.length, 2);
});
