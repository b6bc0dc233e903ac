//! Tests against a real `redis-server` (started per test on a free port, see [`super::test_server`]) and
//! the PostgreSQL at `DATABASE_URL` (default `postgres://postgres@127.0.0.1:5432/postgres`), a table per
//! test. Each test prints why and returns when either is missing.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::time::Instant;

use super::test_server::{RedisCluster, RedisServer};
use super::*;
use crate::batcher::{Backoff, Batcher, BatcherConfig};
use crate::entry::{Entry, EntryDraft, TextField};
use crate::pg::columns::ColumnMap;
use crate::pg::ident::TableName;
use crate::pg::{PgSettings, PgSink};
use crate::sink::{Sink, WriteError};

fn pg_url() -> String {
    std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

/// A client for checks, or `None` (printed) when PostgreSQL is not reachable.
async fn pg_client() -> Option<tokio_postgres::Client> {
    match tokio_postgres::connect(&pg_url(), tokio_postgres::NoTls).await {
        Ok((client, connection)) => {
            tokio::spawn(connection);
            Some(client)
        }
        Err(e) => {
            eprintln!("skipped: PostgreSQL at DATABASE_URL is not reachable: {e}");
            None
        }
    }
}

/// A test table (and its dead-letter table), dropped at the end of the test.
struct Table {
    name: String,
    client: tokio_postgres::Client,
}

impl Table {
    async fn new() -> Option<Table> {
        let client = pg_client().await?;
        let name = format!("redis_test_{:08x}", fastrand::u32(..));
        let table = Table { name, client };
        table.sink_at(&pg_url()).ensure_schema().await.unwrap();
        Some(table)
    }

    fn sink_at(&self, url: &str) -> PgSink {
        PgSink::new(PgSettings {
            connection_string: url.to_owned(),
            table: TableName::parse(&self.name).unwrap(),
            dead_letter_table: TableName::parse(&format!("{}_dead", self.name)).unwrap(),
            columns: ColumnMap::default(),
            pool_size: 4,
            connect_timeout: Duration::from_secs(2),
            ssl_root_cert: None,
            prepared_statements: false,
        })
        .unwrap()
    }

    fn sink(&self) -> PgSink {
        self.sink_at(&pg_url())
    }

    /// (rows, distinct ids) in the table.
    async fn count(&self) -> (i64, i64) {
        let row = self
            .client
            .query_one(
                &format!("SELECT count(*), count(DISTINCT id) FROM \"{}\"", self.name),
                &[],
            )
            .await
            .unwrap();
        (row.get(0), row.get(1))
    }

    async fn dead_count(&self) -> i64 {
        self.client
            .query_one(&format!("SELECT count(*) FROM \"{}_dead\"", self.name), &[])
            .await
            .unwrap()
            .get(0)
    }

    async fn drop_tables(self) {
        let _ = self
            .client
            .batch_execute(&format!(
                "DROP TABLE IF EXISTS \"{0}\"; DROP TABLE IF EXISTS \"{0}_dead\"",
                self.name
            ))
            .await;
    }
}

fn redis_config(server: &RedisServer, shards: u32) -> RedisConfig {
    RedisConfig {
        url: server.url(),
        stream: "audit".into(),
        shards,
        connect_timeout: Duration::from_secs(1),
        response_timeout: Duration::from_secs(2),
        ..RedisConfig::default()
    }
}

fn producer(server: &RedisServer, shards: u32, max_length: Option<u64>) -> Batcher<StreamSink> {
    let sink = StreamSink::new(StreamConfig {
        redis: redis_config(server, shards),
        max_length,
        high_water_length: None,
    })
    .unwrap();
    Batcher::new(
        sink,
        BatcherConfig {
            max_batch_rows: 100_000,
            ..BatcherConfig::default()
        },
    )
}

fn worker_config(server: &RedisServer, shards: u32, batch: usize) -> WorkerConfig {
    WorkerConfig {
        redis: redis_config(server, shards),
        max_batch_rows: batch,
        block: Duration::from_millis(200),
        claim_idle: Duration::from_secs(1),
        claim_interval: Duration::from_millis(300),
        consumer_expiry: Some(Duration::from_secs(1)),
        backoff: Backoff {
            initial: Duration::from_millis(50),
            max: Duration::from_millis(500),
        },
        stop_timeout: Duration::from_secs(5),
        ..WorkerConfig::default()
    }
}

/// Logs `n` entries spread over `tenants` tenants; their actors are `<tag>-<i>`.
fn log_entries(b: &Batcher<StreamSink>, n: usize, tenants: usize, tag: &str) {
    for i in 0..n {
        b.log(
            EntryDraft::new("test.redis")
                .with(TextField::TenantId, format!("tenant-{}", i % tenants))
                .with(TextField::Actor, format!("{tag}-{i}"))
                .with_payload_json(format!(r#"{{"i":{i},"tag":"{tag}"}}"#)),
        )
        .unwrap();
    }
}

async fn wait_for<F, Fut>(what: &str, timeout: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let until = Instant::now() + timeout;
    while Instant::now() < until {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out after {timeout:?} waiting for {what}");
}

/// The entries of a stream, through the worker's reply parser.
fn xrange(server: &RedisServer, key: &str) -> Vec<reply::Message> {
    let v: ::redis::Value = ::redis::cmd("XRANGE")
        .arg(key)
        .arg("-")
        .arg("+")
        .query(&mut server.client())
        .unwrap();
    let wrapped = ::redis::Value::Array(vec![::redis::Value::Array(vec![
        ::redis::Value::BulkString(key.as_bytes().to_vec()),
        v,
    ])]);
    reply::read_reply(&wrapped).unwrap().remove(0).1
}

fn xlen(server: &RedisServer, key: &str) -> u64 {
    ::redis::cmd("XLEN")
        .arg(key)
        .query(&mut server.client())
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flush_is_one_round_trip_and_entries_decode_back() {
    let Some(server) = RedisServer::start(false) else {
        return;
    };
    let b = producer(&server, 1, Some(1_000));
    log_entries(&b, 700, 3, "p");
    let logged: Vec<Entry> = b.buffered_entries();
    b.flush().await.unwrap();
    assert_eq!(b.sink().round_trips(), 1, "700 entries, one pipeline");
    assert_eq!(b.sink().entries_added(), 700);
    assert_eq!(b.sink().last_known_length(), 700);
    assert!(!b.sink().at_bound(299));
    assert!(b.sink().at_bound(300));
    let mut conn = server.client();
    let info: String = ::redis::cmd("INFO")
        .arg("commandstats")
        .query(&mut conn)
        .unwrap();
    assert!(info.contains("cmdstat_xadd:calls=700,"), "{info}");
    // Back from the stream, in order, equal to what was logged.
    let decoded: Vec<Entry> = xrange(&server, "audit")
        .iter()
        .map(|m| codec::decode_entry(m.fields.as_ref().unwrap()).unwrap())
        .collect();
    assert_eq!(decoded, logged);
    // A second flush, another round trip.
    log_entries(&b, 5, 1, "q");
    b.flush().await.unwrap();
    assert_eq!(b.sink().round_trips(), 2);
    assert_eq!(b.sink().last_known_length(), 705);
    assert!(!b.sink().at_bound(294) && b.sink().at_bound(295));
    // Workers drained part of it: the producer learns so without writing.
    let _: u64 = ::redis::cmd("XTRIM")
        .arg("audit")
        .arg("MAXLEN")
        .arg(100)
        .query(&mut conn)
        .unwrap();
    assert_eq!(b.sink().refresh_length().await.unwrap(), 100);
    assert!(!b.sink().at_bound(899));
    assert!(b.sink().at_bound(900));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_high_water_listener_hears_each_crossing_of_the_learnt_length_once() {
    let Some(server) = RedisServer::start(false) else {
        return;
    };
    let sink = StreamSink::new(StreamConfig {
        redis: redis_config(&server, 2),
        max_length: None,
        high_water_length: Some(10),
    })
    .unwrap();
    let heard = Arc::new(Mutex::new(Vec::new()));
    let to = heard.clone();
    sink.on_high_water(Box::new(move |length| to.lock().push(length)));
    let b = Batcher::new(sink, BatcherConfig::default());
    log_entries(&b, 9, 3, "p");
    b.flush().await.unwrap();
    assert!(heard.lock().is_empty(), "9 < 10");
    log_entries(&b, 2, 3, "p");
    b.flush().await.unwrap();
    assert_eq!(*heard.lock(), vec![11], "both shards counted");
    log_entries(&b, 1, 1, "p");
    b.flush().await.unwrap();
    assert_eq!(*heard.lock(), vec![11], "still above: no second call");
    // Drained below the mark, learnt by a refresh; then crossing again is heard again.
    let mut conn = server.client();
    for key in b.sink().keys() {
        let _: u64 = ::redis::cmd("DEL").arg(key).query(&mut conn).unwrap();
    }
    assert_eq!(b.sink().refresh_length().await.unwrap(), 0);
    log_entries(&b, 10, 3, "q");
    b.flush().await.unwrap();
    assert_eq!(*heard.lock(), vec![11, 10]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_writes_every_entry_once_and_empties_the_stream() {
    let Some(server) = RedisServer::start(false) else {
        return;
    };
    let Some(table) = Table::new().await else {
        return;
    };
    let b = producer(&server, 1, None);
    let total = 20_000;
    log_entries(&b, total, 10, "w");
    b.flush().await.unwrap();
    assert_eq!(xlen(&server, "audit"), total as u64);
    let started = Instant::now();
    let worker = Worker::start(worker_config(&server, 1, 1000), table.sink())
        .await
        .unwrap();
    wait_for("every row", Duration::from_secs(120), || async {
        table.count().await.0 == total as i64
    })
    .await;
    let took = started.elapsed();
    println!(
        "one worker, debug build: {total} rows in {:.2} s = {:.0} rows/s",
        took.as_secs_f64(),
        total as f64 / took.as_secs_f64()
    );
    wait_for("the stream to empty", Duration::from_secs(10), || async {
        worker.stats().await.stream_length == Some(0)
    })
    .await;
    let stats = worker.stats().await;
    assert_eq!(stats.pending, Some(0));
    assert_eq!(stats.lag, Some(0));
    assert_eq!(stats.consumers, Some(1));
    assert_eq!(stats.entries_read, total as u64);
    assert_eq!(stats.entries_written, total as u64);
    assert_eq!(stats.entries_acked, total as u64);
    assert_eq!(stats.in_hand, 0);
    let text = stats.metrics_text(&[("worker".into(), "a".into())]);
    assert!(
        text.contains("audit_batcher_worker_entries_total{worker=\"a\",state=\"acked\"} 20000"),
        "{text}"
    );
    // Entries added while the worker runs are written too; stop() returns with nothing in hand.
    log_entries(&b, 10, 1, "late");
    b.flush().await.unwrap();
    wait_for("the late rows", Duration::from_secs(10), || async {
        table.count().await == (total as i64 + 10, total as i64 + 10)
    })
    .await;
    worker.stop().await.unwrap();
    assert_eq!(table.count().await, (total as i64 + 10, total as i64 + 10));
    table.drop_tables().await;
}

/// Commits its first batch, then never returns: a worker that dies between the commit and the XACK.
struct StallAfterFirstCommit {
    inner: PgSink,
    stalled: AtomicBool,
}

impl Sink for StallAfterFirstCommit {
    async fn write(&self, batch: &[Entry]) -> Result<(), WriteError> {
        self.inner.write(batch).await?;
        if !self.stalled.swap(true, Ordering::SeqCst) {
            std::future::pending::<()>().await;
        }
        Ok(())
    }

    async fn dead_letter(&self, entry: &Entry, cause: &WriteError) -> Result<(), WriteError> {
        self.inner.dead_letter(entry, cause).await
    }

    async fn close(&self) {
        self.inner.close().await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_of_a_worker_that_died_before_xack_are_claimed_and_stored_once() {
    let Some(server) = RedisServer::start(false) else {
        return;
    };
    let Some(table) = Table::new().await else {
        return;
    };
    let b = producer(&server, 1, None);
    log_entries(&b, 1_000, 5, "c");
    b.flush().await.unwrap();
    let a = Worker::start(
        worker_config(&server, 1, 200),
        StallAfterFirstCommit {
            inner: table.sink(),
            stalled: AtomicBool::new(false),
        },
    )
    .await
    .unwrap();
    wait_for(
        "the first batch to commit",
        Duration::from_secs(20),
        || async { table.count().await.0 == 200 },
    )
    .await;
    // The first batch is committed and stalled before its XACK; the next one may be read meanwhile.
    assert_eq!(a.counters().entries_acked, 0);
    drop(a); // dies holding unacknowledged entries, 200 of them committed
    let b_worker = Worker::start(worker_config(&server, 1, 200), table.sink())
        .await
        .unwrap();
    wait_for("every row", Duration::from_secs(30), || async {
        table.count().await.1 == 1_000
    })
    .await;
    wait_for("nothing pending", Duration::from_secs(10), || async {
        let s = b_worker.stats().await;
        s.pending == Some(0) && s.stream_length == Some(0)
    })
    .await;
    let stats = b_worker.counters();
    // What the dead worker held (its batch, and the next if its read had reached Redis) was claimed.
    assert!(
        stats.entries_claimed == 200 || stats.entries_claimed == 400,
        "{}",
        stats.entries_claimed
    );
    assert_eq!(stats.entries_read + stats.entries_claimed, 1_000);
    assert_eq!(table.count().await, (1_000, 1_000), "each entry once");
    // The dead worker, holding nothing now, is forgotten after consumer_expiry (1 s here).
    wait_for(
        "the dead consumer to be forgotten",
        Duration::from_secs(10),
        || async { b_worker.stats().await.consumers == Some(1) },
    )
    .await;
    b_worker.stop().await.unwrap();
    table.drop_tables().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_producers_two_workers_one_dropped_mid_run_every_entry_once() {
    let Some(server) = RedisServer::start(false) else {
        return;
    };
    let Some(table) = Table::new().await else {
        return;
    };
    let per_producer = 20_000;
    let config = worker_config(&server, 1, 500);
    let w1 = Worker::start(config.clone(), table.sink()).await.unwrap();
    let w2 = Worker::start(config, table.sink()).await.unwrap();
    let producers: Vec<_> = (0..3)
        .map(|p| {
            let b = producer(&server, 1, None);
            tokio::spawn(async move {
                for round in 0..20 {
                    log_entries(&b, per_producer / 20, 7, &format!("p{p}r{round}"));
                    b.flush().await.unwrap();
                }
            })
        })
        .collect();
    wait_for("both workers writing", Duration::from_secs(30), || async {
        w1.counters().entries_acked > 1_000 && w2.counters().entries_acked > 1_000
    })
    .await;
    let killed = w1.counters();
    drop(w1); // a worker dies mid-run, whatever it holds
    for p in producers {
        p.await.unwrap();
    }
    let total = 3 * per_producer as i64;
    wait_for("every row", Duration::from_secs(120), || async {
        table.count().await.1 == total
    })
    .await;
    wait_for("the stream to empty", Duration::from_secs(10), || async {
        let s = w2.stats().await;
        s.stream_length == Some(0) && s.pending == Some(0)
    })
    .await;
    assert_eq!(table.count().await, (total, total), "each entry once");
    println!(
        "dropped worker had read {} and acknowledged {}; the survivor claimed {}",
        killed.entries_read,
        killed.entries_acked,
        w2.counters().entries_claimed
    );
    w2.stop().await.unwrap();
    table.drop_tables().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undecodable_entries_and_poison_rows_are_dead_lettered_and_the_rest_written() {
    let Some(server) = RedisServer::start(false) else {
        return;
    };
    let Some(table) = Table::new().await else {
        return;
    };
    table
        .client
        .batch_execute(&format!(
            "ALTER TABLE \"{}\" ADD CONSTRAINT no_poison CHECK (action <> 'poison')",
            table.name
        ))
        .await
        .unwrap();
    let b = producer(&server, 1, None);
    log_entries(&b, 50, 2, "before");
    b.flush().await.unwrap();
    let mut conn = server.client();
    let _: String = ::redis::cmd("XADD")
        .arg("audit")
        .arg("*")
        .arg("junk")
        .arg(&b"\xff\xfe"[..])
        .query(&mut conn)
        .unwrap();
    let _: String = ::redis::cmd("XADD")
        .arg("audit")
        .arg("*")
        .arg("v")
        .arg("1")
        .arg("id")
        .arg("not-a-uuid")
        .query(&mut conn)
        .unwrap();
    b.log(EntryDraft::new("poison")).unwrap();
    log_entries(&b, 50, 2, "after");
    b.flush().await.unwrap();
    let worker = Worker::start(worker_config(&server, 1, 1000), table.sink())
        .await
        .unwrap();
    wait_for(
        "the good rows and three dead letters",
        Duration::from_secs(30),
        || async { table.count().await.0 == 100 && table.dead_count().await == 3 },
    )
    .await;
    wait_for("the stream to empty", Duration::from_secs(10), || async {
        let s = worker.stats().await;
        s.stream_length == Some(0) && s.pending == Some(0)
    })
    .await;
    let stats = worker.counters();
    assert_eq!(stats.entries_undecodable, 2);
    assert_eq!(stats.entries_dead_lettered, 3);
    assert_eq!(stats.entries_written, 100);
    let errors: Vec<String> = table
        .client
        .query(
            &format!(
                "SELECT entry->>'action' FROM \"{}_dead\" ORDER BY 1",
                table.name
            ),
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        errors,
        [
            codec::UNDECODABLE_ACTION,
            codec::UNDECODABLE_ACTION,
            "poison"
        ]
    );
    worker.stop().await.unwrap();
    table.drop_tables().await;
}

/// A TCP proxy in front of PostgreSQL that can be cut: while down it closes every connection.
struct Proxy {
    port: u16,
    up: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<tokio::task::AbortHandle>>>,
    accept: tokio::task::JoinHandle<()>,
}

impl Proxy {
    async fn start(target: (String, u16)) -> Proxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let up = Arc::new(AtomicBool::new(false));
        let conns: Arc<Mutex<Vec<tokio::task::AbortHandle>>> = Arc::default();
        let (up2, conns2) = (up.clone(), conns.clone());
        let accept = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if !up2.load(Ordering::SeqCst) {
                    continue; // dropped: the client sees the connection closed
                }
                let target = target.clone();
                let task = tokio::spawn(async move {
                    if let Ok(mut out) = tokio::net::TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut out).await;
                    }
                });
                conns2.lock().push(task.abort_handle());
            }
        });
        Proxy {
            port,
            up,
            conns,
            accept,
        }
    }

    fn set_up(&self, up: bool) {
        self.up.store(up, Ordering::SeqCst);
        if !up {
            for c in self.conns.lock().drain(..) {
                c.abort();
            }
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.set_up(false);
    }
}

/// The connection string of `pg_url()` with its host and port replaced by `127.0.0.1:<port>`, and the
/// original host and port.
fn via_port(port: u16) -> (String, (String, u16)) {
    let config: tokio_postgres::Config = pg_url().parse().unwrap();
    let host = match config.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
        _ => "127.0.0.1".to_owned(),
    };
    let target_port = config.get_ports().first().copied().unwrap_or(5432);
    let user = config.get_user().unwrap_or("postgres");
    let password = config
        .get_password()
        .map(|p| format!(":{}", String::from_utf8_lossy(p)))
        .unwrap_or_default();
    let db = config.get_dbname().unwrap_or(user);
    (
        format!("postgres://{user}{password}@127.0.0.1:{port}/{db}?sslmode=disable"),
        (host, target_port),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_postgres_is_unreachable_nothing_is_acknowledged_then_the_stream_drains() {
    let Some(server) = RedisServer::start(false) else {
        return;
    };
    let Some(table) = Table::new().await else {
        return;
    };
    let (_, target) = via_port(0);
    let proxy = Proxy::start(target).await;
    let (url, _) = via_port(proxy.port);
    let b = producer(&server, 1, None);
    log_entries(&b, 1_000, 4, "down");
    b.flush().await.unwrap();
    let worker = Worker::start(worker_config(&server, 1, 300), table.sink_at(&url))
        .await
        .unwrap();
    wait_for("failed attempts", Duration::from_secs(20), || async {
        worker.counters().pg_failures >= 3
    })
    .await;
    let stats = worker.stats().await;
    assert_eq!(stats.entries_acked, 0);
    // One batch in hand, and perhaps the next, read meanwhile: unacknowledged.
    assert!(
        stats.in_hand == 300 || stats.in_hand == 600,
        "{}",
        stats.in_hand
    );
    assert_eq!(stats.pending, Some(stats.in_hand));
    assert_eq!(stats.lag, Some(1_000 - stats.in_hand));
    assert_eq!(stats.stream_length, Some(1_000));
    assert!(stats.oldest_pending_age_ms.is_some());
    assert!(stats.last_error.unwrap().starts_with("postgres"));
    // More entries while it is down: the stream grows.
    log_entries(&b, 500, 4, "down2");
    b.flush().await.unwrap();
    assert_eq!(worker.stats().await.stream_length, Some(1_500));
    assert_eq!(table.count().await.0, 0);
    proxy.set_up(true);
    wait_for("every row", Duration::from_secs(30), || async {
        table.count().await.0 == 1_500
    })
    .await;
    wait_for("the stream to empty", Duration::from_secs(10), || async {
        let s = worker.stats().await;
        s.stream_length == Some(0) && s.pending == Some(0)
    })
    .await;
    assert_eq!(table.count().await, (1_500, 1_500));
    worker.stop().await.unwrap();
    table.drop_tables().await;
}

/// Takes `delay` over each write, so a test can stop a worker with a batch in hand.
struct SlowSink {
    inner: PgSink,
    delay: Duration,
    started: AtomicBool,
}

impl Sink for SlowSink {
    async fn write(&self, batch: &[Entry]) -> Result<(), WriteError> {
        self.started.store(true, Ordering::SeqCst);
        tokio::time::sleep(self.delay).await;
        self.inner.write(batch).await
    }

    async fn dead_letter(&self, entry: &Entry, cause: &WriteError) -> Result<(), WriteError> {
        self.inner.dead_letter(entry, cause).await
    }

    async fn close(&self) {
        self.inner.close().await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_commits_and_acknowledges_the_batch_in_hand_then_leaves_the_group() {
    let Some(server) = RedisServer::start(false) else {
        return;
    };
    let Some(table) = Table::new().await else {
        return;
    };
    let b = producer(&server, 1, None);
    log_entries(&b, 300, 3, "stop");
    b.flush().await.unwrap();
    let worker = Worker::start(
        worker_config(&server, 1, 100),
        SlowSink {
            inner: table.sink(),
            delay: Duration::from_millis(500),
            started: AtomicBool::new(false),
        },
    )
    .await
    .unwrap();
    wait_for("a write under way", Duration::from_secs(10), || async {
        worker.sink().started.load(Ordering::SeqCst)
    })
    .await;
    let in_hand = worker.counters().in_hand;
    assert!(in_hand >= 100, "{in_hand}");
    worker.stop().await.unwrap();
    let after = worker.counters();
    assert_eq!(after.in_hand, 0);
    assert_eq!(after.entries_acked, after.entries_read);
    assert_eq!(table.count().await.0 as u64, after.entries_read);
    let stats = worker.stats().await;
    assert_eq!(stats.pending, Some(0));
    assert_eq!(stats.consumers, Some(0), "a clean stop leaves the group");
    assert_eq!(stats.stream_length, Some(300 - after.entries_read));
    // Another worker takes the rest.
    let next = Worker::start(worker_config(&server, 1, 100), table.sink())
        .await
        .unwrap();
    wait_for("every row", Duration::from_secs(20), || async {
        table.count().await == (300, 300)
    })
    .await;
    next.stop().await.unwrap();
    table.drop_tables().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_while_postgres_is_down_leaves_the_batch_pending_for_a_restart_under_the_same_name()
{
    let Some(server) = RedisServer::start(false) else {
        return;
    };
    let Some(table) = Table::new().await else {
        return;
    };
    let b = producer(&server, 1, None);
    log_entries(&b, 100, 1, "s");
    b.flush().await.unwrap();
    let mut config = worker_config(&server, 1, 1000);
    config.consumer = Some("fixed-name".into());
    config.stop_timeout = Duration::from_millis(500);
    let down = Worker::start(
        config.clone(),
        table.sink_at("postgres://postgres@127.0.0.1:1/postgres"),
    )
    .await
    .unwrap();
    wait_for("a failed attempt", Duration::from_secs(20), || async {
        down.counters().pg_failures >= 1
    })
    .await;
    let err = down.stop().await.unwrap_err();
    assert!(
        err.contains("100 entries were left unacknowledged"),
        "{err}"
    );
    drop(down);
    config.claim_idle = Duration::from_secs(3600); // only its own re-read can bring them back
    let again = Worker::start(config, table.sink()).await.unwrap();
    wait_for("every row", Duration::from_secs(20), || async {
        table.count().await.0 == 100
    })
    .await;
    assert_eq!(again.counters().entries_read, 100);
    assert_eq!(again.counters().entries_claimed, 0);
    again.stop().await.unwrap();
    table.drop_tables().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_restart_mid_run_loses_nothing() {
    let Some(mut server) = RedisServer::start(true) else {
        return;
    };
    let Some(table) = Table::new().await else {
        return;
    };
    let b = producer(&server, 1, None);
    let worker = Worker::start(worker_config(&server, 1, 100), table.sink())
        .await
        .unwrap();
    let rounds = 20;
    let per_round = 100;
    for round in 0..rounds {
        log_entries(&b, per_round, 3, &format!("r{round}"));
        if round == rounds / 2 {
            server.restart();
        }
        let until = Instant::now() + Duration::from_secs(30);
        while b.flush().await.is_err() {
            assert!(Instant::now() < until, "the producer never reconnected");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let total = (rounds * per_round) as i64;
    wait_for("every row", Duration::from_secs(60), || async {
        table.count().await.1 == total
    })
    .await;
    wait_for("the stream to empty", Duration::from_secs(10), || async {
        let s = worker.stats().await;
        s.stream_length == Some(0) && s.pending == Some(0)
    })
    .await;
    assert!(
        worker.counters().redis_failures > 0,
        "the restart happened under the worker's feet"
    );
    assert_eq!(table.count().await, (total, total));
    worker.stop().await.unwrap();
    table.drop_tables().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shards_keep_each_tenant_in_one_stream_and_two_workers_write_every_entry_once() {
    let Some(server) = RedisServer::start(false) else {
        return;
    };
    let Some(table) = Table::new().await else {
        return;
    };
    let b = producer(&server, 4, None);
    let total = 4_000;
    log_entries(&b, total, 50, "s");
    b.flush().await.unwrap();
    assert_eq!(b.sink().round_trips(), 1);
    let lengths: Vec<u64> = (0..4)
        .map(|k| xlen(&server, &format!("audit:{k}")))
        .collect();
    assert_eq!(lengths.iter().sum::<u64>(), total as u64);
    assert!(lengths.iter().all(|&l| l > 0), "{lengths:?}");
    assert_eq!(b.sink().shard_lengths(), lengths);
    for k in 0..4 {
        for m in &xrange(&server, &format!("audit:{k}")) {
            let e = codec::decode_entry(m.fields.as_ref().unwrap()).unwrap();
            assert_eq!(shard::shard_of(e.text(TextField::TenantId), 4), k);
        }
    }
    let w1 = Worker::start(worker_config(&server, 4, 250), table.sink())
        .await
        .unwrap();
    let w2 = Worker::start(worker_config(&server, 4, 250), table.sink())
        .await
        .unwrap();
    wait_for("every row", Duration::from_secs(60), || async {
        table.count().await.1 == total as i64
    })
    .await;
    wait_for("every shard empty", Duration::from_secs(10), || async {
        let s = w1.stats().await;
        s.stream_length == Some(0) && s.pending == Some(0)
    })
    .await;
    assert_eq!(table.count().await, (total as i64, total as i64));
    let (c1, c2) = (w1.counters(), w2.counters());
    println!(
        "shards: read {} + {}, claimed {} + {}, acked {} + {}",
        c1.entries_read,
        c2.entries_read,
        c1.entries_claimed,
        c2.entries_claimed,
        c1.entries_acked,
        c2.entries_acked
    );
    assert_eq!(c1.entries_acked + c2.entries_acked, total as u64);
    assert!(
        c1.entries_read > 0 && c2.entries_read > 0,
        "both workers took part"
    );
    w1.stop().await.unwrap();
    w2.stop().await.unwrap();
    table.drop_tables().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_three_node_cluster_with_four_shards_gets_every_entry_once() {
    let Some(cluster) = RedisCluster::start(3) else {
        return;
    };
    let Some(table) = Table::new().await else {
        return;
    };
    let redis = RedisConfig {
        url: String::new(),
        cluster_nodes: cluster.urls(),
        shards: 4,
        ..RedisConfig::default()
    };
    let b = Batcher::new(
        StreamSink::new(StreamConfig {
            redis: redis.clone(),
            max_length: None,
            high_water_length: None,
        })
        .unwrap(),
        BatcherConfig::default(),
    );
    let total = 2_000;
    log_entries(&b, 500, 40, "c1");
    b.flush().await.unwrap();
    assert_eq!(b.sink().round_trips(), 4, "one pipeline per shard");
    assert_eq!(b.sink().last_known_length(), 500);
    let holding: usize = cluster
        .nodes
        .iter()
        .filter(|n| {
            ::redis::cmd("DBSIZE")
                .query::<u64>(&mut n.client())
                .unwrap()
                > 0
        })
        .count();
    assert!(holding >= 2, "the shards spread over the nodes");
    let config = WorkerConfig {
        redis,
        ..worker_config(&cluster.nodes[0], 4, 200)
    };
    let w1 = Worker::start(config.clone(), table.sink()).await.unwrap();
    let w2 = Worker::start(config, table.sink()).await.unwrap();
    log_entries(&b, total - 500, 40, "c2");
    b.flush().await.unwrap();
    wait_for("every row", Duration::from_secs(60), || async {
        table.count().await.1 == total as i64
    })
    .await;
    wait_for("every shard empty", Duration::from_secs(10), || async {
        let s = w2.stats().await;
        s.stream_length == Some(0) && s.pending == Some(0)
    })
    .await;
    assert_eq!(table.count().await, (total as i64, total as i64));
    assert_eq!(
        w1.counters().entries_acked + w2.counters().entries_acked,
        total as u64
    );
    w1.stop().await.unwrap();
    w2.stop().await.unwrap();
    table.drop_tables().await;
}

/// A CA and a server certificate it issued for 127.0.0.1, as `ca.pem`, `server.pem`, `server.key`.
fn make_certs() -> std::path::PathBuf {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
    let dir = std::env::temp_dir().join(format!("audit-redis-tls-{:08x}", fastrand::u32(..)));
    std::fs::create_dir_all(&dir).unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "audit-batcher redis test CA");
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    let key = KeyPair::generate().unwrap();
    let mut params =
        CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()]).unwrap();
    params
        .distinguished_name
        .push(DnType::CommonName, "localhost");
    let cert = params.signed_by(&key, &ca).unwrap();
    std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
    std::fs::write(dir.join("server.pem"), cert.pem()).unwrap();
    std::fs::write(dir.join("server.key"), key.serialize_pem()).unwrap();
    dir
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn producer_and_worker_over_tls_with_a_private_ca() {
    let certs = make_certs();
    let Some(server) = RedisServer::start_tls(certs.clone()) else {
        return;
    };
    let Some(table) = Table::new().await else {
        return;
    };
    let tls_port = server.tls.as_ref().unwrap().0;
    let redis = RedisConfig {
        url: format!("rediss://127.0.0.1:{tls_port}"),
        tls_root_cert: Some(certs.join("ca.pem").to_string_lossy().into_owned()),
        ..redis_config(&server, 1)
    };
    // Without the CA, the server is not trusted.
    let untrusted = StreamSink::new(StreamConfig {
        redis: RedisConfig {
            tls_root_cert: None,
            ..redis.clone()
        },
        max_length: None,
        high_water_length: None,
    })
    .unwrap();
    let b = Batcher::new(untrusted, BatcherConfig::default());
    log_entries(&b, 1, 1, "untrusted");
    assert!(b.flush().await.is_err());
    let b = Batcher::new(
        StreamSink::new(StreamConfig {
            redis: redis.clone(),
            max_length: None,
            high_water_length: None,
        })
        .unwrap(),
        BatcherConfig::default(),
    );
    log_entries(&b, 100, 2, "tls");
    b.flush().await.unwrap();
    let config = WorkerConfig {
        redis,
        ..worker_config(&server, 1, 100)
    };
    let worker = Worker::start(config, table.sink()).await.unwrap();
    wait_for("every row", Duration::from_secs(20), || async {
        table.count().await == (100, 100)
    })
    .await;
    worker.stop().await.unwrap();
    table.drop_tables().await;
    let _ = std::fs::remove_dir_all(certs);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_settings_are_refused_naming_the_option() {
    let config = WorkerConfig {
        group: String::new(),
        ..WorkerConfig::default()
    };
    let err = Worker::start(config, crate::sink::MemorySink::new())
        .await
        .err()
        .unwrap();
    assert_eq!(err.0, "group");
    let err = StreamSink::new(StreamConfig {
        redis: RedisConfig {
            url: "http://user:secret@x".into(),
            ..RedisConfig::default()
        },
        max_length: None,
        high_water_length: None,
    })
    .err()
    .unwrap();
    assert_eq!(err.0, "url");
    assert!(!err.1.contains("secret"), "{}", err.1);
    let err = StreamSink::new(StreamConfig {
        redis: RedisConfig {
            shards: 0,
            ..RedisConfig::default()
        },
        max_length: None,
        high_water_length: None,
    })
    .err()
    .unwrap();
    assert_eq!(err.0, "shards");
    let err = StreamSink::new(StreamConfig {
        redis: RedisConfig {
            tls_root_cert: Some("/nonexistent/ca.pem".into()),
            ..RedisConfig::default()
        },
        max_length: None,
        high_water_length: None,
    })
    .err()
    .unwrap();
    assert_eq!(err.0, "tlsRootCert");
}

/// Where a worker's time goes, phase by phase, for one batch size (debug build: relative figures only).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement, not a test"]
async fn measure_worker_phases() {
    let Some(server) = RedisServer::start(false) else {
        return;
    };
    let Some(table) = Table::new().await else {
        return;
    };
    let b = producer(&server, 1, None);
    let total = 20_000;
    log_entries(&b, total, 10, "m");
    let t = Instant::now();
    b.flush().await.unwrap();
    println!("produce {total}: {:?}", t.elapsed());
    let mut conn = RedisConn::open(&redis_config(&server, 1), None)
        .await
        .unwrap();
    let _: () = ::redis::cmd("XGROUP")
        .arg("CREATE")
        .arg("audit")
        .arg("g")
        .arg("0")
        .query_async(&mut conn)
        .await
        .unwrap();
    let sink = table.sink();
    let (mut read, mut decode, mut write) = (Duration::ZERO, Duration::ZERO, Duration::ZERO);
    for _ in 0..total / 1000 {
        let t = Instant::now();
        let v: ::redis::Value = ::redis::cmd("XREADGROUP")
            .arg("GROUP")
            .arg("g")
            .arg("c")
            .arg("COUNT")
            .arg(1000)
            .arg("STREAMS")
            .arg("audit")
            .arg(">")
            .query_async(&mut conn)
            .await
            .unwrap();
        let messages = reply::read_reply(&v).unwrap().remove(0).1;
        read += t.elapsed();
        let t = Instant::now();
        let entries: Vec<Entry> = messages
            .iter()
            .map(|m| codec::decode_entry(m.fields.as_ref().unwrap()).unwrap())
            .collect();
        decode += t.elapsed();
        let t = Instant::now();
        sink.write(&entries).await.unwrap();
        write += t.elapsed();
    }
    println!("read+parse {read:?}, decode {decode:?}, postgres write {write:?}");
    table.drop_tables().await;
}

/// The producer's bound as `AuditBatcher` applies it: `log_bounded` at the bound refuses or drops
/// non-critical entries (counted), takes critical ones; and the length refresh is rate-limited.
#[test]
fn at_the_stream_bound_non_critical_entries_meet_on_buffer_full_and_refreshes_are_spaced() {
    use crate::batcher::{Disposition, LogError, OverflowPolicy};
    let sink = StreamSink::new(StreamConfig {
        redis: RedisConfig::default(),
        max_length: Some(1),
        high_water_length: None,
    })
    .unwrap();
    assert!(!sink.at_bound(0), "nothing known to be in the stream yet");
    assert!(sink.at_bound(1));
    assert!(sink.refresh_due(60_000));
    assert!(
        !sink.refresh_due(60_000),
        "a second refresh within the interval"
    );
    for policy in [OverflowPolicy::Reject, OverflowPolicy::Drop] {
        let b = Batcher::new(
            crate::sink::MemorySink::new(),
            BatcherConfig {
                on_buffer_full: policy,
                ..BatcherConfig::default()
            },
        );
        let refused = b.log_bounded(EntryDraft::new("over"), true);
        match policy {
            OverflowPolicy::Reject => assert!(matches!(refused, Err(LogError::BufferFull { .. }))),
            OverflowPolicy::Drop => {
                assert_eq!(refused.unwrap().disposition, Disposition::Dropped)
            }
        }
        let mut critical = EntryDraft::new("critical");
        critical.critical = true;
        let taken = b.log_bounded(critical, true).unwrap();
        assert!(matches!(taken.disposition, Disposition::Buffered { .. }));
        let s = b.stats();
        assert_eq!((s.rejected + s.dropped, s.buffered), (1, 1));
    }
}
