//! The sink a batcher was configured with, behind one type.

use super::{MemorySink, Sink, Staged, WriteError};
use crate::entry::Entry;
use crate::options::InvalidOption;
use crate::pg::{PgSettings, PgSink};
use crate::redis::{StreamConfig, StreamSink};

/// Where the entries of a batcher go, as configured.
#[derive(Clone, Debug)]
pub enum SinkConfig {
    /// A PostgreSQL table.
    Postgres(Box<PgSettings>),
    /// Memory, for users' own tests.
    Memory,
    /// Redis streams, for workers to write to PostgreSQL (see [`crate::redis`]).
    Redis(Box<StreamConfig>),
}

/// One of the sinks, chosen at construction; forwards every call of the [`Sink`] contract to it.
pub enum AnySink {
    Postgres(Box<PgSink>),
    Memory(MemorySink),
    Redis(Box<StreamSink>),
}

impl AnySink {
    /// Makes the configured sink. Nothing is connected yet; the error names the option at fault.
    pub fn new(config: SinkConfig) -> Result<AnySink, InvalidOption> {
        Ok(match config {
            SinkConfig::Memory => AnySink::Memory(MemorySink::new()),
            SinkConfig::Postgres(settings) => AnySink::Postgres(Box::new(
                PgSink::new(*settings)
                    .map_err(|(option, reason)| InvalidOption::new(option, reason))?,
            )),
            SinkConfig::Redis(config) => {
                AnySink::Redis(Box::new(StreamSink::new(*config).map_err(
                    |(option, reason)| InvalidOption::new(format!("redis.{option}"), reason),
                )?))
            }
        })
    }
}

impl Sink for AnySink {
    async fn write(&self, batch: &[Entry]) -> Result<(), WriteError> {
        match self {
            AnySink::Postgres(s) => s.write(batch).await,
            AnySink::Memory(s) => s.write(batch).await,
            AnySink::Redis(s) => s.write(batch).await,
        }
    }

    async fn write_new(&self, batch: &[Entry]) -> Result<(), WriteError> {
        match self {
            AnySink::Postgres(s) => s.write_new(batch).await,
            AnySink::Memory(s) => s.write_new(batch).await,
            AnySink::Redis(s) => s.write_new(batch).await,
        }
    }

    fn can_stage(&self, rows: usize) -> bool {
        match self {
            AnySink::Postgres(s) => s.can_stage(rows),
            AnySink::Memory(s) => s.can_stage(rows),
            AnySink::Redis(s) => s.can_stage(rows),
        }
    }

    async fn stage_new(&self, batch: &[Entry]) -> Result<Staged, WriteError> {
        match self {
            AnySink::Postgres(s) => s.stage_new(batch).await,
            AnySink::Memory(s) => s.stage_new(batch).await,
            AnySink::Redis(s) => s.stage_new(batch).await,
        }
    }

    async fn dead_letter(&self, entry: &Entry, cause: &WriteError) -> Result<(), WriteError> {
        match self {
            AnySink::Postgres(s) => s.dead_letter(entry, cause).await,
            AnySink::Memory(s) => s.dead_letter(entry, cause).await,
            AnySink::Redis(s) => s.dead_letter(entry, cause).await,
        }
    }

    async fn close(&self) {
        match self {
            AnySink::Postgres(s) => s.close().await,
            AnySink::Memory(s) => s.close().await,
            AnySink::Redis(s) => s.close().await,
        }
    }

    fn take_recovered_failures(&self) -> Vec<WriteError> {
        match self {
            AnySink::Postgres(s) => s.take_recovered_failures(),
            AnySink::Memory(s) => s.take_recovered_failures(),
            AnySink::Redis(s) => s.take_recovered_failures(),
        }
    }
}
