//! The worker: reads stream entries in a consumer group, writes them to PostgreSQL, acknowledges them only
//! after the commit, and removes them from the stream once acknowledged.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use redis::{RedisError, Value};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::conn::{redact, RedisConfig, RedisConn};
use super::reader::ensure_group;
use super::reply;
use super::shard_loop::ShardLoop;
use super::stats::{Counters, WorkerStats};
use crate::batcher::{Backoff, Batcher, BatcherConfig};
use crate::entry::Entry;
use crate::options::limits;
use crate::pg::PgSink;
use crate::sink::{Sink, WriteError};

/// A worker's settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkerConfig {
    pub redis: RedisConfig,
    /// The consumer group; created (from the start of the stream, `MKSTREAM`) when missing. Default
    /// `audit-writers`. One group per stream: acknowledged entries are deleted from the stream.
    pub group: String,
    /// This worker's consumer name in the group. `None` (the default): `<hostname>-<pid>-<random>`. A
    /// worker restarted under the same name first re-reads the entries it held; under a new name, those
    /// are claimed after `claim_idle` by whichever worker runs `XAUTOCLAIM` first.
    pub consumer: Option<String>,
    /// The most entries one read takes (and so one PostgreSQL statement writes). Default 1000.
    pub max_batch_rows: usize,
    /// How long a read waits for new entries when the stream has none. Default 1 s; also bounds how long
    /// `stop()` waits for a read under way.
    pub block: Duration,
    /// Entries delivered to a consumer and not acknowledged for this long are taken over. Default 30 s:
    /// longer than a batch may take to commit, or entries in hand are written twice (harmless, but wasted).
    pub claim_idle: Duration,
    /// How often each shard's pending list is scanned for such entries. Default 5 s.
    pub claim_interval: Duration,
    /// Consumers of the group that hold no pending entry and have not read for this long are deleted
    /// from it (by whichever worker's claim scan sees them first), so `consumers` counts live workers.
    /// Default 1 hour; `None`: never.
    pub consumer_expiry: Option<Duration>,
    /// Delays between attempts while PostgreSQL or Redis fails. Default 100 ms doubling to 5 s, jittered.
    pub backoff: Backoff,
    /// How long `stop()` keeps trying to commit and acknowledge the batch in hand. Default 10 s.
    pub stop_timeout: Duration,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        WorkerConfig {
            redis: RedisConfig::default(),
            group: "audit-writers".into(),
            consumer: None,
            max_batch_rows: limits::MAX_BATCH_ROWS.default_value() as usize,
            block: Duration::from_millis(limits::REDIS_BLOCK_MS.default_value()),
            claim_idle: Duration::from_millis(limits::REDIS_CLAIM_IDLE_MS.default_value()),
            claim_interval: Duration::from_millis(limits::REDIS_CLAIM_INTERVAL_MS.default_value()),
            consumer_expiry: match limits::REDIS_CONSUMER_EXPIRY_MS.default_value() {
                0 => None,
                ms => Some(Duration::from_millis(ms)),
            },
            backoff: Backoff {
                initial: Duration::from_millis(100),
                max: Duration::from_secs(5),
            },
            stop_timeout: Duration::from_millis(limits::STOP_TIMEOUT_MS.default_value()),
        }
    }
}

impl WorkerConfig {
    /// Checks the settings; the error names the option at fault.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        self.redis.validate()?;
        if self.group.is_empty() {
            return Err(("group", "must be a non-empty string".into()));
        }
        if self.consumer.as_deref() == Some("") {
            return Err(("consumer", "must be a non-empty string".into()));
        }
        if self.max_batch_rows == 0 {
            return Err(("maxBatchRows", "must be at least 1".into()));
        }
        if self.block.is_zero() {
            return Err(("blockMs", "must be at least 1 ms".into()));
        }
        Ok(())
    }
}

/// Lets each shard's batcher write through the one sink the worker was given.
pub struct SharedSink<S>(pub Arc<S>);

impl<S: Sink> Sink for SharedSink<S> {
    async fn write(&self, batch: &[Entry]) -> Result<(), WriteError> {
        self.0.write(batch).await
    }

    async fn dead_letter(&self, entry: &Entry, cause: &WriteError) -> Result<(), WriteError> {
        self.0.dead_letter(entry, cause).await
    }

    /// The worker closes the shared sink itself, once every shard is done.
    async fn close(&self) {}
}

pub(super) type ShardBatcher<S> = Batcher<SharedSink<S>>;

/// What a worker's shard loops share.
pub(super) struct Shared<S> {
    pub config: WorkerConfig,
    pub consumer: String,
    pub sink: Arc<S>,
    /// Commands that do not block (acknowledgements, claims, stats); blocking reads have their own.
    pub cmd: RedisConn,
    pub counters: Counters,
    /// Entries read and not yet acknowledged (or given up at a stop).
    pub in_hand: AtomicU64,
    pub batchers: Mutex<Vec<Arc<ShardBatcher<S>>>>,
    pub last_error: Mutex<Option<String>>,
}

impl<S> Shared<S> {
    pub fn note_error(&self, text: String) {
        *self.last_error.lock() = Some(text);
    }
}

/// A pool member writing stream entries to PostgreSQL: one task per shard, each with its own blocking
/// connection and its own [`Batcher`] in front of the shared sink (so rows the table refuses are bisected
/// and dead-lettered as in direct mode).
///
/// Guarantees:
/// - an entry is acknowledged (`XACK`) only after the statement that wrote it committed (or after it was
///   dead-lettered), and deleted from the stream (`XDEL`, in the same `MULTI` as the `XACK`) only then:
///   the stream is never trimmed, so an unread or unacknowledged entry is never lost;
/// - at start, and after a restart under the same consumer name, it first re-reads its own pending entries;
///   entries left pending by any consumer for `claim_idle` are taken over with `XAUTOCLAIM`;
/// - a stream entry that cannot be decoded is dead-lettered (see [`super::codec::undecodable_entry`]) and
///   acknowledged; it never blocks the stream;
/// - PostgreSQL failing: nothing is acknowledged, the batch in hand is retried with backoff (the stream
///   grows meanwhile); Redis failing: reads and acknowledgements are retried with backoff on connections
///   that reopen by themselves;
/// - reads take up to `max_batch_rows` entries, back to back while entries remain; a read waits (`BLOCK`)
///   only when the stream has nothing new; the next read runs while a batch is being written;
/// - [`Worker::stop`] lets the read under way finish, commits and acknowledges the batch in hand, then
///   closes the sink. Dropping a worker without `stop()` abandons its tasks like a crash would: what it
///   held stays pending and is claimed by another worker.
pub struct Worker<S: Sink = PgSink> {
    shared: Arc<Shared<S>>,
    stop: watch::Sender<Option<Instant>>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

impl<S: Sink> Worker<S> {
    /// Checks the settings, connects, creates the group on every shard's stream when missing, and starts
    /// one reading task per shard (on the current Tokio runtime). Fails when Redis cannot be reached at
    /// start; later outages are waited out. The error names the option at fault (`url`,
    /// `group`, ...) and holds no password.
    pub async fn start(config: WorkerConfig, sink: S) -> Result<Worker<S>, (&'static str, String)> {
        config.validate()?;
        let option = if config.redis.cluster_nodes.is_empty() {
            "url"
        } else {
            "clusterNodes"
        };
        let cmd = RedisConn::open(&config.redis, Some(config.redis.response_timeout))
            .await
            .map_err(|e| (option, redact(&format!("cannot connect to Redis: {e}"))))?;
        let consumer = config.consumer.clone().unwrap_or_else(default_consumer);
        let shared = Arc::new(Shared {
            consumer,
            sink: Arc::new(sink),
            cmd,
            counters: Counters::default(),
            in_hand: AtomicU64::new(0),
            batchers: Mutex::new(Vec::new()),
            last_error: Mutex::new(None),
            config,
        });
        for key in shared.config.redis.keys() {
            ensure_group(&shared, &key).await.map_err(|e| {
                (
                    "group",
                    redact(&format!("cannot create the consumer group on `{key}`: {e}")),
                )
            })?;
        }
        let (stop, _) = watch::channel(None);
        let mut tasks = Vec::new();
        for key in shared.config.redis.keys() {
            let batcher = Arc::new(Batcher::new(
                SharedSink(shared.sink.clone()),
                BatcherConfig {
                    max_batch_rows: shared.config.max_batch_rows,
                    // Bounds out of reach: what the worker holds is bounded by its reads.
                    max_buffered_entries: usize::MAX / 4,
                    max_buffered_bytes: usize::MAX / 4,
                    max_entry_bytes: usize::MAX / 4,
                    backoff: shared.config.backoff,
                    ..BatcherConfig::default()
                },
            ));
            shared.batchers.lock().push(batcher.clone());
            let shard = ShardLoop::new(shared.clone(), key, batcher, stop.subscribe());
            tasks.push(tokio::spawn(shard.run()));
        }
        Ok(Worker {
            shared,
            stop,
            tasks: Mutex::new(tasks),
        })
    }

    /// This worker's consumer name.
    pub fn consumer(&self) -> &str {
        &self.shared.consumer
    }

    /// The sink entries are written to.
    pub fn sink(&self) -> &S {
        &self.shared.sink
    }

    /// Stops reading, lets the read under way finish, commits and acknowledges the batch in hand (retrying
    /// for up to `stop_timeout`), closes the sink, and leaves the group (when it holds nothing there). An error says how many entries were left
    /// unacknowledged: they stay pending in Redis, for this consumer name's next start or another worker's
    /// claim. Later calls return at once.
    pub async fn stop(&self) -> Result<(), String> {
        let deadline = Instant::now() + self.shared.config.stop_timeout;
        self.stop.send_replace(Some(deadline));
        let tasks: Vec<JoinHandle<()>> = std::mem::take(&mut *self.tasks.lock());
        let had_tasks = !tasks.is_empty();
        for task in tasks {
            let _ = task.await;
        }
        if had_tasks {
            self.shared.sink.close().await;
            for key in self.shared.config.redis.keys() {
                self.leave_group(&key).await;
            }
        }
        match self.shared.in_hand.load(Ordering::Relaxed) {
            0 => Ok(()),
            n => Err(format!(
                "{n} entries were left unacknowledged (last error: {}); they stay pending in Redis and are claimed by another worker after claimIdle",
                self.shared.last_error.lock().clone().unwrap_or_default()
            )),
        }
    }

    /// Removes this consumer from the group on `key` when it holds no pending entry there (checked first:
    /// `XGROUP DELCONSUMER` would drop them from the pending list), so that clean stops leave no consumers
    /// behind in `stats().consumers`. Best effort: a failure leaves the consumer listed, nothing else.
    async fn leave_group(&self, key: &str) {
        let mut conn = self.shared.cmd.clone();
        let group = &self.shared.config.group;
        let consumer = &self.shared.consumer;
        let held: Result<Value, RedisError> = redis::cmd("XPENDING")
            .arg(key)
            .arg(group)
            .arg("-")
            .arg("+")
            .arg(1)
            .arg(consumer)
            .query_async(&mut conn)
            .await;
        if matches!(held, Ok(Value::Array(ref a)) if a.is_empty()) {
            let _: Result<Value, RedisError> = redis::cmd("XGROUP")
                .arg("DELCONSUMER")
                .arg(key)
                .arg(group)
                .arg(consumer)
                .query_async(&mut conn)
                .await;
        }
    }

    /// This worker's counters, without asking Redis.
    pub fn counters(&self) -> WorkerStats {
        let c = &self.shared.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let (mut written, mut dead) = (0, 0);
        for b in self.shared.batchers.lock().iter() {
            let s = b.stats();
            written += s.written;
            dead += s.dead_lettered;
        }
        WorkerStats {
            entries_read: get(&c.read),
            entries_claimed: get(&c.claimed),
            entries_written: written,
            entries_dead_lettered: dead + get(&c.undecodable),
            entries_undecodable: get(&c.undecodable),
            entries_acked: get(&c.acked),
            reads: get(&c.reads),
            pg_failures: get(&c.pg_failures),
            redis_failures: get(&c.redis_failures),
            in_hand: self.shared.in_hand.load(Ordering::Relaxed),
            last_error: self.shared.last_error.lock().clone(),
            ..WorkerStats::default()
        }
    }

    /// The counters plus the streams' state as Redis reports it now (`XLEN`, `XPENDING`, `XINFO GROUPS`,
    /// one pipeline per shard). Fields Redis did not answer for are `None`.
    pub async fn stats(&self) -> WorkerStats {
        let stats = self.counters();
        let mut conn = self.shared.cmd.clone();
        let group = &self.shared.config.group;
        let (mut len, mut pending, mut consumers, mut lag) =
            (Some(0u64), Some(0u64), Some(0u64), Some(0u64));
        let mut oldest: Option<u64> = None;
        for key in self.shared.config.redis.keys() {
            let mut pipe = redis::pipe();
            pipe.ignore_errors();
            pipe.cmd("XLEN").arg(&key);
            pipe.cmd("XPENDING").arg(&key).arg(group);
            pipe.cmd("XINFO").arg("GROUPS").arg(&key);
            let replies: Result<Vec<Value>, RedisError> = pipe.query_async(&mut conn).await;
            let Ok(replies) = replies else {
                return stats;
            };
            let at = |i: usize| replies.get(i).unwrap_or(&Value::Nil);
            len = match (len, at(0)) {
                (Some(t), Value::Int(n)) => Some(t + (*n).max(0) as u64),
                _ => None,
            };
            match reply::pending_reply(at(1)) {
                Ok(p) => {
                    pending = pending.map(|t| t + p.count);
                    if let Some(ms) = p.oldest.as_deref().and_then(reply::id_millis) {
                        oldest = Some(oldest.map_or(ms, |o| o.min(ms)));
                    }
                }
                Err(_) => pending = None,
            }
            let info = reply::groups_reply(at(2))
                .ok()
                .and_then(|g| g.into_iter().find(|g| &g.name == group));
            match info {
                Some(g) => {
                    consumers = consumers.map(|c| c.max(g.consumers));
                    lag = lag.zip(g.lag).map(|(a, b)| a + b);
                }
                None => {
                    consumers = None;
                    lag = None;
                }
            }
        }
        let now_ms = crate::entry::Timestamp::now().unix_millis();
        WorkerStats {
            stream_length: len,
            pending,
            oldest_pending_age_ms: oldest.map(|ms| now_ms.saturating_sub(ms)),
            consumers,
            lag,
            ..stats
        }
    }
}

impl<S: Sink> Drop for Worker<S> {
    /// Without `stop()`, the tasks are abandoned as by a crash: nothing in hand is acknowledged.
    fn drop(&mut self) {
        for task in self.tasks.lock().drain(..) {
            task.abort();
        }
    }
}

fn default_consumer() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "worker".into());
    format!("{host}-{}-{:08x}", std::process::id(), fastrand::u32(..))
}
