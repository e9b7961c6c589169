// An in-process peer transport: hosts register their handler and their view of the
// epoch, and requests are delivered by function call, with the same fencing rule as
// the TCP peer server (an older epoch is refused with STALE_EPOCH and the receiver's
// epoch). Multi-host tests and the simulator use it; faults (a host unreachable, or
// silent: cut off without a reset, so requests to it wait until given up) are injected
// here.

import { CisternError, isCisternError } from '../util/errors';
import { PeerRemoteError } from './peer';
import { PeerTransport } from './endpoint';

type Handler = (request: {
  type: number;
  metadata: unknown;
  payload?: Uint8Array;
  peerHostId: string;
}) => Promise<{ metadata: unknown; payload?: Uint8Array }>;

interface Endpoint {
  handler: Handler;
  epoch: () => number;
}

export class StaleEpochError extends CisternError {
  constructor(
    message: string,
    readonly epoch: number,
  ) {
    super('STALE_EPOCH', message);
  }
}

export class LoopbackNetwork {
  private readonly hosts = new Map<string, Endpoint>();
  private readonly unreachable = new Set<string>();

  register(hostId: string, handler: Handler, epoch: () => number): void {
    this.hosts.set(hostId, { handler, epoch });
  }

  private readonly silent = new Set<string>();
  /** Requests waiting on a silent host: who sent them, and how to end them. */
  private readonly hanging = new Set<{
    from: string;
    to: string;
    reject: (error: Error) => void;
  }>();

  /** Requests to and from `hostId` fail as a lost connection would, until `heal`. */
  cut(hostId: string): void {
    this.unreachable.add(hostId);
  }

  /**
   * Requests to `hostId` get no answer, as to a host cut off without a FIN or RST: they
   * wait until the sender gives up on the host (`abandon`) or `heal`.
   */
  silence(hostId: string): void {
    this.silent.add(hostId);
  }

  heal(hostId: string): void {
    this.unreachable.delete(hostId);
    this.silent.delete(hostId);
    this.endHanging((request) => request.to === hostId, `connection to ${hostId} lost`);
  }

  /** Requests waiting on a silent `hostId` now. */
  hangingRequests(hostId: string): number {
    return [...this.hanging].filter((request) => request.to === hostId).length;
  }

  private endHanging(
    which: (request: { from: string; to: string }) => boolean,
    message: string,
  ): void {
    for (const request of [...this.hanging]) {
      if (!which(request)) continue;
      this.hanging.delete(request);
      request.reject(new CisternError('UNAVAILABLE', message));
    }
  }

  private hang(from: string, to: string): Promise<never> {
    return new Promise((_, reject) => this.hanging.add({ from, to, reject }));
  }

  /** The transport one host uses to reach the others. */
  transport(fromHostId: string): PeerTransport {
    return {
      abandon: (peerHostId, reason) =>
        this.endHanging(
          (request) => request.from === fromHostId && request.to === peerHostId,
          `gave up on ${peerHostId}: ${reason}`,
        ),
      request: async (peerHostId, type, epoch, metadata, payload) => {
        if (this.silent.has(peerHostId)) return this.hang(fromHostId, peerHostId);
        const target = this.hosts.get(peerHostId);
        if (!target || this.unreachable.has(peerHostId) || this.unreachable.has(fromHostId)) {
          throw new CisternError(
            'UNAVAILABLE',
            `host ${peerHostId} unreachable from ${fromHostId}`,
          );
        }
        const current = target.epoch();
        if (epoch < current) {
          throw new StaleEpochError(
            `host ${peerHostId} is at epoch ${current}, request at ${epoch}`,
            current,
          );
        }
        // Copy the payload as a socket would: the receiver must not share our buffer.
        const copy = payload ? Uint8Array.from(payload) : undefined;
        let reply: { metadata: unknown; payload?: Uint8Array };
        try {
          reply = await target.handler({
            type,
            metadata: structuredClone(metadata),
            payload: copy,
            peerHostId: fromHostId,
          });
        } catch (error) {
          // As over the wire: the handler's refusal arrives as the peer's error.
          if (!isCisternError(error) || error instanceof StaleEpochError) throw error;
          throw new PeerRemoteError(error.code, error.message, peerHostId, target.epoch());
        }
        return {
          metadata: structuredClone(reply.metadata),
          payload: reply.payload ? Uint8Array.from(reply.payload) : undefined,
        };
      },
    };
  }
}
