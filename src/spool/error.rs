//! What can go wrong, as values: never a panic.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Why the spool did not do what was asked. Never a panic: disk trouble comes back as [`SpoolError::Io`]
/// or [`SpoolError::Unavailable`], and the spool stays usable.
#[derive(Debug)]
pub enum SpoolError {
    /// Appending would take the spool past `max_bytes`. Nothing was written.
    Full { bytes: u64, max_bytes: u64 },
    /// The entry's record would be larger than the format's 4 GiB.
    EntryTooLarge { bytes: usize },
    /// A file system call failed (ENOSPC, EIO, EROFS, EACCES ...).
    Io {
        op: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    /// Segment creation failed moments ago and is not tried again before `retry_in`; nothing was written.
    Unavailable {
        kind: io::ErrorKind,
        retry_in: Duration,
    },
    /// fdatasync failed. The segments concerned are abandoned (never synced again, never appended to):
    /// entries with `from_seq <= seq <= through_seq` that are not settled must be appended again, from
    /// memory, with [`Spool::reappend`](super::Spool::reappend); entries outside that range are not affected.
    SyncFailed {
        from_seq: u64,
        through_seq: u64,
        source: io::Error,
    },
}

impl SpoolError {
    pub(super) fn io(op: &'static str, path: &Path, source: io::Error) -> SpoolError {
        SpoolError::Io {
            op,
            path: path.to_path_buf(),
            source,
        }
    }

    /// The underlying error kind, for disk trouble (`StorageFull` for ENOSPC).
    pub fn io_kind(&self) -> Option<io::ErrorKind> {
        match self {
            SpoolError::Io { source, .. } | SpoolError::SyncFailed { source, .. } => {
                Some(source.kind())
            }
            SpoolError::Unavailable { kind, .. } => Some(*kind),
            _ => None,
        }
    }
}

impl fmt::Display for SpoolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SpoolError::Full { bytes, max_bytes } => write!(
                f,
                "spool is full: {bytes} bytes used, maxBytes is {max_bytes}"
            ),
            SpoolError::EntryTooLarge { bytes } => {
                write!(f, "entry of {bytes} bytes is too large for the spool")
            }
            SpoolError::Io { op, path, source } => {
                write!(f, "spool: {op} {}: {source}", path.display())
            }
            SpoolError::Unavailable { kind, retry_in } => write!(
                f,
                "spool unavailable after a disk error ({kind}); retrying in {retry_in:?}"
            ),
            SpoolError::SyncFailed {
                from_seq,
                through_seq,
                source,
            } => write!(
                f,
                "spool: fdatasync failed ({source}); entries {from_seq}..={through_seq} must be appended again"
            ),
        }
    }
}

impl std::error::Error for SpoolError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            SpoolError::Io { source, .. } | SpoolError::SyncFailed { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// A snapshot of a spool's figures.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SpoolStats {
    /// Bytes of segments on disk (own and claimed; segments are preallocated whole).
    pub bytes: u64,
    /// Segments on disk (own and claimed).
    pub segments: usize,
    /// Entries read back from claimed spools so far.
    pub recovered: u64,
    /// Damaged stretches skipped while reading claimed spools.
    pub damaged: u64,
    /// Torn last records cut off while reading claimed spools.
    pub torn_tails: u64,
    /// Records appended.
    pub appended: u64,
    /// Appends refused with [`SpoolError::Full`].
    pub full: u64,
    /// Appends and releases that failed on disk trouble.
    pub errors: u64,
    /// Successful syncs.
    pub syncs: u64,
    /// Failed syncs (each abandoned its segments).
    pub sync_failures: u64,
    /// How long the last sync took.
    pub last_sync: Option<Duration>,
    /// Whether the open segment is written through a mapping (else write(2)).
    pub mapped: bool,
    /// The last disk error, in words.
    pub last_error: Option<String>,
}
