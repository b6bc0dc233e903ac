/**
 * Faults between the addon and PostgreSQL, injected with a TCP proxy: a connection cut while a statement
 * is in flight (after the server committed it), connections cut between flushes, connections refused.
 * Every accepted entry must end up in the table exactly once, in order.
 */
import { inspect } from 'node:util';
import { afterAll, beforeAll, beforeEach, afterEach, describe, expect, it } from 'vitest';
import { AuditBatcher } from '../index.js';
import { startProxy, type Proxy } from './support/proxy.ts';
import { waitFor } from './support/wait.ts';
import { countRows, dropDatabase, freshDatabase, readRows, rejectionOf, uniqueTable } from './support/fixture.ts';

let url: string;
let proxy: Proxy;
let table: string;
let audit: AuditBatcher;

beforeAll(async () => {
  url = await freshDatabase();
});

afterAll(async () => {
  await dropDatabase(url);
});

beforeEach(async () => {
  const target = new URL(url);
  proxy = await startProxy(target.hostname, Number(target.port || 5432));
  table = uniqueTable();
  audit = new AuditBatcher({ connectionString: proxy.url(url), table, connectTimeoutMs: 2000 });
  await audit.ensureSchema();
});

afterEach(async () => {
  proxy.resume();
  await proxy.accept();
  await audit.close().catch(() => {});
  await proxy.close();
});

describe('connection faults', () => {
  it('a connection cut mid-flush, after the commit but before the reply, is retried without a duplicate', async () => {
    // A first flush prepares the INSERT on the connection, so that the paused one sends only the statement.
    const ids = [audit.log({ action: 'before' })];
    await audit.flush();
    ids.push(...Array.from({ length: 50 }, (_, i) => audit.log({ action: 'tool.call', payload: { i } })));
    proxy.pause(); // the server will commit, the reply will not come back
    const flush = audit.flush();
    await waitFor(async () => (await countRows(url, table)) === 51, 10_000, { message: 'rows committed on the server' });
    expect(proxy.cutAll('reset')).toBeGreaterThan(0);
    const err = await rejectionOf(flush);
    expect(err.code).toBe('ERR_AUDIT_FLUSH_FAILED');
    expect(audit.pending).toBe(50);

    proxy.resume();
    ids.push(audit.log({ action: 'after.cut' }));
    expect(await audit.flush()).toEqual({ written: 51, pending: 0 });
    const rows = await readRows(url, table);
    expect(rows.map((r) => r.id)).toEqual(ids);
    expect(audit.stats()).toMatchObject({ logged: 52, written: 52, buffered: 0, failedFlushes: 1 });
  });

  it('recovers on its own when pooled connections are cut between flushes', async () => {
    const ids = [audit.log({ action: 'before' })];
    await audit.flush();
    expect(proxy.cutAll()).toBeGreaterThan(0);
    ids.push(audit.log({ action: 'after' }));
    // The broken connection is noticed and replaced; at most one flush may fail while that happens.
    const first = await audit.flush().then(
      () => 'ok',
      (e: { code?: string }) => e.code,
    );
    if (first !== 'ok') {
      expect(first).toBe('ERR_AUDIT_FLUSH_FAILED');
      await audit.flush();
    }
    expect((await readRows(url, table)).map((r) => r.id)).toEqual(ids);
  });

  it('fails fast while connections are refused, keeps every entry, and writes them once the server is back', async () => {
    await audit.flush();
    proxy.cutAll();
    await proxy.refuse();
    const ids: string[] = [];
    for (let attempt = 0; attempt < 3; attempt++) {
      for (let i = 0; i < 10; i++) ids.push(audit.log({ action: 'during.outage', payload: { attempt, i } }));
      const err = await rejectionOf(audit.flush());
      expect(err.code).toBe('ERR_AUDIT_FLUSH_FAILED');
      expect(err.message).toMatch(/refused|connect/i);
      expect(err.pending).toBe(ids.length);
    }
    expect(audit.stats().failedFlushes).toBeGreaterThanOrEqual(3);
    await proxy.accept();
    expect(await audit.flush()).toEqual({ written: 30, pending: 0 });
    expect((await readRows(url, table)).map((r) => r.id)).toEqual(ids);
  });

  it('close() with the database unreachable retries until timeoutMs, ends the pool, and rejects with what it kept', async () => {
    const ids = [audit.log({ action: 'a' }), audit.log({ action: 'b', payload: { n: 1 } })];
    proxy.cutAll();
    await proxy.refuse();
    const started = Date.now();
    const err = await rejectionOf(audit.close({ timeoutMs: 1500 }));
    const took = Date.now() - started;
    expect(err.code).toBe('ERR_AUDIT_FLUSH_FAILED');
    expect(err.pending).toBe(2);
    expect(err.message).toMatch(/refused/);
    expect(took).toBeLessThan(1500 + 500);
    expect(audit.stats().retries).toBeGreaterThanOrEqual(1);
    // Nothing is thrown away unseen: the entries are still readable, in order.
    expect(audit.bufferedEntries().map((e) => e.id)).toEqual(ids);
    expect(audit.bufferedEntries()[1]).toMatchObject({ action: 'b', payload: { n: 1 } });
    expect(() => audit.log({ action: 'late' })).toThrow(expect.objectContaining({ code: 'ERR_AUDIT_CLOSED' }));
    // The pool is ended: a later close() reports the same outcome without trying again.
    await proxy.accept();
    const connectionsBefore = proxy.accepted;
    const again = await rejectionOf(audit.close());
    expect(again.pending).toBe(2);
    expect(proxy.accepted).toBe(connectionsBefore);
    expect(await countRows(url, table)).toBe(0);
  });

  it('close() with a reachable database writes everything within its timeout', async () => {
    const ids = Array.from({ length: 25 }, (_, i) => audit.log({ action: 'x', payload: { i } }));
    await audit.close({ timeoutMs: 5000 });
    expect((await readRows(url, table)).map((r) => r.id)).toEqual(ids);
  });

  it('close() rejects a bad timeoutMs with ERR_AUDIT_INVALID_OPTIONS and stays open', async () => {
    const err = await rejectionOf(audit.close({ timeoutMs: -1 }));
    expect(err).toBeInstanceOf(TypeError);
    expect(err.code).toBe('ERR_AUDIT_INVALID_OPTIONS');
    audit.log({ action: 'still.open' });
    await audit.flush();
  });
});

describe('secrets', () => {
  it('never shows the password in errors, stats or inspect()', async () => {
    const secret = 'Sup3r-s3cret_pw';
    await proxy.refuse();
    const withPassword = new URL(proxy.url(url));
    withPassword.username = 'postgres';
    withPassword.password = secret;
    const b = new AuditBatcher({ connectionString: withPassword.toString(), table, connectTimeoutMs: 1000 });
    b.log({ action: 'a' });
    const err = await rejectionOf(b.flush());
    const kv = new AuditBatcher({
      connectionString: `host=127.0.0.1 port=${proxy.port} user=postgres password=${secret} dbname=x`,
      table,
      connectTimeoutMs: 1000,
    });
    kv.log({ action: 'a' });
    const kvErr = await rejectionOf(kv.flush());
    let badOption: unknown;
    try {
      new AuditBatcher({ connectionString: `postgres://postgres:${secret}@127.0.0.1:notaport/db` });
    } catch (e) {
      badOption = e;
    }
    const seen = [
      err.message,
      err.stack,
      inspect(err),
      kvErr.message,
      inspect(kvErr),
      inspect(badOption),
      JSON.stringify(b.stats()),
      JSON.stringify(kv.stats()),
      inspect(b),
    ].join('\n');
    expect(seen).toContain('ERR_AUDIT_FLUSH_FAILED');
    expect(seen).toContain('ERR_AUDIT_INVALID_OPTIONS');
    expect(seen).not.toContain(secret);
    expect(seen).not.toContain(encodeURIComponent(secret));
    await proxy.accept();
    // The server may refuse these credentials; its answer must not carry the password either.
    const closing = await Promise.all(
      [b.close({ timeoutMs: 300 }), kv.close({ timeoutMs: 300 })].map((p) => p.then(() => '', (e: Error) => inspect(e))),
    );
    expect(closing.join('\n')).not.toContain(secret);
  });
});
