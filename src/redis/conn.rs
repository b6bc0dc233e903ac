//! Connections to Redis, one server or a Cluster, that reconnect by themselves.

use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, RedisError, RedisFuture, TlsCertificates, Value};

use crate::pg::redact::Redactor;
use crate::sink::WriteError;

/// Where Redis is and which streams to use; producers and workers must agree on `stream` and `shards`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RedisConfig {
    /// `redis://[user:password@]host:port[/db]`, or `rediss://` for TLS (rustls, Mozilla's roots).
    /// Default `redis://127.0.0.1:6379`.
    pub url: String,
    /// When not empty, a Redis Cluster is used through these seed nodes (URLs as `url`), and `url` is
    /// ignored.
    pub cluster_nodes: Vec<String>,
    /// The stream key, or the prefix of the shards' keys. Default `audit`.
    pub stream: String,
    /// How many streams entries are spread over by tenant (see [`super::shard`]). Default 1.
    pub shards: u32,
    /// For `rediss://`: a PEM file of the CA certificates the server's certificate must chain to, instead
    /// of the system's trust store. Default `None`.
    pub tls_root_cert: Option<String>,
    /// How long opening a connection may take. Default 5 s.
    pub connect_timeout: Duration,
    /// How long a command (other than a blocking read) may wait for its reply. Default 5 s.
    pub response_timeout: Duration,
}

impl Default for RedisConfig {
    fn default() -> Self {
        RedisConfig {
            url: "redis://127.0.0.1:6379".into(),
            cluster_nodes: Vec::new(),
            stream: "audit".into(),
            shards: crate::options::limits::REDIS_SHARDS.default_value() as u32,
            tls_root_cert: None,
            connect_timeout: Duration::from_secs(5),
            response_timeout: Duration::from_secs(5),
        }
    }
}

impl RedisConfig {
    /// The stream keys entries are spread over (see [`super::shard::stream_keys`]).
    pub fn keys(&self) -> Vec<String> {
        super::shard::stream_keys(&self.stream, self.shards)
    }

    /// Checks the settings without connecting; the error names the option at fault (as the JavaScript
    /// API spells it under `redis`) and holds no password.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        if self.stream.is_empty() {
            return Err(("stream", "must be a non-empty string".into()));
        }
        let range = crate::options::limits::REDIS_SHARDS;
        if u64::from(self.shards) < range.min || u64::from(self.shards) > range.max {
            return Err((
                "shards",
                format!("must be an integer from {} to {}", range.min, range.max),
            ));
        }
        if let Some(path) = &self.tls_root_cert {
            let pem = std::fs::read(path)
                .map_err(|e| ("tlsRootCert", format!("cannot read {path}: {e}")))?;
            if !pem.windows(17).any(|w| w == b"BEGIN CERTIFICATE") {
                return Err(("tlsRootCert", format!("{path} holds no PEM certificate")));
            }
        }
        if self.cluster_nodes.is_empty() {
            redis::Client::open(self.url.as_str()).map_err(|e| ("url", redact(&e.to_string())))?;
        } else {
            for node in &self.cluster_nodes {
                redis::Client::open(node.as_str())
                    .map_err(|e| ("clusterNodes", redact(&e.to_string())))?;
            }
        }
        Ok(())
    }
}

/// A connection to one server ([`ConnectionManager`]: multiplexed, reconnects on its own after a failure)
/// or to a Cluster ([`ClusterConnection`]: follows redirections and topology changes). Cheap to clone; the
/// clones share the connection.
#[derive(Clone)]
pub enum RedisConn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl RedisConn {
    /// Opens a connection whose commands time out after `response_timeout` (`None`: never, for blocking
    /// reads, which must then have a connection of their own).
    pub async fn open(
        config: &RedisConfig,
        response_timeout: Option<Duration>,
    ) -> Result<RedisConn, RedisError> {
        let certs = match &config.tls_root_cert {
            Some(path) => Some(TlsCertificates {
                client_tls: None,
                root_cert: Some(std::fs::read(path).map_err(|e| {
                    RedisError::from((
                        redis::ErrorKind::InvalidClientConfig,
                        "cannot read tlsRootCert",
                        e.to_string(),
                    ))
                })?),
            }),
            None => None,
        };
        if config.cluster_nodes.is_empty() {
            let client = match certs {
                Some(certs) => redis::Client::build_with_tls(config.url.as_str(), certs)?,
                None => redis::Client::open(config.url.as_str())?,
            };
            let settings = ConnectionManagerConfig::new()
                .set_connection_timeout(Some(config.connect_timeout))
                .set_response_timeout(response_timeout)
                .set_number_of_retries(2)
                .set_max_delay(Duration::from_secs(1));
            Ok(RedisConn::Single(
                ConnectionManager::new_with_config(client, settings).await?,
            ))
        } else {
            let mut builder = ClusterClient::builder(config.cluster_nodes.clone())
                .connection_timeout(config.connect_timeout);
            if let Some(t) = response_timeout {
                builder = builder.response_timeout(t);
            }
            if let Some(certs) = certs {
                builder = builder.certs(certs);
            }
            let client = builder.build()?;
            Ok(RedisConn::Cluster(client.get_async_connection().await?))
        }
    }

    /// Whether this is a Cluster connection (pipelines must then stay within one key's slot).
    pub fn is_cluster(&self) -> bool {
        matches!(self, RedisConn::Cluster(_))
    }
}

impl ConnectionLike for RedisConn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            RedisConn::Single(c) => c.req_packed_command(cmd),
            RedisConn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            RedisConn::Single(c) => c.req_packed_commands(pipeline, offset, count),
            RedisConn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            RedisConn::Single(c) => c.get_db(),
            RedisConn::Cluster(c) => c.get_db(),
        }
    }
}

/// `text` with any `user:password@` of a URL masked.
pub fn redact(text: &str) -> String {
    Redactor::default().redact(text)
}

/// A Redis failure as a (transient) write error, free of passwords.
pub fn write_error(context: &str, e: &RedisError) -> WriteError {
    WriteError::new(redact(&format!("redis {context}: {e}")))
}
