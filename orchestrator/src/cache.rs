//! The sagas in flight in the partitions this instance owns, as the instance last wrote them, so that
//! applying a reply does not read the saga from the database first (one database round trip fewer per
//! transition; on FerretDB a read costs about as much CPU as a write).
//!
//! The cache is only ever a shortcut for that read: every write is still conditional on the version the
//! instance holds (see [`crate::store`]), so a stale entry, such as one held by an instance that lost its
//! partition without noticing yet, makes the write fail with a version conflict, the entry is dropped,
//! and the message is applied again to the saga as stored. Entries are dropped when the partition is
//! revoked, when the saga finishes (nothing but an operator changes it any more), and whenever applying a
//! message to the saga fails. Capacity is bounded: when full, new sagas are read from the database as before.
//!
//! Beside a cached saga the cache may keep the order's personal data, read once for the saga's first command
//! that carries it (two do): it is in memory only while the saga is, and never logged.
//!
//! A saga the API has just stored is [handed](Handoff) to the cache with its personal data when this
//! instance owns the saga's partition, so that publishing its start reads neither from the database; and its
//! start message goes straight to the lane of its partition ([`Handoff::start`]) instead of a trip through
//! Kafka.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use proto_events::Message;
use tokio::sync::mpsc;
use uuid::Uuid;

use crate::consumer::Ownership;
use crate::model::{OrderPii, SagaRecord};

/// How many sagas the cache holds at most (about 1 to 2 KiB each).
pub const DEFAULT_CAPACITY: usize = 10_000;

/// See the [module](self).
#[derive(Debug)]
pub struct SagaCache {
    sagas: Mutex<HashMap<Uuid, Cached>>,
    capacity: usize,
}

#[derive(Debug)]
struct Cached {
    saga: SagaRecord,
    pii: Option<OrderPii>,
}

impl Default for SagaCache {
    fn default() -> Self {
        Self::with_capacity(DEFAULT_CAPACITY)
    }
}

impl SagaCache {
    /// An empty cache of at most `capacity` sagas.
    pub fn with_capacity(capacity: usize) -> Self {
        Self { sagas: Mutex::new(HashMap::new()), capacity }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<Uuid, Cached>> {
        // A panic while holding the lock cannot leave the map half-changed: every operation is one call.
        self.sagas.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The saga as this instance last wrote it, if cached.
    pub fn get(&self, saga_id: Uuid) -> Option<SagaRecord> {
        self.lock().get(&saga_id).map(|c| c.saga.clone())
    }

    /// The order's personal data kept with the cached saga, if any.
    pub fn pii(&self, saga_id: Uuid) -> Option<OrderPii> {
        self.lock().get(&saga_id).and_then(|c| c.pii.clone())
    }

    /// Keeps the order's personal data with the saga, if the saga is cached.
    pub fn keep_pii(&self, saga_id: Uuid, pii: OrderPii) {
        if let Some(cached) = self.lock().get_mut(&saga_id) {
            cached.pii = Some(pii);
        }
    }

    /// Remembers `saga` as written and published (its timeline entries may wait to be
    /// [settled](crate::settle)); forgets it when it finished.
    pub fn put(&self, saga: SagaRecord) {
        let mut sagas = self.lock();
        if saga.state.phase.is_terminal() {
            sagas.remove(&saga.id);
        } else if let Some(cached) = sagas.get_mut(&saga.id) {
            cached.saga = saga;
        } else if sagas.len() < self.capacity {
            sagas.insert(saga.id, Cached { saga, pii: None });
        }
    }

    /// Records that the saga was settled at `version`: its pending timeline entries are in the log.
    pub fn settled(&self, saga_id: Uuid, version: u64) {
        if let Some(cached) = self.lock().get_mut(&saga_id).filter(|c| c.saga.version == version) {
            cached.saga.pending_log.clear();
        }
    }

    /// Forgets the saga.
    pub fn remove(&self, saga_id: Uuid) {
        self.lock().remove(&saga_id);
    }

    /// Forgets the sagas of `partitions` (revoked from this instance).
    pub fn forget(&self, partitions: &[i32]) {
        self.lock().retain(|_, cached| !partitions.contains(&cached.saga.partition));
    }

    /// How many sagas are cached.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether no saga is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Hands the sagas the API stores to this instance's engine: see the [module](self).
#[derive(Debug, Clone)]
pub struct Handoff {
    ownership: Arc<Ownership>,
    cache: Arc<SagaCache>,
    starts: Option<mpsc::Sender<HandedStart>>,
}

/// A saga's start message handed to the engine in-process: see [`Handoff::start`].
#[derive(Debug, Clone)]
pub struct HandedStart {
    /// The saga's partition of `saga.reply`.
    pub partition: i32,
    /// The start message, as it would have been published.
    pub message: Message,
    /// The W3C `traceparent` of the request that placed the order.
    pub traceparent: Option<String>,
}

/// How many handed starts may wait for their lanes; beyond that the API publishes them to Kafka.
pub const HANDED_STARTS: usize = 1024;

impl Handoff {
    /// Hands to `cache` the new sagas of the partitions in `ownership`.
    pub fn new(ownership: Arc<Ownership>, cache: Arc<SagaCache>) -> Self {
        Self { ownership, cache, starts: None }
    }

    /// The same, also handing the start messages of those sagas to `starts` (the reply consumer applies
    /// them in the lanes of their partitions).
    pub fn with_starts(mut self, starts: mpsc::Sender<HandedStart>) -> Self {
        self.starts = Some(starts);
        self
    }

    /// Hands the start message of a saga just stored (and [handed over](Self::stored)) to the engine, if this
    /// instance owns `partition` and the engine takes starts in-process and has room for it. Returns false
    /// when it did not: the caller publishes the message to Kafka, as any instance would. What the start of a
    /// saga handed over but not applied (the instance stops, the partition moves) sent is in the saga's stored
    /// outbox, so the partition's owner publishes it when it recovers the partition, or the start sweep finds
    /// the saga.
    pub fn start(&self, partition: i32, message: Message, traceparent: Option<String>) -> bool {
        let Some(starts) = &self.starts else { return false };
        self.ownership.owns(partition) && starts.try_send(HandedStart { partition, message, traceparent }).is_ok()
    }

    /// Caches `saga`, just inserted as it is, with the order's personal data, if this instance owns its
    /// partition.
    pub fn stored(&self, saga: &SagaRecord, pii: OrderPii) {
        if !self.ownership.owns(saga.partition) {
            return;
        }
        self.cache.put(saga.clone());
        self.cache.keep_pii(saga.id, pii);
        // Revoked meanwhile: the revocation may have forgotten the partition's sagas before this one came in.
        if !self.ownership.owns(saga.partition) {
            self.cache.remove(saga.id);
        }
    }

    /// The saga as this instance last wrote it, if it is in flight in a partition this instance owns: what
    /// a read of the store would return, without the read (the cache only holds what is durable). `None`
    /// means "read the store".
    pub fn current(&self, saga_id: Uuid) -> Option<SagaRecord> {
        self.cache.get(saga_id).filter(|saga| self.ownership.owns(saga.partition))
    }
}

#[cfg(test)]
mod tests {
    use saga_defs::Phase;

    use super::*;

    fn saga(partition: i32, phase: Phase) -> SagaRecord {
        SagaRecord::example(partition, phase)
    }

    #[test]
    fn holds_sagas_in_flight_and_forgets_finished_ones_revoked_partitions_and_removed_ones() {
        let cache = SagaCache::default();
        let (a, b, c) = (
            saga(0, Phase::Running { step: 1, attempt: 1 }),
            saga(1, Phase::Backoff { step: 0, attempt: 2 }),
            saga(1, Phase::Compensating { step: 0, attempt: 1 }),
        );
        for s in [&a, &b, &c] {
            cache.put(s.clone());
        }
        assert_eq!(cache.get(a.id), Some(a.clone()));
        assert_eq!(cache.len(), 3);

        let mut done = a.clone();
        done.state.phase = Phase::Completed;
        cache.put(done);
        assert_eq!(cache.get(a.id), None, "a finished saga is dropped");

        cache.remove(b.id);
        assert_eq!(cache.get(b.id), None);
        cache.forget(&[0, 2]);
        assert_eq!(cache.get(c.id), Some(c.clone()), "partition 1 is still owned");
        cache.forget(&[1]);
        assert!(cache.is_empty());
    }

    fn order_pii() -> OrderPii {
        OrderPii {
            customer_id: "c-1".into(),
            email: "a@example.com".into(),
            shipping_address: proto_events::commands::Address {
                name: "A".into(),
                line1: "Street 1".into(),
                line2: None,
                city: "Berlin".into(),
                postal_code: "10115".into(),
                country: "DE".into(),
            },
            payment_token: "tok_visa".into(),
        }
    }

    #[test]
    fn a_new_saga_is_handed_over_with_its_personal_data_only_in_an_owned_partition() {
        let (ownership, cache) = (Arc::new(Ownership::default()), Arc::new(SagaCache::default()));
        ownership.assign(&[1]);
        let handoff = Handoff::new(ownership.clone(), cache.clone());
        let (owned, other) = (saga(1, Phase::Started), saga(2, Phase::Started));
        handoff.stored(&owned, order_pii());
        handoff.stored(&other, order_pii());
        assert_eq!(cache.get(owned.id), Some(owned.clone()));
        assert_eq!(cache.pii(owned.id), Some(order_pii()));
        assert_eq!(cache.get(other.id), None, "not this instance's partition");
    }

    fn start_message(saga: &SagaRecord) -> Message {
        crate::engine::start_message(saga.id, saga.correlation_id, saga.created_at)
    }

    #[test]
    fn a_start_is_handed_over_only_in_an_owned_partition_while_the_engine_has_room() {
        let (ownership, cache) = (Arc::new(Ownership::default()), Arc::new(SagaCache::default()));
        ownership.assign(&[1]);
        let (owned, other) = (saga(1, Phase::Started), saga(2, Phase::Started));
        let without = Handoff::new(ownership.clone(), cache.clone());
        assert!(!without.start(1, start_message(&owned), None), "no engine takes starts: publish it");

        let (starts, mut handed) = mpsc::channel(1);
        let handoff = Handoff::new(ownership.clone(), cache.clone()).with_starts(starts);
        assert!(!handoff.start(2, start_message(&other), None), "not this instance's partition");
        assert!(handoff.start(1, start_message(&owned), Some("00-trace".into())));
        assert!(!handoff.start(1, start_message(&owned), None), "no room: publish it");
        let start = handed.try_recv().expect("handed over");
        assert_eq!((start.partition, start.message.meta.saga_id), (1, owned.id));
        assert_eq!(start.traceparent.as_deref(), Some("00-trace"));
        drop(handed);
        assert!(!handoff.start(1, start_message(&owned), None), "the consumer stopped: publish it");
    }

    #[test]
    fn the_current_saga_is_answered_from_the_cache_only_in_an_owned_partition() {
        let (ownership, cache) = (Arc::new(Ownership::default()), Arc::new(SagaCache::default()));
        let handoff = Handoff::new(ownership.clone(), cache.clone());
        let (mine, other) = (saga(1, Phase::Running { step: 0, attempt: 1 }), saga(2, Phase::Started));
        ownership.assign(&[1, 2]);
        cache.put(mine.clone());
        cache.put(other.clone());
        ownership.revoke(&[2]);
        assert_eq!(handoff.current(mine.id), Some(mine.clone()));
        assert_eq!(handoff.current(other.id), None, "a revoked partition's saga is read from the store");
        let mut done = mine.clone();
        done.state.phase = Phase::Completed;
        cache.put(done);
        assert_eq!(handoff.current(mine.id), None, "a finished saga is read from the store");
    }

    #[test]
    fn personal_data_is_kept_only_with_a_cached_saga_and_goes_with_it() {
        let cache = SagaCache::default();
        let pii = order_pii();
        let mut a = saga(0, Phase::Running { step: 1, attempt: 1 });
        cache.keep_pii(a.id, pii.clone());
        assert_eq!(cache.pii(a.id), None, "not cached: nothing kept");
        cache.put(a.clone());
        cache.keep_pii(a.id, pii.clone());
        a.version += 1;
        cache.put(a.clone());
        assert_eq!(cache.pii(a.id), Some(pii.clone()), "kept across the saga's writes");
        cache.forget(&[0]);
        assert_eq!(cache.pii(a.id), None);
        cache.put(a.clone());
        assert_eq!(cache.pii(a.id), None, "cached again: read again");
        cache.keep_pii(a.id, pii);
        a.state.phase = Phase::Completed;
        cache.put(a.clone());
        assert_eq!(cache.pii(a.id), None, "dropped when the saga finished");
    }

    #[test]
    fn a_full_cache_takes_no_new_sagas_but_keeps_updating_the_ones_it_holds() {
        let cache = SagaCache::with_capacity(2);
        let (a, b, c) = (
            saga(0, Phase::Running { step: 0, attempt: 1 }),
            saga(0, Phase::Running { step: 0, attempt: 1 }),
            saga(0, Phase::Running { step: 0, attempt: 1 }),
        );
        for s in [&a, &b, &c] {
            cache.put(s.clone());
        }
        assert_eq!((cache.len(), cache.get(c.id)), (2, None));
        let mut later = a.clone();
        later.version += 1;
        cache.put(later.clone());
        assert_eq!(cache.get(a.id), Some(later));
    }
}
