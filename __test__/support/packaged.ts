/**
 * `npm run package` for the tests that check what users install: the two tarballs in dist/ and the
 * linux-x64-gnu binary in npm/linux-x64-gnu/. Run as a child process (the zig release build takes
 * minutes when cold, seconds when cargo finds it fresh).
 */
import { execFile } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';

const exec = promisify(execFile);
export const root = fileURLToPath(new URL('../..', import.meta.url));

export interface Packaged {
  /** dist/audit-batcher-<version>.tgz */
  main: string;
  /** dist/audit-batcher-linux-x64-gnu-<version>.tgz */
  platform: string;
  /** npm/linux-x64-gnu/audit-batcher.linux-x64-gnu.node, the binary in `platform` */
  binary: string;
  version: string;
  /** How long `npm run package` took, ms. */
  ms: number;
}

/** Whether this machine can build and run the linux-x64-gnu package. */
export function isLinuxX64Gnu(): boolean {
  if (process.platform !== 'linux' || process.arch !== 'x64') return false;
  const header = process.report?.getReport() as { header?: { glibcVersionRuntime?: string } } | undefined;
  return Boolean(header?.header?.glibcVersionRuntime);
}

export async function packaged(): Promise<Packaged> {
  const t0 = Date.now();
  try {
    await exec('npm', ['run', 'package'], { cwd: root, maxBuffer: 64 * 1024 * 1024 });
  } catch (e) {
    const { stdout, stderr } = e as { stdout?: string; stderr?: string };
    throw new Error(`npm run package failed:\n${stderr ?? ''}\n${stdout ?? ''}`.slice(-8000));
  }
  const { name, version } = JSON.parse(readFileSync(join(root, 'package.json'), 'utf8')) as { name: string; version: string };
  return {
    main: join(root, 'dist', `${name}-${version}.tgz`),
    platform: join(root, 'dist', `${name}-linux-x64-gnu-${version}.tgz`),
    binary: join(root, 'npm', 'linux-x64-gnu', `${name}.linux-x64-gnu.node`),
    version,
    ms: Date.now() - t0,
  };
}
