//! `GET /v1/shipments/{saga_id}`: a saga's shipment as JSON, without the address (status, items, country),
//! for tests and operators; 404 when the saga has none.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::routing::get;
use axum::{Json, Router};
use proto_events::{Line, Reply};
use serde::{Deserialize, Serialize};

use super::Shipping;
use super::store::{ShipmentStatus, ShipmentStore};
use crate::api::{self, Error};

/// A shipment as the API shows it: no personal data.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShipmentView {
    /// The saga.
    pub saga_id: uuid::Uuid,
    /// The shipment's id.
    pub shipment_id: Option<String>,
    /// Where it stands.
    pub status: ShipmentStatus,
    /// What is shipped.
    pub items: Vec<Line>,
    /// Destination country.
    pub country: Option<String>,
    /// The reply to the create.
    pub reply: Reply,
}

/// The shipment routes over `shipping`.
pub fn router<S: ShipmentStore>(shipping: Arc<Shipping<S>>) -> Router {
    Router::new().route("/v1/shipments/{saga_id}", get(one::<S>)).with_state(shipping)
}

async fn one<S: ShipmentStore>(
    State(shipping): State<Arc<Shipping<S>>>,
    Path(saga_id): Path<String>,
) -> Result<Json<ShipmentView>, Error> {
    let saga_id = api::saga_id(&saga_id)?;
    let shipment =
        shipping.shipment(saga_id).await?.ok_or_else(|| Error::NotFound(format!("no shipment for saga {saga_id}")))?;
    Ok(Json(ShipmentView {
        saga_id,
        shipment_id: shipment.shipment_id,
        status: shipment.status,
        items: shipment.items,
        country: shipment.country,
        reply: shipment.reply,
    }))
}
