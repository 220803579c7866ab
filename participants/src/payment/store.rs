//! What the payment service stores: one payment record per saga, whose `_id` is the saga id, so a saga can
//! never be charged twice.

use std::future::Future;

use chrono::{DateTime, Utc};
use proto_events::Reply;
use proto_events::commands::Currency;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::store::{Error, Inserted};

/// Where a saga's payment stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PaymentStatus {
    /// Charged.
    Captured,
    /// Refused (token or limit); nothing was taken.
    Declined,
    /// Charged, then refunded.
    Refunded,
    /// A tombstone: refunded before any charge, so a late charge is refused.
    Cancelled,
}

impl PaymentStatus {
    /// The status as stored.
    pub fn as_str(self) -> &'static str {
        match self {
            PaymentStatus::Captured => "captured",
            PaymentStatus::Declined => "declined",
            PaymentStatus::Refunded => "refunded",
            PaymentStatus::Cancelled => "cancelled",
        }
    }
}

/// A saga's payment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Payment {
    /// The saga (unique).
    pub saga_id: Uuid,
    /// The payment's id, sent as the reply's `reference` (none for a tombstone).
    pub payment_id: Option<String>,
    /// Amount in minor units (0 for a tombstone).
    pub amount_cents: i64,
    /// Currency (none for a tombstone).
    pub currency: Option<Currency>,
    /// Keyed hash of the customer id (not personal data; none for a tombstone).
    pub customer_ref: Option<String>,
    /// Where it stands.
    pub status: PaymentStatus,
    /// The reply to `payment.charge`, re-sent to a redelivered (or late) charge.
    pub reply: Reply,
    /// How much was refunded.
    pub refunded_cents: i64,
    /// When it was recorded.
    pub created_at: DateTime<Utc>,
    /// When it last changed.
    pub updated_at: DateTime<Utc>,
}

/// The payment database. As for every store here, the service is its only writer, and every operation
/// follows the [database access rule](crate::store#database-access-rule).
pub trait PaymentStore: Send + Sync + 'static {
    /// Prepares the collection (idempotent). Creates no secondary index: nothing queries by one.
    fn ensure_indexes(&self) -> impl Future<Output = Result<(), Error>> + Send;

    /// The payment of `saga_id`.
    fn get(&self, saga_id: Uuid) -> impl Future<Output = Result<Option<Payment>, Error>> + Send;

    /// Records `payment` unless its saga has one.
    fn insert(&self, payment: &Payment) -> impl Future<Output = Result<Inserted, Error>> + Send;

    /// Sets the saga's payment to refunded, recording `refunded_cents`: an update by `_id` alone, with no
    /// condition on the status (the caller read the payment and checked that it is captured). Fails with
    /// [`Error::Raced`] if the saga has no payment.
    fn set_refunded(
        &self,
        saga_id: Uuid,
        refunded_cents: i64,
        at: DateTime<Utc>,
    ) -> impl Future<Output = Result<(), Error>> + Send;
}
