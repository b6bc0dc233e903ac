/**
 * One benchmark method, run in a fresh child process by bench/run.ts:
 *
 *   node --expose-gc --import tsx bench/worker.ts '<config JSON>'
 *
 * Builds the deterministic entries, connects, and warms up by running the method on the first entries
 * into a second table of the same shape (all untimed). Then it prints "ready" and waits for "go" on
 * stdin: meanwhile the parent TRUNCATEs both tables and runs CHECKPOINT. Then it times the method on
 * all entries and writes its figures as JSON to config.resultFile. The parent checksums the table
 * after this process exits.
 */
import { createHash, randomUUID } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import pg from 'pg';
import copyStreams from 'pg-copy-streams';
import { AuditBatcher } from '../index.js';
import type { AuditBatcherOptions, AuditEntry, SpoolStats } from '../index.js';
import { COLUMNS, WARMUP_TABLE, copyText, entryJsonBytes, makeEntries } from './entries.ts';
import type { BenchEntry } from './entries.ts';

export type NodeMethod =
  | 'pg-naive'
  | 'pg-turn'
  | 'pg-turn-64'
  | 'pg-multirow-1000'
  | 'pg-copy-10000'
  | 'ab-turn'
  | 'ab-turn-default'
  | 'ab-turn-64'
  | 'ab-bulk'
  | 'ab-bulk-uuid4'
  | 'ab-bulk-own-ids'
  | 'ab-turn-spool'
  | 'ab-turn-64-spool'
  | 'ab-bulk-spool'
  | 'ab-memory'
  | 'ab-log';

export interface WorkerConfig {
  method: NodeMethod;
  /** Entries to write (the first n of the deterministic sequence). */
  n: number;
  url: string;
  table: string;
  resultFile: string;
  /** Entries per turn in the turn workloads. */
  turnSize: number;
  /** Concurrent agents in the "-64" workloads. */
  agents: number;
  /** pg.Pool max for pg-turn-64. */
  poolMax: number;
  insertRows: number;
  copyRows: number;
  /** Entries of the untimed warm-up run (on WARMUP_TABLE). */
  warmupEntries: number;
  /** flushAtEntries for ab-bulk, when the addon accepts that option. */
  flushAtEntries: number;
}

export interface Latency {
  count: number;
  p50: number;
  p99: number;
  max: number;
}

export interface WorkerResult {
  method: NodeMethod;
  n: number;
  ms: number;
  rowsPerSec: number;
  /** User + system CPU of the whole Node process (all threads, the addon's included), ms. */
  cpuMs: number;
  cpuUserMs?: number;
  cpuSystemMs?: number;
  /** Event-loop (main thread) busy time over the timed window, ms: performance.eventLoopUtilization().active. */
  eluActiveMs: number;
  /**
   * CPU time of the main (event-loop) thread alone over the timed window, ms (Linux; null elsewhere).
   * Unlike eluActiveMs it does not count time the thread was runnable but waiting for a core.
   */
  mainThreadCpuMs?: number | null;
  /** Per turn: from flush()/the turn's INSERT to its resolution (pg-naive: per INSERT). */
  latencyMs?: Latency;
  rssBefore: number;
  /** process.resourceUsage().maxRSS at the end: the process's peak RSS. */
  rssPeak: number;
  /**
   * Bytes this process dirtied in the page cache over the timed window (`write_bytes` of
   * /proc/self/io, Linux; null elsewhere): what it makes the kernel write to disk, counted per 4 KiB page
   * each time the page is dirtied (a page dirtied again after an fdatasync counts again).
   */
  diskWriteBytes?: number | null;
  extra?: Record<string, unknown>;
  /** Set by the parent: the 1-minute load average right after this run. */
  load1m?: number;
  /** Set by the parent: share of all cores used by processes other than the benchmark and PostgreSQL. */
  otherCpuShare?: number;
  /** Set by the parent: share of all cores the hypervisor took away (steal) meanwhile. */
  stealShare?: number;
  /**
   * Set by the parent, over the timed part: what the database paid. CPU (user + system) of every
   * PostgreSQL process, backends that exited included (their time moves to the postmaster's children's
   * time), ms; WAL written (pg_current_wal_lsn() after minus before), bytes; transactions committed in
   * the benchmark's database (pg_stat_database.xact_commit).
   */
  serverCpuMs?: number;
  walBytes?: number;
  commits?: number;
}

const config = JSON.parse(process.argv[2] ?? '') as WorkerConfig;
const gc = (globalThis as { gc?: () => void }).gc ?? (() => {});

function percentiles(samples: number[]): Latency {
  const s = [...samples].sort((a, b) => a - b);
  const at = (p: number) => s[Math.min(s.length - 1, Math.ceil((p / 100) * s.length) - 1)] ?? 0;
  return { count: s.length, p50: at(50), p99: at(99), max: s.at(-1) ?? 0 };
}

const columnList = COLUMNS.join(', ');

/** `($1, ..., $8), ($9, ...)` for `rows` rows. */
function valuesSql(table: string, rows: number): string {
  const tuples: string[] = [];
  for (let r = 0; r < rows; r++) {
    const b = r * COLUMNS.length;
    tuples.push(`(${COLUMNS.map((_, c) => `$${b + c + 1}`).join(', ')})`);
  }
  return `INSERT INTO ${table} (${columnList}) VALUES ${tuples.join(', ')}`;
}

/** The eight parameters of one row for pg (payload serialised here, as the app would). */
function pushParams(out: unknown[], e: BenchEntry): void {
  out.push(e.id, e.occurredAt, e.tenantId, e.actor, e.action, e.resource, e.outcome, JSON.stringify(e.payload));
}

/**
 * A batcher with `base` options plus as many of `optional` as this addon build accepts: an option it
 * does not know makes the constructor throw a TypeError with code ERR_AUDIT_INVALID_OPTIONS naming it;
 * that option is then left out. Returns the batcher and the options left out.
 */
function newBatcherTrying(
  base: AuditBatcherOptions,
  optional: Record<string, unknown>,
): { batcher: AuditBatcher; refused: string[] } {
  const opts: Record<string, unknown> = { ...optional };
  const refused: string[] = [];
  for (;;) {
    try {
      return { batcher: new AuditBatcher({ ...base, ...opts } as AuditBatcherOptions), refused };
    } catch (e) {
      const err = e as { code?: string; message?: string };
      const key = Object.keys(opts).find((k) => (err.message ?? '').includes(k));
      if (!(e instanceof TypeError) || err.code !== 'ERR_AUDIT_INVALID_OPTIONS' || key === undefined) throw e;
      delete opts[key];
      refused.push(key);
    }
  }
}

/** This thread's CPU time so far, ms, from the scheduler (Linux); NaN elsewhere. */
function mainThreadCpuMs(): number {
  try {
    return Number(readFileSync('/proc/thread-self/schedstat', 'utf8').split(' ')[0]) / 1e6;
  } catch {
    return NaN;
  }
}

/** Bytes this process dirtied in the page cache so far (`write_bytes` of /proc/self/io, Linux); NaN elsewhere. */
function diskWriteBytes(): number {
  try {
    const m = /^write_bytes: (\d+)$/m.exec(readFileSync('/proc/self/io', 'utf8'));
    return m ? Number(m[1]) : NaN;
  } catch {
    return NaN;
  }
}

/** The spool methods' directories: fresh ones under one temporary directory, removed when the process exits. */
let spoolRoot: string | undefined;
function freshSpoolDir(): string {
  if (spoolRoot === undefined) {
    const root = mkdtempSync(join(tmpdir(), 'audit-batcher-bench-spool-'));
    spoolRoot = root;
    process.on('exit', () => rmSync(root, { recursive: true, force: true }));
  }
  // One directory per batcher, so that no batcher ever sees another's spool.
  return mkdtempSync(join(spoolRoot, 'b-'));
}
function removeSpoolDirs(): void {
  if (spoolRoot !== undefined) rmSync(spoolRoot, { recursive: true, force: true });
}

/**
 * What a spool did between two `stats().spool` snapshots, as `extra` figures (prefix `spool`): syncs
 * (fdatasync) and syncs per second of `ms`, entries appended (must be `n`: else the method did not
 * spool what it wrote), and the figures `stats().spool` exposes at `after`.
 */
function spoolFigures(before: SpoolStats | null, after: SpoolStats | null, ms: number, n: number, into: Record<string, unknown>): void {
  if (!before || !after) throw new Error('stats().spool is null on a batcher made with the spool option');
  const appended = after.appended - before.appended;
  if (appended !== n || after.unspooled !== 0 || after.errors !== 0) {
    throw new Error(
      `the spool appended ${appended} entries of ${n} (unspooled ${after.unspooled}, errors ${after.errors}, ` +
        `last error ${after.lastError ?? 'none'}): the method did not spool what it logged`,
    );
  }
  Object.assign(into, {
    spoolSyncs: after.syncs - before.syncs,
    spoolSyncsPerSec: ((after.syncs - before.syncs) / ms) * 1000,
    spoolAppended: appended,
    spoolSyncFailures: after.syncFailures - before.syncFailures,
    spoolBytes: after.bytes,
    spoolSegments: after.segments,
    ...(after.lastSyncMs != null ? { spoolLastSyncMs: after.lastSyncMs } : {}),
  });
}

async function connect(url: string): Promise<pg.Client> {
  const client = new pg.Client({ connectionString: url });
  await client.connect();
  await client.query('SELECT 1');
  return client;
}

/** Run `turns` turns on `agents` concurrent async agents, each taking the next turn when done. */
async function runAgents(agents: number, turns: number, turn: (t: number) => Promise<void>): Promise<void> {
  let next = 0;
  await Promise.all(
    Array.from({ length: agents }, async () => {
      for (;;) {
        const t = next++;
        if (t >= turns) return;
        await turn(t);
      }
    }),
  );
}

/** A minimal TypeScript turn batcher on pg: buffers a turn's entries, one multi-row INSERT per flush. */
class PgTurnBatcher {
  private rows: unknown[] = [];
  private count = 0;
  private static readonly sqlByName = new Map<string, string>();

  constructor(private readonly table: string) {}

  log(e: BenchEntry): void {
    pushParams(this.rows, e); // serialised at log(), like the addon
    this.count++;
  }

  async flush(db: pg.Client | pg.Pool): Promise<void> {
    if (this.count === 0) return;
    const values = this.rows;
    const count = this.count;
    this.rows = [];
    this.count = 0;
    const name = `turn_insert_${this.table}_${count}`;
    let text = PgTurnBatcher.sqlByName.get(name);
    if (text === undefined) {
      text = valuesSql(this.table, count);
      PgTurnBatcher.sqlByName.set(name, text);
    }
    // A named statement: parsed and planned once per connection.
    await db.query({ name, text, values });
  }
}

/** Tell the parent we are ready, and wait until it has TRUNCATEd and CHECKPOINTed ("go"). */
function handshake(): Promise<void> {
  return new Promise((resolve) => {
    process.stdin.setEncoding('utf8');
    let buf = '';
    const onData = (d: string) => {
      buf += d;
      if (buf.includes('go\n')) {
        process.stdin.off('data', onData);
        process.stdin.pause();
        resolve();
      }
    };
    process.stdin.on('data', onData);
    process.stdout.write('ready\n');
  });
}

async function main(): Promise<void> {
  const { method, n, url, table } = config;
  const entries = makeEntries(n);
  const warmEntries = entries.slice(0, Math.min(n, config.warmupEntries));
  const latencies: number[] = [];
  const extra: Record<string, unknown> = {};
  const turnsOf = (es: BenchEntry[]) => Math.ceil(es.length / config.turnSize);
  const turnOf = (es: BenchEntry[], t: number) => es.slice(t * config.turnSize, (t + 1) * config.turnSize);

  // Every method is `work(entries, table)`: run once on the warm-up table with the first entries
  // (JIT, prepared statements, connections), then timed on the real table with all of them.
  let work: (es: BenchEntry[], table: string) => Promise<void>;
  /** Untimed preparation of the timed run (after the warm-up), e.g. a fresh batcher. */
  let prepare: () => Promise<void> = async () => {};
  let teardown: () => Promise<void> = async () => {};
  /** Called right before the timed window opens and right after it closes (untimed; e.g. stats snapshots). */
  let atTimedStart: () => void = () => {};
  let atTimedEnd: (ms: number) => void = () => {};

  switch (method) {
    case 'pg-naive': {
      const client = await connect(url);
      work = async (es, tbl) => {
        const text = `INSERT INTO ${tbl} (${columnList}) VALUES (${COLUMNS.map((_, c) => `$${c + 1}`).join(', ')})`;
        for (const e of es) {
          const values: unknown[] = [];
          pushParams(values, e);
          const t0 = performance.now();
          await client.query(text, values);
          latencies.push(performance.now() - t0);
        }
      };
      teardown = () => client.end();
      break;
    }
    case 'pg-turn': {
      const client = await connect(url);
      work = async (es, tbl) => {
        for (let t = 0; t < turnsOf(es); t++) {
          const b = new PgTurnBatcher(tbl);
          for (const e of turnOf(es, t)) b.log(e);
          const t0 = performance.now();
          await b.flush(client);
          latencies.push(performance.now() - t0);
        }
      };
      teardown = () => client.end();
      break;
    }
    case 'pg-turn-64': {
      const pool = new pg.Pool({ connectionString: url, max: config.poolMax });
      // Open all the pool's connections before timing.
      const clients = await Promise.all(Array.from({ length: config.poolMax }, () => pool.connect()));
      for (const c of clients) c.release();
      extra['poolMax'] = config.poolMax;
      work = (es, tbl) =>
        runAgents(config.agents, turnsOf(es), async (t) => {
          const b = new PgTurnBatcher(tbl);
          for (const e of turnOf(es, t)) b.log(e);
          const t0 = performance.now();
          await b.flush(pool);
          latencies.push(performance.now() - t0);
        });
      teardown = () => pool.end();
      break;
    }
    case 'pg-multirow-1000': {
      const client = await connect(url);
      const per = config.insertRows;
      work = async (es, tbl) => {
        const fullText = valuesSql(tbl, per);
        const build = (k: number) => {
          const chunk = es.slice(k * per, (k + 1) * per);
          const values: unknown[] = [];
          for (const e of chunk) pushParams(values, e);
          return chunk.length === per
            ? { name: `multirow_insert_${tbl}`, text: fullText, values } // prepared once per connection
            : { text: valuesSql(tbl, chunk.length), values };
        };
        // Builds statement k+1 while statement k is in flight (one connection, one statement at a time).
        const chunks = Math.ceil(es.length / per);
        let next = build(0);
        for (let k = 0; k < chunks; k++) {
          const inFlight = client.query(next);
          if (k + 1 < chunks) next = build(k + 1);
          await inFlight;
        }
      };
      teardown = () => client.end();
      break;
    }
    case 'pg-copy-10000': {
      const client = await connect(url);
      const per = config.copyRows;
      work = async (es, tbl) => {
        const sql = `COPY ${tbl} (${columnList}) FROM STDIN`; // text format
        const build = (k: number): Buffer => {
          let text = '';
          const end = Math.min(es.length, (k + 1) * per);
          for (let i = k * per; i < end; i++) {
            const e = es[i]!;
            text +=
              `${e.id}\t${e.occurredAt.toISOString()}\t${copyText(e.tenantId)}\t${copyText(e.actor)}\t` +
              `${copyText(e.action)}\t${copyText(e.resource)}\t${copyText(e.outcome)}\t` +
              `${copyText(JSON.stringify(e.payload))}\n`;
          }
          return Buffer.from(text, 'utf8');
        };
        const copy = (data: Buffer): Promise<void> =>
          new Promise((resolve, reject) => {
            const stream = client.query(copyStreams.from(sql));
            stream.on('error', reject);
            stream.on('finish', () => resolve());
            stream.end(data);
          });
        // Builds COPY k+1's data while COPY k is in flight (one connection, one COPY at a time).
        const chunks = Math.ceil(es.length / per);
        let next = build(0);
        for (let k = 0; k < chunks; k++) {
          const inFlight = copy(next);
          if (k + 1 < chunks) next = build(k + 1);
          await inFlight;
        }
      };
      teardown = () => client.end();
      break;
    }
    case 'ab-turn':
    case 'ab-turn-default':
    case 'ab-turn-64':
    case 'ab-turn-spool':
    case 'ab-turn-64-spool': {
      const batchers = new Map<string, AuditBatcher>();
      const spooled = method.endsWith('-spool');
      // Like (b), which prepares its INSERT once per connection: preparedStatements (when this addon build
      // has the option), except in the default-options variant.
      const optional = method === 'ab-turn-default' ? {} : { preparedStatements: true };
      for (const tbl of [WARMUP_TABLE, table]) {
        // The spool twins: the same, plus a spool in a fresh directory (its default sync, 'interval').
        const spool = spooled ? { spool: { dir: freshSpoolDir() } } : {};
        const made = newBatcherTrying({ connectionString: url, table: tbl, ...spool }, optional);
        if (made.refused.length) extra['refusedOptions'] = made.refused.join(', ');
        const audit = made.batcher;
        await audit.ensureSchema(); // opens a pooled connection
        batchers.set(tbl, audit);
      }
      work = async (es, tbl) => {
        const audit = batchers.get(tbl)!;
        const turn = async (t: number) => {
          for (const e of turnOf(es, t)) audit.log(e as AuditEntry);
          const t0 = performance.now();
          await audit.flush();
          latencies.push(performance.now() - t0);
        };
        if (!method.startsWith('ab-turn-64')) {
          for (let t = 0; t < turnsOf(es); t++) await turn(t);
        } else {
          await runAgents(config.agents, turnsOf(es), turn);
        }
      };
      let spoolBefore: SpoolStats | null = null;
      if (spooled) {
        atTimedStart = () => {
          spoolBefore = batchers.get(table)!.stats().spool;
        };
        // The timed window ends with the last flush(), before close().
        atTimedEnd = (ms) => spoolFigures(spoolBefore, batchers.get(table)!.stats().spool, ms, n, extra);
      }
      teardown = async () => {
        for (const a of batchers.values()) await a.close();
        const s = batchers.get(table)!.stats();
        extra['statements'] = s.batches;
        if (s.spool) extra['spoolSyncsAfterClose'] = s.spool.syncs - spoolBefore!.syncs;
        removeSpoolDirs();
        if (s.written !== n) throw new Error(`${method}: stats().written ${s.written}, expected ${n}`);
      };
      break;
    }
    case 'ab-bulk':
    case 'ab-bulk-spool':
    case 'ab-bulk-uuid4':
    case 'ab-bulk-own-ids': {
      // ab-bulk-uuid4 and ab-bulk-own-ids measure the way users call it: default options, ids given as
      // Prisma's uuid() makes them (random UUIDv4) or left to the batcher (its UUIDv7).
      const defaults = method === 'ab-bulk-uuid4' || method === 'ab-bulk-own-ids';
      const spooled = method === 'ab-bulk-spool';
      // The entries as this method logs them, made before timing (the app holds them already).
      const logged: AuditEntry[] =
        method === 'ab-bulk-uuid4'
          ? entries.map((e) => ({ ...e, id: randomUUID() }) as AuditEntry)
          : method === 'ab-bulk-own-ids'
            ? entries.map(({ id: _id, ...rest }) => rest as AuditEntry)
            : (entries as AuditEntry[]);
      const make = (tbl: string): AuditBatcher => {
        if (defaults) {
          extra['variant'] = 'default options';
          return new AuditBatcher({ connectionString: url, table: tbl });
        }
        // Write-behind, with statements as large as (d)'s and the ceiling's COPYs (copyRows rows).
        const spool = spooled ? { spool: { dir: freshSpoolDir() } } : {};
        const audit = newBatcherTrying(
          { connectionString: url, table: tbl, maxBatchRows: config.copyRows, ...spool },
          { flushAtEntries: config.flushAtEntries },
        );
        extra['variant'] =
          (audit.refused.length
            ? `log all, then close() (this addon build refuses flushAtEntries), maxBatchRows: ${config.copyRows}`
            : `flushAtEntries: ${config.flushAtEntries}, maxBatchRows: ${config.copyRows}`) + (spooled ? ', spool (sync: interval)' : '');
        return audit.batcher;
      };
      let audit: AuditBatcher | undefined;
      let spoolBefore: SpoolStats | null = null;
      work = async (es, tbl) => {
        const a = tbl === table ? audit! : make(tbl);
        if (tbl !== table) await a.ensureSchema();
        const list = es === entries ? logged : logged.slice(0, es.length);
        const t0 = performance.now();
        for (const e of list) a.log(e);
        if (tbl === table) {
          extra['logLoopMs'] = performance.now() - t0;
          const s = a.stats();
          extra['writtenWhenLogLoopEnded'] = s.written;
          if (s.spool) {
            extra['spoolSyncsWhenLogLoopEnded'] = s.spool.syncs - spoolBefore!.syncs;
            extra['spoolBytesWhenLogLoopEnded'] = s.spool.bytes;
            extra['spoolSegmentsWhenLogLoopEnded'] = s.spool.segments;
          }
        }
        await a.close();
      };
      prepare = async () => {
        audit = make(table);
        await audit.ensureSchema(); // opens a pooled connection
      };
      if (spooled) {
        atTimedStart = () => {
          spoolBefore = audit!.stats().spool;
        };
        // The timed window ends when close() resolved.
        atTimedEnd = (ms) => spoolFigures(spoolBefore, audit!.stats().spool, ms, n, extra);
      }
      teardown = async () => {
        const s = audit!.stats();
        extra['statements'] = s.batches;
        removeSpoolDirs();
        if (s.written !== n) throw new Error(`${method}: stats().written ${s.written}, expected ${n}`);
        if (method === 'ab-bulk-uuid4') {
          // For the parent's check that the table holds exactly these ids, in entry order.
          extra['idsMd5'] = createHash('md5').update(logged.map((e) => e.id).join('\n')).digest('hex');
        }
      };
      break;
    }
    case 'ab-memory': {
      // Nothing may be written while measuring: no server listens on this port, so any write (a
      // background flush, if the addon has one) fails and its entries stay buffered.
      // Buffer limits (newer addons) raised so that they cannot refuse the measured entries.
      const make = () =>
        newBatcherTrying(
          { connectionString: 'postgres://bench@127.0.0.1:9/none', table, connectTimeoutMs: 1000 },
          { maxBufferedEntries: 10 * n, maxBufferedBytes: 2 ** 32 },
        );
      const warm = make().batcher;
      const made = make();
      const audit = made.batcher;
      if (made.refused.length) extra['refusedOptions'] = made.refused.join(', ');
      let m0: NodeJS.MemoryUsage | undefined;
      // The warm-up (on `warm`, which stays referenced so that freeing it cannot shrink the process
      // while measuring) also grows V8's young generation with the garbage the measured loop makes.
      work = async (es, tbl) => {
        const a = tbl === table ? audit : warm;
        for (const e of es) a.log(e as AuditEntry);
      };
      prepare = async () => {
        gc();
        gc();
        m0 = process.memoryUsage();
      };
      teardown = async () => {
        gc();
        gc();
        const m1 = process.memoryUsage();
        const s = audit.stats();
        if (s.buffered !== n) throw new Error(`ab-memory: ${s.buffered} entries buffered, expected ${n}`);
        let jsonBytes = 0;
        for (const e of entries) jsonBytes += entryJsonBytes(e);
        Object.assign(extra, {
          buffered: s.buffered,
          bufferedBytesPerEntry: s.bufferedBytes / n,
          rssGrowthPerEntry: (m1.rss - m0!.rss) / n,
          heapUsedGrowthPerEntry: (m1.heapUsed - m0!.heapUsed) / n,
          heapTotalGrowthPerEntry: (m1.heapTotal - m0!.heapTotal) / n,
          externalGrowthPerEntry: (m1.external - m0!.external) / n,
          entryJsonBytesPerEntry: jsonBytes / n,
          warmBuffered: warm.stats().buffered,
        });
        // The process exits with the entries unwritten (the addon holds no handle).
      };
      break;
    }
    case 'ab-log': {
      // log() per call, in one process, on batchers that cannot write (as ab-memory: nothing is flushed,
      // so only log() is measured), in rounds, each variant on a fresh batcher, the order rotated:
      // - floor: what log() cannot do without: JSON.stringify of the payload plus an empty native method
      //   (_logFloor) called with the same nine arguments as index.js's call of the native logFields;
      // - log: log() without a spool; log-spool: log() with a spool in a fresh directory (default sync).
      // Each variant runs twice per round: a plain loop (mean µs per call = loop time ÷ n) and a loop that
      // times each call (median µs per call; the timer's own cost is in every variant alike).
      const floorFn = (AuditBatcher.prototype as unknown as Record<string, unknown>)['_logFloor'] as
        | ((this: AuditBatcher, ...args: unknown[]) => unknown)
        | undefined;
      if (!floorFn) extra['floorMissing'] = 'this addon build has no _logFloor: no floor measured';
      const logFloor = (a: AuditBatcher, e: BenchEntry): void => {
        const json = JSON.stringify(e.payload);
        floorFn!.call(a, e.action, e.tenantId, e.actor, e.resource, e.outcome, json, e.id, e.occurredAt, undefined);
      };
      type Variant = 'floor' | 'log' | 'log-spool';
      const variants: Variant[] = floorFn ? ['floor', 'log', 'log-spool'] : ['log', 'log-spool'];
      const make = (v: Variant) =>
        newBatcherTrying(
          {
            connectionString: 'postgres://bench@127.0.0.1:9/none',
            table,
            connectTimeoutMs: 1000,
            ...(v === 'log-spool' ? { spool: { dir: freshSpoolDir() } } : {}),
          },
          { maxBufferedEntries: 10 * n, maxBufferedBytes: 2 ** 32 },
        ).batcher;
      /** One pass: µs per call, mean (untimed calls) or median (each call timed). */
      const pass = async (v: Variant, es: BenchEntry[], perCall: boolean): Promise<number> => {
        // The previous pass's batcher is garbage: collect it, and let its finalizer run (free its entries).
        gc();
        await new Promise((resolve) => setImmediate(resolve));
        gc();
        let a: AuditBatcher | undefined = make(v);
        let us: number;
        if (!perCall) {
          const t0 = performance.now();
          if (v === 'floor') for (const e of es) logFloor(a, e);
          else for (const e of es) a.log(e as AuditEntry);
          us = ((performance.now() - t0) / es.length) * 1000;
        } else {
          const samples = new Float64Array(es.length);
          if (v === 'floor') {
            for (let i = 0; i < es.length; i++) {
              const t = performance.now();
              logFloor(a, es[i]!);
              samples[i] = performance.now() - t;
            }
          } else {
            for (let i = 0; i < es.length; i++) {
              const t = performance.now();
              a.log(es[i] as AuditEntry);
              samples[i] = performance.now() - t;
            }
          }
          samples.sort();
          us = samples[samples.length >> 1]! * 1000;
        }
        if (v !== 'floor') {
          const st = a.stats();
          if (st.buffered !== es.length) throw new Error(`ab-log: ${st.buffered} entries buffered, expected ${es.length}`);
          if (v === 'log-spool' && st.spool?.appended !== es.length) {
            throw new Error(`ab-log: the spool appended ${st.spool?.appended} entries, expected ${es.length}`);
          }
        }
        a = undefined; // its entries are freed with it (the process exits with them unwritten)
        return us;
      };
      const rounds = n >= 20_000 ? 3 : 2;
      work = async (es, tbl) => {
        if (tbl !== table) {
          for (const v of variants) for (const perCall of [false, true]) await pass(v, es, perCall);
          return;
        }
        const mean: Record<string, number[]> = {};
        const p50: Record<string, number[]> = {};
        for (let r = 0; r < rounds; r++) {
          const order = variants.map((_, i) => variants[(i + r) % variants.length]!);
          for (const v of order) {
            (mean[v] ??= []).push(await pass(v, es, false));
            (p50[v] ??= []).push(await pass(v, es, true));
          }
        }
        const med = (xs: number[]) => {
          const q = [...xs].sort((x, y) => x - y);
          return q.length % 2 ? q[q.length >> 1]! : (q[q.length / 2 - 1]! + q[q.length / 2]!) / 2;
        };
        Object.assign(extra, {
          rounds,
          ...(floorFn ? { floorUsPerCall: med(mean['floor']!), floorP50Us: med(p50['floor']!) } : {}),
          logUsPerCall: med(mean['log']!),
          logP50Us: med(p50['log']!),
          logSpoolUsPerCall: med(mean['log-spool']!),
          logSpoolP50Us: med(p50['log-spool']!),
        });
      };
      teardown = async () => removeSpoolDirs();
      break;
    }
    default:
      throw new Error(`unknown method ${String(method)}`);
  }

  // ---- untimed: warm-up on the warm-up table, then the parent TRUNCATEs and CHECKPOINTs -----------
  if (warmEntries.length > 0) await work(warmEntries, WARMUP_TABLE);
  latencies.length = 0;
  await prepare();
  await handshake();

  // ---- timed window ---------------------------------------------------------------------------
  gc();
  const rssBefore = process.memoryUsage().rss;
  atTimedStart();
  const disk0 = diskWriteBytes();
  const elu0 = performance.eventLoopUtilization();
  const cpu0 = process.cpuUsage();
  const main0 = mainThreadCpuMs();
  const t0 = performance.now();
  await work(entries, table);
  const ms = performance.now() - t0;
  const cpu = process.cpuUsage(cpu0);
  const mainCpu = mainThreadCpuMs() - main0;
  const elu = performance.eventLoopUtilization(performance.eventLoopUtilization(), elu0);
  const rssPeak = process.resourceUsage().maxRSS * 1024;
  const disk = diskWriteBytes() - disk0;
  atTimedEnd(ms);
  await teardown();

  const result: WorkerResult = {
    method,
    n,
    ms,
    rowsPerSec: (n / ms) * 1000,
    cpuMs: (cpu.user + cpu.system) / 1000,
    cpuUserMs: cpu.user / 1000,
    cpuSystemMs: cpu.system / 1000,
    eluActiveMs: elu.active,
    mainThreadCpuMs: Number.isNaN(mainCpu) ? null : mainCpu,
    rssBefore,
    rssPeak,
    diskWriteBytes: Number.isNaN(disk) ? null : disk,
    ...(latencies.length > 0 ? { latencyMs: percentiles(latencies) } : {}),
    ...(Object.keys(extra).length > 0 ? { extra } : {}),
  };
  writeFileSync(config.resultFile, JSON.stringify(result));
}

main().catch((e: unknown) => {
  console.error(e);
  process.exitCode = 1;
});
