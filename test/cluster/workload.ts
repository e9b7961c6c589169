// A verified block workload for cluster failure tests, run as its own process inside a
// client namespace (`node dist/test/cluster/workload.js '<json>'`), so that it talks to a
// daemon's NBD export over the test network as a hypervisor would. Not a test file:
// without an argument it does nothing. It prints JSON lines; the test judges them.
//
// Every 4 KiB block it writes describes itself: magic, volume tag, block number, write
// sequence number, a fill derived from those, and a SHA-256 of the rest. So a read can
// tell apart the expected content, an older or newer version of the same block, another
// block's or volume's data, zeros and garbage.
//
//   { "mode": "run", ... }     random 4 KiB writes and reads at `queueDepth` in flight
//        until `stopFile` exists (or `durationMsMax`), a FLUSH every `flushEvery`
//        writes. Never two operations on one block at once, so every read must return
//        exactly the last acknowledged write of that block (read-your-writes), zeros if
//        none. A failed request is retried with the same content — reconnecting,
//        through the next target when the connection died — until it succeeds or
//        `retryMsMax` passes (then the block is "unresolved": old or new content).
//        While `pauseFile` exists it starts no request. SIGUSR1 announces a crash of
//        every daemon (whole-cluster power loss): from then every block written since
//        its last FLUSH may hold any version since that FLUSH (the workload prints
//        `{"crashWindow":"open"}` once it has noted that, and the test kills only then);
//        writes acknowledged and FLUSHes completed until SIGUSR2 (the daemons are back)
//        may have been lost too, so they are noted the same way and count for nothing.
//        Prints `{"progress":…}` lines,
//        then `{"summary":…}`, and writes the model (the last acknowledged sequence
//        number of every written block) to `modelFile`.
//   { "mode": "verify", ... }  reads the whole volume through `targets[0]` and checks
//        every block against `modelFile`; prints `{"verify":…}`.

import { createHash } from 'node:crypto';
import fs from 'node:fs';
import { NbdClient } from '../../src/frontend/nbd/client';
import { isNbdRequestError } from '../../src/frontend/nbd/protocol';
import { Random } from '../../src/util/random';

export const BLOCK_BYTES = 4096;
const MAGIC = Buffer.from('CSTNWL01', 'latin1');
const HEADER_BYTES = 32;
const DIGEST_BYTES = 32;
const DIGEST_OFFSET = BLOCK_BYTES - DIGEST_BYTES;
/** Mismatch and error records kept in the summary; beyond that they are only counted. */
const DETAILS_MAX = 50;
/** Pause between attempts of a failed request or connection. */
const RETRY_PAUSE_MS = 200;
const HANDSHAKE_TIMEOUT_MS = 5000;
const STOP_POLL_MS = 100;
/** Read size of the verify pass, and how many reads it keeps in flight. */
const VERIFY_CHUNK_BYTES = 1024 * 1024;
const VERIFY_DEPTH = 8;

export interface Target {
  host: string;
  port: number;
}

export interface RunConfig {
  mode: 'run';
  /** The gateway first; the others are where to reconnect when a connection dies. */
  targets: Target[];
  exportName: string;
  /** Written into every block, so another volume's data is recognised. */
  volumeTag: number;
  sizeBytes: number;
  modelFile: string;
  stopFile: string;
  /** While this file exists no new request starts (progress lines say when none is left). */
  pauseFile: string;
  /** A bound on the run even if nobody creates the stop file. */
  durationMsMax: number;
  flushEvery: number;
  queueDepth: number;
  /** Percentage of operations that are reads. */
  readPercent: number;
  seed: number;
  progressMs: number;
  /** How long one request is retried (a cut host's peer requests time out in 30 s). */
  retryMsMax: number;
}

export interface VerifyConfig {
  mode: 'verify';
  targets: Target[];
  exportName: string;
  modelFile: string;
}

export interface Model {
  volumeTag: number;
  sizeBytes: number;
  /** [block, sequence number] of every block ever acknowledged. */
  acked: Array<[number, number]>;
  /**
   * Blocks whose last write never succeeded, or that a crash may have set back: any of
   * these versions may be there (0: zeros).
   */
  unresolved: Array<{ block: number; seqs: number[] }>;
}

export type Found =
  | { kind: 'zeros' }
  | { kind: 'garbage' }
  | { kind: 'written'; volumeTag: number; block: number; seq: number };

export interface Mismatch {
  block: number;
  expectedSeq: number;
  /** The last flushed sequence number of the block (0: never flushed). */
  flushedSeq: number;
  found: Found;
  atMs: number;
  gateway: string;
}

export interface OperationError {
  op: 'read' | 'write' | 'flush' | 'connect';
  block?: number;
  message: string;
  atMs: number;
  gateway: string;
}

export interface RunSummary {
  writes: number;
  reads: number;
  flushes: number;
  mismatches: number;
  mismatchDetails: Mismatch[];
  /** Failed attempts (each was retried). */
  errors: number;
  errorDetails: OperationError[];
  /** Requests that failed at least once and then succeeded. */
  retriedToSuccess: number;
  unresolved: number;
  /** Blocks a crash may have set back to a version since their last FLUSH. */
  crashUncertain: number;
  reconnects: number;
  gateways: string[];
  latencyMsMax: number;
  blocksWritten: number;
  blocksFlushed: number;
  durationMs: number;
}

export interface VerifySummary {
  blocks: number;
  blocksWritten: number;
  mismatches: number;
  mismatchDetails: Array<Omit<Mismatch, 'flushedSeq' | 'atMs' | 'gateway'>>;
}

/** The content of `block` at write `seq` (seq 0: the block was never written: zeros). */
export function blockContent(volumeTag: number, block: number, seq: number): Buffer {
  const data = Buffer.alloc(BLOCK_BYTES);
  if (seq === 0) return data;
  MAGIC.copy(data, 0);
  data.writeUInt32LE(volumeTag, 8);
  data.writeUInt32LE(0, 12);
  data.writeBigUInt64LE(BigInt(block), 16);
  data.writeBigUInt64LE(BigInt(seq), 24);
  const seed = createHash('sha256').update(data.subarray(0, HEADER_BYTES)).digest();
  for (let i = HEADER_BYTES; i < DIGEST_OFFSET; i += 1) {
    data[i] = (seed[i % DIGEST_BYTES] as number) ^ ((i >>> 5) & 0xff);
  }
  createHash('sha256').update(data.subarray(0, DIGEST_OFFSET)).digest().copy(data, DIGEST_OFFSET);
  return data;
}

/** What a block read back holds. */
export function decodeBlock(data: Uint8Array): Found {
  const block = Buffer.from(data.buffer, data.byteOffset, data.length);
  if (block.every((byte) => byte === 0)) return { kind: 'zeros' };
  if (!block.subarray(0, MAGIC.length).equals(MAGIC)) return { kind: 'garbage' };
  const digest = createHash('sha256').update(block.subarray(0, DIGEST_OFFSET)).digest();
  if (!digest.equals(block.subarray(DIGEST_OFFSET))) return { kind: 'garbage' };
  return {
    kind: 'written',
    volumeTag: block.readUInt32LE(8),
    block: Number(block.readBigUInt64LE(16)),
    seq: Number(block.readBigUInt64LE(24)),
  };
}

/** Whether `found` is one of the versions `seqs` of `block` (0: zeros, never written). */
function acceptable(found: Found, block: number, seqs: number[]): boolean {
  if (found.kind === 'zeros') return seqs.includes(0);
  return found.kind === 'written' && found.block === block && seqs.includes(found.seq);
}

function errorMessage(error: unknown): string {
  return error instanceof Error ? `${error.name}: ${error.message}` : String(error);
}

const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

function targetName(target: Target): string {
  return `${target.host}:${target.port}`;
}

/** One NBD connection at a time; a dead one is replaced, moving on to the next target. */
class Connection {
  private current: { client: NbdClient; target: number } | undefined;
  private connecting: Promise<NbdClient> | undefined;
  private targetIndex = 0;
  reconnects = 0;
  readonly used = new Set<string>();

  constructor(
    private readonly targets: Target[],
    private readonly exportName: string,
    private readonly onError: (error: OperationError) => void,
    private readonly started: number,
  ) {}

  get gateway(): string {
    return targetName(this.targets[this.targetIndex] as Target);
  }

  /** The live client, connecting (with retries until `deadline`) if there is none. */
  async client(deadline: number): Promise<NbdClient> {
    if (this.current) return this.current.client;
    this.connecting ??= this.connect(deadline).finally(() => (this.connecting = undefined));
    return this.connecting;
  }

  /** The client failed as a connection (not with an error reply): drop it. */
  failed(client: NbdClient): void {
    if (this.current?.client !== client) return;
    client.destroy();
    this.current = undefined;
    // A dead gateway is most likely dead for a while: go to the next one.
    this.targetIndex = (this.targetIndex + 1) % this.targets.length;
  }

  private async connect(deadline: number): Promise<NbdClient> {
    for (let attempt = 0; ; attempt += 1) {
      const target = this.targets[this.targetIndex] as Target;
      try {
        const client = await NbdClient.connect(target, {
          exportName: this.exportName,
          handshakeTimeoutMs: HANDSHAKE_TIMEOUT_MS,
        });
        if (this.used.size > 0) this.reconnects += 1;
        this.used.add(targetName(target));
        this.current = { client, target: this.targetIndex };
        return client;
      } catch (error) {
        this.onError({
          op: 'connect',
          message: errorMessage(error),
          atMs: Date.now() - this.started,
          gateway: targetName(target),
        });
        if (Date.now() > deadline) throw error;
        this.targetIndex = (this.targetIndex + 1) % this.targets.length;
        await sleep(RETRY_PAUSE_MS);
      }
    }
  }

  async close(): Promise<void> {
    const client = this.current?.client;
    this.current = undefined;
    if (client) await client.disconnect().catch(() => client.destroy());
  }
}

async function run(config: RunConfig): Promise<void> {
  const started = Date.now();
  const blocks = Math.floor(config.sizeBytes / BLOCK_BYTES);
  const random = new Random(config.seed);
  /** Sequence number of the last acknowledged write per block (0: never written). */
  const acked = new Float64Array(blocks);
  /** Sequence number per block covered by a completed FLUSH. */
  const flushed = new Float64Array(blocks);
  const busy = new Uint8Array(blocks);
  const unresolved = new Map<number, number[]>();
  /** Per block, the sequence numbers acknowledged since its last FLUSH (for crashes). */
  const sinceFlush = new Map<number, number[]>();
  /** Blocks a crash may have set back: the versions they may hold (0: zeros). */
  const uncertain = new Map<number, number[]>();
  /** Bumped by each crash signal; an operation begun in an older era proves nothing. */
  let era = 0;
  let crashWindow = false;
  const summary: RunSummary = {
    writes: 0,
    reads: 0,
    flushes: 0,
    mismatches: 0,
    mismatchDetails: [],
    errors: 0,
    errorDetails: [],
    retriedToSuccess: 0,
    unresolved: 0,
    crashUncertain: 0,
    reconnects: 0,
    gateways: [],
    latencyMsMax: 0,
    blocksWritten: 0,
    blocksFlushed: 0,
    durationMs: 0,
  };
  let lastError: OperationError | undefined;
  const recordError = (error: OperationError): void => {
    summary.errors += 1;
    lastError = error;
    if (summary.errorDetails.length < DETAILS_MAX) summary.errorDetails.push(error);
  };
  const connection = new Connection(config.targets, config.exportName, recordError, started);
  let nextSeq = 1;
  let writesSinceFlush = 0;
  let stopping = false;
  let paused = false;
  /** Workers inside an operation (a write includes the FLUSH it may trigger). */
  let inFlight = 0;

  /** Runs `operation` until it succeeds or retryMsMax passes; undefined if it never did. */
  const attempt = async <T>(
    op: 'read' | 'write' | 'flush',
    block: number | undefined,
    operation: (client: NbdClient) => Promise<T>,
  ): Promise<{ value: T } | undefined> => {
    const first = Date.now();
    const deadline = first + config.retryMsMax;
    for (let failures = 0; ; failures += 1) {
      let client: NbdClient | undefined;
      try {
        client = await connection.client(deadline);
        const value = await operation(client);
        if (failures > 0) summary.retriedToSuccess += 1;
        summary.latencyMsMax = Math.max(summary.latencyMsMax, Date.now() - first);
        return { value };
      } catch (error) {
        recordError({
          op,
          ...(block !== undefined ? { block } : {}),
          message: errorMessage(error),
          atMs: Date.now() - started,
          gateway: connection.gateway,
        });
        if (client && !isNbdRequestError(error)) connection.failed(client);
        if (Date.now() > deadline) return undefined;
        await sleep(RETRY_PAUSE_MS);
      }
    }
  };

  const check = (block: number, data: Uint8Array): void => {
    const expected = blockContent(config.volumeTag, block, acked[block] as number);
    if (Buffer.from(data.buffer, data.byteOffset, data.length).equals(expected)) return;
    for (const seqs of [unresolved.get(block), uncertain.get(block)]) {
      if (seqs && acceptable(decodeBlock(data), block, seqs)) return;
    }
    summary.mismatches += 1;
    if (summary.mismatchDetails.length < DETAILS_MAX) {
      summary.mismatchDetails.push({
        block,
        expectedSeq: acked[block] as number,
        flushedSeq: flushed[block] as number,
        found: decodeBlock(data),
        atMs: Date.now() - started,
        gateway: connection.gateway,
      });
    }
  };

  const flush = async (): Promise<void> => {
    // A FLUSH covers the writes acknowledged before it is sent.
    const covered = acked.slice();
    const begun = era;
    const done = await attempt('flush', undefined, (client) => client.flush());
    if (done && begun === era && !crashWindow) {
      for (let block = 0; block < blocks; block += 1) {
        flushed[block] = Math.max(flushed[block] as number, covered[block] as number);
      }
      for (const [block, seqs] of sinceFlush) {
        const rest = seqs.filter((seq) => seq > (flushed[block] as number));
        if (rest.length > 0) sinceFlush.set(block, rest);
        else sinceFlush.delete(block);
      }
      summary.flushes += 1;
    }
  };

  /** A crash may set back every block written since its last FLUSH. */
  const crash = (): void => {
    era += 1;
    crashWindow = true;
    for (const [block, seqs] of sinceFlush) {
      const versions = [flushed[block] as number, ...seqs, ...(uncertain.get(block) ?? [])];
      uncertain.set(block, [...new Set(versions)]);
    }
    console.log(JSON.stringify({ crashWindow: 'open' }));
  };
  const recovered = (): void => {
    era += 1;
    crashWindow = false;
    console.log(JSON.stringify({ crashWindow: 'closed' }));
  };
  process.on('SIGUSR1', crash);
  process.on('SIGUSR2', recovered);

  const pickIdleBlock = (): number => {
    // Bounded: at most queueDepth blocks are busy, so a free one is found quickly.
    for (let tries = 0; tries < 1000; tries += 1) {
      const block = random.int(blocks);
      if (busy[block] === 0) return block;
    }
    throw new Error('no idle block found in 1000 tries');
  };

  const write = async (block: number): Promise<void> => {
    const seq = nextSeq;
    nextSeq += 1;
    const data = blockContent(config.volumeTag, block, seq);
    const begun = era;
    const done = await attempt('write', block, (client) => client.write(block * BLOCK_BYTES, data));
    if (!done) {
      unresolved.set(block, [...(unresolved.get(block) ?? [acked[block] as number]), seq]);
      return;
    }
    if (begun !== era || crashWindow) {
      // Acknowledged around a crash: it may have been lost, as any unflushed write.
      const versions = uncertain.get(block) ?? [flushed[block] as number, acked[block] as number];
      uncertain.set(block, [...new Set([...versions, seq])]);
    } else {
      uncertain.delete(block);
    }
    acked[block] = seq;
    sinceFlush.set(block, [...(sinceFlush.get(block) ?? []), seq]);
    unresolved.delete(block);
    summary.writes += 1;
    writesSinceFlush += 1;
    if (writesSinceFlush >= config.flushEvery) {
      writesSinceFlush = 0;
      await flush();
    }
  };

  const read = async (block: number): Promise<void> => {
    const done = await attempt('read', block, (client) =>
      client.read(block * BLOCK_BYTES, BLOCK_BYTES),
    );
    if (!done) return;
    summary.reads += 1;
    check(block, done.value);
  };

  const worker = async (): Promise<void> => {
    while (!stopping) {
      if (paused) {
        await sleep(STOP_POLL_MS);
        continue;
      }
      const block = pickIdleBlock();
      busy[block] = 1;
      inFlight += 1;
      try {
        // Reads of never-written blocks prove little: read a written one when we can.
        if (random.int(100) < config.readPercent && acked[block] !== 0) await read(block);
        else await write(block);
      } finally {
        busy[block] = 0;
        inFlight -= 1;
      }
    }
  };

  const watchStop = setInterval(() => {
    if (fs.existsSync(config.stopFile) || Date.now() - started > config.durationMsMax) {
      stopping = true;
    }
    paused = fs.existsSync(config.pauseFile);
  }, STOP_POLL_MS);
  const progress = setInterval(() => {
    const { writes, reads, flushes, errors, mismatches, reconnects } = {
      ...summary,
      reconnects: connection.reconnects,
    };
    const line = { writes, reads, flushes, errors, mismatches, reconnects, paused, inFlight };
    const gateway = connection.gateway;
    console.log(JSON.stringify({ progress: { ...line, gateway, lastError } }));
  }, config.progressMs);
  try {
    await Promise.all(Array.from({ length: config.queueDepth }, () => worker()));
    await flush();
  } finally {
    clearInterval(watchStop);
    clearInterval(progress);
    process.off('SIGUSR1', crash);
    process.off('SIGUSR2', recovered);
    await connection.close();
  }

  summary.unresolved = unresolved.size;
  summary.crashUncertain = uncertain.size;
  summary.reconnects = connection.reconnects;
  summary.gateways = [...connection.used];
  for (let block = 0; block < blocks; block += 1) {
    if (acked[block] !== 0) summary.blocksWritten += 1;
    if (flushed[block] !== 0) summary.blocksFlushed += 1;
  }
  summary.durationMs = Date.now() - started;
  const model: Model = {
    volumeTag: config.volumeTag,
    sizeBytes: config.sizeBytes,
    acked: [],
    unresolved: [...new Set([...unresolved.keys(), ...uncertain.keys()])].map((block) => ({
      block,
      seqs: [...(unresolved.get(block) ?? []), ...(uncertain.get(block) ?? [])],
    })),
  };
  for (let block = 0; block < blocks; block += 1) {
    if (acked[block] !== 0) model.acked.push([block, acked[block] as number]);
  }
  fs.writeFileSync(config.modelFile, JSON.stringify(model));
  console.log(JSON.stringify({ summary }));
}

async function verify(config: VerifyConfig): Promise<void> {
  const model = JSON.parse(fs.readFileSync(config.modelFile, 'utf8')) as Model;
  const blocks = Math.floor(model.sizeBytes / BLOCK_BYTES);
  const expected = new Float64Array(blocks);
  for (const [block, seq] of model.acked) expected[block] = seq;
  const alternatives = new Map(model.unresolved.map((u) => [u.block, u.seqs]));
  const client = await NbdClient.connect(config.targets[0] as Target, {
    exportName: config.exportName,
    handshakeTimeoutMs: HANDSHAKE_TIMEOUT_MS,
  });
  const result: VerifySummary = {
    blocks,
    blocksWritten: model.acked.length,
    mismatches: 0,
    mismatchDetails: [],
  };
  try {
    if (client.size !== model.sizeBytes) {
      throw new Error(`export is ${client.size} bytes, the model ${model.sizeBytes}`);
    }
    const chunkBlocks = VERIFY_CHUNK_BYTES / BLOCK_BYTES;
    let nextChunk = 0;
    const reader = async (): Promise<void> => {
      for (;;) {
        const first = nextChunk * chunkBlocks;
        nextChunk += 1;
        if (first >= blocks) return;
        const count = Math.min(chunkBlocks, blocks - first);
        const data = await client.read(first * BLOCK_BYTES, count * BLOCK_BYTES);
        for (let i = 0; i < count; i += 1) {
          const block = first + i;
          const got = data.subarray(i * BLOCK_BYTES, (i + 1) * BLOCK_BYTES);
          const seq = expected[block] as number;
          if (got.equals(blockContent(model.volumeTag, block, seq))) continue;
          const seqs = alternatives.get(block);
          if (seqs && acceptable(decodeBlock(got), block, seqs)) continue;
          const found = decodeBlock(got);
          result.mismatches += 1;
          if (result.mismatchDetails.length < DETAILS_MAX) {
            result.mismatchDetails.push({ block, expectedSeq: seq, found });
          }
        }
      }
    };
    await Promise.all(Array.from({ length: VERIFY_DEPTH }, () => reader()));
  } finally {
    await client.disconnect().catch(() => client.destroy());
  }
  console.log(JSON.stringify({ verify: result }));
}

if (require.main === module && process.argv[2] !== undefined) {
  const config = JSON.parse(process.argv[2]) as RunConfig | VerifyConfig;
  const main = config.mode === 'run' ? run(config) : verify(config);
  main.then(
    () => process.exit(0),
    (error: unknown) => {
      console.error(errorMessage(error));
      process.exit(1);
    },
  );
}
