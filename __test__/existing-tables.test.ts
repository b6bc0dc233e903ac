/**
 * Tables other tools made: Prisma's quoted camelCase, Drizzle's, a bigserial key with the uuid elsewhere,
 * extra NOT NULL columns with defaults, a table partitioned by month. And the clear, early failures when a
 * table cannot take entries.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { AuditBatcher, type AuditBatcherOptions } from '../index.js';
import { dropDatabase, freshDatabase, rejectionOf, uniqueTable, withClient } from './support/fixture.ts';

let url: string;
beforeAll(async () => {
  url = await freshDatabase();
});
afterAll(async () => {
  await dropDatabase(url);
});

async function rows(sql: string): Promise<Record<string, unknown>[]> {
  return withClient(url, async (c) => (await c.query(sql)).rows);
}

async function writeInto(table: string, ddl: string, options: Partial<AuditBatcherOptions>): Promise<string[]> {
  await withClient(url, (c) => c.query(ddl));
  const audit = new AuditBatcher({ connectionString: url, table, ...options });
  const ids = [
    audit.log({ action: 'login', actor: 'user:1', tenantId: 't1', payload: { ok: true }, occurredAt: '2026-01-15T10:00:00Z' }),
    audit.log({ action: 'logout', actor: 'user:1', tenantId: 't1', occurredAt: '2026-02-15T10:00:00Z' }),
  ];
  await audit.close();
  // The same entries sent again (as a retry after a lost reply would) must not add rows.
  const retry = new AuditBatcher({ connectionString: url, table, ...options });
  retry.log({ action: 'login', id: ids[0]!, occurredAt: '2026-01-15T10:00:00Z' });
  retry.log({ action: 'logout', id: ids[1]!, occurredAt: '2026-02-15T10:00:00Z' });
  await retry.close();
  const quoted = table === table.toLowerCase() ? table : `"${table}"`;
  expect(await rows(`SELECT count(*)::int AS n FROM ${quoted}`)).toEqual([{ n: 2 }]);
  return ids;
}

describe('existing tables', () => {
  it("Prisma's default naming: quoted camelCase columns, a text id, extra columns with defaults", async () => {
    const table = uniqueTable('Prisma');
    const ids = await writeInto(
      table,
      `CREATE TABLE "${table}" (
         "id" TEXT NOT NULL PRIMARY KEY,
         "createdAt" TIMESTAMP(3) NOT NULL DEFAULT CURRENT_TIMESTAMP,
         "tenantId" TEXT, "userId" TEXT, "action" TEXT NOT NULL, "resource" TEXT, "outcome" TEXT,
         "payload" JSONB NOT NULL, "updatedAt" TIMESTAMP(3) NOT NULL DEFAULT CURRENT_TIMESTAMP)`,
      { columns: { occurredAt: 'createdAt', tenantId: 'tenantId', actor: 'userId' } },
    );
    const got = await rows(`SELECT "id", "userId", "tenantId", "payload" FROM "${table}" ORDER BY "id"`);
    expect(got).toEqual([
      { id: ids[0], userId: 'user:1', tenantId: 't1', payload: { ok: true } },
      { id: ids[1], userId: 'user:1', tenantId: 't1', payload: {} },
    ]);
  });

  it("Drizzle's: snake_case, varchar columns, json payload, a bigserial key with the uuid in its own unique column", async () => {
    const table = uniqueTable('drizzle');
    const ids = await writeInto(
      table,
      `CREATE TABLE ${table} (
         id bigserial PRIMARY KEY,
         event_id uuid NOT NULL UNIQUE,
         occurred_at timestamp with time zone NOT NULL,
         tenant_id varchar(64), actor varchar(128), action varchar(64) NOT NULL, resource varchar(256), outcome varchar(32),
         payload json NOT NULL,
         source text NOT NULL DEFAULT 'app')`,
      { columns: { id: 'event_id' } },
    );
    const got = await rows(`SELECT event_id, action, source FROM ${table} ORDER BY id`);
    expect(got).toEqual([
      { event_id: ids[0], action: 'login', source: 'app' },
      { event_id: ids[1], action: 'logout', source: 'app' },
    ]);
  });

  it('a table partitioned by month on occurred_at (unique key (id, occurred_at))', async () => {
    const table = uniqueTable('part');
    const ids = await writeInto(
      table,
      `CREATE TABLE ${table} (
         id uuid NOT NULL, occurred_at timestamptz NOT NULL, tenant_id text, actor text, action text NOT NULL,
         resource text, outcome text, payload jsonb NOT NULL DEFAULT '{}',
         PRIMARY KEY (id, occurred_at)) PARTITION BY RANGE (occurred_at);
       CREATE TABLE ${table}_2026_01 PARTITION OF ${table} FOR VALUES FROM ('2026-01-01') TO ('2026-02-01');
       CREATE TABLE ${table}_2026_02 PARTITION OF ${table} FOR VALUES FROM ('2026-02-01') TO ('2026-03-01');`,
      {},
    );
    expect(await rows(`SELECT id FROM ${table}_2026_01`)).toEqual([{ id: ids[0] }]);
    expect(await rows(`SELECT id FROM ${table}_2026_02`)).toEqual([{ id: ids[1] }]);
  });

  it.each([
    ['a mapped column is missing', (t: string) => `CREATE TABLE ${t} (id uuid PRIMARY KEY, occurred_at timestamptz, action text, payload jsonb)`, /has no column "tenant_id" for the entry field `tenantId`/],
    [
      'a column has an incompatible type',
      (t: string) => `CREATE TABLE ${t} (id uuid PRIMARY KEY, occurred_at timestamptz, tenant_id text, actor text, action text, resource text, outcome text, payload integer)`,
      /column "payload" .* has type int4, which the entry field `payload` cannot be written to \(expected jsonb or json\)/,
    ],
    [
      'an unmapped column is NOT NULL without a default',
      (t: string) => `CREATE TABLE ${t} (id uuid PRIMARY KEY, occurred_at timestamptz, tenant_id text, actor text, action text, resource text, outcome text, payload jsonb, region text NOT NULL)`,
      /column "region" .* is NOT NULL without a default/,
    ],
    [
      'there is no unique index on the id',
      (t: string) => `CREATE TABLE ${t} (id uuid, occurred_at timestamptz, tenant_id text, actor text, action text, resource text, outcome text, payload jsonb)`,
      /has no unique index on "id"/,
    ],
    ['the table does not exist', (_: string) => 'SELECT 1', /does not exist \(call ensureSchema\(\)/],
  ])('fails early and clearly when %s, and keeps the entries', async (_, ddl, message) => {
    const table = uniqueTable('bad');
    await withClient(url, (c) => c.query(ddl(table)));
    const audit = new AuditBatcher({ connectionString: url, table });
    audit.log({ action: 'a' });
    const err = await rejectionOf(audit.flush());
    expect(err.code).toBe('ERR_AUDIT_FLUSH_FAILED');
    expect(err.message).toMatch(message);
    expect(audit.pending).toBe(1);
    expect(audit.stats().deadLettered).toBe(0);
    await audit.close({ timeoutMs: 0 }).catch(() => {});
  });
});
