//! The stores of the simulation. The orchestrator's is the real [`MemoryStore`] behind [`FaultyStore`], a
//! [`SagaStore`] that injects the faults its instance's [`FaultPoint`] is armed with. The participants'
//! are the real in-memory stores, shared through [`Shared`] so that they outlive a participant process
//! (durable state survives a crash; the process's memory does not) and the checks can read them.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use orchestrator::model::{LogEntry, OrderPii, SagaRecord};
use orchestrator::store::memory::MemoryStore;
use orchestrator::store::{Census, Claim, Error, FinishedTally, RecordedCensus, SagaFilter, SagaStore, StateSummary};
use participants::inventory::MemoryStockStore;
use participants::inventory::store::{Reservation, StockMove, StockStore};
use participants::payment::MemoryPaymentStore;
use participants::payment::store::{Payment, PaymentStore};
use participants::shipping::MemoryShipmentStore;
use participants::shipping::store::{Shipment, ShipmentStore};
use participants::store::{Error as ParticipantError, Inserted};
use uuid::Uuid;

use crate::faults::{Fault, FaultPoint};

/// The saga store as one orchestrator instance (or the API) sees it: the shared [`MemoryStore`], with
/// the faults armed on the instance's [`FaultPoint`], and, for a stalled instance, reads it made earlier.
#[derive(Debug)]
pub struct FaultyStore {
    inner: Arc<MemoryStore>,
    faults: Arc<FaultPoint>,
    earlier_reads: Mutex<BTreeMap<Uuid, SagaRecord>>,
}

fn unanswered(operation: &'static str) -> Error {
    Error::Database { operation, source: mongodb::error::Error::custom("injected fault: the database did not answer") }
}

impl FaultyStore {
    /// `inner`, failing as `faults` says.
    pub fn new(inner: Arc<MemoryStore>, faults: Arc<FaultPoint>) -> Self {
        Self { inner, faults, earlier_reads: Mutex::new(BTreeMap::new()) }
    }

    /// The next read of the saga returns `record`: what an instance read before it stalled.
    pub fn read_earlier(&self, record: SagaRecord) {
        self.earlier_reads.lock().unwrap_or_else(PoisonError::into_inner).insert(record.id, record);
    }

    /// Forgets reads made before a stall that were not used.
    pub fn forget_earlier_reads(&self) {
        self.earlier_reads.lock().unwrap_or_else(PoisonError::into_inner).clear();
    }

    fn read(&self, operation: &'static str) -> Result<(), Error> {
        match self.faults.strike(operation) {
            Some(_) => Err(unanswered(operation)),
            None => Ok(()),
        }
    }

    /// Before a write: fails now for a fault that strikes before it; returns the one to report after it.
    fn write(&self, operation: &'static str) -> Result<Option<Fault>, Error> {
        match self.faults.strike(operation) {
            Some(fault) if !fault.after() => Err(unanswered(operation)),
            fault => Ok(fault),
        }
    }
}

/// The outcome of a write that took effect, with the fault to report after it.
fn after<T>(operation: &'static str, result: Result<T, Error>, fault: Option<Fault>) -> Result<T, Error> {
    match fault {
        Some(_) => result.and(Err(unanswered(operation))),
        None => result,
    }
}

#[async_trait]
impl SagaStore for FaultyStore {
    async fn prepare(&self) -> Result<(), Error> {
        self.inner.prepare().await
    }

    async fn insert(&self, saga: &SagaRecord) -> Result<(), Error> {
        let fault = self.write("store.insert")?;
        after("store.insert", self.inner.insert(saga).await, fault)
    }

    async fn get(&self, saga_id: Uuid) -> Result<Option<SagaRecord>, Error> {
        self.read("store.get")?;
        if let Some(earlier) = self.earlier_reads.lock().unwrap_or_else(PoisonError::into_inner).remove(&saga_id) {
            return Ok(Some(earlier));
        }
        self.inner.get(saga_id).await
    }

    async fn replace(&self, saga: &SagaRecord, expected_version: u64) -> Result<(), Error> {
        let conflict = || Error::VersionConflict { saga_id: saga.id, expected: expected_version };
        match self.faults.strike("store.replace") {
            Some(Fault::FailBefore) => Err(unanswered("store.replace")),
            Some(Fault::ConflictBefore) => Err(conflict()),
            Some(Fault::FailAfter) => {
                self.inner.replace(saga, expected_version).await.and(Err(unanswered("store.replace")))
            }
            Some(Fault::ConflictAfter) => self.inner.replace(saga, expected_version).await.and(Err(conflict())),
            None => self.inner.replace(saga, expected_version).await,
        }
    }

    async fn move_finished(&self, sagas: &[SagaRecord]) -> Result<Vec<Uuid>, Error> {
        let fault = self.write("store.move_finished")?;
        after("store.move_finished", self.inner.move_finished(sagas).await, fault)
    }

    async fn clear_pending(&self, saga_id: Uuid, version: u64) -> Result<bool, Error> {
        let fault = self.write("store.clear_pending")?;
        after("store.clear_pending", self.inner.clear_pending(saga_id, version).await, fault)
    }

    async fn append_log(&self, entries: &[LogEntry]) -> Result<(), Error> {
        let fault = self.write("store.append_log")?;
        after("store.append_log", self.inner.append_log(entries).await, fault)
    }

    async fn timeline(&self, saga_id: Uuid) -> Result<Vec<LogEntry>, Error> {
        self.read("store.timeline")?;
        self.inner.timeline(saga_id).await
    }

    async fn log_entry(&self, saga_id: Uuid, seq: u64) -> Result<Option<LogEntry>, Error> {
        self.read("store.log_entry")?;
        self.inner.log_entry(saga_id, seq).await
    }

    async fn list(&self, filter: &SagaFilter, limit: usize) -> Result<Vec<SagaRecord>, Error> {
        self.read("store.list")?;
        self.inner.list(filter, limit).await
    }

    async fn recoverable(&self, partitions: &[i32], limit: usize) -> Result<Vec<SagaRecord>, Error> {
        self.read("store.recoverable")?;
        self.inner.recoverable(partitions, limit).await
    }

    async fn not_started(
        &self,
        partitions: &[i32],
        before: DateTime<Utc>,
        limit: usize,
    ) -> Result<Vec<SagaRecord>, Error> {
        self.read("store.not_started")?;
        self.inner.not_started(partitions, before, limit).await
    }

    async fn insert_pii(&self, order_id: Uuid, pii: &OrderPii) -> Result<(), Error> {
        let fault = self.write("store.insert_pii")?;
        after("store.insert_pii", self.inner.insert_pii(order_id, pii).await, fault)
    }

    async fn get_pii(&self, order_id: Uuid) -> Result<Option<OrderPii>, Error> {
        self.read("store.get_pii")?;
        self.inner.get_pii(order_id).await
    }

    async fn purge_pii(&self, order_id: Uuid) -> Result<bool, Error> {
        let fault = self.write("store.purge_pii")?;
        after("store.purge_pii", self.inner.purge_pii(order_id).await, fault)
    }

    async fn pii_stored_before(&self, before: DateTime<Utc>) -> Result<Vec<Uuid>, Error> {
        self.read("store.pii_stored_before")?;
        self.inner.pii_stored_before(before).await
    }

    async fn claim_idempotency_key(&self, key: &str, order_id: Uuid, request_hash: &str) -> Result<Claim, Error> {
        let fault = self.write("store.claim_idempotency_key")?;
        let claimed = self.inner.claim_idempotency_key(key, order_id, request_hash).await;
        after("store.claim_idempotency_key", claimed, fault)
    }

    async fn census(&self, unsettled_before: DateTime<Utc>) -> Result<Census, Error> {
        self.read("store.census")?;
        self.inner.census(unsettled_before).await
    }

    async fn unmoved_finished(&self, before: DateTime<Utc>, limit: usize) -> Result<Vec<(Uuid, u64)>, Error> {
        self.read("store.unmoved_finished")?;
        self.inner.unmoved_finished(before, limit).await
    }

    async fn recorded_finished_census(&self) -> Result<Option<RecordedCensus>, Error> {
        self.read("store.recorded_finished_census")?;
        self.inner.recorded_finished_census().await
    }

    async fn record_finished_census(&self, census: &RecordedCensus) -> Result<(), Error> {
        let fault = self.write("store.record_finished_census")?;
        after("store.record_finished_census", self.inner.record_finished_census(census).await, fault)
    }

    async fn finished_census(&self, moved_before: DateTime<Utc>) -> Result<StateSummary, Error> {
        self.read("store.finished_census")?;
        self.inner.finished_census(moved_before).await
    }

    async fn flush_finished_tally(&self) -> Result<Option<DateTime<Utc>>, Error> {
        let fault = self.write("store.flush_finished_tally")?;
        after("store.flush_finished_tally", self.inner.flush_finished_tally().await, fault)
    }

    async fn finished_tallies(&self) -> Result<Vec<FinishedTally>, Error> {
        self.read("store.finished_tallies")?;
        self.inner.finished_tallies().await
    }

    async fn forget_finished_tallies(&self, before: DateTime<Utc>) -> Result<(), Error> {
        let fault = self.write("store.forget_finished_tallies")?;
        after("store.forget_finished_tallies", self.inner.forget_finished_tallies(before).await, fault)
    }
}

/// A participant's durable store, shared by every incarnation of the participant and by the checks.
#[derive(Debug)]
pub struct Shared<T>(pub Arc<T>);

impl<T> Clone for Shared<T> {
    fn clone(&self) -> Self {
        Self(Arc::clone(&self.0))
    }
}

impl StockStore for Shared<MemoryStockStore> {
    async fn ensure_indexes(&self) -> Result<(), ParticipantError> {
        self.0.ensure_indexes().await
    }

    async fn available(&self) -> Result<BTreeMap<String, i64>, ParticipantError> {
        self.0.available().await
    }

    async fn reservations_in_progress(&self) -> Result<Vec<Reservation>, ParticipantError> {
        self.0.reservations_in_progress().await
    }

    async fn find_move(&self, id: &str) -> Result<Option<StockMove>, ParticipantError> {
        self.0.find_move(id).await
    }

    async fn insert_moves(&self, moves: &[StockMove]) -> Result<(), ParticipantError> {
        self.0.insert_moves(moves).await
    }

    async fn reservation(&self, saga_id: Uuid) -> Result<Option<Reservation>, ParticipantError> {
        self.0.reservation(saga_id).await
    }

    async fn insert_reservation(&self, reservation: &Reservation) -> Result<Inserted, ParticipantError> {
        self.0.insert_reservation(reservation).await
    }

    async fn replace_reservation(&self, reservation: &Reservation) -> Result<(), ParticipantError> {
        self.0.replace_reservation(reservation).await
    }
}

impl PaymentStore for Shared<MemoryPaymentStore> {
    async fn ensure_indexes(&self) -> Result<(), ParticipantError> {
        self.0.ensure_indexes().await
    }

    async fn get(&self, saga_id: Uuid) -> Result<Option<Payment>, ParticipantError> {
        self.0.get(saga_id).await
    }

    async fn insert(&self, payment: &Payment) -> Result<Inserted, ParticipantError> {
        self.0.insert(payment).await
    }

    async fn set_refunded(&self, saga_id: Uuid, cents: i64, at: DateTime<Utc>) -> Result<(), ParticipantError> {
        self.0.set_refunded(saga_id, cents, at).await
    }
}

impl ShipmentStore for Shared<MemoryShipmentStore> {
    async fn ensure_indexes(&self) -> Result<(), ParticipantError> {
        self.0.ensure_indexes().await
    }

    async fn get(&self, saga_id: Uuid) -> Result<Option<Shipment>, ParticipantError> {
        self.0.get(saga_id).await
    }

    async fn insert(&self, shipment: &Shipment) -> Result<Inserted, ParticipantError> {
        self.0.insert(shipment).await
    }

    async fn set_cancelled(&self, saga_id: Uuid, at: DateTime<Utc>) -> Result<(), ParticipantError> {
        self.0.set_cancelled(saga_id, at).await
    }
}
