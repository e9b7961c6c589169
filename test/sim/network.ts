// The simulated network between daemons: a PeerTransport per host whose requests and
// replies are scheduler events, each with a seeded delay (so messages reorder), each
// lost with the current loss probability, all dropped across a partition or to a dead
// host. A request whose request or reply is lost fails at the sender with UNAVAILABLE
// after a simulated timeout, as the real peer client's request timeout does. The
// receiver applies the real fencing rule (fenceEpoch from peer.ts) before the real
// handler (handler.ts) runs, and errors come back as PeerRemoteError as over TCP.
// Differences from TCP worth knowing: a lost message is one request failing, not the
// whole connection; a request already delivered keeps running when its sender dies.

import { CisternError, isCisternError } from '../../src/util/errors';
import { PeerTransport } from '../../src/replication/endpoint';
import { DEFAULT_PEER_LIMITS, PeerRemoteError, fenceEpoch } from '../../src/replication/peer';
import type { HandlerReply, HandlerRequest } from '../../src/replication/handler';
import { Scheduler } from './scheduler';

/** A request unanswered this long fails (virtual ms; the daemon's is 30 s, scaled down). */
export const SIM_REQUEST_TIMEOUT_MS = 1_000;
/** One-way message latency, virtual ms; now and then a message is much slower. */
const LATENCY_MS_MIN = 0.05;
const LATENCY_MS_MAX = 3;
const SLOW_MESSAGE_PROBABILITY = 0.01;
const SLOW_MESSAGE_MS_MAX = 300;

export interface SimEndpoint {
  handler: (request: HandlerRequest) => Promise<HandlerReply>;
  epoch: () => number;
  waitForEpoch: (epoch: number, timeoutMs: number) => Promise<boolean>;
  alive: () => boolean;
}

export interface Delivery {
  from: string;
  to: string;
  type: number;
  epoch: number;
  receiverEpoch: number;
  metadata: unknown;
}

export class SimNetwork {
  private readonly hosts = new Map<string, SimEndpoint>();
  /** Partition side of each host; hosts talk only within one side. */
  private readonly side = new Map<string, number>();
  lossProbability = 0;
  /** False only to plant a bug (a checker must then catch requests of other epochs). */
  fenced = true;
  messages = 0;
  lost = 0;

  constructor(
    private readonly scheduler: Scheduler,
    /** Called as the handler is about to run (the invariant-5 checker). */
    private readonly onDeliver: (delivery: Delivery) => void,
    /** A handler threw something that is not a CisternError: a bug. */
    private readonly onBug: (text: string) => void,
  ) {}

  register(hostId: string, endpoint: SimEndpoint): void {
    this.hosts.set(hostId, endpoint);
  }

  partition(sides: Map<string, number>): void {
    this.side.clear();
    for (const [host, side] of sides) this.side.set(host, side);
  }

  heal(): void {
    this.side.clear();
  }

  get partitioned(): boolean {
    return new Set(this.side.values()).size > 1;
  }

  connected(a: string, b: string): boolean {
    return (this.side.get(a) ?? 0) === (this.side.get(b) ?? 0);
  }

  /** Whether a message from `from` to `to` gets there (drawn once per message). */
  private passes(from: string, to: string): boolean {
    this.messages += 1;
    const target = this.hosts.get(to);
    if (!target || !target.alive() || !this.connected(from, to)) return false;
    if (this.lossProbability > 0 && this.scheduler.random.bool(this.lossProbability)) {
      this.lost += 1;
      return false;
    }
    return true;
  }

  private latency(): number {
    const random = this.scheduler.random;
    if (random.bool(SLOW_MESSAGE_PROBABILITY)) return random.float() * SLOW_MESSAGE_MS_MAX;
    return LATENCY_MS_MIN + random.float() * (LATENCY_MS_MAX - LATENCY_MS_MIN);
  }

  /** The transport of one host incarnation. */
  transport(
    from: string,
    senderAlive: () => boolean,
    timeoutMs = SIM_REQUEST_TIMEOUT_MS,
  ): PeerTransport {
    return {
      request: (to, type, epoch, metadata, payload) =>
        new Promise((resolve, reject) => {
          let settled = false;
          const timer = this.scheduler.schedule(
            timeoutMs,
            `net.timeout ${from}->${to} t${type}`,
            () => {
              if (settled) return;
              settled = true;
              reject(
                new CisternError(
                  'UNAVAILABLE',
                  `${to} did not answer a type ${type} request within ${timeoutMs} ms`,
                ),
              );
            },
            senderAlive,
          );
          const answer = (outcome: () => void): void => {
            if (settled) return;
            settled = true;
            timer.cancel();
            outcome();
          };
          if (!this.passes(from, to)) return;
          // As a socket would: the receiver gets its own copies.
          const request: HandlerRequest = {
            type,
            metadata: structuredClone(metadata),
            peerHostId: from,
          };
          if (payload) request.payload = Uint8Array.from(payload);
          const target = this.hosts.get(to)!;
          this.scheduler.schedule(
            this.latency(),
            `net ${from}->${to} t${type} e${epoch}`,
            () => {
              if (!this.connected(from, to)) return;
              this.serve(to, target, epoch, request).then(
                (reply) =>
                  this.reply(target, to, from, senderAlive, () => answer(() => resolve(reply))),
                (error: unknown) =>
                  this.reply(target, to, from, senderAlive, () => answer(() => reject(error))),
              );
            },
            target.alive,
          );
        }),
    };
  }

  private async serve(
    to: string,
    target: SimEndpoint,
    epoch: number,
    request: HandlerRequest,
  ): Promise<HandlerReply> {
    try {
      if (this.fenced) {
        await fenceEpoch(epoch, target.epoch, (wanted) =>
          target.waitForEpoch(wanted, DEFAULT_PEER_LIMITS.epochWaitMs),
        );
      }
      this.onDeliver({
        from: request.peerHostId,
        to,
        type: request.type,
        epoch,
        receiverEpoch: target.epoch(),
        metadata: request.metadata,
      });
      const reply = await target.handler(request);
      const copy: HandlerReply = { metadata: structuredClone(reply.metadata) };
      if (reply.payload) copy.payload = Uint8Array.from(reply.payload);
      return copy;
    } catch (error) {
      if (error instanceof PeerRemoteError) throw error; // the fence's own refusal
      if (isCisternError(error)) {
        const epochOf = (error as { epoch?: unknown }).epoch;
        throw new PeerRemoteError(
          error.code,
          error.message,
          to,
          typeof epochOf === 'number' ? epochOf : undefined,
        );
      }
      this.onBug(`handler of ${to} threw ${String(error)} for type ${request.type}`);
      throw new PeerRemoteError(
        'EIO',
        `internal error in handler for type ${request.type}`,
        to,
        undefined,
      );
    }
  }

  /** Sends a reply back, unless the replying host died, or the reply is lost. */
  private reply(
    sender: SimEndpoint,
    from: string,
    to: string,
    receiverAlive: () => boolean,
    deliver: () => void,
  ): void {
    if (!sender.alive()) return;
    this.messages += 1;
    if (!this.connected(from, to)) return;
    if (this.lossProbability > 0 && this.scheduler.random.bool(this.lossProbability)) {
      this.lost += 1;
      return;
    }
    this.scheduler.schedule(
      this.latency(),
      `net.reply ${from}->${to}`,
      () => {
        if (this.connected(from, to)) deliver();
      },
      receiverAlive,
    );
  }
}
