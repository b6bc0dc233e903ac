/**
 * Event callbacks: delivered on the JavaScript thread, never keeping the process alive, never able to crash
 * it when they throw.
 */
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { AuditBatcher, type DeadLetterEvent, type FlushEvent, type HighWaterEvent } from '../index.js';
import { startProxy } from './support/proxy.ts';
import { waitFor } from './support/wait.ts';
import { dropDatabase, freshDatabase, rejectionOf, runNode, thrownBy, uniqueTable, withClient } from './support/fixture.ts';

let url: string;
beforeAll(async () => {
  url = await freshDatabase();
});
afterAll(async () => {
  await dropDatabase(url);
});

describe('event callbacks', () => {
  it('onFlush hears each statement, with its rows and latency', async () => {
    const events: FlushEvent[] = [];
    const audit = new AuditBatcher({ sink: 'memory', maxBatchRows: 3, onFlush: (e) => events.push(e) });
    for (let i = 0; i < 7; i++) audit.log({ action: 'a' });
    await audit.flush();
    await waitFor(() => events.length === 3);
    expect(events.map((e) => e.rows)).toEqual([3, 3, 1]);
    expect(events.every((e) => e.latencyMs >= 0)).toBe(true);
    await audit.close();
  });

  it('onHighWater fires once each time the buffer reaches highWaterMark', async () => {
    const events: HighWaterEvent[] = [];
    const audit = new AuditBatcher({ sink: 'memory', highWaterMark: 5, onHighWater: (e) => events.push(e) });
    for (let i = 0; i < 8; i++) audit.log({ action: 'a' });
    await audit.flush();
    for (let i = 0; i < 5; i++) audit.log({ action: 'b' });
    await waitFor(() => events.length === 2);
    expect(events.map((e) => e.buffered)).toEqual([5, 5]);
    expect(events[0]!.bufferedBytes).toBeGreaterThan(5 * 72);
    await audit.close();
  });

  it('onError receives an Error with code, sqlstate and pending when a write fails', async () => {
    const target = new URL(url);
    const proxy = await startProxy(target.hostname, Number(target.port || 5432));
    await proxy.refuse();
    const errors: Array<Error & { code?: string; pending?: number }> = [];
    const audit = new AuditBatcher({ connectionString: proxy.url(url), table: uniqueTable(), onError: (e) => errors.push(e) });
    audit.log({ action: 'a' });
    await rejectionOf(audit.flush());
    await waitFor(() => errors.length === 1);
    expect(errors[0]).toBeInstanceOf(Error);
    expect(errors[0]).toMatchObject({ code: 'ERR_AUDIT_FLUSH_FAILED', pending: 1 });
    expect(errors[0]!.message).toMatch(/refused/);
    await audit.close({ timeoutMs: 0 }).catch(() => {});
    await proxy.close();
  });

  it('onDeadLetter receives each refused entry with the error and SQLSTATE', async () => {
    const table = uniqueTable();
    const dead: DeadLetterEvent[] = [];
    const audit = new AuditBatcher({ connectionString: url, table, onDeadLetter: (e) => dead.push(e) });
    await audit.ensureSchema();
    await withClient(url, (c) => c.query(`ALTER TABLE ${table} ADD CHECK (actor IS DISTINCT FROM 'evil')`));
    audit.log({ action: 'ok', actor: 'good' });
    const badId = audit.log({ action: 'bad', actor: 'evil', payload: { why: 'test' } });
    await audit.flush();
    await waitFor(() => dead.length === 1);
    expect(dead[0]).toMatchObject({ entry: { id: badId, actor: 'evil', payload: { why: 'test' } }, sqlstate: '23514' });
    expect(dead[0]!.error).toContain('check constraint');
    await audit.close();
  });

  it('a callback that is not a function is refused with ERR_AUDIT_INVALID_OPTIONS naming it', () => {
    const err = thrownBy(() => new AuditBatcher({ sink: 'memory', onFlush: 'log' as never }));
    expect(err.code).toBe('ERR_AUDIT_INVALID_OPTIONS');
    expect(err.message).toContain('`onFlush` must be a function');
  });

  it('callbacks that throw neither crash the process nor stop the batcher, and keep nothing alive', async () => {
    const script = fileURLToPath(new URL('./fixtures/throwing-callbacks.cjs', import.meta.url));
    const out = await runNode([script]);
    expect(out.stderr).not.toContain('exploded');
    expect(out.code).toBe(0);
    const result = JSON.parse(out.stdout) as { written: number; calls: { flush: number; highWater: number } };
    expect(result.written).toBe(3);
    expect(result.calls.highWater).toBe(1);
  });
});
