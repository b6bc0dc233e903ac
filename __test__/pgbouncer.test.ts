/**
 * Through a real PgBouncer in transaction pooling mode (1.18: no prepared statements across transactions):
 * every statement the batcher sends is unnamed and self-contained, so no option needs to be set.
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
});

if (!binary) {
  describe('through PgBouncer', () => {
    it.skip('skipped: no pgbouncer binary (apt-get install pgbouncer, or set PGBOUNCER)', () => {});
  });
}
