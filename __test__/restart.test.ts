/**
 * Outages of the real server: PostgreSQL stopped and started again under a steady producer (its own
 * embedded server, which the test can stop), and a statement timeout. No accepted entry is lost or
 * duplicated, the pool recovers on its own, and log() never blocks meanwhile.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { AuditBatcher } from '../index.js';
import { startDatabase, withClient, type Database } from '../scripts/database.ts';
import { waitFor } from './support/wait.ts';
import { dropDatabase, freshDatabase, readRows, rejectionOf, uniqueTable } from './support/fixture.ts';

describe('the server restarting', () => {
  let db: Database;
  beforeAll(async () => {
    db = await startDatabase({ forceEmbedded: true });
  }, 120_000);
  afterAll(async () => {
    await db?.dispose();
  });

  it('stopped and started under a steady producer: every accepted entry is written exactly once', async () => {
    const table = uniqueTable();
    const audit = new AuditBatcher({ connectionString: db.url, table, flushIntervalMs: 25, connectTimeoutMs: 1000 });
    await audit.ensureSchema();
    const ids: string[] = [];
    let slowestLogMs = 0;
    const produce = async (ms: number): Promise<void> => {
      const until = Date.now() + ms;
      while (Date.now() < until) {
        const t0 = performance.now();
        ids.push(audit.log({ action: 'tool.call', payload: { n: ids.length } }));
        slowestLogMs = Math.max(slowestLogMs, performance.now() - t0);
        await new Promise((r) => setTimeout(r, 2));
      }
    };
    await produce(300);
    const stopping = db.stop();
    await produce(200); // while the server shuts down
    await stopping;
    await produce(800); // while it is down
    const starting = db.start();
    await produce(200);
    await starting;
    await produce(300);
    await waitFor(() => audit.pending === 0, 30_000, { intervalMs: 25 });
    const rows = await readRows(db.url, table);
    expect(rows.length).toBe(ids.length);
    expect(rows.map((r) => r.id)).toEqual(ids); // ORDER BY id: log order, once each
    const s = audit.stats();
    expect(s.failedFlushes).toBeGreaterThan(0);
    expect(s).toMatchObject({ logged: ids.length, written: ids.length, buffered: 0, deadLettered: 0 });
    expect(slowestLogMs).toBeLessThan(50); // log() never waited for the database
    console.log(
      `[restart] ${ids.length} entries logged across a server stop/start; ${rows.length} rows afterwards; ` +
        `${s.failedFlushes} failed attempts, ${s.retries} retries; slowest log() ${slowestLogMs.toFixed(2)} ms`,
    );
    await audit.close();
  }, 90_000);
});

describe('a statement timeout', () => {
  let url: string;
  beforeAll(async () => {
    url = await freshDatabase();
  });
  afterAll(async () => {
    await dropDatabase(url);
  });

  it('is retried (57014 is transient), never dead-lettered, and the retry writes each entry once', async () => {
    const table = uniqueTable();
    // URLSearchParams would write the space as '+', which libpq-style parsers keep as it is.
    const withTimeout = `${url}${url.includes('?') ? '&' : '?'}options=${encodeURIComponent('-c statement_timeout=200')}`;
    const audit = new AuditBatcher({ connectionString: withTimeout, table });
    await audit.ensureSchema();
    await withClient(url, (c) =>
      c.query(`
        CREATE FUNCTION ${table}_slow() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN PERFORM pg_sleep(1); RETURN NULL; END $$;
        CREATE TRIGGER ${table}_slow AFTER INSERT ON ${table} FOR EACH STATEMENT EXECUTE FUNCTION ${table}_slow();`),
    );
    const ids = [audit.log({ action: 'a' }), audit.log({ action: 'b' })];
    const err = await rejectionOf(audit.flush());
    expect(err.sqlstate).toBe('57014');
    expect(audit.stats()).toMatchObject({ buffered: 2, deadLettered: 0 });
    await withClient(url, (c) => c.query(`DROP TRIGGER ${table}_slow ON ${table}`));
    await audit.flush();
    expect((await readRows(url, table)).map((r) => r.id)).toEqual(ids);
    await audit.close();
  });
});
