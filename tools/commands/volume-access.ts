// `cistern volume access`: who may log in to a volume's iSCSI target — the initiator
// access list and CHAP (one-way or mutual). Secrets come from files readable by their
// owner only, never from the command line (argv is visible to every user in ps), and are
// never printed. Without a change option it shows the rules.

import fs from 'node:fs';
import { CisternError, fromErrno } from '../../src/util/errors';
import {
  AccessChange,
  IscsiAccessInfo,
  checkChapSecret,
  checkChapUser,
} from '../../src/cluster/iscsi-access';
import { adminOptions, openAdmin } from '../admin-client';
import { Command, ParsedArgs, opt, usageError } from '../command';

/** A secret file holds one line of at most 255 bytes; anything much bigger is not one. */
const SECRET_FILE_MAX_BYTES = 4096;
const GROUP_OTHER_MODE_BITS = 0o077;

export const volumeAccess: Command = {
  path: ['volume', 'access'],
  summary: "show or change who may log in to a volume's iSCSI target",
  description: `
Every volume is an iSCSI target named iqn.2026-11.io.cistern:VOLUME with its disk at
LUN 0. By default any initiator may log in without CHAP (the portal listens on loopback
unless the daemon's --iscsi says otherwise). --allow adds initiator names to the volume's
access list; once it is non-empty only those initiators may log in. --deny removes names
(removing the last one is refused: an empty list means any initiator; say --allow-any).
--chap-user with --chap-secret-file requires one-way CHAP; adding --mutual-user with
--mutual-secret-file makes the target prove itself to the initiator too. A secret file
holds the secret on one line (12 to 255 printable ASCII characters, no spaces) and must
be readable by its owner only (chmod 600). Changes apply to the next login; sessions
already logged in stay. Secrets are never shown.`,
  positionals: [{ name: 'NAME', help: 'volume name', required: true }],
  options: [
    ...adminOptions,
    { name: 'allow', type: 'list', valueName: 'IQN', help: 'let this initiator log in' },
    { name: 'deny', type: 'list', valueName: 'IQN', help: 'remove this initiator from the list' },
    { name: 'allow-any', type: 'boolean', help: 'empty the list: any initiator may log in' },
    { name: 'chap-user', type: 'string', valueName: 'U', help: 'CHAP name the initiator sends' },
    {
      name: 'chap-secret-file',
      type: 'string',
      valueName: 'F',
      help: 'file with the CHAP secret the initiator must prove (mode 0600)',
    },
    {
      name: 'mutual-user',
      type: 'string',
      valueName: 'U',
      help: 'mutual CHAP: the name the target answers with',
    },
    {
      name: 'mutual-secret-file',
      type: 'string',
      valueName: 'F',
      help: "mutual CHAP: file with the target's secret (mode 0600)",
    },
    { name: 'no-chap', type: 'boolean', help: 'log in without CHAP (removes mutual CHAP too)' },
    { name: 'no-mutual', type: 'boolean', help: 'keep one-way CHAP, drop mutual CHAP' },
  ],
  async run(args, output) {
    const name = args.positionals[0] as string;
    const change = changeFromArgs(args);
    const client = await openAdmin(args);
    let info;
    if (change === undefined) {
      info = await client.volumeInfo(name);
    } else {
      if (!client.setVolumeAccess) throw new CisternError('ENOTSUP', 'no iSCSI access rules here');
      info = await client.setVolumeAccess(name, change);
    }
    const access = info.iscsi;
    if (!access) throw new CisternError('EIO', `the daemon did not report ${name}'s access rules`);
    if (opt<boolean>(args, 'json')) {
      output.out(JSON.stringify({ volume: name, ...access }, null, 2));
      return 0;
    }
    for (const [key, value] of accessLines(access, client.iscsi)) {
      output.out(`${(key + ':').padEnd(18)}${value}`);
    }
    return 0;
  },
};

/** The rules as `volume access` and `volume info` print them: never a secret. */
export function accessLines(
  access: IscsiAccessInfo,
  portal: string | undefined,
): Array<[string, string]> {
  const lines: Array<[string, string]> = [['iscsi target', `${access.target} (LUN 0)`]];
  lines.push([
    'initiators',
    access.allowedInitiators.length === 0 ? 'any' : access.allowedInitiators.join(', '),
  ]);
  const chap =
    access.chap === 'none'
      ? 'none'
      : access.chap === 'one-way'
        ? `one-way (user ${access.chapUser})`
        : `mutual (user ${access.chapUser}, target answers as ${access.mutualUser})`;
  lines.push(['chap', chap]);
  if (portal) lines.push(['iscsi', `iscsi://${portal}/${access.target}/0`]);
  return lines;
}

/** The change the options ask for, or undefined when they ask for none (show the rules). */
export function changeFromArgs(args: ParsedArgs): AccessChange | undefined {
  const allow = opt<string[]>(args, 'allow');
  const deny = opt<string[]>(args, 'deny');
  const allowAny = opt<boolean | undefined>(args, 'allow-any') === true;
  const chapUser = opt<string | undefined>(args, 'chap-user');
  const chapFile = opt<string | undefined>(args, 'chap-secret-file');
  const mutualUser = opt<string | undefined>(args, 'mutual-user');
  const mutualFile = opt<string | undefined>(args, 'mutual-secret-file');
  const noChap = opt<boolean | undefined>(args, 'no-chap') === true;
  const noMutual = opt<boolean | undefined>(args, 'no-mutual') === true;

  if ((chapUser === undefined) !== (chapFile === undefined)) {
    throw usageError('--chap-user and --chap-secret-file go together');
  }
  if ((mutualUser === undefined) !== (mutualFile === undefined)) {
    throw usageError('--mutual-user and --mutual-secret-file go together');
  }
  if (noChap && (chapUser !== undefined || mutualUser !== undefined || noMutual)) {
    throw usageError('--no-chap removes all CHAP; it goes with no other CHAP option');
  }
  if (noMutual && mutualUser !== undefined) {
    throw usageError('--no-mutual and --mutual-user contradict each other');
  }
  if (allowAny && (allow.length > 0 || deny.length > 0)) {
    throw usageError('--allow-any empties the list; it goes with neither --allow nor --deny');
  }

  const change: AccessChange = {};
  if (allow.length > 0) change.allow = allow;
  if (deny.length > 0) change.deny = deny;
  if (allowAny) change.allowAny = true;
  if (noChap) change.chap = null;
  if (noMutual) change.mutual = null;
  if (chapUser !== undefined && chapFile !== undefined) {
    checkChapUser(chapUser, '--chap-user');
    change.chap = { user: chapUser, secret: readChapSecretFile(chapFile, '--chap-secret-file') };
  }
  if (mutualUser !== undefined && mutualFile !== undefined) {
    checkChapUser(mutualUser, '--mutual-user');
    change.mutual = {
      user: mutualUser,
      secret: readChapSecretFile(mutualFile, '--mutual-secret-file'),
    };
  }
  return Object.keys(change).length === 0 ? undefined : change;
}

/** One line of text, owner-only file, valid CHAP secret; the message never shows it. */
export function readChapSecretFile(file: string, option: string): string {
  let stat: fs.Stats;
  let text: string;
  try {
    stat = fs.statSync(file);
    if (!stat.isFile() || stat.size > SECRET_FILE_MAX_BYTES) {
      throw usageError(`${option} ${file} is not a secret file (one line, at most 255 bytes)`);
    }
    text = fs.readFileSync(file, 'utf8');
  } catch (error) {
    if (error instanceof CisternError) throw error;
    const errno = (error as NodeJS.ErrnoException).code ?? 'EIO';
    throw fromErrno(errno, `cannot read ${option} ${file}: ${String(error)}`, error);
  }
  if ((stat.mode & GROUP_OTHER_MODE_BITS) !== 0) {
    const mode = (stat.mode & 0o777).toString(8).padStart(4, '0');
    throw new CisternError(
      'EPERM',
      `${file} has mode ${mode}: a CHAP secret file must be readable by its owner only ` +
        `(run: chmod 600 ${file})`,
    );
  }
  const secret = text.replace(/\r?\n$/, '');
  if (secret.includes('\n')) throw usageError(`${option} ${file} must hold one line`);
  checkChapSecret(secret, `the secret in ${file}`);
  return secret;
}
