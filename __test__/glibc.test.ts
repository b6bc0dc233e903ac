/**
 * The prebuilt linux-x64-gnu binary loads on glibc 2.17 and later, as napi-rs's own builds do: it asks
 * for no symbol version newer than GLIBC_2.17. Read from the binary `npm run package` puts in the
 * platform package (linked by zig against glibc 2.17, see scripts/zig.ts), without binutils.
 *
 * The same reader, on the binary `npm run build` links against this machine's glibc, must see a newer
 * floor there: the check can fail.
 */
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { compareVersions, glibcFloor, type NeededVersion } from '../scripts/elf.ts';
import { isLinuxX64Gnu, packaged, root, type Packaged } from './support/packaged.ts';

const FLOOR = '2.17';

function above(needed: NeededVersion[], floor: string): string[] {
  return needed
    .filter((v) => compareVersions(v.version.slice('GLIBC_'.length), floor) > 0)
    .map((v) => `${v.version} (${v.file}): ${v.symbols.join(', ')}`);
}

describe.skipIf(!isLinuxX64Gnu())('glibc floor of the linux-x64-gnu binary', () => {
  let pkg: Packaged;

  beforeAll(async () => {
    pkg = await packaged();
  }, 30 * 60_000);

  it(`needs no glibc symbol newer than GLIBC_${FLOOR}`, () => {
    const { floor, needed } = glibcFloor(pkg.binary);
    const versions = [...new Set(needed.map((v) => v.version.slice('GLIBC_'.length)))].sort(compareVersions);
    console.log(`${pkg.binary}: GLIBC versions needed ${versions.join(', ')}; floor ${floor}`);
    expect(floor).toBeDefined();
    expect(above(needed, FLOOR)).toEqual([]);
  });

  const host = (process.report?.getReport() as { header?: { glibcVersionRuntime?: string } } | undefined)?.header
    ?.glibcVersionRuntime;
  it.runIf(existsSync(join(root, 'audit-batcher.linux-x64-gnu.node')) && host !== undefined && compareVersions(host, FLOOR) > 0)(
    "finds a newer floor in the binary linked against this machine's glibc (the check can fail)",
    () => {
      const { floor } = glibcFloor(join(root, 'audit-batcher.linux-x64-gnu.node'));
      console.log(`npm run build's binary: floor ${floor} (this machine: glibc ${host})`);
      expect(compareVersions(floor!, FLOOR)).toBeGreaterThan(0);
    },
  );
});
