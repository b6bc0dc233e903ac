//! Spools left by processes that are gone: claiming them at start-up, streaming their entries back, and
//! removing (or quarantining) their segments once the entries are written.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::lock::DirLock;
use super::reader::SegmentScan;
use super::segment::list_segments;
use super::{spool_names, Shared};
use crate::entry::Entry;

/// Where damaged segments are kept, under the spool directory.
pub const QUARANTINE: &str = "quarantine";

/// A segment of a claimed spool.
pub(super) struct OrphanSegment {
    path: PathBuf,
    bytes: u64,
    /// Set once the reader has read the whole segment: the replay number of its last entry (or of the
    /// entry before it, when it had none).
    last_replay: Option<u64>,
    damaged: bool,
    released: bool,
    synced: bool,
}

/// A spool whose owner is gone, locked by this process until its segments are released.
pub(super) struct OrphanSpool {
    lock: Option<DirLock>,
    name: String,
    segments: Vec<OrphanSegment>,
}

/// The claimed spools, oldest first.
#[derive(Default)]
pub(super) struct Orphans {
    spools: Vec<OrphanSpool>,
    /// Directories changed since the last sync.
    dirty: Vec<PathBuf>,
}

impl Orphans {
    /// Claims every spool under `root` (but `own`) whose lock is free. Spools with no segment are removed
    /// at once. A spool that cannot be read is left as it is, for a later start.
    pub(super) fn claim(root: &Path, own: &Path) -> io::Result<(Orphans, u64)> {
        let names = spool_names(root)?;
        let mut orphans = Orphans::default();
        let mut bytes = 0;
        for name in names {
            let path = root.join(&name);
            if path == own {
                continue;
            }
            let Ok(Some(lock)) = DirLock::try_take(&path) else {
                continue;
            };
            let Ok(found) = list_segments(&path) else {
                continue;
            };
            if found.is_empty() {
                if std::fs::remove_dir(&path).is_ok() {
                    orphans.dirty.push(root.to_path_buf());
                }
                continue;
            }
            let segments = found
                .into_iter()
                .map(|(_, path)| {
                    let len = std::fs::metadata(&path).map_or(0, |m| m.len());
                    bytes += len;
                    OrphanSegment {
                        path,
                        bytes: len,
                        last_replay: None,
                        damaged: false,
                        released: false,
                        synced: false,
                    }
                })
                .collect();
            orphans.spools.push(OrphanSpool {
                lock: Some(lock),
                name,
                segments,
            });
        }
        Ok((orphans, bytes))
    }

    /// Segments still held.
    pub(super) fn segments(&self) -> usize {
        self.spools
            .iter()
            .flat_map(|s| &s.segments)
            .filter(|s| !s.released)
            .count()
    }

    /// The paths of the claimed segments, in replay order: (spool index, segment index, path).
    fn plan(&self) -> Vec<(usize, usize, PathBuf)> {
        let mut out = Vec::new();
        for (i, spool) in self.spools.iter().enumerate() {
            for (j, seg) in spool.segments.iter().enumerate() {
                out.push((i, j, seg.path.clone()));
            }
        }
        out
    }

    /// Segments not yet made durable since they were claimed (the dead owner may not have synced them),
    /// and the directories changed; both are taken, so the next call returns only what came since.
    pub(super) fn take_unsynced(&mut self) -> (Vec<PathBuf>, Vec<PathBuf>) {
        let mut files = Vec::new();
        for seg in self.spools.iter_mut().flat_map(|s| &mut s.segments) {
            if !seg.synced && !seg.released {
                seg.synced = true;
                files.push(seg.path.clone());
            }
        }
        (files, std::mem::take(&mut self.dirty))
    }

    /// Removes every segment whose entries all have replay numbers up to `through`, moving damaged ones
    /// to `root/quarantine/` instead; then each spool left without segments, releasing its lock. Returns
    /// the bytes freed and the first error met (the rest are still tried; a segment that could not be
    /// removed is tried again next time).
    pub(super) fn release_through(
        &mut self,
        root: &Path,
        through: u64,
    ) -> (u64, Option<io::Error>) {
        let mut freed = 0;
        let mut first_error = None;
        let quarantine = root.join(QUARANTINE);
        for spool in &mut self.spools {
            let Some(lock) = &spool.lock else { continue };
            for seg in &mut spool.segments {
                if seg.released || seg.last_replay.is_none_or(|last| last > through) {
                    continue;
                }
                let result = if seg.damaged {
                    let file = seg
                        .path
                        .file_name()
                        .map(|f| f.to_string_lossy().into_owned());
                    let target =
                        quarantine.join(format!("{}-{}", spool.name, file.unwrap_or_default()));
                    std::fs::DirBuilder::new()
                        .recursive(true)
                        .mode_0700()
                        .create(&quarantine)
                        .and_then(|()| std::fs::rename(&seg.path, &target))
                        .map(|()| {
                            self.dirty.push(quarantine.clone());
                        })
                } else {
                    std::fs::remove_file(&seg.path)
                };
                match result {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => {
                        first_error.get_or_insert(e);
                        continue;
                    }
                }
                seg.released = true;
                freed += seg.bytes;
                self.dirty.push(lock.path().to_path_buf());
            }
            if spool.segments.iter().all(|s| s.released) {
                // Nothing of it is left to replay: remove the directory, then let the lock go.
                if std::fs::remove_dir(lock.path()).is_ok() {
                    self.dirty.push(root.to_path_buf());
                }
                spool.lock = None;
            }
        }
        self.dirty.sort();
        self.dirty.dedup();
        (freed, first_error)
    }
}

/// `DirBuilder::mode(0o700)` without importing the extension trait at every call.
trait Mode0700 {
    fn mode_0700(&mut self) -> &mut Self;
}

impl Mode0700 for std::fs::DirBuilder {
    fn mode_0700(&mut self) -> &mut Self {
        std::os::unix::fs::DirBuilderExt::mode(self, 0o700)
    }
}

/// Creates `path` (and missing parents) with mode 0700.
pub(super) fn create_dir_0700(path: &Path) -> io::Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode_0700()
        .create(path)
}

/// An entry read back from a spool whose owner is gone.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Recovered {
    /// Its number in replay order, from 1: what [`super::Spool::release_recovered_through`] takes.
    pub replay_seq: u64,
    /// Its number in the process that logged it.
    pub original_seq: u64,
    /// The entry, with its original id and time.
    pub entry: Entry,
}

/// The entries of every claimed spool, oldest spool first, each spool's segments in order, each
/// segment's records in order. Reads one segment at a time through a bounded window (blocking file I/O:
/// run it off the event loop).
///
/// Damaged records are skipped and counted, torn tails cut off; reading never fails. Entries appear once
/// per read, but an entry already written before a crash may appear again (its id makes a second write
/// harmless).
pub struct Recovery {
    shared: Arc<Shared>,
    plan: Vec<(usize, usize, PathBuf)>,
    next: usize,
    current: Option<(usize, usize, SegmentScan)>,
    replayed: u64,
    peak: usize,
}

impl Recovery {
    pub(super) fn new(shared: Arc<Shared>) -> Recovery {
        let plan = shared.orphans.lock().plan();
        Recovery {
            shared,
            plan,
            next: 0,
            current: None,
            replayed: 0,
            peak: 0,
        }
    }

    /// Segments to read, in all (read or not).
    pub fn segments(&self) -> usize {
        self.plan.len()
    }

    /// Whether there was nothing to recover.
    pub fn is_empty(&self) -> bool {
        self.plan.is_empty()
    }

    /// Entries handed out so far.
    pub fn replayed(&self) -> u64 {
        self.replayed
    }

    /// The most bytes the reader held in memory at once (its read window).
    pub fn peak_buffer_bytes(&self) -> usize {
        self.peak
    }

    /// Records that `scan` read its whole segment.
    fn finish(&mut self, spool: usize, seg: usize, scan: Option<SegmentScan>, failed: bool) {
        let (damaged, torn) = match &scan {
            Some(s) => {
                self.peak = self.peak.max(s.peak_buffer_bytes());
                (s.damaged, s.torn)
            }
            None => (u64::from(failed), false),
        };
        let stats = &self.shared.counters;
        stats.damaged.fetch_add(damaged, Ordering::Relaxed);
        stats
            .torn_tails
            .fetch_add(u64::from(torn), Ordering::Relaxed);
        let mut orphans = self.shared.orphans.lock();
        if let Some(s) = orphans
            .spools
            .get_mut(spool)
            .and_then(|s| s.segments.get_mut(seg))
        {
            s.last_replay = Some(self.replayed);
            s.damaged = damaged > 0;
        }
    }
}

impl Iterator for Recovery {
    type Item = Recovered;

    fn next(&mut self) -> Option<Recovered> {
        loop {
            if let Some((spool, seg, scan)) = &mut self.current {
                if let Some(record) = scan.next_record() {
                    self.replayed += 1;
                    self.shared
                        .counters
                        .recovered
                        .fetch_add(1, Ordering::Relaxed);
                    return Some(Recovered {
                        replay_seq: self.replayed,
                        original_seq: record.seq,
                        entry: record.entry,
                    });
                }
                let (spool, seg) = (*spool, *seg);
                let scan = self.current.take().map(|(_, _, s)| s);
                self.finish(spool, seg, scan, false);
                continue;
            }
            let (spool, seg, path) = self.plan.get(self.next)?.clone();
            self.next += 1;
            match SegmentScan::open(&path, None) {
                Ok(scan) => self.current = Some((spool, seg, scan)),
                // Removed meanwhile: nothing to read, nothing damaged.
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    self.finish(spool, seg, None, false)
                }
                Err(_) => self.finish(spool, seg, None, true),
            }
        }
    }
}

/// Fsyncs the file at `path` (a claimed segment, opened read-only: Linux syncs through any descriptor).
pub(super) fn sync_file(path: &Path) -> io::Result<()> {
    match File::open(path) {
        Ok(f) => f.sync_data(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}
