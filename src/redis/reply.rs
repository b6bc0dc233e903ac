//! Reading Redis replies without trusting them: every parser returns an error for a reply of the wrong
//! shape, never panics. Both RESP2 (arrays of pairs) and RESP3 (maps) shapes are accepted.

use redis::Value;

/// One stream entry as read: its stream id and its fields, or `None` for an entry that was deleted while
/// it was pending (Redis returns its id with no fields).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    pub id: String,
    pub fields: Option<Vec<(Vec<u8>, Vec<u8>)>>,
}

/// The part of `XAUTOCLAIM`'s reply a worker needs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AutoClaim {
    /// Where the next call starts; `0-0` when the pending list was scanned to its end.
    pub cursor: String,
    /// Entries now owned by the caller.
    pub claimed: Vec<Message>,
    /// Ids that were pending but deleted from the stream (Redis 7 drops them from the pending list).
    pub deleted: Vec<String>,
}

/// `XPENDING key group` (the summary form).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PendingSummary {
    /// Entries delivered and not acknowledged.
    pub count: u64,
    /// The smallest pending id.
    pub oldest: Option<String>,
}

/// One group of `XINFO GROUPS key`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GroupInfo {
    pub name: String,
    pub consumers: u64,
    pub pending: u64,
    /// Entries not yet delivered to the group; `None` when Redis cannot tell (after deletions).
    pub lag: Option<u64>,
}

type Parsed<T> = Result<T, String>;

fn bytes(v: &Value) -> Option<&[u8]> {
    match v {
        Value::BulkString(b) => Some(b),
        Value::SimpleString(s) => Some(s.as_bytes()),
        Value::VerbatimString { text, .. } => Some(text.as_bytes()),
        _ => None,
    }
}

fn text(v: &Value) -> Option<String> {
    bytes(v).and_then(|b| std::str::from_utf8(b).ok().map(str::to_owned))
}

fn items(v: &Value) -> Option<&[Value]> {
    match v {
        Value::Array(a) | Value::Set(a) => Some(a),
        _ => None,
    }
}

fn int(v: &Value) -> Option<i64> {
    match v {
        Value::Int(i) => Some(*i),
        _ => text(v)?.parse().ok(),
    }
}

/// Key-value pairs from a RESP3 map or a RESP2 flat array.
fn pairs(v: &Value) -> Option<Vec<(&Value, &Value)>> {
    match v {
        Value::Map(m) => Some(m.iter().map(|(k, v)| (k, v)).collect()),
        Value::Array(a) if a.len() % 2 == 0 => {
            Some(a.chunks_exact(2).map(|c| (&c[0], &c[1])).collect())
        }
        _ => None,
    }
}

fn message(v: &Value) -> Parsed<Message> {
    let parts = items(v).ok_or("a stream entry is not an array")?;
    let [id, fields] = parts else {
        return Err(format!("a stream entry has {} parts, not 2", parts.len()));
    };
    let id = text(id).ok_or("a stream entry's id is not text")?;
    let fields = match fields {
        Value::Nil => None,
        other => {
            let kv = pairs(other).ok_or("a stream entry's fields are not name-value pairs")?;
            let mut out = Vec::with_capacity(kv.len());
            for (k, v) in kv {
                let k = bytes(k).ok_or("a field name is not a string")?;
                let v = bytes(v).ok_or("a field value is not a string")?;
                out.push((k.to_vec(), v.to_vec()));
            }
            Some(out)
        }
    };
    Ok(Message { id, fields })
}

fn messages(v: &Value) -> Parsed<Vec<Message>> {
    match v {
        Value::Nil => Ok(Vec::new()),
        other => items(other)
            .ok_or("stream entries are not an array")?
            .iter()
            .map(message)
            .collect(),
    }
}

/// `XREADGROUP`/`XREAD`: the entries of each stream; empty when the read timed out (a nil reply).
pub fn read_reply(v: &Value) -> Parsed<Vec<(String, Vec<Message>)>> {
    let streams: Vec<(&Value, &Value)> = match v {
        Value::Nil => return Ok(Vec::new()),
        Value::Map(m) => m.iter().map(|(k, v)| (k, v)).collect(),
        Value::Array(a) => a
            .iter()
            .map(|s| match items(s) {
                Some([k, v]) => Ok((k, v)),
                _ => Err("a stream of the reply is not [key, entries]".to_owned()),
            })
            .collect::<Parsed<_>>()?,
        _ => return Err("the read reply is neither nil, an array nor a map".into()),
    };
    streams
        .into_iter()
        .map(|(k, v)| Ok((text(k).ok_or("a stream key is not text")?, messages(v)?)))
        .collect()
}

/// `XAUTOCLAIM key group consumer min-idle start [COUNT n]` (Redis 7: three parts).
pub fn autoclaim_reply(v: &Value) -> Parsed<AutoClaim> {
    let parts = items(v).ok_or("the XAUTOCLAIM reply is not an array")?;
    if parts.len() < 2 {
        return Err("the XAUTOCLAIM reply is too short".into());
    }
    let cursor = text(&parts[0]).ok_or("the XAUTOCLAIM cursor is not text")?;
    let claimed = messages(&parts[1])?;
    let deleted = match parts.get(2) {
        None | Some(Value::Nil) => Vec::new(),
        Some(d) => items(d)
            .ok_or("the deleted ids are not an array")?
            .iter()
            .map(|id| text(id).ok_or_else(|| "a deleted id is not text".to_owned()))
            .collect::<Parsed<_>>()?,
    };
    Ok(AutoClaim {
        cursor,
        claimed,
        deleted,
    })
}

/// `XPENDING key group`.
pub fn pending_reply(v: &Value) -> Parsed<PendingSummary> {
    let parts = items(v).ok_or("the XPENDING reply is not an array")?;
    let count = parts.first().and_then(int).ok_or("no pending count")?;
    let oldest = parts.get(1).and_then(text);
    Ok(PendingSummary {
        count: count.max(0) as u64,
        oldest,
    })
}

/// `XINFO GROUPS key`.
pub fn groups_reply(v: &Value) -> Parsed<Vec<GroupInfo>> {
    let groups = items(v).ok_or("the XINFO GROUPS reply is not an array")?;
    groups
        .iter()
        .map(|g| {
            let mut info = GroupInfo::default();
            for (k, v) in pairs(g).ok_or("a group is not name-value pairs")? {
                match text(k).as_deref() {
                    Some("name") => info.name = text(v).unwrap_or_default(),
                    Some("consumers") => info.consumers = int(v).unwrap_or(0).max(0) as u64,
                    Some("pending") => info.pending = int(v).unwrap_or(0).max(0) as u64,
                    Some("lag") => info.lag = int(v).map(|l| l.max(0) as u64),
                    _ => {}
                }
            }
            Ok(info)
        })
        .collect()
}

/// One consumer of `XINFO CONSUMERS key group`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ConsumerInfo {
    pub name: String,
    pub pending: u64,
    /// Milliseconds since it last read (Redis 7.0 `idle`; Redis 7.2 also has `inactive`, used when given).
    pub idle_ms: u64,
}

/// `XINFO CONSUMERS key group`.
pub fn consumers_reply(v: &Value) -> Parsed<Vec<ConsumerInfo>> {
    let consumers = items(v).ok_or("the XINFO CONSUMERS reply is not an array")?;
    consumers
        .iter()
        .map(|c| {
            let mut info = ConsumerInfo::default();
            let mut inactive = None;
            for (k, v) in pairs(c).ok_or("a consumer is not name-value pairs")? {
                match text(k).as_deref() {
                    Some("name") => info.name = text(v).unwrap_or_default(),
                    Some("pending") => info.pending = int(v).unwrap_or(0).max(0) as u64,
                    Some("idle") => info.idle_ms = int(v).unwrap_or(0).max(0) as u64,
                    Some("inactive") => inactive = int(v),
                    _ => {}
                }
            }
            // `inactive` is -1 for a consumer that never read.
            if let Some(i) = inactive.filter(|i| *i >= 0) {
                info.idle_ms = i as u64;
            }
            Ok(info)
        })
        .collect()
}

/// The milliseconds part of a stream id (`<ms>-<seq>`).
pub fn id_millis(id: &str) -> Option<u64> {
    id.split('-').next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    #[test]
    fn read_replies_in_resp2_and_resp3_shapes() {
        let entry = Value::Array(vec![bulk("1-0"), Value::Array(vec![bulk("a"), bulk("b")])]);
        let deleted = Value::Array(vec![bulk("2-0"), Value::Nil]);
        let resp2 = Value::Array(vec![Value::Array(vec![
            bulk("audit"),
            Value::Array(vec![entry.clone(), deleted.clone()]),
        ])]);
        let resp3 = Value::Map(vec![(bulk("audit"), Value::Array(vec![entry, deleted]))]);
        for v in [resp2, resp3] {
            let r = read_reply(&v).unwrap();
            assert_eq!(r.len(), 1);
            assert_eq!(r[0].0, "audit");
            assert_eq!(
                r[0].1[0].fields.as_deref(),
                Some(&[(b"a".to_vec(), b"b".to_vec())][..])
            );
            assert_eq!(r[0].1[1].fields, None);
        }
        assert!(read_reply(&Value::Nil).unwrap().is_empty());
        assert!(read_reply(&Value::Int(3)).is_err());
        assert!(read_reply(&Value::Array(vec![Value::Int(3)])).is_err());
        let odd = Value::Array(vec![Value::Array(vec![
            bulk("k"),
            Value::Array(vec![Value::Array(vec![
                bulk("1-0"),
                Value::Array(vec![bulk("a")]),
            ])]),
        ])]);
        assert!(read_reply(&odd).is_err());
    }

    #[test]
    fn autoclaim_pending_and_groups() {
        let v = Value::Array(vec![
            bulk("0-0"),
            Value::Array(vec![]),
            Value::Array(vec![bulk("5-1")]),
        ]);
        let c = autoclaim_reply(&v).unwrap();
        assert_eq!((c.cursor.as_str(), c.deleted.len()), ("0-0", 1));
        let p = pending_reply(&Value::Array(vec![
            Value::Int(2),
            bulk("10-0"),
            bulk("11-0"),
            Value::Nil,
        ]))
        .unwrap();
        assert_eq!((p.count, p.oldest.as_deref()), (2, Some("10-0")));
        let empty = pending_reply(&Value::Array(vec![
            Value::Int(0),
            Value::Nil,
            Value::Nil,
            Value::Nil,
        ]))
        .unwrap();
        assert_eq!(empty.oldest, None);
        let g = groups_reply(&Value::Array(vec![Value::Array(vec![
            bulk("name"),
            bulk("w"),
            bulk("consumers"),
            Value::Int(2),
            bulk("pending"),
            Value::Int(5),
            bulk("lag"),
            Value::Nil,
        ])]))
        .unwrap();
        assert_eq!(g[0].name, "w");
        assert_eq!((g[0].consumers, g[0].pending, g[0].lag), (2, 5, None));
        let c = consumers_reply(&Value::Array(vec![Value::Array(vec![
            bulk("name"),
            bulk("w1"),
            bulk("pending"),
            Value::Int(0),
            bulk("idle"),
            Value::Int(5_000),
        ])]))
        .unwrap();
        assert_eq!(
            (c[0].name.as_str(), c[0].pending, c[0].idle_ms),
            ("w1", 0, 5_000)
        );
        assert_eq!(id_millis("1700000000000-3"), Some(1_700_000_000_000));
        assert_eq!(id_millis("x"), None);
    }
}
