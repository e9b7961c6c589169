// The one narrow interface every disk sits behind (nbdkit-shaped): positioned reads
// and writes with flags, flush, and the two ways of returning space. The native AIO
// engine implements it for files and block devices; tests wrap it with layers that
// inject faults or drop unflushed writes on a simulated crash.

export interface WriteFlags {
  /** Force unit access: the write is durable when it completes (RWF_DSYNC). */
  fua?: boolean;
}

export interface BlockDevice {
  /** Bytes addressable on the device. */
  readonly size: number;
  /** Required alignment of offsets, lengths and buffer addresses (O_DIRECT). */
  readonly alignment: number;
  /** Fills `buffer` from `offset`. Short reads past the end are errors, not zeros. */
  read(buffer: Uint8Array, offset: number): Promise<void>;
  write(buffer: Uint8Array, offset: number, flags?: WriteFlags): Promise<void>;
  /** Every write completed before this call is durable when it resolves. */
  flush(): Promise<void>;
  /** Deallocates the range; it reads back as zeros. */
  punchHole(offset: number, length: number): Promise<void>;
  /** Makes the range read as zeros, keeping it allocated. */
  zeroRange(offset: number, length: number): Promise<void>;
  /**
   * Optional: a zero-filled buffer whose memory address is aligned to `alignment`.
   * JavaScript cannot choose addresses, so a device that needs aligned memory (O_DIRECT)
   * must hand it out; devices without that need omit this and callers use plain buffers.
   */
  allocate?(lengthBytes: number): Uint8Array;
  /** Waits for in-flight I/O, then releases the device. */
  close(): Promise<void>;
}
