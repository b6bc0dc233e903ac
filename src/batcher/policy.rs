//! The batcher's settings: batch size, the buffer's bounds and what happens at them, sampling, backoff.

use std::collections::HashMap;
use std::time::Duration;

/// What `log()` does with a non-critical entry when the buffer is at its bound.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum OverflowPolicy {
    /// Refuse the entry: `log()` fails with [`super::LogError::BufferFull`]; the caller knows.
    #[default]
    Reject,
    /// Take the entry but discard it, counted in `Stats::dropped`.
    Drop,
}

/// Which share of non-critical entries is kept. Critical entries are always kept.
#[derive(Clone, Debug, PartialEq)]
pub struct Sampling {
    /// The probability, from 0 to 1, that an entry is kept.
    pub rate: f64,
    /// Rates for particular actions, overriding `rate`.
    pub per_action: HashMap<String, f64>,
}

impl Default for Sampling {
    fn default() -> Self {
        Sampling {
            rate: 1.0,
            per_action: HashMap::new(),
        }
    }
}

impl Sampling {
    /// The rate that applies to `action`.
    pub fn rate_for(&self, action: &str) -> f64 {
        if self.per_action.is_empty() {
            return self.rate;
        }
        self.per_action.get(action).copied().unwrap_or(self.rate)
    }
}

/// Exponential backoff with jitter between attempts to write while the sink fails.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    /// The delay after the first failure.
    pub initial: Duration,
    /// The longest delay.
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(30),
        }
    }
}

impl Backoff {
    /// The delay after `failures` consecutive failures (at least 1): `initial × 2^(failures-1)`, capped at
    /// `max`, then drawn uniformly from its upper half so that many processes do not retry in step.
    pub fn delay(&self, failures: u32) -> Duration {
        let exp = failures.saturating_sub(1).min(20);
        let full = self.initial.saturating_mul(1 << exp).min(self.max);
        full.mul_f64(0.5 + fastrand::f64() * 0.5)
    }
}

/// Settings the batcher core needs.
#[derive(Clone, Debug, PartialEq)]
pub struct BatcherConfig {
    /// The most entries one write to the sink carries; a larger flush makes several writes, in order.
    pub max_batch_rows: usize,
    /// The most entries held at once (being written included), critical entries aside.
    pub max_buffered_entries: usize,
    /// The most bytes held at once (see `Entry::size_bytes`), critical entries aside.
    pub max_buffered_bytes: usize,
    /// The largest entry `log()` takes, in bytes of text (see `Entry::size_bytes`).
    pub max_entry_bytes: usize,
    /// What happens to a non-critical entry that would pass a bound.
    pub on_buffer_full: OverflowPolicy,
    pub sampling: Sampling,
    /// With a background writer: flush as soon as this many entries are buffered.
    pub flush_at_entries: Option<usize>,
    /// Delays between the attempts of the background writer and of `close()`.
    pub backoff: Backoff,
}

impl Default for BatcherConfig {
    /// The defaults of [`crate::options::limits`].
    fn default() -> Self {
        use crate::options::limits;
        BatcherConfig {
            max_batch_rows: limits::MAX_BATCH_ROWS.default_value() as usize,
            max_buffered_entries: limits::MAX_BUFFERED_ENTRIES.default_value() as usize,
            max_buffered_bytes: limits::MAX_BUFFERED_BYTES.default_value() as usize,
            max_entry_bytes: limits::MAX_ENTRY_BYTES.default_value() as usize,
            on_buffer_full: OverflowPolicy::Reject,
            sampling: Sampling::default(),
            flush_at_entries: None,
            backoff: Backoff::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_its_cap_with_jitter_in_the_upper_half() {
        let b = Backoff::default();
        for (failures, full_ms) in [
            (1, 100),
            (2, 200),
            (3, 400),
            (9, 25_600),
            (10, 30_000),
            (60, 30_000),
        ] {
            for _ in 0..50 {
                let d = b.delay(failures).as_secs_f64() * 1000.0;
                assert!(
                    d >= full_ms as f64 / 2.0 - 1e-6 && d <= full_ms as f64 + 1e-6,
                    "{failures}: {d}"
                );
            }
        }
    }

    #[test]
    fn per_action_rates_override_the_default() {
        let s = Sampling {
            rate: 0.5,
            per_action: HashMap::from([("file.read".to_owned(), 0.0)]),
        };
        assert_eq!(s.rate_for("file.read"), 0.0);
        assert_eq!(s.rate_for("tool.call"), 0.5);
    }
}
