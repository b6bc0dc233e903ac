//! Prometheus text exposition of a batcher's counters, for a `/metrics` route.

use std::fmt::Write;

use crate::batcher::Stats;

/// Renders `stats` in the Prometheus text format (version 0.0.4): counters, gauges and the statement
/// duration histogram, each with `# HELP` and `# TYPE`. `labels` (already validated names) are added to every
/// sample, e.g. `[("batcher", "api")]` to tell several batchers apart.
pub fn render(stats: &Stats, labels: &[(String, String)]) -> String {
    let base: Vec<String> = labels
        .iter()
        .map(|(k, v)| format!("{k}=\"{}\"", escape(v)))
        .collect();
    let with = |extra: &[String]| -> String {
        let all: Vec<&String> = base.iter().chain(extra).collect();
        if all.is_empty() {
            String::new()
        } else {
            let joined: Vec<&str> = all.iter().map(|s| s.as_str()).collect();
            format!("{{{}}}", joined.join(","))
        }
    };
    let mut out = String::new();
    let mut metric = |name: &str, kind: &str, help: &str, samples: &[(Vec<String>, f64)]| {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} {kind}");
        for (extra, value) in samples {
            let _ = writeln!(out, "{name}{} {}", with(extra), number(*value));
        }
    };
    let state = |s: &str| vec![format!("state=\"{s}\"")];
    metric(
        "audit_batcher_entries_total",
        "counter",
        "Audit entries by what became of them: logged (accepted), written, dead_lettered, sampled_out, dropped.",
        &[
            (state("logged"), stats.logged as f64),
            (state("written"), stats.written as f64),
            (state("dead_lettered"), stats.dead_lettered as f64),
            (state("sampled_out"), stats.sampled_out as f64),
            (state("dropped"), stats.dropped as f64),
        ],
    );
    metric(
        "audit_batcher_rejected_total",
        "counter",
        "log() calls refused because the buffer was full (onBufferFull: 'reject').",
        &[(vec![], stats.rejected as f64)],
    );
    metric(
        "audit_batcher_sanitized_total",
        "counter",
        "Entries in which a NUL character or lone surrogate was replaced with U+FFFD.",
        &[(vec![], stats.sanitized as f64)],
    );
    metric(
        "audit_batcher_buffered_entries",
        "gauge",
        "Entries held in memory, not yet written.",
        &[(vec![], stats.buffered as f64)],
    );
    metric(
        "audit_batcher_buffered_bytes",
        "gauge",
        "Bytes held by the buffered entries.",
        &[(vec![], stats.buffered_bytes as f64)],
    );
    metric(
        "audit_batcher_statements_total",
        "counter",
        "INSERT statements committed.",
        &[(vec![], stats.batches as f64)],
    );
    metric(
        "audit_batcher_write_failures_total",
        "counter",
        "Write attempts that failed (their entries stayed buffered).",
        &[(vec![], stats.failed_flushes as f64)],
    );
    metric(
        "audit_batcher_retries_total",
        "counter",
        "Attempts made by the background writer or close() after a failure.",
        &[(vec![], stats.retries as f64)],
    );
    if let Some(report) = &stats.spool {
        let sp = &report.spool;
        metric(
            "audit_batcher_spool_bytes",
            "gauge",
            "Bytes of spool segments on disk (own and claimed; preallocated whole).",
            &[(vec![], sp.bytes as f64)],
        );
        metric(
            "audit_batcher_spool_spilled_entries",
            "gauge",
            "Entries held in the spool only (beyond the memory bound), read back as the table takes the entries before them.",
            &[(vec![], report.spilled as f64)],
        );
        metric(
            "audit_batcher_spool_segments",
            "gauge",
            "Spool segments on disk (own and claimed).",
            &[(vec![], sp.segments as f64)],
        );
        metric(
            "audit_batcher_spool_entries_total",
            "counter",
            "Spool entries by event: appended, recovered (read back from dead processes' spools), replayed (of those, written), unspooled (kept in memory only: disk trouble).",
            &[
                (state("appended"), sp.appended as f64),
                (state("recovered"), sp.recovered as f64),
                (state("replayed"), report.replayed as f64),
                (state("unspooled"), report.unspooled as f64),
            ],
        );
        metric(
            "audit_batcher_spool_damaged_total",
            "counter",
            "Damaged records skipped and torn tails cut off while reading dead processes' spools.",
            &[(vec![], (sp.damaged + sp.torn_tails) as f64)],
        );
        metric(
            "audit_batcher_spool_full_total",
            "counter",
            "Appends refused at spool.maxBytes (onBufferFull applied).",
            &[(vec![], sp.full as f64)],
        );
        metric(
            "audit_batcher_spool_errors_total",
            "counter",
            "Spool operations that failed on disk trouble.",
            &[(vec![], sp.errors as f64)],
        );
        metric(
            "audit_batcher_spool_syncs_total",
            "counter",
            "Spool syncs (fdatasync) that succeeded.",
            &[(vec![], sp.syncs as f64)],
        );
        metric(
            "audit_batcher_spool_sync_failures_total",
            "counter",
            "Spool syncs that failed (their segments were abandoned and the entries appended again).",
            &[(vec![], sp.sync_failures as f64)],
        );
        metric(
            "audit_batcher_spool_last_sync_seconds",
            "gauge",
            "Duration of the last spool sync.",
            &[(vec![], sp.last_sync.map_or(0.0, |d| d.as_secs_f64()))],
        );
    }
    let h = &stats.latency_histogram;
    let mut samples: Vec<(Vec<String>, f64)> = Vec::new();
    let mut cumulative = 0u64;
    for (bound, count) in h.bounds_seconds().iter().zip(&h.counts) {
        cumulative += count;
        samples.push((
            vec![format!("le=\"{}\"", number(*bound))],
            cumulative as f64,
        ));
    }
    samples.push((vec!["le=\"+Inf\"".to_owned()], h.count as f64));
    let _ = writeln!(
        out,
        "# HELP audit_batcher_statement_duration_seconds Duration of one INSERT statement, from send to commit.\n# TYPE audit_batcher_statement_duration_seconds histogram"
    );
    for (extra, value) in &samples {
        let _ = writeln!(
            out,
            "audit_batcher_statement_duration_seconds_bucket{} {}",
            with(extra),
            number(*value)
        );
    }
    let _ = writeln!(
        out,
        "audit_batcher_statement_duration_seconds_sum{} {}",
        with(&[]),
        number(h.sum_seconds)
    );
    let _ = writeln!(
        out,
        "audit_batcher_statement_duration_seconds_count{} {}",
        with(&[]),
        h.count
    );
    out
}

/// Whether `name` may label the samples: a Prometheus label name, not reserved (`__*`) and not one of the
/// labels the samples carry already (`state`, `le`). The error says why not.
pub fn check_label_name(name: &str) -> Result<(), String> {
    let mut chars = name.chars();
    let valid = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
    if !valid {
        return Err("is not a valid Prometheus label name ([a-zA-Z_][a-zA-Z0-9_]*)".to_owned());
    }
    if name.starts_with("__") || ["state", "le"].contains(&name) {
        return Err("is a reserved label name".to_owned());
    }
    Ok(())
}

fn number(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        format!("{v}")
    }
}

/// Escapes a label value: backslash, double quote and newline.
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_gauges_and_a_cumulative_histogram() {
        let mut stats = Stats {
            logged: 10,
            written: 7,
            buffered: 3,
            ..Default::default()
        };
        stats.latency_histogram.record(0.0007);
        stats.latency_histogram.record(0.004);
        stats.latency_histogram.record(42.0);
        let text = render(&stats, &[("batcher".into(), "a\"b".into())]);
        assert!(text.contains("# TYPE audit_batcher_entries_total counter\n"));
        assert!(
            text.contains("audit_batcher_entries_total{batcher=\"a\\\"b\",state=\"written\"} 7\n"),
            "{text}"
        );
        assert!(text.contains("audit_batcher_buffered_entries{batcher=\"a\\\"b\"} 3\n"));
        assert!(text.contains("audit_batcher_statement_duration_seconds_bucket{batcher=\"a\\\"b\",le=\"0.001\"} 1\n"), "{text}");
        assert!(text.contains(
            "audit_batcher_statement_duration_seconds_bucket{batcher=\"a\\\"b\",le=\"0.005\"} 2\n"
        ));
        assert!(text.contains(
            "audit_batcher_statement_duration_seconds_bucket{batcher=\"a\\\"b\",le=\"+Inf\"} 3\n"
        ));
        assert!(
            text.contains("audit_batcher_statement_duration_seconds_count{batcher=\"a\\\"b\"} 3\n")
        );
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            assert_eq!(line.split(' ').count(), 2, "sample line {line:?}");
        }
    }
}
