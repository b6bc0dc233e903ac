/**
 * Through a real PgBouncer in transaction pooling mode (1.18: no prepared statements across transactions),
 * with default options: the batcher prepares its INSERT, and a connection that reaches a server connection
 * without it sends the INSERT unnamed from then on; a large batch's binary COPY (a named statement) runs
 * inside its own transaction, which pins one server connection.
 *
 * Needs the `pgbouncer` binary (Debian package `pgbouncer`; .ci/run installs it, or set $PGBOUNCER).
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { AuditBatcher } from '../index.js';
import { pgbouncerBinary, startPgBouncer, type PgBouncer } from './support/pgbouncer.ts';
import { waitFor } from './support/wait.ts';
import { dropDatabase, freshDatabase, readRows, uniqueTable, withClient } from './support/fixture.ts';

const binary = pgbouncerBinary();
let url: string;
let bouncer: PgBouncer;

describe.runIf(binary)('through PgBouncer (transaction pooling)', () => {
  beforeAll(async () => {
    url = await freshDatabase();
    bouncer = await startPgBouncer(binary!, url, 2);
  });
  afterAll(async () => {
    await bouncer?.stop();
    await dropDatabase(url);
  });

  it('schema, table check, per-turn flushes from several batchers, background writes and dead letters all work', async () => {
    const table = uniqueTable();
    const batchers = Array.from({ length: 3 }, () => new AuditBatcher({ connectionString: bouncer.url, table, poolSize: 4 }));
    await Promise.all(batchers.map((b) => b.ensureSchema()));
    const ids: string[] = [];
    for (let turn = 0; turn < 20; turn++) {
      await Promise.all(
        batchers.map((b, n) => {
          for (let i = 0; i < 5; i++) ids.push(b.log({ action: 'tool.call', actor: `agent:${n}`, payload: { turn, i } }));
          return b.flush();
        }),
      );
    }
    const background = new AuditBatcher({ connectionString: bouncer.url, table, flushAtEntries: 50, flushIntervalMs: 20 });
    for (let i = 0; i < 500; i++) ids.push(background.log({ action: 'bg', payload: { i } }));
    await waitFor(() => background.pending === 0, 10_000);

    await withClient(url, (c) => c.query(`ALTER TABLE ${table} ADD CHECK (actor IS DISTINCT FROM 'evil')`));
    const poisoned = new AuditBatcher({ connectionString: bouncer.url, table });
    ids.push(poisoned.log({ action: 'good' }));
    poisoned.log({ action: 'bad', actor: 'evil' });
    await poisoned.flush();
    expect(poisoned.stats()).toMatchObject({ written: 1, deadLettered: 1 });

    const rows = await readRows(url, table);
    expect(rows.length).toBe(ids.length);
    expect(new Set(rows.map((r) => r.id))).toEqual(new Set(ids));
    await Promise.all([...batchers, background, poisoned].map((b) => b.close()));
  });

  it('default options prepare the INSERT; given another server connection, the batcher sends it unnamed at once: no error, no row twice', async () => {
    // One server connection: a client through this PgBouncer sees the batcher's prepared statements.
    const single = await startPgBouncer(binary!, url, 1);
    try {
      const table = uniqueTable();
      const errors: Error[] = [];
      const b = new AuditBatcher({ connectionString: single.url, table, onError: (e) => errors.push(e) });
      await b.ensureSchema();
      const preparedInserts = () =>
        withClient(single.url, async (c) =>
          (await c.query(`SELECT name FROM pg_prepared_statements WHERE statement LIKE 'INSERT%'`)).rows.map((r) => r.name as string),
        );
      const ids: string[] = [];
      const turn = async (n: number) => {
        for (let i = 0; i < 5; i++) ids.push(b.log({ action: 'turn', payload: { n, i } }));
        await b.flush();
      };
      await turn(0);
      const prepared = await preparedInserts();
      expect(prepared).toHaveLength(1);
      // Unique to the process (tokio-postgres alone names it s0 in every process).
      expect(prepared[0]).toMatch(/^s[0-9a-f]{16}_\d+$/);
      // PgBouncer closes its server connection; the batcher's next statement reaches a new one, which
      // does not have the prepared statement (26000).
      await single.admin('RECONNECT');
      for (let n = 1; n < 6; n++) await turn(n);
      expect(errors).toEqual([]);
      expect(b.stats()).toMatchObject({ written: 30, failedFlushes: 0, retries: 0 });
      expect(await preparedInserts()).toEqual([]);
      const rows = await readRows(url, table);
      expect(rows.map((r) => r.id).sort()).toEqual([...ids].sort());
      await b.close();
    } finally {
      await single.stop();
    }
  });

  it('large batches go through binary COPY, each row stored exactly once, from several batchers at once', async () => {
    const table = uniqueTable();
    const batchers = Array.from({ length: 3 }, () => new AuditBatcher({ connectionString: bouncer.url, table, poolSize: 2 }));
    await batchers[0]!.ensureSchema();
    // Which statement stored each row: COPY or INSERT (the top-level statement the trigger fires in).
    await withClient(url, (c) =>
      c.query(`
        CREATE TABLE ${table}_stored (id uuid NOT NULL, via text NOT NULL);
        CREATE FUNCTION ${table}_stored() RETURNS trigger LANGUAGE plpgsql AS $$
          BEGIN
            INSERT INTO ${table}_stored
              VALUES (NEW.id, CASE WHEN upper(current_query()) LIKE 'COPY%' THEN 'COPY' ELSE 'INSERT' END);
            RETURN NULL;
          END $$;
        CREATE TRIGGER ${table}_stored AFTER INSERT ON ${table} FOR EACH ROW EXECUTE FUNCTION ${table}_stored();
      `),
    );
    const ids: string[] = [];
    for (let round = 0; round < 3; round++) {
      await Promise.all(
        batchers.map((b, n) => {
          for (let i = 0; i < 1000; i++) ids.push(b.log({ action: 'bulk', actor: `agent:${n}`, payload: { round, i } }));
          return b.flush();
        }),
      );
    }
    const rows = await readRows(url, table);
    expect(rows.length).toBe(ids.length);
    expect(new Set(rows.map((r) => r.id))).toEqual(new Set(ids));
    const via = await withClient(url, async (c) =>
      (await c.query<{ via: string; n: number }>(`SELECT via, count(*)::int AS n FROM ${table}_stored GROUP BY via`)).rows,
    );
    expect(via).toEqual([{ via: 'COPY', n: ids.length }]);
    for (const b of batchers) expect(b.stats()).toMatchObject({ written: 3000, deadLettered: 0, failedFlushes: 0 });
    await Promise.all(batchers.map((b) => b.close()));
  });
});

if (!binary) {
  describe('through PgBouncer', () => {
    it.skip('skipped: no pgbouncer binary (apt-get install pgbouncer, or set PGBOUNCER)', () => {});
  });
}
