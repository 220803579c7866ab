//! What the inventory stores: an append-only ledger of stock moves (the available stock of a SKU is the
//! sum of its moves' deltas) and one reservation record per saga.
//!
//! Every move has a deterministic id (`{saga_id}:{sku}:reserve`, `{saga_id}:{sku}:release`,
//! `restock:{id}`), so writing a move twice writes it once: stock is conserved exactly whatever is
//! repeated or interrupted, without multi-document transactions.

use std::collections::BTreeMap;
use std::future::Future;

use chrono::{DateTime, Utc};
use proto_events::{Line, Reply};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::store::{Error, Inserted};

/// What a stock move is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MoveKind {
    /// Stock taken by a saga (negative delta).
    Reserve,
    /// Stock a saga gave back (positive delta, the opposite of its reserve move).
    Release,
    /// Stock set by an operator or seeding (either sign).
    Restock,
}

impl MoveKind {
    /// The kind as stored.
    pub fn as_str(self) -> &'static str {
        match self {
            MoveKind::Reserve => "reserve",
            MoveKind::Release => "release",
            MoveKind::Restock => "restock",
        }
    }
}

/// One entry of the stock ledger.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StockMove {
    /// Deterministic id (see the module docs).
    pub id: String,
    /// The SKU.
    pub sku: String,
    /// The saga that made the move (none for restocks).
    pub saga_id: Option<Uuid>,
    /// What it is for.
    pub kind: MoveKind,
    /// Change of the available stock.
    pub delta: i64,
    /// When it was written.
    pub at: DateTime<Utc>,
}

impl StockMove {
    /// Saga `saga_id` takes `quantity` of `sku`.
    pub fn reserve(saga_id: Uuid, sku: &str, quantity: i64, at: DateTime<Utc>) -> Self {
        let id = format!("{saga_id}:{sku}:reserve");
        Self { id, sku: sku.to_owned(), saga_id: Some(saga_id), kind: MoveKind::Reserve, delta: -quantity, at }
    }

    /// The release of `reserve`: gives back exactly what it took.
    pub fn release_of(reserve: &StockMove, at: DateTime<Utc>) -> Self {
        let saga = reserve.saga_id.map(|s| s.to_string()).unwrap_or_default();
        Self {
            id: format!("{saga}:{}:release", reserve.sku),
            sku: reserve.sku.clone(),
            saga_id: reserve.saga_id,
            kind: MoveKind::Release,
            delta: -reserve.delta,
            at,
        }
    }

    /// A restock of `sku` by `delta`, under the unique `id`.
    pub fn restock(id: &str, sku: &str, delta: i64, at: DateTime<Utc>) -> Self {
        Self { id: format!("restock:{id}"), sku: sku.to_owned(), saga_id: None, kind: MoveKind::Restock, delta, at }
    }
}

/// Where a saga's reservation stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReservationStatus {
    /// Every line is reserved.
    Reserved,
    /// Refused for lack of stock; nothing was taken.
    Refused,
    /// Released (or a tombstone: released before anything was reserved, so a late reserve is refused).
    Released,
}

/// The record of a saga's `inventory.reserve`, written once its outcome is final.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reservation {
    /// The saga.
    pub saga_id: Uuid,
    /// The lines asked for (empty for a tombstone).
    pub lines: Vec<Line>,
    /// Where it stands.
    pub status: ReservationStatus,
    /// The reply to `inventory.reserve`, re-sent to a redelivered (or late) reserve.
    pub reply: Reply,
    /// When it last changed.
    pub updated_at: DateTime<Utc>,
}

/// The inventory's database. Implementations need not be safe against concurrent writers of one
/// document: the inventory is its store's only writer, one operation at a time.
pub trait StockStore: Send + Sync + 'static {
    /// Creates the indexes the queries need (idempotent).
    fn ensure_indexes(&self) -> impl Future<Output = Result<(), Error>> + Send;

    /// The available stock of every SKU that has moves (or of `skus` only), as the sum of the moves' deltas.
    fn available(&self, skus: Option<&[String]>) -> impl Future<Output = Result<BTreeMap<String, i64>, Error>> + Send;

    /// Appends `stock_move` unless a move with its id exists.
    fn insert_move(&self, stock_move: &StockMove) -> impl Future<Output = Result<Inserted, Error>> + Send;

    /// Every move of saga `saga_id`.
    fn saga_moves(&self, saga_id: Uuid) -> impl Future<Output = Result<Vec<StockMove>, Error>> + Send;

    /// The reservation record of `saga_id`.
    fn reservation(&self, saga_id: Uuid) -> impl Future<Output = Result<Option<Reservation>, Error>> + Send;

    /// Writes the reservation record of its saga, replacing any.
    fn put_reservation(&self, reservation: &Reservation) -> impl Future<Output = Result<(), Error>> + Send;
}
