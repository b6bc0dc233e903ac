//! The plain-object types of the JavaScript API, as `index.d.ts` declares them.

use napi::bindgen_prelude::{Either, Null};
use napi_derive::napi;

use crate::batcher::{FlushOutcome, Percentiles, SpoolReport, Stats};
use crate::entry::{Entry, TextField, Timestamp};

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
    /// Entries accepted, not yet written (those being written included): held in memory, and with a
    /// spool past the memory bound also those held in the spool only (`spool.spilled`).
    pub buffered: i64,
    /// Memory the entries held in memory take, in bytes.
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
    /// The durable spool's figures, or null without the `spool` option.
    #[napi(ts_type = "SpoolStats | null")]
    pub spool: Either<SpoolStats, Null>,
}

/// What the durable spool holds and did.
#[napi(object)]
pub struct SpoolStats {
    /// Bytes of segments on disk, this process's and those of dead processes not yet written
    /// (segments are preallocated whole).
    pub bytes: i64,
    /// Segments on disk (the same).
    pub segments: i64,
    /// Entries appended to the spool.
    pub appended: i64,
    /// Entries read back, at start, from the spools of processes that are gone.
    pub recovered: i64,
    /// Of those, entries written to the table (not counted in `logged`).
    pub replayed: i64,
    /// Of those, entries the table refused, moved to the dead-letter table.
    pub replay_dead_lettered: i64,
    /// Damaged records skipped while reading those spools (their segments are kept in
    /// `<dir>/quarantine/`).
    pub damaged: i64,
    /// Torn last records (a process killed mid-append) cut off while reading those spools.
    pub torn_tails: i64,
    /// Appends refused at `spool.maxBytes` (`onBufferFull` applied).
    pub full: i64,
    /// Spool operations that failed on disk trouble.
    pub errors: i64,
    /// Entries accepted while the spool could not take them: held in memory only.
    pub unspooled: i64,
    /// Entries held in the spool only, at this moment: they came while memory was at its bound
    /// (`maxBufferedBytes` or `maxBufferedEntries`) and are read back, in order, as the table takes the
    /// entries before them. Counted in `buffered`, not in `bufferedBytes`.
    pub spilled: i64,
    /// Successful syncs (fdatasync) of the spool.
    pub syncs: i64,
    /// Failed syncs; their entries were appended again to a new segment.
    pub sync_failures: i64,
    /// How long the last sync took, in milliseconds, or null before the first.
    pub last_sync_ms: Option<f64>,
    /// The last disk error, in words, or null.
    pub last_error: Option<String>,
}

impl From<SpoolReport> for SpoolStats {
    fn from(r: SpoolReport) -> Self {
        let s = r.spool;
        SpoolStats {
            bytes: s.bytes as i64,
            segments: s.segments as i64,
            appended: s.appended as i64,
            recovered: s.recovered as i64,
            replayed: r.replayed as i64,
            replay_dead_lettered: r.replay_dead_lettered as i64,
            damaged: s.damaged as i64,
            torn_tails: s.torn_tails as i64,
            full: s.full as i64,
            errors: s.errors as i64,
            unspooled: r.unspooled as i64,
            spilled: r.spilled as i64,
            syncs: s.syncs as i64,
            sync_failures: s.sync_failures as i64,
            last_sync_ms: s.last_sync.map(|d| d.as_secs_f64() * 1000.0),
            last_error: s.last_error,
        }
    }
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
            spool: match s.spool {
                Some(r) => Either::A(r.into()),
                None => Either::B(Null),
            },
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
