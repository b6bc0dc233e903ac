//! A batcher's configuration as the core sees it, every option's range and default in one place, and the
//! one error for an option that was refused.
//!
//! The JavaScript surface declares the options (names, types, documentation) once, in
//! `napi/options.rs`, and converts them into a [`Config`] with the rules written here.

use std::fmt;
use std::time::Duration;

use crate::batcher::{BackgroundConfig, BatcherConfig};
use crate::sink::SinkConfig;
use crate::spool::SpoolConfig;

/// An option that was refused: which one (`poolSize`, `columns.actor`, ...) and why, in words a user
/// can act on. Never holds a password.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InvalidOption {
    pub option: String,
    pub reason: String,
}

impl InvalidOption {
    pub fn new(option: impl Into<String>, reason: impl Into<String>) -> Self {
        InvalidOption {
            option: option.into(),
            reason: reason.into(),
        }
    }
}

impl fmt::Display for InvalidOption {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "option `{}` {}", self.option, self.reason)
    }
}

impl std::error::Error for InvalidOption {}

/// A whole-number option: its name, its range, and its value when not given (`None`: off).
#[derive(Clone, Copy, Debug)]
pub struct Whole {
    pub name: &'static str,
    pub min: u64,
    pub max: u64,
    pub default: Option<u64>,
}

impl Whole {
    /// The value given (a JavaScript number), checked to be a whole number in range, else the default.
    pub fn read(&self, given: Option<f64>) -> Result<Option<u64>, InvalidOption> {
        let Some(n) = given else {
            return Ok(self.default);
        };
        if n.fract() != 0.0 || n < self.min as f64 || n > self.max as f64 {
            return Err(InvalidOption::new(
                self.name,
                format!(
                    "must be an integer from {} to {}, got {n}",
                    self.min, self.max
                ),
            ));
        }
        Ok(Some(n as u64))
    }

    /// [`Whole::read`] for an option that has a default.
    pub fn value(&self, given: Option<f64>) -> Result<u64, InvalidOption> {
        Ok(self.read(given)?.unwrap_or_else(|| self.default_value()))
    }

    /// The default (0 for an option that is off by default).
    pub const fn default_value(&self) -> u64 {
        match self.default {
            Some(v) => v,
            None => 0,
        }
    }
}

/// Every numeric option, with its range and default.
pub mod limits {
    use super::Whole;

    const DAY_MS: u64 = 86_400_000;

    pub const MAX_BATCH_ROWS: Whole = Whole {
        name: "maxBatchRows",
        min: 1,
        max: 100_000,
        default: Some(10_000),
    };
    pub const MAX_BUFFERED_ENTRIES: Whole = Whole {
        name: "maxBufferedEntries",
        min: 1,
        max: 1 << 32,
        default: Some(100_000),
    };
    pub const MAX_BUFFERED_BYTES: Whole = Whole {
        name: "maxBufferedBytes",
        min: 1024,
        max: 1 << 40,
        default: Some(64 * 1024 * 1024),
    };
    pub const MAX_ENTRY_BYTES: Whole = Whole {
        name: "maxEntryBytes",
        min: 256,
        max: 512 * 1024 * 1024,
        default: Some(1024 * 1024),
    };
    pub const FLUSH_INTERVAL_MS: Whole = Whole {
        name: "flushIntervalMs",
        min: 1,
        max: DAY_MS,
        default: None,
    };
    pub const FLUSH_AT_ENTRIES: Whole = Whole {
        name: "flushAtEntries",
        min: 1,
        max: 1 << 32,
        default: None,
    };
    pub const HIGH_WATER_MARK: Whole = Whole {
        name: "highWaterMark",
        min: 1,
        max: 1 << 32,
        default: None,
    };
    pub const CLOSE_TIMEOUT_MS: Whole = Whole {
        name: "closeTimeoutMs",
        min: 0,
        max: DAY_MS,
        default: Some(10_000),
    };
    /// `close({ timeoutMs })`; its default is the batcher's `closeTimeoutMs`.
    pub const CLOSE_CALL_TIMEOUT_MS: Whole = Whole {
        name: "timeoutMs",
        min: 0,
        max: DAY_MS,
        default: None,
    };
    pub const POOL_SIZE: Whole = Whole {
        name: "poolSize",
        min: 1,
        max: 1000,
        default: Some(2),
    };
    pub const CONNECT_TIMEOUT_MS: Whole = Whole {
        name: "connectTimeoutMs",
        min: 1,
        max: 600_000,
        default: Some(10_000),
    };
    /// `redis.shards`: how many streams entries are spread over (1 to 1024, as `RedisConfig` checks).
    pub const REDIS_SHARDS: Whole = Whole {
        name: "redis.shards",
        min: 1,
        max: 1024,
        default: Some(1),
    };
    /// `redis.maxLength`: a producer's bound on entries in the stream(s); none by default.
    pub const REDIS_MAX_LENGTH: Whole = Whole {
        name: "redis.maxLength",
        min: 1,
        max: 1 << 40,
        default: None,
    };
    /// `redis.highWaterLength`: the stream length (all shards) at which a producer calls `onHighWater`;
    /// none by default. At most `redis.maxLength` when that is given.
    pub const REDIS_HIGH_WATER_LENGTH: Whole = Whole {
        name: "redis.highWaterLength",
        min: 1,
        max: 1 << 40,
        default: None,
    };
    /// `redis.blockMs`: how long one worker read waits for new entries.
    pub const REDIS_BLOCK_MS: Whole = Whole {
        name: "redis.blockMs",
        min: 1,
        max: 60_000,
        default: Some(1000),
    };
    /// `redis.claimIdleMs`: entries held this long by a consumer are taken over by another worker.
    pub const REDIS_CLAIM_IDLE_MS: Whole = Whole {
        name: "redis.claimIdleMs",
        min: 1,
        max: DAY_MS,
        default: Some(30_000),
    };
    /// `redis.claimIntervalMs`: how often a worker scans each shard's pending list.
    pub const REDIS_CLAIM_INTERVAL_MS: Whole = Whole {
        name: "redis.claimIntervalMs",
        min: 1,
        max: DAY_MS,
        default: Some(5000),
    };
    /// `redis.consumerExpiryMs`: idle consumers holding nothing are removed after this long; 0 means never.
    pub const REDIS_CONSUMER_EXPIRY_MS: Whole = Whole {
        name: "redis.consumerExpiryMs",
        min: 0,
        max: 30 * DAY_MS,
        default: Some(3_600_000),
    };
    /// A worker's `stopTimeoutMs`: how long `stop()` keeps trying to commit the batch in hand.
    pub const STOP_TIMEOUT_MS: Whole = Whole {
        name: "stopTimeoutMs",
        min: 0,
        max: DAY_MS,
        default: Some(10_000),
    };
    /// `spool.syncIntervalMs`: how often the spool is synced (and its next segment prepared).
    pub const SPOOL_SYNC_INTERVAL_MS: Whole = Whole {
        name: "spool.syncIntervalMs",
        min: 1,
        max: 60_000,
        default: Some(200),
    };
    /// `spool.maxBytes`: disk the spool may use (segments are 16 MiB, at most a quarter of it).
    pub const SPOOL_MAX_BYTES: Whole = Whole {
        name: "spool.maxBytes",
        min: 1 << 20,
        max: 1 << 50,
        default: Some(1 << 30),
    };
}

/// The table written to when the `table` option is not given.
pub const DEFAULT_TABLE: &str = "audit_log";

/// Everything a batcher needs, checked.
#[derive(Clone, Debug)]
pub struct Config {
    pub sink: SinkConfig,
    /// A Redis producer given a `connectionString` too: the PostgreSQL table that critical entries and
    /// `write()` go to directly, through a batcher of their own (not ordered with the stream's entries).
    pub direct: Option<SinkConfig>,
    pub batcher: BatcherConfig,
    /// Write-behind: flush this often while anything is buffered.
    pub flush_interval: Option<Duration>,
    /// Flush and close on `beforeExit` and SIGTERM.
    pub flush_on_exit: bool,
    /// How long `close()` may take when its call does not say.
    pub close_timeout: Duration,
    /// Buffered entries at which the observer hears `on_high_water`.
    pub high_water_mark: Option<usize>,
    /// The durable spool, when asked for.
    pub spool: Option<SpoolSettings>,
}

/// Where and how the durable spool keeps accepted entries.
#[derive(Clone, Debug)]
pub struct SpoolSettings {
    pub dir: std::path::PathBuf,
    pub config: SpoolConfig,
}

impl Config {
    /// The background writer's settings: it writes full batches at once, and, when write-behind was
    /// asked for (`flushIntervalMs` or `flushAtEntries`), flushes in the background.
    pub fn background(&self) -> BackgroundConfig {
        BackgroundConfig {
            interval: self.flush_interval,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whole_numbers_are_checked_against_their_range_and_default_when_absent() {
        let w = limits::POOL_SIZE;
        assert_eq!(w.read(None), Ok(Some(2)));
        assert_eq!(w.read(Some(7.0)), Ok(Some(7)));
        for bad in [0.0, 1.5, 1001.0, f64::NAN, f64::INFINITY, -1.0] {
            let e = w.read(Some(bad)).unwrap_err();
            assert_eq!(e.option, "poolSize");
            assert!(
                e.reason.starts_with("must be an integer from 1 to 1000"),
                "{e}"
            );
        }
        assert_eq!(limits::FLUSH_INTERVAL_MS.read(None), Ok(None));
    }
}
