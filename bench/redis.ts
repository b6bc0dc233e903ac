/**
 * The Redis hand-off in `npm run bench` (issue 13): what a producer pays on its event loop and how fast it
 * goes, against the direct mode, and how fast entries reach the table end to end through 1 and 2 workers.
 *
 * Run by bench/run.ts after the main methods, against the same PostgreSQL and a redis-server it starts on a
 * free port (Debian's `redis-server`; skipped, with the reason, when missing). Each producer measurement
 * runs in a fresh child process (this file with `--child`), interleaved over the runs like the main methods:
 *
 * - `direct-turn`, `redis-turn`: 5 × `log()` then `await flush()` per turn, one turn at a time, default
 *   options; the first writes to PostgreSQL, the second to a stream that no worker reads;
 * - `direct-bulk`, `redis-bulk`: `log()` × N, then `await close()`, default options.
 *
 * End to end (`e2e-1`, `e2e-2`): 1 or 2 `audit-batcher worker` processes read the stream; the producer
 * logs N entries in turns of 5, flushing each; the time runs from the producer's first `log()` until the
 * table holds all N rows (polled every 20 ms).
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { writeFileSync, readFileSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { fileURLToPath } from 'node:url';
import pg from 'pg';
import { AuditBatcher } from '../index.js';
import type { AuditEntry } from '../index.js';
import { redisBinary, redisCommand, startRedis, type RedisServer } from '../__test__/support/redis.ts';
import { makeEntries } from './entries.ts';

const here = dirname(fileURLToPath(import.meta.url));
const TURN = 5;

import type { EndToEnd, ProducerResult, ProducerVariant, RedisBench } from './redis-report.ts';

interface ChildConfig {
  variant: ProducerVariant | 'e2e';
  n: number;
  database: string;
  table: string;
  redisUrl: string;
  stream: string;
  resultFile: string;
}

// ---- the child: one producer measurement -------------------------------------------------------------

async function child(config: ChildConfig): Promise<void> {
  const entries = makeEntries(config.n) as unknown as AuditEntry[];
  const direct = config.variant.startsWith('direct');
  const audit = new AuditBatcher(
    direct
      ? { connectionString: config.database, table: config.table }
      : { redis: { url: config.redisUrl, stream: config.stream } },
  );
  if (direct) await audit.ensureSchema(); // opens a pooled connection, as a warm server has
  const bulk = config.variant.endsWith('bulk');
  const elu0 = performance.eventLoopUtilization();
  const cpu0 = process.cpuUsage();
  const t0 = performance.now();
  if (bulk) {
    for (const e of entries) audit.log(e);
    await audit.close();
  } else {
    for (let i = 0; i < entries.length; i += TURN) {
      for (const e of entries.slice(i, i + TURN)) audit.log(e);
      await audit.flush();
    }
  }
  const ms = performance.now() - t0;
  const elu = performance.eventLoopUtilization(performance.eventLoopUtilization(), elu0);
  const cpu = process.cpuUsage(cpu0);
  if (!bulk) await audit.close();
  const written = audit.stats().written;
  if (written !== config.n) throw new Error(`${config.variant}: stats().written ${written}, expected ${config.n}`);
  const result: ProducerResult = {
    variant: config.variant,
    n: config.n,
    ms,
    rowsPerSec: (config.n / ms) * 1000,
    eluMsPer1k: (elu.active / config.n) * 1000,
    cpuMsPer1k: ((cpu.user + cpu.system) / 1000 / config.n) * 1000,
  };
  writeFileSync(config.resultFile, JSON.stringify(result));
}

// ---- the parent ---------------------------------------------------------------------------------

function runChild(config: ChildConfig): Promise<ProducerResult> {
  return new Promise((resolve, reject) => {
    const p = spawn(process.execPath, ['--import', 'tsx', join(here, 'redis.ts'), '--child', JSON.stringify(config)], {
      stdio: ['ignore', 'inherit', 'pipe'],
    });
    let stderr = '';
    p.stderr.on('data', (c: Buffer) => (stderr = (stderr + c.toString()).slice(-4000)));
    p.once('close', (code) => {
      if (code !== 0) return reject(new Error(`redis bench child ${config.variant} exited ${code}: ${stderr}`));
      resolve(JSON.parse(readFileSync(config.resultFile, 'utf8')) as ProducerResult);
    });
  });
}

function startWorker(redisUrl: string, stream: string, database: string, table: string): Promise<ChildProcess> {
  const cli = join(here, '..', 'bin', 'audit-batcher.js');
  const p = spawn(
    process.execPath,
    [cli, 'worker', '--redis', redisUrl, '--stream', stream, '--group', 'bench', '--database', database, '--table', table],
    { stdio: ['ignore', 'pipe', 'pipe'] },
  );
  return new Promise((resolve, reject) => {
    let out = '';
    p.stdout!.on('data', (c: Buffer) => {
      out += c.toString();
      if (out.includes('reading stream')) resolve(p);
    });
    p.stderr!.on('data', (c: Buffer) => (out += c.toString()));
    p.once('exit', (code) => reject(new Error(`bench worker exited ${code}: ${out}`)));
  });
}

async function stopWorker(p: ChildProcess): Promise<void> {
  const exited = new Promise<void>((resolve) => p.once('exit', () => resolve()));
  p.kill('SIGTERM');
  await exited;
}

async function count(client: pg.Client, table: string): Promise<number> {
  const r = await client.query<{ n: string }>(`SELECT count(*) AS n FROM ${table}`);
  return Number(r.rows[0]!.n);
}

/**
 * Measures the producer variants and the end-to-end rates. `database` is the benchmark's own database;
 * the tables `audit_log_redis` and `audit_log_direct` are made there.
 */
export async function runRedisBench(opts: {
  database: string;
  quick: boolean;
  runs: number;
  log: (line: string) => void;
}): Promise<RedisBench> {
  const empty = (): Record<ProducerVariant, ProducerResult[]> => ({
    'direct-turn': [],
    'redis-turn': [],
    'direct-bulk': [],
    'redis-bulk': [],
  });
  const binary = redisBinary();
  if (!binary) {
    return { skipped: 'no redis-server (install Debian\'s redis-server package)', runs: 0, producer: empty(), endToEnd: [] };
  }
  const turnN = opts.quick ? 1_000 : 20_000;
  const bulkN = opts.quick ? 5_000 : 100_000;
  const e2eN = opts.quick ? 2_000 : 20_000;
  const work = mkdtempSync(join(tmpdir(), 'audit-bench-redis-'));
  const redis: RedisServer = await startRedis(binary);
  const client = new pg.Client({ connectionString: opts.database });
  await client.connect();
  const result: RedisBench = { runs: opts.runs, producer: empty(), endToEnd: [] };
  try {
    const directTable = 'audit_log_direct';
    const e2eTable = 'audit_log_redis';
    for (const table of [directTable, e2eTable]) {
      const a = new AuditBatcher({ connectionString: opts.database, table });
      await a.ensureSchema();
      await a.close();
    }
    const variants: ProducerVariant[] = ['direct-turn', 'redis-turn', 'direct-bulk', 'redis-bulk'];
    let k = 0;
    for (let run = 1; run <= opts.runs; run++) {
      const order = variants.map((_, i) => variants[(i + run - 1) % variants.length]!);
      for (const variant of order) {
        await client.query(`TRUNCATE ${directTable}`);
        const stream = `bench-${run}-${k++}`;
        const r = await runChild({
          variant,
          n: variant.endsWith('turn') ? turnN : bulkN,
          database: opts.database,
          table: directTable,
          redisUrl: redis.url,
          stream,
          resultFile: join(work, `${variant}.json`),
        });
        await redisCommand(redis.port, 'DEL', stream);
        result.producer[variant].push(r);
        opts.log(
          `redis run ${run}: ${variant.padEnd(12)} ${Math.round(r.rowsPerSec).toLocaleString('en-US').padStart(9)} rows/s, event loop ${r.eluMsPer1k.toFixed(1)} ms / 1k`,
        );
      }
      for (const workers of [1, 2]) {
        await client.query(`TRUNCATE ${e2eTable}`);
        const stream = `bench-e2e-${run}-${workers}`;
        const procs = await Promise.all(
          Array.from({ length: workers }, () => startWorker(redis.url, stream, opts.database, e2eTable)),
        );
        try {
          const t0 = performance.now();
          const producer = runChild({
            variant: 'redis-turn',
            n: e2eN,
            database: opts.database,
            table: e2eTable,
            redisUrl: redis.url,
            stream,
            resultFile: join(work, `e2e.json`),
          });
          let done = false;
          let failed = false;
          producer.then(
            () => {},
            () => (failed = true),
          );
          // Polling is the measurement's resolution here, not a synchronisation: 20 ms against seconds.
          const deadline = t0 + 600_000;
          while (!done && !failed) {
            if (performance.now() > deadline) throw new Error(`end to end: the table did not reach ${e2eN} rows in 600 s`);
            await new Promise((r) => setTimeout(r, 20));
            done = (await count(client, e2eTable)) >= e2eN;
          }
          const ms = performance.now() - t0;
          await producer;
          const e: EndToEnd = { workers, n: e2eN, ms, rowsPerSec: (e2eN / ms) * 1000 };
          result.endToEnd.push(e);
          opts.log(`redis run ${run}: end to end, ${workers} worker(s): ${Math.round(e.rowsPerSec).toLocaleString('en-US')} rows/s`);
        } finally {
          for (const p of procs) await stopWorker(p);
          await redisCommand(redis.port, 'DEL', stream);
        }
      }
    }
  } finally {
    await client.end();
    await redis.stop();
    rmSync(work, { recursive: true, force: true });
  }
  return result;
}

if (process.argv[2] === '--child') {
  child(JSON.parse(process.argv[3]!) as ChildConfig).catch((e: unknown) => {
    console.error(e);
    process.exitCode = 1;
  });
}
