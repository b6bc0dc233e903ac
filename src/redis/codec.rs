//! One stream entry per audit entry.
//!
//! # Stream format, version 1
//! Each audit entry is one stream entry whose fields are, in this order:
//!
//! | field | value |
//! |---|---|
//! | `v` | `1`, the format version |
//! | `id` | the entry's UUID, canonical lower-case text |
//! | `occurredAt` | microseconds since the Unix epoch, decimal |
//! | `action` | the action, non-empty |
//! | `tenantId`, `actor`, `resource`, `outcome` | present only when the entry has them (absent differs from empty) |
//! | `payload` | the payload as JSON text |
//!
//! Field names are the JavaScript API's, so `XRANGE audit - + COUNT 5` in `redis-cli` reads like the
//! entries that were logged. The stream entry's own id (`XADD *`) is Redis's; the audit id travels in `id`,
//! and `ON CONFLICT (id) DO NOTHING` in the table makes a stream entry added twice (a retried pipeline
//! whose reply was lost) a single row.
//!
//! Decoding is strict: every field must be valid UTF-8, known, and given once; `v` must be `1`; `id` a
//! canonical UUID; `occurredAt` an integer within years 1 to 9999; `action` non-empty; `payload` valid JSON.
//! Anything else is a [`DecodeError`] (the worker dead-letters the raw fields), never a panic.

use std::fmt;

use serde::de::IgnoredAny;

use crate::entry::{Entry, EntryDraft, Slot, TextField, Timestamp};
use crate::uuid7::{Uuid, Uuid7Generator};

/// The format version written in field `v`.
pub const VERSION: &str = "1";

/// The action of the synthetic entry that carries an undecodable stream entry to the dead-letter table.
pub const UNDECODABLE_ACTION: &str = "audit-batcher.undecodable-stream-entry";

/// Calls `field(name, value)` for each field of `entry`'s stream entry, in the documented order.
pub fn for_each_field(entry: &Entry, mut field: impl FnMut(&'static str, &str)) {
    field("v", VERSION);
    field("id", &entry.id().to_string());
    field("occurredAt", &entry.occurred_at().micros().to_string());
    field("action", entry.action());
    for text in TextField::ALL {
        if let Some(value) = entry.text(text) {
            field(text.js_name(), value);
        }
    }
    field("payload", entry.payload_json());
}

/// The fields of `entry`'s stream entry, in order (see the module's table).
pub fn encode_fields(entry: &Entry) -> Vec<(&'static str, String)> {
    let mut out = Vec::with_capacity(9);
    for_each_field(entry, |name, value| out.push((name, value.to_owned())));
    out
}

/// Why a stream entry is not an audit entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DecodeError(pub String);

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "undecodable stream entry: {}", self.0)
    }
}

impl std::error::Error for DecodeError {}

fn err<T>(text: impl Into<String>) -> Result<T, DecodeError> {
    Err(DecodeError(text.into()))
}

/// The audit entry a stream entry's fields describe, as a draft with its id and time set (so logging it
/// keeps both). Checks everything the module documents; the draft's `prepare` cannot then fail but for
/// size.
pub fn decode<N: AsRef<[u8]>, V: AsRef<[u8]>>(
    fields: &[(N, V)],
) -> Result<EntryDraft, DecodeError> {
    let mut draft = EntryDraft::default();
    let mut seen = [false; 9];
    let mut version = None;
    let mut payload_given = false;
    for (name, value) in fields {
        let Ok(name) = std::str::from_utf8(name.as_ref()) else {
            return err("a field name is not UTF-8");
        };
        let Ok(value) = std::str::from_utf8(value.as_ref()) else {
            return err(format!("field `{name}` is not UTF-8"));
        };
        let slot = match name {
            "v" => 0,
            "id" => 1,
            "occurredAt" => 2,
            "action" => 3,
            "payload" => 4,
            _ => match TextField::ALL.iter().position(|f| f.js_name() == name) {
                Some(i) => 5 + i,
                None => return err(format!("unknown field `{}`", truncate(name, 64))),
            },
        };
        if std::mem::replace(&mut seen[slot], true) {
            return err(format!("field `{name}` given twice"));
        }
        match slot {
            0 => version = Some(value),
            1 => match Uuid::parse(value) {
                Some(id) => draft.id = Some(id),
                None => return err("field `id` is not a canonical UUID"),
            },
            2 => {
                let micros = value.parse::<i64>().ok().and_then(Timestamp::from_micros);
                match micros {
                    Some(t) => draft.occurred_at = Some(t),
                    None => {
                        return err("field `occurredAt` is not microseconds within years 1-9999")
                    }
                }
            }
            3 if value.is_empty() => return err("field `action` is empty"),
            3 => draft.set(Slot::Action, value),
            4 => {
                if serde_json::from_str::<IgnoredAny>(value).is_err() {
                    return err("field `payload` is not valid JSON");
                }
                payload_given = true;
                draft.set(Slot::Payload, value);
            }
            i => draft.set(Slot::Text(TextField::ALL[i - 5]), value),
        }
    }
    match version {
        Some(VERSION) => {}
        Some(v) => return err(format!("format version `{}` is not 1", truncate(v, 16))),
        None => return err("field `v` is missing"),
    }
    for (slot, name) in [(1, "id"), (2, "occurredAt"), (3, "action")] {
        if !seen[slot] {
            return err(format!("field `{name}` is missing"));
        }
    }
    if !payload_given {
        return err("field `payload` is missing");
    }
    Ok(draft)
}

/// A decoded draft as a finished entry (its id and time are the stream entry's).
pub fn decode_entry<N: AsRef<[u8]>, V: AsRef<[u8]>>(
    fields: &[(N, V)],
) -> Result<Entry, DecodeError> {
    let draft = decode(fields)?;
    let prepared = draft
        .prepare(Timestamp::now())
        .map_err(|e| DecodeError(e.to_string()))?;
    Ok(prepared.finish(&mut Uuid7Generator::new()))
}

/// The synthetic entry that carries an undecodable stream entry to the dead-letter table: action
/// [`UNDECODABLE_ACTION`], resource `<stream>/<stream id>`, payload `{"stream", "streamId", "error",
/// "fields": {name: value}}` (names and values as text, invalid UTF-8 replaced), and an id derived from the
/// stream and the stream entry's id, so dead-lettering the same stream entry twice keeps one row.
///
/// `None` only if the entry could not be packed (more than 4 GiB of text, which Redis cannot hold).
pub fn undecodable_entry<N: AsRef<[u8]>, V: AsRef<[u8]>>(
    stream: &str,
    stream_id: &str,
    fields: &[(N, V)],
    error: &DecodeError,
) -> Option<Entry> {
    let mut map = serde_json::Map::new();
    for (name, value) in fields {
        map.insert(
            String::from_utf8_lossy(name.as_ref()).into_owned(),
            serde_json::Value::String(String::from_utf8_lossy(value.as_ref()).into_owned()),
        );
    }
    let payload = serde_json::json!({
        "stream": stream,
        "streamId": stream_id,
        "error": error.0,
        "fields": map,
    });
    let mut draft = EntryDraft::new(UNDECODABLE_ACTION)
        .with(TextField::Resource, format!("{stream}/{stream_id}"))
        .with_payload_json(payload.to_string());
    draft.id = Some(derived_id(stream, stream_id));
    let prepared = draft.prepare(Timestamp::now()).ok()?;
    Some(prepared.finish(&mut Uuid7Generator::new()))
}

/// A version 8 UUID (RFC 9562, custom) from two FNV-1a hashes of `stream` and `stream_id`.
fn derived_id(stream: &str, stream_id: &str) -> Uuid {
    let key = format!("{stream}\u{0}{stream_id}");
    let a = super::shard::fnv1a64(key.as_bytes());
    let b = super::shard::fnv1a64(format!("audit-batcher\u{0}{key}").as_bytes());
    let mut bytes = [0u8; 16];
    bytes[..8].copy_from_slice(&a.to_be_bytes());
    bytes[8..].copy_from_slice(&b.to_be_bytes());
    bytes[6] = 0x80 | (bytes[6] & 0x0f);
    bytes[8] = 0x80 | (bytes[8] & 0x3f);
    Uuid(bytes)
}

fn truncate(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn sample() -> Entry {
        let mut d = EntryDraft::new("tool.call")
            .with(TextField::TenantId, "t1")
            .with(TextField::Outcome, "")
            .with_payload_json(r#"{"a":[1,"é"]}"#);
        d.occurred_at = Timestamp::from_micros(1_700_000_000_123_456);
        d.prepare(Timestamp::now())
            .unwrap()
            .finish(&mut Uuid7Generator::new())
    }

    #[test]
    fn an_entry_round_trips_through_its_fields() {
        let e = sample();
        let fields = encode_fields(&e);
        let names: Vec<&str> = fields.iter().map(|(n, _)| *n).collect();
        assert_eq!(
            names,
            [
                "v",
                "id",
                "occurredAt",
                "action",
                "tenantId",
                "outcome",
                "payload"
            ]
        );
        assert_eq!(decode_entry(&fields).unwrap(), e);
    }

    #[test]
    fn bad_fields_are_errors_naming_the_fault() {
        let good = encode_fields(&sample());
        let with = |name: &'static str, value: &str| {
            let mut f = good.clone();
            f.retain(|(n, _)| *n != name);
            f.push((name, value.to_owned()));
            decode(&f).unwrap_err().0
        };
        assert!(with("v", "2").contains("version"));
        assert!(with("id", "nope").contains("id"));
        assert!(with("occurredAt", "9e99").contains("occurredAt"));
        assert!(with("occurredAt", "-99999999999999999").contains("occurredAt"));
        assert!(with("action", "").contains("action"));
        assert!(with("payload", "{").contains("payload"));
        let mut twice = good.clone();
        twice.push(("actor", "a".into()));
        twice.push(("actor", "b".into()));
        assert!(decode(&twice).unwrap_err().0.contains("twice"));
        let mut unknown = good.clone();
        unknown.push(("color", "red".into()));
        assert!(decode(&unknown).unwrap_err().0.contains("unknown"));
        let missing: Vec<_> = good
            .iter()
            .filter(|(n, _)| *n != "payload")
            .cloned()
            .collect();
        assert!(decode(&missing).unwrap_err().0.contains("missing"));
        let bytes = vec![(b"action".to_vec(), vec![0xff, 0xfe])];
        assert!(decode(&bytes).unwrap_err().0.contains("UTF-8"));
        assert!(decode::<&str, &str>(&[]).is_err());
    }

    #[test]
    fn undecodable_entries_get_a_stable_id_and_keep_the_raw_fields() {
        let fields = vec![(b"junk".to_vec(), vec![0xff, b'x'])];
        let error = decode(&fields).unwrap_err();
        let a = undecodable_entry("audit", "1-1", &fields, &error).unwrap();
        let b = undecodable_entry("audit", "1-1", &fields, &error).unwrap();
        let c = undecodable_entry("audit", "1-2", &fields, &error).unwrap();
        assert_eq!(a.id(), b.id());
        assert_ne!(a.id(), c.id());
        assert_eq!(a.id().version(), 8);
        assert_eq!(a.action(), UNDECODABLE_ACTION);
        let payload: serde_json::Value = serde_json::from_str(a.payload_json()).unwrap();
        assert_eq!(payload["fields"]["junk"], "\u{FFFD}x");
        assert_eq!(payload["streamId"], "1-1");
    }

    proptest! {
        #[test]
        fn decoding_arbitrary_fields_never_panics(
            fields in prop::collection::vec(
                (prop::sample::select(vec!["v", "id", "occurredAt", "action", "tenantId", "payload", "x"]),
                 prop::collection::vec(any::<u8>(), 0..40)),
                0..10)
        ) {
            let fields: Vec<(Vec<u8>, Vec<u8>)> =
                fields.into_iter().map(|(n, v)| (n.as_bytes().to_vec(), v)).collect();
            let _ = decode_entry(&fields);
        }

        #[test]
        fn any_valid_entry_round_trips(
            action in ".+",
            actor in proptest::option::of(any::<String>()),
            payload in any::<String>(),
            micros in Timestamp::MIN.micros()..=Timestamp::MAX.micros(),
        ) {
            let mut d = EntryDraft::new(&action)
                .with_payload_json(serde_json::Value::String(payload).to_string());
            if let Some(a) = &actor { d = d.with(TextField::Actor, a); }
            d.occurred_at = Timestamp::from_micros(micros);
            let e = d.prepare(Timestamp::now()).unwrap().finish(&mut Uuid7Generator::new());
            prop_assert_eq!(decode_entry(&encode_fields(&e)).unwrap(), e);
        }
    }
}
