//! Counters and recent flush figures.

use std::collections::VecDeque;

use crate::entry::Timestamp;
use crate::sink::WriteError;

/// Counters since the batcher was made, and figures over its recent writes.
///
/// Every entry `log()` accepted is, at any moment, in exactly one of: buffered, written, dead-lettered,
/// sampled out, dropped. So `logged == buffered + written + dead_lettered + sampled_out + dropped` holds in
/// every snapshot.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Stats {
    /// Entries accepted, not yet known to be written (those being written included), in memory or (past
    /// the memory bound, with a spool) in the spool only.
    pub buffered: usize,
    /// Bytes the entries held in memory take.
    pub buffered_bytes: usize,
    /// Entries `log()` or `write()` accepted.
    pub logged: u64,
    /// Entries written to the sink.
    pub written: u64,
    /// Entries the table refused (a constraint, a type, a trigger), moved to the dead-letter place.
    pub dead_lettered: u64,
    /// Entries not kept by sampling.
    pub sampled_out: u64,
    /// Entries discarded because the buffer was full (policy `Drop`).
    pub dropped: u64,
    /// `log()` calls refused because the buffer was full (policy `Reject`); not counted in `logged`.
    pub rejected: u64,
    /// Accepted entries in which a NUL or lone surrogate was replaced with U+FFFD.
    pub sanitized: u64,
    /// Critical entries accepted.
    pub critical: u64,
    /// Writes to the sink (statements) that succeeded.
    pub batches: u64,
    /// Writes to the sink that failed.
    pub failed_flushes: u64,
    /// Attempts made by the background writer or `close()` after a failure.
    pub retries: u64,
    /// The last write error and when it happened.
    pub last_error: Option<(WriteError, Timestamp)>,
    /// Duration of a write to the sink, in milliseconds, over the recent writes.
    pub flush_latency_ms: Percentiles,
    /// Entries per write, over the recent writes.
    pub batch_size: Percentiles,
    /// Every statement's duration since the start, in fixed buckets.
    pub latency_histogram: Histogram,
    /// The durable spool's figures; `None` without a spool.
    pub spool: Option<SpoolReport>,
}

impl Stats {
    /// Adds another batcher's counters to these (a producer's stream batcher and its direct one): the
    /// counters and the histogram are added up, the later last error kept; the percentiles and the spool
    /// figures stay these.
    pub fn add(&mut self, other: Stats) {
        // Destructured without `..`: a counter added to `Stats` fails to compile here until it is added.
        let Stats {
            buffered,
            buffered_bytes,
            logged,
            written,
            dead_lettered,
            sampled_out,
            dropped,
            rejected,
            sanitized,
            critical,
            batches,
            failed_flushes,
            retries,
            last_error,
            flush_latency_ms: _,
            batch_size: _,
            latency_histogram,
            spool: _,
        } = other;
        self.buffered += buffered;
        self.buffered_bytes += buffered_bytes;
        self.logged += logged;
        self.written += written;
        self.dead_lettered += dead_lettered;
        self.sampled_out += sampled_out;
        self.dropped += dropped;
        self.rejected += rejected;
        self.sanitized += sanitized;
        self.critical += critical;
        self.batches += batches;
        self.failed_flushes += failed_flushes;
        self.retries += retries;
        self.latency_histogram.add(&latency_histogram);
        self.last_error = match (self.last_error.take(), last_error) {
            (Some(a), Some(b)) => Some(if b.1 > a.1 { b } else { a }),
            (a, b) => a.or(b),
        };
    }
}

/// What the durable spool did: its own figures, and the batcher's side of the replay.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SpoolReport {
    pub spool: crate::spool::SpoolStats,
    /// Entries of dead processes' spools written to the sink (not counted in `logged`).
    pub replayed: u64,
    /// Of those read back from dead processes' spools, entries the sink refused and that were
    /// dead-lettered (not counted in `logged` either).
    pub replay_dead_lettered: u64,
    /// Entries accepted while the spool could not take them (disk trouble): held in memory only.
    pub unspooled: u64,
    /// Entries held in the spool only at this moment: they came while memory was at its bound, and are
    /// read back as the sink takes the entries before them.
    pub spilled: u64,
}

/// Statement durations since the batcher was made, counted in fixed buckets (Prometheus' cumulative
/// histogram is derived from it).
#[derive(Clone, Debug, PartialEq)]
pub struct Histogram {
    /// Statements whose duration was at most the matching bound of [`Histogram::BOUNDS_MS`] (and above the
    /// previous one).
    pub counts: [u64; Histogram::BOUNDS_MS.len()],
    pub count: u64,
    pub sum_seconds: f64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            counts: [0; Histogram::BOUNDS_MS.len()],
            count: 0,
            sum_seconds: 0.0,
        }
    }
}

impl Histogram {
    /// Upper bounds of the buckets, in milliseconds.
    pub const BOUNDS_MS: [f64; 14] = [
        1.0, 2.5, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0,
        30000.0,
    ];

    /// The bucket bounds in seconds.
    pub fn bounds_seconds(&self) -> [f64; Histogram::BOUNDS_MS.len()] {
        Self::BOUNDS_MS.map(|ms| ms / 1000.0)
    }

    /// Adds another histogram's statements to this one.
    pub fn add(&mut self, other: &Histogram) {
        for (count, more) in self.counts.iter_mut().zip(other.counts) {
            *count += more;
        }
        self.count += other.count;
        self.sum_seconds += other.sum_seconds;
    }

    /// Counts one statement that took `seconds`.
    pub fn record(&mut self, seconds: f64) {
        let ms = seconds * 1000.0;
        if let Some(i) = Self::BOUNDS_MS.iter().position(|b| ms <= *b) {
            self.counts[i] += 1;
        }
        self.count += 1;
        self.sum_seconds += seconds;
    }
}

/// The median, 99th percentile and maximum of recent samples (all zero before the first).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Percentiles {
    pub p50: f64,
    pub p99: f64,
    pub max: f64,
}

/// The most recent writes: their latency and size.
#[derive(Debug, Default)]
pub(crate) struct Window {
    samples: VecDeque<(f64, usize)>,
}

impl Window {
    /// How many recent writes the figures cover.
    pub const LEN: usize = 1024;

    pub fn record(&mut self, latency_ms: f64, rows: usize) {
        if self.samples.len() == Self::LEN {
            self.samples.pop_front();
        }
        self.samples.push_back((latency_ms, rows));
    }

    pub fn latency(&self) -> Percentiles {
        percentiles(self.samples.iter().map(|s| s.0).collect())
    }

    pub fn batch_size(&self) -> Percentiles {
        percentiles(self.samples.iter().map(|s| s.1 as f64).collect())
    }
}

/// Nearest-rank percentiles.
fn percentiles(mut v: Vec<f64>) -> Percentiles {
    if v.is_empty() {
        return Percentiles::default();
    }
    v.sort_by(f64::total_cmp);
    let rank = |p: f64| v[((p * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1];
    Percentiles {
        p50: rank(0.50),
        p99: rank(0.99),
        max: v[v.len() - 1],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_use_nearest_rank_over_the_last_writes() {
        let mut w = Window::default();
        assert_eq!(w.latency(), Percentiles::default());
        for i in 1..=100 {
            w.record(i as f64, i);
        }
        assert_eq!(
            w.latency(),
            Percentiles {
                p50: 50.0,
                p99: 99.0,
                max: 100.0
            }
        );
        for _ in 0..Window::LEN {
            w.record(7.0, 3);
        }
        assert_eq!(
            w.batch_size(),
            Percentiles {
                p50: 3.0,
                p99: 3.0,
                max: 3.0
            }
        );
    }
}
