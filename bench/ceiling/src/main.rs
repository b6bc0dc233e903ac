//! The benchmark's ceiling: what one client connection can write at most on this machine.
//!
//! Reads the benchmark's deterministic rows from a JSON-lines file written by bench/run.ts (one
//! array per line: `[id, occurredAtEpochMs, tenantId, actor, action, resource, outcome, payloadJson]`,
//! nullable text fields as `null`), builds them in memory, connects once, then times binary
//! `COPY ... FROM STDIN (FORMAT binary)` of all rows, `--rows-per-copy` rows per COPY (each COPY its
//! own transaction, as in the Node COPY method), over that one tokio-postgres connection.
//!
//! With `--connections K` (a reference, not the ceiling): K connections, the COPYs dealt round-robin
//! (connection j takes COPYs j, j + K, ...), each connection sending its own one after another, all K at
//! once, with no order between them: what the server takes when K statements overlap.
//!
//! Usage: ceiling <connection-string> <rows.jsonl> <rows> [--table audit_log] [--rows-per-copy 10000]
//! [--connections 1]
//! Prints one JSON object on stdout: {"rows":..,"copies":..,"seconds":..,"rowsPerSec":..,"cpuMs":..}.

use std::error::Error;
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::time::Instant;

use bytes::{BufMut, BytesMut};
use futures_util::pin_mut;
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::{to_sql_checked, IsNull, ToSql, Type};
use tokio_postgres::NoTls;

type BoxError = Box<dyn Error + Sync + Send>;

/// A UUID as its 16 bytes (binary wire format of `uuid`).
#[derive(Debug)]
struct Uuid16([u8; 16]);

impl ToSql for Uuid16 {
    fn to_sql(&self, _: &Type, out: &mut BytesMut) -> Result<IsNull, BoxError> {
        out.put_slice(&self.0);
        Ok(IsNull::No)
    }
    fn accepts(ty: &Type) -> bool {
        *ty == Type::UUID
    }
    to_sql_checked!();
}

/// Microseconds since 2000-01-01T00:00:00Z (binary wire format of `timestamptz`).
#[derive(Debug)]
struct PgMicros(i64);

impl ToSql for PgMicros {
    fn to_sql(&self, _: &Type, out: &mut BytesMut) -> Result<IsNull, BoxError> {
        out.put_i64(self.0);
        Ok(IsNull::No)
    }
    fn accepts(ty: &Type) -> bool {
        *ty == Type::TIMESTAMPTZ
    }
    to_sql_checked!();
}

/// JSON text sent as `jsonb` (binary format: version byte 1, then the text).
#[derive(Debug)]
struct JsonbText(String);

impl ToSql for JsonbText {
    fn to_sql(&self, _: &Type, out: &mut BytesMut) -> Result<IsNull, BoxError> {
        out.put_u8(1);
        out.put_slice(self.0.as_bytes());
        Ok(IsNull::No)
    }
    fn accepts(ty: &Type) -> bool {
        *ty == Type::JSONB
    }
    to_sql_checked!();
}

struct Row {
    id: Uuid16,
    occurred_at: PgMicros,
    tenant_id: Option<String>,
    actor: Option<String>,
    action: String,
    resource: Option<String>,
    outcome: Option<String>,
    payload: JsonbText,
}

/// Milliseconds between 1970-01-01 and 2000-01-01 (PostgreSQL's epoch).
const PG_EPOCH_MS: i64 = 946_684_800_000;

fn parse_uuid(s: &str) -> Result<Uuid16, BoxError> {
    let hex: Vec<u8> = s.bytes().filter(|b| *b != b'-').collect();
    if hex.len() != 32 {
        return Err(format!("bad uuid {s:?}").into());
    }
    let mut out = [0u8; 16];
    for (i, pair) in hex.chunks(2).enumerate() {
        let text = std::str::from_utf8(pair)?;
        out[i] = u8::from_str_radix(text, 16)?;
    }
    Ok(Uuid16(out))
}

fn opt_text(v: &serde_json::Value) -> Result<Option<String>, BoxError> {
    match v {
        serde_json::Value::Null => Ok(None),
        serde_json::Value::String(s) => Ok(Some(s.clone())),
        other => Err(format!("expected string or null, got {other}").into()),
    }
}

fn read_rows(path: &str, limit: usize) -> Result<Vec<Row>, BoxError> {
    let reader = BufReader::new(File::open(path)?);
    let mut rows = Vec::with_capacity(limit);
    for line in reader.lines() {
        if rows.len() == limit {
            break;
        }
        let line = line?;
        let v: Vec<serde_json::Value> = serde_json::from_str(&line)?;
        if v.len() != 8 {
            return Err(format!("line {}: expected 8 fields", rows.len() + 1).into());
        }
        let ms = v[1].as_i64().ok_or("occurredAt is not an integer")?;
        rows.push(Row {
            id: parse_uuid(v[0].as_str().ok_or("id is not a string")?)?,
            occurred_at: PgMicros((ms - PG_EPOCH_MS) * 1000),
            tenant_id: opt_text(&v[2])?,
            actor: opt_text(&v[3])?,
            action: v[4].as_str().ok_or("action is not a string")?.to_owned(),
            resource: opt_text(&v[5])?,
            outcome: opt_text(&v[6])?,
            payload: JsonbText(v[7].as_str().ok_or("payload is not a string")?.to_owned()),
        });
    }
    if rows.len() != limit {
        return Err(format!("{path} has {} rows, {limit} requested", rows.len()).into());
    }
    Ok(rows)
}

/// CPU time of this process so far, in milliseconds: the runtime is single-threaded, so the main
/// thread's scheduler statistics (Linux /proc, nanoseconds) are the process's CPU time. 0 elsewhere.
fn cpu_ms() -> f64 {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| {
            s.split_whitespace()
                .next()
                .and_then(|ns| ns.parse::<f64>().ok())
        })
        .map_or(0.0, |ns| ns / 1e6)
}

fn is_identifier(s: &str) -> bool {
    s.split('.').all(|part| {
        let mut chars = part.chars();
        matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
            && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '$')
    })
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), BoxError> {
    let mut args = std::env::args().skip(1);
    let usage =
        "usage: ceiling <connection-string> <rows.jsonl> <rows> [--table T] [--rows-per-copy N] [--connections K]";
    let conn_str = args.next().ok_or(usage)?;
    let path = args.next().ok_or(usage)?;
    let n: usize = args.next().ok_or(usage)?.parse()?;
    let mut table = String::from("audit_log");
    let mut per_copy: usize = 10_000;
    let mut connections: usize = 1;
    while let Some(flag) = args.next() {
        match flag.as_str() {
            "--table" => table = args.next().ok_or(usage)?,
            "--rows-per-copy" => per_copy = args.next().ok_or(usage)?.parse()?,
            "--connections" => connections = args.next().ok_or(usage)?.parse()?,
            _ => return Err(format!("unknown argument {flag}; {usage}").into()),
        }
    }
    if !is_identifier(&table) || per_copy == 0 || connections == 0 {
        return Err(usage.into());
    }

    let rows = read_rows(&path, n)?;

    let mut clients = Vec::with_capacity(connections);
    let mut conn_tasks = Vec::with_capacity(connections);
    for _ in 0..connections {
        let (client, connection) = tokio_postgres::connect(&conn_str, NoTls).await?;
        conn_tasks.push(tokio::spawn(async move {
            if let Err(e) = connection.await {
                eprintln!("connection error: {e}");
            }
        }));
        // One round trip before timing so the connection is fully warm (as in the Node methods).
        client.simple_query("SELECT 1").await?;
        clients.push(client);
    }
    let sql = format!(
        "COPY {table} (id, occurred_at, tenant_id, actor, action, resource, outcome, payload) \
         FROM STDIN (FORMAT binary)"
    );
    let chunks: Vec<&[Row]> = rows.chunks(per_copy).collect();

    let cpu0 = cpu_ms();
    let t0 = Instant::now();
    let dealt = clients.iter().enumerate().map(|(j, client)| {
        let mine: Vec<&[Row]> = chunks
            .iter()
            .skip(j)
            .step_by(connections)
            .copied()
            .collect();
        copy_all(client, &sql, mine)
    });
    let copies: usize = futures_util::future::try_join_all(dealt)
        .await?
        .into_iter()
        .sum();
    let seconds = t0.elapsed().as_secs_f64();
    let cpu = cpu_ms() - cpu0;
    drop(clients);
    for task in conn_tasks {
        let _ = task.await;
    }

    println!(
        "{{\"rows\":{n},\"copies\":{copies},\"rowsPerCopy\":{per_copy},\"connections\":{connections},\"seconds\":{seconds},\"rowsPerSec\":{},\"cpuMs\":{cpu}}}",
        n as f64 / seconds
    );
    Ok(())
}

/// Sends `chunks` over `client`, one binary COPY each, one after another. Returns how many COPYs it made.
async fn copy_all(
    client: &tokio_postgres::Client,
    sql: &str,
    chunks: Vec<&[Row]>,
) -> Result<usize, BoxError> {
    let types = [
        Type::UUID,
        Type::TIMESTAMPTZ,
        Type::TEXT,
        Type::TEXT,
        Type::TEXT,
        Type::TEXT,
        Type::TEXT,
        Type::JSONB,
    ];
    for chunk in &chunks {
        let sink = client.copy_in(sql).await?;
        let writer = BinaryCopyInWriter::new(sink, &types);
        pin_mut!(writer);
        for r in *chunk {
            writer
                .as_mut()
                .write(&[
                    &r.id,
                    &r.occurred_at,
                    &r.tenant_id,
                    &r.actor,
                    &r.action,
                    &r.resource,
                    &r.outcome,
                    &r.payload,
                ])
                .await?;
        }
        let written = writer.finish().await?;
        if written as usize != chunk.len() {
            return Err(format!("COPY wrote {written} rows, expected {}", chunk.len()).into());
        }
    }
    Ok(chunks.len())
}
