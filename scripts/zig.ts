/**
 * zig as the linker for the linux-x64-gnu binary, so that it loads on glibc 2.17 and later (the build
 * machine's own glibc is much newer; a binary linked against it asks for its symbol versions).
 * `cargo zigbuild --target x86_64-unknown-linux-gnu.2.17` links against zig's glibc 2.17 stubs.
 *
 * Both tools come from PyPI at pinned versions (`pip install --target` into the project's cache, see
 * scripts/cache.ts), so a machine with Python's pip and cargo has everything the build needs.
 *
 *   tsx scripts/zig.ts          # installs when missing, prints the directory to put on PATH
 */
import { spawnSync } from 'node:child_process';
import { symlinkSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { cacheEntry } from './cache.ts';

export const ZIG_VERSION = '0.14.1';
export const CARGO_ZIGBUILD_VERSION = '0.20.1';

function python(): string {
  for (const candidate of ['python3', 'python']) {
    const r = spawnSync(candidate, ['-m', 'pip', '--version'], { encoding: 'utf8' });
    if (r.status === 0) return candidate;
  }
  throw new Error(
    "zig toolchain: no Python with pip found (tried 'python3 -m pip' and 'python -m pip'). " +
      `Install pip (Debian: apt-get install python3-pip), or install ziglang==${ZIG_VERSION} and ` +
      `cargo-zigbuild==${CARGO_ZIGBUILD_VERSION} yourself and set AUDIT_BATCHER_ZIG_BIN to the directory holding ` +
      'both `zig` and `cargo-zigbuild`.',
  );
}

/** A directory holding `zig` and `cargo-zigbuild`, installed into the cache when missing. */
export async function zigBinDir(): Promise<string> {
  const explicit = process.env['AUDIT_BATCHER_ZIG_BIN'];
  if (explicit) return explicit;
  const dir = await cacheEntry(`zig-${ZIG_VERSION}-cargo-zigbuild-${CARGO_ZIGBUILD_VERSION}`, (tmp) => {
    const py = python();
    process.stderr.write(`Installing ziglang ${ZIG_VERSION} and cargo-zigbuild ${CARGO_ZIGBUILD_VERSION} (PyPI) into ${tmp}\n`);
    const r = spawnSync(
      py,
      [
        '-m', 'pip', 'install', '--quiet', '--disable-pip-version-check', '--no-input',
        '--target', tmp, '--no-deps', '--only-binary', ':all:',
        `ziglang==${ZIG_VERSION}`, `cargo-zigbuild==${CARGO_ZIGBUILD_VERSION}`,
      ],
      // pip's output to stderr: stdout carries only the directory (CI appends it to PATH).
      { stdio: ['ignore', 2, 2], env: { ...process.env, PIP_ROOT_USER_ACTION: 'ignore' } },
    );
    if (r.status !== 0) throw new Error(`pip install of ziglang and cargo-zigbuild failed (${r.error?.message ?? `exit ${r.status}`})`);
    // The ziglang wheel ships zig inside the package directory (beside its lib/); zig finds that
    // through its own resolved path, so a symlink on PATH is enough.
    symlinkSync(join('..', 'ziglang', 'zig'), join(tmp, 'bin', 'zig'));
  });
  return join(dir, 'bin');
}

/** The environment for a build through cargo-zigbuild: zig and cargo-zigbuild first on PATH. */
export async function zigEnv(env: NodeJS.ProcessEnv = process.env): Promise<NodeJS.ProcessEnv> {
  const bin = await zigBinDir();
  return { ...env, PATH: `${bin}:${env['PATH'] ?? ''}` };
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  zigBinDir().then(
    (dir) => console.log(dir),
    (e: unknown) => {
      console.error(e instanceof Error ? e.message : e);
      process.exit(1);
    },
  );
}
