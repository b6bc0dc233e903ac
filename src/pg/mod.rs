//! The PostgreSQL sink: a deadpool-postgres pool and one statement per batch, an idempotent multi-row
//! insert or, for a large batch sent for the first time, a binary COPY (see [`copy`]).

pub mod classify;
pub mod columns;
pub mod config;
pub mod conninfo;
pub mod copy;
#[cfg(test)]
mod copy_measure;
mod encode;
pub mod ident;
pub mod redact;
pub mod schema;
#[cfg(test)]
mod server_tests;
pub mod tls;
pub mod verify;

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::BytesMut;
use deadpool_postgres::{
    Manager, ManagerConfig, ObjectId, Pool, PoolError, RecyclingMethod, Runtime,
};
use futures_util::SinkExt;
use tokio_postgres::types::{ToSql, Type};

use self::columns::ColumnMap;
use self::config::ConnectionConfig;
use self::copy::{CopyPlan, COPY_CHUNK_BYTES, COPY_MIN_ROWS};
use self::encode::ColumnArray;
use self::ident::TableName;
use self::redact::Redactor;
use self::tls::TlsConnector;
use crate::entry::Entry;
use crate::fields::Field;
use crate::sink::{Sink, Staged, WriteError};

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
    /// Prepare the INSERT once per connection rather than send it unnamed each time. A connection whose
    /// prepared statement goes missing or clashes (a pooler moved it to another server connection) sends
    /// it unnamed from then on.
    pub prepared_statements: bool,
}

/// Writes batches to a PostgreSQL table, each in one statement: a batch never sent before with an `INSERT`
/// (no `ON CONFLICT`) or, when it is large, a binary `COPY` (see [`copy`]); a retry with the idempotent
/// `INSERT ... ON CONFLICT (id) DO NOTHING`, as is a new batch whose first statement failed on a duplicate id
/// or on a refused COPY.
///
/// Connections are opened when first needed, and a connection found broken is replaced on the next write.
pub struct PgSink {
    pool: Pool,
    table: TableName,
    dead_letter_table: TableName,
    dead_letter_sql: String,
    columns: ColumnMap,
    /// Built from the table's verified shape before the first write.
    statements: tokio::sync::OnceCell<Statements>,
    /// Set once a COPY failed in a way that says the table cannot take COPY at all.
    copy_disabled: AtomicBool,
    /// The `preparedStatements` option.
    prepared: bool,
    /// Connections whose prepared INSERT went missing or clashed with another's (SQLSTATE 26000 or
    /// 42P05: a pooler in transaction mode moved them between server connections). They send the INSERT
    /// unnamed from then on.
    unnamed_only: parking_lot::Mutex<HashSet<ObjectId>>,
    /// Failed COPY attempts that the same write redid as an INSERT, until the batcher takes them.
    recovered: parking_lot::Mutex<Vec<WriteError>>,
    redactor: Redactor,
}

/// How batches are written to the verified table.
struct Statements {
    insert_sql: String,
    /// The same INSERT without `ON CONFLICT`, for small batches never sent before.
    insert_new_sql: String,
    /// `None` when a column's type rules COPY out.
    copy: Option<CopyPlan>,
}

/// Which statement writes a batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Path {
    /// `INSERT ... ON CONFLICT DO NOTHING` only: a retry, or a part of a batch being bisected.
    Insert,
    /// A small new batch: the INSERT without `ON CONFLICT`, falling back to the idempotent one on a
    /// duplicate id.
    InsertNew,
    /// A large new batch: binary COPY, with the idempotent INSERT as fallback on a server error.
    Copy,
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
            statements: tokio::sync::OnceCell::new(),
            copy_disabled: AtomicBool::new(false),
            prepared: settings.prepared_statements,
            unnamed_only: parking_lot::Mutex::new(HashSet::new()),
            recovered: parking_lot::Mutex::new(Vec::new()),
            dead_letter_sql: schema::dead_letter_statement(&settings.dead_letter_table),
            dead_letter_table: settings.dead_letter_table,
            table: settings.table,
            columns: settings.columns,
            redactor,
        })
    }

    /// The statements batches are written with, once the table has been checked (see [`verify::verify`]).
    /// A failed check is not remembered: the next write checks again.
    async fn statements(&self, client: &tokio_postgres::Client) -> Result<&Statements, WriteError> {
        self.statements
            .get_or_try_init(|| async {
                let shape = verify::verify(client, &self.table, &self.columns)
                    .await
                    .map_err(|e| WriteError::new(self.redactor.redact(&e)))?;
                Ok::<_, WriteError>(Statements {
                    insert_sql: schema::insert_statement(
                        &self.table,
                        &self.columns,
                        Some(&shape.conflict_columns),
                    ),
                    insert_new_sql: schema::insert_statement(&self.table, &self.columns, None),
                    copy: CopyPlan::for_table(&self.table, &self.columns, &shape),
                })
            })
            .await
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
        self.statements(&client).await.map(|_| ())
    }

    fn db_error(&self, e: &tokio_postgres::Error) -> WriteError {
        db_error(&self.redactor, e)
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

/// What `e` says, free of secrets, with its SQLSTATE and the batcher's reading of it.
fn db_error(redactor: &Redactor, e: &tokio_postgres::Error) -> WriteError {
    match e.as_db_error() {
        Some(db) => {
            let mut message = format!("{}: {}", db.severity(), db.message());
            if let Some(constraint) = db.constraint() {
                message.push_str(&format!(" (constraint {constraint})"));
            }
            let code = db.code().code();
            WriteError {
                message: redactor.redact(&message),
                sqlstate: Some(code.to_owned()),
                kind: classify::classify(Some(code)),
            }
        }
        None => WriteError::new(redactor.redact(&with_causes(e))),
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

impl PgSink {
    /// Writes `batch` by `path`: COPY or the INSERT without `ON CONFLICT` first for a new batch, falling
    /// back to the idempotent INSERT in the same call on a server error (COPY) or a duplicate id; the
    /// idempotent INSERT alone for a retry.
    async fn write_batch(&self, batch: &[Entry], path: Path) -> Result<(), WriteError> {
        let mut client = self.pool.get().await.map_err(|e| self.pool_error(e))?;
        let statements = self.statements(&client).await?;
        let path = match (path, &statements.copy) {
            (Path::Copy, None) => Path::InsertNew,
            (path, _) => path,
        };
        if path == Path::Copy {
            if let Some(plan) = &statements.copy {
                // Dropped by a failure, or with this future by a deadline, the lease closes the
                // connection: it may be mid-transaction or out of step (see copy_batch).
                let lease = CopyLease(Some(client));
                let error = match copy_batch(&lease, plan, batch, true).await {
                    Ok(()) => {
                        lease.keep();
                        return Ok(());
                    }
                    Err(CopyError::Server(error)) => error,
                    Err(CopyError::Encode(error)) => {
                        // Too long for the wire format: so for the INSERT too. A rule of the table
                        // broken, as far as the batcher is concerned, so it finds the entry.
                        return Err(WriteError::rejected(error.to_string(), None));
                    }
                };
                drop(lease);
                let Some(db) = error.as_db_error() else {
                    // A lost connection or reply: the COPY may have committed. The retry goes through the
                    // INSERT (a retry is never new), which stores each entry once.
                    return Err(self.db_error(&error));
                };
                // Nothing was committed; the INSERT decides what becomes of the batch. The failed COPY
                // is still a failed attempt: the batcher counts and reports it.
                self.recovered.lock().push(self.db_error(&error));
                if copy::disables_copy(db.code().code()) {
                    self.copy_disabled.store(true, Ordering::Relaxed);
                }
                client = self.pool.get().await.map_err(|e| self.pool_error(e))?;
            }
        }
        if path == Path::InsertNew {
            match self
                .insert(&client, &statements.insert_new_sql, batch)
                .await
            {
                Ok(()) => return Ok(()),
                // A duplicate id (a caller's id the table holds): the idempotent INSERT decides. Counted
                // as a failed attempt, as a failed COPY is.
                Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::UNIQUE_VIOLATION) => {
                    self.recovered.lock().push(self.db_error(&e));
                }
                Err(e) => return Err(self.db_error(&e)),
            }
        }
        self.insert(&client, &statements.insert_sql, batch)
            .await
            .map_err(|e| self.db_error(&e))
    }

    /// `INSERT ... SELECT * FROM unnest(...)`: through the connection's prepared statement when
    /// `preparedStatements` is on, else unnamed (parsed and planned by the server every time).
    ///
    /// A prepared statement the server does not have (26000) or a name it already has (42P05) means a
    /// pooler moved this connection between server connections: the same INSERT is sent again at once,
    /// unnamed, and so is every later one on this connection. Neither failure ran the statement, so
    /// nothing is written twice, and the caller sees no error. Statement names are unique to the process
    /// (see vendor/tokio-postgres), so a moved connection can never run another client's statement.
    async fn insert(
        &self,
        client: &deadpool_postgres::Client,
        sql: &str,
        batch: &[Entry],
    ) -> Result<(), tokio_postgres::Error> {
        let arrays = Field::ALL.map(|column| ColumnArray { batch, column });
        let types = Field::ALL.map(ColumnArray::array_type);
        let id = deadpool_postgres::Object::id(client);
        if self.prepared && !self.unnamed_only.lock().contains(&id) {
            let prepared = async {
                let statement = client.prepare_typed_cached(sql, &types).await?;
                let params = arrays.each_ref().map(|a| a as &(dyn ToSql + Sync));
                client.execute(&statement, &params).await
            };
            match prepared.await {
                Err(e) if statement_lost(&e) => {
                    client.statement_cache.remove(sql, &types);
                    let mut unnamed = self.unnamed_only.lock();
                    // Ids of connections long closed are forgotten now and then; a live one among
                    // them only tries its prepared statement once more.
                    if unnamed.len() >= UNNAMED_ONLY_REMEMBERED {
                        unnamed.clear();
                    }
                    unnamed.insert(id);
                }
                result => return result.map(|_| ()),
            }
        }
        let params: Vec<(&(dyn ToSql + Sync), Type)> = arrays
            .iter()
            .zip(types)
            .map(|(a, t)| (a as &(dyn ToSql + Sync), t))
            .collect();
        client.execute_typed(sql, &params).await.map(|_| ())
    }

    /// Which statement a new batch (none of its entries sent before) should be written with: COPY when it
    /// is large, unless a COPY failed in a way that rules it out for this table; else the INSERT without
    /// `ON CONFLICT`.
    fn choose_path(&self, batch: &[Entry]) -> Path {
        self.choose_path_for(batch.len())
    }

    fn choose_path_for(&self, rows: usize) -> Path {
        if rows >= COPY_MIN_ROWS && !self.copy_disabled.load(Ordering::Relaxed) {
            Path::Copy
        } else {
            Path::InsertNew
        }
    }
}

/// A pooled connection lent to a COPY. It goes back to the pool only through [`CopyLease::keep`], once
/// the COPY and its transaction have completed; dropped otherwise (the COPY failed, or the future writing
/// it was dropped mid-stream, as `close()`'s deadline does), it is detached from the pool and closed, so
/// that no later write runs inside its transaction or pairs its statements with the COPY's replies. The
/// server rolls the transaction back when the connection closes.
///
/// Detaching is needed because the pool's recycling check (`RecyclingMethod::Fast`) looks only at whether
/// the connection is closed.
struct CopyLease(Option<deadpool_postgres::Object>);

impl CopyLease {
    /// Returns the connection to the pool.
    fn keep(mut self) {
        drop(self.0.take());
    }
}

impl std::ops::Deref for CopyLease {
    type Target = deadpool_postgres::Object;

    fn deref(&self) -> &deadpool_postgres::Object {
        // Some until `keep` or `drop`, which both consume the lease.
        self.0
            .as_ref()
            .expect("a lease holds its connection until kept or dropped")
    }
}

impl Drop for CopyLease {
    fn drop(&mut self) {
        if let Some(client) = self.0.take() {
            drop(deadpool_postgres::Object::take(client));
        }
    }
}

/// How many connection ids [`PgSink::insert`] remembers as sending unnamed statements.
const UNNAMED_ONLY_REMEMBERED: usize = 1024;

/// Whether `e` says the connection's prepared statement is not on the server it reached (26000) or that
/// server already has one of that name (42P05): the statement did not run.
fn statement_lost(e: &tokio_postgres::Error) -> bool {
    use tokio_postgres::error::SqlState;
    matches!(
        e.code(),
        Some(c) if *c == SqlState::INVALID_SQL_STATEMENT_NAME || *c == SqlState::DUPLICATE_PSTATEMENT
    )
}

/// One binary COPY of `batch`, in its own transaction: `BEGIN` and the prepare sent together, `COPY`, the
/// data in [`COPY_CHUNK_BYTES`] messages, then `COMMIT` sent right behind the end of the data. Two round
/// trips more than the INSERT. Without `commit`, it returns once the server has taken the data, the
/// transaction still open, for [`PgSink::stage_new`] to commit.
///
/// tokio-postgres runs COPY through a named prepared statement. Inside a transaction, a transaction-pooling
/// PgBouncer keeps the one server connection for all of it, and the statement is closed (its `Close`
/// queued behind the data) before the `COMMIT`, so no statement outlives the transaction.
///
/// After a failure the connection must not be reused: it may still be inside the transaction, and when the
/// server refused the COPY statement itself (before taking any data: row-level security, a view, no
/// privilege, a lock timeout...) tokio-postgres 0.7 is left expecting one reply too many, so the next
/// statement on it would be paired with the previous one's reply (rust-postgres issue 789, PR 1337).
async fn copy_batch(
    client: &deadpool_postgres::Client,
    plan: &CopyPlan,
    batch: &[Entry],
    commit: bool,
) -> Result<(), CopyError> {
    // Requests leave in the order they are first polled: BEGIN, then the prepare, in one round trip.
    let (begun, statement) = tokio::join!(client.batch_execute("BEGIN"), client.prepare(&plan.sql));
    begun?;
    let statement = statement?;
    let sink = client.copy_in::<_, bytes::Bytes>(&statement).await?;
    // The Close goes out after the copy data and before the COMMIT: requests leave in order, and the copy
    // holds the connection's queue until its end.
    drop(statement);
    futures_util::pin_mut!(sink);
    let mut buf = BytesMut::with_capacity(COPY_CHUNK_BYTES + 4096);
    buf.extend_from_slice(encode::COPY_HEADER);
    for entry in batch {
        encode::copy_row(entry, plan.payload, &mut buf).map_err(CopyError::Encode)?;
        if buf.len() >= COPY_CHUNK_BYTES {
            sink.send(buf.split().freeze()).await?;
        }
    }
    buf.extend_from_slice(encode::COPY_TRAILER);
    sink.feed(buf.freeze()).await?;
    if !commit {
        sink.as_mut().finish().await?;
        return Ok(());
    }
    // COMMIT is sent without waiting for the COPY's own reply (one round trip less): after a failed COPY
    // the server answers it with ROLLBACK, and the COPY's error is what counts.
    let (copied, committed) = tokio::join!(sink.as_mut().finish(), client.batch_execute("COMMIT"));
    copied?;
    Ok(committed?)
}

/// Why [`copy_batch`] failed. Either way nothing of the batch was committed, unless the connection was
/// lost after the `COMMIT` was sent (a `Server` error without a SQLSTATE).
#[derive(Debug)]
enum CopyError {
    /// The server refused, or the connection failed.
    Server(tokio_postgres::Error),
    /// An entry has a value too long for the wire format; the COPY was abandoned mid-stream.
    Encode(encode::ValueTooLong),
}

impl From<tokio_postgres::Error> for CopyError {
    fn from(e: tokio_postgres::Error) -> Self {
        CopyError::Server(e)
    }
}

impl Sink for PgSink {
    async fn write(&self, batch: &[Entry]) -> Result<(), WriteError> {
        self.write_batch(batch, Path::Insert).await
    }

    /// A batch that `write_new` would COPY, when the pool has a second connection for the batch staged
    /// beside it.
    fn can_stage(&self, rows: usize) -> bool {
        self.choose_path_for(rows) == Path::Copy
            && self.pool.status().max_size >= 2
            && self.statements.get().is_some_and(|s| s.copy.is_some())
    }

    /// The binary COPY of [`PgSink::write_new`], its transaction left open until the commit. Dropped
    /// uncommitted, the connection is closed and the server rolls the transaction back. Unlike
    /// `write_new`, a failed COPY is not redone as an INSERT here: the batcher writes the batch again.
    async fn stage_new(&self, batch: &[Entry]) -> Result<Staged, WriteError> {
        let client = self.pool.get().await.map_err(|e| self.pool_error(e))?;
        let statements = self.statements(&client).await?;
        let Some(plan) = &statements.copy else {
            return Err(WriteError::new("this table cannot take COPY"));
        };
        let lease = CopyLease(Some(client));
        match copy_batch(&lease, plan, batch, false).await {
            Ok(()) => {
                let redactor = self.redactor.clone();
                Ok(Staged::new(move || {
                    Box::pin(async move {
                        match lease.batch_execute("COMMIT").await {
                            Ok(()) => {
                                lease.keep();
                                Ok(())
                            }
                            Err(e) => Err(db_error(&redactor, &e)),
                        }
                    })
                }))
            }
            Err(CopyError::Encode(error)) => Err(WriteError::rejected(error.to_string(), None)),
            Err(CopyError::Server(error)) => {
                if let Some(db) = error.as_db_error() {
                    if copy::disables_copy(db.code().code()) {
                        self.copy_disabled.store(true, Ordering::Relaxed);
                    }
                }
                Err(self.db_error(&error))
            }
        }
    }

    async fn write_new(&self, batch: &[Entry]) -> Result<(), WriteError> {
        self.write_batch(batch, self.choose_path(batch)).await
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

    fn take_recovered_failures(&self) -> Vec<WriteError> {
        std::mem::take(&mut *self.recovered.lock())
    }
}
