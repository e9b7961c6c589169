// Shared set-up for the NBD integration tests: a server on the in-memory provider bound
// to a free TCP port, a runner for external client programs that fails loudly (a missing
// program is a failed test, never a skip), and a raw socket for speaking bytes directly.

import { execFile } from 'node:child_process';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';
import { ByteQueue } from '../../src/frontend/nbd/byte-queue';
import * as P from '../../src/frontend/nbd/protocol';
import { NbdServer, type NbdServerOptions } from '../../src/frontend/nbd/server';
import type { NbdTarget } from '../../src/frontend/nbd/client';
import { MemoryExportProvider } from '../../src/volume/memory-volume';
import type { ExportProvider } from '../../src/volume/backend';

export const MiB = 1024 * 1024;

export interface TestServer {
  server: NbdServer;
  provider: MemoryExportProvider;
  target: NbdTarget & { host: string; port: number };
  uri(exportName: string): string;
  /** Errors the server reported as unexpected (bugs); tests assert this stays empty. */
  unexpectedErrors: unknown[];
  close(): Promise<void>;
}

export async function startServer(
  setup: (provider: MemoryExportProvider) => void,
  options: NbdServerOptions & { wrap?: (provider: MemoryExportProvider) => ExportProvider } = {},
): Promise<TestServer> {
  const provider = new MemoryExportProvider();
  setup(provider);
  const unexpectedErrors: unknown[] = [];
  const server = new NbdServer(options.wrap?.(provider) ?? provider, {
    onUnexpectedError: (error) => unexpectedErrors.push(error),
    ...options,
  });
  const address = await server.listen('127.0.0.1', 0);
  const target = { host: '127.0.0.1', port: address.port };
  return {
    server,
    provider,
    target,
    uri: (exportName) => `nbd://127.0.0.1:${address.port}/${exportName}`,
    unexpectedErrors,
    close: () => server.close(),
  };
}

export interface RunResult {
  stdout: string;
  stderr: string;
}

/** Runs a program; rejects (failing the test) if it is missing, fails or takes too long. */
export function run(
  file: string,
  args: readonly string[],
  options: { timeoutMs?: number; cwd?: string } = {},
): Promise<RunResult> {
  return new Promise((resolve, reject) => {
    execFile(
      file,
      args,
      { timeout: options.timeoutMs ?? 60_000, cwd: options.cwd, maxBuffer: 64 * MiB },
      (error, stdout, stderr) => {
        if (error) {
          reject(new Error(`${file} ${args.join(' ')} failed: ${error.message}\n${stderr}`));
          return;
        }
        resolve({ stdout, stderr });
      },
    );
  });
}

/** Like run, but resolves with the exit code instead of rejecting on a non-zero one. */
export function runStatus(
  file: string,
  args: readonly string[],
  options: { timeoutMs?: number } = {},
): Promise<number> {
  return new Promise((resolve, reject) => {
    execFile(file, args, { timeout: options.timeoutMs ?? 60_000 }, (error) => {
      if (error === null) resolve(0);
      else if (typeof error.code === 'number') resolve(error.code);
      else reject(error); // missing program, killed by timeout
    });
  });
}

export function tempDir(prefix: string): string {
  return fs.mkdtempSync(path.join(os.tmpdir(), `cistern-${prefix}-`));
}

/** A socket that reads exact byte counts: for handshakes and bytes no client would send. */
export class RawConnection {
  private readonly queue = new ByteQueue();
  private waiter: (() => void) | undefined;
  private ended = false;
  readonly closed: Promise<void>;

  private constructor(readonly socket: net.Socket) {
    this.closed = new Promise((resolve) => socket.once('close', () => resolve()));
    socket.on('data', (chunk: Buffer) => {
      this.queue.push(chunk);
      this.waiter?.();
    });
    socket.on('error', () => {
      // a reset is a legitimate outcome for hostile input; 'close' follows
    });
    socket.on('close', () => {
      this.ended = true;
      this.waiter?.();
    });
  }

  static open(target: { host: string; port: number }): Promise<RawConnection> {
    return new Promise((resolve, reject) => {
      const socket = net.connect(target.port, target.host, () =>
        resolve(new RawConnection(socket)),
      );
      socket.once('error', reject);
    });
  }

  write(bytes: Uint8Array): void {
    if (!this.socket.destroyed) this.socket.write(bytes);
  }

  /** Resolves with exactly `count` bytes, or undefined if the connection closes first. */
  async read(count: number, timeoutMs = 10_000): Promise<Buffer | undefined> {
    const deadline = Date.now() + timeoutMs;
    while (this.queue.length < count) {
      if (this.ended) return undefined;
      if (Date.now() > deadline) throw new Error(`timed out waiting for ${count} bytes`);
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, 50);
        this.waiter = () => {
          clearTimeout(timer);
          resolve();
        };
      });
      this.waiter = undefined;
    }
    return Buffer.from(this.queue.take(count));
  }

  async readOptionReply(): Promise<{ option: number; replyType: number; data: Buffer }> {
    const header = await this.read(P.OPTION_REPLY_HEADER_BYTES);
    if (header === undefined) throw new Error('closed while waiting for an option reply');
    const decoded = P.decodeOptionReplyHeader(header);
    const data = (await this.read(decoded.length)) ?? Buffer.alloc(0);
    return { option: decoded.option, replyType: decoded.replyType, data };
  }

  /** Greeting + client flags; returns the server's handshake flags. */
  async greet(clientFlags = P.NBD_FLAG_C_FIXED_NEWSTYLE | P.NBD_FLAG_C_NO_ZEROES): Promise<number> {
    const greeting = await this.read(P.GREETING_BYTES);
    if (greeting === undefined) throw new Error('no greeting');
    const flags = Buffer.alloc(4);
    flags.writeUInt32BE(clientFlags, 0);
    this.write(flags);
    return greeting.readUInt16BE(16);
  }

  /** Full handshake to transmission via NBD_OPT_GO (simple replies unless asked). */
  async handshake(exportName: string, structured = false): Promise<void> {
    await this.greet();
    if (structured) {
      this.write(P.encodeOption(P.NBD_OPT_STRUCTURED_REPLY));
      const reply = await this.readOptionReply();
      if (reply.replyType !== P.NBD_REP_ACK) throw new Error('structured replies refused');
    }
    this.write(P.encodeOption(P.NBD_OPT_GO, P.encodeInfoRequest({ exportName, infoTypes: [] })));
    for (;;) {
      const reply = await this.readOptionReply();
      if (reply.replyType === P.NBD_REP_ACK) return;
      if (reply.replyType !== P.NBD_REP_INFO)
        throw new Error(`GO refused: 0x${reply.replyType.toString(16)}`);
    }
  }

  /** Resolves true if the server closes the connection within the timeout. */
  async closesWithin(timeoutMs: number): Promise<boolean> {
    const timeout = new Promise<boolean>((resolve) => setTimeout(() => resolve(false), timeoutMs));
    return Promise.race([this.closed.then(() => true), timeout]);
  }

  destroy(): void {
    this.socket.destroy();
  }
}

export function randomBytes(length: number, seed: number): Buffer {
  const buffer = Buffer.alloc(length);
  let x = seed >>> 0 || 1;
  for (let at = 0; at < length; at += 4) {
    // xorshift32: deterministic filler; tests need reproducible, not secret, data
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    if (at + 4 <= length) buffer.writeUInt32LE(x, at);
    else
      for (let index = at; index < length; index += 1)
        buffer[index] = (x >>> (8 * (index - at))) & 0xff;
  }
  return buffer;
}

export interface FioVerifyResult {
  error: number;
  writtenBytes: number;
  /** Write requests fio sent (in `verifyOnly`, the ones it replayed without sending). */
  writes: number;
  readBytes: number;
}

export interface FioVerifyOptions {
  cwd: string;
  verifyOnly?: boolean;
  /**
   * Overwrites: `writeBytes` in all (more than `sizeBytes`) of `blockBytes` each, at
   * random with repeats, from `seed`; fio checks each block against its latest write.
   * Without it, writes of 4–128 KiB cover the range once.
   */
  overwrite?: { writeBytes: number; blockBytes: number; seed: number };
}

/**
 * fio's NBD engine: random writes over the first `sizeBytes` of the export, never a
 * flush, then a read of every block checked by crc32c (fatal on the first mismatch).
 * With `verifyOnly`, no writes: the same blocks (same seed) are read and checked, as
 * left by an earlier run. Rejects if fio fails; returns what its JSON report says.
 */
export async function fioVerify(
  uri: string,
  sizeBytes: number,
  options: FioVerifyOptions,
): Promise<FioVerifyResult> {
  const overwrite = options.overwrite;
  const { stdout } = await run(
    'fio',
    [
      '--name=verify',
      '--ioengine=nbd',
      `--uri=${uri}`,
      '--rw=randwrite',
      ...(overwrite
        ? [
            `--bs=${overwrite.blockBytes}`,
            `--io_size=${overwrite.writeBytes}`,
            '--norandommap=1',
            `--randseed=${overwrite.seed}`,
          ]
        : ['--bsrange=4k-128k']),
      `--size=${sizeBytes}`,
      '--iodepth=32',
      '--verify=crc32c',
      '--do_verify=1',
      '--verify_fatal=1',
      '--verify_state_save=0',
      ...(options.verifyOnly ? ['--verify_only=1'] : []),
      '--output-format=json',
    ],
    { cwd: options.cwd, timeoutMs: 120_000 },
  );
  const report = JSON.parse(stdout.slice(stdout.indexOf('{'))) as {
    jobs: Array<{
      error: number;
      write: { io_bytes: number; total_ios: number };
      read: { io_bytes: number };
    }>;
  };
  const job = report.jobs[0];
  if (job === undefined) throw new Error(`fio reported no job:\n${stdout}`);
  return {
    error: job.error,
    writtenBytes: job.write.io_bytes,
    writes: job.write.total_ios,
    readBytes: job.read.io_bytes,
  };
}
