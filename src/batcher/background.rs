//! The background writer: writes a full batch as soon as one waits, and with write-behind also flushes
//! when the buffer reaches a size or an interval passes; retries with backoff while the sink fails.

use std::sync::Weak;
use std::time::Duration;

use tokio::time::Instant;

use super::{Batcher, FlushError};
use crate::sink::Sink;

/// When the background writer flushes, besides [`super::BatcherConfig::flush_at_entries`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BackgroundConfig {
    /// Flush when this long has passed since the last flush and something is buffered.
    pub interval: Option<Duration>,
}

/// Runs the background writer of `batcher` until it is closed or dropped.
///
/// - Writes each full batch (`max_batch_rows` entries waiting) at once, without waiting for a flush, so that
///   a caller logging many entries between flushes has them written while it logs. Without write-behind
///   that is all it writes: the entries after the last full batch wait for `flush()`, and statement
///   boundaries are those a flush would make.
/// - With write-behind, flushes when `flush_at_entries` entries are buffered or `interval` has passed,
///   whichever comes first. A flush writes everything buffered, in batches of `max_batch_rows` back to
///   back, and starts again at once while anything was logged meanwhile, so a burst is drained to the
///   last entry as fast as the sink takes it; only an empty buffer waits for the next trigger.
/// - Manual flushes share its batches (they queue on the same writer), so the two never race.
/// - After a failure it waits [`super::Backoff::delay`] (exponential, jittered, capped) before the next
///   attempt, ignoring the size trigger meanwhile, so an outage costs no CPU.
/// - Holds the batcher weakly: dropping the last handle stops it.
pub async fn run_background<S: Sink>(batcher: Weak<Batcher<S>>, config: BackgroundConfig) {
    let Some((wake, shutdown, at_entries, batch_rows)) = batcher.upgrade().map(|b| {
        (
            b.wake.clone(),
            b.shutdown.clone(),
            b.config.flush_at_entries,
            b.config.max_batch_rows,
        )
    }) else {
        return;
    };
    let write_behind = config.interval.is_some() || at_entries.is_some();
    let mut failures: u32 = 0;
    let mut last_flush = Instant::now();
    // The last flush succeeded and entries arrived while it ran: write them now, whatever their number.
    let mut draining = false;
    loop {
        let next = if failures > 0 {
            let backoff = match batcher.upgrade() {
                Some(b) => b.config.backoff,
                None => return,
            };
            Some(Instant::now() + backoff.delay(failures))
        } else {
            config.interval.map(|i| last_flush + i)
        };
        // Wait for a reason to write: the size trigger (not while backing off), the timer, or close.
        loop {
            let closed = shutdown.notified();
            tokio::pin!(closed);
            closed.as_mut().enable();
            {
                let Some(b) = batcher.upgrade() else { return };
                let st = b.state.lock();
                if st.closing {
                    return;
                }
                let full_batch = st.waiting() >= batch_rows;
                let size_reached = at_entries.is_some_and(|n| st.waiting() >= n);
                let more = draining && st.waiting() > 0 && write_behind;
                if failures == 0 && (full_batch || size_reached || more) {
                    break;
                }
            }
            match (next, failures) {
                (Some(at), 0) => tokio::select! {
                    _ = wake.notified() => {}
                    _ = tokio::time::sleep_until(at) => break,
                    _ = &mut closed => return,
                },
                (Some(at), _) => tokio::select! {
                    _ = tokio::time::sleep_until(at) => break,
                    _ = &mut closed => return,
                },
                (None, _) => tokio::select! {
                    _ = wake.notified() => {}
                    _ = &mut closed => return,
                },
            }
        }
        let Some(b) = batcher.upgrade() else { return };
        let ticket = {
            let target = {
                let mut st = b.state.lock();
                if failures > 0 {
                    st.stats.retries += 1;
                }
                // Without write-behind, only the full batches.
                let target = if write_behind {
                    st.accepted
                } else {
                    st.accepted - (st.waiting() % batch_rows) as u64
                };
                (st.waiting() > 0 && target > st.settled).then_some(target)
            };
            target.map(|t| b.ticket_through(t))
        };
        draining = false;
        if let Some(ticket) = ticket {
            match ticket.run(&b).await {
                Ok(outcome) => {
                    failures = 0;
                    draining = outcome.pending > 0;
                }
                Err(FlushError::Closed) => return,
                Err(FlushError::Failed { .. }) => failures = failures.saturating_add(1),
            }
        } else {
            failures = 0;
        }
        last_flush = Instant::now();
    }
}

/// Runs the spool's periodic work ([`Batcher::spool_maintain`]: release, sync, next segment) every
/// `interval`, off the event loop, until the batcher is closed or dropped. Holds the batcher weakly.
pub async fn run_spool_sync<S: Sink>(batcher: Weak<Batcher<S>>, interval: Duration) {
    let Some(shutdown) = batcher.upgrade().map(|b| b.shutdown.clone()) else {
        return;
    };
    loop {
        let closed = shutdown.notified();
        tokio::pin!(closed);
        closed.as_mut().enable();
        match batcher.upgrade() {
            Some(b) if !b.is_closing() => {}
            _ => return,
        }
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = closed => return,
        }
        let Some(b) = batcher.upgrade() else { return };
        if b.is_closing() {
            return;
        }
        match tokio::task::spawn_blocking(move || b.spool_maintain()).await {
            Ok(true) => {}
            _ => return,
        }
    }
}

/// Writes the entries of dead processes' spools at start-up, without waiting for a first flush, retrying
/// with backoff while the sink fails, until they are all written or the batcher is closed or dropped
/// (then `close()`'s final flush, or the next start, writes the rest). Holds the batcher weakly.
pub async fn run_replay<S: Sink>(batcher: Weak<Batcher<S>>) {
    let Some(shutdown) = batcher.upgrade().map(|b| b.shutdown.clone()) else {
        return;
    };
    let mut failures: u32 = 0;
    loop {
        let closed = shutdown.notified();
        tokio::pin!(closed);
        closed.as_mut().enable();
        let delay = {
            let Some(b) = batcher.upgrade() else { return };
            if b.is_closing() || !b.replay_pending() {
                return;
            }
            match b.replay_now().await {
                Ok(()) => return,
                Err(_) => {
                    failures = failures.saturating_add(1);
                    b.config.backoff.delay(failures)
                }
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = closed => return,
        }
    }
}
