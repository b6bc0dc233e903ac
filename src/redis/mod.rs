//! Hand-off through Redis Streams: app instances add entries to a stream ([`StreamSink`]), and any number
//! of [`Worker`]s, in a consumer group, write them to PostgreSQL.
//!
//! - [`codec`]: one stream entry per audit entry, and back;
//! - [`shard`]: which stream an entry goes to (`shards: N` spreads tenants over N streams);
//! - [`conn`]: connections (one server or a Cluster) that reconnect by themselves;
//! - [`producer`]: the [`StreamSink`], a [`crate::sink::Sink`] that adds each batch in one round trip;
//! - [`worker`]: the [`Worker`] and its settings; each shard runs a loop (`shard_loop`) of a reader
//!   (`XREADGROUP`, `XAUTOCLAIM`) and a writer (through the PostgreSQL sink, `XACK` after the commit);
//! - [`reply`]: reading Redis replies without trusting them (no panic on any reply).
//!
//! Guarantees of the whole: an entry in a stream reaches the table once (workers acknowledge only after the
//! commit, entries of a dead worker are claimed by another, `ON CONFLICT (id) DO NOTHING` drops the
//! duplicates that a retry or a claim can cause), and leaves the stream only once acknowledged (XDEL of
//! exactly the acknowledged entries, in the same MULTI as the XACK; never MAXLEN or MINID trimming).

pub mod codec;
pub mod conn;
pub mod producer;
mod reader;
pub mod reply;
pub mod shard;
mod shard_loop;
pub mod stats;
pub mod worker;
mod writer;

#[cfg(test)]
mod test_server;
#[cfg(test)]
mod tests;

pub use self::codec::{decode, encode_fields, DecodeError};
pub use self::conn::{RedisConfig, RedisConn};
pub use self::producer::{StreamConfig, StreamSink};
pub use self::stats::WorkerStats;
pub use self::worker::{Worker, WorkerConfig};
