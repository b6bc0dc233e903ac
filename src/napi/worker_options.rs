//! The options of the Redis hand-off: `redis` on `new AuditBatcher(...)` (a producer) and
//! `new AuditWorker(...)`. Declared as the other options are (one `#[napi(object)]` struct and its
//! `options_object!` list each), read with [`super::options::read`]; the nested `redis` object gets the
//! same unknown-key and type pass, its options named `redis.<name>` in errors.

use std::collections::HashMap;
use std::sync::OnceLock;
use std::time::Duration;

use napi::bindgen_prelude::{FromNapiValue, JsObjectValue, JsValue, Object, Unknown};
use napi::{Env, ValueType};
use napi_derive::napi;

use super::options::{
    camel_case, options_object, pg_settings, required_connection_string, value_type,
    AuditBatcherOptions, OptionError, OptionsObject, PgFields,
};
use crate::options::{limits, InvalidOption};
use crate::pg::PgSettings;
use crate::redis::{RedisConfig, StreamConfig, WorkerConfig};
use crate::sink::SinkConfig;

/// `redis` for `new AuditBatcher(...)`: batches go to a Redis stream instead of a table.
#[napi(object, object_to_js = false)]
pub struct RedisOptions {
    /// `redis://[user:password@]host:port[/db]`, or `rediss://` for TLS. Default
    /// `'redis://127.0.0.1:6379'`. The password never appears in errors.
    pub url: Option<String>,
    /// The stream key, or the prefix of the shards' keys (`audit:0` ...). Default `'audit'`. Workers must
    /// use the same.
    pub stream: Option<String>,
    /// How many streams entries are spread over by `tenantId` (1 to 1024). Default 1. Workers must use
    /// the same.
    pub shards: Option<f64>,
    /// The bound on entries in the stream(s), all shards together. At it, `onBufferFull` applies to
    /// non-critical entries (`'reject'` throws `ERR_AUDIT_BUFFER_FULL`, `'drop'` counts them in
    /// `stats().dropped`); critical entries still go (straight to PostgreSQL when `connectionString` is
    /// given). Never used to trim the stream. Default: no bound.
    pub max_length: Option<f64>,
    /// The stream length (all shards together, as the producer learns it with each write) at which
    /// `onHighWater` is called, once per crossing: again only after the length was seen below it. The
    /// event then has `streamLength`. At most `maxLength`. Default: none (no stream event).
    pub high_water_length: Option<f64>,
    /// For `rediss://`: a PEM file of the CA certificates the server's certificate must chain to.
    pub tls_root_cert: Option<String>,
    /// Seed nodes of a Redis Cluster (URLs as `url`); when given, `url` is ignored.
    pub cluster_nodes: Option<Vec<String>>,
}

options_object!(RedisOptions {
    url,
    stream,
    shards,
    max_length,
    high_water_length,
    tls_root_cert,
    cluster_nodes,
});

/// `redis` for `new AuditWorker(...)`: where to read, and how.
#[napi(object, object_to_js = false)]
pub struct WorkerRedisOptions {
    /// As for `AuditBatcher`'s `redis.url`.
    pub url: Option<String>,
    /// As for `AuditBatcher`'s `redis.stream`; producers and workers must agree. Default `'audit'`.
    pub stream: Option<String>,
    /// As for `AuditBatcher`'s `redis.shards`; producers and workers must agree. Default 1.
    pub shards: Option<f64>,
    /// The consumer group, created from the start of the stream when missing. Default
    /// `'audit-writers'`. One group per stream (acknowledged entries are deleted from it).
    pub group: Option<String>,
    /// This worker's consumer name in the group. Default `<hostname>-<pid>-<random>`. Restarted under the
    /// same name, a worker first re-reads the entries it held.
    pub consumer: Option<String>,
    /// Entries held unacknowledged by a consumer for this long (milliseconds) are taken over by another
    /// worker (a worker that died). Default 30000; keep it well above a statement's duration.
    pub claim_idle_ms: Option<f64>,
    /// How often each shard's pending list is scanned for such entries (milliseconds). Default 5000.
    pub claim_interval_ms: Option<f64>,
    /// How long one read waits for new entries (milliseconds); also bounds how long `stop()` waits for
    /// the read under way. Default 1000.
    pub block_ms: Option<f64>,
    /// Idle consumers holding nothing are removed from the group after this long (milliseconds); 0:
    /// never. Default 3600000.
    pub consumer_expiry_ms: Option<f64>,
    /// As for `AuditBatcher`'s `redis.tlsRootCert`.
    pub tls_root_cert: Option<String>,
    /// As for `AuditBatcher`'s `redis.clusterNodes`.
    pub cluster_nodes: Option<Vec<String>>,
}

options_object!(WorkerRedisOptions {
    url,
    stream,
    shards,
    group,
    consumer,
    claim_idle_ms,
    claim_interval_ms,
    block_ms,
    consumer_expiry_ms,
    tls_root_cert,
    cluster_nodes,
});

/// Options for `new AuditWorker(options)`: the Redis side under `redis`, and the direct mode's table
/// options. Unknown keys are refused.
#[napi(object, object_to_js = false)]
pub struct AuditWorkerOptions {
    /// Where to read. Required.
    pub redis: Option<WorkerRedisOptions>,
    /// PostgreSQL connection string, as for `AuditBatcher`. Required. The password never appears in
    /// errors.
    pub connection_string: Option<String>,
    /// As for `AuditBatcher`.
    pub ssl_root_cert: Option<String>,
    /// As for `AuditBatcher`. Default `'audit_log'`.
    pub table: Option<String>,
    /// As for `AuditBatcher`.
    #[napi(
        ts_type = "Partial<Record<'id' | 'occurredAt' | 'tenantId' | 'actor' | 'action' | 'resource' | 'outcome' | 'payload', string>>"
    )]
    pub columns: Option<HashMap<String, serde_json::Value>>,
    /// As for `AuditBatcher`; also where undecodable stream entries go. Default `<table>_dead_letter`.
    pub dead_letter_table: Option<String>,
    /// The most entries one read takes, and one statement writes. Default 10000, at most 100000.
    pub max_batch_rows: Option<f64>,
    /// As for `AuditBatcher`. Default 2.
    pub pool_size: Option<f64>,
    /// As for `AuditBatcher`. Default 10000.
    pub connect_timeout_ms: Option<f64>,
    /// As for `AuditBatcher`. Default true.
    pub prepared_statements: Option<bool>,
    /// How long `stop()` keeps trying to commit and acknowledge the batch in hand (milliseconds).
    /// Default 10000.
    pub stop_timeout_ms: Option<f64>,
}

options_object!(AuditWorkerOptions {
    redis,
    connection_string,
    ssl_root_cert,
    table,
    columns,
    dead_letter_table,
    max_batch_rows,
    pool_size,
    connect_timeout_ms,
    prepared_statements,
    stop_timeout_ms,
});

/// Runs the unknown-key and type pass of [`super::options::read`] over the nested object `options[key]`
/// (when `options` is an object and that key is given), naming its options `key.<name>`. Call it before
/// reading `options`, so that a bad nested option is reported by name rather than by napi-rs.
pub fn check_nested<T: OptionsObject + FromNapiValue>(
    env: &Env,
    options: &Unknown,
    key: &str,
) -> Result<(), OptionError> {
    let is_object =
        matches!(options.get_type(), Ok(ValueType::Object)) && !options.is_array().unwrap_or(true);
    if !is_object {
        return Ok(());
    }
    // SAFETY: checked to be an object just above.
    let Ok(obj) = (unsafe { options.cast::<Object>() }) else {
        return Ok(());
    };
    let Ok(value) = obj.get_named_property::<Unknown>(key) else {
        // A getter that throws: the top-level read reports it, with its cause.
        return Ok(());
    };
    if matches!(value.get_type(), Ok(ValueType::Undefined)) {
        return Ok(());
    }
    super::options::read::<T>(env, &value, key)
        .map(drop)
        .map_err(|mut e| {
            if e.invalid.option != key {
                e.invalid.option = format!("{key}.{}", e.invalid.option);
            }
            e
        })
}

fn non_empty(option: &str, given: Option<&String>, default: &str) -> Result<String, InvalidOption> {
    match given {
        None => Ok(default.to_owned()),
        Some(s) if s.is_empty() => Err(InvalidOption::new(option, "must be a non-empty string")),
        Some(s) => Ok(s.clone()),
    }
}

fn redis_config(
    url: Option<&String>,
    stream: Option<&String>,
    shards: Option<f64>,
    tls_root_cert: Option<&String>,
    cluster_nodes: Option<&Vec<String>>,
) -> Result<RedisConfig, InvalidOption> {
    let default = RedisConfig::default();
    let config = RedisConfig {
        url: non_empty("redis.url", url, &default.url)?,
        stream: non_empty("redis.stream", stream, &default.stream)?,
        shards: limits::REDIS_SHARDS.value(shards)? as u32,
        tls_root_cert: tls_root_cert.cloned(),
        cluster_nodes: cluster_nodes.cloned().unwrap_or_default(),
        ..default
    };
    config
        .validate()
        .map_err(|(option, reason)| InvalidOption::new(format!("redis.{option}"), reason))?;
    Ok(config)
}

/// The sink of a producer (`redis` given to `AuditBatcher`): checked here, connected at the first flush.
pub fn producer_sink(
    redis: &RedisOptions,
    o: &AuditBatcherOptions,
) -> Result<SinkConfig, InvalidOption> {
    if o.sink.is_some() {
        return Err(InvalidOption::new(
            "sink",
            "cannot be combined with redis (the stream is the sink)",
        ));
    }
    let max_length = limits::REDIS_MAX_LENGTH.read(redis.max_length)?;
    let high_water_length = limits::REDIS_HIGH_WATER_LENGTH.read(redis.high_water_length)?;
    if let (Some(mark), Some(max)) = (high_water_length, max_length) {
        if mark > max {
            return Err(InvalidOption::new(
                limits::REDIS_HIGH_WATER_LENGTH.name,
                format!("must not exceed redis.maxLength ({max}), got {mark}"),
            ));
        }
    }
    Ok(SinkConfig::Redis(Box::new(StreamConfig {
        redis: redis_config(
            redis.url.as_ref(),
            redis.stream.as_ref(),
            redis.shards,
            redis.tls_root_cert.as_ref(),
            redis.cluster_nodes.as_ref(),
        )?,
        max_length,
        high_water_length,
    })))
}

/// What `new AuditWorker(...)` checked: the worker's settings and its table's.
pub struct WorkerSettings {
    pub worker: WorkerConfig,
    pub pg: PgSettings,
}

impl TryFrom<&AuditWorkerOptions> for WorkerSettings {
    type Error = InvalidOption;

    /// Applies every range and default; the table options are checked by the code `AuditBatcher` uses.
    fn try_from(o: &AuditWorkerOptions) -> Result<WorkerSettings, InvalidOption> {
        let Some(r) = &o.redis else {
            return Err(InvalidOption::new(
                "redis",
                "is required: { url, stream, group, ... }",
            ));
        };
        let mut pg = pg_settings(&PgFields {
            ssl_root_cert: o.ssl_root_cert.as_ref(),
            table: o.table.as_deref(),
            dead_letter_table: o.dead_letter_table.as_deref(),
            columns: o.columns.as_ref(),
            pool_size: o.pool_size,
            connect_timeout_ms: o.connect_timeout_ms,
            prepared_statements: o.prepared_statements,
        })?;
        pg.connection_string = required_connection_string(
            o.connection_string.as_ref(),
            "is required (a postgres:// URL or key=value string): the worker writes to PostgreSQL",
        )?;
        let default = WorkerConfig::default();
        let expiry = limits::REDIS_CONSUMER_EXPIRY_MS.value(r.consumer_expiry_ms)?;
        let worker = WorkerConfig {
            redis: redis_config(
                r.url.as_ref(),
                r.stream.as_ref(),
                r.shards,
                r.tls_root_cert.as_ref(),
                r.cluster_nodes.as_ref(),
            )?,
            group: non_empty("redis.group", r.group.as_ref(), &default.group)?,
            consumer: match &r.consumer {
                Some(c) if c.is_empty() => {
                    return Err(InvalidOption::new(
                        "redis.consumer",
                        "must be a non-empty string",
                    ))
                }
                c => c.clone(),
            },
            max_batch_rows: limits::MAX_BATCH_ROWS.value(o.max_batch_rows)? as usize,
            block: Duration::from_millis(limits::REDIS_BLOCK_MS.value(r.block_ms)?),
            claim_idle: Duration::from_millis(limits::REDIS_CLAIM_IDLE_MS.value(r.claim_idle_ms)?),
            claim_interval: Duration::from_millis(
                limits::REDIS_CLAIM_INTERVAL_MS.value(r.claim_interval_ms)?,
            ),
            consumer_expiry: (expiry > 0).then(|| Duration::from_millis(expiry)),
            stop_timeout: Duration::from_millis(limits::STOP_TIMEOUT_MS.value(o.stop_timeout_ms)?),
            ..default
        };
        worker.validate().map_err(|(option, reason)| {
            let top = ["maxBatchRows"];
            let name = if top.contains(&option) {
                option.to_owned()
            } else {
                format!("redis.{option}")
            };
            InvalidOption::new(name, reason)
        })?;
        Ok(WorkerSettings { worker, pg })
    }
}
