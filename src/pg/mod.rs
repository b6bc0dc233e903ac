//! The PostgreSQL sink: a deadpool-postgres pool and one idempotent multi-row insert per batch.

pub mod classify;
pub mod columns;
pub mod config;
mod encode;
pub mod ident;
pub mod schema;
pub mod tls;
pub mod verify;

use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, PoolError, RecyclingMethod, Runtime};
use tokio_postgres::types::{ToSql, Type};

use self::columns::{Column, ColumnMap};
use self::config::{ConnectionConfig, Redactor};
use self::encode::ColumnArray;
use self::ident::TableName;
use self::tls::TlsConnector;
use crate::entry::Entry;
use crate::sink::{Sink, WriteError};

/// How to reach PostgreSQL and where to write.
#[derive(Clone, Debug)]
pub struct PgSettings {
    /// A `postgres://` URL or a `key=value` string.
    pub connection_string: String,
    pub table: TableName,
    /// Where entries the table refuses are kept.
    pub dead_letter_table: TableName,
    pub columns: ColumnMap,
    /// The most connections the pool opens.
    pub pool_size: usize,
    /// How long opening one connection may take.
    pub connect_timeout: Duration,
    /// The `sslRootCert` option: a PEM file of CA certificates (or `system`).
    pub ssl_root_cert: Option<String>,
}

/// Writes batches to a PostgreSQL table, each in one `INSERT ... ON CONFLICT (id) DO NOTHING` statement.
///
/// Connections are opened when first needed, and a connection found broken is replaced on the next write.
pub struct PgSink {
    pool: Pool,
    table: TableName,
    dead_letter_table: TableName,
    dead_letter_sql: String,
    columns: ColumnMap,
    /// Built from the table's verified shape before the first write.
    insert_sql: tokio::sync::OnceCell<String>,
    redactor: Redactor,
}

impl PgSink {
    /// Checks the settings and makes the pool, without connecting. The error names the option at fault.
    pub fn new(settings: PgSettings) -> Result<PgSink, (&'static str, String)> {
        let mut config =
            ConnectionConfig::parse(&settings.connection_string, settings.connect_timeout)
                .map_err(|e| ("connectionString", e))?;
        if let Some(path) = &settings.ssl_root_cert {
            config = config
                .with_ssl_root_cert(path)
                .map_err(|e| ("sslRootCert", e))?;
        }
        let ConnectionConfig { pg, redactor, tls } = config;
        let manager = Manager::from_config(
            pg,
            TlsConnector::new(&tls)?,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(settings.pool_size)
            .runtime(Runtime::Tokio1)
            .create_timeout(Some(settings.connect_timeout))
            .recycle_timeout(Some(Duration::from_secs(5)))
            .build()
            .map_err(|e| ("poolSize", redactor.redact(&e.to_string())))?;
        Ok(PgSink {
            pool,
            insert_sql: tokio::sync::OnceCell::new(),
            dead_letter_sql: schema::dead_letter_statement(&settings.dead_letter_table),
            dead_letter_table: settings.dead_letter_table,
            table: settings.table,
            columns: settings.columns,
            redactor,
        })
    }

    /// The statement each batch is written with, once the table has been checked (see [`verify::verify`]).
    /// A failed check is not remembered: the next write checks again.
    async fn insert_sql(&self, client: &tokio_postgres::Client) -> Result<&str, WriteError> {
        self.insert_sql
            .get_or_try_init(|| async {
                let shape = verify::verify(client, &self.table, &self.columns)
                    .await
                    .map_err(|e| WriteError::new(self.redactor.redact(&e)))?;
                Ok::<_, WriteError>(schema::insert_statement(
                    &self.table,
                    &self.columns,
                    &shape.conflict_columns,
                ))
            })
            .await
            .map(String::as_str)
    }

    /// Creates the default table (and its schema and index) and the dead-letter table when missing. Safe to call from several
    /// processes at once: they take turns on an advisory lock.
    pub async fn ensure_schema(&self) -> Result<(), WriteError> {
        let mut client = self.pool.get().await.map_err(|e| self.pool_error(e))?;
        let tx = client.transaction().await.map_err(|e| self.db_error(&e))?;
        let key = format!("audit-batcher:{}", self.table.plain());
        tx.execute_typed(
            "SELECT pg_advisory_xact_lock(hashtext($1))",
            &[(&key, Type::TEXT)],
        )
        .await
        .map_err(|e| self.db_error(&e))?;
        let mut statements = schema::create_statements(&self.table, &self.columns);
        statements.push(schema::create_dead_letter_statement(
            &self.dead_letter_table,
        ));
        for statement in statements {
            tx.batch_execute(&statement)
                .await
                .map_err(|e| self.db_error(&e))?;
        }
        tx.commit().await.map_err(|e| self.db_error(&e))?;
        // An existing table is checked now rather than at the first write.
        self.insert_sql(&client).await.map(|_| ())
    }

    fn db_error(&self, e: &tokio_postgres::Error) -> WriteError {
        match e.as_db_error() {
            Some(db) => {
                let mut message = format!("{}: {}", db.severity(), db.message());
                if let Some(constraint) = db.constraint() {
                    message.push_str(&format!(" (constraint {constraint})"));
                }
                let code = db.code().code();
                WriteError {
                    message: self.redactor.redact(&message),
                    sqlstate: Some(code.to_owned()),
                    kind: classify::classify(Some(code)),
                }
            }
            None => WriteError::new(self.redactor.redact(&with_causes(e))),
        }
    }

    fn pool_error(&self, e: PoolError) -> WriteError {
        match e {
            PoolError::Backend(e) => self.db_error(&e),
            PoolError::Timeout(kind) => {
                WriteError::new(format!("timed out waiting for a connection ({kind:?})"))
            }
            PoolError::Closed => WriteError::new("the connection pool is closed"),
            other => WriteError::new(self.redactor.redact(&other.to_string())),
        }
    }
}

/// `e` followed by each of its causes: tokio-postgres keeps the interesting part ("Connection refused")
/// in the source chain.
fn with_causes(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

impl Sink for PgSink {
    async fn write(&self, batch: &[Entry]) -> Result<(), WriteError> {
        let client = self.pool.get().await.map_err(|e| self.pool_error(e))?;
        let arrays = Column::ALL.map(|column| ColumnArray { batch, column });
        let params: Vec<(&(dyn ToSql + Sync), Type)> = arrays
            .iter()
            .map(|a| (a as &(dyn ToSql + Sync), ColumnArray::array_type(a.column)))
            .collect();
        let sql = self.insert_sql(&client).await?;
        client
            .execute_typed(sql, &params)
            .await
            .map_err(|e| self.db_error(&e))?;
        Ok(())
    }

    async fn dead_letter(&self, entry: &Entry, cause: &WriteError) -> Result<(), WriteError> {
        let client = self.pool.get().await.map_err(|e| self.pool_error(e))?;
        let id = entry.id().to_string();
        let mut last = None;
        // The payload as JSON first; if the server refuses even that (nested too deep), as plain text.
        for payload_as_text in [false, true] {
            let json = encode::entry_json(entry, payload_as_text);
            let result = client
                .execute_typed(
                    &self.dead_letter_sql,
                    &[
                        (&id, Type::TEXT),
                        (&cause.sqlstate, Type::TEXT),
                        (&cause.message, Type::TEXT),
                        (&encode::JsonText(&json), Type::JSONB),
                    ],
                )
                .await;
            match result {
                Ok(_) => return Ok(()),
                Err(e) => {
                    let e = self.db_error(&e);
                    if e.kind != crate::sink::FailureKind::Rejected {
                        return Err(e);
                    }
                    last = Some(e);
                }
            }
        }
        // A dead letter that cannot be stored is retried, never dropped.
        let mut e = last.unwrap_or_else(|| WriteError::new("dead letter refused"));
        e.kind = crate::sink::FailureKind::Transient;
        Err(e)
    }

    async fn close(&self) {
        self.pool.close();
    }
}
