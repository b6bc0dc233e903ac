//! The batcher: an ordered, bounded buffer of accepted entries, and the flushes that move them to a [`Sink`].
//!
//! Entries are numbered by acceptance: entry `k` is the `k`-th entry buffered. Flushes write from the
//! front of the buffer, one batch at a time, so "entries `1..=k` are written" is a single counter
//! (`settled`), and a flush that asked for everything up to `k` is done once `settled >= k`.

mod background;
mod policy;
mod spooling;
mod stats;
#[cfg(test)]
mod tests;

use std::collections::VecDeque;
use std::future::Future;
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::sync::Notify;
use tokio::time::Instant;

pub use self::background::{run_background, run_replay, run_spool_sync, BackgroundConfig};
pub use self::policy::{Backoff, BatcherConfig, OverflowPolicy, Sampling};
use self::spooling::{Replay, SpillReader};
use self::stats::Window;
pub use self::stats::{Histogram, Percentiles, SpoolReport, Stats};
use crate::entry::{Entry, EntryDraft, InvalidEntry, Timestamp};
use crate::sink::{FailureKind, Sink, Staged, WriteError};
use crate::spool::{Recovery, Spool, SpoolError, SpoolStats};
use crate::uuid7::{Uuid, Uuid7Generator};

/// Hears what the batcher does, for callbacks and logs. Called outside the batcher's lock, from whichever
/// thread did the work (the caller of `log()`, or a flush's thread); it must not block.
pub trait Observer: Send + Sync + 'static {
    /// A statement committed `rows` entries in `latency_ms`.
    fn on_flush(&self, _rows: usize, _latency_ms: f64) {}
    /// A write failed; `pending` entries are buffered after it.
    fn on_error(&self, _cause: &WriteError, _pending: usize) {}
    /// An entry the table refused was moved to the dead-letter place.
    fn on_dead_letter(&self, _entry: &Entry, _cause: &WriteError) {}
    /// The buffer reached the high-water mark (once per crossing).
    fn on_high_water(&self, _buffered: usize, _buffered_bytes: usize) {}
}

/// One observer heard by several batchers (a Redis producer's stream batcher and its direct one), so that
/// each event is reported once, by the batcher it happened in.
impl<O: Observer> Observer for Arc<O> {
    fn on_flush(&self, rows: usize, latency_ms: f64) {
        (**self).on_flush(rows, latency_ms)
    }
    fn on_error(&self, cause: &WriteError, pending: usize) {
        (**self).on_error(cause, pending)
    }
    fn on_dead_letter(&self, entry: &Entry, cause: &WriteError) {
        (**self).on_dead_letter(entry, cause)
    }
    fn on_high_water(&self, buffered: usize, buffered_bytes: usize) {
        (**self).on_high_water(buffered, buffered_bytes)
    }
}

/// Why `log()` did not take an entry. Nothing already buffered is affected.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LogError {
    /// The entry breaks a rule; the field at fault is named.
    Invalid(InvalidEntry),
    /// `close()` was called.
    Closed,
    /// The buffer is at a bound and the policy is [`OverflowPolicy::Reject`].
    BufferFull {
        /// Entries buffered.
        entries: usize,
        /// Bytes buffered.
        bytes: usize,
    },
}

impl std::fmt::Display for LogError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LogError::Invalid(e) => e.fmt(f),
            LogError::Closed => f.write_str("the batcher is closed"),
            LogError::BufferFull { entries, bytes } => write!(
                f,
                "buffer full ({entries} entries, {bytes} bytes held); entry not taken"
            ),
        }
    }
}

impl std::error::Error for LogError {}

/// What became of an entry `log()` accepted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Disposition {
    /// Buffered, to be written; `seq` is its number in acceptance order.
    Buffered { seq: u64 },
    /// Not kept by sampling (counted).
    SampledOut,
    /// Discarded at the buffer's bound under [`OverflowPolicy::Drop`] (counted).
    Dropped,
}

/// An accepted entry: its id, and where it went.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Logged {
    pub id: Uuid,
    pub disposition: Disposition,
}

/// Why a flush (or the final flush of `close()`) did not write everything it was asked to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FlushError {
    /// The batcher was closed before this flush.
    Closed,
    /// The sink failed (or `close()` ran out of time). The unwritten entries are still buffered, in order.
    Failed {
        cause: WriteError,
        /// Entries buffered after the failure.
        pending: usize,
    },
}

impl std::fmt::Display for FlushError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FlushError::Closed => f.write_str("the batcher is closed"),
            FlushError::Failed { cause, pending } => {
                write!(f, "{cause}; entries still buffered: {pending}")
            }
        }
    }
}

impl std::error::Error for FlushError {}

/// What a successful flush did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlushOutcome {
    /// Entries that were buffered when the flush was called and are now written, whichever flush wrote them.
    pub written: u64,
    /// Entries buffered when the flush finished (logged meanwhile, or by other callers).
    pub pending: usize,
}

struct State {
    queue: VecDeque<Entry>,
    queue_bytes: usize,
    ids: Uuid7Generator,
    rng: fastrand::Rng,
    /// Entries ever buffered; entry numbers run `1..=accepted`.
    accepted: u64,
    /// Entries `1..=settled` are written.
    settled: u64,
    /// Entries `1..=sent` have been handed to the sink, in some attempt.
    sent: u64,
    /// The highest entry number any flush has asked for.
    requested: u64,
    /// Entries taken out of `queue` by the write under way.
    in_flight: usize,
    in_flight_bytes: usize,
    /// `close()` was called: `log()` and `flush()` refuse.
    closing: bool,
    /// `close()` finished: the sink is closed. Holds the reason entries were left unwritten, if any.
    closed: Option<Option<WriteError>>,
    /// `close()` ran out of time: every flush still waiting gives up.
    abandoned: bool,
    /// A critical flush is running; `critical_queued`: another critical entry came meanwhile.
    critical_running: bool,
    critical_queued: bool,
    /// The newest critical entry a critical flush was asked for.
    critical_target: u64,
    stats: Stats,
    window: Window,
    /// The durable spool every buffered entry is appended to, until `close()` ends it.
    spool: Option<Arc<Spool>>,
    /// The spool's figures when `close()` ended it.
    spool_final: Option<SpoolStats>,
    /// The last append failed on disk trouble (reported once per streak of failures).
    spool_failing: bool,
    /// Entries kept in memory only because the spool could not take them (disk trouble).
    unspooled: u64,
    /// With a spool, the entries after those in `queue`, numbered `queue`'s last + 1 onwards, that are
    /// held in the spool only (they came while memory was at its bound). They are read back into `queue`,
    /// in order, as it empties; entries accepted meanwhile are spilled too, so order holds.
    spilled: usize,
    /// Entries accepted after the spilled ones that the spool could not take (disk trouble): held in
    /// memory, they join `queue` once every spilled entry is read back. Empty unless `spilled > 0`.
    tail: VecDeque<Entry>,
    tail_bytes: usize,
}

impl State {
    /// Entries accepted and not yet settled, wherever they are held.
    fn buffered(&self) -> usize {
        self.waiting() + self.in_flight
    }

    /// Entries accepted and not yet handed to a write.
    fn waiting(&self) -> usize {
        self.queue.len() + self.spilled + self.tail.len()
    }

    /// Entries held in memory (the spilled ones are on disk only).
    fn in_memory(&self) -> usize {
        self.queue.len() + self.in_flight + self.tail.len()
    }

    /// Bytes of the entries held in memory.
    fn buffered_bytes(&self) -> usize {
        self.queue_bytes + self.in_flight_bytes + self.tail_bytes
    }

    /// Counts an entry refused at a bound under [`OverflowPolicy::Reject`], and says why.
    fn refuse_full(&mut self) -> LogError {
        self.stats.rejected += 1;
        LogError::BufferFull {
            entries: self.buffered(),
            bytes: self.buffered_bytes(),
        }
    }

    /// The number of the first spilled entry (meaningful while `spilled > 0`).
    fn first_spilled(&self) -> u64 {
        self.accepted - (self.spilled + self.tail.len()) as u64 + 1
    }
}

/// An ordered, bounded, flushable buffer of audit entries in front of a [`Sink`].
///
/// Guarantees, whatever the interleaving of calls:
/// - entries reach the sink in the order `log()` accepted them, in batches of at most
///   [`BatcherConfig::max_batch_rows`], one batch at a time, or, with a sink that stages
///   ([`Sink::can_stage`]), at most two at a time, each committed only once the one before it is;
/// - a failed write leaves its entries buffered ahead of newer ones, and the next flush sends them again;
/// - concurrent flushes (and the background writer) share batches rather than race: no entry is sent twice
///   by two flushes, and each flush returns once everything buffered when it was called is written;
/// - every accepted entry is counted in exactly one of buffered, written, sampled out, dropped.
pub struct Batcher<S> {
    sink: S,
    config: BatcherConfig,
    state: Mutex<State>,
    /// Held by the one flush that is writing; others queue on it in call order. It keeps the batch staged
    /// by the last flush (written, its transaction not yet committed), which the next flush commits first.
    writer: tokio::sync::Mutex<Option<Held>>,
    /// Wakes the background writer: the buffer reached `flush_at_entries`.
    wake: Arc<Notify>,
    /// Wakes the background writer and `close()`'s retry sleeps: `close()` was called.
    shutdown: Arc<Notify>,
    /// Wakes every flush still waiting: `close()` ran out of time.
    abandon: Notify,
    observer: Option<Box<dyn Observer>>,
    /// Entries buffered at which [`Observer::on_high_water`] is called.
    high_water_mark: Option<usize>,
    /// Entries of dead processes' spools still to write, ahead of new ones (with a spool only).
    replay: Option<Arc<Mutex<Replay>>>,
    /// Held by the spool's periodic work and by its end at `close()`, so that they never overlap (a sync
    /// preparing a segment while the close removes the spool's files).
    spool_work: Arc<Mutex<()>>,
    /// Reads spilled entries back from the spool, resuming where it stopped (used under `writer`).
    spill_reader: Arc<Mutex<SpillReader>>,
}

impl<S: Sink> Batcher<S> {
    pub fn new(sink: S, config: BatcherConfig) -> Self {
        Batcher {
            sink,
            config: BatcherConfig {
                max_batch_rows: config.max_batch_rows.max(1),
                ..config
            },
            state: Mutex::new(State {
                queue: VecDeque::new(),
                queue_bytes: 0,
                ids: Uuid7Generator::new(),
                rng: fastrand::Rng::new(),
                accepted: 0,
                settled: 0,
                sent: 0,
                requested: 0,
                in_flight: 0,
                in_flight_bytes: 0,
                closing: false,
                closed: None,
                abandoned: false,
                critical_running: false,
                critical_queued: false,
                critical_target: 0,
                stats: Stats::default(),
                window: Window::default(),
                spool: None,
                spool_final: None,
                spool_failing: false,
                unspooled: 0,
                spilled: 0,
                tail: VecDeque::new(),
                tail_bytes: 0,
            }),
            writer: tokio::sync::Mutex::new(None),
            wake: Arc::new(Notify::new()),
            shutdown: Arc::new(Notify::new()),
            abandon: Notify::new(),
            observer: None,
            high_water_mark: None,
            replay: None,
            spool_work: Arc::new(Mutex::new(())),
            spill_reader: Arc::default(),
        }
    }

    /// Makes the batcher durable: every entry it buffers is appended to `spool` before `log()` returns,
    /// and the entries `recovery` streams (those of dead processes' spools) are written before any entry
    /// of this batcher, each once, with their original ids and times. See [`spooling`](self) for the
    /// rest of the wiring (`spool_maintain`, `replay_now`, and `close()`).
    pub fn with_spool(mut self, spool: Spool, recovery: Recovery) -> Self {
        self.state.get_mut().spool = Some(Arc::new(spool));
        self.replay = Some(Arc::new(Mutex::new(Replay::new(recovery))));
        self
    }

    /// Reports what happens to `observer`; with `high_water_mark`, also each time the buffer reaches it.
    pub fn with_observer(
        mut self,
        observer: Box<dyn Observer>,
        high_water_mark: Option<usize>,
    ) -> Self {
        self.observer = Some(observer);
        self.high_water_mark = high_water_mark;
        self
    }

    /// The sink entries are written to.
    pub fn sink(&self) -> &S {
        &self.sink
    }

    /// Checks one entry, stamps it (now, unless it names its own time) and decides its fate: buffered,
    /// sampled out, dropped at the bound, or refused at the bound. Critical entries are always buffered.
    ///
    /// Does no I/O and never waits for a flush. Ids increase strictly in acceptance order.
    pub fn log(&self, draft: EntryDraft) -> Result<Logged, LogError> {
        self.log_bounded(draft, false)
    }

    /// [`Batcher::log`], with `outer_full`: a bound outside the buffer (a Redis stream's `maxLength`) is
    /// reached, so a non-critical entry meets `onBufferFull` as at the buffer's own bound (refused and
    /// counted in `rejected`, or dropped and counted in `dropped`).
    pub fn log_bounded(&self, draft: EntryDraft, outer_full: bool) -> Result<Logged, LogError> {
        if self.state.lock().closing {
            return Err(LogError::Closed);
        }
        let prepared = draft.prepare(Timestamp::now()).map_err(LogError::Invalid)?;
        let size = prepared.size_bytes();
        if size > self.config.max_entry_bytes {
            return Err(LogError::Invalid(InvalidEntry::too_large(
                size,
                self.config.max_entry_bytes,
            )));
        }
        let critical = prepared.critical;
        let rate = if critical {
            1.0
        } else {
            self.config.sampling.rate_for(prepared.action())
        };
        let mut guard = self.state.lock();
        // One exclusive borrow, so that the spool (a field) can be used while other fields change.
        let st = &mut *guard;
        if st.closing {
            return Err(LogError::Closed);
        }
        let keep = rate >= 1.0 || st.rng.f64() < rate;
        let memory_full = st.in_memory() >= self.config.max_buffered_entries
            || st.buffered_bytes() + size > self.config.max_buffered_bytes;
        // With a spool, the memory bound is where entries start to be held on disk only; only entries
        // that have to stay in memory (after spilled ones the disk would not take) meet it.
        let spooling = st.spool.is_some();
        let mut full =
            !critical && (outer_full || (memory_full && (!spooling || !st.tail.is_empty())));
        if keep && full && self.config.on_buffer_full == OverflowPolicy::Reject {
            return Err(st.refuse_full());
        }
        let sanitized = prepared.sanitized;
        let entry = prepared.finish(&mut st.ids);
        let id = entry.id();
        let mut spool_error = None;
        let mut place = Place::Queue;
        if keep && !full {
            if let Some(spool) = &st.spool {
                // Under the state lock, so that the spool's order is acceptance order.
                let seq = st.accepted + 1;
                let appended = if critical {
                    spool.append_critical(seq, &entry)
                } else {
                    spool.append(seq, &entry)
                };
                let spilling = st.spilled > 0;
                match appended {
                    Ok(()) => {
                        st.spool_failing = false;
                        place = if !st.tail.is_empty() {
                            Place::Tail
                        } else if spilling || memory_full {
                            Place::Spill
                        } else {
                            Place::Queue
                        };
                    }
                    Err(SpoolError::Full { .. }) => {
                        if self.config.on_buffer_full == OverflowPolicy::Reject {
                            return Err(st.refuse_full());
                        }
                        full = true;
                    }
                    // Disk trouble: the entry is kept in memory only, counted, reported once; at the
                    // memory bound `onBufferFull` applies, as without a spool.
                    Err(e) => {
                        if memory_full && !critical {
                            if self.config.on_buffer_full == OverflowPolicy::Reject {
                                return Err(st.refuse_full());
                            }
                            full = true;
                        } else {
                            st.unspooled += 1;
                            place = if spilling { Place::Tail } else { Place::Queue };
                        }
                        if !std::mem::replace(&mut st.spool_failing, true) {
                            spool_error = Some(e);
                        }
                    }
                }
            }
        }
        if sanitized {
            st.stats.sanitized += 1;
        }
        st.stats.logged += 1;
        let disposition = if !keep {
            st.stats.sampled_out += 1;
            Disposition::SampledOut
        } else if full {
            st.stats.dropped += 1;
            Disposition::Dropped
        } else {
            if critical {
                st.stats.critical += 1;
            }
            match place {
                Place::Queue => {
                    st.queue_bytes += entry.size_bytes();
                    st.queue.push_back(entry);
                }
                Place::Spill => st.spilled += 1,
                Place::Tail => {
                    st.tail_bytes += entry.size_bytes();
                    st.tail.push_back(entry);
                }
            }
            st.accepted += 1;
            Disposition::Buffered { seq: st.accepted }
        };
        // A full batch is written at once (by the background writer); so is the buffer at
        // `flush_at_entries`.
        let waiting = st.waiting();
        if waiting > 0 && waiting.is_multiple_of(self.config.max_batch_rows)
            || self.config.flush_at_entries.is_some_and(|n| waiting >= n)
        {
            self.wake.notify_one();
        }
        let crossed = matches!(disposition, Disposition::Buffered { .. })
            && self.high_water_mark == Some(st.buffered());
        let (buffered, bytes) = (st.buffered(), st.buffered_bytes());
        drop(guard);
        if let (Some(e), Some(o)) = (spool_error, &self.observer) {
            o.on_error(&spooling::unspooled_error(&e), buffered);
        }
        if crossed {
            if let Some(o) = &self.observer {
                o.on_high_water(buffered, bytes);
            }
        }
        Ok(Logged { id, disposition })
    }

    /// The largest entry [`Batcher::log`] takes, in bytes (see [`Entry::size_bytes`]).
    pub fn max_entry_bytes(&self) -> usize {
        self.config.max_entry_bytes
    }

    /// A flush of everything up to the critical entry numbered `seq`, coalesced: returns the task to
    /// spawn when no critical flush is running, and `None` when one is (it writes this entry too, after
    /// the attempt in progress). So however many critical entries arrive during an outage, at most one
    /// critical flush runs and at most one waits behind it, and after a failure the next attempt waits
    /// the same [`Backoff`] as the background writer.
    pub fn critical_flush(
        self: &Arc<Self>,
        seq: u64,
    ) -> Option<impl Future<Output = ()> + Send + 'static>
    where
        S: Sink,
    {
        {
            let mut st = self.state.lock();
            st.critical_target = st.critical_target.max(seq);
            if st.critical_running {
                st.critical_queued = true;
                return None;
            }
            st.critical_running = true;
        }
        let batcher = self.clone();
        Some(async move {
            let mut failures = 0;
            loop {
                let target = {
                    let mut st = batcher.state.lock();
                    st.critical_queued = false;
                    st.critical_target
                };
                match batcher.ticket_through(target).run(&batcher).await {
                    Ok(_) => failures = 0,
                    Err(_) => {
                        failures += 1;
                        let retry_at = Instant::now() + batcher.config.backoff.delay(failures);
                        let closed = batcher.shutdown.notified();
                        tokio::pin!(closed);
                        closed.as_mut().enable();
                        if !batcher.is_closing() {
                            tokio::select! {
                                _ = tokio::time::sleep_until(retry_at) => {}
                                _ = closed => {}
                            }
                        }
                    }
                }
                let mut st = batcher.state.lock();
                if !st.critical_queued || st.closing {
                    st.critical_running = false;
                    return;
                }
            }
        })
    }

    /// Entries accepted and not yet written, those being written included.
    pub fn pending(&self) -> usize {
        self.state.lock().buffered()
    }

    /// Copies of the entries waiting in memory, oldest first (not those being written at this moment,
    /// nor those a spool holds beyond the memory bound). After `close()` they are the entries it could
    /// not write (with a spool, all of them are also in the spool, for the next start, but for those
    /// counted as unspooled).
    pub fn buffered_entries(&self) -> Vec<Entry> {
        let st = self.state.lock();
        st.queue.iter().chain(&st.tail).cloned().collect()
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
        let st = self.state.lock();
        if st.closing {
            return Err(FlushError::Closed);
        }
        let target = st.accepted;
        drop(st);
        Ok(self.ticket_through(target))
    }

    /// The outcome of `ticket` if it has nothing left to wait for (everything it covers is already
    /// settled), without running it.
    pub fn outcome_if_settled(&self, ticket: &FlushTicket) -> Option<FlushOutcome> {
        let st = self.state.lock();
        (st.settled >= ticket.target).then(|| FlushOutcome {
            written: ticket.target.saturating_sub(ticket.settled_at_call),
            pending: st.buffered(),
        })
    }

    /// A flush of the entries numbered up to `seq` (and so of everything logged before entry `seq`):
    /// what `write()` and critical entries wait for.
    pub fn ticket_through(&self, seq: u64) -> FlushTicket {
        let mut st = self.state.lock();
        st.requested = st.requested.max(seq);
        FlushTicket {
            settled_at_call: st.settled,
            target: seq,
        }
    }

    /// Refuses new entries, writes what is buffered (retrying with backoff until `deadline`), then closes
    /// the sink. See [`CloseTicket::run`].
    pub async fn close(&self, deadline: Instant) -> Result<(), FlushError> {
        self.begin_close(deadline).run(self).await
    }

    /// The synchronous half of [`Batcher::close`]: from this moment `log()` and `flush()` refuse, and the
    /// background writer stops.
    pub fn begin_close(&self, deadline: Instant) -> CloseTicket {
        let mut st = self.state.lock();
        st.closing = true;
        st.requested = st.requested.max(st.accepted);
        let target = st.accepted;
        drop(st);
        self.shutdown.notify_waiters();
        self.wake.notify_one();
        CloseTicket { target, deadline }
    }

    /// Whether `close()` was called.
    pub fn is_closing(&self) -> bool {
        self.state.lock().closing
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> Stats {
        let st = self.state.lock();
        let mut stats = Stats {
            buffered: st.buffered(),
            buffered_bytes: st.buffered_bytes(),
            flush_latency_ms: st.window.latency(),
            batch_size: st.window.batch_size(),
            ..st.stats.clone()
        };
        let spool = st.spool.clone();
        let (unspooled, spilled) = (st.unspooled, st.spilled as u64);
        let last = st.spool_final.clone();
        drop(st);
        let figures = spool.map(|s| s.stats()).or(last);
        stats.spool = figures.map(|spool| {
            let (replayed, replay_dead_lettered) =
                self.replay.as_ref().map_or((0, 0), |r| r.lock().counts());
            SpoolReport {
                spool,
                replayed,
                replay_dead_lettered,
                unspooled,
                spilled,
            }
        });
        stats
    }

    /// Writes batches until entries `1..=target` are settled (written or dead-lettered) or a write fails.
    async fn flush_to(&self, target: u64) -> Result<(), FlushError> {
        let mut slot = self.writer.lock().await;
        // Entries of dead processes go first.
        self.replay_recovered().await?;
        loop {
            let read_back = {
                let st = self.state.lock();
                if st.settled >= target {
                    // A batch staged for a later flush stays staged: that flush commits it.
                    return Ok(());
                }
                slot.is_none() && st.queue.is_empty() && st.spilled > 0
            };
            if read_back {
                self.read_back_spilled().await?;
                continue;
            }
            if let Some(held) = slot.take() {
                self.commit_held(held, &mut slot).await?;
                continue;
            }
            let batch = {
                let mut st = self.state.lock();
                let n = (st.requested + 1)
                    .saturating_sub(st.settled + st.in_flight as u64 + 1)
                    .min(self.config.max_batch_rows as u64)
                    .min(st.queue.len() as u64) as usize;
                InFlight::take(self, &mut st, n)
            };
            if let Some(second) = self.take_second(&batch) {
                self.write_pair(Pair {
                    second: Some(second),
                    first: Some(batch),
                })
                .await?;
                continue;
            }
            if batch.new && self.sink.can_stage(batch.entries().len()) {
                // Staged now and committed by the next turn of this loop, or by the next flush, while the
                // batch after it is staged: the commit of one overlaps the writing of the next.
                match self.sink.stage_new(batch.entries()).await {
                    Ok(staged) => *slot = Some(Held::new(batch, staged, Instant::now())),
                    Err(cause) => {
                        // Written again at once, one statement at a time.
                        drop(batch);
                        self.record_failed_attempt(cause);
                    }
                }
                continue;
            }
            let mut batch = batch;
            let started = Instant::now();
            let written = if batch.new {
                self.sink.write_new(batch.entries()).await
            } else {
                self.sink.write(batch.entries()).await
            };
            self.record_recovered_failures();
            match written {
                Ok(()) => {
                    self.record_statement(started, batch.entries().len());
                    batch.progress = Progress::all(batch.entries().len());
                }
                Err(cause) if cause.kind == FailureKind::Rejected => {
                    let InFlight {
                        entries, progress, ..
                    } = &mut batch;
                    self.isolate(entries, progress, cause).await
                }
                Err(cause) => batch.progress.error = Some(cause),
            }
            self.finish(batch)?;
        }
    }

    /// Settles `batch` as far as it got; its error, if any, is reported and returned.
    fn finish(&self, batch: InFlight<'_, S>) -> Result<(), FlushError> {
        let (pending, error) = batch.settle();
        match error {
            Some(cause) => {
                if let Some(o) = &self.observer {
                    o.on_error(&cause, pending);
                }
                Err(FlushError::Failed { cause, pending })
            }
            None => Ok(()),
        }
    }

    /// The batch after `first`, to be written at the same time, when both are new, the sink can stage
    /// both, and the second is already asked for (by this flush or a later one).
    fn take_second(&self, first: &InFlight<'_, S>) -> Option<InFlight<'_, S>> {
        if !first.new || !self.sink.can_stage(first.entries().len()) {
            return None;
        }
        self.take_stageable()
    }

    /// The next batch after those in flight, when it is new, asked for, and the sink can stage it.
    fn take_stageable(&self) -> Option<InFlight<'_, S>> {
        let mut st = self.state.lock();
        let next = st.settled + st.in_flight as u64 + 1;
        let n = (st.requested + 1)
            .saturating_sub(next)
            .min(self.config.max_batch_rows as u64)
            .min(st.queue.len() as u64) as usize;
        (n > 0 && next > st.sent && self.sink.can_stage(n))
            .then(|| InFlight::take(self, &mut st, n))
    }

    /// Commits `held`, the batch staged last, while staging the batch after it when that one is asked for
    /// and can be (it is then left in `slot`, for the next turn or the next flush). If the commit fails, the
    /// next batch is undone and both go back to the buffer, in order.
    async fn commit_held(&self, held: Held, slot: &mut Option<Held>) -> Result<(), FlushError> {
        // Back under an `InFlight`, so that a flush dropped from here on puts the entries back in order.
        let (first, staged, started) = held.resume(self);
        let mut pair = Pair {
            second: self.take_stageable(),
            first: Some(first),
        };
        let next_started = Instant::now();
        let next = pair
            .second
            .as_ref()
            .map(|b| self.sink.stage_new(b.entries()));
        let (committed, next) = tokio::join!(staged.commit(), async {
            match next {
                Some(stage) => Some(stage.await),
                None => None,
            }
        });
        let first = pair.first.take().expect("set above");
        if committed.is_err() {
            // The batch after it goes back first, undone, so that this one ends up in front of it.
            drop(next);
            drop(pair);
            return self.settle_commit(first, started, committed);
        }
        self.settle_commit(first, started, committed)?;
        match (pair.second.take(), next) {
            (Some(second), Some(Ok(staged))) => {
                *slot = Some(Held::new(second, staged, next_started))
            }
            (second, Some(Err(cause))) => {
                drop(second);
                self.record_failed_attempt(cause);
            }
            _ => {}
        }
        Ok(())
    }

    /// Writes two consecutive new batches at once, each staged by the sink ([`Sink::stage_new`]), and
    /// commits them in order: the second only once the first is committed. If the first fails, the second
    /// is undone (never committed) and both go back to the buffer, in order. If a stage fails, both are
    /// undone, the failure is counted and reported as a failed attempt, and the caller's loop writes them
    /// again one at a time.
    async fn write_pair(&self, mut pair: Pair<'_, S>) -> Result<(), FlushError> {
        let (first, second) = match (&pair.first, &pair.second) {
            (Some(first), Some(second)) => (first.entries(), second.entries()),
            _ => return Ok(()),
        };
        let started = Instant::now();
        let (a, b) = tokio::join!(self.sink.stage_new(first), self.sink.stage_new(second));
        let (a, b) = match (a, b) {
            (Ok(a), Ok(b)) => (a, b),
            (a, b) => {
                let failures: Vec<WriteError> = [a.err(), b.err()].into_iter().flatten().collect();
                drop(pair); // the second batch back to the buffer, then the first in front of it
                for cause in failures {
                    self.record_failed_attempt(cause);
                }
                return Ok(());
            }
        };
        // Each batch stays in `pair` until its outcome is known, so that a flush dropped meanwhile puts
        // both back in order.
        let committed = a.commit().await;
        let first = pair.first.take().expect("checked above");
        if committed.is_err() {
            drop(b);
            drop(pair);
            return self.settle_commit(first, started, committed);
        }
        self.settle_commit(first, started, committed)?;
        let committed = b.commit().await;
        let second = pair.second.take().expect("checked above");
        self.settle_commit(second, started, committed)
    }

    /// Settles a staged `batch` by the outcome of its commit (anything staged after it already undone
    /// when that failed). Committed: counted as a statement and written. Refused for a row (a deferred
    /// constraint): nothing was committed, so the batch goes back and is written again at once, one
    /// statement at a time, which finds the row. Any other failure fails the flush, keeping the batch.
    fn settle_commit(
        &self,
        mut batch: InFlight<'_, S>,
        started: Instant,
        committed: Result<(), WriteError>,
    ) -> Result<(), FlushError> {
        match committed {
            Ok(()) => {
                self.record_statement(started, batch.entries().len());
                batch.progress = Progress::all(batch.entries().len());
            }
            Err(cause) if cause.kind == FailureKind::Rejected => {
                drop(batch);
                self.record_failed_attempt(cause);
                return Ok(());
            }
            Err(cause) => batch.progress.error = Some(cause),
        }
        self.finish(batch)
    }

    /// Writes `batch`, which the sink rejected, in order: halves are tried in turn, down to single entries;
    /// a single entry the sink rejects is dead-lettered. Stops at the first transient failure. Progress is
    /// recorded in the batch as it is made, so a flush abandoned half-way keeps what it settled.
    async fn isolate(&self, entries: &[Entry], progress: &mut Progress, first: WriteError) {
        // Ranges still to write, the next one last; each is known or suspected to hold a rejected row.
        let mut todo = vec![(0, entries.len(), Some(first))];
        while let Some((a, b, known)) = todo.pop() {
            let cause = match known {
                Some(cause) => cause,
                None => {
                    let started = Instant::now();
                    let written = self.sink.write(&entries[a..b]).await;
                    self.record_recovered_failures();
                    match written {
                        Ok(()) => {
                            self.record_statement(started, b - a);
                            progress.settled = b;
                            continue;
                        }
                        Err(cause) => cause,
                    }
                }
            };
            if cause.kind != FailureKind::Rejected {
                progress.error = Some(cause);
                return;
            }
            if b - a == 1 {
                if let Err(e) = self.sink.dead_letter(&entries[a], &cause).await {
                    progress.error = Some(e);
                    return;
                }
                progress.settled = b;
                progress.dead_lettered += 1;
                if let Some(o) = &self.observer {
                    o.on_dead_letter(&entries[a], &cause);
                }
                self.state.lock().stats.last_error = Some((cause, Timestamp::now()));
                continue;
            }
            let mid = a + (b - a) / 2;
            todo.push((mid, b, None));
            todo.push((a, mid, None));
        }
    }

    /// Counts and reports the failed attempts the sink recovered from within its last write.
    fn record_recovered_failures(&self) {
        for cause in self.sink.take_recovered_failures() {
            self.record_failed_attempt(cause);
        }
    }

    /// Counts and reports an attempt that failed and that the flush under way makes again at once.
    fn record_failed_attempt(&self, cause: WriteError) {
        let pending = {
            let mut st = self.state.lock();
            st.stats.failed_flushes += 1;
            st.stats.last_error = Some((cause.clone(), Timestamp::now()));
            st.buffered()
        };
        if let Some(o) = &self.observer {
            o.on_error(&cause, pending);
        }
    }

    fn record_statement(&self, started: Instant, rows: usize) {
        let elapsed = started.elapsed().as_secs_f64();
        {
            let mut st = self.state.lock();
            st.stats.batches += 1;
            st.stats.latency_histogram.record(elapsed);
            st.window.record(elapsed * 1000.0, rows);
        }
        if let Some(o) = &self.observer {
            o.on_flush(rows, elapsed * 1000.0);
        }
    }

    /// Retries `flush_to(target)` with backoff until it succeeds or `deadline` passes.
    async fn flush_before(&self, target: u64, deadline: Instant) -> Result<(), FlushError> {
        let mut failures = 0;
        loop {
            let cause = match tokio::time::timeout_at(deadline, self.flush_to(target)).await {
                Ok(Ok(())) => return Ok(()),
                Ok(Err(FlushError::Failed { cause, .. })) => cause,
                Ok(Err(FlushError::Closed)) => return Err(FlushError::Closed),
                Err(_) => WriteError::new(CLOSE_TIMED_OUT),
            };
            failures += 1;
            let retry_at = Instant::now() + self.config.backoff.delay(failures);
            if retry_at >= deadline {
                return Err(FlushError::Failed {
                    cause,
                    pending: self.pending(),
                });
            }
            tokio::time::sleep_until(retry_at).await;
            self.state.lock().stats.retries += 1;
        }
    }
}

/// A flush whose extent is fixed: the entries accepted before it was made.
#[must_use = "a flush ticket does nothing until it is run"]
pub struct FlushTicket {
    settled_at_call: u64,
    target: u64,
}

impl FlushTicket {
    /// Writes the ticket's entries (and waits for any flush writing them already).
    ///
    /// Gives up, with [`FlushError::Failed`], when `close()` runs out of time: nothing waits past its
    /// deadline, and the entries stay buffered.
    pub async fn run<S: Sink>(self, batcher: &Batcher<S>) -> Result<FlushOutcome, FlushError> {
        let abandoned = batcher.abandon.notified();
        tokio::pin!(abandoned);
        abandoned.as_mut().enable();
        if !batcher.state.lock().abandoned {
            tokio::select! {
                result = batcher.flush_to(self.target) => result?,
                _ = abandoned => return Err(abandoned_by_close(batcher)),
            }
        } else if batcher.outcome_if_settled(&self).is_none() {
            return Err(abandoned_by_close(batcher));
        }
        Ok(FlushOutcome {
            written: self.target.saturating_sub(self.settled_at_call),
            pending: batcher.pending(),
        })
    }
}

/// A flush that `close()`'s deadline cut short.
fn abandoned_by_close<S: Sink>(batcher: &Batcher<S>) -> FlushError {
    FlushError::Failed {
        cause: WriteError::new(CLOSE_TIMED_OUT),
        pending: batcher.pending(),
    }
}

const CLOSE_TIMED_OUT: &str = "close() ran out of time (timeoutMs) before the write finished";

/// A close in progress: `log()` already refuses; running it writes what is left and closes the sink.
#[must_use = "a close ticket does nothing until it is run"]
pub struct CloseTicket {
    target: u64,
    deadline: Instant,
}

impl CloseTicket {
    /// Writes what was accepted before the close, retrying with backoff until the deadline, then closes the
    /// sink whatever the outcome. Entries that could not be written stay readable through
    /// [`Batcher::buffered_entries`], and the error counts them. Later calls report the same outcome at once.
    pub async fn run<S: Sink>(self, batcher: &Batcher<S>) -> Result<(), FlushError> {
        let earlier = batcher.state.lock().closed.clone();
        let unwritten = match earlier {
            Some(cause) => cause,
            None => {
                let result = batcher.flush_before(self.target, self.deadline).await;
                let cause = match result {
                    Ok(()) => None,
                    Err(FlushError::Failed { cause, .. }) => Some(cause),
                    Err(FlushError::Closed) => None,
                };
                if cause.is_some() {
                    // Out of time: whatever still waits gives up now, keeping its entries buffered; a
                    // batch staged and not committed is undone and its entries go back to the buffer.
                    batcher.state.lock().abandoned = true;
                    batcher.abandon.notify_waiters();
                    let held = batcher.writer.lock().await.take();
                    if let Some(held) = held {
                        drop(held.resume(batcher));
                    }
                }
                let first = {
                    let mut st = batcher.state.lock();
                    let first = st.closed.is_none();
                    if first {
                        st.closed = Some(cause.clone());
                    }
                    first
                };
                if first {
                    batcher.close_spool().await;
                    batcher.sink.close().await;
                }
                batcher.state.lock().closed.clone().flatten()
            }
        };
        let pending = batcher.pending();
        match unwritten {
            Some(cause) if pending > 0 => Err(FlushError::Failed { cause, pending }),
            _ => Ok(()),
        }
    }
}

/// Where `log()` puts an entry it buffers (see the fields of `State`).
enum Place {
    Queue,
    Spill,
    Tail,
}

/// How far a batch got: its first `settled` entries are written or dead-lettered.
#[derive(Debug, Default)]
struct Progress {
    settled: usize,
    dead_lettered: usize,
    /// Why it stopped before the end.
    error: Option<WriteError>,
}

impl Progress {
    fn all(n: usize) -> Self {
        Progress {
            settled: n,
            ..Default::default()
        }
    }
}

/// A batch staged by the sink and not yet committed, kept between flushes (in [`Batcher`]'s writer slot).
/// Its entries count as in flight. Dropped, the sink undoes it; the entries are lost from memory only with
/// the batcher itself (`close()` puts them back first).
struct Held {
    entries: Vec<Entry>,
    bytes: usize,
    staged: Staged,
    /// When its writing started.
    started: Instant,
}

impl Held {
    fn new<S>(mut batch: InFlight<'_, S>, staged: Staged, started: Instant) -> Held {
        // Emptied, the batch settles nothing when dropped.
        Held {
            entries: std::mem::take(&mut batch.entries),
            bytes: std::mem::take(&mut batch.bytes),
            staged,
            started,
        }
    }

    /// The batch as in flight again (its entries never left the in-flight count), its staged write, and
    /// when that started.
    fn resume<S>(self, batcher: &Batcher<S>) -> (InFlight<'_, S>, Staged, Instant) {
        let batch = InFlight {
            batcher,
            entries: self.entries,
            bytes: self.bytes,
            new: true,
            progress: Progress::default(),
        };
        (batch, self.staged, self.started)
    }
}

/// Two consecutive batches written at once ([`Batcher::write_pair`]). Dropped, the second goes back to the
/// buffer before the first, so that the first ends up in front of it (fields drop in declaration order).
struct Pair<'a, S> {
    second: Option<InFlight<'a, S>>,
    first: Option<InFlight<'a, S>>,
}

/// A batch taken out of the buffer for one write, and how far the write got. When dropped, its settled
/// prefix is counted and the rest goes back to the front of the buffer, so a write abandoned half-way (a
/// dropped future) loses nothing and counts nothing twice.
struct InFlight<'a, S> {
    batcher: &'a Batcher<S>,
    entries: Vec<Entry>,
    bytes: usize,
    /// No entry of the batch was handed to the sink before (so the sink may skip duplicate checks).
    new: bool,
    progress: Progress,
}

impl<'a, S> InFlight<'a, S> {
    fn take(batcher: &'a Batcher<S>, st: &mut State, n: usize) -> Self {
        let entries: Vec<Entry> = st.queue.drain(..n).collect();
        let bytes = entries.iter().map(Entry::size_bytes).sum();
        // The queue's front is the entry after those settled and in flight (taken in order).
        let first = st.settled + st.in_flight as u64 + 1;
        let new = n > 0 && first > st.sent;
        st.sent = st.sent.max(first + n as u64 - 1);
        st.queue_bytes -= bytes;
        st.in_flight += n;
        st.in_flight_bytes += bytes;
        InFlight {
            batcher,
            entries,
            bytes,
            new,
            progress: Progress::default(),
        }
    }

    fn entries(&self) -> &[Entry] {
        &self.entries
    }

    /// Settles the batch as far as it got and records its error, if any. Returns the entries buffered then,
    /// and the error.
    fn settle(mut self) -> (usize, Option<WriteError>) {
        let error = self.progress.error.take();
        let mut st = self.batcher.state.lock();
        if let Some(cause) = &error {
            st.stats.failed_flushes += 1;
            st.stats.last_error = Some((cause.clone(), Timestamp::now()));
        }
        self.settle_into(&mut st);
        (st.buffered(), error)
    }

    /// Counts the first `progress.settled` entries as written (but for `progress.dead_lettered` of them)
    /// and returns the rest to the front of the buffer, in order.
    fn settle_into(&mut self, st: &mut State) {
        let Progress {
            settled,
            dead_lettered,
            ..
        } = self.progress;
        let rest = self.entries.split_off(settled);
        let done_bytes: usize = self.entries.iter().map(Entry::size_bytes).sum();
        let rest_bytes = self.bytes - done_bytes;
        st.in_flight -= settled + rest.len();
        st.in_flight_bytes -= self.bytes;
        st.settled += settled as u64;
        st.stats.written += (settled - dead_lettered) as u64;
        st.stats.dead_lettered += dead_lettered as u64;
        self.entries.clear();
        self.bytes = 0;
        self.progress = Progress::default();
        st.queue_bytes += rest_bytes;
        for entry in rest.into_iter().rev() {
            st.queue.push_front(entry);
        }
    }
}

impl<S> Drop for InFlight<'_, S> {
    fn drop(&mut self) {
        if !self.entries.is_empty() {
            let batcher = self.batcher;
            let mut st = batcher.state.lock();
            self.settle_into(&mut st);
        }
    }
}
