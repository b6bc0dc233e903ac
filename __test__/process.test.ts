/**
 * The addon never keeps a Node process alive on its own.
 */
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { countRows, dropDatabase, freshDatabase, runNode, uniqueTable, type NodeRun } from './support/fixture.ts';

const script = fileURLToPath(new URL('./fixtures/log-flush-close.cjs', import.meta.url));
const onExitScript = fileURLToPath(new URL('./fixtures/flush-on-exit.cjs', import.meta.url));
const workerScript = fileURLToPath(new URL('./fixtures/worker-flush.cjs', import.meta.url));

/** Runs the log-flush-close fixture with `args`. */
function run(args: string[]): Promise<NodeRun> {
  return runNode([script, ...args]);
}

let url: string;
beforeAll(async () => {
  url = await freshDatabase();
});
afterAll(async () => {
  await dropDatabase(url);
});

describe('process lifetime', () => {
  it('a script that logs, flushes and closes exits at once', async () => {
    const r = await run([url, uniqueTable()]);
    expect(r.code).toBe(0);
    expect(JSON.parse(r.stdout)).toEqual({ written: 10, pending: 0 });
  });

  it.each([['log-only'], ['no-close']])('a script that stops after %s exits too', async (mode) => {
    const r = await run([url, uniqueTable(), mode]);
    expect(r.code).toBe(0);
  });

  it('a jest run of a suite using the addon finishes without --forceExit', async () => {
    const jest = fileURLToPath(new URL('../node_modules/jest/bin/jest.js', import.meta.url));
    const config = fileURLToPath(new URL('./jest/jest.config.cjs', import.meta.url));
    const started = Date.now();
    const result = await runNode([jest, '--config', config, '--ci'], {
      timeoutMs: 60_000,
      env: { ...process.env, AUDIT_TEST_DATABASE_URL: url, AUDIT_TEST_TABLE: uniqueTable() },
    });
    expect(result.stderr).toMatch(/Tests:\s+3 passed, 3 total/);
    expect(result.stderr).not.toContain('did not exit');
    expect(result.code).toBe(0);
    expect(Date.now() - started).toBeLessThan(30_000);
  }, 70_000);

  it('flushOnExit writes what is buffered when the event loop runs dry, then lets the process exit', async () => {
    const table = uniqueTable();
    const r = await runNode([onExitScript, url, table, 'exit']);
    expect({ code: r.code, signal: r.signal }).toEqual({ code: 0, signal: null });
    expect(await countRows(url, table)).toBe(25);
  });

  it('flushOnExit writes what is buffered on SIGTERM, then ends the process by SIGTERM as it would have', async () => {
    const table = uniqueTable();
    const r = await runNode([onExitScript, url, table, 'sigterm']);
    expect(r.signal).toBe('SIGTERM');
    expect(await countRows(url, table)).toBe(25);
  });

  it('the memory sink exits at once, after a pending flush() settled', async () => {
    // Nothing but the flush's promise keeps this script running until its result is printed.
    const r = await run(['memory', 'unused']);
    expect(r.code).toBe(0);
    expect(JSON.parse(r.stdout)).toEqual({ written: 10, pending: 0 });
  });

  it('a worker thread terminated with a flush() in flight takes nothing down when the flush ends later', async () => {
    const r = await runNode([workerScript]);
    expect({ code: r.code, signal: r.signal, stderr: r.stderr }).toEqual({ code: 0, signal: null, stderr: '' });
    expect(r.stdout).toContain('flush ended after the worker was gone');
  });
});
