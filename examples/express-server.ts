/**
 * An Express server that audits every request and serves its audit metrics at /metrics.
 *
 *   DATABASE_URL=postgres://... npx tsx examples/express-server.ts
 *
 * Each request is logged when its response finishes (one synchronous log() call, no await); a background
 * writer flushes every 250 ms or every 500 entries. /metrics serves audit.metricsText(); to serve it next to
 * prom-client's metrics, concatenate: `res.send((await register.metrics()) + audit.metricsText())`.
 */
import type { Server } from 'node:http';
import { pathToFileURL } from 'node:url';
import express, { type Express } from 'express';
import { AuditBatcher } from 'audit-batcher';

export function createApp(audit: AuditBatcher): Express {
  const app = express();
  app.use((req, res, next) => {
    const started = performance.now();
    res.on('finish', () => {
      audit.log({
        action: `http.${req.method.toLowerCase()}`,
        actor: req.header('x-user-id') ?? 'anonymous',
        tenantId: req.header('x-tenant-id'),
        resource: req.path,
        outcome: res.statusCode < 400 ? 'success' : 'failure',
        payload: { status: res.statusCode, ms: Math.round(performance.now() - started) },
      });
    });
    next();
  });
  app.get('/metrics', (_req, res) => {
    res.type('text/plain; version=0.0.4').send(audit.metricsText({ service: 'example-api' }));
  });
  app.get('/files/:name', (req, res) => {
    res.json({ name: req.params.name });
  });
  app.post('/payments', (_req, res) => {
    // A request that must not outlive its audit entry: write() resolves once the entry is committed.
    audit
      .write({ action: 'payment.approved', actor: 'user:1', payload: { amount: 10 } })
      .then((id) => res.status(201).json({ auditId: id }))
      .catch((err: Error) => res.status(503).json({ error: err.message }));
  });
  return app;
}

export async function start(connectionString: string, port = 0): Promise<{ server: Server; audit: AuditBatcher }> {
  const audit = new AuditBatcher({ connectionString, table: 'http_audit', flushIntervalMs: 250, flushAtEntries: 500 });
  await audit.ensureSchema();
  const server = createApp(audit).listen(port);
  await new Promise((resolve) => server.once('listening', resolve));
  return { server, audit };
}

if (import.meta.url === pathToFileURL(process.argv[1] ?? '').href) {
  const { server, audit } = await start(process.env.DATABASE_URL ?? 'postgres://postgres@127.0.0.1:5432/postgres', 3000);
  console.log('listening on http://localhost:3000 (try /files/a and /metrics)');
  process.once('SIGINT', () => {
    server.close();
    void audit.close().finally(() => process.exit(0));
  });
}
