/**
 * Bad input tried on purpose: each gets a typed error at the call, or is stored as documented; none
 * crashes the process or stalls the batcher (a normal entry logged afterwards is written).
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { AuditBatcher } from '../index.js';
import { dropDatabase, freshDatabase, readRows, thrownBy, uniqueTable } from './support/fixture.ts';

let url: string;
beforeAll(async () => {
  url = await freshDatabase();
});
afterAll(async () => {
  await dropDatabase(url);
});

function nested(depth: number): unknown {
  let v: unknown = { leaf: true };
  for (let i = 0; i < depth; i++) v = { a: v };
  return v;
}

async function fresh(options: Record<string, unknown> = {}): Promise<{ audit: AuditBatcher; table: string }> {
  const table = uniqueTable();
  const audit = new AuditBatcher({ connectionString: url, table, ...options });
  await audit.ensureSchema();
  return { audit, table };
}

/** The batcher still works: a normal entry is written. */
async function stillWorks(audit: AuditBatcher, table: string): Promise<void> {
  const id = audit.log({ action: 'after.bad.input' });
  await audit.flush();
  expect((await readRows(url, table)).map((r) => r.id)).toContain(id);
}

describe('bad input', () => {
  it('a 10 MB payload is refused by maxEntryBytes (1 MiB by default) with a clear error', async () => {
    const { audit, table } = await fresh();
    const err = thrownBy(() => audit.log({ action: 'big', payload: { blob: 'x'.repeat(10 * 1024 * 1024) } }));
    expect(err).toBeInstanceOf(TypeError);
    expect(err.code).toBe('ERR_AUDIT_INVALID_ENTRY');
    expect(err.message).toMatch(/`entry` is (at least )?\d+ bytes, more than maxEntryBytes \(1048576\)/);
    expect(audit.pending).toBe(0);
    await stillWorks(audit, table);
    await audit.close();
  });

  it('a 10 MB payload is written when maxEntryBytes allows it', async () => {
    const { audit, table } = await fresh({ maxEntryBytes: 16 * 1024 * 1024 });
    const blob = 'y'.repeat(10 * 1024 * 1024);
    audit.log({ action: 'big', payload: { blob } });
    await audit.flush();
    const rows = await readRows(url, table);
    expect((rows[0]?.payload as { blob: string }).blob.length).toBe(blob.length);
    await audit.close();
  });

  it('deep nesting: stored when JSON.stringify can, a typed error when it cannot', async () => {
    const { audit, table } = await fresh();
    audit.log({ action: 'deep', payload: nested(1000) });
    const err = thrownBy(() => audit.log({ action: 'deeper', payload: nested(200_000) }));
    expect(err.code).toBe('ERR_AUDIT_INVALID_ENTRY');
    expect(err.message).toContain('`payload` is not JSON-serialisable');
    await audit.flush();
    expect((await readRows(url, table)).map((r) => r.action)).toEqual(['deep']);
    await stillWorks(audit, table);
    await audit.close();
  });

  it('numbers that are not finite are stored as null, as JSON.stringify writes them', async () => {
    const { audit, table } = await fresh();
    audit.log({ action: 'nan', payload: { a: Number.NaN, b: Infinity, c: -Infinity, d: -0, e: 1e308 } });
    await audit.flush();
    expect((await readRows(url, table))[0]?.payload).toEqual({ a: null, b: null, c: null, d: 0, e: 1e308 });
    await audit.close();
  });

  it('NUL characters and lone surrogates everywhere are stored replaced, counted, and never block a flush', async () => {
    const { audit, table } = await fresh();
    const nasty = 'a\u0000b\ud800c\udfffd';
    audit.log({ action: nasty, actor: nasty, tenantId: nasty, resource: nasty, outcome: nasty, payload: { [nasty]: [nasty] } });
    await audit.flush();
    const row = (await readRows(url, table))[0]!;
    const clean = 'a\ufffdb\ufffdc\ufffdd';
    expect(row).toMatchObject({ action: clean, actor: clean, tenant_id: clean, resource: clean, outcome: clean });
    expect(row.payload).toEqual({ [clean]: [clean] });
    expect(audit.stats().sanitized).toBe(1);
    await stillWorks(audit, table);
    await audit.close();
  });

  it('values of every wrong type, from plain JavaScript, give typed errors and leave the batcher working', async () => {
    const { audit, table } = await fresh();
    const wrong: unknown[] = [
      undefined, 42, 'str', true, Symbol('s'), () => 1, [], new Date(), new Map(), { action: Symbol('s') },
      { action: 'a', actor: 1n }, { action: 'a', payload: { x: 1n } }, { action: 'a', occurredAt: {} },
      { action: 'a', occurredAt: '2026-13-45T99:99:99Z' }, { action: 'a', occurredAt: -1e20 }, { action: 'a', id: '' },
      { action: 'a', critical: 1 },
    ];
    for (const entry of wrong) {
      const err = thrownBy(() => audit.log(entry as never));
      expect(err, String(entry?.toString?.())).toBeInstanceOf(TypeError);
      expect(err.code).toBe('ERR_AUDIT_INVALID_ENTRY');
    }
    expect(audit.pending).toBe(0);
    await stillWorks(audit, table);
    await audit.close();
  });
});
