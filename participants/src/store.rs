//! What the domain stores share: their error type, the outcome of an insert-once, fault injection for the
//! in-memory stores, and helpers for the MongoDB stores.
//!
//! Every store error is transient from the runtime's point of view (the database is down, slow, or
//! answered something unexpected): the runtime retries the whole message. Duplicate keys are not errors:
//! inserts that may be repeated report [`Inserted::Existed`].

use std::sync::Mutex;

use mongodb::bson::{Document, doc};
use mongodb::error::{ErrorKind, WriteFailure};
use mongodb::options::IndexOptions;
use mongodb::{Collection, IndexModel};
use serde::Serialize;

/// A store operation that failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The database refused or did not answer.
    #[error("database operation {operation} failed: {source}")]
    Database {
        /// What was attempted, such as `insert stock move`.
        operation: &'static str,
        /// The driver's error.
        source: mongodb::error::Error,
    },
    /// A stored document does not have the expected shape.
    #[error("stored {what} does not decode: {reason}")]
    Corrupt {
        /// Which kind of document.
        what: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// The in-memory store was told to fail (fault injection).
    #[error("the store is unavailable (injected fault)")]
    Unavailable,
}

impl Error {
    /// Maps a driver error of `operation`.
    pub fn database(operation: &'static str) -> impl FnOnce(mongodb::error::Error) -> Self {
        move |source| Error::Database { operation, source }
    }
}

/// The outcome of an insert that may be repeated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Inserted {
    /// The document is new.
    New,
    /// A document with that `_id` existed already; nothing was written.
    Existed,
}

/// Fault injection for the in-memory stores: make every call fail, or let a number of writes through and
/// then fail every call (a crash between two writes, as far as the domain can tell). Deterministic.
#[derive(Debug, Default)]
pub struct Faults {
    state: Mutex<FaultState>,
}

#[derive(Debug, Default)]
struct FaultState {
    down: bool,
    writes_left: Option<u32>,
}

impl Faults {
    /// Every call fails until [`Faults::heal`].
    pub fn go_down(&self) {
        self.with(|s| s.down = true);
    }

    /// The next `writes` writes succeed; then every call fails until [`Faults::heal`].
    pub fn fail_after_writes(&self, writes: u32) {
        self.with(|s| s.writes_left = Some(writes));
    }

    /// Calls succeed again.
    pub fn heal(&self) {
        self.with(|s| *s = FaultState::default());
    }

    /// Whether a read may go ahead.
    pub fn read(&self) -> Result<(), Error> {
        self.with(|s| if s.down { Err(Error::Unavailable) } else { Ok(()) })
    }

    /// Whether a write may go ahead (consuming one write of the budget, if one is set).
    pub fn write(&self) -> Result<(), Error> {
        self.with(|s| {
            if s.down {
                return Err(Error::Unavailable);
            }
            match &mut s.writes_left {
                Some(0) => {
                    s.down = true;
                    Err(Error::Unavailable)
                }
                Some(n) => {
                    *n -= 1;
                    Ok(())
                }
                None => Ok(()),
            }
        })
    }

    fn with<T>(&self, f: impl FnOnce(&mut FaultState) -> T) -> T {
        f(&mut self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner))
    }
}

/// Whether `error` is a duplicate-key error (11000).
pub fn is_duplicate_key(error: &mongodb::error::Error) -> bool {
    match &*error.kind {
        ErrorKind::Write(WriteFailure::WriteError(e)) => e.code == 11000,
        ErrorKind::InsertMany(e) => e.write_errors.as_ref().is_some_and(|w| w.iter().any(|e| e.code == 11000)),
        ErrorKind::Command(e) => e.code == 11000,
        _ => false,
    }
}

/// Inserts `document` unless a document with its `_id` exists.
pub async fn insert_once<T>(
    collection: &Collection<T>,
    document: &T,
    operation: &'static str,
) -> Result<Inserted, Error>
where
    T: Serialize + Send + Sync,
{
    match collection.insert_one(document).await {
        Ok(_) => Ok(Inserted::New),
        Err(e) if is_duplicate_key(&e) => Ok(Inserted::Existed),
        Err(e) => Err(Error::Database { operation, source: e }),
    }
}

/// Creates an index on `keys` named `name` (idempotent: an identical index is left alone).
pub async fn ensure_index(collection: &Collection<Document>, keys: Document, name: &str) -> Result<(), Error> {
    let options = IndexOptions::builder().name(name.to_owned()).build();
    let index = IndexModel::builder().keys(keys).options(options).build();
    collection.create_index(index).await.map(|_| ()).map_err(Error::database("create index"))
}

/// A filter on `_id`.
pub fn by_id(id: &str) -> Document {
    doc! { "_id": id }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_write_budget_lets_that_many_writes_through_then_fails_everything_until_healed() {
        let faults = Faults::default();
        faults.fail_after_writes(2);
        assert!(faults.write().is_ok());
        assert!(faults.read().is_ok());
        assert!(faults.write().is_ok());
        assert!(matches!(faults.write(), Err(Error::Unavailable)));
        assert!(matches!(faults.read(), Err(Error::Unavailable)));
        faults.heal();
        assert!(faults.write().is_ok() && faults.read().is_ok());
    }
}
