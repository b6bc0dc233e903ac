/**
 * `npm run package`: the two tarballs a user on linux-x64 (glibc) installs, written into dist/:
 *
 *   dist/audit-batcher-<version>.tgz                 the JavaScript package (index.js, binding.js, index.d.ts),
 *                                                    with the seven platform packages as optionalDependencies
 *                                                    at its own version, as `napi prepublish` publishes it
 *   dist/audit-batcher-linux-x64-gnu-<version>.tgz   npm/linux-x64-gnu with the binary, linked by zig against
 *                                                    glibc 2.17 so it loads on any glibc from 2.17 on
 *
 * Install both at once (`npm install ./dist/*.tgz`). The binary is built with cargo-zigbuild (see
 * scripts/zig.ts, which installs zig when missing) into target/x86_64-unknown-linux-gnu/, apart from
 * `npm run build`'s target/release/, so neither build undoes the other. The other platforms' binaries
 * are built by .github/workflows/CI.yml on their own runners.
 */
import { spawnSync, type SpawnSyncOptions } from 'node:child_process';
import { copyFileSync, cpSync, mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { glibcFloor } from './elf.ts';
import { zigEnv } from './zig.ts';

const root = fileURLToPath(new URL('..', import.meta.url));
const PLATFORM = 'linux-x64-gnu';
const TARGET = 'x86_64-unknown-linux-gnu.2.17';

interface PackageJson {
  name: string;
  version: string;
  files: string[];
  napi: { binaryName: string; targets: string[] };
  optionalDependencies?: Record<string, string>;
  [key: string]: unknown;
}

function run(command: string, args: string[], options: SpawnSyncOptions = {}): string {
  const r = spawnSync(command, args, { cwd: root, encoding: 'utf8', stdio: ['ignore', 'pipe', 'inherit'], ...options });
  if (r.status !== 0) {
    throw new Error(`${command} ${args.join(' ')} failed (${r.error?.message ?? `exit ${r.status}`})`);
  }
  return String(r.stdout ?? '');
}

function pack(dir: string, dist: string): string {
  const out = run('npm', ['pack', '--ignore-scripts', '--json', '--pack-destination', dist], { cwd: dir });
  const [info] = JSON.parse(out) as Array<{ filename: string }>;
  return join(dist, info!.filename);
}

export async function buildPackages(): Promise<{ main: string; platform: string; floor: string | undefined }> {
  const pkg = JSON.parse(readFileSync(join(root, 'package.json'), 'utf8')) as PackageJson;
  const work = join(root, '.tmp', 'package');
  const dist = join(root, 'dist');
  rmSync(work, { recursive: true, force: true });
  mkdirSync(join(work, 'build'), { recursive: true });
  mkdirSync(dist, { recursive: true });

  // 1. The glibc 2.17 binary. --output-dir keeps it (and the loader and typings napi writes beside it,
  //    which this step does not use) away from the project's own build.
  const env = await zigEnv();
  run(
    'npx',
    ['napi', 'build', '--platform', '--release', '--target', TARGET, '--cross-compile', '--output-dir', join(work, 'build'), '--no-js'],
    { env, stdio: ['ignore', 'inherit', 'inherit'] },
  );
  const binary = `${pkg.napi.binaryName}.${PLATFORM}.node`;
  const { floor } = glibcFloor(join(work, 'build', binary));
  copyFileSync(join(work, 'build', binary), join(root, 'npm', PLATFORM, binary));

  // 2. The main package as published: package.json's files, plus optionalDependencies on every platform
  //    package at this version (what `napi prepublish` adds before `npm publish`).
  const main = join(work, 'main');
  mkdirSync(main);
  // An entry of `files` may be a directory (`bin/`).
  for (const file of pkg.files) cpSync(join(root, file), join(main, file), { recursive: true });
  const optionalDependencies: Record<string, string> = {};
  for (const triple of pkg.napi.targets) {
    const platformPkg = JSON.parse(readFileSync(join(root, 'npm', platformDir(triple), 'package.json'), 'utf8')) as PackageJson;
    if (platformPkg.version !== pkg.version) {
      throw new Error(`npm/${platformDir(triple)}/package.json is at ${platformPkg.version}, the package at ${pkg.version}: run napi version`);
    }
    optionalDependencies[platformPkg.name] = pkg.version;
  }
  writeFileSync(join(main, 'package.json'), JSON.stringify({ ...pkg, optionalDependencies }, null, 2) + '\n');

  // 3. The tarballs.
  for (const name of [`${pkg.name}-${pkg.version}.tgz`, `${pkg.name}-${PLATFORM}-${pkg.version}.tgz`]) {
    rmSync(join(dist, name), { force: true });
  }
  return { main: pack(main, dist), platform: pack(join(root, 'npm', PLATFORM), dist), floor };
}

/** napi's npm/ directory name of a target triple. */
export function platformDir(triple: string): string {
  const [cpu, , system, abi] = triple.split('-');
  const arch = cpu === 'x86_64' ? 'x64' : cpu === 'aarch64' ? 'arm64' : cpu!;
  if (triple.includes('apple-darwin')) return `darwin-${arch}`;
  if (triple.includes('windows')) return `win32-${arch}-${abi}`;
  return `${system}-${arch}-${abi}`;
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  buildPackages().then(
    ({ main, platform, floor }) => {
      console.log(`${main}\n${platform} (needs glibc >= ${floor ?? '?'})`);
    },
    (e: unknown) => {
      console.error(e instanceof Error ? e.message : e);
      process.exit(1);
    },
  );
}
