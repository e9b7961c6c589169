// HOST:PORT as administrators write it on the command line and as the daemon records it
// in admin.json: `127.0.0.1:10809`, `[::1]:10810`, `:0` (default host, any free port).

import { CisternError } from '../util/errors';

export interface HostPort {
  host: string;
  port: number;
}

const PORT_MAX = 65535;

export function parseHostPort(text: string, defaultHost: string): HostPort {
  const bad = (why: string): CisternError =>
    new CisternError('EINVAL', `not a HOST:PORT address: "${text}" (${why})`);
  const match = /^(?:\[([^\]]+)\]|([^:[\]]*)):(\d+)$/.exec(text.trim());
  const portOnly = /^\d+$/.test(text.trim());
  if (!match && !portOnly) throw bad('examples: 127.0.0.1:10809, [::1]:10809, :0');
  const host = match ? (match[1] ?? match[2] ?? '') : '';
  const port = Number(match ? match[3] : text.trim());
  if (!Number.isInteger(port) || port < 0 || port > PORT_MAX) throw bad(`port 0..${PORT_MAX}`);
  return { host: host === '' ? defaultHost : host, port };
}

export function formatHostPort(address: HostPort): string {
  return address.host.includes(':')
    ? `[${address.host}]:${address.port}`
    : `${address.host}:${address.port}`;
}

/** True for addresses only this host can reach. */
export function isLoopback(host: string): boolean {
  return host === 'localhost' || host === '::1' || /^127\.\d+\.\d+\.\d+$/.test(host);
}

/**
 * Where a client on this host should connect to reach a listener bound to `address`:
 * a wildcard bind (0.0.0.0, ::) is reachable on loopback.
 */
export function connectableAddress(address: HostPort): HostPort {
  if (address.host === '0.0.0.0' || address.host === '') return { ...address, host: '127.0.0.1' };
  if (address.host === '::') return { ...address, host: '::1' };
  return address;
}
