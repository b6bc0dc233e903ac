//! Tests of [`PgSink`] against a real PostgreSQL: `DATABASE_URL`, else `postgres://postgres@127.0.0.1:5432/postgres`.
//!
//! Without `DATABASE_URL` and with no server on 127.0.0.1:5432, each test says so on stderr and passes
//! (`cargo test --lib` runs where no server is; the JavaScript suite brings its own). With `DATABASE_URL`
//! set, a server that cannot be reached fails the test.

use std::sync::atomic::Ordering;
use std::time::Duration;

use super::columns::ColumnMap;
use super::copy::COPY_MIN_ROWS;
use super::ident::TableName;
use super::{Path, PgSettings, PgSink};
use crate::entry::{Entry, EntryDraft, TextField, Timestamp};
use crate::sink::Sink;
use crate::uuid7::Uuid7Generator;

/// A sink on a table of its own (created by `ensure_schema`, dropped with the `TestTable`).
struct TestTable {
    sink: PgSink,
    /// A separate sink on the same table, to look at the server from outside `sink`'s pool.
    observer: PgSink,
    table: String,
    url: String,
}

impl TestTable {
    /// `None` (after saying why on stderr) when there is no server to test against. The INSERT is sent
    /// unnamed.
    async fn new(pool_size: usize) -> Option<TestTable> {
        Self::with(pool_size, false).await
    }

    /// As [`TestTable::new`], with the `preparedStatements` option given.
    async fn with(pool_size: usize, prepared_statements: bool) -> Option<TestTable> {
        let given = std::env::var("DATABASE_URL").ok();
        let url = given
            .clone()
            .unwrap_or_else(|| "postgres://postgres@127.0.0.1:5432/postgres".to_owned());
        let table = format!("pg_server_test_{}", fastrand::u32(..));
        let make = |pool_size, prepared_statements| {
            PgSink::new(PgSettings {
                connection_string: url.clone(),
                table: TableName::parse(&table).unwrap(),
                dead_letter_table: TableName::parse(&format!("{table}_dead")).unwrap(),
                columns: ColumnMap::default(),
                pool_size,
                connect_timeout: Duration::from_secs(5),
                ssl_root_cert: None,
                prepared_statements,
            })
            .unwrap()
        };
        let observer = make(1, false);
        if let Err(e) = observer.ensure_schema().await {
            assert!(given.is_none(), "DATABASE_URL is set, but: {e}");
            eprintln!("skipped: no PostgreSQL on 127.0.0.1:5432 and no DATABASE_URL ({e})");
            return None;
        }
        let sink = make(pool_size, prepared_statements);
        sink.ensure_schema().await.unwrap();
        Some(TestTable {
            sink,
            observer,
            table,
            url,
        })
    }

    /// Another sink on the same table, with a pool of its own.
    fn another_sink(&self, pool_size: usize) -> PgSink {
        PgSink::new(PgSettings {
            connection_string: self.url.clone(),
            table: TableName::parse(&self.table).unwrap(),
            dead_letter_table: TableName::parse(&format!("{}_dead", self.table)).unwrap(),
            columns: ColumnMap::default(),
            pool_size,
            connect_timeout: Duration::from_secs(5),
            ssl_root_cert: None,
            prepared_statements: true,
        })
        .unwrap()
    }

    /// The value of a one-row, one-column query run by the observer.
    async fn observe<T>(
        &self,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> T
    where
        T: for<'a> tokio_postgres::types::FromSql<'a>,
    {
        let client = self.observer.pool.get().await.unwrap();
        client.query_one(sql, params).await.unwrap().get(0)
    }

    /// Runs statements through the observer.
    async fn observe_batch(&self, sql: &str) {
        let client = self.observer.pool.get().await.unwrap();
        client.batch_execute(sql).await.unwrap();
    }

    /// The first column of every row of a query run by the observer.
    async fn observe_column<T>(&self, sql: &str) -> Vec<T>
    where
        T: for<'a> tokio_postgres::types::FromSql<'a>,
    {
        let client = self.observer.pool.get().await.unwrap();
        let rows = client.query(sql, &[]).await.unwrap();
        rows.iter().map(|r| r.get(0)).collect()
    }

    /// The rows of the table.
    async fn count(&self) -> i64 {
        self.observe(&format!("SELECT count(*) FROM \"{}\"", self.table), &[])
            .await
    }

    /// The server process of the connection `sink`'s pool hands out next.
    async fn backend_pid(&self) -> i32 {
        let client = self.sink.pool.get().await.unwrap();
        client
            .query_one("SELECT pg_backend_pid()", &[])
            .await
            .unwrap()
            .get(0)
    }
}

impl Drop for TestTable {
    /// Drops the tables, even when the test failed. (The tests run on the multi-threaded runtime, where
    /// a worker may block.)
    fn drop(&mut self) {
        let sql = format!(
            "DROP TABLE IF EXISTS \"{0}\"; DROP TABLE IF EXISTS \"{0}_dead\"; \
             DROP TABLE IF EXISTS \"{0}_by\"; DROP FUNCTION IF EXISTS \"{0}_by\"()",
            self.table
        );
        let observer = &self.observer;
        tokio::task::block_in_place(|| {
            tokio::runtime::Handle::current().block_on(async {
                if let Ok(client) = observer.pool.get().await {
                    let _ = client.batch_execute(&sql).await;
                }
            })
        });
    }
}

/// `n` new entries with payloads of about 1 kB.
fn entries(n: usize, ids: &mut Uuid7Generator) -> Vec<Entry> {
    let filler = "lorem ipsum dolor sit amet ".repeat(36);
    (0..n)
        .map(|i| {
            EntryDraft::new("server.test")
                .with(TextField::Actor, format!("agent:{}", i % 13))
                .with_payload_json(format!("{{\"i\":{i},\"text\":\"{filler}\"}}"))
                .prepare(Timestamp::now())
                .unwrap()
                .finish(ids)
        })
        .collect()
}

/// Fault 5 of issue 10: a COPY whose future is dropped mid-stream (as `close()`'s deadline does) must
/// not hand its connection, still inside the COPY's transaction, to the next write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_dropped_mid_stream_does_not_give_its_transaction_to_the_next_write() {
    let Some(t) = TestTable::new(1).await else {
        return;
    };
    let mut ids = Uuid7Generator::new();
    // A first write opens the pool's one connection and checks the table.
    t.sink.write(&entries(3, &mut ids)).await.unwrap();
    let old_pid = t.backend_pid().await;

    // A COPY large enough to still be streaming when the server is seen running it; dropped then.
    let big = entries(40_000, &mut ids);
    let mut write = Box::pin(t.sink.write_new(&big));
    let copying = "SELECT count(*) FROM pg_stat_activity \
                   WHERE pid = $1 AND state = 'active' AND query LIKE 'COPY%'";
    loop {
        tokio::select! {
            biased;
            result = &mut write => panic!("the COPY ended ({result:?}) before it was seen running"),
            _ = tokio::time::sleep(Duration::from_millis(1)) => {}
        }
        let running: i64 = t.observe(copying, &[&old_pid]).await;
        if running == 1 {
            break;
        }
    }
    drop(write);

    // The next write, on the pool of one, succeeds and is committed.
    let next = entries(5, &mut ids);
    t.sink
        .write(&next)
        .await
        .expect("the write after the dropped COPY");
    assert_eq!(
        t.count().await,
        3 + 5,
        "the next write is committed; nothing of the dropped COPY is"
    );
    // It was not run on the dropped COPY's connection, and that connection is not left open in its
    // transaction.
    assert_ne!(t.backend_pid().await, old_pid);
    let mut old_state: Option<String> = None;
    for _ in 0..200 {
        old_state = t
            .observe(
                "SELECT (SELECT state FROM pg_stat_activity WHERE pid = $1)",
                &[&old_pid],
            )
            .await;
        if old_state.is_none() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(old_state, None, "the dropped COPY's connection is closed");
}

/// Issue 14: a COPY that fails because the table is missing (dropped, then re-created by
/// `ensure_schema`) leaves COPY on: a missing table is not a table that cannot take COPY.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_table_does_not_turn_copy_off() {
    let Some(t) = TestTable::new(2).await else {
        return;
    };
    let mut ids = Uuid7Generator::new();
    t.sink.write(&entries(3, &mut ids)).await.unwrap();
    t.observer
        .pool
        .get()
        .await
        .unwrap()
        .batch_execute(&format!("DROP TABLE \"{}\"", t.table))
        .await
        .unwrap();
    let big = entries(COPY_MIN_ROWS, &mut ids);
    let error = t.sink.write_new(&big).await.unwrap_err();
    assert_eq!(error.sqlstate.as_deref(), Some("42P01"), "{error}");
    assert!(
        !t.sink.copy_disabled.load(Ordering::Relaxed),
        "the missing table turned COPY off"
    );
    t.sink.ensure_schema().await.unwrap();
    let next = entries(COPY_MIN_ROWS, &mut ids);
    assert_eq!(t.sink.choose_path(&next), Path::Copy);
    t.sink.write_new(&next).await.unwrap();
    assert_eq!(t.count().await, i64::try_from(COPY_MIN_ROWS).unwrap());
}

/// Issue 14: a prepared INSERT the server no longer has (as behind a transaction-pooling PgBouncer, when
/// the connection reaches another server connection) is sent again at once, unnamed, with no error; that
/// connection sends it unnamed from then on. Prepared statements carry names unique to the process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prepared_statement_gone_from_the_server_falls_back_to_unnamed_without_an_error() {
    let Some(t) = TestTable::with(1, true).await else {
        return;
    };
    let mut ids = Uuid7Generator::new();
    let prepared_inserts =
        "SELECT coalesce(string_agg(name, ','), '') FROM pg_prepared_statements \
                            WHERE statement LIKE 'INSERT%'";
    let on_sink = |sql: &'static str| async {
        let client = t.sink.pool.get().await.unwrap();
        client
            .query_one(sql, &[])
            .await
            .unwrap()
            .get::<_, String>(0)
    };
    t.sink.write_new(&entries(3, &mut ids)).await.unwrap();
    t.sink.write(&entries(2, &mut ids)).await.unwrap();
    let names = on_sink(prepared_inserts).await;
    let names: Vec<&str> = names.split(',').collect();
    assert_eq!(
        names.len(),
        2,
        "both INSERTs prepared on the pool's one connection: {names:?}"
    );
    for name in &names {
        let (tag, n) = name
            .strip_prefix('s')
            .and_then(|rest| rest.split_once('_'))
            .unwrap_or_else(|| panic!("statement name {name}"));
        assert!(
            tag.len() == 16 && tag.bytes().all(|b| b.is_ascii_hexdigit()),
            "{name}"
        );
        assert!(n.parse::<u64>().is_ok(), "{name}");
    }

    let client = t.sink.pool.get().await.unwrap();
    client.batch_execute("DEALLOCATE ALL").await.unwrap();
    drop(client);
    assert!(t.sink.take_recovered_failures().is_empty());
    t.sink
        .write_new(&entries(4, &mut ids))
        .await
        .expect("the new batch after DEALLOCATE ALL");
    t.sink
        .write(&entries(1, &mut ids))
        .await
        .expect("the retry after DEALLOCATE ALL");
    assert!(
        t.sink.take_recovered_failures().is_empty(),
        "the fallback is not a failed attempt"
    );
    assert_eq!(t.count().await, 3 + 2 + 4 + 1);
    assert_eq!(
        on_sink(prepared_inserts).await,
        "",
        "the connection sends its INSERTs unnamed since"
    );
    assert_eq!(t.sink.unnamed_only.lock().len(), 1);
}

/// Two batches staged at once over the pool's two connections: neither is visible before its commit, a
/// staged batch dropped uncommitted is never stored, and its connection does not carry its transaction
/// into a later write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn staged_copies_are_invisible_until_committed_and_undone_when_dropped() {
    let Some(t) = TestTable::new(2).await else {
        return;
    };
    assert!(t.sink.can_stage(COPY_MIN_ROWS));
    assert!(!t.sink.can_stage(COPY_MIN_ROWS - 1));
    assert!(
        !t.observer.can_stage(COPY_MIN_ROWS),
        "one connection: nothing to stage beside"
    );
    let mut ids = Uuid7Generator::new();
    let (first, second) = (entries(300, &mut ids), entries(300, &mut ids));
    let (a, b) = tokio::join!(t.sink.stage_new(&first), t.sink.stage_new(&second));
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_eq!(t.count().await, 0, "staged, not committed");
    a.commit().await.unwrap();
    assert_eq!(t.count().await, 300);
    drop(b);
    // The second batch is written again the usual way, on whichever connection the pool gives.
    t.sink.write_new(&second).await.unwrap();
    t.sink.write_new(&entries(5, &mut ids)).await.unwrap();
    assert_eq!(t.count().await, 605);
    let distinct: i64 = t
        .observe(
            &format!("SELECT count(DISTINCT id) FROM \"{}\"", t.table),
            &[],
        )
        .await;
    assert_eq!(distinct, 605);
}

/// A batcher over a real server, given a backlog of full batches, writes them two COPYs at a time over the
/// pool's two connections, each batch in one transaction of its own, every entry once, in order. With a
/// pool of one connection it writes them one at a time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_is_written_two_copies_at_a_time_each_batch_in_its_own_transaction() {
    let Some(t) = TestTable::new(1).await else {
        return;
    };
    let by = format!("{}_by", t.table);
    t.observe_batch(&format!(
            "CREATE TABLE \"{by}\" (id uuid, pid int, xid bigint); \
             CREATE FUNCTION \"{by}\"() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN \
               INSERT INTO \"{by}\" VALUES (NEW.id, pg_backend_pid(), txid_current()); RETURN NEW; END $$; \
             CREATE TRIGGER \"{by}\" AFTER INSERT ON \"{t}\" FOR EACH ROW EXECUTE FUNCTION \"{by}\"()",
            t = t.table
        ))
        .await;
    for (pool_size, backends) in [(2, 2), (1, 1)] {
        t.observe_batch(&format!("TRUNCATE \"{}\", \"{by}\"", t.table))
            .await;
        let sink = t.another_sink(pool_size);
        sink.ensure_schema().await.unwrap();
        let batcher = crate::batcher::Batcher::new(
            sink,
            crate::batcher::BatcherConfig {
                max_batch_rows: 500,
                ..Default::default()
            },
        );
        let ids: Vec<String> = (0..2200)
            .map(|i| {
                let draft = EntryDraft::new("pair.test").with(TextField::Actor, format!("a{i}"));
                batcher.log(draft).unwrap().id.to_string()
            })
            .collect();
        batcher.flush().await.unwrap();
        let stored: Vec<String> = t
            .observe_column(&format!("SELECT id::text FROM \"{}\" ORDER BY id", t.table))
            .await;
        assert_eq!(stored, ids, "pool of {pool_size}");
        // Each batch in one transaction of its own: 500, 500, 500, 500 and the last 200.
        let sizes: Vec<i64> = t
            .observe_column(&format!(
                "SELECT count(*) FROM \"{by}\" GROUP BY xid ORDER BY min(id::text)"
            ))
            .await;
        assert_eq!(sizes, [500, 500, 500, 500, 200], "pool of {pool_size}");
        let pids: i64 = t
            .observe(&format!("SELECT count(DISTINCT pid) FROM \"{by}\""), &[])
            .await;
        assert_eq!(pids, backends, "pool of {pool_size}");
        assert_eq!(batcher.stats().written, 2200);
    }
}
