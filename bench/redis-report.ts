/**
 * The Redis hand-off's figures (measured by bench/redis.ts) and their section of the report. Kept apart from
 * the measuring code so that `--render` needs neither the addon nor Redis.
 */

export type ProducerVariant = 'direct-turn' | 'redis-turn' | 'direct-bulk' | 'redis-bulk';

export interface ProducerResult {
  variant: ProducerVariant | 'e2e';
  n: number;
  ms: number;
  rowsPerSec: number;
  /** Event-loop busy time per 1k entries, ms. */
  eluMsPer1k: number;
  /** CPU of the whole producer process per 1k entries, ms. */
  cpuMsPer1k: number;
}

export interface EndToEnd {
  workers: number;
  n: number;
  ms: number;
  rowsPerSec: number;
}

export interface RedisBench {
  skipped?: string;
  runs: number;
  producer: Record<ProducerVariant, ProducerResult[]>;
  endToEnd: EndToEnd[];
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length === 0 ? NaN : s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
}

/** The Redis hand-off's section of the report (markdown). */
export function renderRedis(r: RedisBench | undefined): string {
  if (!r) return '';
  if (r.skipped) return `\n### Redis hand-off\n\nNot measured: ${r.skipped}.\n`;
  const m = (v: ProducerVariant, f: (x: ProducerResult) => number) => median(r.producer[v].map(f));
  const fmt = (x: number) => Math.round(x).toLocaleString('en-US');
  const rows = (['direct-turn', 'redis-turn', 'direct-bulk', 'redis-bulk'] as ProducerVariant[]).map(
    (v) => `| ${v} | ${fmt(m(v, (x) => x.rowsPerSec))} | ${m(v, (x) => x.eluMsPer1k).toFixed(1)} | ${m(v, (x) => x.cpuMsPer1k).toFixed(1)} |`,
  );
  const ratio = (a: ProducerVariant, b: ProducerVariant, f: (x: ProducerResult) => number) => (m(a, f) / m(b, f)).toFixed(2);
  const e2e = [1, 2].map((w) => {
    const xs = r.endToEnd.filter((e) => e.workers === w);
    return `| ${w} | ${xs[0]?.n ?? 0} | ${fmt(median(xs.map((e) => e.rowsPerSec)))} |`;
  });
  return [
    '',
    '### Redis hand-off',
    '',
    `Producer, default options, medians of ${r.runs} run(s) (per turn: 5 × log() + await flush(), one turn at a time; bulk: log() × N, then close()). "direct" writes to PostgreSQL, "redis" to a stream no worker reads.`,
    '',
    '| producer | rows/s | event loop ms / 1k | process CPU ms / 1k |',
    '| --- | ---: | ---: | ---: |',
    ...rows,
    '',
    `Per turn, redis ÷ direct: rows/s ${ratio('redis-turn', 'direct-turn', (x) => x.rowsPerSec)}, event loop ${ratio('redis-turn', 'direct-turn', (x) => x.eluMsPer1k)}. Bulk: rows/s ${ratio('redis-bulk', 'direct-bulk', (x) => x.rowsPerSec)}, event loop ${ratio('redis-bulk', 'direct-bulk', (x) => x.eluMsPer1k)}.`,
    '',
    'End to end: the producer logs in turns of 5 (flush per turn) into the stream while the workers (`audit-batcher worker` processes) write to the table; from the first log() until the table holds every row.',
    '',
    '| workers | entries | rows/s |',
    '| ---: | ---: | ---: |',
    ...e2e,
    '',
  ].join('\n');
}
