//! Reading an entry given to `log()` or `write()` into an [`EntryDraft`]: the hot path, with errors that
//! name the field at fault. (Options are read by `options.rs`.)

use std::ffi::CStr;
use std::ptr;

use napi::bindgen_prelude::{Function, JsObjectValue, JsValue, Object, Unknown};
use napi::{check_status, sys, Env, JsDate, ValueType};

use super::errors::{describe_exception, take_exception};
use crate::entry::{EntryDraft, InvalidEntry, Slot, TextField, Timestamp};
use crate::uuid7::Uuid;

/// Why an entry could not be read: what was wrong, and the exception that said so when reading it threw
/// (a getter, a Proxy trap, a `toJSON`), to become the typed error's `cause`.
pub struct EntryError {
    pub invalid: InvalidEntry,
    pub cause: Option<sys::napi_value>,
}

impl From<InvalidEntry> for EntryError {
    fn from(invalid: InvalidEntry) -> Self {
        EntryError {
            invalid,
            cause: None,
        }
    }
}

impl EntryError {
    /// Reading `field` threw, or napi failed: the pending exception, if any, becomes the cause.
    pub fn threw(env: &Env, field: impl Into<std::borrow::Cow<'static, str>>) -> EntryError {
        let field = field.into();
        let cause = take_exception(env);
        let shown = cause.map_or_else(
            || "the engine refused".to_owned(),
            |c| describe_exception(env, c),
        );
        let reason = if field == "payload" {
            format!("is not JSON-serialisable: {shown}")
        } else {
            format!("could not be read: {shown}")
        };
        EntryError {
            invalid: InvalidEntry::new(field, reason),
            cause,
        }
    }
}

/// A value's type in words, for error messages: `a string`, `an array`, `null`...
pub fn type_name(v: &Unknown) -> napi::Result<&'static str> {
    Ok(match v.get_type()? {
        ValueType::Undefined => "undefined",
        ValueType::Null => "null",
        ValueType::Boolean => "a boolean",
        ValueType::Number => "a number",
        ValueType::String => "a string",
        ValueType::Symbol => "a symbol",
        ValueType::Object if v.is_array()? => "an array",
        ValueType::Object => "an object",
        ValueType::Function => "a function",
        ValueType::External => "an external",
        ValueType::BigInt => "a bigint",
        _ => "an unknown value",
    })
}

/// Reads a property with a static name (no allocation for the key).
fn get<'a>(obj: &Object<'a>, key: &CStr) -> napi::Result<Unknown<'a>> {
    let env = obj.value().env;
    let mut out = ptr::null_mut();
    // SAFETY: `obj` is a live object of `env`, `key` is NUL-terminated.
    check_status!(unsafe { sys::napi_get_named_property(env, obj.raw(), key.as_ptr(), &mut out) })?;
    // SAFETY: napi returned a value of `env`.
    Ok(unsafe { Unknown::from_raw_unchecked(env, out) })
}

/// The fields of one entry as JavaScript values, in the order they are stored. `payload_json` is the
/// payload already `JSON.stringify`'d (a string), or the payload itself when it has no JSON form.
pub struct EntryFields<'a> {
    pub action: Unknown<'a>,
    /// tenantId, actor, resource, outcome: [`TextField::ALL`]'s order.
    pub text: [Unknown<'a>; 4],
    pub payload_json: Option<Unknown<'a>>,
    pub id: Unknown<'a>,
    pub occurred_at: Unknown<'a>,
    pub critical: Unknown<'a>,
}

/// Copies strings into a draft while keeping the entry under its size bound: a string that would take the
/// entry past it is refused from its length alone, before anything is copied.
struct Reader<'d> {
    draft: &'d mut EntryDraft,
    /// Bytes of text the entry may still take.
    room: usize,
    max_entry_bytes: usize,
}

impl Reader<'_> {
    /// Sets `slot` to the JavaScript string `value`, as UTF-8, with one copy (lone surrogates become
    /// U+FFFD).
    fn append(&mut self, slot: Slot, value: &Unknown) -> Result<(), EntryError> {
        // Should napi fail here, it fails again below, where that is reported.
        self.append_units(slot, value, utf16_units(value))
    }

    /// [`Reader::append`] of a string whose length in UTF-16 units the caller already asked for.
    fn append_units(
        &mut self,
        slot: Slot,
        value: &Unknown,
        units: usize,
    ) -> Result<(), EntryError> {
        let (env, raw) = (value.value().env, value.raw());
        // Every UTF-16 unit takes at least one byte of UTF-8.
        if units > self.room {
            let at_least = self.max_entry_bytes - self.room + units;
            return Err(InvalidEntry::at_least_too_large(at_least, self.max_entry_bytes).into());
        }
        // UTF-8 needs at most 3 bytes per UTF-16 unit; napi writes a terminating NUL after the text.
        let capacity = units * 3 + 1;
        let written = self.draft.append(slot, |data| {
            // SAFETY: V8 writes only valid UTF-8 (REPLACE_INVALID_UTF8) into the reserved spare capacity,
            // and `written` (which excludes the NUL) is how much of it to keep.
            unsafe {
                let bytes = data.as_mut_vec();
                bytes.reserve(capacity);
                let start = bytes.len();
                let mut written = 0usize;
                let status = sys::napi_get_value_string_utf8(
                    env,
                    raw,
                    bytes.as_mut_ptr().add(start).cast(),
                    capacity,
                    &mut written,
                );
                if status != sys::Status::napi_ok {
                    return None;
                }
                bytes.set_len(start + written);
                Some(written)
            }
        });
        let written = written.ok_or_else(|| EntryError::threw(&Env::from_raw(env), "entry"))?;
        self.room = self.room.saturating_sub(written);
        Ok(())
    }
}

/// The length of `value` in UTF-16 units when it is a string (which V8 knows without scanning), else 0.
fn utf16_units(value: &Unknown) -> usize {
    let mut units = 0usize;
    // SAFETY: `value` is a live value of its env; a null buffer asks for the length only. For a value
    // that is not a string napi returns a status (no exception) and `units` stays 0.
    let _ = unsafe {
        sys::napi_get_value_string_utf16(
            value.value().env,
            value.raw(),
            ptr::null_mut(),
            0,
            &mut units,
        )
    };
    units
}

/// The UUID a JavaScript string spells in canonical form, read without allocating; `None` for any other
/// text (or should napi fail).
fn uuid_from_js(value: &Unknown) -> Option<Uuid> {
    // Room for 37 bytes and a NUL: 37 written means longer than any canonical UUID.
    let mut bytes = [0u8; 38];
    let mut len = 0usize;
    // SAFETY: `value` is a string of its env (checked by the caller); napi writes at most
    // `bytes.len() - 1` bytes and a NUL into `bytes`.
    let status = unsafe {
        sys::napi_get_value_string_utf8(
            value.value().env,
            value.raw(),
            bytes.as_mut_ptr().cast(),
            bytes.len(),
            &mut len,
        )
    };
    (status == sys::Status::napi_ok)
        .then(|| bytes.get(..len))
        .flatten()
        .and_then(Uuid::parse_bytes)
}

/// Reads the entry object given to `log()` or `write()`; `max_entry_bytes` bounds its size before copying.
pub fn entry_from_js(
    env: &Env,
    value: &Unknown,
    max_entry_bytes: usize,
) -> Result<EntryDraft, EntryError> {
    let threw = |field| EntryError::threw(env, field);
    let is_object = value.get_type().map_err(|_| threw("entry"))? == ValueType::Object
        && !value.is_array().map_err(|_| threw("entry"))?
        && !value.is_date().map_err(|_| threw("entry"))?;
    if !is_object {
        let got = type_name(value).map_err(|_| threw("entry"))?;
        return Err(InvalidEntry::new("entry", format!("must be an object, got {got}")).into());
    }
    // SAFETY: the value was just checked to be an object.
    let obj = unsafe { value.cast::<Object>() }.map_err(|_| threw("entry"))?;
    let read = |key: &CStr, field| get(&obj, key).map_err(|_| threw(field));
    let action = read(c"action", "action")?;
    let text = [
        read(c"tenantId", "tenantId")?,
        read(c"actor", "actor")?,
        read(c"resource", "resource")?,
        read(c"outcome", "outcome")?,
    ];
    let payload = read(c"payload", "payload")?;
    let payload_json = match payload.get_type().map_err(|_| threw("payload"))? {
        ValueType::Undefined => None,
        _ => Some(stringify_payload(env, payload)?),
    };
    entry_from_fields(
        &EntryFields {
            action,
            text,
            payload_json,
            id: read(c"id", "id")?,
            occurred_at: read(c"occurredAt", "occurredAt")?,
            critical: read(c"critical", "critical")?,
        },
        max_entry_bytes,
    )
}

/// Checks the fields and reads them straight into a draft's buffer, in storage order. `null` and
/// `undefined` mean absent for every optional field.
pub fn entry_from_fields(
    f: &EntryFields,
    max_entry_bytes: usize,
) -> Result<EntryDraft, EntryError> {
    let env = Env::from_raw(f.action.value().env);
    let kind = |field, v: &Unknown| v.get_type().map_err(|_| EntryError::threw(&env, field));
    let name = |field, v: &Unknown| type_name(v).map_err(|_| EntryError::threw(&env, field));
    let invalid = |field, reason: String| EntryError::from(InvalidEntry::new(field, reason));
    // One allocation for the entry's text (shrunk to fit once prepared): room for the payload's longest
    // UTF-8 form plus the short fields, rather than a reallocation per field.
    let payload_units = f.payload_json.as_ref().map_or(0, utf16_units);
    let mut draft = EntryDraft::with_capacity(
        payload_units
            .saturating_mul(3)
            .min(max_entry_bytes)
            .saturating_add(256),
    );
    let mut reader = Reader {
        draft: &mut draft,
        room: max_entry_bytes.saturating_sub(EntryDraft::FIXED_BYTES),
        max_entry_bytes,
    };
    match kind("action", &f.action)? {
        ValueType::String => reader.append(Slot::Action, &f.action)?,
        ValueType::Undefined | ValueType::Null => {
            return Err(invalid("action", "is required (a non-empty string)".into()))
        }
        _ => {
            return Err(invalid(
                "action",
                format!(
                    "must be a non-empty string, got {}",
                    name("action", &f.action)?
                ),
            ))
        }
    }
    for (field, v) in TextField::ALL.into_iter().zip(&f.text) {
        match kind(field.js_name(), v)? {
            ValueType::String => reader.append(Slot::Text(field), v)?,
            ValueType::Undefined | ValueType::Null => {}
            _ => {
                return Err(invalid(
                    field.js_name(),
                    format!("must be a string, got {}", name(field.js_name(), v)?),
                ))
            }
        }
    }
    if let Some(json) = &f.payload_json {
        if kind("payload", json)? != ValueType::String {
            return Err(invalid(
                "payload",
                format!(
                    "is not JSON-serialisable: {} has no JSON form",
                    name("payload", json)?
                ),
            ));
        }
        reader.append_units(Slot::Payload, json, payload_units)?;
    }
    match kind("id", &f.id)? {
        ValueType::Undefined | ValueType::Null => {}
        ValueType::String => match uuid_from_js(&f.id) {
            Some(uuid) => draft.id = Some(uuid),
            None => {
                // SAFETY: the value was just checked to be a string.
                let s =
                    unsafe { f.id.cast::<String>() }.map_err(|_| EntryError::threw(&env, "id"))?;
                return Err(invalid(
                    "id",
                    format!("must be a UUID in canonical 8-4-4-4-12 hex form, got {s:?}"),
                ));
            }
        },
        _ => {
            return Err(invalid(
                "id",
                format!("must be a UUID string, got {}", name("id", &f.id)?),
            ))
        }
    }
    match kind("critical", &f.critical)? {
        ValueType::Undefined | ValueType::Null => {}
        // SAFETY: the value was just checked to be a boolean.
        ValueType::Boolean => {
            draft.critical = unsafe { f.critical.cast::<bool>() }
                .map_err(|_| EntryError::threw(&env, "critical"))?
        }
        _ => {
            return Err(invalid(
                "critical",
                format!("must be a boolean, got {}", name("critical", &f.critical)?),
            ))
        }
    }
    match kind("occurredAt", &f.occurred_at)? {
        ValueType::Undefined | ValueType::Null => {}
        _ => draft.occurred_at = Some(occurred_at_from_js(&env, &f.occurred_at)?),
    }
    Ok(draft)
}

fn occurred_at_from_js(env: &Env, at: &Unknown) -> Result<Timestamp, EntryError> {
    const RANGE: &str = "between the years 1 and 9999";
    let threw = |_| EntryError::threw(env, "occurredAt");
    let invalid = |reason: String| EntryError::from(InvalidEntry::new("occurredAt", reason));
    match at.get_type().map_err(threw)? {
        ValueType::Object if at.is_date().map_err(threw)? => {
            // SAFETY: the value was just checked to be a Date.
            let ms = unsafe { at.cast::<JsDate>() }
                .and_then(|d| d.value_of())
                .map_err(threw)?;
            Timestamp::from_millis_f64(ms).ok_or_else(|| {
                invalid(format!(
                    "must be a valid Date {RANGE}, got an invalid or out-of-range Date"
                ))
            })
        }
        ValueType::Number => {
            // SAFETY: the value was just checked to be a number.
            let ms = unsafe { at.cast::<f64>() }.map_err(threw)?;
            Timestamp::from_millis_f64(ms).ok_or_else(|| {
                invalid(format!(
                    "must be finite epoch milliseconds {RANGE}, got {ms}"
                ))
            })
        }
        ValueType::String => {
            // SAFETY: the value was just checked to be a string.
            let s = unsafe { at.cast::<String>() }.map_err(threw)?;
            Timestamp::parse_rfc3339(&s).ok_or_else(|| {
                invalid(format!(
                    "must be an ISO 8601 date-time with an offset (e.g. 2026-01-02T03:04:05.678Z) {RANGE}, got {s:?}"
                ))
            })
        }
        _ => Err(invalid(format!(
            "must be a Date, an ISO 8601 string or epoch milliseconds, got {}",
            type_name(at).map_err(threw)?
        ))),
    }
}

/// `JSON.stringify(payload)`, called once: a JavaScript string, or the payload itself when it has no JSON
/// form (a function, a symbol), which [`entry_from_fields`] refuses. What `toJSON` or a getter throws
/// becomes the error's cause.
fn stringify_payload<'a>(env: &'a Env, payload: Unknown<'a>) -> Result<Unknown<'a>, EntryError> {
    let threw = |_| EntryError::threw(env, "payload");
    let json: Object = env
        .get_global()
        .and_then(|g| g.get_c_named_property_unchecked(c"JSON"))
        .map_err(threw)?;
    let stringify: Function<Unknown, Unknown> = json
        .get_c_named_property_unchecked(c"stringify")
        .map_err(threw)?;
    let out = stringify.call(payload).map_err(threw)?;
    if out.get_type().map_err(threw)? != ValueType::String {
        return Ok(payload);
    }
    Ok(out)
}
