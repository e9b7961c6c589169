// Proves the small formats the daemon's operators see and type: a log line is
// `ISO-time event key=value ...` with values quoted only when they must be (and bounded);
// the --json log is one parseable object per line; HOST:PORT parses IPv4, bracketed IPv6,
// a bare port and port 0, and refuses nonsense; wildcard binds are reached on loopback;
// `--disk PATH[:SIZE]` splits a size off a path only when it looks like one; and
// `--recovery-bandwidth`/`--scrub-bandwidth` become bytes per second within their bound.

import { strict as assert } from 'node:assert';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import {
  connectableAddress,
  formatHostPort,
  isLoopback,
  parseHostPort,
} from '../../src/daemon/address';
import { LOG_VALUE_MAX_CHARS, createLog, formatLogLine } from '../../src/daemon/log';
import { isCisternError } from '../../src/util/errors';
import {
  BACKGROUND_BANDWIDTH_MIB_PER_S_MAX,
  bandwidthOptions,
  daemon,
  parseDiskSpec,
} from '../../tools/commands/daemon';
import { parseArgs } from '../../tools/command';

const time = new Date('2026-11-26T05:00:00.000Z');

test('a log line is time, event, then key=value with quoting only where needed', () => {
  assert.equal(
    formatLogLine(time, 'nbd.listening', { address: '127.0.0.1:10809' }),
    '2026-11-26T05:00:00.000Z nbd.listening address=127.0.0.1:10809',
  );
  assert.equal(
    formatLogLine(time, 'disk.failed', {
      disk: 2,
      error: new Error('EIO on read'),
      up: false,
      info: { a: 1 },
    }),
    '2026-11-26T05:00:00.000Z disk.failed disk=2 error="EIO on read" up=false info="{\\"a\\":1}"',
  );
  const long = formatLogLine(time, 'x', { value: 'y'.repeat(LOG_VALUE_MAX_CHARS * 2) });
  assert.ok(long.length < LOG_VALUE_MAX_CHARS + 100);
  assert.equal(formatLogLine(time, 'two words'), '2026-11-26T05:00:00.000Z "two words"');
});

test('the JSON log writes one parseable object per line', () => {
  const lines: string[] = [];
  const log = createLog({ json: true, write: (line) => lines.push(line), now: () => time });
  log('daemon.ready', { nbd: '127.0.0.1:1', error: new Error('boom') });
  assert.equal(lines.length, 1);
  assert.deepEqual(JSON.parse(lines[0]!), {
    time: time.toISOString(),
    event: 'daemon.ready',
    nbd: '127.0.0.1:1',
    error: 'boom',
  });
});

test('HOST:PORT forms parse and print back', () => {
  assert.deepEqual(parseHostPort('127.0.0.1:10809', 'x'), { host: '127.0.0.1', port: 10809 });
  assert.deepEqual(parseHostPort('[::1]:0', 'x'), { host: '::1', port: 0 });
  assert.deepEqual(parseHostPort(':5', '127.0.0.1'), { host: '127.0.0.1', port: 5 });
  assert.deepEqual(parseHostPort('5', '127.0.0.1'), { host: '127.0.0.1', port: 5 });
  assert.equal(formatHostPort({ host: '::1', port: 7 }), '[::1]:7');
  for (const bad of ['', 'host', 'host:', 'host:70000', '::1:5', 'a:b:c', 'h:-1']) {
    assert.throws(
      () => parseHostPort(bad, '127.0.0.1'),
      (error) => isCisternError(error, 'EINVAL'),
      bad,
    );
  }
});

test('wildcard binds are reached on loopback; loopback is recognised', () => {
  assert.equal(connectableAddress({ host: '0.0.0.0', port: 1 }).host, '127.0.0.1');
  assert.equal(connectableAddress({ host: '::', port: 1 }).host, '::1');
  assert.equal(connectableAddress({ host: '10.0.0.1', port: 1 }).host, '10.0.0.1');
  assert.ok(isLoopback('127.0.0.1') && isLoopback('::1') && isLoopback('127.1.2.3'));
  assert.ok(!isLoopback('0.0.0.0') && !isLoopback('10.0.0.1'));
});

test('--disk PATH[:SIZE] splits off a size only when the suffix starts with a digit', () => {
  assert.deepEqual(parseDiskSpec('/dev/sdb'), { path: '/dev/sdb' });
  assert.deepEqual(parseDiskSpec('./d1.img:20G'), { path: './d1.img', sizeBytes: 20 * 2 ** 30 });
  // An existing path is taken whole even when it ends in ':digits'.
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'cistern-disk-spec-'));
  try {
    const device = path.join(dir, 'pci-0000:00:1f.2');
    fs.writeFileSync(device, '');
    assert.deepEqual(parseDiskSpec(device), { path: device });
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
  assert.deepEqual(parseDiskSpec('/dev/disk/by-id/wwn-x:abc'), {
    path: '/dev/disk/by-id/wwn-x:abc',
  });
  for (const bad of ['./d1.img:20X', './d1.img:0', '']) {
    assert.throws(
      () => parseDiskSpec(bad),
      (error) => isCisternError(error, 'EINVAL') && /--disk/.test(error.message),
      bad,
    );
  }
  assert.throws(
    () => parseDiskSpec('/missing/pci-0000:00:1f.2'),
    (error) => isCisternError(error, 'EINVAL') && /--disk/.test(error.message),
  );
});

test('--recovery-bandwidth and --scrub-bandwidth are MiB/s, positive and bounded', () => {
  const parse = (...argv: string[]) => bandwidthOptions(parseArgs(daemon, argv));
  assert.deepEqual(parse(), {});
  assert.deepEqual(parse('--recovery-bandwidth', '32', '--scrub-bandwidth', '0.5'), {
    recoveryBytesPerSecond: 32 * 2 ** 20,
    scrubBytesPerSecond: 2 ** 19,
  });
  for (const bad of ['0', '-1', `${BACKGROUND_BANDWIDTH_MIB_PER_S_MAX + 1}`]) {
    assert.throws(
      () => parse('--recovery-bandwidth', bad),
      (error) => isCisternError(error, 'EINVAL') && /--recovery-bandwidth/.test(error.message),
      bad,
    );
  }
});
