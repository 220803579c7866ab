//! What the inventory stores: an append-only ledger of stock moves (the sum of a SKU's moves' deltas) and
//! one reservation record per saga, which is also the intent record of its reserve.
//!
//! Every move has a deterministic id (`{saga_id}:{sku}:reserve`, `{saga_id}:{sku}:release`,
//! `restock:{id}`), so writing a move twice writes it once: stock is conserved exactly whatever is
//! repeated or interrupted, without multi-document transactions. A saga's moves are only ever looked up
//! by those ids, from the lines of its reservation record (see the
//! [database access rule](crate::store#database-access-rule)).

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
        let id = Self::id(saga_id, sku, MoveKind::Reserve);
        Self { id, sku: sku.to_owned(), saga_id: Some(saga_id), kind: MoveKind::Reserve, delta: -quantity, at }
    }

    /// Saga `saga_id` gives back `quantity` of `sku` (what its reserve move took).
    pub fn release(saga_id: Uuid, sku: &str, quantity: i64, at: DateTime<Utc>) -> Self {
        let id = Self::id(saga_id, sku, MoveKind::Release);
        Self { id, sku: sku.to_owned(), saga_id: Some(saga_id), kind: MoveKind::Release, delta: quantity, at }
    }

    /// The id of saga `saga_id`'s move of `kind` (reserve or release) for `sku`.
    pub fn id(saga_id: Uuid, sku: &str, kind: MoveKind) -> String {
        format!("{saga_id}:{sku}:{}", kind.as_str())
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
    /// The intent: the reserve was decided and its lines are held, but not every reserve move may be
    /// written yet (the process was interrupted). A redelivered reserve writes the missing ones; a release
    /// gives back the ones that exist.
    Reserving,
    /// Every line is reserved: every reserve move exists.
    Reserved,
    /// Refused for lack of stock; nothing was taken.
    Refused,
    /// Released: every reserve move has its release move (or a tombstone: released before anything was
    /// reserved, so a late reserve is refused).
    Released,
}

impl ReservationStatus {
    /// The status as stored.
    pub fn as_str(self) -> &'static str {
        match self {
            ReservationStatus::Reserving => "reserving",
            ReservationStatus::Reserved => "reserved",
            ReservationStatus::Refused => "refused",
            ReservationStatus::Released => "released",
        }
    }
}

/// The record of a saga's `inventory.reserve`: written first, before any move (as `reserving`, or directly
/// as `refused`, or as a `released` tombstone), then moved on by replacing it by `_id`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reservation {
    /// The saga.
    pub saga_id: Uuid,
    /// The lines asked for (empty for a tombstone). The saga's moves are exactly one reserve move, and at
    /// most one release move, per line.
    pub lines: Vec<Line>,
    /// Where it stands.
    pub status: ReservationStatus,
    /// The reply to `inventory.reserve`, re-sent to a redelivered (or late) reserve. While `reserving`,
    /// the reply the reserve will get once complete (not sent yet).
    pub reply: Reply,
    /// When it last changed.
    pub updated_at: DateTime<Utc>,
}

/// The inventory's database. Implementations need not be safe against concurrent writers of one
/// document: the inventory is its store's only writer, one operation at a time. Every operation but
/// [`StockStore::available`] and [`StockStore::reservations_in_progress`] (start-up only) follows the
/// [database access rule](crate::store#database-access-rule).
pub trait StockStore: Send + Sync + 'static {
    /// Prepares the collections (idempotent). Creates no secondary index: nothing queries by a
    /// secondary field on the hot path.
    fn ensure_indexes(&self) -> impl Future<Output = Result<(), Error>> + Send;

    /// The sum of the moves' deltas of every SKU that has moves. Reads the whole ledger: start-up only.
    fn available(&self) -> impl Future<Output = Result<BTreeMap<String, i64>, Error>> + Send;

    /// Every reservation still `reserving`. Reads every reservation: start-up only.
    fn reservations_in_progress(&self) -> impl Future<Output = Result<Vec<Reservation>, Error>> + Send;

    /// The move whose id is `id`.
    fn find_move(&self, id: &str) -> impl Future<Output = Result<Option<StockMove>, Error>> + Send;

    /// Appends every move of `moves` whose id is not taken; a move that exists already is left as it is
    /// (it was written before). On an error, any subset of `moves` may have been written.
    fn insert_moves(&self, moves: &[StockMove]) -> impl Future<Output = Result<(), Error>> + Send;

    /// The reservation record of `saga_id`.
    fn reservation(&self, saga_id: Uuid) -> impl Future<Output = Result<Option<Reservation>, Error>> + Send;

    /// Records `reservation` unless its saga has one.
    fn insert_reservation(&self, reservation: &Reservation) -> impl Future<Output = Result<Inserted, Error>> + Send;

    /// Replaces the saga's existing record by `reservation` ([`Error::Raced`] if there is none).
    fn replace_reservation(&self, reservation: &Reservation) -> impl Future<Output = Result<(), Error>> + Send;
}
