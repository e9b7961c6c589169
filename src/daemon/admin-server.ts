// The admin API: JSON over HTTP on loopback, one route per DatastoreAdmin call. Every
// request must carry `Authorization: Bearer <token>` (the token the daemon wrote to
// admin.json, mode 0600); the comparison is constant-time. Request bodies are bounded,
// requests with an Origin header (a web page, never our CLI) are refused so a browser
// on this host cannot be used against the API, and every error becomes one JSON body
// `{ "error": { "code", "message" } }` whose code the CLI turns back into a CisternError.

import crypto from 'node:crypto';
import http from 'node:http';
import { assert } from '../util/assert';
import { CisternError, CisternErrorCode, isCisternError } from '../util/errors';
import { failureDomains, FailureDomain } from '../placement/map';
import {
  CreatePoolRequest,
  CreateVolumeRequest,
  DatastoreAdmin,
  POOL_NAME_PATTERN,
  StatusReport,
  VOLUME_NAME_PATTERN,
} from '../volume/admin';
import type { AccessChange } from '../cluster/iscsi-access';
import { HostPort } from './address';
import { Log } from './log';

export const ADMIN_DEFAULT_HOST = '127.0.0.1';
export const ADMIN_DEFAULT_PORT = 10810;
/** Largest request body: the biggest real request (create pool) is under 200 bytes. */
export const ADMIN_BODY_MAX_BYTES = 64 * 1024;
/** Concurrent admin connections; the CLI uses one per command. */
export const ADMIN_CONNECTIONS_MAX = 64;
/** A client must send its headers by then (slow-loris guard)... */
export const ADMIN_HEADERS_TIMEOUT_MS = 10_000;
/** ...and its whole request by then. The response may take longer (removing a big volume). */
export const ADMIN_REQUEST_TIMEOUT_MS = 30_000;
/** On close(), how long running requests get to finish before their sockets are cut. */
export const ADMIN_SHUTDOWN_GRACE_MS = 10_000;

/** The one place error codes become HTTP statuses. */
export function httpStatusForCode(code: CisternErrorCode): number {
  switch (code) {
    case 'EINVAL':
    case 'BAD_REQUEST':
      return 400;
    case 'ENOENT':
    case 'UNKNOWN_VOLUME':
    case 'UNKNOWN_POOL':
      return 404;
    case 'EEXIST':
    case 'EPERM': // a volume in use: the request conflicts with the current state
    case 'EROFS':
    case 'PLACEMENT_IMPOSSIBLE':
      return 409;
    case 'ENOSPC':
      return 507;
    case 'ENOTSUP':
      return 501;
    case 'UNAVAILABLE':
    case 'UNREACHABLE':
    case 'CLOSED':
      return 503;
    case 'EIO':
    case 'CORRUPT':
    case 'STALE_EPOCH':
      return 500;
  }
}

export interface ErrorBody {
  error: { code: string; message: string };
}

export interface AdminServerOptions {
  token: string;
  log: Log;
  /** Added to GET /v1/status when the datastore does not know it (it does not run NBD). */
  nbdAddress?: string;
  /** The same for the iSCSI portal, when the daemon serves iSCSI. */
  iscsiAddress?: string;
}

type Handler = (request: ApiRequest) => Promise<{ status: number; body: unknown }>;

interface ApiRequest {
  params: string[];
  query: URLSearchParams;
  body: unknown;
}

interface Route {
  method: string;
  pattern: RegExp;
  handler: Handler;
}

class HttpError extends Error {
  constructor(
    readonly status: number,
    readonly code: string,
    message: string,
  ) {
    super(message);
  }
}

export class AdminServer {
  private readonly server: http.Server;
  private readonly routes: Route[];
  private readonly tokenDigest: Buffer;
  private closing: Promise<void> | undefined;

  constructor(
    private readonly admin: DatastoreAdmin,
    private readonly options: AdminServerOptions,
  ) {
    assert(/^[0-9a-f]{32,}$/.test(options.token), 'admin token must be at least 16 random bytes');
    this.tokenDigest = digest(options.token);
    this.routes = this.buildRoutes();
    this.server = http.createServer((request, response) => {
      void this.handle(request, response);
    });
    this.server.maxConnections = ADMIN_CONNECTIONS_MAX;
    this.server.headersTimeout = ADMIN_HEADERS_TIMEOUT_MS;
    this.server.requestTimeout = ADMIN_REQUEST_TIMEOUT_MS;
  }

  /** Listens; port 0 picks a free one. Resolves to the address actually bound. */
  listen(host: string, port: number): Promise<HostPort> {
    assert(this.closing === undefined, 'listen after close');
    return new Promise((resolve, reject) => {
      this.server.once('error', reject);
      this.server.listen(port, host, () => {
        this.server.off('error', reject);
        this.server.on('error', (error) => this.options.log('admin.error', { error }));
        const address = this.server.address();
        assert(address !== null && typeof address === 'object', 'admin listener has no address');
        resolve({ host: address.address, port: address.port });
      });
    });
  }

  /** Stops accepting; running requests get a grace period, then their sockets are cut. */
  close(): Promise<void> {
    this.closing ??= new Promise<void>((resolve) => {
      if (!this.server.listening) return resolve();
      const grace = setTimeout(() => this.server.closeAllConnections(), ADMIN_SHUTDOWN_GRACE_MS);
      this.server.close(() => {
        clearTimeout(grace);
        resolve();
      });
      this.server.closeIdleConnections();
    });
    return this.closing;
  }

  private buildRoutes(): Route[] {
    const admin = this.admin;
    const volume = '/v1/volumes/([^/]+)';
    return [
      { method: 'GET', pattern: /^\/v1\/status$/, handler: async () => ok(await this.status()) },
      { method: 'GET', pattern: /^\/v1\/pools$/, handler: async () => ok(await admin.listPools()) },
      {
        method: 'POST',
        pattern: /^\/v1\/pools$/,
        handler: async ({ body }) => created(await admin.createPool(createPoolRequest(body))),
      },
      {
        method: 'GET',
        pattern: /^\/v1\/volumes$/,
        handler: async () => ok(await admin.listVolumes()),
      },
      {
        method: 'POST',
        pattern: /^\/v1\/volumes$/,
        handler: async ({ body }) => created(await admin.createVolume(createVolumeRequest(body))),
      },
      {
        method: 'GET',
        pattern: new RegExp(`^${volume}$`),
        handler: async ({ params }) => ok(await admin.volumeInfo(volumeName(params[0]))),
      },
      {
        method: 'DELETE',
        pattern: new RegExp(`^${volume}$`),
        handler: async ({ params, query }) => {
          await admin.removeVolume(volumeName(params[0]), { force: flag(query, 'force') });
          return ok({ removed: volumeName(params[0]) });
        },
      },
      {
        method: 'POST',
        pattern: new RegExp(`^${volume}/resize$`),
        handler: async ({ params, body }) => {
          const request = resizeRequest(body);
          const info = await admin.resizeVolume(volumeName(params[0]), request.sizeBytes, {
            allowShrink: request.allowShrink,
          });
          return ok(info);
        },
      },
      {
        method: 'POST',
        pattern: new RegExp(`^${volume}/access$`),
        handler: async ({ params, body }) =>
          ok(await accessAdmin(admin)(volumeName(params[0]), accessChange(body))),
      },
      // Scrub: a request recorded for every daemon, then polled until all have reported.
      {
        method: 'POST',
        pattern: /^\/v1\/scrub$/,
        handler: async ({ body }) => created(await scrubAdmin(admin).requestScrub(scrubPool(body))),
      },
      {
        method: 'GET',
        pattern: /^\/v1\/scrub\/([0-9]{1,15})$/,
        handler: async ({ params }) => ok(await scrubAdmin(admin).scrubStatus(Number(params[0]))),
      },
    ];
  }

  private async status(): Promise<StatusReport> {
    let report = await this.admin.status();
    if (report.nbd === undefined && this.options.nbdAddress !== undefined) {
      report = { ...report, nbd: this.options.nbdAddress };
    }
    if (report.iscsi === undefined && this.options.iscsiAddress !== undefined) {
      report = { ...report, iscsi: this.options.iscsiAddress };
    }
    return report;
  }

  private async handle(
    request: http.IncomingMessage,
    response: http.ServerResponse,
  ): Promise<void> {
    const started = Date.now();
    let status = 500;
    let body: unknown;
    try {
      // Authenticate before reading a byte of the body.
      if (request.headers.origin !== undefined) {
        throw new HttpError(403, 'EPERM', 'requests from web pages are refused');
      }
      if (!this.authorized(request.headers.authorization)) {
        throw new HttpError(401, 'EPERM', 'missing or wrong admin token');
      }
      const url = new URL(request.url ?? '/', 'http://admin');
      const { route, params } = this.match(request.method ?? 'GET', url.pathname);
      const requestBody = await readJsonBody(request);
      ({ status, body } = await route.handler({
        params,
        query: url.searchParams,
        body: requestBody,
      }));
    } catch (error) {
      ({ status, body } = errorResponse(error));
      if (status === 500) this.options.log('admin.internal_error', { error: stackOf(error) });
    }
    const text = JSON.stringify(body) + '\n';
    response.writeHead(status, {
      'content-type': 'application/json; charset=utf-8',
      'content-length': Buffer.byteLength(text),
      'cache-control': 'no-store',
      ...(status === 401 ? { 'www-authenticate': 'Bearer' } : {}),
      // A body we refused to read must not be parsed as the next request.
      ...(status === 413 ? { connection: 'close' } : {}),
    });
    response.end(text);
    const method = request.method ?? '?';
    if (method !== 'GET' || status >= 400) {
      this.options.log('admin.request', {
        method,
        path: request.url,
        status,
        ms: Date.now() - started,
      });
    }
  }

  private authorized(header: string | undefined): boolean {
    const match = /^Bearer\s+(\S+)\s*$/i.exec(header ?? '');
    // Comparing fixed-length digests keeps the time independent of where they differ
    // and of the presented token's length.
    return crypto.timingSafeEqual(digest(match?.[1] ?? ''), this.tokenDigest) && match !== null;
  }

  private match(method: string, pathname: string): { route: Route; params: string[] } {
    let pathMatched = false;
    for (const route of this.routes) {
      const found = route.pattern.exec(pathname);
      if (!found) continue;
      pathMatched = true;
      if (route.method !== method) continue;
      return { route, params: found.slice(1).map(decodeSegment) };
    }
    if (pathMatched) throw new HttpError(405, 'EINVAL', `${method} is not allowed on ${pathname}`);
    throw new HttpError(404, 'ENOENT', `no API route ${pathname}`);
  }
}

function digest(text: string): Buffer {
  return crypto.createHash('sha256').update(text).digest();
}

function ok(body: unknown): { status: number; body: unknown } {
  return { status: 200, body };
}

function created(body: unknown): { status: number; body: unknown } {
  return { status: 201, body };
}

function stackOf(error: unknown): string {
  return error instanceof Error ? (error.stack ?? error.message) : String(error);
}

export function errorResponse(error: unknown): { status: number; body: ErrorBody } {
  if (error instanceof HttpError) {
    return { status: error.status, body: { error: { code: error.code, message: error.message } } };
  }
  if (isCisternError(error)) {
    return {
      status: httpStatusForCode(error.code),
      body: { error: { code: error.code, message: error.message } },
    };
  }
  // A bug: say so without the stack (that goes to the daemon's log).
  const message = `internal error in the daemon: ${error instanceof Error ? error.message : String(error)}`;
  return { status: 500, body: { error: { code: 'EIO', message } } };
}

function decodeSegment(segment: string): string {
  try {
    return decodeURIComponent(segment);
  } catch {
    throw new CisternError('EINVAL', `bad URL segment "${segment}"`);
  }
}

function readJsonBody(request: http.IncomingMessage): Promise<unknown> {
  const declared = Number(request.headers['content-length'] ?? 0);
  // Refused unread: the response closes the connection, so the rest is never parsed.
  if (declared > ADMIN_BODY_MAX_BYTES) return Promise.reject(tooLarge());
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let received = 0;
    let failed = false;
    request.on('data', (chunk: Buffer) => {
      if (failed) return;
      received += chunk.length;
      if (received > ADMIN_BODY_MAX_BYTES) {
        failed = true;
        chunks.length = 0;
        reject(tooLarge());
        return;
      }
      chunks.push(chunk);
    });
    request.on('error', (error) => {
      failed = true;
      reject(error);
    });
    request.on('end', () => {
      if (failed) return;
      if (received === 0) return resolve(undefined);
      try {
        resolve(JSON.parse(Buffer.concat(chunks).toString('utf8')));
      } catch {
        reject(new CisternError('EINVAL', 'request body is not JSON'));
      }
    });
  });
}

function tooLarge(): HttpError {
  return new HttpError(413, 'EINVAL', `request body over ${ADMIN_BODY_MAX_BYTES} bytes`);
}

// Request validation: shapes and names here, meaning (does the pool exist, is there room)
// in the datastore.

function objectBody(body: unknown): Record<string, unknown> {
  if (typeof body !== 'object' || body === null || Array.isArray(body)) {
    throw new CisternError('EINVAL', 'request body must be a JSON object');
  }
  return body as Record<string, unknown>;
}

function name(value: unknown, what: string, pattern: RegExp): string {
  if (typeof value !== 'string' || !pattern.test(value)) {
    throw new CisternError(
      'EINVAL',
      `${what} name must be 1-64 letters, digits, '.', '_' or '-' (not first), got ${JSON.stringify(value)}`,
    );
  }
  return value;
}

function volumeName(value: unknown): string {
  return name(value, 'volume', VOLUME_NAME_PATTERN);
}

function positiveInteger(value: unknown, what: string): number {
  if (typeof value !== 'number' || !Number.isSafeInteger(value) || value <= 0) {
    throw new CisternError('EINVAL', `${what} must be a positive whole number`);
  }
  return value;
}

function optionalPositiveInteger(value: unknown, what: string): number | undefined {
  return value === undefined ? undefined : positiveInteger(value, what);
}

function flag(query: URLSearchParams, key: string): boolean {
  const value = query.get(key);
  return value === 'true' || value === '1';
}

function createPoolRequest(body: unknown): CreatePoolRequest {
  const fields = objectBody(body);
  const failureDomain = fields['failureDomain'];
  if (failureDomain !== undefined && !failureDomains.includes(failureDomain as FailureDomain)) {
    throw new CisternError('EINVAL', `failureDomain must be one of ${failureDomains.join(', ')}`);
  }
  return {
    name: name(fields['name'], 'pool', POOL_NAME_PATTERN),
    size: positiveInteger(fields['size'], 'size'),
    minSize: optionalPositiveInteger(fields['minSize'], 'minSize'),
    failureDomain: failureDomain as FailureDomain | undefined,
    pgCount: optionalPositiveInteger(fields['pgCount'], 'pgCount'),
  };
}

function createVolumeRequest(body: unknown): CreateVolumeRequest {
  const fields = objectBody(body);
  const pool = fields['pool'];
  return {
    name: volumeName(fields['name']),
    sizeBytes: positiveInteger(fields['sizeBytes'], 'sizeBytes'),
    pool: pool === undefined ? undefined : name(pool, 'pool', POOL_NAME_PATTERN),
  };
}

function scrubPool(body: unknown): string | undefined {
  if (body === undefined) return undefined;
  const pool = objectBody(body)['pool'];
  return pool === undefined ? undefined : name(pool, 'pool', POOL_NAME_PATTERN);
}

/** The scrub calls of a store that has them; ENOTSUP from one without replicas. */
function scrubAdmin(
  admin: DatastoreAdmin,
): Required<Pick<DatastoreAdmin, 'requestScrub' | 'scrubStatus'>> {
  const { requestScrub, scrubStatus } = admin;
  if (!requestScrub || !scrubStatus)
    throw new CisternError('ENOTSUP', 'this datastore has no scrub');
  return { requestScrub: requestScrub.bind(admin), scrubStatus: scrubStatus.bind(admin) };
}

/** The access call of a store that has one; ENOTSUP from one without iSCSI. */
function accessAdmin(admin: DatastoreAdmin): NonNullable<DatastoreAdmin['setVolumeAccess']> {
  const { setVolumeAccess } = admin;
  if (!setVolumeAccess)
    throw new CisternError('ENOTSUP', 'this datastore has no iSCSI access rules');
  return setVolumeAccess.bind(admin);
}

/** Longest string the access body may carry: names and secrets are bounded far below. */
const ACCESS_STRING_MAX_BYTES = 1024;

function accessString(value: unknown, what: string): string {
  if (typeof value !== 'string' || value === '' || value.length > ACCESS_STRING_MAX_BYTES) {
    throw new CisternError('EINVAL', `${what} must be a non-empty string`);
  }
  return value;
}

function accessNames(value: unknown, what: string): string[] | undefined {
  if (value === undefined) return undefined;
  if (!Array.isArray(value)) throw new CisternError('EINVAL', `${what} must be a list of names`);
  return value.map((name) => accessString(name, `each of ${what}`));
}

function credentials(
  value: unknown,
  what: string,
): { user: string; secret: string } | null | undefined {
  if (value === undefined || value === null) return value;
  const fields = objectBody(value);
  return {
    user: accessString(fields['user'], `${what}.user`),
    secret: accessString(fields['secret'], `${what}.secret`),
  };
}

/** Shapes only; what the names and secrets must look like is the mutation's to judge. */
function accessChange(body: unknown): AccessChange {
  const fields = objectBody(body);
  const allowAny = fields['allowAny'];
  if (allowAny !== undefined && typeof allowAny !== 'boolean') {
    throw new CisternError('EINVAL', 'allowAny must be true or false');
  }
  const change: AccessChange = {};
  const allow = accessNames(fields['allow'], 'allow');
  const deny = accessNames(fields['deny'], 'deny');
  const chap = credentials(fields['chap'], 'chap');
  const mutual = credentials(fields['mutual'], 'mutual');
  if (allow !== undefined) change.allow = allow;
  if (deny !== undefined) change.deny = deny;
  if (allowAny !== undefined) change.allowAny = allowAny;
  if (chap !== undefined) change.chap = chap;
  if (mutual !== undefined) change.mutual = mutual;
  return change;
}

function resizeRequest(body: unknown): { sizeBytes: number; allowShrink: boolean } {
  const fields = objectBody(body);
  const allowShrink = fields['allowShrink'] ?? false;
  if (typeof allowShrink !== 'boolean') {
    throw new CisternError('EINVAL', 'allowShrink must be true or false');
  }
  return { sizeBytes: positiveInteger(fields['sizeBytes'], 'sizeBytes'), allowShrink };
}
