//! The saga store on MongoDB (or FerretDB). Collections: `sagas` (one document per live saga, with its
//! outbox and unflushed timeline entries), `sagas_finished` (the same documents once a saga finished for
//! good and was settled, with the timeline entries not in the log: see [`super`]), `saga_log` (the
//! append-only timeline, unique by saga id and seq),
//! `orders_pii` (personal data, apart so it can be purged), `idempotency_keys`, and for the saga gauges
//! `saga_counts` (the recorded census of the finished sagas) and `saga_finished_tallies` (the finished
//! sagas each instance moved per minute since: see [`crate::gauges`]).
//!
//! Ids are stored as strings and times that are queried as BSON dates, through explicit document types,
//! so that filters and documents always agree on representation.

use async_trait::async_trait;
use bson::serde_helpers::datetime::FromChrono04DateTime;
use chrono::{DateTime, Utc};
use futures_util::TryStreamExt;
use mongodb::bson::{Document, doc};
use mongodb::error::{ErrorKind, WriteFailure};
use mongodb::options::{IndexOptions, ReturnDocument};
use mongodb::{Collection, Database, IndexModel};
use platform::mongo::{Flavor, drop_indexes, ensure_indexes};
use saga_defs::{Deadline, Phase, Resolution, SagaState};
use serde::{Deserialize, Serialize};
use serde_with::serde_as;
use uuid::Uuid;

use super::{Census, Claim, Error, FinishedTally, RecordedCensus, SagaFilter, SagaStore, StateCounts, StateSummary};
use crate::model::{LogEntry, OrderPii, OrderSummary, OutboxEntry, SagaRecord};

/// The saga store on a MongoDB database.
///
/// Writes to a saga are conditional on its version: the filter is `{_id, version}`. On MongoDB that is
/// atomic. FerretDB reads the document by `_id`, compares the version, then writes (not atomic against a
/// concurrent writer, but the saga's partition owner is its only writer anyway; the check fences an instance
/// that lost the partition). FerretDB 1.24's SQLite backend answers only an exact `{_id}` filter from its
/// index and scans the collection for any other; the build `ops/mongo/mongo.sh` installs narrows `{_id,
/// version}` by `_id` too (see there). On an unpatched FerretDB these writes scan the live sagas: correct,
/// and as slow as there are sagas in flight.
#[derive(Debug, Clone)]
pub struct MongoStore {
    sagas: Collection<SagaDoc>,
    finished: Collection<SagaDoc>,
    counts: Collection<Document>,
    tallies: Collection<Document>,
    log: Collection<LogDoc>,
    pii: Collection<PiiDoc>,
    keys: Collection<KeyDoc>,
    flavor: Flavor,
    /// The finished copies this store (and its clones) made and has not written down yet.
    tally: std::sync::Arc<TallyBook>,
}

/// The counts of the finished copies one store made, until written down as documents of
/// `saga_finished_tallies` with ids of their own (`<store>/<n>`), so that a retried write counts nothing twice.
#[derive(Debug)]
struct TallyBook {
    store: Uuid,
    state: std::sync::Mutex<TallyState>,
    /// One write at a time.
    writing: tokio::sync::Mutex<()>,
}

#[derive(Debug, Default)]
struct TallyState {
    /// Counted since the last write was prepared, per minute.
    pending: std::collections::BTreeMap<DateTime<Utc>, StateCounts>,
    /// Prepared for writing and not known to be written.
    unwritten: Vec<Document>,
    next: u64,
}

impl TallyBook {
    fn new() -> Self {
        Self { store: Uuid::new_v4(), state: std::sync::Mutex::default(), writing: tokio::sync::Mutex::new(()) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, TallyState> {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Counts new finished copies made at `at`.
    fn count<'a>(&self, at: DateTime<Utc>, states: impl IntoIterator<Item = &'a str>) {
        let mut counts = StateCounts::new();
        for state in states {
            *counts.entry(state.to_owned()).or_insert(0) += 1;
        }
        if !counts.is_empty() {
            super::add_to_tally(&mut self.lock().pending, super::minute_of(at), &counts);
        }
    }

    /// The documents to write: those of a write that failed, else the counts since.
    fn prepare(&self) -> Vec<Document> {
        let mut state = self.lock();
        if state.unwritten.is_empty() {
            let pending = std::mem::take(&mut state.pending);
            for (minute, counts) in pending {
                let id = format!("{}/{}", self.store, state.next);
                state.next += 1;
                let counts: Document = counts
                    .into_iter()
                    .map(|(s, n)| (s, bson::Bson::Int64(i64::try_from(n).unwrap_or(i64::MAX))))
                    .collect();
                state
                    .unwritten
                    .push(doc! { "_id": id, "minute": bson::DateTime::from_chrono(minute), "counts": counts });
            }
        }
        state.unwritten.clone()
    }
}

impl MongoStore {
    /// A store in `db`, on a server of the given flavor.
    pub fn new(db: &Database, flavor: Flavor) -> Self {
        Self {
            sagas: db.collection("sagas"),
            finished: db.collection("sagas_finished"),
            counts: db.collection("saga_counts"),
            tallies: db.collection("saga_finished_tallies"),
            log: db.collection("saga_log"),
            pii: db.collection("orders_pii"),
            keys: db.collection("idempotency_keys"),
            flavor,
            tally: std::sync::Arc::new(TallyBook::new()),
        }
    }

    /// A store in database `name` of `client`, asking the server which flavor it is.
    pub async fn connect(client: &mongodb::Client, name: &str) -> Result<Self, platform::mongo::Error> {
        let flavor = platform::mongo::flavor(client).await?;
        Ok(Self::new(&client.database(name), flavor))
    }

    /// The timeline entry with sequence number `seq` in `saga_log`.
    async fn logged_entry(&self, saga_id: Uuid, seq: u64) -> Result<Option<LogEntry>, Error> {
        let found = self.log.find_one(doc! { "_id": log_id(saga_id, seq) }).await.map_err(db("read saga_log"))?;
        Ok(found.map(|d| d.entry))
    }

    /// Whether saga `id` is among the live ones.
    async fn is_live(&self, id: &str) -> Result<bool, Error> {
        let found = self
            .sagas
            .clone_with_type::<Document>()
            .find_one(doc! { "_id": id })
            .projection(doc! { "_id": 1 })
            .await
            .map_err(db("read saga"))?;
        Ok(found.is_some())
    }

    /// The version of the finished copy of saga `id`, if there is one.
    async fn finished_version(&self, id: &str) -> Result<Option<i64>, Error> {
        Ok(self.finished_copy(id).await?.map(|(version, _)| version))
    }

    /// The version of the finished copy of saga `id` and when it was first made (unknown for copies made by
    /// earlier versions), if there is one.
    async fn finished_copy(&self, id: &str) -> Result<Option<(i64, Option<DateTime<Utc>>)>, Error> {
        let found = self
            .finished
            .clone_with_type::<Document>()
            .find_one(doc! { "_id": id })
            .projection(doc! { "version": 1, "moved_at": 1 })
            .await
            .map_err(db("read finished saga version"))?;
        Ok(found.and_then(|d| {
            let moved_at = d.get_datetime("moved_at").ok().map(|at| at.to_chrono());
            d.get_i64("version").ok().map(|version| (version, moved_at))
        }))
    }

    /// Writes the finished copies of `docs` (without outbox), made now: new ones in one request, counted in
    /// this store's tally; a copy there already (a retried batch, or a saga that came back for a late note)
    /// is replaced if older (keeping when it was first made), kept if newer.
    async fn store_finished(&self, mut docs: Vec<SagaDoc>) -> Result<Vec<SagaDoc>, Error> {
        let now = Utc::now();
        for doc in &mut docs {
            doc.outbox.clear();
            doc.pending = false;
            doc.moved_at = Some(now);
        }
        let duplicates: Vec<usize> = match self.finished.insert_many(&docs).ordered(false).await {
            Ok(_) => Vec::new(),
            Err(e) => match &*e.kind {
                ErrorKind::InsertMany(failure)
                    if failure.write_concern_error.is_none()
                        && failure.write_errors.as_ref().is_some_and(|w| w.iter().all(|w| w.code == 11000)) =>
                {
                    failure.write_errors.iter().flatten().map(|w| w.index).collect()
                }
                _ => return Err(db("store finished sagas")(e)),
            },
        };
        let new = docs.iter().enumerate().filter(|(i, _)| !duplicates.contains(i)).map(|(_, d)| d.state.as_str());
        self.tally.count(now, new);
        for index in duplicates {
            let Some(doc) = docs.get_mut(index) else { continue };
            let existing = self.finished_copy(&doc.id).await?;
            if existing.is_some_and(|(version, _)| version >= doc.version) {
                continue;
            }
            doc.moved_at = existing.map_or(Some(now), |(_, moved_at)| moved_at);
            let by_id = doc! { "_id": doc.id.as_str() };
            let written =
                self.finished.replace_one(by_id, &*doc).upsert(true).await.map_err(db("store finished saga"))?;
            if written.upserted_id.is_some() {
                self.tally.count(now, [doc.state.as_str()]);
            }
        }
        Ok(docs)
    }

    /// Whether the finished copy of the saga is at `version`.
    async fn finished_at(&self, saga_id: Uuid, version: u64) -> Result<bool, Error> {
        Ok(self.finished_version(&saga_id.to_string()).await? == Some(stored_version(version)))
    }

    /// Moves a settled saga that finished for good from `sagas` to `sagas_finished`: first written there
    /// (replacing an older copy, as after the saga came back for a late note), then deleted from `sagas` if
    /// it is still at its version. Stopped in between, the saga is in both; reads take the live copy, and
    /// the next settlement moves it again.
    /// Deletes each of `docs` from the live sagas if it is still at its version, in one `delete` command of
    /// one statement per saga; returns how many were deleted. (FerretDB reads the whole collection for an
    /// `$or` of `{_id, version}` filters, but answers each statement by `_id`: one request instead of one per
    /// saga, and a third less of its CPU per saga than separate deletes (0.26 against 0.41 ms, measured at ten
    /// statements per command).)
    async fn delete_each_at_version(&self, docs: &[SagaDoc]) -> mongodb::error::Result<u64> {
        let deletes: Vec<Document> =
            docs.iter().map(|d| doc! { "q": at_version(&d.id, d.version), "limit": 1_i32 }).collect();
        let command = doc! { "delete": self.sagas.name(), "deletes": deletes, "ordered": false };
        let answer = self.sagas.client().database(self.sagas.namespace().db.as_str()).run_command(command).await?;
        let failed = |field: &str| {
            answer.get_array(field).is_ok_and(|errors| !errors.is_empty()) || answer.get_document(field).is_ok()
        };
        if failed("writeErrors") || failed("writeConcernError") {
            return Err(mongodb::error::Error::custom(format!("delete of finished sagas failed: {answer}")));
        }
        let n = answer.get_i32("n").map(i64::from).or_else(|_| answer.get_i64("n")).unwrap_or(0);
        Ok(u64::try_from(n).unwrap_or(0))
    }

    async fn move_to_finished(&self, saga: SagaDoc) -> Result<(), Error> {
        let Some(saga) = self.store_finished(vec![saga]).await?.pop() else { return Ok(()) };
        let live = at_version(&saga.id, saga.version);
        self.sagas.delete_one(live).await.map_err(db("remove finished saga from the live ones"))?;
        Ok(())
    }

    /// Sagas matching `filter` in `sagas`, then in `sagas_finished`, sorted by `sort`'s single key and cut at
    /// `limit`; a saga in both (stopped while moving) counts once, live. Live ones are read first: a saga that
    /// moves meanwhile is then seen twice rather than missed.
    ///
    /// FerretDB pushes no sort but `$natural` down to SQLite: asked for a sorted, limited answer, it reads
    /// everything the filter matches into memory, sorts it, and only then applies the limit (a sorted read of
    /// a few million timeline entries ran it out of memory at 23 GiB on a 24 GiB machine). So on
    /// FerretDB the documents are streamed unsorted and the first `limit` kept here, with memory bounded
    /// by `limit` in both processes; the scan itself is the same.
    async fn find_both(
        &self,
        filter: Document,
        sort: Document,
        projection: Option<Document>,
        limit: usize,
        operation: &'static str,
    ) -> Result<Vec<Document>, Error> {
        let key = sort.keys().next().cloned().unwrap_or_else(|| "_id".to_owned());
        let ascending = sort.get_i32(&key).unwrap_or(1) >= 0;
        let first = FirstSorted { key: &key, ascending, limit };
        let streamed = self.flavor == Flavor::FerretDb;
        let mut found = Vec::new();
        for collection in [&self.sagas, &self.finished] {
            let mut options = mongodb::options::FindOptions::default();
            options.projection.clone_from(&projection);
            if !streamed {
                options.sort = Some(sort.clone());
                options.limit = Some(i64::try_from(limit).unwrap_or(i64::MAX));
            }
            let mut cursor = collection
                .clone_with_type::<Document>()
                .find(filter.clone())
                .with_options(options)
                .await
                .map_err(db(operation))?;
            let mut kept = Vec::new();
            while let Some(document) = cursor.try_next().await.map_err(db(operation))? {
                kept.push(document);
                if kept.len() >= limit.saturating_mul(2).max(64) {
                    first.cut(&mut kept);
                }
            }
            first.cut(&mut kept);
            found.extend(kept);
        }
        let mut seen = std::collections::HashSet::new();
        let mut unique: Vec<Document> =
            found.into_iter().filter(|d| seen.insert(d.get("_id").cloned().map(|id| id.to_string()))).collect();
        first.cut(&mut unique);
        Ok(unique)
    }
}

/// The first `limit` documents in the order of one sort key.
struct FirstSorted<'a> {
    key: &'a str,
    ascending: bool,
    limit: usize,
}

impl FirstSorted<'_> {
    /// Sorts `documents` (stably) and keeps the first `limit`.
    fn cut(&self, documents: &mut Vec<Document>) {
        documents.sort_by(|a, b| {
            let order = compare_bson(a.get(self.key), b.get(self.key));
            if self.ascending { order } else { order.reverse() }
        });
        documents.truncate(self.limit);
    }
}

/// The states of sagas that finished for good ([`saga_defs::Phase::is_final`]), as stored in `state`.
const FINAL_STATES: [&str; 3] = ["COMPLETED", "COMPENSATED", "RESOLVED"];

/// The `_id` of the recorded census of the finished sagas in `saga_counts`.
const FINISHED_CENSUS: &str = "finished";

fn stored_version(version: u64) -> i64 {
    i64::try_from(version).unwrap_or(i64::MAX)
}

/// The filter of a write conditional on the saga's version.
fn at_version(id: &str, version: i64) -> Document {
    doc! { "_id": id, "version": version }
}

/// The order of two values of the same sort key (strings, dates or numbers; others keep their order).
fn compare_bson(a: Option<&bson::Bson>, b: Option<&bson::Bson>) -> std::cmp::Ordering {
    use bson::Bson;
    match (a, b) {
        (Some(Bson::String(a)), Some(Bson::String(b))) => a.cmp(b),
        (Some(Bson::DateTime(a)), Some(Bson::DateTime(b))) => a.cmp(b),
        (Some(Bson::Int64(a)), Some(Bson::Int64(b))) => a.cmp(b),
        (Some(Bson::Int32(a)), Some(Bson::Int32(b))) => a.cmp(b),
        _ => std::cmp::Ordering::Equal,
    }
}

#[serde_as]
#[derive(Debug, Serialize, Deserialize)]
struct SagaDoc {
    #[serde(rename = "_id")]
    id: String,
    version: i64,
    definition: String,
    definition_version: i64,
    /// The state's name, for queries (also inside `phase`).
    state: String,
    phase: Phase,
    status: String,
    reason: Option<String>,
    #[serde(default)]
    parked_at: Option<Phase>,
    #[serde(default)]
    attempt_floor: u32,
    #[serde(default)]
    resolution: Option<Resolution>,
    deadline: Option<Deadline>,
    /// The deadline as a BSON date, for the timer query.
    #[serde_as(as = "Option<FromChrono04DateTime>")]
    deadline_at: Option<DateTime<Utc>>,
    partition: i32,
    correlation_id: String,
    /// The W3C `traceparent` of the order's trace; absent in documents stored before traces were kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    traceparent: Option<String>,
    order: OrderSummary,
    #[serde_as(as = "FromChrono04DateTime")]
    created_at: DateTime<Utc>,
    #[serde_as(as = "FromChrono04DateTime")]
    updated_at: DateTime<Utc>,
    #[serde_as(as = "FromChrono04DateTime")]
    state_since: DateTime<Utc>,
    /// JSON text (see [`json_text`]).
    #[serde(with = "json_text")]
    outbox: Vec<OutboxEntry>,
    /// JSON text (see [`json_text`]).
    #[serde(with = "json_text")]
    pending_log: Vec<LogEntry>,
    /// Whether `outbox` or `pending_log` has entries, for the recovery query.
    pending: bool,
    /// When the finished copy was first made (finished copies only; absent in those of earlier versions).
    #[serde_as(as = "Option<FromChrono04DateTime>")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    moved_at: Option<DateTime<Utc>>,
}

/// A saga's outbox and unsettled timeline entries are stored as one JSON string each, not as arrays of
/// documents: no query looks inside them, and they are most of a saga in flight's bytes (a timeline entry is
/// about 700 bytes; four transitions carry four). FerretDB reads the stored document back before each
/// conditional write, and decoding nested documents was the largest part of its CPU; a string decodes in one
/// piece. Arrays, as an earlier version wrote them (and as `clear_pending` empties them), are read too.
mod json_text {
    use serde::de::{DeserializeOwned, Error as _};
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<T: Serialize, S: Serializer>(value: &T, serializer: S) -> Result<S::Ok, S::Error> {
        let text = serde_json::to_string(value).map_err(serde::ser::Error::custom)?;
        serializer.serialize_str(&text)
    }

    pub fn deserialize<'de, T: DeserializeOwned, D: Deserializer<'de>>(deserializer: D) -> Result<T, D::Error> {
        from_bson(bson::Bson::deserialize(deserializer)?).map_err(D::Error::custom)
    }

    /// The value stored as `value`: JSON text, or the BSON it was written as before.
    pub fn from_bson<T: DeserializeOwned>(value: bson::Bson) -> Result<T, String> {
        match value {
            bson::Bson::String(text) => serde_json::from_str(&text).map_err(|e| e.to_string()),
            other => bson::deserialize_from_bson(other).map_err(|e| e.to_string()),
        }
    }
}

impl From<&SagaRecord> for SagaDoc {
    fn from(saga: &SagaRecord) -> Self {
        Self {
            id: saga.id.to_string(),
            version: i64::try_from(saga.version).unwrap_or(i64::MAX),
            definition: saga.definition.clone(),
            definition_version: i64::from(saga.definition_version),
            state: saga.state.phase.name().to_owned(),
            phase: saga.state.phase,
            status: saga.status().as_str().to_owned(),
            reason: saga.state.reason.clone(),
            parked_at: saga.state.parked_at,
            attempt_floor: saga.state.attempt_floor,
            resolution: saga.state.resolution,
            deadline: saga.state.deadline,
            deadline_at: saga.state.deadline.map(|d| d.at),
            partition: saga.partition,
            correlation_id: saga.correlation_id.to_string(),
            traceparent: saga.traceparent.clone(),
            order: saga.order.clone(),
            created_at: saga.created_at,
            updated_at: saga.updated_at,
            state_since: saga.state_since,
            outbox: saga.outbox.clone(),
            pending_log: saga.pending_log.clone(),
            pending: saga.has_pending(),
            moved_at: None,
        }
    }
}

impl TryFrom<SagaDoc> for SagaRecord {
    type Error = Error;

    fn try_from(doc: SagaDoc) -> Result<Self, Error> {
        let corrupt = |reason: String| Error::Corrupt { what: "saga", id: doc.id.clone(), reason };
        let id = Uuid::parse_str(&doc.id).map_err(|e| corrupt(format!("_id: {e}")))?;
        let correlation_id =
            Uuid::parse_str(&doc.correlation_id).map_err(|e| corrupt(format!("correlation_id: {e}")))?;
        Ok(SagaRecord {
            id,
            version: u64::try_from(doc.version).map_err(|e| corrupt(format!("version: {e}")))?,
            definition_version: u32::try_from(doc.definition_version)
                .map_err(|e| corrupt(format!("definition_version: {e}")))?,
            definition: doc.definition,
            state: SagaState {
                phase: doc.phase,
                deadline: doc.deadline,
                reason: doc.reason,
                parked_at: doc.parked_at,
                attempt_floor: doc.attempt_floor,
                resolution: doc.resolution,
            },
            partition: doc.partition,
            correlation_id,
            traceparent: doc.traceparent,
            order: doc.order,
            created_at: doc.created_at,
            updated_at: doc.updated_at,
            state_since: doc.state_since,
            outbox: doc.outbox,
            pending_log: doc.pending_log,
        })
    }
}

/// A timeline entry, stored under a key made of its saga and sequence number, so that it can be read by
/// `_id` alone.
#[derive(Debug, Serialize, Deserialize)]
struct LogDoc {
    #[serde(rename = "_id")]
    id: String,
    #[serde(flatten)]
    entry: LogEntry,
}

fn log_id(saga_id: Uuid, seq: u64) -> String {
    format!("{saga_id}:{seq:012}")
}

#[serde_as]
#[derive(Debug, Serialize, Deserialize)]
struct PiiDoc {
    #[serde(rename = "_id")]
    id: String,
    #[serde(flatten)]
    pii: OrderPii,
    #[serde_as(as = "FromChrono04DateTime")]
    created_at: DateTime<Utc>,
}

#[serde_as]
#[derive(Debug, Serialize, Deserialize)]
struct KeyDoc {
    #[serde(rename = "_id")]
    key: String,
    order_id: String,
    request_hash: String,
    #[serde_as(as = "FromChrono04DateTime")]
    created_at: DateTime<Utc>,
}

fn db(operation: &'static str) -> impl FnOnce(mongodb::error::Error) -> Error {
    move |source| Error::Database { operation, source }
}

fn is_duplicate_key(error: &mongodb::error::Error) -> bool {
    match &*error.kind {
        ErrorKind::Write(WriteFailure::WriteError(e)) => e.code == 11000,
        ErrorKind::InsertMany(e) => e.write_errors.as_ref().is_some_and(|w| w.iter().all(|e| e.code == 11000)),
        _ => false,
    }
}

fn in_partitions(partitions: &[i32]) -> Document {
    doc! { "partition": { "$in": partitions.to_vec() } }
}

async fn collect<T>(cursor: mongodb::Cursor<T>, operation: &'static str) -> Result<Vec<T>, Error>
where
    T: serde::de::DeserializeOwned + Send + Sync + Unpin,
{
    cursor.try_collect().await.map_err(db(operation))
}

fn bson_date(time: DateTime<Utc>) -> bson::DateTime {
    bson::DateTime::from_chrono(time)
}

#[async_trait]
impl SagaStore for MongoStore {
    #[tracing::instrument(name = "db.saga.prepare", skip_all, fields(
        otel.kind = "client", db.system.name = "mongodb",
        db.collection.name = "sagas", db.operation.name = "create_indexes"
    ))]
    async fn prepare(&self) -> Result<(), Error> {
        let index = |keys: Document, name: &str, unique: bool| {
            IndexModel::builder()
                .keys(keys)
                .options(IndexOptions::builder().name(name.to_owned()).unique(unique).build())
                .build()
        };
        let saga_indexes = vec![
            index(doc! { "partition": 1, "deadline_at": 1 }, "partition_deadline", false),
            index(doc! { "partition": 1, "pending": 1 }, "partition_pending", false),
            index(doc! { "partition": 1, "state": 1, "created_at": 1 }, "partition_state_created", false),
            index(doc! { "status": 1, "updated_at": 1 }, "status_updated", false),
        ];
        // The timeline's `_id` is the saga id and sequence number, and the timeline is read by `_id`: this
        // index only restates that uniqueness (kept on MongoDB, where it is cheap).
        let log_index = vec![index(doc! { "saga_id": 1, "seq": 1 }, "saga_seq", true)];
        if self.flavor == Flavor::FerretDb {
            // FerretDB answers only an exact `{_id}` filter from an index, so a secondary index would be
            // maintained on every write and never read: the sweeps and the timeline query scan either way.
            // (Dropped where an earlier version created them.)
            let names = |models: &[IndexModel]| {
                models.iter().filter_map(|m| m.options.as_ref()?.name.clone()).collect::<Vec<_>>()
            };
            drop_indexes(&self.sagas, &names(&saga_indexes)).await.map_err(db("drop saga indexes"))?;
            drop_indexes(&self.log, &names(&log_index)).await.map_err(db("drop saga_log index"))?;
            return Ok(());
        }
        ensure_indexes(&self.sagas, saga_indexes).await.map_err(db("create saga indexes"))?;
        // The retention sweep reads the personal data by when it was stored (it read the finished sagas by
        // their last change before; that index is dropped where it was created).
        drop_indexes(&self.finished, &["updated".to_owned()]).await.map_err(db("drop finished saga index"))?;
        let pii_index = vec![index(doc! { "created_at": 1 }, "created", false)];
        ensure_indexes(&self.pii, pii_index).await.map_err(db("create personal data index"))?;
        ensure_indexes(&self.log, log_index).await.map_err(db("create saga_log index"))?;
        Ok(())
    }

    #[tracing::instrument(name = "db.saga.insert", skip_all, fields(
        otel.kind = "client", db.system.name = "mongodb",
        db.collection.name = "sagas", db.operation.name = "insert"
    ))]
    async fn insert(&self, saga: &SagaRecord) -> Result<(), Error> {
        match self.sagas.insert_one(SagaDoc::from(saga)).await {
            Ok(_) => Ok(()),
            Err(e) if is_duplicate_key(&e) => Err(Error::Duplicate { what: "saga", id: saga.id.to_string() }),
            Err(e) => Err(db("insert saga")(e)),
        }
    }

    #[tracing::instrument(name = "db.saga.get", skip_all, fields(
        otel.kind = "client", db.system.name = "mongodb",
        db.collection.name = "sagas", db.operation.name = "find"
    ))]
    async fn get(&self, saga_id: Uuid) -> Result<Option<SagaRecord>, Error> {
        let by_id = doc! { "_id": saga_id.to_string() };
        let mut found = self.sagas.find_one(by_id.clone()).await.map_err(db("read saga"))?;
        if found.is_none() {
            found = self.finished.find_one(by_id).await.map_err(db("read finished saga"))?;
        }
        found.map(SagaRecord::try_from).transpose()
    }

    #[tracing::instrument(name = "db.saga.replace", skip_all, fields(
        otel.kind = "client", db.system.name = "mongodb",
        db.collection.name = "sagas", db.operation.name = "replace"
    ))]
    async fn replace(&self, saga: &SagaRecord, expected_version: u64) -> Result<(), Error> {
        let conflict = || Error::VersionConflict { saga_id: saga.id, expected: expected_version };
        let doc = SagaDoc::from(saga);
        let filter = at_version(&doc.id, stored_version(expected_version));
        let result = self.sagas.replace_one(filter, &doc).await.map_err(db("replace saga"))?;
        if result.matched_count == 1 {
            return Ok(());
        }
        // Not live at that version: a finished saga at that version comes back among the live ones. Inserting
        // fences a concurrent writer (one of the two inserts fails).
        if !self.finished_at(saga.id, expected_version).await? {
            return Err(conflict());
        }
        match self.sagas.insert_one(&doc).await {
            Ok(_) => Ok(()),
            Err(e) if is_duplicate_key(&e) => Err(conflict()),
            Err(e) => Err(db("write finished saga back")(e)),
        }
    }

    #[tracing::instrument(name = "db.saga.clear_pending", skip_all, fields(
        otel.kind = "client", db.system.name = "mongodb",
        db.collection.name = "sagas", db.operation.name = "update"
    ))]
    async fn clear_pending(&self, saga_id: Uuid, version: u64) -> Result<bool, Error> {
        let update = doc! { "$set": { "outbox": [], "pending_log": [], "pending": false } };
        // The saga comes back whole: one finished for good moves to the finished sagas.
        let stored = self
            .sagas
            .find_one_and_update(at_version(&saga_id.to_string(), stored_version(version)), update)
            .return_document(ReturnDocument::After)
            .await
            .map_err(db("clear saga outbox"))?;
        let Some(cleared) = stored else {
            // Settled and moved already, or at another version.
            return self.finished_at(saga_id, version).await;
        };
        if cleared.phase.is_final() {
            self.move_to_finished(cleared).await?;
        }
        Ok(true)
    }

    /// The finished copies take one request per batch (their pending timelines in them); the delete from the
    /// live sagas one per batch too: on MongoDB an `$or` of `{_id, version}`, on FerretDB a statement per saga
    /// (where that `$or` would scan the live sagas, at about 0.25 ms of its CPU per document, and
    /// `{_id, version}` does not).
    #[tracing::instrument(name = "db.saga.move_finished", skip_all, fields(
        otel.kind = "client", db.system.name = "mongodb",
        db.collection.name = "sagas_finished", db.operation.name = "insert", db.operation.batch.size = sagas.len()
    ))]
    async fn move_finished(&self, sagas: &[SagaRecord]) -> Result<Vec<Uuid>, Error> {
        if sagas.is_empty() {
            return Ok(Vec::new());
        }
        // The pending timeline stays: the finished copy is where it is read (see the trait).
        let docs = self.store_finished(sagas.iter().map(SagaDoc::from).collect()).await?;
        let remove = "remove finished sagas from the live ones";
        let deleted = if self.flavor == Flavor::FerretDb {
            self.delete_each_at_version(&docs).await.map_err(db(remove))?
        } else {
            let at_versions: Vec<Document> = docs.iter().map(|d| at_version(&d.id, d.version)).collect();
            self.sagas.delete_many(doc! { "$or": at_versions }).await.map_err(db(remove))?.deleted_count
        };
        if usize::try_from(deleted).is_ok_and(|n| n == docs.len()) {
            return Ok(sagas.iter().map(|s| s.id).collect());
        }
        // Some were not at their version (they moved on), or were gone already (moved): say which are no
        // longer live.
        let mut moved = Vec::with_capacity(sagas.len());
        for saga in sagas {
            if !self.is_live(&saga.id.to_string()).await? {
                moved.push(saga.id);
            }
        }
        Ok(moved)
    }

    #[tracing::instrument(name = "db.saga_log.append", skip_all, fields(
        otel.kind = "client", db.system.name = "mongodb",
        db.collection.name = "saga_log", db.operation.name = "insert"
    ))]
    async fn append_log(&self, entries: &[LogEntry]) -> Result<(), Error> {
        if entries.is_empty() {
            return Ok(());
        }
        let docs: Vec<LogDoc> =
            entries.iter().map(|e| LogDoc { id: log_id(e.saga_id, e.seq), entry: e.clone() }).collect();
        match self.log.insert_many(docs).ordered(false).await {
            Ok(_) => Ok(()),
            Err(e) if is_duplicate_key(&e) => Ok(()),
            Err(e) => Err(db("append to saga_log")(e)),
        }
    }

    /// Reads the entries one `_id` at a time up to the saga's version (FerretDB answers only exact `_id`
    /// lookups from an index), taking the entries not settled yet from the saga.
    #[tracing::instrument(name = "db.saga_log.timeline", skip_all, fields(
        otel.kind = "client", db.system.name = "mongodb",
        db.collection.name = "saga_log", db.operation.name = "find"
    ))]
    async fn timeline(&self, saga_id: Uuid) -> Result<Vec<LogEntry>, Error> {
        let Some(saga) = self.get(saga_id).await? else { return Ok(Vec::new()) };
        let mut entries = Vec::new();
        for seq in 1..=saga.version {
            if let Some(pending) = saga.pending_log.iter().find(|e| e.seq == seq) {
                entries.push(pending.clone());
            } else if let Some(entry) = self.logged_entry(saga_id, seq).await? {
                entries.push(entry);
            }
        }
        Ok(entries)
    }

    #[tracing::instrument(name = "db.saga_log.get", skip_all, fields(
        otel.kind = "client", db.system.name = "mongodb",
        db.collection.name = "saga_log", db.operation.name = "find"
    ))]
    async fn log_entry(&self, saga_id: Uuid, seq: u64) -> Result<Option<LogEntry>, Error> {
        if let Some(entry) = self.logged_entry(saga_id, seq).await? {
            return Ok(Some(entry));
        }
        for collection in [&self.sagas, &self.finished] {
            let pending = collection
                .clone_with_type::<Document>()
                .find_one(doc! { "_id": saga_id.to_string() })
                .projection(doc! { "pending_log": 1 })
                .await
                .map_err(db("read saga's pending timeline"))?;
            let Some(pending) = pending.and_then(|mut d| d.remove("pending_log")) else { continue };
            let corrupt = |e: String| Error::Corrupt {
                what: "saga",
                id: saga_id.to_string(),
                reason: format!("pending timeline: {e}"),
            };
            let pending: Vec<LogEntry> = json_text::from_bson(pending).map_err(corrupt)?;
            return Ok(pending.into_iter().find(|entry| entry.seq == seq));
        }
        Ok(None)
    }

    #[tracing::instrument(name = "db.saga.list", skip_all, fields(
        otel.kind = "client", db.system.name = "mongodb",
        db.collection.name = "sagas", db.operation.name = "find"
    ))]
    async fn list(&self, filter: &SagaFilter, limit: usize) -> Result<Vec<SagaRecord>, Error> {
        let mut query = Document::new();
        if let Some(state) = &filter.state {
            query.insert("state", state.as_str());
        }
        if let Some(step) = filter.step {
            query.insert("phase.step", i32::from(step));
        }
        if let Some(definition) = &filter.definition {
            query.insert("definition", definition.as_str());
        }
        if let Some(before) = filter.since_before {
            query.insert("state_since", doc! { "$lt": bson_date(before) });
        }
        if let Some(after) = filter.after {
            query.insert("_id", doc! { "$gt": after.to_string() });
        }
        let found = self.find_both(query, doc! { "_id": 1 }, None, limit, "list sagas").await?;
        found
            .into_iter()
            .map(|d| {
                let id = d.get_str("_id").unwrap_or_default().to_owned();
                let saga: SagaDoc = bson::deserialize_from_document(d).map_err(|e| Error::Corrupt {
                    what: "saga",
                    id,
                    reason: e.to_string(),
                })?;
                SagaRecord::try_from(saga)
            })
            .collect()
    }

    #[tracing::instrument(name = "db.saga.recoverable", skip_all, fields(
        otel.kind = "client", db.system.name = "mongodb",
        db.collection.name = "sagas", db.operation.name = "find"
    ))]
    async fn recoverable(&self, partitions: &[i32], limit: usize) -> Result<Vec<SagaRecord>, Error> {
        let mut filter = in_partitions(partitions);
        filter.insert("$or", vec![doc! { "pending": true }, doc! { "deadline_at": { "$ne": null } }]);
        let cursor = self
            .sagas
            .find(filter)
            .limit(i64::try_from(limit).unwrap_or(i64::MAX))
            .await
            .map_err(db("find sagas to recover"))?;
        collect(cursor, "find sagas to recover").await?.into_iter().map(SagaRecord::try_from).collect()
    }

    #[tracing::instrument(name = "db.saga.not_started", skip_all, fields(
        otel.kind = "client", db.system.name = "mongodb",
        db.collection.name = "sagas", db.operation.name = "find"
    ))]
    async fn not_started(
        &self,
        partitions: &[i32],
        before: DateTime<Utc>,
        limit: usize,
    ) -> Result<Vec<SagaRecord>, Error> {
        let mut filter = in_partitions(partitions);
        filter.insert("$or", vec![doc! { "state": "STARTED" }, doc! { "pending": true, "version": { "$lte": 2_i64 } }]);
        filter.insert("created_at", doc! { "$lt": bson_date(before) });
        let cursor = self
            .sagas
            .find(filter)
            .limit(i64::try_from(limit).unwrap_or(i64::MAX))
            .await
            .map_err(db("find sagas not started"))?;
        collect(cursor, "find sagas not started").await?.into_iter().map(SagaRecord::try_from).collect()
    }

    #[tracing::instrument(name = "db.orders_pii.insert", skip_all, fields(
        otel.kind = "client", db.system.name = "mongodb",
        db.collection.name = "orders_pii", db.operation.name = "insert"
    ))]
    async fn insert_pii(&self, order_id: Uuid, pii: &OrderPii) -> Result<(), Error> {
        let doc = PiiDoc { id: order_id.to_string(), pii: pii.clone(), created_at: Utc::now() };
        match self.pii.insert_one(doc).await {
            Ok(_) => Ok(()),
            Err(e) if is_duplicate_key(&e) => Err(Error::Duplicate { what: "order data", id: order_id.to_string() }),
            Err(e) => Err(db("insert order data")(e)),
        }
    }

    #[tracing::instrument(name = "db.orders_pii.get", skip_all, fields(
        otel.kind = "client", db.system.name = "mongodb",
        db.collection.name = "orders_pii", db.operation.name = "find"
    ))]
    async fn get_pii(&self, order_id: Uuid) -> Result<Option<OrderPii>, Error> {
        let found = self.pii.find_one(doc! { "_id": order_id.to_string() }).await.map_err(db("read order data"))?;
        Ok(found.map(|d| d.pii))
    }

    #[tracing::instrument(name = "db.orders_pii.purge", skip_all, fields(
        otel.kind = "client", db.system.name = "mongodb",
        db.collection.name = "orders_pii", db.operation.name = "delete"
    ))]
    async fn purge_pii(&self, order_id: Uuid) -> Result<bool, Error> {
        let result = self.pii.delete_one(doc! { "_id": order_id.to_string() }).await.map_err(db("purge order data"))?;
        Ok(result.deleted_count == 1)
    }

    #[tracing::instrument(name = "db.orders_pii.stored_before", skip_all, fields(
        otel.kind = "client", db.system.name = "mongodb",
        db.collection.name = "orders_pii", db.operation.name = "find"
    ))]
    async fn pii_stored_before(&self, before: DateTime<Utc>) -> Result<Vec<Uuid>, Error> {
        let read = "find stored personal data";
        let cursor = self
            .pii
            .clone_with_type::<Document>()
            .find(doc! { "created_at": { "$lt": bson_date(before) } })
            .projection(doc! { "_id": 1 })
            .await
            .map_err(db(read))?;
        let docs = collect(cursor, read).await?;
        Ok(docs.iter().filter_map(|d| Uuid::parse_str(d.get_str("_id").ok()?).ok()).collect())
    }

    async fn unmoved_finished(&self, before: DateTime<Utc>, limit: usize) -> Result<Vec<(Uuid, u64)>, Error> {
        let filter = doc! {
            "state": { "$in": FINAL_STATES.to_vec() },
            "pending": false,
            "updated_at": { "$lt": bson_date(before) },
        };
        let cursor = self
            .sagas
            .clone_with_type::<Document>()
            .find(filter)
            .projection(doc! { "_id": 1, "version": 1 })
            .limit(i64::try_from(limit).unwrap_or(i64::MAX))
            .await
            .map_err(db("find finished sagas among the live ones"))?;
        let docs = collect(cursor, "find finished sagas among the live ones").await?;
        Ok(docs
            .iter()
            .filter_map(|d| {
                let id = Uuid::parse_str(d.get_str("_id").ok()?).ok()?;
                Some((id, u64::try_from(d.get_i64("version").ok()?).ok()?))
            })
            .collect())
    }

    #[tracing::instrument(name = "db.idempotency_keys.claim", skip_all, fields(
        otel.kind = "client", db.system.name = "mongodb",
        db.collection.name = "idempotency_keys", db.operation.name = "insert"
    ))]
    async fn claim_idempotency_key(&self, key: &str, order_id: Uuid, request_hash: &str) -> Result<Claim, Error> {
        let doc = KeyDoc {
            key: key.to_owned(),
            order_id: order_id.to_string(),
            request_hash: request_hash.to_owned(),
            created_at: Utc::now(),
        };
        match self.keys.insert_one(doc).await {
            Ok(_) => Ok(Claim::New),
            Err(e) if is_duplicate_key(&e) => {
                let existing =
                    self.keys.find_one(doc! { "_id": key }).await.map_err(db("read idempotency key"))?.ok_or_else(
                        || Error::Corrupt { what: "idempotency key", id: key.to_owned(), reason: "vanished".into() },
                    )?;
                let order_id = Uuid::parse_str(&existing.order_id).map_err(|e| Error::Corrupt {
                    what: "idempotency key",
                    id: key.to_owned(),
                    reason: e.to_string(),
                })?;
                Ok(Claim::Existing { order_id, request_hash: existing.request_hash })
            }
            Err(e) => Err(db("claim idempotency key")(e)),
        }
    }

    /// Scans `sagas` for a few fields of each: no filter, since FerretDB answers only `{_id}` from an index.
    async fn census(&self, unsettled_before: DateTime<Utc>) -> Result<Census, Error> {
        let mut cursor = self
            .sagas
            .clone_with_type::<Document>()
            .find(doc! {})
            .projection(doc! { "_id": 0, "state": 1, "state_since": 1, "updated_at": 1, "pending": 1 })
            .await
            .map_err(db("read saga states"))?;
        let (mut states, mut pending) = (StateSummary::default(), 0_u64);
        while let Some(doc) = cursor.try_next().await.map_err(db("read saga states"))? {
            if let (Ok(state), Ok(since)) = (doc.get_str("state"), doc.get_datetime("state_since")) {
                states.add(state, since.to_chrono());
            }
            let stale = doc.get_datetime("updated_at").is_ok_and(|at| at.to_chrono() < unsettled_before);
            pending += u64::from(stale && doc.get_bool("pending").unwrap_or(false));
        }
        Ok(Census { states, backlog: pending })
    }

    async fn recorded_finished_census(&self) -> Result<Option<RecordedCensus>, Error> {
        let found = self.counts.find_one(doc! { "_id": FINISHED_CENSUS }).await.map_err(db("read the saga census"))?;
        let Some(census) = found.and_then(|d| d.get_document("census").ok().cloned()) else { return Ok(None) };
        // One that does not read (an older shape) is taken anew.
        Ok(bson::deserialize_from_document(census).ok())
    }

    async fn record_finished_census(&self, census: &RecordedCensus) -> Result<(), Error> {
        let corrupt = |e: bson::error::Error| Error::Corrupt {
            what: "saga census",
            id: FINISHED_CENSUS.to_owned(),
            reason: e.to_string(),
        };
        let census = bson::serialize_to_document(census).map_err(corrupt)?;
        let by_id = doc! { "_id": FINISHED_CENSUS };
        let recorded = doc! { "_id": FINISHED_CENSUS, "census": census };
        self.counts.replace_one(by_id, recorded).upsert(true).await.map_err(db("record the saga census"))?;
        Ok(())
    }

    /// Scans `sagas_finished` for the state and the time each saga entered it.
    async fn finished_census(&self, moved_before: DateTime<Utc>) -> Result<StateSummary, Error> {
        let mut cursor = self
            .finished
            .clone_with_type::<Document>()
            .find(doc! {})
            .projection(doc! { "_id": 0, "state": 1, "state_since": 1, "moved_at": 1 })
            .await
            .map_err(db("read finished saga states"))?;
        let mut states = StateSummary::default();
        while let Some(doc) = cursor.try_next().await.map_err(db("read finished saga states"))? {
            if doc.get_datetime("moved_at").is_ok_and(|at| at.to_chrono() >= moved_before) {
                continue;
            }
            if let (Ok(state), Ok(since)) = (doc.get_str("state"), doc.get_datetime("state_since")) {
                states.add(state, since.to_chrono());
            }
        }
        Ok(states)
    }

    async fn flush_finished_tally(&self) -> Result<Option<DateTime<Utc>>, Error> {
        let _one_at_a_time = self.tally.writing.lock().await;
        let docs = self.tally.prepare();
        if docs.is_empty() {
            return Ok(None);
        }
        match self.tallies.insert_many(&docs).ordered(false).await {
            Ok(_) => {}
            // Written by an earlier try whose answer was lost.
            Err(e) if is_duplicate_key(&e) => {}
            Err(e) => return Err(db("write down finished sagas")(e)),
        }
        self.tally.lock().unwritten.clear();
        Ok(docs.iter().filter_map(|d| d.get_datetime("minute").ok()).map(|m| m.to_chrono()).min())
    }

    async fn finished_tallies(&self) -> Result<Vec<FinishedTally>, Error> {
        let read = "read the finished sagas written down";
        let mut cursor = self.tallies.find(doc! {}).await.map_err(db(read))?;
        let mut tallies = std::collections::BTreeMap::new();
        while let Some(doc) = cursor.try_next().await.map_err(db(read))? {
            let (Ok(minute), Ok(counts)) = (doc.get_datetime("minute"), doc.get_document("counts")) else { continue };
            let counts: StateCounts = counts
                .iter()
                .filter_map(|(state, n)| Some((state.clone(), u64::try_from(n.as_i64()?).ok()?)))
                .collect();
            super::add_to_tally(&mut tallies, minute.to_chrono(), &counts);
        }
        Ok(tallies.into_iter().map(|(minute, counts)| FinishedTally { minute, counts }).collect())
    }

    async fn forget_finished_tallies(&self, before: DateTime<Utc>) -> Result<(), Error> {
        let filter = doc! { "minute": { "$lt": bson::DateTime::from_chrono(before) } };
        self.tallies.delete_many(filter).await.map_err(db("forget the finished sagas written down"))?;
        Ok(())
    }
}
