//! Binary encoding of a batch: as one array parameter per column, for `INSERT ... SELECT FROM unnest(...)`,
//! and as the rows of a binary `COPY ... FROM STDIN (FORMAT binary)` (see [`super::copy`]).
//!
//! Sending columns as arrays keeps the statement text and its parameter count fixed (eight), whatever the
//! batch size: no 65535-parameter ceiling, and nothing for the server to re-plan per batch size.
//! Both forms write each value the same way ([`value_to_sql`]): the binary format of `uuid`,
//! `timestamptz`, `text` and `jsonb` (or `json`, for COPY into a `json` column).

use std::error::Error;
use std::fmt;

use bytes::{BufMut, BytesMut};
use postgres_protocol::types::{
    array_to_sql, text_to_sql, timestamp_to_sql, uuid_to_sql, ArrayDimension,
};
use tokio_postgres::types::{to_sql_checked, IsNull, ToSql, Type};

use crate::entry::{Entry, TextField};
use crate::fields::Field;

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
/// left out, and the payload as stored (`payload`) or, when `payload_as_text`, as a JSON string
/// (`payloadText`) — the form that stores even a payload the server refused to parse.
pub fn entry_json(e: &Entry, payload_as_text: bool) -> String {
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
    if payload_as_text {
        out.push_str(",\"payloadText\":");
        out.push_str(&quote(e.payload_json()));
    } else {
        out.push_str(",\"payload\":");
        out.push_str(e.payload_json());
    }
    out.push('}');
    out
}

/// One column of a batch, encoded as a PostgreSQL array.
#[derive(Debug)]
pub struct ColumnArray<'a> {
    pub batch: &'a [Entry],
    pub column: Field,
}

impl ColumnArray<'_> {
    /// The array type this column is sent as.
    pub fn array_type(column: Field) -> Type {
        match column {
            Field::Id => Type::UUID_ARRAY,
            Field::OccurredAt => Type::TIMESTAMPTZ_ARRAY,
            Field::Payload => Type::JSONB_ARRAY,
            _ => Type::TEXT_ARRAY,
        }
    }
}

/// The type the payload is written as: `jsonb` (the arrays, and COPY into a `jsonb` column) or `json`
/// (COPY into a `json` column, whose binary form is the bare text).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PayloadType {
    Jsonb,
    Json,
}

/// Writes one field of `e` in PostgreSQL's binary format, without a length prefix; an absent optional
/// text field writes nothing and returns `IsNull::Yes`.
fn value_to_sql(
    e: &Entry,
    column: Field,
    payload: PayloadType,
    buf: &mut BytesMut,
) -> postgres_protocol::IsNull {
    match column {
        Field::Id => uuid_to_sql(e.id().0, buf),
        Field::OccurredAt => timestamp_to_sql(e.occurred_at().micros() - PG_EPOCH_OFFSET_US, buf),
        Field::Action => text_to_sql(e.action(), buf),
        Field::Payload => {
            if payload == PayloadType::Jsonb {
                buf.put_u8(1); // jsonb binary format version
            }
            buf.put_slice(e.payload_json().as_bytes());
        }
        other => match other.text().and_then(|f| e.text(f)) {
            Some(v) => text_to_sql(v, buf),
            None => return postgres_protocol::IsNull::Yes,
        },
    }
    postgres_protocol::IsNull::No
}

/// The start of binary COPY data: the 11-byte signature, then flags (0: no OIDs) and the header
/// extension length (0), both `i32`.
pub const COPY_HEADER: &[u8; 19] = b"PGCOPY\n\xff\r\n\0\0\0\0\0\0\0\0\0";

/// The end of binary COPY data: a field count of -1.
pub const COPY_TRAILER: &[u8; 2] = &[0xff, 0xff];

/// A COPY row's field count, as the `i16` the format gives it.
const COPY_FIELD_COUNT: i16 = {
    assert!(Field::ALL.len() <= i16::MAX as usize);
    Field::ALL.len() as i16
};

/// A value longer than PostgreSQL's wire format can carry: a value's length is an `i32` there, so it
/// holds at most `i32::MAX` bytes. (`maxEntryBytes` keeps entries far below that; this is the check that
/// makes a longer one an error rather than a length that wraps.)
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ValueTooLong {
    pub column: Field,
    /// The value's length in bytes.
    pub bytes: usize,
}

impl fmt::Display for ValueTooLong {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "the {} value is {} bytes long, more than the {} bytes a PostgreSQL value can hold",
            self.column.js_name(),
            self.bytes,
            i32::MAX
        )
    }
}

impl Error for ValueTooLong {}

/// `bytes` as the `i32` length the wire format carries, or the error saying it does not fit.
fn wire_length(column: Field, bytes: usize) -> Result<i32, ValueTooLong> {
    i32::try_from(bytes).map_err(|_| ValueTooLong { column, bytes })
}

/// Appends `e` as one binary COPY row: the field count (`i16`), then each column of [`Field::ALL`], in
/// order, as an `i32` length (-1 for NULL) followed by that many bytes. On error `buf` is left as it was.
pub fn copy_row(e: &Entry, payload: PayloadType, buf: &mut BytesMut) -> Result<(), ValueTooLong> {
    let row_start = buf.len();
    buf.put_i16(COPY_FIELD_COUNT);
    for column in Field::ALL {
        let at = buf.len();
        buf.put_i32(0);
        let len = match value_to_sql(e, column, payload, buf) {
            postgres_protocol::IsNull::Yes => -1,
            postgres_protocol::IsNull::No => match wire_length(column, buf.len() - at - 4) {
                Ok(len) => len,
                Err(e) => {
                    buf.truncate(row_start);
                    return Err(e);
                }
            },
        };
        buf[at..at + 4].copy_from_slice(&len.to_be_bytes());
    }
    Ok(())
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
            |e, buf| Ok(value_to_sql(e, column, PayloadType::Jsonb, buf)),
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

#[cfg(test)]
mod tests {
    use postgres_protocol::types::{array_from_sql, text_from_sql};
    use proptest::prelude::*;

    use super::*;
    use crate::entry::{EntryDraft, Timestamp};
    use crate::uuid7::{Uuid, Uuid7Generator};

    #[test]
    fn a_copy_row_is_the_field_count_then_each_column_as_length_and_bytes() {
        let mut d = EntryDraft::new("tool.call")
            .with(TextField::Actor, "u:é")
            .with_payload_json("{\"a\":1}");
        d.id = Uuid::parse("01932c07-8f3a-7c3e-9b1d-3f0a2c4e5d6f");
        // 2000-01-01T00:00:01.000002Z: 1 000 002 µs after PostgreSQL's epoch.
        d.occurred_at = Timestamp::from_micros(PG_EPOCH_OFFSET_US + 1_000_002);
        let e = d
            .prepare(Timestamp::now())
            .unwrap()
            .finish(&mut Uuid7Generator::new());

        let mut expected: Vec<u8> = vec![0, 8]; // eight fields
        expected.extend([0, 0, 0, 16]);
        expected.extend(e.id().0);
        expected.extend([0, 0, 0, 8]);
        expected.extend(1_000_002i64.to_be_bytes());
        expected.extend([0xff; 4]); // tenant_id: NULL
        expected.extend([0, 0, 0, 4]);
        expected.extend("u:é".as_bytes());
        expected.extend([0, 0, 0, 9]);
        expected.extend(b"tool.call");
        expected.extend([0xff; 4]); // resource
        expected.extend([0xff; 4]); // outcome
        let mut as_json = expected.clone();
        expected.extend([0, 0, 0, 8, 1]); // jsonb: version 1, then the text
        expected.extend(b"{\"a\":1}");
        as_json.extend([0, 0, 0, 7]); // json: the text alone
        as_json.extend(b"{\"a\":1}");

        let mut buf = BytesMut::new();
        copy_row(&e, PayloadType::Jsonb, &mut buf).unwrap();
        assert_eq!(&buf[..], &expected[..]);
        buf.clear();
        copy_row(&e, PayloadType::Json, &mut buf).unwrap();
        assert_eq!(&buf[..], &as_json[..]);
    }

    #[test]
    fn a_length_beyond_i32_is_an_error_not_a_wrapped_length() {
        assert_eq!(wire_length(Field::Action, 0), Ok(0));
        assert_eq!(wire_length(Field::Action, 2_147_483_647), Ok(i32::MAX));
        for bytes in [2_147_483_648usize, usize::MAX] {
            let err = wire_length(Field::Payload, bytes).unwrap_err();
            assert_eq!(
                err,
                ValueTooLong {
                    column: Field::Payload,
                    bytes
                }
            );
            assert_eq!(
                err.to_string(),
                format!(
                    "the payload value is {bytes} bytes long, more than the 2147483647 bytes a PostgreSQL value can hold"
                )
            );
        }
    }

    #[test]
    fn copy_header_and_trailer_are_the_binary_format() {
        let mut header = b"PGCOPY\n".to_vec();
        header.extend([0xff, b'\r', b'\n', 0]);
        header.extend(0i32.to_be_bytes()); // flags
        header.extend(0i32.to_be_bytes()); // header extension length
        assert_eq!(&COPY_HEADER[..], &header[..]);
        assert_eq!(&COPY_TRAILER[..], &(-1i16).to_be_bytes()[..]);
    }

    proptest! {
        #[test]
        fn any_batch_encodes_to_arrays_that_decode_to_the_same_values(
            rows in prop::collection::vec((".+", proptest::option::of(any::<String>())), 1..40)
        ) {
            let mut ids = Uuid7Generator::new();
            let batch: Vec<Entry> = rows
                .iter()
                .map(|(action, actor)| {
                    let mut d = EntryDraft::new(action);
                    if let Some(a) = actor { d = d.with(TextField::Actor, a); }
                    d.prepare(Timestamp::now()).unwrap().finish(&mut ids)
                })
                .collect();
            for column in Field::ALL {
                let mut buf = BytesMut::new();
                let param = ColumnArray { batch: &batch, column };
                param.to_sql(&ColumnArray::array_type(column), &mut buf).unwrap();
                let array = array_from_sql(&buf).unwrap();
                let mut values = array.values();
                let mut n = 0;
                while let Some(v) = fallible_iterator::FallibleIterator::next(&mut values).unwrap() {
                    let e = &batch[n];
                    match column {
                        Field::Action => prop_assert_eq!(text_from_sql(v.unwrap()).unwrap(), e.action()),
                        Field::Actor => prop_assert_eq!(v.map(|b| text_from_sql(b).unwrap()), e.text(TextField::Actor)),
                        Field::Id => prop_assert_eq!(v.unwrap(), &e.id().0[..]),
                        Field::Payload => prop_assert_eq!(&v.unwrap()[1..], e.payload_json().as_bytes()),
                        _ => {}
                    }
                    n += 1;
                }
                prop_assert_eq!(n, batch.len());
            }
        }
    }
}
