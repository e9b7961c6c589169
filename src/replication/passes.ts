// The run loop the background workers (recovery, scrub) share: a pass runs when kicked;
// a kick during a pass runs one more pass right after it (never two at once, never a
// lost wake-up); close() stops kicks and waits for the pass in progress.

export class PassRunner {
  private running: Promise<void> | undefined;
  private again = false;
  private closed = false;

  constructor(
    private readonly pass: () => Promise<void>,
    /** Skips a kick when there is nothing to do (checked before a pass starts). */
    private readonly wanted: () => boolean = () => true,
  ) {}

  kick(): void {
    if (this.closed) return;
    if (this.running) {
      this.again = true;
      return;
    }
    if (!this.wanted()) return;
    this.running = this.pass().finally(() => {
      this.running = undefined;
      if (this.again) {
        this.again = false;
        this.kick();
      }
    });
  }

  get isClosed(): boolean {
    return this.closed;
  }

  /** Resolves when no pass is running. */
  async idle(): Promise<void> {
    while (this.running) await this.running;
  }

  async close(): Promise<void> {
    this.closed = true;
    await this.idle();
  }
}
