//! The JavaScript surface: the `AuditBatcher` class and the types `index.d.ts` declares.
//!
//! This module only translates: JavaScript values in, core calls, JavaScript values and errors out.

mod convert;
mod errors;
mod events;
mod exit;
mod settle;
mod types;

use std::panic::AssertUnwindSafe;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use futures_util::FutureExt;
use napi::bindgen_prelude::{spawn, PromiseRaw, ToNapiValue, Unknown};
use napi::{Env, ValueType};
use napi_derive::napi;

use self::convert::{ConvertError, SinkChoice};
use self::errors::Kind;
use self::settle::{Completion, Outcome, Resolves, Settler};
pub use self::types::*;
use crate::batcher::{
    run_background, Batcher, Disposition, FlushError, FlushTicket, LogError, Logged,
};
use crate::entry::{Entry, EntryDraft, InvalidEntry};
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

    async fn dead_letter(&self, entry: &Entry, cause: &WriteError) -> Result<(), WriteError> {
        match self {
            AnySink::Postgres(s) => s.dead_letter(entry, cause).await,
            AnySink::Memory(s) => s.dead_letter(entry, cause).await,
        }
    }

    async fn close(&self) {
        match self {
            AnySink::Postgres(s) => s.close().await,
            AnySink::Memory(s) => s.close().await,
        }
    }
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
    close_timeout: Duration,
    /// Settles `flush()` and `write()` promises; made at the first of them.
    settler: OnceLock<Settler>,
}

/// The error object a failed flush rejects with (`ERR_AUDIT_CLOSED`, or `ERR_AUDIT_FLUSH_FAILED` with
/// `sqlstate` and `pending`).
fn flush_error_object<'a>(
    env: &'a Env,
    e: FlushError,
    what: &str,
) -> napi::Result<napi::bindgen_prelude::Object<'a>> {
    match e {
        FlushError::Closed => errors::make(
            env,
            Kind::Error,
            errors::CLOSED,
            &format!("audit-batcher: {what} after close()"),
            &[],
        ),
        FlushError::Failed { cause, pending } => errors::write_failed(
            env,
            &format!("audit-batcher: {what} failed: {cause}; entries still buffered: {pending}"),
            cause.sqlstate.as_deref(),
            Some(pending),
        ),
    }
}

fn flush_error(env: &Env, e: FlushError, what: &str) -> napi::Error {
    errors::rejection(env, flush_error_object(env, e, what))
}

/// How a `flush()` or `write()` promise settles: `{ written, pending }` or the entry's id, or the error
/// object of the flush.
fn render_outcome(
    env: &Env,
    resolves: Resolves,
    outcome: Outcome,
) -> Result<napi::sys::napi_value, napi::sys::napi_value> {
    use napi::bindgen_prelude::JsValue;
    // SAFETY (both): JavaScript thread, live environment.
    let thrown = |e: napi::Error| unsafe { napi::JsError::from(e).into_value(env.raw()) };
    let what = match resolves {
        Resolves::FlushResult => "flush()",
        Resolves::EntryId(_) => "write()",
    };
    match (outcome, resolves) {
        (Ok(o), Resolves::FlushResult) => {
            unsafe { FlushResult::to_napi_value(env.raw(), FlushResult::from(o)) }.map_err(thrown)
        }
        (Ok(_), Resolves::EntryId(id)) => {
            unsafe { String::to_napi_value(env.raw(), id.to_string()) }.map_err(thrown)
        }
        (Err(e), _) => match flush_error_object(env, e, what) {
            Ok(obj) => Err(obj.raw()),
            Err(e) => Err(thrown(e)),
        },
    }
}

/// Runs `ticket` on the addon's runtime and reports its outcome to `completion`; a panic in the flush
/// is reported as a failure rather than leaving the promise (and the process) waiting.
fn run_ticket(core: Arc<Batcher<AnySink>>, ticket: FlushTicket, completion: Completion) {
    spawn(async move {
        let outcome = AssertUnwindSafe(ticket.run(&core))
            .catch_unwind()
            .await
            .unwrap_or_else(|_| {
                Err(FlushError::Failed {
                    cause: WriteError::new("internal error: the flush panicked"),
                    pending: core.pending(),
                })
            });
        completion.complete(outcome)
    });
}

fn invalid_entry_message(e: &InvalidEntry) -> String {
    format!("audit-batcher: {e}")
}

/// A promise that rejects with a new error object.
fn rejected<'env, T: ToNapiValue + Send + 'static>(
    env: &'env Env,
    kind: Kind,
    code: &'static str,
    message: String,
) -> napi::Result<PromiseRaw<'env, T>> {
    env.spawn_future_with_callback(async { Ok(()) }, move |env, ()| {
        Err::<T, _>(errors::reject(env, kind, code, &message, &[]))
    })
}

#[napi]
impl AuditBatcher {
    /// Checks the options and prepares the pool; no connection is opened until the first write. Starts
    /// the background writer when `flushIntervalMs` or `flushAtEntries` is set.
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
        let options_value = options;
        let options = match convert::options_from_js(&options_value) {
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
        let observer = match events::from_options(&env, &options_value) {
            Ok(o) => o,
            Err((option, e)) => return Err(invalid(&option, &e.reason)),
        };
        let mut batcher = Batcher::new(sink, options.batcher);
        if !observer.is_empty() || options.high_water_mark.is_some() {
            batcher = batcher.with_observer(Box::new(observer), options.high_water_mark);
        }
        let core = Arc::new(batcher);
        if let Some(background) = options.background {
            spawn(run_background(Arc::downgrade(&core), background));
        }
        if options.flush_on_exit {
            exit::install(&env, core.clone(), options.close_timeout)?;
        }
        Ok(AuditBatcher {
            core,
            close_timeout: options.close_timeout,
            settler: OnceLock::new(),
        })
    }

    /// Takes one entry and returns its id. Synchronous: no I/O, never waits for the database.
    ///
    /// The entry is buffered, unless sampling leaves it out or the buffer is full under
    /// `onBufferFull: 'drop'` (both counted in `stats()`). A `critical` entry is always buffered and
    /// starts a flush of everything up to it at once.
    ///
    /// Throws a TypeError with `code: 'ERR_AUDIT_INVALID_ENTRY'` naming the field when the entry is
    /// invalid (nothing is buffered then, and nothing buffered is touched), an Error with
    /// `code: 'ERR_AUDIT_BUFFER_FULL'` when the buffer is full under `onBufferFull: 'reject'`, and an Error
    /// with `code: 'ERR_AUDIT_CLOSED'` after `close()`.
    #[napi(catch_unwind, ts_args_type = "entry: AuditEntry")]
    pub fn log(&self, env: Env, entry: Unknown) -> napi::Result<String> {
        if self.core.is_closing() {
            return Err(log_after_close(&env));
        }
        let draft = convert::entry_from_js(&env, &entry);
        self.accept(&env, draft)
    }

    /// `log()` with the entry's fields passed one by one and the payload already `JSON.stringify`'d: the
    /// path `index.js` takes, so that V8 reads the properties instead of napi. Not part of the API.
    #[allow(clippy::too_many_arguments)]
    #[napi(catch_unwind, skip_typescript)]
    pub fn log_fields(
        &self,
        env: Env,
        action: Unknown,
        tenant_id: Unknown,
        actor: Unknown,
        resource: Unknown,
        outcome: Unknown,
        payload_json: Unknown,
        id: Unknown,
        occurred_at: Unknown,
        critical: Unknown,
    ) -> napi::Result<String> {
        if self.core.is_closing() {
            return Err(log_after_close(&env));
        }
        let payload_json = match payload_json.get_type()? {
            ValueType::Undefined => None,
            _ => Some(payload_json),
        };
        let draft = convert::entry_from_fields(&convert::EntryFields {
            action,
            text: [tenant_id, actor, resource, outcome],
            payload_json,
            id,
            occurred_at,
            critical,
        });
        self.accept(&env, draft)
    }

    /// Writes one entry, together with everything buffered before it, and resolves with its id once it is
    /// committed. The entry is treated as critical: never sampled away nor dropped.
    ///
    /// Rejects with a TypeError `ERR_AUDIT_INVALID_ENTRY` for an invalid entry, `ERR_AUDIT_CLOSED` after
    /// `close()`, and `ERR_AUDIT_FLUSH_FAILED` when the write fails (the entry stays buffered and a later
    /// flush writes it).
    #[napi(
        catch_unwind,
        ts_args_type = "entry: AuditEntry",
        ts_return_type = "Promise<string>"
    )]
    pub fn write<'env>(
        &self,
        env: &'env Env,
        entry: Unknown,
    ) -> napi::Result<PromiseRaw<'env, String>> {
        let mut draft: EntryDraft = match convert::entry_from_js(env, &entry) {
            Ok(d) => d,
            Err(ConvertError::Invalid(e)) => {
                return rejected(
                    env,
                    Kind::TypeError,
                    errors::INVALID_ENTRY,
                    invalid_entry_message(&e),
                )
            }
            Err(ConvertError::Js(e)) => return Err(e),
        };
        draft.critical = true;
        let (id, seq) = match self.core.log(draft) {
            Ok(Logged {
                id,
                disposition: Disposition::Buffered { seq },
            }) => (id, seq),
            // Critical entries are always buffered; this arm only keeps the match total without a panic.
            Ok(_) => {
                return rejected(
                    env,
                    Kind::Error,
                    errors::FLUSH_FAILED,
                    "audit-batcher: write() entry was not buffered".to_owned(),
                )
            }
            Err(LogError::Invalid(e)) => {
                return rejected(
                    env,
                    Kind::TypeError,
                    errors::INVALID_ENTRY,
                    invalid_entry_message(&e),
                )
            }
            Err(LogError::Closed | LogError::BufferFull { .. }) => {
                return rejected(
                    env,
                    Kind::Error,
                    errors::CLOSED,
                    "audit-batcher: write() after close()".to_owned(),
                )
            }
        };
        let ticket = self.core.ticket_through(seq);
        let (promise, completion) = self.settler(env)?.promise(env, Resolves::EntryId(id))?;
        run_ticket(self.core.clone(), ticket, completion);
        Ok(promise)
    }

    /// Entries accepted and not yet written (those being written included).
    #[napi(getter, catch_unwind)]
    pub fn pending(&self) -> i64 {
        self.core.pending() as i64
    }

    /// Writes everything buffered at the time of the call, in one INSERT statement (more only past
    /// `maxBatchRows`), on the addon's own threads. Entries logged meanwhile wait for the next flush;
    /// concurrent flushes, and the background writer, share statements and never write an entry twice.
    ///
    /// Rejects with `code: 'ERR_AUDIT_FLUSH_FAILED'` (and `sqlstate`, `pending`) when the write fails; the
    /// entries stay buffered, in order, and the next flush retries them.
    #[napi(catch_unwind, ts_return_type = "Promise<FlushResult>")]
    pub fn flush<'env>(&self, env: &'env Env) -> napi::Result<PromiseRaw<'env, FlushResult>> {
        let settler = self.settler(env)?;
        // The flush's extent is fixed here, synchronously: entries logged after this call wait for the next.
        let ticket = match self.core.begin_flush() {
            Ok(ticket) => ticket,
            Err(e) => return settler.settled(env, Err(e)),
        };
        if let Some(outcome) = self.core.outcome_if_settled(&ticket) {
            return settler.settled(env, Ok(outcome));
        }
        let (promise, completion) = settler.promise(env, Resolves::FlushResult)?;
        run_ticket(self.core.clone(), ticket, completion);
        Ok(promise)
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
                    errors::rejection(
                        env,
                        errors::write_failed(
                            env,
                            &format!("audit-batcher: ensureSchema() failed: {cause}"),
                            cause.sqlstate.as_deref(),
                            None,
                        ),
                    )
                })
            },
        )
    }

    /// Stops the background writer, refuses new entries, writes what is buffered (retrying with backoff
    /// for at most `timeoutMs`, default `closeTimeoutMs`), then ends the pool.
    ///
    /// If entries could not be written in time it still ends the pool, and rejects with
    /// `code: 'ERR_AUDIT_FLUSH_FAILED'` and `pending` (their count); they stay readable with
    /// `bufferedEntries()`, so nothing is thrown away unseen. Later calls report the same outcome.
    #[napi(
        catch_unwind,
        ts_args_type = "options?: CloseOptions",
        ts_return_type = "Promise<void>"
    )]
    pub fn close<'env>(
        &self,
        env: &'env Env,
        options: Option<Unknown>,
    ) -> napi::Result<PromiseRaw<'env, ()>> {
        let timeout = match convert::close_timeout_from_js(options.as_ref(), self.close_timeout) {
            Ok(t) => t,
            Err(ConvertError::Invalid(e)) => {
                return rejected(
                    env,
                    Kind::TypeError,
                    errors::INVALID_OPTIONS,
                    format!("audit-batcher: close() option `{}` {}", e.option, e.reason),
                )
            }
            Err(ConvertError::Js(e)) => return Err(e),
        };
        let core = self.core.clone();
        // From this call on, log() and flush() refuse and the background writer stops.
        let ticket = core.begin_close(tokio::time::Instant::now() + timeout);
        env.spawn_future_with_callback(async move { Ok(ticket.run(&core).await) }, |env, result| {
            result.map_err(|e| flush_error(env, e, "close()"))
        })
    }

    /// A snapshot of the counters and recent write figures.
    #[napi(catch_unwind)]
    pub fn stats(&self) -> AuditStats {
        self.core.stats().into()
    }

    /// The counters in Prometheus text exposition format (version 0.0.4), for a `/metrics` route:
    /// `audit_batcher_entries_total{state="written"}` and the other states, buffer gauges, statement and
    /// failure counters, and the `audit_batcher_statement_duration_seconds` histogram. `labels` are added to
    /// every sample (e.g. `{ batcher: 'api' }`); a bad label name throws `ERR_AUDIT_INVALID_OPTIONS`.
    #[napi(catch_unwind, ts_args_type = "labels?: Record<string, string>")]
    pub fn metrics_text(
        &self,
        env: Env,
        labels: Option<std::collections::HashMap<String, String>>,
    ) -> napi::Result<String> {
        let mut labels: Vec<(String, String)> = labels.unwrap_or_default().into_iter().collect();
        labels.sort();
        for (name, _) in &labels {
            let mut chars = name.chars();
            let valid = chars
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
                && !name.starts_with("__")
                && !["state", "le"].contains(&name.as_str());
            if !valid {
                return Err(errors::throw(
                    &env,
                    Kind::TypeError,
                    errors::INVALID_OPTIONS,
                    &format!(
                        "audit-batcher: metricsText() label {name:?} is not a valid Prometheus label name (or is reserved)"
                    ),
                ));
            }
        }
        Ok(crate::metrics::render(&self.core.stats(), &labels))
    }

    /// Copies of the entries waiting in the buffer, oldest first (not those being written at this very
    /// moment). After a `close()` that could not write everything, these are the entries left unwritten.
    #[napi(catch_unwind)]
    pub fn buffered_entries(&self) -> Vec<AuditRecord> {
        self.core
            .buffered_entries()
            .iter()
            .map(AuditRecord::from)
            .collect()
    }

    /// The entries written so far with `sink: 'memory'`, in write order. Throws with
    /// `code: 'ERR_AUDIT_NOT_MEMORY_SINK'` on a PostgreSQL batcher.
    #[napi(catch_unwind)]
    pub fn memory_entries(&self, env: Env) -> napi::Result<Vec<AuditRecord>> {
        let AnySink::Memory(memory) = self.core.sink() else {
            return Err(errors::throw(
                &env,
                Kind::Error,
                errors::NOT_MEMORY_SINK,
                "audit-batcher: memoryEntries() needs sink: 'memory'",
            ));
        };
        Ok(memory.entries().iter().map(AuditRecord::from).collect())
    }
}

impl AuditBatcher {
    /// The batcher's promise settler, made at the first call that needs it. JavaScript thread only.
    fn settler(&self, env: &Env) -> napi::Result<&Settler> {
        if let Some(settler) = self.settler.get() {
            return Ok(settler);
        }
        let made = Settler::new(env, render_outcome)?;
        Ok(self.settler.get_or_init(|| made))
    }

    /// Buffers a converted entry (or throws its conversion error), and starts the flush of a critical one.
    fn accept(
        &self,
        env: &Env,
        draft: Result<EntryDraft, ConvertError<InvalidEntry>>,
    ) -> napi::Result<String> {
        let draft = match draft {
            Ok(d) => d,
            Err(ConvertError::Invalid(e)) => {
                return Err(errors::throw(
                    env,
                    Kind::TypeError,
                    errors::INVALID_ENTRY,
                    &invalid_entry_message(&e),
                ))
            }
            Err(ConvertError::Js(e)) => return Err(e),
        };
        let critical = draft.critical;
        match self.core.log(draft) {
            Ok(Logged {
                id,
                disposition: Disposition::Buffered { seq },
            }) if critical => {
                let ticket = self.core.ticket_through(seq);
                let core = self.core.clone();
                // Failures are counted in stats(); the entries stay buffered for the next flush.
                spawn(async move {
                    let _ = ticket.run(&core).await;
                });
                Ok(id.to_string())
            }
            Ok(logged) => Ok(logged.id.to_string()),
            Err(LogError::Invalid(e)) => Err(errors::throw(
                env,
                Kind::TypeError,
                errors::INVALID_ENTRY,
                &invalid_entry_message(&e),
            )),
            Err(LogError::BufferFull { entries, bytes }) => Err(errors::throw(
                env,
                Kind::Error,
                errors::BUFFER_FULL,
                &format!(
                    "audit-batcher: buffer full ({entries} entries, {bytes} bytes held); entry not taken"
                ),
            )),
            Err(LogError::Closed) => Err(log_after_close(env)),
        }
    }
}

fn log_after_close(env: &Env) -> napi::Error {
    errors::throw(
        env,
        Kind::Error,
        errors::CLOSED,
        "audit-batcher: log() after close()",
    )
}
