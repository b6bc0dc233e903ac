/**
 * The benchmark's deterministic workload: realistic AI-agent audit entries, identical in every method
 * and every process (same ids, timestamps, text and payloads), so that every method writes identical
 * rows and the server-side checksums can prove it.
 *
 * Entry i belongs to turn floor(i / 5) and plays role i % 5 in it:
 *   0 turn.start, 1 tool.call, 2 tool.result (or tool.error), 3 tool.call, 4 tool.result (or tool.error).
 * Payloads are ~400 bytes of JSON with quotes, backslashes, newlines and non-ASCII text (accents, CJK,
 * an emoji outside the BMP).
 */

/** The columns of the product's default table, in the order every method writes them. */
export const COLUMNS = ['id', 'occurred_at', 'tenant_id', 'actor', 'action', 'resource', 'outcome', 'payload'] as const;

/** The warm-up's table (made by ensureSchema too), so the untimed warm-up runs the timed code paths. */
export const WARMUP_TABLE = 'audit_log_warmup';

/** One entry, as an app holds it before logging it. */
export interface BenchEntry {
  id: string;
  occurredAt: Date;
  tenantId: string;
  actor: string;
  action: string;
  resource: string;
  /** null for entries that have no outcome (turn.start, tool.call). */
  outcome: string | null;
  payload: Record<string, unknown>;
}

/** 2025-01-01T00:00:00.000Z. Entry i occurred at BASE_MS + 2 i ms. */
export const BASE_MS = Date.UTC(2025, 0, 1);

const TOOLS = ['grep', 'read_file', 'write_file', 'run_tests', 'web_search', 'sql_query'] as const;
const PATHS = [
  'C:\\Users\\andré\\projets\\rapport-été\\notes.md',
  '/srv/repo/src/données/entrée.ts',
  '/home/yuki/プロジェクト/設計書.md',
  '/var/data/Größenordnung/übersicht.csv',
  'D:\\work\\"quoted dir"\\main.rs',
];
const SNIPPETS = [
  'fn main() {\n    println!("héllo, wörld");\n}\n',
  'SELECT "name", \'value\' FROM t WHERE path LIKE \'C:\\\\tmp\\\\%\';\n-- ok\n',
  'Résumé: 3 tests passed ✓, 1 failed ✗\n\tat parse (src/lib.rs:42)\n',
  '東京の天気は晴れ。気温は 21°C です。\n次のステップ → 🚀 deploy\n',
  'line 1\r\nline 2 with a tab\there and a backslash \\ and "quotes"\n',
];
const MODELS = ['gpt-x-large', 'claude-ish-2', 'local-llama-70b'] as const;

/** xorshift32, seeded per entry, so entry i is the same whatever else was generated. */
function rng(seed: number): (n: number) => number {
  let s = (seed ^ 0x9e3779b9) >>> 0 || 1;
  return (n: number) => {
    s ^= s << 13;
    s >>>= 0;
    s ^= s >>> 17;
    s ^= s << 5;
    s >>>= 0;
    return s % n;
  };
}

const hex = (v: number, width: number): string => v.toString(16).padStart(width, '0');

/**
 * A UUIDv7-shaped id for entry i: its 48-bit millisecond timestamp is the entry's occurredAt, so ids
 * increase with i (ORDER BY id is entry order, and index inserts are append-only, as with the
 * addon's own UUIDv7 ids). The rest is deterministic pseudo-random.
 */
function entryId(i: number, ms: number, r: (n: number) => number): string {
  const t = hex(ms, 12);
  const randA = hex(i & 0xfff, 3);
  const variant = (8 + r(4)).toString(16);
  const randB = hex(r(0x1000), 3) + hex(r(0x10000), 4) + hex(r(0x10000), 4) + hex(r(0x10000), 4);
  return `${t.slice(0, 8)}-${t.slice(8, 12)}-7${randA}-${variant}${randB.slice(0, 3)}-${randB.slice(3, 15)}`;
}

export function makeEntry(i: number): BenchEntry {
  const r = rng(i + 1);
  const ms = BASE_MS + 2 * i;
  const turn = Math.floor(i / 5);
  const role = i % 5;
  const tr = rng(turn + 1_000_003); // per-turn values (tenant, actor, conversation)
  const tenantId = `tenant-${1 + tr(12)}`;
  const actor = tr(4) === 0 ? `agent:planner-${tr(3)}` : `user:${10_000 + tr(5000)}`;
  const conversation = `conv_${hex(tr(0x1000000), 6)}`;
  // A tool.call and its result (roles 1-2, 3-4) name the same tool.
  const tool = TOOLS[rng(2 * turn + (role >= 3 ? 1 : 0) + 7)(TOOLS.length)]!;
  const path = PATHS[r(PATHS.length)]!;
  const snippet = SNIPPETS[r(SNIPPETS.length)]!;
  const failed = r(10) === 0;
  const common = {
    turn,
    step: role,
    conversation,
    model: MODELS[turn % MODELS.length],
    trace: { traceId: hex(tr(0x1000000), 6) + hex(tr(0x1000000), 6) + hex(tr(0x1000000), 6), spanId: hex(r(0x1000000), 6) + hex(r(0x10000), 4) },
  };

  let action: string;
  let resource: string;
  let outcome: string | null = null;
  let payload: Record<string, unknown>;
  if (role === 0) {
    action = 'turn.start';
    resource = `conversation:${conversation}`;
    payload = {
      ...common,
      prompt: `Please look at "${path}" and fix the failing test.\nContext: ${snippet}`,
      attachments: [{ name: 'screenshot — écran.png', bytes: 10_000 + r(90_000) }],
      client: { app: 'agent-console', version: `1.${r(20)}.${r(10)}`, locale: ['fr-FR', 'ja-JP', 'de-DE', 'en-US'][r(4)] },
    };
  } else if (role === 1 || role === 3) {
    action = 'tool.call';
    resource = `tool:${tool}`;
    payload = {
      ...common,
      tool,
      args: { path, pattern: `"TODO|FIXME"\\s+\\(${r(100)}\\)`, maxResults: 10 + r(90), recursive: r(2) === 0 },
      reason: `Looking for the code path that ${['parses', 'renders', 'validates', 'écrit'][r(4)]} the input;\nthen run the tests.`,
    };
  } else {
    action = failed ? 'tool.error' : 'tool.result';
    resource = `tool:${tool}`;
    outcome = failed ? 'error' : 'success';
    payload = failed
      ? {
          ...common,
          tool,
          error: { code: 'E_TIMEOUT', message: `tool "${tool}" timed out after 30s\nstderr: ${snippet}` },
          retryable: true,
          durationMs: 30_000,
        }
      : {
          ...common,
          tool,
          result: { matches: r(40), output: snippet, truncated: r(3) === 0, path },
          tokens: { in: 100 + r(4000), out: 10 + r(900) },
          durationMs: 1 + r(2500),
        };
  }
  return { id: entryId(i, ms, r), occurredAt: new Date(ms), tenantId, actor, action, resource, outcome, payload };
}

export function makeEntries(n: number): BenchEntry[] {
  const out = new Array<BenchEntry>(n);
  for (let i = 0; i < n; i++) out[i] = makeEntry(i);
  return out;
}

/** The entry as JSON, as the app would see it (the memory target's "entry's JSON size"). */
export function entryJsonBytes(e: BenchEntry): number {
  return Buffer.byteLength(JSON.stringify(e));
}

/** One line of the rows file the Rust ceiling reads. */
export function ceilingLine(e: BenchEntry): string {
  return JSON.stringify([
    e.id,
    e.occurredAt.getTime(),
    e.tenantId,
    e.actor,
    e.action,
    e.resource,
    e.outcome,
    JSON.stringify(e.payload),
  ]);
}

/**
 * A value in COPY text format: backslash, newline, carriage return and tab escaped; NULL as \N.
 * (Other characters, non-ASCII included, are sent as they are: the connection is UTF8.)
 */
export function copyText(v: string | null): string {
  if (v === null) return '\\N';
  return /[\\\n\r\t]/.test(v) ? v.replace(/[\\\n\r\t]/g, copyEscape) : v;
}

function copyEscape(c: string): string {
  switch (c) {
    case '\\':
      return '\\\\';
    case '\n':
      return '\\n';
    case '\r':
      return '\\r';
    default:
      return '\\t';
  }
}
