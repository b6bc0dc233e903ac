/**
 * A smoke test of a binary on the machine it runs on, for CI jobs that only have the prebuilt binary
 * (no cargo): starts a database (DATABASE_URL, else an embedded one), runs
 * __test__/fixtures/log-flush-close.cjs under this Node.js (10 entries, flush, close, then the process
 * must exit by itself), checks the table holds the 10 rows, and removes the database.
 *
 *   npx tsx scripts/smoke.ts
 */
import { execFile } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { createTestDatabase, dropTestDatabase, startDatabase, withClient } from './database.ts';

const exec = promisify(execFile);
const fixture = fileURLToPath(new URL('../__test__/fixtures/log-flush-close.cjs', import.meta.url));

async function main(): Promise<void> {
  const db = await startDatabase();
  try {
    const url = await createTestDatabase(db.url, 'audit_batcher_smoke');
    try {
      const { stdout } = await exec(process.execPath, [fixture, url, 'audit_smoke'], { timeout: 60_000 });
      const rows = await withClient(url, async (c) => Number((await c.query<{ n: string }>('SELECT count(*) AS n FROM audit_smoke')).rows[0]?.n));
      console.log(`${process.platform}-${process.arch}, Node.js ${process.version}: ${stdout.trim()}, ${rows} rows in the table`);
      if (rows !== 10) throw new Error(`expected 10 rows, found ${rows}`);
    } finally {
      await dropTestDatabase(url);
    }
  } finally {
    await db.dispose();
  }
}

main().catch((e: unknown) => {
  console.error(e);
  process.exit(1);
});
