// Proves startDaemon's sequencing in-process over a fake store: admin.json names the
// ports that serve and an AdminClient built from it works; a start that fails at any
// step (the store will not open, the admin port is taken) undoes the steps before it —
// store closed, no admin.json, lock released; and a stop whose datastore close fails
// still removes admin.json and the lock, then reports the failure.

import { strict as assert } from 'node:assert';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { afterEach, beforeEach, test } from 'node:test';
import { startDaemon, DaemonOptions } from '../../src/daemon/daemon';
import { ADMIN_FILE_NAME, PID_FILE_NAME, readAdminFile } from '../../src/daemon/data-dir';
import { CisternError, isCisternError } from '../../src/util/errors';
import { AdminClient } from '../../tools/admin-client';
import { FakeStore } from './fake-store';
import { tempDir } from './helpers';

let dir: string;
let events: string[];

beforeEach(() => {
  dir = tempDir('lifecycle');
  events = [];
});

afterEach(() => {
  fs.rmSync(dir, { recursive: true, force: true });
});

function options(store: FakeStore, extra: Partial<DaemonOptions> = {}): DaemonOptions {
  return {
    dataDir: dir,
    disks: [],
    nbd: { host: '127.0.0.1', port: 0 },
    admin: { host: '127.0.0.1', port: 0 },
    log: (event) => events.push(event),
    openStore: async () => store,
    ...extra,
  };
}

function leftovers(): string[] {
  return [ADMIN_FILE_NAME, PID_FILE_NAME].filter((name) => fs.existsSync(path.join(dir, name)));
}

test('admin.json names the serving ports, and a client built from it works', async () => {
  const store = new FakeStore();
  const daemon = await startDaemon(options(store));
  try {
    const file = readAdminFile(dir);
    assert.equal(file?.address, `127.0.0.1:${daemon.adminAddress.port}`);
    assert.equal(file?.nbd, `127.0.0.1:${daemon.nbdAddress.port}`);
    assert.equal(file?.pid, process.pid);
    const client = AdminClient.forDataDir(dir);
    await client.createVolume({ name: 'v', sizeBytes: 4096 });
    assert.deepEqual(
      (await client.listVolumes()).map((v) => v.name),
      ['v'],
    );
    await assert.rejects(client.volumeInfo('nope'), (error) =>
      isCisternError(error, 'UNKNOWN_VOLUME'),
    );
    assert.ok(events.indexOf('admin.listening') < events.indexOf('daemon.ready'));
  } finally {
    await daemon.stop();
  }
  assert.deepEqual(leftovers(), []);
  assert.equal(store.closed, true);
  assert.equal(events.at(-1), 'daemon.stopped');
});

test('a store that will not open fails the start and releases the lock', async () => {
  const failure = new CisternError('EIO', 'no disk could be opened');
  await assert.rejects(
    startDaemon(
      options(new FakeStore(), {
        openStore: async () => {
          throw failure;
        },
      }),
    ),
    (error) => error === failure,
  );
  assert.deepEqual(leftovers(), []);
  assert.ok(events.includes('daemon.start_failed'));
});

test('an admin port in use fails the start, closes the store and releases the lock', async () => {
  const blocker = net.createServer();
  await new Promise<void>((resolve) => blocker.listen(0, '127.0.0.1', resolve));
  const port = (blocker.address() as net.AddressInfo).port;
  const store = new FakeStore();
  try {
    await assert.rejects(
      startDaemon(options(store, { admin: { host: '127.0.0.1', port } })),
      (error) => isCisternError(error, 'UNAVAILABLE') && /--admin/.test(error.message),
    );
  } finally {
    blocker.close();
  }
  assert.equal(store.closed, true);
  assert.deepEqual(leftovers(), []);
});

test('a stop whose datastore close fails still removes admin.json and the lock', async () => {
  const store = new FakeStore();
  const failure = new CisternError('EIO', 'flush failed');
  store.close = async () => {
    throw failure;
  };
  const daemon = await startDaemon(options(store));
  await assert.rejects(daemon.stop(), (error) => error === failure);
  assert.deepEqual(leftovers(), []);
  assert.ok(events.includes('datastore.stop_failed'));
  assert.ok(!events.includes('daemon.stopped'));
});
