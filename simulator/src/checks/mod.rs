//! The invariants every seed must hold. Checked after every step: no SKU's stock below zero (see
//! [`effects::never_negative`]); no message dead-lettered; the API accepts every valid order and an
//! idempotent retry never yields a second order. Checked once the seed is quiescent, by
//! [`at_quiescence`]:
//!
//! 1. no order lost: every order the API acknowledged has its saga;
//! 2. every saga settled: COMPLETED; CANCELLED (compensated) with a reason; FAILED (parked) with a reason
//!    and where it was parked; or RESOLVED by an operator with a reason and the outcome. None is left
//!    running;
//! 3. nothing left in an outbox: every transition's messages were published and its timeline appended;
//! 4. every timeline consistent ([`timeline`]);
//! 5. stock conserved exactly and the inventory's cache exact; each saga's stock, payment and shipment fit
//!    its outcome; no charge captured and no shipment created twice ([`effects`]);
//! 6. the topics agree with the timelines ([`messages`]).

use std::collections::BTreeMap;

use orchestrator::definitions::Definitions;
use orchestrator::model::{LogEntry, SagaRecord};
use orchestrator::store::SagaStore;
use orchestrator::store::memory::MemoryStore;
use participants::inventory::MemoryStockStore;
use participants::payment::MemoryPaymentStore;
use participants::payment::store::PaymentStore;
use participants::shipping::MemoryShipmentStore;
use participants::shipping::store::ShipmentStore;
use saga_defs::Phase;
use uuid::Uuid;

use crate::kafka::Kafka;

pub mod effects;
pub mod messages;
pub mod timeline;

/// The first invariant a seed broke.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// Which invariant.
    pub invariant: &'static str,
    /// What was found.
    pub detail: String,
    /// The saga it is about, if one.
    pub saga: Option<Uuid>,
}

impl Violation {
    /// A violation of `invariant`, about `saga` if given.
    pub fn new(invariant: &'static str, saga: Option<Uuid>, detail: impl Into<String>) -> Self {
        Self { invariant, detail: detail.into(), saga }
    }
}

/// What the final checks read: the stores, the topics, and what the simulation recorded on the way.
#[derive(Debug)]
pub struct Evidence<'a> {
    /// The orchestrator's store.
    pub sagas: &'a MemoryStore,
    /// The inventory's store.
    pub stock: &'a MemoryStockStore,
    /// The payment service's store.
    pub payments: &'a MemoryPaymentStore,
    /// The shipping service's store.
    pub shipments: &'a MemoryShipmentStore,
    /// The topics.
    pub kafka: &'a Kafka,
    /// The saga definitions.
    pub definitions: &'a Definitions,
    /// The stock each SKU was seeded with.
    pub seeded: &'a BTreeMap<String, i64>,
    /// The orders the API acknowledged.
    pub acknowledged: &'a [Uuid],
    /// Charges captured and shipments created, per saga, as the participants answered (not as
    /// duplicates).
    pub fresh: &'a BTreeMap<(Uuid, &'static str), u32>,
    /// The inventory's cache of available stock, read once quiescent.
    pub cache: &'a BTreeMap<String, i64>,
}

/// Checks invariants 1 to 6 (see the module's docs) on a quiescent seed.
pub async fn at_quiescence(evidence: &Evidence<'_>) -> Result<(), Violation> {
    let sagas = evidence.sagas.all();
    if let Some(lost) = evidence.acknowledged.iter().find(|id| !sagas.iter().any(|s| s.id == **id)) {
        return Err(Violation::new("no order lost", Some(*lost), "the API acknowledged it, but there is no saga"));
    }
    let mut timelines = BTreeMap::new();
    for saga in &sagas {
        let timeline = evidence
            .sagas
            .timeline(saga.id)
            .await
            .map_err(|e| Violation::new("timeline", Some(saga.id), e.to_string()))?;
        each_saga(evidence, saga, &timeline)?;
        timelines.insert(saga.id, timeline);
    }
    stock(evidence, &sagas).await?;
    if let Some(((saga, kind), count)) = evidence.fresh.iter().find(|(_, count)| **count > 1) {
        let what = format!("{kind} took effect {count} times");
        return Err(Violation::new("effects applied once", Some(*saga), what));
    }
    messages::match_timelines(evidence.kafka, &timelines)
        .map_err(|(saga, detail)| Violation::new("messages match timelines", Some(saga), detail))
}

fn each_saga(evidence: &Evidence<'_>, saga: &SagaRecord, timeline: &[LogEntry]) -> Result<(), Violation> {
    let fail = |invariant, detail: String| Violation::new(invariant, Some(saga.id), detail);
    settled(saga).map_err(|d| fail("saga settled", d))?;
    // A finished copy keeps the timeline entries its settlement did not append to the log (they are read
    // from it); a live saga keeps nothing pending once settled.
    let unflushed = if evidence.sagas.is_live(saga.id) { saga.pending_log.len() } else { 0 };
    if !saga.outbox.is_empty() || unflushed > 0 {
        let detail = format!("{} messages and {unflushed} timeline entries never flushed", saga.outbox.len());
        return Err(fail("outbox drained", detail));
    }
    let definition = evidence
        .definitions
        .get(&saga.definition, saga.definition_version)
        .ok_or_else(|| fail("timeline consistent", "unknown definition".to_owned()))?;
    timeline::consistent(saga, timeline, definition).map_err(|d| fail("timeline consistent", d))
}

/// Whether the saga reached an end state, with what that state needs.
fn settled(saga: &SagaRecord) -> Result<(), String> {
    let state = &saga.state;
    let reason = state.reason.as_deref().is_some_and(|r| !r.trim().is_empty());
    match state.phase {
        Phase::Completed => Ok(()),
        Phase::Compensated if reason => Ok(()),
        Phase::Failed if reason && state.parked_at.is_some() => Ok(()),
        Phase::Resolved if reason && state.resolution.is_some() => Ok(()),
        Phase::Compensated | Phase::Failed | Phase::Resolved => {
            Err(format!("{} without its reason: {state:?}", state.phase.name()))
        }
        phase => Err(format!("left {} (version {}): it did not finish", phase.name(), saga.version)),
    }
}

async fn stock(evidence: &Evidence<'_>, sagas: &[SagaRecord]) -> Result<(), Violation> {
    let held = effects::moves_by_saga(evidence.stock, sagas).map_err(|d| Violation::new("stock conserved", None, d))?;
    effects::conserved(evidence.stock, evidence.seeded, &held)
        .map_err(|d| Violation::new("stock conserved", None, d))?;
    let available: BTreeMap<String, i64> =
        effects::stock_levels(evidence.stock).into_iter().map(|(sku, (_, available))| (sku, available)).collect();
    if *evidence.cache != available {
        let detail = format!("the inventory's cache says {:?}, its ledger {available:?}", evidence.cache);
        return Err(Violation::new("stock conserved", None, detail));
    }
    let reservations = evidence.stock.reservations();
    for saga in sagas {
        let failed = |d: String| Violation::new("effects fit the outcome", Some(saga.id), d);
        let read = |e: participants::store::Error| failed(format!("reading a participant's store: {e}"));
        let effects = effects::Effects {
            reservation: reservations.iter().find(|r| r.saga_id == saga.id),
            held: held.get(&saga.id),
            payment: evidence.payments.get(saga.id).await.map_err(read)?,
            shipment: evidence.shipments.get(saga.id).await.map_err(read)?,
        };
        effects::fit(saga, &effects).map_err(failed)?;
    }
    Ok(())
}
