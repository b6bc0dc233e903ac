//! A shard loop's reading half: `XREADGROUP` (own pending entries first, then new ones) on a connection of
//! its own, and `XAUTOCLAIM` of entries idle in dead consumers' hands.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use redis::{RedisError, Value};
use tokio::time::Instant;

use super::conn::{redact, RedisConn};
use super::reply::{self, Message};
use super::stats::Counters;
use super::worker::Shared;

/// `XGROUP CREATE key group 0 MKSTREAM`; a group that exists already (`BUSYGROUP`) is fine. From `0`: a new
/// group reads what producers added before any worker ran.
pub(super) async fn ensure_group<S>(shared: &Shared<S>, key: &str) -> Result<(), RedisError> {
    let mut conn = shared.cmd.clone();
    let result: Result<Value, RedisError> = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(key)
        .arg(&shared.config.group)
        .arg("0")
        .arg("MKSTREAM")
        .query_async(&mut conn)
        .await;
    match result {
        Err(e) if e.code() == Some("BUSYGROUP") => Ok(()),
        other => other.map(|_| ()),
    }
}

/// Why a read failed.
pub(super) enum ReadError {
    Redis(RedisError),
    Reply(String),
}

impl std::fmt::Display for ReadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReadError::Redis(e) => write!(f, "redis: {}", redact(&e.to_string())),
            ReadError::Reply(e) => write!(f, "redis reply: {e}"),
        }
    }
}

impl From<RedisError> for ReadError {
    fn from(e: RedisError) -> Self {
        ReadError::Redis(e)
    }
}

/// Reads one shard's stream for one consumer. Every entry it returns is counted in hand until the
/// writer acknowledges it.
pub(super) struct Reader<S> {
    shared: Arc<Shared<S>>,
    key: String,
    /// The connection blocking reads use, opened on first use and after a failure.
    conn: Option<RedisConn>,
    /// Still re-reading this consumer's own pending entries (id `0`), before new ones (`>`).
    pub history: bool,
    next_claim: Instant,
    claim_cursor: String,
}

impl<S> Reader<S> {
    pub fn new(shared: Arc<Shared<S>>, key: String) -> Self {
        Reader {
            shared,
            key,
            conn: None,
            history: true,
            next_claim: Instant::now(),
            claim_cursor: "0-0".into(),
        }
    }

    /// Whether the next read should be a claim.
    pub fn claim_due(&self) -> bool {
        Instant::now() >= self.next_claim
    }

    /// The next batch: a claim page when one is due, else a read.
    pub async fn next(&mut self) -> Result<Vec<Message>, ReadError> {
        if self.claim_due() {
            self.claim().await
        } else {
            self.read().await
        }
    }

    /// Handles a failed read: the group is recreated when it vanished, the connection reopened next time.
    pub async fn failed(&mut self, e: &ReadError) {
        Counters::add(&self.shared.counters.redis_failures, 1);
        self.shared.note_error(e.to_string());
        if let ReadError::Redis(r) = e {
            if r.code() == Some("NOGROUP") {
                // The stream or group vanished (a Redis restart without persistence, a DEL).
                let _ = ensure_group(&self.shared, &self.key).await;
            }
            if !r.is_timeout() {
                self.conn = None;
            }
        }
    }

    /// One `XREADGROUP`: this consumer's own pending entries first (`0`, not blocking), then new ones
    /// (`>`), waiting up to `block` when there are none.
    pub async fn read(&mut self) -> Result<Vec<Message>, ReadError> {
        let config = &self.shared.config;
        let conn = match &mut self.conn {
            Some(conn) => conn,
            none => {
                let timeout = config.block + config.redis.response_timeout;
                none.insert(RedisConn::open(&config.redis, Some(timeout)).await?)
            }
        };
        let mut cmd = redis::cmd("XREADGROUP");
        cmd.arg("GROUP")
            .arg(&config.group)
            .arg(&self.shared.consumer)
            .arg("COUNT")
            .arg(config.max_batch_rows);
        if !self.history {
            cmd.arg("BLOCK").arg(config.block.as_millis().max(1) as u64);
        }
        cmd.arg("STREAMS")
            .arg(&self.key)
            .arg(if self.history { "0" } else { ">" });
        let value: Value = cmd.query_async(conn).await?;
        Counters::add(&self.shared.counters.reads, 1);
        let messages: Vec<Message> = reply::read_reply(&value)
            .map_err(ReadError::Reply)?
            .into_iter()
            .flat_map(|(_, m)| m)
            .collect();
        if self.history && messages.is_empty() {
            self.history = false;
        }
        Counters::add(&self.shared.counters.read, messages.len());
        self.shared
            .in_hand
            .fetch_add(messages.len() as u64, Ordering::Relaxed);
        Ok(messages)
    }

    /// Deletes from the group the consumers that hold nothing and have not read for `consumer_expiry`
    /// (workers that died or were replaced under a new name), so that `consumers` counts the living.
    /// A consumer holding pending entries is never deleted (that would drop them from the pending list);
    /// a live worker reads every `block`, and one deleted anyway is recreated by its next read. Best
    /// effort: failures are ignored.
    async fn forget_dead_consumers(&mut self) {
        let Some(expiry) = self.shared.config.consumer_expiry else {
            return;
        };
        let mut conn = self.shared.cmd.clone();
        let group = &self.shared.config.group;
        let listed: Result<Value, RedisError> = redis::cmd("XINFO")
            .arg("CONSUMERS")
            .arg(&self.key)
            .arg(group)
            .query_async(&mut conn)
            .await;
        let Ok(consumers) = listed
            .map_err(|_| ())
            .and_then(|v| reply::consumers_reply(&v).map_err(|_| ()))
        else {
            return;
        };
        for c in consumers {
            if c.pending == 0
                && c.idle_ms >= expiry.as_millis() as u64
                && c.name != self.shared.consumer
            {
                let _: Result<Value, RedisError> = redis::cmd("XGROUP")
                    .arg("DELCONSUMER")
                    .arg(&self.key)
                    .arg(group)
                    .arg(&c.name)
                    .query_async(&mut conn)
                    .await;
            }
        }
    }

    /// One page of `XAUTOCLAIM`: entries idle for `claim_idle` in any consumer's hands become this one's.
    /// When the page ends the scan, the next is due after `claim_interval`.
    pub async fn claim(&mut self) -> Result<Vec<Message>, ReadError> {
        let config = &self.shared.config;
        let mut conn = self.shared.cmd.clone();
        let value: Value = redis::cmd("XAUTOCLAIM")
            .arg(&self.key)
            .arg(&config.group)
            .arg(&self.shared.consumer)
            .arg(config.claim_idle.as_millis() as u64)
            .arg(&self.claim_cursor)
            .arg("COUNT")
            .arg(config.max_batch_rows)
            .query_async(&mut conn)
            .await?;
        Counters::add(&self.shared.counters.reads, 1);
        let page = reply::autoclaim_reply(&value).map_err(ReadError::Reply)?;
        self.claim_cursor = page.cursor;
        if self.claim_cursor == "0-0" {
            self.next_claim = Instant::now() + config.claim_interval;
            self.forget_dead_consumers().await;
        }
        Counters::add(&self.shared.counters.claimed, page.claimed.len());
        self.shared
            .in_hand
            .fetch_add(page.claimed.len() as u64, Ordering::Relaxed);
        Ok(page.claimed)
    }
}
