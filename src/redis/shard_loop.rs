//! One shard's loop: read a batch, write and acknowledge it, and meanwhile read the next.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use super::reader::Reader;
use super::reply::Message;
use super::worker::{ShardBatcher, Shared};
use super::writer::Writer;
use crate::sink::Sink;

/// Reads, writes and acknowledges one shard's stream until `stop()`.
///
/// While a batch of new entries (`>`) is being written and acknowledged, the next read is already under
/// way, so PostgreSQL and Redis work at the same time; the prefetched batch is in hand like the other and
/// is written before the loop ends. Re-reads of the own pending list (`0`) and claims are never
/// overlapped with a write: they could return the entries being written.
pub(super) struct ShardLoop<S: Sink> {
    shared: Arc<Shared<S>>,
    reader: Reader<S>,
    writer: Writer<S>,
    stop: watch::Receiver<Option<Instant>>,
}

impl<S: Sink> ShardLoop<S> {
    pub fn new(
        shared: Arc<Shared<S>>,
        key: String,
        batcher: Arc<ShardBatcher<S>>,
        stop: watch::Receiver<Option<Instant>>,
    ) -> Self {
        ShardLoop {
            reader: Reader::new(shared.clone(), key.clone()),
            writer: Writer::new(shared.clone(), key, batcher, stop.clone()),
            shared,
            stop,
        }
    }

    fn stopping(&self) -> bool {
        self.stop.borrow().is_some()
    }

    /// Sleeps for `delay` unless `stop()` is called first.
    async fn pause(&mut self, delay: Duration) {
        if self.stopping() {
            return;
        }
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = self.stop.changed() => {}
        }
    }

    pub async fn run(mut self) {
        let mut failures = 0u32;
        let mut prefetched: Option<Vec<Message>> = None;
        loop {
            let batch = match prefetched.take() {
                Some(batch) => batch,
                None if self.stopping() => return,
                None => match self.reader.next().await {
                    Ok(batch) => {
                        failures = 0;
                        batch
                    }
                    Err(e) => {
                        failures = failures.saturating_add(1);
                        self.reader.failed(&e).await;
                        let delay = self.shared.config.backoff.delay(failures);
                        self.pause(delay).await;
                        continue;
                    }
                },
            };
            if batch.is_empty() {
                continue;
            }
            let overlap = !self.reader.history && !self.reader.claim_due() && !self.stopping();
            if !overlap {
                self.writer.handle(batch).await;
                continue;
            }
            let (_, next) = tokio::join!(self.writer.handle(batch), self.reader.read());
            match next {
                Ok(next) if !next.is_empty() => prefetched = Some(next),
                Ok(_) => {}
                // The loop's own read retries with backoff.
                Err(e) => self.reader.failed(&e).await,
            }
        }
    }
}
