//! What a worker reports: its counters, and the state of the streams and of its consumer group.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

/// Counters a worker's shard loops add to; read through `Worker::counters`.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub read: AtomicU64,
    pub claimed: AtomicU64,
    pub acked: AtomicU64,
    pub undecodable: AtomicU64,
    pub pg_failures: AtomicU64,
    pub redis_failures: AtomicU64,
    pub reads: AtomicU64,
}

impl Counters {
    pub(crate) fn add(counter: &AtomicU64, n: usize) {
        counter.fetch_add(n as u64, Ordering::Relaxed);
    }
}

/// A worker's state: its counters since start, and the streams as Redis last reported them.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct WorkerStats {
    /// Stream entries delivered to this worker by `XREADGROUP` (its own pending ones re-read at start
    /// included).
    pub entries_read: u64,
    /// Stream entries this worker took over from other consumers with `XAUTOCLAIM`.
    pub entries_claimed: u64,
    /// Entries committed to the table by this worker (a duplicate that `ON CONFLICT` skipped counts too).
    pub entries_written: u64,
    /// Entries this worker moved to the dead-letter table: rows the table refused, and undecodable stream
    /// entries.
    pub entries_dead_lettered: u64,
    /// Of those, stream entries that could not be decoded.
    pub entries_undecodable: u64,
    /// Stream entries this worker acknowledged (and deleted from the stream), as counted by `XACK`: an
    /// entry claimed by another worker and acknowledged by both counts once, for the first.
    pub entries_acked: u64,
    /// Reads (`XREADGROUP` and `XAUTOCLAIM` calls) made.
    pub reads: u64,
    /// Failed PostgreSQL writes (each retried after a backoff).
    pub pg_failures: u64,
    /// Failed Redis commands (each retried after a backoff, the connection reopened).
    pub redis_failures: u64,
    /// Entries in hand: read, not yet acknowledged.
    pub in_hand: u64,
    /// Entries in the stream(s), all shards together (`XLEN`). `None` when Redis did not answer.
    pub stream_length: Option<u64>,
    /// Entries delivered to the group and not acknowledged, all consumers together (`XPENDING`).
    pub pending: Option<u64>,
    /// Age in milliseconds of the oldest unacknowledged entry, from its stream id (the time it was added).
    pub oldest_pending_age_ms: Option<u64>,
    /// Consumers of the group (the largest count over the shards).
    pub consumers: Option<u64>,
    /// Entries not yet delivered to the group (`XINFO GROUPS` lag, Redis 7). `None` when Redis cannot tell.
    pub lag: Option<u64>,
    /// The last failure, free of passwords.
    pub last_error: Option<String>,
}

impl WorkerStats {
    /// The stats in the Prometheus text format, every sample labelled with `labels` (names already valid).
    pub fn metrics_text(&self, labels: &[(String, String)]) -> String {
        let labels: Vec<String> = labels
            .iter()
            .map(|(k, v)| {
                let v = v
                    .replace('\\', "\\\\")
                    .replace('"', "\\\"")
                    .replace('\n', "\\n");
                format!("{k}=\"{v}\"")
            })
            .collect();
        let with = |extra: Option<String>| {
            let all: Vec<String> = labels.iter().cloned().chain(extra).collect();
            if all.is_empty() {
                String::new()
            } else {
                format!("{{{}}}", all.join(","))
            }
        };
        let mut out = String::new();
        let mut metric =
            |name: &str, kind: &str, help: &str, samples: &[(Option<&str>, Option<u64>)]| {
                let _ = writeln!(out, "# HELP audit_batcher_worker_{name} {help}");
                let _ = writeln!(out, "# TYPE audit_batcher_worker_{name} {kind}");
                for (state, value) in samples {
                    if let Some(value) = value {
                        let extra = state.map(|s| format!("state=\"{s}\""));
                        let _ = writeln!(out, "audit_batcher_worker_{name}{} {value}", with(extra));
                    }
                }
            };
        metric(
            "entries_total",
            "counter",
            "Stream entries by what this worker did with them: read, claimed, written, dead_lettered, undecodable, acked.",
            &[
                (Some("read"), Some(self.entries_read)),
                (Some("claimed"), Some(self.entries_claimed)),
                (Some("written"), Some(self.entries_written)),
                (Some("dead_lettered"), Some(self.entries_dead_lettered)),
                (Some("undecodable"), Some(self.entries_undecodable)),
                (Some("acked"), Some(self.entries_acked)),
            ],
        );
        metric(
            "failures_total",
            "counter",
            "Failed attempts, retried: postgres or redis.",
            &[
                (Some("postgres"), Some(self.pg_failures)),
                (Some("redis"), Some(self.redis_failures)),
            ],
        );
        metric(
            "in_hand",
            "gauge",
            "Entries read and not yet acknowledged by this worker.",
            &[(None, Some(self.in_hand))],
        );
        metric(
            "stream_length",
            "gauge",
            "Entries in the stream(s).",
            &[(None, self.stream_length)],
        );
        metric(
            "pending",
            "gauge",
            "Entries delivered to the group and not acknowledged.",
            &[(None, self.pending)],
        );
        metric(
            "oldest_pending_age_seconds",
            "gauge",
            "Age of the oldest unacknowledged entry.",
            &[(None, self.oldest_pending_age_ms.map(|ms| ms / 1000))],
        );
        metric(
            "consumers",
            "gauge",
            "Consumers in the group.",
            &[(None, self.consumers)],
        );
        metric(
            "lag",
            "gauge",
            "Entries not yet delivered to the group.",
            &[(None, self.lag)],
        );
        out
    }
}
