//! A throw-away measurement behind [`super::copy::COPY_MIN_ROWS`]: rows/s of the INSERT and of the binary
//! COPY (with its BEGIN, prepare, Close and COMMIT) per batch size, against a real server.
//!
//! `DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres cargo test --release --lib measure_insert_vs_copy -- --ignored --nocapture`

use std::time::{Duration, Instant};

use super::columns::ColumnMap;
use super::ident::TableName;
use super::{copy_batch, PgSettings, PgSink};
use crate::entry::{Entry, EntryDraft, TextField, Timestamp};
use crate::uuid7::Uuid7Generator;

fn entries(n: usize, ids: &mut Uuid7Generator) -> Vec<Entry> {
    (0..n)
        .map(|i| {
            // About 600 bytes of JSON, with quotes, backslashes, a newline and non-ASCII text.
            let payload = format!(
                "{{\"tool\":\"search_files\",\"call\":{i},\"args\":{{\"query\":\"naïve \\\"quoted\\\" C:\\\\path\\nline two — ünïcödé\",\"limit\":50,\"filters\":[\"*.rs\",\"*.ts\",\"*.md\"]}},\"result\":{{\"ok\":true,\"matches\":{},\"preview\":\"{}\"}}}}",
                i % 97,
                "lorem ipsum dolor sit amet ".repeat(16)
            );
            EntryDraft::new("tool.call")
                .with(TextField::TenantId, "tenant-7")
                .with(TextField::Actor, format!("agent:{}", i % 13))
                .with(TextField::Resource, "repo:main")
                .with(TextField::Outcome, "ok")
                .with_payload_json(payload)
                .prepare(Timestamp::now())
                .unwrap()
                .finish(ids)
        })
        .collect()
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Method {
    Insert,
    Copy,
    /// The INSERT through the connection's cached prepared statement (`preparedStatements`).
    InsertPrepared,
}

/// `sinks`: sending the INSERT unnamed, and prepared.
async fn run(sinks: &[PgSink; 2], method: Method, batches: &[Vec<Entry>]) -> Duration {
    let sink = &sinks[usize::from(method == Method::InsertPrepared)];
    let started = Instant::now();
    for batch in batches {
        let client = sink.pool.get().await.unwrap();
        let statements = sink.statements(&client).await.unwrap();
        match method {
            Method::Insert | Method::InsertPrepared => sink
                .insert(&client, &statements.insert_sql, batch)
                .await
                .unwrap(),
            Method::Copy => copy_batch(&client, statements.copy.as_ref().unwrap(), batch, true)
                .await
                .unwrap(),
        }
    }
    started.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement against a real server, not a test"]
async fn measure_insert_vs_copy() {
    let url = std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned());
    let table = format!("copy_measure_{}", fastrand::u32(..));
    let make = |prepared_statements| {
        PgSink::new(PgSettings {
            connection_string: url.clone(),
            table: TableName::parse(&table).unwrap(),
            dead_letter_table: TableName::parse(&format!("{table}_dead")).unwrap(),
            columns: ColumnMap::default(),
            pool_size: 2,
            connect_timeout: Duration::from_secs(5),
            ssl_root_cert: None,
            prepared_statements,
        })
        .unwrap()
    };
    let sinks = [make(false), make(true)];
    sinks[0].ensure_schema().await.unwrap();
    let client = sinks[0].pool.get().await.unwrap();
    let mut ids = Uuid7Generator::new();
    let rounds = 5;
    println!("rows/batch | INSERT rows/s (median; min-max) | COPY rows/s (median; min-max) | COPY / INSERT | prepared INSERT rows/s (median; min-max) | COPY / prepared INSERT");
    for size in [50, 100, 128, 160, 200, 320, 500, 1000, 10_000] {
        let total = (size * 10).max(20_000);
        let mut rates = [Vec::new(), Vec::new(), Vec::new()];
        for round in 0..rounds {
            // Alternate which goes first, and start each run on an empty table.
            let order = if round % 2 == 0 {
                [Method::Insert, Method::Copy, Method::InsertPrepared]
            } else {
                [Method::InsertPrepared, Method::Copy, Method::Insert]
            };
            for method in order {
                client
                    .batch_execute(&format!("TRUNCATE \"{table}\""))
                    .await
                    .unwrap();
                let batches: Vec<Vec<Entry>> =
                    (0..total / size).map(|_| entries(size, &mut ids)).collect();
                let took = run(&sinks, method, &batches).await;
                let rows = (total / size * size) as f64;
                rates[method as usize].push(rows / took.as_secs_f64());
                let n: i64 = client
                    .query_one(&format!("SELECT count(*) FROM \"{table}\""), &[])
                    .await
                    .unwrap()
                    .get(0);
                assert_eq!(n as f64, rows);
            }
        }
        let summary = |v: &mut Vec<f64>| {
            v.sort_by(f64::total_cmp);
            (v[v.len() / 2], v[0], v[v.len() - 1])
        };
        let (insert, imin, imax) = summary(&mut rates[0]);
        let (copy, cmin, cmax) = summary(&mut rates[1]);
        let (prepared, pmin, pmax) = summary(&mut rates[2]);
        println!(
            "{size} | {insert:.0} ({imin:.0}-{imax:.0}) | {copy:.0} ({cmin:.0}-{cmax:.0}) | {:.2} | {prepared:.0} ({pmin:.0}-{pmax:.0}) | {:.2}",
            copy / insert,
            copy / prepared
        );
    }
    client
        .batch_execute(&format!(
            "DROP TABLE \"{table}\"; DROP TABLE \"{table}_dead\""
        ))
        .await
        .unwrap();
}
