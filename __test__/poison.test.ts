/**
 * Rows an existing table refuses (CHECK, varchar(n), a trigger that raises, a foreign key): the batch is
 * split to find them, every good row is written in order, and each bad one goes to the dead-letter table
 * with its error and SQLSTATE. Errors that are not about rows are retried, never dead-lettered.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { AuditBatcher } from '../index.js';
import { dropDatabase, expectBooksBalance, freshDatabase, readRows, rejectionOf, uniqueTable, withClient } from './support/fixture.ts';

let url: string;
beforeAll(async () => {
  url = await freshDatabase();
});
afterAll(async () => {
  await dropDatabase(url);
});


interface DeadLetter {
  id: string;
  sqlstate: string | null;
  error: string;
  entry: { id: string; action: string; actor?: string; payload: unknown };
}

async function deadLetters(table: string): Promise<DeadLetter[]> {
  return withClient(url, async (c) => (await c.query<DeadLetter>(`SELECT * FROM ${table}_dead_letter ORDER BY id`)).rows);
}

/** A default table altered by `alter` (a constraint, a trigger, ...), with its dead-letter table. */
async function tableWith(alter: (table: string) => string): Promise<{ audit: AuditBatcher; table: string }> {
  const table = uniqueTable();
  const audit = new AuditBatcher({ connectionString: url, table });
  await audit.ensureSchema();
  await withClient(url, (c) => c.query(alter(table)));
  return { audit, table };
}

describe('poison rows', () => {
  it.each([
    ['a CHECK constraint', '23514', (t: string) => `ALTER TABLE ${t} ADD CONSTRAINT no_evil CHECK (actor IS DISTINCT FROM 'evil')`],
    ['a value too long for varchar(n)', '22001', (t: string) => `ALTER TABLE ${t} ALTER COLUMN actor TYPE varchar(6)`],
    [
      'a trigger that raises',
      'P0001',
      (t: string) => `
        CREATE FUNCTION ${t}_guard() RETURNS trigger LANGUAGE plpgsql AS
          $$ BEGIN IF NEW.actor = 'evil' THEN RAISE EXCEPTION 'evil actor refused'; END IF; RETURN NEW; END $$;
        CREATE TRIGGER ${t}_guard BEFORE INSERT ON ${t} FOR EACH ROW EXECUTE FUNCTION ${t}_guard();`,
    ],
    [
      'a foreign key',
      '23503',
      (t: string) => `
        CREATE TABLE ${t}_actors (name text PRIMARY KEY);
        INSERT INTO ${t}_actors SELECT 'u' || g FROM generate_series(0, 99) g;
        ALTER TABLE ${t} ADD CONSTRAINT known_actor FOREIGN KEY (actor) REFERENCES ${t}_actors (name);`,
    ],
  ])('%s: good rows written in order, bad rows dead-lettered with SQLSTATE %s', async (_, sqlstate, alter) => {
    const { audit, table } = await tableWith(alter);
    const good: string[] = [];
    const bad: string[] = [];
    for (let i = 0; i < 100; i++) {
      const evil = i === 7 || i === 8 || i === 61;
      const actor = evil ? (sqlstate === '22001' ? 'much-too-long-actor' : 'evil') : `u${i}`;
      const id = audit.log({ action: 'tool.call', actor, payload: { i } });
      (evil ? bad : good).push(id);
    }
    expect(await audit.flush()).toMatchObject({ pending: 0 });
    expect((await readRows(url, table)).map((r) => r.id)).toEqual(good);
    const dead = await deadLetters(table);
    expect(dead.map((d) => d.id)).toEqual(bad);
    for (const d of dead) {
      expect(d.sqlstate).toBe(sqlstate);
      expect(d.error.length).toBeGreaterThan(0);
      expect(d.entry).toMatchObject({ id: d.id, action: 'tool.call' });
    }
    const s = audit.stats();
    expect(s).toMatchObject({ written: 97, deadLettered: 3, buffered: 0 });
    expectBooksBalance(s);
    await audit.close();
  });

  it('an error that is not about rows (the table is gone) is retried, never dead-lettered', async () => {
    const table = uniqueTable();
    const audit = new AuditBatcher({ connectionString: url, table });
    await audit.ensureSchema();
    await withClient(url, (c) => c.query(`DROP TABLE ${table}`));
    audit.log({ action: 'a' });
    const err = await rejectionOf(audit.flush());
    expect(err.sqlstate).toBe('42P01');
    expect(audit.stats()).toMatchObject({ deadLettered: 0, buffered: 1 });
    expect(await deadLetters(table)).toEqual([]);
    await audit.ensureSchema();
    await audit.flush();
    expect(audit.stats()).toMatchObject({ written: 1, deadLettered: 0 });
    await audit.close();
  });
});
