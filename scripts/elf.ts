/**
 * The versioned symbols a Linux shared object needs from its libraries (ELF64, little-endian: x86_64 and
 * aarch64), read from its .gnu.version_r, .gnu.version and .dynsym sections, without binutils.
 *
 * A binary linked against glibc 2.36 that calls a function whose current version appeared in 2.34 asks
 * for `GLIBC_2.34`, and the dynamic loader of an older glibc refuses to load it ("version `GLIBC_2.34'
 * not found"). So the highest GLIBC_2.x a binary needs is the oldest glibc it loads on.
 */
import { readFileSync } from 'node:fs';

export interface NeededVersion {
  /** The library that must provide it, e.g. libc.so.6 */
  file: string;
  /** e.g. GLIBC_2.17 */
  version: string;
  /** The undefined symbols bound to this version, e.g. ['memcpy'] */
  symbols: string[];
}

const SHT_DYNSYM = 11;
const SHT_GNU_VERNEED = 0x6ffffffe;
const SHT_GNU_VERSYM = 0x6fffffff;

export function neededVersions(path: string): NeededVersion[] {
  const b = readFileSync(path);
  if (b.readUInt32BE(0) !== 0x7f454c46) throw new Error(`${path}: not an ELF file`);
  if (b[4] !== 2 || b[5] !== 1) throw new Error(`${path}: not a 64-bit little-endian ELF file`);
  const shoff = Number(b.readBigUInt64LE(0x28));
  const shentsize = b.readUInt16LE(0x3a);
  const shnum = b.readUInt16LE(0x3c);
  const sections = Array.from({ length: shnum }, (_, i) => {
    const o = shoff + i * shentsize;
    return {
      type: b.readUInt32LE(o + 4),
      offset: Number(b.readBigUInt64LE(o + 0x18)),
      size: Number(b.readBigUInt64LE(o + 0x20)),
      link: b.readUInt32LE(o + 0x28),
      info: b.readUInt32LE(o + 0x2c),
      entsize: Number(b.readBigUInt64LE(o + 0x38)),
    };
  });
  const str = (section: number, at: number): string => {
    const start = sections[section]!.offset + at;
    return b.toString('latin1', start, b.indexOf(0, start));
  };

  // Version index -> needed version.
  const byIndex = new Map<number, NeededVersion>();
  const needed: NeededVersion[] = [];
  const verneed = sections.find((s) => s.type === SHT_GNU_VERNEED);
  if (!verneed) return [];
  let entry = verneed.offset;
  for (let i = 0; i < verneed.info; i++) {
    const cnt = b.readUInt16LE(entry + 2);
    const file = str(verneed.link, b.readUInt32LE(entry + 4));
    let aux = entry + b.readUInt32LE(entry + 8);
    for (let j = 0; j < cnt; j++) {
      const other = b.readUInt16LE(aux + 6);
      const v: NeededVersion = { file, version: str(verneed.link, b.readUInt32LE(aux + 8)), symbols: [] };
      byIndex.set(other, v);
      needed.push(v);
      aux += b.readUInt32LE(aux + 12);
    }
    entry += b.readUInt32LE(entry + 12);
  }

  // Which undefined dynamic symbols use each version.
  const dynsymIndex = sections.findIndex((s) => s.type === SHT_DYNSYM);
  const versym = sections.find((s) => s.type === SHT_GNU_VERSYM);
  if (dynsymIndex >= 0 && versym) {
    const dynsym = sections[dynsymIndex]!;
    const count = dynsym.size / (dynsym.entsize || 24);
    for (let i = 1; i < count; i++) {
      const sym = dynsym.offset + i * 24;
      const undefinedSymbol = b.readUInt16LE(sym + 6) === 0;
      const v = byIndex.get(b.readUInt16LE(versym.offset + i * 2) & 0x7fff);
      if (undefinedSymbol && v) v.symbols.push(str(dynsym.link, b.readUInt32LE(sym)));
    }
  }
  return needed;
}

/** Compares dotted versions: '2.17' < '2.28'. */
export function compareVersions(a: string, b: string): number {
  const pa = a.split('.').map(Number);
  const pb = b.split('.').map(Number);
  for (let i = 0; i < Math.max(pa.length, pb.length); i++) {
    const d = (pa[i] ?? 0) - (pb[i] ?? 0);
    if (d !== 0) return d;
  }
  return 0;
}

/** The highest GLIBC_x.y the binary needs (the oldest glibc it loads on), or undefined if none. */
export function glibcFloor(path: string): { floor: string | undefined; needed: NeededVersion[] } {
  const needed = neededVersions(path).filter((v) => /^GLIBC_\d+(\.\d+)*$/.test(v.version));
  let floor: string | undefined;
  for (const v of needed) {
    const n = v.version.slice('GLIBC_'.length);
    if (floor === undefined || compareVersions(n, floor) > 0) floor = n;
  }
  return { floor, needed };
}
