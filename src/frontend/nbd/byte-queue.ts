// A FIFO of received socket chunks that hands out exact-length byte ranges. Socket reads
// arrive in arbitrary pieces; a write payload of 1 MiB may span twenty chunks or sit inside
// one. When the range lies within one chunk we return a view of it (no copy — node gives
// every read its own buffer, so the view stays valid); only a range spanning chunks is
// copied, once, into a buffer of exactly its size.

import { assert } from '../../util/assert';

export class ByteQueue {
  private readonly chunks: Buffer[] = [];
  /** Bytes of chunks[0] already consumed. */
  private headOffset = 0;
  private totalBytes = 0;

  get length(): number {
    return this.totalBytes;
  }

  push(chunk: Buffer): void {
    if (chunk.length === 0) return;
    this.chunks.push(chunk);
    this.totalBytes += chunk.length;
  }

  /** Removes and returns the next `count` bytes; the caller checked `length` first. */
  take(count: number): Buffer {
    assert(Number.isInteger(count) && count >= 0, `take(${count})`);
    assert(count <= this.totalBytes, `take(${count}) with ${this.totalBytes} queued`);
    if (count === 0) return Buffer.alloc(0);
    const head = this.chunks[0];
    assert(head !== undefined, 'queue has bytes but no chunk');
    if (head.length - this.headOffset >= count) {
      const view = head.subarray(this.headOffset, this.headOffset + count);
      this.advance(count);
      return view;
    }
    const result = Buffer.allocUnsafe(count);
    let filled = 0;
    while (filled < count) {
      const chunk = this.chunks[0];
      assert(chunk !== undefined, 'ran out of chunks while copying');
      const piece = Math.min(chunk.length - this.headOffset, count - filled);
      chunk.copy(result, filled, this.headOffset, this.headOffset + piece);
      filled += piece;
      this.advance(piece);
    }
    return result;
  }

  /** The next `count` bytes without consuming them (meant for headers: spans are copied). */
  peek(count: number): Buffer {
    assert(count <= this.totalBytes, `peek(${count}) with ${this.totalBytes} queued`);
    const head = this.chunks[0];
    if (head !== undefined && head.length - this.headOffset >= count) {
      return head.subarray(this.headOffset, this.headOffset + count);
    }
    const result = Buffer.allocUnsafe(count);
    let filled = 0;
    for (let index = 0; filled < count; index += 1) {
      const chunk = this.chunks[index];
      assert(chunk !== undefined, 'ran out of chunks while peeking');
      const start = index === 0 ? this.headOffset : 0;
      const piece = Math.min(chunk.length - start, count - filled);
      chunk.copy(result, filled, start, start + piece);
      filled += piece;
    }
    return result;
  }

  /** Removes the next `count` bytes into `target` at `at`: one copy, straight from the socket's chunks. */
  takeInto(target: Uint8Array, at: number, count: number): void {
    assert(Number.isInteger(count) && count >= 0, `takeInto(${count})`);
    assert(count <= this.totalBytes, `takeInto(${count}) with ${this.totalBytes} queued`);
    assert(at >= 0 && at + count <= target.length, 'takeInto beyond its target');
    let filled = 0;
    while (filled < count) {
      const chunk = this.chunks[0];
      assert(chunk !== undefined, 'ran out of chunks while copying');
      const piece = Math.min(chunk.length - this.headOffset, count - filled);
      target.set(chunk.subarray(this.headOffset, this.headOffset + piece), at + filled);
      filled += piece;
      this.advance(piece);
    }
  }

  /** Drops up to `count` bytes without looking at them; returns how many were dropped. */
  discard(count: number): number {
    assert(Number.isInteger(count) && count >= 0, `discard(${count})`);
    const dropped = Math.min(count, this.totalBytes);
    let remaining = dropped;
    while (remaining > 0) {
      const chunk = this.chunks[0];
      assert(chunk !== undefined, 'ran out of chunks while discarding');
      const piece = Math.min(chunk.length - this.headOffset, remaining);
      this.advance(piece);
      remaining -= piece;
    }
    return dropped;
  }

  clear(): void {
    this.chunks.length = 0;
    this.headOffset = 0;
    this.totalBytes = 0;
  }

  private advance(count: number): void {
    const head = this.chunks[0];
    assert(head !== undefined, 'advance on an empty queue');
    this.headOffset += count;
    this.totalBytes -= count;
    assert(this.headOffset <= head.length, 'advanced past the head chunk');
    if (this.headOffset === head.length) {
      this.chunks.shift();
      this.headOffset = 0;
    }
  }
}
