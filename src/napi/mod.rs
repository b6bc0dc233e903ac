//! The JavaScript surface: the `AuditBatcher` class and the types `index.d.ts` declares.
//!
//! This module only translates: JavaScript values in, core calls, JavaScript values and errors out.

mod convert;
mod errors;

use std::collections::HashMap;
use std::sync::Arc;

use napi::bindgen_prelude::{Either, Null, PromiseRaw, Unknown};
use napi::Env;
use napi_derive::napi;

use self::convert::{ConvertError, SinkChoice};
use self::errors::{Extra, Kind};
use crate::batcher::{Batcher, FlushError, FlushOutcome, LogError};
use crate::entry::{Entry, TextField};
use crate::pg::PgSink;
use crate::sink::{MemorySink, Sink, WriteError};

/// The sink chosen by the `sink` option.
enum AnySink {
    Postgres(Box<PgSink>),
    Memory(MemorySink),
}

impl Sink for AnySink {
    async fn write(&self, batch: &[Entry]) -> Result<(), WriteError> {
        match self {
            AnySink::Postgres(s) => s.write(batch).await,
            AnySink::Memory(s) => s.write(batch).await,
        }
    }

    async fn close(&self) {
        match self {
            AnySink::Postgres(s) => s.close().await,
            AnySink::Memory(s) => s.close().await,
        }
    }
}

/// Options for `new AuditBatcher(options)`. Unknown keys are refused, so a misspelt option fails loudly.
// Declares the TypeScript type; the constructor reads the object field by field (convert.rs) so that each
// error names its option.
#[allow(dead_code)]
#[napi(object)]
pub struct AuditBatcherOptions {
    /// PostgreSQL connection string: a `postgres://user:password@host:port/db` URL or a libpq
    /// `key=value` string. Required unless `sink` is `'memory'`. The password never appears in errors.
    pub connection_string: Option<String>,
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
    /// Most rows in one INSERT statement; a larger flush is written as several statements, in order.
    /// Default 1000, at most 100000.
    pub max_batch_rows: Option<u32>,
    /// How long opening a connection may take before the flush fails, in milliseconds. Default 10000.
    pub connect_timeout_ms: Option<u32>,
    /// `'postgres'` (default) or `'memory'`: keep written entries in memory, readable with
    /// `memoryEntries()`, for your own tests. Same validation, ordering and API; no database.
    #[napi(ts_type = "'postgres' | 'memory'")]
    pub sink: Option<String>,
}

/// One audit entry, as given to `log()`.
// Declares the TypeScript type; `log()` reads the object field by field (convert.rs).
#[allow(dead_code)]
#[napi(object)]
pub struct AuditEntry {
    /// What happened, e.g. `'tool.call'`. Required, non-empty.
    pub action: String,
    /// Who did it, e.g. `'user:42'`.
    pub actor: Option<String>,
    /// The tenant it happened in.
    pub tenant_id: Option<String>,
    /// What it was done to, e.g. `'file:/a'`.
    pub resource: Option<String>,
    /// How it ended, e.g. `'success'`.
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
}

/// What `flush()` resolves with.
#[napi(object)]
pub struct FlushResult {
    /// Entries that were buffered when `flush()` was called and are now committed (some possibly by a
    /// concurrent flush that shared the statement).
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

/// Counters since the batcher was made. At every moment `logged === written + buffered`.
#[napi(object)]
pub struct AuditStats {
    /// Entries accepted and not yet written (being written included).
    pub buffered: i64,
    /// Memory those entries hold, in bytes.
    pub buffered_bytes: i64,
    /// Entries `log()` accepted.
    pub logged: i64,
    /// Entries committed to the table.
    pub written: i64,
    /// Entries in which a NUL character or lone surrogate was replaced with U+FFFD.
    pub sanitized: i64,
    /// INSERT statements that committed.
    pub batches: i64,
    /// Flush attempts that failed (their entries stayed buffered).
    pub failed_flushes: i64,
    /// The last flush failure, or null.
    #[napi(ts_type = "AuditLastError | null")]
    pub last_error: Either<AuditLastError, Null>,
}

/// An entry held by the memory sink, as written.
#[napi(object)]
pub struct MemoryEntry {
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

/// Records audit entries cheaply on the hot path and writes them to PostgreSQL in batches.
///
/// - `log()` is synchronous, does no I/O, and checks the entry at once.
/// - Entries are written in `log()` order, each batch in one `INSERT ... ON CONFLICT (id) DO NOTHING`,
///   so a retry never stores an entry twice.
/// - A failed flush keeps its entries buffered, ahead of newer ones, for the next flush.
#[napi]
pub struct AuditBatcher {
    core: Arc<Batcher<AnySink>>,
}

fn utc(t: crate::entry::Timestamp) -> chrono::DateTime<chrono::Utc> {
    chrono::DateTime::from_timestamp_micros(t.micros()).unwrap_or_default()
}

fn flush_error(env: &Env, e: FlushError, what: &str) -> napi::Error {
    match e {
        FlushError::Closed => errors::reject(
            env,
            Kind::Error,
            errors::CLOSED,
            &format!("audit-batcher: {what} after close()"),
            &[],
        ),
        FlushError::Failed { cause, pending } => {
            let mut extra = vec![Extra::Num("pending", pending as f64)];
            if let Some(code) = &cause.sqlstate {
                extra.push(Extra::Str("sqlstate", code));
            }
            errors::reject(
                env,
                Kind::Error,
                errors::FLUSH_FAILED,
                &format!(
                    "audit-batcher: {what} failed: {cause}; entries still buffered: {pending}"
                ),
                &extra,
            )
        }
    }
}

#[napi]
impl AuditBatcher {
    /// Checks the options and prepares the pool; no connection is opened until the first write.
    /// Throws a TypeError with `code: 'ERR_AUDIT_INVALID_OPTIONS'` naming the bad option.
    #[napi(
        constructor,
        catch_unwind,
        ts_args_type = "options: AuditBatcherOptions"
    )]
    pub fn new(env: Env, options: Unknown) -> napi::Result<Self> {
        let invalid = |option: &str, reason: &str| {
            errors::throw(
                &env,
                Kind::TypeError,
                errors::INVALID_OPTIONS,
                &format!("audit-batcher: option `{option}` {reason}"),
            )
        };
        let options = match convert::options_from_js(&options) {
            Ok(o) => o,
            Err(ConvertError::Invalid(e)) => return Err(invalid(&e.option, &e.reason)),
            Err(ConvertError::Js(e)) => return Err(e),
        };
        let sink = match options.sink {
            SinkChoice::Memory => AnySink::Memory(MemorySink::new()),
            SinkChoice::Postgres(settings) => match PgSink::new(*settings) {
                Ok(sink) => AnySink::Postgres(Box::new(sink)),
                Err((option, reason)) => return Err(invalid(option, &reason)),
            },
        };
        Ok(AuditBatcher {
            core: Arc::new(Batcher::new(sink, options.batcher)),
        })
    }

    /// Buffers one entry and returns its id. Synchronous: no I/O, never waits for the database.
    ///
    /// Throws a TypeError with `code: 'ERR_AUDIT_INVALID_ENTRY'` naming the field when the entry is
    /// invalid (nothing is buffered then, and nothing buffered is touched), and an Error with
    /// `code: 'ERR_AUDIT_CLOSED'` after `close()`.
    #[napi(catch_unwind, ts_args_type = "entry: AuditEntry")]
    pub fn log(&self, env: Env, entry: Unknown) -> napi::Result<String> {
        if self.core.is_closing() {
            return Err(errors::throw(
                &env,
                Kind::Error,
                errors::CLOSED,
                "audit-batcher: log() after close()",
            ));
        }
        let draft = match convert::entry_from_js(&env, &entry) {
            Ok(d) => d,
            Err(ConvertError::Invalid(e)) => {
                return Err(errors::throw(
                    &env,
                    Kind::TypeError,
                    errors::INVALID_ENTRY,
                    &format!("audit-batcher: {e}"),
                ))
            }
            Err(ConvertError::Js(e)) => return Err(e),
        };
        match self.core.log(draft) {
            Ok(id) => Ok(id.to_string()),
            Err(LogError::Invalid(e)) => Err(errors::throw(
                &env,
                Kind::TypeError,
                errors::INVALID_ENTRY,
                &format!("audit-batcher: {e}"),
            )),
            Err(LogError::Closed) => Err(errors::throw(
                &env,
                Kind::Error,
                errors::CLOSED,
                "audit-batcher: log() after close()",
            )),
        }
    }

    /// Entries accepted and not yet written (those being written included).
    #[napi(getter, catch_unwind)]
    pub fn pending(&self) -> i64 {
        self.core.pending() as i64
    }

    /// Writes everything buffered at the time of the call, in one INSERT statement (more only past
    /// `maxBatchRows`), on the addon's own threads. Entries logged meanwhile wait for the next flush;
    /// concurrent flushes share statements and never write an entry twice.
    ///
    /// Rejects with `code: 'ERR_AUDIT_FLUSH_FAILED'` (and `sqlstate`, `pending`) when the write fails; the
    /// entries stay buffered, in order, and the next flush retries them.
    #[napi(catch_unwind, ts_return_type = "Promise<FlushResult>")]
    pub fn flush<'env>(&self, env: &'env Env) -> napi::Result<PromiseRaw<'env, FlushResult>> {
        let core = self.core.clone();
        // The flush's extent is fixed here, synchronously: entries logged after this call wait for the next.
        let ticket = core.begin_flush();
        let work = async move {
            Ok(match ticket {
                Ok(ticket) => ticket.run(&core).await,
                Err(e) => Err(e),
            })
        };
        env.spawn_future_with_callback(work, |env, result| {
            result
                .map(FlushResult::from)
                .map_err(|e| flush_error(env, e, "flush()"))
        })
    }

    /// Creates the default table, its schema and its `(tenant_id, occurred_at)` index when missing.
    /// Idempotent, and safe to call from several processes at once. Does nothing with the memory sink.
    #[napi(catch_unwind, ts_return_type = "Promise<void>")]
    pub fn ensure_schema<'env>(&self, env: &'env Env) -> napi::Result<PromiseRaw<'env, ()>> {
        let core = self.core.clone();
        env.spawn_future_with_callback(
            async move {
                Ok(match core.sink() {
                    AnySink::Postgres(pg) => pg.ensure_schema().await,
                    AnySink::Memory(_) => Ok(()),
                })
            },
            |env, result| {
                result.map_err(|cause| {
                    let mut extra = Vec::new();
                    if let Some(code) = &cause.sqlstate {
                        extra.push(Extra::Str("sqlstate", code));
                    }
                    errors::reject(
                        env,
                        Kind::Error,
                        errors::FLUSH_FAILED,
                        &format!("audit-batcher: ensureSchema() failed: {cause}"),
                        &extra,
                    )
                })
            },
        )
    }

    /// Refuses new entries, writes what is buffered, then ends the pool. Idempotent.
    ///
    /// If the final flush fails, it rejects with `code: 'ERR_AUDIT_FLUSH_FAILED'` and `pending` (the
    /// entries not written, still held); the pool stays open and calling `close()` again retries.
    #[napi(catch_unwind, ts_return_type = "Promise<void>")]
    pub fn close<'env>(&self, env: &'env Env) -> napi::Result<PromiseRaw<'env, ()>> {
        let core = self.core.clone();
        // From this call on, log() and flush() refuse.
        let ticket = core.begin_close();
        env.spawn_future_with_callback(async move { Ok(ticket.run(&core).await) }, |env, result| {
            result.map_err(|e| flush_error(env, e, "close()"))
        })
    }

    /// A snapshot of the counters.
    #[napi(catch_unwind)]
    pub fn stats(&self) -> AuditStats {
        let s = self.core.stats();
        AuditStats {
            buffered: s.buffered as i64,
            buffered_bytes: s.buffered_bytes as i64,
            logged: s.logged as i64,
            written: s.written as i64,
            sanitized: s.sanitized as i64,
            batches: s.batches as i64,
            failed_flushes: s.failed_flushes as i64,
            last_error: match s.last_error {
                Some((e, at)) => Either::A(AuditLastError {
                    message: e.message,
                    sqlstate: e.sqlstate,
                    at: utc(at),
                }),
                None => Either::B(Null),
            },
        }
    }

    /// The entries written so far with `sink: 'memory'`, in write order. Throws with
    /// `code: 'ERR_AUDIT_NOT_MEMORY_SINK'` on a PostgreSQL batcher.
    #[napi(catch_unwind)]
    pub fn memory_entries(&self, env: Env) -> napi::Result<Vec<MemoryEntry>> {
        let AnySink::Memory(memory) = self.core.sink() else {
            return Err(errors::throw(
                &env,
                Kind::Error,
                errors::NOT_MEMORY_SINK,
                "audit-batcher: memoryEntries() needs sink: 'memory'",
            ));
        };
        Ok(memory
            .entries()
            .iter()
            .map(|e| MemoryEntry {
                id: e.id().to_string(),
                occurred_at: utc(e.occurred_at()),
                tenant_id: e.text(TextField::TenantId).map(str::to_owned),
                actor: e.text(TextField::Actor).map(str::to_owned),
                action: e.action().to_owned(),
                resource: e.text(TextField::Resource).map(str::to_owned),
                outcome: e.text(TextField::Outcome).map(str::to_owned),
                payload: serde_json::from_str(e.payload_json()).unwrap_or(serde_json::Value::Null),
            })
            .collect())
    }
}
