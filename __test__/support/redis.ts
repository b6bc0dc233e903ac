/**
 * A real `redis-server` (the Debian package's binary), started on a free port in a temp dir by the suite
 * that needs it, and a tiny RESP client for the commands the tests send by hand (XADD of garbage, XLEN,
 * XPENDING).
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import net, { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

/** Where the binary is looked for: $REDIS_SERVER, then the Debian package's path. */
export function redisBinary(): string | undefined {
  const candidates = [process.env['REDIS_SERVER'], '/usr/bin/redis-server', '/usr/local/bin/redis-server'];
  return candidates.find((p): p is string => !!p && existsSync(p));
}

export interface RedisServer {
  url: string;
  port: number;
  /** One command, its reply parsed (errors reject). */
  command(...args: (string | number)[]): Promise<Reply>;
  stop(): Promise<void>;
}

export type Reply = string | number | null | Reply[];

async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.once('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const address = srv.address();
      srv.close(() => (typeof address === 'object' && address ? resolve(address.port) : reject(new Error('no port'))));
    });
  });
}

/** Parses one RESP2 reply at `at`; `undefined` when `buf` does not hold all of it yet. */
function parse(buf: Buffer, at: number): { value: Reply; next: number } | undefined {
  const eol = buf.indexOf('\r\n', at);
  if (eol < 0) return undefined;
  const line = buf.toString('utf8', at + 1, eol);
  switch (String.fromCharCode(buf[at]!)) {
    case '+':
      return { value: line, next: eol + 2 };
    case '-':
      throw new Error(`redis: ${line}`);
    case ':':
      return { value: Number(line), next: eol + 2 };
    case '$': {
      const n = Number(line);
      if (n < 0) return { value: null, next: eol + 2 };
      if (buf.length < eol + 2 + n + 2) return undefined;
      return { value: buf.toString('utf8', eol + 2, eol + 2 + n), next: eol + 2 + n + 2 };
    }
    case '*': {
      const n = Number(line);
      if (n < 0) return { value: null, next: eol + 2 };
      const items: Reply[] = [];
      let next = eol + 2;
      for (let i = 0; i < n; i++) {
        const item = parse(buf, next);
        if (!item) return undefined;
        items.push(item.value);
        next = item.next;
      }
      return { value: items, next };
    }
    default:
      throw new Error(`redis: unexpected reply ${JSON.stringify(buf.toString('utf8', at, eol))}`);
  }
}

/** Sends one command on a connection of its own and resolves with its reply. */
export function redisCommand(port: number, ...args: (string | number)[]): Promise<Reply> {
  return new Promise((resolve, reject) => {
    const socket = net.connect(port, '127.0.0.1');
    let buf = Buffer.alloc(0);
    socket.once('error', reject);
    socket.on('data', (chunk: Buffer) => {
      buf = Buffer.concat([buf, chunk]);
      try {
        const reply = parse(buf, 0);
        if (!reply) return;
        socket.end();
        resolve(reply.value);
      } catch (e) {
        socket.destroy();
        reject(e);
      }
    });
    const parts = args.map(String);
    socket.write(`*${parts.length}\r\n` + parts.map((p) => `$${Buffer.byteLength(p)}\r\n${p}\r\n`).join(''));
  });
}

export async function startRedis(binary: string): Promise<RedisServer> {
  const dir = await mkdtemp(join(tmpdir(), 'audit-batcher-redis-'));
  const port = await freePort();
  const child: ChildProcess = spawn(
    binary,
    ['--port', String(port), '--bind', '127.0.0.1', '--dir', dir, '--save', '', '--appendonly', 'no', '--protected-mode', 'no'],
    { stdio: ['ignore', 'pipe', 'pipe'] },
  );
  let log = '';
  const keep = (chunk: Buffer): void => {
    log = (log + chunk.toString()).slice(-4000);
  };
  child.stdout?.on('data', keep);
  child.stderr?.on('data', keep);
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  // Ready when it says so on its log; bounded, with the log in the error.
  await new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`redis-server did not start within 10 s: ${log}`)), 10_000);
    const check = (): void => {
      if (log.includes('Ready to accept connections')) {
        clearTimeout(timer);
        resolve();
      }
    };
    child.stdout?.on('data', check);
    child.once('exit', (code) => {
      clearTimeout(timer);
      reject(new Error(`redis-server exited with ${code}: ${log}`));
    });
  });
  return {
    url: `redis://127.0.0.1:${port}`,
    port,
    command: (...args) => redisCommand(port, ...args),
    async stop() {
      child.kill('SIGKILL');
      await exited;
      await rm(dir, { recursive: true, force: true });
    },
  };
}
