//! The batcher: an ordered buffer of accepted entries, and the flushes that move them to a [`Sink`].
//!
//! Entries are numbered by acceptance: entry `k` is the `k`-th entry `log()` took. Flushes write from the
//! front of the buffer, one batch at a time, so "entries `1..=k` are written" is a single counter
//! (`settled`), and a flush that asked for everything up to `k` is done once `settled >= k`.

use std::collections::VecDeque;
use std::time::Instant;

use parking_lot::Mutex;

use crate::entry::{Entry, EntryDraft, InvalidEntry, Timestamp};
use crate::sink::{Sink, WriteError};
use crate::uuid7::{Uuid, Uuid7Generator};

/// Settings the batcher core needs.
#[derive(Clone, Debug)]
pub struct BatcherConfig {
    /// The most entries one write to the sink carries; a larger flush makes several writes, in order.
    pub max_batch_rows: usize,
}

impl Default for BatcherConfig {
    fn default() -> Self {
        BatcherConfig {
            max_batch_rows: 1000,
        }
    }
}

/// Why `log()` did not take an entry. Nothing already buffered is affected.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LogError {
    /// The entry breaks a rule; the field at fault is named.
    Invalid(InvalidEntry),
    /// `close()` was called.
    Closed,
}

/// Why a flush (or the final flush of `close()`) did not write everything it was asked to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FlushError {
    /// The batcher was closed before this flush.
    Closed,
    /// The sink failed. The unwritten entries are still buffered, in order, ahead of newer ones.
    Failed {
        cause: WriteError,
        /// Entries buffered after the failure.
        pending: usize,
    },
}

/// What a successful flush did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlushOutcome {
    /// Entries that were buffered when the flush was called and are now written, whichever flush wrote them.
    pub written: u64,
    /// Entries buffered when the flush finished (logged meanwhile, or by other callers).
    pub pending: usize,
}

/// Counters since the batcher was made. `logged == written + buffered` at every moment.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Stats {
    /// Entries buffered (in memory, not yet known to be written), those being written included.
    pub buffered: usize,
    /// Bytes the buffered entries hold.
    pub buffered_bytes: usize,
    /// Entries `log()` accepted.
    pub logged: u64,
    /// Entries written to the sink.
    pub written: u64,
    /// Accepted entries in which a NUL or lone surrogate was replaced with U+FFFD.
    pub sanitized: u64,
    /// Writes to the sink (statements) that succeeded.
    pub batches: u64,
    /// Writes to the sink that failed.
    pub failed_flushes: u64,
    /// The last write error and when it happened.
    pub last_error: Option<(WriteError, Timestamp)>,
    /// Duration of the last successful write, in milliseconds.
    pub last_flush_ms: Option<f64>,
}

struct State {
    queue: VecDeque<Entry>,
    queue_bytes: usize,
    ids: Uuid7Generator,
    /// Entries ever accepted; entry numbers run `1..=accepted`.
    accepted: u64,
    /// Entries `1..=settled` are written.
    settled: u64,
    /// The highest entry number any flush has asked for.
    requested: u64,
    /// Entries taken out of `queue` by the write under way.
    in_flight: usize,
    in_flight_bytes: usize,
    /// `close()` was called: `log()` and `flush()` refuse.
    closing: bool,
    /// The sink was closed.
    sink_closed: bool,
    stats: Stats,
}

/// A flush whose extent is fixed: the entries accepted before [`Batcher::begin_flush`].
#[must_use = "a flush ticket does nothing until it is run"]
pub struct FlushTicket {
    settled_at_call: u64,
    target: u64,
}

impl FlushTicket {
    /// Writes the ticket's entries (and waits for any flush writing them already).
    pub async fn run<S: Sink>(self, batcher: &Batcher<S>) -> Result<FlushOutcome, FlushError> {
        batcher.flush_to(self.target).await?;
        Ok(FlushOutcome {
            written: self.target - self.settled_at_call,
            pending: batcher.pending(),
        })
    }
}

/// A close in progress: `log()` already refuses; running it writes what is left and closes the sink.
#[must_use = "a close ticket does nothing until it is run"]
pub struct CloseTicket {
    target: u64,
}

impl CloseTicket {
    /// Writes what was accepted before the close, then closes the sink (once).
    pub async fn run<S: Sink>(self, batcher: &Batcher<S>) -> Result<(), FlushError> {
        if batcher.state.lock().sink_closed {
            return Ok(());
        }
        batcher.flush_to(self.target).await?;
        let _writer = batcher.writer.lock().await;
        let already = std::mem::replace(&mut batcher.state.lock().sink_closed, true);
        if !already {
            batcher.sink.close().await;
        }
        Ok(())
    }
}

/// An ordered, flushable buffer of audit entries in front of a [`Sink`].
///
/// Guarantees, whatever the interleaving of calls:
/// - entries reach the sink in the order `log()` accepted them, in batches of at most
///   [`BatcherConfig::max_batch_rows`], one batch at a time;
/// - a failed write leaves its entries buffered ahead of newer ones, and the next flush sends them again;
/// - concurrent flushes share batches rather than race: no entry is sent twice by two flushes, and each
///   flush returns once everything buffered when it was called is written.
pub struct Batcher<S> {
    sink: S,
    config: BatcherConfig,
    state: Mutex<State>,
    /// Held by the one flush that is writing; others queue on it in call order.
    writer: tokio::sync::Mutex<()>,
}

impl<S: Sink> Batcher<S> {
    pub fn new(sink: S, config: BatcherConfig) -> Self {
        Batcher {
            sink,
            config: BatcherConfig {
                max_batch_rows: config.max_batch_rows.max(1),
            },
            state: Mutex::new(State {
                queue: VecDeque::new(),
                queue_bytes: 0,
                ids: Uuid7Generator::new(),
                accepted: 0,
                settled: 0,
                requested: 0,
                in_flight: 0,
                in_flight_bytes: 0,
                closing: false,
                sink_closed: false,
                stats: Stats::default(),
            }),
            writer: tokio::sync::Mutex::new(()),
        }
    }

    /// The sink entries are written to.
    pub fn sink(&self) -> &S {
        &self.sink
    }

    /// Checks and buffers one entry, stamped now unless it names its own time; returns its id.
    ///
    /// Does no I/O and never waits for a flush. Ids made here increase strictly in acceptance order.
    pub fn log(&self, draft: EntryDraft) -> Result<Uuid, LogError> {
        if self.state.lock().closing {
            return Err(LogError::Closed);
        }
        let prepared = draft.prepare(Timestamp::now()).map_err(LogError::Invalid)?;
        let mut st = self.state.lock();
        if st.closing {
            return Err(LogError::Closed);
        }
        if prepared.sanitized {
            st.stats.sanitized += 1;
        }
        let entry = prepared.finish(&mut st.ids);
        let id = entry.id();
        st.queue_bytes += entry.size_bytes();
        st.queue.push_back(entry);
        st.accepted += 1;
        st.stats.logged += 1;
        Ok(id)
    }

    /// Entries accepted and not yet written, those being written included.
    pub fn pending(&self) -> usize {
        let st = self.state.lock();
        st.queue.len() + st.in_flight
    }

    /// Writes everything buffered at the time of the call.
    ///
    /// When another flush is writing, this one waits for it and then writes what is still unwritten, so
    /// entries logged while a write is under way go into a later batch.
    pub async fn flush(&self) -> Result<FlushOutcome, FlushError> {
        self.begin_flush()?.run(self).await
    }

    /// The synchronous half of [`Batcher::flush`]: fixes, at the moment of the call, which entries the
    /// flush must write. Run the returned ticket to write them.
    pub fn begin_flush(&self) -> Result<FlushTicket, FlushError> {
        let mut st = self.state.lock();
        if st.closing {
            return Err(FlushError::Closed);
        }
        st.requested = st.requested.max(st.accepted);
        Ok(FlushTicket {
            settled_at_call: st.settled,
            target: st.accepted,
        })
    }

    /// Refuses new entries, writes what is buffered, then closes the sink.
    ///
    /// When the final flush fails, the unwritten entries stay buffered, the sink stays open and the error is
    /// returned; calling `close()` again tries again. Once it has succeeded, further calls return at once.
    pub async fn close(&self) -> Result<(), FlushError> {
        self.begin_close().run(self).await
    }

    /// The synchronous half of [`Batcher::close`]: from this moment `log()` and `flush()` refuse.
    pub fn begin_close(&self) -> CloseTicket {
        let mut st = self.state.lock();
        st.closing = true;
        st.requested = st.requested.max(st.accepted);
        CloseTicket {
            target: st.accepted,
        }
    }

    /// Whether `close()` was called.
    pub fn is_closing(&self) -> bool {
        self.state.lock().closing
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> Stats {
        let st = self.state.lock();
        Stats {
            buffered: st.queue.len() + st.in_flight,
            buffered_bytes: st.queue_bytes + st.in_flight_bytes,
            ..st.stats.clone()
        }
    }

    /// Writes batches until entries `1..=target` are written or a write fails.
    async fn flush_to(&self, target: u64) -> Result<(), FlushError> {
        let _writer = self.writer.lock().await;
        loop {
            let batch = {
                let mut st = self.state.lock();
                if st.settled >= target {
                    return Ok(());
                }
                let n = (st.requested - st.settled)
                    .min(self.config.max_batch_rows as u64)
                    .min(st.queue.len() as u64) as usize;
                InFlight::take(self, &mut st, n)
            };
            let started = Instant::now();
            match self.sink.write(batch.entries()).await {
                Ok(()) => batch.commit(started),
                Err(cause) => {
                    let pending = batch.give_back(&cause);
                    return Err(FlushError::Failed { cause, pending });
                }
            }
        }
    }
}

/// A batch taken out of the buffer for one write. Unless committed, it goes back to the front of the buffer
/// when dropped, so a write abandoned half-way (a dropped future) loses nothing.
struct InFlight<'a, S> {
    batcher: &'a Batcher<S>,
    entries: Vec<Entry>,
    bytes: usize,
}

impl<'a, S> InFlight<'a, S> {
    fn take(batcher: &'a Batcher<S>, st: &mut State, n: usize) -> Self {
        let entries: Vec<Entry> = st.queue.drain(..n).collect();
        let bytes = entries.iter().map(Entry::size_bytes).sum();
        st.queue_bytes -= bytes;
        st.in_flight += n;
        st.in_flight_bytes += bytes;
        InFlight {
            batcher,
            entries,
            bytes,
        }
    }

    fn entries(&self) -> &[Entry] {
        &self.entries
    }

    fn commit(mut self, started: Instant) {
        let n = self.entries.len();
        let mut st = self.batcher.state.lock();
        st.in_flight -= n;
        st.in_flight_bytes -= self.bytes;
        st.settled += n as u64;
        st.stats.written += n as u64;
        st.stats.batches += 1;
        st.stats.last_flush_ms = Some(started.elapsed().as_secs_f64() * 1000.0);
        self.entries.clear();
    }

    /// Returns the batch to the buffer after a failed write; the number of entries buffered then.
    fn give_back(mut self, cause: &WriteError) -> usize {
        let mut st = self.batcher.state.lock();
        st.stats.failed_flushes += 1;
        st.stats.last_error = Some((cause.clone(), Timestamp::now()));
        Self::restore(&mut st, std::mem::take(&mut self.entries), self.bytes);
        st.queue.len() + st.in_flight
    }

    fn restore(st: &mut State, entries: Vec<Entry>, bytes: usize) {
        st.in_flight -= entries.len();
        st.in_flight_bytes -= bytes;
        st.queue_bytes += bytes;
        for entry in entries.into_iter().rev() {
            st.queue.push_front(entry);
        }
    }
}

impl<S> Drop for InFlight<'_, S> {
    fn drop(&mut self) {
        if !self.entries.is_empty() {
            let mut st = self.batcher.state.lock();
            Self::restore(&mut st, std::mem::take(&mut self.entries), self.bytes);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::entry::TextField;
    use crate::sink::MemorySink;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::Arc;

    /// A sink that records batches and fails while told to; it can also hold a write until released.
    #[derive(Default)]
    struct TestSink {
        memory: MemorySink,
        batches: Mutex<Vec<Vec<Uuid>>>,
        fail: AtomicBool,
        /// Fail after storing (a lost reply).
        fail_after_store: AtomicBool,
        gate: Mutex<Option<Arc<tokio::sync::Notify>>>,
        writes_started: AtomicUsize,
    }

    impl Sink for Arc<TestSink> {
        async fn write(&self, batch: &[Entry]) -> Result<(), WriteError> {
            self.writes_started.fetch_add(1, Ordering::SeqCst);
            let gate = self.gate.lock().clone();
            if let Some(gate) = gate {
                gate.notified().await;
            }
            if self.fail.load(Ordering::SeqCst) {
                return Err(WriteError::new("connection refused"));
            }
            self.batches
                .lock()
                .push(batch.iter().map(Entry::id).collect());
            self.memory.write(batch).await?;
            if self.fail_after_store.load(Ordering::SeqCst) {
                return Err(WriteError::new("connection reset"));
            }
            Ok(())
        }
        async fn close(&self) {}
    }

    fn batcher(rows: usize) -> (Arc<Batcher<Arc<TestSink>>>, Arc<TestSink>) {
        let sink = Arc::new(TestSink::default());
        let b = Batcher::new(
            sink.clone(),
            BatcherConfig {
                max_batch_rows: rows,
            },
        );
        (Arc::new(b), sink)
    }

    fn log_n(b: &Batcher<Arc<TestSink>>, n: usize) -> Vec<Uuid> {
        (0..n)
            .map(|i| {
                b.log(EntryDraft::new("act").with(TextField::Actor, format!("u{i}")))
                    .unwrap()
            })
            .collect()
    }

    fn written_ids(sink: &TestSink) -> Vec<Uuid> {
        sink.memory.entries().iter().map(Entry::id).collect()
    }

    #[tokio::test]
    async fn flush_writes_everything_in_order_in_one_batch() {
        let (b, sink) = batcher(1000);
        let ids = log_n(&b, 5);
        assert_eq!(b.pending(), 5);
        let out = b.flush().await.unwrap();
        assert_eq!(
            out,
            FlushOutcome {
                written: 5,
                pending: 0
            }
        );
        assert_eq!(sink.batches.lock().len(), 1);
        assert_eq!(written_ids(&sink), ids);
        let mut sorted = ids.clone();
        sorted.sort();
        assert_eq!(sorted, ids, "generated ids increase in log order");
    }

    #[tokio::test]
    async fn an_empty_flush_does_not_touch_the_sink() {
        let (b, sink) = batcher(10);
        assert_eq!(b.flush().await.unwrap().written, 0);
        assert_eq!(sink.writes_started.load(Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn a_large_flush_is_split_into_max_batch_rows() {
        let (b, sink) = batcher(4);
        let ids = log_n(&b, 10);
        b.flush().await.unwrap();
        let sizes: Vec<usize> = sink.batches.lock().iter().map(Vec::len).collect();
        assert_eq!(sizes, [4, 4, 2]);
        assert_eq!(written_ids(&sink), ids);
    }

    #[tokio::test]
    async fn a_failed_flush_keeps_entries_ahead_of_newer_ones() {
        let (b, sink) = batcher(1000);
        let mut ids = log_n(&b, 3);
        sink.fail.store(true, Ordering::SeqCst);
        let err = b.flush().await.unwrap_err();
        assert!(
            matches!(err, FlushError::Failed { pending: 3, .. }),
            "{err:?}"
        );
        assert_eq!(b.stats().failed_flushes, 1);
        ids.extend(log_n(&b, 2));
        sink.fail.store(false, Ordering::SeqCst);
        assert_eq!(b.flush().await.unwrap().written, 5);
        assert_eq!(written_ids(&sink), ids);
    }

    #[tokio::test]
    async fn a_retry_after_a_lost_reply_stores_each_entry_once() {
        let (b, sink) = batcher(1000);
        let ids = log_n(&b, 3);
        sink.fail_after_store.store(true, Ordering::SeqCst);
        assert!(b.flush().await.is_err());
        sink.fail_after_store.store(false, Ordering::SeqCst);
        b.flush().await.unwrap();
        assert_eq!(sink.batches.lock().len(), 2, "the batch was sent twice");
        assert_eq!(written_ids(&sink), ids, "but stored once");
    }

    #[tokio::test]
    async fn a_failure_in_a_later_batch_keeps_the_earlier_batches_written() {
        let (b, sink) = batcher(2);
        let ids = log_n(&b, 5);
        let gate = Arc::new(tokio::sync::Notify::new());
        *sink.gate.lock() = Some(gate.clone());
        let flush = tokio::spawn({
            let b = b.clone();
            async move { b.flush().await }
        });
        gate.notify_one(); // first batch succeeds
        while sink.writes_started.load(Ordering::SeqCst) < 2 {
            tokio::task::yield_now().await;
        }
        sink.fail.store(true, Ordering::SeqCst);
        gate.notify_one(); // second fails
        let err = flush.await.unwrap().unwrap_err();
        assert!(
            matches!(err, FlushError::Failed { pending: 3, .. }),
            "{err:?}"
        );
        assert_eq!(written_ids(&sink), ids[..2]);
        *sink.gate.lock() = None;
        sink.fail.store(false, Ordering::SeqCst);
        b.flush().await.unwrap();
        assert_eq!(written_ids(&sink), ids);
    }

    #[tokio::test]
    async fn concurrent_flushes_share_the_writer_and_never_send_an_entry_twice() {
        let (b, sink) = batcher(1000);
        let gate = Arc::new(tokio::sync::Notify::new());
        *sink.gate.lock() = Some(gate.clone());
        let mut ids = log_n(&b, 3);
        let first = tokio::spawn({
            let b = b.clone();
            async move { b.flush().await }
        });
        while sink.writes_started.load(Ordering::SeqCst) < 1 {
            tokio::task::yield_now().await;
        }
        // Logged while the first write is under way: not in its batch.
        ids.extend(log_n(&b, 2));
        let second = tokio::spawn({
            let b = b.clone();
            async move { b.flush().await }
        });
        let third = tokio::spawn({
            let b = b.clone();
            async move { b.flush().await }
        });
        *sink.gate.lock() = None;
        gate.notify_one();
        let r1 = first.await.unwrap().unwrap();
        let r2 = second.await.unwrap().unwrap();
        let r3 = third.await.unwrap().unwrap();
        assert_eq!(r1.written, 3);
        assert_eq!((r2.written, r3.written), (5, 5));
        let sizes: Vec<usize> = sink.batches.lock().iter().map(Vec::len).collect();
        assert_eq!(sizes, [3, 2], "the two waiting flushes shared one batch");
        assert_eq!(written_ids(&sink), ids);
    }

    #[tokio::test]
    async fn an_abandoned_write_returns_its_batch_to_the_buffer() {
        let (b, sink) = batcher(1000);
        let ids = log_n(&b, 3);
        let gate = Arc::new(tokio::sync::Notify::new());
        *sink.gate.lock() = Some(gate);
        let flush = tokio::spawn({
            let b = b.clone();
            async move { b.flush().await }
        });
        while sink.writes_started.load(Ordering::SeqCst) < 1 {
            tokio::task::yield_now().await;
        }
        flush.abort();
        assert!(flush.await.unwrap_err().is_cancelled());
        assert_eq!(b.pending(), 3);
        *sink.gate.lock() = None;
        b.flush().await.unwrap();
        assert_eq!(written_ids(&sink), ids);
    }

    #[tokio::test]
    async fn close_flushes_then_refuses_and_a_failed_close_can_be_retried() {
        let (b, sink) = batcher(1000);
        let ids = log_n(&b, 2);
        sink.fail.store(true, Ordering::SeqCst);
        assert!(matches!(
            b.close().await,
            Err(FlushError::Failed { pending: 2, .. })
        ));
        assert_eq!(
            b.log(EntryDraft::new("late")).unwrap_err(),
            LogError::Closed
        );
        assert_eq!(b.flush().await.unwrap_err(), FlushError::Closed);
        sink.fail.store(false, Ordering::SeqCst);
        b.close().await.unwrap();
        b.close().await.unwrap();
        assert_eq!(written_ids(&sink), ids);
    }

    #[tokio::test]
    async fn invalid_entries_change_nothing() {
        let (b, _) = batcher(1000);
        log_n(&b, 2);
        let err = b.log(EntryDraft::new("")).unwrap_err();
        assert!(matches!(
            err,
            LogError::Invalid(InvalidEntry {
                field: "action",
                ..
            })
        ));
        let s = b.stats();
        assert_eq!((s.logged, s.buffered, s.written), (2, 2, 0));
    }
}
