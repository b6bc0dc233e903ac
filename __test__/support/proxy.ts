/**
 * A small TCP proxy for fault injection between a client (the addon, or pg in
 * the harness tests) and PostgreSQL. Listens on 127.0.0.1.
 *
 *   const proxy = await startProxy('127.0.0.1', 5432);
 *   const url = proxy.url(databaseUrl);   // same URL, host:port -> the proxy
 *   proxy.pause();   // server replies are held (the server still executes/commits)
 *   proxy.resume();  // held replies are delivered
 *   proxy.cutAll();  // every open connection dies now
 *   await proxy.refuse(); await proxy.accept();  // ECONNREFUSED window
 *   await proxy.close();
 */
import net from 'node:net';

export type CutMode = 'close' | 'reset';

export interface Proxy {
  /** The proxy's listening host ('127.0.0.1'). */
  readonly host: string;
  /** The proxy's listening port (stable across refuse()/accept()). */
  readonly port: number;
  /** `baseUrl` (e.g. a postgres:// URL) with its host:port replaced by the proxy's. */
  url(baseUrl: string): string;
  /** Currently open client<->server connection pairs. */
  readonly connections: number;
  /** Connections accepted since the proxy started (never decreases). */
  readonly accepted: number;
  /** Server->client bytes currently held back by pause(). */
  readonly heldBytes: number;
  readonly paused: boolean;
  readonly refusing: boolean;
  /**
   * Destroy every open client+server socket pair immediately. 'close' (default)
   * ends them with FIN (pg: "Connection terminated unexpectedly"); 'reset'
   * sends RST (ECONNRESET). Returns the number of pairs cut.
   */
  cutAll(mode?: CutMode): number;
  /**
   * Stop forwarding server->client bytes on all current and future
   * connections; they are buffered (see heldBytes). Client->server traffic
   * still flows, so the server executes (and commits) statements whose
   * replies the client does not get. A server-side close is held back too.
   */
  pause(): void;
  /** Deliver everything held by pause(), in order, and forward again. */
  resume(): void;
  /** Stop listening: new connections get ECONNREFUSED. Open connections stay. */
  refuse(): Promise<void>;
  /** Listen again on the same port. */
  accept(): Promise<void>;
  /** Stop listening and cut all connections. Idempotent. */
  close(): Promise<void>;
}

const noop = (): void => {};

interface Pair {
  client: net.Socket;
  server: net.Socket;
  /** Server->client chunks held while paused. */
  held: Buffer[];
  /** The server side ended/closed while paused; deliver the end on resume. */
  serverGone: boolean;
  done: boolean;
}

/**
 * Start a proxy on 127.0.0.1 (`listenPort`, default: a free port) that
 * forwards every connection to targetHost:targetPort.
 */
export async function startProxy(targetHost: string, targetPort: number, listenPort = 0): Promise<Proxy> {
  const host = '127.0.0.1';
  const pairs = new Set<Pair>();
  let accepted = 0;
  let heldBytes = 0;
  let paused = false;
  let closed = false;
  let listener: net.Server | undefined;
  let port = listenPort;

  const forget = (pair: Pair): boolean => {
    if (pair.done) return false;
    pair.done = true;
    pairs.delete(pair);
    for (const h of pair.held) heldBytes -= h.length;
    pair.held = [];
    return true;
  };

  /** Fault: kill both sockets now, dropping anything in flight. */
  const cut = (pair: Pair, mode: CutMode): void => {
    if (!forget(pair)) return;
    for (const s of [pair.client, pair.server]) {
      if (mode === 'reset' && !s.destroyed) {
        try {
          s.resetAndDestroy();
          continue;
        } catch {
          /* not connected (yet): fall back to destroy */
        }
      }
      s.destroy();
    }
  };

  const flush = (pair: Pair): void => {
    if (pair.done) return;
    for (const chunk of pair.held) {
      heldBytes -= chunk.length;
      if (!pair.client.destroyed) pair.client.write(chunk);
    }
    pair.held = [];
    if (pair.serverGone && forget(pair)) {
      // The written bytes drain first, then the client gets FIN.
      pair.client.end();
    }
  };

  const onClient = (client: net.Socket): void => {
    accepted++;
    client.on('error', noop);
    if (closed) {
      client.destroy();
      return;
    }
    const server = net.connect({ host: targetHost, port: targetPort });
    server.on('error', noop);
    client.setNoDelay(true);
    server.setNoDelay(true);
    const pair: Pair = { client, server, held: [], serverGone: false, done: false };
    pairs.add(pair);

    // client -> server: always forwarded (with backpressure).
    client.on('data', (chunk: Buffer) => {
      if (pair.done || server.destroyed) return;
      if (!server.write(chunk)) {
        client.pause();
        server.once('drain', () => client.resume());
      }
    });
    // server -> client: forwarded, or held while paused.
    server.on('data', (chunk: Buffer) => {
      if (pair.done) return;
      if (paused || pair.held.length > 0) {
        pair.held.push(chunk);
        heldBytes += chunk.length;
        return;
      }
      if (!client.write(chunk)) {
        server.pause();
        client.once('drain', () => server.resume());
      }
    });

    // The client went away: pass its last bytes (e.g. Terminate) on, then FIN.
    client.on('close', () => {
      if (forget(pair)) server.end();
    });
    // 'close' always follows 'end'/'error'; a refused or failed upstream
    // connect closes the client too.
    server.on('close', () => {
      if (pair.done) return;
      if (paused || pair.held.length > 0) {
        pair.serverGone = true;
        return;
      }
      if (forget(pair)) client.end();
    });
  };

  const listen = (): Promise<void> =>
    new Promise((resolve, reject) => {
      const srv = net.createServer(onClient);
      srv.on('error', noop);
      srv.once('error', reject);
      srv.listen({ host, port }, () => {
        srv.removeListener('error', reject);
        const addr = srv.address();
        if (addr && typeof addr === 'object') port = addr.port;
        listener = srv;
        resolve();
      });
    });

  const stopListening = (): Promise<void> => {
    const srv = listener;
    listener = undefined;
    if (!srv) return Promise.resolve();
    // close() stops accepting immediately; its callback would wait for the
    // open connections (which we keep), so don't wait for it.
    return new Promise((resolve) => {
      srv.close(noop);
      setImmediate(resolve);
    });
  };

  await listen();

  const proxy: Proxy = {
    host,
    get port() {
      return port;
    },
    url(baseUrl: string): string {
      const u = new URL(baseUrl);
      u.hostname = host;
      u.port = String(port);
      return u.toString();
    },
    get connections() {
      return pairs.size;
    },
    get accepted() {
      return accepted;
    },
    get heldBytes() {
      return heldBytes;
    },
    get paused() {
      return paused;
    },
    get refusing() {
      return listener === undefined;
    },
    cutAll(mode: CutMode = 'close'): number {
      const all = [...pairs];
      for (const pair of all) cut(pair, mode);
      return all.length;
    },
    pause(): void {
      paused = true;
    },
    resume(): void {
      paused = false;
      for (const pair of [...pairs]) flush(pair);
    },
    refuse: stopListening,
    async accept(): Promise<void> {
      if (closed) throw new Error('proxy is closed');
      if (listener) return;
      await listen();
    },
    async close(): Promise<void> {
      if (closed) return;
      closed = true;
      paused = false;
      await stopListening();
      proxy.cutAll();
    },
  };
  return proxy;
}
