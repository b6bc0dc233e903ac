//! The in-memory sink, for users' own tests.

use std::collections::HashSet;

use parking_lot::Mutex;

use super::{Sink, WriteError};
use crate::entry::Entry;
use crate::uuid7::Uuid;

/// Keeps written entries in memory, for users' own test suites: same batching, no database.
#[derive(Default)]
pub struct MemorySink {
    inner: Mutex<MemoryInner>,
}

#[derive(Default)]
struct MemoryInner {
    entries: Vec<Entry>,
    ids: HashSet<Uuid>,
    dead: Vec<(Entry, WriteError)>,
}

impl MemorySink {
    pub fn new() -> Self {
        Self::default()
    }

    /// Copies of the entries written so far, in write order; an id written twice appears once.
    pub fn entries(&self) -> Vec<Entry> {
        self.inner.lock().entries.clone()
    }

    /// Entries dead-lettered so far, with the reason, in order.
    pub fn dead_letters(&self) -> Vec<(Entry, WriteError)> {
        self.inner.lock().dead.clone()
    }
}

impl Sink for MemorySink {
    async fn write(&self, batch: &[Entry]) -> Result<(), WriteError> {
        let mut inner = self.inner.lock();
        for entry in batch {
            if inner.ids.insert(entry.id()) {
                inner.entries.push(entry.clone());
            }
        }
        Ok(())
    }

    async fn dead_letter(&self, entry: &Entry, cause: &WriteError) -> Result<(), WriteError> {
        let mut inner = self.inner.lock();
        if !inner.dead.iter().any(|(e, _)| e.id() == entry.id()) {
            inner.dead.push((entry.clone(), cause.clone()));
        }
        Ok(())
    }

    async fn close(&self) {}
}
