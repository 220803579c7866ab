//! The saga core through its public API: every transition of the state machine, reply and timer fencing,
//! restoring stored states, and a seeded simulator that drives thousands of sagas through random, lost,
//! duplicated, stale and reordered events (and, in a second run, operators' actions) while checking the
//! core's invariants after every step. Operator actions are tested one by one in `operator.rs`.

use std::collections::HashSet;
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use proto_events::{CommandKind, DeadlineKind, FailureKind, OrderStatus, Reply};
use saga_defs::{
    Action, Deadline, Definition, Fenced, OperatorAction, Phase, Resolution, RetryPolicy, SagaEvent, SagaState,
    StepKind, apply, order_fulfilment,
};

const TIMEOUT: Duration = Duration::from_secs(10);

const RESERVE: CommandKind = CommandKind::InventoryReserve;
const RELEASE: CommandKind = CommandKind::InventoryRelease;
const CHARGE: CommandKind = CommandKind::PaymentCharge;
const REFUND: CommandKind = CommandKind::PaymentRefund;
const CREATE: CommandKind = CommandKind::ShippingCreate;
const CANCEL: CommandKind = CommandKind::ShippingCancel;

const STEP_TIMEOUT: DeadlineKind = DeadlineKind::StepTimeout;
const RETRY_DUE: DeadlineKind = DeadlineKind::RetryDue;

// ---------------------------------------------------------------------------------------------------------
// Helpers

fn t0() -> DateTime<Utc> {
    DateTime::from_timestamp(1_767_225_600, 0).expect("a valid instant")
}

fn plus(at: DateTime<Utc>, wait: Duration) -> DateTime<Utc> {
    at + TimeDelta::from_std(wait).expect("a representable wait")
}

fn order() -> Definition {
    order_fulfilment(TIMEOUT)
}

/// The order saga with every forward step retried under `retry`.
fn order_with_step_retry(retry: RetryPolicy) -> Definition {
    let mut def = order();
    for step in &mut def.steps {
        step.retry = retry;
    }
    def
}

/// Reserve (compensatable), charge (the pivot, refunded if its outcome is unknown), ship (retriable, no
/// compensation): a valid definition with a step after the pivot.
fn pay_then_ship() -> Definition {
    let mut def = order();
    def.name = "pay_then_ship";
    def.steps[1].kind = StepKind::Pivot;
    def.steps[2].kind = StepKind::Retriable;
    def.steps[2].compensation = None;
    def
}

const NO_WAIT: RetryPolicy =
    RetryPolicy { max_attempts: 3, initial_backoff: Duration::ZERO, multiplier: 2.0, max_backoff: Duration::ZERO };

fn send(step: u16, attempt: u32, command: CommandKind) -> Action {
    Action::Send { step, attempt, command }
}

fn reply(step: u16, attempt: u32, command: CommandKind, reply: Reply) -> SagaEvent {
    SagaEvent::Reply { step, attempt, command, reply }
}

fn ok(step: u16, attempt: u32, command: CommandKind) -> SagaEvent {
    reply(step, attempt, command, Reply::ok())
}

fn refused(step: u16, attempt: u32, command: CommandKind, why: &str) -> SagaEvent {
    reply(step, attempt, command, Reply::business(why))
}

fn transient(step: u16, attempt: u32, command: CommandKind, why: &str) -> SagaEvent {
    reply(step, attempt, command, Reply::transient(why))
}

/// A timer that matches no pending deadline (its due time is the epoch): it must always be fenced.
fn timer(step: u16, attempt: u32, kind: DeadlineKind) -> SagaEvent {
    SagaEvent::Timer { step, attempt, kind, due_at: chrono::DateTime::UNIX_EPOCH }
}

/// The timer of `deadline`.
fn due(deadline: &Deadline) -> SagaEvent {
    SagaEvent::Timer { step: deadline.step, attempt: deadline.attempt, kind: deadline.kind, due_at: deadline.at }
}

fn running(step: u16, attempt: u32) -> Phase {
    Phase::Running { step, attempt }
}

fn backoff(step: u16, attempt: u32) -> Phase {
    Phase::Backoff { step, attempt }
}

fn compensating(step: u16, attempt: u32) -> Phase {
    Phase::Compensating { step, attempt }
}

fn compensation_backoff(step: u16, attempt: u32) -> Phase {
    Phase::CompensationBackoff { step, attempt }
}

/// A saga driven through `apply` as the orchestrator would: the stored state is all that is kept between
/// events, so every call restores the machine from it.
#[derive(Debug)]
struct Saga {
    def: Definition,
    state: SagaState,
    now: DateTime<Utc>,
}

impl Saga {
    fn new(def: Definition) -> Self {
        assert_eq!(def.validate(), Ok(()), "test definitions must be valid");
        Self { def, state: SagaState::new(), now: t0() }
    }

    fn order() -> Self {
        Self::new(order())
    }

    /// A saga of `def` that started and whose steps before `step` succeeded at their first attempt.
    fn at_step(def: Definition, step: u16) -> Self {
        let mut saga = Self::new(def);
        saga.start();
        for s in 0..step {
            let command = saga.command(s);
            saga.wait(Duration::from_millis(100));
            saga.apply(&ok(s, 1, command));
        }
        assert_eq!(saga.phase(), running(step, 1));
        saga
    }

    fn command(&self, step: u16) -> CommandKind {
        self.def.steps[usize::from(step)].command
    }

    fn phase(&self) -> Phase {
        self.state.phase
    }

    fn reason(&self) -> &str {
        self.state.reason.as_deref().expect("the saga records a reason")
    }

    fn apply(&mut self, event: &SagaEvent) -> Vec<Action> {
        let (state, actions) = apply(&self.state, event, &self.def, self.now);
        self.state = state;
        actions
    }

    fn start(&mut self) -> Vec<Action> {
        self.apply(&SagaEvent::Start)
    }

    fn wait(&mut self, wait: Duration) {
        self.now = plus(self.now, wait);
    }

    /// Moves the clock to the pending deadline and delivers its timer.
    fn fire(&mut self) -> Vec<Action> {
        let deadline = self.state.deadline.expect("a pending deadline");
        assert!(deadline.at >= self.now, "deadlines lie ahead");
        self.now = deadline.at;
        self.apply(&due(&deadline))
    }

    /// Asserts that the pending deadline is of `kind` for `step`, `attempt`, due `after` from now.
    fn assert_deadline(&self, kind: DeadlineKind, step: u16, attempt: u32, after: Duration) {
        let expected = Deadline { at: plus(self.now, after), kind, step, attempt };
        assert_eq!(self.state.deadline, Some(expected), "in {:?}", self.phase());
    }

    /// The wait until the pending deadline, which must be a retry for `step`, `attempt`.
    fn retry_wait(&self, step: u16, attempt: u32) -> Duration {
        let deadline = self.state.deadline.expect("a pending retry");
        assert_eq!((deadline.kind, deadline.step, deadline.attempt), (RETRY_DUE, step, attempt));
        (deadline.at - self.now).to_std().expect("a deadline ahead")
    }

    /// Applies an event that must be fenced: the state stays exactly as it was and nothing is sent.
    fn fenced(&mut self, event: &SagaEvent) -> Fenced {
        let before = self.state.clone();
        self.wait(Duration::from_millis(1));
        let actions = self.apply(event);
        assert_eq!(self.state, before, "the fenced {event:?} changed the saga");
        match actions.as_slice() {
            [Action::Ignore(fence)] => fence.clone(),
            other => panic!("{event:?} in {:?}: expected a single Ignore, got {other:?}", before.phase),
        }
    }

    /// Times out every attempt of the running `step` (waiting out each back-off) and returns the actions of
    /// the last timeout, the one that gives up.
    fn time_out_every_attempt(&mut self, step: u16) -> Vec<Action> {
        let max = self.def.steps[usize::from(step)].retry.max_attempts;
        for attempt in 1..max {
            assert_eq!(self.phase(), running(step, attempt));
            assert_eq!(self.fire(), [], "a timeout with attempts left sends nothing before the back-off");
            assert_eq!(self.phase(), backoff(step, attempt + 1));
            assert_eq!(self.fire(), [send(step, attempt + 1, self.command(step))]);
        }
        assert_eq!(self.phase(), running(step, max));
        self.fire()
    }
}

/// Asserts that `$event` is fenced in `$saga` as `Fenced::$fence`, leaving the saga unchanged.
macro_rules! assert_fenced {
    ($saga:expr, $event:expr, $fence:ident) => {{
        let event = $event;
        let phase = $saga.phase();
        let fence = $saga.fenced(&event);
        assert!(
            matches!(fence, Fenced::$fence(_)),
            "{event:?} in {phase:?}: expected {}, got {fence:?}",
            stringify!($fence)
        );
    }};
}

// ---------------------------------------------------------------------------------------------------------
// Phases

#[test]
fn phases_have_names_statuses_and_step_attempts() {
    let cases = [
        (Phase::Started, "STARTED", OrderStatus::Pending, None),
        (running(1, 2), "RUNNING", OrderStatus::Pending, Some((1, 2))),
        (backoff(1, 3), "BACKOFF", OrderStatus::Pending, Some((1, 3))),
        (compensating(0, 4), "COMPENSATING", OrderStatus::Pending, Some((0, 4))),
        (compensation_backoff(2, 5), "COMPENSATION_BACKOFF", OrderStatus::Pending, Some((2, 5))),
        (Phase::Completed, "COMPLETED", OrderStatus::Completed, None),
        (Phase::Compensated, "COMPENSATED", OrderStatus::Cancelled, None),
        (Phase::Failed, "FAILED", OrderStatus::Failed, None),
    ];
    for (phase, name, status, step_attempt) in cases {
        assert_eq!(phase.name(), name);
        assert_eq!(phase.status(), status, "{phase:?}");
        assert_eq!(phase.step_attempt(), step_attempt, "{phase:?}");
        assert_eq!(phase.is_terminal(), status.is_terminal(), "{phase:?}");
    }
    assert_eq!(
        SagaState::default(),
        SagaState { phase: Phase::Started, deadline: None, reason: None, ..SagaState::new() }
    );
}

// ---------------------------------------------------------------------------------------------------------
// The happy path

#[test]
fn order_fulfilment_runs_every_step_in_order_and_completes() {
    let mut saga = Saga::order();
    assert_eq!(saga.phase(), Phase::Started);
    assert_eq!(saga.phase().status(), OrderStatus::Pending);
    assert_eq!(saga.state.deadline, None);

    assert_eq!(saga.start(), [send(0, 1, RESERVE)]);
    assert_eq!(saga.phase(), running(0, 1));
    assert_eq!(saga.phase().status(), OrderStatus::Pending);
    saga.assert_deadline(STEP_TIMEOUT, 0, 1, TIMEOUT);

    saga.wait(Duration::from_secs(1));
    assert_eq!(saga.apply(&ok(0, 1, RESERVE)), [send(1, 1, CHARGE)]);
    assert_eq!(saga.phase(), running(1, 1));
    assert_eq!(saga.phase().status(), OrderStatus::Pending);
    saga.assert_deadline(STEP_TIMEOUT, 1, 1, TIMEOUT);

    saga.wait(Duration::from_secs(2));
    let shipped = Reply::Succeeded { reference: Some("pay-42".to_owned()) };
    assert_eq!(saga.apply(&reply(1, 1, CHARGE, shipped)), [send(2, 1, CREATE)]);
    assert_eq!(saga.phase(), running(2, 1));
    assert_eq!(saga.phase().status(), OrderStatus::Pending);
    saga.assert_deadline(STEP_TIMEOUT, 2, 1, TIMEOUT);

    saga.wait(Duration::from_secs(3));
    assert_eq!(saga.apply(&ok(2, 1, CREATE)), []);
    assert_eq!(saga.phase(), Phase::Completed);
    assert_eq!(saga.phase().status(), OrderStatus::Completed);
    assert_eq!(saga.state.deadline, None);
    assert_eq!(saga.state.reason, None);
}

// ---------------------------------------------------------------------------------------------------------
// Business failures: the participant made no change, so the steps before it are compensated, newest first

#[test]
fn a_refused_reservation_ends_compensated_without_sending_anything() {
    let mut saga = Saga::at_step(order(), 0);
    assert_eq!(saga.apply(&refused(0, 1, RESERVE, "out of stock")), []);
    assert_eq!(saga.phase(), Phase::Compensated);
    assert_eq!(saga.phase().status(), OrderStatus::Cancelled);
    assert_eq!(saga.state.deadline, None);
    assert_eq!(saga.reason(), "step reserve_stock failed: out of stock");
}

#[test]
fn a_declined_charge_releases_the_stock() {
    let mut saga = Saga::at_step(order(), 1);
    assert_eq!(saga.apply(&refused(1, 1, CHARGE, "card declined")), [send(0, 1, RELEASE)]);
    assert_eq!(saga.phase(), compensating(0, 1));
    assert_eq!(saga.phase().status(), OrderStatus::Pending);
    saga.assert_deadline(STEP_TIMEOUT, 0, 1, TIMEOUT);
    assert_eq!(saga.reason(), "step charge_payment failed: card declined");

    saga.wait(Duration::from_secs(1));
    assert_eq!(saga.apply(&ok(0, 1, RELEASE)), []);
    assert_eq!(saga.phase(), Phase::Compensated);
    assert_eq!(saga.phase().status(), OrderStatus::Cancelled);
    assert_eq!(saga.state.deadline, None);
    assert_eq!(saga.reason(), "step charge_payment failed: card declined");
}

#[test]
fn a_refused_shipment_refunds_then_releases_and_never_cancels_the_shipment() {
    let mut saga = Saga::at_step(order(), 2);
    assert_eq!(saga.apply(&refused(2, 1, CREATE, "country not served")), [send(1, 1, REFUND)]);
    assert_eq!(saga.phase(), compensating(1, 1));
    saga.assert_deadline(STEP_TIMEOUT, 1, 1, TIMEOUT);

    saga.wait(Duration::from_secs(1));
    assert_eq!(saga.apply(&ok(1, 1, REFUND)), [send(0, 1, RELEASE)]);
    assert_eq!(saga.phase(), compensating(0, 1));
    saga.assert_deadline(STEP_TIMEOUT, 0, 1, TIMEOUT);

    saga.wait(Duration::from_secs(1));
    assert_eq!(saga.apply(&ok(0, 1, RELEASE)), []);
    assert_eq!(saga.phase(), Phase::Compensated);
    assert_eq!(saga.state.deadline, None);
    assert_eq!(saga.reason(), "step create_shipment failed: country not served");
}

#[test]
fn a_business_failure_on_a_retry_compensates_like_on_a_first_attempt() {
    let mut saga = Saga::at_step(order(), 1);
    saga.apply(&transient(1, 1, CHARGE, "provider busy"));
    assert_eq!(saga.fire(), [send(1, 2, CHARGE)]);
    assert_eq!(saga.apply(&refused(1, 2, CHARGE, "card declined")), [send(0, 1, RELEASE)]);
    assert_eq!(saga.phase(), compensating(0, 1));
    assert_eq!(saga.reason(), "step charge_payment failed: card declined");
}

// ---------------------------------------------------------------------------------------------------------
// Timeouts and transient failures: retry with back-off, then compensate including the step itself

#[test]
fn a_timed_out_attempt_backs_off_then_sends_the_next_attempt() {
    let mut saga = Saga::at_step(order(), 0);
    let policy = saga.def.steps[0].retry;

    assert_eq!(saga.fire(), []);
    assert_eq!(saga.phase(), backoff(0, 2));
    assert_eq!(saga.phase().status(), OrderStatus::Pending);
    saga.assert_deadline(RETRY_DUE, 0, 2, policy.initial_backoff);
    assert_eq!(policy.initial_backoff, Duration::from_millis(200));
    assert_eq!(saga.state.reason, None, "a retry is not a reason to compensate");

    assert_eq!(saga.fire(), [send(0, 2, RESERVE)]);
    assert_eq!(saga.phase(), running(0, 2));
    saga.assert_deadline(STEP_TIMEOUT, 0, 2, TIMEOUT);

    saga.wait(Duration::from_secs(1));
    assert_eq!(saga.apply(&ok(0, 2, RESERVE)), [send(1, 1, CHARGE)]);
    assert_eq!(saga.phase(), running(1, 1));
    saga.assert_deadline(STEP_TIMEOUT, 1, 1, TIMEOUT);
}

#[test]
fn a_transient_failure_reply_backs_off_like_a_timeout() {
    let mut saga = Saga::at_step(order(), 1);
    saga.wait(Duration::from_secs(1));
    assert_eq!(saga.apply(&transient(1, 1, CHARGE, "provider unavailable")), []);
    assert_eq!(saga.phase(), backoff(1, 2));
    saga.assert_deadline(RETRY_DUE, 1, 2, Duration::from_millis(200));
    assert_eq!(saga.state.reason, None);

    assert_eq!(saga.fire(), [send(1, 2, CHARGE)]);
    assert_eq!(saga.phase(), running(1, 2));
    saga.assert_deadline(STEP_TIMEOUT, 1, 2, TIMEOUT);
}

#[test]
fn back_off_grows_by_the_multiplier_up_to_the_cap() {
    let policy = RetryPolicy {
        max_attempts: 6,
        initial_backoff: Duration::from_millis(100),
        multiplier: 3.0,
        max_backoff: Duration::from_secs(1),
    };
    let mut saga = Saga::at_step(order_with_step_retry(policy), 0);
    let expected_ms = [100, 300, 900, 1000, 1000];
    for (attempt, expected) in (2..).zip(expected_ms) {
        assert_eq!(saga.fire(), [], "timeout of attempt {}", attempt - 1);
        assert_eq!(saga.phase(), backoff(0, attempt));
        let wait = saga.retry_wait(0, attempt);
        assert_eq!(wait, policy.backoff_before(attempt));
        // The policy multiplies in f32, so allow for rounding well below a microsecond.
        let off = wait.abs_diff(Duration::from_millis(expected));
        assert!(off < Duration::from_micros(1), "attempt {attempt} waited {wait:?}, expected {expected}ms");
        assert_eq!(saga.fire(), [send(0, attempt, RESERVE)]);
    }
    assert_eq!(saga.phase(), running(0, 6));
    assert_eq!(saga.fire(), [send(0, 1, RELEASE)], "the sixth timeout gives up");
}

#[test]
fn a_step_mixing_transient_failures_and_timeouts_retries_until_it_succeeds() {
    let mut saga = Saga::at_step(order(), 2);
    assert_eq!(saga.apply(&transient(2, 1, CREATE, "carrier busy")), []);
    assert_eq!(saga.phase(), backoff(2, 2));
    assert_eq!(saga.fire(), [send(2, 2, CREATE)]);
    assert_eq!(saga.fire(), [], "attempt 2 times out");
    assert_eq!(saga.phase(), backoff(2, 3));
    assert_eq!(saga.retry_wait(2, 3), saga.def.steps[2].retry.backoff_before(3));
    assert_eq!(saga.fire(), [send(2, 3, CREATE)]);
    assert_eq!(saga.apply(&ok(2, 3, CREATE)), []);
    assert_eq!(saga.phase(), Phase::Completed);
    assert_eq!(saga.state.deadline, None);
}

#[test]
fn an_exhausted_reservation_releases_itself_because_its_outcome_is_unknown() {
    let mut saga = Saga::at_step(order(), 0);
    assert_eq!(saga.time_out_every_attempt(0), [send(0, 1, RELEASE)]);
    assert_eq!(saga.phase(), compensating(0, 1));
    saga.assert_deadline(STEP_TIMEOUT, 0, 1, TIMEOUT);
    assert_eq!(saga.reason(), "step reserve_stock gave up after 3 attempts: no reply within 10s");

    assert_eq!(saga.apply(&ok(0, 1, RELEASE)), []);
    assert_eq!(saga.phase(), Phase::Compensated);
    assert_eq!(saga.state.deadline, None);
}

#[test]
fn an_exhausted_charge_refunds_itself_then_releases_the_stock() {
    let mut saga = Saga::at_step(order(), 1);
    assert_eq!(saga.time_out_every_attempt(1), [send(1, 1, REFUND)]);
    assert_eq!(saga.phase(), compensating(1, 1));
    saga.assert_deadline(STEP_TIMEOUT, 1, 1, TIMEOUT);
    assert_eq!(saga.reason(), "step charge_payment gave up after 3 attempts: no reply within 10s");

    assert_eq!(saga.apply(&ok(1, 1, REFUND)), [send(0, 1, RELEASE)]);
    assert_eq!(saga.phase(), compensating(0, 1));
    assert_eq!(saga.apply(&ok(0, 1, RELEASE)), []);
    assert_eq!(saga.phase(), Phase::Compensated);
    assert_eq!(saga.phase().status(), OrderStatus::Cancelled);
}

#[test]
fn an_exhausted_pivot_cancels_the_shipment_first_then_refunds_and_releases() {
    let mut saga = Saga::at_step(order(), 2);
    assert_eq!(saga.time_out_every_attempt(2), [send(2, 1, CANCEL)]);
    assert_eq!(saga.phase(), compensating(2, 1));
    saga.assert_deadline(STEP_TIMEOUT, 2, 1, TIMEOUT);
    assert!(saga.reason().starts_with("step create_shipment gave up after 3 attempts"));

    assert_eq!(saga.apply(&ok(2, 1, CANCEL)), [send(1, 1, REFUND)]);
    assert_eq!(saga.apply(&ok(1, 1, REFUND)), [send(0, 1, RELEASE)]);
    assert_eq!(saga.apply(&ok(0, 1, RELEASE)), []);
    assert_eq!(saga.phase(), Phase::Compensated);
}

#[test]
fn exhausting_a_step_with_transient_failures_records_the_last_failure() {
    let mut saga = Saga::at_step(order(), 1);
    for attempt in 1..3 {
        assert_eq!(saga.apply(&transient(1, attempt, CHARGE, "provider unavailable")), []);
        assert_eq!(saga.phase(), backoff(1, attempt + 1));
        assert_eq!(saga.fire(), [send(1, attempt + 1, CHARGE)]);
    }
    assert_eq!(saga.apply(&transient(1, 3, CHARGE, "provider still unavailable")), [send(1, 1, REFUND)]);
    assert_eq!(saga.phase(), compensating(1, 1));
    assert_eq!(saga.reason(), "step charge_payment gave up after 3 attempts: provider still unavailable");
}

#[test]
fn without_back_off_a_retry_is_sent_at_once() {
    let mut saga = Saga::at_step(order_with_step_retry(NO_WAIT), 0);
    assert_eq!(saga.fire(), [send(0, 2, RESERVE)], "a timeout retries at once");
    assert_eq!(saga.phase(), running(0, 2));
    saga.assert_deadline(STEP_TIMEOUT, 0, 2, TIMEOUT);

    assert_eq!(saga.apply(&transient(0, 2, RESERVE, "db down")), [send(0, 3, RESERVE)]);
    assert_eq!(saga.phase(), running(0, 3));
    saga.assert_deadline(STEP_TIMEOUT, 0, 3, TIMEOUT);

    assert_eq!(saga.fire(), [send(0, 1, RELEASE)], "the last attempt gives up");
    assert_eq!(saga.phase(), compensating(0, 1));
}

#[test]
fn a_single_attempt_step_gives_up_on_its_first_timeout() {
    let mut def = order();
    def.steps[1].retry.max_attempts = 1;
    let mut saga = Saga::at_step(def, 1);
    assert_eq!(saga.fire(), [send(1, 1, REFUND)]);
    assert_eq!(saga.reason(), "step charge_payment gave up after 1 attempts: no reply within 10s");
}

#[test]
fn an_exhausted_pivot_without_a_compensation_is_skipped() {
    let mut def = order();
    def.steps[2].compensation = None;
    let mut saga = Saga::at_step(def, 2);
    assert_eq!(saga.time_out_every_attempt(2), [send(1, 1, REFUND)]);
    assert_eq!(saga.phase(), compensating(1, 1));
}

#[test]
fn deadlines_beyond_the_calendar_saturate_instead_of_panicking() {
    let mut def = order();
    def.steps[0].timeout = Duration::MAX;
    def.steps[0].retry.initial_backoff = Duration::MAX;
    def.steps[0].retry.max_backoff = Duration::MAX;
    let mut saga = Saga::new(def);
    assert_eq!(saga.start(), [send(0, 1, RESERVE)]);
    assert_eq!(saga.state.deadline.map(|d| d.at), Some(DateTime::<Utc>::MAX_UTC));
    assert_eq!(saga.fire(), []);
    assert_eq!(saga.phase(), backoff(0, 2));
    assert_eq!(saga.state.deadline.map(|d| d.at), Some(DateTime::<Utc>::MAX_UTC));
    assert_eq!(saga.fire(), [send(0, 2, RESERVE)]);
}

// ---------------------------------------------------------------------------------------------------------
// Steps after the pivot: retried until they succeed, or parked

#[test]
fn a_retriable_step_that_succeeds_completes_the_saga() {
    let mut saga = Saga::at_step(pay_then_ship(), 2);
    assert_eq!(saga.apply(&transient(2, 1, CREATE, "carrier busy")), []);
    assert_eq!(saga.phase(), backoff(2, 2));
    assert_eq!(saga.fire(), [send(2, 2, CREATE)]);
    assert_eq!(saga.apply(&ok(2, 2, CREATE)), []);
    assert_eq!(saga.phase(), Phase::Completed);
}

#[test]
fn an_exhausted_retriable_step_parks_the_saga_without_compensating() {
    let mut saga = Saga::at_step(pay_then_ship(), 2);
    assert_eq!(saga.time_out_every_attempt(2), [], "nothing is compensated after the pivot");
    assert_eq!(saga.phase(), Phase::Failed);
    assert_eq!(saga.phase().status(), OrderStatus::Failed);
    assert_eq!(saga.state.deadline, None);
    assert_eq!(saga.reason(), "step create_shipment gave up after 3 attempts: no reply within 10s");
}

#[test]
fn a_business_failure_after_the_pivot_parks_the_saga() {
    let mut saga = Saga::at_step(pay_then_ship(), 2);
    assert_eq!(saga.apply(&refused(2, 1, CREATE, "country not served")), []);
    assert_eq!(saga.phase(), Phase::Failed);
    assert_eq!(saga.state.deadline, None);
    assert_eq!(saga.reason(), "step create_shipment failed: country not served");
}

#[test]
fn a_refused_pivot_is_not_compensated_but_an_exhausted_one_is() {
    let mut saga = Saga::at_step(pay_then_ship(), 1);
    assert_eq!(saga.apply(&refused(1, 1, CHARGE, "card declined")), [send(0, 1, RELEASE)]);

    let mut saga = Saga::at_step(pay_then_ship(), 1);
    assert_eq!(saga.time_out_every_attempt(1), [send(1, 1, REFUND)]);
    assert_eq!(saga.apply(&ok(1, 1, REFUND)), [send(0, 1, RELEASE)]);
    assert_eq!(saga.apply(&ok(0, 1, RELEASE)), []);
    assert_eq!(saga.phase(), Phase::Compensated);
}

// ---------------------------------------------------------------------------------------------------------
// Compensation failures: retry per the definition's compensation policy, then park

/// A saga whose charge was declined: compensating the reservation (attempt 1).
fn releasing() -> Saga {
    let mut saga = Saga::at_step(order(), 1);
    saga.apply(&refused(1, 1, CHARGE, "card declined"));
    assert_eq!(saga.phase(), compensating(0, 1));
    saga
}

#[test]
fn a_failed_compensation_backs_off_and_is_retried_until_it_succeeds() {
    let mut saga = releasing();
    assert_eq!(saga.apply(&transient(0, 1, RELEASE, "inventory db down")), []);
    assert_eq!(saga.phase(), compensation_backoff(0, 2));
    assert_eq!(saga.phase().status(), OrderStatus::Pending);
    saga.assert_deadline(RETRY_DUE, 0, 2, Duration::from_millis(500));

    assert_eq!(saga.fire(), [send(0, 2, RELEASE)]);
    assert_eq!(saga.phase(), compensating(0, 2));
    saga.assert_deadline(STEP_TIMEOUT, 0, 2, TIMEOUT);

    assert_eq!(saga.fire(), [], "a compensation timeout backs off too");
    assert_eq!(saga.phase(), compensation_backoff(0, 3));
    saga.assert_deadline(RETRY_DUE, 0, 3, Duration::from_secs(1));

    assert_eq!(saga.fire(), [send(0, 3, RELEASE)]);
    // A compensation must eventually succeed: even a "business" refusal of it is retried.
    assert_eq!(saga.apply(&refused(0, 3, RELEASE, "reservation locked")), []);
    assert_eq!(saga.phase(), compensation_backoff(0, 4));
    saga.assert_deadline(RETRY_DUE, 0, 4, Duration::from_secs(2));

    assert_eq!(saga.fire(), [send(0, 4, RELEASE)]);
    assert_eq!(saga.apply(&ok(0, 4, RELEASE)), []);
    assert_eq!(saga.phase(), Phase::Compensated);
    assert_eq!(saga.state.deadline, None);
    assert_eq!(saga.reason(), "step charge_payment failed: card declined", "compensation retries keep the reason");
}

#[test]
fn an_exhausted_compensation_parks_the_saga_with_both_reasons() {
    let mut saga = releasing();
    let max = saga.def.compensation_retry.max_attempts;
    assert_eq!(max, 20);
    let mut waits = Vec::new();
    for attempt in 1..max {
        let actions = if attempt % 2 == 0 {
            saga.fire()
        } else {
            saga.apply(&transient(0, attempt, RELEASE, "inventory db down"))
        };
        assert_eq!(actions, []);
        assert_eq!(saga.phase(), compensation_backoff(0, attempt + 1));
        waits.push(saga.retry_wait(0, attempt + 1).as_millis());
        assert_eq!(saga.fire(), [send(0, attempt + 1, RELEASE)]);
        assert_eq!(saga.phase(), compensating(0, attempt + 1));
    }
    let mut expected = vec![500, 1_000, 2_000, 4_000, 8_000, 16_000];
    expected.resize(19, 30_000);
    assert_eq!(waits, expected);

    assert_eq!(saga.fire(), [], "the last compensation timeout parks the saga");
    assert_eq!(saga.phase(), Phase::Failed);
    assert_eq!(saga.phase().status(), OrderStatus::Failed);
    assert_eq!(saga.state.deadline, None);
    let reason = saga.reason();
    assert!(reason.contains("compensation of step reserve_stock gave up after 20 attempts: no reply within 10s"));
    assert!(reason.contains("step charge_payment failed: card declined"), "{reason}");
}

#[test]
fn a_parked_compensation_leaves_the_older_steps_alone() {
    let mut def = order();
    def.compensation_retry.max_attempts = 2;
    let mut saga = Saga::at_step(def, 2);
    assert_eq!(saga.apply(&refused(2, 1, CREATE, "country not served")), [send(1, 1, REFUND)]);
    assert_eq!(saga.apply(&transient(1, 1, REFUND, "provider down")), []);
    assert_eq!(saga.fire(), [send(1, 2, REFUND)]);
    assert_eq!(saga.apply(&transient(1, 2, REFUND, "provider still down")), [], "no release once parked");
    assert_eq!(saga.phase(), Phase::Failed);
    assert_eq!(
        saga.reason(),
        "compensation of step charge_payment gave up after 2 attempts: provider still down \
         (compensating because step create_shipment failed: country not served)"
    );
}

#[test]
fn without_compensation_back_off_a_compensation_is_resent_at_once() {
    let mut def = order();
    def.compensation_retry = NO_WAIT;
    let mut saga = Saga::at_step(def, 1);
    saga.apply(&refused(1, 1, CHARGE, "card declined"));
    assert_eq!(saga.apply(&transient(0, 1, RELEASE, "db down")), [send(0, 2, RELEASE)]);
    assert_eq!(saga.phase(), compensating(0, 2));
    saga.assert_deadline(STEP_TIMEOUT, 0, 2, TIMEOUT);
    assert_eq!(saga.fire(), [send(0, 3, RELEASE)]);
    assert_eq!(saga.fire(), []);
    assert_eq!(saga.phase(), Phase::Failed);
}

// ---------------------------------------------------------------------------------------------------------
// Fencing: events that do not match what the saga waits for change nothing and send nothing

#[test]
fn events_before_the_start_are_out_of_order() {
    let mut saga = Saga::order();
    assert_fenced!(saga, ok(0, 1, RESERVE), OutOfOrder);
    assert_fenced!(saga, refused(0, 1, RESERVE, "no"), OutOfOrder);
    assert_fenced!(saga, timer(0, 1, STEP_TIMEOUT), OutOfOrder);
    assert_fenced!(saga, timer(0, 2, RETRY_DUE), OutOfOrder);
    assert_eq!(saga.start(), [send(0, 1, RESERVE)], "the saga still starts");
}

#[test]
fn a_second_start_is_a_duplicate_while_the_saga_is_in_flight() {
    let mut saga = Saga::at_step(order(), 0);
    assert_fenced!(saga, SagaEvent::Start, Duplicate);
    saga.fire();
    assert_eq!(saga.phase(), backoff(0, 2));
    assert_fenced!(saga, SagaEvent::Start, Duplicate);

    let mut saga = releasing();
    assert_fenced!(saga, SagaEvent::Start, Duplicate);
    saga.fire();
    assert_eq!(saga.phase(), compensation_backoff(0, 2));
    assert_fenced!(saga, SagaEvent::Start, Duplicate);
}

#[test]
fn a_redelivered_reply_is_a_duplicate_once_the_saga_moved_on() {
    let mut saga = Saga::at_step(order(), 0);
    saga.apply(&ok(0, 1, RESERVE));
    assert_eq!(saga.phase(), running(1, 1));
    assert_fenced!(saga, ok(0, 1, RESERVE), Duplicate);
    assert_fenced!(saga, refused(0, 1, RESERVE, "contradicts the first answer"), Duplicate);
    saga.apply(&ok(1, 1, CHARGE));
    assert_fenced!(saga, ok(0, 1, RESERVE), Duplicate);
    assert_fenced!(saga, ok(1, 1, CHARGE), Duplicate);
    assert_fenced!(saga, transient(1, 1, CHARGE, "late"), Duplicate);
}

#[test]
fn a_redelivered_failure_is_stale_once_it_was_acted_upon() {
    // A business failure starts compensation: the redelivered reply is a forward reply while compensating.
    let mut saga = Saga::at_step(order(), 1);
    let declined = refused(1, 1, CHARGE, "card declined");
    saga.apply(&declined);
    assert_fenced!(saga, declined.clone(), Stale);

    // A transient failure starts a back-off, then a new attempt: both supersede the failed attempt.
    let mut saga = Saga::at_step(order(), 0);
    let failed = transient(0, 1, RESERVE, "db down");
    saga.apply(&failed);
    assert_eq!(saga.phase(), backoff(0, 2));
    assert_fenced!(saga, failed.clone(), Stale);
    saga.fire();
    assert_eq!(saga.phase(), running(0, 2));
    assert_fenced!(saga, failed, Stale);
}

#[test]
fn a_late_reply_to_a_superseded_attempt_is_stale() {
    let mut saga = Saga::at_step(order(), 1);
    saga.fire();
    saga.fire();
    assert_eq!(saga.phase(), running(1, 2));
    assert_fenced!(saga, ok(1, 1, CHARGE), Stale);
    assert_fenced!(saga, refused(1, 1, CHARGE, "declined"), Stale);
    assert_fenced!(saga, transient(1, 1, CHARGE, "busy"), Stale);
    assert_eq!(saga.apply(&ok(1, 2, CHARGE)), [send(2, 1, CREATE)], "the current attempt still applies");
}

#[test]
fn replies_to_commands_not_sent_yet_are_out_of_order() {
    let mut saga = Saga::at_step(order(), 0);
    assert_fenced!(saga, ok(0, 2, RESERVE), OutOfOrder);
    assert_fenced!(saga, ok(1, 1, CHARGE), OutOfOrder);
    assert_fenced!(saga, ok(2, 1, CREATE), OutOfOrder);
    assert_fenced!(saga, ok(7, 1, CREATE), OutOfOrder);
    assert_fenced!(saga, ok(0, 1, CHARGE), OutOfOrder);
}

#[test]
fn compensation_replies_while_running_are_out_of_order() {
    let mut saga = Saga::at_step(order(), 1);
    assert_fenced!(saga, ok(0, 1, RELEASE), OutOfOrder);
    assert_fenced!(saga, ok(1, 1, REFUND), OutOfOrder);
    assert_fenced!(saga, transient(2, 1, CANCEL, "x"), OutOfOrder);
}

#[test]
fn forward_replies_while_compensating_are_stale() {
    let mut saga = Saga::at_step(order(), 2);
    saga.apply(&refused(2, 1, CREATE, "country not served"));
    assert_eq!(saga.phase(), compensating(1, 1));
    assert_fenced!(saga, refused(2, 1, CREATE, "country not served"), Stale);
    assert_fenced!(saga, ok(2, 1, CREATE), Stale);
    assert_fenced!(saga, ok(1, 1, CHARGE), Stale);
    assert_fenced!(saga, ok(0, 1, RESERVE), Stale);
}

#[test]
fn compensation_replies_are_fenced_by_step_attempt_and_command() {
    let mut saga = Saga::at_step(order(), 2);
    saga.apply(&refused(2, 1, CREATE, "country not served"));
    assert_eq!(saga.phase(), compensating(1, 1));
    assert_fenced!(saga, ok(0, 1, RELEASE), OutOfOrder);
    assert_fenced!(saga, ok(1, 2, REFUND), OutOfOrder);
    assert_fenced!(saga, ok(1, 1, RELEASE), OutOfOrder);

    assert_eq!(saga.apply(&ok(1, 1, REFUND)), [send(0, 1, RELEASE)]);
    assert_fenced!(saga, ok(1, 1, REFUND), Duplicate);
    assert_fenced!(saga, transient(1, 1, REFUND, "late"), Duplicate);
    // The fence keeps no history: compensations of higher steps count as done, even one never sent.
    assert_fenced!(saga, ok(2, 1, CANCEL), Duplicate);
    assert_fenced!(saga, ok(0, 2, RELEASE), OutOfOrder);
}

#[test]
fn replies_during_back_off_are_fenced() {
    let mut saga = Saga::at_step(order(), 1);
    saga.apply(&transient(1, 1, CHARGE, "busy"));
    assert_eq!(saga.phase(), backoff(1, 2));
    assert_fenced!(saga, transient(1, 1, CHARGE, "busy"), Stale);
    assert_fenced!(saga, ok(1, 1, CHARGE), Stale);
    assert_fenced!(saga, ok(1, 2, CHARGE), OutOfOrder);
    assert_fenced!(saga, ok(1, 3, CHARGE), OutOfOrder);
    assert_fenced!(saga, ok(2, 1, CREATE), OutOfOrder);
    assert_fenced!(saga, ok(0, 1, RESERVE), Duplicate);
    assert_fenced!(saga, ok(0, 1, RELEASE), OutOfOrder);
    assert_fenced!(saga, ok(1, 2, REFUND), OutOfOrder);
}

#[test]
fn replies_during_compensation_back_off_are_fenced() {
    let mut saga = Saga::at_step(order(), 2);
    saga.apply(&refused(2, 1, CREATE, "country not served"));
    saga.apply(&ok(1, 1, REFUND));
    saga.apply(&transient(0, 1, RELEASE, "db down"));
    assert_eq!(saga.phase(), compensation_backoff(0, 2));
    assert_fenced!(saga, transient(0, 1, RELEASE, "db down"), Stale);
    assert_fenced!(saga, ok(0, 1, RELEASE), Stale);
    assert_fenced!(saga, ok(0, 2, RELEASE), OutOfOrder);
    assert_fenced!(saga, ok(1, 1, REFUND), Duplicate);
    assert_fenced!(saga, ok(0, 1, RESERVE), Stale);
    assert_fenced!(saga, ok(2, 1, CREATE), Stale);
}

#[test]
fn timers_that_no_longer_apply_are_stale() {
    let mut saga = Saga::at_step(order(), 0);
    assert_fenced!(saga, timer(0, 1, RETRY_DUE), Stale);
    assert_fenced!(saga, timer(0, 2, STEP_TIMEOUT), Stale);
    assert_fenced!(saga, timer(1, 1, STEP_TIMEOUT), Stale);

    saga.fire();
    assert_eq!(saga.phase(), backoff(0, 2));
    assert_fenced!(saga, timer(0, 1, STEP_TIMEOUT), Stale);
    assert_fenced!(saga, timer(0, 2, STEP_TIMEOUT), Stale);
    assert_fenced!(saga, timer(0, 3, RETRY_DUE), Stale);
    assert_fenced!(saga, timer(1, 2, RETRY_DUE), Stale);

    saga.fire();
    assert_eq!(saga.phase(), running(0, 2));
    assert_fenced!(saga, timer(0, 2, RETRY_DUE), Stale);
    assert_fenced!(saga, timer(0, 1, STEP_TIMEOUT), Stale);

    saga.apply(&ok(0, 2, RESERVE));
    assert_eq!(saga.phase(), running(1, 1));
    assert_fenced!(saga, timer(0, 2, STEP_TIMEOUT), Stale);
}

#[test]
fn compensation_timers_that_no_longer_apply_are_stale() {
    let mut saga = Saga::at_step(order(), 2);
    saga.apply(&refused(2, 1, CREATE, "country not served"));
    assert_eq!(saga.phase(), compensating(1, 1));
    assert_fenced!(saga, timer(2, 1, STEP_TIMEOUT), Stale);
    assert_fenced!(saga, timer(1, 1, RETRY_DUE), Stale);
    assert_fenced!(saga, timer(1, 2, STEP_TIMEOUT), Stale);

    saga.fire();
    assert_eq!(saga.phase(), compensation_backoff(1, 2));
    assert_fenced!(saga, timer(1, 1, STEP_TIMEOUT), Stale);
    assert_fenced!(saga, timer(1, 2, STEP_TIMEOUT), Stale);
    assert_fenced!(saga, timer(0, 2, RETRY_DUE), Stale);

    saga.fire();
    assert_eq!(saga.phase(), compensating(1, 2));
    assert_fenced!(saga, timer(1, 2, RETRY_DUE), Stale);
}

#[test]
fn every_event_after_the_end_is_terminal() {
    let mut completed = Saga::at_step(order(), 2);
    completed.apply(&ok(2, 1, CREATE));
    let mut compensated = releasing();
    compensated.apply(&ok(0, 1, RELEASE));
    let mut failed = Saga::at_step(pay_then_ship(), 2);
    failed.apply(&refused(2, 1, CREATE, "country not served"));

    for (mut saga, phase) in [(completed, Phase::Completed), (compensated, Phase::Compensated), (failed, Phase::Failed)]
    {
        assert_eq!(saga.phase(), phase);
        let events = [
            SagaEvent::Start,
            ok(0, 1, RESERVE),
            ok(2, 1, CREATE),
            refused(2, 1, CREATE, "late"),
            ok(0, 1, RELEASE),
            ok(2, 2, CANCEL),
            timer(2, 1, STEP_TIMEOUT),
            timer(0, 1, STEP_TIMEOUT),
            timer(0, 2, RETRY_DUE),
        ];
        for event in events {
            assert_fenced!(saga, event, Terminal);
        }
    }
}

#[test]
fn fences_describe_themselves_for_the_timeline() {
    let mut saga = Saga::at_step(order(), 1);
    let duplicate = saga.fenced(&ok(0, 1, RESERVE)).describe();
    assert!(duplicate.starts_with("duplicate: "), "{duplicate}");
    assert!(duplicate.contains("step 0 attempt 1"), "{duplicate}");
    let out_of_order = saga.fenced(&ok(2, 1, CREATE)).describe();
    assert!(out_of_order.starts_with("out of order: "), "{out_of_order}");
    let stale = saga.fenced(&timer(0, 1, STEP_TIMEOUT)).describe();
    assert!(stale.starts_with("stale: "), "{stale}");
    saga.apply(&refused(1, 1, CHARGE, "declined"));
    saga.apply(&ok(0, 1, RELEASE));
    let terminal = saga.fenced(&SagaEvent::Start).describe();
    assert!(terminal.starts_with("saga finished: "), "{terminal}");
}

// ---------------------------------------------------------------------------------------------------------
// Restoring stored states

#[test]
fn restoring_a_running_saga_does_not_resend_its_command() {
    let def = order();
    let deadline = Deadline { at: plus(t0(), Duration::from_secs(7)), kind: STEP_TIMEOUT, step: 1, attempt: 2 };
    let stored = SagaState { phase: running(1, 2), deadline: Some(deadline), reason: None, ..SagaState::new() };
    let later = plus(t0(), Duration::from_secs(3));

    for event in [ok(1, 1, CHARGE), ok(0, 1, RESERVE), timer(1, 1, STEP_TIMEOUT), SagaEvent::Start] {
        let (state, actions) = apply(&stored, &event, &def, later);
        assert_eq!(state, stored, "{event:?} must keep the stored state and its deadline");
        assert!(matches!(actions.as_slice(), [Action::Ignore(_)]), "{event:?} gave {actions:?}");
    }

    // An event that applies sends what the new state enters, and nothing of the restored state.
    let (state, actions) = apply(&stored, &ok(1, 2, CHARGE), &def, later);
    assert_eq!(actions, [send(2, 1, CREATE)]);
    assert_eq!(state.deadline, Some(Deadline { at: plus(later, TIMEOUT), kind: STEP_TIMEOUT, step: 2, attempt: 1 }));
}

#[test]
fn restoring_any_stored_state_with_an_ignored_event_changes_nothing() {
    let def = order();
    let at = plus(t0(), Duration::from_secs(5));
    let deadline = |kind, step, attempt| Some(Deadline { at, kind, step, attempt });
    let reason = Some("step charge_payment failed: card declined".to_owned());
    let stored = [
        SagaState::new(),
        SagaState { phase: running(2, 3), deadline: deadline(STEP_TIMEOUT, 2, 3), reason: None, ..SagaState::new() },
        SagaState { phase: backoff(1, 2), deadline: deadline(RETRY_DUE, 1, 2), reason: None, ..SagaState::new() },
        SagaState {
            phase: compensating(0, 4),
            deadline: deadline(STEP_TIMEOUT, 0, 4),
            reason: reason.clone(),
            ..SagaState::new()
        },
        SagaState {
            phase: compensation_backoff(1, 5),
            deadline: deadline(RETRY_DUE, 1, 5),
            reason: reason.clone(),
            ..SagaState::new()
        },
        SagaState { phase: Phase::Completed, deadline: None, reason: None, ..SagaState::new() },
        SagaState { phase: Phase::Compensated, deadline: None, reason: reason.clone(), ..SagaState::new() },
        SagaState { phase: Phase::Failed, deadline: None, reason, ..SagaState::new() },
    ];
    let stray = timer(9, 9, RETRY_DUE);
    for state in stored {
        for now in [t0(), at, plus(at, Duration::from_secs(3600))] {
            let (after, actions) = apply(&state, &stray, &def, now);
            assert_eq!(after, state, "{:?} at {now}", state.phase);
            assert!(matches!(actions.as_slice(), [Action::Ignore(_)]), "{:?}: {actions:?}", state.phase);
        }
    }
}

#[test]
fn a_stored_step_beyond_the_definition_parks_the_saga_without_panicking() {
    let def = order();
    let phases = [running(3, 1), backoff(3, 2), compensating(3, 1), compensation_backoff(u16::MAX, 2)];
    for phase in phases {
        let (step, attempt) = phase.step_attempt().expect("a step");
        let stored = SagaState {
            phase,
            deadline: Some(Deadline { at: t0(), kind: STEP_TIMEOUT, step, attempt }),
            reason: Some("earlier".to_owned()),
            ..SagaState::new()
        };
        for event in [SagaEvent::Start, ok(step, attempt, CREATE), timer(step, attempt, STEP_TIMEOUT)] {
            let (state, actions) = apply(&stored, &event, &def, t0());
            assert_eq!(actions, [], "{phase:?} {event:?}");
            assert_eq!(state.phase, Phase::Failed, "{phase:?} {event:?}");
            assert_eq!(state.deadline, None);
            let reason = state.reason.expect("a reason");
            assert!(reason.contains(&format!("order_fulfilment v1 has no step {step}")), "{reason}");
        }
    }
}

#[test]
fn a_stored_compensation_of_a_step_without_one_parks_the_saga_without_panicking() {
    // The shipment of pay_then_ship has no compensation, so no valid run compensates it; a state stored under
    // another definition (or version) may still claim so.
    let def = pay_then_ship();
    for phase in [compensating(2, 1), compensation_backoff(2, 2)] {
        let (step, attempt) = phase.step_attempt().expect("a step");
        let stored = SagaState {
            phase,
            deadline: Some(Deadline { at: t0(), kind: STEP_TIMEOUT, step, attempt }),
            reason: Some("earlier".to_owned()),
            ..SagaState::new()
        };
        for event in [ok(2, attempt, CANCEL), timer(2, attempt, STEP_TIMEOUT), timer(2, attempt, RETRY_DUE)] {
            let (state, actions) = apply(&stored, &event, &def, t0());
            assert_eq!(actions, [], "{phase:?} {event:?}");
            assert_eq!(state.phase, Phase::Failed, "{phase:?} {event:?}");
            assert_eq!(state.deadline, None);
            let reason = state.reason.expect("a reason");
            assert!(reason.contains("create_shipment") && reason.contains("no compensation"), "{reason}");
        }
    }
}

// ---------------------------------------------------------------------------------------------------------
// Determinism

#[test]
fn the_same_inputs_give_the_same_outputs() {
    let def = order();
    let at = plus(t0(), Duration::from_secs(1));
    let running_state = SagaState {
        phase: running(1, 2),
        deadline: Some(Deadline { at, kind: STEP_TIMEOUT, step: 1, attempt: 2 }),
        reason: None,
        ..SagaState::new()
    };
    let cases = [
        (SagaState::new(), SagaEvent::Start),
        (running_state.clone(), ok(1, 2, CHARGE)),
        (running_state.clone(), transient(1, 2, CHARGE, "busy")),
        (running_state.clone(), refused(1, 2, CHARGE, "declined")),
        (running_state.clone(), timer(1, 2, STEP_TIMEOUT)),
        (running_state, ok(1, 1, CHARGE)),
    ];
    for (state, event) in cases {
        let first = apply(&state, &event, &def, at);
        for _ in 0..3 {
            assert_eq!(apply(&state, &event, &def, at), first, "{event:?}");
        }
    }
    for seed in 0..50 {
        for operator_rate in [0, OPERATOR_RATE] {
            let (first, second) = (simulate(&def, seed, operator_rate), simulate(&def, seed, operator_rate));
            assert_eq!(first.trace, second.trace, "seed {seed}, operator rate {operator_rate}");
        }
    }
}

// ---------------------------------------------------------------------------------------------------------
// The seeded simulator

/// xorshift64*: tiny, deterministic, good enough to shuffle events; a failing seed replays exactly.
#[derive(Debug)]
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        usize::try_from(self.next() % u64::try_from(n).expect("n fits")).expect("below n")
    }

    fn percent(&mut self, p: u64) -> bool {
        self.next() % 100 < p
    }

    fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len())]
    }
}

/// What one simulated saga went through.
#[derive(Debug)]
struct Run {
    outcome: Phase,
    trace: Vec<(SagaState, Vec<Action>)>,
    fences: [usize; 5],
    phases_seen: [bool; 9],
    /// Operator actions applied, by action (see [`action_index`]) and the phase they were applied in.
    operator_applied: [[usize; 9]; 3],
    /// Operator actions refused as not allowed, likewise.
    operator_refused: [[usize; 9]; 3],
}

/// How often, in percent, the operator-playing driver injects an operator's action instead of a saga event.
const OPERATOR_RATE: u64 = 4;

/// One saga under random delivery: every command's reply may be lost, delayed behind others, delivered twice;
/// stray replies and timers arrive; timers fire when due; operators may act, in any phase. The invariants
/// are checked after every `apply`.
#[derive(Debug)]
struct Sim<'a> {
    def: &'a Definition,
    seed: u64,
    rng: Rng,
    state: SagaState,
    now: DateTime<Utc>,
    /// How likely a participant fails, in percent.
    failure_rate: u64,
    /// How likely an event is an operator's action, in percent (0: operators never act, and a parked saga
    /// stays FAILED).
    operator_rate: u64,
    in_flight: Vec<SagaEvent>,
    delivered: Vec<SagaEvent>,
    highest_forward_sent: Option<u16>,
    last_compensation_sent: Option<u16>,
    succeeded: Vec<bool>,
    refused: Vec<bool>,
    unknown: Vec<bool>,
    compensated: Vec<bool>,
    /// Every command sent, as (step, attempt, command): none is sent twice.
    sent: HashSet<(u16, u32, CommandKind)>,
    /// Whether an operator forced compensation (which may undo a pivot that succeeded).
    forced: bool,
    /// Whether an operator's retry was applied (only that raises the attempt floor).
    operator_retried: bool,
    run: Run,
}

fn simulate(def: &Definition, seed: u64, operator_rate: u64) -> Run {
    let mut rng = Rng::new(seed);
    let failure_rate = rng.pick(&[0, 10, 30, 60, 90]);
    let steps = def.steps.len();
    let mut sim = Sim {
        def,
        seed,
        rng,
        state: SagaState::new(),
        now: t0(),
        failure_rate,
        operator_rate,
        in_flight: Vec::new(),
        delivered: Vec::new(),
        highest_forward_sent: None,
        last_compensation_sent: None,
        succeeded: vec![false; steps],
        refused: vec![false; steps],
        unknown: vec![false; steps],
        compensated: vec![false; steps],
        sent: HashSet::new(),
        forced: false,
        operator_retried: false,
        run: Run {
            outcome: Phase::Started,
            trace: Vec::new(),
            fences: [0; 5],
            phases_seen: [false; 9],
            operator_applied: [[0; 9]; 3],
            operator_refused: [[0; 9]; 3],
        },
    };
    while sim.rng.percent(20) {
        let event = if sim.operators_act(25) { sim.operator_event() } else { sim.stray_event() };
        sim.deliver(event);
    }
    sim.deliver(SagaEvent::Start);
    let mut events = 0;
    while !sim.finished() {
        events += 1;
        assert!(events < 5_000, "seed {seed}: the saga did not finish: {:?}", sim.state);
        let event = sim.next_event();
        sim.deliver(event);
    }
    // Nothing changes a finished saga: replies, timers and operators alike.
    for _ in 0..5 {
        let event = if sim.operators_act(30) { sim.operator_event() } else { sim.next_event() };
        sim.deliver(event);
    }
    sim.run.outcome = sim.state.phase;
    sim.run
}

impl Sim<'_> {
    /// Whether the saga is done: terminal, and, where operators act, not parked (they act on it eventually).
    fn finished(&self) -> bool {
        let phase = self.state.phase;
        phase.is_terminal() && (self.operator_rate == 0 || phase != Phase::Failed)
    }

    /// Whether operators play and the next event is theirs, with `percent` chance (no draw when they don't
    /// play, so that the driver without operators replays exactly as before).
    fn operators_act(&mut self, percent: u64) -> bool {
        self.operator_rate > 0 && self.rng.percent(percent)
    }

    fn operator_event(&mut self) -> SagaEvent {
        let action = match self.rng.below(10) {
            0..4 => OperatorAction::Retry,
            4..7 => OperatorAction::Compensate,
            _ => OperatorAction::Resolve { outcome: self.rng.pick(&[Resolution::Completed, Resolution::Cancelled]) },
        };
        SagaEvent::Operator { action, reason: format!("seed {} says so (by sim)", self.seed) }
    }

    fn next_event(&mut self) -> SagaEvent {
        self.now = plus(self.now, Duration::from_millis(self.rng.next() % 3_000));
        if self.operators_act(self.operator_rate) {
            return self.operator_event();
        }
        match self.rng.below(100) {
            0..55 if !self.in_flight.is_empty() => {
                let i = self.rng.below(self.in_flight.len());
                if self.rng.percent(15) { self.in_flight[i].clone() } else { self.in_flight.swap_remove(i) }
            }
            55..63 if !self.delivered.is_empty() => self.delivered[self.rng.below(self.delivered.len())].clone(),
            63..73 => self.stray_event(),
            73..75 => SagaEvent::Start,
            _ => self.due_timer().unwrap_or_else(|| self.stray_event()),
        }
    }

    /// The timer of the pending deadline, with the clock moved to it.
    fn due_timer(&mut self) -> Option<SagaEvent> {
        let deadline = self.state.deadline?;
        self.now = self.now.max(deadline.at);
        Some(due(&deadline))
    }

    fn stray_event(&mut self) -> SagaEvent {
        let step = u16::try_from(self.rng.below(self.def.steps.len() + 1)).expect("few steps");
        let attempt = u32::try_from(self.rng.below(4) + 1).expect("few attempts");
        if self.rng.percent(70) {
            let command = self.rng.pick(&CommandKind::ALL);
            let outcome = self.outcome();
            reply(step, attempt, command, outcome)
        } else {
            timer(step, attempt, self.rng.pick(&[STEP_TIMEOUT, RETRY_DUE]))
        }
    }

    fn outcome(&mut self) -> Reply {
        if !self.rng.percent(self.failure_rate) {
            Reply::ok()
        } else if self.rng.percent(70) {
            Reply::transient("participant unavailable")
        } else {
            Reply::business("refused")
        }
    }

    fn deliver(&mut self, event: SagaEvent) {
        let before = self.state.clone();
        let (after, actions) = apply(&before, &event, self.def, self.now);
        self.check(&before, &event, &after, &actions);
        for action in &actions {
            if let Action::Send { step, attempt, command } = *action
                && self.rng.percent(85)
            {
                let outcome = self.outcome();
                self.in_flight.push(reply(step, attempt, command, outcome));
            }
        }
        self.run.phases_seen[phase_index(after.phase)] = true;
        self.run.trace.push((after.clone(), actions));
        self.delivered.push(event);
        self.state = after;
    }

    fn check(&mut self, before: &SagaState, event: &SagaEvent, after: &SagaState, actions: &[Action]) {
        let seed = self.seed;
        let what = || format!("seed {seed}: {event:?} on {before:?} gave {after:?} and {actions:?}");
        check_shape(self.def, after, &what);
        let fence = match actions {
            [Action::Ignore(fence)] => Some(fence),
            _ => None,
        };
        let operator = match event {
            SagaEvent::Operator { action, .. } => Some(*action),
            _ => None,
        };
        if let Some(action) = operator {
            let counts = if fence.is_some() { &mut self.run.operator_refused } else { &mut self.run.operator_applied };
            counts[action_index(action)][phase_index(before.phase)] += 1;
            assert_eq!(fence.is_none(), operator_allowed(action, before), "{}", what());
        }
        if let Some(fence) = fence {
            self.run.fences[fence_index(fence)] += 1;
            assert_eq!(after, before, "a fenced event changed the saga: {}", what());
            match fence {
                // An operator's action is refused only as not allowed, and only it is.
                Fenced::NotAllowed(_) => assert!(operator.is_some(), "{}", what()),
                _ => assert!(operator.is_none(), "an operator's action fenced as {fence:?}: {}", what()),
            }
            if before.phase.is_terminal() && operator.is_none() {
                assert!(matches!(fence, Fenced::Terminal(_)), "{}", what());
            }
            return;
        }
        assert!(!actions.iter().any(|a| matches!(a, Action::Ignore(_))), "{}", what());
        let resumed = before.phase == Phase::Failed && operator.is_some();
        assert!(!before.phase.is_terminal() || resumed, "a finished saga changed: {}", what());
        assert_ne!(after.phase, before.phase, "an applied event moves the saga: {}", what());
        self.record_accepted(before, event, after, &what);
        self.check_entry(after, actions, &what);
        self.check_outcome(after, &what);
        if !self.operator_retried {
            assert_eq!(after.attempt_floor, 0, "an attempt floor without an operator's retry: {}", what());
        }
    }

    /// An applied event must be exactly what the saga waited for; remember what it means.
    fn record_accepted(&mut self, before: &SagaState, event: &SagaEvent, after: &SagaState, what: &dyn Fn() -> String) {
        let gave_up = |after: &SagaState| !matches!(after.phase, Phase::Running { .. } | Phase::Backoff { .. });
        match (event, before.phase) {
            (SagaEvent::Start, Phase::Started) => {}
            (SagaEvent::Reply { step, attempt, command, reply }, Phase::Running { step: s, attempt: a }) => {
                let def = &self.def.steps[usize::from(s)];
                assert_eq!((*step, *attempt, *command), (s, a, def.command), "{}", what());
                let i = usize::from(s);
                match reply {
                    Reply::Succeeded { .. } => self.succeeded[i] = true,
                    Reply::Failed { kind: FailureKind::Business, .. } => self.refused[i] = true,
                    Reply::Failed { kind: FailureKind::Transient, .. } => {
                        self.unknown[i] |= gave_up(after);
                        let used = a - before.attempt_floor;
                        assert_eq!(gave_up(after), used == def.retry.max_attempts, "{}", what());
                    }
                }
            }
            (SagaEvent::Reply { step, attempt, command, reply }, Phase::Compensating { step: s, attempt: a }) => {
                let compensation = self.def.steps[usize::from(s)].compensation;
                assert_eq!((*step, *attempt, Some(*command)), (s, a, compensation), "{}", what());
                if matches!(reply, Reply::Succeeded { .. }) {
                    self.compensated[usize::from(s)] = true;
                }
            }
            (SagaEvent::Timer { step, attempt, kind, due_at }, _) => {
                let deadline = before.deadline.expect("an applied timer had a deadline");
                let timer = (*step, *attempt, *kind, *due_at);
                assert_eq!(timer, (deadline.step, deadline.attempt, deadline.kind, deadline.at), "{}", what());
                if let Phase::Running { step: s, attempt: a } = before.phase {
                    let max = self.def.steps[usize::from(s)].retry.max_attempts;
                    self.unknown[usize::from(s)] |= gave_up(after);
                    assert_eq!(gave_up(after), a - before.attempt_floor == max, "{}", what());
                }
            }
            (SagaEvent::Operator { action, .. }, _) => self.record_operator(*action, before, after, what),
            _ => panic!("an event applied in the wrong phase: {}", what()),
        }
    }

    /// An applied operator's action must do exactly what the operator semantics say.
    fn record_operator(
        &mut self,
        action: OperatorAction,
        before: &SagaState,
        after: &SagaState,
        what: &dyn Fn() -> String,
    ) {
        use OperatorAction::{Compensate, Resolve, Retry};
        let running = |step, attempt| Phase::Running { step, attempt };
        let compensating = |step, attempt| Phase::Compensating { step, attempt };
        match (action, before.phase, before.parked_at) {
            (Retry, Phase::Started, _) => assert_eq!(after.phase, running(0, 1), "{}", what()),
            (Retry, Phase::Running { step, attempt }, _) => {
                self.retried(after, running(step, attempt + 1), attempt, what)
            }
            (Retry, Phase::Backoff { step, attempt }, _) => {
                self.retried(after, running(step, attempt), attempt - 1, what)
            }
            (Retry, Phase::Compensating { step, attempt }, _) => {
                assert_eq!(after.reason, before.reason, "{}", what());
                self.retried(after, compensating(step, attempt + 1), attempt, what);
            }
            (Retry, Phase::CompensationBackoff { step, attempt }, _) => {
                assert_eq!(after.reason, before.reason, "{}", what());
                self.retried(after, compensating(step, attempt), attempt - 1, what);
            }
            (Retry, Phase::Failed, Some(Phase::Running { step, attempt })) => {
                self.retried(after, running(step, attempt + 1), attempt, what);
            }
            (Retry | Compensate, Phase::Failed, Some(Phase::Compensating { step, attempt })) => {
                assert_eq!(after.reason, before.reason, "{}", what());
                self.retried(after, compensating(step, attempt + 1), attempt, what);
            }
            (Compensate, Phase::Started, _) => assert_eq!(after.phase, Phase::Compensated, "{}", what()),
            (Compensate, Phase::Running { step, .. } | Phase::Backoff { step, .. }, _)
            | (Compensate, Phase::Failed, Some(Phase::Running { step, .. })) => {
                self.force_compensation(step, after, what)
            }
            (Resolve { outcome }, Phase::Failed, _) => {
                assert_eq!((after.phase, after.resolution), (Phase::Resolved, Some(outcome)), "{}", what());
                let status = match outcome {
                    Resolution::Completed => OrderStatus::Completed,
                    Resolution::Cancelled => OrderStatus::Cancelled,
                };
                assert_eq!(after.status(), status, "{}", what());
            }
            _ => panic!("an operator's action applied where it is not allowed: {}", what()),
        }
    }

    /// An operator's retry: `phase` now, attempts up to `floor` no longer counting.
    fn retried(&mut self, after: &SagaState, phase: Phase, floor: u32, what: &dyn Fn() -> String) {
        assert_eq!((after.phase, after.attempt_floor), (phase, floor), "{}", what());
        self.operator_retried = true;
    }

    /// An operator forced compensation while `step` was out (or parked): its outcome is unknown, so it is
    /// compensated too, newest first.
    fn force_compensation(&mut self, step: u16, after: &SagaState, what: &dyn Fn() -> String) {
        self.unknown[usize::from(step)] = true;
        self.forced = true;
        let first = (0..=step).rev().find(|&i| self.def.steps[usize::from(i)].compensation.is_some());
        let expected = first.map_or(Phase::Compensated, |c| Phase::Compensating { step: c, attempt: 1 });
        assert_eq!(after.phase, expected, "{}", what());
        let reason = after.reason.as_deref().unwrap_or_default();
        assert!(reason.starts_with("compensation forced by an operator: "), "{}", what());
    }

    /// What the new phase sends and schedules on entry.
    fn check_entry(&mut self, after: &SagaState, actions: &[Action], what: &dyn Fn() -> String) {
        let sends: Vec<(u16, u32, CommandKind)> = actions
            .iter()
            .map(|a| match *a {
                Action::Send { step, attempt, command } => (step, attempt, command),
                Action::Ignore(_) => unreachable!("checked before"),
            })
            .collect();
        for &send in &sends {
            assert!(self.sent.insert(send), "{send:?} sent twice: {}", what());
        }
        let now = self.now;
        let deadline = |kind, step, attempt, wait| Some(Deadline { at: plus(now, wait), kind, step, attempt });
        match after.phase {
            Phase::Running { step, attempt } => {
                let def = &self.def.steps[usize::from(step)];
                assert_eq!(sends, [(step, attempt, def.command)], "{}", what());
                assert_eq!(after.deadline, deadline(STEP_TIMEOUT, step, attempt, def.timeout), "{}", what());
                assert!(self.last_compensation_sent.is_none(), "a forward step after compensation: {}", what());
                let earlier = &self.succeeded[..usize::from(step)];
                assert!(earlier.iter().all(|&ok| ok), "a step before its predecessors succeeded: {}", what());
                self.highest_forward_sent = self.highest_forward_sent.max(Some(step));
            }
            Phase::Compensating { step, attempt } => {
                let def = &self.def.steps[usize::from(step)];
                let compensation = def.compensation.expect("only steps with a compensation are compensated");
                assert_eq!(sends, [(step, attempt, compensation)], "{}", what());
                assert_eq!(after.deadline, deadline(STEP_TIMEOUT, step, attempt, def.timeout), "{}", what());
                let i = usize::from(step);
                assert!(Some(step) <= self.highest_forward_sent, "compensating a step never sent: {}", what());
                assert!(self.last_compensation_sent.is_none_or(|last| step <= last), "not newest first: {}", what());
                assert!(!self.compensated[i], "compensated twice: {}", what());
                assert!(!self.refused[i], "compensating a step that made no change: {}", what());
                assert!(self.succeeded[i] || self.unknown[i], "compensating a step that did nothing: {}", what());
                if def.kind == StepKind::Pivot && !self.forced {
                    assert!(self.unknown[i] && !self.succeeded[i], "pivot compensated though known: {}", what());
                }
                self.last_compensation_sent = Some(step);
            }
            Phase::Backoff { step, attempt } => {
                assert_eq!(sends, [], "{}", what());
                let wait = self.def.steps[usize::from(step)].retry.backoff_before(attempt - after.attempt_floor);
                assert!(!wait.is_zero(), "a back-off without a wait: {}", what());
                assert_eq!(after.deadline, deadline(RETRY_DUE, step, attempt, wait), "{}", what());
            }
            Phase::CompensationBackoff { step, attempt } => {
                assert_eq!(sends, [], "{}", what());
                let wait = self.def.compensation_retry.backoff_before(attempt - after.attempt_floor);
                assert!(!wait.is_zero(), "a back-off without a wait: {}", what());
                assert_eq!(after.deadline, deadline(RETRY_DUE, step, attempt, wait), "{}", what());
            }
            Phase::Completed | Phase::Compensated | Phase::Failed | Phase::Resolved => {
                assert_eq!(sends, [], "{}", what());
            }
            Phase::Started => panic!("an applied event left the saga unstarted: {}", what()),
        }
    }

    fn check_outcome(&self, after: &SagaState, what: &dyn Fn() -> String) {
        match after.phase {
            Phase::Completed => assert!(self.succeeded.iter().all(|&ok| ok), "completed early: {}", what()),
            Phase::Compensated => {
                for (i, step) in self.def.steps.iter().enumerate() {
                    let needed = (self.succeeded[i] || self.unknown[i]) && step.compensation.is_some();
                    assert!(!needed || self.compensated[i], "step {i} left uncompensated: {}", what());
                    let undone_pivot = step.kind == StepKind::Pivot && self.succeeded[i];
                    assert!(!undone_pivot || self.forced, "compensated after the pivot: {}", what());
                }
            }
            _ => {}
        }
    }
}

/// Structural invariants of any state the machine returns.
fn check_shape(def: &Definition, state: &SagaState, what: &dyn Fn() -> String) {
    if let Some((step, attempt)) = state.phase.step_attempt() {
        assert!(usize::from(step) < def.steps.len(), "step out of range: {}", what());
        let max = match state.phase {
            Phase::Running { .. } | Phase::Backoff { .. } => def.steps[usize::from(step)].retry.max_attempts,
            _ => def.compensation_retry.max_attempts,
        };
        // Attempts up to the floor (raised only by an operator's retry) do not count against the policy.
        let floor = state.attempt_floor;
        assert!(attempt > floor && attempt - floor <= max, "attempt beyond the policy: {}", what());
        let kind = match state.phase {
            Phase::Running { .. } | Phase::Compensating { .. } => STEP_TIMEOUT,
            _ => RETRY_DUE,
        };
        let deadline = state.deadline.expect("a saga in flight has a deadline");
        assert_eq!((deadline.kind, deadline.step, deadline.attempt), (kind, step, attempt), "{}", what());
    } else {
        assert_eq!(state.deadline, None, "a saga not in flight has no deadline: {}", what());
    }
    let has_reason = state.reason.is_some();
    match state.phase {
        Phase::Started | Phase::Running { .. } | Phase::Backoff { .. } | Phase::Completed => {
            assert!(!has_reason, "a reason without a failure: {}", what());
        }
        _ => assert!(has_reason, "compensating or parked without a reason: {}", what()),
    }
    // Every parked saga knows where an operator's retry resumes it (none is misfit here).
    assert_eq!(state.parked_at.is_some(), state.phase == Phase::Failed, "parked_at: {}", what());
    assert_eq!(state.resolution.is_some(), state.phase == Phase::Resolved, "resolution: {}", what());
}

/// Whether `action` applies to a saga in `state` (otherwise it is refused as not allowed).
fn operator_allowed(action: OperatorAction, state: &SagaState) -> bool {
    match (action, state.phase) {
        (_, Phase::Completed | Phase::Compensated | Phase::Resolved) => false,
        (OperatorAction::Resolve { .. }, phase) => phase == Phase::Failed,
        (_, Phase::Failed) => state.parked_at.is_some(),
        (OperatorAction::Compensate, Phase::Compensating { .. } | Phase::CompensationBackoff { .. }) => false,
        _ => true,
    }
}

fn action_index(action: OperatorAction) -> usize {
    match action {
        OperatorAction::Retry => 0,
        OperatorAction::Compensate => 1,
        OperatorAction::Resolve { .. } => 2,
    }
}

fn phase_index(phase: Phase) -> usize {
    match phase {
        Phase::Started => 0,
        Phase::Running { .. } => 1,
        Phase::Backoff { .. } => 2,
        Phase::Compensating { .. } => 3,
        Phase::CompensationBackoff { .. } => 4,
        Phase::Completed => 5,
        Phase::Compensated => 6,
        Phase::Failed => 7,
        Phase::Resolved => 8,
    }
}

fn fence_index(fence: &Fenced) -> usize {
    match fence {
        Fenced::Duplicate(_) => 0,
        Fenced::Stale(_) => 1,
        Fenced::OutOfOrder(_) => 2,
        Fenced::Terminal(_) => 3,
        Fenced::NotAllowed(_) => 4,
    }
}

/// What many simulated sagas reached, summed.
#[derive(Debug, Default)]
struct Totals {
    outcomes: [usize; 9],
    fences: [usize; 5],
    phases_seen: [bool; 9],
    operator_applied: [[usize; 9]; 3],
    operator_refused: [[usize; 9]; 3],
}

/// Simulates 2,500 sagas of each of four definitions (one without back-off, one that gives up quickly, two
/// with a step after the pivot), with operators acting at `operator_rate` percent.
fn simulate_many(operator_rate: u64) -> Totals {
    let mut fragile = order_with_step_retry(RetryPolicy { max_attempts: 2, ..NO_WAIT });
    fragile.compensation_retry = RetryPolicy {
        max_attempts: 3,
        initial_backoff: Duration::from_millis(100),
        multiplier: 1.5,
        max_backoff: Duration::from_secs(1),
    };
    let mut zero_compensation_wait = pay_then_ship();
    zero_compensation_wait.compensation_retry = RetryPolicy { max_attempts: 4, ..NO_WAIT };
    let definitions = [order(), fragile, pay_then_ship(), zero_compensation_wait];

    let mut totals = Totals::default();
    for (d, def) in definitions.iter().enumerate() {
        assert_eq!(def.validate(), Ok(()));
        for seed in 0..2_500 {
            let run = simulate(def, (seed << 2) | u64::try_from(d).expect("few definitions"), operator_rate);
            totals.outcomes[phase_index(run.outcome)] += 1;
            for (total, n) in totals.fences.iter_mut().zip(run.fences) {
                *total += n;
            }
            for (seen, now) in totals.phases_seen.iter_mut().zip(run.phases_seen) {
                *seen |= now;
            }
            for a in 0..3 {
                for p in 0..9 {
                    totals.operator_applied[a][p] += run.operator_applied[a][p];
                    totals.operator_refused[a][p] += run.operator_refused[a][p];
                }
            }
        }
    }
    totals
}

#[test]
fn thousands_of_random_sagas_keep_the_invariants() {
    let totals = simulate_many(0);
    let Totals { outcomes, fences, phases_seen, .. } = totals;
    // The test is only as good as what it reaches: every phase, every outcome and every kind of fence.
    // (RESOLVED and the NotAllowed fence come only from operators, which this driver does not play.)
    assert!(phases_seen[..8].iter().all(|&seen| seen), "phases seen: {phases_seen:?}");
    assert!(outcomes[5..8].iter().all(|&n| n > 100), "outcomes (completed, compensated, failed): {outcomes:?}");
    assert!(fences[..4].iter().all(|&n| n > 100), "fences (duplicate, stale, out of order, terminal): {fences:?}");
    assert_eq!((outcomes[8], fences[4]), (0, 0), "no operator, no resolution and nothing refused to one");
}

#[test]
fn thousands_of_random_sagas_with_operators_acting_in_every_phase_keep_the_invariants() {
    let Totals { outcomes, fences, phases_seen, operator_applied, operator_refused } = simulate_many(OPERATOR_RATE);
    assert!(phases_seen.iter().all(|&seen| seen), "phases seen: {phases_seen:?}");
    assert_eq!(outcomes[7], 0, "an operator acts on every parked saga eventually: {outcomes:?}");
    let [completed, compensated, resolved] = [outcomes[5], outcomes[6], outcomes[8]];
    assert!(completed > 100 && compensated > 100 && resolved > 100, "outcomes: {outcomes:?}");
    assert!(
        fences.iter().all(|&n| n > 100),
        "fences (duplicate, stale, out of order, terminal, not allowed): {fences:?}"
    );

    // Every action reached every phase, and was applied exactly where the operator semantics allow it:
    // (STARTED, RUNNING, BACKOFF, COMPENSATING, COMPENSATION_BACKOFF, COMPLETED, COMPENSATED, FAILED, RESOLVED).
    let allowed = [
        [true, true, true, true, true, false, false, true, false],
        [true, true, true, false, false, false, false, true, false],
        [false, false, false, false, false, false, false, true, false],
    ];
    for (a, action) in ["retry", "compensate", "resolve"].into_iter().enumerate() {
        for p in 0..9 {
            let (applied, refused) = (operator_applied[a][p], operator_refused[a][p]);
            assert!(applied + refused >= 20, "{action} in phase {p}: applied {applied}, refused {refused}");
            let allow = allowed[a][p];
            assert_eq!(
                (applied > 0, refused > 0),
                (allow, !allow),
                "{action} in phase {p}: {applied} applied, {refused} refused"
            );
        }
    }
}

#[test]
fn a_queued_timer_of_the_forward_step_does_not_time_out_its_compensation() {
    // reserve_stock has three attempts; exhaust them, so the saga compensates step 0 with attempt 1: the
    // same (step, attempt, kind) as the first forward attempt's timer, which may still be queued.
    let def = saga_defs::order_fulfilment(Duration::from_secs(10));
    let t0 = DateTime::<Utc>::UNIX_EPOCH + TimeDelta::days(20_000);
    let (mut state, _) = saga_defs::apply(&SagaState::new(), &SagaEvent::Start, &def, t0);
    let first = state.deadline.expect("attempt 1 deadline");
    let mut now = t0;
    while !matches!(state.phase, Phase::Compensating { .. }) {
        let deadline = state.deadline.expect("a deadline while running");
        now = deadline.at;
        state = saga_defs::apply(&state, &due(&deadline), &def, now).0;
    }
    assert_eq!(state.phase, Phase::Compensating { step: 0, attempt: 1 });
    let before = state.clone();
    let (after, actions) = saga_defs::apply(&state, &due(&first), &def, now);
    assert!(matches!(actions.as_slice(), [Action::Ignore(Fenced::Stale(_))]), "{actions:?}");
    assert_eq!(after, before, "the stale timer changed nothing");
}
