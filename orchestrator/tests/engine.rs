//! The saga engine with in-memory ports. Orders are placed through the real HTTP API; their sagas are driven
//! by feeding what the orchestrator published (`saga.start`), participants' replies and `saga.timer`
//! messages to `Engine::handle`, and every step checks what the engine stored and published: commands and
//! their data, lifecycle events, fencing, the timeline, crash safety of the outbox and the absence of
//! personal data.

mod common;

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use orchestrator::consumer::Ownership;
use orchestrator::engine::{self, Outcome};
use orchestrator::metrics::FenceLabel;
use orchestrator::model::{EntryKind, Outgoing};
use orchestrator::store::{Due, SagaStore};
use orchestrator::timers::{Timer, TimerSettings};
use proto_events::commands::{ChargePayment, CreateShipment, Currency, ReserveStock};
use proto_events::{
    Address, Body, Command, CommandKind, DeadlineKind, Line, Message, Meta, OrderStatus, Reply, SagaTransitioned,
    TimerFired, topics,
};
use saga_defs::{Deadline, Phase};
use uuid::Uuid;

use common::{
    CUSTOMER, EMAIL, Harness, NAME, REPLY_PARTITIONS, STEP_TIMEOUT, STREET, TOKEN, command_kind, partition_of, t0,
};

// ---------------------------------------------------------------------------------------------------------
// Helpers

/// What one step of a saga published: commands (with their topics) and lifecycle events, in order.
#[derive(Debug)]
struct Published {
    all: Vec<(String, Message)>,
    commands: Vec<Message>,
    events: Vec<SagaTransitioned>,
}

impl Published {
    /// Splits `all`, checking that every command goes to its participant's topic and every event to
    /// `saga.event`, and that nothing else was published.
    fn split(all: Vec<(String, Message)>) -> Self {
        let (mut commands, mut events) = (Vec::new(), Vec::new());
        for (topic, message) in &all {
            match &message.body {
                Body::Command(command) => {
                    assert_eq!(topic, command.kind().participant().command_topic(), "{message:?}");
                    commands.push(message.clone());
                }
                Body::Transitioned(event) => {
                    assert_eq!(topic, topics::EVENT);
                    events.push(event.clone());
                }
                other => panic!("the engine published {other:?} on {topic}"),
            }
        }
        Self { all, commands, events }
    }

    /// The one command published.
    fn command(&self) -> &Message {
        assert_eq!(self.commands.len(), 1, "expected one command, got {:?}", self.commands);
        &self.commands[0]
    }

    /// The one lifecycle event published.
    fn event(&self) -> &SagaTransitioned {
        assert_eq!(self.events.len(), 1, "expected one event, got {:?}", self.events);
        &self.events[0]
    }

    fn ids(&self) -> Vec<Uuid> {
        self.all.iter().map(|(_, m)| m.meta.message_id).collect()
    }
}

/// The parts of a lifecycle event that change from one transition to the next.
fn brief(event: &SagaTransitioned) -> (&str, &str, OrderStatus, Option<&str>, u64) {
    (event.from.as_str(), event.to.as_str(), event.status, event.step_name.as_deref(), event.version)
}

fn transitioned(from: &'static str, to: &'static str) -> Outcome {
    Outcome::Transitioned { from, to }
}

/// A start message's outcome: the API stored the saga started, with its first command and lifecycle event
/// in its outbox, and the owner published both.
const START_PUBLISHED: Outcome = Outcome::Published { messages: 2 };

fn at(offset: Duration) -> DateTime<Utc> {
    t0() + TimeDelta::from_std(offset).expect("a representable offset")
}

fn advance(h: &Harness, by: Duration) {
    h.clock.advance(TimeDelta::from_std(by).expect("a representable duration"));
}

/// Checks that `command` belongs to saga `id`, is about `step` and `attempt`, and was caused by `cause`.
fn assert_meta(command: &Message, id: Uuid, step: u16, attempt: u32, cause: &Message) {
    assert_eq!(command.meta.saga_id, id);
    assert_eq!((command.meta.step, command.meta.attempt), (step, attempt), "{command:?}");
    assert_eq!(command.meta.correlation_id, cause.meta.correlation_id, "one correlation id per order");
    assert_eq!(command.meta.causation_id, Some(cause.meta.message_id), "caused by the message applied");
}

/// The saga's only due deadline, as the timer would find it in the saga's partition now.
async fn due(h: &Harness, id: Uuid) -> Option<Due> {
    let sagas = h.store.recoverable(&[partition_of(id)], 10).await.expect("the memory store does not fail");
    let now = h.now();
    let due: Vec<Due> = sagas.iter().filter_map(Due::of).filter(|d| d.deadline.at <= now).collect();
    assert!(due.len() <= 1, "{due:?}");
    due.into_iter().next().inspect(|d| assert_eq!(d.saga_id, id))
}

/// The `saga.timer` message the timer publishes for `due` (see `Timer::scan`).
fn timer_message(due: &Due, now: DateTime<Utc>) -> Message {
    let meta = Meta {
        message_id: Uuid::now_v7(),
        saga_id: due.saga_id,
        step: due.deadline.step,
        attempt: due.deadline.attempt,
        correlation_id: due.correlation_id,
        causation_id: None,
        time: now,
    };
    Message::new(meta, Body::Timer(TimerFired { kind: due.deadline.kind, due_at: due.deadline.at }))
        .expect("a valid timer")
}

/// Waits out the saga's deadline on the manual clock: nothing is due a millisecond before it, the deadline is
/// due at it. Returns the timer message for it.
async fn fire_deadline(h: &Harness, id: Uuid) -> Message {
    let deadline = h.record(id).await.state.deadline.expect("the saga has a deadline");
    let wait = (deadline.at - h.now()).to_std().expect("the deadline is in the future");
    advance(h, wait - Duration::from_millis(1));
    assert_eq!(due(h, id).await, None, "nothing is due before the deadline");
    advance(h, Duration::from_millis(1));
    let due = due(h, id).await.expect("the deadline is due");
    assert_eq!(due.deadline, deadline);
    timer_message(&due, h.now())
}

/// Applies `message`, which must be fenced with a reason starting `prefix`: the saga's state is unchanged,
/// its version goes up by one, nothing is published and the timeline ends with an `Ignored` entry for the
/// message carrying the reason. Returns the reason.
async fn assert_ignored(h: &Harness, message: &Message, prefix: &str) -> String {
    let id = message.meta.saga_id;
    let before = h.record(id).await;
    let Outcome::Ignored(reason) = h.apply(message).await else {
        panic!("{} should be ignored with {prefix:?}", message.body.message_type());
    };
    assert!(reason.starts_with(prefix), "expected a reason starting {prefix:?}, got {reason:?}");
    let after = h.record(id).await;
    assert_eq!(after.version, before.version + 1, "an ignored message is recorded as a new version");
    assert_eq!(after.state, before.state, "an ignored message changes nothing");
    assert_eq!(after.state_since, before.state_since);
    assert!(h.settled(&after), "the ignored entry was flushed: {after:?}");
    assert_eq!(h.bus.take(), Vec::new(), "an ignored message publishes nothing");
    let timeline = h.store.timeline(id).await.expect("timeline");
    let last = timeline.last().expect("a timeline");
    assert_eq!((last.seq, last.kind), (after.version, EntryKind::Ignored));
    assert_eq!((last.from.as_str(), last.to.as_str()), (before.state.phase.name(), before.state.phase.name()));
    assert_eq!(last.note.as_deref(), Some(reason.as_str()), "the timeline says why");
    let received = last.received.as_ref().expect("the ignored message is recorded");
    assert_eq!(received.message_id, message.meta.message_id);
    assert_eq!((received.step, received.attempt), (message.meta.step, message.meta.attempt));
    assert!(last.sent.is_empty());
    reason
}

/// Places an order and starts its saga; returns the saga id, the start message and the reserve command.
async fn started(h: &Harness) -> (Uuid, Message, Message) {
    let (id, start) = h.place_and_take_start().await;
    assert_eq!(h.apply(&start).await, START_PUBLISHED);
    let reserve = Published::split(h.bus.take()).command().clone();
    (id, start, reserve)
}

/// Answers `command` with success and returns what the saga published next.
async fn succeed(h: &Harness, command: &Message) -> Published {
    h.apply(&h.reply(command, Reply::ok())).await;
    Published::split(h.bus.take())
}

/// Answers each compensation command with success until the saga publishes no more commands; returns the
/// compensations in the order they were sent, with their step and attempt, and the events published.
async fn compensate(h: &Harness, mut published: Published) -> (Vec<(u16, u32, CommandKind)>, Vec<SagaTransitioned>) {
    let (mut compensations, mut events) = (Vec::new(), Vec::new());
    loop {
        events.extend(published.events.iter().cloned());
        let Some(command) = published.commands.first().cloned() else { break };
        assert_eq!(published.commands.len(), 1, "one compensation at a time: {:?}", published.commands);
        compensations.push((command.meta.step, command.meta.attempt, command_kind(&command)));
        published = succeed(h, &command).await;
    }
    (compensations, events)
}

fn address() -> Address {
    Address {
        name: NAME.into(),
        line1: STREET.into(),
        line2: None,
        city: "Berlin".into(),
        postal_code: "10115".into(),
        country: "DE".into(),
    }
}

fn lines() -> Vec<Line> {
    vec![Line { sku: "SKU-1".into(), quantity: 2 }]
}

fn fenced(h: &Harness, fence: &str) -> u64 {
    h.metrics.fenced.get_or_create(&FenceLabel { fence: fence.into() }).get()
}

// ---------------------------------------------------------------------------------------------------------
// The happy path

#[tokio::test]
async fn an_order_reserves_charges_and_ships_then_completes() {
    let h = Harness::new();
    let (id, start) = h.place_and_take_start().await;
    let customer_ref = h.refs.of(CUSTOMER);
    let placed = h.record(id).await;
    assert_eq!((placed.state.phase, placed.version), (Phase::Running { step: 0, attempt: 1 }, 2), "stored started");

    assert_eq!(h.apply(&start).await, START_PUBLISHED);
    let published = h.record(id).await;
    assert_eq!((published.version, &published.state), (placed.version, &placed.state), "no transition written");
    let step = Published::split(h.bus.take());
    assert_eq!(step.all.iter().map(|(t, _)| t.as_str()).collect::<Vec<_>>(), [topics::CMD_INVENTORY, topics::EVENT]);
    let reserve = step.command().clone();
    assert_meta(&reserve, id, 0, 1, &start);
    assert_eq!(reserve.body, Body::Command(Command::InventoryReserve(ReserveStock { items: lines() })));
    assert_eq!(brief(step.event()), ("STARTED", "RUNNING", OrderStatus::Pending, Some("reserve_stock"), 2));
    let deadline = h.record(id).await.state.deadline;
    assert_eq!(deadline, Some(Deadline { at: at(STEP_TIMEOUT), kind: DeadlineKind::StepTimeout, step: 0, attempt: 1 }));
    let mut events = vec![step.event().clone()];

    advance(&h, Duration::from_millis(300));
    let reserved = h.reply(&reserve, Reply::Succeeded { reference: Some("res-1".into()) });
    assert_eq!(h.apply(&reserved).await, transitioned("RUNNING", "RUNNING"));
    let step = Published::split(h.bus.take());
    let charge = step.command().clone();
    assert_meta(&charge, id, 1, 1, &reserved);
    let expected = ChargePayment {
        amount_cents: 2500,
        currency: Currency::EUR,
        payment_token: TOKEN.into(),
        customer_ref: customer_ref.clone(),
    };
    assert_eq!(charge.body, Body::Command(Command::PaymentCharge(expected)));
    assert_eq!(brief(step.event()), ("RUNNING", "RUNNING", OrderStatus::Pending, Some("charge_payment"), 3));
    let deadline = h.record(id).await.state.deadline.expect("a deadline");
    assert_eq!((deadline.at, deadline.step), (at(Duration::from_millis(300) + STEP_TIMEOUT), 1));
    events.push(step.event().clone());

    let charged = h.reply(&charge, Reply::ok());
    assert_eq!(h.apply(&charged).await, transitioned("RUNNING", "RUNNING"));
    let step = Published::split(h.bus.take());
    let ship = step.command().clone();
    assert_meta(&ship, id, 2, 1, &charged);
    assert_eq!(
        ship.body,
        Body::Command(Command::ShippingCreate(CreateShipment { items: lines(), address: address() }))
    );
    assert_eq!(brief(step.event()), ("RUNNING", "RUNNING", OrderStatus::Pending, Some("create_shipment"), 4));
    events.push(step.event().clone());

    assert_eq!(h.apply(&h.reply(&ship, Reply::ok())).await, transitioned("RUNNING", "COMPLETED"));
    let step = Published::split(h.bus.take());
    assert!(step.commands.is_empty(), "nothing more to do: {:?}", step.commands);
    assert_eq!(brief(step.event()), ("RUNNING", "COMPLETED", OrderStatus::Completed, None, 5));
    events.push(step.event().clone());

    for event in &events {
        assert_eq!((event.definition.as_str(), event.definition_version), ("order_fulfilment", 1));
        assert_eq!(event.customer_ref, customer_ref);
        assert_eq!(event.reason, None);
    }
    let saga = h.record(id).await;
    assert_eq!((saga.state.phase, saga.status(), saga.version), (Phase::Completed, OrderStatus::Completed, 5));
    assert_eq!((saga.state.deadline, saga.state.reason.as_deref()), (None, None));
    assert!(h.settled(&saga), "everything was flushed: {saga:?}");
    let view = h.get(&format!("/v1/orders/{id}")).await;
    assert_eq!((view.body["status"].as_str(), view.body["state"].as_str()), (Some("COMPLETED"), Some("COMPLETED")));
}

/// The API hands the saga it stored, with the order's personal data, to the engine of the instance that owns
/// its partition: starting it and sending the payment its token read nothing from the store.
#[tokio::test]
async fn the_engine_hands_each_status_change_to_its_own_event_streams_once_it_is_written() {
    let h = Harness::new();
    let live = Arc::new(orchestrator::live::LiveEvents::default());
    let engine = h.engine.clone().with_live(live.clone());
    let mut changes = live.subscribe();
    let (id, start) = h.place_and_take_start().await;
    let origin = engine::Origin { topic: "saga.reply".into(), partition: partition_of(id), offset: 7 };
    let outcome = engine.handle(&start, &origin).await.expect("the start is applied");
    assert_eq!(outcome, START_PUBLISHED);

    let change = changes.try_recv().expect("the change reached this instance's streams");
    let published = Published::split(h.bus.take());
    let [event] = published.events.as_slice() else { panic!("one event: {:?}", published.events) };
    assert_eq!(change.order_id, id);
    assert_eq!(
        (change.state.as_str(), change.status, change.version),
        (event.to.as_str(), event.status, event.version)
    );
    assert_eq!(change.version, h.record(id).await.version, "the version as written");
    assert!(changes.try_recv().is_err(), "one change per transition");
}

#[tokio::test]
async fn a_saga_handed_over_by_the_api_runs_on_its_cached_copy_and_personal_data() {
    let h = Harness::handing_off();
    let (id, start) = h.place_and_take_start().await;
    assert_eq!(h.engine.cache().get(id), Some(h.record(id).await), "cached as stored");
    // Gone from the store: only the handed-over copy can give the payment its token.
    assert!(h.store.purge_pii(id).await.expect("the memory store does not fail"));

    assert_eq!(h.apply(&start).await, START_PUBLISHED);
    let reserve = Published::split(h.bus.take()).command().clone();
    assert_eq!(h.apply(&h.reply(&reserve, Reply::ok())).await, transitioned("RUNNING", "RUNNING"));
    let charge = Published::split(h.bus.take()).command().clone();
    let Body::Command(Command::PaymentCharge(charge)) = charge.body else { panic!("a charge: {charge:?}") };
    assert_eq!(charge.payment_token, TOKEN);
    assert_eq!(h.record(id).await.version, 3);

    // Without the handoff, the engine reads the personal data, and finds none.
    let h = Harness::new();
    let (id, start) = h.place_and_take_start().await;
    assert_eq!(h.engine.cache().get(id), None);
    assert!(h.store.purge_pii(id).await.expect("the memory store does not fail"));
    h.apply(&start).await;
    let reserve = Published::split(h.bus.take()).command().clone();
    assert!(h.handle(&h.reply(&reserve, Reply::ok())).await.is_err(), "no personal data to charge with");
}

#[tokio::test]
async fn a_start_for_a_finished_saga_publishes_and_moves_nothing() {
    let h = Harness::deferred();
    let (id, start, reserve) = started(&h).await;
    let charge = succeed(&h, &reserve).await.command().clone();
    let ship = succeed(&h, &charge).await.command().clone();
    succeed(&h, &ship).await;
    assert_eq!(h.engine.settle_due(DateTime::<Utc>::MAX_UTC).await, 1, "moved to the finished sagas");
    let finished = h.record(id).await;
    assert_eq!(finished.state.phase, Phase::Completed);
    let timeline = h.store.timeline(id).await.expect("timeline");

    // As the start sweep or a late redelivery would bring it, to an instance that never saw the saga.
    let other = h.engine.clone();
    other.cache().remove(id);
    let origin = engine::Origin { topic: topics::REPLY.into(), partition: partition_of(id), offset: 9 };
    assert_eq!(other.handle(&start, &origin).await.expect("applied"), Outcome::Published { messages: 0 });
    assert_eq!(h.bus.take(), Vec::new());
    assert!(other.unsettled().is_empty(), "nothing to settle");
    assert_eq!(h.record(id).await, finished);
    assert_eq!(h.store.timeline(id).await.expect("timeline"), timeline);
}

#[tokio::test]
async fn a_redelivered_start_publishes_nothing_again_and_writes_nothing() {
    let h = Harness::new();
    let (id, start) = h.place_and_take_start().await;
    assert_eq!(h.apply(&start).await, START_PUBLISHED);
    let first = Published::split(h.bus.take());
    assert_eq!(command_kind(first.command()), CommandKind::InventoryReserve);
    let before = h.record(id).await;

    assert_eq!(h.apply(&start).await, Outcome::Published { messages: 0 }, "published by this instance already");
    assert_eq!(h.bus.take(), Vec::new());
    assert_eq!(h.record(id).await, before);
    assert_eq!(fenced(&h, "duplicate"), 0, "nothing was applied, so nothing was fenced");

    // An instance without a cached copy (another one, or this one after a restart) finds the start settled
    // (published, its outbox emptied): nothing to publish either.
    let other = h.engine.clone();
    other.cache().remove(id);
    other.unsettled().remove(id);
    let origin = engine::Origin { topic: topics::REPLY.into(), partition: partition_of(id), offset: 9 };
    assert_eq!(other.handle(&start, &origin).await.expect("applied"), Outcome::Published { messages: 0 });
    assert_eq!(h.bus.take(), Vec::new());
    assert_eq!(h.record(id).await, before);
}

// ---------------------------------------------------------------------------------------------------------
// Business failures: compensations newest first

/// Runs a saga whose step `failing` is refused for good; checks it ends CANCELLED (COMPENSATED) and returns
/// the compensations it sent.
async fn refused_at(failing: u16, expected_outcome: Outcome) -> Vec<(u16, u32, CommandKind)> {
    let h = Harness::new();
    let (id, _, mut command) = started(&h).await;
    for _ in 0..failing {
        command = succeed(&h, &command).await.command().clone();
    }
    assert_eq!(command.meta.step, failing);
    let refusal = h.reply(&command, Reply::business("refused by the participant"));
    assert_eq!(h.apply(&refusal).await, expected_outcome);
    let (compensations, events) = compensate(&h, Published::split(h.bus.take())).await;

    let saga = h.record(id).await;
    let step_name = ["reserve_stock", "charge_payment", "create_shipment"][usize::from(failing)];
    let reason = format!("step {step_name} failed: refused by the participant");
    assert_eq!((saga.state.phase, saga.status()), (Phase::Compensated, OrderStatus::Cancelled));
    assert_eq!((saga.state.deadline, saga.state.reason.as_deref()), (None, Some(reason.as_str())));
    assert!(h.settled(&saga), "{saga:?}");
    let last = events.last().expect("events");
    assert_eq!(
        (last.to.as_str(), last.status, last.reason.as_deref()),
        ("COMPENSATED", OrderStatus::Cancelled, Some(reason.as_str()))
    );
    assert!(events[..events.len() - 1].iter().all(|e| e.status == OrderStatus::Pending), "{events:?}");
    let view = h.get(&format!("/v1/orders/{id}")).await;
    assert_eq!(view.body["status"].as_str(), Some("CANCELLED"));
    assert_eq!(view.body["reason"].as_str(), Some(reason.as_str()));
    compensations
}

#[tokio::test]
async fn a_refused_reservation_cancels_the_order_without_compensations() {
    let compensations = refused_at(0, transitioned("RUNNING", "COMPENSATED")).await;
    assert!(compensations.is_empty(), "nothing was done, so nothing is undone: {compensations:?}");
}

#[tokio::test]
async fn a_refused_charge_releases_the_stock() {
    let compensations = refused_at(1, transitioned("RUNNING", "COMPENSATING")).await;
    assert_eq!(compensations, [(0, 1, CommandKind::InventoryRelease)]);
}

#[tokio::test]
async fn a_refused_shipment_refunds_then_releases() {
    let compensations = refused_at(2, transitioned("RUNNING", "COMPENSATING")).await;
    assert_eq!(compensations, [(1, 1, CommandKind::PaymentRefund), (0, 1, CommandKind::InventoryRelease)]);
}

#[tokio::test]
async fn a_refusal_with_the_longest_valid_reason_still_compensates() {
    let h = Harness::new();
    let (id, _, reserve) = started(&h).await;
    let charge = succeed(&h, &reserve).await.command().clone();
    // 500 characters is the most a reply's reason may have; the saga's reason prefixes it with the step.
    let refusal = h.reply(&charge, Reply::business("x".repeat(500)));

    let outcome = h.handle(&refusal).await;
    assert!(matches!(outcome, Ok(Outcome::Transitioned { to: "COMPENSATING", .. })), "{outcome:?}");
    let published = Published::split(h.bus.take());
    assert_eq!(command_kind(published.command()), CommandKind::InventoryRelease);
    assert!(published.event().reason.as_ref().is_some_and(|r| r.chars().count() <= 500));
    assert!(!h.record(id).await.has_pending(), "the outbox was flushed");
}

// ---------------------------------------------------------------------------------------------------------
// Timeouts: retries with growing back-off, then compensation

#[tokio::test]
async fn a_shipment_that_never_answers_is_retried_with_growing_back_off_then_compensated() {
    let h = Harness::new();
    let (id, _, reserve) = started(&h).await;
    let charge = succeed(&h, &reserve).await.command().clone();
    let first = succeed(&h, &charge).await.command().clone();
    assert_eq!((command_kind(&first), first.meta.attempt), (CommandKind::ShippingCreate, 1));

    let mut attempts = vec![first];
    let mut backoffs = Vec::new();
    for attempt in 2..=3 {
        let timeout = fire_deadline(&h, id).await;
        assert_eq!(timeout.meta.attempt, attempt - 1);
        assert_eq!(h.apply(&timeout).await, transitioned("RUNNING", "BACKOFF"));
        let waiting = Published::split(h.bus.take());
        assert!(waiting.commands.is_empty(), "nothing is sent while backing off");
        assert_eq!(brief(waiting.event()).1, "BACKOFF");
        let deadline = h.record(id).await.state.deadline.expect("a retry deadline");
        assert_eq!((deadline.kind, deadline.step, deadline.attempt), (DeadlineKind::RetryDue, 2, attempt));
        backoffs.push((deadline.at - h.now()).num_milliseconds());

        let retry = fire_deadline(&h, id).await;
        assert_eq!(h.apply(&retry).await, transitioned("BACKOFF", "RUNNING"));
        let again = Published::split(h.bus.take());
        let command = again.command().clone();
        assert_meta(&command, id, 2, attempt, &retry);
        assert_eq!(command.body, attempts[0].body, "every attempt sends the same command");
        let deadline = h.record(id).await.state.deadline.expect("a step deadline");
        assert_eq!(
            deadline,
            Deadline { at: h.now() + TimeDelta::seconds(10), kind: DeadlineKind::StepTimeout, step: 2, attempt }
        );
        attempts.push(command);
    }
    assert_eq!(attempts.iter().map(|c| c.meta.attempt).collect::<Vec<_>>(), [1, 2, 3]);
    // Milliseconds: the policy's multiplier is an f32, so the second wait is 400 ms and a few nanoseconds.
    assert_eq!(backoffs, [200, 400], "exponential back-off");

    let last_timeout = fire_deadline(&h, id).await;
    assert_eq!(h.apply(&last_timeout).await, transitioned("RUNNING", "COMPENSATING"));
    let published = Published::split(h.bus.take());
    let reason = "step create_shipment gave up after 3 attempts: no reply within 10s";
    assert_eq!(published.event().reason.as_deref(), Some(reason));
    // The pivot's outcome is unknown, so its own compensation runs first.
    let (compensations, events) = compensate(&h, published).await;
    assert_eq!(
        compensations,
        [
            (2, 1, CommandKind::ShippingCancel),
            (1, 1, CommandKind::PaymentRefund),
            (0, 1, CommandKind::InventoryRelease)
        ]
    );
    assert_eq!(brief(events.last().expect("events")).2, OrderStatus::Cancelled);
    let saga = h.record(id).await;
    assert_eq!(
        (saga.state.phase, saga.state.deadline, saga.state.reason.as_deref()),
        (Phase::Compensated, None, Some(reason))
    );
    assert_eq!(due(&h, id).await, None, "a finished saga has no deadline");
}

fn timer(h: &Harness, owned: &[i32], refire_after: Duration) -> Timer {
    let settings = TimerSettings {
        interval: Duration::from_millis(10),
        start_grace: Duration::from_secs(60),
        start_sweep_every: Duration::from_secs(60),
        refire_after,
    };
    let ownership = Arc::new(Ownership::default());
    ownership.assign(owned);
    let store: Arc<dyn SagaStore> = h.store.clone();
    Timer::new(store, h.bus.clone(), h.clock.clone(), ownership, h.deadlines.clone(), settings)
}

/// The timer publishes the deadline the engine recorded, exactly when it is due, once per refire period,
/// and nothing for sagas of partitions that were revoked.
#[tokio::test]
async fn the_timer_publishes_each_due_deadline_of_owned_sagas() {
    let h = Harness::new();
    let (id, _, _) = started(&h).await;
    let deadline = h.record(id).await.state.deadline.expect("a step deadline");
    let mut timer = timer(&h, &[partition_of(id)], Duration::from_secs(5));
    advance(&h, (deadline.at - h.now()).to_std().expect("ahead") - Duration::from_millis(1));
    assert_eq!(timer.scan().await.expect("scan"), 0, "nothing before the deadline");
    advance(&h, Duration::from_millis(1));
    assert_eq!(timer.scan().await.expect("scan"), 1);
    let published = h.bus.take();
    let [(topic, message)] = published.as_slice() else { panic!("one timer message: {published:?}") };
    assert_eq!(topic, topics::REPLY);
    assert_eq!((message.meta.saga_id, message.meta.step, message.meta.attempt), (id, deadline.step, deadline.attempt));
    assert_eq!(message.body, Body::Timer(TimerFired { kind: deadline.kind, due_at: deadline.at }));

    assert_eq!(timer.scan().await.expect("scan"), 0, "not again before the refire period");
    advance(&h, Duration::from_secs(5));
    assert_eq!(timer.scan().await.expect("scan"), 1, "again once the deadline stayed pending for the period");
    h.bus.take();

    h.deadlines.forget(&[partition_of(id)]);
    advance(&h, Duration::from_secs(5));
    assert_eq!(timer.scan().await.expect("scan"), 0, "a revoked partition's sagas are not the timer's any more");
    assert_eq!(h.bus.take(), Vec::new());
}

// ---------------------------------------------------------------------------------------------------------
// Fencing

#[tokio::test]
async fn duplicate_stale_and_out_of_order_messages_are_recorded_and_ignored() {
    let h = Harness::new();
    let (id, _, reserve) = started(&h).await;
    let reserved = h.reply(&reserve, Reply::ok());
    h.apply(&reserved).await;
    let charge = Published::split(h.bus.take()).command().clone();

    // The reserve reply again (a redelivery): that step is done.
    assert_ignored(&h, &reserved, "duplicate:").await;
    // A shipment reply, for a command not sent yet.
    let early = Message::new(
        Meta::caused_by(&charge.meta, 2, 1, h.now()),
        Body::Reply { command: CommandKind::ShippingCreate, reply: Reply::ok() },
    )
    .expect("a valid reply");
    assert_ignored(&h, &early, "out of order:").await;
    // A compensation reply while the saga is not compensating.
    let release = Message::new(
        Meta::caused_by(&reserve.meta, 0, 1, h.now()),
        Body::Reply { command: CommandKind::InventoryRelease, reply: Reply::ok() },
    )
    .expect("a valid reply");
    assert_ignored(&h, &release, "out of order:").await;
    // The reservation's timeout, which no longer applies.
    let old_deadline = Due {
        saga_id: id,
        partition: partition_of(id),
        deadline: Deadline { at: at(STEP_TIMEOUT), kind: DeadlineKind::StepTimeout, step: 0, attempt: 1 },
        correlation_id: reserve.meta.correlation_id,
        traceparent: None,
    };
    assert_ignored(&h, &timer_message(&old_deadline, h.now()), "stale:").await;

    // The charge times out and is sent again; the first attempt's late reply is stale.
    let timeout = fire_deadline(&h, id).await;
    assert_eq!(h.apply(&timeout).await, transitioned("RUNNING", "BACKOFF"));
    assert!(Published::split(h.bus.take()).commands.is_empty());
    // The same timer again, now that the saga backs off.
    assert_ignored(&h, &timeout, "stale:").await;
    let retry = fire_deadline(&h, id).await;
    assert_eq!(h.apply(&retry).await, transitioned("BACKOFF", "RUNNING"));
    let second = Published::split(h.bus.take()).commands.last().cloned().expect("the second charge");
    assert_eq!((second.meta.step, second.meta.attempt), (1, 2));
    let reason = assert_ignored(&h, &h.reply(&charge, Reply::ok()), "stale:").await;
    assert!(reason.contains("superseded by attempt 2"), "{reason}");
    // A reply to an attempt not sent yet.
    let third = Message::new(
        Meta::caused_by(&second.meta, 1, 3, h.now()),
        Body::Reply { command: CommandKind::PaymentCharge, reply: Reply::ok() },
    )
    .expect("a valid reply");
    assert_ignored(&h, &third, "out of order:").await;

    // The second attempt's reply applies; the saga completes; later replies find it finished.
    let ship = succeed(&h, &second).await.command().clone();
    let shipped = h.reply(&ship, Reply::ok());
    assert_eq!(h.apply(&shipped).await, transitioned("RUNNING", "COMPLETED"));
    h.bus.take();
    assert_ignored(&h, &shipped, "saga finished:").await;

    assert_eq!(
        ["duplicate", "stale", "out_of_order", "terminal"].map(|f| fenced(&h, f)),
        [1, 3, 3, 1],
        "fenced messages are counted by reason"
    );
    assert_eq!(h.record(id).await.state.phase, Phase::Completed);
}

#[tokio::test]
async fn a_message_for_an_unknown_saga_changes_nothing() {
    let h = Harness::new();
    let (_, start) = h.place_and_take_start().await;
    let mut meta = Meta::caused_by(&start.meta, 0, 1, h.now());
    meta.saga_id = Uuid::now_v7();
    let reply = Message::new(meta, Body::Reply { command: CommandKind::InventoryReserve, reply: Reply::ok() })
        .expect("a valid reply");
    let before = h.store.all();

    assert_eq!(h.apply(&reply).await, Outcome::UnknownSaga);
    assert_eq!(h.store.all(), before);
    assert_eq!(h.store.get(reply.meta.saga_id).await.expect("get"), None);
    assert!(h.store.timeline(reply.meta.saga_id).await.expect("timeline").is_empty());
    assert_eq!(h.bus.take(), Vec::new());
    assert_eq!(fenced(&h, "unknown_saga"), 1);
}

#[tokio::test]
async fn a_command_or_event_on_the_reply_topic_is_not_applied() {
    let h = Harness::new();
    let (id, _, reserve) = started(&h).await;
    let before = h.record(id).await;
    assert_eq!(h.apply(&reserve).await, Outcome::NotForOrchestrator);
    assert_eq!(h.record(id).await, before);
    assert_eq!(h.bus.take(), Vec::new());
}

// ---------------------------------------------------------------------------------------------------------
// The timeline

#[tokio::test]
async fn the_timeline_numbers_every_change_and_names_what_was_received_and_sent() {
    let h = Harness::new();
    let (id, start) = h.place_and_take_start().await;
    // (message applied, what it published), in order: the start, the reservation's reply, a duplicate of it
    // (fenced), the charge's and the shipment's replies.
    let mut steps: Vec<(Message, Published)> = Vec::new();
    h.apply(&start).await;
    steps.push((start.clone(), Published::split(h.bus.take())));
    for n in 0..3 {
        advance(&h, Duration::from_millis(250));
        let command = steps.iter().rev().find_map(|(_, p)| p.commands.first()).expect("a command").clone();
        let reply = h.reply(&command, Reply::ok());
        h.apply(&reply).await;
        steps.push((reply.clone(), Published::split(h.bus.take())));
        if n == 0 {
            h.apply(&reply).await;
            steps.push((reply, Published::split(h.bus.take())));
        }
    }

    let timeline = h.store.timeline(id).await.expect("timeline");
    assert_eq!(timeline.iter().map(|e| e.seq).collect::<Vec<_>>(), (1..=6).collect::<Vec<u64>>());
    assert!(timeline.iter().all(|e| e.saga_id == id));
    let kinds: Vec<EntryKind> = timeline.iter().map(|e| e.kind).collect();
    use EntryKind::{Created, Ignored, Transition};
    assert_eq!(kinds, [Created, Transition, Transition, Ignored, Transition, Transition]);
    let states: Vec<(&str, &str)> = timeline.iter().map(|e| (e.from.as_str(), e.to.as_str())).collect();
    assert_eq!(
        states,
        [
            ("", "STARTED"),
            ("STARTED", "RUNNING"),
            ("RUNNING", "RUNNING"),
            ("RUNNING", "RUNNING"),
            ("RUNNING", "RUNNING"),
            ("RUNNING", "COMPLETED")
        ]
    );
    let positions: Vec<(Option<u16>, Option<u32>)> = timeline.iter().map(|e| (e.step, e.attempt)).collect();
    assert_eq!(
        positions,
        [(None, None), (Some(0), Some(1)), (Some(1), Some(1)), (Some(1), Some(1)), (Some(2), Some(1)), (None, None)]
    );

    let created = &timeline[0];
    assert_eq!((created.at, &created.received, created.sent.len()), (t0(), &None, 0));
    // The start was applied with the order, read from no topic; the others where the harness read them.
    let mut origins = h.origins();
    assert_eq!(origins.len(), steps.len());
    origins[0].1 = engine::Origin {
        topic: topics::REPLY.to_owned(),
        partition: partition_of(id),
        offset: orchestrator::consumer::HANDED_OVER,
    };
    for ((entry, (message, published)), (message_id, origin)) in timeline[1..].iter().zip(&steps).zip(&origins) {
        let received = entry.received.as_ref().expect("the message received");
        assert_eq!((received.message_id, *message_id), (message.meta.message_id, message.meta.message_id));
        assert_eq!(received.message_type, message.body.message_type());
        assert_eq!(
            (&received.topic, received.partition, received.offset),
            (&origin.topic, origin.partition, origin.offset)
        );
        assert_eq!((received.step, received.attempt), (message.meta.step, message.meta.attempt));
        let outcome = matches!(message.body, Body::Reply { .. }).then(|| "succeeded".to_owned());
        assert_eq!(received.outcome, outcome);
        let sent: Vec<(Uuid, &str, &str, u16, u32)> = entry
            .sent
            .iter()
            .map(|s| (s.message_id, s.message_type.as_str(), s.topic.as_str(), s.step, s.attempt))
            .collect();
        let published: Vec<(Uuid, &str, &str, u16, u32)> = published
            .all
            .iter()
            .map(|(topic, m)| (m.meta.message_id, m.body.message_type(), topic.as_str(), m.meta.step, m.meta.attempt))
            .collect();
        assert_eq!(sent, published, "entry {} names exactly what was published", entry.seq);
    }
    assert_eq!(timeline[1].at, t0(), "the start is written with the order");
    assert_eq!(timeline[5].at, at_millis(750));
    assert_eq!(h.record(id).await.version, 6, "the last entry's seq is the saga's version");
}

fn at_millis(millis: u64) -> DateTime<Utc> {
    at(Duration::from_millis(millis))
}

#[tokio::test]
async fn the_timeline_says_why_a_saga_compensates() {
    let h = Harness::new();
    let (id, _, reserve) = started(&h).await;
    let charge = succeed(&h, &reserve).await.command().clone();
    h.apply(&h.reply(&charge, Reply::business("card declined"))).await;

    let timeline = h.store.timeline(id).await.expect("timeline");
    let entry = timeline.last().expect("an entry");
    assert_eq!(
        (entry.kind, entry.from.as_str(), entry.to.as_str()),
        (EntryKind::Transition, "RUNNING", "COMPENSATING")
    );
    // `LogEntry::note`: "Why a message was ignored, or why the saga compensates or is parked."
    assert_eq!(entry.note.as_deref(), Some("step charge_payment failed: card declined"));
}

// ---------------------------------------------------------------------------------------------------------
// Crash safety: the outbox

/// The saga as stored by the API, which must be started with its start's messages unpublished: at the first
/// step (version 2), the reserve command and the lifecycle event in its outbox.
async fn stored_started(h: &Harness, id: Uuid) -> orchestrator::model::SagaRecord {
    let stored = h.record(id).await;
    assert_eq!((stored.state.phase, stored.version), (Phase::Running { step: 0, attempt: 1 }, 2));
    let outgoing: Vec<&Outgoing> = stored.outbox.iter().map(|e| &e.outgoing).collect();
    assert!(
        matches!(
            outgoing.as_slice(),
            [Outgoing::Command { command: CommandKind::InventoryReserve }, Outgoing::Transitioned { .. }]
        ),
        "{outgoing:?}"
    );
    stored
}

#[tokio::test]
async fn an_order_placed_while_kafka_is_down_is_accepted_and_its_start_published_by_recovery_or_the_sweep() {
    let h = Harness::new();
    h.bus.fail(true);
    let id = h.place().await;
    let stored = stored_started(&h, id).await;
    assert_eq!(h.bus.take(), Vec::new());
    h.bus.fail(false);

    // The owner's start sweep asks for the start of sagas stored before the grace period: this one is among
    // them once that period has passed.
    let partition = [partition_of(id)];
    let not_started = |before| h.store.not_started(&partition, before, 10);
    assert_eq!(not_started(h.now()).await.expect("memory").len(), 0, "stored at this instant, not before");
    advance(&h, Duration::from_millis(1));
    let found = not_started(h.now()).await.expect("memory");
    assert_eq!(found.iter().map(|s| s.id).collect::<Vec<_>>(), [id]);

    // Recovery of the partition publishes exactly the outbox, with the stored ids.
    assert_eq!(h.engine.recover(&[partition_of(id)]).await.expect("recover"), 1);
    let published = Published::split(h.bus.take());
    assert_eq!(published.ids(), stored.outbox.iter().map(|e| e.message_id).collect::<Vec<_>>());
    assert_eq!(brief(published.event()), ("STARTED", "RUNNING", OrderStatus::Pending, Some("reserve_stock"), 2));
    assert!(not_started(h.now()).await.expect("memory").is_empty(), "settled: its start went out");
}

#[tokio::test]
async fn a_saga_stored_in_started_by_an_earlier_version_still_starts_by_a_transition() {
    let h = Harness::new();
    let (id, start) = h.place_and_take_start().await;
    // Its start published and settled, so that only the saga below waits for a start in any partition.
    assert_eq!(h.apply(&start).await, START_PUBLISHED);
    h.bus.take();
    let placed = h.record(id).await;
    let start = orchestrator::model::OutboxEntry {
        message_id: Uuid::now_v7(),
        causation_id: None,
        time: placed.created_at,
        step: 0,
        attempt: 0,
        outgoing: Outgoing::Start,
    };
    let mut earlier = placed.clone();
    earlier.id = Uuid::now_v7();
    earlier.partition = partition_of(earlier.id);
    earlier.version = 1;
    earlier.state = saga_defs::SagaState::new();
    earlier.outbox = vec![start.clone()];
    let mut created = h.store.timeline(id).await.expect("timeline").swap_remove(0);
    assert_eq!(created.kind, EntryKind::Created);
    created.saga_id = earlier.id;
    earlier.pending_log = vec![created];
    h.store.insert(&earlier).await.expect("stored");
    let id = earlier.id;
    assert_eq!(
        h.store.not_started(&[earlier.partition], h.now() + TimeDelta::seconds(1), 10).await.expect("memory").len(),
        1
    );

    assert_eq!(h.engine.recover(&[earlier.partition]).await.expect("recover"), 1);
    let published = h.bus.take();
    let [(topic, message)] = published.as_slice() else { panic!("its start: {published:?}") };
    assert_eq!((topic.as_str(), message.meta.message_id), (topics::REPLY, start.message_id));
    assert_eq!(h.apply(message).await, transitioned("STARTED", "RUNNING"));
    assert_eq!(command_kind(Published::split(h.bus.take()).command()), CommandKind::InventoryReserve);
    assert_eq!(h.record(id).await.version, 2);
}

#[tokio::test]
async fn a_failed_publication_keeps_the_transition_and_recovery_publishes_exactly_the_outbox() {
    let h = Harness::new();
    let (id, start) = h.place_and_take_start().await;
    h.bus.fail(true);

    let error = h.handle(&start).await.expect_err("Kafka is down");
    assert!(matches!(error, engine::Error::Bus(_)) && error.is_transient(), "{error}");
    let stored = stored_started(&h, id).await;
    assert_eq!(
        stored.pending_log.iter().map(|e| e.seq).collect::<Vec<_>>(),
        [1, 2],
        "the creation's entry is carried along with the transition's"
    );
    let pending: Vec<Uuid> = stored.outbox.iter().map(|e| e.message_id).collect();
    let entry = h.store.log_entry(id, 2).await.expect("log").expect("the entry, from the saga's pending timeline");
    assert_eq!((entry.from.as_str(), entry.to.as_str()), ("STARTED", "RUNNING"));
    let shown: Vec<u64> = h.store.timeline(id).await.expect("timeline").iter().map(|e| e.seq).collect();
    assert_eq!(shown, [1, 2], "the timeline shows the pending entry too");

    h.bus.fail(false);
    let others: Vec<i32> = (0..REPLY_PARTITIONS).filter(|p| *p != partition_of(id)).collect();
    assert_eq!(h.engine.recover(&others).await.expect("recover"), 0, "other partitions have nothing pending");
    assert_eq!(h.bus.take(), Vec::new());

    assert_eq!(h.engine.recover(&[partition_of(id)]).await.expect("recover"), 1);
    let published = Published::split(h.bus.take());
    assert_eq!(published.ids(), pending, "exactly the pending messages, with their stored ids");
    assert_eq!(command_kind(published.command()), CommandKind::InventoryReserve);
    assert_meta(published.command(), id, 0, 1, &start);
    assert_eq!(brief(published.event()).1, "RUNNING");
    let recovered = h.record(id).await;
    assert!(!recovered.has_pending(), "the outbox is empty: {recovered:?}");
    assert_eq!((recovered.state, recovered.version), (stored.state, stored.version), "nothing else changed");
    assert_eq!(h.store.timeline(id).await.expect("timeline").iter().map(|e| e.seq).collect::<Vec<_>>(), [1, 2]);

    assert_eq!(h.engine.recover(&[partition_of(id)]).await.expect("recover"), 0, "nothing left");
    assert_eq!(h.bus.take(), Vec::new());
}

#[tokio::test]
async fn a_quick_saga_settles_once_after_its_first_transition_with_its_whole_timeline() {
    let h = Harness::deferred();
    let started_at = h.now();
    let (id, _, reserve) = started(&h).await;
    let charge = succeed(&h, &reserve).await.command().clone();
    let ship = succeed(&h, &charge).await.command().clone();
    let done = succeed(&h, &ship).await;
    assert!(done.commands.is_empty() && brief(done.event()).1 == "COMPLETED", "{:?}", done.events);

    let stored = h.record(id).await;
    assert_eq!(stored.state.phase, Phase::Completed);
    let seqs = |entries: &[orchestrator::model::LogEntry]| entries.iter().map(|e| e.seq).collect::<Vec<_>>();
    assert_eq!(seqs(&stored.pending_log), [1, 2, 3, 4, 5], "nothing settled yet: the document carries the timeline");
    assert_eq!(seqs(&h.store.timeline(id).await.expect("timeline")), [1, 2, 3, 4, 5]);
    let third = h.store.log_entry(id, 3).await.expect("read").expect("an unsettled entry is found too");
    assert!(third.sent.iter().all(|s| s.offset.is_some()), "it says where its messages landed: {third:?}");
    assert_eq!(h.engine.unsettled().next_due(), Some(started_at + TimeDelta::seconds(5)), "5 s after the start");

    assert_eq!(h.engine.settle_due(h.now()).await, 0, "not due yet");
    h.clock.advance(TimeDelta::seconds(5));
    assert_eq!(h.engine.settle_due(h.now()).await, 1);
    assert_eq!(h.bus.take(), Vec::new(), "settling publishes nothing");
    let settled = h.record(id).await;
    assert!(h.settled(&settled) && !h.store.is_live(id), "moved to the finished sagas: {settled:?}");
    assert_eq!(settled.version, stored.version);
    assert_eq!(seqs(&h.store.timeline(id).await.expect("timeline")), [1, 2, 3, 4, 5], "now from the finished copy");
    assert_eq!(h.store.log_entry(id, 3).await.expect("read"), Some(third));
    assert!(h.engine.unsettled().is_empty());
}

#[tokio::test]
async fn sagas_of_a_revoked_partition_are_left_unsettled_and_their_next_owner_republishes_the_same_messages() {
    let h = Harness::deferred();
    let (id, _, reserve) = started(&h).await;
    let partition = partition_of(id);
    h.engine.unsettled().forget(&[partition]);
    h.engine.cache().forget(&[partition]);
    assert!(h.engine.unsettled().is_empty());
    assert!(h.record(id).await.has_pending(), "left pending in the store");

    assert_eq!(h.engine.recover(&[partition]).await.expect("recover"), 1);
    let again = Published::split(h.bus.take());
    assert_eq!(again.command().meta.message_id, reserve.meta.message_id, "the same command, deduplicated by its id");
    assert_eq!(brief(again.event()).1, "RUNNING");
    assert!(!h.record(id).await.has_pending());
    let charge = succeed(&h, &reserve).await;
    assert_eq!(command_kind(charge.command()), CommandKind::PaymentCharge, "the saga goes on");
}

#[tokio::test]
async fn a_saga_written_by_an_instance_that_lost_its_partition_is_still_settled_by_the_owner() {
    let h = Harness::deferred();
    let (id, _, reserve) = started(&h).await;
    succeed(&h, &reserve).await;
    // A stalled instance wakes and records one more (ignored) message before it learns that it lost the
    // partition; it never settles that write.
    let stored = h.record(id).await;
    let mut zombie = stored.clone();
    zombie.version += 1;
    let mut entry = stored.pending_log.last().expect("an unsettled entry").clone();
    entry.seq = zombie.version;
    entry.kind = EntryKind::Ignored;
    entry.sent.clear();
    zombie.pending_log.push(entry);
    h.store.replace(&zombie, stored.version).await.expect("the zombie's write");

    h.clock.advance(TimeDelta::seconds(5));
    assert_eq!(h.engine.settle_due(h.now()).await, 1);
    let settled = h.record(id).await;
    assert!(!settled.has_pending(), "settled as stored: {settled:?}");
    assert_eq!(settled.version, zombie.version);
    let timeline = h.store.timeline(id).await.expect("timeline");
    assert_eq!(timeline.iter().map(|e| e.seq).collect::<Vec<_>>(), (1..=zombie.version).collect::<Vec<_>>());
    assert_eq!(timeline.last().map(|e| e.kind), Some(EntryKind::Ignored));

    let charge = Published::split(h.bus.take());
    assert_eq!(charge.commands.len(), 1, "the stored outbox is published again, with its ids: {:?}", charge.commands);
    assert_eq!(command_kind(&charge.commands[0]), CommandKind::PaymentCharge);
    let answered = h.apply(&h.reply(&charge.commands[0], Reply::ok())).await;
    assert_eq!(answered, transitioned("RUNNING", "RUNNING"), "the owner goes on from the stored saga");
}

#[tokio::test]
async fn a_saga_whose_document_holds_many_unsettled_entries_settles_at_once() {
    let h = Harness::deferred();
    let (id, _, reserve) = started(&h).await;
    // Every redelivery of the reserve command's reply after the first is ignored, and recorded.
    let reply = h.reply(&reserve, Reply::ok());
    h.apply(&reply).await;
    h.bus.take();
    let mut pending = h.record(id).await.pending_log.len();
    while pending < orchestrator::settle::MAX_UNSETTLED_ENTRIES - 1 {
        h.apply(&reply).await;
        pending = h.record(id).await.pending_log.len();
    }
    assert!(h.record(id).await.has_pending());
    h.apply(&reply).await;
    let stored = h.record(id).await;
    assert!(!stored.has_pending(), "settled with the transition that filled it: {stored:?}");
    assert!(h.engine.unsettled().is_empty());
    let timeline = h.store.timeline(id).await.expect("timeline");
    assert_eq!(timeline.iter().map(|e| e.seq).collect::<Vec<_>>(), (1..=stored.version).collect::<Vec<_>>());
}

#[tokio::test]
async fn the_next_message_of_a_saga_publishes_what_a_failed_publication_left_pending() {
    let h = Harness::new();
    let (id, _, reserve) = started(&h).await;
    let reserved = h.reply(&reserve, Reply::ok());
    h.bus.fail(true);
    assert!(h.handle(&reserved).await.expect_err("Kafka is down").is_transient());
    let stored = h.record(id).await;
    assert_eq!(stored.state.phase, Phase::Running { step: 1, attempt: 1 });
    let pending: Vec<Uuid> = stored.outbox.iter().map(|e| e.message_id).collect();
    assert_eq!(pending.len(), 2, "{stored:?}");

    // The consumer retries the same message once Kafka is back: the pending messages go out first, and the
    // reply itself, applied already, is a duplicate.
    h.bus.fail(false);
    assert_ignored_after_flush(&h, &reserved, &pending).await;
    let saga = h.record(id).await;
    assert_eq!((saga.state.phase, saga.version), (Phase::Running { step: 1, attempt: 1 }, stored.version + 1));
    assert!(!saga.has_pending());
    let kinds: Vec<EntryKind> = h.store.timeline(id).await.expect("timeline").iter().map(|e| e.kind).collect();
    assert_eq!(kinds, [EntryKind::Created, EntryKind::Transition, EntryKind::Transition, EntryKind::Ignored]);
}

/// Applies `message`, which must be fenced as a duplicate after the saga's pending messages `pending` (and
/// nothing else) were published.
async fn assert_ignored_after_flush(h: &Harness, message: &Message, pending: &[Uuid]) {
    let outcome = h.apply(message).await;
    assert!(matches!(&outcome, Outcome::Ignored(r) if r.starts_with("duplicate:")), "{outcome:?}");
    let published = Published::split(h.bus.take());
    assert_eq!(published.ids(), pending);
    assert_eq!(command_kind(published.command()), CommandKind::PaymentCharge);
}

// ---------------------------------------------------------------------------------------------------------
// Personal data

#[tokio::test]
async fn personal_data_stays_out_of_sagas_timelines_events_and_commands_that_do_not_need_it() {
    let h = Harness::new();
    let mut published = Vec::new();
    // One order completes; another is refused at shipping and compensated.
    for refuse_shipping in [false, true] {
        let (id, start) = h.place_and_take_start().await;
        published.push((topics::REPLY.to_owned(), start.clone()));
        h.apply(&start).await;
        let mut step = Published::split(h.bus.take());
        loop {
            published.extend(step.all.iter().cloned());
            let Some(command) = step.commands.first().cloned() else { break };
            let reply = match command_kind(&command) {
                CommandKind::ShippingCreate if refuse_shipping => Reply::business("country not served"),
                _ => Reply::ok(),
            };
            h.apply(&h.reply(&command, reply)).await;
            step = Published::split(h.bus.take());
        }
        let expected = if refuse_shipping { "CANCELLED" } else { "COMPLETED" };
        let view = h.get(&format!("/v1/orders/{id}")).await;
        assert_eq!(view.body["status"].as_str(), Some(expected));
        assert_clean(&format!("GET order {id}"), &view.body.to_string(), &[]);
    }

    let sagas = h.store.all();
    assert_eq!(sagas.len(), 2);
    for saga in &sagas {
        assert_clean("a stored saga", &serde_json::to_string(saga).expect("JSON"), &[]);
        for entry in h.store.timeline(saga.id).await.expect("timeline") {
            assert_clean("a timeline entry", &serde_json::to_string(&entry).expect("JSON"), &[]);
        }
        let pii = h.store.get_pii(saga.id).await.expect("get_pii").expect("the order's personal data");
        assert_eq!((pii.email.as_str(), pii.shipping_address.line1.as_str()), (EMAIL, STREET), "kept apart");
    }
    let (mut charges, mut shipments) = (0, 0);
    for (topic, message) in &published {
        let wire = String::from_utf8(message.encode()).expect("UTF-8 JSON");
        match &message.body {
            Body::Command(Command::ShippingCreate(_)) => {
                assert!(wire.contains(STREET), "the shipment needs the address");
                shipments += 1;
            }
            Body::Command(Command::PaymentCharge(_)) => {
                assert!(wire.contains(TOKEN), "the charge needs the token");
                assert_clean("payment.charge", &wire, &[TOKEN]);
                charges += 1;
            }
            _ => assert_clean(&format!("{} on {topic}", message.body.message_type()), &wire, &[]),
        }
    }
    assert_eq!((charges, shipments), (2, 2), "both orders were charged and shipped");
}

/// Fails if `json` (described as `what`) contains personal data other than `allowed`.
fn assert_clean(what: &str, json: &str, allowed: &[&str]) {
    for secret in [NAME, EMAIL, STREET, TOKEN, CUSTOMER] {
        if !allowed.contains(&secret) {
            assert!(!json.contains(secret), "{what} contains {secret:?}: {json}");
        }
    }
}

#[tokio::test]
async fn finished_sagas_settle_together_and_leave_the_live_ones_and_a_late_duplicate_brings_one_back_briefly() {
    let h = Harness::deferred();
    let mut done = Vec::new();
    let mut last_ship = None;
    for _ in 0..3 {
        let (id, _, reserve) = started(&h).await;
        let charge = succeed(&h, &reserve).await.command().clone();
        let ship = succeed(&h, &charge).await.command().clone();
        succeed(&h, &ship).await;
        done.push(id);
        last_ship = Some(ship);
    }
    let (running, _, _) = started(&h).await;
    assert_eq!(h.store.sizes(), (4, 0), "all live until settled");

    // Within the slack of each other: one batch, the running saga settled on its own.
    h.clock.advance(TimeDelta::seconds(5));
    assert_eq!(h.engine.settle_due(h.now()).await, 4);
    assert_eq!(h.store.sizes(), (1, 3), "the three finished sagas moved");
    assert!(h.engine.unsettled().is_empty());
    for id in &done {
        let saga = h.record(*id).await;
        assert_eq!((saga.state.phase, h.settled(&saga)), (Phase::Completed, true), "{saga:?}");
        assert_eq!(h.store.timeline(*id).await.expect("timeline").len(), 5, "the whole timeline, in the finished copy");
    }
    assert!(!h.record(running).await.has_pending());

    // A duplicate of the last reply arrives late: noted on the timeline, the saga is live until settled.
    let ship = last_ship.expect("a shipment command");
    let late = h.apply(&h.reply(&ship, Reply::ok())).await;
    assert!(matches!(&late, Outcome::Ignored(_)), "{late:?}");
    assert_eq!(h.bus.take(), Vec::new(), "nothing to publish");
    let noted = h.record(ship.meta.saga_id).await;
    assert_eq!((noted.version, noted.has_pending()), (6, true));
    assert_eq!(h.store.sizes(), (2, 3));
    h.clock.advance(TimeDelta::seconds(5));
    assert_eq!(h.engine.settle_due(h.now()).await, 1);
    assert_eq!(h.store.sizes(), (1, 3), "moved again");
    let timeline = h.store.timeline(ship.meta.saga_id).await.expect("timeline");
    assert_eq!(timeline.last().map(|e| (e.seq, e.kind)), Some((6, EntryKind::Ignored)));
}
