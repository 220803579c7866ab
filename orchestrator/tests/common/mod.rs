//! The orchestrator with in-memory ports for the engine and API tests: the real HTTP router and engine over a
//! `MemoryStore`, a `MemoryBus` that can be told to fail, a `ManualClock` and the built-in definitions.
//! Each test crate uses a part of it.
#![allow(dead_code)]

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use axum::body::Body as HttpBody;
use axum::http::{Request, StatusCode, header};
use chrono::{DateTime, Utc};
use orchestrator::api::{AppState, api_router};
use orchestrator::auth::{Authenticator, DEV_AUDIENCE, DEV_ISSUER, KeySettings, Role, claims, mint_hs256};
use orchestrator::bus::{self, Bus, MemoryBus};
use orchestrator::clock::{Clock, ManualClock};
use orchestrator::customer_ref::CustomerRefs;
use orchestrator::definitions::Definitions;
use orchestrator::engine::{self, Engine, Origin, Outcome};
use orchestrator::metrics::Metrics;
use orchestrator::model::SagaRecord;
use orchestrator::store::SagaStore;
use orchestrator::store::memory::MemoryStore;
use orchestrator::timers::Deadlines;
use platform::kafka::{Delivered, partition_for};
use prometheus_client::registry::Registry;
use proto_events::{Body, CommandKind, Message, Meta, Reply, topics};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use serde_json::{Value, json};
use tower::ServiceExt;
use uuid::Uuid;

/// How long every step waits for its reply.
pub const STEP_TIMEOUT: Duration = Duration::from_secs(10);
/// Partitions of the reply topic.
pub const REPLY_PARTITIONS: i32 = 6;
/// The secret behind customer references.
pub const CUSTOMER_REF_KEY: &[u8] = b"test-only-customer-ref-key";

/// The personal data of [`order_json`], none of which may leave the order's personal-data record except in
/// the commands that need it.
pub const NAME: &str = "Ada Lovelace";
pub const EMAIL: &str = "ada@example.com";
pub const STREET: &str = "1 Main St";
pub const TOKEN: &str = "tok_visa";
pub const CUSTOMER: &str = "cust-42";

/// 2026-01-01T00:00:00Z.
pub fn t0() -> DateTime<Utc> {
    DateTime::from_timestamp(1_767_225_600, 0).expect("a valid instant")
}

/// A valid order: two units of SKU-1 at 12.50 EUR.
pub fn order_json() -> Value {
    json!({
        "customer_id": CUSTOMER,
        "email": EMAIL,
        "items": [{ "sku": "SKU-1", "quantity": 2, "unit_price_cents": 1250 }],
        "currency": "EUR",
        "payment_token": TOKEN,
        "shipping_address": {
            "name": NAME,
            "line1": STREET,
            "city": "Berlin",
            "postal_code": "10115",
            "country": "DE"
        }
    })
}

/// A [`MemoryBus`] that refuses every publication while told to fail, as Kafka does when it is down.
#[derive(Debug, Default)]
pub struct TestBus {
    sent: MemoryBus,
    failing: AtomicBool,
}

impl TestBus {
    /// Takes everything published so far.
    pub fn take(&self) -> Vec<(String, Message)> {
        self.sent.take()
    }

    /// From now on, publications fail (`true`) or succeed (`false`).
    pub fn fail(&self, failing: bool) {
        self.failing.store(failing, Ordering::SeqCst);
    }
}

#[async_trait]
impl Bus for TestBus {
    async fn publish(&self, topic: &str, message: &Message) -> Result<Delivered, bus::Error> {
        if self.failing.load(Ordering::SeqCst) {
            return Err(bus::Error::Publish {
                topic: topic.to_owned(),
                key: message.meta.saga_id.to_string(),
                source: Box::new(KafkaError::MessageProduction(RDKafkaErrorCode::BrokerTransportFailure)),
            });
        }
        self.sent.publish(topic, message).await
    }
}

/// An HTTP answer, its body parsed as JSON (`Null` when it is not JSON).
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub content_type: Option<String>,
    pub location: Option<String>,
    pub body: Value,
}

/// The orchestrator with in-memory ports.
#[derive(Debug)]
pub struct Harness {
    pub store: Arc<MemoryStore>,
    pub bus: Arc<TestBus>,
    pub clock: Arc<ManualClock>,
    pub metrics: Arc<Metrics>,
    pub deadlines: Arc<Deadlines>,
    pub engine: Engine,
    pub refs: CustomerRefs,
    /// Where `metrics` are registered (see [`Harness::metrics_text`]).
    pub registry: Registry,
    router: axum::Router,
    next_offset: AtomicI64,
    origins: Mutex<Vec<(Uuid, Origin)>>,
}

impl Harness {
    /// A harness whose engine settles every transition at once, so that each test sees a saga's timeline
    /// in the log and its outbox empty right after a message (settling later: [`Harness::deferred`]).
    pub fn new() -> Self {
        Self::with_dead_letters(None)
    }

    /// A harness whose engine defers settling as production does (`DEFAULT_SETTLE_AFTER`).
    pub fn deferred() -> Self {
        Self::build(None, orchestrator::settle::DEFAULT_SETTLE_AFTER, false)
    }

    /// The harness, with the dead-letter routes over `dead_letters` (real Kafka and database).
    pub fn with_dead_letters(dead_letters: Option<Arc<orchestrator::dlq::DeadLetters>>) -> Self {
        Self::build(dead_letters, std::time::Duration::ZERO, false)
    }

    /// A harness whose instance owns every partition and whose API hands the sagas it stores to the engine
    /// (as the orchestrator does).
    pub fn handing_off() -> Self {
        Self::build(None, std::time::Duration::ZERO, true)
    }

    fn build(
        dead_letters: Option<Arc<orchestrator::dlq::DeadLetters>>,
        settle_after: std::time::Duration,
        handoff: bool,
    ) -> Self {
        let clock = Arc::new(ManualClock::new(t0()));
        let store = Arc::new(MemoryStore::with_clock(clock.clone()));
        let bus = Arc::new(TestBus::default());
        let definitions = Arc::new(Definitions::builtin(STEP_TIMEOUT).expect("the built-in definitions are valid"));
        let mut registry = Registry::default();
        let metrics = Arc::new(Metrics::register(&mut registry));
        let deadlines = Arc::new(Deadlines::default());
        let engine = Engine::new(
            store.clone(),
            bus.clone(),
            clock.clone(),
            definitions.clone(),
            metrics.clone(),
            deadlines.clone(),
        )
        .with_settle_after(settle_after);
        let refs = CustomerRefs::new(CUSTOMER_REF_KEY);
        let handoff = handoff.then(|| {
            let ownership = Arc::new(orchestrator::consumer::Ownership::default());
            ownership.assign(&(0..REPLY_PARTITIONS).collect::<Vec<_>>());
            orchestrator::cache::Handoff::new(ownership, engine.cache().clone())
        });
        let state = AppState {
            store: store.clone(),
            bus: bus.clone(),
            clock: clock.clone(),
            definitions,
            customer_refs: refs.clone(),
            metrics: metrics.clone(),
            reply_partitions: REPLY_PARTITIONS,
            authenticator: Arc::new(
                Authenticator::new(&KeySettings::Hs256 { secret: JWT_SECRET.to_owned() }, DEV_ISSUER, DEV_AUDIENCE)
                    .expect("an HS256 authenticator"),
            ),
            live: Arc::new(orchestrator::live::LiveEvents::default()),
            handoff,
            dead_letters,
        };
        Self {
            store,
            bus,
            clock,
            metrics,
            deadlines,
            engine,
            refs,
            registry,
            router: api_router(state),
            next_offset: AtomicI64::new(100),
            origins: Mutex::new(Vec::new()),
        }
    }

    pub fn now(&self) -> DateTime<Utc> {
        self.clock.now()
    }

    /// The metrics as `/metrics` would show them (Prometheus text format).
    pub fn metrics_text(&self) -> String {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry).expect("the metrics encode");
        text
    }

    /// Sends `request` through the API router, as an operator unless it carries its own `Authorization`.
    pub async fn request(&self, mut request: Request<HttpBody>) -> Answer {
        if !request.headers().contains_key(header::AUTHORIZATION) {
            let bearer = format!("Bearer {}", token("ops-alice", &[Role::Operator]));
            request.headers_mut().insert(header::AUTHORIZATION, bearer.parse().expect("a header value"));
        }
        let response = self.router.clone().oneshot(request).await.expect("the router is infallible");
        let header = |name: header::HeaderName| {
            response.headers().get(name).map(|v| v.to_str().expect("ASCII header").to_owned())
        };
        let (status, content_type, location) =
            (response.status(), header(header::CONTENT_TYPE), header(header::LOCATION));
        let bytes = axum::body::to_bytes(response.into_body(), usize::MAX).await.expect("read the body");
        let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Answer { status, content_type, location, body }
    }

    /// `POST /v1/orders` with `body` as `application/json` and extra `headers`.
    pub async fn post_order(&self, body: &str, headers: &[(&str, &str)]) -> Answer {
        let mut request = Request::post("/v1/orders").header(header::CONTENT_TYPE, "application/json");
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        self.request(request.body(HttpBody::from(body.to_owned())).expect("a valid request")).await
    }

    /// `GET path`.
    pub async fn get(&self, path: &str) -> Answer {
        self.request(Request::get(path).body(HttpBody::empty()).expect("a valid request")).await
    }

    /// Places [`order_json`] and returns the new order's id.
    pub async fn place(&self) -> Uuid {
        let answer = self.post_order(&order_json().to_string(), &[]).await;
        assert_eq!(answer.status, StatusCode::ACCEPTED, "placing an order: {:?}", answer.body);
        let id = answer.body["order_id"].as_str().expect("an order_id");
        Uuid::parse_str(id).expect("the order_id is a UUID")
    }

    /// Places [`order_json`] and takes the start message the API published.
    pub async fn place_and_take_start(&self) -> (Uuid, Message) {
        let id = self.place().await;
        let published = self.bus.take();
        assert_eq!(published.len(), 1, "the API publishes one message: {published:?}");
        let (topic, start) = published.into_iter().next().expect("one message");
        assert_eq!(topic, topics::REPLY);
        assert!(matches!(start.body, Body::Start(_)), "{start:?}");
        assert_eq!(start.meta.saga_id, id);
        (id, start)
    }

    /// Applies `message` as if read from the next offset of its saga's partition of `saga.reply`.
    pub async fn handle(&self, message: &Message) -> Result<Outcome, engine::Error> {
        let origin = Origin {
            topic: topics::REPLY.to_owned(),
            partition: partition_of(message.meta.saga_id),
            offset: self.next_offset.fetch_add(1, Ordering::SeqCst),
        };
        self.origins.lock().unwrap_or_else(PoisonError::into_inner).push((message.meta.message_id, origin.clone()));
        self.engine.handle(message, &origin).await
    }

    /// Applies `message`, which must succeed.
    pub async fn apply(&self, message: &Message) -> Outcome {
        let outcome = self.handle(message).await;
        outcome.unwrap_or_else(|e| panic!("applying {}: {e}", message.body.message_type()))
    }

    /// Where each handled message was read from, by message id, in order.
    pub fn origins(&self) -> Vec<(Uuid, Origin)> {
        self.origins.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// The stored saga.
    pub async fn record(&self, id: Uuid) -> SagaRecord {
        self.store.get(id).await.expect("the memory store does not fail").expect("the saga exists")
    }

    /// Whether the saga has nothing left to settle: nothing to publish, and its timeline entries appended to
    /// the log or, once it finished for good and moved, kept in its finished copy.
    pub fn settled(&self, saga: &SagaRecord) -> bool {
        saga.outbox.is_empty() && (saga.pending_log.is_empty() || !self.store.is_live(saga.id))
    }

    /// A participant's `reply` to `command`, sent now.
    pub fn reply(&self, command: &Message, reply: Reply) -> Message {
        let meta = Meta::caused_by(&command.meta, command.meta.step, command.meta.attempt, self.now());
        Message::new(meta, Body::Reply { command: command_kind(command), reply }).expect("a valid reply")
    }
}

/// The partition of the reply topic a saga's messages land on.
pub fn partition_of(saga_id: Uuid) -> i32 {
    partition_for(saga_id.to_string().as_bytes(), REPLY_PARTITIONS)
}

/// The kind of a command message.
pub fn command_kind(message: &Message) -> CommandKind {
    match &message.body {
        Body::Command(command) => command.kind(),
        other => panic!("not a command: {other:?}"),
    }
}

/// The HS256 secret the test API verifies tokens with.
pub const JWT_SECRET: &str = "test-only-jwt-secret-at-least-32-characters";

/// A token for `subject` with `roles`, valid for a minute.
pub fn token(subject: &str, roles: &[Role]) -> String {
    mint_hs256(JWT_SECRET, &claims(subject, roles, DEV_ISSUER, DEV_AUDIENCE, 60))
}
