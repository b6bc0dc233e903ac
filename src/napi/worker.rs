//! The `AuditWorker` class: a member of a pool writing a Redis stream's entries to PostgreSQL (see
//! [`crate::redis`] for the design and guarantees). This module only translates; the worker is
//! [`crate::redis::Worker`].

use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

use napi::bindgen_prelude::{PromiseRaw, Unknown};
use napi::Env;
use napi_derive::napi;
use parking_lot::Mutex;

use super::errors::Failure;
use super::options;
use super::settle::{Settler, Value};
use super::worker_options::{check_nested, AuditWorkerOptions, WorkerRedisOptions, WorkerSettings};
use super::{run, throw_option_error};
use crate::options::InvalidOption;
use crate::pg::PgSink;
use crate::redis::{Worker, WorkerStats};

/// How often the Redis-side figures of `stats()` (stream length, pending, consumers, lag) are refreshed.
const STATS_REFRESH: Duration = Duration::from_secs(1);

/// Where a worker is in its life.
enum Life {
    /// Made, not started: what `start()` needs.
    Ready(Box<WorkerSettings>),
    /// `start()` is under way.
    Starting,
    Running(Arc<Worker<PgSink>>),
    /// Stopped, or its start failed.
    Done,
}

/// A pool member that reads audit entries from a Redis stream in a consumer group and writes them to
/// PostgreSQL, through the direct mode's path (COPY or INSERT ... ON CONFLICT (id) DO NOTHING, poison-row
/// bisection, dead-letter table).
///
/// - An entry is acknowledged (and removed from the stream) only after the statement that wrote it
///   committed, or after it was dead-lettered; entries held by a worker that died are claimed by another
///   after `redis.claimIdleMs`. So every entry in the stream reaches the table once.
/// - A stream entry that cannot be decoded goes to the dead-letter table; it never blocks the stream.
/// - PostgreSQL down: nothing is acknowledged, the batch in hand is retried with backoff; Redis down:
///   reads and acknowledgements are retried on connections that reopen by themselves.
/// - It never keeps the Node process alive by itself, neither while running nor after `stop()`: its
///   reads run on the addon's threads and hold no handle of the event loop (only a promise of
///   `start()`/`stop()` does, until it settles). A process whose only work is the worker must hold the
///   event loop itself (a server, a timer: `bin/worker.js` keeps a timer until it stops).
#[napi]
pub struct AuditWorker {
    life: Arc<tokio::sync::Mutex<Life>>,
    /// The running worker, for `stats()` (which must not wait for the lifecycle lock).
    running: Arc<Mutex<Option<Arc<Worker<PgSink>>>>>,
    /// The Redis-side figures as last asked, refreshed every second while running.
    snapshot: Arc<Mutex<WorkerStats>>,
    consumer: Arc<Mutex<Option<String>>>,
    settler: OnceLock<Settler>,
}

#[napi]
impl AuditWorker {
    /// Checks the options (the same table options as `AuditBatcher`, plus `redis`); connects to nothing
    /// until `start()`. Throws a TypeError with `code: 'ERR_AUDIT_INVALID_OPTIONS'` naming the bad option
    /// (`redis.shards`, `connectionString`, ...); no message holds a password.
    #[napi(
        constructor,
        catch_unwind,
        ts_args_type = "options: AuditWorkerOptions"
    )]
    pub fn new(env: Env, options: Unknown) -> napi::Result<Self> {
        check_nested::<WorkerRedisOptions>(&env, &options, "redis")
            .map_err(|e| throw_option_error(&env, e))?;
        let options: AuditWorkerOptions =
            options::read(&env, &options, "options").map_err(|e| throw_option_error(&env, e))?;
        let invalid = |e: InvalidOption| Failure::invalid_option(&e).throw(&env, None);
        let settings = WorkerSettings::try_from(&options).map_err(invalid)?;
        // Checks the connection string (and TLS settings) now, as AuditBatcher does; connects later.
        PgSink::new(settings.pg.clone())
            .map_err(|(option, reason)| invalid(InvalidOption::new(option, reason)))?;
        Ok(AuditWorker {
            life: Arc::new(tokio::sync::Mutex::new(Life::Ready(Box::new(settings)))),
            running: Arc::new(Mutex::new(None)),
            snapshot: Arc::new(Mutex::new(WorkerStats::default())),
            consumer: Arc::new(Mutex::new(None)),
            settler: OnceLock::new(),
        })
    }

    /// Connects to Redis, creates the consumer group on every shard's stream when missing, and starts
    /// reading. Resolves once it is reading. Rejects with `code: 'ERR_AUDIT_WORKER_FAILED'` when Redis
    /// cannot be reached or the group cannot be made (later outages are waited out, not reported here),
    /// or when called twice. PostgreSQL is first reached at the first batch.
    #[napi(catch_unwind, ts_return_type = "Promise<void>")]
    pub fn start<'env>(&self, env: &'env Env) -> napi::Result<PromiseRaw<'env, ()>> {
        let (promise, completion) = self.settler(env)?.promise(env)?;
        let life = self.life.clone();
        let running = self.running.clone();
        let snapshot = self.snapshot.clone();
        let consumer = self.consumer.clone();
        run(completion, async move {
            let mut state = life.lock().await;
            let settings = match std::mem::replace(&mut *state, Life::Starting) {
                Life::Ready(settings) => settings,
                other => {
                    *state = other;
                    return Err(Failure::worker_failed(
                        "start(): the worker was already started (or stopped)",
                    ));
                }
            };
            let WorkerSettings { worker, pg } = *settings;
            let sink = match PgSink::new(pg) {
                Ok(sink) => sink,
                Err((option, reason)) => {
                    *state = Life::Done;
                    return Err(Failure::invalid_option(&InvalidOption::new(option, reason)));
                }
            };
            match Worker::start(worker, sink).await {
                Ok(worker) => {
                    let worker = Arc::new(worker);
                    *consumer.lock() = Some(worker.consumer().to_owned());
                    *snapshot.lock() = worker.stats().await;
                    *running.lock() = Some(worker.clone());
                    tokio::spawn(refresh_stats(Arc::downgrade(&worker), snapshot));
                    *state = Life::Running(worker);
                    Ok(Value::Unit)
                }
                Err((option, reason)) => {
                    *state = Life::Done;
                    Err(Failure::worker_failed(&format!(
                        "start() failed: redis.{option}: {reason}"
                    )))
                }
            }
        });
        Ok(promise)
    }

    /// Stops reading, lets the read under way finish, commits and acknowledges the batch in hand
    /// (retrying for up to `stopTimeoutMs`), closes the pool and leaves the group; then nothing of the
    /// worker remains. Rejects with `code: 'ERR_AUDIT_WORKER_FAILED'` saying how many entries were left
    /// unacknowledged (they stay pending in Redis, for another worker to claim). Waits for a `start()`
    /// under way. Later calls, and a call before `start()`, resolve at once.
    #[napi(catch_unwind, ts_return_type = "Promise<void>")]
    pub fn stop<'env>(&self, env: &'env Env) -> napi::Result<PromiseRaw<'env, ()>> {
        let (promise, completion) = self.settler(env)?.promise(env)?;
        let life = self.life.clone();
        let running = self.running.clone();
        let snapshot = self.snapshot.clone();
        run(completion, async move {
            let mut state = life.lock().await;
            let Life::Running(worker) = std::mem::replace(&mut *state, Life::Done) else {
                return Ok(Value::Unit);
            };
            let outcome = worker.stop().await;
            let last = worker.stats().await;
            *snapshot.lock() = last;
            running.lock().take();
            drop(worker);
            outcome
                .map(|()| Value::Unit)
                .map_err(|e| Failure::worker_failed(&format!("stop(): {e}")))
        });
        Ok(promise)
    }

    /// Whether the worker is reading: after `start()` resolved, until `stop()` is called.
    #[napi(getter, catch_unwind)]
    pub fn running(&self) -> bool {
        self.running.lock().is_some()
    }

    /// This worker's consumer name in the group, once started.
    #[napi(getter, catch_unwind)]
    pub fn consumer(&self) -> Option<String> {
        self.consumer.lock().clone()
    }

    /// The worker's counters (current), and the streams' state as Redis reported it at most a second ago
    /// (`streamLength`, `pending`, `oldestPendingAgeMs`, `consumers`, `lag`; absent when Redis did not
    /// answer). Synchronous; after `stop()`, the figures at the stop.
    #[napi(catch_unwind)]
    pub fn stats(&self) -> AuditWorkerStats {
        AuditWorkerStats::from(&self.current())
    }

    /// `stats()` in Prometheus text exposition format (version 0.0.4): `audit_batcher_worker_*` samples.
    /// `labels` are added to every sample; a bad label name throws `ERR_AUDIT_INVALID_OPTIONS`.
    #[napi(catch_unwind, ts_args_type = "labels?: Record<string, string>")]
    pub fn metrics_text(
        &self,
        env: Env,
        labels: Option<std::collections::HashMap<String, String>>,
    ) -> napi::Result<String> {
        let labels = super::metric_labels(&env, labels)?;
        Ok(self.current().metrics_text(&labels))
    }
}

impl AuditWorker {
    /// The worker's promise settler, made at the first call that needs it. JavaScript thread only.
    fn settler(&self, env: &Env) -> napi::Result<&Settler> {
        Settler::get_or_make(&self.settler, env)
    }

    /// Fresh counters over the last Redis-side snapshot.
    fn current(&self) -> WorkerStats {
        let snapshot = self.snapshot.lock().clone();
        match self.running.lock().as_ref() {
            Some(worker) => WorkerStats {
                stream_length: snapshot.stream_length,
                pending: snapshot.pending,
                oldest_pending_age_ms: snapshot.oldest_pending_age_ms,
                consumers: snapshot.consumers,
                lag: snapshot.lag,
                ..worker.counters()
            },
            None => snapshot,
        }
    }
}

/// Refreshes `snapshot` every [`STATS_REFRESH`] while the worker lives and runs. Holds no handle of the
/// event loop.
async fn refresh_stats(worker: Weak<Worker<PgSink>>, snapshot: Arc<Mutex<WorkerStats>>) {
    loop {
        tokio::time::sleep(STATS_REFRESH).await;
        let Some(worker) = worker.upgrade() else {
            return;
        };
        let stats = worker.stats().await;
        *snapshot.lock() = stats;
    }
}

/// What `worker.stats()` returns.
#[napi(object)]
pub struct AuditWorkerStats {
    /// Entries in the stream(s), all shards together. Absent when Redis did not answer.
    pub stream_length: Option<i64>,
    /// Entries delivered to the group and not yet acknowledged, all consumers together.
    pub pending: Option<i64>,
    /// Age of the oldest unacknowledged entry, in milliseconds (from the time it was added).
    pub oldest_pending_age_ms: Option<i64>,
    /// Consumers in the group.
    pub consumers: Option<i64>,
    /// Entries not yet delivered to the group.
    pub lag: Option<i64>,
    /// Stream entries delivered to this worker.
    pub entries_read: i64,
    /// Committed to the table by this worker (a duplicate `ON CONFLICT` skipped counts too).
    pub entries_written: i64,
    /// Acknowledged (and removed from the stream) by this worker.
    pub entries_acked: i64,
    /// Moved to the dead-letter table by this worker: refused rows and undecodable stream entries.
    pub entries_dead_lettered: i64,
    /// Taken over from other consumers (`XAUTOCLAIM`).
    pub entries_claimed: i64,
    /// Stream entries that could not be decoded (dead-lettered).
    pub entries_undecodable: i64,
    /// Read, not yet acknowledged.
    pub in_hand: i64,
    /// Reads made (`XREADGROUP`, `XAUTOCLAIM`).
    pub reads: i64,
    /// Failed PostgreSQL writes (each retried).
    pub pg_failures: i64,
    /// Failed Redis commands (each retried).
    pub redis_failures: i64,
    /// The last failure, free of passwords.
    pub last_error: Option<String>,
}

impl From<&WorkerStats> for AuditWorkerStats {
    fn from(s: &WorkerStats) -> Self {
        let n = |v: u64| v.min(i64::MAX as u64) as i64;
        AuditWorkerStats {
            stream_length: s.stream_length.map(n),
            pending: s.pending.map(n),
            oldest_pending_age_ms: s.oldest_pending_age_ms.map(n),
            consumers: s.consumers.map(n),
            lag: s.lag.map(n),
            entries_read: n(s.entries_read),
            entries_written: n(s.entries_written),
            entries_acked: n(s.entries_acked),
            entries_dead_lettered: n(s.entries_dead_lettered),
            entries_claimed: n(s.entries_claimed),
            entries_undecodable: n(s.entries_undecodable),
            in_hand: n(s.in_hand),
            reads: n(s.reads),
            pg_failures: n(s.pg_failures),
            redis_failures: n(s.redis_failures),
            last_error: s.last_error.clone(),
        }
    }
}
