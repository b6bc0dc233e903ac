//! The durable local spool: every accepted entry is appended to a file before `log()` returns, so a
//! process crash loses nothing, and the entries of a process that died are replayed by the next one.
//!
//! # Layout
//! ```text
//! <dir>/                          mode 0700, created when missing
//!   spool-<ms>-<pid>-<rand>/      one per live batcher, flock'ed (exclusive) by it
//!     0000000000000001.seg        segments, oldest first: a 16-byte header, then records
//!     0000000000000002.seg
//!   quarantine/                   segments in which damage was found, kept for a human
//!     spool-…-0000000000000001.seg
//! ```
//! A record is one entry with its id, time, fields and the batcher's acceptance number `seq`, framed by
//! a self-checking header and a CRC32C of its body (see [`record`]).
//!
//! # Life of an entry
//! 1. [`Spool::append`] stores the record in the open segment (in the kernel's page cache: a process crash
//!    keeps it). At `segment_bytes` the segment is sealed and a new one created.
//! 2. [`Spool::sync`], every `sync_interval` from a background task, fdatasyncs what was appended since
//!    the last sync, and the directories changed since (after a segment is created or removed): after a
//!    successful sync, a machine crash keeps the entries appended before it.
//! 3. [`Spool::release_through`]`(settled)` deletes each sealed segment whose entries all have
//!    `seq <= settled` (written or dead-lettered).
//! 4. [`Spool::close`] removes the spool when every entry is released, and leaves it for the next start
//!    otherwise.
//!
//! At [`Spool::open`] every other spool under `dir` whose lock is free (its owner died) is claimed; the
//! returned [`Recovery`] streams their entries, oldest first, and [`Spool::release_recovered_through`]
//! removes their segments as the entries are written.
//!
//! # Why it is built this way
//! - **Mapped segments, not write(2)**, where the file system allows it. Measured on this project's
//!   2-core VM (ext4), records of 640 bytes (entries of about 600): a bare loop, release build, idle
//!   machine: write(2) 1.1–1.3 µs per record (median), a store plus CRC32C into a preallocated shared
//!   mapping 0.13 µs. Through [`Spool::append`] (`measure_append` in the tests, 200k appends, this crate
//!   and its hot dependencies at opt-level 3, the machine at load 10 from other builds): mapped 0.34 µs
//!   median, 3.9 µs p90, 8 µs p99; write(2) 2.3 µs median. Only the mapping fits the 0.5 µs budget of
//!   `log()`. Both put the entry in the page cache, which a process crash keeps. The mapping's tail cost
//!   is the write fault on each fresh 4 KiB page (one append in six: ext4's page_mkwrite, a few µs).
//!   Touching the pages ahead of use (a write of zeros) brought p99 under 1 µs in a bare loop, but
//!   dirties the whole segment, so the first fdatasync would write 16 MiB of zeros per segment: not
//!   done. A read touch does not help (the write fault remains).
//! - **Segments made ahead.** Creating a segment costs 5–28 ms on this (busy) ext4, nearly all of it
//!   the first store into the new mapping (a journal wait), and 24 ms of fallocate on tmpfs; inside
//!   `append` that would be a stall of some `log()` every 16 MiB. [`Spool::sync`] (the background task)
//!   prepares the next segment, so a rollover inside `append` is a swap; `append` creates one itself
//!   only when none is ready.
//! - **Preallocation before mapping.** A store past a file's allocated blocks on a full disk raises
//!   SIGBUS, which would kill the process. Segments are `fallocate`d whole before they are mapped, so a
//!   full disk fails segment creation with ENOSPC (an error value) instead; and segments are mapped only
//!   on ext4, xfs and tmpfs, which write preallocated blocks in place. Elsewhere (btrfs, zfs, NFS, FUSE:
//!   copy-on-write or remote, where write-back can still need space) the spool uses write(2).
//! - **Per-record checksums, no ledger.** Entries carry idempotent ids, so replaying an entry that was
//!   already written is harmless: recovery replays every surviving segment rather than trusting a ledger
//!   of positions (Vector's crash loop came from a ledger pointing into a deleted file). A process crash
//!   can only tear the last record; the checksums find it. Damage elsewhere is skipped, counted and the
//!   segment kept in `quarantine/`; nothing stops start-up.
//! - **Deferred directory fsync.** Creating a segment happens inside `append`, so its directory fsync
//!   (milliseconds) would land in some `log()` call; it is done by the next `sync()` instead, before that
//!   sync reports success, which is when it matters (only a machine crash can lose a directory entry).
//! - **No retry of a failed fsync** (PostgreSQL's "fsyncgate"): after a failed fdatasync the kernel may
//!   have dropped the dirty pages, and a second fsync would report success for data that never reached
//!   the disk. The segment is abandoned, and the caller is told which entries to append again.
//! - **A lock per process, kernel-released.** `flock` on the spool's directory goes away with the
//!   process, however it dies; a spool whose lock can be taken has no live owner.
//! - **16 MiB segments.** The open segment's mapping counts in the process's RSS (as file pages the
//!   kernel can reclaim), so it is kept well under the issue's 64 MiB RSS budget; sealed segments are
//!   unmapped. Larger segments would only make creations rarer.
//!
//! # Wiring it into the batcher
//! - `log()`: after the batcher numbers an entry (`seq`), under the same lock (so file order is seq
//!   order), [`Spool::append`] (critical entries: [`Spool::append_critical`]). [`SpoolError::Full`] is
//!   the `onBufferFull` case; any other error keeps the entry in memory only, counted and reported once.
//! - Background task, every `sync_interval` (with either [`SyncMode`]: it also prepares the next
//!   segment): [`Spool::sync`] off the event loop (`spawn_blocking`). On [`SpoolError::SyncFailed`], [`Spool::reappend`] the unsettled entries
//!   in its range.
//! - After each batch settles: [`Spool::release_through`]`(settled)` (it may unlink files: blocking).
//! - Start-up: iterate the [`Recovery`] off the event loop, write its entries ahead of new ones, and call
//!   [`Spool::release_recovered_through`] with the last `replay_seq` written.
//! - A backlog larger than memory: [`Spool::backlog`]`(seq)` reads own entries back from disk.
//! - `close()`: after the final flush, `release_through(settled)`, then [`Spool::close`].

#![deny(unsafe_code)]

mod config;
mod error;
mod inspect;
mod lock;
mod mmap;
mod own;
mod reader;
pub mod record;
mod recovery;
mod segment;
#[cfg(test)]
mod tests;

use std::collections::VecDeque;
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;

pub use self::config::{SpoolConfig, SyncMode};
pub use self::error::{SpoolError, SpoolStats};
pub use self::inspect::{inspect, Inspection, SpoolInfo};
use self::lock::DirLock;
use self::own::{Own, Segment};
pub use self::reader::SegmentScan;
pub use self::record::Record;
use self::recovery::{create_dir_0700, Orphans};
pub use self::recovery::{Recovered, Recovery, QUARANTINE};
pub use self::segment::Backend;
use self::segment::{segment_name, SegmentWriter};
use crate::entry::Entry;

/// Names of spool directories under the spool's `dir` start with this.
pub const SPOOL_PREFIX: &str = "spool-";

/// The names of the spool directories under `root`, sorted (oldest first: names start with the creation
/// time).
fn spool_names(root: &Path) -> std::io::Result<Vec<String>> {
    let mut names: Vec<String> = std::fs::read_dir(root)?
        .filter_map(|item| item.ok())
        .filter(|item| item.file_type().is_ok_and(|t| t.is_dir()))
        .filter_map(|item| item.file_name().into_string().ok())
        .filter(|name| name.starts_with(SPOOL_PREFIX))
        .collect();
    names.sort();
    Ok(names)
}

/// How long segment creation is not tried again after it failed (a full or failing disk), so that
/// `append` stays cheap while the disk is in trouble.
const RETRY_AFTER: Duration = Duration::from_millis(250);

/// Counters the recovery reader updates without taking the spool's lock.
#[derive(Default)]
struct Counters {
    recovered: AtomicU64,
    damaged: AtomicU64,
    torn_tails: AtomicU64,
    orphan_bytes: AtomicU64,
}

/// What the spool handle and its recovery reader share: the claimed spools (each reader or handle may
/// outlive the other; this process's own spool is the handle's alone, so dropping the handle lets its lock
/// go even while a reader lives).
struct Shared {
    root: PathBuf,
    orphans: Mutex<Orphans>,
    counters: Counters,
}

/// A process's own spool: where [`Spool::append`] puts entries until they are released.
///
/// All methods take `&self` and may be called from any thread; appends are serialised by a lock that is
/// never held across an fsync, so [`Spool::sync`] does not delay `append`.
pub struct Spool {
    own: Mutex<Own>,
    shared: Arc<Shared>,
    /// Test hook: this many coming fdatasyncs fail with EIO.
    #[cfg(test)]
    fail_syncs: std::sync::atomic::AtomicU32,
    /// Test hook: this many coming appends fail with EIO.
    #[cfg(test)]
    fail_appends: std::sync::atomic::AtomicU32,
}

impl Spool {
    /// Opens (creating with mode 0700 when missing) the spool directory `dir`, takes a new spool of this
    /// process's own under it, and claims every other spool under it whose owner is gone.
    ///
    /// Never reads a segment: the returned [`Recovery`] streams the claimed entries when iterated. Fails
    /// only when `dir` cannot be created, read or written; a first segment that cannot be created (a full
    /// disk) is not an error here: `append` tries again.
    pub fn open(
        dir: impl AsRef<Path>,
        config: SpoolConfig,
    ) -> Result<(Spool, Recovery), SpoolError> {
        let root = dir.as_ref().to_path_buf();
        create_dir_0700(&root).map_err(|e| SpoolError::io("create directory", &root, e))?;
        let lock = take_new_spool(&root)?;
        let (orphans, orphan_bytes) =
            Orphans::claim(&root, lock.path()).map_err(|e| SpoolError::io("read", &root, e))?;
        let mut own = Own {
            config,
            lock,
            active: None,
            spare: None,
            spare_in_flight: false,
            last_active: 0,
            sealed: VecDeque::new(),
            next_number: 1,
            bytes: 0,
            settled: 0,
            dir_dirty: false,
            root_dirty: true,
            retry: None,
            stats: SpoolStats::default(),
        };
        // A failure is kept in the stats; `append` tries again.
        let _ = own.roll(0, true, 0);
        let shared = Arc::new(Shared {
            root,
            orphans: Mutex::new(orphans),
            counters: Counters::default(),
        });
        shared
            .counters
            .orphan_bytes
            .store(orphan_bytes, Ordering::Relaxed);
        let recovery = Recovery::new(shared.clone());
        Ok((
            Spool {
                own: Mutex::new(own),
                shared,
                #[cfg(test)]
                fail_syncs: Default::default(),
                #[cfg(test)]
                fail_appends: Default::default(),
            },
            recovery,
        ))
    }

    /// How often [`Spool::sync`] should be called (its config's `sync_interval`).
    pub fn sync_interval(&self) -> Duration {
        self.own.lock().config.sync_interval
    }

    /// This process's spool directory.
    pub fn dir(&self) -> PathBuf {
        self.own.lock().lock.path().to_path_buf()
    }

    /// Appends entry `seq` (the batcher's acceptance number; increasing from call to call). When it returns
    /// `Ok`, the entry is in the kernel: a process crash from then on does not lose it.
    ///
    /// [`SpoolError::Full`] at `max_bytes`; disk trouble as [`SpoolError::Io`] or
    /// [`SpoolError::Unavailable`]. On any error nothing was appended and the spool stays usable.
    pub fn append(&self, seq: u64, entry: &Entry) -> Result<(), SpoolError> {
        #[cfg(test)]
        if self
            .fail_appends
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
            .is_ok()
        {
            return Err(SpoolError::io(
                "append",
                &self.dir(),
                io::Error::from_raw_os_error(5),
            ));
        }
        let orphan_bytes = self.shared.counters.orphan_bytes.load(Ordering::Relaxed);
        self.own.lock().append(seq, entry, false, orphan_bytes)
    }

    /// [`Spool::append`] past `max_bytes`: for critical entries, which are never refused.
    pub fn append_critical(&self, seq: u64, entry: &Entry) -> Result<(), SpoolError> {
        self.own.lock().append(seq, entry, true, 0)
    }

    /// Appends again entries whose segment was abandoned after [`SpoolError::SyncFailed`], ignoring
    /// `max_bytes` (they were accepted already). Stops at the first error, returning how many went in.
    pub fn reappend<'a>(
        &self,
        entries: impl IntoIterator<Item = (u64, &'a Entry)>,
    ) -> Result<usize, (usize, SpoolError)> {
        let mut own = self.own.lock();
        let mut n = 0;
        for (seq, entry) in entries {
            own.append(seq, entry, true, 0).map_err(|e| (n, e))?;
            n += 1;
        }
        Ok(n)
    }

    /// Makes everything appended before the call durable against a machine crash: fdatasyncs each segment
    /// appended to since the last sync, claimed segments once, and the directories where segments were
    /// created or removed. Then prepares the next segment ([`Spool::prepare_next_segment`]). With
    /// [`SyncMode::Never`] it only prepares the next segment.
    ///
    /// On a failed fdatasync the segment is abandoned and never synced again (the next append opens a new
    /// one), and [`SpoolError::SyncFailed`] names the entries to append again.
    pub fn sync(&self) -> Result<(), SpoolError> {
        let started = Instant::now();
        let (jobs, dirs) = {
            let mut own = self.own.lock();
            if own.config.sync == SyncMode::Never {
                drop(own);
                // Its error is in the stats; appends create segments themselves.
                let _ = self.prepare_next_segment();
                return Ok(());
            }
            let mut jobs = Vec::new();
            if let Some((seg, _)) = own.active.as_mut() {
                if let Some(range) = seg.unsynced.take() {
                    jobs.push((seg.number, seg.file.clone(), range));
                }
            }
            for seg in own.sealed.iter_mut().filter(|s| !s.abandoned) {
                if let Some(range) = seg.unsynced.take() {
                    jobs.push((seg.number, seg.file.clone(), range));
                }
            }
            let mut dirs = Vec::new();
            if std::mem::take(&mut own.dir_dirty) {
                dirs.push(own.lock.path().to_path_buf());
            }
            if std::mem::take(&mut own.root_dirty) {
                dirs.push(self.shared.root.clone());
            }
            (jobs, dirs)
        };
        let mut failed: Option<(u64, u64, io::Error)> = None;
        let mut failed_segments = Vec::new();
        for (number, file, range) in jobs {
            if let Err(e) = self.sync_data(&file) {
                failed_segments.push((number, range));
                failed = Some(match failed {
                    Some((a, b, first)) => (a.min(range.0), b.max(range.1), first),
                    None => (range.0, range.1, e),
                });
            }
        }
        let (orphan_files, orphan_dirs) = self.shared.orphans.lock().take_unsynced();
        let mut dir_error = None;
        for path in &orphan_files {
            // The entries are still read from the page cache; a failure here only weakens the guarantee
            // against a machine crash during recovery, and is reported like any disk error.
            if let Err(e) = recovery::sync_file(path) {
                dir_error.get_or_insert(SpoolError::io("fdatasync", path, e));
            }
        }
        let mut dirs_left = Vec::new();
        for dir in dirs.iter().chain(&orphan_dirs) {
            match lock::sync_dir(dir) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => {
                    dirs_left.push(dir.clone());
                    dir_error.get_or_insert(SpoolError::io("fsync directory", dir, e));
                }
            }
        }
        let mut own = self.own.lock();
        let elapsed = started.elapsed();
        own.stats.last_sync = Some(elapsed);
        for dir in dirs_left {
            if dir == self.shared.root {
                own.root_dirty = true;
            } else if dir == own.lock.path() {
                own.dir_dirty = true;
            }
        }
        if let Some((from_seq, through_seq, source)) = failed {
            let mut from = from_seq;
            let mut through = through_seq;
            for (number, _) in failed_segments {
                let is_active = own.active.as_ref().is_some_and(|(s, _)| s.number == number);
                if is_active {
                    own.seal_active();
                }
                if let Some(seg) = own.segment_mut(number) {
                    seg.abandoned = true;
                    // Appended while the failed fdatasync ran: just as uncertain.
                    if let Some((a, b)) = seg.unsynced.take() {
                        from = from.min(a);
                        through = through.max(b);
                    }
                }
            }
            own.stats.sync_failures += 1;
            let err = SpoolError::SyncFailed {
                from_seq: from,
                through_seq: through,
                source,
            };
            own.stats.last_error = Some(err.to_string());
            return Err(err);
        }
        if let Some(err) = dir_error {
            own.note_error(&err);
            return Err(err);
        }
        own.stats.syncs += 1;
        drop(own);
        // Its error is in the stats; appends create segments themselves.
        let _ = self.prepare_next_segment();
        Ok(())
    }

    /// Creates the next segment ahead of need (preallocating and mapping it, and writing its header,
    /// which on a busy ext4 costs milliseconds), so that the rollover inside a later `append` costs no
    /// file system call. Does nothing when one is ready, when it would pass `max_bytes`, or shortly after
    /// a disk error. [`Spool::sync`] calls it; a caller with [`SyncMode::Never`] still calls `sync` (or
    /// this) every `sync_interval`.
    pub fn prepare_next_segment(&self) -> Result<(), SpoolError> {
        let orphan_bytes = self.shared.counters.orphan_bytes.load(Ordering::Relaxed);
        let (number, path, capacity, backend) = {
            let mut own = self.own.lock();
            let waiting = own.retry.is_some_and(|(at, _)| Instant::now() < at);
            let capacity = own.config.effective_segment_bytes();
            if own.spare.is_some()
                || own.spare_in_flight
                || waiting
                || own.bytes + orphan_bytes + capacity > own.config.max_bytes
            {
                return Ok(());
            }
            let number = own.next_number;
            own.next_number += 1;
            own.bytes += capacity;
            own.spare_in_flight = true;
            let path = own.lock.path().join(segment_name(number));
            (number, path, capacity, own.config.backend)
        };
        let created = SegmentWriter::create(&path, capacity, backend);
        let mut own = self.own.lock();
        own.spare_in_flight = false;
        match created {
            Ok(writer) => {
                own.dir_dirty = true;
                let seg = Segment::new(number, path, &writer, capacity);
                if own.last_active < number {
                    own.spare = Some((seg, writer));
                } else {
                    // A segment was created inline meanwhile, with a higher number: this one would
                    // replay before it, so it is never used, and goes, empty, with the next release.
                    own.sealed.push_back(seg);
                }
                Ok(())
            }
            Err(e) => {
                own.bytes = own.bytes.saturating_sub(capacity);
                own.retry = Some((Instant::now() + RETRY_AFTER, e.kind()));
                let err = SpoolError::io("create segment", &path, e);
                own.note_error(&err);
                Err(err)
            }
        }
    }

    /// Test hook: the next `n` appends (not critical ones) fail with EIO.
    #[cfg(test)]
    pub(crate) fn fail_next_appends(&self, n: u32) {
        self.fail_appends.store(n, Ordering::Relaxed);
    }

    /// Test hook: the next `n` fdatasyncs fail with EIO.
    #[cfg(test)]
    pub(crate) fn fail_next_syncs(&self, n: u32) {
        self.fail_syncs.store(n, Ordering::Relaxed);
    }

    fn sync_data(&self, file: &File) -> io::Result<()> {
        #[cfg(test)]
        if self
            .fail_syncs
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
            .is_ok()
        {
            return Err(io::Error::from_raw_os_error(5)); // EIO
        }
        file.sync_data()
    }

    /// Deletes every sealed segment whose entries all have `seq <= settled` (entries `1..=settled` are
    /// written or dead-lettered). The open segment is kept (see [`Spool::close`]). A segment that cannot
    /// be removed is tried again on the next call; the first such error is returned.
    pub fn release_through(&self, settled: u64) -> Result<usize, SpoolError> {
        let mut own = self.own.lock();
        own.settled = own.settled.max(settled);
        let mut removed = 0;
        let mut error = None;
        let mut keep = VecDeque::new();
        while let Some(seg) = own.sealed.pop_front() {
            if seg.entries > 0 && seg.max_seq > settled {
                keep.push_back(seg);
                continue;
            }
            match std::fs::remove_file(&seg.path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => {
                    error.get_or_insert(SpoolError::io("remove", &seg.path, e));
                    keep.push_back(seg);
                    continue;
                }
            }
            own.bytes = own.bytes.saturating_sub(seg.capacity);
            own.dir_dirty = true;
            removed += 1;
        }
        own.sealed = keep;
        match error {
            Some(e) => {
                own.note_error(&e);
                Err(e)
            }
            None => Ok(removed),
        }
    }

    /// Deletes each claimed segment whose entries have all been handed out by [`Recovery`] with
    /// `replay_seq <= written` and are written; a segment in which damage was found goes to
    /// `<dir>/quarantine/` instead. A claimed spool left empty is removed and its lock let go.
    pub fn release_recovered_through(&self, written: u64) -> Result<(), SpoolError> {
        let (freed, error) = self
            .shared
            .orphans
            .lock()
            .release_through(&self.shared.root, written);
        self.shared
            .counters
            .orphan_bytes
            .fetch_sub(freed, Ordering::Relaxed);
        match error {
            Some(e) => {
                let err = SpoolError::io("release", &self.shared.root, e);
                self.own.lock().note_error(&err);
                Err(err)
            }
            None => Ok(()),
        }
    }

    /// Reads back this process's own entries with `seq >= from_seq`, in append order (seq order, but for
    /// entries given to [`Spool::reappend`], which follow what was appended before them), as far as they
    /// were appended at the moment of the call (for a backlog that no longer fits in memory). Blocking I/O.
    pub fn backlog(&self, from_seq: u64) -> Backlog {
        let own = self.own.lock();
        let segments = own
            .sealed
            .iter()
            .chain(own.active.as_ref().map(|(s, _)| s))
            .filter(|s| s.entries > 0 && s.max_seq >= from_seq)
            .map(|s| (s.path.clone(), s.end))
            .collect();
        Backlog {
            segments,
            current: None,
            from_seq,
        }
    }

    /// A snapshot of the spool's figures.
    pub fn stats(&self) -> SpoolStats {
        let own = self.own.lock();
        let orphans = self.shared.orphans.lock();
        let c = &self.shared.counters;
        SpoolStats {
            bytes: own.bytes + c.orphan_bytes.load(Ordering::Relaxed),
            segments: own.sealed.len()
                + usize::from(own.active.is_some())
                + usize::from(own.spare.is_some())
                + orphans.segments(),
            recovered: c.recovered.load(Ordering::Relaxed),
            damaged: c.damaged.load(Ordering::Relaxed),
            torn_tails: c.torn_tails.load(Ordering::Relaxed),
            ..own.stats.clone()
        }
    }

    /// Ends this process's use of the spool. When every own entry is released (`release_through` was
    /// given the highest seq appended), its files and directory are removed; otherwise it is synced (with
    /// [`SyncMode::Interval`]) and left for the next start to replay. Returns whether it was removed.
    /// Claimed spools not yet released stay for the next start. Call it once, after the last append
    /// (an append after a close that removed the spool fails with an I/O error).
    pub fn close(&self) -> Result<bool, SpoolError> {
        let done = {
            let mut own = self.own.lock();
            if let Some((spare, writer)) = own.spare.take() {
                drop(writer);
                // Never written to: it goes now, or with the claim of whoever replays this spool.
                if std::fs::remove_file(&spare.path).is_ok() {
                    own.bytes = own.bytes.saturating_sub(spare.capacity);
                    own.dir_dirty = true;
                } else {
                    own.sealed.push_back(spare);
                }
            }
            let settled = own.settled;
            own.sealed
                .iter()
                .chain(own.active.as_ref().map(|(s, _)| s))
                .all(|s| s.entries == 0 || s.max_seq <= settled)
        };
        if !done {
            self.sync()?;
            return Ok(false);
        }
        let mut own = self.own.lock();
        own.seal_active();
        let dir = own.lock.path().to_path_buf();
        for seg in std::mem::take(&mut own.sealed) {
            if let Err(e) = std::fs::remove_file(&seg.path) {
                if e.kind() != io::ErrorKind::NotFound {
                    return Err(SpoolError::io("remove", &seg.path, e));
                }
            }
            own.bytes = own.bytes.saturating_sub(seg.capacity);
        }
        std::fs::remove_dir(&dir).map_err(|e| SpoolError::io("remove directory", &dir, e))?;
        if own.config.sync == SyncMode::Interval {
            lock::sync_dir(&self.shared.root)
                .map_err(|e| SpoolError::io("fsync directory", &self.shared.root, e))?;
        }
        Ok(true)
    }
}

/// This process's own entries read back from its segments (see [`Spool::backlog`]).
pub struct Backlog {
    segments: VecDeque<(PathBuf, u64)>,
    current: Option<SegmentScan>,
    from_seq: u64,
}

impl Iterator for Backlog {
    type Item = Record;

    fn next(&mut self) -> Option<Record> {
        loop {
            if let Some(scan) = &mut self.current {
                match scan.next_record() {
                    Some(r) if r.seq >= self.from_seq => return Some(r),
                    Some(_) => continue,
                    None => self.current = None,
                }
            }
            let (path, end) = self.segments.pop_front()?;
            // A segment released meanwhile has nothing left to read back.
            self.current = SegmentScan::open(&path, Some(end)).ok();
        }
    }
}

/// Creates and locks a new spool directory of this process's own under `root`.
fn take_new_spool(root: &Path) -> Result<DirLock, SpoolError> {
    let mut last = None;
    for _ in 0..8 {
        let ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let name = format!(
            "{SPOOL_PREFIX}{ms:012x}-{}-{:08x}",
            std::process::id(),
            fastrand::u32(..)
        );
        let path = root.join(name);
        if let Err(e) = create_dir_0700_new(&path) {
            if e.kind() == io::ErrorKind::AlreadyExists {
                continue;
            }
            return Err(SpoolError::io("create directory", &path, e));
        }
        // Another starting process may claim an empty spool between mkdir and flock and remove it: then
        // try another name.
        match DirLock::try_take(&path) {
            Ok(Some(lock)) => return Ok(lock),
            Ok(None) => last = Some(io::Error::other("spool taken while being created")),
            Err(e) => return Err(SpoolError::io("lock", &path, e)),
        }
    }
    Err(SpoolError::io(
        "create spool in",
        root,
        last.unwrap_or_else(|| io::Error::other("no free name")),
    ))
}

fn create_dir_0700_new(path: &Path) -> io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new().mode(0o700).create(path)
}
