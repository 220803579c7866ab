//! The saga store port: where sagas, their timelines, the orders' personal data and idempotency keys live.
//! [`mongo::MongoStore`] is the real one (MongoDB or FerretDB); [`memory::MemoryStore`] serves unit tests
//! and the simulator.
//!
//! A saga that finished for good ([`saga_defs::Phase::is_final`]) leaves the live sagas once it is settled
//! and is kept with the finished ones: the scans of live sagas (recovery of a partition, the start sweep,
//! the census) then cost what is in flight, not everything ever stored. Reads by id ([`SagaStore::get`],
//! [`SagaStore::replace`], the timeline) find a saga wherever it is; a write to a finished saga (a late
//! duplicate's note on its timeline) brings it back among the live ones until it is settled again.
//!
//! Every write to a saga document comes from the instance that owns the saga's partition, one at a time, and
//! is conditional on the version it read: the condition fences an instance that lost the partition, and the
//! single writer keeps FerretDB (whose conditional updates are not atomic) correct.

use async_trait::async_trait;
use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::model::{LogEntry, OrderPii, SagaRecord};

pub mod memory;
pub mod mongo;

/// A store operation that failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The saga was written by someone else since it was read.
    #[error("saga {saga_id} is no longer at version {expected}")]
    VersionConflict { saga_id: Uuid, expected: u64 },
    /// A document with this id exists already.
    #[error("{what} {id} exists already")]
    Duplicate { what: &'static str, id: String },
    /// A stored document does not have the expected shape.
    #[error("stored {what} {id} is unreadable: {reason}")]
    Corrupt { what: &'static str, id: String, reason: String },
    /// The database failed or did not answer; retrying may help.
    #[error("database error during {operation}: {source}")]
    Database { operation: &'static str, source: mongodb::error::Error },
}

impl Error {
    /// Whether retrying the same operation later may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self, Error::Database { .. })
    }
}

/// The outcome of claiming an idempotency key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// The key is new and now belongs to the given order.
    New,
    /// The key was claimed before, for this order and request.
    Existing { order_id: Uuid, request_hash: String },
}

/// A saga whose deadline has passed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Due {
    /// The saga.
    pub saga_id: Uuid,
    /// Its partition.
    pub partition: i32,
    /// The deadline, as stored.
    pub deadline: saga_defs::Deadline,
    /// Shared by the saga's messages.
    pub correlation_id: Uuid,
    /// The W3C `traceparent` of the order's trace, if stored.
    pub traceparent: Option<String>,
}

impl Due {
    /// The deadline of `saga`, if it has one.
    pub fn of(saga: &SagaRecord) -> Option<Self> {
        saga.state.deadline.map(|deadline| Self {
            saga_id: saga.id,
            partition: saga.partition,
            deadline,
            correlation_id: saga.correlation_id,
            traceparent: saga.traceparent.clone(),
        })
    }
}

/// Which sagas an operator lists.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SagaFilter {
    /// In this state (`RUNNING`, ...).
    pub state: Option<String>,
    /// At this step index.
    pub step: Option<u16>,
    /// Of this definition.
    pub definition: Option<String>,
    /// In their state since before this instant ("stuck for longer than").
    pub since_before: Option<DateTime<Utc>>,
    /// With an id after this one (pagination: ids grow with creation time).
    pub after: Option<Uuid>,
}

impl SagaFilter {
    /// Whether `saga` passes the filter.
    pub fn admits(&self, saga: &SagaRecord) -> bool {
        let step = saga.state.phase.step_attempt().map(|(s, _)| s);
        self.state.as_deref().is_none_or(|s| s == saga.state.phase.name())
            && self.step.is_none_or(|s| Some(s) == step)
            && self.definition.as_deref().is_none_or(|d| d == saga.definition)
            && self.since_before.is_none_or(|t| saga.state_since < t)
            && self.after.is_none_or(|a| saga.id > a)
    }
}

/// A background scan of the store (the gauges' census, the timer's start sweep) reads every stored saga on
/// FerretDB, which answers no filter but `{_id}` from an index, so its cost grows with the stored sagas
/// (1.5 s of FerretDB's CPU at 7,600 sagas). Each is kept to at most one `MAX_SCAN_SHARE`th of the time: it
/// runs less often, the sagas' own work keeps the database.
pub const MAX_SCAN_SHARE: u32 = 20;

/// How long to wait after a background scan that took `took`: `interval`, or longer, so that the scan takes
/// at most 1/[`MAX_SCAN_SHARE`] of the time.
pub fn scan_interval(interval: std::time::Duration, took: std::time::Duration) -> std::time::Duration {
    interval.max(took.saturating_mul(MAX_SCAN_SHARE - 1))
}

/// Where sagas live.
#[async_trait]
pub trait SagaStore: Send + Sync + std::fmt::Debug {
    /// Creates the indexes the store needs (idempotent).
    async fn prepare(&self) -> Result<(), Error>;

    /// Stores a new saga; [`Error::Duplicate`] if its id exists.
    async fn insert(&self, saga: &SagaRecord) -> Result<(), Error>;

    /// The saga with this id.
    async fn get(&self, saga_id: Uuid) -> Result<Option<SagaRecord>, Error>;

    /// Replaces the saga if it is still at `expected_version`; [`Error::VersionConflict`] otherwise. A
    /// finished saga is written back among the live ones (its finished copy stays until it is settled).
    async fn replace(&self, saga: &SagaRecord, expected_version: u64) -> Result<(), Error>;

    /// Empties the outbox and pending timeline of the saga if it is still at `version` (no version bump:
    /// nothing about the saga changes); a saga finished for good then moves to the finished sagas. Returns
    /// whether it was at that version (a finished saga at that version is settled).
    async fn clear_pending(&self, saga_id: Uuid, version: u64) -> Result<bool, Error>;

    /// Settles sagas that finished for good, each as written at its version with its outbox published: each is
    /// written to the finished sagas (without outbox; an older finished copy is replaced, a newer one kept),
    /// then leaves the live sagas if still at that version. The finished copy keeps the pending timeline (the
    /// entries not appended to the log), and [`SagaStore::timeline`] and [`SagaStore::log_entry`] read them
    /// there: a saga that finished within the settling deferral, as most do, settles without a timeline
    /// write. Returns the ids of those no longer live; the others moved on meanwhile (settle them one by
    /// one). Two requests for the whole batch, where [`SagaStore::clear_pending`] takes several per saga.
    async fn move_finished(&self, sagas: &[SagaRecord]) -> Result<Vec<Uuid>, Error>;

    /// Appends timeline entries; entries already there (same saga and seq) are skipped.
    async fn append_log(&self, entries: &[LogEntry]) -> Result<(), Error>;

    /// The saga's timeline, oldest first, including entries not flushed to the log yet.
    async fn timeline(&self, saga_id: Uuid) -> Result<Vec<LogEntry>, Error>;

    /// The timeline entry with sequence number `seq`, from the log or, not appended to it, from the saga (live
    /// or finished).
    async fn log_entry(&self, saga_id: Uuid, seq: u64) -> Result<Option<LogEntry>, Error>;

    /// Sagas passing `filter`, by id, at most `limit` (an operator's query; it may scan).
    async fn list(&self, filter: &SagaFilter, limit: usize) -> Result<Vec<SagaRecord>, Error>;

    /// What an instance taking over `partitions` must know, in one scan of the live sagas: their sagas with a
    /// deadline (for the timer) or with an unsettled outbox or timeline (to publish and settle), at most
    /// `limit`.
    async fn recoverable(&self, partitions: &[i32], limit: usize) -> Result<Vec<SagaRecord>, Error>;

    /// Sagas in `partitions` created before `before` whose start may not have been published, at most `limit`:
    /// those still in STARTED (stored by an earlier version, which started sagas by a transition) and those at
    /// version 2 at most with pending work (the API stores a saga already started, at version 2, with what its
    /// start sends in its outbox: see [`crate::engine::born`]).
    async fn not_started(
        &self,
        partitions: &[i32],
        before: DateTime<Utc>,
        limit: usize,
    ) -> Result<Vec<SagaRecord>, Error>;

    /// Stores the order's personal data; [`Error::Duplicate`] if stored already.
    async fn insert_pii(&self, order_id: Uuid, pii: &OrderPii) -> Result<(), Error>;

    /// The order's personal data, unless purged.
    async fn get_pii(&self, order_id: Uuid) -> Result<Option<OrderPii>, Error>;

    /// Deletes the order's personal data; returns whether there was any.
    async fn purge_pii(&self, order_id: Uuid) -> Result<bool, Error>;

    /// The orders whose personal data is still stored and was stored before `before`: one read of the
    /// personal data not purged yet (a scan of it on FerretDB), never of every saga stored; ids only.
    async fn pii_stored_before(&self, before: DateTime<Utc>) -> Result<Vec<Uuid>, Error>;

    /// Live sagas finished for good, settled, and unchanged since before `before` (left among the live ones
    /// by a version that did not move them), with their versions, at most `limit`.
    async fn unmoved_finished(&self, before: DateTime<Utc>, limit: usize) -> Result<Vec<(Uuid, u64)>, Error>;

    /// Claims `key` for `order_id` (a new order of request `request_hash`), or says who has it.
    async fn claim_idempotency_key(&self, key: &str, order_id: Uuid, request_hash: &str) -> Result<Claim, Error>;

    /// Every live saga's state and the outbox backlog (sagas with pending work last written before
    /// `unsettled_before`), for the metrics: one background query that scans the live sagas, reading only
    /// their state, when they entered it, when they were last written and whether they have pending work,
    /// and folds them into counts as they arrive (memory stays flat however many sagas are stored).
    async fn census(&self, unsettled_before: DateTime<Utc>) -> Result<Census, Error>;

    /// The finished sagas moved there before `moved_before` (and those moved by a version that did not note
    /// when), per state, the same way: a scan of every finished saga, run seldom (see [`crate::gauges`]).
    async fn finished_census(&self, moved_before: DateTime<Utc>) -> Result<StateSummary, Error>;

    /// Writes down, where every instance reads them ([`SagaStore::finished_tallies`]), the counts of the
    /// finished copies this store made (a new copy, not one replaced) and has not written down yet, per
    /// minute they were made; returns the earliest of those minutes. Counts that could not be written are
    /// kept for the next call (with the same identity: a retry of a write that took effect counts nothing
    /// twice).
    async fn flush_finished_tally(&self) -> Result<Option<DateTime<Utc>>, Error>;

    /// The counts every instance wrote down, summed per minute, oldest first.
    async fn finished_tallies(&self) -> Result<Vec<FinishedTally>, Error>;

    /// Deletes the counts written down for the minutes before `before`.
    async fn forget_finished_tallies(&self, before: DateTime<Utc>) -> Result<(), Error>;

    /// The census of the finished sagas last recorded by any instance, if any.
    async fn recorded_finished_census(&self) -> Result<Option<RecordedCensus>, Error>;

    /// Records a census of the finished sagas (replacing the previous one).
    async fn record_finished_census(&self, census: &RecordedCensus) -> Result<(), Error>;
}

/// What the saga gauges are computed from: see [`SagaStore::census`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Census {
    /// The sagas per state name (`RUNNING`, ...), and when the oldest of each state entered it.
    pub states: StateSummary,
    /// How many sagas have had an outbox or timeline entries unsettled since before the census's cut-off.
    pub backlog: u64,
}

/// The finished sagas per state as an instance recorded them, for every instance: the sagas moved to the
/// finished ones before `cutoff`; those moved since are in the tallies ([`SagaStore::finished_tallies`]) of
/// the minutes from `cutoff` on. See [`crate::gauges`].
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RecordedCensus {
    /// The finished sagas per state.
    pub states: StateSummary,
    /// When it was recorded.
    pub at: DateTime<Utc>,
    /// How long the last count of the finished sagas one by one took, in milliseconds.
    pub took_ms: u64,
    /// The first instant of the minute up to which `states` counts (a minute's first instant). `None` in a
    /// census recorded by a version that counted everything each time: it is counted anew.
    #[serde(default)]
    pub cutoff: Option<DateTime<Utc>>,
    /// When the finished sagas were last counted one by one (`states` is that count plus the tallies
    /// folded into it since).
    #[serde(default)]
    pub counted_at: Option<DateTime<Utc>>,
}

/// Sagas per state name.
pub type StateCounts = BTreeMap<String, u64>;

/// How many sagas were moved to the finished ones within one minute, per state.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FinishedTally {
    /// The minute's first instant.
    pub minute: DateTime<Utc>,
    /// The sagas per state.
    pub counts: StateCounts,
}

/// The first instant of the minute `at` is in.
pub fn minute_of(at: DateTime<Utc>) -> DateTime<Utc> {
    use chrono::DurationRound;
    at.duration_trunc(chrono::TimeDelta::minutes(1)).unwrap_or(at)
}

/// Adds `counts` to the tally of `minute` in `tallies`.
pub fn add_to_tally(tallies: &mut BTreeMap<DateTime<Utc>, StateCounts>, minute: DateTime<Utc>, counts: &StateCounts) {
    let tally = tallies.entry(minute).or_default();
    for (state, n) in counts {
        *tally.entry(state.clone()).or_insert(0) += n;
    }
}

/// How many sagas are in each state and since when the oldest of them is there.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct StateSummary {
    counts: BTreeMap<String, u64>,
    oldest: BTreeMap<String, DateTime<Utc>>,
}

impl StateSummary {
    /// Counts one saga that entered `state` at `since`.
    pub fn add(&mut self, state: &str, since: DateTime<Utc>) {
        match self.counts.get_mut(state) {
            Some(count) => *count += 1,
            None => {
                self.counts.insert(state.to_owned(), 1);
            }
        }
        match self.oldest.get_mut(state) {
            Some(oldest) => *oldest = since.min(*oldest),
            None => {
                self.oldest.insert(state.to_owned(), since);
            }
        }
    }

    /// Counts `n` more sagas in `state` (when they entered it is not known: the oldest time stays).
    pub fn add_count(&mut self, state: &str, n: u64) {
        *self.counts.entry(state.to_owned()).or_insert(0) += n;
    }

    /// Counts the sagas of `counts` too (when they entered their states is not known).
    pub fn add_counts(&mut self, counts: &StateCounts) {
        for (state, n) in counts {
            self.add_count(state, *n);
        }
    }

    /// How many sagas are counted, in all states.
    pub fn total(&self) -> u64 {
        self.counts.values().sum()
    }

    /// How many sagas are in `state`.
    pub fn count(&self, state: &str) -> u64 {
        self.counts.get(state).copied().unwrap_or(0)
    }

    /// When the saga longest in `state` entered it, if any saga is in it.
    pub fn oldest_since(&self, state: &str) -> Option<DateTime<Utc>> {
        self.oldest.get(state).copied()
    }

    /// Adds the sagas counted in `other`.
    pub fn merge(&mut self, other: &StateSummary) {
        for (state, count) in &other.counts {
            *self.counts.entry(state.clone()).or_insert(0) += count;
        }
        for (state, since) in &other.oldest {
            let oldest = self.oldest.entry(state.clone()).or_insert(*since);
            *oldest = (*since).min(*oldest);
        }
    }

    /// Seconds the saga longest in `state` has been in it at `now`; 0 when no saga is in it.
    pub fn oldest_age_seconds(&self, state: &str, now: DateTime<Utc>) -> f64 {
        let since = self.oldest_since(state).unwrap_or(now);
        (now - since).num_milliseconds().max(0) as f64 / 1000.0
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn summaries_merge_counts_and_keep_the_oldest_time() {
        let at = |s: i64| DateTime::from_timestamp(1_767_225_600 + s, 0).expect("a valid instant");
        let mut live = StateSummary::default();
        live.add("COMPLETED", at(20));
        live.add("RUNNING", at(5));
        let mut finished = StateSummary::default();
        finished.add("COMPLETED", at(10));
        finished.add("COMPLETED", at(30));
        finished.add("RESOLVED", at(1));
        live.merge(&finished);
        assert_eq!([live.count("COMPLETED"), live.count("RUNNING"), live.count("RESOLVED")], [3, 1, 1]);
        assert_eq!(live.oldest_since("COMPLETED"), Some(at(10)));
        assert_eq!(live.oldest_since("RESOLVED"), Some(at(1)));
        live.merge(&StateSummary::default());
        assert_eq!(live.count("COMPLETED"), 3, "merging nothing changes nothing");
    }

    #[test]
    fn a_slow_scan_runs_less_often_and_takes_at_most_a_twentieth_of_the_time() {
        let interval = Duration::from_secs(15);
        assert_eq!(scan_interval(interval, Duration::from_millis(40)), interval, "a quick scan keeps the interval");
        assert_eq!(scan_interval(interval, Duration::from_secs(2)), Duration::from_secs(38));
        let took = Duration::from_secs(30);
        let wait = scan_interval(interval, took);
        assert!(took.as_secs_f64() / (took + wait).as_secs_f64() <= 0.05 + f64::EPSILON, "{wait:?}");
        assert_eq!(scan_interval(interval, Duration::MAX), Duration::MAX, "no overflow");
    }
}
