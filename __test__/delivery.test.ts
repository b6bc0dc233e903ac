/**
 * Delivery modes on a real PostgreSQL: write-behind by size and interval, catching up a burst, an outage in
 * background mode, critical entries and write(), sampling, the bounded buffer's two policies.
 */
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { AuditBatcher, type AuditBatcherOptions } from '../index.js';
import { startProxy, type Proxy } from './support/proxy.ts';
import { waitFor } from './support/wait.ts';
import {
  countRows,
  expectBooksBalance,
  countStatements,
  dropDatabase,
  freshDatabase,
  readRows,
  rejectionOf,
  thrownBy,
  uniqueTable,
  withClient,
} from './support/fixture.ts';

let url: string;
const open: AuditBatcher[] = [];
const proxies: Proxy[] = [];

beforeAll(async () => {
  url = await freshDatabase();
});

afterEach(async () => {
  for (const p of proxies.splice(0)) {
    p.resume();
    await p.accept();
  }
  await Promise.allSettled(open.splice(0).map((b) => b.close({ timeoutMs: 2000 })));
});

afterAll(async () => {
  await dropDatabase(url);
});

/** A batcher on a table of its own, created with ensureSchema(); closed after the test. */
async function batcherWithTable(
  options: Partial<AuditBatcherOptions> = {},
  connectionString = url,
): Promise<{ b: AuditBatcher; table: string }> {
  const table = uniqueTable();
  const b = new AuditBatcher({ connectionString, table, ...options });
  open.push(b);
  await b.ensureSchema();
  return { b, table };
}

async function proxied(): Promise<{ proxy: Proxy; url: string }> {
  const target = new URL(url);
  const proxy = await startProxy(target.hostname, Number(target.port || 5432));
  proxies.push(proxy);
  return { proxy, url: proxy.url(url) };
}


/** Distinct ids in the table, and whether any id is there twice. */
async function idsIn(table: string): Promise<{ ids: Set<string>; rows: number }> {
  return withClient(url, async (c) => {
    const r = await c.query<{ id: string }>(`SELECT id FROM ${table}`);
    return { ids: new Set(r.rows.map((x) => x.id)), rows: r.rowCount ?? 0 };
  });
}

describe('write-behind (background) flushing', () => {
  it('flushes on its own when the buffer reaches flushAtEntries', async () => {
    const { b, table } = await batcherWithTable({ flushAtEntries: 50 });
    const statements = await countStatements(url, table);
    for (let i = 0; i < 49; i++) b.log({ action: 'tool.call', payload: { i } });
    b.log({ action: 'tool.call', payload: { i: 49 } });
    await waitFor(async () => (await countRows(url, table)) === 50, 5000);
    expect(await statements()).toBe(1);
    expect(b.stats()).toMatchObject({ written: 50, buffered: 0, batches: 1, batchSize: { max: 50 } });
  });

  it('flushes on its own when flushIntervalMs passes', async () => {
    const { b, table } = await batcherWithTable({ flushIntervalMs: 100 });
    const ids = [b.log({ action: 'a' }), b.log({ action: 'b' }), b.log({ action: 'c' })];
    await waitFor(async () => (await countRows(url, table)) === 3, 5000);
    expect((await readRows(url, table)).map((r) => r.id)).toEqual(ids);
    expect(b.stats().batches).toBe(1);
  });

  it('lets a manual flush() join the writer: nothing is written twice, order kept', async () => {
    const { b, table } = await batcherWithTable({ flushIntervalMs: 5, maxBatchRows: 7 });
    const ids: string[] = [];
    const flushes: Promise<unknown>[] = [];
    for (let i = 0; i < 300; i++) {
      ids.push(b.log({ action: 'tool.call', payload: { i } }));
      if (i % 37 === 0) flushes.push(b.flush());
    }
    await Promise.all(flushes);
    await b.flush();
    const rows = await readRows(url, table);
    expect(rows.map((r) => r.id)).toEqual(ids);
  });

  it('catches up a burst of 100k entries in back-to-back batches', async () => {
    const { b, table } = await batcherWithTable({ flushAtEntries: 5000, maxBatchRows: 5000, maxBufferedEntries: 200_000 });
    const payload = { tool: 'grep', args: { q: 'needle "x"', path: '/repo/src/a.ts' }, note: 'Grüße' };
    const started = performance.now();
    for (let i = 0; i < 100_000; i++) b.log({ action: 'tool.call', actor: `user:${i % 50}`, payload });
    const logged = performance.now();
    await waitFor(() => b.pending === 0, 60_000, { intervalMs: 20 });
    const drained = performance.now();
    const s = b.stats();
    expect(s).toMatchObject({ logged: 100_000, written: 100_000, buffered: 0, failedFlushes: 0 });
    expect(s.batchSize.max).toBeLessThanOrEqual(5000);
    const { ids, rows } = await idsIn(table);
    expect(rows).toBe(100_000);
    expect(ids.size).toBe(100_000);
    console.log(
      `[burst] 100k log() in ${(logged - started).toFixed(0)} ms; drained ${(drained - started).toFixed(0)} ms after the first log() ` +
        `in ${s.batches} statements (p50 ${s.flushLatencyMs.p50.toFixed(1)} ms, p99 ${s.flushLatencyMs.p99.toFixed(1)} ms per statement)`,
    );
  }, 90_000);

  it('rides out an outage under a steady producer: every accepted entry lands exactly once', async () => {
    const { proxy, url: viaProxy } = await proxied();
    const { b, table } = await batcherWithTable({ flushAtEntries: 20, flushIntervalMs: 50, connectTimeoutMs: 1000 }, viaProxy);
    const ids: string[] = [];
    let i = 0;
    // A producer that logs every millisecond or so, on timers, as a server would.
    const produce = async (ms: number): Promise<void> => {
      const until = Date.now() + ms;
      while (Date.now() < until) {
        ids.push(b.log({ action: 'tool.call', payload: { i: i++ } }));
        await new Promise((r) => setTimeout(r, 1));
      }
    };
    await produce(300);
    proxy.cutAll();
    await proxy.refuse();
    await produce(1500);
    const during = b.stats();
    expect(during.failedFlushes).toBeGreaterThanOrEqual(1);
    await proxy.accept();
    await produce(300);
    await waitFor(() => b.pending === 0, 20_000, { intervalMs: 20 });
    const { ids: stored, rows } = await idsIn(table);
    expect(rows).toBe(ids.length);
    expect(stored).toEqual(new Set(ids));
    const s = b.stats();
    expectBooksBalance(s);
    expect(s.retries).toBeGreaterThanOrEqual(1);
    console.log(
      `[outage] ${ids.length} entries logged across a 1.5 s outage; ${rows} rows afterwards, ${stored.size} distinct; ` +
        `${s.failedFlushes} failed attempts, ${s.retries} retries`,
    );
  }, 40_000);

  it('stops with close(): nothing is written after it', async () => {
    const { b, table } = await batcherWithTable({ flushIntervalMs: 10 });
    b.log({ action: 'a' });
    await b.close();
    const statements = await countStatements(url, table);
    expect(await countRows(url, table)).toBe(1);
    expect(thrownBy(() => b.log({ action: 'b' })).code).toBe('ERR_AUDIT_CLOSED');
    expect(await statements()).toBe(0);
  });
});

describe('critical entries and write()', () => {
  it('a critical entry starts a flush of everything up to it at once', async () => {
    const { b, table } = await batcherWithTable(); // no background writer
    const ids = [b.log({ action: 'a' }), b.log({ action: 'b' })];
    ids.push(b.log({ action: 'policy.violation', critical: true }));
    b.log({ action: 'after' }); // logged after the critical entry: not part of its flush
    await waitFor(() => b.stats().written === 3, 5000);
    expect((await readRows(url, table)).map((r) => r.id)).toEqual(ids);
    expect(b.stats()).toMatchObject({ buffered: 1, critical: 1 });
  });

  it('write() resolves once the entry, and everything before it, is committed', async () => {
    const { b, table } = await batcherWithTable();
    const before = b.log({ action: 'before' });
    const id = await b.write({ action: 'payment.approved', actor: 'user:1', payload: { amount: 10 } });
    expect((await readRows(url, table)).map((r) => r.id)).toEqual([before, id]);
  });

  it('write() rejects when the database is down, keeps the entry, and a later flush writes it', async () => {
    const { proxy, url: viaProxy } = await proxied();
    const { b, table } = await batcherWithTable({ connectTimeoutMs: 1000 }, viaProxy);
    proxy.cutAll();
    await proxy.refuse();
    const err = await rejectionOf(b.write({ action: 'must.land' }));
    expect(err.code).toBe('ERR_AUDIT_FLUSH_FAILED');
    expect(err.message).toContain('write() failed');
    expect(b.pending).toBe(1);
    await proxy.accept();
    await b.flush();
    expect((await readRows(url, table)).map((r) => r.action)).toEqual(['must.land']);
  });

  it('write() and flush() promises pending together each settle with their own value', async () => {
    const { b, table } = await batcherWithTable();
    const first = b.log({ action: 'first' });
    const settled = await Promise.all([
      b.write({ action: 'w1' }),
      b.flush(),
      b.write({ action: 'w2' }),
      b.flush(),
    ]);
    const rows = (await readRows(url, table)).map((r) => r.id);
    expect(rows).toHaveLength(3);
    expect(rows[0]).toBe(first);
    // Whether w2 shares the first statement depends on timing, so the first flush's pending is not asserted.
    expect(settled).toEqual([
      rows[1],
      expect.objectContaining({ written: 2 }),
      rows[2],
      { written: 3, pending: 0 },
    ]);
  });

  it('write() rejects an invalid entry with ERR_AUDIT_INVALID_ENTRY', async () => {
    const { b } = await batcherWithTable();
    const err = await rejectionOf(b.write({ action: '' }));
    expect(err).toBeInstanceOf(TypeError);
    expect(err.code).toBe('ERR_AUDIT_INVALID_ENTRY');
    expect(b.pending).toBe(0);
  });
});

describe('sampling', () => {
  it('keeps about sampleRate of the entries, counts the rest, and never samples critical ones', async () => {
    const { b, table } = await batcherWithTable({ sampleRate: 0.3, sampleRates: { 'file.read': 0 } });
    const critical: string[] = [];
    for (let i = 0; i < 4000; i++) b.log({ action: 'tool.call', payload: { i } });
    for (let i = 0; i < 500; i++) b.log({ action: 'file.read' });
    for (let i = 0; i < 50; i++) critical.push(b.log({ action: 'file.read', critical: true }));
    await b.flush();
    const s = b.stats();
    expectBooksBalance(s);
    expect(s.logged).toBe(4550);
    expect(s.written).toBe(await countRows(url, table));
    const toolCalls = s.written - 50;
    expect(toolCalls).toBeGreaterThan(4000 * 0.3 - 200); // 0.3 ± ~7 standard deviations
    expect(toolCalls).toBeLessThan(4000 * 0.3 + 200);
    const { ids } = await idsIn(table);
    expect(critical.every((id) => ids.has(id))).toBe(true);
    const fileReads = await withClient(url, async (c) =>
      Number((await c.query<{ n: string }>(`SELECT count(*) AS n FROM ${table} WHERE action = 'file.read'`)).rows[0]?.n),
    );
    expect(fileReads).toBe(50);
  });
});

describe('a bounded buffer while the database is down', () => {
  it("'reject': log() throws ERR_AUDIT_BUFFER_FULL past the bound, critical entries still get in, all of it lands after", async () => {
    const { proxy, url: viaProxy } = await proxied();
    const { b, table } = await batcherWithTable(
      { maxBufferedEntries: 1000, onBufferFull: 'reject', flushIntervalMs: 20, connectTimeoutMs: 500 },
      viaProxy,
    );
    proxy.cutAll();
    await proxy.refuse();
    const accepted: string[] = [];
    let rejected = 0;
    for (let i = 0; i < 3000; i++) {
      try {
        accepted.push(b.log({ action: 'tool.call', payload: { i } }));
      } catch (e) {
        expect((e as { code?: string }).code).toBe('ERR_AUDIT_BUFFER_FULL');
        rejected++;
      }
    }
    accepted.push(b.log({ action: 'must.keep', critical: true }));
    expect(accepted.length).toBe(1001);
    expect(rejected).toBe(2000);
    expect(b.stats()).toMatchObject({ rejected: 2000, buffered: 1001, logged: 1001 });
    await proxy.accept();
    await waitFor(() => b.pending === 0, 20_000, { intervalMs: 20 });
    const { ids } = await idsIn(table);
    expect(ids).toEqual(new Set(accepted));
  });

  it("'drop': entries past the bound are counted as dropped, and memory stays within maxBufferedBytes", async () => {
    const { proxy, url: viaProxy } = await proxied();
    const maxBufferedBytes = 4 * 1024 * 1024;
    const { b } = await batcherWithTable(
      { maxBufferedBytes, onBufferFull: 'drop', flushIntervalMs: 20, connectTimeoutMs: 500 },
      viaProxy,
    );
    proxy.cutAll();
    await proxy.refuse();
    const payload = { blob: 'x'.repeat(1000), note: 'Grüße' };
    const rssBefore = process.memoryUsage().rss;
    let peakBytes = 0;
    for (let i = 0; i < 50_000; i++) {
      b.log({ action: 'tool.call', payload }); // ~50 MB offered in all
      if (i % 1000 === 0) peakBytes = Math.max(peakBytes, b.stats().bufferedBytes);
    }
    const rssAfter = process.memoryUsage().rss;
    const s = b.stats();
    expectBooksBalance(s);
    expect(s.bufferedBytes).toBeLessThanOrEqual(maxBufferedBytes);
    expect(peakBytes).toBeLessThanOrEqual(maxBufferedBytes);
    expect(s.dropped).toBeGreaterThan(45_000);
    expect(s.buffered + s.dropped).toBe(50_000);
    // 50 MB offered; the buffer holds at most 4 MiB. Allow for allocator and V8 slack, not for the 50 MB.
    expect(rssAfter - rssBefore).toBeLessThan(30 * 1024 * 1024);
    console.log(
      `[bound] 50000 × ~1 KB offered with the database down: ${s.buffered} buffered (${(s.bufferedBytes / 1048576).toFixed(2)} MiB of ` +
        `${maxBufferedBytes / 1048576} MiB), ${s.dropped} dropped; RSS grew ${((rssAfter - rssBefore) / 1048576).toFixed(1)} MiB`,
    );
    await proxy.accept();
  });
});
