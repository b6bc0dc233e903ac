/**
 * The package as a user gets it: `npm pack`, installed into a fresh TypeScript project, type-checked with
 * `strict`, and run (ESM import and CommonJS require) against the real PostgreSQL.
 */
import { execFile } from 'node:child_process';
import { copyFile, mkdir, mkdtemp, readdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { dropDatabase, freshDatabase, uniqueTable } from './support/fixture.ts';

const exec = promisify(execFile);
const root = fileURLToPath(new URL('..', import.meta.url));
const tsc = join(root, 'node_modules', '.bin', 'tsc');

let url: string;
let dir: string;

beforeAll(async () => {
  url = await freshDatabase();
  dir = await mkdtemp(join(tmpdir(), 'audit-batcher-consumer-'));
});

afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
  await dropDatabase(url);
});

const app = `
import { AuditBatcher, type AuditBatcherOptions, type AuditEntry, type FlushResult } from 'audit-batcher'
import { createRequire } from 'node:module'

const options: AuditBatcherOptions = { connectionString: process.env.DB_URL!, table: process.env.TABLE! }
const audit = new AuditBatcher(options)
await audit.ensureSchema()
const entry: AuditEntry = { action: 'tool.call', actor: 'user:42', payload: { tool: 'grep' } }
const id: string = audit.log(entry)
const result: FlushResult = await audit.flush()
await audit.close()

const cjs = createRequire(import.meta.url)('audit-batcher') as typeof import('audit-batcher')
const memory = new cjs.AuditBatcher({ sink: 'memory' })
memory.log({ action: 'from.require' })
await memory.flush()
console.log(JSON.stringify({ id, result, memory: memory.memoryEntries().map((e) => e.action) }))
`;

it('npm pack gives a tarball that installs into a fresh TypeScript project, type-checks and works', async () => {
  const packed = await exec('npm', ['pack', '--ignore-scripts', '--json', '--pack-destination', dir], { cwd: root });
  const [info] = JSON.parse(packed.stdout) as Array<{ filename: string; files: Array<{ path: string }> }>;
  const files = info!.files.map((f) => f.path).sort();
  expect(files).toEqual(['README.md', 'bin/audit-batcher.js', 'bin/worker.js', 'binding.js', 'index.d.ts', 'index.js', 'package.json']);
  // The binary travels in its platform package (npm/linux-x64-gnu), here with the one `npm run build` made
  // (install.test.ts installs the published layout, from `npm run package`).
  const platformDir = join(dir, 'linux-x64-gnu');
  await mkdir(platformDir);
  await copyFile(join(root, 'npm', 'linux-x64-gnu', 'package.json'), join(platformDir, 'package.json'));
  await copyFile(join(root, 'audit-batcher.linux-x64-gnu.node'), join(platformDir, 'audit-batcher.linux-x64-gnu.node'));
  const platformPacked = await exec('npm', ['pack', '--json', '--pack-destination', dir], { cwd: platformDir });
  const [platformInfo] = JSON.parse(platformPacked.stdout) as Array<{ filename: string }>;

  await writeFile(join(dir, 'package.json'), JSON.stringify({ name: 'consumer', private: true, type: 'module' }));
  await writeFile(
    join(dir, 'tsconfig.json'),
    JSON.stringify({
      compilerOptions: {
        target: 'ES2022',
        module: 'NodeNext',
        strict: true,
        skipLibCheck: false,
        // @types/node from this repository, so the consumer project needs no registry access.
        typeRoots: [join(root, 'node_modules', '@types')],
        types: ['node'],
      },
    }),
  );
  await writeFile(join(dir, 'app.ts'), app);
  await exec('npm', ['install', '--no-audit', '--no-fund', '--prefer-offline', join(dir, info!.filename), join(dir, platformInfo!.filename)], {
    cwd: dir,
  });
  expect(await readdir(join(dir, 'node_modules', 'audit-batcher-linux-x64-gnu'))).toContain('audit-batcher.linux-x64-gnu.node');
  await exec(tsc, ['-p', dir], { cwd: dir }).catch((e: { stdout?: string }) => {
    throw new Error(`tsc failed on the consumer project:\n${e.stdout ?? String(e)}`);
  });

  const run = await exec(process.execPath, ['app.js'], { cwd: dir, env: { ...process.env, DB_URL: url, TABLE: uniqueTable() } });
  const out = JSON.parse(run.stdout) as { id: string; result: unknown; memory: string[] };
  expect(out.id).toMatch(/^[0-9a-f-]{36}$/);
  expect(out.result).toEqual({ written: 1, pending: 0 });
  expect(out.memory).toEqual(['from.require']);
}, 120_000);
