//! The public order API: place an order (which starts its saga) and read its status.

use axum::Extension;
use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use garde::Validate;
use platform::kafka::partition_for;
use proto_events::commands::Currency;
use proto_events::{Address, Message, OrderStatus, topics};
use saga_defs::SagaState;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tracing::Instrument;
use tracing::field::{Empty, display};
use uuid::Uuid;

use super::AppState;
use super::extract::json_body;
use super::problem::{FieldError, Problem};
use crate::auth::{Caller, Role};
use crate::model::{EntryKind, LogEntry, OrderLine, OrderPii, OrderSummary, SagaRecord};
use crate::store::{Claim, Error as StoreError};

/// The saga every order runs.
pub const ORDER_SAGA: &str = "order_fulfilment";

/// One line of a new order.
#[derive(Debug, Clone, Deserialize, Serialize, Validate)]
#[serde(deny_unknown_fields)]
pub struct OrderItem {
    /// The SKU, such as `SKU-1`.
    #[garde(pattern(r"^[A-Z0-9][A-Z0-9-]{0,31}$"))]
    pub sku: String,
    /// Units, 1 to 10,000.
    #[garde(range(min = 1, max = 10_000))]
    pub quantity: u32,
    /// Price of one unit in the currency's minor unit.
    #[garde(range(min = 0, max = 100_000_000))]
    pub unit_price_cents: i64,
}

fn distinct_skus(items: &[OrderItem], _: &()) -> garde::Result {
    let mut skus: Vec<&str> = items.iter().map(|i| i.sku.as_str()).collect();
    skus.sort_unstable();
    match skus.windows(2).find(|w| w[0] == w[1]) {
        Some(w) => Err(garde::Error::new(format!("SKU {} appears more than once; add the quantities up", w[0]))),
        None => Ok(()),
    }
}

/// `POST /v1/orders`.
#[derive(Debug, Clone, Deserialize, Serialize, Validate)]
#[serde(deny_unknown_fields)]
pub struct PlaceOrder {
    /// Who orders.
    #[garde(pattern(r"^[A-Za-z0-9_.:@-]{1,64}$"))]
    pub customer_id: String,
    /// Where to send order mail.
    #[garde(email, length(max = 254))]
    pub email: String,
    /// What to order: 1 to 100 lines, each SKU once.
    #[garde(length(min = 1, max = 100), custom(distinct_skus), dive)]
    pub items: Vec<OrderItem>,
    /// The currency of the prices.
    #[garde(skip)]
    pub currency: Currency,
    /// The payment provider's token for the customer's payment method.
    #[garde(pattern(r"^[A-Za-z0-9_-]{1,64}$"))]
    pub payment_token: String,
    /// Where to ship.
    #[garde(dive)]
    pub shipping_address: Address,
}

/// The answer to placing an order.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Placed {
    /// The order's id (also its saga's id).
    pub order_id: Uuid,
    /// `PENDING` for a new order.
    pub status: OrderStatus,
    /// The saga's state.
    pub state: String,
    /// Where to read the order.
    pub href: String,
}

/// `GET /v1/orders/{order_id}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OrderView {
    /// The order's id.
    pub order_id: Uuid,
    /// `PENDING`, `COMPLETED`, `CANCELLED` (compensated) or `FAILED` (parked for an operator).
    pub status: OrderStatus,
    /// The saga's state, such as `RUNNING`.
    pub state: String,
    /// The step the saga is at, if any.
    pub step: Option<String>,
    /// The attempt of that step.
    pub attempt: Option<u32>,
    /// Why the saga is compensating, cancelled or parked.
    pub reason: Option<String>,
    /// The saga's version (increases with every change).
    pub version: u64,
    /// The lines.
    pub items: Vec<OrderLine>,
    /// The total.
    pub amount_cents: i64,
    /// The currency.
    pub currency: Currency,
    /// When the order was placed.
    pub created_at: DateTime<Utc>,
    /// When it last changed.
    pub updated_at: DateTime<Utc>,
}

/// Places an order: stores it and its saga, then starts the saga. Answers 202 with the order id; with an
/// `Idempotency-Key`, a retried request answers with the same order instead of placing another.
///
/// Its span is the root of the order's trace (or continues the caller's, from a `traceparent` header);
/// the saga keeps that trace context, and every message of the order continues it.
pub async fn place_order(
    State(app): State<AppState>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let span = tracing::info_span!(
        "orders.place",
        otel.kind = "server",
        otel.name = "POST /v1/orders",
        http.request.method = "POST",
        http.route = "/v1/orders",
        http.response.status_code = Empty,
        saga_id = Empty,
        order_id = Empty,
        correlation_id = Empty,
        trace_id = Empty,
    );
    platform::telemetry::continue_trace(&span, platform::telemetry::context_from_http(&headers));
    let response = match place(&app, &caller, &headers, &body).instrument(span.clone()).await {
        Ok((placed, fresh)) => {
            let status = if fresh { StatusCode::ACCEPTED } else { StatusCode::OK };
            let location = HeaderValue::from_str(&placed.href).expect("an href is a valid header value");
            (status, [(header::LOCATION, location)], Json(placed)).into_response()
        }
        Err(problem) => problem.into_response(),
    };
    span.record("http.response.status_code", response.status().as_u16());
    response
}

async fn place(app: &AppState, caller: &Caller, headers: &HeaderMap, body: &[u8]) -> Result<(Placed, bool), Problem> {
    let order: PlaceOrder = json_body(headers, body)?;
    if !caller.is(Role::Operator) && order.customer_id != caller.subject {
        return Err(Problem::forbidden(
            "a customer can place orders only for themselves (customer_id must be the token's subject)",
        ));
    }
    let amount_cents = total(&order)?;
    let customer_ref = app.customer_refs.of(&order.customer_id);
    let key = idempotency_key(headers)?;
    let mut order_id = proto_events::ids::new_v7();
    let mut fresh = true;
    if let Some(key) = key {
        let request_hash = hex::encode(Sha256::digest(body));
        match app.store.claim_idempotency_key(&format!("{customer_ref}:{key}"), order_id, &request_hash).await? {
            Claim::New => {}
            Claim::Existing { request_hash: stored, .. } if stored != request_hash => {
                return Err(Problem::idempotency_mismatch());
            }
            Claim::Existing { order_id: existing, .. } => {
                order_id = existing;
                fresh = false;
            }
        }
    }
    let span = tracing::Span::current();
    span.record("saga_id", display(order_id));
    span.record("order_id", display(order_id));
    if !fresh && let Some(saga) = app.store.get(order_id).await? {
        span.record("correlation_id", display(saga.correlation_id));
        return Ok((placed(&saga), false));
    }
    let correlation_id = correlation_id(headers);
    span.record("correlation_id", display(correlation_id));
    let (saga, start_message) = new_saga(app, order_id, correlation_id, &order, amount_cents, customer_ref)?;
    let pii = OrderPii {
        customer_id: order.customer_id.clone(),
        email: order.email.clone(),
        shipping_address: order.shipping_address.clone(),
        payment_token: order.payment_token.clone(),
    };
    let stored = store_order(app, &saga, &pii).await?;
    if stored && let Some(handoff) = &app.handoff {
        handoff.stored(&saga, pii);
    }
    app.metrics.sagas_created.inc();
    if stored {
        app.metrics.entered(saga.state.phase, saga.status(), 0.0);
    }
    start(app, &saga, start_message, stored).await;
    Ok((placed(&saga), true))
}

fn total(order: &PlaceOrder) -> Result<i64, Problem> {
    let total = order.items.iter().try_fold(0_i64, |sum, item| {
        item.unit_price_cents.checked_mul(i64::from(item.quantity)).and_then(|line| sum.checked_add(line))
    });
    match total {
        Some(total) if (1..=1_000_000_000_000).contains(&total) => Ok(total),
        _ => Err(Problem::validation(
            "the order total must be between 1 and 1,000,000,000,000 minor units",
            vec![FieldError { field: "items".into(), message: "order total out of range".into() }],
        )),
    }
}

fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, Problem> {
    let Some(value) = headers.get("idempotency-key") else { return Ok(None) };
    let valid = value.to_str().ok().filter(|v| (1..=255).contains(&v.len()) && v.bytes().all(|b| b.is_ascii_graphic()));
    match valid {
        Some(v) => Ok(Some(v.to_owned())),
        None => Err(Problem::validation(
            "the Idempotency-Key header must be 1 to 255 visible ASCII characters",
            vec![FieldError { field: "Idempotency-Key".into(), message: "invalid header".into() }],
        )),
    }
}

/// The caller's correlation id (`X-Correlation-Id`, if it is a UUID), or a new one.
fn correlation_id(headers: &HeaderMap) -> Uuid {
    headers
        .get("x-correlation-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| Uuid::parse_str(v).ok())
        .unwrap_or_else(proto_events::ids::new_v7)
}

/// The order's saga as it is stored, already started (see [`crate::engine::born`]), and the start message
/// that asks the owner of its partition to publish what the start sent.
fn new_saga(
    app: &AppState,
    order_id: Uuid,
    correlation_id: Uuid,
    order: &PlaceOrder,
    amount_cents: i64,
    customer_ref: String,
) -> Result<(SagaRecord, Message), Problem> {
    let definition = app.definitions.latest(ORDER_SAGA).ok_or_else(|| {
        tracing::error!("the order saga definition is missing");
        Problem::internal()
    })?;
    let now = app.clock.now();
    let items = order
        .items
        .iter()
        .map(|i| OrderLine { sku: i.sku.clone(), quantity: i.quantity, unit_price_cents: i.unit_price_cents })
        .collect();
    let created = LogEntry {
        saga_id: order_id,
        seq: 1,
        at: now,
        kind: EntryKind::Created,
        from: String::new(),
        to: "STARTED".into(),
        step: None,
        attempt: None,
        received: None,
        sent: Vec::new(),
        note: None,
    };
    let created = SagaRecord {
        id: order_id,
        version: 1,
        definition: definition.name.to_owned(),
        definition_version: definition.version,
        state: SagaState::new(),
        partition: partition_for(order_id.to_string().as_bytes(), app.reply_partitions),
        correlation_id,
        // The request's span: the root of the order's trace.
        traceparent: platform::telemetry::traceparent(&tracing::Span::current()),
        order: OrderSummary { items, amount_cents, currency: order.currency, customer_ref },
        created_at: now,
        updated_at: now,
        state_since: now,
        outbox: Vec::new(),
        pending_log: vec![created],
    };
    let start = crate::engine::start_message(order_id, correlation_id, now);
    let saga = crate::engine::born(&created, &start, definition, now);
    Ok((saga, start))
}

/// Stores the order's personal data, then its saga; true if the saga was stored as it is now (false: it was
/// there already). Either may exist already when a request is retried with the same idempotency key after a
/// failure.
async fn store_order(app: &AppState, saga: &SagaRecord, pii: &OrderPii) -> Result<bool, Problem> {
    match app.store.insert_pii(saga.id, pii).await {
        Ok(()) | Err(StoreError::Duplicate { .. }) => {}
        Err(e) => return Err(e.into()),
    }
    match app.store.insert(saga).await {
        Ok(()) => Ok(true),
        Err(StoreError::Duplicate { .. }) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// Has the saga's start published: hands the start message to this instance's engine when it owns the saga's
/// partition and the saga was `stored` by this request (see [`crate::cache::Handoff::start`]), else publishes
/// it to the partition's owner. If publishing fails the saga is still stored, started: the owner of its
/// partition publishes what its start sent after the start grace period (the start sweep).
async fn start(app: &AppState, saga: &SagaRecord, message: Message, stored: bool) {
    let handoff = app.handoff.as_ref().filter(|_| stored);
    if handoff.is_some_and(|handoff| handoff.start(saga.partition, message.clone(), saga.traceparent.clone())) {
        return;
    }
    if let Err(error) = app.bus.publish(topics::REPLY, &message).await {
        tracing::warn!(%error, "cannot publish the saga start; the start sweep will publish it");
    }
}

fn placed(saga: &SagaRecord) -> Placed {
    Placed {
        order_id: saga.id,
        status: saga.status(),
        state: saga.state.phase.name().to_owned(),
        href: format!("/v1/orders/{}", saga.id),
    }
}

/// The order `order_id` if the caller may see it: operators see every order, customers their own. Someone
/// else's order is reported as missing, so that order ids cannot be probed. An order in flight in a
/// partition this instance owns is answered from its engine's cache (what it last wrote), others from the
/// store.
pub async fn visible_order(app: &AppState, caller: &Caller, order_id: &str) -> Result<SagaRecord, Problem> {
    let not_found = || Problem::not_found(format!("no order {order_id}"));
    let id = Uuid::parse_str(order_id).map_err(|_| not_found())?;
    let cached = app.handoff.as_ref().and_then(|handoff| handoff.current(id));
    let saga = match cached {
        Some(saga) => saga,
        None => app.store.get(id).await?.ok_or_else(not_found)?,
    };
    if caller.is(Role::Operator) || saga.order.customer_ref == app.customer_refs.of(&caller.subject) {
        Ok(saga)
    } else {
        Err(not_found())
    }
}

/// Reads an order's status and its saga's state.
pub async fn get_order(
    State(app): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(order_id): Path<String>,
) -> Result<Json<OrderView>, Problem> {
    let saga = visible_order(&app, &caller, &order_id).await?;
    let definition = app.definitions.get(&saga.definition, saga.definition_version);
    let at = saga.state.phase.step_attempt();
    let step = at.and_then(|(s, _)| definition.and_then(|d| d.step(s))).map(|s| s.name.to_owned());
    Ok(Json(OrderView {
        order_id: saga.id,
        status: saga.status(),
        state: saga.state.phase.name().to_owned(),
        step,
        attempt: at.map(|(_, a)| a),
        reason: saga.state.reason.clone(),
        version: saga.version,
        items: saga.order.items.clone(),
        amount_cents: saga.order.amount_cents,
        currency: saga.order.currency,
        created_at: saga.created_at,
        updated_at: saga.updated_at,
    }))
}
