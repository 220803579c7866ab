//! What the domain stores share: their error type, the outcome of an insert-once, fault injection for the
//! in-memory stores, and helpers for the MongoDB stores.
//!
//! Every store error is transient from the runtime's point of view (the database is down, slow, or
//! answered something unexpected): the runtime retries the whole message. Duplicate keys are not errors:
//! inserts that may be repeated report [`Inserted::Existed`].
//!
//! # Database access rule
//!
//! While handling a command (the hot path), a store may only
//!
//! - find documents with a filter that is exactly `{_id: <value>}`,
//! - insert documents (`insert_one`, or `insert_many` with deterministic `_id`s, where a duplicate key
//!   means "already written"),
//! - update, replace or delete documents with a filter that is exactly `{_id: <value>}`.
//!
//! No other filter: not `{_id, status}` for a conditional update, not `{saga_id}` or `{sku}` even with an
//! index, not `{_id: {$in: [...]}}`, no `$match` in an aggregation. The reason is the database CI runs on:
//! FerretDB 1.24 (SQLite backend) pushes only an exact `{_id}` filter down to SQLite; every other filter
//! decodes the whole collection in Go (about 40 µs per document, so 160 ms at 4,000 documents), which made
//! sagas time out under load (the build `ops/mongo/mongo.sh` installs also narrows `{_id, ...}` by `_id`,
//! which the orchestrator's versioned writes rely on; the participants keep to this rule so that they run on
//! an upstream FerretDB as well). Conditions that used to sit in filters (such as "only if captured") are
//! checked in code after the find by `_id`. That is safe because each participant process is the single
//! writer of its documents and handles one command at a time (see [`crate::runtime`]); where such a check
//! happens, a comment says so. Secondary indexes are not created either: FerretDB would not use them, and
//! every insert would pay for them.
//!
//! Even `{_id}` is not an index lookup on FerretDB 1.24.2: it filters on `_ferretdb_sjson->'$._id'` while
//! the `_id` index is on `_ferretdb_sjson->"_id"`, so SQLite scans the table (several times cheaper per
//! document than the Go decode, but linear). `find_one` stops at the first match, so a hit on an old
//! document is cheap, while a miss, a hit on a recent document, and every update or replace (a query,
//! then an `UPDATE ... WHERE` on the same expression) cost a scan. Only inserts use the index. Hence, where
//! the outcome allows it, insert first and read only on a duplicate key (a first `payment.charge` or
//! `shipping.create` is one insert).
//!
//! Scans are allowed only once per start (the inventory loads its stock cache), never per command.

use std::sync::Mutex;

use mongodb::Collection;
use mongodb::bson::{Document, doc};
use mongodb::error::{ErrorKind, WriteFailure};
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
    /// A document changed between this process reading it and writing it, which only another writer can
    /// cause (each participant is meant to be its documents' single writer). Retrying re-reads it.
    #[error("the {what} changed under this process (is a second instance writing the same database?)")]
    Raced {
        /// Which kind of document.
        what: &'static str,
    },
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

/// Inserts every document of `documents` whose `_id` is not taken (an unordered `insert_many`); a duplicate
/// key means that document was written before and is not an error.
pub async fn insert_all<T>(collection: &Collection<T>, documents: &[T], operation: &'static str) -> Result<(), Error>
where
    T: Serialize + Send + Sync,
{
    if documents.is_empty() {
        return Ok(());
    }
    match collection.insert_many(documents).ordered(false).await {
        Ok(_) => Ok(()),
        Err(e) if only_duplicate_keys(&e) => Ok(()),
        Err(e) => Err(Error::Database { operation, source: e }),
    }
}

/// Whether every failure `error` reports is a duplicate key (so every other document was written).
fn only_duplicate_keys(error: &mongodb::error::Error) -> bool {
    match &*error.kind {
        ErrorKind::InsertMany(e) => {
            e.write_concern_error.is_none()
                && e.write_errors.as_ref().is_some_and(|w| !w.is_empty() && w.iter().all(|e| e.code == 11000))
        }
        _ => is_duplicate_key(error),
    }
}

/// The only filter the hot path may use (see the [database access rule](self#database-access-rule)).
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
