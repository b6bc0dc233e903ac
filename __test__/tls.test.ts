/**
 * TLS (sslmode, sslrootcert / sslRootCert) against a real PostgreSQL serving TLS with certificates this
 * suite makes at start-up: a throw-away CA, a server certificate it issued for `localhost` and
 * 127.0.0.1, and a second CA that issued nothing here (ECDSA P-256, made with node:crypto alone; see
 * support/certs.ts). That server is always a private embedded one, also when DATABASE_URL is set (an
 * external server's TLS set-up is not ours to choose). The plain-server cases use the run's server when
 * it has TLS off, and another embedded server otherwise.
 *
 * Every table written to records, per row, the TLS version of the connection that inserted it (a column
 * default reading pg_stat_ssl for pg_backend_pid()), so the server itself says whether the addon's
 * connection was encrypted.
 */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { AuditBatcher, type AuditBatcherOptions } from '../index.js';
import { startDatabase, type Database } from '../scripts/database.ts';
import { makeCa } from './support/certs.ts';
import { dropDatabase, freshDatabase, rejectionOf, thrownBy, uniqueTable, withClient } from './support/fixture.ts';

/** A role of the TLS server whose password must never show in a message. */
const USER = 'tls_tester';
const PASSWORD = 'pw-Xq81-never-shown';

let dir: string;
let caFile: string;
let otherCaFile: string;
let tlsServer: Database;
/** Admin URL of the TLS server (no TLS, for checks made by the tests themselves). */
let tlsAdminUrl: string;
let tlsPort: number;
/** A server with TLS off, and how to dispose of it. */
let plainUrl: string;
let disposePlain: () => Promise<void>;
const open: AuditBatcher[] = [];

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'audit-batcher-tls-'));
  const ca = makeCa('audit-batcher test CA');
  const server = ca.issue({ commonName: 'localhost', dnsNames: ['localhost'], ipAddresses: ['127.0.0.1'] });
  caFile = join(dir, 'ca.pem');
  otherCaFile = join(dir, 'other ca.pem'); // a space, to be escaped in connection strings
  writeFileSync(caFile, ca.cert);
  writeFileSync(otherCaFile, makeCa('some other CA').cert);

  tlsServer = await startDatabase({ tls: { cert: server.cert, key: server.key } });
  tlsAdminUrl = tlsServer.url;
  tlsPort = Number(new URL(tlsAdminUrl).port);
  await withClient(tlsAdminUrl, (c) =>
    c.query(`
      CREATE ROLE ${USER} LOGIN SUPERUSER PASSWORD '${PASSWORD}';
      CREATE FUNCTION connection_tls() RETURNS text LANGUAGE sql AS
        $$ SELECT CASE WHEN ssl THEN version ELSE 'none' END FROM pg_stat_ssl WHERE pid = pg_backend_pid() $$;
    `),
  );

  const runServer = inject('databaseUrl');
  const runSsl = await withClient(runServer, async (c) => (await c.query<{ ssl: string }>('SHOW ssl')).rows[0]?.ssl);
  if (runSsl === 'off') {
    plainUrl = await freshDatabase();
    disposePlain = () => dropDatabase(plainUrl);
  } else {
    const own = await startDatabase({ forceEmbedded: true });
    plainUrl = own.url;
    disposePlain = () => own.dispose();
  }
  await withClient(plainUrl, (c) =>
    c.query(`
      CREATE OR REPLACE FUNCTION connection_tls() RETURNS text LANGUAGE sql AS
        $$ SELECT CASE WHEN ssl THEN version ELSE 'none' END FROM pg_stat_ssl WHERE pid = pg_backend_pid() $$;
    `),
  );
});

afterAll(async () => {
  await Promise.allSettled(open.map((b) => b.close({ timeoutMs: 500 })));
  await tlsServer?.dispose();
  await disposePlain?.();
  if (dir) rmSync(dir, { recursive: true, force: true });
});

/** The TLS server as `user` over `host`, with these query parameters. */
function tlsUrl(params: Record<string, string>, host = 'localhost'): string {
  const query = new URLSearchParams(params).toString();
  return `postgres://${USER}:${PASSWORD}@${host}:${tlsPort}/postgres${query ? `?${query}` : ''}`;
}

function batcher(options: AuditBatcherOptions): AuditBatcher {
  const b = new AuditBatcher({ connectTimeoutMs: 5000, ...options });
  open.push(b);
  return b;
}

/** A fresh default table on `adminUrl`'s server whose rows record their connection's TLS version. */
async function tlsRecordingTable(adminUrl: string): Promise<string> {
  const table = uniqueTable('tls');
  const audit = new AuditBatcher({ connectionString: adminUrl, table });
  await audit.ensureSchema();
  await audit.close();
  await withClient(adminUrl, (c) => c.query(`ALTER TABLE ${table} ADD COLUMN tls text DEFAULT connection_tls()`));
  return table;
}

async function tlsOfRows(adminUrl: string, table: string): Promise<string[]> {
  return withClient(adminUrl, async (c) =>
    (await c.query<{ tls: string }>(`SELECT tls FROM ${table} ORDER BY id`)).rows.map((r) => r.tls),
  );
}

/** Logs two entries, flushes, and returns what the server recorded of the connection for each. */
async function writeTwo(options: AuditBatcherOptions, adminUrl = tlsAdminUrl): Promise<string[]> {
  const table = await tlsRecordingTable(adminUrl);
  const audit = batcher({ ...options, table });
  audit.log({ action: 'tls.one' });
  audit.log({ action: 'tls.two', payload: { n: 2 } });
  expect(await audit.flush()).toEqual({ written: 2, pending: 0 });
  await audit.close();
  return tlsOfRows(adminUrl, table);
}

/** A failing flush: its error, with the entries still buffered, and nothing in the table. */
async function failingFlush(options: AuditBatcherOptions): Promise<Error & Record<string, unknown>> {
  const table = await tlsRecordingTable(tlsAdminUrl);
  const audit = batcher({ ...options, table });
  const ids = [audit.log({ action: 'kept.one' }), audit.log({ action: 'kept.two' })];
  const err = await rejectionOf(audit.flush());
  expect(err.code).toBe('ERR_AUDIT_FLUSH_FAILED');
  expect(err.pending).toBe(2);
  expect(audit.pending).toBe(2);
  expect(audit.bufferedEntries().map((e) => e.id)).toEqual(ids);
  expect(err.message).not.toContain(PASSWORD);
  expect(await tlsOfRows(tlsAdminUrl, table)).toEqual([]);
  return err;
}

const TLS_VERSION = /^TLSv1\.[23]$/;

describe('against a server with TLS', () => {
  it('sslmode=require encrypts and writes (no certificate check)', async () => {
    const rows = await writeTwo({ connectionString: tlsUrl({ sslmode: 'require' }, '127.0.0.1') });
    expect(rows).toHaveLength(2);
    for (const tls of rows) expect(tls).toMatch(TLS_VERSION);
  });

  it('verify-full with the right CA (sslRootCert) and host localhost writes over TLS', async () => {
    const rows = await writeTwo({ connectionString: tlsUrl({ sslmode: 'verify-full' }), sslRootCert: caFile });
    for (const tls of rows) expect(tls).toMatch(TLS_VERSION);
    // The pool's connection, seen from the server while the batcher holds it.
    const audit = batcher({ connectionString: tlsUrl({ sslmode: 'verify-full', application_name: 'tls-probe' }), sslRootCert: caFile });
    await audit.ensureSchema();
    const seen = await withClient(tlsAdminUrl, async (c) =>
      (
        await c.query<{ ssl: boolean; usename: string }>(
          `SELECT s.ssl, a.usename FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid)
           WHERE a.application_name = 'tls-probe'`,
        )
      ).rows,
    );
    expect(seen.length).toBeGreaterThan(0);
    expect(seen.every((r) => r.ssl && r.usename === USER)).toBe(true);
  });

  it('verify-full with the CA file in the connection string (key=value form, escaped path) and an IP host', async () => {
    const path = caFile.replace(/([\\' ])/g, '\\$1');
    const rows = await writeTwo({
      connectionString: `host=127.0.0.1 port=${tlsPort} user=${USER} password=${PASSWORD} dbname=postgres sslmode=verify-full sslrootcert=${path}`,
    });
    for (const tls of rows) expect(tls).toMatch(TLS_VERSION);
    // The URL form, percent-encoded.
    const viaUrl = await writeTwo({ connectionString: tlsUrl({ sslmode: 'verify-full', sslrootcert: caFile }) });
    for (const tls of viaUrl) expect(tls).toMatch(TLS_VERSION);
  });

  it('verify-full with a CA that did not issue the certificate fails clearly and keeps the entries', async () => {
    const err = await failingFlush({ connectionString: tlsUrl({ sslmode: 'verify-full' }), sslRootCert: otherCaFile });
    expect(err.message).toMatch(/server certificate not trusted \(sslmode=verify-full\)/);
    expect(err.message).toContain(`not issued by a CA in sslRootCert (${otherCaFile})`);
  });

  it('verify-full with a host name the certificate does not name fails; verify-ca accepts it', async () => {
    // hostaddr: connect to 127.0.0.1, but check the certificate against the name in host.
    const conn = (mode: string) =>
      `host=db.example hostaddr=127.0.0.1 port=${tlsPort} user=${USER} password=${PASSWORD} dbname=postgres sslmode=${mode}`;
    const err = await failingFlush({ connectionString: conn('verify-full'), sslRootCert: caFile });
    expect(err.message).toMatch(/server certificate not valid for host "db\.example" \(sslmode=verify-full checks the host name\)/);
    expect(err.message).toMatch(/only valid for .*localhost/);
    const rows = await writeTwo({ connectionString: conn('verify-ca'), sslRootCert: caFile });
    for (const tls of rows) expect(tls).toMatch(TLS_VERSION);
    const wrongCa = await failingFlush({ connectionString: conn('verify-ca'), sslRootCert: otherCaFile });
    expect(wrongCa.message).toMatch(/server certificate not trusted \(sslmode=verify-ca\)/);
  });

  it('verify-full without a CA file trusts only the well-known public CAs', async () => {
    const err = await failingFlush({ connectionString: tlsUrl({ sslmode: 'verify-full' }) });
    expect(err.message).toMatch(/server certificate not trusted .*well-known public CAs/);
  });

  it('require with a CA file checks the chain, as libpq does', async () => {
    const err = await failingFlush({ connectionString: tlsUrl({ sslmode: 'require' }), sslRootCert: otherCaFile });
    expect(err.message).toMatch(/server certificate not trusted \(sslmode=require\)/);
  });

  it('prefer (and no sslmode) use TLS when the server offers it; disable does not', async () => {
    for (const tls of await writeTwo({ connectionString: tlsUrl({ sslmode: 'prefer' }) })) expect(tls).toMatch(TLS_VERSION);
    for (const tls of await writeTwo({ connectionString: tlsUrl({}) })) expect(tls).toMatch(TLS_VERSION);
    expect(await writeTwo({ connectionString: tlsUrl({ sslmode: 'disable' }) })).toEqual(['none', 'none']);
  });
});

describe('against a server without TLS', () => {
  const plain = (sslmode: string) => {
    const u = new URL(plainUrl);
    u.searchParams.set('sslmode', sslmode);
    return u.toString();
  };

  it('sslmode=disable and prefer keep working', async () => {
    expect(await writeTwo({ connectionString: plain('disable') }, plainUrl)).toEqual(['none', 'none']);
    expect(await writeTwo({ connectionString: plain('prefer') }, plainUrl)).toEqual(['none', 'none']);
  });

  it('sslmode=require fails clearly and keeps the entries', async () => {
    const audit = batcher({ connectionString: plain('require'), table: uniqueTable() });
    audit.log({ action: 'kept' });
    const err = await rejectionOf(audit.flush());
    expect(err.code).toBe('ERR_AUDIT_FLUSH_FAILED');
    expect(err.message).toMatch(/server does not support TLS/);
    expect(audit.pending).toBe(1);
  });
});

describe('TLS options', () => {
  const invalid = (options: AuditBatcherOptions) => {
    const err = thrownBy(() => new AuditBatcher(options));
    expect(err).toBeInstanceOf(TypeError);
    expect(err.code).toBe('ERR_AUDIT_INVALID_OPTIONS');
    return err.message;
  };

  it('a CA file that cannot be used is refused by the constructor, naming where it was given', () => {
    const missing = join(dir, 'missing.pem');
    expect(invalid({ connectionString: tlsUrl({ sslmode: 'verify-full' }), sslRootCert: missing })).toContain(
      `\`sslRootCert\` ${JSON.stringify(missing)} cannot be read`,
    );
    const notPem = join(dir, 'not.pem');
    writeFileSync(notPem, 'hello\n');
    expect(invalid({ connectionString: tlsUrl({ sslmode: 'require', sslrootcert: notPem }) })).toContain(
      `\`connectionString\` sslrootcert ${JSON.stringify(notPem)} holds no certificate`,
    );
  });

  it('unsupported sslmodes and conflicting settings are refused without the password', () => {
    const allow = invalid({ connectionString: tlsUrl({ sslmode: 'allow' }) });
    expect(allow).toContain('sslmode=allow, which is not supported');
    expect(allow).not.toContain(PASSWORD);
    expect(invalid({ connectionString: tlsUrl({ sslmode: 'verify' }) })).toContain(
      'use disable, prefer, require, verify-ca or verify-full',
    );
    expect(invalid({ connectionString: tlsUrl({ sslrootcert: caFile }), sslRootCert: otherCaFile })).toContain(
      "connection string's sslrootcert",
    );
    expect(invalid({ connectionString: tlsUrl({ sslmode: 'require' }), sslRootCert: 'system' })).toContain(
      'may not be used with',
    );
    expect(invalid({ connectionString: tlsUrl({}), sslRootCert: 42 as never })).toContain(
      '`sslRootCert` must be a string',
    );
  });
});
