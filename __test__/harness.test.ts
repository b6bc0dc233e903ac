/**
 * Tests of the test harness itself (database + fault-injection proxy),
 * against the run's real PostgreSQL, using `pg` as the client.
 */
import { existsSync, readdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pg from 'pg';
import { afterAll, afterEach, beforeAll, describe, expect, inject, it } from 'vitest';
import {
  NotSupportedError,
  createTestDatabase,
  dropTestDatabase,
  startDatabase,
  withClient,
} from '../scripts/database.ts';
import { type Proxy, startProxy } from './support/proxy.ts';
import { waitFor } from './support/wait.ts';

const serverUrl = inject('databaseUrl');
let dbUrl: string;

/** Clients opened by a test, closed after it. */
const clients = new Set<pg.Client>();
async function connect(url: string): Promise<pg.Client> {
  const client = new pg.Client({ connectionString: url });
  // A connection killed while idle is reported as an 'error' event; without a
  // listener that would be an uncaught exception.
  client.on('error', () => {});
  clients.add(client);
  await client.connect();
  return client;
}

/** Settle-state probe for a promise, without waiting on it. */
function track<T>(p: Promise<T>): { promise: Promise<T>; settled: () => boolean } {
  let settled = false;
  const promise = p.finally(() => {
    settled = true;
  });
  promise.catch(() => {}); // observed later by the test
  return { promise, settled: () => settled };
}

async function query<T extends pg.QueryResultRow>(url: string, sql: string, params: unknown[] = []): Promise<T[]> {
  return withClient(url, async (c) => (await c.query<T>(sql, params)).rows);
}

beforeAll(async () => {
  dbUrl = await createTestDatabase(serverUrl);
  await query(dbUrl, 'create table t (id int primary key, note text)');
});

afterAll(async () => {
  await dropTestDatabase(dbUrl);
});

afterEach(async () => {
  await Promise.all([...clients].map((c) => c.end().catch(() => {})));
  clients.clear();
});

describe('database', () => {
  it('answers queries', async () => {
    const [row] = await query<{ one: number; version: string }>(serverUrl, 'select 1 as one, version() as version');
    expect(row?.one).toBe(1);
    expect(row?.version).toMatch(/^PostgreSQL \d+/);
  });

  it('createTestDatabase gives a fresh, separate database', async () => {
    const other = await createTestDatabase(serverUrl);
    try {
      expect(other).not.toBe(dbUrl);
      const [row] = await query<{ db: string }>(other, 'select current_database() as db');
      expect(other.endsWith(`/${row?.db}`)).toBe(true);
      const tables = await query(other, "select 1 from pg_tables where schemaname = 'public'");
      expect(tables).toHaveLength(0);
    } finally {
      await dropTestDatabase(other);
    }
    const [gone] = await query<{ n: string }>(serverUrl, 'select count(*) as n from pg_database where datname = $1', [
      new URL(other).pathname.slice(1),
    ]);
    expect(gone?.n).toBe('0');
  });
});

describe('embedded lifecycle (own embedded server)', () => {
  it('stop() takes the server down, start() brings it back with its data, dispose() removes it', async () => {
    const db = await startDatabase({ forceEmbedded: true });
    try {
      expect(db.embedded).toBe(true);
      await query(db.url, 'create table kept (x int); insert into kept values (42)');

      const client = await connect(db.url);
      const ended = new Promise<void>((resolve) => client.once('end', () => resolve()));
      await db.stop();
      await ended; // open connections are terminated by the shutdown
      await expect(connect(db.url)).rejects.toMatchObject({ code: 'ECONNREFUSED' });

      await db.start();
      const [row] = await query<{ x: number }>(db.url, 'select x from kept');
      expect(row?.x).toBe(42);
    } finally {
      await db.dispose();
    }
    await expect(connect(db.url)).rejects.toMatchObject({ code: 'ECONNREFUSED' });
    await db.dispose(); // idempotent
  });

  it('with DATABASE_URL, stop()/start() are refused and dispose() is a no-op', async () => {
    const saved = process.env['DATABASE_URL'];
    process.env['DATABASE_URL'] = serverUrl;
    try {
      const db = await startDatabase();
      expect(db.embedded).toBe(false);
      expect(db.url).toBe(serverUrl);
      await expect(db.stop()).rejects.toBeInstanceOf(NotSupportedError);
      await expect(db.start()).rejects.toThrow(/not supported with DATABASE_URL/);
      await db.dispose();
      expect(await query(serverUrl, 'select 1')).toHaveLength(1);
    } finally {
      if (saved === undefined) delete process.env['DATABASE_URL'];
      else process.env['DATABASE_URL'] = saved;
    }
  });
});

describe('proxy', () => {
  let proxy: Proxy;
  let viaProxy: string;

  beforeAll(async () => {
    const target = new URL(dbUrl);
    proxy = await startProxy(target.hostname, Number(target.port || 5432));
    viaProxy = proxy.url(dbUrl);
  });

  afterAll(async () => {
    await proxy.close();
  });

  afterEach(async () => {
    // Each test starts from a clean, transparent proxy.
    proxy.resume();
    await proxy.accept();
    proxy.cutAll();
  });

  it('url() points a postgres URL at the proxy and keeps the rest', () => {
    const u = new URL(viaProxy);
    expect(u.host).toBe(`127.0.0.1:${proxy.port}`);
    expect(u.pathname).toBe(new URL(dbUrl).pathname);
    expect(u.username).toBe(new URL(dbUrl).username);
    expect(proxy.url('postgres://u:p@db.example:1/x?sslmode=disable')).toBe(
      `postgres://u:p@127.0.0.1:${proxy.port}/x?sslmode=disable`,
    );
  });

  it('forwards queries and counts connections', async () => {
    const before = proxy.accepted;
    const client = await connect(viaProxy);
    const res = await client.query<{ n: number }>('select $1::int + 1 as n', [41]);
    expect(res.rows[0]?.n).toBe(42);
    expect(proxy.connections).toBe(1);
    expect(proxy.accepted).toBe(before + 1);
    await client.end();
    await waitFor(() => proxy.connections === 0, 5_000, { message: 'proxy sees the connection closed' });
  });

  it('cutAll() makes an in-flight query fail', async () => {
    const client = await connect(viaProxy);
    const [{ pid } = { pid: 0 }] = (await client.query<{ pid: number }>('select pg_backend_pid() as pid')).rows;
    const inFlight = track(client.query('select pg_sleep(30)'));
    await waitFor(
      async () => (await query(serverUrl, "select 1 from pg_stat_activity where pid = $1 and state = 'active'", [pid])).length > 0,
      5_000,
      { message: 'pg_sleep is running on the server' },
    );
    expect(inFlight.settled()).toBe(false);

    expect(proxy.cutAll()).toBe(1);
    await expect(inFlight.promise).rejects.toThrow(/terminated|ECONNRESET|closed/i);
    expect(proxy.connections).toBe(0);

    // The server notices the dead client and ends the backend (next time it
    // tries to talk to it); cancel it so it doesn't sleep for the rest of 30 s.
    await query(serverUrl, 'select pg_cancel_backend($1)', [pid]);
  });

  it("cutAll('reset') surfaces as ECONNRESET", async () => {
    const client = await connect(viaProxy);
    const [{ pid } = { pid: 0 }] = (await client.query<{ pid: number }>('select pg_backend_pid() as pid')).rows;
    const inFlight = track(client.query('select pg_sleep(30)'));
    await waitFor(
      async () => (await query(serverUrl, "select 1 from pg_stat_activity where pid = $1 and state = 'active'", [pid])).length > 0,
    );
    proxy.cutAll('reset');
    await expect(inFlight.promise).rejects.toMatchObject({ code: 'ECONNRESET' });
    await query(serverUrl, 'select pg_cancel_backend($1)', [pid]);
  });

  it('pause() withholds the reply of a statement that commits on the server; resume() delivers it', async () => {
    const client = await connect(viaProxy);
    proxy.pause();
    const insert = track(client.query("insert into t (id, note) values (1, 'held') returning id"));

    // The reply has reached the proxy (so the server has finished the statement)...
    await waitFor(() => proxy.heldBytes > 0, 5_000, { message: 'server reply is held by the proxy' });
    // ...and the row is committed: visible to an independent, direct connection...
    const direct = await query<{ note: string }>(dbUrl, 'select note from t where id = 1');
    expect(direct).toEqual([{ note: 'held' }]);
    // ...while the client is still waiting for its answer.
    await Promise.resolve();
    expect(insert.settled()).toBe(false);

    proxy.resume();
    const res = await insert.promise;
    expect(res.rows).toEqual([{ id: 1 }]);
    expect(proxy.heldBytes).toBe(0);
    // The connection keeps working normally afterwards.
    expect((await client.query<{ n: string }>('select count(*) as n from t')).rows[0]?.n).toBe('1');
  });

  it('pause() also holds replies on new connections, and cutAll() drops what is held', async () => {
    proxy.pause();
    const connecting = track(connect(viaProxy)); // startup reply is held: cannot finish connecting
    await waitFor(() => proxy.heldBytes > 0);
    expect(connecting.settled()).toBe(false);
    proxy.cutAll();
    expect(proxy.heldBytes).toBe(0);
    await expect(connecting.promise).rejects.toThrow();
  });

  it('refuse() gives ECONNREFUSED on the same port; accept() lets new connections in again', async () => {
    const port = proxy.port;
    const existing = await connect(viaProxy);

    await proxy.refuse();
    expect(proxy.refusing).toBe(true);
    await expect(connect(viaProxy)).rejects.toMatchObject({ code: 'ECONNREFUSED' });
    // Connections made before refuse() keep working.
    expect((await existing.query<{ one: number }>('select 1 as one')).rows[0]?.one).toBe(1);

    await proxy.accept();
    expect(proxy.refusing).toBe(false);
    expect(proxy.port).toBe(port);
    const fresh = await connect(viaProxy);
    expect((await fresh.query<{ one: number }>('select 1 as one')).rows[0]?.one).toBe(1);
    expect(proxy.connections).toBe(2);
  });

  it('a connection to a proxy whose target is down fails cleanly', async () => {
    const target = new URL(dbUrl);
    const dead = await startProxy(target.hostname, Number(target.port || 5432));
    const deadPort = dead.port;
    // Point a second proxy at the first one's port after closing it: nothing listens there.
    await dead.close();
    const broken = await startProxy('127.0.0.1', deadPort);
    try {
      await expect(connect(broken.url(dbUrl))).rejects.toThrow(/terminated|ECONNRESET|closed/i);
      await waitFor(() => broken.connections === 0);
    } finally {
      await broken.close();
    }
  });
});

it('an embedded server keeps its data under os.tmpdir() and dispose() removes it', async () => {
  const ours = () => readdirSync(tmpdir()).filter((n) => n.startsWith(`audit-batcher-pg-${process.pid}-`));
  expect(ours()).toEqual([]); // the lifecycle test's server was disposed
  const db = await startDatabase({ forceEmbedded: true });
  const dirs = ours();
  expect(dirs).toHaveLength(1);
  await db.dispose();
  expect(existsSync(join(tmpdir(), dirs[0] ?? 'missing'))).toBe(false);
});
