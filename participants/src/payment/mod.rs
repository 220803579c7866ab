//! The payment participant: one charge per saga, refunded exactly once.
//!
//! **Charge.** The token `tok_decline`, or an amount above the limit (`PAYMENT_LIMIT_CENTS`), is declined
//! with `payment declined`; anything else is captured, with the payment id as the reply's reference. The
//! outcome is recorded in one insert keyed by the saga id, so at most one charge per saga can ever exist.
//! The insert comes first, without a read: a duplicate key means the saga has a record already (a
//! redelivered charge, or a late charge after a refund tombstone), which is then read and its saved reply
//! answered. A first charge is thus one insert, which FerretDB serves from the `_id` index, whereas a read
//! of a missing `_id` scans the collection there.
//!
//! **Refund.** The payment is read by `_id`; if it is captured, it is set to refunded by an update filtered
//! by `_id` alone, so it is refunded once however often the refund is repeated (a refunded payment is not
//! captured any more). The status check is in code, not in the update's filter, because FerretDB would
//! scan the whole collection for `{_id, status}` (see the
//! [database access rule](crate::store#database-access-rule)). A declined payment needs nothing. With no
//! payment at all, a `cancelled` tombstone is recorded so that a charge arriving late (redelivered after
//! the compensation) is refused instead of taking money.
//!
//! The payment id is derived from the saga id (`pay_<saga id, hex>`): the same on every replay, which keeps
//! the domain deterministic.

pub mod http;
pub mod memory;
pub mod mongo;
pub mod store;

use std::sync::Arc;

use axum::Router;
use mongodb::Database;
use platform::config;
use proto_events::commands::ChargePayment;
use proto_events::{Command, Meta, Participant, Reply};
use uuid::Uuid;

use self::store::{Payment, PaymentStatus, PaymentStore};
use crate::app::Service;
use crate::clock::Clock;
use crate::domain::{self, Domain, Handled, misrouted};
use crate::store::{Error, Inserted};

pub use self::memory::MemoryPaymentStore;
pub use self::mongo::MongoPaymentStore;

/// The payment service as the binary runs it.
pub type MongoPayments = Payments<MongoPaymentStore>;

/// The token that is always declined.
pub const DECLINE_TOKEN: &str = "tok_decline";

/// The reason of a declined charge.
pub const DECLINED: &str = "payment declined";

/// The reply to a charge that comes after the saga's refund.
pub const CANCELLED_BEFORE_CHARGE: &str = "the saga's payment was cancelled before it was charged";

/// The payment service's own settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PaymentSettings {
    /// `PAYMENT_LIMIT_CENTS`, default 1,000,000 (10,000.00): larger charges are declined.
    pub limit_cents: i64,
}

impl Default for PaymentSettings {
    fn default() -> Self {
        Self { limit_cents: 1_000_000 }
    }
}

impl PaymentSettings {
    /// From the environment.
    pub fn from_env() -> Result<Self, config::Error> {
        let limit_cents: i64 = config::parsed("PAYMENT_LIMIT_CENTS", Self::default().limit_cents)?;
        if limit_cents < 1 {
            let reason = "must be a positive amount in minor units".to_owned();
            return Err(config::Error::Invalid { name: "PAYMENT_LIMIT_CENTS", value: limit_cents.to_string(), reason });
        }
        Ok(Self { limit_cents })
    }
}

/// The payment domain over a [`PaymentStore`].
#[derive(Debug)]
pub struct Payments<S> {
    store: S,
    settings: PaymentSettings,
    clock: Arc<dyn Clock>,
}

impl<S: PaymentStore> Payments<S> {
    /// Creates the store's indexes.
    pub async fn open(store: S, settings: PaymentSettings, clock: Arc<dyn Clock>) -> Result<Self, Error> {
        store.ensure_indexes().await?;
        Ok(Self { store, settings, clock })
    }

    /// The store (for tests and the HTTP API).
    pub fn store(&self) -> &S {
        &self.store
    }

    /// The payment of `saga_id`, if any.
    pub async fn payment(&self, saga_id: Uuid) -> Result<Option<Payment>, Error> {
        self.store.get(saga_id).await
    }

    /// Charges `charge` for saga `saga_id`, once.
    pub async fn charge(&self, saga_id: Uuid, charge: &ChargePayment) -> Result<Handled, Error> {
        let payment = self.decide(saga_id, charge);
        self.insert_or_recorded(&payment).await
    }

    fn decide(&self, saga_id: Uuid, charge: &ChargePayment) -> Payment {
        let declined = charge.payment_token == DECLINE_TOKEN || charge.amount_cents > self.settings.limit_cents;
        let payment_id = format!("pay_{}", saga_id.simple());
        let (status, reply) = if declined {
            (PaymentStatus::Declined, Reply::business(DECLINED))
        } else {
            (PaymentStatus::Captured, Reply::Succeeded { reference: Some(payment_id.clone()) })
        };
        let now = self.clock.now();
        Payment {
            saga_id,
            payment_id: Some(payment_id),
            amount_cents: charge.amount_cents,
            currency: Some(charge.currency),
            customer_ref: Some(charge.customer_ref.clone()),
            status,
            reply,
            refunded_cents: 0,
            created_at: now,
            updated_at: now,
        }
    }

    /// Inserts `payment`; if the saga has a record already (an earlier charge, a tombstone), that one's reply
    /// wins.
    async fn insert_or_recorded(&self, payment: &Payment) -> Result<Handled, Error> {
        match self.store.insert(payment).await? {
            Inserted::New => Ok(Handled::applied(payment.reply.clone())),
            Inserted::Existed => match self.store.get(payment.saga_id).await? {
                Some(recorded) => Ok(Handled::repeated(recorded.reply)),
                None => Err(Error::Corrupt { what: "payment", reason: "exists and does not".to_owned() }),
            },
        }
    }

    /// Refunds what saga `saga_id` was charged, exactly once (nothing if it was not charged).
    pub async fn refund(&self, saga_id: Uuid) -> Result<Handled, Error> {
        let now = self.clock.now();
        let Some(payment) = self.store.get(saga_id).await? else {
            if self.store.insert(&tombstone(saga_id, now)).await? == Inserted::Existed {
                return Err(Error::Raced { what: "payment" });
            }
            return Ok(Handled::applied(Reply::ok()));
        };
        let reply = Reply::Succeeded { reference: payment.payment_id.clone() };
        match payment.status {
            PaymentStatus::Captured => {
                // Checked here rather than in the update's filter: this process is the payments' single
                // writer and handles one command at a time, so the payment read above is still captured.
                self.store.set_refunded(saga_id, payment.amount_cents, now).await?;
                tracing::info!(refunded_cents = payment.amount_cents, "refunded");
                Ok(Handled::applied(reply))
            }
            PaymentStatus::Declined => Ok(Handled::applied(reply)),
            PaymentStatus::Refunded | PaymentStatus::Cancelled => Ok(Handled::repeated(reply)),
        }
    }
}

/// The record that refuses a late charge for a saga that was refunded before it was charged.
fn tombstone(saga_id: Uuid, now: chrono::DateTime<chrono::Utc>) -> Payment {
    Payment {
        saga_id,
        payment_id: None,
        amount_cents: 0,
        currency: None,
        customer_ref: None,
        status: PaymentStatus::Cancelled,
        reply: Reply::business(CANCELLED_BEFORE_CHARGE),
        refunded_cents: 0,
        created_at: now,
        updated_at: now,
    }
}

impl<S: PaymentStore> Domain for Payments<S> {
    const PARTICIPANT: Participant = Participant::Payment;

    async fn handle(&self, meta: &Meta, command: &Command) -> Result<Handled, domain::Error> {
        match command {
            Command::PaymentCharge(charge) => Ok(self.charge(meta.saga_id, charge).await?),
            Command::PaymentRefund(_) => Ok(self.refund(meta.saga_id).await?),
            other => Err(misrouted(Participant::Payment, other)),
        }
    }
}

impl Service for Payments<MongoPaymentStore> {
    type Settings = PaymentSettings;
    const DEFAULT_HTTP_ADDR: &'static str = "127.0.0.1:8082";

    fn settings_from_env() -> Result<PaymentSettings, config::Error> {
        PaymentSettings::from_env()
    }

    async fn open(db: &Database, settings: &PaymentSettings, clock: Arc<dyn Clock>) -> Result<Self, Error> {
        Payments::open(MongoPaymentStore::new(db), *settings, clock).await
    }

    fn routes(service: Arc<Self>) -> Router {
        http::router(service)
    }
}

#[cfg(test)]
mod tests;
