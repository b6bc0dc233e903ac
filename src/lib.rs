//! audit-batcher: batched, ordered, idempotent audit-trail writes to PostgreSQL for Node.js.
//!
//! The crate is layered so that each part can be tested on its own:
//! - [`entry`], [`fields`] and [`uuid7`]: what an audit entry is, its fields, how it is checked and
//!   identified;
//! - [`options`]: the configuration, every option's range and default, and [`options::InvalidOption`];
//! - [`batcher`] and [`sink`]: the ordered buffer and its flushes, generic over where batches go;
//! - [`pg`]: the PostgreSQL sink (connection pool, statements, schema);
//! - [`spool`]: the durable local spool (segments on disk, recovery after a crash);
//! - `napi` (private): the JavaScript surface, the only module that knows about Node.
//!
//! `unsafe` code is denied everywhere but in two places: `napi` (the N-API calls napi-rs does not wrap)
//! and `spool/mmap.rs` (memory-mapped segments).
#![deny(unsafe_code)]

pub mod batcher;
pub mod entry;
pub mod fields;
pub mod metrics;
#[allow(unsafe_code)]
mod napi;
pub mod options;
pub mod pg;
pub mod redis;
pub mod sink;
pub mod spool;
pub mod uuid7;
