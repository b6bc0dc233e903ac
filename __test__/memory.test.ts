/**
 * `sink: 'memory'`: the same API, validation and ordering without a database, for users' own test suites.
 */
import { describe, expect, it } from 'vitest';
import { AuditBatcher } from '../index.js';
import { thrownBy } from './support/fixture.ts';

describe("sink: 'memory'", () => {
  it('holds written entries in log order, with their fields, ids and times', async () => {
    const audit = new AuditBatcher({ sink: 'memory' });
    await audit.ensureSchema();
    const at = new Date('2026-03-04T05:06:07.089Z');
    const id1 = audit.log({ action: 'tool.call', actor: 'user:42', tenantId: 't1', payload: { tool: 'grep' }, occurredAt: at });
    const id2 = audit.log({ action: 'tool.result', outcome: 'success' });
    expect(audit.memoryEntries()).toEqual([]); // nothing is written before a flush
    expect(await audit.flush()).toEqual({ written: 2, pending: 0 });
    const entries = audit.memoryEntries();
    expect(entries.map((e) => e.id)).toEqual([id1, id2]);
    expect(id1 < id2).toBe(true);
    expect(entries[0]).toEqual({ id: id1, occurredAt: at, tenantId: 't1', actor: 'user:42', action: 'tool.call', payload: { tool: 'grep' } });
    expect(entries[1]?.occurredAt).toBeInstanceOf(Date);
    expect(entries[1]).toMatchObject({ action: 'tool.result', outcome: 'success', payload: {} });
  });

  it('stores a repeated id once, as the PostgreSQL sink does', async () => {
    const audit = new AuditBatcher({ sink: 'memory' });
    const id = '00000000-0000-4000-8000-000000000001';
    audit.log({ action: 'first', id });
    audit.log({ action: 'second', id });
    await audit.flush();
    expect(audit.memoryEntries().map((e) => e.action)).toEqual(['first']);
  });

  it('keeps its stats consistent: logged === written + buffered', async () => {
    const audit = new AuditBatcher({ sink: 'memory', maxBatchRows: 3 });
    for (let i = 0; i < 10; i++) audit.log({ action: 'a', payload: { i } });
    // Full batches (3 entries) may already be written in the background: the books balance at every moment.
    const s0 = audit.stats();
    expect(s0).toMatchObject({ logged: 10, lastError: null });
    expect(s0.written + s0.buffered).toBe(10);
    expect(s0.buffered).toBeGreaterThanOrEqual(1);
    expect(s0.bufferedBytes).toBeGreaterThanOrEqual(s0.buffered * 72);
    await audit.flush();
    const s = audit.stats();
    expect(s).toMatchObject({ logged: 10, written: 10, buffered: 0, bufferedBytes: 0, batches: 4 });
  });

  it('close() flushes, and the entries stay readable afterwards', async () => {
    const audit = new AuditBatcher({ sink: 'memory' });
    audit.log({ action: 'a' });
    await audit.close();
    expect(audit.memoryEntries()).toHaveLength(1);
    expect(thrownBy(() => audit.log({ action: 'b' })).code).toBe('ERR_AUDIT_CLOSED');
  });

  it('memoryEntries() on a PostgreSQL batcher throws ERR_AUDIT_NOT_MEMORY_SINK', () => {
    const audit = new AuditBatcher({ connectionString: 'postgres://u@127.0.0.1/d' });
    expect(thrownBy(() => audit.memoryEntries()).code).toBe('ERR_AUDIT_NOT_MEMORY_SINK');
  });
});
