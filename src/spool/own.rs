//! This process's own segments: the open one, the one made ahead, the sealed ones, and the bookkeeping
//! that decides when each can go.

use std::collections::VecDeque;
use std::fs::File;
use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use super::config::{round_4k, SpoolConfig};
use super::lock::DirLock;
use super::record;
use super::segment::{segment_name, SegmentWriter, FILE_HEADER_LEN};
use super::{SpoolError, SpoolStats, RETRY_AFTER};
use crate::entry::Entry;

/// One of this process's segments.
pub(super) struct Segment {
    pub(super) number: u64,
    pub(super) path: PathBuf,
    pub(super) file: Arc<File>,
    pub(super) capacity: u64,
    /// Bytes used (for a sealed segment, what the reader should read).
    pub(super) end: u64,
    pub(super) entries: u64,
    pub(super) min_seq: u64,
    pub(super) max_seq: u64,
    /// Range of seqs appended since the last successful sync.
    pub(super) unsynced: Option<(u64, u64)>,
    /// A sync failed on it: never synced or appended to again.
    pub(super) abandoned: bool,
}

pub(super) struct Own {
    pub(super) config: SpoolConfig,
    pub(super) lock: DirLock,
    pub(super) active: Option<(Segment, SegmentWriter)>,
    /// The next segment, created ahead by [`Spool::prepare_next_segment`](super::Spool::prepare_next_segment) so that a rollover inside
    /// `append` costs no file system call.
    pub(super) spare: Option<(Segment, SegmentWriter)>,
    /// A spare is being created (outside the lock).
    pub(super) spare_in_flight: bool,
    /// The number of the last segment that became active.
    pub(super) last_active: u64,
    pub(super) sealed: VecDeque<Segment>,
    pub(super) next_number: u64,
    pub(super) bytes: u64,
    /// The highest seq passed to `release_through`.
    pub(super) settled: u64,
    pub(super) dir_dirty: bool,
    pub(super) root_dirty: bool,
    pub(super) retry: Option<(Instant, io::ErrorKind)>,
    pub(super) stats: SpoolStats,
}

impl Segment {
    pub(super) fn new(
        number: u64,
        path: PathBuf,
        writer: &SegmentWriter,
        capacity: u64,
    ) -> Segment {
        Segment {
            number,
            path,
            file: writer.file().clone(),
            capacity,
            end: writer.end(),
            entries: 0,
            min_seq: u64::MAX,
            max_seq: 0,
            unsynced: None,
            abandoned: false,
        }
    }
}

pub(super) fn merge(a: Option<(u64, u64)>, b: Option<(u64, u64)>) -> Option<(u64, u64)> {
    match (a, b) {
        (Some((a0, a1)), Some((b0, b1))) => Some((a0.min(b0), a1.max(b1))),
        (x, None) | (None, x) => x,
    }
}

impl Own {
    pub(super) fn note_error(&mut self, e: &SpoolError) {
        self.stats.errors += 1;
        self.stats.last_error = Some(e.to_string());
    }

    /// Seals the active segment: no more appends; it stays until released.
    pub(super) fn seal_active(&mut self) {
        if let Some((mut seg, writer)) = self.active.take() {
            seg.end = writer.end();
            drop(writer);
            self.sealed.push_back(seg);
        }
    }

    /// Creates a new active segment with room for a record of `len` bytes.
    pub(super) fn roll(
        &mut self,
        len: usize,
        critical: bool,
        orphan_bytes: u64,
    ) -> Result<(), SpoolError> {
        let needed = round_4k(FILE_HEADER_LEN + len as u64);
        if let Some(spare) = self.spare.take() {
            if spare.0.capacity >= needed {
                // Counted in `bytes`, within the bound, when it was made.
                self.seal_active();
                self.last_active = spare.0.number;
                self.stats.mapped = spare.1.is_mapped();
                self.active = Some(spare);
                return Ok(());
            }
            // Too small for this record: the segment created below gets a higher number, so the
            // spare can never be used; it goes, empty, with the next release.
            self.sealed.push_back(spare.0);
        }
        if let Some((at, kind)) = self.retry {
            let now = Instant::now();
            if now < at {
                return Err(SpoolError::Unavailable {
                    kind,
                    retry_in: at - now,
                });
            }
        }
        let capacity = self.config.effective_segment_bytes().max(needed);
        let used = self.bytes + orphan_bytes;
        if !critical && used + capacity > self.config.max_bytes {
            self.stats.full += 1;
            return Err(SpoolError::Full {
                bytes: used,
                max_bytes: self.config.max_bytes,
            });
        }
        self.seal_active();
        let number = self.next_number;
        let path = self.lock.path().join(segment_name(number));
        match SegmentWriter::create(&path, capacity, self.config.backend) {
            Ok(writer) => {
                self.next_number += 1;
                self.last_active = number;
                self.retry = None;
                self.bytes += capacity;
                self.dir_dirty = true;
                self.stats.mapped = writer.is_mapped();
                let seg = Segment::new(number, path, &writer, capacity);
                self.active = Some((seg, writer));
                Ok(())
            }
            Err(e) => {
                self.retry = Some((Instant::now() + RETRY_AFTER, e.kind()));
                let err = SpoolError::io("create segment", &path, e);
                self.note_error(&err);
                Err(err)
            }
        }
    }

    pub(super) fn append(
        &mut self,
        seq: u64,
        entry: &Entry,
        critical: bool,
        orphan_bytes: u64,
    ) -> Result<(), SpoolError> {
        let len = record::encoded_len(entry).ok_or(SpoolError::EntryTooLarge {
            bytes: entry.size_bytes(),
        })?;
        for _ in 0..2 {
            if self.active.is_none() {
                self.roll(len, critical, orphan_bytes)?;
            }
            let Some((seg, writer)) = &mut self.active else {
                continue;
            };
            match writer.append(len, seq, entry) {
                Ok(true) => {
                    seg.end = writer.end();
                    seg.entries += 1;
                    seg.min_seq = seg.min_seq.min(seq);
                    seg.max_seq = seg.max_seq.max(seq);
                    seg.unsynced = merge(seg.unsynced, Some((seq, seq)));
                    self.stats.appended += 1;
                    return Ok(());
                }
                Ok(false) => self.roll(len, critical, orphan_bytes)?,
                Err(e) => {
                    // write(2) failed (ENOSPC past the file's blocks, EIO): leave this segment.
                    let err = SpoolError::io("append to", &seg.path, e);
                    self.note_error(&err);
                    self.seal_active();
                    return Err(err);
                }
            }
        }
        Err(SpoolError::EntryTooLarge { bytes: len })
    }

    pub(super) fn segment_mut(&mut self, number: u64) -> Option<&mut Segment> {
        if let Some((seg, _)) = &mut self.active {
            if seg.number == number {
                return Some(seg);
            }
        }
        self.sealed.iter_mut().find(|s| s.number == number)
    }
}
