//! Deferred settling of sagas: after a transition is written and its messages are published, the saga's
//! document still holds the published outbox and the new timeline entries. Settling appends those entries
//! to `saga_log` and empties the document's outbox and pending timeline. It is deferred by a few seconds
//! (`SAGA_SETTLE_AFTER_MS`), so that a saga whose replies come quickly settles once for several transitions:
//! the next transition's write carries the entries along and drops the published outbox. Settling a saga in
//! flight costs three database requests on FerretDB (the timeline insert, a version read and the update); a
//! saga of four quick transitions saves nine of them. Sagas that finished for good move to the finished
//! sagas when settled, with the timeline entries they hold (no timeline write), those settled together in
//! one batch (see [`crate::store::SagaStore::move_finished`]); settlements due within [`SETTLE_SLACK`] of
//! each other are taken together for that.
//!
//! What deferral changes: an instance that crashes, or loses a partition, before it settled leaves those
//! sagas "pending", and the next owner's recovery publishes their outbox again. Every message keeps its
//! id, and every consumer of a saga's messages deduplicates by id, so a re-publication has no effect but a
//! duplicate on the wire, as after a crash between a publication and the outbox clear.
//!
//! The pending settlements live at the owner of the sagas' partitions, keyed by saga; the consumer runs
//! the due ones between messages, so that a settlement never races the transitions of its saga.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use uuid::Uuid;

use crate::model::{LogEntry, SagaRecord};

/// How long a settlement waits by default (see the [module](self)).
pub const DEFAULT_SETTLE_AFTER: Duration = Duration::from_secs(5);

/// Timeline entries a saga's document holds at most before it is settled right away.
pub const MAX_UNSETTLED_ENTRIES: usize = 16;

/// Most settlements taken from the queue at once (between two messages).
pub const SETTLE_BATCH: usize = 256;

/// Settlements due this much later are taken along with a due one, so that sagas settle in batches (the
/// finished ones move to the finished sagas together: see [`crate::store::SagaStore::move_finished`]).
pub const SETTLE_SLACK: Duration = Duration::from_secs(1);

/// Settlements held at most; beyond this a transition settles right away.
pub const MAX_UNSETTLED_SAGAS: usize = 20_000;

/// How long a saga may stay unsettled before the outbox backlog gauge counts it: twice the deferral, and
/// ten seconds for the settling itself.
pub fn backlog_after(settle_after: Duration) -> Duration {
    settle_after.saturating_mul(2).saturating_add(Duration::from_secs(10))
}

/// One saga to settle: its timeline entries not in `saga_log` yet, at `version`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settlement {
    /// The saga.
    pub saga_id: Uuid,
    /// Its partition.
    pub partition: i32,
    /// The version the settlement is for: the outbox is emptied only if the saga is still at it.
    pub version: u64,
    /// The timeline entries to append.
    pub log: Vec<LogEntry>,
    /// When it is due.
    pub due: DateTime<Utc>,
    /// The saga as written at `version`, if it finished for good then: settling moves it to the finished
    /// sagas (see [`crate::store::SagaStore::move_finished`]), which needs the whole document.
    pub finished: Option<Box<SagaRecord>>,
}

impl Settlement {
    /// The settlement of `saga` as written, due now.
    pub fn of(saga: &SagaRecord, now: DateTime<Utc>) -> Self {
        Self {
            saga_id: saga.id,
            partition: saga.partition,
            version: saga.version,
            log: saga.pending_log.clone(),
            due: now,
            finished: saga.state.phase.is_final().then(|| Box::new(saga.clone())),
        }
    }
}

/// The settlements pending at this instance; see the [module](self).
#[derive(Debug, Default)]
pub struct Unsettled {
    inner: Mutex<Queue>,
}

#[derive(Debug, Default)]
struct Queue {
    by_saga: HashMap<Uuid, Settlement>,
    by_due: BTreeSet<(DateTime<Utc>, Uuid)>,
}

impl Unsettled {
    fn lock(&self) -> MutexGuard<'_, Queue> {
        // Every operation leaves both indexes consistent before it can panic.
        self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Records that `saga` (written and published) needs settling: due `after` its first unsettled
    /// transition. Returns false, recording nothing, when it should be settled right away instead (its
    /// document holds many entries already, or too many sagas wait).
    pub fn defer(&self, saga: &SagaRecord, now: DateTime<Utc>, after: Duration) -> bool {
        if after.is_zero() || saga.pending_log.len() >= MAX_UNSETTLED_ENTRIES {
            self.remove(saga.id);
            return false;
        }
        let mut queue = self.lock();
        let due = match queue.by_saga.get(&saga.id) {
            Some(earlier) => earlier.due,
            None if queue.by_saga.len() >= MAX_UNSETTLED_SAGAS => return false,
            None => now + TimeDelta::from_std(after).unwrap_or(TimeDelta::MAX),
        };
        let settlement = Settlement::of(saga, due);
        queue.by_due.insert((due, saga.id));
        queue.by_saga.insert(saga.id, settlement);
        true
    }

    /// Takes out the settlements due at `now` (all of them with `now` = `DateTime::MAX_UTC`), earliest
    /// first, at most `limit`.
    pub fn take_due(&self, now: DateTime<Utc>, limit: usize) -> Vec<Settlement> {
        let mut queue = self.lock();
        let due: Vec<(DateTime<Utc>, Uuid)> =
            queue.by_due.iter().take_while(|(at, _)| *at <= now).take(limit).copied().collect();
        due.into_iter()
            .filter_map(|key| {
                queue.by_due.remove(&key);
                queue.by_saga.remove(&key.1)
            })
            .collect()
    }

    /// Puts back a settlement that failed, due again at `due`, unless a newer one for the saga is there.
    pub fn retry(&self, mut settlement: Settlement, due: DateTime<Utc>) {
        let mut queue = self.lock();
        if queue.by_saga.contains_key(&settlement.saga_id) {
            return;
        }
        settlement.due = due;
        queue.by_due.insert((due, settlement.saga_id));
        queue.by_saga.insert(settlement.saga_id, settlement);
    }

    /// Whether a settlement of the saga waits.
    pub fn contains(&self, saga_id: Uuid) -> bool {
        self.lock().by_saga.contains_key(&saga_id)
    }

    /// When the earliest settlement is due.
    pub fn next_due(&self) -> Option<DateTime<Utc>> {
        self.lock().by_due.first().map(|(at, _)| *at)
    }

    /// Drops the saga's settlement (it is settled another way).
    pub fn remove(&self, saga_id: Uuid) {
        let mut queue = self.lock();
        if let Some(old) = queue.by_saga.remove(&saga_id) {
            queue.by_due.remove(&(old.due, saga_id));
        }
    }

    /// Drops the settlements of `partitions` (revoked from this instance: their next owner recovers them).
    pub fn forget(&self, partitions: &[i32]) {
        let mut queue = self.lock();
        let gone: Vec<(DateTime<Utc>, Uuid)> =
            queue.by_saga.values().filter(|s| partitions.contains(&s.partition)).map(|s| (s.due, s.saga_id)).collect();
        for key in gone {
            queue.by_due.remove(&key);
            queue.by_saga.remove(&key.1);
        }
    }

    /// How many sagas wait to be settled.
    pub fn len(&self) -> usize {
        self.lock().by_saga.len()
    }

    /// Whether no saga waits to be settled.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Settlements a lane settles at once while no message waits: few, so that a message arriving meanwhile
/// waits for little (a settlement of finished sagas takes two requests, whose length grows with its size).
pub const IDLE_CHUNK: usize = 4;

/// Settlements a lane settles at once between messages when messages keep coming: many, so that sagas
/// settle in few requests under load.
pub const BUSY_CHUNK: usize = 64;

/// The settlements handed to one partition's lane and not settled yet. The lane settles them while its
/// queue of messages is empty, [`IDLE_CHUNK`] at a time; when messages keep coming it settles
/// [`BUSY_CHUNK`] between two of them once that many wait or the oldest has waited [`SETTLE_SLACK`]. So a
/// lane never holds a message back for a large settlement while it could have done it idle (at one order
/// in flight, a batch of finished sagas settled between two messages held the next saga's reply for tens
/// of milliseconds), and under load the sagas still settle in large batches.
#[derive(Debug, Default)]
pub struct LaneBacklog {
    settlements: std::collections::VecDeque<Settlement>,
    /// When the oldest settlement waiting was handed over.
    since: Option<tokio::time::Instant>,
}

impl LaneBacklog {
    /// Adds settlements handed over at `now`.
    pub fn add(&mut self, settlements: Vec<Settlement>, now: tokio::time::Instant) {
        if !settlements.is_empty() && self.settlements.is_empty() {
            self.since = Some(now);
        }
        self.settlements.extend(settlements);
    }

    /// Whether none waits.
    pub fn is_empty(&self) -> bool {
        self.settlements.is_empty()
    }

    /// The next settlements to settle while no message waits.
    pub fn idle(&mut self, now: tokio::time::Instant) -> Vec<Settlement> {
        self.take(IDLE_CHUNK, now)
    }

    /// The settlements to settle before the next message, at `now`: none unless [`BUSY_CHUNK`] wait or the
    /// oldest has waited [`SETTLE_SLACK`].
    pub fn busy(&mut self, now: tokio::time::Instant) -> Vec<Settlement> {
        let overdue = self.since.is_some_and(|since| now.saturating_duration_since(since) >= SETTLE_SLACK);
        if self.settlements.len() >= BUSY_CHUNK || overdue { self.take(BUSY_CHUNK, now) } else { Vec::new() }
    }

    /// Every settlement waiting (the lane stops).
    pub fn drain(&mut self) -> Vec<Settlement> {
        self.since = None;
        self.settlements.drain(..).collect()
    }

    fn take(&mut self, limit: usize, now: tokio::time::Instant) -> Vec<Settlement> {
        let taken: Vec<Settlement> = self.settlements.drain(..limit.min(self.settlements.len())).collect();
        // What is left counts as handed over now: it waits for its turn, not for more to come.
        self.since = (!self.settlements.is_empty()).then_some(now);
        taken
    }
}

#[cfg(test)]
mod tests {
    use proto_events::commands::Currency;
    use saga_defs::SagaState;

    use super::*;
    use crate::model::{EntryKind, OrderSummary};

    fn at(seconds: i64) -> DateTime<Utc> {
        DateTime::<Utc>::from_timestamp(1_767_225_600 + seconds, 0).expect("a valid instant")
    }

    fn saga(partition: i32, version: u64, entries: usize) -> SagaRecord {
        let id = Uuid::now_v7();
        let entry = |seq| LogEntry {
            saga_id: id,
            seq,
            at: at(0),
            kind: EntryKind::Transition,
            from: "STARTED".into(),
            to: "RUNNING".into(),
            step: None,
            attempt: None,
            received: None,
            sent: Vec::new(),
            note: None,
        };
        SagaRecord {
            id,
            version,
            definition: "order_fulfilment".into(),
            definition_version: 1,
            state: SagaState::new(),
            partition,
            correlation_id: id,
            traceparent: None,
            order: OrderSummary {
                items: Vec::new(),
                amount_cents: 1,
                currency: Currency::EUR,
                customer_ref: "r".into(),
            },
            created_at: at(0),
            updated_at: at(0),
            state_since: at(0),
            outbox: Vec::new(),
            pending_log: (1..=entries as u64).map(entry).collect(),
        }
    }

    const AFTER: Duration = Duration::from_secs(5);

    #[test]
    fn a_saga_settles_once_its_first_unsettled_transition_is_old_enough_with_its_latest_entries() {
        let unsettled = Unsettled::default();
        let mut a = saga(0, 2, 2);
        assert!(unsettled.defer(&a, at(0), AFTER));
        a.version = 3;
        a.pending_log.push(LogEntry { seq: 3, ..a.pending_log[0].clone() });
        assert!(unsettled.defer(&a, at(3), AFTER), "a later transition keeps the first due time");
        let b = saga(1, 2, 2);
        assert!(unsettled.defer(&b, at(1), AFTER));
        assert_eq!((unsettled.len(), unsettled.next_due()), (2, Some(at(5))));

        assert!(unsettled.take_due(at(4), 10).is_empty());
        let due = unsettled.take_due(at(5), 10);
        assert_eq!(due.len(), 1);
        assert_eq!((due[0].saga_id, due[0].version, due[0].log.len()), (a.id, 3, 3));
        assert_eq!(unsettled.take_due(DateTime::<Utc>::MAX_UTC, 10)[0].saga_id, b.id);
        assert!(unsettled.is_empty());
    }

    #[test]
    fn a_long_pending_timeline_no_deferral_or_a_full_queue_settles_right_away() {
        let unsettled = Unsettled::default();
        assert!(!unsettled.defer(&saga(0, 20, MAX_UNSETTLED_ENTRIES), at(0), AFTER));
        assert!(!unsettled.defer(&saga(0, 2, 1), at(0), Duration::ZERO));
        assert!(unsettled.is_empty());

        let a = saga(0, 2, 1);
        assert!(unsettled.defer(&a, at(0), AFTER));
        assert!(!unsettled.defer(&saga(0, 30, MAX_UNSETTLED_ENTRIES + 1), at(0), AFTER));
        let mut long = a.clone();
        long.pending_log = saga(0, 20, MAX_UNSETTLED_ENTRIES).pending_log;
        assert!(!unsettled.defer(&long, at(1), AFTER), "the saga's deferred settlement is replaced by settling now");
        assert!(unsettled.is_empty());
    }

    #[test]
    fn revoked_partitions_are_forgotten_and_a_failed_settlement_comes_back_unless_superseded() {
        let unsettled = Unsettled::default();
        let (a, b) = (saga(0, 2, 1), saga(1, 2, 1));
        unsettled.defer(&a, at(0), AFTER);
        unsettled.defer(&b, at(0), AFTER);
        unsettled.forget(&[1, 2]);
        assert_eq!(unsettled.len(), 1);

        let failed = unsettled.take_due(at(10), 10).remove(0);
        unsettled.retry(failed.clone(), at(20));
        assert_eq!(unsettled.next_due(), Some(at(20)));
        let newer = unsettled.take_due(at(20), 1).remove(0);
        let mut later = a.clone();
        later.version = 3;
        unsettled.defer(&later, at(21), AFTER);
        unsettled.retry(newer, at(22));
        assert_eq!(unsettled.take_due(DateTime::<Utc>::MAX_UTC, 10)[0].version, 3, "the newer settlement stays");
        unsettled.defer(&a, at(0), AFTER);
        unsettled.remove(a.id);
        assert!(unsettled.is_empty() && unsettled.next_due().is_none());
    }

    #[test]
    fn a_lane_settles_a_few_at_a_time_when_idle_and_many_at_once_under_load() {
        let start = tokio::time::Instant::now();
        let later = |d: Duration| start + d;
        let settlements =
            |n: usize| -> Vec<Settlement> { (0..n).map(|_| Settlement::of(&saga(0, 2, 1), at(0))).collect() };
        let mut backlog = LaneBacklog::default();
        assert!(backlog.is_empty() && backlog.idle(start).is_empty() && backlog.busy(start).is_empty());

        let handed = settlements(10);
        let first: Vec<Uuid> = handed.iter().take(IDLE_CHUNK).map(|s| s.saga_id).collect();
        backlog.add(handed, start);
        let idle = backlog.idle(start);
        assert_eq!(idle.iter().map(|s| s.saga_id).collect::<Vec<_>>(), first, "oldest first, a few");
        assert!(backlog.busy(later(Duration::from_millis(10))).is_empty(), "few, and not waiting long: not now");
        let overdue = backlog.busy(later(SETTLE_SLACK));
        assert_eq!(overdue.len(), 10 - IDLE_CHUNK, "the rest, once the oldest waited the slack");
        assert!(backlog.is_empty());

        backlog.add(settlements(BUSY_CHUNK + 1), later(SETTLE_SLACK));
        assert_eq!(backlog.busy(later(SETTLE_SLACK)).len(), BUSY_CHUNK, "a full chunk goes at once");
        assert!(backlog.busy(later(SETTLE_SLACK * 3 / 2)).is_empty(), "what is left waits from the last chunk on");
        backlog.add(settlements(2), later(SETTLE_SLACK * 3 / 2));
        assert_eq!(backlog.drain().len(), 3);
        assert!(backlog.is_empty() && backlog.busy(later(SETTLE_SLACK * 9)).is_empty());
    }
}
