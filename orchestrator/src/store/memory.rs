//! An in-memory saga store for unit tests and the simulator. Same contract as the MongoDB store,
//! deterministic iteration order.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use saga_defs::Phase;
use uuid::Uuid;

use super::{Census, Claim, Error, FinishedTally, RecordedCensus, SagaFilter, SagaStore, StateCounts, StateSummary};
use crate::clock::{Clock, SystemClock};
use crate::model::{LogEntry, OrderPii, SagaRecord};

#[derive(Debug, Default)]
struct Inner {
    /// The live sagas.
    sagas: BTreeMap<Uuid, SagaRecord>,
    /// The sagas finished for good and settled (a copy stays while one is written again, as in MongoDB).
    finished: BTreeMap<Uuid, SagaRecord>,
    /// When each finished copy was first made.
    moved_at: BTreeMap<Uuid, DateTime<Utc>>,
    /// The finished copies made per minute (written down at once: there is one store).
    tallies: BTreeMap<DateTime<Utc>, StateCounts>,
    recorded_census: Option<RecordedCensus>,
    log: BTreeMap<(Uuid, u64), LogEntry>,
    /// The orders' personal data and when it was stored.
    pii: BTreeMap<Uuid, (OrderPii, DateTime<Utc>)>,
    keys: BTreeMap<String, (Uuid, String)>,
}

/// The saga store in memory.
#[derive(Debug)]
pub struct MemoryStore {
    inner: Mutex<Inner>,
    /// When finished copies are made and personal data is stored.
    clock: Arc<dyn Clock>,
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::with_clock(Arc::new(SystemClock))
    }
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty store that notes when finished copies are made and personal data is stored by `clock`.
    pub fn with_clock(clock: Arc<dyn Clock>) -> Self {
        Self { inner: Mutex::new(Inner::default()), clock }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Every saga, by id (a live one before its finished copy).
    pub fn all(&self) -> Vec<SagaRecord> {
        let inner = self.lock();
        let mut all = inner.sagas.clone();
        for (id, saga) in &inner.finished {
            all.entry(*id).or_insert_with(|| saga.clone());
        }
        all.into_values().collect()
    }

    /// Whether the saga is among the live ones (not only a finished copy).
    pub fn is_live(&self, saga_id: Uuid) -> bool {
        self.lock().sagas.contains_key(&saga_id)
    }

    /// How many sagas are live and how many finished (the finished copies of live ones included).
    pub fn sizes(&self) -> (usize, usize) {
        let inner = self.lock();
        (inner.sagas.len(), inner.finished.len())
    }
}

impl Inner {
    fn get(&self, saga_id: Uuid) -> Option<&SagaRecord> {
        self.sagas.get(&saga_id).or_else(|| self.finished.get(&saga_id))
    }

    /// Writes the finished copy of `saga` (without outbox) made at `now`: a new one is counted in the
    /// minute's tally; an older one is replaced (keeping when it was first made), a newer one kept.
    fn store_finished(&mut self, saga: &SagaRecord, now: DateTime<Utc>) {
        let mut copy = saga.clone();
        copy.outbox.clear();
        match self.finished.get(&saga.id) {
            None => {
                self.moved_at.insert(saga.id, now);
                let counts = StateCounts::from([(saga.state.phase.name().to_owned(), 1)]);
                super::add_to_tally(&mut self.tallies, super::minute_of(now), &counts);
                self.finished.insert(saga.id, copy);
            }
            Some(older) if older.version <= saga.version => {
                self.finished.insert(saga.id, copy);
            }
            Some(_) => {}
        }
    }
}

fn select<'a>(
    sagas: &'a BTreeMap<Uuid, SagaRecord>,
    partitions: &'a [i32],
    keep: impl Fn(&SagaRecord) -> bool + 'a,
) -> impl Iterator<Item = &'a SagaRecord> + 'a {
    sagas.values().filter(move |s| partitions.contains(&s.partition) && keep(s))
}

#[async_trait]
impl SagaStore for MemoryStore {
    async fn prepare(&self) -> Result<(), Error> {
        Ok(())
    }

    async fn insert(&self, saga: &SagaRecord) -> Result<(), Error> {
        let mut inner = self.lock();
        if inner.get(saga.id).is_some() {
            return Err(Error::Duplicate { what: "saga", id: saga.id.to_string() });
        }
        inner.sagas.insert(saga.id, saga.clone());
        Ok(())
    }

    async fn get(&self, saga_id: Uuid) -> Result<Option<SagaRecord>, Error> {
        Ok(self.lock().get(saga_id).cloned())
    }

    async fn replace(&self, saga: &SagaRecord, expected_version: u64) -> Result<(), Error> {
        let mut inner = self.lock();
        let finished_at_version = inner.finished.get(&saga.id).is_some_and(|f| f.version == expected_version);
        match inner.sagas.get_mut(&saga.id) {
            Some(stored) if stored.version == expected_version => {
                *stored = saga.clone();
                Ok(())
            }
            None if finished_at_version => {
                inner.sagas.insert(saga.id, saga.clone());
                Ok(())
            }
            _ => Err(Error::VersionConflict { saga_id: saga.id, expected: expected_version }),
        }
    }

    async fn clear_pending(&self, saga_id: Uuid, version: u64) -> Result<bool, Error> {
        let mut inner = self.lock();
        match inner.sagas.get_mut(&saga_id) {
            Some(stored) if stored.version == version => {
                stored.outbox.clear();
                stored.pending_log.clear();
                if stored.state.phase.is_final()
                    && let Some(saga) = inner.sagas.remove(&saga_id)
                {
                    inner.store_finished(&saga, self.clock.now());
                }
                Ok(true)
            }
            Some(_) => Ok(false),
            None => Ok(inner.finished.get(&saga_id).is_some_and(|f| f.version == version)),
        }
    }

    async fn move_finished(&self, sagas: &[SagaRecord]) -> Result<Vec<Uuid>, Error> {
        let now = self.clock.now();
        let mut inner = self.lock();
        let mut moved = Vec::new();
        for saga in sagas {
            inner.store_finished(saga, now);
            if inner.sagas.get(&saga.id).is_some_and(|live| live.version == saga.version) {
                inner.sagas.remove(&saga.id);
            }
            if !inner.sagas.contains_key(&saga.id) {
                moved.push(saga.id);
            }
        }
        Ok(moved)
    }

    async fn append_log(&self, entries: &[LogEntry]) -> Result<(), Error> {
        let mut inner = self.lock();
        for entry in entries {
            inner.log.entry((entry.saga_id, entry.seq)).or_insert_with(|| entry.clone());
        }
        Ok(())
    }

    async fn timeline(&self, saga_id: Uuid) -> Result<Vec<LogEntry>, Error> {
        let inner = self.lock();
        let mut entries: Vec<LogEntry> =
            inner.log.range((saga_id, 0)..=(saga_id, u64::MAX)).map(|(_, e)| e.clone()).collect();
        if let Some(saga) = inner.get(saga_id) {
            let pending = saga.pending_log.iter().filter(|p| !entries.iter().any(|e| e.seq == p.seq)).cloned();
            entries.extend(pending.collect::<Vec<_>>());
        }
        entries.sort_by_key(|e| e.seq);
        Ok(entries)
    }

    async fn log_entry(&self, saga_id: Uuid, seq: u64) -> Result<Option<LogEntry>, Error> {
        let inner = self.lock();
        let pending = || inner.get(saga_id)?.pending_log.iter().find(|e| e.seq == seq).cloned();
        Ok(inner.log.get(&(saga_id, seq)).cloned().or_else(pending))
    }

    async fn list(&self, filter: &SagaFilter, limit: usize) -> Result<Vec<SagaRecord>, Error> {
        Ok(self.all().into_iter().filter(|s| filter.admits(s)).take(limit).collect())
    }

    async fn recoverable(&self, partitions: &[i32], limit: usize) -> Result<Vec<SagaRecord>, Error> {
        let inner = self.lock();
        let keep = |s: &SagaRecord| s.has_pending() || s.state.deadline.is_some();
        Ok(select(&inner.sagas, partitions, keep).take(limit).cloned().collect())
    }

    async fn not_started(
        &self,
        partitions: &[i32],
        before: DateTime<Utc>,
        limit: usize,
    ) -> Result<Vec<SagaRecord>, Error> {
        let inner = self.lock();
        let unpublished = |s: &SagaRecord| s.state.phase == Phase::Started || (s.version <= 2 && s.has_pending());
        let keep = |s: &SagaRecord| unpublished(s) && s.created_at < before;
        Ok(select(&inner.sagas, partitions, keep).take(limit).cloned().collect())
    }

    async fn insert_pii(&self, order_id: Uuid, pii: &OrderPii) -> Result<(), Error> {
        let mut inner = self.lock();
        if inner.pii.contains_key(&order_id) {
            return Err(Error::Duplicate { what: "order data", id: order_id.to_string() });
        }
        inner.pii.insert(order_id, (pii.clone(), self.clock.now()));
        Ok(())
    }

    async fn get_pii(&self, order_id: Uuid) -> Result<Option<OrderPii>, Error> {
        Ok(self.lock().pii.get(&order_id).map(|(pii, _)| pii.clone()))
    }

    async fn purge_pii(&self, order_id: Uuid) -> Result<bool, Error> {
        Ok(self.lock().pii.remove(&order_id).is_some())
    }

    async fn pii_stored_before(&self, before: DateTime<Utc>) -> Result<Vec<Uuid>, Error> {
        Ok(self.lock().pii.iter().filter(|(_, (_, at))| *at < before).map(|(id, _)| *id).collect())
    }

    async fn unmoved_finished(&self, before: DateTime<Utc>, limit: usize) -> Result<Vec<(Uuid, u64)>, Error> {
        let inner = self.lock();
        let unmoved = |s: &&SagaRecord| s.state.phase.is_final() && !s.has_pending() && s.updated_at < before;
        Ok(inner.sagas.values().filter(unmoved).take(limit).map(|s| (s.id, s.version)).collect())
    }

    async fn claim_idempotency_key(&self, key: &str, order_id: Uuid, request_hash: &str) -> Result<Claim, Error> {
        let mut inner = self.lock();
        if let Some((order_id, request_hash)) = inner.keys.get(key) {
            return Ok(Claim::Existing { order_id: *order_id, request_hash: request_hash.clone() });
        }
        inner.keys.insert(key.to_owned(), (order_id, request_hash.to_owned()));
        Ok(Claim::New)
    }

    async fn census(&self, unsettled_before: DateTime<Utc>) -> Result<Census, Error> {
        let inner = self.lock();
        let mut states = StateSummary::default();
        for saga in inner.sagas.values() {
            states.add(saga.state.phase.name(), saga.state_since);
        }
        let pending = inner.sagas.values().filter(|s| s.has_pending() && s.updated_at < unsettled_before).count();
        Ok(Census { states, backlog: u64::try_from(pending).unwrap_or(u64::MAX) })
    }

    async fn recorded_finished_census(&self) -> Result<Option<RecordedCensus>, Error> {
        Ok(self.lock().recorded_census.clone())
    }

    async fn record_finished_census(&self, census: &RecordedCensus) -> Result<(), Error> {
        self.lock().recorded_census = Some(census.clone());
        Ok(())
    }

    async fn finished_census(&self, moved_before: DateTime<Utc>) -> Result<StateSummary, Error> {
        let inner = self.lock();
        let mut states = StateSummary::default();
        for saga in inner.finished.values() {
            if inner.moved_at.get(&saga.id).is_none_or(|at| *at < moved_before) {
                states.add(saga.state.phase.name(), saga.state_since);
            }
        }
        Ok(states)
    }

    async fn flush_finished_tally(&self) -> Result<Option<DateTime<Utc>>, Error> {
        Ok(None)
    }

    async fn finished_tallies(&self) -> Result<Vec<FinishedTally>, Error> {
        let inner = self.lock();
        Ok(inner
            .tallies
            .iter()
            .map(|(minute, counts)| FinishedTally { minute: *minute, counts: counts.clone() })
            .collect())
    }

    async fn forget_finished_tallies(&self, before: DateTime<Utc>) -> Result<(), Error> {
        self.lock().tallies.retain(|minute, _| *minute >= before);
        Ok(())
    }
}
