/**
 * The package as a user on linux-x64 (glibc) gets it, with no Rust toolchain anywhere: `npm run package`'s
 * two tarballs (the JavaScript package and the prebuilt linux-x64-gnu package) installed into a fresh
 * project with cargo and rustc off PATH, then log/flush/close against the real PostgreSQL under every
 * runtime of __test__/support/runtimes.ts (Node.js 18, 20, 22, 24, Bun, Deno). Each must write its rows
 * and exit by itself; the runtimes and what they did are printed as a table (and kept in
 * .tmp/runtimes.md).
 *
 * Without the platform package (optional dependencies left out), loading fails with an error that names
 * the platform and both fixes.
 */
import { execFile, spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, readdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { delimiter, join } from 'node:path';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { createTestDatabase, dropTestDatabase, withClient } from '../scripts/database.ts';
import { isLinuxX64Gnu, packaged, root, type Packaged } from './support/packaged.ts';
import { installRuntimes, type Runtime } from './support/runtimes.ts';

/** PATH without the directories that hold cargo or rustc. */
function pathWithoutRust(): string {
  return (process.env['PATH'] ?? '')
    .split(delimiter)
    .filter((dir) => dir && !['cargo', 'rustc'].some((tool) => existsSync(join(dir, tool))))
    .join(delimiter);
}

const app = `// The quick start, as a user writes it.
import process from 'node:process'
import { AuditBatcher } from '__SPECIFIER__'

const audit = new AuditBatcher({ connectionString: process.env.DB_URL, table: process.env.TABLE })
await audit.ensureSchema()
for (let i = 0; i < 10; i++) audit.log({ action: 'install.check', actor: process.env.RUNTIME, payload: { i } })
const result = await audit.flush()
await audit.close()
console.log(JSON.stringify(result))
`;

interface Row {
  runtime: string;
  version: string;
  rows: number;
  exit: string;
  ms: number;
  ok: boolean;
  detail: string;
}

describe.skipIf(!isLinuxX64Gnu())('the packed package, installed without a Rust toolchain', () => {
  let pkg: Packaged;
  let url: string;
  let dir: string;
  let runtimes: Runtime[];
  const table = `audit_install_${Date.now().toString(36)}`;
  const env = { ...process.env, PATH: pathWithoutRust() };
  const timings: string[] = [];

  beforeAll(async () => {
    url = await createTestDatabase(inject('databaseUrl'));
    dir = await mkdtemp(join(tmpdir(), 'audit-batcher-install-'));
    let t0 = Date.now();
    // The packages and the runtimes are independent: fetch the runtimes while zig links.
    [pkg, runtimes] = await Promise.all([packaged(), installRuntimes()]);
    timings.push(`npm run package ${(pkg.ms / 1000).toFixed(1)} s, runtimes ready ${((Date.now() - t0) / 1000).toFixed(1)} s`);
    t0 = Date.now();
    await writeFile(join(dir, 'package.json'), JSON.stringify({ name: 'consumer', private: true, type: 'module' }));
    await run('npm', ['install', '--no-audit', '--no-fund', '--prefer-offline', pkg.main, pkg.platform], dir);
    timings.push(`npm install of the two tarballs ${((Date.now() - t0) / 1000).toFixed(1)} s`);
  }, 30 * 60_000);

  afterAll(async () => {
    if (dir) await rm(dir, { recursive: true, force: true });
    if (url) await dropTestDatabase(url);
  });

  async function run(command: string, args: string[], cwd: string, extraEnv: Record<string, string> = {}) {
    return new Promise<{ code: number | null; signal: string | null; stdout: string; stderr: string; ms: number }>((resolve) => {
      const t0 = Date.now();
      execFile(
        command,
        args,
        { cwd, env: { ...env, ...extraEnv }, timeout: 60_000, killSignal: 'SIGKILL', maxBuffer: 16 * 1024 * 1024 },
        (error, stdout, stderr) => {
          const e = error as (Error & { code?: number | string; signal?: string }) | null;
          resolve({
            code: e ? (typeof e.code === 'number' ? e.code : null) : 0,
            signal: e?.signal ?? null,
            stdout,
            stderr: e && typeof e.code === 'string' ? `${e.message}\n${stderr}` : stderr,
            ms: Date.now() - t0,
          });
        },
      );
    });
  }

  it('has no cargo or rustc on the PATH it installs and runs with', () => {
    const found = spawnSync('sh', ['-c', 'command -v cargo || command -v rustc'], { env, encoding: 'utf8' });
    expect(found.stdout.trim()).toBe('');
  });

  it('puts the binary in the platform package and none in the main one', async () => {
    const modules = join(dir, 'node_modules');
    expect((await readdir(join(modules, 'audit-batcher'))).filter((f) => f.endsWith('.node'))).toEqual([]);
    expect(await readdir(join(modules, 'audit-batcher-linux-x64-gnu'))).toContain('audit-batcher.linux-x64-gnu.node');
  });

  it('logs, flushes and closes on every runtime, each writing its rows and exiting by itself', async () => {
    await writeFile(join(dir, 'app.mjs'), app.replace('__SPECIFIER__', 'audit-batcher'));
    await writeFile(join(dir, 'app-npm-specifier.mjs'), app.replace('__SPECIFIER__', 'npm:audit-batcher'));
    const tried: Array<{ runtime: Runtime; label: string; script: string }> = [];
    for (const runtime of runtimes) {
      tried.push({ runtime, label: runtime.name, script: 'app.mjs' });
      if (runtime.name === 'Deno') tried.push({ runtime, label: 'Deno (npm: specifier)', script: 'app-npm-specifier.mjs' });
    }

    const rows: Row[] = [];
    for (const { runtime, label, script } of tried) {
      const versionOutput = (await run(runtime.bin, runtime.versionArgs, dir)).stdout;
      const version = /\d+\.\d+\.\d+/.exec(versionOutput)?.[0] ?? versionOutput.trim();
      const r = await run(runtime.bin, [...runtime.args, script], dir, {
        DB_URL: url,
        TABLE: table,
        RUNTIME: label,
        DENO_DIR: join(dir, '.deno'),
        DENO_NO_UPDATE_CHECK: '1',
      });
      const written = await withClient(url, async (c) => {
        const exists = await c.query(`SELECT to_regclass($1) AS t`, [table]);
        if (!exists.rows[0]?.t) return 0;
        const n = await c.query<{ n: string }>(`SELECT count(*) AS n FROM ${table} WHERE actor = $1`, [label]);
        return Number(n.rows[0]?.n);
      });
      const exit = r.signal ? `killed after ${r.ms} ms (did not exit by itself)` : `exit ${r.code}`;
      const ok = r.code === 0 && written === 10 && r.stdout.includes('"written":10');
      const firstError = r.stderr.split('\n').find((l) => l.trim()) ?? '';
      rows.push({ runtime: label, version, rows: written, exit, ms: r.ms, ok, detail: ok ? '' : `${firstError}\n${r.stderr}`.trim() });
    }

    const lines = [
      '| runtime | version | rows written | exit | time |',
      '| --- | --- | --- | --- | --- |',
      ...rows.map(
        (r) => `| ${r.runtime} | ${r.version} | ${r.rows}/10 | ${r.ok ? r.exit : `${r.exit}: ${r.detail.split('\n')[0]}`} | ${r.ms} ms |`,
      ),
    ];
    await mkdir(join(root, '.tmp'), { recursive: true });
    await writeFile(join(root, '.tmp', 'runtimes.md'), `${lines.join('\n')}\n\n${timings.join('\n')}\n`);
    console.log(`\nThe packed package on each runtime (no cargo or rustc on PATH):\n${lines.join('\n')}\n${timings.join('\n')}\n`);

    const failed = rows.filter((r) => !r.ok);
    expect(failed.map((r) => `${r.runtime}: ${r.exit}, ${r.rows} rows\n${r.detail}`)).toEqual([]);
  }, 10 * 60_000);

  it('without the platform package, fails at load naming the platform and both fixes', async () => {
    const bare = await mkdtemp(join(tmpdir(), 'audit-batcher-no-binary-'));
    try {
      await writeFile(join(bare, 'package.json'), JSON.stringify({ name: 'consumer', private: true, type: 'module' }));
      await run('npm', ['install', '--no-audit', '--no-fund', '--prefer-offline', '--omit=optional', pkg.main], bare);
      await writeFile(join(bare, 'app.mjs'), app.replace('__SPECIFIER__', 'audit-batcher'));
      const r = await run(process.execPath, ['app.mjs'], bare, { DB_URL: url, TABLE: table, RUNTIME: 'none' });
      expect(r.code).not.toBe(0);
      expect(r.stderr).toContain(`no native binary loaded for linux-x64-gnu (Node.js ${process.version})`);
      expect(r.stderr).toContain(`npm install audit-batcher-linux-x64-gnu@${pkg.version}`);
      expect(r.stderr).toContain("Build from source (needs Rust's cargo)");
      expect(r.stderr).toContain('ERR_AUDIT_NATIVE_BINDING');
    } finally {
      await rm(bare, { recursive: true, force: true });
    }
  }, 5 * 60_000);

  it('with a platform package whose binary does not load, says so and why', async () => {
    const broken = await mkdtemp(join(tmpdir(), 'audit-batcher-broken-binary-'));
    try {
      await writeFile(join(broken, 'package.json'), JSON.stringify({ name: 'consumer', private: true, type: 'module' }));
      await run('npm', ['install', '--no-audit', '--no-fund', '--prefer-offline', pkg.main, pkg.platform], broken);
      // What a binary for another libc or a truncated download looks like to the dynamic loader.
      await writeFile(join(broken, 'node_modules', 'audit-batcher-linux-x64-gnu', 'audit-batcher.linux-x64-gnu.node'), 'not an ELF file');
      await writeFile(join(broken, 'app.mjs'), app.replace('__SPECIFIER__', 'audit-batcher'));
      const r = await run(process.execPath, ['app.mjs'], broken, { DB_URL: url, TABLE: table, RUNTIME: 'none' });
      expect(r.code).not.toBe(0);
      expect(r.stderr).toContain('no native binary loaded for linux-x64-gnu');
      expect(r.stderr).toMatch(/A binary was found but did not load:\n {2}- .*audit-batcher\.linux-x64-gnu\.node.*(invalid ELF header|too short)/);
    } finally {
      await rm(broken, { recursive: true, force: true });
    }
  }, 5 * 60_000);
});
