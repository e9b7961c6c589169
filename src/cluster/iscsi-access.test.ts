// Proves the per-volume iSCSI access rules on literal cluster states, no daemon: allow
// and deny edit the initiator list (names normalised, validated, bounded), removing the
// last name is refused since an empty list means any initiator, CHAP and mutual CHAP are
// set and removed with RFC 7143's secret rules (12+ bytes, mutual differs), a refused
// change leaves the state as it was, the provider hands the server the rules (secrets
// included) while the public view never contains a secret, and ClusterAdmin applies the
// same mutation through a cluster store (the `--etcd` path).

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { CisternError, isCisternError } from '../util/errors';
import * as state from './state';
import {
  ALLOWED_INITIATORS_MAX,
  StateAccessProvider,
  accessOf,
  normaliseInitiatorName,
  publicAccess,
  setVolumeAccess,
  targetNameOf,
} from './iscsi-access';
import { MemoryClusterStore } from './memory';
import { ClusterAdmin } from './cluster-admin';

const A = 'iqn.2026-01.com.example:host-a';
const B = 'iqn.2026-01.com.example:host-b';
const SECRET = 'twelve-bytes!'; // 13 bytes
const OTHER = 'another-secret-1';

function withVolume(): state.ClusterState {
  const s = state.emptyState();
  state.addHost(s, 'h0', 'r0');
  state.addDisk(s, 'h0', { path: '/d0', uuid: 'u0', sizeBytes: 1 << 30 });
  state.createPool(s, { name: 'p', size: 1, minSize: 1, failureDomain: 'disk', pgCount: 8 });
  state.createVolume(s, 'vol', 1 << 20, 'p');
  return s;
}

function refused(code: string, pattern: RegExp, run: () => unknown): void {
  assert.throws(run, (error: unknown) => {
    assert.ok(isCisternError(error), String(error));
    assert.equal((error as CisternError).code, code);
    assert.match((error as CisternError).message, pattern);
    return true;
  });
}

test('a volume without rules lets any initiator in without CHAP', () => {
  const s = withVolume();
  assert.deepEqual(accessOf(s, 'vol'), { allowedInitiators: [] });
  assert.deepEqual(publicAccess('vol', undefined), {
    target: 'iqn.2026-11.io.cistern:vol',
    allowedInitiators: [],
    chap: 'none',
  });
  refused('UNKNOWN_VOLUME', /nope/, () => accessOf(s, 'nope'));
});

test('allow adds lowercased names once; deny removes them', () => {
  const s = withVolume();
  setVolumeAccess(s, 'vol', { allow: [A.toUpperCase(), B] });
  setVolumeAccess(s, 'vol', { allow: [A] });
  assert.deepEqual(accessOf(s, 'vol').allowedInitiators, [A, B]);
  setVolumeAccess(s, 'vol', { deny: [A] });
  assert.deepEqual(accessOf(s, 'vol').allowedInitiators, [B]);
  refused('EINVAL', /not on vol's access list/, () => setVolumeAccess(s, 'vol', { deny: [A] }));
});

test('removing the last initiator is refused; allow-any empties the list', () => {
  const s = withVolume();
  setVolumeAccess(s, 'vol', { allow: [A] });
  refused('EINVAL', /any initiator/, () => setVolumeAccess(s, 'vol', { deny: [A] }));
  assert.deepEqual(accessOf(s, 'vol').allowedInitiators, [A]);
  // Replacing the last name in one change is fine.
  setVolumeAccess(s, 'vol', { deny: [A], allow: [B] });
  assert.deepEqual(accessOf(s, 'vol').allowedInitiators, [B]);
  setVolumeAccess(s, 'vol', { allowAny: true });
  assert.deepEqual(accessOf(s, 'vol').allowedInitiators, []);
  assert.equal(findSpec(s).iscsi, undefined, 'no rules left: nothing stored');
  refused('EINVAL', /takes no names/, () =>
    setVolumeAccess(s, 'vol', { allowAny: true, allow: [A] }),
  );
});

test('initiator names are checked against the iSCSI name formats and bounded', () => {
  for (const good of [A, 'eui.0123456789ABCDEF', 'naa.0123456789abcdef0123456789abcdef']) {
    assert.equal(normaliseInitiatorName(good), good.toLowerCase());
  }
  for (const bad of ['host-a', 'iqn.26-01.com.x', 'iqn.2026-13.com.x', 'eui.123', 'iqn.2026-01.']) {
    refused('EINVAL', /not an iSCSI initiator name/, () => normaliseInitiatorName(bad));
  }
  refused('EINVAL', /not an iSCSI initiator name/, () =>
    normaliseInitiatorName(`iqn.2026-01.com.example:${'x'.repeat(220)}`),
  );
  const s = withVolume();
  const many = Array.from({ length: ALLOWED_INITIATORS_MAX + 1 }, (_, i) => `${A}-${i}`);
  refused('EINVAL', /at most 64 initiators/, () => setVolumeAccess(s, 'vol', { allow: many }));
  refused('EINVAL', /both allowed and denied/, () =>
    setVolumeAccess(s, 'vol', { allow: [A], deny: [A] }),
  );
  refused('EINVAL', /no access change/, () => setVolumeAccess(s, 'vol', {}));
});

test('CHAP and mutual CHAP are set, kept and removed; secrets follow RFC 7143', () => {
  const s = withVolume();
  refused('EINVAL', /11 bytes.*12-255/, () =>
    setVolumeAccess(s, 'vol', { chap: { user: 'u', secret: 'elevenbytes' } }),
  );
  refused('EINVAL', /printable ASCII/, () =>
    setVolumeAccess(s, 'vol', { chap: { user: 'u', secret: 'has a space in it' } }),
  );
  refused('EINVAL', /user name/, () =>
    setVolumeAccess(s, 'vol', { chap: { user: '', secret: SECRET } }),
  );
  refused('EINVAL', /mutual CHAP needs CHAP/, () =>
    setVolumeAccess(s, 'vol', { mutual: { user: 'tgt', secret: OTHER } }),
  );

  setVolumeAccess(s, 'vol', { chap: { user: 'alice', secret: SECRET } });
  assert.deepEqual(accessOf(s, 'vol').chap, { user: 'alice', secret: SECRET });
  refused('EINVAL', /must differ/, () =>
    setVolumeAccess(s, 'vol', { mutual: { user: 'tgt', secret: SECRET } }),
  );
  setVolumeAccess(s, 'vol', { mutual: { user: 'tgt', secret: OTHER } });
  assert.deepEqual(accessOf(s, 'vol').chap, {
    user: 'alice',
    secret: SECRET,
    mutualUser: 'tgt',
    mutualSecret: OTHER,
  });
  // A new initiator secret keeps the mutual pair.
  setVolumeAccess(s, 'vol', { chap: { user: 'bob', secret: 'a-third-secret' } });
  assert.equal(accessOf(s, 'vol').chap?.mutualUser, 'tgt');
  assert.equal(publicAccess('vol', findSpec(s).iscsi).chap, 'mutual');
  setVolumeAccess(s, 'vol', { mutual: null });
  assert.deepEqual(accessOf(s, 'vol').chap, { user: 'bob', secret: 'a-third-secret' });
  setVolumeAccess(s, 'vol', { chap: null });
  assert.equal(accessOf(s, 'vol').chap, undefined);
});

test('a refused change leaves the rules as they were', () => {
  const s = withVolume();
  setVolumeAccess(s, 'vol', { allow: [A], chap: { user: 'alice', secret: SECRET } });
  const before = structuredClone(findSpec(s));
  refused('EINVAL', /not an iSCSI initiator name/, () =>
    setVolumeAccess(s, 'vol', { allow: [B, 'bogus'], chap: null }),
  );
  assert.deepEqual(findSpec(s), before);
});

test('the public view names target, initiators and users, never a secret', () => {
  const s = withVolume();
  setVolumeAccess(s, 'vol', {
    allow: [A],
    chap: { user: 'alice', secret: SECRET },
    mutual: { user: 'tgt', secret: OTHER },
  });
  const shown = publicAccess('vol', findSpec(s).iscsi);
  assert.deepEqual(shown, {
    target: targetNameOf('vol'),
    allowedInitiators: [A],
    chap: 'mutual',
    chapUser: 'alice',
    mutualUser: 'tgt',
  });
  const text = JSON.stringify(shown);
  assert.ok(!text.includes(SECRET) && !text.includes(OTHER), text);
});

test('the provider reads the current state at every call', async () => {
  let s = withVolume();
  const provider = new StateAccessProvider(() => s);
  assert.deepEqual(await provider.access('vol'), { allowedInitiators: [] });
  s = structuredClone(s);
  setVolumeAccess(s, 'vol', { allow: [A] });
  assert.deepEqual(await provider.access('vol'), { allowedInitiators: [A] });
  await assert.rejects(provider.access('gone'), (e: unknown) =>
    isCisternError(e, 'UNKNOWN_VOLUME'),
  );
});

test('ClusterAdmin changes the rules through the cluster store (the --etcd path)', async () => {
  const store = new MemoryClusterStore(withVolume());
  const admin = new ClusterAdmin(store);
  const epoch = store.current().map.epoch;
  const info = await admin.setVolumeAccess('vol', {
    allow: [A],
    chap: { user: 'alice', secret: SECRET },
  });
  assert.deepEqual(info.iscsi, {
    target: targetNameOf('vol'),
    allowedInitiators: [A],
    chap: 'one-way',
    chapUser: 'alice',
  });
  assert.ok(store.current().map.epoch > epoch, 'a change is a map update');
  assert.deepEqual(accessOf(store.current(), 'vol').chap, { user: 'alice', secret: SECRET });
  assert.deepEqual((await admin.volumeInfo('vol')).iscsi?.allowedInitiators, [A]);
  await assert.rejects(admin.setVolumeAccess('vol', { deny: [B] }), /not on vol's access list/);
});

function findSpec(s: state.ClusterState): state.VolumeSpec {
  return state.findVolume(s, 'vol');
}
