//! audit-batcher: batched, ordered, idempotent audit-trail writes to PostgreSQL for Node.js.
//!
//! The crate is layered so that each part can be tested on its own:
//! - [`entry`] and [`uuid7`]: what an audit entry is, how it is checked and identified;
//! - [`batcher`] and [`sink`]: the ordered buffer and its flushes, generic over where batches go;
//! - [`pg`]: the PostgreSQL sink (connection pool, statements, schema);
//! - `napi` (private): the JavaScript surface, the only module that knows about Node.

pub mod batcher;
pub mod entry;
pub mod metrics;
mod napi;
pub mod pg;
pub mod redis;
pub mod sink;
pub mod uuid7;
