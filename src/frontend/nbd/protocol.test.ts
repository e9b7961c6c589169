// Proves the NBD codecs are exact inverses where both directions exist, that every
// decoder refuses malformed option data with BAD_REQUEST (never a RangeError from Buffer),
// that CisternError codes map to the spec's errno values in one table, and that block
// status descriptors are clipped, merged and bounded whatever the volume returns.

import { strict as assert } from 'node:assert';
import { test } from 'node:test';
import { CisternError, isCisternError } from '../../util/errors';
import { toDescriptors } from './connection';
import * as P from './protocol';

test('request header round-trips through encode and decode', () => {
  const request = {
    flags: P.NBD_CMD_FLAG_FUA,
    type: P.NBD_CMD_WRITE,
    cookie: 0xdeadbeefcafef00dn,
    offset: 2n ** 40n + 7n,
    length: 65536,
  };
  const bytes = P.encodeRequest(request);
  assert.equal(bytes.length, P.REQUEST_HEADER_BYTES);
  assert.deepEqual(P.decodeRequest(bytes), { magic: P.NBD_REQUEST_MAGIC, ...request });
});

test('NBD_OPT_GO data round-trips, and truncated or padded data is BAD_REQUEST', () => {
  const request = { exportName: 'vol-é', infoTypes: [P.NBD_INFO_NAME, P.NBD_INFO_BLOCK_SIZE] };
  const bytes = P.encodeInfoRequest(request);
  assert.deepEqual(P.decodeInfoRequest(bytes), request);
  for (let cut = 0; cut < bytes.length; cut += 1) {
    assert.throws(() => P.decodeInfoRequest(bytes.subarray(0, cut)), isBadRequest);
  }
  assert.throws(() => P.decodeInfoRequest(Buffer.concat([bytes, Buffer.from([0])])), isBadRequest);
});

test('export names longer than 4096 bytes, with NUL or invalid UTF-8 are refused', () => {
  const long = P.encodeInfoRequest({
    exportName: 'x'.repeat(P.MAX_STRING_BYTES + 1),
    infoTypes: [],
  });
  assert.throws(() => P.decodeInfoRequest(long), isBadRequest);
  assert.throws(() => P.decodeExportName(Buffer.from('a\0b')), isBadRequest);
  assert.throws(() => P.decodeExportName(Buffer.from([0xc3, 0x28])), isBadRequest);
  assert.equal(P.decodeExportName(Buffer.from('vol')), 'vol');
});

test('meta context requests round-trip and absurd query counts are refused', () => {
  const request = { exportName: 'v', queries: ['base:allocation', 'qemu:dirty-bitmap:x'] };
  assert.deepEqual(P.decodeMetaContextRequest(P.encodeMetaContextRequest(request)), request);
  const bogus = Buffer.alloc(8);
  bogus.writeUInt32BE(0, 0);
  bogus.writeUInt32BE(0xffffffff, 4); // four billion queries in eight bytes
  assert.throws(() => P.decodeMetaContextRequest(bogus), isBadRequest);
});

test('meta context matching: LIST with no query or the namespace lists base:allocation', () => {
  assert.deepEqual(P.matchMetaContexts([], true), [P.BASE_ALLOCATION]);
  assert.deepEqual(P.matchMetaContexts([], false), []);
  assert.deepEqual(P.matchMetaContexts(['base:'], true), [P.BASE_ALLOCATION]);
  assert.deepEqual(P.matchMetaContexts(['base:'], false), []);
  assert.deepEqual(P.matchMetaContexts(['base:allocation', 'base:allocation'], false), [
    P.BASE_ALLOCATION,
  ]);
  assert.deepEqual(P.matchMetaContexts(['qemu:dirty-bitmap:a'], false), []);
});

test('info replies decode what the server encodes', () => {
  assert.deepEqual(P.decodeInfoReply(P.encodeInfoExport(1 << 30, 0x1234)), {
    type: 'export',
    sizeBytes: 1 << 30,
    transmissionFlags: 0x1234,
  });
  const constraints = { minimumBytes: 1, preferredBytes: 4096, maximumBytes: 32 << 20 };
  assert.deepEqual(P.decodeInfoReply(P.encodeInfoBlockSize(constraints)), {
    type: 'block-size',
    constraints,
  });
  assert.deepEqual(P.decodeInfoReply(P.encodeInfoString(P.NBD_INFO_NAME, 'n')), {
    type: 'name',
    name: 'n',
  });
});

test('error chunks carry errno, a bounded message and an optional offset', () => {
  const chunk = P.encodeErrorChunk(9n, P.NBD_EIO, 'x'.repeat(10_000), 4096);
  const header = P.decodeChunkHeader(chunk);
  assert.equal(header.type, P.NBD_REPLY_TYPE_ERROR_OFFSET);
  assert.equal(header.flags, P.NBD_REPLY_FLAG_DONE);
  const payload = chunk.subarray(P.STRUCTURED_REPLY_HEADER_BYTES);
  assert.equal(payload.length, header.length);
  const decoded = P.decodeErrorPayload(header.type, payload);
  assert.equal(decoded.errno, P.NBD_EIO);
  assert.equal(decoded.offset, 4096);
  assert.equal(decoded.message.length, P.MAX_ERROR_MESSAGE_BYTES);
});

test('truncateUtf8 never cuts a character in half', () => {
  const text = 'é'.repeat(10); // two bytes each
  assert.equal(P.truncateUtf8(text, 5).toString('utf8'), 'éé');
  assert.equal(P.truncateUtf8(text, 100).length, 20);
});

test('CisternError codes map to the NBD errno values; unknown failures are EIO', () => {
  const cases: Array<[CisternError | Error, number]> = [
    [new CisternError('EIO', ''), P.NBD_EIO],
    [new CisternError('ENOSPC', ''), P.NBD_ENOSPC],
    [new CisternError('EROFS', ''), P.NBD_EPERM],
    [new CisternError('EPERM', ''), P.NBD_EPERM],
    [new CisternError('EINVAL', ''), P.NBD_EINVAL],
    [new CisternError('ENOTSUP', ''), P.NBD_ENOTSUP],
    [new CisternError('CLOSED', ''), P.NBD_ESHUTDOWN],
    [new CisternError('CORRUPT', ''), P.NBD_EIO],
    [new RangeError('Array buffer allocation failed'), P.NBD_ENOMEM],
    [new Error('anything'), P.NBD_EIO],
  ];
  for (const [error, errno] of cases) assert.equal(P.nbdErrnoFor(error), errno, error.message);
  assert.equal(new P.NbdRequestError(P.NBD_EPERM, 'x').code, 'EPERM');
  assert.equal(new P.NbdRequestError(P.NBD_ESHUTDOWN, 'x').code, 'CLOSED');
});

test('block status descriptors are clipped to the request, merged and bounded', () => {
  const extents = [
    { length: 4096, hole: true, zero: true },
    { length: 4096, hole: true, zero: true },
    { length: 0, hole: false, zero: false },
    { length: 8192, hole: false, zero: false },
    { length: 1 << 20, hole: true, zero: true },
  ];
  assert.deepEqual(toDescriptors(extents, 10_000, 100), [
    { length: 8192, flags: P.NBD_STATE_HOLE | P.NBD_STATE_ZERO },
    { length: 1808, flags: 0 },
  ]);
  assert.deepEqual(toDescriptors(extents, 1 << 30, 1), [
    { length: 8192, flags: P.NBD_STATE_HOLE | P.NBD_STATE_ZERO },
  ]);
  assert.throws(
    () => toDescriptors([], 4096, 10),
    (error) => isCisternError(error, 'EIO'),
  );
  assert.throws(
    () => toDescriptors([{ length: -1, hole: false, zero: false }], 4096, 10),
    (error) => isCisternError(error, 'EIO'),
  );
});

function isBadRequest(error: unknown): boolean {
  return isCisternError(error, 'BAD_REQUEST');
}
