//! The producer side: [`StreamSink`], a [`Sink`] that adds each batch to the stream(s) in one round trip.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::OnceLock;

use futures_util::future::join_all;
use redis::{Pipeline, Value};

use super::codec::for_each_field;
use super::conn::{write_error, RedisConfig, RedisConn};
use super::shard::shard_of;
use crate::entry::Entry;
use crate::sink::{Sink, WriteError};

/// The producer's settings.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StreamConfig {
    pub redis: RedisConfig,
    /// The bound on entries in the stream(s) (all shards together), applied by the caller through
    /// [`StreamSink::at_bound`]; `None` (the default): no bound. Never used to trim: entries leave a
    /// stream only once a worker acknowledged them.
    pub max_length: Option<u64>,
    /// The length (all shards together) at which the listener given to [`StreamSink::on_high_water`] is
    /// called, once per crossing; `None` (the default): never.
    pub high_water_length: Option<u64>,
}

/// Hears that the stream(s) reached the high-water length: called with the length learnt, from the
/// thread of the write (or length refresh) that learnt it; it must not block.
pub type HighWaterListener = Box<dyn Fn(u64) + Send + Sync>;

/// Adds batches of entries to Redis streams (see [`super::codec`] for the format, [`super::shard`] for
/// which stream).
///
/// Guarantees:
/// - one `write` is one pipelined round trip to the server (`XADD` of every entry, then `XLEN` of every
///   shard), whatever the batch's size; on a Cluster, one pipeline per shard the batch touches, sent
///   concurrently (each to the node that holds that stream);
/// - within a shard, entries are added in batch order;
/// - `Ok` means every entry is in its stream (as durable as the server's persistence makes it); an error is
///   [`crate::sink::FailureKind::Transient`]: the batcher keeps the entries and sends them again, and an
///   entry that was in fact added twice is written to the table once (the worker's `ON CONFLICT (id)`);
/// - never trims: no `MAXLEN`/`MINID`; the length learnt with each write is exposed for the caller's bound;
/// - the connection is opened at the first write and reopens by itself after a failure.
pub struct StreamSink {
    config: StreamConfig,
    keys: Vec<String>,
    conn: tokio::sync::Mutex<Option<RedisConn>>,
    closed: AtomicBool,
    /// The last known length of each shard's stream.
    lengths: Vec<AtomicU64>,
    round_trips: AtomicU64,
    added: AtomicU64,
    /// When the last [`StreamSink::refresh_due`] said yes, in milliseconds since the Unix epoch.
    last_refresh_ms: AtomicU64,
    /// Whether the length last learnt was at or above `high_water_length` (the listener was called for
    /// this crossing).
    above_high_water: AtomicBool,
    high_water_listener: OnceLock<HighWaterListener>,
}

impl StreamSink {
    /// Checks the settings (the error names the option at fault); does not connect.
    pub fn new(config: StreamConfig) -> Result<StreamSink, (&'static str, String)> {
        config.redis.validate()?;
        let keys = config.redis.keys();
        Ok(StreamSink {
            lengths: keys.iter().map(|_| AtomicU64::new(0)).collect(),
            keys,
            config,
            conn: tokio::sync::Mutex::new(None),
            closed: AtomicBool::new(false),
            round_trips: AtomicU64::new(0),
            added: AtomicU64::new(0),
            last_refresh_ms: AtomicU64::new(0),
            above_high_water: AtomicBool::new(false),
            high_water_listener: OnceLock::new(),
        })
    }

    /// Calls `listener` each time the length learnt with a write (or a [`StreamSink::refresh_length`])
    /// reaches `high_water_length` after having been below it (or unknown): once per crossing. Only the
    /// first listener given is kept; without `high_water_length` it is never called.
    pub fn on_high_water(&self, listener: HighWaterListener) {
        let _ = self.high_water_listener.set(listener);
    }

    /// Notes the length just learnt; calls the listener when it crossed the high-water length.
    fn note_length(&self) {
        let Some(mark) = self.config.high_water_length else {
            return;
        };
        let length = self.last_known_length();
        let above = length >= mark;
        let was = self.above_high_water.swap(above, Ordering::Relaxed);
        if above && !was {
            if let Some(listener) = self.high_water_listener.get() {
                listener(length);
            }
        }
    }

    /// The stream keys, shard by shard.
    pub fn keys(&self) -> &[String] {
        &self.keys
    }

    /// The entries in the stream(s), all shards together, as of the last successful write (0 before).
    pub fn last_known_length(&self) -> u64 {
        self.lengths.iter().map(|l| l.load(Ordering::Relaxed)).sum()
    }

    /// The last known length of each shard's stream.
    pub fn shard_lengths(&self) -> Vec<u64> {
        self.lengths
            .iter()
            .map(|l| l.load(Ordering::Relaxed))
            .collect()
    }

    /// Whether `buffered` more entries (not yet added) would take the stream(s) to `max_length`: the
    /// moment the producer applies `onBufferFull` to non-critical entries.
    pub fn at_bound(&self, buffered: usize) -> bool {
        self.config
            .max_length
            .is_some_and(|max| self.last_known_length() + buffered as u64 >= max)
    }

    /// Asks the stream(s) for their length (`XLEN` of every shard, one round trip; one per shard on a
    /// Cluster) and records it. A producer at its bound writes nothing, so it learns that workers drained
    /// the stream only through this: call it while [`StreamSink::at_bound`] holds, e.g. on the background
    /// writer's interval.
    pub async fn refresh_length(&self) -> Result<u64, WriteError> {
        let conn = self.connection().await?;
        let all: Vec<usize> = (0..self.keys.len()).collect();
        if conn.is_cluster() {
            let sends = all.iter().map(|s| {
                let pipe = self.pipeline(std::iter::empty(), std::slice::from_ref(s));
                self.send(conn.clone(), pipe, std::slice::from_ref(s))
            });
            for result in join_all(sends).await {
                result?;
            }
        } else {
            self.send(conn, self.pipeline(std::iter::empty(), &all), &all)
                .await?;
        }
        Ok(self.last_known_length())
    }

    /// Whether a caller at the bound should call [`StreamSink::refresh_length`] now: yes at most once per
    /// `every_ms` across all callers (the first to ask after that interval gets `true`), so a producer at
    /// its bound asks Redis for the length a few times a second, not once per refused entry.
    pub fn refresh_due(&self, every_ms: u64) -> bool {
        let now = crate::entry::Timestamp::now().unix_millis();
        let last = self.last_refresh_ms.load(Ordering::Relaxed);
        now.saturating_sub(last) >= every_ms
            && self
                .last_refresh_ms
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
    }

    /// Round trips made by successful and failed writes so far (one per write; per touched shard on a
    /// Cluster).
    pub fn round_trips(&self) -> u64 {
        self.round_trips.load(Ordering::Relaxed)
    }

    /// Entries added by successful writes.
    pub fn entries_added(&self) -> u64 {
        self.added.load(Ordering::Relaxed)
    }

    async fn connection(&self) -> Result<RedisConn, WriteError> {
        if self.closed.load(Ordering::Relaxed) {
            return Err(WriteError::new("the stream sink is closed"));
        }
        let mut slot = self.conn.lock().await;
        if let Some(conn) = slot.as_ref() {
            return Ok(conn.clone());
        }
        let conn = RedisConn::open(&self.config.redis, Some(self.config.redis.response_timeout))
            .await
            .map_err(|e| write_error("connect", &e))?;
        *slot = Some(conn.clone());
        Ok(conn)
    }

    /// One pipeline: XADD of `entries` (each to its shard's key), then XLEN of `shards`.
    fn pipeline<'a>(
        &self,
        entries: impl Iterator<Item = (usize, &'a Entry)>,
        shards: &[usize],
    ) -> Pipeline {
        let mut pipe = redis::pipe();
        for (shard, entry) in entries {
            pipe.cmd("XADD").arg(&self.keys[shard]).arg("*");
            for_each_field(entry, |name, value| {
                pipe.arg(name).arg(value);
            });
        }
        for &shard in shards {
            pipe.cmd("XLEN").arg(&self.keys[shard]);
        }
        pipe
    }

    /// Sends `pipe`, checks every reply, and records the lengths of `shards` (the last replies).
    async fn send(
        &self,
        mut conn: RedisConn,
        pipe: Pipeline,
        shards: &[usize],
    ) -> Result<(), WriteError> {
        self.round_trips.fetch_add(1, Ordering::Relaxed);
        let replies: Vec<Value> = pipe
            .query_async(&mut conn)
            .await
            .map_err(|e| write_error("XADD", &e))?;
        if let Some(Value::ServerError(e)) =
            replies.iter().find(|v| matches!(v, Value::ServerError(_)))
        {
            return Err(WriteError::new(format!("redis XADD: {e:?}")));
        }
        let Some(lens) = replies
            .len()
            .checked_sub(shards.len())
            .map(|at| &replies[at..])
        else {
            return Err(WriteError::new("redis XADD: fewer replies than commands"));
        };
        for (&shard, len) in shards.iter().zip(lens) {
            if let Value::Int(n) = len {
                self.lengths[shard].store((*n).max(0) as u64, Ordering::Relaxed);
            }
        }
        self.note_length();
        Ok(())
    }
}

impl Sink for StreamSink {
    async fn write(&self, batch: &[Entry]) -> Result<(), WriteError> {
        if batch.is_empty() {
            return Ok(());
        }
        let conn = self.connection().await?;
        let shards = self.config.redis.shards;
        let tagged = || {
            batch.iter().map(|e| {
                (
                    shard_of(e.text(crate::entry::TextField::TenantId), shards),
                    e,
                )
            })
        };
        if !conn.is_cluster() {
            let all: Vec<usize> = (0..self.keys.len()).collect();
            self.send(conn, self.pipeline(tagged(), &all), &all).await?;
        } else {
            let mut touched: Vec<usize> = tagged().map(|(s, _)| s).collect();
            touched.sort_unstable();
            touched.dedup();
            let sends = touched.iter().map(|s| {
                let pipe = self.pipeline(tagged().filter(|(t, _)| t == s), std::slice::from_ref(s));
                self.send(conn.clone(), pipe, std::slice::from_ref(s))
            });
            for result in join_all(sends).await {
                result?;
            }
        }
        self.added.fetch_add(batch.len() as u64, Ordering::Relaxed);
        Ok(())
    }

    /// A producer's entries are never refused by Redis, so the batcher does not dead-letter them; should
    /// it, the entry is added to the stream like any other, for the worker's table and dead-letter table.
    async fn dead_letter(&self, entry: &Entry, _cause: &WriteError) -> Result<(), WriteError> {
        self.write(std::slice::from_ref(entry)).await
    }

    /// Drops the connection; later writes fail.
    async fn close(&self) {
        self.closed.store(true, Ordering::Relaxed);
        self.conn.lock().await.take();
    }
}
