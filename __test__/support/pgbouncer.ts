/**
 * A real PgBouncer (the Debian package's binary) in transaction pooling mode, in front of the test
 * PostgreSQL, started and stopped by the test that needs it.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { chmod, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { waitForServer, withClient } from '../../scripts/database.ts';

/** Where the binary is looked for: $PGBOUNCER, then the Debian package's path. */
export function pgbouncerBinary(): string | undefined {
  const candidates = [process.env['PGBOUNCER'], '/usr/sbin/pgbouncer', '/usr/bin/pgbouncer'];
  return candidates.find((p): p is string => !!p && existsSync(p));
}

export interface PgBouncer {
  /** `serverUrl` with host:port replaced by PgBouncer's. */
  url: string;
  /** Runs a command on PgBouncer's admin console (`SHOW POOLS`, `RECONNECT`...); its rows. */
  admin(command: string): Promise<Record<string, unknown>[]>;
  stop(): Promise<void>;
}

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

export async function startPgBouncer(binary: string, serverUrl: string, poolSize = 2): Promise<PgBouncer> {
  const server = new URL(serverUrl);
  const dir = await mkdtemp(join(tmpdir(), 'audit-batcher-pgbouncer-'));
  await chmod(dir, 0o755); // PgBouncer refuses to run as root: it drops to `nobody`, who must read this
  const port = await freePort();
  const user = decodeURIComponent(server.username || 'postgres');
  const password = decodeURIComponent(server.password);
  const target = [`host=${server.hostname}`, `port=${server.port || 5432}`, `user=${user}`, password ? `password=${password}` : '']
    .filter(Boolean)
    .join(' ');
  const ini = join(dir, 'pgbouncer.ini');
  await writeFile(join(dir, 'userlist.txt'), `"${user}" "${password}"\n`, { mode: 0o644 });
  await writeFile(
    ini,
    [
      '[databases]',
      `* = ${target}`,
      '[pgbouncer]',
      'listen_addr = 127.0.0.1',
      `listen_port = ${port}`,
      'unix_socket_dir =',
      'auth_type = trust',
      `auth_file = ${join(dir, 'userlist.txt')}`,
      'pool_mode = transaction',
      `admin_users = ${user}`,
      `default_pool_size = ${poolSize}`,
      'max_client_conn = 200',
      'ignore_startup_parameters = extra_float_digits,options',
      '',
    ].join('\n'),
    { mode: 0o644 },
  );
  const args = process.getuid?.() === 0 ? ['-u', 'nobody', ini] : [ini];
  // Its log goes to stderr, kept to explain a failed start.
  const child: ChildProcess = spawn(binary, args, { stdio: ['ignore', 'ignore', 'pipe'] });
  let log = '';
  child.stderr?.on('data', (chunk: Buffer) => {
    log = (log + chunk.toString()).slice(-4000);
  });
  const url = new URL(serverUrl);
  url.hostname = '127.0.0.1';
  url.port = String(port);
  try {
    await waitForServer(url.toString(), 10_000);
  } catch (e) {
    child.kill('SIGKILL');
    throw new Error(`PgBouncer did not start: ${e instanceof Error ? e.message : String(e)}\n${log}`);
  }
  const adminUrl = new URL(url);
  adminUrl.pathname = '/pgbouncer';
  return {
    url: url.toString(),
    // The admin console speaks the simple query protocol only, which is what a query without values uses.
    admin: (command) => withClient(adminUrl.toString(), async (c) => (await c.query(command)).rows),
    async stop() {
      if (child.exitCode === null) {
        const exited = new Promise((resolve) => child.once('exit', resolve));
        child.kill('SIGTERM');
        await exited;
      }
      await rm(dir, { recursive: true, force: true });
    },
  };
}
