//! The plain-object types of the JavaScript API, as `index.d.ts` declares them.

use std::collections::HashMap;

use napi::bindgen_prelude::{Either, Null};
use napi_derive::napi;

use crate::batcher::{FlushOutcome, Percentiles, Stats};
use crate::entry::{Entry, TextField, Timestamp};

/// Options for `new AuditBatcher(options)`. Unknown keys are refused, so a misspelt option fails loudly.
// Declares the TypeScript type; the constructor reads the object field by field (convert.rs) so that each
// error names its option.
#[allow(dead_code)]
#[napi(object)]
pub struct AuditBatcherOptions {
    /// PostgreSQL connection string: a `postgres://user:password@host:port/db` URL or a libpq
    /// `key=value` string. Required unless `sink` is `'memory'`. The password never appears in errors.
    pub connection_string: Option<String>,
    /// Path of a PEM file of CA certificates that the server's TLS certificate must chain to (as
    /// `sslrootcert=` in the connection string, which also works; if both are given they must agree).
    /// `'system'` trusts the well-known public CAs and needs `sslmode=verify-full` (its default then).
    /// The connection string's `sslmode` says what is checked: `disable` (no TLS), `prefer` (default:
    /// TLS when the server offers it), `require` (TLS or fail), `verify-ca` (TLS, a trusted chain),
    /// `verify-full` (also the host name). With this file, `prefer` and `require` check the chain too;
    /// `verify-ca`/`verify-full` without it trust the well-known public CAs. Read once, by the
    /// constructor.
    pub ssl_root_cert: Option<String>,
    /// Target table, optionally schema-qualified (`'audit.events'`). Default `'audit_log'`. Names are
    /// plain identifiers (a letter or `_`, then letters, digits, `_`, `$`), used exactly as written.
    pub table: Option<String>,
    /// Column name per entry field, for an existing table: `{ actor: 'user_id', occurredAt: 'createdAt' }`.
    /// Fields not named keep the default column (`id`, `occurred_at`, `tenant_id`, `actor`, `action`,
    /// `resource`, `outcome`, `payload`).
    #[napi(
        ts_type = "Partial<Record<'id' | 'occurredAt' | 'tenantId' | 'actor' | 'action' | 'resource' | 'outcome' | 'payload', string>>"
    )]
    pub columns: Option<HashMap<String, String>>,
    /// Most connections in the pool. Default 2.
    pub pool_size: Option<u32>,
    /// Most rows in one statement; a larger flush is written as several statements, in order, back to
    /// back. Default 1000, at most 100000.
    pub max_batch_rows: Option<u32>,
    /// How long opening a connection may take before the write fails, in milliseconds. Default 10000.
    pub connect_timeout_ms: Option<u32>,
    /// Prepare the `INSERT` once per connection instead of having the server parse and plan it again with
    /// every flush: about 0.1 ms less per statement (a 5-row INSERT on the development machine: 0.36–0.41
    /// ms prepared, 0.46–0.60 ms unnamed). Default false. Leave it off behind a transaction-pooling
    /// PgBouncer older than 1.21 (or any pooler without prepared-statement support): there a connection's
    /// prepared statement may be missing, or be another client's.
    pub prepared_statements: Option<bool>,
    /// `'postgres'` (default) or `'memory'`: keep written entries in memory, readable with
    /// `memoryEntries()`, for your own tests. Same validation, ordering and API; no database.
    #[napi(ts_type = "'postgres' | 'memory'")]
    pub sink: Option<String>,
    /// Write-behind: flush in the background this often (milliseconds) while anything is buffered.
    /// Setting this or `flushAtEntries` starts the background writer; `flush()` still works and shares
    /// its statements.
    pub flush_interval_ms: Option<u32>,
    /// Write-behind: flush in the background as soon as this many entries are buffered; a burst is
    /// written in `maxBatchRows` batches back to back, with whatever arrives meanwhile, until the buffer
    /// is empty.
    pub flush_at_entries: Option<u32>,
    /// Share of non-critical entries kept, from 0 to 1. Default 1 (keep all). Entries sampled away are
    /// counted in `stats().sampledOut`.
    pub sample_rate: Option<f64>,
    /// Rates for particular actions, overriding `sampleRate`: `{ 'file.read': 0.1 }`.
    pub sample_rates: Option<HashMap<String, f64>>,
    /// The most entries held in memory (being written included). Default 100000. Critical entries are
    /// taken beyond it.
    pub max_buffered_entries: Option<f64>,
    /// The most bytes of entries held in memory. Default 67108864 (64 MiB). Critical entries are taken
    /// beyond it.
    pub max_buffered_bytes: Option<f64>,
    /// The largest entry `log()` takes, in bytes (its text, payload JSON included, plus 72). Larger ones
    /// throw `ERR_AUDIT_INVALID_ENTRY`. Default 1048576 (1 MiB), at most 512 MiB.
    pub max_entry_bytes: Option<f64>,
    /// What `log()` does with a non-critical entry when the buffer is full: `'reject'` (default) throws
    /// `ERR_AUDIT_BUFFER_FULL` and takes nothing; `'drop'` discards it and counts it in `stats().dropped`.
    #[napi(ts_type = "'reject' | 'drop'")]
    pub on_buffer_full: Option<String>,
    /// Flush and close when the process is about to exit (`beforeExit`) or receives SIGTERM. Adds no
    /// handle that keeps the process alive. Default false.
    pub flush_on_exit: Option<bool>,
    /// How long `close()` may take when its call does not say (milliseconds). Default 10000.
    pub close_timeout_ms: Option<u32>,
    /// Where entries the table refuses (a CHECK, a value too long, a trigger that raises, a foreign key)
    /// are kept, with the error and SQLSTATE. Default `<table>_dead_letter`, in the table's schema;
    /// `ensureSchema()` creates it.
    pub dead_letter_table: Option<String>,
    /// Called after each INSERT statement commits, with its rows and duration. Runs on the JavaScript
    /// thread, later; never keeps the process alive; what it throws is ignored.
    #[napi(ts_type = "(event: FlushEvent) => void")]
    pub on_flush: Option<serde_json::Value>,
    /// Called when a write fails, with an Error (`code: 'ERR_AUDIT_FLUSH_FAILED'`, `sqlstate`, `pending`).
    /// Runs on the JavaScript thread, later; never keeps the process alive; what it throws is ignored.
    #[napi(
        ts_type = "(error: Error & { code: string; sqlstate?: string; pending: number }) => void"
    )]
    pub on_error: Option<serde_json::Value>,
    /// Called for each entry the table refused, after it was stored in the dead-letter table.
    #[napi(ts_type = "(event: DeadLetterEvent) => void")]
    pub on_dead_letter: Option<serde_json::Value>,
    /// Called once each time the buffer reaches `highWaterMark` entries.
    #[napi(ts_type = "(event: HighWaterEvent) => void")]
    pub on_high_water: Option<serde_json::Value>,
    /// Buffered entries at which `onHighWater` is called.
    pub high_water_mark: Option<u32>,
}

/// One audit entry, as given to `log()` or `write()`. `null` and `undefined` mean absent for every optional
/// field.
// Declares the TypeScript type; `log()` reads the object field by field (convert.rs).
#[allow(dead_code)]
#[napi(object)]
pub struct AuditEntry {
    /// What happened, e.g. `'tool.call'`. Required, non-empty.
    pub action: String,
    /// Who did it, e.g. `'user:42'`.
    #[napi(ts_type = "string | null | undefined")]
    pub actor: Option<String>,
    /// The tenant it happened in.
    #[napi(ts_type = "string | null | undefined")]
    pub tenant_id: Option<String>,
    /// What it was done to, e.g. `'file:/a'`.
    #[napi(ts_type = "string | null | undefined")]
    pub resource: Option<String>,
    /// How it ended, e.g. `'success'`.
    #[napi(ts_type = "string | null | undefined")]
    pub outcome: Option<String>,
    /// Any JSON-serialisable value (stored as `jsonb`); default `{}`. Serialised with `JSON.stringify` at
    /// `log()`, so later changes to the object are not recorded.
    #[napi(ts_type = "unknown")]
    pub payload: Option<serde_json::Value>,
    /// A UUID in canonical form; default: a new UUIDv7, increasing in `log()` order.
    pub id: Option<String>,
    /// When it happened: a Date, an ISO 8601 string with an offset, or epoch milliseconds. Default: the
    /// moment `log()` was called.
    #[napi(ts_type = "Date | string | number")]
    pub occurred_at: Option<String>,
    /// A critical entry is never sampled away nor dropped at the buffer's bound, and its `log()` starts a
    /// flush of everything up to and including it at once. Not stored.
    pub critical: Option<bool>,
}

/// What `flush()` resolves with.
#[napi(object)]
pub struct FlushResult {
    /// Entries that were buffered when `flush()` was called and are now committed (some possibly by a
    /// concurrent flush or the background writer that shared the statement).
    pub written: i64,
    /// Entries still buffered: logged after the flush began.
    pub pending: i64,
}

impl From<FlushOutcome> for FlushResult {
    fn from(o: FlushOutcome) -> Self {
        FlushResult {
            written: o.written as i64,
            pending: o.pending as i64,
        }
    }
}

/// Options for `close()`.
#[allow(dead_code)]
#[napi(object)]
pub struct CloseOptions {
    /// How long the final flush may take, retries included, in milliseconds. Default: the
    /// `closeTimeoutMs` option (10000).
    pub timeout_ms: Option<u32>,
}

/// The last failure, without secrets.
#[napi(object)]
pub struct AuditLastError {
    pub message: String,
    /// PostgreSQL's SQLSTATE, when the server gave one.
    pub sqlstate: Option<String>,
    /// When it happened.
    pub at: chrono::DateTime<chrono::Utc>,
}

/// The median, 99th percentile and maximum over the last 1024 writes (0 before the first).
#[napi(object)]
pub struct AuditPercentiles {
    pub p50: f64,
    pub p99: f64,
    pub max: f64,
}

impl From<Percentiles> for AuditPercentiles {
    fn from(p: Percentiles) -> Self {
        AuditPercentiles {
            p50: p.p50,
            p99: p.p99,
            max: p.max,
        }
    }
}

/// Counters since the batcher was made. Every entry `log()` accepted is in exactly one of buffered,
/// written, dead-lettered, sampled out or dropped:
/// `logged === buffered + written + deadLettered + sampledOut + dropped`.
#[napi(object)]
pub struct AuditStats {
    /// Entries held in memory, not yet written (those being written included).
    pub buffered: i64,
    /// Memory those entries hold, in bytes.
    pub buffered_bytes: i64,
    /// Entries `log()` and `write()` accepted.
    pub logged: i64,
    /// Entries committed to the table.
    pub written: i64,
    /// Entries the table refused (a constraint, a type, a trigger), moved to the dead-letter table.
    pub dead_lettered: i64,
    /// Entries not kept by sampling.
    pub sampled_out: i64,
    /// Entries discarded at the buffer's bound (`onBufferFull: 'drop'`).
    pub dropped: i64,
    /// `log()` calls refused at the buffer's bound (`onBufferFull: 'reject'`); not in `logged`.
    pub rejected: i64,
    /// Critical entries accepted.
    pub critical: i64,
    /// Entries in which a NUL character or lone surrogate was replaced with U+FFFD.
    pub sanitized: i64,
    /// INSERT statements that committed.
    pub batches: i64,
    /// Write attempts that failed (their entries stayed buffered).
    pub failed_flushes: i64,
    /// Attempts the background writer or `close()` made after a failure.
    pub retries: i64,
    /// The last write failure, or null.
    #[napi(ts_type = "AuditLastError | null")]
    pub last_error: Either<AuditLastError, Null>,
    /// Duration of one INSERT statement, in milliseconds, over the last 1024.
    pub flush_latency_ms: AuditPercentiles,
    /// Rows per INSERT statement over the last 1024.
    pub batch_size: AuditPercentiles,
}

pub fn utc(t: Timestamp) -> chrono::DateTime<chrono::Utc> {
    chrono::DateTime::from_timestamp_micros(t.micros()).unwrap_or_default()
}

impl From<Stats> for AuditStats {
    fn from(s: Stats) -> Self {
        AuditStats {
            buffered: s.buffered as i64,
            buffered_bytes: s.buffered_bytes as i64,
            logged: s.logged as i64,
            written: s.written as i64,
            dead_lettered: s.dead_lettered as i64,
            sampled_out: s.sampled_out as i64,
            dropped: s.dropped as i64,
            rejected: s.rejected as i64,
            critical: s.critical as i64,
            sanitized: s.sanitized as i64,
            batches: s.batches as i64,
            failed_flushes: s.failed_flushes as i64,
            retries: s.retries as i64,
            last_error: match s.last_error {
                Some((e, at)) => Either::A(AuditLastError {
                    message: e.message,
                    sqlstate: e.sqlstate,
                    at: utc(at),
                }),
                None => Either::B(Null),
            },
            flush_latency_ms: s.flush_latency_ms.into(),
            batch_size: s.batch_size.into(),
        }
    }
}

/// An entry as stored: what `memoryEntries()` and `bufferedEntries()` return.
#[napi(object)]
pub struct AuditRecord {
    pub id: String,
    pub occurred_at: chrono::DateTime<chrono::Utc>,
    pub tenant_id: Option<String>,
    pub actor: Option<String>,
    pub action: String,
    pub resource: Option<String>,
    pub outcome: Option<String>,
    #[napi(ts_type = "unknown")]
    pub payload: serde_json::Value,
}

impl From<&Entry> for AuditRecord {
    fn from(e: &Entry) -> Self {
        AuditRecord {
            id: e.id().to_string(),
            occurred_at: utc(e.occurred_at()),
            tenant_id: e.text(TextField::TenantId).map(str::to_owned),
            actor: e.text(TextField::Actor).map(str::to_owned),
            action: e.action().to_owned(),
            resource: e.text(TextField::Resource).map(str::to_owned),
            outcome: e.text(TextField::Outcome).map(str::to_owned),
            payload: serde_json::from_str(e.payload_json()).unwrap_or(serde_json::Value::Null),
        }
    }
}
