/**
 * Every option, method and type of the public API in one place: `tsc --noEmit` with `strict` checks it
 * (npm run lint), and the test suite runs it with the memory sink.
 */
import {
  AuditBatcher,
  type AuditBatcherOptions,
  type AuditEntry,
  type AuditRecord,
  type AuditStats,
  type CloseOptions,
  type FlushResult,
} from 'audit-batcher';

export async function wholeApi(connectionString?: string): Promise<{ stats: AuditStats; records: AuditRecord[] }> {
  const options: AuditBatcherOptions = connectionString
    ? {
        connectionString,
        table: 'audit.events',
        columns: { actor: 'actor', occurredAt: 'occurred_at' },
        deadLetterTable: 'audit.events_dead_letter',
        poolSize: 2,
        maxBatchRows: 1000,
        connectTimeoutMs: 5000,
        flushIntervalMs: 1000,
        flushAtEntries: 500,
        sampleRate: 1,
        sampleRates: { 'file.read': 0.5 },
        maxBufferedEntries: 10_000,
        maxBufferedBytes: 16 * 1024 * 1024,
        maxEntryBytes: 64 * 1024,
        onBufferFull: 'drop',
        flushOnExit: false,
        closeTimeoutMs: 2000,
      }
    : { sink: 'memory', onBufferFull: 'reject' };
  const audit = new AuditBatcher(options);
  await audit.ensureSchema();
  const entry: AuditEntry = {
    action: 'tool.call',
    actor: 'user:42',
    tenantId: 't1',
    resource: 'file:/a',
    outcome: 'success',
    payload: { tool: 'grep' },
    occurredAt: new Date(),
  };
  const id: string = audit.log(entry);
  audit.log({ action: 'policy.violation', critical: true, occurredAt: Date.now() });
  audit.log({ action: 'explicit', id: '00000000-0000-4000-8000-000000000001', occurredAt: '2026-01-01T00:00:00Z' });
  const written: string = await audit.write({ action: 'payment.approved' });
  const result: FlushResult = await audit.flush();
  const pending: number = audit.pending + result.pending;
  const metrics: string = audit.metricsText({ service: 'api' });
  const buffered: AuditRecord[] = audit.bufferedEntries();
  const closeOptions: CloseOptions = { timeoutMs: 1000 };
  await audit.close(closeOptions);
  const stats: AuditStats = audit.stats();
  const last = stats.lastError ? `${stats.lastError.message} at ${stats.lastError.at.toISOString()}` : 'none';
  void [id, written, pending, metrics, buffered, last];
  return { stats, records: connectionString ? [] : audit.memoryEntries() };
}
