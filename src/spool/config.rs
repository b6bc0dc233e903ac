//! How a spool behaves: sync mode, bounds, segment size, backend.

use std::time::Duration;

use super::segment::Backend;

/// When the spool is made durable against a machine crash.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SyncMode {
    /// [`Spool::sync`](super::Spool::sync) fdatasyncs what was appended since the last call.
    #[default]
    Interval,
    /// [`Spool::sync`](super::Spool::sync) fsyncs nothing (it still prepares the next segment): a process
    /// crash loses nothing, a machine crash may lose anything not yet written back by the kernel.
    Never,
}

/// How a spool behaves.
#[derive(Clone, Debug)]
pub struct SpoolConfig {
    pub sync: SyncMode,
    /// How often the caller should call [`Spool::sync`](super::Spool::sync) (the spool itself runs no timer).
    pub sync_interval: Duration,
    /// Disk the spool may use, counted as the segments' sizes (preallocated whole), claimed spools
    /// included.
    pub max_bytes: u64,
    /// Size of a segment (at most a quarter of `max_bytes`, at least 64 KiB; a record larger than a
    /// segment gets one of its own).
    pub segment_bytes: u64,
    pub backend: Backend,
}

impl Default for SpoolConfig {
    fn default() -> Self {
        SpoolConfig {
            sync: SyncMode::Interval,
            sync_interval: Duration::from_millis(200),
            max_bytes: 1 << 30,
            segment_bytes: 16 << 20,
            backend: Backend::Auto,
        }
    }
}

impl SpoolConfig {
    pub(super) fn effective_segment_bytes(&self) -> u64 {
        round_4k(self.segment_bytes.min(self.max_bytes / 4).max(64 << 10))
    }
}

pub(super) fn round_4k(n: u64) -> u64 {
    n.div_ceil(4096) * 4096
}
