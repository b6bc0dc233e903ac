/**
 * The examples in examples/ run as users would run them: the Express server, the agent loop, a user's
 * vitest suite (collected by this run) and jest suite, and the whole-API example.
 */
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { AuditBatcher } from 'audit-batcher';
import { start } from '../examples/express-server.ts';
import { runTurn } from '../examples/agent-loop.ts';
import { wholeApi } from '../examples/whole-api.ts';
import { dropDatabase, freshDatabase, readRows, runNode, uniqueTable, withClient } from './support/fixture.ts';

let url: string;
beforeAll(async () => {
  url = await freshDatabase();
});
afterAll(async () => {
  await dropDatabase(url);
});

describe('examples', () => {
  it('express-server: every request is audited and /metrics serves the counters', async () => {
    const { server, audit } = await start(url);
    const address = server.address();
    const base = `http://127.0.0.1:${typeof address === 'object' && address ? address.port : 0}`;
    try {
      expect((await fetch(`${base}/files/a`, { headers: { 'x-user-id': 'user:9', 'x-tenant-id': 't9' } })).status).toBe(200);
      expect((await fetch(`${base}/nope`)).status).toBe(404);
      const payment = await fetch(`${base}/payments`, { method: 'POST' });
      expect(payment.status).toBe(201);
      const { auditId } = (await payment.json()) as { auditId: string };
      // write() resolved before the response: the payment's row is committed already.
      expect((await readRows(url, 'http_audit')).map((r) => r.id)).toContain(auditId);
      await audit.flush();
      const rows = await readRows(url, 'http_audit');
      expect(rows.map((r) => [r.action, r.resource, r.outcome])).toEqual([
        ['http.get', '/files/a', 'success'],
        ['http.get', '/nope', 'failure'],
        ['payment.approved', null, null],
        ['http.post', '/payments', 'success'],
      ]);
      expect(rows[0]).toMatchObject({ actor: 'user:9', tenant_id: 't9' });
      const metrics = await (await fetch(`${base}/metrics`)).text();
      expect(metrics).toContain('audit_batcher_entries_total{service="example-api",state="written"} 4\n');
    } finally {
      server.close();
      await audit.close();
    }
  });

  it('agent-loop: a turn is logged call by call and written with one flush', async () => {
    const table = uniqueTable();
    const audit = new AuditBatcher({ connectionString: url, table });
    await audit.ensureSchema();
    const ids = await runTurn(
      audit,
      'agent:1',
      [
        { tool: 'grep', args: { q: 'x' } },
        { tool: 'fail', args: {} },
      ],
      async (call) => {
        if (call.tool === 'fail') throw new Error('tool exploded');
        return 'ok';
      },
    );
    const rows = await readRows(url, table);
    expect(rows.map((r) => r.id)).toEqual(ids);
    expect(rows.map((r) => r.action)).toEqual(['tool.call', 'tool.result', 'tool.call', 'tool.error']);
    expect(audit.stats().batches).toBe(1);
    await audit.close();
  });

  it('whole-api: runs with the memory sink and against PostgreSQL', async () => {
    const memory = await wholeApi();
    expect(memory.stats).toMatchObject({ logged: 4, written: 4, critical: 2, buffered: 0 });
    expect(memory.records.map((r) => r.action)).toEqual(['tool.call', 'policy.violation', 'explicit', 'payment.approved']);
    await withClient(url, (c) => c.query('DROP SCHEMA IF EXISTS audit CASCADE'));
    const pg = await wholeApi(url);
    expect(pg.stats).toMatchObject({ logged: 4, written: 4, buffered: 0, lastError: null });
  });

  it("jest-app: a user's jest suite with the memory sink passes and exits without --forceExit", async () => {
    const jest = fileURLToPath(new URL('../node_modules/jest/bin/jest.js', import.meta.url));
    const config = fileURLToPath(new URL('../examples/jest-app/jest.config.cjs', import.meta.url));
    const run = await runNode([jest, '--config', config, '--ci'], { timeoutMs: 60_000 });
    expect(run.code, run.stderr).toBe(0);
    const stderr = run.stderr;
    expect(stderr).toMatch(/Tests:\s+1 passed, 1 total/);
  }, 70_000);
});
