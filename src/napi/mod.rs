//! The JavaScript surface: the `AuditBatcher` class and the types `index.d.ts` declares.
//!
//! This module only translates: JavaScript values in, core calls, JavaScript values and errors out.
//! Options are read by `options`, entries by `convert`; every error is a `Failure` (`errors`); every promise
//! is made and settled by `settle`.

mod convert;
mod errors;
mod events;
mod exit;
mod floor;
mod options;
mod settle;
mod spool_tools;
mod types;
mod worker;
mod worker_options;

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use futures_util::FutureExt;
use napi::bindgen_prelude::{spawn, PromiseRaw, Unknown};
use napi::{Env, ValueType};
use napi_derive::napi;
use parking_lot::Mutex;

use self::convert::EntryError;
use self::errors::Failure;
use self::events::JsObserver;
use self::exit::ExitHook;
use self::options::OptionError;
pub use self::options::{AuditBatcherOptions, CloseOptions};
use self::settle::{settled, Completion, Outcome, Settler, Value};
pub use self::types::*;
use crate::batcher::{
    run_background, run_replay, run_spool_sync, Batcher, Disposition, FlushError, FlushOutcome,
    Logged, Stats,
};
use crate::entry::EntryDraft;
use crate::options::{Config, InvalidOption};
use crate::sink::AnySink;
use crate::spool::Spool;

/// Records audit entries cheaply on the hot path and writes them to PostgreSQL in batches.
///
/// - `log()` is synchronous, does no I/O, and checks the entry at once.
/// - Entries are written in `log()` order, each batch in one statement; a retry carries
///   `ON CONFLICT (id) DO NOTHING`, so it never stores an entry twice.
/// - A failed flush keeps its entries buffered, ahead of newer ones, for the next flush.
/// - With `redis` and `connectionString` both, critical entries and `write()` go straight to the table
///   (their own buffer, in their own order) while the others go to the stream: the two paths are not
///   ordered with each other. `flush()`, `close()`, `pending`, `stats()` and `metricsText()` cover both.
#[napi]
pub struct AuditBatcher {
    core: Arc<Batcher<AnySink>>,
    /// A Redis producer given a `connectionString` too: the batcher over the PostgreSQL table that
    /// critical entries and `write()` go to directly.
    direct: Option<Arc<Batcher<AnySink>>>,
    close_timeout: Duration,
    /// Settles the promises of `flush()`, `write()`, `close()` and `ensureSchema()`; made at the first.
    settler: OnceLock<Settler>,
    /// The batchers' places on the `flushOnExit` list, until `close()`.
    exit: Mutex<Vec<ExitHook>>,
}

type Core = Arc<Batcher<AnySink>>;

/// Adds the pending entries of another batcher to a flush failure's count.
fn with_pending(e: FlushError, more: usize) -> FlushError {
    match e {
        FlushError::Failed { cause, pending } => FlushError::Failed {
            cause,
            pending: pending + more,
        },
        closed => closed,
    }
}

/// Spawns `work` on the addon's runtime and reports its outcome to `completion`; a panic in it is
/// reported as a failure rather than leaving the promise (and the process) waiting.
fn run(completion: Completion, work: impl Future<Output = Outcome> + Send + 'static) {
    spawn(async move {
        let outcome = AssertUnwindSafe(work)
            .catch_unwind()
            .await
            .unwrap_or_else(|_| Err(Failure::internal("the operation panicked")));
        completion.complete(outcome)
    });
}

/// The labels given to a `metricsText()`, sorted, each name checked (a bad one throws
/// `ERR_AUDIT_INVALID_OPTIONS` naming it).
fn metric_labels(
    env: &Env,
    labels: Option<std::collections::HashMap<String, String>>,
) -> napi::Result<Vec<(String, String)>> {
    let mut labels: Vec<(String, String)> = labels.unwrap_or_default().into_iter().collect();
    labels.sort();
    for (name, _) in &labels {
        if let Err(reason) = crate::metrics::check_label_name(name) {
            let e = InvalidOption::new(format!("labels.{name}"), reason);
            return Err(Failure::invalid_option(&e).throw(env, None));
        }
    }
    Ok(labels)
}

/// The outcomes of several batchers' flushes, added up.
fn sum_outcomes(outcomes: &[FlushOutcome]) -> FlushOutcome {
    FlushOutcome {
        written: outcomes.iter().map(|o| o.written).sum(),
        pending: outcomes.iter().map(|o| o.pending).sum(),
    }
}

/// The results of the same operation on several batchers: all their values (merged by `merge`), or the
/// first failure, its `pending` counting the entries every batcher still holds.
fn combine<T>(
    results: Vec<(Result<T, FlushError>, Core)>,
    merge: impl FnOnce(&[T]) -> T,
) -> Result<T, FlushError> {
    let mut values = Vec::with_capacity(results.len());
    let mut failure = None;
    let mut others_pending = 0;
    for (result, core) in results {
        match result {
            Ok(v) => {
                values.push(v);
                others_pending += core.pending();
            }
            Err(e) if failure.is_none() => failure = Some(e),
            Err(_) => others_pending += core.pending(),
        }
    }
    match failure {
        Some(e) => Err(with_pending(e, others_pending)),
        None if values.len() == 1 => Ok(values.pop().expect("one value")),
        None => Ok(merge(&values)),
    }
}

fn throw_option_error(env: &Env, e: OptionError) -> napi::Error {
    Failure::invalid_option(&e.invalid).throw(env, e.cause)
}

fn entry_failure(e: &EntryError) -> Failure {
    Failure::invalid_entry(&e.invalid)
}

#[napi]
impl AuditBatcher {
    /// Checks the options and prepares the pool; no connection is opened until the first write. Starts
    /// the background writer (full batches; write-behind when `flushIntervalMs` or `flushAtEntries` is
    /// set).
    /// Throws a TypeError with `code: 'ERR_AUDIT_INVALID_OPTIONS'` naming the bad option.
    #[napi(
        constructor,
        catch_unwind,
        ts_args_type = "options: AuditBatcherOptions"
    )]
    pub fn new(env: Env, options: Unknown) -> napi::Result<Self> {
        worker_options::check_nested::<worker_options::RedisOptions>(&env, &options, "redis")
            .map_err(|e| throw_option_error(&env, e))?;
        let mut options: AuditBatcherOptions =
            options::read(&env, &options, "options").map_err(|e| throw_option_error(&env, e))?;
        let callbacks = options.take_callbacks();
        let invalid = |e: InvalidOption| Failure::invalid_option(&e).throw(&env, None);
        let config = Config::try_from(&options).map_err(invalid)?;
        let background = config.background();
        let Config {
            sink,
            direct,
            batcher,
            flush_on_exit,
            close_timeout,
            high_water_mark,
            spool,
            ..
        } = config;
        let sink = AnySink::new(sink).map_err(invalid)?;
        let direct_sink = direct.map(AnySink::new).transpose().map_err(invalid)?;
        let observer = Arc::new(JsObserver::new(&env, callbacks)?);
        let observed = !observer.is_empty();
        // The direct batcher takes the same buffer settings; its entries are all critical, so its bounds
        // never refuse one.
        let direct = direct_sink.map(|sink| {
            let direct = Batcher::new(sink, batcher.clone());
            Arc::new(if observed {
                direct.with_observer(Box::new(observer.clone()), None)
            } else {
                direct
            })
        });
        let mut batcher = Batcher::new(sink, batcher);
        if observed || high_water_mark.is_some() {
            batcher = batcher.with_observer(Box::new(observer.clone()), high_water_mark);
        }
        let spool_interval = spool.as_ref().map(|s| s.config.sync_interval);
        if let Some(settings) = spool {
            // Reads the directory's listing only: the entries of dead processes are read later, off the
            // event loop, by the replay.
            let (spool, recovery) = Spool::open(&settings.dir, settings.config).map_err(|e| {
                invalid(InvalidOption::new(
                    "spool.dir",
                    format!("cannot be used: {e}"),
                ))
            })?;
            batcher = batcher.with_spool(spool, recovery);
        }
        let core = Arc::new(batcher);
        if let AnySink::Redis(stream) = core.sink() {
            if observed {
                let weak = Arc::downgrade(&core);
                stream.on_high_water(Box::new(move |length| {
                    if let Some(core) = weak.upgrade() {
                        let stats = core.stats();
                        observer.on_stream_high_water(length, stats.buffered, stats.buffered_bytes);
                    }
                }));
            }
        }
        spawn(run_background(Arc::downgrade(&core), background));
        if let Some(direct) = &direct {
            // The direct batcher's entries are critical, each flushed at once; this retries failures
            // (with write-behind) and writes full batches.
            spawn(run_background(Arc::downgrade(direct), background));
        }
        if let Some(interval) = spool_interval {
            spawn(run_spool_sync(Arc::downgrade(&core), interval));
            spawn(run_replay(Arc::downgrade(&core)));
        }
        let mut exit = Vec::new();
        if flush_on_exit {
            for core in std::iter::once(&core).chain(&direct) {
                exit.push(exit::install(&env, core, close_timeout)?);
            }
        }
        Ok(AuditBatcher {
            core,
            direct,
            close_timeout,
            settler: OnceLock::new(),
            exit: Mutex::new(exit),
        })
    }

    /// Takes one entry and returns its id. Synchronous: no I/O, never waits for the database.
    ///
    /// The entry is buffered, unless sampling leaves it out or the buffer is full under
    /// `onBufferFull: 'drop'` (both counted in `stats()`). A `critical` entry is always buffered and
    /// starts a flush of everything up to it at once.
    ///
    /// Throws a TypeError with `code: 'ERR_AUDIT_INVALID_ENTRY'` naming the field when the entry is
    /// invalid or reading it threw (the exception is the error's `cause`; nothing is buffered then, and
    /// nothing buffered is touched), an Error with `code: 'ERR_AUDIT_BUFFER_FULL'` when the buffer is full
    /// under `onBufferFull: 'reject'`, and an Error with `code: 'ERR_AUDIT_CLOSED'` after `close()`.
    #[napi(catch_unwind, ts_args_type = "entry: AuditEntry")]
    pub fn log(&self, env: Env, entry: Unknown) -> napi::Result<String> {
        if self.core.is_closing() {
            return Err(Failure::closed("log()").throw(&env, None));
        }
        let draft = convert::entry_from_js(&env, &entry, self.core.max_entry_bytes());
        self.accept(&env, draft)
    }

    /// `log()` with the entry's fields passed one by one and the payload already `JSON.stringify`'d (or,
    /// when it has no JSON form, the payload itself): the path `index.js` takes, so that V8 reads the
    /// properties instead of napi. Not part of the API.
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
            return Err(Failure::closed("log()").throw(&env, None));
        }
        let payload_json = match payload_json.get_type()? {
            ValueType::Undefined => None,
            _ => Some(payload_json),
        };
        let draft = convert::entry_from_fields(
            &convert::EntryFields {
                action,
                text: [tenant_id, actor, resource, outcome],
                payload_json,
                id,
                occurred_at,
                critical,
            },
            self.core.max_entry_bytes(),
        );
        self.accept(&env, draft)
    }

    /// Throws the typed error for an entry whose field `field` threw `cause` when `index.js` read it (a
    /// getter, a Proxy trap, a `toJSON`). Not part of the API.
    #[napi(catch_unwind, skip_typescript)]
    pub fn entry_threw(&self, env: Env, field: String, cause: Unknown) -> napi::Result<()> {
        // Re-throw the value so that the error is made the one way every other read error is.
        let _ = env.throw(cause);
        let e = EntryError::threw(&env, field);
        Err(entry_failure(&e).throw(&env, e.cause))
    }

    /// Writes one entry, together with everything buffered before it, and resolves with its id once it is
    /// committed. The entry is treated as critical: never sampled away nor dropped. With `redis` and
    /// `connectionString`, it is committed to the table directly, with the critical entries before it (not
    /// with the entries bound for the stream); with `redis` only, it is in the stream when this resolves.
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
        let mut draft: EntryDraft =
            match convert::entry_from_js(env, &entry, self.core.max_entry_bytes()) {
                Ok(d) => d,
                Err(e) => return settled(env, Err(entry_failure(&e)), e.cause),
            };
        draft.critical = true;
        let critical = self.critical_core();
        let (id, seq) = match critical.log(draft) {
            Ok(Logged {
                id,
                disposition: Disposition::Buffered { seq },
            }) => (id, seq),
            // Critical entries are always buffered; this arm only keeps the match total without a panic.
            Ok(_) => {
                let failure = Failure::internal("write() entry was not buffered");
                return settled(env, Err(failure), None);
            }
            Err(e) => return settled(env, Err(Failure::log(&e, "write()")), None),
        };
        let ticket = critical.ticket_through(seq);
        let (promise, completion) = self.settler(env)?.promise(env)?;
        let core = critical.clone();
        run(completion, async move {
            match ticket.run(&core).await {
                Ok(_) => Ok(Value::Id(id)),
                Err(e) => Err(Failure::flush(&e, "write()")),
            }
        });
        Ok(promise)
    }

    /// Entries accepted and not yet written (those being written included).
    #[napi(getter, catch_unwind)]
    pub fn pending(&self) -> i64 {
        self.cores().map(|c| c.pending()).sum::<usize>() as i64
    }

    /// Writes everything buffered at the time of the call, in one INSERT statement (more only past
    /// `maxBatchRows`), on the addon's own threads. Entries logged meanwhile wait for the next flush;
    /// concurrent flushes, and the background writer, share statements and never write an entry twice.
    ///
    /// Rejects with `code: 'ERR_AUDIT_FLUSH_FAILED'` (and `sqlstate`, `pending`) when the write fails; the
    /// entries stay buffered, in order, and the next flush retries them.
    #[napi(catch_unwind, ts_return_type = "Promise<FlushResult>")]
    pub fn flush<'env>(&self, env: &'env Env) -> napi::Result<PromiseRaw<'env, FlushResult>> {
        // The flush's extent is fixed here, synchronously: entries logged after this call wait for the next.
        let mut tickets = Vec::with_capacity(2);
        for core in self.cores() {
            match core.begin_flush() {
                Ok(ticket) => tickets.push((core.clone(), ticket)),
                Err(e) => return settled(env, Err(Failure::flush(&e, "flush()")), None),
            }
        }
        let known: Option<Vec<FlushOutcome>> = tickets
            .iter()
            .map(|(core, ticket)| core.outcome_if_settled(ticket))
            .collect();
        if let Some(outcomes) = known {
            return settled(env, Ok(Value::Flush(sum_outcomes(&outcomes))), None);
        }
        let (promise, completion) = self.settler(env)?.promise(env)?;
        run(completion, async move {
            let runs = tickets
                .into_iter()
                .map(|(core, ticket)| async move { (ticket.run(&core).await, core) });
            let results = futures_util::future::join_all(runs).await;
            combine(results, sum_outcomes)
                .map(Value::Flush)
                .map_err(|e| Failure::flush(&e, "flush()"))
        });
        Ok(promise)
    }

    /// Creates the default table, its schema and its `(tenant_id, occurred_at)` index when missing.
    /// Idempotent, and safe to call from several processes at once. Does nothing with the memory sink, nor
    /// for a Redis producer without `connectionString` (its workers write the table).
    #[napi(catch_unwind, ts_return_type = "Promise<void>")]
    pub fn ensure_schema<'env>(&self, env: &'env Env) -> napi::Result<PromiseRaw<'env, ()>> {
        let (promise, completion) = self.settler(env)?.promise(env)?;
        let core = self.critical_core().clone();
        run(completion, async move {
            let result = match core.sink() {
                AnySink::Postgres(pg) => pg.ensure_schema().await,
                AnySink::Memory(_) | AnySink::Redis(_) => Ok(()),
            };
            result.map(|()| Value::Unit).map_err(|cause| {
                Failure::write_failed(&cause, &format!("ensureSchema() failed: {cause}"), None)
            })
        });
        Ok(promise)
    }

    /// Stops the background writer, refuses new entries, writes what is buffered (retrying with backoff
    /// for at most `timeoutMs`, default `closeTimeoutMs`), then ends the pool and removes the
    /// `flushOnExit` listeners.
    ///
    /// If entries could not be written in time it still ends the pool, and rejects with
    /// `code: 'ERR_AUDIT_FLUSH_FAILED'` and `pending` (their count); they stay readable with
    /// `bufferedEntries()`, so nothing is thrown away unseen. At the deadline every pending `flush()` and
    /// `write()` settles too. Later calls report the same outcome.
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
        let given: Option<CloseOptions> = match options {
            Some(v) if !matches!(v.get_type()?, ValueType::Undefined | ValueType::Null) => {
                match options::read(env, &v, "options") {
                    Ok(o) => Some(o),
                    Err(e) => {
                        return settled(env, Err(Failure::invalid_option(&e.invalid)), e.cause)
                    }
                }
            }
            _ => None,
        };
        let timeout = match options::close_timeout(given.as_ref(), self.close_timeout) {
            Ok(t) => t,
            Err(e) => return settled(env, Err(Failure::invalid_option(&e)), None),
        };
        for hook in std::mem::take(&mut *self.exit.lock()) {
            // A process object whose listener methods were replaced must not stop the close.
            let _ = hook.remove(env);
        }
        // From this call on, log() and flush() refuse and the background writer stops.
        let deadline = tokio::time::Instant::now() + timeout;
        let tickets: Vec<_> = self
            .cores()
            .map(|core| (core.clone(), core.begin_close(deadline)))
            .collect();
        let (promise, completion) = self.settler(env)?.promise(env)?;
        run(completion, async move {
            let runs = tickets
                .into_iter()
                .map(|(core, ticket)| async move { (ticket.run(&core).await, core) });
            let results = futures_util::future::join_all(runs).await;
            combine(results, |_| ())
                .map(|()| Value::Unit)
                .map_err(|e| Failure::flush(&e, "close()"))
        });
        Ok(promise)
    }

    /// A snapshot of the counters and recent write figures. With `redis` and `connectionString`, the
    /// counters, `buffered` and `lastError` cover both paths (the stream's and the direct writes to the
    /// table); `flushLatencyMs` and `batchSize` are the stream path's.
    #[napi(catch_unwind)]
    pub fn stats(&self) -> AuditStats {
        self.combined_stats().into()
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
        let labels = metric_labels(&env, labels)?;
        Ok(crate::metrics::render(&self.combined_stats(), &labels))
    }

    /// Copies of the entries waiting in the buffer, oldest first (not those being written at this very
    /// moment). After a `close()` that could not write everything, these are the entries left unwritten.
    /// With `redis` and `connectionString`, the stream's entries, then the critical entries bound for
    /// the table.
    #[napi(catch_unwind)]
    pub fn buffered_entries(&self) -> Vec<AuditRecord> {
        self.cores()
            .flat_map(|core| core.buffered_entries())
            .map(|e| AuditRecord::from(&e))
            .collect()
    }

    /// The entries written so far with `sink: 'memory'`, in write order. Throws with
    /// `code: 'ERR_AUDIT_NOT_MEMORY_SINK'` on a PostgreSQL batcher.
    #[napi(catch_unwind)]
    pub fn memory_entries(&self, env: Env) -> napi::Result<Vec<AuditRecord>> {
        let AnySink::Memory(memory) = self.core.sink() else {
            return Err(Failure::not_memory_sink("memoryEntries()").throw(&env, None));
        };
        Ok(memory.entries().iter().map(AuditRecord::from).collect())
    }
}

impl AuditBatcher {
    /// The batcher's promise settler, made at the first call that needs it. JavaScript thread only.
    fn settler(&self, env: &Env) -> napi::Result<&Settler> {
        Settler::get_or_make(&self.settler, env)
    }

    /// The batcher (one, or the stream's then the direct one).
    fn cores(&self) -> impl Iterator<Item = &Core> {
        std::iter::once(&self.core).chain(&self.direct)
    }

    /// Where critical entries and `write()` go: the direct batcher when there is one.
    fn critical_core(&self) -> &Core {
        self.direct.as_ref().unwrap_or(&self.core)
    }

    /// The stats of both batchers together (see [`Stats::add`]): the percentiles and the spool figures
    /// are the main (stream) batcher's (the direct batcher has no spool: `spool` is refused with `redis`
    /// and `connectionString`).
    fn combined_stats(&self) -> Stats {
        let mut s = self.core.stats();
        if let Some(direct) = &self.direct {
            s.add(direct.stats());
        }
        s
    }

    /// Buffers a converted entry (or throws its conversion error), and starts the flush of a critical one
    /// (in the direct batcher when there is one).
    fn accept(&self, env: &Env, draft: Result<EntryDraft, EntryError>) -> napi::Result<String> {
        let draft = draft.map_err(|e| entry_failure(&e).throw(env, e.cause))?;
        let critical = draft.critical;
        let at_bound = !critical && self.stream_at_bound();
        let core = if critical {
            self.critical_core()
        } else {
            &self.core
        };
        let logged = core
            .log_bounded(draft, at_bound)
            .map_err(|e| Failure::log(&e, "log()").throw(env, None))?;
        if let (true, Disposition::Buffered { seq }) = (critical, logged.disposition) {
            // Failures are counted in stats(); the entries stay buffered for the next flush.
            if let Some(flush) = core.critical_flush(seq) {
                spawn(flush);
            }
        }
        Ok(logged.id.to_string())
    }

    /// With `redis.maxLength`: whether the stream(s), with what is buffered here, reach the bound. While
    /// they do, the length is asked again a few times a second, so that the producer learns when workers
    /// drained the stream (a producer at its bound writes nothing, and learns the length only so).
    fn stream_at_bound(&self) -> bool {
        let AnySink::Redis(stream) = self.core.sink() else {
            return false;
        };
        if !stream.at_bound(self.core.pending()) {
            return false;
        }
        if stream.refresh_due(100) {
            let core = self.core.clone();
            spawn(async move {
                if let AnySink::Redis(stream) = core.sink() {
                    // A failure leaves the last known length; the next refresh asks again.
                    let _ = stream.refresh_length().await;
                }
            });
        }
        true
    }
}
