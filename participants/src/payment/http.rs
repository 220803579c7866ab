//! `GET /v1/payments/{saga_id}`: a saga's payment as JSON (never the payment token, which is not stored),
//! for tests and operators; 404 when the saga has none.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::routing::get;
use axum::{Json, Router};
use proto_events::Reply;
use proto_events::commands::Currency;
use serde::{Deserialize, Serialize};

use super::Payments;
use super::store::{PaymentStatus, PaymentStore};
use crate::api::{self, Error};

/// A payment as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaymentView {
    /// The saga.
    pub saga_id: uuid::Uuid,
    /// The payment's id.
    pub payment_id: Option<String>,
    /// Where it stands.
    pub status: PaymentStatus,
    /// Amount charged or declined, in minor units.
    pub amount_cents: i64,
    /// Currency.
    pub currency: Option<Currency>,
    /// Amount refunded.
    pub refunded_cents: i64,
    /// Keyed hash of the customer id.
    pub customer_ref: Option<String>,
    /// The reply to the charge.
    pub reply: Reply,
}

/// The payment routes over `payments`.
pub fn router<S: PaymentStore>(payments: Arc<Payments<S>>) -> Router {
    Router::new().route("/v1/payments/{saga_id}", get(one::<S>)).with_state(payments)
}

async fn one<S: PaymentStore>(
    State(payments): State<Arc<Payments<S>>>,
    Path(saga_id): Path<String>,
) -> Result<Json<PaymentView>, Error> {
    let saga_id = api::saga_id(&saga_id)?;
    let payment =
        payments.payment(saga_id).await?.ok_or_else(|| Error::NotFound(format!("no payment for saga {saga_id}")))?;
    Ok(Json(PaymentView {
        saga_id,
        payment_id: payment.payment_id,
        status: payment.status,
        amount_cents: payment.amount_cents,
        currency: payment.currency,
        refunded_cents: payment.refunded_cents,
        customer_ref: payment.customer_ref,
        reply: payment.reply,
    }))
}
