// Shared by the tests that drive a real `cistern daemon --iscsi` with real initiators
// (libiscsi's tools, qemu-img, qemu-io): starting the daemon on loopback with free ports,
// running a client with a bound on its time, and the iscsi:// URLs libiscsi parses.

import { strict as assert } from 'node:assert';
import { spawn } from 'node:child_process';
import { DaemonProcess, cisternOk, spawnDaemon } from '../daemon/helpers';
import { targetNameOf } from '../../src/cluster/iscsi-access';

/** A client that has not finished by then is stuck (each of ours takes seconds). */
export const CLIENT_TIMEOUT_MS = 120_000;

export interface ClientResult {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

/** Runs a client program; never rejects for a non-zero exit (callers assert on it). */
export function runClient(
  command: string,
  args: string[],
  options: { env?: NodeJS.ProcessEnv; timeoutMs?: number } = {},
): Promise<ClientResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(command, args, {
      stdio: ['ignore', 'pipe', 'pipe'],
      env: { ...process.env, ...options.env },
    });
    let stdout = '';
    let stderr = '';
    const timer = setTimeout(() => child.kill('SIGKILL'), options.timeoutMs ?? CLIENT_TIMEOUT_MS);
    child.stdout.setEncoding('utf8').on('data', (chunk: string) => (stdout += chunk));
    child.stderr.setEncoding('utf8').on('data', (chunk: string) => (stderr += chunk));
    child.on('error', (error) => {
      clearTimeout(timer);
      reject(new Error(`cannot run ${command} (is it installed? npm test installs it): ${error}`));
    });
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      resolve({ code, signal, stdout, stderr });
    });
  });
}

/** Runs a client that must succeed; returns its stdout. */
export async function clientOk(
  command: string,
  args: string[],
  options: { env?: NodeJS.ProcessEnv; timeoutMs?: number } = {},
): Promise<string> {
  const result = await runClient(command, args, options);
  assert.equal(
    result.code,
    0,
    `${command} ${args.join(' ')} failed (${result.code ?? result.signal}):\n${result.stdout}\n${result.stderr}`,
  );
  return result.stdout;
}

/** A daemon with NBD, iSCSI and the admin API on free loopback ports. */
export async function spawnIscsiDaemon(dir: string): Promise<DaemonProcess & { portal: string }> {
  const daemon = await spawnDaemon(dir, [
    ...['--nbd', '127.0.0.1:0', '--admin', '127.0.0.1:0', '--iscsi', '127.0.0.1:0'],
  ]);
  const portal = daemon.admin.iscsi;
  assert.ok(portal, `admin.json names no iSCSI portal: ${JSON.stringify(daemon.admin)}`);
  return Object.assign(daemon, { portal });
}

/** `iscsi://[user%secret@]portal/iqn.2026-11.io.cistern:<volume>/0`. */
export function volumeUrl(
  portal: string,
  volume: string,
  chap?: { user: string; secret: string },
): string {
  const credentials = chap
    ? `${encodeURIComponent(chap.user)}%${encodeURIComponent(chap.secret)}@`
    : '';
  return `iscsi://${credentials}${portal}/${targetNameOf(volume)}/0`;
}

export function createVolume(dir: string, name: string, size: string): Promise<string> {
  return cisternOk(['volume', 'create', name, '--size', size, '--data-dir', dir]);
}
