// Per-volume iSCSI access rules as they live in the cluster state (one host's embedded
// store or etcd): which initiators may log in to the volume's target, and the CHAP
// credentials (one-way, optionally mutual) they must prove. Changes are one pure
// mutation, validated here, so the daemon's admin API and `--etcd` administration apply
// the same rules; the iSCSI server reads them through StateAccessProvider at every login.
// Secrets are stored because CHAP needs them in the clear on the target's side; every
// view meant for people (volume info, logs) goes through publicAccess(), which drops them.

import { assert } from '../util/assert';
import { CisternError } from '../util/errors';
import {
  AccessProvider,
  ChapCredentials,
  TARGET_NAME_PREFIX,
  VolumeAccess,
} from '../frontend/iscsi/access';
import { ClusterState, findVolume } from './state';

/** What a volume record keeps (`VolumeSpec.iscsi`); absent = any initiator, no CHAP. */
export interface IscsiAccessRecord {
  allowedInitiators: string[];
  chap?: ChapCredentials;
}

/** One change to a volume's rules, as the CLI and the admin API send it. */
export interface AccessChange {
  /** Initiator names to add to the access list. */
  allow?: string[];
  /** Initiator names to remove from it. */
  deny?: string[];
  /** Empty the list: any initiator may log in (CHAP, if set, still applies). */
  allowAny?: boolean;
  /** Set one-way CHAP (keeps a mutual pair already set), or remove CHAP entirely (null). */
  chap?: { user: string; secret: string } | null;
  /** Set or (null) remove the name and secret the target answers a mutual challenge with. */
  mutual?: { user: string; secret: string } | null;
}

/** The rules without secrets: what `volume info` and the admin API show. */
export interface IscsiAccessInfo {
  /** The volume's target name; its disk is LUN 0. */
  target: string;
  /** Empty: any initiator. */
  allowedInitiators: string[];
  chap: 'none' | 'one-way' | 'mutual';
  chapUser?: string;
  mutualUser?: string;
}

/**
 * RFC 7143 §12.1.3: a CHAP secret shorter than 96 bits must not be used (initiators
 * refuse to answer with one), so it is refused when set rather than at the first login.
 */
export const CHAP_SECRET_MIN_BYTES = 12;
/**
 * Longest secret and CHAP name: common initiators (open-iscsi, libiscsi) keep them in
 * 256-byte buffers with a terminating NUL, so a longer one could never be typed there.
 */
export const CHAP_SECRET_MAX_BYTES = 255;
export const CHAP_USER_MAX_BYTES = 255;
/** RFC 7143 §4.2.7.1: an iSCSI name is at most 223 bytes. */
export const INITIATOR_NAME_MAX_BYTES = 223;
/**
 * Initiators on one volume's list: a few hypervisors share a volume (live migration,
 * clusters); the bound keeps the state record — which holds every volume — small.
 */
export const ALLOWED_INITIATORS_MAX = 64;

/** iqn.YYYY-MM.reversed.domain[:anything], eui. + 16 hex digits, naa. + 16 or 32 hex digits. */
const INITIATOR_NAME_PATTERN =
  /^(?:iqn\.\d{4}-(?:0[1-9]|1[0-2])\.[a-z0-9](?:[a-z0-9.-]*[a-z0-9])?(?::[a-z0-9.:_-]*)?|eui\.[0-9a-f]{16}|naa\.(?:[0-9a-f]{16}|[0-9a-f]{32}))$/;
/** CHAP names and secrets as people type them into initiators: printable ASCII, no spaces. */
const CHAP_TEXT_PATTERN = /^[\x21-\x7e]+$/;

/** iSCSI names are compared case-folded (RFC 3722), so the target name is lowercase. */
export function targetNameOf(volumeName: string): string {
  return `${TARGET_NAME_PREFIX}${volumeName.toLowerCase()}`;
}

/** An initiator name in the form it is stored and compared in (lowercase); EINVAL if malformed. */
export function normaliseInitiatorName(name: string): string {
  const lower = name.trim().toLowerCase();
  if (Buffer.byteLength(lower) > INITIATOR_NAME_MAX_BYTES || !INITIATOR_NAME_PATTERN.test(lower)) {
    throw new CisternError(
      'EINVAL',
      `"${name}" is not an iSCSI initiator name (iqn.YYYY-MM.reversed.domain[:id], ` +
        `eui.<16 hex digits> or naa.<16 or 32 hex digits>, at most ${INITIATOR_NAME_MAX_BYTES} bytes)`,
    );
  }
  return lower;
}

export function checkChapUser(user: string, what: string): void {
  if (!CHAP_TEXT_PATTERN.test(user) || Buffer.byteLength(user) > CHAP_USER_MAX_BYTES) {
    throw new CisternError(
      'EINVAL',
      `${what} must be 1-${CHAP_USER_MAX_BYTES} printable ASCII characters without spaces`,
    );
  }
}

/** Never puts the secret itself in the message. */
export function checkChapSecret(secret: string, what: string): void {
  const bytes = Buffer.byteLength(secret);
  if (bytes < CHAP_SECRET_MIN_BYTES || bytes > CHAP_SECRET_MAX_BYTES) {
    throw new CisternError(
      'EINVAL',
      `${what} is ${bytes} bytes; a CHAP secret must be ${CHAP_SECRET_MIN_BYTES}-${CHAP_SECRET_MAX_BYTES} ` +
        'bytes (RFC 7143 asks for at least 96 bits; some initiators want 12-16)',
    );
  }
  if (!CHAP_TEXT_PATTERN.test(secret)) {
    throw new CisternError(
      'EINVAL',
      `${what} must be printable ASCII without spaces (initiators take secrets as text)`,
    );
  }
}

function isEmptyChange(change: AccessChange): boolean {
  return (
    (change.allow ?? []).length === 0 &&
    (change.deny ?? []).length === 0 &&
    change.allowAny !== true &&
    change.chap === undefined &&
    change.mutual === undefined
  );
}

/** The rules after `change`, from the rules before; throws EINVAL, changing nothing. */
export function applyAccessChange(
  before: IscsiAccessRecord | undefined,
  change: AccessChange,
  volumeName: string,
): IscsiAccessRecord {
  if (isEmptyChange(change)) throw new CisternError('EINVAL', 'no access change given');
  const allow = (change.allow ?? []).map(normaliseInitiatorName);
  const deny = (change.deny ?? []).map(normaliseInitiatorName);
  if (change.allowAny && (allow.length > 0 || deny.length > 0)) {
    throw new CisternError('EINVAL', 'allow-any empties the access list; it takes no names');
  }
  const both = allow.find((name) => deny.includes(name));
  if (both !== undefined) throw new CisternError('EINVAL', `${both} is both allowed and denied`);

  let initiators = change.allowAny ? [] : [...(before?.allowedInitiators ?? [])];
  for (const name of deny) {
    if (!initiators.includes(name)) {
      throw new CisternError('EINVAL', `${name} is not on ${volumeName}'s access list`);
    }
    initiators = initiators.filter((n) => n !== name);
  }
  if (deny.length > 0 && initiators.length === 0 && allow.length === 0) {
    // An empty list means "any initiator": removing the last name must not open the target.
    throw new CisternError(
      'EINVAL',
      `removing the last initiator would let any initiator log in to ${volumeName}; ` +
        'use allow-any (--allow-any) if that is what you want',
    );
  }
  for (const name of allow) if (!initiators.includes(name)) initiators.push(name);
  if (initiators.length > ALLOWED_INITIATORS_MAX) {
    throw new CisternError(
      'EINVAL',
      `at most ${ALLOWED_INITIATORS_MAX} initiators per volume, ${initiators.length} given`,
    );
  }

  let chap: ChapCredentials | undefined = before?.chap ? { ...before.chap } : undefined;
  if (change.chap === null) {
    if (change.mutual) throw new CisternError('EINVAL', 'mutual CHAP needs CHAP');
    chap = undefined;
  } else if (change.chap !== undefined) {
    checkChapUser(change.chap.user, 'the CHAP user name');
    checkChapSecret(change.chap.secret, 'the CHAP secret');
    chap = { ...chap, user: change.chap.user, secret: change.chap.secret };
  }
  if (change.mutual === null) {
    if (chap) chap = { user: chap.user, secret: chap.secret };
  } else if (change.mutual !== undefined) {
    if (!chap) {
      throw new CisternError(
        'EINVAL',
        `mutual CHAP needs CHAP: set the initiator's user and secret on ${volumeName} too`,
      );
    }
    checkChapUser(change.mutual.user, 'the mutual CHAP user name');
    checkChapSecret(change.mutual.secret, 'the mutual CHAP secret');
    chap = { ...chap, mutualUser: change.mutual.user, mutualSecret: change.mutual.secret };
  }
  if (chap?.mutualSecret !== undefined && chap.mutualSecret === chap.secret) {
    // RFC 7143 §12.1.3: a secret that authenticates initiators must not authenticate targets.
    throw new CisternError(
      'EINVAL',
      'the mutual CHAP secret must differ from the CHAP secret (RFC 7143 §12.1.3)',
    );
  }
  return { allowedInitiators: initiators, ...(chap ? { chap } : {}) };
}

/** The pure mutation: applies `change` to volume `name`'s rules (UNKNOWN_VOLUME, EINVAL). */
export function setVolumeAccess(
  state: ClusterState,
  name: string,
  change: AccessChange,
): IscsiAccessRecord {
  const volume = findVolume(state, name);
  const after = applyAccessChange(volume.iscsi, change, name);
  if (after.allowedInitiators.length === 0 && !after.chap) delete volume.iscsi;
  else volume.iscsi = after;
  assert(findVolume(state, name).iscsi?.chap === after.chap, 'access rules not stored');
  return after;
}

/** The rules of a volume as the iSCSI server checks them. */
export function accessOf(state: ClusterState, name: string): VolumeAccess {
  const record = findVolume(state, name).iscsi;
  return {
    allowedInitiators: [...(record?.allowedInitiators ?? [])],
    ...(record?.chap ? { chap: { ...record.chap } } : {}),
  };
}

/** The rules without secrets. */
export function publicAccess(
  volumeName: string,
  record: IscsiAccessRecord | undefined,
): IscsiAccessInfo {
  const chap = record?.chap;
  const info: IscsiAccessInfo = {
    target: targetNameOf(volumeName),
    allowedInitiators: [...(record?.allowedInitiators ?? [])],
    chap: !chap ? 'none' : chap.mutualUser !== undefined ? 'mutual' : 'one-way',
    ...(chap ? { chapUser: chap.user } : {}),
    ...(chap?.mutualUser !== undefined ? { mutualUser: chap.mutualUser } : {}),
  };
  return info;
}

/** Access rules from whatever state the caller holds current (a ClusterStore's). */
export class StateAccessProvider implements AccessProvider {
  constructor(private readonly current: () => ClusterState) {}

  async access(volumeName: string): Promise<VolumeAccess> {
    return accessOf(this.current(), volumeName);
  }
}
