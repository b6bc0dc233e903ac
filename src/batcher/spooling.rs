//! The batcher's side of the durable spool (see [`crate::spool`]):
//!
//! - `log()` appends each buffered entry to the spool under the state lock, right after its number is
//!   given (in `mod.rs`);
//! - [`Batcher::spool_maintain`], every `sync_interval` from a background task, releases the segments
//!   whose entries are all settled and syncs the spool, appending again from memory what a failed sync
//!   put in doubt;
//! - the entries of dead processes' spools are written ahead of new ones by every flush (holding the
//!   writer lock), read a batch at a time off the event loop: nothing loads a whole spool into memory;
//! - at the memory bound (`max_buffered_bytes`, `max_buffered_entries`) entries are held in the spool
//!   only ("spilled"), and every flush reads them back, a batch at a time, in order, off the event
//!   loop, as the queue empties ([`SpillReader`]): memory stays bounded, the backlog is bounded by the
//!   spool's `max_bytes`;
//! - `close()` releases what the final flush settled and ends the spool ([`Spool::close`]): an empty
//!   spool is removed, what could not be written stays for the next start.

use std::collections::VecDeque;

use tokio::time::Instant;

use super::{Batcher, FlushError, Progress};
use crate::entry::{Entry, Timestamp};
use crate::sink::{FailureKind, Sink, WriteError};
use crate::spool::{Backlog, Record, Recovered, Recovery, Spool, SpoolError};

/// The replay of dead processes' entries: the reader, and the batch read but not yet written.
pub(super) struct Replay {
    /// `None` once every entry was read (or after `close()`).
    recovery: Option<Recovery>,
    /// Read from the reader, not yet written: written again after a failure, never read twice.
    batch: VecDeque<Recovered>,
    /// Every entry is written and every claimed segment released.
    done: bool,
    /// The replay number of the last entry written.
    written_through: u64,
    replayed: u64,
    dead_lettered: u64,
}

impl Replay {
    pub(super) fn new(recovery: Recovery) -> Replay {
        let done = recovery.is_empty();
        Replay {
            recovery: (!done).then_some(recovery),
            batch: VecDeque::new(),
            done,
            written_through: 0,
            replayed: 0,
            dead_lettered: 0,
        }
    }

    /// Entries replayed (written) and dead-lettered.
    pub(super) fn counts(&self) -> (u64, u64) {
        (self.replayed, self.dead_lettered)
    }

    /// Reads up to `n` entries into the batch when it is empty. Blocking file I/O.
    fn fill(&mut self, n: usize) {
        if !self.batch.is_empty() {
            return;
        }
        let Some(recovery) = &mut self.recovery else {
            return;
        };
        self.batch.extend(recovery.by_ref().take(n));
        if self.batch.len() < n {
            // The reader is exhausted: every claimed segment was read through (and its last entry
            // numbered), so releasing through the last number written frees them all.
            self.recovery = None;
        }
    }
}

/// Reads spilled entries back from this process's own segments, in acceptance order, resuming where the
/// last read stopped (a new scan starts only when the last one reached what was appended when it began).
#[derive(Default)]
pub(super) struct SpillReader {
    scan: Option<Backlog>,
    /// A record read past a gap, returned first by the next read.
    ahead: Option<Record>,
}

/// What one read-back found.
struct ReadBack {
    /// Entries numbered `first`, `first + 1`, … in order.
    entries: Vec<Entry>,
    /// When `entries` is empty: this many entries from `first` on could not be read (damaged on disk).
    missing: u64,
}

impl SpillReader {
    /// Reads spilled entries from `first` on: at most `rows`, and no more once `budget` bytes are read
    /// (at least one, so a large entry does not stall), and none past `last`. Blocking file I/O.
    fn read(
        &mut self,
        spool: &Spool,
        first: u64,
        last: u64,
        rows: usize,
        budget: usize,
    ) -> ReadBack {
        let mut entries = Vec::new();
        let mut bytes = 0;
        let mut rescanned = false;
        loop {
            let next = first + entries.len() as u64;
            if next > last || entries.len() >= rows || (bytes >= budget && !entries.is_empty()) {
                break;
            }
            let record = match self.ahead.take() {
                Some(r) => Some(r),
                None => {
                    let scan = self.scan.get_or_insert_with(|| spool.backlog(next));
                    scan.next()
                }
            };
            match record {
                // Read before (an entry appended again after a failed sync, or a scan restarted).
                Some(r) if r.seq < next => {}
                Some(r) if r.seq == next => {
                    bytes += r.entry.size_bytes();
                    entries.push(r.entry);
                }
                Some(r) => {
                    let missing = r.seq - next;
                    self.ahead = Some(r);
                    return ReadBack {
                        missing: if entries.is_empty() { missing } else { 0 },
                        entries,
                    };
                }
                None => {
                    // The scan covered what was appended when it started: start another, once.
                    self.scan = None;
                    if std::mem::replace(&mut rescanned, true) {
                        break;
                    }
                }
            }
        }
        ReadBack {
            entries,
            missing: 0,
        }
    }
}

/// The error reported when a sync of the spool failed.
fn sync_failure_report(e: &SpoolError) -> WriteError {
    match e {
        SpoolError::SyncFailed {
            from_seq,
            through_seq,
            source,
        } => WriteError::new(format!(
            "spool: fdatasync failed ({source}); its segment is abandoned, and entries \
             {from_seq}..={through_seq} not yet written are appended again to a new one"
        )),
        other => WriteError::new(other.to_string()),
    }
}

/// The error reported (once per streak) when the spool cannot take an entry.
pub(super) fn unspooled_error(e: &SpoolError) -> WriteError {
    WriteError::new(format!(
        "{e}; entries are kept in memory only until the spool takes them again"
    ))
}

impl<S: Sink> Batcher<S> {
    /// Whether entries of dead processes' spools are still to be written.
    pub fn replay_pending(&self) -> bool {
        self.replay.as_ref().is_some_and(|r| !r.lock().done)
    }

    /// Writes what is left of the replay of dead processes' entries (see [`Batcher::with_spool`]),
    /// waiting for the writer; the first write failure ends it (the entries stay to be written by the next
    /// flush). Does nothing without a spool.
    pub async fn replay_now(&self) -> Result<(), FlushError> {
        if !self.replay_pending() {
            return Ok(());
        }
        let _writer = self.writer.lock().await;
        self.replay_recovered().await
    }

    /// Writes the entries of dead processes' spools, one batch at a time. The caller holds the writer lock.
    /// Cancellation-safe: a batch whose write was abandoned is written again by the next call.
    pub(super) async fn replay_recovered(&self) -> Result<(), FlushError> {
        let Some(replay) = &self.replay else {
            return Ok(());
        };
        loop {
            if replay.lock().done {
                return Ok(());
            }
            let reader = replay.clone();
            let n = self.config.max_batch_rows;
            // Off the event loop; the entries land in the shared state, so an abandoned await loses none.
            let _ = tokio::task::spawn_blocking(move || reader.lock().fill(n)).await;
            let next = {
                let mut r = replay.lock();
                if !r.batch.is_empty() {
                    Ok(r.batch.iter().map(|x| x.entry.clone()).collect::<Vec<_>>())
                } else if r.recovery.is_none() {
                    r.done = true;
                    Err(Some(r.written_through))
                } else {
                    Err(None)
                }
            };
            let entries = match next {
                Ok(entries) => entries,
                Err(Some(through)) => {
                    self.release_recovered(through).await;
                    continue;
                }
                // The read did not happen (the blocking pool is shutting down): the next flush tries again.
                Err(None) => return Ok(()),
            };
            let mut progress = Progress::default();
            let started = Instant::now();
            let written = self.sink.write(&entries).await;
            self.record_recovered_failures();
            match written {
                Ok(()) => {
                    self.record_statement(started, entries.len());
                    progress = Progress::all(entries.len());
                }
                Err(cause) if cause.kind == FailureKind::Rejected => {
                    self.isolate(&entries, &mut progress, cause).await
                }
                Err(cause) => progress.error = Some(cause),
            }
            let through = {
                let mut r = replay.lock();
                let n = progress.settled.min(r.batch.len());
                let last = r.batch.drain(..n).next_back().map(|x| x.replay_seq);
                r.replayed += (n - progress.dead_lettered.min(n)) as u64;
                r.dead_lettered += progress.dead_lettered as u64;
                if let Some(last) = last {
                    r.written_through = last;
                }
                last
            };
            if let Some(through) = through {
                self.release_recovered(through).await;
            }
            if let Some(cause) = progress.error {
                let pending = {
                    let mut st = self.state.lock();
                    st.stats.failed_flushes += 1;
                    st.stats.last_error = Some((cause.clone(), crate::entry::Timestamp::now()));
                    st.buffered()
                };
                if let Some(o) = &self.observer {
                    o.on_error(&cause, pending);
                }
                return Err(FlushError::Failed { cause, pending });
            }
        }
    }

    /// Reads the oldest spilled entries back from the spool into the (empty) queue: a batch of at most
    /// `max_batch_rows` and a quarter of the memory bound (within what the bound leaves). The caller
    /// holds the writer lock and no batch is staged, so nothing is in flight. Entries the spool cannot give back (damaged on disk) are counted as dropped and reported
    /// through the observer; a spool that gives nothing back fails the flush, keeping every entry.
    pub(super) async fn read_back_spilled(&self) -> Result<(), FlushError> {
        let (spool, first, last, budget) = {
            let st = self.state.lock();
            let first = st.first_spilled();
            let last = first + st.spilled as u64 - 1;
            // A quarter of the memory bound at a time: the batch read back is allocated on a blocking
            // thread and freed on another, so smaller batches keep the allocator's high-water low.
            let budget = (self.config.max_buffered_bytes / 4).min(
                self.config
                    .max_buffered_bytes
                    .saturating_sub(st.buffered_bytes()),
            );
            (st.spool.clone(), first, last, budget)
        };
        let rows = self.config.max_batch_rows;
        let read = match spool {
            Some(spool) => {
                let reader = self.spill_reader.clone();
                tokio::task::spawn_blocking(move || {
                    reader.lock().read(&spool, first, last, rows, budget)
                })
                .await
                .ok()
            }
            None => None,
        };
        let read = read.unwrap_or(ReadBack {
            entries: Vec::new(),
            missing: 0,
        });
        let (lost, cause, pending) = {
            let mut st = self.state.lock();
            debug_assert_eq!(
                st.first_spilled(),
                first,
                "spilled entries moved under the writer"
            );
            let n = read.entries.len() + read.missing as usize;
            st.spilled -= n.min(st.spilled);
            for entry in read.entries {
                st.queue_bytes += entry.size_bytes();
                st.queue.push_back(entry);
            }
            if read.missing > 0 {
                // Nothing is queued or in flight: these are the next entries to settle.
                st.settled += read.missing;
                st.stats.dropped += read.missing;
            }
            if st.spilled == 0 {
                let tail = std::mem::take(&mut st.tail);
                st.queue_bytes += std::mem::take(&mut st.tail_bytes);
                st.queue.extend(tail);
            }
            let cause = if read.missing > 0 {
                Some(WriteError::new(format!(
                    "{} spooled entries (from number {first}) could not be read back from the spool \
                     (damaged on disk); counted as dropped",
                    read.missing
                )))
            } else if n == 0 {
                Some(WriteError::new(format!(
                    "spooled entries from number {first} could not be read back from the spool; \
                     they stay there for the next flush or the next start"
                )))
            } else {
                None
            };
            if let Some(cause) = &cause {
                st.stats.failed_flushes += u64::from(n == 0);
                st.stats.last_error = Some((cause.clone(), Timestamp::now()));
            }
            (read.missing, cause, st.buffered())
        };
        if let Some(cause) = cause {
            if let Some(o) = &self.observer {
                o.on_error(&cause, pending);
            }
            if lost == 0 {
                return Err(FlushError::Failed { cause, pending });
            }
        }
        Ok(())
    }

    /// Removes the claimed segments whose entries are all written through replay number `through`
    /// (blocking: off the event loop). A failure is counted in the spool's stats and tried again later.
    async fn release_recovered(&self, through: u64) {
        let Some(spool) = self.state.lock().spool.clone() else {
            return;
        };
        let _ = tokio::task::spawn_blocking(move || spool.release_recovered_through(through)).await;
    }

    /// The spool's periodic work, blocking (run it with `spawn_blocking`, every `sync_interval`): deletes
    /// the segments whose entries are all settled, then syncs the spool (and prepares its next segment).
    /// After a failed fdatasync the unsettled entries of the abandoned segments are appended again, from
    /// memory, waiting for the write under way to settle first. Returns `false` when there is no spool
    /// (none was given, or `close()` ended it): the caller stops.
    pub fn spool_maintain(&self) -> bool {
        let _work = self.spool_work.lock();
        let (spool, settled) = {
            let st = self.state.lock();
            match &st.spool {
                Some(s) => (s.clone(), st.settled),
                None => return false,
            }
        };
        // Its error is counted in the spool's stats; the segments are tried again next time.
        let _ = spool.release_through(settled);
        let synced = spool.sync();
        if let Err(e) = &synced {
            // A failed sync weakens durability against a machine crash until the next one succeeds:
            // reported each time, as the entries involved are known only now.
            if let Some(o) = &self.observer {
                let pending = self.state.lock().buffered();
                o.on_error(&sync_failure_report(e), pending);
            }
        }
        if let Err(SpoolError::SyncFailed {
            from_seq,
            through_seq,
            ..
        }) = synced
        {
            // With the writer held no batch is being written: the unsettled entries are those of the batch
            // staged in the writer's slot, if any, then the queue's (the first of them numbered
            // `settled + 1`), then the spilled ones (on disk only: read back from the abandoned segments,
            // which stay until their entries settle), then the tail's.
            let writer = self.writer.blocking_lock();
            let held: &[Entry] = writer.as_ref().map_or(&[], |h| &h.entries);
            let (spill_from, spilled) = {
                let st = self.state.lock();
                (st.first_spilled(), st.spilled as u64)
            };
            let spilled_again: Vec<Record> = if spilled > 0 && through_seq >= spill_from {
                let last = through_seq.min(spill_from + spilled - 1);
                let mut next = from_seq.max(spill_from);
                let mut again = Vec::new();
                for r in spool.backlog(next) {
                    if r.seq > last {
                        break;
                    }
                    if r.seq == next {
                        next += 1;
                        again.push(r);
                    }
                }
                again
            } else {
                Vec::new()
            };
            let st = self.state.lock();
            let first = st.settled + 1;
            let tail_first = st.first_spilled() + st.spilled as u64;
            let queued = held
                .iter()
                .chain(st.queue.iter())
                .enumerate()
                .map(|(i, e)| (first + i as u64, e));
            let read = spilled_again.iter().map(|r| (r.seq, &r.entry));
            let tail = st
                .tail
                .iter()
                .enumerate()
                .map(|(i, e)| (tail_first + i as u64, e));
            let entries = queued
                .chain(read)
                .chain(tail)
                .filter(|(seq, _)| (from_seq..=through_seq).contains(seq));
            // A failure is in the spool's stats; those entries are still in memory (or in the abandoned
            // segment) and written from there.
            let _ = spool.reappend(entries);
        }
        true
    }

    /// Ends the spool after `close()`'s final flush: releases what is settled and closes it (which removes
    /// it when nothing is left, and leaves the rest for the next start). The replay reader goes too, so
    /// that claimed spools not yet written are let go for another process or the next start.
    pub(super) async fn close_spool(&self) {
        let (spool, settled) = {
            let mut st = self.state.lock();
            match st.spool.take() {
                Some(s) => (s, st.settled),
                None => return,
            }
        };
        if let Some(replay) = &self.replay {
            replay.lock().recovery = None;
        }
        let closing = spool.clone();
        let work = self.spool_work.clone();
        let closed = tokio::task::spawn_blocking(move || {
            // After any periodic work under way: none starts again (the spool is out of the state).
            let _work = work.lock();
            let _ = closing.release_through(settled);
            let _ = closing.close();
            closing.stats()
        })
        .await;
        let figures = closed.unwrap_or_else(|_| spool.stats());
        self.state.lock().spool_final = Some(figures);
        drop(spool);
    }

    /// The spool's sync interval, when the batcher has a spool.
    pub fn spool_sync_interval(&self) -> Option<std::time::Duration> {
        self.state.lock().spool.as_ref().map(|s| s.sync_interval())
    }
}
