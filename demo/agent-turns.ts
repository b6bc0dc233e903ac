/**
 * audit-batcher demo: an AI agent server runs turns of tool calls. Every tool call, result and error is
 * logged with a synchronous `log()`; each turn ends with one `await flush()`, one INSERT for the turn.
 *
 * Runs against DATABASE_URL when set, otherwise against an embedded PostgreSQL it starts and removes.
 *
 *   npm run demo              # 25 turns
 *   npm run demo -- 200       # 200 turns
 */
import { performance } from 'node:perf_hooks';
import { AuditBatcher } from '../index.js';
import { redact, startDatabase, withClient } from '../scripts/database.ts';

const TURNS = Number(process.argv[2] ?? 25);
const TABLE = 'audit_log_demo';
const TOOLS = ['grep', 'read_file', 'write_file', 'run_tests', 'web_search'] as const;

function percentile(sorted: number[], p: number): number {
  if (sorted.length === 0) return 0;
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))]!;
}

async function main(): Promise<void> {
  const db = await startDatabase();
  console.log(`PostgreSQL: ${db.embedded ? 'embedded (started for this demo)' : 'DATABASE_URL'} at ${redact(db.url)}`);
  const audit = new AuditBatcher({ connectionString: db.url, table: TABLE });
  try {
    await audit.ensureSchema();
    await withClient(db.url, (c) => c.query(`TRUNCATE ${TABLE}`));

    const flushMs: number[] = [];
    let logNs = 0n;
    let logged = 0;
    let seed = 7;
    const random = (n: number): number => {
      seed = (seed * 1103515245 + 12345) % 2 ** 31;
      return seed % n;
    };

    for (let turn = 1; turn <= TURNS; turn++) {
      const tenantId = `tenant-${1 + random(3)}`;
      const actor = `user:${100 + random(20)}`;
      const calls = 2 + random(5);
      const log = (entry: Parameters<AuditBatcher['log']>[0]): void => {
        const t0 = process.hrtime.bigint();
        audit.log(entry);
        logNs += process.hrtime.bigint() - t0;
        logged++;
      };
      log({ action: 'turn.start', actor, tenantId, payload: { turn } });
      for (let call = 0; call < calls; call++) {
        const tool = TOOLS[random(TOOLS.length)]!;
        const args = { q: `step ${call} of "turn ${turn}"`, path: `/repo/src/file_${random(9)}.ts` };
        log({ action: 'tool.call', actor, tenantId, resource: `tool:${tool}`, payload: { tool, args } });
        const failed = random(10) === 0;
        log({
          action: failed ? 'tool.error' : 'tool.result',
          actor,
          tenantId,
          resource: `tool:${tool}`,
          outcome: failed ? 'error' : 'success',
          payload: failed ? { error: 'timeout after 30s' } : { bytes: 100 + random(4000) },
        });
      }
      const t0 = performance.now();
      const r = await audit.flush(); // turn end: one INSERT for the whole turn
      const ms = performance.now() - t0;
      flushMs.push(ms);
      if (turn <= 5 || turn === TURNS) {
        console.log(`turn ${String(turn).padStart(3)}: ${calls} tool calls, flushed ${r.written} entries in one statement, ${ms.toFixed(2)} ms`);
      } else if (turn === 6) {
        console.log('...');
      }
    }
    await audit.close();

    const stats = audit.stats();
    const rows = await withClient(db.url, async (c) => {
      const count = await c.query<{ n: string }>(`SELECT count(*) AS n FROM ${TABLE}`);
      const byAction = await c.query<{ action: string; n: string }>(
        `SELECT action, count(*) AS n FROM ${TABLE} GROUP BY action ORDER BY action`,
      );
      const sample = await c.query<{ id: string; occurred_at: Date; actor: string; action: string; payload: unknown }>(
        `SELECT id, occurred_at, actor, action, payload FROM ${TABLE} ORDER BY id LIMIT 3`,
      );
      return { count: Number(count.rows[0]?.n), byAction: byAction.rows, sample: sample.rows };
    });

    const sorted = [...flushMs].sort((a, b) => a - b);
    console.log('');
    console.log(`entries logged:      ${logged}`);
    console.log(`rows in ${TABLE}: ${rows.count}  (${rows.byAction.map((r) => `${r.action}=${r.n}`).join(', ')})`);
    console.log(`INSERT statements:   ${stats.batches} for ${TURNS} turns (one per flush)`);
    console.log(`log() cost:          ${(Number(logNs) / logged / 1000).toFixed(2)} µs per call (synchronous, no I/O)`);
    console.log(
      `flush latency:       p50 ${percentile(sorted, 50).toFixed(2)} ms, p95 ${percentile(sorted, 95).toFixed(2)} ms, max ${sorted.at(-1)!.toFixed(2)} ms`,
    );
    console.log('first rows (ORDER BY id is log order):');
    for (const r of rows.sample) {
      console.log(`  ${r.id}  ${r.occurred_at.toISOString()}  ${r.actor}  ${r.action}  ${JSON.stringify(r.payload)}`);
    }
    if (rows.count !== logged || stats.written !== logged) {
      throw new Error(`expected ${logged} rows, found ${rows.count} (stats.written ${stats.written})`);
    }
    console.log(`\nOK: every logged entry is in the table exactly once.`);
  } finally {
    await audit.close().catch(() => {});
    await db.dispose();
  }
}

main().catch((e: unknown) => {
  console.error(e);
  process.exitCode = 1;
});
