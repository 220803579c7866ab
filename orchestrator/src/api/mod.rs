//! The orchestrator's HTTP interface: the public order API, plus the operations endpoints (health,
//! readiness, metrics). Authentication is a layer added around [`router`]'s API routes.

use std::sync::Arc;

use axum::Router;
use axum::routing::{get, post};
use platform::http::{Readiness, ops_router};
use prometheus_client::registry::Registry;

use crate::bus::Bus;
use crate::clock::Clock;
use crate::customer_ref::CustomerRefs;
use crate::definitions::Definitions;
use crate::metrics::Metrics;
use crate::store::SagaStore;

pub mod extract;
pub mod orders;
pub mod problem;

/// What the handlers share.
#[derive(Debug, Clone)]
pub struct AppState {
    /// Where sagas live.
    pub store: Arc<dyn SagaStore>,
    /// Where messages go.
    pub bus: Arc<dyn Bus>,
    /// The time.
    pub clock: Arc<dyn Clock>,
    /// The saga definitions.
    pub definitions: Arc<Definitions>,
    /// Keyed customer references.
    pub customer_refs: CustomerRefs,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Partitions of the reply topic, to compute a new saga's partition.
    pub reply_partitions: i32,
}

/// The order API.
pub fn api_router(state: AppState) -> Router {
    Router::new()
        .route("/v1/orders", post(orders::place_order))
        .route("/v1/orders/{order_id}", get(orders::get_order))
        .with_state(state)
}

/// The whole HTTP interface: the API and the operations endpoints.
pub fn router(state: AppState, readiness: Readiness, registry: Arc<Registry>) -> Router {
    api_router(state).merge(ops_router(readiness, registry))
}
