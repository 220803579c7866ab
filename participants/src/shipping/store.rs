//! What the shipping service stores: one shipment record per saga (`_id` = saga id). The shipping
//! participant is the one service allowed to hold the delivery address; it is stored with the shipment and
//! nowhere else, and never logged ([`Shipment`]'s `Debug` redacts it).

use std::future::Future;

use chrono::{DateTime, Utc};
use proto_events::{Address, Line, Reply};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::store::{Error, Inserted};

/// Where a saga's shipment stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ShipmentStatus {
    /// Created.
    Created,
    /// Cancelled (also the tombstone of a saga cancelled before its shipment was created).
    Cancelled,
    /// Refused: the country is not served.
    Rejected,
}

impl ShipmentStatus {
    /// The status as stored.
    pub fn as_str(self) -> &'static str {
        match self {
            ShipmentStatus::Created => "created",
            ShipmentStatus::Cancelled => "cancelled",
            ShipmentStatus::Rejected => "rejected",
        }
    }
}

/// A saga's shipment.
#[derive(Clone, PartialEq, Eq)]
pub struct Shipment {
    /// The saga (unique).
    pub saga_id: Uuid,
    /// The shipment's id, sent as the reply's reference (none unless created).
    pub shipment_id: Option<String>,
    /// Where it stands.
    pub status: ShipmentStatus,
    /// What to ship (empty for a tombstone).
    pub items: Vec<Line>,
    /// Destination country (none for a tombstone).
    pub country: Option<String>,
    /// The delivery address: personal data, kept only for a created shipment.
    pub address: Option<Address>,
    /// The reply to `shipping.create`, re-sent to a redelivered (or late) create.
    pub reply: Reply,
    /// When it was recorded.
    pub created_at: DateTime<Utc>,
    /// When it last changed.
    pub updated_at: DateTime<Utc>,
}

impl std::fmt::Debug for Shipment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shipment")
            .field("saga_id", &self.saga_id)
            .field("shipment_id", &self.shipment_id)
            .field("status", &self.status)
            .field("items", &self.items)
            .field("country", &self.country)
            .field("address", &self.address.as_ref().map(|_| "<redacted>"))
            .field("reply", &self.reply)
            .finish_non_exhaustive()
    }
}

/// The shipping database. The service is its only writer, and every operation follows the
/// [database access rule](crate::store#database-access-rule).
pub trait ShipmentStore: Send + Sync + 'static {
    /// Prepares the collection (idempotent). Creates no secondary index: nothing queries by one.
    fn ensure_indexes(&self) -> impl Future<Output = Result<(), Error>> + Send;

    /// The shipment of `saga_id`.
    fn get(&self, saga_id: Uuid) -> impl Future<Output = Result<Option<Shipment>, Error>> + Send;

    /// Records `shipment` unless its saga has one.
    fn insert(&self, shipment: &Shipment) -> impl Future<Output = Result<Inserted, Error>> + Send;

    /// Sets the saga's shipment to cancelled: an update by `_id` alone, with no condition on the status (the
    /// caller read the shipment and checked that it is created). Fails with [`Error::Raced`] if the saga
    /// has no shipment.
    fn set_cancelled(&self, saga_id: Uuid, at: DateTime<Utc>) -> impl Future<Output = Result<(), Error>> + Send;
}
