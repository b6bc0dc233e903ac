/**
 * Vitest globalSetup: one PostgreSQL for the whole run (embedded, or the
 * server in DATABASE_URL), handed to test files via `inject()`:
 *
 *   import { inject } from 'vitest';
 *   const url = inject('databaseUrl');
 *
 * Test files that need their own database should call
 * createTestDatabase(inject('databaseUrl')) from scripts/database.ts.
 */
// The augmented module must be part of the program (TypeScript 7 reports
// TS2664 otherwise), hence this type-only import.
import type {} from 'vitest';
import type { TestProject } from 'vitest/node';
import { redact, startDatabase } from '../../scripts/database.ts';

declare module 'vitest' {
  export interface ProvidedContext {
    /** URL of the run's PostgreSQL server (database `postgres` or DATABASE_URL's). */
    databaseUrl: string;
    /** true when the server is the run's private embedded one (false with DATABASE_URL). */
    databaseEmbedded: boolean;
  }
}

export default async function setup(project: TestProject): Promise<() => Promise<void>> {
  const t0 = Date.now();
  const db = await startDatabase();
  if (process.env['DEBUG']) {
    process.stderr.write(
      `[global-setup] ${db.embedded ? 'embedded' : 'external'} PostgreSQL at ${redact(db.url)} (${Date.now() - t0} ms)\n`,
    );
  }
  project.provide('databaseUrl', db.url);
  project.provide('databaseEmbedded', db.embedded);
  return async () => {
    await db.dispose();
  };
}
