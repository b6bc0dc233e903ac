//! The binary COPY fast path: when a batch is written with `COPY <table> (<columns>) FROM STDIN (FORMAT
//! binary)` instead of the `INSERT ... ON CONFLICT DO NOTHING`, and when it falls back.
//!
//! COPY has no `ON CONFLICT`, so it is used only for a batch none of whose entries was ever sent before
//! (the batcher says so: [`crate::sink::Sink::write_new`]); a retry always goes through the idempotent
//! INSERT. Any server error from the COPY makes
//! the same `write()` fall back to the INSERT at once (a duplicate user-supplied id, a CHECK violation...
//! get the INSERT's behaviour); an error that says the table cannot take COPY at all (row-level security,
//! a view, no privilege...) also turns COPY off for the rest of the sink's life ([`disables_copy`]).

use tokio_postgres::types::Type;

use super::columns::ColumnMap;
use super::encode::PayloadType;
use super::ident::TableName;
use super::verify::TableShape;
use crate::fields::Field;

/// Batches of at least this many rows are written with binary COPY (when the table allows it and no
/// entry of the batch was sent before); smaller ones with the INSERT.
///
/// A COPY costs two round trips more than the INSERT (BEGIN rides with the prepare, COMMIT behind the
/// data; the prepare and the COPY's go-ahead remain) and then stores rows at 1.5 to 2 times the rate.
/// Measured on the development machine's PostgreSQL 15 over loopback (`src/pg/copy_measure.rs`: ~600-byte
/// JSON payloads, every field set, medians of 5 alternating runs, rows/s INSERT → COPY): 50 rows 46k →
/// 35k, 100 rows 47k → 54k, 200 rows 41k → 60k, 320 rows 45k → 77k, 500 rows 46k → 82k, 1 000 rows 51k →
/// 85k, 10 000 rows 59k → 104k. COPY wins from about 80 rows over loopback and saves about 9 µs a row, so
/// each millisecond of network round trip moves the break-even up by about 220 rows: 128 keeps COPY ahead
/// up to a round trip of about 0.25 ms (the same host or zone); on a slower network, batches just above
/// 128 rows lose at most those two round trips.
///
/// With `preparedStatements` the INSERT holds out longer in that measurement (prepared INSERT → COPY:
/// 160 rows 92k → 79k, 200 rows 85k → 91k), but a threshold of 256 for that case made the benchmark's 64
/// turns in flight (about 155-row statements) slower: 40k–44k against 44k–70k rows/s with 128 (3 runs
/// each). So one threshold serves both.
pub const COPY_MIN_ROWS: usize = 128;

/// COPY data is sent in messages of about this size.
pub const COPY_CHUNK_BYTES: usize = 256 * 1024;

/// How a table is filled by COPY: its statement, and the payload column's type.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CopyPlan {
    pub sql: String,
    pub payload: PayloadType,
}

impl CopyPlan {
    /// The plan for a verified table, or `None` when some mapped column has a type the COPY data would not
    /// match exactly: binary COPY takes each value in the column's own binary format, where the INSERT
    /// casts (a text id, `timestamp` without time zone, `char(n)`, `citext`...).
    pub fn for_table(
        table: &TableName,
        columns: &ColumnMap,
        shape: &TableShape,
    ) -> Option<CopyPlan> {
        let mut payload = PayloadType::Jsonb;
        for (column, &oid) in Field::ALL.iter().zip(&shape.column_types) {
            let ok = match column {
                Field::Id => oid == Type::UUID.oid(),
                Field::OccurredAt => oid == Type::TIMESTAMPTZ.oid(),
                Field::Payload if oid == Type::JSON.oid() => {
                    payload = PayloadType::Json;
                    true
                }
                Field::Payload => oid == Type::JSONB.oid(),
                // varchar(n)'s length is checked by the server on COPY as on INSERT (22001).
                _ => oid == Type::TEXT.oid() || oid == Type::VARCHAR.oid(),
            };
            if !ok {
                return None;
            }
        }
        Some(CopyPlan {
            sql: copy_statement(table, columns),
            payload,
        })
    }
}

/// `COPY <table> (<columns>) FROM STDIN (FORMAT binary)`, the columns in [`Field::ALL`] order.
pub fn copy_statement(table: &TableName, columns: &ColumnMap) -> String {
    let names: Vec<String> = Field::ALL
        .iter()
        .map(|c| columns.name(*c).to_string())
        .collect();
    format!(
        "COPY {table} ({}) FROM STDIN (FORMAT binary)",
        names.join(", ")
    )
}

/// Whether a server error from a COPY means this table (or this connection path) cannot take COPY, so
/// that later batches should not try it: anything but a rejected row (classes 22, 23, 54, `P0001`,
/// `P0004`, as [`super::classify`] counts them) or a passing condition of the server or connection
/// (classes 08, 40, 53, 57, 58, `25006` read-only, `55P03` lock not available) or a missing object
/// (`42P01` no such table, `3F000` no such schema, `42703` no such column: the INSERT fails the same way,
/// and `ensureSchema()` or a migration that puts it back heals both). For instance `0A000` ("COPY FROM not
/// supported with row-level security"), `42809` (a view), `42501` (no privilege), `26000` (a pooler that
/// lost the prepared COPY statement).
pub fn disables_copy(sqlstate: &str) -> bool {
    let row_error = super::classify::classify(Some(sqlstate)) == crate::sink::FailureKind::Rejected;
    let passing = ["08", "40", "53", "57", "58"]
        .iter()
        .any(|class| sqlstate.starts_with(class))
        || matches!(sqlstate, "25006" | "55P03");
    let missing = matches!(sqlstate, "42P01" | "3F000" | "42703");
    !row_error && !passing && !missing
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pg::ident::Ident;

    #[test]
    fn copy_is_planned_only_for_exact_column_types() {
        let table = TableName::parse("audit.events").unwrap();
        let columns = ColumnMap::with_renames([("actor", "userId")]).unwrap();
        let text = Type::TEXT.oid();
        let exact = [
            Type::UUID.oid(),
            Type::TIMESTAMPTZ.oid(),
            text,
            Type::VARCHAR.oid(),
            text,
            text,
            text,
            Type::JSONB.oid(),
        ];
        let shape = |column_types| TableShape {
            conflict_columns: vec![Ident::parse("id").unwrap()],
            column_types,
        };
        let plan = CopyPlan::for_table(&table, &columns, &shape(exact)).unwrap();
        assert_eq!(
            plan.sql,
            "COPY \"audit\".\"events\" (\"id\", \"occurred_at\", \"tenant_id\", \"userId\", \"action\", \
             \"resource\", \"outcome\", \"payload\") FROM STDIN (FORMAT binary)"
        );
        assert_eq!(plan.payload, PayloadType::Jsonb);
        let mut json = exact;
        json[7] = Type::JSON.oid();
        assert_eq!(
            CopyPlan::for_table(&table, &columns, &shape(json))
                .unwrap()
                .payload,
            PayloadType::Json
        );
        for (i, other) in [
            (0, text),                  // a text id
            (1, Type::TIMESTAMP.oid()), // timestamp without time zone
            (3, Type::BPCHAR.oid()),    // char(n)
            (4, 0),                     // e.g. citext, which has no fixed OID
            (7, Type::TEXT.oid()),      // not a payload type the table check takes anyway
        ] {
            let mut types = exact;
            types[i] = other;
            assert_eq!(
                CopyPlan::for_table(&table, &columns, &shape(types)),
                None,
                "{i}"
            );
        }
    }

    #[test]
    fn only_errors_about_the_table_or_path_turn_copy_off() {
        for code in ["0A000", "42501", "42809", "26000", "XX000"] {
            assert!(disables_copy(code), "{code}");
        }
        for code in [
            "23505", "23514", "22001", "22P02", "54001", "P0001", "08006", "40001", "40P01",
            "53300", "57014", "57P01", "25006", "55P03", "42P01", "3F000", "42703",
        ] {
            assert!(!disables_copy(code), "{code}");
        }
    }
}
