/**
 * A per-user cache for the tools the packaging and its tests fetch by pinned version (zig and
 * cargo-zigbuild from PyPI, the runtimes from the npm registry): `$AUDIT_BATCHER_CACHE`, else
 * `$XDG_CACHE_HOME/audit-batcher`, else `~/.cache/audit-batcher`.
 *
 * Each entry is filled in a temporary sibling directory and renamed into place, so an entry that
 * exists is complete, and two processes filling the same entry at once both end with one good copy.
 */
import { existsSync, mkdirSync, renameSync, rmSync } from 'node:fs';
import { homedir } from 'node:os';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';

export function cacheRoot(): string {
  const explicit = process.env['AUDIT_BATCHER_CACHE'];
  if (explicit) return explicit;
  return join(process.env['XDG_CACHE_HOME'] || join(homedir(), '.cache'), 'audit-batcher');
}

/**
 * The directory of cache entry `name`, filled by `fill(dir)` the first time (`dir` is empty then).
 * `fill` may be async; a failed fill leaves no entry behind.
 */
export async function cacheEntry(name: string, fill: (dir: string) => Promise<void> | void): Promise<string> {
  const root = cacheRoot();
  const dir = join(root, name);
  if (existsSync(dir)) return dir;
  mkdirSync(root, { recursive: true });
  const tmp = join(root, `.${name}.tmp-${process.pid}-${randomBytes(4).toString('hex')}`);
  mkdirSync(tmp);
  try {
    await fill(tmp);
    try {
      renameSync(tmp, dir);
    } catch (e) {
      // Another process finished the same entry first: keep theirs.
      if (!existsSync(dir)) throw e;
    }
  } finally {
    rmSync(tmp, { recursive: true, force: true });
  }
  return dir;
}
