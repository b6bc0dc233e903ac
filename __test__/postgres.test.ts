/**
 * The PostgreSQL path, end to end on a real server: schema, rows, statement count, ordering, concurrent
 * flushes, and flushes that fail.
 */
import { describe, expect, it } from 'vitest';
import { AuditBatcher } from '../index.js';
import {
  countRows,
  countStatements,
  readRows,
  rejectionOf,
  suiteDatabase,
  uniqueTable,
  withClient,
} from './support/fixture.ts';

const db = suiteDatabase();
const batcher = db.batcher;

describe('ensureSchema()', () => {
  it('creates the default table and its (tenant_id, occurred_at) index, and is idempotent', async () => {
    const table = uniqueTable();
    const a = batcher({ table });
    const b = batcher({ table });
    await Promise.all([a.ensureSchema(), b.ensureSchema(), a.ensureSchema()]);
    await a.ensureSchema();
    const columns = await withClient(db.url, async (c) =>
      (
        await c.query<{ column_name: string; data_type: string; is_nullable: string }>(
          `SELECT column_name, data_type, is_nullable FROM information_schema.columns
           WHERE table_name = $1 ORDER BY ordinal_position`,
          [table],
        )
      ).rows.map((r) => `${r.column_name} ${r.data_type} ${r.is_nullable}`),
    );
    expect(columns).toEqual([
      'id uuid NO',
      'occurred_at timestamp with time zone NO',
      'tenant_id text YES',
      'actor text YES',
      'action text NO',
      'resource text YES',
      'outcome text YES',
      'payload jsonb NO',
    ]);
    const indexes = await withClient(db.url, async (c) =>
      (await c.query<{ indexdef: string }>(`SELECT indexdef FROM pg_indexes WHERE tablename = $1`, [table])).rows.map(
        (r) => r.indexdef,
      ),
    );
    expect(indexes).toHaveLength(2);
    expect(indexes.some((d) => d.includes('(tenant_id, occurred_at)'))).toBe(true);
    expect(indexes.some((d) => d.includes('UNIQUE') && d.includes('(id)'))).toBe(true);
  });

  it('creates a missing schema for a schema-qualified table', async () => {
    const schema = uniqueTable('sch');
    const b = batcher({ table: `${schema}.events` });
    await b.ensureSchema();
    b.log({ action: 'a' });
    await b.flush();
    expect(await countRows(db.url, `${schema}.events`)).toBe(1);
  });
});

describe('log() and flush()', () => {
  it('writes every field, with the time of log() and ids increasing in log order', async () => {
    const table = uniqueTable();
    const b = batcher({ table });
    await b.ensureSchema();
    const before = Date.now();
    const id1 = b.log({
      action: 'tool.call',
      actor: 'user:42',
      tenantId: 't1',
      resource: 'file:/a',
      outcome: 'success',
      payload: { tool: 'grep', args: { q: 'x' } },
    });
    const id2 = b.log({ action: 'tool.result' });
    const after = Date.now();
    expect(b.pending).toBe(2);
    // A gap, so that a time taken at flush would differ from the time of log().
    await new Promise((r) => setTimeout(r, 30));
    const flushStart = Date.now();
    expect(await b.flush()).toEqual({ written: 2, pending: 0 });
    expect(b.pending).toBe(0);

    const rows = await readRows(db.url, table);
    expect(rows.map((r) => r.id)).toEqual([id1, id2]);
    expect(id1 < id2).toBe(true);
    expect(id1).toMatch(/^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/);
    expect(rows[0]).toMatchObject({
      actor: 'user:42',
      tenant_id: 't1',
      action: 'tool.call',
      resource: 'file:/a',
      outcome: 'success',
      payload: { tool: 'grep', args: { q: 'x' } },
    });
    expect(rows[1]).toMatchObject({ actor: null, tenant_id: null, resource: null, outcome: null, payload: {} });
    for (const r of rows) {
      expect(r.occurred_at.getTime()).toBeGreaterThanOrEqual(before);
      expect(r.occurred_at.getTime()).toBeLessThanOrEqual(after);
      expect(r.occurred_at.getTime()).toBeLessThan(flushStart);
    }
  });

  it('keeps a given id and occurredAt (Date, ISO string with microseconds, epoch ms)', async () => {
    const table = uniqueTable();
    const b = batcher({ table });
    await b.ensureSchema();
    const ids = ['00000000-0000-4000-8000-000000000001', '00000000-0000-4000-8000-000000000002', '00000000-0000-4000-8000-000000000003'];
    b.log({ action: 'a', id: ids[0]!, occurredAt: new Date('2020-05-06T07:08:09.123Z') });
    b.log({ action: 'b', id: ids[1]!, occurredAt: '2021-01-02T03:04:05.123456+02:00' });
    b.log({ action: 'c', id: ids[2]!.toUpperCase(), occurredAt: 1_600_000_000_000 });
    await b.flush();
    const rows = await withClient(db.url, async (c) =>
      (
        await c.query<{ id: string; t: string }>(
          `SELECT id::text, to_char(occurred_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US') AS t FROM ${table} ORDER BY id`,
        )
      ).rows,
    );
    expect(rows).toEqual([
      { id: ids[0], t: '2020-05-06T07:08:09.123000' },
      { id: ids[1], t: '2021-01-02T01:04:05.123456' },
      { id: ids[2], t: '2020-09-13T12:26:40.000000' },
    ]);
  });

  it('stores payload text exactly: quotes, backslashes, newlines, non-ASCII, emoji, numbers, null', async () => {
    const table = uniqueTable();
    const b = batcher({ table });
    await b.ensureSchema();
    const payloads = [
      { s: 'He said "hi"\\ \n\t end', u: 'Grüße, 日本語, 😀', n: [1, -2.5, 1e21], z: null, b: true },
      [1, 'two', { three: 3 }],
      'just a string',
      42,
      null,
    ];
    for (const payload of payloads) b.log({ action: 'p', payload });
    await b.flush();
    expect((await readRows(db.url, table)).map((r) => r.payload)).toEqual(payloads);
  });

  it('replaces NUL characters and lone surrogates (which PostgreSQL cannot store) and counts them', async () => {
    const table = uniqueTable();
    const b = batcher({ table });
    await b.ensureSchema();
    b.log({ action: 'nul\u0000action', actor: 'a\u0000b', payload: { s: 'x\u0000y', lone: '\ud800!', pair: '😀' } });
    b.log({ action: 'clean', payload: { s: 'fine' } });
    expect(await b.flush()).toEqual({ written: 2, pending: 0 });
    const rows = await readRows(db.url, table);
    expect(rows[0]).toMatchObject({
      action: 'nul\ufffdaction',
      actor: 'a\ufffdb',
      payload: { s: 'x\ufffdy', lone: '\ufffd!', pair: '😀' },
    });
    expect(b.stats()).toMatchObject({ sanitized: 1, logged: 2, written: 2 });
  });

  it('writes one flush as ONE statement, and splits only past maxBatchRows', async () => {
    const table = uniqueTable();
    const one = batcher({ table });
    await one.ensureSchema();
    const statements = await countStatements(db.url, table);
    for (let i = 0; i < 999; i++) one.log({ action: 'tool.call', actor: `u${i}` });
    await one.flush();
    expect(await statements()).toBe(1);
    expect(await countRows(db.url, table)).toBe(999);

    const split = batcher({ table, maxBatchRows: 100 });
    for (let i = 0; i < 250; i++) split.log({ action: 'tool.call' });
    expect(await split.flush()).toEqual({ written: 250, pending: 0 });
    expect(await statements()).toBe(1 + 3);
    expect(split.stats().batches).toBe(3);

    // A flush with nothing buffered sends nothing.
    await split.flush();
    expect(await statements()).toBe(4);
  });

  it('keeps log order across many flushes and entries logged while a flush runs', async () => {
    const table = uniqueTable();
    const b = batcher({ table, maxBatchRows: 7 });
    await b.ensureSchema();
    const ids: string[] = [];
    const flushes: Promise<unknown>[] = [];
    for (let turn = 0; turn < 20; turn++) {
      for (let i = 0; i < 5; i++) ids.push(b.log({ action: 'tool.call', payload: { turn, i } }));
      flushes.push(b.flush()); // not awaited: the next turn logs while this flush runs
    }
    await Promise.all(flushes);
    const rows = await readRows(db.url, table);
    expect(rows.map((r) => r.id)).toEqual(ids);
    expect(rows.map((r) => r.payload)).toEqual(
      Array.from({ length: 100 }, (_, k) => ({ turn: Math.floor(k / 5), i: k % 5 })),
    );
  });

  it('lets concurrent flushes share statements without writing an entry twice', async () => {
    const table = uniqueTable();
    const b = batcher({ table });
    await b.ensureSchema();
    const statements = await countStatements(db.url, table);
    const ids: string[] = [];
    for (let i = 0; i < 10; i++) ids.push(b.log({ action: 'a' }));
    const first = b.flush();
    for (let i = 0; i < 10; i++) ids.push(b.log({ action: 'b' }));
    const results = await Promise.all([first, b.flush(), b.flush(), b.flush()]);
    expect(results[0]).toMatchObject({ written: 10 });
    // `written` counts what was unwritten at the call: 20, or 10 when the first flush (running on the
    // addon's threads) had already committed its 10 by the time of these calls.
    for (const r of results.slice(1)) expect([10, 20]).toContain(r.written);
    // The first flush may resolve while the 'b' entries are still pending; the later ones wait for them.
    expect(results.slice(1).every((r) => r.pending === 0)).toBe(true);
    expect((await readRows(db.url, table)).map((r) => r.id)).toEqual(ids);
    const n = await statements();
    expect(n).toBeGreaterThanOrEqual(1);
    expect(n).toBeLessThanOrEqual(2);
  });

  it('writes into an existing table through the columns option', async () => {
    const table = uniqueTable('existing');
    await withClient(db.url, (c) =>
      c.query(`CREATE TABLE ${table} (
        seq bigserial PRIMARY KEY,
        "eventId" uuid NOT NULL UNIQUE,
        "createdAt" timestamptz NOT NULL,
        "tenantId" text, user_id text, action text NOT NULL, resource text, outcome text,
        data jsonb NOT NULL,
        source text NOT NULL DEFAULT 'app')`),
    );
    const b = batcher({
      table,
      columns: { id: 'eventId', occurredAt: 'createdAt', tenantId: 'tenantId', actor: 'user_id', payload: 'data' },
    });
    const id = b.log({ action: 'login', actor: 'user:7', tenantId: 't9', payload: { ok: true } });
    await b.flush();
    const rows = await withClient(db.url, async (c) => (await c.query(`SELECT * FROM ${table}`)).rows);
    expect(rows).toMatchObject([{ eventId: id, tenantId: 't9', user_id: 'user:7', data: { ok: true }, source: 'app' }]);
  });

  it('writes an entry whose id is already in the table only once (ON CONFLICT DO NOTHING)', async () => {
    const table = uniqueTable();
    const b = batcher({ table });
    await b.ensureSchema();
    const id = '00000000-0000-4000-8000-0000000000aa';
    b.log({ action: 'first', id });
    await b.flush();
    b.log({ action: 'again', id });
    expect(await b.flush()).toEqual({ written: 1, pending: 0 });
    expect((await readRows(db.url, table)).map((r) => r.action)).toEqual(['first']);
  });
});

describe('preparedStatements', () => {
  /**
   * Logs `turns` turns of 5 entries with `options`, flushing after each, into a table whose row trigger
   * records how many prepared statements the writing session holds.
   */
  async function writeTurns(options: { preparedStatements?: boolean }, turns: number) {
    const table = uniqueTable();
    const b = batcher({ table, ...options });
    await b.ensureSchema();
    await withClient(db.url, (c) =>
      c.query(`
        CREATE TABLE ${table}_seen (prepared int NOT NULL);
        CREATE FUNCTION ${table}_see() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
          INSERT INTO ${table}_seen SELECT count(*) FROM pg_prepared_statements;
          RETURN NULL;
        END $$;
        CREATE TRIGGER see AFTER INSERT ON ${table} FOR EACH ROW EXECUTE FUNCTION ${table}_see();`),
    );
    const logged: string[] = [];
    for (let t = 0; t < turns; t++) {
      for (let i = 0; i < 5; i++) logged.push(b.log({ action: 'tool.call', actor: `agent:${t}`, payload: { t, i } }));
      expect(await b.flush()).toEqual({ written: 5, pending: 0 });
    }
    const seen = await withClient(db.url, async (c) =>
      (await c.query<{ prepared: number }>(`SELECT prepared FROM ${table}_seen`)).rows.map((r) => r.prepared),
    );
    return { table, logged, seen };
  }

  it('off: every INSERT is sent unnamed, and the session keeps no prepared statement', async () => {
    const { table, logged, seen } = await writeTurns({ preparedStatements: false }, 4);
    expect((await readRows(db.url, table)).map((r) => r.id)).toEqual(logged);
    expect(new Set(seen)).toEqual(new Set([0]));
  });

  it('on (the default): the INSERT is prepared once per connection and reused, writing the same rows', async () => {
    const { table, logged, seen } = await writeTurns({}, 4);
    expect((await readRows(db.url, table)).map((r) => r.id)).toEqual(logged);
    // One connection (flushes run one at a time), one statement prepared on it, reused by every flush.
    expect(new Set(seen)).toEqual(new Set([1]));
  });

  it('must be a boolean', () => {
    expect(() => new AuditBatcher({ connectionString: db.url, preparedStatements: 'yes' as unknown as boolean })).toThrow(
      expect.objectContaining({ code: 'ERR_AUDIT_INVALID_OPTIONS', message: expect.stringContaining('preparedStatements') }),
    );
  });
});

describe('a flush that fails', () => {
  it('rejects with ERR_AUDIT_FLUSH_FAILED and a clear cause, keeps the entries in order, and the next flush writes them', async () => {
    const table = uniqueTable();
    const b = batcher({ table }); // no ensureSchema(): the table does not exist yet
    const ids = [b.log({ action: 'one' }), b.log({ action: 'two' })];
    const err = await rejectionOf(b.flush());
    expect(err).toBeInstanceOf(Error);
    expect(err.code).toBe('ERR_AUDIT_FLUSH_FAILED');
    expect(err.pending).toBe(2);
    // The table check before the first write says what is wrong and what to do.
    expect(err.message).toContain(`table ${table} does not exist (call ensureSchema()`);
    expect(b.pending).toBe(2);
    expect(b.stats()).toMatchObject({ failedFlushes: 1, written: 0, buffered: 2 });
    expect(b.stats().lastError?.message).toContain('does not exist');

    ids.push(b.log({ action: 'three' }));
    await b.ensureSchema();
    expect(await b.flush()).toEqual({ written: 3, pending: 0 });
    expect((await readRows(db.url, table)).map((r) => r.id)).toEqual(ids);
  });
});

describe('close()', () => {
  it('flushes what is left, then refuses log() and flush() with ERR_AUDIT_CLOSED, and is idempotent', async () => {
    const table = uniqueTable();
    const b = batcher({ table });
    await b.ensureSchema();
    b.log({ action: 'a' });
    b.log({ action: 'b' });
    await b.close();
    expect(await countRows(db.url, table)).toBe(2);
    const thrown = (() => {
      try {
        b.log({ action: 'late' });
      } catch (e) {
        return e as Error & { code?: string };
      }
      return undefined;
    })();
    expect(thrown?.code).toBe('ERR_AUDIT_CLOSED');
    expect((await rejectionOf(b.flush())).code).toBe('ERR_AUDIT_CLOSED');
    await b.close();
    await Promise.all([b.close(), b.close()]);
    expect(await countRows(db.url, table)).toBe(2);
  });
});
