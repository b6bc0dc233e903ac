//! Binary encoding of a batch as one array parameter per column, for `INSERT ... SELECT FROM unnest(...)`.
//!
//! Sending columns as arrays keeps the statement text and its parameter count fixed (eight), whatever the
//! batch size: no 65535-parameter ceiling, and nothing for the server to re-plan per batch size.

use std::error::Error;

use bytes::{BufMut, BytesMut};
use postgres_protocol::types::{
    array_to_sql, text_to_sql, timestamp_to_sql, uuid_to_sql, ArrayDimension,
};
use tokio_postgres::types::{to_sql_checked, IsNull, ToSql, Type};

use super::columns::Column;
use crate::entry::{Entry, TextField};

/// Microseconds from the Unix epoch to PostgreSQL's epoch, 2000-01-01T00:00:00Z.
const PG_EPOCH_OFFSET_US: i64 = 946_684_800_000_000;

/// JSON text sent as `jsonb` without parsing it again (it is valid JSON by construction).
#[derive(Debug)]
pub struct JsonText<'a>(pub &'a str);

impl ToSql for JsonText<'_> {
    fn to_sql(&self, _: &Type, out: &mut BytesMut) -> Result<IsNull, Box<dyn Error + Sync + Send>> {
        out.put_u8(1); // jsonb binary format version
        out.put_slice(self.0.as_bytes());
        Ok(IsNull::No)
    }

    fn accepts(ty: &Type) -> bool {
        *ty == Type::JSONB
    }

    to_sql_checked!();
}

/// An entry as one JSON object, as the dead-letter table keeps it: the API's field names, absent fields
/// left out, the payload as stored.
pub fn entry_json(e: &Entry) -> String {
    let quote = |s: &str| serde_json::to_string(s).unwrap_or_else(|_| "\"\"".to_owned());
    let mut out = format!(
        "{{\"id\":\"{}\",\"occurredAt\":\"{}\",\"action\":{}",
        e.id(),
        e.occurred_at(),
        quote(e.action())
    );
    for field in TextField::ALL {
        if let Some(v) = e.text(field) {
            out.push_str(&format!(",\"{}\":{}", field.js_name(), quote(v)));
        }
    }
    out.push_str(",\"payload\":");
    out.push_str(e.payload_json());
    out.push('}');
    out
}

/// One column of a batch, encoded as a PostgreSQL array.
#[derive(Debug)]
pub struct ColumnArray<'a> {
    pub batch: &'a [Entry],
    pub column: Column,
}

impl ColumnArray<'_> {
    /// The array type this column is sent as.
    pub fn array_type(column: Column) -> Type {
        match column {
            Column::Id => Type::UUID_ARRAY,
            Column::OccurredAt => Type::TIMESTAMPTZ_ARRAY,
            Column::Payload => Type::JSONB_ARRAY,
            _ => Type::TEXT_ARRAY,
        }
    }
}

fn text_field(column: Column) -> Option<TextField> {
    match column {
        Column::TenantId => Some(TextField::TenantId),
        Column::Actor => Some(TextField::Actor),
        Column::Resource => Some(TextField::Resource),
        Column::Outcome => Some(TextField::Outcome),
        _ => None,
    }
}

impl ToSql for ColumnArray<'_> {
    fn to_sql(
        &self,
        ty: &Type,
        out: &mut BytesMut,
    ) -> Result<IsNull, Box<dyn Error + Sync + Send>> {
        let element = match ty.kind() {
            tokio_postgres::types::Kind::Array(element) => element.oid(),
            _ => return Err(format!("{ty} is not an array type").into()),
        };
        let len = i32::try_from(self.batch.len())?;
        let dims = [ArrayDimension {
            len,
            lower_bound: 1,
        }];
        let column = self.column;
        array_to_sql(
            dims,
            element,
            self.batch.iter(),
            |e, buf| {
                match column {
                    Column::Id => uuid_to_sql(e.id().0, buf),
                    Column::OccurredAt => {
                        timestamp_to_sql(e.occurred_at().micros() - PG_EPOCH_OFFSET_US, buf)
                    }
                    Column::Action => text_to_sql(e.action(), buf),
                    Column::Payload => {
                        buf.put_u8(1); // jsonb binary format version
                        buf.put_slice(e.payload_json().as_bytes());
                    }
                    other => match text_field(other).and_then(|f| e.text(f)) {
                        Some(v) => text_to_sql(v, buf),
                        None => return Ok(postgres_protocol::IsNull::Yes),
                    },
                }
                Ok(postgres_protocol::IsNull::No)
            },
            out,
        )?;
        Ok(IsNull::No)
    }

    fn accepts(ty: &Type) -> bool {
        [
            Type::UUID_ARRAY,
            Type::TIMESTAMPTZ_ARRAY,
            Type::TEXT_ARRAY,
            Type::JSONB_ARRAY,
        ]
        .contains(ty)
    }

    to_sql_checked!();
}
