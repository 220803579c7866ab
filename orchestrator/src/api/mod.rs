//! The orchestrator's HTTP interface: the public order API, plus the operations endpoints (health,
//! readiness, metrics). Authentication is a layer added around [`router`]'s API routes.

use std::sync::Arc;

use axum::Router;
use axum::routing::{get, post};
use platform::http::{Readiness, ops_router};
use prometheus_client::registry::Registry;

use axum::middleware::from_fn_with_state;

use crate::auth::{self, Authenticator, Caller, Role};
use crate::bus::Bus;
use crate::clock::Clock;
use crate::customer_ref::CustomerRefs;
use crate::definitions::Definitions;
use crate::metrics::Metrics;
use crate::store::SagaStore;

pub mod admin;
pub mod dlq;
pub mod events;
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
    /// Verifies bearer tokens.
    pub authenticator: Arc<Authenticator>,
    /// Lists and replays dead letters; `None` where the orchestrator runs without Kafka and a database (the
    /// in-memory test harness): the dead-letter routes then answer 503.
    pub dead_letters: Option<Arc<crate::dlq::DeadLetters>>,
    /// Status changes of every order, for server-sent events.
    pub live: Arc<crate::live::LiveEvents>,
    /// Hands a new saga to this instance's engine when it owns the saga's partition (`None`: the engine
    /// reads it from the store, as it does when another instance owns the partition).
    pub handoff: Option<crate::cache::Handoff>,
}

/// The order API (customers and operators) and the admin API (operators), behind authentication.
pub fn api_router(state: AppState) -> Router {
    let anyone: &'static [Role] = &[Role::Customer, Role::Operator];
    let operators: &'static [Role] = &[Role::Operator];
    let orders = Router::new()
        .route("/v1/orders", post(orders::place_order))
        .route("/v1/orders/{order_id}", get(orders::get_order))
        .route("/v1/orders/{order_id}/events", get(events::order_events))
        .route_layer(from_fn_with_state((state.authenticator.clone(), anyone), auth::require));
    let admin = Router::new()
        .route("/admin/whoami", get(whoami))
        .route("/admin/sagas", get(admin::list_sagas))
        .route("/admin/sagas/{saga_id}", get(admin::get_saga))
        .route("/admin/sagas/{saga_id}/{action}", post(admin::act))
        .route("/admin/dlq", get(dlq::list))
        .route("/admin/dlq/replay", post(dlq::replay))
        .route_layer(from_fn_with_state((state.authenticator.clone(), operators), auth::require));
    orders.merge(admin).with_state(state)
}

/// Who the token says the caller is (lets operators check a token).
async fn whoami(axum::Extension(caller): axum::Extension<Caller>) -> axum::Json<serde_json::Value> {
    axum::Json(serde_json::json!({ "subject": caller.subject, "roles": caller.roles }))
}

/// The whole HTTP interface: the API and the operations endpoints, every request recorded in
/// `http_request_duration_seconds`.
pub fn router(state: AppState, readiness: Readiness, registry: Arc<Registry>) -> Router {
    let http_metrics = state.metrics.service.http.clone();
    let routes = api_router(state).merge(ops_router(readiness, registry));
    platform::metrics::track_requests(routes, http_metrics)
}
