//! A read-only look inside a spool directory, for the `spool inspect` command.

use std::io;
use std::path::{Path, PathBuf};

use super::lock;
use super::reader::SegmentScan;
use super::recovery::QUARANTINE;
use super::segment::list_segments;
use super::spool_names;
use crate::entry::Timestamp;

/// What one spool under the directory holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpoolInfo {
    pub path: PathBuf,
    /// Whether a live process holds its lock (its entries are that process's; they are not replayed).
    pub live: bool,
    pub segments: usize,
    /// Readable entries.
    pub entries: u64,
    /// Bytes of its segment files.
    pub bytes: u64,
    /// Earliest and latest `occurred_at` among its entries.
    pub oldest: Option<Timestamp>,
    pub newest: Option<Timestamp>,
    /// Damaged stretches that a replay would skip.
    pub damaged: u64,
    /// Torn last records that a replay would cut off.
    pub torn_tails: u64,
}

/// Every spool under a directory, and what is in quarantine.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Inspection {
    /// Oldest spool first.
    pub spools: Vec<SpoolInfo>,
    /// Segments set aside because damage was found in them.
    pub quarantined: Vec<PathBuf>,
}

/// Reads every spool under `dir` without changing anything (no lock is kept, no file written). A spool a
/// live process is writing is read as far as it was written. Fails when `dir` cannot be read (NotFound
/// for a missing directory); a segment that cannot be read counts as damaged.
pub fn inspect(dir: &Path) -> io::Result<Inspection> {
    let names = spool_names(dir)?;
    let mut out = Inspection::default();
    for name in names {
        let path = dir.join(name);
        let Ok(segments) = list_segments(&path) else {
            continue;
        };
        let mut info = SpoolInfo {
            live: lock::is_held(&path).unwrap_or(false),
            path,
            segments: segments.len(),
            entries: 0,
            bytes: 0,
            oldest: None,
            newest: None,
            damaged: 0,
            torn_tails: 0,
        };
        for (_, seg) in segments {
            info.bytes += std::fs::metadata(&seg).map_or(0, |m| m.len());
            let Ok(mut scan) = SegmentScan::open(&seg, None) else {
                info.damaged += 1;
                continue;
            };
            for record in scan.by_ref() {
                let t = record.entry.occurred_at();
                info.entries += 1;
                info.oldest = Some(info.oldest.map_or(t, |o| o.min(t)));
                info.newest = Some(info.newest.map_or(t, |n| n.max(t)));
            }
            info.damaged += scan.damaged;
            info.torn_tails += u64::from(scan.torn);
        }
        out.spools.push(info);
    }
    if let Ok(items) = std::fs::read_dir(dir.join(QUARANTINE)) {
        out.quarantined = items.filter_map(|i| i.ok()).map(|i| i.path()).collect();
        out.quarantined.sort();
    }
    Ok(out)
}
