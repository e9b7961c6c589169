// Proves the admin API's guard and contract: a request without the bearer token, with a
// wrong one or from a web page (Origin header) is refused before any datastore call;
// every CisternError code maps to its HTTP status with a `{ error: { code, message } }`
// body (and a bug to a 500 that leaks no stack); bodies over the bound are refused with
// 413 whether announced by Content-Length or streamed; unknown routes and methods get
// 404/405; and the routes reach the datastore with the validated arguments.

import { strict as assert } from 'node:assert';
import http from 'node:http';
import { after, before, beforeEach, test } from 'node:test';
import {
  ADMIN_BODY_MAX_BYTES,
  AdminServer,
  httpStatusForCode,
} from '../../src/daemon/admin-server';
import { newAdminToken } from '../../src/daemon/data-dir';
import { CisternError, CisternErrorCode } from '../../src/util/errors';
import { FakeStore } from './fake-store';

let store: FakeStore;
let server: AdminServer;
let port: number;
const token = newAdminToken();
const logged: string[] = [];

before(async () => {
  store = new FakeStore();
  server = new AdminServer(store, {
    token,
    log: (event) => logged.push(event),
    nbdAddress: '127.0.0.1:10809',
  });
  port = (await server.listen('127.0.0.1', 0)).port;
});

after(async () => {
  await server.close();
});

beforeEach(() => {
  store.calls.length = 0;
  store.failNext = undefined;
});

interface Reply {
  status: number;
  headers: http.IncomingHttpHeaders;
  body: any; // parsed JSON; each test checks the fields it needs
}

function call(
  method: string,
  path: string,
  options: {
    body?: string | Buffer;
    auth?: string | null;
    headers?: http.OutgoingHttpHeaders;
  } = {},
): Promise<Reply> {
  const auth = options.auth === undefined ? `Bearer ${token}` : options.auth;
  return new Promise((resolve, reject) => {
    const request = http.request(
      {
        host: '127.0.0.1',
        port,
        method,
        path,
        agent: false,
        headers: { ...(auth === null ? {} : { authorization: auth }), ...options.headers },
      },
      (response) => {
        const chunks: Buffer[] = [];
        response.on('data', (chunk: Buffer) => chunks.push(chunk));
        response.on('end', () => {
          const text = Buffer.concat(chunks).toString('utf8');
          resolve({
            status: response.statusCode ?? 0,
            headers: response.headers,
            body: JSON.parse(text),
          });
        });
      },
    );
    // The server may answer (413) and close before taking the whole body.
    request.on('error', reject);
    request.end(options.body);
  });
}

function json(method: string, path: string, value: unknown): Promise<Reply> {
  return call(method, path, {
    body: JSON.stringify(value),
    headers: { 'content-type': 'application/json' },
  });
}

test('no token, a wrong token, a token prefix and a wrong scheme get 401 and reach nothing', async () => {
  const attempts: Array<string | null> = [
    null,
    'Bearer',
    `Bearer ${newAdminToken()}`,
    `Bearer ${token.slice(0, 32)}`,
    `Bearer ${token}x`,
    `Basic ${token}`,
    token,
  ];
  for (const auth of attempts) {
    const reply = await call('GET', '/v1/status', { auth });
    assert.equal(reply.status, 401, `auth ${auth}`);
    assert.equal(reply.headers['www-authenticate'], 'Bearer');
    assert.equal(reply.body.error.code, 'EPERM');
  }
  // Also before the body is read or the route is looked at.
  assert.equal((await call('POST', '/v1/volumes', { auth: null, body: '{' })).status, 401);
  assert.equal((await call('GET', '/nowhere', { auth: null })).status, 401);
  assert.deepEqual(store.calls, []);
});

test('the right token is accepted; status carries the NBD address', async () => {
  const reply = await call('GET', '/v1/status');
  assert.equal(reply.status, 200);
  assert.equal(reply.body.health, 'ok');
  assert.equal(reply.body.nbd, '127.0.0.1:10809');
  assert.deepEqual(store.calls, ['status']);
});

test('a request from a web page (Origin header) is refused even with the token', async () => {
  const reply = await call('GET', '/v1/status', { headers: { origin: 'http://evil.example' } });
  assert.equal(reply.status, 403);
  assert.deepEqual(store.calls, []);
});

test('volume and pool routes create, list, show, resize and remove', async () => {
  const created = await json('POST', '/v1/volumes', { name: 'a', sizeBytes: 1 << 20 });
  assert.equal(created.status, 201);
  assert.equal(created.body.name, 'a');
  assert.equal((await call('GET', '/v1/volumes')).body.length, 1);
  assert.equal((await call('GET', '/v1/volumes/a')).body.sizeBytes, 1 << 20);
  const grown = await json('POST', '/v1/volumes/a/resize', { sizeBytes: 2 << 20 });
  assert.equal(grown.status, 200);
  assert.equal(grown.body.sizeBytes, 2 << 20);
  const shrink = await json('POST', '/v1/volumes/a/resize', { sizeBytes: 1 << 20 });
  assert.equal(shrink.status, 400);
  const shrunk = await json('POST', '/v1/volumes/a/resize', {
    sizeBytes: 1 << 20,
    allowShrink: true,
  });
  assert.equal(shrunk.body.sizeBytes, 1 << 20);
  store.volumes.get('a')!.openHandles = 1;
  assert.equal((await call('DELETE', '/v1/volumes/a')).status, 409);
  const removed = await call('DELETE', '/v1/volumes/a?force=true');
  assert.equal(removed.status, 200);
  assert.deepEqual(removed.body, { removed: 'a' });
  const pool = await json('POST', '/v1/pools', {
    name: 'fast',
    size: 3,
    minSize: 2,
    failureDomain: 'disk',
    pgCount: 32,
  });
  assert.equal(pool.status, 201);
  assert.equal(pool.body.pgCount, 32);
  const pools = await call('GET', '/v1/pools');
  assert.deepEqual(
    pools.body.map((p: { name: string }) => p.name),
    ['default', 'fast'],
  );
});

test('each error code becomes its HTTP status with a JSON error body', async () => {
  const expected: Array<[CisternErrorCode, number]> = [
    ['EINVAL', 400],
    ['UNKNOWN_VOLUME', 404],
    ['UNKNOWN_POOL', 404],
    ['ENOENT', 404],
    ['EEXIST', 409],
    ['EPERM', 409],
    ['ENOSPC', 507],
    ['UNAVAILABLE', 503],
    ['EIO', 500],
    ['CORRUPT', 500],
  ];
  for (const [code, status] of expected) {
    assert.equal(httpStatusForCode(code), status, code);
    store.failNext = new CisternError(code, `injected ${code}`);
    const reply = await call('GET', '/v1/volumes');
    assert.equal(reply.status, status, code);
    assert.deepEqual(reply.body, { error: { code, message: `injected ${code}` } });
  }
});

test('a bug in the datastore is a 500 whose body names no stack, and is logged', async () => {
  store.failNext = new TypeError('cannot read properties of undefined');
  const reply = await call('GET', '/v1/pools');
  assert.equal(reply.status, 500);
  assert.equal(reply.body.error.code, 'EIO');
  assert.match(reply.body.error.message, /internal error.*cannot read properties/);
  assert.doesNotMatch(reply.body.error.message, /at .*\.js/);
  assert.ok(logged.includes('admin.internal_error'));
});

test('malformed requests are 400 before reaching the datastore', async () => {
  const bad: Array<[string, string, string]> = [
    ['POST', '/v1/volumes', '{not json'],
    ['POST', '/v1/volumes', '[1]'],
    ['POST', '/v1/volumes', JSON.stringify({ name: '../etc', sizeBytes: 1 })],
    ['POST', '/v1/volumes', JSON.stringify({ name: 'v', sizeBytes: -1 })],
    ['POST', '/v1/volumes', JSON.stringify({ name: 'v', sizeBytes: 1.5 })],
    ['POST', '/v1/volumes', JSON.stringify({ name: 'v', sizeBytes: '10G' })],
    ['POST', '/v1/pools', JSON.stringify({ name: 'p', size: 2, failureDomain: 'row' })],
    ['POST', '/v1/pools', JSON.stringify({ name: 'p' })],
    ['POST', '/v1/volumes/a/resize', JSON.stringify({ sizeBytes: 1, allowShrink: 'yes' })],
    ['GET', '/v1/volumes/%E0%A4%A', ''],
  ];
  for (const [method, path, body] of bad) {
    const reply = await call(method, path, { body });
    assert.equal(reply.status, 400, `${method} ${path} ${body}`);
    assert.equal(reply.body.error.code, 'EINVAL');
  }
  assert.deepEqual(store.calls, []);
});

test('unknown routes are 404 and wrong methods 405', async () => {
  assert.equal((await call('GET', '/v2/status')).status, 404);
  assert.equal((await call('GET', '/v1/volumes/a/b/c')).status, 404);
  assert.equal((await call('DELETE', '/v1/status')).status, 405);
  assert.equal((await call('PUT', '/v1/volumes')).status, 405);
});

test('a body over the bound is refused with 413, announced or streamed', async () => {
  const big = Buffer.alloc(ADMIN_BODY_MAX_BYTES + 1, 0x20);
  const announced = await call('POST', '/v1/volumes', { body: big });
  assert.equal(announced.status, 413);
  assert.equal(announced.headers.connection, 'close');
  const streamed = await call('POST', '/v1/volumes', {
    body: big,
    headers: { 'transfer-encoding': 'chunked' },
  });
  assert.equal(streamed.status, 413);
  assert.deepEqual(store.calls, []);
  // Just under the bound is read and parsed (whitespace around a valid object).
  const padded = JSON.stringify({ name: 'padded', sizeBytes: 4096 });
  const fits = Buffer.concat([
    Buffer.from(padded),
    Buffer.alloc(ADMIN_BODY_MAX_BYTES - padded.length, 0x20),
  ]);
  const accepted = await call('POST', '/v1/volumes', { body: fits });
  assert.equal(accepted.status, 201);
});
