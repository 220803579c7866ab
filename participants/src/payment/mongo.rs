//! The MongoDB [`PaymentStore`]. Collection `payments`: `{_id: saga id, payment_id, amount_cents (int64),
//! currency, customer_ref, status (captured|declined|refunded|cancelled), reply, refunded_cents (int64),
//! created_at, updated_at}`. Read and written by `_id` only (see the
//! [database access rule](crate::store#database-access-rule)); no secondary index.

use bson::DateTime as BsonDateTime;
use chrono::{DateTime, Utc};
use mongodb::bson::doc;
use mongodb::{Collection, Database};
use proto_events::Reply;
use proto_events::commands::Currency;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::store::{Payment, PaymentStatus, PaymentStore};
use crate::store::{Error, Inserted, by_id, insert_once};

const PAYMENTS: &str = "payments";

/// The payments collection in the service's database.
#[derive(Debug, Clone)]
pub struct MongoPaymentStore {
    payments: Collection<PaymentDoc>,
}

impl MongoPaymentStore {
    /// The store in `db`.
    pub fn new(db: &Database) -> Self {
        Self { payments: db.collection(PAYMENTS) }
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct PaymentDoc {
    #[serde(rename = "_id")]
    id: String,
    payment_id: Option<String>,
    amount_cents: i64,
    currency: Option<Currency>,
    customer_ref: Option<String>,
    status: PaymentStatus,
    reply: Reply,
    refunded_cents: i64,
    created_at: BsonDateTime,
    updated_at: BsonDateTime,
}

impl From<&Payment> for PaymentDoc {
    fn from(p: &Payment) -> Self {
        Self {
            id: p.saga_id.to_string(),
            payment_id: p.payment_id.clone(),
            amount_cents: p.amount_cents,
            currency: p.currency,
            customer_ref: p.customer_ref.clone(),
            status: p.status,
            reply: p.reply.clone(),
            refunded_cents: p.refunded_cents,
            created_at: BsonDateTime::from_chrono(p.created_at),
            updated_at: BsonDateTime::from_chrono(p.updated_at),
        }
    }
}

impl PaymentDoc {
    fn into_payment(self) -> Result<Payment, Error> {
        let saga_id =
            self.id.parse().map_err(|_| Error::Corrupt { what: "payment", reason: "_id is not a UUID".into() })?;
        Ok(Payment {
            saga_id,
            payment_id: self.payment_id,
            amount_cents: self.amount_cents,
            currency: self.currency,
            customer_ref: self.customer_ref,
            status: self.status,
            reply: self.reply,
            refunded_cents: self.refunded_cents,
            created_at: self.created_at.to_chrono(),
            updated_at: self.updated_at.to_chrono(),
        })
    }
}

impl PaymentStore for MongoPaymentStore {
    async fn ensure_indexes(&self) -> Result<(), Error> {
        Ok(())
    }

    #[tracing::instrument(name = "db.payments.get", skip_all, fields(
        otel.kind = "client", db.system.name = "mongodb",
        db.collection.name = "payments", db.operation.name = "find"
    ))]
    async fn get(&self, saga_id: Uuid) -> Result<Option<Payment>, Error> {
        let found =
            self.payments.find_one(by_id(&saga_id.to_string())).await.map_err(Error::database("find payment"))?;
        found.map(PaymentDoc::into_payment).transpose()
    }

    #[tracing::instrument(name = "db.payments.insert", skip_all, fields(
        otel.kind = "client", db.system.name = "mongodb",
        db.collection.name = "payments", db.operation.name = "insert"
    ))]
    async fn insert(&self, payment: &Payment) -> Result<Inserted, Error> {
        insert_once(&self.payments, &PaymentDoc::from(payment), "insert payment").await
    }

    #[tracing::instrument(name = "db.payments.refund", skip_all, fields(
        otel.kind = "client", db.system.name = "mongodb",
        db.collection.name = "payments", db.operation.name = "update"
    ))]
    async fn set_refunded(&self, saga_id: Uuid, refunded_cents: i64, at: DateTime<Utc>) -> Result<(), Error> {
        let update = doc! { "$set": {
            "status": PaymentStatus::Refunded.as_str(),
            "refunded_cents": refunded_cents,
            "updated_at": BsonDateTime::from_chrono(at),
        } };
        let result = (self.payments.update_one(by_id(&saga_id.to_string()), update).await)
            .map_err(Error::database("refund payment"))?;
        if result.matched_count == 0 {
            return Err(Error::Raced { what: "payment" });
        }
        Ok(())
    }
}
