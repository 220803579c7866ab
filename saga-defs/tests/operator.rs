//! Operator actions through the saga core's public API: every action in every phase (the exact state and
//! sends it gives, or that it is refused and changes nothing), the fresh retry budget an operator's retry
//! gives, fencing of replies to attempts an operator superseded, resuming a parked saga where it was parked,
//! and resolving one by hand.

use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use proto_events::{CommandKind, DeadlineKind, OrderStatus, Reply};
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

const RETRY: OperatorAction = OperatorAction::Retry;
const COMPENSATE: OperatorAction = OperatorAction::Compensate;
const RESOLVE_COMPLETED: OperatorAction = OperatorAction::Resolve { outcome: Resolution::Completed };
const RESOLVE_CANCELLED: OperatorAction = OperatorAction::Resolve { outcome: Resolution::Cancelled };
const ACTIONS: [OperatorAction; 4] = [RETRY, COMPENSATE, RESOLVE_COMPLETED, RESOLVE_CANCELLED];

/// The operator's reason, as the orchestrator passes it on.
const WHY: &str = "carrier fixed (by ops)";

// ---------------------------------------------------------------------------------------------------------
// Helpers

fn t0() -> DateTime<Utc> {
    DateTime::from_timestamp(1_767_225_600, 0).expect("a valid instant")
}

fn plus(at: DateTime<Utc>, wait: Duration) -> DateTime<Utc> {
    at + TimeDelta::from_std(wait).expect("a representable wait")
}

fn ms(millis: u64) -> Duration {
    Duration::from_millis(millis)
}

/// Reserve (compensatable, released), charge (compensatable, refunded), create the shipment (the pivot,
/// cancelled only if its outcome is unknown). Every step: 3 attempts, back-off 200ms doubling up to 2s.
/// Compensations: 20 attempts, back-off 500ms doubling up to 30s.
fn order() -> Definition {
    order_fulfilment(TIMEOUT)
}

/// The order saga whose compensations give up after two attempts.
fn order_with_two_compensation_attempts() -> Definition {
    let mut def = order();
    def.compensation_retry.max_attempts = 2;
    def
}

/// Reserve (compensatable), charge (the pivot, refunded if its outcome is unknown), ship (retriable, no
/// compensation): a saga that parks going forward.
fn pay_then_ship() -> Definition {
    let mut def = order();
    def.name = "pay_then_ship";
    def.steps[1].kind = StepKind::Pivot;
    def.steps[2].kind = StepKind::Retriable;
    def.steps[2].compensation = None;
    def
}

fn operator(action: OperatorAction) -> SagaEvent {
    SagaEvent::Operator { action, reason: WHY.to_owned() }
}

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
    SagaEvent::Timer { step, attempt, kind, due_at: DateTime::UNIX_EPOCH }
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

fn deadline(kind: DeadlineKind, step: u16, attempt: u32, at: DateTime<Utc>) -> Option<Deadline> {
    Some(Deadline { at, kind, step, attempt })
}

/// The state of a saga that waits for the reply to `phase`'s command, sent at `sent_at`.
fn in_flight(phase: Phase, sent_at: DateTime<Utc>, attempt_floor: u32, reason: Option<&str>) -> SagaState {
    let (step, attempt) = phase.step_attempt().expect("a phase in flight");
    let kind = match phase {
        Phase::Running { .. } | Phase::Compensating { .. } => STEP_TIMEOUT,
        _ => RETRY_DUE,
    };
    let at = if kind == STEP_TIMEOUT { plus(sent_at, TIMEOUT) } else { sent_at };
    SagaState {
        phase,
        deadline: deadline(kind, step, attempt, at),
        reason: reason.map(str::to_owned),
        attempt_floor,
        ..SagaState::new()
    }
}

/// A saga driven through `apply` as the orchestrator would: only the stored state is kept between events.
#[derive(Debug)]
struct Saga {
    def: Definition,
    state: SagaState,
    now: DateTime<Utc>,
    /// Every command sent, in order.
    sent: Vec<Action>,
}

impl Saga {
    fn new(def: Definition) -> Self {
        assert_eq!(def.validate(), Ok(()), "test definitions must be valid");
        Self { def, state: SagaState::new(), now: t0(), sent: Vec::new() }
    }

    /// A saga of `def` that started and whose steps before `step` succeeded at their first attempt.
    fn at_step(def: Definition, step: u16) -> Self {
        let mut saga = Self::new(def);
        saga.apply(&SagaEvent::Start);
        for s in 0..step {
            let command = saga.def.steps[usize::from(s)].command;
            saga.wait(ms(100));
            saga.apply(&ok(s, 1, command));
        }
        assert_eq!(saga.phase(), running(step, 1));
        saga
    }

    fn phase(&self) -> Phase {
        self.state.phase
    }

    fn apply(&mut self, event: &SagaEvent) -> Vec<Action> {
        let (state, actions) = apply(&self.state, event, &self.def, self.now);
        self.state = state;
        self.sent.extend(actions.iter().filter(|a| matches!(a, Action::Send { .. })).cloned());
        actions
    }

    fn act(&mut self, action: OperatorAction) -> Vec<Action> {
        self.apply(&operator(action))
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

    /// The wait until the pending deadline, in milliseconds, which must be a retry for `step`, `attempt`.
    fn retry_wait(&self, step: u16, attempt: u32) -> i64 {
        let deadline = self.state.deadline.expect("a pending retry");
        assert_eq!((deadline.kind, deadline.step, deadline.attempt), (RETRY_DUE, step, attempt));
        (deadline.at - self.now).num_milliseconds()
    }

    /// The state of this saga waiting for `phase`'s command, sent just now.
    fn expect_in_flight(&self, phase: Phase, attempt_floor: u32, reason: Option<&str>) -> SagaState {
        in_flight(phase, self.now, attempt_floor, reason)
    }

    /// Applies an event that must be fenced: the state stays exactly as it was and nothing is sent.
    fn fenced(&mut self, event: &SagaEvent) -> Fenced {
        let before = self.state.clone();
        self.wait(ms(1));
        let actions = self.apply(event);
        assert_eq!(self.state, before, "the fenced {event:?} changed the saga");
        match actions.as_slice() {
            [Action::Ignore(fence)] => fence.clone(),
            other => panic!("{event:?} in {:?}: expected a single Ignore, got {other:?}", before.phase),
        }
    }

    /// Asserts that nothing changes this finished saga any more: saga events are terminal, operator actions
    /// are not allowed.
    fn assert_finished(&mut self) {
        let events = [
            SagaEvent::Start,
            ok(0, 1, RESERVE),
            ok(2, 1, CREATE),
            transient(2, 4, CREATE, "late"),
            ok(1, 1, REFUND),
            ok(0, 3, RELEASE),
            timer(2, 1, STEP_TIMEOUT),
            timer(0, 2, RETRY_DUE),
        ];
        for event in events {
            assert!(matches!(self.fenced(&event), Fenced::Terminal(_)), "{event:?} in {:?}", self.phase());
        }
        for action in ACTIONS {
            let fence = self.fenced(&operator(action));
            assert!(matches!(fence, Fenced::NotAllowed(_)), "{action:?} in {:?}: {fence:?}", self.phase());
        }
    }
}

/// A saga of pay_then_ship whose shipment timed out three times: parked going forward.
fn parked_shipping() -> Saga {
    let mut saga = Saga::at_step(pay_then_ship(), 2);
    for attempt in 1..3 {
        assert_eq!(saga.fire(), []);
        assert_eq!(saga.fire(), [send(2, attempt + 1, CREATE)]);
    }
    assert_eq!(saga.fire(), []);
    assert_eq!(
        saga.state,
        SagaState {
            phase: Phase::Failed,
            reason: Some(SHIPPING_GAVE_UP.to_owned()),
            parked_at: Some(running(2, 3)),
            ..SagaState::new()
        }
    );
    saga
}

const SHIPPING_GAVE_UP: &str = "step create_shipment gave up after 3 attempts: no reply within 10s";

// ---------------------------------------------------------------------------------------------------------
// Every action in every phase, on stored states

/// One row of the matrix: a stored state (in pay_then_ship) and what each action does to it.
struct Row {
    name: &'static str,
    stored: SagaState,
    /// For each of [`ACTIONS`]: the state and sends it gives, or `None` for `NotAllowed`.
    expected: [Option<(SagaState, Vec<Action>)>; 4],
}

/// The states in flight carry an attempt floor from an earlier retry: a refused action must keep it, a retry
/// must set it afresh, and a compensation's first attempt must reset it.
#[test]
fn every_operator_action_in_every_phase_gives_exactly_the_documented_state() {
    let stored_at = t0();
    let now = plus(t0(), Duration::from_secs(60));
    let earlier = "step charge_payment failed: card declined";
    let parked = "compensation of step reserve_stock gave up after 20 attempts: db down";
    let forced = format!("compensation forced by an operator: {WHY}");
    let state = |phase, reason: Option<&str>, parked_at, attempt_floor| SagaState {
        phase,
        reason: reason.map(str::to_owned),
        parked_at,
        attempt_floor,
        ..SagaState::new()
    };
    let sent = |phase, floor, reason: Option<&str>| in_flight(phase, now, floor, reason);
    let resolved = |outcome: Resolution, earlier: &str| SagaState {
        phase: Phase::Resolved,
        reason: Some(format!("resolved by an operator as {outcome:?}: {WHY} (parked because {earlier})")),
        resolution: Some(outcome),
        ..SagaState::new()
    };
    let resolutions = |earlier: &'static str| {
        [Resolution::Completed, Resolution::Cancelled].map(|outcome| Some((resolved(outcome, earlier), Vec::new())))
    };
    let [parked_shipping_completed, parked_shipping_cancelled] = resolutions(SHIPPING_GAVE_UP);
    let [parked_release_completed, parked_release_cancelled] = resolutions(parked);
    let [unparked_completed, unparked_cancelled] = resolutions("definition moved on");
    let finished_completed = SagaState { phase: Phase::Completed, attempt_floor: 1, ..SagaState::new() };

    let rows = [
        Row {
            name: "STARTED",
            stored: SagaState::new(),
            expected: [
                Some((sent(running(0, 1), 0, None), vec![send(0, 1, RESERVE)])),
                Some((
                    state(
                        Phase::Compensated,
                        Some(&format!("cancelled by an operator before it started: {WHY}")),
                        None,
                        0,
                    ),
                    vec![],
                )),
                None,
                None,
            ],
        },
        Row {
            name: "RUNNING",
            stored: in_flight(running(1, 2), stored_at, 1, None),
            expected: [
                Some((sent(running(1, 3), 2, None), vec![send(1, 3, CHARGE)])),
                Some((sent(compensating(1, 1), 0, Some(&forced)), vec![send(1, 1, REFUND)])),
                None,
                None,
            ],
        },
        Row {
            name: "BACKOFF",
            stored: in_flight(backoff(1, 3), stored_at, 1, None),
            expected: [
                Some((sent(running(1, 3), 2, None), vec![send(1, 3, CHARGE)])),
                Some((sent(compensating(1, 1), 0, Some(&forced)), vec![send(1, 1, REFUND)])),
                None,
                None,
            ],
        },
        Row {
            name: "COMPENSATING",
            stored: in_flight(compensating(0, 2), stored_at, 1, Some(earlier)),
            expected: [Some((sent(compensating(0, 3), 2, Some(earlier)), vec![send(0, 3, RELEASE)])), None, None, None],
        },
        Row {
            name: "COMPENSATION_BACKOFF",
            stored: in_flight(compensation_backoff(0, 3), stored_at, 1, Some(earlier)),
            expected: [Some((sent(compensating(0, 3), 2, Some(earlier)), vec![send(0, 3, RELEASE)])), None, None, None],
        },
        Row { name: "COMPLETED", stored: finished_completed, expected: [None, None, None, None] },
        Row {
            name: "COMPENSATED",
            stored: state(Phase::Compensated, Some(earlier), None, 0),
            expected: [None, None, None, None],
        },
        Row {
            name: "FAILED parked going forward",
            stored: state(Phase::Failed, Some(SHIPPING_GAVE_UP), Some(running(2, 3)), 0),
            expected: [
                Some((sent(running(2, 4), 3, None), vec![send(2, 4, CREATE)])),
                // The shipment has no compensation: compensation starts at the pivot's.
                Some((sent(compensating(1, 1), 0, Some(&forced)), vec![send(1, 1, REFUND)])),
                parked_shipping_completed,
                parked_shipping_cancelled,
            ],
        },
        Row {
            name: "FAILED parked compensating",
            stored: state(Phase::Failed, Some(parked), Some(compensating(0, 20)), 0),
            expected: [
                Some((sent(compensating(0, 21), 20, Some(parked)), vec![send(0, 21, RELEASE)])),
                Some((sent(compensating(0, 21), 20, Some(parked)), vec![send(0, 21, RELEASE)])),
                parked_release_completed,
                parked_release_cancelled,
            ],
        },
        Row {
            name: "FAILED parked where it cannot resume",
            stored: state(Phase::Failed, Some("definition moved on"), None, 0),
            expected: [None, None, unparked_completed, unparked_cancelled],
        },
        Row {
            name: "RESOLVED as completed",
            stored: resolved(Resolution::Completed, parked),
            expected: [None, None, None, None],
        },
        Row {
            name: "RESOLVED as cancelled",
            stored: resolved(Resolution::Cancelled, parked),
            expected: [None, None, None, None],
        },
    ];

    let def = pay_then_ship();
    for row in rows {
        for (action, expected) in ACTIONS.into_iter().zip(row.expected) {
            let what = format!("{action:?} in {}", row.name);
            let (after, actions) = apply(&row.stored, &operator(action), &def, now);
            match expected {
                Some((state, sends)) => {
                    assert_eq!(after, state, "{what}");
                    assert_eq!(actions, sends, "{what}");
                }
                None => {
                    assert_eq!(after, row.stored, "{what} is refused and changes nothing");
                    let [Action::Ignore(fence @ Fenced::NotAllowed(_))] = actions.as_slice() else {
                        panic!("{what}: expected a single NotAllowed, got {actions:?}");
                    };
                    assert!(fence.describe().starts_with("not allowed: "), "{what}: {}", fence.describe());
                }
            }
        }
    }
}

#[test]
fn the_resolved_phase_is_terminal_and_its_status_follows_the_resolution() {
    assert_eq!(Phase::Resolved.name(), "RESOLVED");
    assert!(Phase::Resolved.is_terminal());
    assert_eq!(Phase::Resolved.step_attempt(), None);
    let resolved = |resolution| SagaState { phase: Phase::Resolved, resolution, ..SagaState::new() };
    assert_eq!(resolved(Some(Resolution::Completed)).status(), OrderStatus::Completed);
    assert_eq!(resolved(Some(Resolution::Cancelled)).status(), OrderStatus::Cancelled);
    // The phase alone does not know the outcome; the state does.
    assert_eq!(Phase::Resolved.status(), OrderStatus::Cancelled);
    // Outside RESOLVED the status is the phase's.
    let failed = SagaState { phase: Phase::Failed, resolution: None, ..SagaState::new() };
    assert_eq!(failed.status(), OrderStatus::Failed);
}

// ---------------------------------------------------------------------------------------------------------
// Retry going forward: the next attempt now, with a fresh budget

#[test]
fn retry_before_the_start_starts_the_saga() {
    let mut saga = Saga::new(order());
    assert_eq!(saga.act(RETRY), [send(0, 1, RESERVE)]);
    assert_eq!(saga.state, saga.expect_in_flight(running(0, 1), 0, None));
    assert_eq!(saga.state.status(), OrderStatus::Pending);
    assert!(matches!(saga.fenced(&SagaEvent::Start), Fenced::Duplicate(_)), "the start after it is a duplicate");
    assert_eq!(saga.apply(&ok(0, 1, RESERVE)), [send(1, 1, CHARGE)]);
}

#[test]
fn retry_while_running_sends_the_next_attempt_now_with_a_fresh_budget() {
    let mut saga = Saga::at_step(order(), 1);
    assert_eq!(saga.fire(), []);
    assert_eq!(saga.fire(), [send(1, 2, CHARGE)]);
    saga.wait(Duration::from_secs(3));

    assert_eq!(saga.act(RETRY), [send(1, 3, CHARGE)]);
    assert_eq!(saga.state, saga.expect_in_flight(running(1, 3), 2, None));

    // Without the retry attempt 3 would be the last; with it, attempts 3, 4 and 5 count, and the back-off
    // starts again from the initial wait.
    assert_eq!(saga.fire(), []);
    assert_eq!(saga.phase(), backoff(1, 4));
    assert_eq!(saga.retry_wait(1, 4), 200);
    assert_eq!(saga.state.attempt_floor, 2);
    assert_eq!(saga.fire(), [send(1, 4, CHARGE)]);
    assert_eq!(saga.apply(&transient(1, 4, CHARGE, "acquirer busy")), []);
    assert_eq!(saga.phase(), backoff(1, 5));
    assert_eq!(saga.retry_wait(1, 5), 400);
    assert_eq!(saga.fire(), [send(1, 5, CHARGE)]);

    assert_eq!(saga.fire(), [send(1, 1, REFUND)], "the third attempt after the retry is the last");
    let reason = "step charge_payment gave up after 3 attempts: no reply within 10s";
    assert_eq!(saga.state, saga.expect_in_flight(compensating(1, 1), 0, Some(reason)));
}

#[test]
fn retry_during_back_off_sends_the_pending_attempt_now_and_restarts_the_back_off() {
    let mut saga = Saga::at_step(order(), 1);
    assert_eq!(saga.fire(), []);
    assert_eq!(saga.fire(), [send(1, 2, CHARGE)]);
    assert_eq!(saga.fire(), []);
    assert_eq!(saga.phase(), backoff(1, 3));
    assert_eq!(saga.retry_wait(1, 3), 400);
    let pending = saga.state.deadline.expect("a pending retry");
    saga.wait(ms(100));

    assert_eq!(saga.act(RETRY), [send(1, 3, CHARGE)]);
    assert_eq!(saga.state, saga.expect_in_flight(running(1, 3), 2, None));
    assert!(matches!(saga.fenced(&due(&pending)), Fenced::Stale(_)), "the back-off's timer no longer applies");

    assert_eq!(saga.fire(), []);
    assert_eq!(saga.retry_wait(1, 4), 200, "the back-off starts again");
    assert_eq!(saga.fire(), [send(1, 4, CHARGE)]);
    assert_eq!(saga.fire(), []);
    assert_eq!(saga.retry_wait(1, 5), 400);
    assert_eq!(saga.fire(), [send(1, 5, CHARGE)]);
    assert_eq!(saga.apply(&ok(1, 5, CHARGE)), [send(2, 1, CREATE)]);
    assert_eq!(saga.state, saga.expect_in_flight(running(2, 1), 0, None), "a new step starts from floor 0");
}

#[test]
fn retry_with_a_single_attempt_policy_gives_exactly_one_more_attempt() {
    let mut def = order();
    def.steps[0].retry = RetryPolicy { max_attempts: 1, ..def.steps[0].retry };
    let mut saga = Saga::at_step(def, 0);
    assert_eq!(saga.act(RETRY), [send(0, 2, RESERVE)]);
    assert_eq!(saga.act(RETRY), [send(0, 3, RESERVE)]);
    assert_eq!(saga.state, saga.expect_in_flight(running(0, 3), 2, None));
    assert_eq!(saga.fire(), [send(0, 1, RELEASE)], "one attempt after the last retry, then give up");
    let reason = "step reserve_stock gave up after 1 attempts: no reply within 10s";
    assert_eq!(saga.state, saga.expect_in_flight(compensating(0, 1), 0, Some(reason)));
}

#[test]
fn replies_and_timers_of_attempts_before_a_retry_are_stale() {
    let mut saga = Saga::at_step(order(), 1);
    let first = saga.state.deadline.expect("attempt 1's timeout");
    assert_eq!(saga.act(RETRY), [send(1, 2, CHARGE)]);
    for event in [ok(1, 1, CHARGE), transient(1, 1, CHARGE, "late"), refused(1, 1, CHARGE, "late refusal"), due(&first)]
    {
        let fence = saga.fenced(&event);
        assert!(matches!(fence, Fenced::Stale(_)), "{event:?}: {fence:?}");
    }
    assert_eq!(saga.apply(&ok(1, 2, CHARGE)), [send(2, 1, CREATE)]);

    // Likewise for a compensation.
    let mut saga = Saga::at_step(order(), 1);
    saga.apply(&refused(1, 1, CHARGE, "card declined"));
    let first = saga.state.deadline.expect("attempt 1's timeout");
    assert_eq!(saga.act(RETRY), [send(0, 2, RELEASE)]);
    for event in [ok(0, 1, RELEASE), transient(0, 1, RELEASE, "late"), due(&first)] {
        let fence = saga.fenced(&event);
        assert!(matches!(fence, Fenced::Stale(_)), "{event:?}: {fence:?}");
    }
    assert_eq!(saga.apply(&ok(0, 2, RELEASE)), []);
    assert_eq!(saga.phase(), Phase::Compensated);
}

// ---------------------------------------------------------------------------------------------------------
// Retry while compensating: the compensation again now, with a fresh budget

#[test]
fn retry_while_compensating_resends_the_compensation_now_with_a_fresh_budget() {
    let mut saga = Saga::at_step(order_with_two_compensation_attempts(), 1);
    assert_eq!(saga.apply(&refused(1, 1, CHARGE, "card declined")), [send(0, 1, RELEASE)]);
    let reason = "step charge_payment failed: card declined";
    saga.wait(ms(700));

    assert_eq!(saga.act(RETRY), [send(0, 2, RELEASE)]);
    assert_eq!(saga.state, saga.expect_in_flight(compensating(0, 2), 1, Some(reason)));

    assert_eq!(saga.apply(&transient(0, 2, RELEASE, "db down")), []);
    assert_eq!(saga.phase(), compensation_backoff(0, 3));
    assert_eq!(saga.retry_wait(0, 3), 500, "the back-off starts again");
    assert_eq!(saga.fire(), [send(0, 3, RELEASE)]);
    assert_eq!(saga.apply(&transient(0, 3, RELEASE, "db still down")), [], "the second attempt after the retry");
    assert_eq!(
        saga.state,
        SagaState {
            phase: Phase::Failed,
            reason: Some(format!(
                "compensation of step reserve_stock gave up after 2 attempts: db still down (compensating because \
                 {reason})"
            )),
            parked_at: Some(compensating(0, 3)),
            attempt_floor: 1,
            ..SagaState::new()
        }
    );
}

#[test]
fn retry_during_compensation_back_off_resends_now_and_restarts_the_back_off() {
    let mut saga = Saga::at_step(order(), 1);
    saga.apply(&refused(1, 1, CHARGE, "card declined"));
    let reason = "step charge_payment failed: card declined";
    assert_eq!(saga.apply(&transient(0, 1, RELEASE, "db down")), []);
    assert_eq!(saga.fire(), [send(0, 2, RELEASE)]);
    assert_eq!(saga.fire(), []);
    assert_eq!(saga.phase(), compensation_backoff(0, 3));
    assert_eq!(saga.retry_wait(0, 3), 1_000);
    let pending = saga.state.deadline.expect("a pending retry");

    assert_eq!(saga.act(RETRY), [send(0, 3, RELEASE)]);
    assert_eq!(saga.state, saga.expect_in_flight(compensating(0, 3), 2, Some(reason)));
    assert!(matches!(saga.fenced(&due(&pending)), Fenced::Stale(_)));

    assert_eq!(saga.apply(&transient(0, 3, RELEASE, "db down")), []);
    assert_eq!(saga.retry_wait(0, 4), 500, "the back-off starts again");
    assert_eq!(saga.fire(), [send(0, 4, RELEASE)]);
    assert_eq!(saga.apply(&ok(0, 4, RELEASE)), []);
    assert_eq!(saga.phase(), Phase::Compensated);
    assert_eq!(saga.state.reason.as_deref(), Some(reason));
    assert_eq!(saga.state.deadline, None);
}

// ---------------------------------------------------------------------------------------------------------
// Compensate: stop going forward

#[test]
fn compensate_before_the_start_cancels_the_saga_without_sending_anything() {
    let mut saga = Saga::new(order());
    assert_eq!(saga.act(COMPENSATE), []);
    assert_eq!(
        saga.state,
        SagaState {
            phase: Phase::Compensated,
            reason: Some(format!("cancelled by an operator before it started: {WHY}")),
            ..SagaState::new()
        }
    );
    assert_eq!(saga.state.status(), OrderStatus::Cancelled);
    saga.assert_finished();
    assert_eq!(saga.sent, []);
}

#[test]
fn compensate_while_running_compensates_the_current_step_then_the_older_ones() {
    let forced = format!("compensation forced by an operator: {WHY}");
    let mut saga = Saga::at_step(order(), 1);
    assert_eq!(saga.act(COMPENSATE), [send(1, 1, REFUND)], "the charge's outcome is unknown: refund it");
    assert_eq!(saga.state, saga.expect_in_flight(compensating(1, 1), 0, Some(&forced)));
    assert!(matches!(saga.fenced(&ok(1, 1, CHARGE)), Fenced::Stale(_)), "the charge's late reply is stale");
    assert_eq!(saga.apply(&ok(1, 1, REFUND)), [send(0, 1, RELEASE)]);
    assert_eq!(saga.apply(&ok(0, 1, RELEASE)), []);
    assert_eq!(saga.state, SagaState { phase: Phase::Compensated, reason: Some(forced), ..SagaState::new() });
    assert_eq!(saga.state.status(), OrderStatus::Cancelled);
    saga.assert_finished();
    assert_eq!(saga.sent, [send(0, 1, RESERVE), send(1, 1, CHARGE), send(1, 1, REFUND), send(0, 1, RELEASE)]);
}

#[test]
fn compensate_while_running_the_pivot_cancels_it_first() {
    let mut saga = Saga::at_step(order(), 2);
    assert_eq!(saga.act(COMPENSATE), [send(2, 1, CANCEL)]);
    assert_eq!(saga.apply(&ok(2, 1, CANCEL)), [send(1, 1, REFUND)]);
    assert_eq!(saga.apply(&ok(1, 1, REFUND)), [send(0, 1, RELEASE)]);
    assert_eq!(saga.apply(&ok(0, 1, RELEASE)), []);
    assert_eq!(saga.phase(), Phase::Compensated);
}

#[test]
fn compensate_after_the_pivot_starts_with_the_newest_step_that_has_a_compensation() {
    let mut saga = Saga::at_step(pay_then_ship(), 2);
    assert_eq!(saga.act(COMPENSATE), [send(1, 1, REFUND)], "the shipment has no compensation");
    assert_eq!(saga.phase(), compensating(1, 1));
}

#[test]
fn compensate_after_an_operator_retry_starts_the_compensation_from_attempt_one() {
    let mut saga = Saga::at_step(order(), 1);
    saga.act(RETRY);
    saga.act(RETRY);
    assert_eq!(saga.state.attempt_floor, 2);
    let forced = format!("compensation forced by an operator: {WHY}");
    assert_eq!(saga.act(COMPENSATE), [send(1, 1, REFUND)]);
    assert_eq!(saga.state, saga.expect_in_flight(compensating(1, 1), 0, Some(&forced)));
    for event in [ok(1, 3, CHARGE), transient(1, 2, CHARGE, "late")] {
        assert!(matches!(saga.fenced(&event), Fenced::Stale(_)), "{event:?}");
    }
}

#[test]
fn compensate_during_back_off_compensates_the_step_whose_outcome_is_unknown() {
    let mut saga = Saga::at_step(order(), 0);
    assert_eq!(saga.fire(), []);
    assert_eq!(saga.phase(), backoff(0, 2));
    let pending = saga.state.deadline.expect("a pending retry");
    let forced = format!("compensation forced by an operator: {WHY}");

    assert_eq!(saga.act(COMPENSATE), [send(0, 1, RELEASE)]);
    assert_eq!(saga.state, saga.expect_in_flight(compensating(0, 1), 0, Some(&forced)));
    assert!(matches!(saga.fenced(&due(&pending)), Fenced::Stale(_)));
    assert!(matches!(saga.fenced(&ok(0, 1, RESERVE)), Fenced::Stale(_)));
    assert_eq!(saga.apply(&ok(0, 1, RELEASE)), []);
    assert_eq!(saga.phase(), Phase::Compensated);
}

#[test]
fn compensate_while_compensating_is_not_allowed() {
    let mut saga = Saga::at_step(order(), 1);
    saga.apply(&refused(1, 1, CHARGE, "card declined"));
    let fence = saga.fenced(&operator(COMPENSATE));
    assert_eq!(fence, Fenced::NotAllowed("the saga is already compensating".to_owned()));
    saga.apply(&transient(0, 1, RELEASE, "db down"));
    assert_eq!(saga.phase(), compensation_backoff(0, 2));
    assert!(matches!(saga.fenced(&operator(COMPENSATE)), Fenced::NotAllowed(_)));
}

// ---------------------------------------------------------------------------------------------------------
// Parked sagas: resume where parked, or resolve

#[test]
fn a_parked_forward_step_retried_by_an_operator_gets_a_fresh_budget_each_time() {
    let mut saga = parked_shipping();
    saga.wait(Duration::from_secs(3600));
    assert_eq!(saga.act(RETRY), [send(2, 4, CREATE)]);
    assert_eq!(saga.state, saga.expect_in_flight(running(2, 4), 3, None), "the reason is cleared");
    assert_eq!(saga.state.status(), OrderStatus::Pending);
    assert!(matches!(saga.fenced(&ok(2, 3, CREATE)), Fenced::Stale(_)), "a reply to the parked attempt");

    assert_eq!(saga.fire(), []);
    assert_eq!(saga.retry_wait(2, 5), 200);
    assert_eq!(saga.fire(), [send(2, 5, CREATE)]);
    assert_eq!(saga.fire(), []);
    assert_eq!(saga.retry_wait(2, 6), 400);
    assert_eq!(saga.fire(), [send(2, 6, CREATE)]);
    assert_eq!(saga.fire(), [], "three attempts after the retry: parked again");
    assert_eq!(
        saga.state,
        SagaState {
            phase: Phase::Failed,
            reason: Some(SHIPPING_GAVE_UP.to_owned()),
            parked_at: Some(running(2, 6)),
            attempt_floor: 3,
            ..SagaState::new()
        }
    );

    assert_eq!(saga.act(RETRY), [send(2, 7, CREATE)]);
    assert_eq!(saga.state, saga.expect_in_flight(running(2, 7), 6, None));
    assert_eq!(saga.apply(&ok(2, 7, CREATE)), []);
    assert_eq!(saga.phase(), Phase::Completed);
    assert_eq!((saga.state.deadline, saga.state.reason.as_deref()), (None, None));
    assert_eq!(saga.state.status(), OrderStatus::Completed);
    saga.assert_finished();
}

#[test]
fn compensate_on_a_saga_parked_going_forward_compensates_from_the_parked_step() {
    let mut saga = parked_shipping();
    let forced = format!("compensation forced by an operator: {WHY}");
    assert_eq!(saga.act(COMPENSATE), [send(1, 1, REFUND)], "the shipment has none: the pivot's first");
    assert_eq!(saga.state, saga.expect_in_flight(compensating(1, 1), 0, Some(&forced)));
    assert!(matches!(saga.fenced(&ok(2, 3, CREATE)), Fenced::Stale(_)));
    assert_eq!(saga.apply(&ok(1, 1, REFUND)), [send(0, 1, RELEASE)]);
    assert_eq!(saga.apply(&ok(0, 1, RELEASE)), []);
    assert_eq!(saga.state, SagaState { phase: Phase::Compensated, reason: Some(forced), ..SagaState::new() });
}

#[test]
fn a_business_refusal_after_the_pivot_parks_the_saga_where_an_operator_can_resume_it() {
    let mut saga = Saga::at_step(pay_then_ship(), 2);
    assert_eq!(saga.apply(&refused(2, 1, CREATE, "address incomplete")), []);
    assert_eq!(
        saga.state,
        SagaState {
            phase: Phase::Failed,
            reason: Some("step create_shipment failed: address incomplete".to_owned()),
            parked_at: Some(running(2, 1)),
            ..SagaState::new()
        }
    );
    // The operator fixed the address: the shipment is sent again, with a fresh budget.
    assert_eq!(saga.act(RETRY), [send(2, 2, CREATE)]);
    assert_eq!(saga.state, saga.expect_in_flight(running(2, 2), 1, None));
    assert_eq!(saga.apply(&ok(2, 2, CREATE)), []);
    assert_eq!(saga.phase(), Phase::Completed);

    // Or the operator gives up on it: the pivot is refunded, then the stock released.
    let mut saga = Saga::at_step(pay_then_ship(), 2);
    saga.apply(&refused(2, 1, CREATE, "address incomplete"));
    assert_eq!(saga.act(COMPENSATE), [send(1, 1, REFUND)]);
}

#[test]
fn a_saga_parked_by_an_exhausted_compensation_and_retried_ends_compensated_sending_each_attempt_once() {
    let mut saga = Saga::at_step(order_with_two_compensation_attempts(), 2);
    assert_eq!(saga.apply(&refused(2, 1, CREATE, "country not served")), [send(1, 1, REFUND)]);
    assert_eq!(saga.apply(&transient(1, 1, REFUND, "provider down")), []);
    assert_eq!(saga.fire(), [send(1, 2, REFUND)]);
    assert_eq!(saga.fire(), []);
    let parked_reason = "compensation of step charge_payment gave up after 2 attempts: no reply within 10s \
                         (compensating because step create_shipment failed: country not served)";
    let parked = SagaState {
        phase: Phase::Failed,
        reason: Some(parked_reason.to_owned()),
        parked_at: Some(compensating(1, 2)),
        ..SagaState::new()
    };
    assert_eq!(saga.state, parked);
    assert_eq!(saga.state.status(), OrderStatus::Failed);

    saga.wait(Duration::from_secs(3600));
    assert_eq!(saga.act(RETRY), [send(1, 3, REFUND)]);
    assert_eq!(saga.state, saga.expect_in_flight(compensating(1, 3), 2, Some(parked_reason)));
    assert!(matches!(saga.fenced(&transient(1, 2, REFUND, "late")), Fenced::Stale(_)));
    assert!(matches!(saga.fenced(&ok(1, 2, REFUND)), Fenced::Stale(_)));

    assert_eq!(saga.apply(&ok(1, 3, REFUND)), [send(0, 1, RELEASE)]);
    assert_eq!(saga.state, saga.expect_in_flight(compensating(0, 1), 0, Some(parked_reason)));
    assert_eq!(saga.apply(&ok(0, 1, RELEASE)), []);
    assert_eq!(
        saga.state,
        SagaState { phase: Phase::Compensated, reason: Some(parked_reason.to_owned()), ..SagaState::new() }
    );
    assert_eq!(saga.state.status(), OrderStatus::Cancelled);
    saga.assert_finished();

    let compensations: Vec<&Action> = saga
        .sent
        .iter()
        .filter(|a| matches!(a, Action::Send { command, .. } if [RELEASE, REFUND, CANCEL].contains(command)))
        .collect();
    assert_eq!(
        compensations,
        [&send(1, 1, REFUND), &send(1, 2, REFUND), &send(1, 3, REFUND), &send(0, 1, RELEASE)],
        "each compensation attempt once, the release once, and the refused shipment never cancelled"
    );
}

#[test]
fn after_a_retried_compensation_the_next_step_gets_the_whole_budget_and_compensate_resumes_it() {
    let mut saga = Saga::at_step(order_with_two_compensation_attempts(), 2);
    saga.apply(&refused(2, 1, CREATE, "country not served"));
    saga.apply(&transient(1, 1, REFUND, "provider down"));
    saga.fire();
    saga.apply(&transient(1, 2, REFUND, "provider down"));
    assert_eq!(saga.state.parked_at, Some(compensating(1, 2)));
    assert_eq!(saga.act(RETRY), [send(1, 3, REFUND)]);
    assert_eq!(saga.apply(&ok(1, 3, REFUND)), [send(0, 1, RELEASE)]);

    // The release starts a new step at attempt 1 and floor 0: two attempts, not the refund's leftovers.
    assert_eq!(saga.apply(&transient(0, 1, RELEASE, "db down")), []);
    assert_eq!(saga.fire(), [send(0, 2, RELEASE)]);
    assert_eq!(saga.apply(&transient(0, 2, RELEASE, "db down")), []);
    assert_eq!(saga.phase(), Phase::Failed);
    assert_eq!(saga.state.parked_at, Some(compensating(0, 2)));
    let reason = saga.state.reason.clone().expect("a reason");
    assert!(reason.starts_with("compensation of step reserve_stock gave up after 2 attempts: db down"), "{reason}");

    // Compensate on a saga parked compensating resumes that compensation, like a retry.
    assert_eq!(saga.act(COMPENSATE), [send(0, 3, RELEASE)]);
    assert_eq!(saga.state, saga.expect_in_flight(compensating(0, 3), 2, Some(&reason)));
    assert_eq!(saga.apply(&ok(0, 3, RELEASE)), []);
    assert_eq!(saga.phase(), Phase::Compensated);
}

#[test]
fn parked_at_survives_a_restore_and_is_cleared_when_the_saga_leaves_failed() {
    let def = pay_then_ship();
    let stored = SagaState {
        phase: Phase::Failed,
        reason: Some(SHIPPING_GAVE_UP.to_owned()),
        parked_at: Some(running(2, 3)),
        attempt_floor: 0,
        ..SagaState::new()
    };
    let ignored = [
        SagaEvent::Start,
        ok(2, 3, CREATE),
        transient(2, 3, CREATE, "late"),
        ok(1, 1, REFUND),
        timer(2, 3, STEP_TIMEOUT),
        timer(2, 4, RETRY_DUE),
    ];
    for now in [t0(), plus(t0(), Duration::from_secs(86_400))] {
        for event in &ignored {
            let (after, actions) = apply(&stored, event, &def, now);
            assert_eq!(after, stored, "{event:?} keeps the parked state, parked_at included");
            assert!(matches!(actions.as_slice(), [Action::Ignore(Fenced::Terminal(_))]), "{event:?}: {actions:?}");
        }
    }
    // Any stored state round-trips through an ignored event, whatever it holds.
    let compensating_parked = SagaState { parked_at: Some(compensating(0, 20)), attempt_floor: 7, ..stored.clone() };
    let (after, _) = apply(&compensating_parked, &SagaEvent::Start, &def, t0());
    assert_eq!(after, compensating_parked);

    for action in ACTIONS {
        let (after, actions) = apply(&stored, &operator(action), &def, t0());
        assert_ne!(after.phase, Phase::Failed, "{action:?} leaves FAILED");
        assert_eq!(after.parked_at, None, "{action:?}");
        assert!(!actions.iter().any(|a| matches!(a, Action::Ignore(_))), "{action:?}: {actions:?}");
    }
}

#[test]
fn a_parked_saga_whose_resume_point_no_longer_fits_the_definition_can_only_be_resolved() {
    // Stored under another definition (or version): the step it was parked at is gone, or has no
    // compensation here. Resuming must not panic; the operator resolves it instead.
    let stored = |parked_at| SagaState {
        phase: Phase::Failed,
        reason: Some("parked".to_owned()),
        parked_at: Some(parked_at),
        ..SagaState::new()
    };
    let cases = [
        (order(), stored(running(7, 3))),
        (order(), stored(compensating(u16::MAX, 20))),
        (pay_then_ship(), stored(compensating(2, 20))),
        // Not a resume point that parking records at all.
        (pay_then_ship(), stored(backoff(2, 3))),
    ];
    for (def, state) in cases {
        for action in [RETRY, COMPENSATE] {
            let (after, actions) = apply(&state, &operator(action), &def, t0());
            assert_eq!(after, state, "{action:?} on {:?} changes nothing", state.parked_at);
            let [Action::Ignore(Fenced::NotAllowed(detail))] = actions.as_slice() else {
                panic!("{action:?} on {:?}: {actions:?}", state.parked_at);
            };
            assert!(detail.contains("resolve it"), "{detail}");
        }
        let (after, actions) = apply(&state, &operator(RESOLVE_CANCELLED), &def, t0());
        assert_eq!(
            (after.phase, after.resolution, after.parked_at),
            (Phase::Resolved, Some(Resolution::Cancelled), None)
        );
        assert_eq!(actions, []);
    }
}

#[test]
fn resolving_a_parked_saga_records_the_outcome_and_nothing_happens_after() {
    let cases = [(Resolution::Completed, OrderStatus::Completed), (Resolution::Cancelled, OrderStatus::Cancelled)];
    for (outcome, status) in cases {
        let mut saga = parked_shipping();
        saga.wait(Duration::from_secs(600));
        let sent_before = saga.sent.len();
        assert_eq!(saga.act(OperatorAction::Resolve { outcome }), []);
        assert_eq!(
            saga.state,
            SagaState {
                phase: Phase::Resolved,
                reason: Some(format!(
                    "resolved by an operator as {outcome:?}: {WHY} (parked because {SHIPPING_GAVE_UP})"
                )),
                resolution: Some(outcome),
                ..SagaState::new()
            }
        );
        assert_eq!(saga.state.status(), status);
        saga.assert_finished();
        assert_eq!(saga.sent.len(), sent_before, "nothing is sent after the resolution");
    }
}

#[test]
fn resolve_is_refused_outside_failed() {
    let mut saga = Saga::at_step(order(), 1);
    for action in [RESOLVE_COMPLETED, RESOLVE_CANCELLED] {
        let fence = saga.fenced(&operator(action));
        assert_eq!(
            fence,
            Fenced::NotAllowed("only a FAILED saga can be resolved; this one is RUNNING".to_owned()),
            "{action:?}"
        );
    }
    saga.apply(&ok(1, 1, CHARGE));
    saga.apply(&ok(2, 1, CREATE));
    assert_eq!(saga.phase(), Phase::Completed);
    saga.assert_finished();
}
