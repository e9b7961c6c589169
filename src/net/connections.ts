// What Cistern's three TCP servers (NBD, iSCSI, the peer protocol) share around their
// connections, and nothing of their protocols: listeners that accept sockets into a
// tracked set of connections, a close that stops accepting and drains every connection,
// and batched socket writes. Each server keeps what it does beyond that (the iSCSI
// server's sessions and units, the peer server's statistics).

import * as net from 'node:net';
import { assert } from '../util/assert';
import { CisternError } from '../util/errors';

/** A server's connection as the listeners see it. */
export interface ServedConnection {
  /** Stop reading requests; end once what is in flight is answered (or a grace period ran out). */
  shutdown(): void;
  /** Resolves once the socket has closed and the connection let go of everything. */
  readonly closed: Promise<void>;
}

export interface ConnectionListenersOptions<C extends ServedConnection> {
  /** Names the server in the error a listen after close() gets ("NBD server"). */
  serverName: string;
  /** Concurrent connections per listener; beyond it the kernel keeps them in the backlog. */
  maxConnectionsPerListener: number;
  /** Makes the connection that serves a newly accepted socket. */
  connect(socket: net.Socket): C;
  /** A listener failed after it was listening (accept errors, EMFILE). */
  onListenerError(error: Error): void;
  /** A connection closed; called just before it leaves the set. */
  onConnectionClosed?(connection: C): void;
}

/** The listening sockets of one server and the connections they accepted. */
export class ConnectionListeners<C extends ServedConnection> {
  private readonly listeners: net.Server[] = [];
  private readonly open = new Set<C>();
  private closing: Promise<void> | undefined;

  constructor(private readonly options: ConnectionListenersOptions<C>) {
    assert(
      Number.isInteger(options.maxConnectionsPerListener) && options.maxConnectionsPerListener > 0,
      'maxConnectionsPerListener',
    );
  }

  /** The connections open now. */
  get connections(): ReadonlySet<C> {
    return this.open;
  }

  /** Listens on TCP; port 0 picks a free port. Resolves to the address actually bound. */
  async listen(host: string, port: number): Promise<{ host: string; port: number }> {
    const listener = await this.start((server, onListening) =>
      server.listen(port, host, onListening),
    );
    const address = listener.address();
    assert(address !== null && typeof address === 'object', 'TCP listener without an address');
    return { host: address.address, port: address.port };
  }

  /** Listens on a Unix socket at `path` (which must not exist yet). */
  async listenUnix(path: string): Promise<void> {
    await this.start((server, onListening) => server.listen(path, onListening));
  }

  /**
   * Stops accepting, shuts every connection down and resolves once all have closed and
   * every listener is closed. Idempotent.
   */
  close(): Promise<void> {
    this.closing ??= this.closeAll();
    return this.closing;
  }

  private async closeAll(): Promise<void> {
    const listenersClosed = this.listeners.map(
      (listener) => new Promise<void>((resolve) => listener.close(() => resolve())),
    );
    const connections = [...this.open];
    for (const connection of connections) connection.shutdown();
    await Promise.all(connections.map((connection) => connection.closed));
    await Promise.all(listenersClosed);
  }

  private start(bind: (server: net.Server, onListening: () => void) => void): Promise<net.Server> {
    if (this.closing !== undefined) {
      return Promise.reject(new CisternError('CLOSED', `${this.options.serverName} is closed`));
    }
    // allowHalfOpen: a client that shuts down its sending side still gets the replies to
    // what it sent; the connection ends itself once they are out.
    const server = net.createServer({ allowHalfOpen: true, noDelay: true }, (socket) =>
      this.accept(socket),
    );
    server.maxConnections = this.options.maxConnectionsPerListener;
    return new Promise((resolve, reject) => {
      server.once('error', reject);
      bind(server, () => {
        server.off('error', reject);
        server.on('error', (error) => this.options.onListenerError(error));
        this.listeners.push(server);
        resolve(server);
      });
    });
  }

  private accept(socket: net.Socket): void {
    if (this.closing !== undefined) {
      socket.destroy();
      return;
    }
    const connection = this.options.connect(socket);
    this.open.add(connection);
    void connection.closed.then(() => {
      this.options.onConnectionClosed?.(connection);
      this.open.delete(connection);
    });
  }
}

/** Writes to one socket in order; writes from the same tick go out in one batch (cork/uncork). */
export class BatchedWriter {
  private corked = false;

  constructor(private readonly socket: net.Socket) {}

  /**
   * Writes `parts` in order; `done` runs once the last one is written, or at once when
   * the socket can no longer be written (destroyed or ended).
   */
  write(parts: readonly Uint8Array[], done?: () => void): void {
    if (this.socket.destroyed || this.socket.writableEnded) {
      done?.();
      return;
    }
    if (!this.corked) {
      this.corked = true;
      this.socket.cork();
      process.nextTick(() => {
        this.corked = false;
        this.socket.uncork();
      });
    }
    parts.forEach((part, index) => {
      const last = index === parts.length - 1;
      this.socket.write(part, last && done !== undefined ? () => done() : undefined);
    });
  }
}

/**
 * Stops reading a socket while a connection is at one of its bounds (requests in flight,
 * replies backed up, a phase that reads nothing) and reads again once it is not; acts
 * only on a change, so it may be asked after every event.
 */
export class ReadGate {
  private paused = false;

  constructor(private readonly socket: net.Socket) {}

  pauseWhile(shouldPause: boolean): void {
    if (shouldPause && !this.paused) {
      this.paused = true;
      this.socket.pause();
    } else if (!shouldPause && this.paused) {
      this.paused = false;
      this.socket.resume();
    }
  }
}
