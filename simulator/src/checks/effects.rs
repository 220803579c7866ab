//! What the participants did, read from their own stores, against what the sagas say.
//!
//! Stock (the inventory's ledger of moves and its reservation records):
//! - never below zero, after every step: per SKU, the ledger's sum, and that sum less what open reserve
//!   intents hold (what the inventory believes is available);
//! - conserved exactly: the only restocks are the seeding; a saga's moves are only for its order's lines,
//!   a reserve move takes exactly the line's quantity, a release move gives back exactly what the reserve
//!   move took and never exists without it; so each SKU's stock is its seed less what the sagas hold;
//! - the inventory's cache, once quiescent, equals what the ledger says is available.
//!
//! Per saga, by outcome:
//! - COMPLETED: its reservation is `reserved` and it holds exactly its lines; one captured payment of the
//!   order's amount, nothing refunded; one created shipment of its lines;
//! - CANCELLED (COMPENSATED): it holds no stock (zero net reservation); nothing charged, or refunded in
//!   full (zero net charge); no shipment, or a rejected or cancelled one (no live shipment);
//! - FAILED (parked) and RESOLVED: an operator settles these by hand, so only what holds for every saga is
//!   checked: each line is either held in full or not at all, a payment (if any) is for the order's amount
//!   and refunded at most in full, at most one shipment.
//!
//! And for every saga, from the participants' own answers (not their stores): at most one charge captured
//! and at most one shipment created (a redelivered command must be answered from the saved reply).

use std::collections::BTreeMap;

use orchestrator::model::SagaRecord;
use participants::inventory::MemoryStockStore;
use participants::inventory::store::{MoveKind, Reservation, ReservationStatus, StockMove};
use participants::payment::store::{Payment, PaymentStatus};
use participants::shipping::store::{Shipment, ShipmentStatus};
use proto_events::OrderStatus;
use saga_defs::Phase;
use uuid::Uuid;

/// Per SKU: the ledger's sum, and that less what open reserve intents hold.
pub fn stock_levels(store: &MemoryStockStore) -> BTreeMap<String, (i64, i64)> {
    let moves = store.moves();
    let mut levels: BTreeMap<String, (i64, i64)> = BTreeMap::new();
    for m in &moves {
        let level = levels.entry(m.sku.clone()).or_default();
        level.0 += m.delta;
        level.1 += m.delta;
    }
    for intent in store.reservations().iter().filter(|r| r.status == ReservationStatus::Reserving) {
        for line in &intent.lines {
            let taken = StockMove::id(intent.saga_id, &line.sku, MoveKind::Reserve);
            if !moves.iter().any(|m| m.id == taken) {
                levels.entry(line.sku.clone()).or_default().1 -= i64::from(line.quantity);
            }
        }
    }
    levels
}

/// No SKU's stock is below zero, in the ledger or as the inventory counts it.
pub fn never_negative(store: &MemoryStockStore) -> Result<(), String> {
    match stock_levels(store).into_iter().find(|(_, (ledger, available))| *ledger < 0 || *available < 0) {
        Some((sku, (ledger, available))) => {
            Err(format!("{sku} is below zero: ledger {ledger}, available after open intents {available}"))
        }
        None => Ok(()),
    }
}

/// One saga's moves: units taken and given back, by SKU.
#[derive(Debug, Default)]
pub struct Held {
    taken: BTreeMap<String, i64>,
    given: BTreeMap<String, i64>,
}

impl Held {
    /// The saga's net change of each SKU's stock (negative: it holds stock).
    pub fn net(&self) -> BTreeMap<String, i64> {
        let mut net = BTreeMap::new();
        for (sku, units) in &self.taken {
            *net.entry(sku.clone()).or_insert(0) -= units;
        }
        for (sku, units) in &self.given {
            *net.entry(sku.clone()).or_insert(0) += units;
        }
        net.retain(|_, units| *units != 0);
        net
    }
}

/// Every saga's moves; an error for a move that no saga's order explains, or a restock that is not the
/// seeding.
pub fn moves_by_saga(store: &MemoryStockStore, sagas: &[SagaRecord]) -> Result<BTreeMap<Uuid, Held>, String> {
    let orders: BTreeMap<Uuid, &SagaRecord> = sagas.iter().map(|s| (s.id, s)).collect();
    let mut held: BTreeMap<Uuid, Held> = BTreeMap::new();
    for m in store.moves() {
        let Some(saga_id) = m.saga_id else {
            continue;
        };
        let line = orders.get(&saga_id).and_then(|s| s.order.items.iter().find(|l| l.sku == m.sku));
        let Some(line) = line else { return Err(format!("move {} is for no line of an order", m.id)) };
        let units = i64::from(line.quantity);
        let entry = held.entry(saga_id).or_default();
        match m.kind {
            MoveKind::Reserve if m.delta == -units => entry.taken.insert(m.sku.clone(), units),
            MoveKind::Release if m.delta == units => entry.given.insert(m.sku.clone(), units),
            _ => return Err(format!("move {} changes {} by {}, the line is {units}", m.id, m.sku, m.delta)),
        };
    }
    for (saga_id, moves) in &held {
        if let Some(sku) = moves.given.keys().find(|sku| !moves.taken.contains_key(*sku)) {
            return Err(format!("saga {saga_id} gave back {sku} it never took"));
        }
    }
    Ok(held)
}

/// Each SKU's stock is exactly its seed less what the sagas hold; the only restocks are the seed.
pub fn conserved(
    store: &MemoryStockStore,
    seeded: &BTreeMap<String, i64>,
    held: &BTreeMap<Uuid, Held>,
) -> Result<(), String> {
    let restocks = store.moves().into_iter().filter(|m| m.kind == MoveKind::Restock).count();
    if restocks != seeded.len() {
        return Err(format!("{restocks} restock moves, but only {} SKUs were seeded", seeded.len()));
    }
    let mut expected = seeded.clone();
    for (sku, units) in held.values().flat_map(Held::net) {
        *expected.entry(sku).or_insert(0) += units;
    }
    let ledger: BTreeMap<String, i64> = stock_levels(store).into_iter().map(|(sku, (sum, _))| (sku, sum)).collect();
    if ledger != expected {
        return Err(format!("the ledger says {ledger:?}, the seed less what sagas hold is {expected:?}"));
    }
    Ok(())
}

/// What one saga's participants recorded.
#[derive(Debug)]
pub struct Effects<'a> {
    /// Its reservation record.
    pub reservation: Option<&'a Reservation>,
    /// Its moves.
    pub held: Option<&'a Held>,
    /// Its payment.
    pub payment: Option<Payment>,
    /// Its shipment.
    pub shipment: Option<Shipment>,
}

/// The participants' records of `saga` fit its outcome (see the module's docs).
pub fn fit(saga: &SagaRecord, effects: &Effects<'_>) -> Result<(), String> {
    let net = effects.held.map(Held::net).unwrap_or_default();
    let lines: BTreeMap<String, i64> =
        saga.order.items.iter().map(|l| (l.sku.clone(), -i64::from(l.quantity))).collect();
    if net.iter().any(|(sku, units)| lines.get(sku) != Some(units)) {
        return Err(format!("holds part of a line: net stock change {net:?}, lines {lines:?}"));
    }
    payment_sane(saga, effects.payment.as_ref())?;
    match (saga.state.phase, saga.status()) {
        (Phase::Completed, _) => completed(saga, effects, &net, &lines),
        (Phase::Compensated, OrderStatus::Cancelled) => cancelled(effects, &net),
        _ => Ok(()),
    }
}

fn payment_sane(saga: &SagaRecord, payment: Option<&Payment>) -> Result<(), String> {
    let Some(p) = payment else { return Ok(()) };
    let charged = matches!(p.status, PaymentStatus::Captured | PaymentStatus::Refunded);
    if charged && p.amount_cents != saga.order.amount_cents {
        return Err(format!("charged {} for an order of {}", p.amount_cents, saga.order.amount_cents));
    }
    let refunded_right = match p.status {
        PaymentStatus::Refunded => p.refunded_cents == p.amount_cents,
        _ => p.refunded_cents == 0,
    };
    if !refunded_right {
        return Err(format!("payment {:?} of {} has {} refunded", p.status, p.amount_cents, p.refunded_cents));
    }
    Ok(())
}

fn completed(
    saga: &SagaRecord,
    effects: &Effects<'_>,
    net: &BTreeMap<String, i64>,
    lines: &BTreeMap<String, i64>,
) -> Result<(), String> {
    if effects.reservation.map(|r| r.status) != Some(ReservationStatus::Reserved) || net != lines {
        let status = effects.reservation.map(|r| r.status);
        return Err(format!("COMPLETED but its reservation is {status:?} holding {net:?}, not {lines:?}"));
    }
    if effects.payment.as_ref().map(|p| p.status) != Some(PaymentStatus::Captured) {
        return Err(format!("COMPLETED without a captured payment: {:?}", effects.payment));
    }
    let shipped: Option<Vec<(String, u32)>> = effects
        .shipment
        .as_ref()
        .filter(|s| s.status == ShipmentStatus::Created)
        .map(|s| s.items.iter().map(|l| (l.sku.clone(), l.quantity)).collect());
    let ordered: Vec<(String, u32)> = saga.order.items.iter().map(|l| (l.sku.clone(), l.quantity)).collect();
    if shipped.as_ref() != Some(&ordered) {
        return Err(format!("COMPLETED but its shipment is {:?}", effects.shipment));
    }
    Ok(())
}

fn cancelled(effects: &Effects<'_>, net: &BTreeMap<String, i64>) -> Result<(), String> {
    if !net.is_empty() {
        return Err(format!("CANCELLED but still holds stock: {net:?}"));
    }
    // A `reserving` intent would keep holding the stock in the inventory's count.
    if let Some(r) =
        effects.reservation.filter(|r| matches!(r.status, ReservationStatus::Reserved | ReservationStatus::Reserving))
    {
        return Err(format!("CANCELLED but its reservation is still {:?}", r.status));
    }
    if effects.payment.as_ref().is_some_and(|p| p.status == PaymentStatus::Captured) {
        return Err("CANCELLED but its payment is captured, not refunded".to_owned());
    }
    if effects.shipment.as_ref().is_some_and(|s| s.status == ShipmentStatus::Created) {
        return Err("CANCELLED but its shipment is live".to_owned());
    }
    Ok(())
}
