/**
 * The binary COPY fast path: a large batch sent for the first time is written with
 * `COPY ... FROM STDIN (FORMAT binary)`, everything else with `INSERT ... ON CONFLICT DO NOTHING`; a COPY the
 * server refuses falls back to the INSERT in the same write, and a retry never goes through COPY.
 *
 * Which statement stored a row is read from triggers on the table: an AFTER INSERT row trigger records the
 * top-level statement (`current_query()`: COPY or INSERT) of every row actually stored, and a BEFORE INSERT
 * row trigger counts, in a sequence (not rolled back), the rows a COPY offered, even a COPY that failed.
 */
import { describe, expect, it } from 'vitest';
import { AuditBatcher } from '../index.js';
import { startProxy } from './support/proxy.ts';
import { waitFor } from './support/wait.ts';
import {
  countRows,
  countStatements,
  expectBooksBalance,
  readRows,
  rejectionOf,
  suiteDatabase,
  uniqueTable,
  withClient,
} from './support/fixture.ts';

/** Comfortably above the COPY threshold (COPY_MIN_ROWS, 128) and within the default maxBatchRows (1000). */
const LARGE = 1000;
/** Below it. */
const SMALL = 20;

const db = suiteDatabase();

function batcher(table: string, options: Partial<ConstructorParameters<typeof AuditBatcher>[0]> = {}): AuditBatcher {
  return db.batcher({ table, ...options });
}

interface Trace {
  /** Rows stored so far, by the statement that stored them: `{ COPY: n, INSERT: m }`. */
  stored(): Promise<Record<string, number>>;
  /** Rows any COPY offered to the table, committed or not. */
  copyOffered(): Promise<number>;
  /** Forgets what was recorded so far. */
  reset(): Promise<void>;
}

/** Installs the two tracing triggers on `table` (whose id column is `id`). */
async function trace(table: string): Promise<Trace> {
  await withClient(db.url, (c) =>
    c.query(`
      CREATE SEQUENCE ${table}_copy_offered;
      CREATE TABLE ${table}_stored (id text NOT NULL, via text NOT NULL);
      CREATE FUNCTION ${table}_offered() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER AS $$
        BEGIN
          IF upper(current_query()) LIKE 'COPY%' THEN PERFORM nextval('${table}_copy_offered'); END IF;
          RETURN NEW;
        END $$;
      CREATE TRIGGER ${table}_offered BEFORE INSERT ON ${table} FOR EACH ROW EXECUTE FUNCTION ${table}_offered();
      CREATE FUNCTION ${table}_stored() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER AS $$
        BEGIN
          INSERT INTO ${table}_stored
            VALUES (NEW.id::text, CASE WHEN upper(current_query()) LIKE 'COPY%' THEN 'COPY' ELSE 'INSERT' END);
          RETURN NULL;
        END $$;
      CREATE TRIGGER ${table}_stored AFTER INSERT ON ${table} FOR EACH ROW EXECUTE FUNCTION ${table}_stored();
    `),
  );
  return {
    stored: () =>
      withClient(db.url, async (c) => {
        const r = await c.query<{ via: string; n: number }>(`SELECT via, count(*)::int AS n FROM ${table}_stored GROUP BY via`);
        return Object.fromEntries(r.rows.map((row) => [row.via, row.n]));
      }),
    copyOffered: () =>
      withClient(db.url, async (c) => {
        const r = await c.query<{ n: string }>(
          `SELECT CASE WHEN is_called THEN last_value ELSE 0 END AS n FROM ${table}_copy_offered`,
        );
        return Number(r.rows[0]?.n);
      }),
    reset: () =>
      withClient(db.url, (c) =>
        c.query(`TRUNCATE ${table}_stored; ALTER SEQUENCE ${table}_copy_offered RESTART`).then(() => undefined),
      ),
  };
}

interface Logged {
  id: string;
  action: string;
  actor: string | null;
  tenant_id: string | null;
  resource: string | null;
  outcome: string | null;
  payload: unknown;
  occurred_at: Date;
}

/** Logs `n` entries with every kind of field (absent ones, non-ASCII text, given times) and returns them. */
function logMany(audit: AuditBatcher, n: number, tag = 'x'): Logged[] {
  const out: Logged[] = [];
  for (let i = 0; i < n; i++) {
    const occurredAt = new Date(Date.UTC(2026, 0, 1, 12, 0, 0, i % 1000));
    const entry = {
      action: `tool.call.${tag}`,
      actor: i % 3 === 0 ? null : `agent:${i % 7} — ünï`,
      tenantId: i % 5 === 0 ? null : `t${i % 4}`,
      resource: i % 2 === 0 ? `repo/${i}` : null,
      outcome: i % 11 === 0 ? 'error' : null,
      payload: { i, tag, text: 'quote " backslash \\ newline \n emoji 🎉', nested: { list: [1, 2.5, null, true] } },
      occurredAt,
    };
    const id = audit.log(entry);
    out.push({
      id,
      action: entry.action,
      actor: entry.actor,
      tenant_id: entry.tenantId,
      resource: entry.resource,
      outcome: entry.outcome,
      payload: entry.payload,
      occurred_at: occurredAt,
    });
  }
  return out;
}

/** Waits until a server-side trigger has taken a value from `sequence` (what `message` says happened). */
async function sequenceUsed(sequence: string, message: string): Promise<void> {
  await waitFor(
    () => withClient(db.url, async (c) => (await c.query(`SELECT is_called FROM ${sequence}`)).rows[0]?.is_called === true),
    10_000,
    { message },
  );
}

async function deadLetters(table: string): Promise<{ id: string; sqlstate: string }[]> {
  return withClient(db.url, async (c) => (await c.query(`SELECT id::text, sqlstate FROM ${table}_dead_letter ORDER BY id`)).rows);
}

describe('binary COPY for large batches', () => {
  it('writes a large batch with one COPY statement and a small one with the INSERT, with the same values', async () => {
    const table = uniqueTable();
    const audit = batcher(table);
    await audit.ensureSchema();
    const t = await trace(table);
    const statements = await countStatements(db.url, table);

    const large = logMany(audit, LARGE, 'large');
    expect(await audit.flush()).toEqual({ written: LARGE, pending: 0 });
    expect(await t.stored()).toEqual({ COPY: LARGE });
    expect(await statements()).toBe(1);
    expect(audit.stats()).toMatchObject({ batches: 1, written: LARGE });

    const small = logMany(audit, SMALL, 'small');
    expect(await audit.flush()).toEqual({ written: SMALL, pending: 0 });
    expect(await t.stored()).toEqual({ COPY: LARGE, INSERT: SMALL });
    expect(await statements()).toBe(2);
    expect(audit.stats()).toMatchObject({ batches: 2, written: LARGE + SMALL });

    expect(await readRows(db.url, table)).toEqual([...large, ...small]);
  });

  it('a large batch holding a user-supplied id the table already has: the COPY fails, the INSERT writes the rest once', async () => {
    const table = uniqueTable();
    const audit = batcher(table);
    await audit.ensureSchema();
    const t = await trace(table);
    const [existing] = logMany(audit, 1, 'first');
    await audit.flush();
    await t.reset();

    const before = logMany(audit, LARGE / 2, 'a');
    audit.log({ id: existing!.id, action: 'duplicate', occurredAt: existing!.occurred_at });
    const after = logMany(audit, LARGE / 2, 'b');
    expect(await audit.flush()).toMatchObject({ pending: 0 });

    expect(await t.copyOffered()).toBeGreaterThan(0); // COPY was tried ...
    expect(await t.stored()).toEqual({ INSERT: LARGE }); // ... and the INSERT stored the batch
    const rows = await readRows(db.url, table);
    expect(rows).toEqual([existing, ...before, ...after]);
    expect(rows.find((r) => r.id === existing!.id)?.action).toBe('tool.call.first');
    expect(await deadLetters(table)).toEqual([]);
    const s = audit.stats();
    // The failed COPY is a failed attempt, counted, even though the same flush succeeded.
    expect(s).toMatchObject({ deadLettered: 0, buffered: 0, failedFlushes: 1 });
    expect(s.lastError?.sqlstate).toBe('23505');
    expectBooksBalance(s);

    // A duplicate is a row's fault, not the table's: the next large batch goes through COPY again.
    await t.reset();
    logMany(audit, LARGE, 'c');
    await audit.flush();
    expect(await t.stored()).toEqual({ COPY: LARGE });
  });

  it('a large batch with a row the table refuses: good rows written in order, the bad one dead-lettered', async () => {
    const table = uniqueTable();
    const audit = batcher(table);
    await audit.ensureSchema();
    await withClient(db.url, (c) => c.query(`ALTER TABLE ${table} ADD CONSTRAINT no_evil CHECK (actor IS DISTINCT FROM 'evil')`));
    const t = await trace(table);

    const good = logMany(audit, 600, 'a');
    const badId = audit.log({ action: 'tool.call', actor: 'evil' });
    good.push(...logMany(audit, LARGE - 601, 'b'));
    expect(await audit.flush()).toMatchObject({ pending: 0 });

    expect(await t.copyOffered()).toBeGreaterThan(0);
    expect(await t.stored()).toEqual({ INSERT: LARGE - 1 });
    expect(await readRows(db.url, table)).toEqual(good);
    expect(await deadLetters(table)).toEqual([{ id: badId, sqlstate: '23514' }]);
    const s = audit.stats();
    expect(s).toMatchObject({ written: LARGE - 1, deadLettered: 1, buffered: 0 });
    expectBooksBalance(s);

    await t.reset();
    logMany(audit, LARGE, 'c');
    await audit.flush();
    expect(await t.stored()).toEqual({ COPY: LARGE });
  });

  it.each([
    ['a text id', 'id text PRIMARY KEY', 'occurred_at timestamptz NOT NULL'],
    ['a timestamp without time zone', 'id uuid PRIMARY KEY', 'occurred_at timestamp NOT NULL'],
    ['a char(n) column', 'id uuid PRIMARY KEY', 'occurred_at timestamptz NOT NULL', 'char(20)'],
  ])('a table with %s never gets COPY, and gets the right values', async (_, id, occurredAt, outcome = 'text') => {
    const table = uniqueTable();
    await withClient(db.url, (c) =>
      c.query(`CREATE TABLE ${table} (${id}, ${occurredAt}, tenant_id text, actor text, action text NOT NULL,
                 resource text, outcome ${outcome}, payload jsonb NOT NULL)`),
    );
    const t = await trace(table);
    const audit = batcher(table);
    const logged = logMany(audit, LARGE);
    expect(await audit.flush()).toEqual({ written: LARGE, pending: 0 });
    expect(await t.copyOffered()).toBe(0);
    expect(await t.stored()).toEqual({ INSERT: LARGE });
    const got = await withClient(db.url, async (c) =>
      (
        await c.query(
          `SELECT id::text, (extract(epoch FROM occurred_at::timestamptz) * 1000)::bigint::text AS ms, actor,
                  rtrim(outcome) AS outcome, payload
           FROM ${table} ORDER BY id`,
        )
      ).rows,
    );
    expect(got).toEqual(
      logged.map((e) => ({ id: e.id, ms: String(e.occurred_at.getTime()), actor: e.actor, outcome: e.outcome, payload: e.payload })),
    );
  });

  it('a row a deferred trigger refuses at COMMIT: the same flush writes the good rows once, in order, and dead-letters it', async () => {
    const table = uniqueTable();
    const audit = batcher(table);
    await audit.ensureSchema();
    await withClient(db.url, (c) =>
      c.query(`
        CREATE FUNCTION ${table}_late() RETURNS trigger LANGUAGE plpgsql AS $$
          BEGIN IF NEW.actor = 'late' THEN RAISE EXCEPTION 'refused at commit'; END IF; RETURN NULL; END $$;
        CREATE CONSTRAINT TRIGGER ${table}_late AFTER INSERT ON ${table} DEFERRABLE INITIALLY DEFERRED
          FOR EACH ROW EXECUTE FUNCTION ${table}_late();`),
    );
    const t = await trace(table);

    const good = logMany(audit, 600, 'a');
    const badId = audit.log({ action: 'tool.call', actor: 'late' });
    good.push(...logMany(audit, LARGE - 601, 'b'));
    // The COPY is staged, its COMMIT refused: the rows go again through the INSERT, which finds the bad one.
    expect(await audit.flush()).toMatchObject({ pending: 0 });

    expect(await t.copyOffered()).toBe(LARGE);
    expect(await t.stored()).toEqual({ INSERT: LARGE - 1 });
    expect(await readRows(db.url, table)).toEqual(good);
    expect(await deadLetters(table)).toEqual([{ id: badId, sqlstate: 'P0001' }]);
    const s = audit.stats();
    expect(s).toMatchObject({ written: LARGE - 1, deadLettered: 1, buffered: 0 });
    expect(s.failedFlushes).toBeGreaterThanOrEqual(1);
    expectBooksBalance(s);
    await audit.close();
  });

  it('a json payload and varchar(n) columns get COPY; a value too long falls back and is dead-lettered', async () => {
    const table = uniqueTable();
    await withClient(db.url, (c) =>
      c.query(`CREATE TABLE ${table} (id uuid PRIMARY KEY, occurred_at timestamptz NOT NULL, tenant_id varchar(10),
                 actor varchar(30), action varchar(40) NOT NULL, resource text, outcome text, payload json NOT NULL)`),
    );
    const t = await trace(table);
    const audit = batcher(table);
    await audit.ensureSchema(); // creates the dead-letter table; the target exists
    // json keeps the text as sent: key order and spacing of JSON.stringify.
    const logged = logMany(audit, LARGE, 'j');
    await audit.flush();
    expect(await t.stored()).toEqual({ COPY: LARGE });
    const text = await withClient(db.url, async (c) => (await c.query(`SELECT payload::text AS p FROM ${table} ORDER BY id`)).rows);
    expect(text.map((r) => r['p'])).toEqual(logged.map((e) => JSON.stringify(e.payload)));

    await t.reset();
    logMany(audit, 300, 'k');
    const tooLong = audit.log({ action: 'tool.call', actor: 'an actor name far longer than thirty characters' });
    logMany(audit, LARGE - 301, 'l');
    expect(await audit.flush()).toMatchObject({ pending: 0 });
    expect(await t.copyOffered()).toBeGreaterThan(0);
    expect(await t.stored()).toEqual({ INSERT: LARGE - 1 });
    expect(await deadLetters(table)).toEqual([{ id: tooLong, sqlstate: '22001' }]);
  });

  it('a table that cannot take COPY (row-level security) falls back at once, and COPY is not tried again', async () => {
    const table = uniqueTable();
    const role = uniqueTable('copy_role');
    const setup = new AuditBatcher({ connectionString: db.url, table });
    await setup.ensureSchema();
    await setup.close();
    await withClient(db.url, (c) =>
      c.query(`
        CREATE ROLE ${role} LOGIN PASSWORD 'pw';
        GRANT ALL ON ${table}, ${table}_dead_letter TO ${role};
        ALTER TABLE ${table} ENABLE ROW LEVEL SECURITY;
        CREATE POLICY everything ON ${table} TO ${role} USING (true) WITH CHECK (true);
      `),
    );
    try {
      const t = await trace(table);
      const asRole = new URL(db.url);
      asRole.username = role;
      asRole.password = 'pw';
      const audit = batcher(table, { connectionString: asRole.toString() });
      const first = logMany(audit, LARGE, 'a');
      expect(await audit.flush()).toEqual({ written: LARGE, pending: 0 });
      // Committed when the flush resolves: the connection the refused COPY left out of step (an extra
      // ReadyForQuery) is not reused, so the INSERT's reply is the INSERT's own.
      expect(await countRows(db.url, table)).toBe(LARGE);
      // 0A000 "COPY FROM not supported with row-level security" comes before any row.
      expect(await t.copyOffered()).toBe(0);
      expect(await t.stored()).toEqual({ INSERT: LARGE });
      const second = logMany(audit, LARGE, 'b');
      expect(await audit.flush()).toEqual({ written: LARGE, pending: 0 });
      expect(await t.stored()).toEqual({ INSERT: 2 * LARGE });
      expect(await readRows(db.url, table)).toEqual([...first, ...second]);
      await audit.close();
    } finally {
      await withClient(db.url, (c) =>
        c.query(`DROP TABLE ${table}, ${table}_dead_letter; DROP OWNED BY ${role}; DROP ROLE ${role}`),
      );
    }
  });

  it('a connection cut after the COPY committed, before its reply: the retry (an INSERT) stores every entry once', async () => {
    const target = new URL(db.url);
    const proxy = await startProxy(target.hostname, Number(target.port || 5432));
    try {
      const table = uniqueTable();
      const audit = batcher(table, { connectionString: proxy.url(db.url), connectTimeoutMs: 2000 });
      await audit.ensureSchema();
      const t = await trace(table);
      // The COPY's commit waits a moment (a deferred trigger, run at COMMIT, on the first row a COPY
      // stored), so the test can hold the replies while the COMMIT runs.
      await withClient(db.url, (c) =>
        c.query(`
          CREATE SEQUENCE ${table}_gate;
          CREATE FUNCTION ${table}_gate() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
              IF nextval('${table}_gate') = 1 THEN PERFORM pg_sleep(1); END IF;
              RETURN NULL;
            END $$;
          CREATE CONSTRAINT TRIGGER ${table}_gate AFTER INSERT ON ${table} DEFERRABLE INITIALLY DEFERRED
            FOR EACH ROW EXECUTE FUNCTION ${table}_gate();
        `),
      );
      const logged = logMany(audit, LARGE, 'a');
      const flush = audit.flush();
      // The server is committing the COPY: the client has sent the data and the COMMIT.
      await sequenceUsed(`${table}_gate`, 'the COPY is committing on the server');
      proxy.pause(); // no reply comes back
      await waitFor(async () => (await countRows(db.url, table)) === LARGE, 10_000, { message: 'the COPY committed' });
      expect(proxy.cutAll('reset')).toBeGreaterThan(0);
      const err = await rejectionOf(flush);
      expect(err.code).toBe('ERR_AUDIT_FLUSH_FAILED');
      expect(audit.pending).toBe(LARGE);

      proxy.resume();
      const more = logMany(audit, SMALL, 'b');
      expect(await audit.flush()).toEqual({ written: LARGE + SMALL, pending: 0 });
      expect(await readRows(db.url, table)).toEqual([...logged, ...more]);
      // The retry (the same entries first) went through the INSERT, which skipped the rows already there.
      expect(await t.stored()).toEqual({ COPY: LARGE, INSERT: SMALL });
      expect(audit.stats()).toMatchObject({ written: LARGE + SMALL, buffered: 0, failedFlushes: 1 });

      // New entries after that are fresh again.
      await t.reset();
      logMany(audit, LARGE, 'c');
      await audit.flush();
      expect(await t.stored()).toEqual({ COPY: LARGE });
      await audit.close();
    } finally {
      proxy.resume();
      await proxy.close();
    }
  });

  describe('a backlog of full batches, two COPYs at a time', () => {
    const ROWS = 500;

    it('a duplicate id in the second of two batches written at once: both are undone and written again, every entry once, in order', async () => {
      const table = uniqueTable();
      const audit = batcher(table, { maxBatchRows: ROWS });
      await audit.ensureSchema();
      const t = await trace(table);
      // A row that holds its statement for 300 ms, so that everything after it is logged (and asked for)
      // before the writer takes the next batch: two full batches wait, and go at once.
      await withClient(db.url, (c) =>
        c.query(`
          CREATE SEQUENCE ${table}_slow;
          CREATE FUNCTION ${table}_slow() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
              IF NEW.action = 'tool.call.slow' THEN PERFORM nextval('${table}_slow'); PERFORM pg_sleep(0.3); END IF;
              RETURN NEW;
            END $$;
          CREATE TRIGGER ${table}_slow BEFORE INSERT ON ${table} FOR EACH ROW EXECUTE FUNCTION ${table}_slow();`),
      );
      const [existing] = logMany(audit, 1, 'first');
      await audit.flush();
      await t.reset();

      const slow = logMany(audit, 1, 'slow');
      const slowFlush = audit.flush();
      await sequenceUsed(`${table}_slow`, 'the slow row is being written');
      // Batches of 500: the first 500 of `before`; then its last 250, the duplicate and 249 of `after`
      // (these two go at once); then the last 251 of `after`.
      const before = logMany(audit, ROWS + ROWS / 2, 'a');
      audit.log({ id: existing!.id, action: 'duplicate', occurredAt: existing!.occurred_at });
      const after = logMany(audit, ROWS, 'b');
      expect(await audit.flush()).toMatchObject({ pending: 0 });
      await slowFlush;

      // Both batches of the pair were offered by COPY; the second's duplicate made both undo, and they were
      // written again by the INSERT (the duplicate skipped); the last batch, alone, by COPY.
      expect(await t.copyOffered()).toBeGreaterThanOrEqual(ROWS + 251);
      expect(await t.stored()).toEqual({ INSERT: 1 + ROWS + ROWS - 1, COPY: 251 });
      const rows = await readRows(db.url, table);
      expect(rows).toEqual([existing, ...slow, ...before, ...after]);
      const s = audit.stats();
      expect(s).toMatchObject({ deadLettered: 0, buffered: 0, failedFlushes: 1 });
      expect(s.lastError?.sqlstate).toBe('23505');
      expectBooksBalance(s);
      await audit.close();
    });

    it('with poolSize 1 the batches go one at a time, every entry once, in order', async () => {
      const table = uniqueTable();
      const audit = batcher(table, { maxBatchRows: ROWS, poolSize: 1 });
      await audit.ensureSchema();
      const t = await trace(table);
      const logged = logMany(audit, 4 * ROWS + 10, 'one');
      await audit.close();
      expect(await t.stored()).toEqual({ COPY: 4 * ROWS, INSERT: 10 });
      expect(await readRows(db.url, table)).toEqual(logged);
      expect(audit.stats()).toMatchObject({ written: 4 * ROWS + 10, batches: 5, failedFlushes: 0 });
    });
  });
});
