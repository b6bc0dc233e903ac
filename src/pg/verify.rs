//! Checking the target table before the first write: the mapped columns exist with types the insert can
//! fill, nothing else demands a value, and a unique index on the id column exists for `ON CONFLICT`.

use tokio_postgres::types::Type;
use tokio_postgres::Client;

use super::columns::ColumnMap;
use super::ident::{Ident, TableName};
use crate::fields::Field;

/// What the insert statement needs to know about the table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TableShape {
    /// The columns of the smallest unique index that holds the id column and only mapped columns: the
    /// `ON CONFLICT` target. Just the id for the default table; `(id, occurred_at)` for a table
    /// partitioned on `occurred_at`.
    pub conflict_columns: Vec<Ident>,
    /// The type (its OID) of the column each field is written to, in [`Field::ALL`] order: whether a
    /// binary COPY can fill the table (see [`super::copy::CopyPlan`]).
    pub column_types: [u32; 8],
}

/// The column types an entry field may be written to (PostgreSQL's `typname`).
fn accepted_types(column: Field) -> &'static [&'static str] {
    match column {
        Field::Id => &["uuid", "text", "varchar"],
        Field::OccurredAt => &["timestamptz", "timestamp"],
        Field::Payload => &["jsonb", "json"],
        _ => &["text", "varchar", "bpchar", "citext"],
    }
}

struct Attribute {
    name: String,
    type_name: String,
    not_null: bool,
    has_default: bool,
    type_oid: u32,
}

/// Reads the table's definition and checks it; the error says what is wrong in a user's terms.
pub async fn verify(
    client: &Client,
    table: &TableName,
    columns: &ColumnMap,
) -> Result<TableShape, String> {
    let regclass = table.to_string();
    let rows = client
        .query_typed(
            "SELECT a.attname::text, t.typname::text, a.attnotnull,
                    a.atthasdef OR a.attidentity <> '' OR a.attgenerated <> '', a.atttypid
             FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid
             WHERE a.attrelid = to_regclass($1) AND a.attnum > 0 AND NOT a.attisdropped",
            &[(&regclass, Type::TEXT)],
        )
        .await
        .map_err(|e| {
            format!(
                "could not read the definition of table {}: {e}",
                table.plain()
            )
        })?;
    if rows.is_empty() {
        return Err(format!(
            "table {} does not exist (call ensureSchema() to create the default table)",
            table.plain()
        ));
    }
    let attributes: Vec<Attribute> = rows
        .iter()
        .map(|r| Attribute {
            name: r.get(0),
            type_name: r.get(1),
            not_null: r.get(2),
            has_default: r.get(3),
            type_oid: r.get(4),
        })
        .collect();
    let mut column_types = [0; 8];
    for (i, column) in Field::ALL.into_iter().enumerate() {
        let name = columns.name(column).as_str();
        let Some(attr) = attributes.iter().find(|a| a.name == name) else {
            return Err(format!(
                "table {} has no column \"{name}\" for the entry field `{}` (map it with the columns option)",
                table.plain(),
                column.js_name()
            ));
        };
        let accepted = accepted_types(column);
        if !accepted.contains(&attr.type_name.as_str()) {
            return Err(format!(
                "column \"{name}\" of table {} has type {}, which the entry field `{}` cannot be written to (expected {})",
                table.plain(),
                attr.type_name,
                column.js_name(),
                accepted.join(" or ")
            ));
        }
        column_types[i] = attr.type_oid;
    }
    let mapped = |name: &str| Field::ALL.iter().any(|c| columns.name(*c).as_str() == name);
    if let Some(attr) = attributes
        .iter()
        .find(|a| a.not_null && !a.has_default && !mapped(&a.name))
    {
        return Err(format!(
            "column \"{}\" of table {} is NOT NULL without a default, and no entry field is written to it",
            attr.name,
            table.plain()
        ));
    }
    let indexes = client
        .query_typed(
            "SELECT array_agg(a.attname::text ORDER BY k.ord)
             FROM pg_index i
             CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord)
             JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
             WHERE i.indrelid = to_regclass($1) AND i.indisunique AND i.indpred IS NULL
             GROUP BY i.indexrelid",
            &[(&regclass, Type::TEXT)],
        )
        .await
        .map_err(|e| format!("could not read the indexes of table {}: {e}", table.plain()))?;
    let id = columns.name(Field::Id).as_str();
    let conflict = indexes
        .iter()
        .map(|r| r.get::<_, Vec<String>>(0))
        .filter(|cols| cols.iter().any(|c| c == id) && cols.iter().all(|c| mapped(c)))
        .min_by_key(Vec::len);
    let Some(conflict) = conflict else {
        return Err(format!(
            "table {} has no unique index on \"{id}\" (alone, or with other entry columns such as the partition key): \
             retries could store an entry twice",
            table.plain()
        ));
    };
    Ok(TableShape {
        conflict_columns: conflict
            .iter()
            .map(|c| Ident::parse(c))
            .collect::<Result<_, _>>()
            .map_err(|e| format!("unique index column {e}"))?,
        column_types,
    })
}
