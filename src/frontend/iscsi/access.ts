// Who may log in to a volume's target: the per-volume initiator access list and CHAP
// credentials, set with the CLI and kept with the volume's metadata (embedded store or
// etcd). The iSCSI server asks for them at every login, so a change applies to the
// next login without a restart.

import type { VolumeHandle } from '../../volume/backend';
import type { LogicalUnit } from './scsi-task';

export interface ChapCredentials {
  /** CHAP_N the initiator must send. */
  user: string;
  /** The secret the initiator proves it knows (12–16 bytes or more, as RFC 7143 asks). */
  secret: string;
  /** Mutual CHAP: the name and secret the target answers with, when the initiator challenges it. */
  mutualUser?: string;
  mutualSecret?: string;
}

export interface VolumeAccess {
  /** Initiator names (IQN/EUI/NAA, compared lowercased) allowed to log in; empty = any initiator. */
  allowedInitiators: readonly string[];
  /** When set, login requires CHAP with these credentials; otherwise AuthMethod=None. */
  chap?: ChapCredentials;
}

export interface AccessProvider {
  /** The access rules of one volume; throws CisternError UNKNOWN_VOLUME if there is none. */
  access(volumeName: string): Promise<VolumeAccess>;
}

/** Makes the SCSI logical unit that serves one opened volume (scsi/ provides the real one). */
export type LogicalUnitFactory = (handle: VolumeHandle, volumeName: string) => LogicalUnit;

/** The target name of a volume: `iqn.2026-11.io.cistern:<volume>`. */
export const TARGET_NAME_PREFIX = 'iqn.2026-11.io.cistern:';
