// Proves the CLI's contract: `--help` at every level explains, unknown commands and
// bad options fail with a clear line and exit code 2, and `placement simulate --json`
// prints one parseable object with the promised fields (through the real bin/cistern).

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

const bin = path.join(__dirname, '..', '..', '..', 'bin', 'cistern');

function cistern(...args: string[]): { code: number | null; stdout: string; stderr: string } {
  const result = spawnSync(process.execPath, [bin, ...args], { encoding: 'utf8' });
  return { code: result.status, stdout: result.stdout, stderr: result.stderr };
}

test('cistern --help lists the commands', () => {
  const result = cistern('--help');
  assert.equal(result.code, 0);
  assert.match(result.stdout, /placement simulate/);
});

test('a command --help shows its options with defaults', () => {
  const result = cistern('placement', 'simulate', '--help');
  assert.equal(result.code, 0);
  assert.match(result.stdout, /--hosts INTEGER\s+hosts in the cluster \(default 512\)/);
  assert.match(result.stdout, /--failure-domain/);
});

test('unknown commands and bad options exit 2 with one clear line', () => {
  assert.equal(cistern('frobnicate').code, 2);
  const bad = cistern('placement', 'simulate', '--hosts', 'many');
  assert.equal(bad.code, 2);
  assert.match(bad.stderr, /--hosts needs a whole number, got "many"/);
  const domain = cistern('placement', 'simulate', '--failure-domain', 'row');
  assert.equal(domain.code, 2);
  assert.match(domain.stderr, /must be one of disk, host, rack/);
  const impossible = cistern(
    'placement',
    'simulate',
    '--hosts',
    '2',
    '--racks',
    '1',
    '--size',
    '3',
  );
  assert.equal(impossible.code, 1);
  assert.match(impossible.stderr, /needs 3 distinct hosts/);
});

test('placement simulate --json and --plot at a small scale', () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'cistern-cli-'));
  try {
    const plot = path.join(dir, 'fill.svg');
    const result = cistern(
      'placement',
      'simulate',
      '--hosts',
      '16',
      '--racks',
      '4',
      '--disks-per-host',
      '2',
      '--json',
      '--plot',
      plot,
    );
    assert.equal(result.code, 0, result.stderr);
    const report = JSON.parse(result.stdout);
    assert.equal(report.disks, 32);
    assert.equal(report.removeHost.movedBetweenOthers, 0);
    assert.equal(typeof report.baselines.ring.addHost.movedFraction, 'number');
    assert.equal(typeof report.baselines.modulo.lookupsPerSecond, 'number');
    assert.match(fs.readFileSync(plot, 'utf8'), /<svg/);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});
