// Proves the cluster secret helpers: the secret file is created with mode 0600 and never
// overwritten, reads back to the same 32 bytes, and is refused when its group or others
// can read it or when it is not a secret file; the fingerprint is a fixed-length HMAC
// that differs between secrets and lets checkSecret tell the right secret from a wrong one.

import { strict as assert } from 'node:assert';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, test } from 'node:test';
import { isCisternError } from '../util/errors';
import {
  SECRET_BYTES,
  checkSecret,
  newSecret,
  readSecretFile,
  secretFingerprint,
  writeSecretFile,
} from './secret';

const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'cistern-secret-'));
after(() => fs.rmSync(dir, { recursive: true, force: true }));

test('the secret file is 0600, reads back, and is never overwritten', () => {
  const file = path.join(dir, 'a.secret');
  const secret = newSecret();
  assert.equal(secret.length, SECRET_BYTES);
  const umask = process.umask(0); // a permissive umask must not widen the file
  try {
    writeSecretFile(file, secret);
  } finally {
    process.umask(umask);
  }
  assert.equal(fs.statSync(file).mode & 0o777, 0o600);
  assert.deepEqual(readSecretFile(file), secret);
  assert.throws(
    () => writeSecretFile(file, newSecret()),
    (error) => isCisternError(error, 'EEXIST'),
  );
  assert.deepEqual(readSecretFile(file), secret, 'unchanged');
});

test('a secret file others can read, or that is not a secret, is refused', () => {
  const file = path.join(dir, 'open.secret');
  writeSecretFile(file, newSecret());
  fs.chmodSync(file, 0o640);
  assert.throws(
    () => readSecretFile(file),
    (error) => isCisternError(error, 'EPERM') && /mode 0640.*chmod 600/.test(error.message),
  );
  const junk = path.join(dir, 'junk.secret');
  fs.writeFileSync(junk, 'not hex\n', { mode: 0o600 });
  assert.throws(
    () => readSecretFile(junk),
    (error) => isCisternError(error, 'EINVAL'),
  );
  assert.throws(
    () => readSecretFile(path.join(dir, 'missing')),
    (error) => isCisternError(error, 'ENOENT'),
  );
});

test('fingerprints identify a secret without revealing it', () => {
  const a = newSecret();
  const b = newSecret();
  assert.match(secretFingerprint(a), /^[0-9a-f]{64}$/);
  assert.equal(secretFingerprint(a), secretFingerprint(Buffer.from(a)));
  assert.notEqual(secretFingerprint(a), secretFingerprint(b));
  assert.ok(!secretFingerprint(a).includes(a.toString('hex')));
  checkSecret(a, secretFingerprint(a));
  checkSecret(a, undefined); // a one-host datastore has no secret
  assert.throws(
    () => checkSecret(b, secretFingerprint(a)),
    (error) => isCisternError(error, 'EPERM'),
  );
});
