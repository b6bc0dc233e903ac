//! Where batches go: the [`Sink`] contract, the in-memory sink, and the choice between the sinks.

mod any;
mod memory;

pub use self::any::{AnySink, SinkConfig};
pub use self::memory::MemorySink;

use std::fmt;
use std::future::Future;
use std::pin::Pin;

use crate::entry::Entry;

/// Whether trying the same write again can succeed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum FailureKind {
    /// The connection, the server, a lock or a timeout: the same batch may succeed later. Retried, never
    /// dead-lettered.
    #[default]
    Transient,
    /// Some row breaks a rule of the table (a constraint, a type, a trigger): the same rows will fail the
    /// same way. The batcher splits the batch to find them and dead-letters each.
    Rejected,
}

/// Why a batch could not be written. Its text never holds a password.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WriteError {
    /// What went wrong, free of secrets.
    pub message: String,
    /// PostgreSQL's SQLSTATE, when the server gave one.
    pub sqlstate: Option<String>,
    pub kind: FailureKind,
}

impl WriteError {
    /// A transient failure.
    pub fn new(message: impl Into<String>) -> Self {
        WriteError {
            message: message.into(),
            sqlstate: None,
            kind: FailureKind::Transient,
        }
    }

    /// A failure caused by rows the table refuses.
    pub fn rejected(message: impl Into<String>, sqlstate: Option<String>) -> Self {
        WriteError {
            message: message.into(),
            sqlstate,
            kind: FailureKind::Rejected,
        }
    }
}

impl fmt::Display for WriteError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.sqlstate {
            Some(code) => write!(f, "{} (SQLSTATE {code})", self.message),
            None => f.write_str(&self.message),
        }
    }
}

impl std::error::Error for WriteError {}

/// A batch a sink has written but not yet made durable nor visible ([`Sink::stage_new`]): [`Staged::commit`]
/// makes it so; dropped without committing, it is undone, and nothing of it is ever stored.
#[must_use = "a staged batch is undone unless committed"]
pub struct Staged(Box<dyn FnOnce() -> CommitFuture + Send>);

/// What [`Staged::commit`] waits for.
pub type CommitFuture = Pin<Box<dyn Future<Output = Result<(), WriteError>> + Send>>;

impl Staged {
    /// A staged batch that `commit` commits. Whatever `commit` holds (a connection inside a transaction)
    /// must undo the batch when dropped without being called.
    pub fn new(commit: impl FnOnce() -> CommitFuture + Send + 'static) -> Staged {
        Staged(Box::new(commit))
    }

    /// Makes the batch durable. On `Err` the batch may or may not be stored (a lost reply), as with
    /// [`Sink::write`].
    pub async fn commit(self) -> Result<(), WriteError> {
        (self.0)().await
    }
}

/// A destination for batches of entries.
///
/// The batcher calls [`Sink::write`] with one batch at a time, oldest entries first, and never two at once;
/// a sink that can stage ([`Sink::can_stage`]) may be given a new batch through [`Sink::stage_new`] while
/// the one before it is staged or committing, and the batcher commits them in order.
pub trait Sink: Send + Sync + 'static {
    /// Stores `batch` atomically, in order: when it returns `Ok`, every entry is durable; when it returns
    /// `Err`, the batch may or may not have been stored (a lost reply), and the batcher will send the same
    /// entries again. A sink must store an entry whose id it already holds only once.
    fn write(&self, batch: &[Entry]) -> impl Future<Output = Result<(), WriteError>> + Send;

    /// [`Sink::write`] for a batch the batcher has never sent before, in any attempt: no entry of it can be
    /// in the sink yet (unless the caller supplied an id it already holds), so a sink may take a faster
    /// path that does not skip duplicates, falling back to `write` when that path fails. Same guarantees
    /// as `write`; by default it is `write`.
    fn write_new(&self, batch: &[Entry]) -> impl Future<Output = Result<(), WriteError>> + Send {
        self.write(batch)
    }

    /// Whether [`Sink::stage_new`] can take a new batch of `rows` entries, beside another one staged:
    /// false by default, and then the batcher writes one batch at a time.
    fn can_stage(&self, _rows: usize) -> bool {
        false
    }

    /// [`Sink::write_new`] without its commit, so that writing one batch can overlap committing (or
    /// writing) the one before: on `Ok` the batch is stored but not durable nor visible until
    /// [`Staged::commit`], and undone if the `Staged` is dropped. At most two batches are staged at a time
    /// (one of them possibly committing); the batcher commits a batch only once the one before it is
    /// committed, and drops it, undone, when that commit fails, so the order holds. A batch whose stage
    /// failed is written again through `write`. Called only when [`Sink::can_stage`] said yes; by default
    /// it fails.
    fn stage_new(
        &self,
        _batch: &[Entry],
    ) -> impl Future<Output = Result<Staged, WriteError>> + Send {
        std::future::ready(Err(WriteError::new("this sink does not stage batches")))
    }

    /// Stores an entry the table refused, with the reason, in a dead-letter place. Like `write`, storing
    /// the same entry twice must keep it once.
    fn dead_letter(
        &self,
        entry: &Entry,
        cause: &WriteError,
    ) -> impl Future<Output = Result<(), WriteError>> + Send;

    /// Releases the sink's resources (connections); later writes fail.
    fn close(&self) -> impl Future<Output = ()> + Send;

    /// Failed attempts the sink recovered from inside its writes since the last call (a fast path that
    /// failed and was redone another way within the same `write`), oldest first, so that every failed
    /// attempt is counted and reported even when the write itself succeeded. Called by the batcher after
    /// each write; a sink that never retries inside a write keeps the default.
    fn take_recovered_failures(&self) -> Vec<WriteError> {
        Vec::new()
    }
}
