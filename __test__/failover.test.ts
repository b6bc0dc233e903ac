/**
 * Multi-host connection strings (libpq style): the batcher connects to the first host that accepts, and
 * with target_session_attrs=read-write skips hosts that are down; when the serving host goes away, the
 * next write follows to the next host.
 */
import { afterAll, beforeAll, afterEach, describe, expect, it } from 'vitest';
import { AuditBatcher } from '../index.js';
import { startProxy, type Proxy } from './support/proxy.ts';
import { dropDatabase, freshDatabase, readRows, rejectionOf, uniqueTable } from './support/fixture.ts';

let url: string;
const proxies: Proxy[] = [];
beforeAll(async () => {
  url = await freshDatabase();
});
afterEach(async () => {
  await Promise.all(proxies.splice(0).map((p) => p.close()));
});
afterAll(async () => {
  await dropDatabase(url);
});

async function twoHosts(): Promise<{ a: Proxy; b: Proxy; connectionString: string }> {
  const target = new URL(url);
  const a = await startProxy(target.hostname, Number(target.port || 5432));
  const b = await startProxy(target.hostname, Number(target.port || 5432));
  proxies.push(a, b);
  // Node's URL keeps only one host, so the multi-host string is put together by hand.
  const auth = target.username ? `${target.username}${target.password ? `:${target.password}` : ''}@` : '';
  const connectionString =
    `postgres://${auth}127.0.0.1:${a.port},127.0.0.1:${b.port}${target.pathname}?target_session_attrs=read-write`;
  return { a, b, connectionString };
}

describe('multi-host connection strings', () => {
  it('skip a host that is down, and follow to the next one when the serving host goes away', async () => {
    const { a, b, connectionString } = await twoHosts();
    const table = uniqueTable();
    await a.refuse(); // the first host is down
    const audit = new AuditBatcher({ connectionString, table, connectTimeoutMs: 2000 });
    await audit.ensureSchema();
    const ids = [audit.log({ action: 'one' })];
    await audit.flush();
    expect(b.accepted).toBeGreaterThan(0);
    expect(a.accepted).toBe(0);

    // Failover: the serving host dies, the first one is back.
    await a.accept();
    b.cutAll();
    await b.refuse();
    ids.push(audit.log({ action: 'two' }));
    const first = await audit.flush().then(
      () => 'ok',
      (e: { code?: string }) => e.code,
    );
    if (first !== 'ok') {
      expect(first).toBe('ERR_AUDIT_FLUSH_FAILED'); // the broken connection is noticed, then replaced
      await audit.flush();
    }
    expect(a.accepted).toBeGreaterThan(0);
    expect((await readRows(url, table)).map((r) => r.id)).toEqual(ids);
    await audit.close();
  });

  it('fail clearly when no host accepts, keeping the entries', async () => {
    const { a, b, connectionString } = await twoHosts();
    await a.refuse();
    await b.refuse();
    const audit = new AuditBatcher({ connectionString, table: uniqueTable(), connectTimeoutMs: 1000 });
    audit.log({ action: 'kept' });
    const err = await rejectionOf(audit.flush());
    expect(err.code).toBe('ERR_AUDIT_FLUSH_FAILED');
    expect(err.message).toMatch(/refused|connect/i);
    expect(audit.pending).toBe(1);
    await audit.close({ timeoutMs: 0 }).catch(() => {});
  });
});
