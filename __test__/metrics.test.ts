/**
 * metricsText(): Prometheus text exposition that agrees with stats().
 */
import { describe, expect, it } from 'vitest';
import { AuditBatcher } from '../index.js';
import { thrownBy } from './support/fixture.ts';

/** Parses exposition text into `name{labels}` -> value, checking every line's shape on the way. */
function parse(text: string): Map<string, number> {
  const samples = new Map<string, number>();
  const typed = new Set<string>();
  for (const line of text.trimEnd().split('\n')) {
    if (line.startsWith('# HELP ')) continue;
    const type = /^# TYPE (\w+) (counter|gauge|histogram)$/.exec(line);
    if (type) {
      typed.add(type[1]!);
      continue;
    }
    const m = /^(\w+)(\{[^}]*\})? (-?[\d.e+]+)$/.exec(line);
    expect(m, `malformed sample line: ${line}`).not.toBeNull();
    const family = m![1]!.replace(/_(bucket|sum|count)$/, '');
    expect(typed.has(family) || typed.has(m![1]!), `no # TYPE before ${line}`).toBe(true);
    samples.set(`${m![1]}${m![2] ?? ''}`, Number(m![3]));
  }
  return samples;
}

describe('metricsText()', () => {
  it('exposes the same counts as stats(), and a cumulative statement-duration histogram', async () => {
    const audit = new AuditBatcher({ sink: 'memory', maxBatchRows: 4, sampleRate: 0.5, sampleRates: { late: 1 } });
    for (let i = 0; i < 40; i++) audit.log({ action: 'tool.call' });
    await audit.flush();
    for (let i = 0; i < 3; i++) audit.log({ action: 'late' }); // buffered: nothing writes them before close()
    const s = audit.stats();
    const m = parse(audit.metricsText());
    expect(m.get('audit_batcher_entries_total{state="logged"}')).toBe(s.logged);
    expect(m.get('audit_batcher_entries_total{state="written"}')).toBe(s.written);
    expect(m.get('audit_batcher_entries_total{state="sampled_out"}')).toBe(s.sampledOut);
    expect(m.get('audit_batcher_entries_total{state="dead_lettered"}')).toBe(0);
    expect(m.get('audit_batcher_buffered_entries')).toBe(3);
    expect(s.buffered).toBe(3);
    expect(m.get('audit_batcher_buffered_bytes')).toBe(s.bufferedBytes);
    expect(m.get('audit_batcher_statements_total')).toBe(s.batches);
    expect(m.get('audit_batcher_statement_duration_seconds_count')).toBe(s.batches);
    expect(m.get('audit_batcher_statement_duration_seconds_bucket{le="+Inf"}')).toBe(s.batches);
    const buckets = [...m.entries()].filter(([k]) => k.startsWith('audit_batcher_statement_duration_seconds_bucket'));
    const values = buckets.map(([, v]) => v);
    expect(values).toEqual([...values].sort((a, b) => a - b)); // cumulative
    await audit.close();
  });

  it('adds the given labels to every sample, and refuses bad label names', () => {
    const audit = new AuditBatcher({ sink: 'memory' });
    const m = parse(audit.metricsText({ batcher: 'api', region: 'eu "west"' }));
    expect(m.get('audit_batcher_buffered_entries{batcher="api",region="eu \\"west\\""}')).toBe(0);
    expect(m.get('audit_batcher_entries_total{batcher="api",region="eu \\"west\\"",state="written"}')).toBe(0);
    for (const bad of ['1x', 'a-b', '__name', 'state', 'le', '']) {
      const err = thrownBy(() => audit.metricsText({ [bad]: 'v' }));
      expect(err.code).toBe('ERR_AUDIT_INVALID_OPTIONS');
    }
  });
});
