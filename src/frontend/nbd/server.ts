// The NBD server: listens on TCP and/or Unix sockets and serves every volume of an
// ExportProvider as one export of the same name. Protocol only — all storage behaviour
// comes from the VolumeHandle each connection opens. Connections are independent: a
// hostile or broken client can only ever lose its own connection.

import { assert } from '../../util/assert';
import type { ExportProvider } from '../../volume/backend';
import { ConnectionListeners } from '../../net/connections';
import { NbdConnection, type ConnectionConfig } from './connection';
import * as P from './protocol';

/**
 * Requests in flight per connection before we stop reading its socket. qemu uses 16,
 * nbdcopy 64 per connection, fio whatever iodepth says; 128 keeps all of them busy
 * without letting one connection queue unbounded work on the volume layer.
 */
export const DEFAULT_MAX_IN_FLIGHT_REQUESTS = 128;
/**
 * Bytes of write payloads and read buffers held per connection. With 32 MiB requests
 * this still allows several at once; with 4 KiB requests the request bound bites first.
 */
export const DEFAULT_MAX_IN_FLIGHT_BYTES = 128 * 1024 * 1024;
/** Concurrent connections per listener; beyond it the kernel keeps them in the backlog. */
export const MAX_CONNECTIONS_PER_LISTENER = 1024;
/** A client that has not finished negotiating by then is dropped (slow-loris guard). */
export const HANDSHAKE_TIMEOUT_MS = 30_000;
/** On close(), how long in-flight requests get before their connection is dropped. */
export const SHUTDOWN_GRACE_MS = 10_000;
/**
 * Block size constraints advertised in NBD_INFO_BLOCK_SIZE. Minimum 1: volumes take
 * unaligned I/O (the volume layer does read-modify-write), and a larger minimum would
 * make clients pad and split for no gain. Preferred 4 KiB: the volume block size.
 */
export const BLOCK_SIZE_MINIMUM_BYTES = 1;
export const BLOCK_SIZE_PREFERRED_BYTES = 4096;

export interface NbdServerOptions {
  /** Serve every export read-only (writes get EPERM; the READ_ONLY flag is sent). */
  readOnly?: boolean;
  /** The export an empty export name (the protocol's "default export") selects. */
  defaultExport?: string;
  maxInFlightRequests?: number;
  maxInFlightBytes?: number;
  handshakeTimeoutMs?: number;
  shutdownGraceMs?: number;
  /** Bugs and unexpected backend failures; protocol violations by clients are not reported. */
  onUnexpectedError?: (error: unknown) => void;
}

export interface ListenAddress {
  host: string;
  port: number;
}

export class NbdServer {
  private readonly listeners: ConnectionListeners<NbdConnection>;

  constructor(provider: ExportProvider, options: NbdServerOptions = {}) {
    const maxInFlightRequests = options.maxInFlightRequests ?? DEFAULT_MAX_IN_FLIGHT_REQUESTS;
    const maxInFlightBytes = options.maxInFlightBytes ?? DEFAULT_MAX_IN_FLIGHT_BYTES;
    assert(
      Number.isInteger(maxInFlightRequests) && maxInFlightRequests >= 1,
      'maxInFlightRequests',
    );
    assert(maxInFlightBytes >= P.MAX_REQUEST_PAYLOAD_BYTES, 'maxInFlightBytes below one request');
    const config: ConnectionConfig = {
      provider,
      readOnly: options.readOnly ?? false,
      defaultExport: options.defaultExport,
      maxInFlightRequests,
      maxInFlightBytes,
      blockSize: {
        minimumBytes: BLOCK_SIZE_MINIMUM_BYTES,
        preferredBytes: BLOCK_SIZE_PREFERRED_BYTES,
        maximumBytes: P.MAX_REQUEST_PAYLOAD_BYTES,
      },
      handshakeTimeoutMs: options.handshakeTimeoutMs ?? HANDSHAKE_TIMEOUT_MS,
      shutdownGraceMs: options.shutdownGraceMs ?? SHUTDOWN_GRACE_MS,
      onUnexpectedError:
        options.onUnexpectedError ??
        ((error) => console.error('nbd server: unexpected error', error)),
    };
    this.listeners = new ConnectionListeners({
      serverName: 'NBD server',
      maxConnectionsPerListener: MAX_CONNECTIONS_PER_LISTENER,
      connect: (socket) => new NbdConnection(socket, config),
      onListenerError: (error) => config.onUnexpectedError(error),
    });
  }

  /** Listens on TCP; port 0 picks a free port. Resolves to the address actually bound. */
  listen(host: string, port: number): Promise<ListenAddress> {
    return this.listeners.listen(host, port);
  }

  /** Listens on a Unix socket at `path` (which must not exist yet). */
  listenUnix(path: string): Promise<void> {
    return this.listeners.listenUnix(path);
  }

  get connectionCount(): number {
    return this.listeners.connections.size;
  }

  /**
   * Stops accepting, lets every connection finish its in-flight requests (up to the
   * grace period), closes them and their volume handles. Idempotent.
   */
  close(): Promise<void> {
    return this.listeners.close();
  }
}
