//! `inspectSpool(dir)`: a read-only look inside a spool directory, for the `audit-batcher spool inspect`
//! command.

use napi_derive::napi;

use super::types::utc;
use crate::spool::{inspect, SpoolInfo};

/// One spool under a spool directory.
#[napi(object)]
pub struct SpoolInspectionEntry {
    /// The spool's directory.
    pub path: String,
    /// Whether a live process holds it (its entries are that process's, not replayed by others).
    pub live: bool,
    pub segments: i64,
    /// Readable entries.
    pub entries: i64,
    /// Bytes of its segment files (preallocated).
    pub bytes: i64,
    /// Earliest and latest `occurredAt` among its entries, or null when it has none.
    pub oldest: Option<chrono::DateTime<chrono::Utc>>,
    pub newest: Option<chrono::DateTime<chrono::Utc>>,
    /// Damaged stretches a replay would skip.
    pub damaged: i64,
    /// Torn last records a replay would cut off.
    pub torn_tails: i64,
}

/// What a spool directory holds.
#[napi(object)]
pub struct SpoolInspection {
    /// Oldest spool first.
    pub spools: Vec<SpoolInspectionEntry>,
    /// Segments set aside in `quarantine/` because damage was found in them.
    pub quarantined: Vec<String>,
}

impl From<SpoolInfo> for SpoolInspectionEntry {
    fn from(i: SpoolInfo) -> Self {
        SpoolInspectionEntry {
            path: i.path.display().to_string(),
            live: i.live,
            segments: i.segments as i64,
            entries: i.entries as i64,
            bytes: i.bytes as i64,
            oldest: i.oldest.map(utc),
            newest: i.newest.map(utc),
            damaged: i.damaged as i64,
            torn_tails: i.torn_tails as i64,
        }
    }
}

/// Reads every spool under `dir` without changing anything (no lock kept, no file written). Throws
/// when `dir` cannot be read (the message starts with `ENOENT: ` when it does not exist).
// Called by Node only: unused in the crate's own test build.
#[cfg_attr(test, allow(dead_code))]
#[napi(catch_unwind)]
pub fn inspect_spool(dir: String) -> napi::Result<SpoolInspection> {
    inspect_dir(&dir).map_err(|reason| napi::Error::new(napi::Status::GenericFailure, reason))
}

/// [`inspect_spool`] without napi's error type.
fn inspect_dir(dir: &str) -> Result<SpoolInspection, String> {
    let found = inspect(std::path::Path::new(dir)).map_err(|e| {
        let code = if e.kind() == std::io::ErrorKind::NotFound {
            "ENOENT"
        } else {
            "EIO"
        };
        format!("{code}: cannot read spool directory {dir}: {e}")
    })?;
    Ok(SpoolInspection {
        spools: found.spools.into_iter().map(Into::into).collect(),
        quarantined: found
            .quarantined
            .iter()
            .map(|p| p.display().to_string())
            .collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_directory_is_an_enoent_error_and_an_empty_one_holds_no_spool() {
        let missing = std::env::temp_dir().join(format!("no-spool-{:08x}", fastrand::u32(..)));
        let dir = missing.display().to_string();
        let e = inspect_dir(&dir).err().unwrap_or_default();
        assert!(e.starts_with("ENOENT: "), "{e}");
        std::fs::create_dir(&missing).unwrap();
        let found = inspect_dir(&dir);
        std::fs::remove_dir(&missing).unwrap();
        let found = found.unwrap();
        assert!(found.spools.is_empty() && found.quarantined.is_empty());
    }
}
