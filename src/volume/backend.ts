// What a protocol front end (NBD, iSCSI) sees of a volume: byte-addressed I/O with
// flags, and extents for block status. Front ends hold no storage logic; the volume
// layer implements this interface and checks every range again before touching data.

export interface IoFlags {
  /** Force unit access: durable (on every replica) when the call resolves. */
  fua?: boolean;
}

export interface ZeroFlags extends IoFlags {
  /** The range must stay allocated (NBD_CMD_FLAG_NO_HOLE). */
  noHole?: boolean;
  /** Fail with ENOTSUP rather than write zeros slowly (NBD_CMD_FLAG_FAST_ZERO). */
  fastZero?: boolean;
}

export interface Extent {
  length: number;
  /** Not allocated: reads as zeros and takes no space. */
  hole: boolean;
  /** Reads as zeros (allocated or not). */
  zero: boolean;
}

/** Bytes lent by the volume layer; `release()` once they have been sent, exactly once. */
export interface ReadLease {
  readonly data: Uint8Array;
  release(): void;
}

export interface VolumeHandle {
  readonly name: string;
  readonly size: number;
  readonly readOnly: boolean;
  /** Returns a buffer of exactly `length` bytes; unwritten blocks read as zeros. */
  read(offset: number, length: number): Promise<Uint8Array>;
  /**
   * Optional zero-copy read: the bytes stay in a buffer of the layers below (reused
   * once released), so a front end can send them as they are.
   */
  readLeased?(offset: number, length: number): Promise<ReadLease>;
  write(offset: number, data: Uint8Array, flags?: IoFlags): Promise<void>;
  /** Discards the range: it may read as zeros afterwards and its space is freed. */
  trim(offset: number, length: number, flags?: IoFlags): Promise<void>;
  writeZeroes(offset: number, length: number, flags?: ZeroFlags): Promise<void>;
  /** Every write acknowledged before this call is durable when it resolves. */
  flush(): Promise<void>;
  /** Extents covering at least `offset` .. `offset + length` (the last may run short of it). */
  blockStatus(offset: number, length: number): Promise<Extent[]>;
  /** Hint to prefetch; may do nothing. */
  cache(offset: number, length: number): Promise<void>;
  /** Releases the handle; outstanding calls finish first. */
  close(): Promise<void>;
}

export interface ExportInfo {
  name: string;
  description: string;
  size: number;
  readOnly: boolean;
}

/** How a front end finds volumes: the daemon passes one in. */
export interface ExportProvider {
  list(): Promise<ExportInfo[]>;
  /** Throws CisternError UNKNOWN_VOLUME when there is no such volume. */
  open(name: string, options: { readOnly: boolean }): Promise<VolumeHandle>;
}
