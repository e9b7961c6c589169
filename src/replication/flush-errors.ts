// A FLUSH that fails with EIO tells its caller that writes it covered may be lost, and
// the next FLUSH starts afresh (the marks are dropped: those writes can no longer be made
// durable, and failing every later flush for them would never end). But a flush covers
// the writes of every connection through the daemon, and the EIO reached only the one
// whose FLUSH met it: a later FLUSH on another connection would succeed and vouch for
// that connection's lost writes (the simulator's final flushes: client0 told, client1
// not). So, as Linux reports a writeback error to every open file once (errseq), each
// connection samples the daemon's error count when it opens and its next FLUSH fails
// with EIO once if the count moved meanwhile.

import { CisternError, isCisternError } from '../util/errors';

/** One connection's sample of a daemon's flush errors. */
export interface FlushWatch {
  seen: number;
}

export class FlushErrors {
  private count = 0;

  /** Flushes failed with EIO so far. */
  get failures(): number {
    return this.count;
  }

  /**
   * Runs one flush for `watch`'s connection: an EIO is counted (and told to `watch`);
   * a success still fails once if another connection's flush failed since it looked.
   */
  async run(watch: FlushWatch | undefined, flush: () => Promise<void>): Promise<void> {
    try {
      await flush();
    } catch (error) {
      if (isCisternError(error, 'EIO')) this.failed(watch);
      throw error;
    }
    this.check(watch);
  }

  /** A new connection's sample: errors before it opened are not its business. */
  watch(): FlushWatch {
    return { seen: this.count };
  }

  /** A flush failed with EIO and dropped its marks; `watch`, whose FLUSH it was, is told. */
  failed(watch?: FlushWatch): void {
    this.count += 1;
    if (watch) watch.seen = this.count;
  }

  /** After a flush that succeeded: EIO, once, if one failed since `watch` last looked. */
  check(watch?: FlushWatch): void {
    if (watch === undefined || watch.seen >= this.count) return;
    watch.seen = this.count;
    throw new CisternError(
      'EIO',
      'an earlier FLUSH through this daemon failed: writes acknowledged on this ' +
        'connection before it may be lost',
    );
  }
}
