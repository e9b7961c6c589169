// CRC32C (Castagnoli), the iSCSI header and data digest (RFC 7143 §13.1, appendix B of
// RFC 3720 for test vectors). Node's zlib only has the IEEE CRC32, so this is table-driven
// TypeScript, slicing-by-8: eight 256-entry tables let the loop consume eight bytes per
// round, which keeps digests of 256 KiB data segments from dominating the transfer.
// The digest goes on the wire least significant byte first (the reflected-CRC convention),
// so 32 zero bytes digest to the bytes aa 36 91 8a.

/** The reflected Castagnoli polynomial 0x1EDC6F41. */
const POLYNOMIAL_REFLECTED = 0x82f63b78;

const TABLES: Uint32Array[] = buildTables();

function buildTables(): Uint32Array[] {
  const tables: Uint32Array[] = [];
  const first = new Uint32Array(256);
  for (let n = 0; n < 256; n += 1) {
    let c = n;
    for (let bit = 0; bit < 8; bit += 1) c = c & 1 ? (c >>> 1) ^ POLYNOMIAL_REFLECTED : c >>> 1;
    first[n] = c >>> 0;
  }
  tables.push(first);
  for (let t = 1; t < 8; t += 1) {
    const previous = tables[t - 1] as Uint32Array;
    const table = new Uint32Array(256);
    for (let n = 0; n < 256; n += 1) {
      const value = previous[n];
      table[n] = ((value >>> 8) ^ first[value & 0xff]) >>> 0;
    }
    tables.push(table);
  }
  return tables;
}

/** Continues a CRC32C over `data`; 0 starts a new one. */
export function crc32cUpdate(crc: number, data: Uint8Array): number {
  const [t0, t1, t2, t3, t4, t5, t6, t7] = TABLES as [
    Uint32Array,
    Uint32Array,
    Uint32Array,
    Uint32Array,
    Uint32Array,
    Uint32Array,
    Uint32Array,
    Uint32Array,
  ];
  let c = ~crc >>> 0;
  let i = 0;
  const length = data.length;
  const end8 = length - (length % 8);
  while (i < end8) {
    const lo =
      (c ^ (data[i] | (data[i + 1] << 8) | (data[i + 2] << 16) | (data[i + 3] << 24))) >>> 0;
    c =
      t7[lo & 0xff] ^
      t6[(lo >>> 8) & 0xff] ^
      t5[(lo >>> 16) & 0xff] ^
      t4[lo >>> 24] ^
      t3[data[i + 4]] ^
      t2[data[i + 5]] ^
      t1[data[i + 6]] ^
      t0[data[i + 7]];
    i += 8;
  }
  while (i < length) {
    c = t0[(c ^ data[i]) & 0xff] ^ (c >>> 8);
    i += 1;
  }
  return ~c >>> 0;
}

/** CRC32C of the concatenation of `parts`. */
export function crc32c(...parts: Uint8Array[]): number {
  let crc = 0;
  for (const part of parts) crc = crc32cUpdate(crc, part);
  return crc;
}
