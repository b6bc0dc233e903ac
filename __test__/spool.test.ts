/**
 * The durable spool (issue 11): real processes killed with SIGKILL at random instants, real files, a real
 * PostgreSQL. Every id a child recorded after its log() returned must be in the table exactly once once a
 * later batcher opened the same spool directory and closed.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { randomInt } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { AuditBatcher } from '../index.js';
import { dropDatabase, freshDatabase, withClient } from './support/fixture.ts';
import { newTable as makeTable, tempDirs } from './support/spool.ts';
import { waitFor } from './support/wait.ts';

const logger = fileURLToPath(new URL('./fixtures/spool-logger.cjs', import.meta.url));
/** Nothing listens there: the database is down for whoever uses it. */
const DOWN = 'postgres://postgres@127.0.0.1:1/postgres';

let url: string;
const dirs = tempDirs();
const totals = { kills: 0, recorded: 0, found: 0 };

beforeAll(async () => {
  url = await freshDatabase();
});
afterAll(async () => {
  console.log(
    `spool crash tests: ${totals.kills} SIGKILLs, ${totals.recorded} entries recorded as accepted, ${totals.found} of them found in the table (each once)`,
  );
  dirs.removeAll();
  await dropDatabase(url);
});

const tempDir = (tag: string): string => dirs.make(tag);
const newTable = (): Promise<string> => makeTable(url, 'spool');

interface Child {
  proc: ChildProcess;
  ids: string;
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null; stderr: string }>;
}

function startLogger(connectionString: string, table: string, dir: string, ids: string, opts: object = {}): Child {
  const proc = spawn(process.execPath, [logger, connectionString, table, dir, ids, JSON.stringify(opts)], {
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  let stderr = '';
  proc.stderr?.on('data', (c: Buffer) => (stderr += c.toString()));
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null; stderr: string }>((resolve) =>
    proc.once('close', (code, signal) => resolve({ code, signal, stderr })),
  );
  return { proc, ids, exited };
}

function lines(file: string): string[] {
  if (!fs.existsSync(file)) return [];
  return fs
    .readFileSync(file, 'utf8')
    .split('\n')
    .filter((l) => l.length === 36);
}

/** Waits until the child recorded at least `min` ids, lets a random 0..`spreadMs` pass, and kills it. */
async function killAtRandom(child: Child, min: number, spreadMs: number): Promise<void> {
  await waitFor(() => lines(child.ids).length >= min || child.proc.exitCode !== null, 20_000, {
    message: `${child.ids} reaches ${min} lines`,
  });
  const r = randomInt(0, spreadMs + 1);
  // The random instant of the kill (not a synchronisation: any instant must do).
  if (r > 0) await new Promise((res) => setTimeout(res, r));
  child.proc.kill('SIGKILL');
  const end = await child.exited;
  expect(end.signal, end.stderr).toBe('SIGKILL');
  totals.kills++;
}

/** Opens a batcher on `dir` (which replays what dead processes left) and closes it; returns its spool stats. */
async function drain(table: string, dir: string) {
  const b = new AuditBatcher({ connectionString: url, table, spool: { dir } });
  await b.close({ timeoutMs: 30_000 });
  return b.stats().spool;
}

/** Every recorded id is in the table exactly once. */
async function expectAllOnce(table: string, idFiles: string[]): Promise<number> {
  const recorded = idFiles.flatMap(lines);
  const counts = await withClient(url, async (c) => {
    const r = await c.query<{ id: string; n: string }>(`SELECT id::text AS id, count(*) AS n FROM ${table} GROUP BY id`);
    return new Map(r.rows.map((row) => [row.id, Number(row.n)]));
  });
  const missing = recorded.filter((id) => counts.get(id) !== 1);
  expect(missing.slice(0, 5), `${missing.length} of ${recorded.length} recorded ids not found once`).toEqual([]);
  expect(new Set(recorded).size).toBe(recorded.length);
  totals.recorded += recorded.length;
  totals.found += recorded.length - missing.length;
  return recorded.length;
}

function spoolsIn(dir: string): string[] {
  return fs.readdirSync(dir).filter((n) => n.startsWith('spool-'));
}

describe('a crash loses nothing', () => {
  it('database down: entries of killed processes are written by the next batcher', async () => {
    const table = await newTable();
    const dir = tempDir('down');
    const files: string[] = [];
    for (let k = 0; k < 6; k++) {
      const ids = path.join(dir, `ids-${k}.txt`);
      files.push(ids);
      await killAtRandom(startLogger(DOWN, table, path.join(dir, 'spool'), ids), 50, 600);
    }
    const spool = await drain(table, path.join(dir, 'spool'));
    const n = await expectAllOnce(table, files);
    expect(spool?.recovered).toBeGreaterThanOrEqual(n);
    expect(spoolsIn(path.join(dir, 'spool'))).toEqual([]);
  }, 60_000);

  it('write-behind running: each child replays its predecessor while logging, and is killed too', async () => {
    const table = await newTable();
    const dir = tempDir('wb');
    const files: string[] = [];
    for (let k = 0; k < 8; k++) {
      const ids = path.join(dir, `ids-${k}.txt`);
      files.push(ids);
      await killAtRandom(startLogger(url, table, path.join(dir, 'spool'), ids), 100, 800);
    }
    await drain(table, path.join(dir, 'spool'));
    await expectAllOnce(table, files);
    expect(spoolsIn(path.join(dir, 'spool'))).toEqual([]);
  }, 60_000);

  it('killed during recovery: a child replaying a large spool in small batches is killed, and again', async () => {
    const table = await newTable();
    const dir = tempDir('replay');
    const files: string[] = [];
    const first = path.join(dir, 'ids-first.txt');
    files.push(first);
    // A backlog of a few thousand entries, written by nobody yet.
    await killAtRandom(startLogger(DOWN, table, path.join(dir, 'spool'), first, { perTick: 40 }), 3000, 200);
    for (let k = 0; k < 4; k++) {
      const ids = path.join(dir, `ids-${k}.txt`);
      files.push(ids);
      const child = startLogger(url, table, path.join(dir, 'spool'), ids, { maxBatchRows: 20, perTick: 2 });
      // Killed as soon as it logs, while the replay (150+ statements) is under way.
      await killAtRandom(child, 1, 150);
    }
    const backlog = lines(first).length;
    const before = await withClient(url, async (c) => Number((await c.query<{ n: string }>(`SELECT count(*) AS n FROM ${table}`)).rows[0]?.n));
    console.log(`killed during recovery: ${before} rows in the table before the final drain, for a backlog of ${backlog} entries plus the children's own`);
    const spool = await drain(table, path.join(dir, 'spool'));
    await expectAllOnce(table, files);
    expect(spool?.recovered).toBeGreaterThan(0);
    expect(spoolsIn(path.join(dir, 'spool'))).toEqual([]);
  }, 60_000);

  it('two processes sharing one directory, both killed', async () => {
    const table = await newTable();
    const dir = tempDir('shared');
    const files: string[] = [];
    for (let round = 0; round < 3; round++) {
      const a = path.join(dir, `ids-${round}-a.txt`);
      const b = path.join(dir, `ids-${round}-b.txt`);
      files.push(a, b);
      const conn = round === 1 ? DOWN : url;
      const ca = startLogger(conn, table, path.join(dir, 'spool'), a);
      const cb = startLogger(conn, table, path.join(dir, 'spool'), b);
      await Promise.all([killAtRandom(ca, 50, 500), killAtRandom(cb, 50, 500)]);
    }
    await drain(table, path.join(dir, 'spool'));
    await expectAllOnce(table, files);
    expect(spoolsIn(path.join(dir, 'spool'))).toEqual([]);
  }, 60_000);
});

/** Leaves, in `dir`, a spool of exactly `count` entries by a process that killed itself after logging them. */
async function leaveSpool(table: string, dir: string, ids: string, count: number): Promise<string> {
  const child = startLogger(DOWN, table, dir, ids, { count });
  const end = await child.exited;
  expect(end.signal, end.stderr).toBe('SIGKILL');
  totals.kills++;
  const spools = spoolsIn(dir);
  expect(spools).toHaveLength(1);
  const segDir = path.join(dir, spools[0]!);
  const segs = fs.readdirSync(segDir).filter((f) => f.endsWith('.seg'));
  expect(segs.length).toBeGreaterThanOrEqual(1);
  return path.join(segDir, segs.sort()[0]!);
}

/** The offset just past the last byte that is not zero (the end of the records in a preallocated segment). */
function dataEnd(buf: Buffer): number {
  let i = buf.length;
  while (i > 0 && buf[i - 1] === 0) i--;
  return i;
}

describe('torn and damaged segments', () => {
  it('a segment cut mid-record: start-up succeeds, the intact entries are written, the torn tail counted', async () => {
    const table = await newTable();
    const dir = tempDir('torn');
    const ids = path.join(dir, 'ids.txt');
    const seg = await leaveSpool(table, path.join(dir, 'spool'), ids, 200);
    const buf = fs.readFileSync(seg);
    fs.truncateSync(seg, dataEnd(buf) - 10);
    const spool = await drain(table, path.join(dir, 'spool'));
    const recorded = lines(ids);
    expect(recorded).toHaveLength(200);
    const rows = await withClient(url, async (c) => (await c.query<{ id: string }>(`SELECT id::text AS id FROM ${table} ORDER BY id`)).rows);
    expect(rows.map((r) => r.id)).toEqual(recorded.slice(0, 199));
    expect(spool).toMatchObject({ recovered: 199, replayed: 199, tornTails: 1, damaged: 0 });
  });

  it('flipped bytes in a record: it is skipped and counted, the rest written, the segment quarantined', async () => {
    const table = await newTable();
    const dir = tempDir('flip');
    const ids = path.join(dir, 'ids.txt');
    const seg = await leaveSpool(table, path.join(dir, 'spool'), ids, 200);
    const buf = fs.readFileSync(seg);
    const at = buf.indexOf('MARK-000100');
    expect(at).toBeGreaterThan(0);
    buf[at + 7] = buf[at + 7]! ^ 0xff;
    buf[at + 8] = buf[at + 8]! ^ 0x55;
    fs.writeFileSync(seg, buf);
    const spool = await drain(table, path.join(dir, 'spool'));
    const recorded = lines(ids);
    const rows = await withClient(url, async (c) => (await c.query<{ id: string }>(`SELECT id::text AS id FROM ${table} ORDER BY id`)).rows);
    expect(rows.map((r) => r.id)).toEqual([...recorded.slice(0, 100), ...recorded.slice(101)]);
    expect(spool).toMatchObject({ recovered: 199, replayed: 199, damaged: 1, tornTails: 0 });
    expect(fs.readdirSync(path.join(dir, 'spool', 'quarantine'))).toHaveLength(1);
    expect(spoolsIn(path.join(dir, 'spool'))).toEqual([]);
  });
});

describe('process lifetime with a spool', () => {
  it('a script that logs into a spool and never closes exits on its own; its entries are written later', async () => {
    const table = await newTable();
    const dir = tempDir('exit');
    const ids = path.join(dir, 'ids.txt');
    const child = startLogger(DOWN, table, path.join(dir, 'spool'), ids, { count: 30, exit: true });
    const timer = setTimeout(() => child.proc.kill('SIGKILL'), 15_000);
    const end = await child.exited;
    clearTimeout(timer);
    expect({ code: end.code, signal: end.signal }, end.stderr).toEqual({ code: 0, signal: null });
    await drain(table, path.join(dir, 'spool'));
    expect(await expectAllOnce(table, [ids])).toBe(30);
  });
});

describe('spool option and stats', () => {
  it('stats().spool is null without a spool, and counts appends with one', async () => {
    const plain = new AuditBatcher({ sink: 'memory' });
    expect(plain.stats().spool).toBeNull();
    await plain.close();
    const dir = tempDir('stats');
    const b = new AuditBatcher({ sink: 'memory', spool: { dir, syncIntervalMs: 20 } });
    for (let i = 0; i < 10; i++) b.log({ action: 'a' });
    await waitFor(() => (b.stats().spool?.syncs ?? 0) > 0, 5_000);
    expect(b.stats().spool).toMatchObject({ appended: 10, recovered: 0, errors: 0 });
    expect(b.metricsText()).toMatch(/audit_batcher_spool_entries_total\{state="appended"\} 10/);
    await b.close();
    const left = spoolsIn(dir).map((n) => `${n}: ${fs.readdirSync(path.join(dir, n)).join(', ')}`);
    expect(left).toEqual([]);
  });

  it('refuses unknown and bad spool options, naming them', () => {
    const bad: [unknown, RegExp][] = [
      [{}, /spool\.dir.*required/],
      [{ dir: 'x', sinc: 'never' }, /sinc/],
      [{ dir: 'x', sync: 'always' }, /spool\.sync/],
      [{ dir: 'x', syncIntervalMs: 0 }, /spool\.syncIntervalMs/],
      [{ dir: 'x', maxBytes: 10 }, /spool\.maxBytes/],
      [{ dir: 42 }, /dir/],
    ];
    for (const [spool, message] of bad) {
      let err: (Error & { code?: string }) | undefined;
      try {
        new AuditBatcher({ sink: 'memory', spool } as never);
      } catch (e) {
        err = e as Error & { code?: string };
      }
      expect(err?.code, String(spool)).toBe('ERR_AUDIT_INVALID_OPTIONS');
      expect(err?.message).toMatch(message);
    }
  });
});

const cli = fileURLToPath(new URL('../bin/audit-batcher.js', import.meta.url));

function runCli(args: string[]): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    const p = spawn(process.execPath, [cli, ...args]);
    let stdout = '';
    let stderr = '';
    p.stdout.on('data', (c: Buffer) => (stdout += c.toString()));
    p.stderr.on('data', (c: Buffer) => (stderr += c.toString()));
    p.once('close', (code) => resolve({ code, stdout, stderr }));
  });
}

describe('audit-batcher spool inspect / drain', () => {
  it('inspects and drains a spool left by a killed process, and refuses a missing or live one', async () => {
    const table = await newTable();
    const dir = tempDir('cli');
    const spoolDir = path.join(dir, 'spool');
    const ids = path.join(dir, 'ids.txt');
    await leaveSpool(table, spoolDir, ids, 50);

    const missing = await runCli(['spool', 'inspect', path.join(dir, 'nope')]);
    expect(missing.code).toBe(3);
    expect(missing.stderr).toMatch(/no spool directory at/);
    const missingDrain = await runCli(['spool', 'drain', path.join(dir, 'nope'), '--database', url]);
    expect(missingDrain.code).toBe(3);

    const inspected = await runCli(['spool', 'inspect', spoolDir]);
    expect(inspected.code, inspected.stderr).toBe(0);
    expect(inspected.stdout).toMatch(/not live/);
    expect(inspected.stdout).toMatch(/entries: 50 /);
    expect(inspected.stdout).toMatch(/damaged records: 0/);

    // A live process holding a spool of its own in the same directory: both commands refuse.
    const liveIds = path.join(dir, 'live-ids.txt');
    const live = startLogger(DOWN, table, spoolDir, liveIds);
    await waitFor(() => lines(liveIds).length >= 10, 20_000);
    const refusedInspect = await runCli(['spool', 'inspect', spoolDir]);
    expect(refusedInspect.code).toBe(3);
    expect(refusedInspect.stderr).toMatch(/held by a live process/);
    const refusedDrain = await runCli(['spool', 'drain', spoolDir, '--database', url, '--table', table]);
    expect(refusedDrain.code).toBe(3);
    expect(refusedDrain.stderr).toMatch(/held by a live process/);
    live.proc.kill('SIGKILL');
    await live.exited;
    totals.kills++;

    const drained = await runCli(['spool', 'drain', spoolDir, '--database', url, '--table', table]);
    expect(drained.code, drained.stderr).toBe(0);
    expect(drained.stdout).toMatch(/entries written/);
    await expectAllOnce(table, [ids, liveIds]);
    expect(spoolsIn(spoolDir)).toEqual([]);
  }, 60_000);
});
