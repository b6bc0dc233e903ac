/**
 * The addon never keeps a Node process alive on its own.
 */
import { execFile } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { dropDatabase, freshDatabase, uniqueTable } from './support/fixture.ts';

const script = fileURLToPath(new URL('./fixtures/log-flush-close.cjs', import.meta.url));

/** Runs the fixture script; rejects if it has not exited within `timeoutMs`. */
function run(args: string[], timeoutMs = 15_000): Promise<{ code: number | null; stdout: string; ms: number }> {
  const started = Date.now();
  return new Promise((resolve, reject) => {
    execFile(process.execPath, [script, ...args], { timeout: timeoutMs, killSignal: 'SIGKILL' }, (err, stdout, stderr) => {
      if (err && (err.killed || err.signal)) {
        reject(new Error(`the process did not exit within ${timeoutMs} ms (stderr: ${stderr})`));
        return;
      }
      resolve({ code: err ? Number(err.code) : 0, stdout, ms: Date.now() - started });
    });
  });
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

  it('the memory sink exits at once', async () => {
    const r = await run(['memory', 'unused']);
    expect(r.code).toBe(0);
  });
});
