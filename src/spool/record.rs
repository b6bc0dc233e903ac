//! Record framing and checksums: how one entry is laid out in a segment, and how it is read back.
//!
//! ```text
//! record (little-endian, starts and ends on an 8-byte boundary):
//!   0  u32  RECORD_MAGIC
//!   4  u32  body length in bytes
//!   8  u32  CRC32C of the body
//!  12  u32  CRC32C of bytes 0..12 (the header's own check)
//!  16  body
//!      zero padding to the next multiple of 8
//! body:
//!   0  u64  seq: the batcher's acceptance number
//!   8  [16] the entry's id
//!  24  i64  occurred_at, microseconds since the Unix epoch
//!  32  u8   bit i set when optional text field i (TextField::ALL order) is present
//!  33  [3]  zero
//!  36  6×u32 byte lengths of: action, tenantId, actor, resource, outcome, payload JSON
//!  60  the six texts, back to back, in that order (an absent field has length 0)
//! ```
//!
//! The header checks itself, so a reader that lost its place can look for the next record at each
//! 8-byte boundary without trusting a damaged length.

use crate::entry::{Entry, EntryDraft, TextField, Timestamp};
use crate::uuid7::{Uuid, Uuid7Generator};

/// Marks the start of a record ("ASR1", read as a little-endian u32).
pub const RECORD_MAGIC: u32 = u32::from_le_bytes(*b"ASR1");
/// Bytes of a record header.
pub const HEADER_LEN: usize = 16;
/// Bytes of a body before its texts.
const BODY_FIXED: usize = 60;

/// A decoded record: the batcher's sequence number and the entry as it was logged.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    pub seq: u64,
    pub entry: Entry,
}

/// The texts of an entry in storage order, with their presence.
fn texts(entry: &Entry) -> [Option<&str>; 6] {
    [
        Some(entry.action()),
        entry.text(TextField::TenantId),
        entry.text(TextField::Actor),
        entry.text(TextField::Resource),
        entry.text(TextField::Outcome),
        Some(entry.payload_json()),
    ]
}

/// Bytes the record of `entry` takes in a segment, padding included; `None` when its body would not
/// fit the 32-bit length field.
pub fn encoded_len(entry: &Entry) -> Option<usize> {
    let text: usize = texts(entry).iter().flatten().map(|t| t.len()).sum();
    let body = BODY_FIXED.checked_add(text)?;
    u32::try_from(body).ok()?;
    Some(pad8(HEADER_LEN + body))
}

/// `n` rounded up to a multiple of 8.
pub fn pad8(n: usize) -> usize {
    n.div_ceil(8) * 8
}

/// Writes the record of (`seq`, `entry`) into `out`, which must be exactly [`encoded_len`] bytes long.
/// Every byte of `out` is written (padding included), so `out` need not be zeroed.
pub fn encode_into(out: &mut [u8], seq: u64, entry: &Entry) {
    let texts = texts(entry);
    let (header, body_and_pad) = out.split_at_mut(HEADER_LEN);
    let body_len = BODY_FIXED + texts.iter().flatten().map(|t| t.len()).sum::<usize>();
    let (body, pad) = body_and_pad.split_at_mut(body_len);
    body[0..8].copy_from_slice(&seq.to_le_bytes());
    body[8..24].copy_from_slice(&entry.id().0);
    body[24..32].copy_from_slice(&entry.occurred_at().micros().to_le_bytes());
    let mut present = 0u8;
    for (i, field) in TextField::ALL.iter().enumerate() {
        if entry.text(*field).is_some() {
            present |= 1 << i;
        }
    }
    body[32] = present;
    body[33..36].fill(0);
    let mut at = BODY_FIXED;
    for (i, text) in texts.iter().enumerate() {
        let t = text.unwrap_or("").as_bytes();
        body[36 + 4 * i..40 + 4 * i].copy_from_slice(&(t.len() as u32).to_le_bytes());
        body[at..at + t.len()].copy_from_slice(t);
        at += t.len();
    }
    pad.fill(0);
    header[0..4].copy_from_slice(&RECORD_MAGIC.to_le_bytes());
    header[4..8].copy_from_slice(&(body_len as u32).to_le_bytes());
    header[8..12].copy_from_slice(&crc32c::crc32c(body).to_le_bytes());
    let head_crc = crc32c::crc32c(&header[0..12]);
    header[12..16].copy_from_slice(&head_crc.to_le_bytes());
}

/// What a record header says, once its own checksum holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    pub body_len: u32,
    pub body_crc: u32,
}

impl Header {
    /// Bytes of the whole record, padding included.
    pub fn record_len(self) -> u64 {
        pad8(HEADER_LEN + self.body_len as usize) as u64
    }
}

/// Reads a header; `None` when the magic or the header's checksum is wrong, or the body is shorter than a
/// record's fixed part.
pub fn parse_header(bytes: &[u8; HEADER_LEN]) -> Option<Header> {
    let u32_at =
        |i: usize| u32::from_le_bytes([bytes[i], bytes[i + 1], bytes[i + 2], bytes[i + 3]]);
    if u32_at(0) != RECORD_MAGIC || crc32c::crc32c(&bytes[0..12]) != u32_at(12) {
        return None;
    }
    let body_len = u32_at(4);
    (body_len as usize >= BODY_FIXED).then_some(Header {
        body_len,
        body_crc: u32_at(8),
    })
}

/// Whether `body` matches the checksum its header gives.
pub fn body_matches(header: Header, body: &[u8]) -> bool {
    body.len() == header.body_len as usize && crc32c::crc32c(body) == header.body_crc
}

/// Rebuilds the record from a body whose checksum held. `None` when the body is not a valid entry (text
/// that is not UTF-8, lengths that do not add up, a time out of range, an empty action): bytes that pass
/// the checksum but were not written by this code, which the reader counts as damage.
pub fn decode_body(body: &[u8]) -> Option<Record> {
    let fixed = body.get(..BODY_FIXED)?;
    let u32_at =
        |i: usize| u32::from_le_bytes([fixed[i], fixed[i + 1], fixed[i + 2], fixed[i + 3]]);
    let seq = u64::from_le_bytes(fixed[0..8].try_into().ok()?);
    let id = Uuid(fixed[8..24].try_into().ok()?);
    let micros = i64::from_le_bytes(fixed[24..32].try_into().ok()?);
    let occurred_at = Timestamp::from_micros(micros)?;
    let present = fixed[32];
    if present & !0x0f != 0 {
        return None;
    }
    let mut texts: [&str; 6] = [""; 6];
    let mut at = BODY_FIXED;
    for (i, text) in texts.iter_mut().enumerate() {
        let len = u32_at(36 + 4 * i) as usize;
        let end = at.checked_add(len)?;
        *text = std::str::from_utf8(body.get(at..end)?).ok()?;
        at = end;
    }
    if at != body.len() {
        return None;
    }
    let mut draft = EntryDraft::new(texts[0]);
    for (i, field) in TextField::ALL.iter().enumerate() {
        if present & (1 << i) != 0 {
            draft = draft.with(*field, texts[i + 1]);
        } else if !texts[i + 1].is_empty() {
            return None;
        }
    }
    draft = draft.with_payload_json(texts[5]);
    draft.id = Some(id);
    draft.occurred_at = Some(occurred_at);
    // The id is given, so the generator is never asked for one.
    let entry = draft
        .prepare(occurred_at)
        .ok()?
        .finish(&mut Uuid7Generator::new());
    Some(Record { seq, entry })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::entry::EntryDraft;

    /// An entry of about `size` bytes with every field set, id and time fixed by `n`.
    pub(crate) fn sample_entry(n: u64, size: usize) -> Entry {
        let mut d = EntryDraft::new(format!("action.{n}"))
            .with(TextField::TenantId, "tenant-1")
            .with(TextField::Actor, format!("user:{n}"))
            .with(TextField::Outcome, "ok")
            .with_payload_json(format!(
                "{{\"n\":{n},\"pad\":\"{}\"}}",
                "x".repeat(size.saturating_sub(80))
            ));
        let mut id = [0u8; 16];
        id[8..].copy_from_slice(&n.to_be_bytes());
        id[6] = 0x70;
        d.id = Some(Uuid(id));
        d.occurred_at = Timestamp::from_micros(1_700_000_000_000_000 + n as i64);
        d.prepare(Timestamp::now())
            .unwrap()
            .finish(&mut Uuid7Generator::new())
    }

    fn encode(seq: u64, e: &Entry) -> Vec<u8> {
        let mut buf = vec![0xaa; encoded_len(e).unwrap()];
        encode_into(&mut buf, seq, e);
        buf
    }

    fn decode(buf: &[u8]) -> Option<Record> {
        let h = parse_header(buf.get(..HEADER_LEN)?.try_into().ok()?)?;
        let body = buf.get(HEADER_LEN..HEADER_LEN + h.body_len as usize)?;
        if !body_matches(h, body) {
            return None;
        }
        decode_body(body)
    }

    #[test]
    fn a_record_round_trips_with_id_time_absent_and_empty_fields() {
        let mut d = EntryDraft::new("a").with(TextField::Resource, "");
        d.id = Some(Uuid([7; 16]));
        d.occurred_at = Timestamp::from_micros(-5);
        let e = d
            .prepare(Timestamp::now())
            .unwrap()
            .finish(&mut Uuid7Generator::new());
        let buf = encode(42, &e);
        assert_eq!(buf.len() % 8, 0);
        let r = decode(&buf).unwrap();
        assert_eq!(r.seq, 42);
        assert_eq!(r.entry, e);
        assert_eq!(r.entry.text(TextField::Resource), Some(""));
        assert_eq!(r.entry.text(TextField::Actor), None);
        let full = sample_entry(9, 600);
        assert_eq!(decode(&encode(1, &full)).unwrap().entry, full);
    }

    #[test]
    fn every_single_flipped_bit_is_detected() {
        let e = sample_entry(3, 200);
        let buf = encode(5, &e);
        for i in 0..buf.len() * 8 {
            let mut b = buf.clone();
            b[i / 8] ^= 1 << (i % 8);
            let got = decode(&b);
            // Padding is not covered; a flip there leaves the record intact.
            assert!(got.is_none() || got.unwrap().entry == e, "bit {i}");
        }
    }

    proptest::proptest! {
        #[test]
        fn decoding_garbage_never_panics(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..400)) {
            let _ = decode_body(&bytes);
            if bytes.len() >= HEADER_LEN {
                let _ = parse_header(bytes[..HEADER_LEN].try_into().unwrap());
            }
        }
    }
}
