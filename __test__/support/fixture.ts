/**
 * Shared pieces of the addon's test suites: a private database per test file, row readers, and a
 * statement counter that proves how many INSERT statements reached the table.
 */
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { afterAll, beforeAll, expect, inject } from 'vitest';
import { AuditBatcher } from '../../index.js';
import { createTestDatabase, dropTestDatabase, withClient } from '../../scripts/database.ts';

export { withClient };

/** A fresh database for one test file; drop it with `dropDatabase` in afterAll. */
export async function freshDatabase(): Promise<string> {
  return createTestDatabase(inject('databaseUrl'));
}

export async function dropDatabase(url: string): Promise<void> {
  await dropTestDatabase(url);
}

/** The database of one test file, and batchers on it. */
export interface SuiteDatabase {
  /** Its URL (set once the file's tests start). */
  readonly url: string;
  /** A batcher on this database (`connectionString` can be overridden), closed after the file's tests. */
  batcher(options?: Partial<ConstructorParameters<typeof AuditBatcher>[0]>): AuditBatcher;
}

/**
 * For a test file: a fresh database made before its tests and dropped after them, once every batcher made
 * with `batcher()` is closed.
 */
export function suiteDatabase(): SuiteDatabase {
  let url = '';
  const open: AuditBatcher[] = [];
  beforeAll(async () => {
    url = await freshDatabase();
  });
  afterAll(async () => {
    await Promise.allSettled(open.map((b) => b.close()));
    await dropDatabase(url);
  });
  return {
    get url() {
      return url;
    },
    batcher(options = {}) {
      const b = new AuditBatcher({ connectionString: url, ...options });
      open.push(b);
      return b;
    },
  };
}

/** A table name no other test uses. */
export function uniqueTable(prefix = 'audit'): string {
  return `${prefix}_${randomBytes(4).toString('hex')}`;
}

export interface AuditRow {
  id: string;
  occurred_at: Date;
  tenant_id: string | null;
  actor: string | null;
  action: string;
  resource: string | null;
  outcome: string | null;
  payload: unknown;
}

/** Every row of `table`, ordered by id (which is log order for generated ids). */
export async function readRows(url: string, table: string): Promise<AuditRow[]> {
  return withClient(url, async (c) => (await c.query<AuditRow>(`SELECT * FROM ${table} ORDER BY id`)).rows);
}

export async function countRows(url: string, table: string): Promise<number> {
  return withClient(url, async (c) => {
    const r = await c.query<{ n: string }>(`SELECT count(*) AS n FROM ${table}`);
    return Number(r.rows[0]?.n);
  });
}

/**
 * Installs a statement-level trigger on `table` that counts INSERT statements (not rows) into
 * `<table>_statements`. Returns a reader for the count.
 */
export async function countStatements(url: string, table: string): Promise<() => Promise<number>> {
  const counter = `${table}_statements`;
  await withClient(url, (c) =>
    c.query(`
      CREATE TABLE ${counter} (n int NOT NULL);
      INSERT INTO ${counter} VALUES (0);
      CREATE FUNCTION ${counter}_bump() RETURNS trigger LANGUAGE plpgsql AS
        $$ BEGIN UPDATE ${counter} SET n = n + 1; RETURN NULL; END $$;
      CREATE TRIGGER ${counter}_trg AFTER INSERT ON ${table}
        FOR EACH STATEMENT EXECUTE FUNCTION ${counter}_bump();
    `),
  );
  return () =>
    withClient(url, async (c) => Number((await c.query<{ n: number }>(`SELECT n FROM ${counter}`)).rows[0]?.n));
}

/** The error a promise rejected with (fails the test when it resolves). */
export async function rejectionOf(p: Promise<unknown>): Promise<Error & Record<string, unknown>> {
  try {
    await p;
  } catch (e) {
    return e as Error & Record<string, unknown>;
  }
  throw new Error('expected the promise to reject, but it resolved');
}

/** The error a call threw (fails the test when it returns). */
export function thrownBy(fn: () => unknown): Error & Record<string, unknown> {
  try {
    fn();
  } catch (e) {
    return e as Error & Record<string, unknown>;
  }
  throw new Error('expected the call to throw, but it returned');
}

/** Every accepted entry is in exactly one state. */
export function expectBooksBalance(s: {
  logged: number;
  buffered: number;
  written: number;
  deadLettered: number;
  sampledOut: number;
  dropped: number;
}): void {
  expect(s.logged).toBe(s.buffered + s.written + s.deadLettered + s.sampledOut + s.dropped);
}

export interface NodeRun {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

/**
 * Runs `node ...args` and resolves with how it ended. Rejects when the process has not exited on its own
 * within `timeoutMs` (it is then killed): the tests that use it are about processes ending by themselves.
 */
export function runNode(args: string[], opts: { timeoutMs?: number; env?: NodeJS.ProcessEnv } = {}): Promise<NodeRun> {
  const timeoutMs = opts.timeoutMs ?? 15_000;
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, args, { env: opts.env ?? process.env });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (chunk: Buffer) => (stdout += chunk.toString()));
    child.stderr.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error(`the process did not exit on its own within ${timeoutMs} ms (stderr: ${stderr})`));
    }, timeoutMs);
    child.once('error', (e) => {
      clearTimeout(timer);
      reject(e);
    });
    child.once('close', (code, signal) => {
      clearTimeout(timer);
      resolve({ code, signal, stdout, stderr });
    });
  });
}
