//! Hand-off through Redis Streams: app instances add entries to a stream ([`StreamSink`]), and any number
//! of [`Worker`]s, in a consumer group, write them to PostgreSQL.
//!
//! - [`codec`]: one stream entry per audit entry, and back (the stream format is documented there);
//! - [`shard`]: which stream an entry goes to (`shards: N` spreads tenants over N streams);
//! - [`conn`]: connections (one server or a Cluster) that reconnect by themselves;
//! - [`producer`]: the [`StreamSink`], a [`crate::sink::Sink`] that adds each batch in one round trip;
//! - [`worker`]: the [`Worker`] and its settings; each shard runs a loop (`shard_loop`) of a reader
//!   (`XREADGROUP`, `XAUTOCLAIM`) and a writer (through the PostgreSQL sink, `XACK` after the commit);
//! - [`reply`]: reading Redis replies without trusting them (no panic on any reply);
//! - [`stats`]: what a worker reports, and its Prometheus text.
//!
//! # Design
//! A producer is an ordinary [`crate::batcher::Batcher`] whose sink is a [`StreamSink`]: `log()` buffers,
//! a flush sends the batch as one pipeline of `XADD`s (plus `XLEN`s, so the producer knows the stream's
//! length and can apply a bound). Each audit entry is one stream entry, its fields named as in the JS API.
//!
//! A worker joins a consumer group (created from the start of the stream when missing) and runs one loop
//! per shard: `XREADGROUP ... COUNT maxBatchRows BLOCK` on a connection of its own (a blocking read would
//! stall a multiplexed connection), decode, write through a `Batcher<PgSink>` (COPY or INSERT ... ON
//! CONFLICT (id) DO NOTHING, poison-row bisection, dead-letter table), then `MULTI; XACK; XDEL; EXEC`. The
//! next read runs while the batch in hand is written. Every `claimInterval` it scans the group's pending
//! list with `XAUTOCLAIM` for entries idle longer than `claimIdle` (a worker that died) and writes them.
//!
//! # Guarantees
//! - Every entry in a stream reaches the table once: acknowledged only after its commit (or its
//!   dead-lettering); entries held by a worker that died are claimed by another after `claimIdle`; the
//!   duplicates that a retried `XADD` pipeline or a claim can cause are dropped by `ON CONFLICT (id)`.
//! - Entries leave a stream only once acknowledged: `XDEL` of exactly the acknowledged ids, in the same
//!   transaction as the `XACK`. No `MAXLEN`/`MINID` trimming anywhere, so nothing unread is ever trimmed
//!   (Redis 7.0 has no `ACKED` trim option; `XDEL` is what it offers). A consequence: one consumer group per
//!   stream (a second group would lose the entries the first deletes).
//! - An undecodable stream entry is dead-lettered (a synthetic entry holding its raw fields) and
//!   acknowledged; it never blocks the stream.
//! - PostgreSQL down: nothing is acknowledged, the batch in hand is retried with backoff, the stream grows
//!   (within the producers' `maxLength`). Redis down: producers keep their entries buffered and retry;
//!   workers retry reads and acknowledgements with backoff on connections that reconnect by themselves.
//! - Visible: stream length, unacknowledged count, oldest unacknowledged age, consumers, lag, and the
//!   worker's counters in [`Worker::stats`] / [`WorkerStats::metrics_text`]; on the producer's side, the
//!   length learnt with each write, and a listener called once per crossing of
//!   [`StreamConfig::high_water_length`] ([`StreamSink::on_high_water`]).
//! - Critical entries: a JavaScript producer given a `connectionString` too writes its critical entries
//!   and `write()` straight to PostgreSQL, through a second batcher over the PostgreSQL sink; they are
//!   ordered among themselves, not with the stream's entries.
//!
//! # Limits
//! - Durability is Redis's: with AOF `appendfsync everysec` a Redis crash can lose about a second of
//!   acknowledged `XADD`s; replication is asynchronous. It is not more durable than direct writes.
//! - A batch in hand for longer than `claimIdle` (a PostgreSQL outage longer than that) may be claimed by
//!   another worker and written by both: harmless (`ON CONFLICT`), but wasted work; keep `claimIdle` well
//!   above a statement's duration.
//! - Order holds within one stream (one shard) as added; a claimed batch is written after newer entries.
//!
//! # When to choose it over direct writes
//! When many app instances would each hold PostgreSQL connections (the hand-off caps them at the worker
//! pool), when the request path must not depend on PostgreSQL being up, or when a queue that several
//! services already watch is wanted. Direct writes remain simpler, have one moving part less, and are as
//! durable.

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
