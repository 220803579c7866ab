//! The sagas the orchestrator has stored, and a way to make them many: the memory target is about the
//! orchestrator with 10,000 to 1,000,000 stored sagas, and placing a million orders at this stack's speed
//! would take hours.
//!
//! [`fill_finished`] copies one finished saga of the orchestrator's `sagas_finished` until that collection
//! holds the requested number (each copy with a new saga and correlation id; its timeline, personal data and
//! idempotency key are not copied: those are read by `_id` only, and no scan of live sagas sees a finished
//! one). The report says how many sagas were stored when a run began.

use mongodb::bson::{Document, doc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::error::{Error, Result};

/// The orchestrator's database under `make up`.
pub const DEFAULT_ORCHESTRATOR_DATABASE: &str = "orchestrator";
/// Copies inserted per request.
const BATCH: usize = 1000;

/// How many sagas the orchestrator holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredSagas {
    /// In `sagas`: in flight, parked, or finished and not settled yet.
    pub live: u64,
    /// In `sagas_finished`.
    pub finished: u64,
}

/// The documents of `collection` in `db`, from `collStats` (a table count on FerretDB, where counting
/// documents with a query reads every one); 0 for a collection that does not exist.
async fn count(db: &mongodb::Database, collection: &str) -> Result<u64> {
    let names = db.list_collection_names().await.map_err(Error::database("listing the orchestrator's collections"))?;
    if !names.iter().any(|n| n == collection) {
        return Ok(0);
    }
    let stats = db
        .run_command(doc! { "collStats": collection })
        .await
        .map_err(Error::database(format!("collStats of {collection}")))?;
    let count = match stats.get("count") {
        Some(mongodb::bson::Bson::Int32(n)) => u64::try_from(*n).unwrap_or(0),
        Some(mongodb::bson::Bson::Int64(n)) => u64::try_from(*n).unwrap_or(0),
        Some(mongodb::bson::Bson::Double(n)) => *n as u64,
        _ => 0,
    };
    Ok(count)
}

/// How many sagas the orchestrator's database `database` holds.
pub async fn stored(client: &mongodb::Client, database: &str) -> Result<StoredSagas> {
    let db = client.database(database);
    Ok(StoredSagas { live: count(&db, "sagas").await?, finished: count(&db, "sagas_finished").await? })
}

/// Copies a finished saga until `database.sagas_finished` holds `target` sagas; returns how many copies
/// were added. Needs one finished saga to copy (run a few orders first).
pub async fn fill_finished(
    client: &mongodb::Client,
    database: &str,
    target: u64,
    progress: &(dyn Fn(&str) + Sync),
) -> Result<u64> {
    let db = client.database(database);
    let finished = db.collection::<Document>("sagas_finished");
    let template = finished
        .find_one(doc! {})
        .await
        .map_err(Error::database("reading a finished saga"))?
        .ok_or_else(|| {
            Error::Config(format!(
                "{database}.sagas_finished holds no saga to copy: place a few orders first (make bench BENCH_ARGS=--smoke)"
            ))
        })?;
    let have = count(&db, "sagas_finished").await?;
    let missing = target.saturating_sub(have);
    progress(&format!("{database}.sagas_finished holds {have} sagas; adding {missing} copies of one"));
    let mut added = 0_u64;
    while added < missing {
        let n = usize::try_from(missing - added).unwrap_or(usize::MAX).min(BATCH);
        let copies: Vec<Document> = (0..n)
            .map(|_| {
                let mut copy = template.clone();
                copy.insert("_id", Uuid::now_v7().to_string());
                copy.insert("correlation_id", Uuid::now_v7().to_string());
                copy
            })
            .collect();
        finished.insert_many(copies).ordered(false).await.map_err(Error::database("inserting finished sagas"))?;
        added += n as u64;
        if added % 100_000 < BATCH as u64 || added == missing {
            progress(&format!("added {added} of {missing}"));
        }
    }
    Ok(added)
}
