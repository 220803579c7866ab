//! The clients of the orchestrator's HTTP API, through the real router: customers placing orders (each
//! with its own token and an idempotency key, retried with the same key after a 5xx), and an operator who
//! reads a saga through the admin API and then retries, compensates or resolves it, with the version it
//! just saw or an older one it saw before.
//!
//! The operator's action is published as `POST /admin/sagas/{id}/{action}` publishes it, after the
//! handler's `If-Match` check; the handler itself then polls the timeline in real time for the outcome,
//! which a simulation on a manual clock cannot serve, so the operator does not wait: its action races
//! with the saga's replies on the saga's partition.

use std::sync::Arc;

use axum::body::Body as HttpBody;
use axum::http::{Request, StatusCode, header};
use orchestrator::api::{AppState, api_router};
use orchestrator::auth::{Authenticator, DEV_AUDIENCE, DEV_ISSUER, KeySettings, Role, claims, mint_hs256};
use orchestrator::bus::Bus;
use orchestrator::cache::Handoff;
use orchestrator::customer_ref::CustomerRefs;
use proto_events::{Body, Message, Meta, OperatorCommand, OperatorVerb, ResolvedAs, topics};
use saga_defs::{Phase, SagaState};
use serde_json::{Value, json};
use tower::ServiceExt;
use uuid::Uuid;

use super::World;
use super::instances::struck;
use crate::config::SimConfig;
use crate::faults::FaultPoint;
use crate::kafka::SimBus;
use crate::processes::Ports;
use crate::rng::Rng;
use crate::stores::FaultyStore;

/// Customers placing orders (`cust-1` ...).
const CUSTOMERS: usize = 5;
/// The HS256 secret of the simulation's tokens.
const JWT_SECRET: &str = "simulator-only-jwt-secret-of-at-least-32-characters";
/// Countries orders ship to; Japan is not served (the shipping step fails for good).
const COUNTRIES: [&str; 5] = ["DE", "FR", "NL", "US", "GB"];

/// The orchestrator's HTTP API and its clients' tokens.
#[derive(Debug)]
pub struct Api {
    state: AppState,
    /// Armed before a request: the API's store and bus operations fail like the engine's.
    pub faults: Arc<FaultPoint>,
    bus: Arc<SimBus>,
    customers: Vec<String>,
    operator: String,
}

fn token(subject: &str, role: Role) -> String {
    mint_hs256(JWT_SECRET, &claims(subject, &[role], DEV_ISSUER, DEV_AUDIENCE, 7 * 24 * 3600))
}

impl Api {
    /// The API over the shared store and cluster, with its own fault point.
    pub fn new(ports: &Ports, reply_partitions: i32) -> Self {
        let faults = Arc::new(FaultPoint::default());
        let bus = Arc::new(SimBus::new(Arc::clone(&ports.kafka), Arc::clone(&faults)));
        let authenticator =
            Authenticator::new(&KeySettings::Hs256 { secret: JWT_SECRET.to_owned() }, DEV_ISSUER, DEV_AUDIENCE)
                .expect("an HS256 authenticator needs no key parsing");
        let state = AppState {
            store: Arc::new(FaultyStore::new(Arc::clone(&ports.store), Arc::clone(&faults))),
            bus: bus.clone(),
            clock: ports.clock.clone(),
            definitions: Arc::clone(&ports.definitions),
            customer_refs: CustomerRefs::new(b"simulator-customer-ref-key"),
            metrics: Arc::clone(&ports.metrics),
            reply_partitions,
            authenticator: Arc::new(authenticator),
            dead_letters: None,
            live: Arc::new(orchestrator::live::LiveEvents::default()),
            handoff: None,
        };
        let customers = (1..=CUSTOMERS).map(|n| token(&format!("cust-{n}"), Role::Customer)).collect();
        Self { state, faults, bus, customers, operator: token("ops-sim", Role::Operator) }
    }

    /// Serves `request` as the API of an instance that hands the sagas it stores to `handoff` (`None`: as
    /// an API without an engine beside it).
    async fn call(&self, request: Request<HttpBody>, handoff: Option<Handoff>) -> (StatusCode, Value) {
        let router = api_router(AppState { handoff, ..self.state.clone() });
        let response = router.oneshot(request).await.unwrap_or_else(|never| match never {});
        let status = response.status();
        let bytes = axum::body::to_bytes(response.into_body(), usize::MAX).await.unwrap_or_default();
        (status, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
    }
}

/// An order a customer places.
#[derive(Debug, Clone)]
pub struct Order {
    /// Its idempotency key.
    pub key: String,
    /// Which customer (`cust-1` is 0).
    pub customer: usize,
    /// The request body.
    pub body: String,
    /// The order id the API acknowledged.
    pub placed: Option<Uuid>,
    /// Requests sent so far.
    pub attempts: u32,
}

/// The seed's orders: one to three lines of few SKUs (so sagas compete for stock); some declined
/// (`tok_decline`, or over the payment limit), some to a country that is not served.
pub(super) fn plan_orders(rng: &mut Rng, config: &SimConfig) -> Vec<Order> {
    (0..config.sagas).map(|n| plan_order(rng, n, config.skus.max(1))).collect()
}

fn plan_order(rng: &mut Rng, n: usize, skus: usize) -> Order {
    let customer = rng.index(CUSTOMERS);
    let mut all: Vec<usize> = (1..=skus).collect();
    let mut items = Vec::new();
    for _ in 0..rng.between(1, 3).min(skus as u64) {
        let sku = all.remove(rng.index(all.len()));
        let price = if rng.chance(300) { 600_000 } else { rng.between(100, 20_000) };
        items.push(json!({ "sku": format!("SKU-{sku}"), "quantity": rng.between(1, 4), "unit_price_cents": price }));
    }
    let token = if rng.chance(700) { "tok_decline" } else { "tok_visa" };
    let country = if rng.chance(700) { "JP" } else { rng.pick(&COUNTRIES).copied().unwrap_or("DE") };
    let body = json!({
        "customer_id": format!("cust-{}", customer + 1),
        "email": format!("customer{}@example.com", customer + 1),
        "items": items,
        "currency": "EUR",
        "payment_token": token,
        "shipping_address": { "name": "Ada Lovelace", "line1": "1 Main St", "city": "Berlin", "postal_code": "10115", "country": country },
    });
    Order { key: format!("sim-order-{n}"), customer, body: body.to_string(), placed: None, attempts: 0 }
}

impl World {
    /// The orders the API has not acknowledged yet.
    pub(super) fn unplaced(&self) -> Vec<usize> {
        (0..self.orders.len()).filter(|i| self.orders[*i].placed.is_none()).collect()
    }

    /// A customer sends `POST /v1/orders` for the order (again, after a failure, with the same key).
    pub(super) async fn place_order(&mut self, index: usize) {
        let order = &self.orders[index];
        let request = Request::post("/v1/orders")
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::AUTHORIZATION, format!("Bearer {}", self.api.customers[order.customer]))
            .header("idempotency-key", &order.key)
            .body(HttpBody::from(order.body.clone()))
            .expect("a valid request");
        // The request lands on the API of a live instance, which hands the saga to its own engine when it
        // owns the saga's partition.
        let slots = self.live_slots();
        let slot = self.rng.pick(&slots).copied();
        let instance = slot.and_then(|slot| self.orchestrators[slot].as_ref());
        let handoff = instance.map(|i| Handoff::new(Arc::clone(&i.ownership), Arc::clone(i.engine.cache())));
        let cache = instance.map(|i| Arc::clone(i.engine.cache()));
        let point = Arc::clone(&self.api.faults);
        self.maybe_arm(&point);
        let (status, body) = self.api.call(request, handoff).await;
        let hit = point.disarm();
        self.count_hit(hit);
        self.orders[index].attempts += 1;
        let key = self.orders[index].key.clone();
        let id = body["order_id"].as_str().and_then(|id| Uuid::parse_str(id).ok());
        if id.zip(cache).is_some_and(|(id, cache)| cache.get(id).is_some()) {
            self.count("api.handed_off");
        }
        match (status, id) {
            (StatusCode::ACCEPTED | StatusCode::OK, Some(id)) => {
                if self.orders[index].placed.is_some_and(|earlier| earlier != id) {
                    return self.violate("idempotency", Some(id), format!("{key} got a second order"));
                }
                self.orders[index].placed = Some(id);
                let saga = self.saga_name(id);
                self.note(format!("api places {key} as {saga}: {status}{}", struck(hit)));
            }
            (status, _) if status.is_server_error() => {
                self.count("api.retryable_error");
                self.note(format!("api fails {key}: {status} {body}{}", struck(hit)));
            }
            (status, _) => self.violate("api", None, format!("{key} got {status} {body}")),
        }
    }

    /// The operator reads a saga (a parked one, mostly, when there is one) and acts on it.
    pub(super) async fn operate(&mut self) {
        let parked: Vec<Uuid> =
            self.ports.store.all().into_iter().filter(|s| s.state.phase == Phase::Failed).map(|s| s.id).collect();
        let placed: Vec<Uuid> = self.orders.iter().filter_map(|o| o.placed).collect();
        let target =
            if !parked.is_empty() && self.rng.chance(6_000) { self.rng.pick(&parked) } else { self.rng.pick(&placed) };
        let Some(&saga_id) = target else { return };
        let request = Request::get(format!("/admin/sagas/{saga_id}"))
            .header(header::AUTHORIZATION, format!("Bearer {}", self.api.operator))
            .body(HttpBody::empty())
            .expect("a valid request");
        let point = Arc::clone(&self.api.faults);
        self.maybe_arm(&point);
        let (status, body) = self.api.call(request, None).await;
        self.count_hit(point.disarm());
        let saga = self.saga_name(saga_id);
        let (Some(version), Ok(state)) =
            (body["version"].as_u64(), serde_json::from_value::<SagaState>(body["saga_state"].clone()))
        else {
            return self.note(format!("operator cannot read {saga}: {status}"));
        };
        let correlation_id = body["correlation_id"].as_str().and_then(|c| Uuid::parse_str(c).ok()).unwrap_or(saga_id);
        let seen = self.seen.entry(saga_id).or_default();
        seen.push(version);
        let seen = seen.clone();
        let expected = if self.rng.chance(2_500) { *self.rng.pick(&seen).unwrap_or(&version) } else { version };
        let (action, outcome) = self.operator_action(state.phase);
        let (step, attempt) = state.phase.step_attempt().unwrap_or((0, 0));
        let meta = Meta {
            message_id: proto_events::ids::new_v7(),
            saga_id,
            step,
            attempt,
            correlation_id,
            causation_id: None,
            time: self.now(),
        };
        let command = OperatorCommand {
            action,
            outcome,
            reason: "simulated operator action".to_owned(),
            operator: "ops-sim".to_owned(),
            expected_version: expected,
        };
        let message = Message::new(meta, Body::Operator(command)).expect("a valid operator message");
        self.maybe_arm(&point);
        let published = self.api.bus.publish(topics::REPLY, &message).await;
        let hit = point.disarm();
        self.count_hit(hit);
        self.count(format!("operator.{action:?}"));
        let result = if published.is_ok() { "published" } else { "not published" };
        let phase = state.phase.name();
        self.note(format!("operator {action:?} {saga} ({phase} v{version}) at v{expected}: {result}{}", struck(hit)));
    }

    fn operator_action(&mut self, phase: Phase) -> (OperatorVerb, Option<ResolvedAs>) {
        let choices: [(OperatorVerb, Option<ResolvedAs>, u32); 4] = [
            (OperatorVerb::Retry, None, 40),
            (OperatorVerb::Compensate, None, if phase == Phase::Failed { 20 } else { 45 }),
            (OperatorVerb::Resolve, Some(ResolvedAs::Completed), if phase == Phase::Failed { 15 } else { 5 }),
            (OperatorVerb::Resolve, Some(ResolvedAs::Cancelled), if phase == Phase::Failed { 25 } else { 10 }),
        ];
        let weights: Vec<u32> = choices.iter().map(|c| c.2).collect();
        let (verb, outcome, _) = choices[self.rng.weighted(&weights)];
        (verb, outcome)
    }
}
