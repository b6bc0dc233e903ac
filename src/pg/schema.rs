//! SQL text: the insert statement and the default table's definition.

use super::columns::ColumnMap;
use super::encode::ColumnArray;
use super::ident::{Ident, TableName};
use crate::fields::Field;

/// `INSERT INTO <table> (<columns>) SELECT * FROM unnest($1::uuid[], ...)`, followed by
/// `ON CONFLICT (<id>) DO NOTHING` when `conflict` names the conflict target.
///
/// `ON CONFLICT DO NOTHING` on the id (with the partition key, for a partitioned table) makes a write
/// idempotent: resending a batch whose commit was not acknowledged stores each entry once. Without it (for a
/// batch never sent before) the server skips the speculative insertion `ON CONFLICT` costs, in WAL and CPU,
/// and a duplicate id fails the statement instead.
pub fn insert_statement(
    table: &TableName,
    columns: &ColumnMap,
    conflict: Option<&[Ident]>,
) -> String {
    let names: Vec<String> = Field::ALL
        .iter()
        .map(|c| columns.name(*c).to_string())
        .collect();
    let params: Vec<String> = Field::ALL
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let ty = ColumnArray::array_type(*c);
            format!("${}::{}", i + 1, sql_type_name(&ty))
        })
        .collect();
    let on_conflict = match conflict {
        Some(columns) => {
            let columns: Vec<String> = columns.iter().map(Ident::to_string).collect();
            format!(" ON CONFLICT ({}) DO NOTHING", columns.join(", "))
        }
        None => String::new(),
    };
    format!(
        "INSERT INTO {table} ({}) SELECT * FROM unnest({}){on_conflict}",
        names.join(", "),
        params.join(", "),
    )
}

fn sql_type_name(ty: &tokio_postgres::types::Type) -> &'static str {
    use tokio_postgres::types::Type;
    match *ty {
        Type::UUID_ARRAY => "uuid[]",
        Type::TIMESTAMPTZ_ARRAY => "timestamptz[]",
        Type::JSONB_ARRAY => "jsonb[]",
        _ => "text[]",
    }
}

/// The statements that create the default table and its `(tenant_id, occurred_at)` index when missing.
pub fn create_statements(table: &TableName, columns: &ColumnMap) -> Vec<String> {
    let col = |c: Field| columns.name(c).to_string();
    let mut statements = Vec::new();
    if let Some(schema) = &table.schema {
        statements.push(format!("CREATE SCHEMA IF NOT EXISTS {schema}"));
    }
    statements.push(format!(
        "CREATE TABLE IF NOT EXISTS {table} (\n  {} uuid PRIMARY KEY,\n  {} timestamptz NOT NULL,\n  {} text,\n  {} text,\n  {} text NOT NULL,\n  {} text,\n  {} text,\n  {} jsonb NOT NULL DEFAULT '{{}}'\n)",
        col(Field::Id),
        col(Field::OccurredAt),
        col(Field::TenantId),
        col(Field::Actor),
        col(Field::Action),
        col(Field::Resource),
        col(Field::Outcome),
        col(Field::Payload),
    ));
    let mut index = format!(
        "{}_{}_{}_idx",
        table.name.as_str(),
        columns.name(Field::TenantId).as_str(),
        columns.name(Field::OccurredAt).as_str()
    );
    index.truncate(63); // identifiers are ASCII, so this cuts on a character boundary
    statements.push(format!(
        "CREATE INDEX IF NOT EXISTS \"{index}\" ON {table} ({}, {})",
        col(Field::TenantId),
        col(Field::OccurredAt)
    ));
    statements
}

/// The dead-letter table: one row per entry the target table refused, with the reason.
pub fn create_dead_letter_statement(table: &TableName) -> String {
    format!(
        "CREATE TABLE IF NOT EXISTS {table} (\n  id uuid PRIMARY KEY,\n  failed_at timestamptz NOT NULL DEFAULT now(),\n  sqlstate text,\n  error text NOT NULL,\n  entry jsonb NOT NULL\n)"
    )
}

/// Inserts one dead letter; a second insert of the same entry keeps the first.
pub fn dead_letter_statement(table: &TableName) -> String {
    format!(
        "INSERT INTO {table} (id, sqlstate, error, entry) VALUES ($1::text::uuid, $2, $3, $4) ON CONFLICT (id) DO NOTHING"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn insert_names_every_column_quoted_and_is_idempotent() {
        let t = TableName::parse("audit.events").unwrap();
        let m = ColumnMap::with_renames([("actor", "userId")]).unwrap();
        let sql = insert_statement(&t, &m, Some(&[Ident::parse("id").unwrap()]));
        assert_eq!(
            sql,
            "INSERT INTO \"audit\".\"events\" (\"id\", \"occurred_at\", \"tenant_id\", \"userId\", \"action\", \
             \"resource\", \"outcome\", \"payload\") SELECT * FROM unnest($1::uuid[], $2::timestamptz[], \
             $3::text[], $4::text[], $5::text[], $6::text[], $7::text[], $8::jsonb[]) ON CONFLICT (\"id\") DO NOTHING"
        );
    }

    #[test]
    fn schema_statements_create_schema_table_and_index() {
        let t = TableName::parse("audit.events").unwrap();
        let s = create_statements(&t, &ColumnMap::default());
        assert_eq!(s.len(), 3);
        assert!(s[0].starts_with("CREATE SCHEMA IF NOT EXISTS \"audit\""));
        assert!(
            s[1].contains("\"payload\" jsonb NOT NULL DEFAULT '{}'"),
            "{}",
            s[1]
        );
        assert!(
            s[2].contains("\"events_tenant_id_occurred_at_idx\""),
            "{}",
            s[2]
        );
    }
}
