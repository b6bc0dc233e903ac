/**
 * The edges of the API under stress and misuse: critical entries during an outage, flushOnExit listeners,
 * close()'s deadline over promises already pending, oversized entries refused before they are copied, and
 * exceptions thrown while an entry or an option is read.
 */
import net from 'node:net';
import { describe, expect, it } from 'vitest';
import { AuditBatcher, type AuditBatcherOptions } from '../index.js';
import { rejectionOf, runNode, thrownBy } from './support/fixture.ts';
import { waitFor } from './support/wait.ts';

/** A TCP server on 127.0.0.1 that counts connections and either cuts them at once or never answers. */
async function fakeServer(mode: 'cut' | 'silent'): Promise<{ url: string; connections: () => number; close: () => void }> {
  const sockets = new Set<net.Socket>();
  let connections = 0;
  const server = net.createServer((s) => {
    connections += 1;
    if (mode === 'cut') s.destroy();
    else sockets.add(s);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as net.AddressInfo;
  return {
    url: `postgres://postgres@127.0.0.1:${port}/postgres`,
    connections: () => connections,
    close: () => {
      for (const s of sockets) s.destroy();
      server.close();
    },
  };
}

describe('critical entries during an outage', () => {
  it('2,000 critical entries make at most one flush running and one waiting, backing off between attempts', async () => {
    const server = await fakeServer('cut');
    const audit = new AuditBatcher({ connectionString: server.url, connectTimeoutMs: 1000 });
    try {
      for (let i = 0; i < 2000; i++) audit.log({ action: 'payment.refund', critical: true, payload: { i } });
      await waitFor(() => audit.stats().failedFlushes >= 1, 5000, { message: 'a first failed attempt' });
      // The first attempts come within the backoff's first steps (100, 200, 400 ms ...): over one second an
      // uncoalesced flush per entry makes thousands of connection attempts; coalesced, a handful.
      await new Promise((r) => setTimeout(r, 1000));
      expect(audit.stats().failedFlushes).toBeLessThanOrEqual(8);
      expect(server.connections()).toBeLessThanOrEqual(8);
      expect(audit.pending).toBe(2000);
    } finally {
      await audit.close({ timeoutMs: 0 }).catch(() => {});
      server.close();
    }
  });
});

describe('flushOnExit', () => {
  it('eleven batchers share one listener per event, and close() removes it', async () => {
    const before = { beforeExit: process.listenerCount('beforeExit'), sigterm: process.listenerCount('SIGTERM') };
    const warnings: Error[] = [];
    const onWarning = (w: Error): void => void warnings.push(w);
    process.on('warning', onWarning);
    try {
      const batchers = Array.from({ length: 11 }, () => new AuditBatcher({ sink: 'memory', flushOnExit: true }));
      expect(process.listenerCount('beforeExit')).toBe(before.beforeExit + 1);
      expect(process.listenerCount('SIGTERM')).toBe(before.sigterm + 1);
      for (const b of batchers.slice(1)) await b.close();
      expect(process.listenerCount('SIGTERM')).toBe(before.sigterm + 1);
      await batchers[0]!.close();
      expect(process.listenerCount('beforeExit')).toBe(before.beforeExit);
      expect(process.listenerCount('SIGTERM')).toBe(before.sigterm);
      await new Promise((r) => setImmediate(r)); // warnings are emitted on a later tick
      expect(warnings.filter((w) => w.name === 'MaxListenersExceededWarning')).toEqual([]);
    } finally {
      process.off('warning', onWarning);
    }
  });
});

describe("close()'s deadline", () => {
  it('settles a flush() already pending against a server that never answers', async () => {
    const server = await fakeServer('silent');
    const audit = new AuditBatcher({ connectionString: server.url, connectTimeoutMs: 10_000 });
    try {
      audit.log({ action: 'a' });
      const started = Date.now();
      const flush = rejectionOf(audit.flush());
      const write = rejectionOf(audit.write({ action: 'b' }));
      await waitFor(() => server.connections() >= 1, 5000, { message: 'the flush connecting' });
      const close = rejectionOf(audit.close({ timeoutMs: 300 }));
      const [f, w, c] = await Promise.all([flush, write, close]);
      const elapsed = Date.now() - started;
      for (const e of [f, w, c]) expect(e.code).toBe('ERR_AUDIT_FLUSH_FAILED');
      expect(elapsed).toBeLessThan(5000); // not the 10 s connect timeout
      expect(c.pending).toBe(2);
      expect(audit.bufferedEntries().map((e) => e.action)).toEqual(['a', 'b']);
    } finally {
      server.close();
    }
  });
});

describe('maxEntryBytes', () => {
  it('refuses a 200M-character field from its length, before copying it (peak memory does not grow)', async () => {
    const script = `
      const { AuditBatcher } = require(${JSON.stringify(`${process.cwd()}/index.js`)});
      const audit = new AuditBatcher({ sink: 'memory' });
      const huge = 'x'.repeat(200e6);
      huge.charCodeAt(1e8); // flattened: the string is in memory before the measurement
      const peak = () => process.resourceUsage().maxRSS * 1024; // the most the process ever held
      const before = peak();
      let code;
      try { audit.log({ action: huge }); } catch (e) { code = e.code; }
      const grown = peak() - before;
      console.log(JSON.stringify({ code, grownMiB: Math.round(grown / 1048576) }));
    `;
    const run = await runNode(['-e', script], { timeoutMs: 60_000 });
    expect(run.code, run.stderr).toBe(0);
    const result = JSON.parse(run.stdout) as { code: string; grownMiB: number };
    expect(result.code).toBe('ERR_AUDIT_INVALID_ENTRY');
    expect(result.grownMiB).toBeLessThan(50);
  });
});

describe('exceptions thrown while an entry or an option is read', () => {
  const thrown = [new RangeError('boom'), undefined, Symbol('s'), 'text'];

  it.each(thrown.map((v) => [String(v), v]))(
    'a getter on the entry throwing %s: ERR_AUDIT_INVALID_ENTRY naming the field, the value as cause',
    (_, value) => {
      const audit = new AuditBatcher({ sink: 'memory' });
      const entry = {
        action: 'a',
        get actor(): string {
          throw value;
        },
      };
      const err = thrownBy(() => audit.log(entry));
      expect(err).toBeInstanceOf(TypeError);
      expect(err.code).toBe('ERR_AUDIT_INVALID_ENTRY');
      expect(err.message).toContain('`actor` could not be read');
      expect(err.cause).toBe(value);
      expect(audit.pending).toBe(0);
    },
  );

  it('a revoked Proxy as the entry', () => {
    const audit = new AuditBatcher({ sink: 'memory' });
    const { proxy, revoke } = Proxy.revocable({ action: 'a' }, {});
    revoke();
    const err = thrownBy(() => audit.log(proxy));
    expect(err.code).toBe('ERR_AUDIT_INVALID_ENTRY');
    expect(err.cause).toBeInstanceOf(TypeError);
  });

  it("a payload whose toJSON throws: toJSON runs once and its error is the cause", () => {
    const audit = new AuditBatcher({ sink: 'memory' });
    let calls = 0;
    const boom = new Error('no JSON today');
    const err = thrownBy(() =>
      audit.log({
        action: 'a',
        payload: {
          toJSON() {
            calls += 1;
            throw boom;
          },
        },
      }),
    );
    expect(calls).toBe(1);
    expect(err.code).toBe('ERR_AUDIT_INVALID_ENTRY');
    expect(err.message).toContain('`payload` is not JSON-serialisable: no JSON today');
    expect(err.cause).toBe(boom);
  });

  it('a payload whose toJSON returns a different value each call is stored as the one call gave it', async () => {
    const audit = new AuditBatcher({ sink: 'memory' });
    let calls = 0;
    audit.log({ action: 'a', payload: { toJSON: () => ({ call: ++calls }) } });
    await audit.flush();
    expect(audit.memoryEntries()[0]?.payload).toEqual({ call: 1 });
    expect(calls).toBe(1);
  });

  it('write() with a throwing getter rejects with the code and the cause', async () => {
    const audit = new AuditBatcher({ sink: 'memory' });
    const boom = new Error('getter');
    const err = await rejectionOf(
      audit.write({
        action: 'a',
        get tenantId(): string {
          throw boom;
        },
      }),
    );
    expect(err.code).toBe('ERR_AUDIT_INVALID_ENTRY');
    expect(err.cause).toBe(boom);
  });

  it('an option whose getter throws: ERR_AUDIT_INVALID_OPTIONS naming it, the value as cause', () => {
    const boom = new Error('no pool for you');
    const options = {
      sink: 'memory',
      get poolSize(): number {
        throw boom;
      },
    } as AuditBatcherOptions;
    const err = thrownBy(() => new AuditBatcher(options));
    expect(err).toBeInstanceOf(TypeError);
    expect(err.code).toBe('ERR_AUDIT_INVALID_OPTIONS');
    expect(err.message).toContain('`poolSize` could not be read');
    expect(err.cause).toBe(boom);
  });
});
