//! Audit entries: what `log()` accepts, how it is checked, and the compact form kept in the buffer.

use std::borrow::Cow;
use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::fields::Field;
use crate::uuid7::{Uuid, Uuid7Generator};

/// A point in time, in whole microseconds since the Unix epoch (PostgreSQL's `timestamptz` precision).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Timestamp(i64);

impl Timestamp {
    /// 0001-01-01T00:00:00Z, the earliest accepted time.
    pub const MIN: Timestamp = Timestamp(-62_135_596_800_000_000);
    /// 9999-12-31T23:59:59.999999Z, the latest accepted time.
    pub const MAX: Timestamp = Timestamp(253_402_300_799_999_999);

    /// The current wall-clock time.
    pub fn now() -> Timestamp {
        match SystemTime::now().duration_since(UNIX_EPOCH) {
            Ok(d) => Timestamp(d.as_micros() as i64),
            Err(e) => Timestamp(-(e.duration().as_micros() as i64)),
        }
    }

    /// From microseconds since the Unix epoch; `None` outside years 1 to 9999.
    pub fn from_micros(us: i64) -> Option<Timestamp> {
        let t = Timestamp(us);
        (Timestamp::MIN..=Timestamp::MAX).contains(&t).then_some(t)
    }

    /// From JavaScript's epoch milliseconds (a `Date`'s value, or a number); `None` when not finite or out
    /// of range. Fractions of a millisecond are kept to the microsecond.
    pub fn from_millis_f64(ms: f64) -> Option<Timestamp> {
        if !ms.is_finite() {
            return None;
        }
        let us = (ms * 1000.0).round();
        if us < Timestamp::MIN.0 as f64 || us > Timestamp::MAX.0 as f64 {
            return None;
        }
        Timestamp::from_micros(us as i64)
    }

    /// From RFC 3339 text with an explicit offset (`2026-01-02T03:04:05.123Z`, `...+02:00`).
    pub fn parse_rfc3339(s: &str) -> Option<Timestamp> {
        let dt = chrono::DateTime::parse_from_rfc3339(s.trim()).ok()?;
        Timestamp::from_micros(dt.timestamp_micros())
    }

    /// Microseconds since the Unix epoch.
    pub fn micros(self) -> i64 {
        self.0
    }

    /// Whole milliseconds since the Unix epoch, clamped at zero (for UUIDv7 timestamps).
    pub fn unix_millis(self) -> u64 {
        self.0.max(0) as u64 / 1000
    }
}

impl fmt::Display for Timestamp {
    /// RFC 3339 in UTC with microseconds.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match chrono::DateTime::from_timestamp_micros(self.0) {
            Some(dt) => f.write_str(&dt.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)),
            None => write!(f, "{}us", self.0),
        }
    }
}

/// The optional text fields of an entry, in the order they are stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TextField {
    TenantId,
    Actor,
    Resource,
    Outcome,
}

impl TextField {
    /// Every optional text field, in storage order.
    pub const ALL: [TextField; 4] = [
        TextField::TenantId,
        TextField::Actor,
        TextField::Resource,
        TextField::Outcome,
    ];

    /// The entry field this is.
    pub fn field(self) -> Field {
        match self {
            TextField::TenantId => Field::TenantId,
            TextField::Actor => Field::Actor,
            TextField::Resource => Field::Resource,
            TextField::Outcome => Field::Outcome,
        }
    }

    /// The field's name in the JavaScript API.
    pub fn js_name(self) -> &'static str {
        self.field().js_name()
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Why `log()` refused an entry: the field at fault and what was wrong with it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InvalidEntry {
    /// The field's name in the JavaScript API (`action`, `payload`, ...), or `entry` for the whole value.
    pub field: Cow<'static, str>,
    /// What was wrong, in words a user can act on.
    pub reason: String,
}

impl InvalidEntry {
    pub fn new(field: impl Into<Cow<'static, str>>, reason: impl Into<String>) -> Self {
        InvalidEntry {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

impl InvalidEntry {
    /// The entry is `size` bytes, more than `max`.
    pub fn too_large(size: usize, max: usize) -> Self {
        InvalidEntry::new(
            "entry",
            format!("is {size} bytes, more than maxEntryBytes ({max})"),
        )
    }

    /// The entry is at least `size` bytes (known before its text is copied), more than `max`.
    pub fn at_least_too_large(size: usize, max: usize) -> Self {
        InvalidEntry::new(
            "entry",
            format!("is at least {size} bytes, more than maxEntryBytes ({max})"),
        )
    }
}

impl fmt::Display for InvalidEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid audit entry: `{}` {}", self.field, self.reason)
    }
}

impl std::error::Error for InvalidEntry {}

/// A text slot of an entry, in storage order: the action, the optional text fields, the payload's JSON.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Slot {
    Action,
    Text(TextField),
    Payload,
}

impl Slot {
    fn index(self) -> usize {
        match self {
            Slot::Action => 0,
            Slot::Text(f) => f.index() + 1,
            Slot::Payload => 5,
        }
    }
}

/// An entry as the caller gave it, before it is checked and packed.
///
/// Its text is gathered in one buffer, so that an entry whose slots arrive in storage order (as `log()`
/// reads them) is packed without a copy.
#[derive(Clone, Debug, Default)]
pub struct EntryDraft {
    data: String,
    /// Where each slot's text lies in `data`, by [`Slot::index`].
    spans: [Option<(usize, usize)>; 6],
    pub id: Option<Uuid>,
    pub occurred_at: Option<Timestamp>,
    /// Never sampled away, never dropped at the buffer's bound, and written at once.
    pub critical: bool,
}

impl EntryDraft {
    /// Bytes an entry holds besides its text (see [`Entry::size_bytes`]).
    pub const FIXED_BYTES: usize = std::mem::size_of::<Entry>();

    /// An entry with just an action.
    pub fn new(action: impl AsRef<str>) -> Self {
        let mut draft = EntryDraft::default();
        draft.set(Slot::Action, action.as_ref());
        draft
    }

    /// Sets an optional text field.
    pub fn with(mut self, field: TextField, value: impl AsRef<str>) -> Self {
        self.set(Slot::Text(field), value.as_ref());
        self
    }

    /// Sets the payload, as JSON text.
    pub fn with_payload_json(mut self, json: impl AsRef<str>) -> Self {
        self.set(Slot::Payload, json.as_ref());
        self
    }

    /// Sets a slot's text (setting it again replaces it).
    pub fn set(&mut self, slot: Slot, value: &str) {
        self.append(slot, |data| data.push_str(value));
    }

    /// An empty draft whose text can grow to `bytes` without reallocating.
    pub fn with_capacity(bytes: usize) -> EntryDraft {
        EntryDraft {
            data: String::with_capacity(bytes),
            ..EntryDraft::default()
        }
    }

    /// Sets a slot to whatever `write` appends to the draft's buffer. Should `write` remove text instead of
    /// appending, the draft is emptied (and [`EntryDraft::prepare`] refuses it for want of an action).
    pub fn append<R>(&mut self, slot: Slot, write: impl FnOnce(&mut String) -> R) -> R {
        let start = self.data.len();
        let mut added = std::mem::take(&mut self.data);
        let result = write(&mut added);
        if added.len() >= start && added.is_char_boundary(start) {
            self.data = added;
            self.spans[slot.index()] = Some((start, self.data.len()));
        } else {
            // `write` broke the contract: keep nothing of what it did.
            added.truncate(0);
            self.data = added;
            self.spans = [None; 6];
        }
        result
    }

    fn slot(&self, i: usize) -> Option<&str> {
        self.spans[i].map(|(a, b)| &self.data[a..b])
    }

    /// Checks the draft and packs it, taking `now` as its time unless it names one.
    ///
    /// PostgreSQL cannot store the NUL character in `text` or `jsonb`. Rather than refuse such an entry (and
    /// fail the caller's request over its audit trail), every NUL in a text field and every `\u0000` escape
    /// in the payload becomes U+FFFD, as does a lone UTF-16 surrogate escape in the payload, which `jsonb`
    /// refuses too; [`Prepared::sanitized`] says that it happened, so it can be counted.
    pub fn prepare(mut self, now: Timestamp) -> Result<Prepared, InvalidEntry> {
        if self.slot(0).is_none_or(str::is_empty) {
            return Err(InvalidEntry::new("action", "must be a non-empty string"));
        }
        if self.data.len() > u32::MAX as usize - 2 {
            return Err(InvalidEntry::new("entry", "is larger than 4 GiB"));
        }
        if self.spans[5].is_none() {
            self.append(Slot::Payload, |d| d.push_str("{}"));
        }
        let needs_fix = |i: usize, text: &str| {
            if i == 5 {
                text.contains("\\u")
            } else {
                text.contains('\0')
            }
        };
        // In storage order, back to back, and nothing to replace: the buffer is the entry's text as it is.
        let mut cursor = 0;
        let mut packed = true;
        for i in 0..6 {
            if let Some((a, b)) = self.spans[i] {
                packed &= a == cursor && !needs_fix(i, &self.data[a..b]);
                cursor = b;
            }
        }
        packed &= cursor == self.data.len();
        let mut ends = [0u32; 6];
        let mut present = 0u8;
        let mut sanitized = false;
        let data = if packed {
            let mut end = 0;
            for (i, span) in self.spans.iter().enumerate() {
                if let Some((_, b)) = span {
                    end = end_offset(&self.data[..*b])?;
                    if (1..=4).contains(&i) {
                        present |= 1 << (i - 1);
                    }
                }
                ends[i] = end;
            }
            self.data
        } else {
            let mut out = String::with_capacity(self.data.len() + 16);
            for (i, end) in ends.iter_mut().enumerate() {
                if let Some(text) = self.slot(i) {
                    sanitized |= if i == 5 {
                        push_json(&mut out, text)
                    } else {
                        push_text(&mut out, text)
                    };
                    if (1..=4).contains(&i) {
                        present |= 1 << (i - 1);
                    }
                }
                *end = end_offset(&out)?;
            }
            out
        };
        Ok(Prepared {
            entry: Entry {
                id: self.id.unwrap_or(Uuid([0; 16])),
                occurred_at: self.occurred_at.unwrap_or(now),
                data: data.into_boxed_str(),
                ends,
                present,
            },
            id_given: self.id.is_some(),
            logged_at: now,
            sanitized,
            critical: self.critical,
        })
    }
}

fn end_offset(data: &str) -> Result<u32, InvalidEntry> {
    u32::try_from(data.len()).map_err(|_| InvalidEntry::new("entry", "is larger than 4 GiB"))
}

/// Appends `s` with every NUL replaced by U+FFFD; true when something was replaced.
fn push_text(out: &mut String, s: &str) -> bool {
    if !s.contains('\0') {
        out.push_str(s);
        return false;
    }
    out.extend(s.chars().map(|c| if c == '\0' { '\u{FFFD}' } else { c }));
    true
}

/// Appends JSON text with `\u0000` and lone surrogate escapes replaced by `\ufffd`; true when something was
/// replaced. Other escapes, and valid surrogate pairs, are kept as they are.
fn push_json(out: &mut String, json: &str) -> bool {
    if !json.contains("\\u") {
        out.push_str(json);
        return false;
    }
    let b = json.as_bytes();
    let mut changed = false;
    let mut copied = 0;
    let mut i = 0;
    while i + 1 < b.len() {
        if b[i] != b'\\' {
            i += 1;
            continue;
        }
        if b[i + 1] != b'u' {
            i += 2; // a two-character escape such as \" or \\
            continue;
        }
        let unit = hex4(b, i + 2);
        let keep = match unit {
            Some(0) | None => false,
            Some(0xd800..=0xdbff) => {
                let low = (b.get(i + 6) == Some(&b'\\') && b.get(i + 7) == Some(&b'u'))
                    .then(|| hex4(b, i + 8))
                    .flatten();
                if matches!(low, Some(0xdc00..=0xdfff)) {
                    i += 12; // a valid pair
                    continue;
                }
                false
            }
            Some(0xdc00..=0xdfff) => false,
            Some(_) => true,
        };
        if keep {
            i += 6;
            continue;
        }
        let end = if unit.is_some() { i + 6 } else { i + 2 };
        out.push_str(&json[copied..i]);
        out.push_str("\\ufffd");
        changed = true;
        i = end;
        copied = end;
    }
    out.push_str(&json[copied..]);
    changed
}

fn hex4(b: &[u8], at: usize) -> Option<u32> {
    let digits = b.get(at..at + 4)?;
    let s = std::str::from_utf8(digits).ok()?;
    u32::from_str_radix(s, 16).ok()
}

/// A checked, packed entry that still needs its id (when the caller gave none).
#[derive(Debug)]
pub struct Prepared {
    entry: Entry,
    id_given: bool,
    logged_at: Timestamp,
    /// Whether a NUL or lone surrogate was replaced with U+FFFD.
    pub sanitized: bool,
    /// Whether the entry was marked critical.
    pub critical: bool,
}

impl Prepared {
    /// The action, for sampling decisions.
    pub fn action(&self) -> &str {
        self.entry.action()
    }

    /// Bytes the entry will hold in the buffer.
    pub fn size_bytes(&self) -> usize {
        self.entry.size_bytes()
    }
}

impl Prepared {
    /// The finished entry; its id is the caller's, or the next one from `ids` (stamped with the moment
    /// given to [`EntryDraft::prepare`]).
    pub fn finish(mut self, ids: &mut Uuid7Generator) -> Entry {
        if !self.id_given {
            self.entry.id = ids.next(self.logged_at.unix_millis());
        }
        self.entry
    }
}

/// One accepted audit entry, as buffered and written.
///
/// All its text lives in one allocation, so a buffered entry costs its text plus a fixed 72 bytes.
#[derive(Clone, PartialEq, Eq)]
pub struct Entry {
    id: Uuid,
    occurred_at: Timestamp,
    /// action, the optional text fields, then the payload's JSON text.
    data: Box<str>,
    /// End offsets in `data` of: action, tenantId, actor, resource, outcome, payload.
    ends: [u32; 6],
    /// Bit `i` set when optional text field `i` (see [`TextField::ALL`]) is present.
    present: u8,
}

impl Entry {
    /// The entry's id.
    pub fn id(&self) -> Uuid {
        self.id
    }

    /// When the audited event happened.
    pub fn occurred_at(&self) -> Timestamp {
        self.occurred_at
    }

    fn slice(&self, i: usize) -> &str {
        let start = if i == 0 { 0 } else { self.ends[i - 1] as usize };
        &self.data[start..self.ends[i] as usize]
    }

    /// The action, never empty.
    pub fn action(&self) -> &str {
        self.slice(0)
    }

    /// An optional text field, `None` when the caller did not give it.
    pub fn text(&self, field: TextField) -> Option<&str> {
        let i = field.index();
        (self.present & (1 << i) != 0).then(|| self.slice(i + 1))
    }

    /// The payload as JSON text that PostgreSQL's `jsonb` accepts.
    pub fn payload_json(&self) -> &str {
        self.slice(5)
    }

    /// Bytes this entry holds in memory, its fixed part included.
    pub fn size_bytes(&self) -> usize {
        std::mem::size_of::<Entry>() + self.data.len()
    }
}

impl fmt::Debug for Entry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("Entry");
        d.field("id", &self.id)
            .field("occurred_at", &self.occurred_at.to_string())
            .field("action", &self.action());
        for field in TextField::ALL {
            if let Some(v) = self.text(field) {
                d.field(field.js_name(), &v);
            }
        }
        d.field("payload", &self.payload_json()).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prepare(d: EntryDraft) -> Prepared {
        d.prepare(Timestamp::from_micros(1_000).unwrap()).unwrap()
    }

    #[test]
    fn fields_round_trip_and_absent_differs_from_empty() {
        let mut ids = Uuid7Generator::new();
        let e = prepare(
            EntryDraft::new("tool.call")
                .with(TextField::Actor, "user:42")
                .with(TextField::Outcome, ""),
        )
        .finish(&mut ids);
        assert_eq!(e.action(), "tool.call");
        assert_eq!(e.text(TextField::Actor), Some("user:42"));
        assert_eq!(e.text(TextField::Outcome), Some(""));
        assert_eq!(e.text(TextField::TenantId), None);
        assert_eq!(e.text(TextField::Resource), None);
        assert_eq!(e.payload_json(), "{}");
        assert_eq!(e.occurred_at().micros(), 1_000);
        assert_eq!(e.id().version(), 7);
    }

    #[test]
    fn an_id_given_by_the_caller_is_kept() {
        let id = Uuid::parse("00000000-0000-4000-8000-000000000001").unwrap();
        let mut d = EntryDraft::new("a");
        d.id = Some(id);
        assert_eq!(prepare(d).finish(&mut Uuid7Generator::new()).id(), id);
    }

    #[test]
    fn empty_action_is_refused_naming_the_field() {
        let err = EntryDraft::new("").prepare(Timestamp::now()).unwrap_err();
        assert_eq!(err.field, "action");
    }

    #[test]
    fn nul_in_text_becomes_replacement_character() {
        let p = prepare(EntryDraft::new("a\0b").with(TextField::Actor, "\0"));
        assert!(p.sanitized);
        let e = p.finish(&mut Uuid7Generator::new());
        assert_eq!(e.action(), "a\u{FFFD}b");
        assert_eq!(e.text(TextField::Actor), Some("\u{FFFD}"));
    }

    fn json(s: &str) -> (String, bool) {
        let mut out = String::new();
        let changed = push_json(&mut out, s);
        (out, changed)
    }

    #[test]
    fn json_nul_and_lone_surrogates_are_replaced_but_pairs_and_escaped_backslashes_kept() {
        assert_eq!(
            json(r#"{"a":"x\u0000y"}"#),
            (r#"{"a":"x\ufffdy"}"#.into(), true)
        );
        assert_eq!(
            json(r#"{"a":"\ud800"}"#),
            (r#"{"a":"\ufffd"}"#.into(), true)
        );
        assert_eq!(
            json(r#"{"a":"\udc00x"}"#),
            (r#"{"a":"\ufffdx"}"#.into(), true)
        );
        assert_eq!(
            json(r#"{"a":"\ud800\ud800\ude00"}"#),
            (r#"{"a":"\ufffd\ud800\ude00"}"#.into(), true)
        );
        assert!(!json(r#"{"a":"\ud83d\ude00"}"#).1);
        assert!(
            !json(r#"{"a":"\\u0000"}"#).1,
            "an escaped backslash, not NUL"
        );
        assert!(!json(r#"{"a":"\u001f\n"}"#).1);
        assert!(!json(r#"["é", "\"quoted\""]"#).1);
    }

    #[test]
    fn timestamps_are_range_checked() {
        assert!(Timestamp::from_millis_f64(f64::NAN).is_none());
        assert!(Timestamp::from_millis_f64(f64::INFINITY).is_none());
        assert!(Timestamp::from_millis_f64(8.64e15).is_none(), "year 275760");
        assert_eq!(Timestamp::from_millis_f64(1.5).unwrap().micros(), 1_500);
        let t = Timestamp::parse_rfc3339("2026-01-02T03:04:05.123456+01:00").unwrap();
        assert_eq!(t.to_string(), "2026-01-02T02:04:05.123456Z");
        assert!(
            Timestamp::parse_rfc3339("2026-01-02 03:04:05").is_none(),
            "no offset"
        );
        assert!(Timestamp::parse_rfc3339("yesterday").is_none());
    }

    #[test]
    fn slots_given_out_of_order_or_twice_are_packed_in_storage_order() {
        let mut d = EntryDraft::new("first");
        d.set(Slot::Payload, r#"{"a":1}"#);
        d.set(Slot::Text(TextField::Outcome), "ok");
        d.set(Slot::Action, "second");
        d.set(Slot::Text(TextField::TenantId), "t");
        let e = prepare(d).finish(&mut Uuid7Generator::new());
        assert_eq!(e.action(), "second");
        assert_eq!(e.text(TextField::TenantId), Some("t"));
        assert_eq!(e.text(TextField::Actor), None);
        assert_eq!(e.text(TextField::Outcome), Some("ok"));
        assert_eq!(e.payload_json(), r#"{"a":1}"#);
        assert_eq!(e.size_bytes(), 72 + "secondtok{\"a\":1}".len());
    }

    #[test]
    fn slots_in_storage_order_are_kept_as_they_are() {
        let d = EntryDraft::new("a")
            .with(TextField::TenantId, "t")
            .with(TextField::Outcome, "o")
            .with_payload_json("[1]");
        let p = prepare(d);
        assert!(!p.sanitized);
        let e = p.finish(&mut Uuid7Generator::new());
        assert_eq!(
            (
                e.action(),
                e.text(TextField::TenantId),
                e.text(TextField::Outcome)
            ),
            ("a", Some("t"), Some("o"))
        );
        assert_eq!(e.payload_json(), "[1]");
    }

    #[test]
    fn a_payload_with_nul_is_sanitized_through_the_draft() {
        let p = prepare(EntryDraft::new("a").with_payload_json(r#"{"s":"\u0000"}"#));
        assert!(p.sanitized);
        assert_eq!(
            p.finish(&mut Uuid7Generator::new()).payload_json(),
            r#"{"s":"\ufffd"}"#
        );
    }

    #[test]
    fn size_is_text_plus_a_fixed_part() {
        let e = prepare(EntryDraft::new("abc")).finish(&mut Uuid7Generator::new());
        assert_eq!(std::mem::size_of::<Entry>(), 72);
        assert_eq!(e.size_bytes(), 72 + 5);
    }
}

/// Properties of checking and packing, over arbitrary input (proptest).
#[cfg(test)]
mod properties {
    use proptest::prelude::*;
    use serde_json::Value;

    use super::*;

    fn json_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            any::<String>().prop_map(Value::String),
        ];
        leaf.prop_recursive(4, 64, 8, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..8).prop_map(Value::Array),
                prop::collection::btree_map(any::<String>(), inner, 0..8)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    /// `v` with every NUL in every string (keys included) replaced by U+FFFD.
    fn without_nul(v: &Value) -> Value {
        let fix = |s: &str| s.replace('\0', "\u{FFFD}");
        match v {
            Value::String(s) => Value::String(fix(s)),
            Value::Array(a) => Value::Array(a.iter().map(without_nul).collect()),
            Value::Object(o) => {
                Value::Object(o.iter().map(|(k, v)| (fix(k), without_nul(v))).collect())
            }
            other => other.clone(),
        }
    }

    /// Pieces of JSON string content, some of which PostgreSQL's jsonb refuses.
    fn string_piece() -> impl Strategy<Value = &'static str> {
        prop::sample::select(vec![
            "a",
            "é",
            "日",
            "😀",
            "\\\"",
            "\\\\",
            "\\n",
            "\\u0000",
            "\\ud800",
            "\\udbff",
            "\\udc00",
            "\\udfff",
            "\\ud83d\\ude00",
            "\\u001f",
            "\\\\u0000",
            "u",
            "\\u0041",
        ])
    }

    proptest! {
        #[test]
        fn any_text_and_payload_is_packed_without_nul_and_stays_the_same_json(
            action in ".+",
            actor in proptest::option::of(any::<String>()),
            tenant in proptest::option::of(any::<String>()),
            payload in json_value(),
        ) {
            let mut draft = EntryDraft::new(&action).with_payload_json(serde_json::to_string(&payload).unwrap());
            if let Some(a) = &actor { draft = draft.with(TextField::Actor, a); }
            if let Some(t) = &tenant { draft = draft.with(TextField::TenantId, t); }
            let p = draft.prepare(Timestamp::now()).unwrap();
            let e = p.finish(&mut Uuid7Generator::new());
            prop_assert_eq!(e.action(), action.replace('\0', "\u{FFFD}"));
            let actor = actor.map(|a| a.replace('\0', "\u{FFFD}"));
            let tenant = tenant.map(|t| t.replace('\0', "\u{FFFD}"));
            prop_assert_eq!(e.text(TextField::Actor), actor.as_deref());
            prop_assert_eq!(e.text(TextField::TenantId), tenant.as_deref());
            prop_assert!(!e.payload_json().contains("\\u0000"));
            let stored: Value = serde_json::from_str(e.payload_json()).unwrap();
            prop_assert_eq!(stored, without_nul(&payload));
        }

        #[test]
        fn any_string_escapes_become_json_that_a_strict_parser_accepts(pieces in prop::collection::vec(string_piece(), 0..24)) {
            let json = format!("[\"{}\"]", pieces.concat());
            let p = EntryDraft::new("a").with_payload_json(&json).prepare(Timestamp::now()).unwrap();
            let e = p.finish(&mut Uuid7Generator::new());
            // serde_json, like jsonb, refuses lone surrogates; NUL escapes must be gone too.
            let parsed: Result<Value, _> = serde_json::from_str(e.payload_json());
            prop_assert!(parsed.is_ok(), "{} -> {}", json, e.payload_json());
            prop_assert!(!parsed.unwrap().to_string().contains('\0'));
        }

        #[test]
        fn uuids_round_trip_through_text(bytes in any::<[u8; 16]>()) {
            let u = Uuid(bytes);
            prop_assert_eq!(Uuid::parse(&u.to_string()), Some(u));
        }

        #[test]
        fn epoch_millis_are_accepted_exactly_in_range(ms in any::<f64>()) {
            match Timestamp::from_millis_f64(ms) {
                Some(t) => prop_assert!(ms.is_finite() && t >= Timestamp::MIN && t <= Timestamp::MAX),
                None => prop_assert!(!ms.is_finite() || (ms * 1000.0).round() < Timestamp::MIN.micros() as f64
                    || (ms * 1000.0).round() > Timestamp::MAX.micros() as f64),
            }
        }
    }
}
