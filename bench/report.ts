/** Output of the benchmark: the markdown table and targets, bench/RESULTS.md, and the SVG chart. */
import { renderRedis, type RedisBench } from './redis-report.ts';
import type { WorkerResult } from './worker.ts';

export interface MethodSpec {
  key: string;
  group: 'pg' | 'ab' | 'ceiling';
  size: 'naive' | 'turn' | 'bulk';
  label: string;
  /**
   * Which ids the method writes: 'fixed' (default: the entries' own, the same as every other method's),
   * 'uuid4' (random UUIDv4 ids the caller passes) or 'own' (none passed: the batcher's UUIDv7). Rows of
   * 'uuid4' and 'own' methods are compared with the others on every column but id.
   */
  ids?: 'fixed' | 'uuid4' | 'own';
  /** For a spool method: the key of the same method without a spool. */
  twin?: string;
  /** For a ceiling method: rows per COPY (default 10000) and connections COPYing at once (default 1). */
  rowsPerCopy?: number;
  connections?: number;
  /**
   * For a ceiling method: run it beside a Node process that spends one core on what log() cannot do
   * without (JSON.stringify of the benchmark's payloads, in a loop), as an application logging does.
   */
  besideNode?: boolean;
}

export interface RunRecord {
  run: number;
  method: string;
  result: WorkerResult;
  /** md5 of the first k rows (ORDER BY id), per k. */
  checksums: Record<string, string>;
  /** 1-minute load average when the method's checks were done (other processes' CPU use shows here). */
  load1m: number;
}

export interface Range {
  median: number;
  min: number;
  max: number;
}

export interface MethodResults extends MethodSpec {
  n: number;
  rowsPerSec: Range;
  cpuMsPer1k: number | null;
  eluMsPer1k: number | null;
  eluMsPer1kRange: { min: number; max: number } | null;
  mainCpuMsPer1k: number | null;
  extraMedian: Record<string, number>;
  latencyP50: number | null;
  latencyP99: number | null;
  rssBeforeMB: number | null;
  rssPeakMB: number | null;
  /** What the database paid, per 1k entries (medians): server CPU ms, WAL KB, commits. */
  serverCpuMsPer1k: number | null;
  walKBPer1k: number | null;
  commitsPer1k: number | null;
  variant: string | undefined;
  runs: WorkerResult[];
}

export interface TargetResult {
  name: string;
  op: '>=' | '<=';
  threshold: number;
  ratio: Range;
  met: boolean;
  runsMet: number;
  runs: number;
  note: string;
}

export interface BenchResults {
  meta: {
    date: string;
    command: string;
    quick: boolean;
    runs: number;
    sizes: { naive: number; turn: number; bulk: number };
    durationS: number;
    config: Record<string, unknown>;
    machine: {
      cpu: string;
      memoryGiB: number;
      os: string;
      node: string;
      loadAverage1mAtStart: number;
      loadAverage1mAtEnd: number;
      loadAverage1mMax: number;
      otherCpuShareMedian?: number;
      otherCpuShareMax?: number;
      stealShareMedian?: number;
      stealShareMax?: number;
    };
    server: {
      source: string;
      url: string;
      version: string;
      fullVersion: string;
      settings: Record<string, string>;
    };
    addon: {
      file: string;
      sha256: string;
      builtAt: string;
      commit: string;
      /** The last commit that changed the addon's source: "hash subject". */
      sourceCommit?: string;
      sourceDirty: boolean;
      olderThanSource: boolean;
    };
    checksums: Record<string, string>;
    /** md5 of the first k rows on every column but id (ORDER BY occurred_at), per k: all methods. */
    checksumsNoId?: Record<string, string>;
  };
  methods: MethodResults[];
  memory: { n: number; median: Record<string, number>; runs: Record<string, unknown>[] };
  /** log() per call (ab-log): its floor, log() without and with a spool, µs; medians over the runs. */
  logCost?: { n: number; median: Record<string, number>; runs: Record<string, unknown>[] };
  targets: TargetResult[];
  /** The Redis hand-off's figures (bench/redis.ts); absent in results made before it, or with --only. */
  redis?: RedisBench;
}

const int = (v: number) => Math.round(v).toLocaleString('en-US');
/** Results files older than a figure lack it (undefined): shown as missing, like null. */
const fix = (v: number | null | undefined, d = 2) => (v == null ? '—' : v.toFixed(d));

/**
 * A ratio rounded towards the unfavourable side, never in our favour: down when the target is a
 * minimum (>=), up when it is a maximum (<=).
 */
export function fmtRatio(v: number, op: '>=' | '<='): string {
  const d = Math.abs(v) >= 1 ? 2 : Math.abs(v) >= 0.1 ? 3 : 4;
  const f = 10 ** d;
  const r = op === '>=' ? Math.floor(v * f) / f : Math.ceil(v * f) / f;
  return r.toFixed(d);
}

export function headerLines(r: BenchResults): string[] {
  const s = r.meta.server;
  const a = r.meta.addon;
  const mc = r.meta.machine;
  const pct = (v: number) => `${(v * 100).toFixed(0)}%`;
  const busy =
    (mc.otherCpuShareMax ?? 0) + (mc.stealShareMax ?? 0) > 0.1
      ? [
          `**The CPU was not all the benchmark's during this run**: other processes used up to ${pct(mc.otherCpuShareMax!)} ` +
            `of the machine during a method (median ${pct(mc.otherCpuShareMedian!)}), and the hypervisor took up to ` +
            `${pct(mc.stealShareMax ?? 0)} (steal; median ${pct(mc.stealShareMedian ?? 0)}). The min–max spreads are wider than on a ` +
            'quiet machine; compare medians and per-run ratios.',
        ]
      : [];
  return [
    ...busy,
    `PostgreSQL ${s.version} — ${s.source} at \`${s.url}\` — ` +
      Object.entries(s.settings)
        .map(([k, v]) => `${k}=${v}`)
        .join(', '),
    `Machine: ${r.meta.machine.cpu} cores, ${r.meta.machine.memoryGiB} GiB, ${r.meta.machine.os}, Node ${r.meta.machine.node}. ` +
      (mc.otherCpuShareMax === undefined
        ? ''
        : `While a method ran, processes other than the benchmark and PostgreSQL used a median ${pct(mc.otherCpuShareMedian!)} ` +
          `(at most ${pct(mc.otherCpuShareMax)}) of the machine's CPU, and hypervisor steal took a median ` +
          `${pct(mc.stealShareMedian ?? 0)} (at most ${pct(mc.stealShareMax ?? 0)}). `) +
      `Addon: ${a.file} at commit ${a.commit || '?'}${a.sourceDirty ? ' (src/ had uncommitted changes)' : ''}` +
      `${a.sourceCommit ? ` (source last changed in ${a.sourceCommit.split(' ')[0]}: "${a.sourceCommit.split(' ').slice(1).join(' ')}")` : ''}` +
      `, built ${a.builtAt}, sha256 ${a.sha256}` +
      `${a.olderThanSource ? ' — WARNING: older than src/, not rebuilt' : ''}.`,
    `${r.meta.runs} run${r.meta.runs === 1 ? '' : 's'}, every method once per run in a fresh process, order rotated each run; ` +
      `table TRUNCATEd and CHECKPOINT before each timed run; after each, a server-side md5 of the rows proved ` +
      `every method wrote identical rows (` +
      [
        ...(Object.keys(r.meta.checksums).length
          ? [
              `first ${Object.keys(r.meta.checksums).join(' / ')} rows: ` +
                `${Object.values(r.meta.checksums).map((m) => m.slice(0, 8)).join(' / ')}`,
            ]
          : []),
        ...(r.meta.checksumsNoId && r.methods.some((m) => (m.ids ?? 'fixed') !== 'fixed')
          ? [
              `with the methods that write other ids, on every column but id, first ${Object.keys(r.meta.checksumsNoId).join(' / ')} rows: ` +
                `${Object.values(r.meta.checksumsNoId).map((m) => m.slice(0, 8)).join(' / ')}; ` +
                'their ids checked: the UUIDv4 ids logged, or UUIDv7 made during the run, increasing in log() order',
            ]
          : []),
      ].join('; ') +
      `). Command: \`${r.meta.command}\`, ${r.meta.durationS} s.`,
  ];
}

export function renderMarkdown(r: BenchResults): string {
  const lines: string[] = [];
  lines.push(`## audit-batcher benchmark${r.meta.quick ? ' (--quick: small N, 1 run — a smoke test, not a measurement)' : ''}`, '');
  for (const l of headerLines(r)) lines.push(l, '');
  lines.push(
    '| method | entries | rows/s median (min–max) | Node CPU ms / 1k entries | event-loop busy ms / 1k entries | main-thread CPU ms / 1k entries | flush p50 / p99 ms | RSS before → peak MB |',
    '| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |',
  );
  for (const m of r.methods) {
    const rps = m.rowsPerSec;
    const range = r.meta.runs > 1 ? ` (${int(rps.min)}–${int(rps.max)})` : '';
    const lat = m.latencyP50 === null ? '—' : `${fix(m.latencyP50)} / ${fix(m.latencyP99)}`;
    const rss = m.rssBeforeMB === null ? '—' : `${fix(m.rssBeforeMB, 0)} → ${fix(m.rssPeakMB, 0)}`;
    const cpu = m.group === 'ceiling' ? `${fix(m.cpuMsPer1k)} (Rust process)` : fix(m.cpuMsPer1k);
    lines.push(
      `| ${m.label} | ${int(m.n)} | **${int(rps.median)}**${range} | ${cpu} | ${fix(m.eluMsPer1k, 1)} | ${fix(m.mainCpuMsPer1k, 1)} | ${lat} | ${rss} |`,
    );
  }
  lines.push('');
  if (r.methods.some((m) => m.serverCpuMsPer1k != null)) {
    lines.push(
      '### What the database pays',
      '',
      'Per 1k entries, over the timed part of each run (medians): CPU of all PostgreSQL processes (user + system, ' +
        'backends that exited included), WAL written, and transactions committed. This is what decides how many ' +
        'app instances one PostgreSQL can serve.',
      '',
      '| method | server CPU ms / 1k entries | WAL KB / 1k entries | commits / 1k entries |',
      '| --- | ---: | ---: | ---: |',
    );
    for (const m of r.methods) {
      lines.push(`| ${m.label} | ${fix(m.serverCpuMsPer1k, 1)} | ${fix(m.walKBPer1k, 0)} | ${fix(m.commitsPer1k, 1)} |`);
    }
    lines.push('');
  }
  for (const bulk of r.methods.filter((m) => m.key.startsWith('ab-bulk') && m.variant)) {
    const x = bulk.extraMedian;
    lines.push(
      `${bulk.key === 'ab-bulk' ? 'audit-batcher bulk' : `\`${bulk.key}\``} ran as: **${bulk.variant}**` +
        `${bulk.variant === 'default options' ? '' : ' (other options at their defaults)'}. Its ${int(bulk.n)} log() calls took ` +
        `${fix(x['logLoopMs'] ?? null, 0)} ms (${fix(((x['logLoopMs'] ?? NaN) / bulk.n) * 1000, 2)} µs per call, flushing included); ` +
        `${int(x['writtenWhenLogLoopEnded'] ?? NaN)} entries were already written when the loop ended; ${int(x['statements'] ?? NaN)} statements in all (medians).`,
      '',
    );
  }
  const naive = r.methods.find((m) => m.key === 'pg-naive');
  if (naive) lines.push(`(a) wrote ${int(naive.n)} entries (its rate is extrapolated from them); one-at-a-time turn methods wrote ${int(r.meta.sizes.turn)}.`, '');
  const mem = r.memory.median;
  if (mem['rssGrowthPerEntry'] !== undefined) {
    const limit = 1.5 * mem['entryJsonBytesPerEntry']! + 64;
    lines.push(
      `Buffered memory (audit-batcher, ${int(r.memory.n)} entries logged and not flushed, median of runs): ` +
        `**RSS growth ${int(mem['rssGrowthPerEntry']!)} B per entry** (after GC; V8 heap used ${int(mem['heapUsedGrowthPerEntry']!)} B of it), ` +
        `\`stats().bufferedBytes\` ${int(mem['bufferedBytesPerEntry']!)} B per entry; the entry's JSON is ${int(mem['entryJsonBytesPerEntry']!)} B, ` +
        `so the limit 1.5 × JSON + 64 is ${int(limit)} B. The target uses the larger of the two measures. ` +
        `That loop, log() alone with no flushing, cost ${fix(mem['logUsPerCall'] ?? null, 2)} µs per call.`,
      '',
    );
  }
  const lc = r.logCost?.median;
  if (lc && lc['logUsPerCall'] !== undefined) {
    const us = (k: string) => fix(lc[k] ?? null, 2);
    lines.push(
      `log() per call (ab-log: ${int(r.logCost!.n)} entries per loop, batchers that cannot write, so nothing is flushed; ` +
        `in one process, each variant on a fresh batcher, ${lc['rounds'] ?? '?'} rounds, the order rotated; medians of the runs): ` +
        `**log() ${us('logUsPerCall')} µs** per call (mean; each call timed: median ${us('logP50Us')} µs); ` +
        (lc['floorUsPerCall'] !== undefined
          ? `its floor, \`JSON.stringify\` of the payload plus an empty native method (\`_logFloor\`) called with the same nine ` +
            `arguments as log()'s native call, **${us('floorUsPerCall')} µs** (median ${us('floorP50Us')} µs); `
          : 'no floor (this addon build has no `_logFloor`); ') +
        `**log() with a spool ${us('logSpoolUsPerCall')} µs** (median ${us('logSpoolP50Us')} µs). ` +
        'The floor target uses the means (the per-call timer would add the same cost to both sides of the ratio); the ' +
        `spool target the per-call medians (the timer's cost cancels in the difference): with a spool minus without, ` +
        `median ${fix((lc['logSpoolP50Us'] ?? NaN) - (lc['logP50Us'] ?? NaN), 2)} µs, mean ` +
        `${fix((lc['logSpoolUsPerCall'] ?? NaN) - (lc['logUsPerCall'] ?? NaN), 2)} µs.`,
      '',
    );
  }
  const spooled = r.methods.filter((m) => m.twin !== undefined);
  if (spooled.length) {
    lines.push(
      '### Spool cost',
      '',
      'Each spool method is its twin plus `spool: { dir }` (a fresh directory under the OS temp dir, default sync: ' +
        "'interval', fdatasync every 200 ms). fsyncs/s: `stats().spool.syncs` over the timed window ÷ its seconds. " +
        'Disk bytes per entry: what the process dirtied in the page cache over the timed window (`write_bytes` of ' +
        '/proc/self/io) ÷ entries, i.e. what the kernel has to write to disk, counted per 4 KiB page each time a page is ' +
        'dirtied again after a sync; the addon does not expose the bytes it appends (`stats().spool.bytes` is the ' +
        "segments' preallocated size, shown too). Medians of the runs.",
      '',
      '| method | rows/s | without spool | ÷ | fsyncs/s | disk bytes / entry (without spool) | spool segments, bytes at the end |',
      '| --- | ---: | ---: | ---: | ---: | ---: | ---: |',
    );
    const diskPerEntry = (m: MethodResults | undefined) => {
      const v = m?.runs.map((x) => (x.diskWriteBytes == null ? NaN : x.diskWriteBytes / x.n)).filter((x) => !Number.isNaN(x)) ?? [];
      return v.length ? [...v].sort((a, b) => a - b)[v.length >> 1]! : null;
    };
    for (const m of spooled) {
      const twin = r.methods.find((x) => x.key === m.twin);
      const x = m.extraMedian;
      const ratio = twin ? fmtRatio(m.rowsPerSec.median / twin.rowsPerSec.median, '>=') : '—';
      const seg =
        x['spoolSegmentsWhenLogLoopEnded'] !== undefined
          ? `${fix(x['spoolSegmentsWhenLogLoopEnded']!, 0)}, ${int(x['spoolBytesWhenLogLoopEnded']!)} (when the log() loop ended)`
          : x['spoolSegments'] !== undefined
            ? `${fix(x['spoolSegments']!, 0)}, ${int(x['spoolBytes']!)}`
            : '—';
      lines.push(
        `| ${m.label} | ${int(m.rowsPerSec.median)} | ${twin ? int(twin.rowsPerSec.median) : '—'} | ${ratio} | ` +
          `${fix(x['spoolSyncsPerSec'] ?? null, 1)} | ${fix(diskPerEntry(m), 0)} (${fix(diskPerEntry(twin), 0)}) | ${seg} |`,
      );
    }
    lines.push('', '(÷: ratio of the medians; the target below is the median of the per-run ratios.)', '');
  }
  lines.push('### Targets', '');
  lines.push('| target | ratio, median of per-run ratios (min–max) | needed | met |', '| --- | ---: | ---: | --- |');
  for (const t of r.targets) {
    const range = t.runs > 1 ? ` (${fmtRatio(t.ratio.min, t.op)}–${fmtRatio(t.ratio.max, t.op)})` : '';
    const met = t.met ? 'met' : '**not met**';
    const runs = t.runs > 1 ? `, in ${t.runsMet}/${t.runs} runs` : '';
    lines.push(`| ${t.name} | ${fmtRatio(t.ratio.median, t.op)}${range} | ${t.op === '>=' ? '≥' : '≤'} ${t.threshold} | ${met}${runs} |`);
  }
  lines.push(
    '',
    `Targets met: ${r.targets.filter((t) => t.met).length} of ${r.targets.length}. Ratios are computed within each run, ` +
      'then the median is taken; they are rounded towards failing (down for ≥, up for ≤), and "met" uses the unrounded median.',
  );
  lines.push(renderRedis(r.redis));
  return lines.join('\n');
}

export function renderResultsMd(r: BenchResults, markdown: string): string {
  return [
    '# audit-batcher benchmark results',
    '',
    `Generated by \`${r.meta.command}\` on ${r.meta.date.slice(0, 16).replace('T', ' ')} UTC (${r.meta.durationS} s). ` +
      'What the methods are and how to run the benchmark: [README.md](README.md). Raw figures of every run: ' +
      '[results.json](results.json).',
    '',
    '![rows/s and event-loop busy time per method](results.svg)',
    '',
    markdown.replace(/^## .*\n\n/, ''),
    '',
    '## Machine notes',
    '',
    `- ${r.meta.machine.cpu} cores, ${r.meta.machine.memoryGiB} GiB RAM, ${r.meta.machine.os}, Node ${r.meta.machine.node}; ` +
      'the Node process, PostgreSQL and (for the ceiling) the Rust client share the same 2 cores, so a client ' +
      'that burns CPU takes it from the server.',
    `- Server: ${r.meta.server.fullVersion}. fsync and synchronous_commit change the ratios: with ` +
      'synchronous_commit=on every commit waits for a WAL flush, which is what makes one-row commits (a) and ' +
      'small per-turn commits expensive; an embedded throw-away server (fsync=off) makes them cheaper.',
    '- Each figure is the median over the runs; rows/s also shows the min–max. "Node CPU" is `process.cpuUsage()` ' +
      "of the whole process (the addon's own threads included); \"event-loop busy\" is " +
      '`performance.eventLoopUtilization()` active time of the main thread over the timed window: the time the ' +
      'app could not run anything else. "Main-thread CPU" is that thread\'s own CPU time; event-loop busy minus it is ' +
      'time the main thread was runnable but waiting for a core (or blocked in the kernel).',
    '',
  ].join('\n');
}

// ---- SVG ------------------------------------------------------------------------------------------

const esc = (s: string) => s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;').replace(/"/g, '&quot;');
const COLORS: Record<MethodSpec['group'], string> = { pg: '#8796ad', ab: '#e0712b', ceiling: '#3f8f57' };

/** Shorter labels for the chart's label column. */
const CHART_LABELS: Record<string, (m: MethodResults) => string> = {
  'pg-naive': () => '(a) pg: one awaited INSERT per entry',
  'pg-turn': () => '(b) pg turn batcher, 1 turn at a time',
  'pg-turn-64': (m) => `(b) pg turn batcher, 64 in flight (${/pg\.Pool max \d+/.exec(m.label)?.[0] ?? 'pg.Pool'})`,
  'pg-multirow-1000': () => '(c) pg multi-row INSERT, 1000 rows/statement',
  'pg-copy-10000': () => '(d) pg COPY (text), 10000 rows/COPY',
  'ab-turn': () => 'audit-batcher per turn, 1 turn at a time',
  'ab-turn-default': () => 'audit-batcher per turn, 1 at a time, default options',
  'ab-turn-64': () => 'audit-batcher per turn, 64 in flight',
  'ab-bulk': (m) => (m.variant?.startsWith('flushAtEntries') ? `audit-batcher bulk (${m.variant})` : 'audit-batcher bulk (log all, then close)'),
  'ab-bulk-uuid4': () => 'audit-batcher bulk, defaults, caller UUIDv4 ids',
  'ab-bulk-own-ids': () => "audit-batcher bulk, defaults, batcher's own ids",
  'ab-turn-spool': () => 'audit-batcher per turn, 1 at a time, spool',
  'ab-turn-64-spool': () => 'audit-batcher per turn, 64 in flight, spool',
  'ab-bulk-spool': (m) => (m.variant?.startsWith('flushAtEntries') ? 'audit-batcher bulk (flushAtEntries), spool' : 'audit-batcher bulk, spool'),
  ceiling: () => 'ceiling: Rust binary COPY, one connection',
  'ceiling-uuid4': () => 'ceiling, random UUIDv4 ids',
  'ceiling-beside-node': () => 'ceiling beside a Node process busy on one core',
  'ceiling-x2': () => 'Rust binary COPY, 10000 rows/COPY, two connections',
  'ceiling-turn-64': () => 'Rust binary COPY, 160 rows/COPY, one connection',
  'ceiling-turn-64x2': () => 'Rust binary COPY, 160 rows/COPY, two connections',
};

/** Two horizontal bar panels: rows/s (with min–max whiskers) and event-loop busy ms per 1k entries. */
export function renderSvg(r: BenchResults): string {
  const W = 980;
  const labelW = 440;
  const barW = 400;
  const rowH = 24;
  const x0 = labelW + 10;
  const parts: string[] = [];
  let y = 0;

  const title = (text: string, size = 17) => {
    y += size + 8;
    parts.push(`<text x="16" y="${y}" font-size="${size}" font-weight="600">${esc(text)}</text>`);
  };
  const sub = (text: string) => {
    y += 18;
    parts.push(`<text x="16" y="${y}" font-size="12" fill="#555">${esc(text)}</text>`);
  };

  const s = r.meta.server;
  title(`audit-batcher benchmark${r.meta.quick ? ' (--quick smoke run)' : ''}`);
  sub(
    `PostgreSQL ${s.version.split(' ')[0]} (${s.source.split(' ')[0]}), fsync=${s.settings['fsync']}, synchronous_commit=${s.settings['synchronous_commit']} · ` +
      `${r.meta.machine.cpu} cores · Node ${r.meta.machine.node} · ${r.meta.runs} run(s), medians · ${r.meta.date.slice(0, 10)}`,
  );

  const panel = (
    heading: string,
    rows: { label: string; group: MethodSpec['group']; value: number; min?: number; max?: number; text: string }[],
  ) => {
    y += 14;
    title(heading, 14);
    y += 6;
    const maxV = Math.max(...rows.map((x) => x.max ?? x.value), 1e-9);
    const scale = barW / maxV;
    for (const row of rows) {
      const top = y;
      const w = Math.max(1, row.value * scale);
      parts.push(
        `<text x="${labelW}" y="${top + 16}" font-size="12" text-anchor="end">${esc(row.label)}</text>`,
        `<rect x="${x0}" y="${top + 4}" width="${w.toFixed(1)}" height="${rowH - 8}" fill="${COLORS[row.group]}" rx="2"/>`,
      );
      if (row.min !== undefined && row.max !== undefined && row.max > row.min) {
        const a = x0 + row.min * scale;
        const b = x0 + row.max * scale;
        const mid = top + rowH / 2;
        parts.push(
          `<path d="M${a.toFixed(1)} ${mid}H${b.toFixed(1)}M${a.toFixed(1)} ${mid - 5}V${mid + 5}M${b.toFixed(1)} ${mid - 5}V${mid + 5}" stroke="#222" stroke-width="1"/>`,
        );
      }
      const textX = x0 + Math.max(w, (row.max ?? 0) * scale) + 6;
      parts.push(`<text x="${textX.toFixed(1)}" y="${top + 16}" font-size="12">${esc(row.text)}</text>`);
      y += rowH;
    }
  };

  const short = (m: MethodResults) => CHART_LABELS[m.key]?.(m) ?? m.label;
  panel(
    'Rows written per second (higher is better; whiskers: min–max over runs)',
    r.methods.map((m) => ({
      label: short(m),
      group: m.group,
      value: m.rowsPerSec.median,
      ...(r.meta.runs > 1 ? { min: m.rowsPerSec.min, max: m.rowsPerSec.max } : {}),
      text: int(m.rowsPerSec.median),
    })),
  );
  panel(
    'Event-loop busy time, ms per 1000 entries (lower is better: the time the app is blocked)',
    r.methods
      .filter((m) => m.eluMsPer1k !== null)
      .map((m) => ({
        label: short(m),
        group: m.group,
        value: m.eluMsPer1k!,
        ...(r.meta.runs > 1 && m.eluMsPer1kRange ? m.eluMsPer1kRange : {}),
        text: `${m.eluMsPer1k!.toFixed(1)} ms`,
      })),
  );

  y += 16;
  const met = r.targets.filter((t) => t.met).length;
  const legend: [string, string][] = [
    [COLORS.ab, 'audit-batcher'],
    [COLORS.pg, 'pg (node-postgres)'],
    [COLORS.ceiling, 'Rust ceiling'],
  ];
  let lx = 16;
  for (const [color, name] of legend) {
    parts.push(`<rect x="${lx}" y="${y - 10}" width="12" height="12" fill="${color}"/>`);
    parts.push(`<text x="${lx + 17}" y="${y}" font-size="12">${esc(name)}</text>`);
    lx += 30 + name.length * 7;
  }
  parts.push(`<text x="${W - 16}" y="${y}" font-size="12" text-anchor="end">targets met: ${met} of ${r.targets.length} (see RESULTS.md)</text>`);
  y += 14;

  return [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${y}" viewBox="0 0 ${W} ${y}" font-family="-apple-system, Segoe UI, Helvetica, Arial, sans-serif">`,
    `<rect width="100%" height="100%" fill="#fff"/>`,
    ...parts,
    '</svg>',
    '',
  ].join('\n');
}
