//! Reading JavaScript values into the core's types, with errors that name the option or field at fault.

use std::ffi::CStr;
use std::ptr;
use std::time::Duration;

use napi::bindgen_prelude::{Function, JsObjectValue, JsValue, Object, Unknown};
use napi::{check_status, sys, Env, JsDate, ValueType};

use crate::batcher::{BackgroundConfig, BatcherConfig, OverflowPolicy, Sampling};
use crate::entry::{EntryDraft, InvalidEntry, Slot, TextField, Timestamp};
use crate::pg::columns::ColumnMap;
use crate::pg::ident::TableName;
use crate::pg::PgSettings;
use crate::uuid7::Uuid;

/// A conversion that failed: the value was wrong, or JavaScript threw while it was read (a throwing getter).
pub enum ConvertError<E> {
    Invalid(E),
    Js(napi::Error),
}

impl<E> From<napi::Error> for ConvertError<E> {
    fn from(e: napi::Error) -> Self {
        ConvertError::Js(e)
    }
}

/// An option that was refused, and why.
pub struct InvalidOption {
    pub option: String,
    pub reason: String,
}

impl InvalidOption {
    fn new(option: impl Into<String>, reason: impl Into<String>) -> ConvertError<InvalidOption> {
        ConvertError::Invalid(InvalidOption {
            option: option.into(),
            reason: reason.into(),
        })
    }
}

fn type_name(v: &Unknown) -> napi::Result<&'static str> {
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

/// Absent means `undefined` or `null`.
fn is_absent(v: &Unknown) -> napi::Result<bool> {
    Ok(matches!(
        v.get_type()?,
        ValueType::Undefined | ValueType::Null
    ))
}

fn as_plain_object<'a>(v: &Unknown<'a>) -> napi::Result<Option<Object<'a>>> {
    if v.get_type()? == ValueType::Object && !v.is_array()? && !v.is_date()? {
        // SAFETY: the value was just checked to be an object.
        Ok(Some(unsafe { v.cast::<Object>()? }))
    } else {
        Ok(None)
    }
}

fn string_or_absent(v: &Unknown) -> napi::Result<Option<Result<String, &'static str>>> {
    if is_absent(v)? {
        return Ok(None);
    }
    if v.get_type()? == ValueType::String {
        // SAFETY: the value was just checked to be a string.
        return Ok(Some(Ok(unsafe { v.cast::<String>()? })));
    }
    Ok(Some(Err(type_name(v)?)))
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

/// Appends a JavaScript string to `out` as UTF-8 with one copy (lone surrogates become U+FFFD).
fn append_string(value: &Unknown, out: &mut String) -> napi::Result<()> {
    let (env, raw) = (value.value().env, value.raw());
    let mut units = 0usize;
    // SAFETY: `raw` is a string of `env` (checked by the caller); a null buffer asks for the length only,
    // which V8 knows without scanning.
    check_status!(unsafe {
        sys::napi_get_value_string_utf16(env, raw, ptr::null_mut(), 0, &mut units)
    })?;
    // UTF-8 needs at most 3 bytes per UTF-16 unit; napi writes a terminating NUL after the text.
    let capacity = units * 3 + 1;
    // SAFETY: V8 writes only valid UTF-8 (REPLACE_INVALID_UTF8) into the reserved spare capacity, and
    // `written` (which excludes the NUL) is how much of it to keep.
    unsafe {
        let bytes = out.as_mut_vec();
        bytes.reserve(capacity);
        let start = bytes.len();
        let mut written = 0usize;
        check_status!(sys::napi_get_value_string_utf8(
            env,
            raw,
            bytes.as_mut_ptr().add(start).cast(),
            capacity,
            &mut written,
        ))?;
        bytes.set_len(start + written);
    }
    Ok(())
}

/// An entry's fields as JavaScript values, in storage order; `payload_json` is already `JSON.stringify`'d.
pub struct EntryFields<'a> {
    pub action: Unknown<'a>,
    /// tenantId, actor, resource, outcome.
    pub text: [Unknown<'a>; 4],
    /// A JavaScript string, or absent.
    pub payload_json: Option<Unknown<'a>>,
    pub id: Unknown<'a>,
    pub occurred_at: Unknown<'a>,
    pub critical: Unknown<'a>,
}

/// Reads the entry object given to `log()` or `write()`.
pub fn entry_from_js(env: &Env, value: &Unknown) -> Result<EntryDraft, ConvertError<InvalidEntry>> {
    let Some(obj) = as_plain_object(value)? else {
        return Err(ConvertError::Invalid(InvalidEntry::new(
            "entry",
            format!("must be an object, got {}", type_name(value)?),
        )));
    };
    let payload = get(&obj, c"payload")?;
    let payload_json = match payload.get_type()? {
        ValueType::Undefined => None,
        _ => Some(stringify_payload(env, payload)?),
    };
    entry_from_fields(&EntryFields {
        action: get(&obj, c"action")?,
        text: [
            get(&obj, c"tenantId")?,
            get(&obj, c"actor")?,
            get(&obj, c"resource")?,
            get(&obj, c"outcome")?,
        ],
        payload_json,
        id: get(&obj, c"id")?,
        occurred_at: get(&obj, c"occurredAt")?,
        critical: get(&obj, c"critical")?,
    })
}

/// Checks the fields and reads them straight into a draft's buffer, in storage order. `null` and
/// `undefined` mean absent for every optional field.
pub fn entry_from_fields(f: &EntryFields) -> Result<EntryDraft, ConvertError<InvalidEntry>> {
    let invalid = |field, reason: String| ConvertError::Invalid(InvalidEntry::new(field, reason));
    let mut draft = EntryDraft::default();
    match f.action.get_type()? {
        ValueType::String => draft.append(Slot::Action, |d| append_string(&f.action, d))?,
        ValueType::Undefined | ValueType::Null => {
            return Err(invalid("action", "is required (a non-empty string)".into()))
        }
        _ => {
            return Err(invalid(
                "action",
                format!("must be a non-empty string, got {}", type_name(&f.action)?),
            ))
        }
    }
    for (field, v) in TextField::ALL.into_iter().zip(&f.text) {
        match v.get_type()? {
            ValueType::String => draft.append(Slot::Text(field), |d| append_string(v, d))?,
            ValueType::Undefined | ValueType::Null => {}
            _ => {
                return Err(invalid(
                    field.js_name(),
                    format!("must be a string, got {}", type_name(v)?),
                ))
            }
        }
    }
    if let Some(json) = &f.payload_json {
        if json.get_type()? != ValueType::String {
            return Err(invalid("payload", "must be given as JSON text here".into()));
        }
        draft.append(Slot::Payload, |d| append_string(json, d))?;
    }
    match string_or_absent(&f.id)? {
        Some(Ok(s)) => match Uuid::parse(&s) {
            Some(uuid) => draft.id = Some(uuid),
            None => {
                return Err(invalid(
                    "id",
                    format!("must be a UUID in canonical 8-4-4-4-12 hex form, got {s:?}"),
                ))
            }
        },
        Some(Err(got)) => return Err(invalid("id", format!("must be a UUID string, got {got}"))),
        None => {}
    }
    match f.critical.get_type()? {
        ValueType::Undefined | ValueType::Null => {}
        // SAFETY: the value was just checked to be a boolean.
        ValueType::Boolean => draft.critical = unsafe { f.critical.cast::<bool>()? },
        _ => {
            return Err(invalid(
                "critical",
                format!("must be a boolean, got {}", type_name(&f.critical)?),
            ))
        }
    }
    if !is_absent(&f.occurred_at)? {
        draft.occurred_at = Some(occurred_at_from_js(&f.occurred_at)?);
    }
    Ok(draft)
}

fn occurred_at_from_js(at: &Unknown) -> Result<Timestamp, ConvertError<InvalidEntry>> {
    const RANGE: &str = "between the years 1 and 9999";
    let invalid = |reason: String| ConvertError::Invalid(InvalidEntry::new("occurredAt", reason));
    let parsed = match at.get_type()? {
        ValueType::Object if at.is_date()? => {
            // SAFETY: the value was just checked to be a Date.
            let ms = unsafe { at.cast::<JsDate>()? }.value_of()?;
            Timestamp::from_millis_f64(ms).ok_or_else(|| {
                invalid(format!(
                    "must be a valid Date {RANGE}, got an invalid or out-of-range Date"
                ))
            })
        }
        ValueType::Number => {
            // SAFETY: the value was just checked to be a number.
            let ms = unsafe { at.cast::<f64>()? };
            Timestamp::from_millis_f64(ms).ok_or_else(|| {
                invalid(format!(
                    "must be finite epoch milliseconds {RANGE}, got {ms}"
                ))
            })
        }
        ValueType::String => {
            // SAFETY: the value was just checked to be a string.
            let s = unsafe { at.cast::<String>()? };
            Timestamp::parse_rfc3339(&s).ok_or_else(|| {
                invalid(format!(
                    "must be an ISO 8601 date-time with an offset (e.g. 2026-01-02T03:04:05.678Z) {RANGE}, got {s:?}"
                ))
            })
        }
        _ => Err(invalid(format!(
            "must be a Date, an ISO 8601 string or epoch milliseconds, got {}",
            type_name(at)?
        ))),
    };
    parsed
}

/// `JSON.stringify(payload)` (a JavaScript string), refusing what has no JSON form.
fn stringify_payload<'a>(
    env: &'a Env,
    payload: Unknown,
) -> Result<Unknown<'a>, ConvertError<InvalidEntry>> {
    let invalid = |reason: String| ConvertError::Invalid(InvalidEntry::new("payload", reason));
    let kind = type_name(&payload)?;
    let json: Object = env.get_global()?.get_c_named_property_unchecked(c"JSON")?;
    let stringify: Function<Unknown, Unknown> =
        json.get_c_named_property_unchecked(c"stringify")?;
    let out = stringify
        .call(payload)
        .map_err(|e| invalid(format!("is not JSON-serialisable: {}", e.reason)))?;
    if out.get_type()? != ValueType::String {
        return Err(invalid(format!(
            "is not JSON-serialisable: {kind} has no JSON form"
        )));
    }
    Ok(out)
}

/// Which sink the batcher writes to.
pub enum SinkChoice {
    Postgres(Box<PgSettings>),
    Memory,
}

/// Everything the constructor accepts, checked.
pub struct Options {
    pub sink: SinkChoice,
    pub batcher: BatcherConfig,
    /// Set when `flushIntervalMs` or `flushAtEntries` asks for a background writer.
    pub background: Option<BackgroundConfig>,
    /// Flush and close on `beforeExit` and SIGTERM.
    pub flush_on_exit: bool,
    /// How long `close()` may take when its call does not say.
    pub close_timeout: Duration,
    /// Buffered entries at which `onHighWater` is called.
    pub high_water_mark: Option<usize>,
}

const OPTION_NAMES: [&str; 25] = [
    "onFlush",
    "onError",
    "onDeadLetter",
    "onHighWater",
    "highWaterMark",
    "maxEntryBytes",
    "deadLetterTable",
    "connectionString",
    "sslRootCert",
    "table",
    "columns",
    "poolSize",
    "maxBatchRows",
    "connectTimeoutMs",
    "preparedStatements",
    "sink",
    "flushIntervalMs",
    "flushAtEntries",
    "sampleRate",
    "sampleRates",
    "maxBufferedEntries",
    "maxBufferedBytes",
    "onBufferFull",
    "flushOnExit",
    "closeTimeoutMs",
];

/// A whole-number option within `[min, max]`; `None` when not given.
fn optional_integer(
    obj: &Object,
    name: &'static str,
    min: u64,
    max: u64,
) -> Result<Option<u64>, ConvertError<InvalidOption>> {
    let v: Unknown = obj.get_named_property(name)?;
    if v.get_type()? == ValueType::Undefined {
        return Ok(None);
    }
    let range = format!("an integer from {min} to {max}");
    if v.get_type()? != ValueType::Number {
        return Err(InvalidOption::new(
            name,
            format!("must be {range}, got {}", type_name(&v)?),
        ));
    }
    // SAFETY: the value was just checked to be a number.
    let n = unsafe { v.cast::<f64>()? };
    if n.fract() != 0.0 || n < min as f64 || n > max as f64 {
        return Err(InvalidOption::new(
            name,
            format!("must be {range}, got {n}"),
        ));
    }
    Ok(Some(n as u64))
}

fn integer_option(
    obj: &Object,
    name: &'static str,
    min: u64,
    max: u64,
    default: u64,
) -> Result<u64, ConvertError<InvalidOption>> {
    Ok(optional_integer(obj, name, min, max)?.unwrap_or(default))
}

/// A sampling rate: a number from 0 to 1.
fn rate_from(v: &Unknown, name: &str) -> Result<f64, ConvertError<InvalidOption>> {
    if v.get_type()? == ValueType::Number {
        // SAFETY: the value was just checked to be a number.
        let r = unsafe { v.cast::<f64>()? };
        if (0.0..=1.0).contains(&r) {
            return Ok(r);
        }
        return Err(InvalidOption::new(
            name.to_owned(),
            format!("must be a number from 0 to 1, got {r}"),
        ));
    }
    Err(InvalidOption::new(
        name.to_owned(),
        format!("must be a number from 0 to 1, got {}", type_name(v)?),
    ))
}

fn sampling_option(obj: &Object) -> Result<Sampling, ConvertError<InvalidOption>> {
    let mut sampling = Sampling::default();
    let rate: Unknown = obj.get_named_property("sampleRate")?;
    if rate.get_type()? != ValueType::Undefined {
        sampling.rate = rate_from(&rate, "sampleRate")?;
    }
    let rates: Unknown = obj.get_named_property("sampleRates")?;
    if is_absent(&rates)? {
        return Ok(sampling);
    }
    let Some(map) = as_plain_object(&rates)? else {
        return Err(InvalidOption::new(
            "sampleRates",
            format!(
                "must be an object mapping actions to rates, got {}",
                type_name(&rates)?
            ),
        ));
    };
    for action in Object::keys(&map)? {
        let r: Unknown = map.get_named_property(&action)?;
        let rate = rate_from(&r, &format!("sampleRates.{action}"))?;
        sampling.per_action.insert(action, rate);
    }
    Ok(sampling)
}

fn bool_option(obj: &Object, name: &'static str) -> Result<bool, ConvertError<InvalidOption>> {
    let v: Unknown = obj.get_named_property(name)?;
    match v.get_type()? {
        ValueType::Undefined => Ok(false),
        // SAFETY: the value was just checked to be a boolean.
        ValueType::Boolean => Ok(unsafe { v.cast::<bool>()? }),
        _ => Err(InvalidOption::new(
            name,
            format!("must be a boolean, got {}", type_name(&v)?),
        )),
    }
}

fn string_option(
    obj: &Object,
    name: &'static str,
) -> Result<Option<String>, ConvertError<InvalidOption>> {
    let v: Unknown = obj.get_named_property(name)?;
    if v.get_type()? == ValueType::Undefined {
        return Ok(None);
    }
    match string_or_absent(&v)? {
        Some(Ok(s)) => Ok(Some(s)),
        _ => Err(InvalidOption::new(
            name,
            format!("must be a string, got {}", type_name(&v)?),
        )),
    }
}

/// Reads the constructor's options object.
pub fn options_from_js(value: &Unknown) -> Result<Options, ConvertError<InvalidOption>> {
    let Some(obj) = as_plain_object(value)? else {
        return Err(InvalidOption::new(
            "options",
            format!("must be an object, got {}", type_name(value)?),
        ));
    };
    let keys: Vec<String> = Object::keys(&obj)?;
    if let Some(unknown) = keys.iter().find(|k| !OPTION_NAMES.contains(&k.as_str())) {
        return Err(InvalidOption::new(
            unknown.clone(),
            format!(
                "is not an option (known options: {})",
                OPTION_NAMES.join(", ")
            ),
        ));
    }
    let defaults = BatcherConfig::default();
    let max_buffered_entries = integer_option(
        &obj,
        "maxBufferedEntries",
        1,
        1 << 32,
        defaults.max_buffered_entries as u64,
    )? as usize;
    let flush_interval = optional_integer(&obj, "flushIntervalMs", 1, 86_400_000)?;
    let flush_at_entries =
        optional_integer(&obj, "flushAtEntries", 1, 1 << 32)?.map(|n| n as usize);
    if let Some(n) = flush_at_entries {
        if n > max_buffered_entries {
            return Err(InvalidOption::new(
                "flushAtEntries",
                format!("must not exceed maxBufferedEntries ({max_buffered_entries}), got {n}"),
            ));
        }
    }
    let on_buffer_full = match string_option(&obj, "onBufferFull")?.as_deref() {
        None | Some("reject") => OverflowPolicy::Reject,
        Some("drop") => OverflowPolicy::Drop,
        Some(other) => {
            return Err(InvalidOption::new(
                "onBufferFull",
                format!("must be 'reject' or 'drop', got {other:?}"),
            ))
        }
    };
    let batcher = BatcherConfig {
        max_batch_rows: integer_option(&obj, "maxBatchRows", 1, 100_000, 1000)? as usize,
        max_buffered_entries,
        max_buffered_bytes: integer_option(
            &obj,
            "maxBufferedBytes",
            1024,
            1 << 40,
            defaults.max_buffered_bytes as u64,
        )? as usize,
        max_entry_bytes: integer_option(
            &obj,
            "maxEntryBytes",
            256,
            512 * 1024 * 1024,
            defaults.max_entry_bytes as u64,
        )? as usize,
        on_buffer_full,
        sampling: sampling_option(&obj)?,
        flush_at_entries,
        backoff: defaults.backoff,
    };
    let background =
        (flush_interval.is_some() || flush_at_entries.is_some()).then_some(BackgroundConfig {
            interval: flush_interval.map(Duration::from_millis),
            at_entries: flush_at_entries,
        });
    let flush_on_exit = bool_option(&obj, "flushOnExit")?;
    let close_timeout = Duration::from_millis(integer_option(
        &obj,
        "closeTimeoutMs",
        0,
        86_400_000,
        10_000,
    )?);
    let pool_size = integer_option(&obj, "poolSize", 1, 1000, 2)? as usize;
    let connect_timeout_ms = integer_option(&obj, "connectTimeoutMs", 1, 600_000, 10_000)?;
    let prepared_statements = bool_option(&obj, "preparedStatements")?;
    let table_text = string_option(&obj, "table")?.unwrap_or_else(|| "audit_log".to_owned());
    let table = TableName::parse(&table_text).map_err(|e| InvalidOption::new("table", e))?;
    let columns = columns_option(&obj)?;
    let dead_letter_table = match string_option(&obj, "deadLetterTable")? {
        Some(name) => {
            TableName::parse(&name).map_err(|e| InvalidOption::new("deadLetterTable", e))?
        }
        None => TableName::parse(&format!("{}_dead_letter", table.name.as_str()))
            .map(|name| TableName {
                schema: table.schema.clone(),
                name: name.name,
            })
            .map_err(|e| {
                InvalidOption::new(
                    "deadLetterTable",
                    format!("is needed: the default name (the table's name + '_dead_letter') {e}"),
                )
            })?,
    };
    let sink = string_option(&obj, "sink")?;
    let connection_string = string_option(&obj, "connectionString")?;
    let ssl_root_cert = string_option(&obj, "sslRootCert")?;
    let sink =
        match sink.as_deref() {
            Some("memory") => SinkChoice::Memory,
            None | Some("postgres") => match connection_string {
                Some(s) if !s.trim().is_empty() => SinkChoice::Postgres(Box::new(PgSettings {
                    connection_string: s,
                    table,
                    dead_letter_table,
                    columns,
                    pool_size,
                    connect_timeout: Duration::from_millis(connect_timeout_ms),
                    ssl_root_cert,
                    prepared_statements,
                })),
                _ => return Err(InvalidOption::new(
                    "connectionString",
                    "is required (a postgres:// URL or key=value string) unless sink is 'memory'",
                )),
            },
            Some(other) => {
                return Err(InvalidOption::new(
                    "sink",
                    format!("must be 'postgres' or 'memory', got {other:?}"),
                ))
            }
        };
    let high_water_mark = optional_integer(&obj, "highWaterMark", 1, 1 << 32)?.map(|n| n as usize);
    Ok(Options {
        sink,
        batcher,
        background,
        flush_on_exit,
        close_timeout,
        high_water_mark,
    })
}

/// Reads `close()`'s optional `{ timeoutMs }`; `default` when not given.
pub fn close_timeout_from_js(
    options: Option<&Unknown>,
    default: Duration,
) -> Result<Duration, ConvertError<InvalidOption>> {
    let Some(options) = options else {
        return Ok(default);
    };
    if is_absent(options)? {
        return Ok(default);
    }
    let Some(obj) = as_plain_object(options)? else {
        return Err(InvalidOption::new(
            "options",
            format!("must be an object, got {}", type_name(options)?),
        ));
    };
    Ok(optional_integer(&obj, "timeoutMs", 0, 86_400_000)?
        .map(Duration::from_millis)
        .unwrap_or(default))
}

fn columns_option(obj: &Object) -> Result<ColumnMap, ConvertError<InvalidOption>> {
    let v: Unknown = obj.get_named_property("columns")?;
    if is_absent(&v)? {
        return Ok(ColumnMap::default());
    }
    let Some(map) = as_plain_object(&v)? else {
        return Err(InvalidOption::new(
            "columns",
            format!(
                "must be an object mapping entry fields to column names, got {}",
                type_name(&v)?
            ),
        ));
    };
    let mut renames = Vec::new();
    for field in Object::keys(&map)? {
        let column: Unknown = map.get_named_property(&field)?;
        match string_or_absent(&column)? {
            Some(Ok(name)) => renames.push((field, name)),
            _ => {
                return Err(InvalidOption::new(
                    format!("columns.{field}"),
                    format!(
                        "must be a column name (a string), got {}",
                        type_name(&column)?
                    ),
                ))
            }
        }
    }
    ColumnMap::with_renames(renames.iter().map(|(f, c)| (f.as_str(), c.as_str())))
        .map_err(|(field, why)| InvalidOption::new(format!("columns.{field}"), why))
}
