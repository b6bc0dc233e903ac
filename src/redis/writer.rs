//! A shard loop's writing half: decode a batch, write it through the shard's batcher (dead-lettering what
//! cannot be decoded or stored), and acknowledge it once committed.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use redis::{RedisError, Value};
use tokio::sync::watch;
use tokio::time::Instant;

use super::codec::{self, DecodeError};
use super::conn::redact;
use super::reply::Message;
use super::stats::Counters;
use super::worker::{ShardBatcher, Shared};
use crate::batcher::{FlushError, LogError};
use crate::entry::Entry;
use crate::sink::{Sink, WriteError};

/// Writes and acknowledges one shard's batches.
pub(super) struct Writer<S: Sink> {
    shared: Arc<Shared<S>>,
    key: String,
    batcher: Arc<ShardBatcher<S>>,
    /// `Some(deadline)` once `stop()` was called.
    stop: watch::Receiver<Option<Instant>>,
}

impl<S: Sink> Writer<S> {
    pub fn new(
        shared: Arc<Shared<S>>,
        key: String,
        batcher: Arc<ShardBatcher<S>>,
        stop: watch::Receiver<Option<Instant>>,
    ) -> Self {
        Writer {
            shared,
            key,
            batcher,
            stop,
        }
    }

    fn deadline(&self) -> Option<Instant> {
        *self.stop.borrow()
    }

    fn past_deadline(&self) -> bool {
        self.deadline().is_some_and(|d| Instant::now() >= d)
    }

    /// Sleeps for `delay`, never past the stop deadline; wakes early when `stop()` is called.
    async fn pause(&mut self, delay: Duration) {
        let until = Instant::now() + delay;
        if let Some(d) = self.deadline() {
            tokio::time::sleep_until(until.min(d)).await;
            return;
        }
        tokio::select! {
            _ = tokio::time::sleep_until(until) => {}
            _ = self.stop.changed() => {}
        }
    }

    /// Writes a batch of read entries and acknowledges them once committed (the reader counted them in
    /// hand; this takes them out once acknowledged). Gives up, leaving them pending in Redis, only when
    /// stopping and the stop deadline passed.
    pub async fn handle(&mut self, messages: Vec<Message>) {
        let n = messages.len();
        let mut ack: Vec<String> = Vec::with_capacity(n);
        let mut dead: Vec<(Entry, WriteError)> = Vec::new();
        for message in messages {
            let Some(fields) = message.fields else {
                // Deleted while pending: nothing to write, only the pending-list slot to release.
                ack.push(message.id);
                continue;
            };
            let failure = match codec::decode(&fields) {
                Ok(draft) => match self.batcher.log(draft) {
                    Ok(_) => None,
                    Err(LogError::Invalid(e)) => Some(DecodeError(e.to_string())),
                    // Not reachable (the batcher is never closed and its bounds are out of reach): the
                    // entry stays pending and is claimed again later.
                    Err(_) => continue,
                },
                Err(e) => Some(e),
            };
            if let Some(e) = failure {
                match codec::undecodable_entry(&self.key, &message.id, &fields, &e) {
                    Some(entry) => dead.push((entry, WriteError::rejected(e.to_string(), None))),
                    None => continue,
                }
            }
            ack.push(message.id);
        }
        if !self.commit(&dead).await {
            return;
        }
        Counters::add(&self.shared.counters.undecodable, dead.len());
        if self.acknowledge(&ack).await {
            // Entries left pending on purpose (not in `ack`) are no longer in hand either: they wait for
            // a claim.
            self.shared.in_hand.fetch_sub(n as u64, Ordering::Relaxed);
        }
    }

    /// Dead-letters `dead` and flushes the batcher, retrying with backoff; false when stopping ran out of
    /// time first.
    async fn commit(&mut self, dead: &[(Entry, WriteError)]) -> bool {
        let mut failures = 0u32;
        let mut dead_done = 0;
        loop {
            let attempt = async {
                while dead_done < dead.len() {
                    let (entry, cause) = &dead[dead_done];
                    self.shared.sink.dead_letter(entry, cause).await?;
                    dead_done += 1;
                }
                match self.batcher.flush().await {
                    Ok(_) => Ok(()),
                    Err(FlushError::Failed { cause, .. }) => Err(cause),
                    Err(FlushError::Closed) => Err(WriteError::new("the batcher is closed")),
                }
            };
            let result = match self.deadline() {
                Some(d) => tokio::time::timeout_at(d, attempt)
                    .await
                    .unwrap_or_else(|_| {
                        Err(WriteError::new("stop() ran out of time (stopTimeoutMs)"))
                    }),
                None => attempt.await,
            };
            let Err(cause) = result else {
                return true;
            };
            failures = failures.saturating_add(1);
            Counters::add(&self.shared.counters.pg_failures, 1);
            self.shared.note_error(format!("postgres: {cause}"));
            if !self.retry(failures).await {
                return false;
            }
        }
    }

    /// Waits before attempt `failures + 1`; false when stopping and out of time.
    async fn retry(&mut self, failures: u32) -> bool {
        if self.past_deadline() {
            return false;
        }
        let delay = self.shared.config.backoff.delay(failures);
        self.pause(delay).await;
        !self.past_deadline()
    }

    /// `MULTI; XACK key group ids...; XDEL key ids...; EXEC`, retried with backoff; false when stopping ran
    /// out of time first (the entries are committed, so a later delivery only makes a duplicate that
    /// `ON CONFLICT` skips).
    async fn acknowledge(&mut self, ids: &[String]) -> bool {
        if ids.is_empty() {
            return true;
        }
        let mut failures = 0u32;
        loop {
            let mut pipe = redis::pipe();
            pipe.atomic();
            pipe.cmd("XACK")
                .arg(&self.key)
                .arg(&self.shared.config.group)
                .arg(ids);
            pipe.cmd("XDEL").arg(&self.key).arg(ids);
            let mut conn = self.shared.cmd.clone();
            let result: Result<Value, RedisError> = pipe.query_async(&mut conn).await;
            match result {
                Ok(reply) => {
                    // XACK's count: entries this call removed from the pending list (not those another
                    // worker, having claimed them, acknowledged first).
                    let acked = match &reply {
                        Value::Array(r) => match r.first() {
                            Some(Value::Int(n)) => (*n).max(0) as usize,
                            _ => ids.len(),
                        },
                        _ => ids.len(),
                    };
                    Counters::add(&self.shared.counters.acked, acked);
                    return true;
                }
                Err(e) if e.code() == Some("NOGROUP") => {
                    // The stream or the group is gone (a Redis restart without persistence, a DEL): so is
                    // the pending list; nothing is left to acknowledge.
                    self.shared
                        .note_error(format!("redis XACK: {}", redact(&e.to_string())));
                    return true;
                }
                Err(e) => {
                    failures = failures.saturating_add(1);
                    Counters::add(&self.shared.counters.redis_failures, 1);
                    self.shared
                        .note_error(format!("redis XACK: {}", redact(&e.to_string())));
                    if !self.retry(failures).await {
                        return false;
                    }
                }
            }
        }
    }
}
