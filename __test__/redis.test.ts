/**
 * The Redis Streams hand-off (issue 13) through the JavaScript API and the CLI worker, against a real
 * `redis-server` started by this file on a free port (Debian package `redis-server`; set $REDIS_SERVER
 * for another path). Without the binary the suite is skipped, and says why.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { AuditBatcher, AuditWorker } from '../index.js';
import { dropDatabase, freshDatabase, rejectionOf, runNode, thrownBy, uniqueTable, withClient } from './support/fixture.ts';
import { startProxy } from './support/proxy.ts';
import { redisBinary, startRedis, type RedisServer } from './support/redis.ts';
import { waitFor } from './support/wait.ts';

const binary = redisBinary();
if (!binary) console.warn('redis.test.ts skipped: no redis-server binary (install the redis-server package or set $REDIS_SERVER)');

const root = join(__dirname, '..');
const cli = join(root, 'bin', 'worker.js');
const producer = join(__dirname, 'fixtures', 'redis-producer.cjs');
const spoolProducer = join(__dirname, 'fixtures', 'redis-spool-producer.cjs');

let url: string;
let redis: RedisServer;
const workers: AuditWorker[] = [];
const children: ChildProcess[] = [];

async function makeTable(table: string, connectionString = url): Promise<void> {
  const b = new AuditBatcher({ connectionString, table });
  await b.ensureSchema();
  await b.close();
}

async function count(table: string, where = 'true'): Promise<{ rows: number; distinct: number }> {
  return withClient(url, async (c) => {
    const r = await c.query(`SELECT count(*)::int AS rows, count(DISTINCT id)::int AS distinct FROM ${table} WHERE ${where}`);
    return r.rows[0] as { rows: number; distinct: number };
  });
}

function worker(options: Partial<ConstructorParameters<typeof AuditWorker>[0]> & { stream: string; table: string }): AuditWorker {
  const { stream, ...rest } = options;
  const w = new AuditWorker({ connectionString: url, redis: { url: redis.url, stream, group: 'audit-writers', blockMs: 200 }, ...rest });
  workers.push(w);
  return w;
}

interface CliWorker {
  child: ChildProcess;
  reading: Promise<void>;
  exit: Promise<{ code: number | null; signal: NodeJS.Signals | null; stdout: string; stderr: string }>;
}

/** `node bin/worker.js ...`, resolved `reading` once it printed that it reads. */
function cliWorker(args: string[]): CliWorker {
  const child = spawn(process.execPath, [cli, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
  children.push(child);
  let stdout = '';
  let stderr = '';
  let ready: () => void;
  const reading = new Promise<void>((resolve) => (ready = resolve));
  child.stdout!.on('data', (c: Buffer) => {
    stdout += c.toString();
    if (stdout.includes('reading stream')) ready();
  });
  child.stderr!.on('data', (c: Buffer) => (stderr += c.toString()));
  const exit = new Promise<{ code: number | null; signal: NodeJS.Signals | null; stdout: string; stderr: string }>((resolve) =>
    child.once('exit', (code, signal) => resolve({ code, signal, stdout, stderr })),
  );
  void exit.then((e) => e.code !== 0 && e.signal === null && ready());
  return { child, reading, exit };
}

describe.runIf(binary)('Redis hand-off', () => {
  beforeAll(async () => {
    [url, redis] = await Promise.all([freshDatabase(), startRedis(binary!)]);
  });
  afterAll(async () => {
    await Promise.allSettled(workers.map((w) => w.stop()));
    for (const c of children) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
    await redis?.stop();
    if (url) await dropDatabase(url);
  });

  it('options are checked by name, and no message holds a password', async () => {
    const bad = thrownBy(() => new AuditBatcher({ redis: { url: redis.url, stream: 'x', maxLenght: 5 } as never }));
    expect(bad).toMatchObject({ code: 'ERR_AUDIT_INVALID_OPTIONS' });
    expect(bad.message).toContain('redis.maxLenght');
    expect(thrownBy(() => new AuditBatcher({ redis: { shards: 0 } })).message).toContain('redis.shards');
    expect(thrownBy(() => new AuditBatcher({ redis: {}, sink: 'memory' })).message).toContain('sink');
    expect(thrownBy(() => new AuditWorker({ redis: { url: redis.url } } as never)).message).toContain('connectionString');
    expect(thrownBy(() => new AuditWorker({ redis: { blockMs: 0 }, connectionString: url })).message).toContain('redis.blockMs');
    const w = new AuditWorker({ redis: { url: 'redis://:hunter2@127.0.0.1:1' }, connectionString: url });
    const e = await rejectionOf(w.start());
    expect(e).toMatchObject({ code: 'ERR_AUDIT_WORKER_FAILED' });
    expect(e.message).toContain('redis.url');
    expect(e.message).not.toContain('hunter2');
    const run = await runNode([cli, '--redis', redis.url, '--database', url, '--shards', '0']);
    expect(run.code).toBe(2);
    expect(run.stderr.trim().split('\n')).toHaveLength(1);
    expect(run.stderr).toContain('redis.shards');
  });

  it('a producer with a spool, killed while Redis is unreachable: the next producer on that spool adds its entries to the stream, each reaches the table once', async () => {
    const table = uniqueTable('rsp');
    const stream = uniqueTable('s');
    await makeTable(table);
    const dir = mkdtempSync(join(tmpdir(), 'audit-redis-spool-'));
    try {
      const killed = await runNode([spoolProducer, 'redis://127.0.0.1:1', stream, dir, '3000'], { timeoutMs: 30_000 });
      expect(killed.signal, killed.stderr).toBe('SIGKILL');
      const ids = killed.stdout.trim().split('\n');
      expect(ids).toHaveLength(3000);

      const next = new AuditBatcher({ redis: { url: redis.url, stream }, spool: { dir } });
      await next.close();
      expect(next.stats().spool).toMatchObject({ recovered: 3000, replayed: 3000 });
      const w = worker({ stream, table });
      await w.start();
      await waitFor(async () => (await count(table)).rows >= 3000, 30_000, { intervalMs: 50 });
      await w.stop();
      const stored = await withClient(url, async (c) => (await c.query(`SELECT id::text AS id FROM ${table}`)).rows.map((r) => r.id as string));
      expect(stored.sort()).toEqual([...ids].sort());
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('3 producer processes x 20k entries, 2 CLI workers, one SIGKILLed mid-batch: every entry in the table once', async () => {
    const table = uniqueTable('rw');
    const stream = uniqueTable('s');
    await makeTable(table);
    const args = ['--redis', redis.url, '--stream', stream, '--group', 'audit-writers', '--database', url, '--table', table];
    const fast = ['--claim-idle-ms', '1000', '--claim-interval-ms', '300', '--block-ms', '200'];
    const a = cliWorker([...args, ...fast, '--max-batch-rows', '500']);
    const b = cliWorker([...args, ...fast, '--max-batch-rows', '500']);
    await Promise.all([a.reading, b.reading]);
    const producers = ['p0', 'p1', 'p2'].map((tag) => runNode([producer, redis.url, stream, '20000', tag], { timeoutMs: 60_000 }));
    // Mid-run: worker A has written some batches and holds more.
    await waitFor(async () => (await count(table)).rows >= 5000, 30_000, { intervalMs: 50 });
    a.child.kill('SIGKILL');
    const killed = await a.exit;
    expect(killed.signal).toBe('SIGKILL');
    for (const p of await Promise.all(producers)) expect(p.stdout).toContain('logged 20000');
    // Every row may be in the table while the killed worker's last batch (committed, never acknowledged)
    // still waits in its pending list: the survivor claims and acknowledges it after claimIdleMs.
    const pending = async () => ((await redis.command('XPENDING', stream, 'audit-writers')) as unknown[])[0];
    await waitFor(
      async () => (await count(table)).rows >= 60_000 && (await redis.command('XLEN', stream)) === 0 && (await pending()) === 0,
      60_000,
      { intervalMs: 200 },
    );
    b.child.kill('SIGTERM');
    const stopped = await b.exit;
    expect(stopped.code).toBe(0);
    // What the survivor took over from the killed worker (usually its batch in hand), for the log.
    console.log(`surviving worker: ${stopped.stdout.trim().split('\n').pop()}`);
    expect(await count(table)).toEqual({ rows: 60_000, distinct: 60_000 });
    const perProducer = await withClient(url, async (c) =>
      (await c.query(`SELECT split_part(actor, ':', 1) AS p, count(DISTINCT actor)::int AS n FROM ${table} GROUP BY 1 ORDER BY 1`)).rows,
    );
    expect(perProducer).toEqual([
      { p: 'p0', n: 20_000 },
      { p: 'p1', n: 20_000 },
      { p: 'p2', n: 20_000 },
    ]);
    expect(await redis.command('XLEN', stream)).toBe(0);
    expect(await pending()).toBe(0);
  }, 120_000);

  it('PostgreSQL unreachable for 5 s: the stream grows, pending shows it, then it drains', async () => {
    const table = uniqueTable('rw');
    const stream = uniqueTable('s');
    await makeTable(table);
    const db = new URL(url);
    const proxy = await startProxy(db.hostname, Number(db.port || 5432));
    try {
      const w = worker({ stream, table, connectionString: proxy.url(url), maxBatchRows: 200 });
      await w.start();
      const p = new AuditBatcher({ redis: { url: redis.url, stream } });
      await proxy.refuse();
      proxy.cutAll();
      for (let i = 0; i < 2000; i++) p.log({ action: 'outage', payload: { i } });
      await p.flush();
      const during = await waitFor(() => {
        const s = w.stats();
        return s.pending! > 0 && s.pgFailures > 0 && s.streamLength! >= 2000 ? s : undefined;
      }, 10_000);
      expect(during.entriesAcked).toBe(0);
      // The outage lasts 5 s (a fault's duration, not a synchronisation).
      await new Promise((r) => setTimeout(r, 5000));
      expect(w.stats().entriesAcked).toBe(0);
      await proxy.accept();
      await waitFor(() => w.stats().entriesAcked === 2000, 20_000, { intervalMs: 50 });
      expect(await count(table)).toEqual({ rows: 2000, distinct: 2000 });
      await waitFor(() => w.stats().pending === 0 && w.stats().streamLength === 0, 5000);
      await p.close();
      await w.stop();
      expect(w.running).toBe(false);
    } finally {
      await proxy.close();
    }
  }, 45_000);

  it('maxLength reached: rejects and drops are counted, critical entries still written, and the producer learns when workers drained', async () => {
    const table = uniqueTable('rw');
    const stream = uniqueTable('s');
    await makeTable(table);
    const reject = new AuditBatcher({ redis: { url: redis.url, stream, maxLength: 100 } });
    const drop = new AuditBatcher({ redis: { url: redis.url, stream, maxLength: 100 }, onBufferFull: 'drop' });
    for (let i = 0; i < 100; i++) reject.log({ action: 'fill', payload: { i } });
    await reject.flush();
    expect(await redis.command('XLEN', stream)).toBe(100);
    expect(thrownBy(() => reject.log({ action: 'over' }))).toMatchObject({ code: 'ERR_AUDIT_BUFFER_FULL' });
    expect(reject.stats().rejected).toBe(1);
    // `drop` learns the length with its first write.
    drop.log({ action: 'first' });
    await drop.flush();
    for (let i = 0; i < 10; i++) drop.log({ action: 'over' });
    expect(drop.stats().dropped).toBe(10);
    const critical = reject.log({ action: 'critical.one', critical: true });
    const written = await reject.write({ action: 'critical.two' });
    await reject.flush();
    expect(await redis.command('XLEN', stream)).toBe(103);
    const w = worker({ stream, table });
    await w.start();
    await waitFor(() => w.stats().entriesAcked === 103, 15_000, { intervalMs: 20 });
    const ids = await withClient(url, async (c) => (await c.query(`SELECT id::text FROM ${table} WHERE action LIKE 'critical.%'`)).rows.map((r) => r.id));
    expect(ids.sort()).toEqual([critical, written].sort());
    expect((await count(table, "action = 'over'")).rows).toBe(0);
    // The stream is drained: the producer at its bound asks for the length again and takes entries.
    await waitFor(() => {
      try {
        reject.log({ action: 'after' });
        return true;
      } catch {
        return false;
      }
    }, 5000);
    await reject.close();
    await drop.close();
    await waitFor(async () => (await count(table, "action = 'after'")).rows === 1, 10_000);
    await w.stop();
  }, 30_000);

  it('with connectionString too: critical entries and write() are committed to the table directly, the rest only through a worker', async () => {
    const table = uniqueTable('rw');
    const stream = uniqueTable('s');
    await makeTable(table);
    const ids = async (where: string): Promise<string[]> =>
      withClient(url, async (c) => (await c.query(`SELECT id::text FROM ${table} WHERE ${where} ORDER BY 1`)).rows.map((r) => r.id));
    // The options the direct mode checks are checked here too, by the same code, and no message holds a password.
    expect(thrownBy(() => new AuditBatcher({ redis: { url: redis.url, stream }, connectionString: '   ' }))).toMatchObject({ code: 'ERR_AUDIT_INVALID_OPTIONS' });
    const leaky = thrownBy(() => new AuditBatcher({ redis: { url: redis.url, stream }, connectionString: 'postgres://u:hunter2@h:notaport/db' }));
    expect(leaky.message).toContain('connectionString');
    expect(leaky.message).not.toContain('hunter2');
    expect(thrownBy(() => new AuditBatcher({ redis: { url: redis.url, stream }, connectionString: url, table: 'bad name' })).message).toContain('table');
    expect(thrownBy(() => new AuditBatcher({ redis: { url: redis.url, stream }, connectionString: url, spool: { dir: '/tmp/x' } })).message).toContain('spool');

    const p = new AuditBatcher({ redis: { url: redis.url, stream }, connectionString: url, table });
    const plain = p.log({ action: 'plain' });
    const critical = p.log({ action: 'critical.log', critical: true });
    const written = await p.write({ action: 'critical.write' });
    // No worker runs: what is in the table came straight from the producer, committed when write() resolved.
    expect(await ids("action LIKE 'critical.%'")).toEqual([critical, written].sort());
    expect(await ids("action = 'plain'")).toEqual([]);
    expect(p.pending).toBe(1);
    expect(await p.flush()).toEqual({ written: 1, pending: 0 });
    expect(await redis.command('XLEN', stream)).toBe(1);
    expect(p.stats()).toMatchObject({ logged: 3, written: 3, critical: 2, buffered: 0 });
    expect(p.metricsText()).toMatch(/audit_batcher_entries_total\{state="written"\} 3/);
    await p.close();
    expect(thrownBy(() => p.log({ action: 'late', critical: true }))).toMatchObject({ code: 'ERR_AUDIT_CLOSED' });
    expect(await ids("action = 'plain'")).toEqual([]);
    const w = worker({ stream, table });
    await w.start();
    await waitFor(() => w.stats().entriesAcked === 1, 15_000, { intervalMs: 20 });
    expect(await ids("action = 'plain'")).toEqual([plain]);
    expect(await count(table)).toEqual({ rows: 3, distinct: 3 });
    await w.stop();
  }, 30_000);

  it('with connectionString too, at maxLength: non-critical entries rejected or dropped and counted, critical ones written to the table', async () => {
    const table = uniqueTable('rw');
    const stream = uniqueTable('s');
    await makeTable(table);
    const reject = new AuditBatcher({ redis: { url: redis.url, stream, maxLength: 5 }, connectionString: url, table });
    const drop = new AuditBatcher({ redis: { url: redis.url, stream, maxLength: 5 }, connectionString: url, table, onBufferFull: 'drop' });
    for (let i = 0; i < 5; i++) reject.log({ action: 'fill', payload: { i } });
    await reject.flush();
    expect(thrownBy(() => reject.log({ action: 'over' }))).toMatchObject({ code: 'ERR_AUDIT_BUFFER_FULL' });
    expect(reject.stats().rejected).toBe(1);
    drop.log({ action: 'first' });
    await drop.flush();
    for (let i = 0; i < 3; i++) drop.log({ action: 'over' });
    expect(drop.stats().dropped).toBe(3);
    const critical = reject.log({ action: 'critical.one', critical: true });
    const written = await reject.write({ action: 'critical.two' });
    const dropWritten = await drop.write({ action: 'critical.three' });
    await Promise.all([reject.flush(), drop.flush()]);
    // The critical entries went to the table, not to the stream; no worker runs.
    expect(await redis.command('XLEN', stream)).toBe(6);
    const ids = await withClient(url, async (c) => (await c.query(`SELECT id::text FROM ${table} ORDER BY 1`)).rows.map((r) => r.id));
    expect(ids).toEqual([critical, written, dropWritten].sort());
    expect(reject.stats()).toMatchObject({ rejected: 1, critical: 2, written: 7 });
    expect(drop.stats()).toMatchObject({ dropped: 3, critical: 1, written: 2 });
    await reject.close();
    await drop.close();
  }, 30_000);

  it('with connectionString too and PostgreSQL unreachable: write() rejects typed without the password, close() reports what is left', async () => {
    const stream = uniqueTable('s');
    const p = new AuditBatcher({ redis: { url: redis.url, stream }, connectionString: 'postgres://u:hunter2@127.0.0.1:1/db', connectTimeoutMs: 500 });
    p.log({ action: 'plain' });
    const e = await rejectionOf(p.write({ action: 'critical.write' }));
    expect(e).toMatchObject({ code: 'ERR_AUDIT_FLUSH_FAILED' });
    expect(e.message).not.toContain('hunter2');
    expect(p.stats().failedFlushes).toBeGreaterThan(0);
    expect(p.stats().lastError?.message).not.toContain('hunter2');
    const closed = await rejectionOf(p.close({ timeoutMs: 300 }));
    expect(closed).toMatchObject({ code: 'ERR_AUDIT_FLUSH_FAILED', pending: 1 });
    expect(closed.message).not.toContain('hunter2');
    // The stream's entry went; the critical one is kept, readable, not dropped.
    expect(await redis.command('XLEN', stream)).toBe(1);
    expect(p.bufferedEntries().map((r) => r.action)).toEqual(['critical.write']);
    await redis.command('DEL', stream);
  }, 30_000);

  it('redis.highWaterLength: onHighWater once per crossing of the stream length the producer learns', async () => {
    const stream = uniqueTable('s');
    expect(thrownBy(() => new AuditBatcher({ redis: { url: redis.url, stream, maxLength: 5, highWaterLength: 6 } })).message).toContain('redis.highWaterLength');
    const events: { buffered: number; bufferedBytes: number; streamLength?: number }[] = [];
    const p = new AuditBatcher({ redis: { url: redis.url, stream, highWaterLength: 10 }, onHighWater: (e) => events.push(e) });
    for (let i = 0; i < 9; i++) p.log({ action: 'hw' });
    await p.flush();
    p.log({ action: 'hw' });
    p.log({ action: 'hw' });
    await p.flush();
    await waitFor(() => events.length === 1, 5000);
    expect(events[0]?.streamLength).toBe(11);
    // Still above: no new event.
    p.log({ action: 'hw' });
    await p.flush();
    // Workers drained the stream (here: deleted); the producer learns it with its next write, then crosses again.
    await redis.command('DEL', stream);
    p.log({ action: 'hw' });
    await p.flush();
    for (let i = 0; i < 9; i++) p.log({ action: 'hw' });
    await p.flush();
    await waitFor(() => events.length === 2, 5000);
    expect(events[1]?.streamLength).toBe(10);
    await new Promise((r) => setTimeout(r, 100));
    expect(events).toHaveLength(2);
    await p.close();
    await redis.command('DEL', stream);
  }, 30_000);

  it('a poison row and an undecodable stream entry are dead-lettered; the rest written', async () => {
    const table = uniqueTable('rw');
    const stream = uniqueTable('s');
    await makeTable(table);
    await withClient(url, (c) => c.query(`ALTER TABLE ${table} ADD CHECK (actor IS DISTINCT FROM 'evil')`));
    const p = new AuditBatcher({ redis: { url: redis.url, stream } });
    for (let i = 0; i < 10; i++) p.log({ action: 'good', payload: { i } });
    p.log({ action: 'bad', actor: 'evil' });
    await p.flush();
    await redis.command('XADD', stream, '*', 'garbage', '\u0001not an entry', 'v', '999');
    for (let i = 10; i < 20; i++) p.log({ action: 'good', payload: { i } });
    await p.close();
    const w = worker({ stream, table });
    await w.start();
    await waitFor(() => w.stats().entriesAcked === 22, 15_000, { intervalMs: 20 });
    const s = w.stats();
    expect(s).toMatchObject({ entriesWritten: 20, entriesDeadLettered: 2, entriesUndecodable: 1 });
    expect(await count(table)).toEqual({ rows: 20, distinct: 20 });
    const dead = await withClient(url, async (c) => (await c.query(`SELECT entry->>'action' AS action FROM ${table}_dead_letter ORDER BY 1`)).rows.map((r) => r.action));
    expect(dead).toEqual(['audit-batcher.undecodable-stream-entry', 'bad']);
    expect(w.metricsText({ worker: 'a' })).toMatch(/audit_batcher_worker_entries_total\{worker="a",state="undecodable"\} 1/);
    await w.stop();
  }, 30_000);

  it('the CLI worker under SIGTERM exits 0 with its batch acknowledged', async () => {
    const table = uniqueTable('rw');
    const stream = uniqueTable('s');
    await makeTable(table);
    const p = new AuditBatcher({ redis: { url: redis.url, stream } });
    for (let i = 0; i < 5000; i++) p.log({ action: 'cli', payload: { i } });
    await p.close();
    const c = cliWorker(['--redis', redis.url, '--stream', stream, '--group', 'audit-writers', '--database', url, '--table', table, '--max-batch-rows', '250']);
    await c.reading;
    await waitFor(async () => (await count(table)).rows > 0, 10_000, { intervalMs: 5 });
    c.child.kill('SIGTERM');
    const exit = await c.exit;
    expect(exit.code).toBe(0);
    expect(exit.stdout).toContain('SIGTERM, stopping');
    // Nothing held: everything read was written and acknowledged; the rest is still in the stream.
    expect(((await redis.command('XPENDING', stream, 'audit-writers')) as unknown[])[0]).toBe(0);
    const rows = (await count(table)).rows;
    expect(rows + ((await redis.command('XLEN', stream)) as number)).toBe(5000);
  }, 30_000);

  it('an idle started worker does not keep the process alive, nor a stopped one', async () => {
    const script = `
      const { AuditWorker } = require(${JSON.stringify(join(root, 'index.js'))});
      const w = new AuditWorker({ redis: { url: ${JSON.stringify(redis.url)}, stream: 'idle' }, connectionString: ${JSON.stringify(url)} });
      w.start().then(() => console.log('started'));
    `;
    const run = await runNode(['-e', script], { timeoutMs: 15_000 });
    expect(run.stdout).toContain('started');
    expect(run.code).toBe(0);
  });
});
