//! The constructor's options, declared once: the `#[napi(object)]` struct below gives their names, their
//! TypeScript types and their documentation; napi-rs reads the object into it; one conversion
//! ([`TryFrom`] into [`Config`]) applies the ranges, the defaults of [`crate::options::limits`] and the
//! rules between options.
//!
//! Before napi-rs reads an options object, one pass over its keys refuses a key that is not an option
//! and a value of the wrong JavaScript type, naming it; so a misspelt option fails loudly, and no error
//! ever comes from napi-rs's generic conversion.

use std::collections::HashMap;
use std::sync::OnceLock;
use std::time::Duration;

use napi::bindgen_prelude::{FromNapiValue, FunctionRef, JsObjectValue, Object, TypeName, Unknown};
use napi::{Env, JsValue, ValueType};
use napi_derive::napi;

use super::convert::type_name;
use super::errors::{describe_exception, take_exception};
use crate::batcher::{BatcherConfig, OverflowPolicy, Sampling};
use crate::options::{limits, Config, InvalidOption, SpoolSettings, DEFAULT_TABLE};
use crate::pg::columns::ColumnMap;
use crate::pg::ident::TableName;
use crate::pg::PgSettings;
use crate::sink::SinkConfig;
use crate::spool::{SpoolConfig, SyncMode};

/// An options object: what its keys may be, and the JavaScript type of each.
pub trait OptionsObject {
    /// Each option's JavaScript name and the type its value must have.
    fn fields() -> &'static [(String, ValueType)];
    /// Checks the value of option `key` when it is itself an options object (unknown keys, types,
    /// required keys), naming a bad key `key.inner`.
    fn check_nested(_env: &Env, _key: &str, _value: &Unknown) -> Result<(), OptionError> {
        Ok(())
    }
}

/// Implements [`OptionsObject`] for an options struct from the list of its fields. The list cannot drift
/// from the struct: it is also a destructuring pattern without `..`, so a field added to the struct and
/// not here (or listed here and not in the struct) fails to compile. Names and JavaScript types come from
/// the struct's own fields.
macro_rules! options_object {
    ($name:ident { $($field:ident),* $(,)? } $(nested: $check:path)?) => {
        impl OptionsObject for $name {
            $(
            fn check_nested(env: &Env, key: &str, value: &Unknown) -> Result<(), OptionError> {
                $check(env, key, value)
            }
            )?
            fn fields() -> &'static [(String, ValueType)] {
                #[allow(dead_code)]
                fn every_field_is_listed(o: $name) {
                    let $name { $($field: _),* } = o;
                }
                static FIELDS: OnceLock<Vec<(String, ValueType)>> = OnceLock::new();
                FIELDS.get_or_init(|| {
                    vec![$((camel_case(stringify!($field)), value_type(|o: &$name| &o.$field))),*]
                })
            }
        }
    };
}
pub(super) use options_object;

/// The JavaScript type a field of type `T` takes.
pub(super) fn value_type<S, T: TypeName>(_field: fn(&S) -> &T) -> ValueType {
    T::value_type()
}

pub(super) fn camel_case(snake: &str) -> String {
    let mut out = String::with_capacity(snake.len());
    let mut upper = false;
    for c in snake.chars() {
        if c == '_' {
            upper = true;
        } else if upper {
            out.extend(c.to_uppercase());
            upper = false;
        } else {
            out.push(c);
        }
    }
    out
}

/// Options for `new AuditBatcher(options)`. Unknown keys are refused, so a misspelt option fails loudly.
#[napi(object, object_to_js = false)]
pub struct AuditBatcherOptions {
    /// PostgreSQL connection string: a `postgres://user:password@host:port/db` URL or a libpq
    /// `key=value` string. Required unless `sink` is `'memory'`. The password never appears in errors.
    pub connection_string: Option<String>,
    /// Path of a PEM file of CA certificates that the server's TLS certificate must chain to (as
    /// `sslrootcert=` in the connection string, which also works; if both are given they must agree).
    /// `'system'` trusts the well-known public CAs and needs `sslmode=verify-full` (its default then).
    /// The connection string's `sslmode` says what is checked: `disable` (no TLS), `prefer` (default:
    /// TLS when the server offers it), `require` (TLS or fail), `verify-ca` (TLS, a trusted chain),
    /// `verify-full` (also the host name). With this file, `prefer` and `require` check the chain too;
    /// `verify-ca`/`verify-full` without it trust the well-known public CAs. Read once, by the
    /// constructor.
    pub ssl_root_cert: Option<String>,
    /// Target table, optionally schema-qualified (`'audit.events'`). Default `'audit_log'`. Names are
    /// plain identifiers (a letter or `_`, then letters, digits, `_`, `$`), used exactly as written.
    pub table: Option<String>,
    /// Column name per entry field, for an existing table: `{ actor: 'user_id', occurredAt: 'createdAt' }`.
    /// Fields not named keep the default column (`id`, `occurred_at`, `tenant_id`, `actor`, `action`,
    /// `resource`, `outcome`, `payload`).
    #[napi(
        ts_type = "Partial<Record<'id' | 'occurredAt' | 'tenantId' | 'actor' | 'action' | 'resource' | 'outcome' | 'payload', string>>"
    )]
    pub columns: Option<HashMap<String, serde_json::Value>>,
    /// Most connections in the pool. Default 2. With 2 or more, large batches (a COPY) overlap: one commits
    /// while the next is written, or two are written at once, each in its own transaction, each committed
    /// only after the one before it.
    pub pool_size: Option<f64>,
    /// Most rows in one statement; a larger flush is written as several statements, in order, back to
    /// back. As soon as this many entries wait, they are written, without waiting for `flush()`.
    /// Default 10000, at most 100000.
    pub max_batch_rows: Option<f64>,
    /// How long opening a connection may take before the write fails, in milliseconds. Default 10000.
    pub connect_timeout_ms: Option<f64>,
    /// Prepare the `INSERT` once per connection instead of having the server parse and plan it again
    /// with every flush. Default true. Safe behind a transaction-pooling PgBouncer of any version: a
    /// connection whose prepared statement is missing on the server it reached sends the same `INSERT`
    /// unnamed at once, and from then on, with no error to the caller; statement names are unique to
    /// the process, so another client's statement is never run. `false` always sends it unnamed.
    pub prepared_statements: Option<bool>,
    /// `'postgres'` (default) or `'memory'`: keep written entries in memory, readable with
    /// `memoryEntries()`, for your own tests. Same validation, ordering and API; no database.
    #[napi(ts_type = "'postgres' | 'memory'")]
    pub sink: Option<String>,
    /// Write-behind: flush in the background this often (milliseconds) while anything is buffered.
    /// `flush()` still works and shares its statements.
    pub flush_interval_ms: Option<f64>,
    /// Write-behind: flush in the background as soon as this many entries are buffered; a burst is
    /// written in `maxBatchRows` batches back to back, with whatever arrives meanwhile, until the
    /// buffer is empty. At most `maxBufferedEntries`.
    pub flush_at_entries: Option<f64>,
    /// Share of non-critical entries kept, from 0 to 1. Default 1 (keep all). Entries sampled away are
    /// counted in `stats().sampledOut`.
    pub sample_rate: Option<f64>,
    /// Rates for particular actions, overriding `sampleRate`: `{ 'file.read': 0.1 }`.
    #[napi(ts_type = "Record<string, number>")]
    pub sample_rates: Option<HashMap<String, serde_json::Value>>,
    /// The most entries held in memory (being written included). Default 100000. Critical entries are
    /// taken beyond it. With a spool, entries past it wait in the spool instead of meeting `onBufferFull`.
    pub max_buffered_entries: Option<f64>,
    /// The most bytes of entries held in memory. Default 67108864 (64 MiB). Critical entries are taken
    /// beyond it. With a spool, entries past it wait in the spool instead of meeting `onBufferFull`.
    pub max_buffered_bytes: Option<f64>,
    /// The largest entry `log()` takes, in bytes (its text, payload JSON included, plus 72). Larger
    /// ones throw `ERR_AUDIT_INVALID_ENTRY`, before they are copied. Default 1048576 (1 MiB), at most
    /// 512 MiB.
    pub max_entry_bytes: Option<f64>,
    /// What `log()` does with a non-critical entry when the buffer is full: `'reject'` (default)
    /// throws `ERR_AUDIT_BUFFER_FULL` and takes nothing; `'drop'` discards it and counts it in
    /// `stats().dropped`.
    #[napi(ts_type = "'reject' | 'drop'")]
    pub on_buffer_full: Option<String>,
    /// Flush and close when the process is about to exit (`beforeExit`) or receives SIGTERM. Adds no
    /// handle that keeps the process alive; `close()` removes its listeners. Default false.
    pub flush_on_exit: Option<bool>,
    /// How long `close()` may take when its call does not say (milliseconds). Default 10000.
    pub close_timeout_ms: Option<f64>,
    /// Where entries the table refuses (a CHECK, a value too long, a trigger that raises, a foreign
    /// key) are kept, with the error and SQLSTATE. Default `<table>_dead_letter`, in the table's
    /// schema; `ensureSchema()` creates it.
    pub dead_letter_table: Option<String>,
    /// Called after each statement commits, with its rows and duration. Runs on the JavaScript thread,
    /// later; never keeps the process alive; what it throws is ignored.
    #[napi(ts_type = "(event: FlushEvent) => void")]
    pub on_flush: Option<FunctionRef<(), ()>>,
    /// Called when a write attempt fails, with an Error (`code: 'ERR_AUDIT_FLUSH_FAILED'`, `sqlstate`,
    /// `pending`). Runs on the JavaScript thread, later; never keeps the process alive; what it throws
    /// is ignored.
    #[napi(
        ts_type = "(error: Error & { code: string; sqlstate?: string; pending: number }) => void"
    )]
    pub on_error: Option<FunctionRef<(), ()>>,
    /// Called for each entry the table refused, after it was stored in the dead-letter table.
    #[napi(ts_type = "(event: DeadLetterEvent) => void")]
    pub on_dead_letter: Option<FunctionRef<(), ()>>,
    /// Called once each time the buffer reaches `highWaterMark` entries, and for a Redis producer with
    /// `redis.highWaterLength`, once each time the stream length it learns reaches that mark (the event
    /// then has `streamLength`).
    #[napi(ts_type = "(event: HighWaterEvent) => void")]
    pub on_high_water: Option<FunctionRef<(), ()>>,
    /// Buffered entries at which `onHighWater` is called (for a Redis producer: entries in its own
    /// buffer; see `redis.highWaterLength` for the stream's length).
    pub high_water_mark: Option<f64>,
    /// A durable local spool: each entry `log()` or `write()` accepts is in a file (in the kernel's page
    /// cache) before the call returns, so that a process crash loses none; the next batcher that opens
    /// the same `dir` writes those entries, each once, with their original ids and times, ahead of its
    /// own. See the README's "Durability" section.
    pub spool: Option<SpoolOptions>,
    /// Hand-off through Redis Streams: batches go to a stream, and `AuditWorker`s write them to
    /// PostgreSQL. Not with `sink`. With `connectionString` too (and the table options), critical entries
    /// and `write()` go straight to that table instead, committed when `write()` resolves; they are not
    /// ordered with the stream's entries (see the README's "Redis hand-off"). Not with `spool` then.
    pub redis: Option<super::worker_options::RedisOptions>,
}

/// The `spool` option. Unknown keys are refused.
#[napi(object, object_to_js = false)]
pub struct SpoolOptions {
    /// Directory of the spool, created with mode 0700 when missing. Each batcher takes a spool of its
    /// own under it (locked while the process lives), so several processes may share one `dir`; a
    /// starting batcher also writes the spools under it whose process is gone.
    pub dir: String,
    /// `'interval'` (default): fdatasync the spool every `syncIntervalMs`, so that a machine crash
    /// (power loss, kernel panic) loses at most the entries of the last interval. `'never'`: no fsync;
    /// a process crash still loses nothing, a machine crash may lose what the kernel had not written.
    #[napi(ts_type = "'interval' | 'never'")]
    pub sync: Option<String>,
    /// How often the spool is synced, in milliseconds. Default 200.
    pub sync_interval_ms: Option<f64>,
    /// Disk the spool may use, in bytes (segments are preallocated whole). Default 1073741824 (1 GiB).
    /// At the bound `onBufferFull` applies as it does to memory; critical entries are still taken.
    pub max_bytes: Option<f64>,
}

options_object!(SpoolOptions {
    dir,
    sync,
    sync_interval_ms,
    max_bytes,
});

/// Checks the `spool` option's object: its keys, their types, and that `dir` is given.
fn check_spool(env: &Env, key: &str, value: &Unknown) -> Result<(), OptionError> {
    if key != "spool" {
        return Ok(());
    }
    let nested = |mut e: OptionError| {
        if e.invalid.option != key {
            e.invalid.option = format!("{key}.{}", e.invalid.option);
        }
        e
    };
    if value.get_type().map_err(|_| OptionError::threw(env, key))? == ValueType::Object
        && !value.is_array().map_err(|_| OptionError::threw(env, key))?
    {
        // SAFETY: the value was just checked to be an object.
        let obj = unsafe { value.cast::<Object>() }.map_err(|_| OptionError::threw(env, key))?;
        let dir: Unknown = obj
            .get_named_property("dir")
            .map_err(|_| OptionError::threw(env, "spool.dir"))?;
        if matches!(
            dir.get_type()
                .map_err(|_| OptionError::threw(env, "spool.dir"))?,
            ValueType::Undefined | ValueType::Null
        ) {
            return Err(InvalidOption::new(
                "spool.dir",
                "is required when `spool` is given (a directory path)",
            )
            .into());
        }
    }
    read::<SpoolOptions>(env, value, key)
        .map(|_| ())
        .map_err(nested)
}

/// Options for `close()`.
#[napi(object, object_to_js = false)]
pub struct CloseOptions {
    /// How long the final flush may take, retries included, in milliseconds. Default: the
    /// `closeTimeoutMs` option (10000). When it passes, every pending `flush()` and `write()` settles
    /// too.
    pub timeout_ms: Option<f64>,
}

options_object!(AuditBatcherOptions {
    connection_string,
    ssl_root_cert,
    table,
    columns,
    pool_size,
    max_batch_rows,
    connect_timeout_ms,
    prepared_statements,
    sink,
    flush_interval_ms,
    flush_at_entries,
    sample_rate,
    sample_rates,
    max_buffered_entries,
    max_buffered_bytes,
    max_entry_bytes,
    on_buffer_full,
    flush_on_exit,
    close_timeout_ms,
    dead_letter_table,
    on_flush,
    on_error,
    on_dead_letter,
    on_high_water,
    high_water_mark,
    spool,
    redis,
} nested: check_spool);

options_object!(CloseOptions { timeout_ms });

/// Why an options object could not be read: the option at fault and why, and the exception that said so
/// when reading it threw (a getter or a Proxy trap), to become the typed error's `cause`.
pub struct OptionError {
    pub invalid: InvalidOption,
    pub cause: Option<napi::sys::napi_value>,
}

impl From<InvalidOption> for OptionError {
    fn from(invalid: InvalidOption) -> Self {
        OptionError {
            invalid,
            cause: None,
        }
    }
}

impl OptionError {
    /// Reading `option` threw, or napi failed: the pending exception, if any, becomes the cause.
    fn threw(env: &Env, option: &str) -> OptionError {
        let cause = take_exception(env);
        let shown = cause.map_or_else(
            || "the engine refused".to_owned(),
            |c| describe_exception(env, c),
        );
        OptionError {
            invalid: InvalidOption::new(option, format!("could not be read: {shown}")),
            cause,
        }
    }
}

/// Reads an options object of type `T`: a plain object whose keys are all options of `T`, each of the
/// right JavaScript type (`undefined` means not given), then converted by napi-rs.
pub fn read<'env, T>(env: &Env, value: &Unknown<'env>, what: &str) -> Result<T, OptionError>
where
    T: OptionsObject + FromNapiValue,
{
    let threw = |option: &str| OptionError::threw(env, option);
    let ty = value.get_type().map_err(|_| threw(what))?;
    let plain = ty == ValueType::Object
        && !value.is_array().map_err(|_| threw(what))?
        && !value.is_date().map_err(|_| threw(what))?;
    if !plain {
        let got = type_name(value).map_err(|_| threw(what))?;
        return Err(InvalidOption::new(what, format!("must be an object, got {got}")).into());
    }
    // SAFETY: the value was just checked to be an object.
    let obj = unsafe { value.cast::<Object>() }.map_err(|_| threw(what))?;
    let fields = T::fields();
    for key in Object::keys(&obj).map_err(|_| threw(what))? {
        let Some((_, expected)) = fields.iter().find(|(name, _)| *name == key) else {
            let known: Vec<&str> = fields.iter().map(|(n, _)| n.as_str()).collect();
            return Err(InvalidOption::new(
                key,
                format!("is not an option (known options: {})", known.join(", ")),
            )
            .into());
        };
        let v: Unknown = obj.get_named_property(&key).map_err(|_| threw(&key))?;
        let actual = v.get_type().map_err(|_| threw(&key))?;
        if actual == ValueType::Undefined {
            continue;
        }
        let got = type_name(&v).map_err(|_| threw(&key))?;
        let wanted = expected_name(*expected);
        if got != wanted {
            return Err(InvalidOption::new(key, format!("must be {wanted}, got {got}")).into());
        }
        T::check_nested(env, &key, &v)?;
    }
    // SAFETY: `value` is a live object of `env`. Every key was checked above; what can still fail is a
    // getter that throws on this second read, or a nested value napi-rs cannot convert.
    unsafe { T::from_napi_value(env.raw(), value.raw()) }.map_err(|e| {
        let option = e
            .reason
            .rsplit_once(" on ")
            .and_then(|(_, at)| at.split_once('.'))
            .map_or(what.to_owned(), |(_, field)| field.to_owned());
        let failed = OptionError::threw(env, &option);
        match failed.cause {
            Some(_) => failed,
            None => InvalidOption::new(option, format!("cannot be read: {}", e.reason)).into(),
        }
    })
}

fn expected_name(t: ValueType) -> &'static str {
    match t {
        ValueType::String => "a string",
        ValueType::Number => "a number",
        ValueType::Boolean => "a boolean",
        ValueType::Function => "a function",
        _ => "an object",
    }
}

/// The callbacks given in the options.
pub struct Callbacks {
    pub on_flush: Option<FunctionRef<(), ()>>,
    pub on_error: Option<FunctionRef<(), ()>>,
    pub on_dead_letter: Option<FunctionRef<(), ()>>,
    pub on_high_water: Option<FunctionRef<(), ()>>,
}

impl AuditBatcherOptions {
    /// Takes the callbacks out, leaving the plain settings.
    pub fn take_callbacks(&mut self) -> Callbacks {
        Callbacks {
            on_flush: self.on_flush.take(),
            on_error: self.on_error.take(),
            on_dead_letter: self.on_dead_letter.take(),
            on_high_water: self.on_high_water.take(),
        }
    }
}

impl TryFrom<&AuditBatcherOptions> for Config {
    type Error = InvalidOption;

    /// Applies every range, default and rule between options.
    fn try_from(o: &AuditBatcherOptions) -> Result<Config, InvalidOption> {
        let max_buffered_entries =
            limits::MAX_BUFFERED_ENTRIES.value(o.max_buffered_entries)? as usize;
        let flush_at_entries = limits::FLUSH_AT_ENTRIES
            .read(o.flush_at_entries)?
            .map(|n| n as usize);
        if let Some(n) = flush_at_entries.filter(|&n| n > max_buffered_entries) {
            return Err(InvalidOption::new(
                limits::FLUSH_AT_ENTRIES.name,
                format!("must not exceed maxBufferedEntries ({max_buffered_entries}), got {n}"),
            ));
        }
        let on_buffer_full = match o.on_buffer_full.as_deref() {
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
            max_batch_rows: limits::MAX_BATCH_ROWS.value(o.max_batch_rows)? as usize,
            max_buffered_entries,
            max_buffered_bytes: limits::MAX_BUFFERED_BYTES.value(o.max_buffered_bytes)? as usize,
            max_entry_bytes: limits::MAX_ENTRY_BYTES.value(o.max_entry_bytes)? as usize,
            on_buffer_full,
            sampling: sampling(o.sample_rate, o.sample_rates.as_ref())?,
            flush_at_entries,
            ..BatcherConfig::default()
        };
        let (sink, direct) = sinks(o)?;
        Ok(Config {
            sink,
            direct,
            batcher,
            flush_interval: limits::FLUSH_INTERVAL_MS
                .read(o.flush_interval_ms)?
                .map(Duration::from_millis),
            flush_on_exit: o.flush_on_exit.unwrap_or(false),
            close_timeout: Duration::from_millis(
                limits::CLOSE_TIMEOUT_MS.value(o.close_timeout_ms)?,
            ),
            high_water_mark: limits::HIGH_WATER_MARK
                .read(o.high_water_mark)?
                .map(|n| n as usize),
            spool: o.spool.as_ref().map(spool).transpose()?,
        })
    }
}

/// The `spool` option, checked, with the defaults of [`limits`].
fn spool(o: &SpoolOptions) -> Result<SpoolSettings, InvalidOption> {
    if o.dir.trim().is_empty() {
        return Err(InvalidOption::new(
            "spool.dir",
            "must be a directory path, got an empty string",
        ));
    }
    let sync = match o.sync.as_deref() {
        None | Some("interval") => SyncMode::Interval,
        Some("never") => SyncMode::Never,
        Some(other) => {
            return Err(InvalidOption::new(
                "spool.sync",
                format!("must be 'interval' or 'never', got {other:?}"),
            ))
        }
    };
    Ok(SpoolSettings {
        dir: o.dir.clone().into(),
        config: SpoolConfig {
            sync,
            sync_interval: Duration::from_millis(
                limits::SPOOL_SYNC_INTERVAL_MS.value(o.sync_interval_ms)?,
            ),
            max_bytes: limits::SPOOL_MAX_BYTES.value(o.max_bytes)?,
            ..SpoolConfig::default()
        },
    })
}

/// The sink, and with `redis` and `connectionString` both, the PostgreSQL sink that critical entries and
/// `write()` go to directly (the same table options, checked by the same code, as the direct mode's). The
/// PostgreSQL options are checked whichever sink is chosen, so that a test suite on the memory sink refuses
/// the options production would refuse.
fn sinks(o: &AuditBatcherOptions) -> Result<(SinkConfig, Option<SinkConfig>), InvalidOption> {
    let memory = match o.sink.as_deref() {
        Some("memory") => true,
        None | Some("postgres") => false,
        Some(other) => {
            return Err(InvalidOption::new(
                "sink",
                format!("must be 'postgres' or 'memory', got {other:?}"),
            ))
        }
    };
    let mut settings = pg_settings(&PgFields {
        ssl_root_cert: o.ssl_root_cert.as_ref(),
        table: o.table.as_deref(),
        dead_letter_table: o.dead_letter_table.as_deref(),
        columns: o.columns.as_ref(),
        pool_size: o.pool_size,
        connect_timeout_ms: o.connect_timeout_ms,
        prepared_statements: o.prepared_statements,
    })?;
    if let Some(redis) = &o.redis {
        let stream = super::worker_options::producer_sink(redis, o)?;
        if o.connection_string.is_none() {
            return Ok((stream, None));
        }
        if o.spool.is_some() {
            return Err(InvalidOption::new(
                "spool",
                "cannot be combined with redis and connectionString yet: the critical entries written straight to PostgreSQL would not be spooled",
            ));
        }
        settings.connection_string = required_connection_string(
            o.connection_string.as_ref(),
            "must be a postgres:// URL or key=value string: with redis, critical entries and write() go to it directly",
        )?;
        return Ok((stream, Some(SinkConfig::Postgres(Box::new(settings)))));
    }
    if memory {
        return Ok((SinkConfig::Memory, None));
    }
    settings.connection_string = required_connection_string(
        o.connection_string.as_ref(),
        "is required (a postgres:// URL or key=value string) unless sink is 'memory'",
    )?;
    Ok((SinkConfig::Postgres(Box::new(settings)), None))
}

/// The direct mode's table options, shared by `AuditBatcher` and `AuditWorker`.
pub struct PgFields<'a> {
    pub ssl_root_cert: Option<&'a String>,
    pub table: Option<&'a str>,
    pub dead_letter_table: Option<&'a str>,
    pub columns: Option<&'a HashMap<String, serde_json::Value>>,
    pub pool_size: Option<f64>,
    pub connect_timeout_ms: Option<f64>,
    pub prepared_statements: Option<bool>,
}

/// `connectionString`, when given and not blank; else an error saying `why` it is needed.
pub fn required_connection_string(
    given: Option<&String>,
    why: &str,
) -> Result<String, InvalidOption> {
    match given {
        Some(s) if !s.trim().is_empty() => Ok(s.clone()),
        _ => Err(InvalidOption::new("connectionString", why)),
    }
}

/// Checks the table options and applies their defaults; the connection string is left empty, for the
/// caller to set.
pub fn pg_settings(o: &PgFields) -> Result<PgSettings, InvalidOption> {
    let table_text = o.table.unwrap_or(DEFAULT_TABLE);
    let table = TableName::parse(table_text).map_err(|e| InvalidOption::new("table", e))?;
    let dead_letter_table = match o.dead_letter_table {
        Some(name) => {
            TableName::parse(name).map_err(|e| InvalidOption::new("deadLetterTable", e))?
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
    let columns = columns(o.columns)?;
    let pool_size = limits::POOL_SIZE.value(o.pool_size)? as usize;
    let connect_timeout =
        Duration::from_millis(limits::CONNECT_TIMEOUT_MS.value(o.connect_timeout_ms)?);
    Ok(PgSettings {
        connection_string: String::new(),
        table,
        dead_letter_table,
        columns,
        pool_size,
        connect_timeout,
        ssl_root_cert: o.ssl_root_cert.cloned(),
        prepared_statements: o.prepared_statements.unwrap_or(true),
    })
}

pub(super) fn json_kind(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

/// A sampling rate: a number from 0 to 1.
fn rate(option: &str, r: f64) -> Result<f64, InvalidOption> {
    if (0.0..=1.0).contains(&r) {
        Ok(r)
    } else {
        Err(InvalidOption::new(
            option,
            format!("must be a number from 0 to 1, got {r}"),
        ))
    }
}

fn sampling(
    default_rate: Option<f64>,
    per_action: Option<&HashMap<String, serde_json::Value>>,
) -> Result<Sampling, InvalidOption> {
    let mut sampling = Sampling::default();
    if let Some(r) = default_rate {
        sampling.rate = rate("sampleRate", r)?;
    }
    for (action, r) in per_action.into_iter().flatten() {
        let option = format!("sampleRates.{action}");
        let r = r.as_f64().ok_or_else(|| {
            InvalidOption::new(
                &option,
                format!("must be a number from 0 to 1, got {}", json_kind(r)),
            )
        })?;
        sampling
            .per_action
            .insert(action.clone(), rate(&option, r)?);
    }
    Ok(sampling)
}

fn columns(given: Option<&HashMap<String, serde_json::Value>>) -> Result<ColumnMap, InvalidOption> {
    let mut renames = Vec::new();
    for (field, column) in given.into_iter().flatten() {
        match column {
            serde_json::Value::String(name) => renames.push((field.as_str(), name.as_str())),
            other => {
                return Err(InvalidOption::new(
                    format!("columns.{field}"),
                    format!("must be a column name (a string), got {}", json_kind(other)),
                ))
            }
        }
    }
    // Sorted, so that of two bad renames the same one is always reported.
    renames.sort();
    ColumnMap::with_renames(renames)
        .map_err(|(field, why)| InvalidOption::new(format!("columns.{field}"), why))
}

/// `close()`'s timeout: its `timeoutMs`, else `default`.
pub fn close_timeout(
    given: Option<&CloseOptions>,
    default: Duration,
) -> Result<Duration, InvalidOption> {
    Ok(limits::CLOSE_CALL_TIMEOUT_MS
        .read(given.and_then(|o| o.timeout_ms))?
        .map_or(default, Duration::from_millis))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn field_names_are_camel_cased_as_napi_names_them() {
        assert_eq!(camel_case("connection_string"), "connectionString");
        assert_eq!(camel_case("max_batch_rows"), "maxBatchRows");
        assert_eq!(camel_case("table"), "table");
    }
}
