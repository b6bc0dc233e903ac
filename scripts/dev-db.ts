/**
 * `npm run db` -- start a throw-away PostgreSQL for local development (e.g.
 * for `cargo test` or manual experiments), print its URL, keep it running
 * until Ctrl-C / SIGTERM, then stop it and delete its data.
 *
 *   npm run db                 # free port
 *   npm run db -- --port 5433  # fixed port
 *
 * Honours DATABASE_URL like the test setup does (then it only checks the
 * server answers and prints the URL).
 */
import { redact, startDatabase } from './database.ts';

async function main(): Promise<void> {
  const i = process.argv.indexOf('--port');
  const port = i >= 0 ? Number(process.argv[i + 1]) : undefined;
  if (port !== undefined && !(Number.isInteger(port) && port > 0 && port < 65536)) {
    throw new Error(`invalid --port ${process.argv[i + 1] ?? ''}`);
  }

  const t0 = Date.now();
  const db = await startDatabase(port === undefined ? {} : { port });
  process.stdout.write(`DATABASE_URL=${db.url}\n`);
  process.stderr.write(
    db.embedded
      ? `embedded PostgreSQL ready in ${Date.now() - t0} ms; Ctrl-C to stop and delete it\n`
      : `using ${redact(db.url)} from DATABASE_URL\n`,
  );
  if (!db.embedded) return;

  await new Promise<void>((resolve) => {
    process.once('SIGINT', () => resolve());
    process.once('SIGTERM', () => resolve());
  });
  await db.dispose();
  process.stderr.write('stopped\n');
}

main().catch((e: unknown) => {
  process.stderr.write(`${e instanceof Error ? (e.stack ?? e.message) : String(e)}\n`);
  process.exitCode = 1;
});
