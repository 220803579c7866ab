//! The pure saga core: `apply(state, event, definition, now) -> (state, actions)`.
//!
//! The states and transitions are a statig (blocking) state machine. statig's async machines are not
//! `Send` on stable Rust, and a pure core needs no async anyway: handlers only compute the next state and
//! the actions to perform; the orchestrator does the I/O. A stored saga is restored by putting its state
//! into an uninitialized machine and initializing it; `init` re-runs the entry actions of that state, so
//! entry actions are suppressed while restoring.
//!
//! Replies and timers are fenced: they apply only if they match the step, attempt and command the saga is
//! waiting for. Anything else is returned as [`Action::Ignore`] with the reason, for the timeline.
//!
//! ```text
//! STARTED ─start─▶ RUNNING(s,a) ─ok─▶ RUNNING(s+1,1) … ─ok─▶ COMPLETED
//!                  │  timeout / transient, attempts left: BACKOFF(s,a+1) ─due─▶ RUNNING(s,a+1)
//!                  │  business failure, or attempts exhausted:
//!                  ▼
//!        COMPENSATING(c,a) ─ok─▶ COMPENSATING(c',1) … ─ok─▶ COMPENSATED
//!                  │  failure / timeout, attempts left: COMPENSATION_BACKOFF(c,a+1) ─due─▶ COMPENSATING(c,a+1)
//!                  │  attempts exhausted (or a step after the pivot exhausted or refused):
//!                  ▼
//!               FAILED (parked for an operator) ─resolve─▶ RESOLVED
//! ```
//!
//! An operator may also retry (the current attempt, or the one the saga was parked at, now and with a fresh
//! retry budget) or force compensation; see [`OperatorAction`]. An action that does not apply in the saga's
//! state is refused as [`Fenced::NotAllowed`] and changes nothing.

use chrono::{DateTime, TimeDelta, Utc};
use proto_events::{CommandKind, DeadlineKind, FailureKind, OrderStatus, Reply};
use serde::{Deserialize, Serialize};
use statig::blocking::{IntoStateMachineExt, Outcome};
use statig::prelude::{Handled, Transition, state_machine};

use crate::definition::{Definition, StepDef, StepKind};

/// Where a saga is. `step` is an index into the definition's steps; `attempt` counts from 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Phase {
    /// Stored, not yet running.
    Started,
    /// The step's command (this attempt) is out; waiting for its reply or its timeout.
    Running { step: u16, attempt: u32 },
    /// Waiting out the back-off before sending `attempt` of the step.
    Backoff { step: u16, attempt: u32 },
    /// The step's compensation (this attempt) is out.
    Compensating { step: u16, attempt: u32 },
    /// Waiting out the back-off before sending `attempt` of the step's compensation.
    CompensationBackoff { step: u16, attempt: u32 },
    /// Every step succeeded.
    Completed,
    /// Every finished step was compensated.
    Compensated,
    /// Parked for an operator; the saga's reason says why.
    Failed,
    /// A parked saga an operator closed, with a recorded outcome.
    Resolved,
}

impl Phase {
    /// The state's name, as stored and shown (`RUNNING`, ...).
    pub fn name(self) -> &'static str {
        match self {
            Phase::Started => "STARTED",
            Phase::Running { .. } => "RUNNING",
            Phase::Backoff { .. } => "BACKOFF",
            Phase::Compensating { .. } => "COMPENSATING",
            Phase::CompensationBackoff { .. } => "COMPENSATION_BACKOFF",
            Phase::Completed => "COMPLETED",
            Phase::Compensated => "COMPENSATED",
            Phase::Failed => "FAILED",
            Phase::Resolved => "RESOLVED",
        }
    }

    /// The order status customers see (for `RESOLVED`, see [`SagaState::status`], which knows the outcome).
    pub fn status(self) -> OrderStatus {
        match self {
            Phase::Completed => OrderStatus::Completed,
            Phase::Compensated | Phase::Resolved => OrderStatus::Cancelled,
            Phase::Failed => OrderStatus::Failed,
            _ => OrderStatus::Pending,
        }
    }

    /// The step and attempt the saga is at, if it is at one.
    pub fn step_attempt(self) -> Option<(u16, u32)> {
        match self {
            Phase::Running { step, attempt }
            | Phase::Backoff { step, attempt }
            | Phase::Compensating { step, attempt }
            | Phase::CompensationBackoff { step, attempt } => Some((step, attempt)),
            _ => None,
        }
    }

    /// Whether nothing but an operator will change the saga any more.
    pub fn is_terminal(self) -> bool {
        matches!(self, Phase::Completed | Phase::Compensated | Phase::Failed | Phase::Resolved)
    }

    /// Whether the saga finished for good: not even an operator will change its state (a parked FAILED saga
    /// is terminal, not final).
    pub fn is_final(self) -> bool {
        matches!(self, Phase::Completed | Phase::Compensated | Phase::Resolved)
    }
}

/// When the saga must be woken up, and what for. The orchestrator turns a passed deadline into
/// [`SagaEvent::Timer`] with the same step, attempt and kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Deadline {
    /// When.
    pub at: DateTime<Utc>,
    /// What for.
    pub kind: DeadlineKind,
    /// The step it belongs to.
    pub step: u16,
    /// The attempt it belongs to.
    pub attempt: u32,
}

/// The saga's persisted state (the orchestrator stores it with the saga id, version and order data).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SagaState {
    /// Where the saga is.
    pub phase: Phase,
    /// The pending deadline, if any.
    pub deadline: Option<Deadline>,
    /// Why the saga is compensating or parked.
    pub reason: Option<String>,
    /// While `FAILED`: the phase the saga was parked from, where an operator's retry resumes.
    #[serde(default)]
    pub parked_at: Option<Phase>,
    /// Attempts up to this one do not count against the retry policy: an operator's retry gives the step a
    /// fresh budget while attempt numbers keep increasing (they fence replies).
    #[serde(default)]
    pub attempt_floor: u32,
    /// While `RESOLVED`: the outcome the operator recorded.
    #[serde(default)]
    pub resolution: Option<Resolution>,
}

impl SagaState {
    /// A saga that has just been stored.
    pub fn new() -> Self {
        Self {
            phase: Phase::Started,
            deadline: None,
            reason: None,
            parked_at: None,
            attempt_floor: 0,
            resolution: None,
        }
    }

    /// The order status customers see.
    pub fn status(&self) -> OrderStatus {
        match (self.phase, self.resolution) {
            (Phase::Resolved, Some(Resolution::Completed)) => OrderStatus::Completed,
            (phase, _) => phase.status(),
        }
    }
}

/// The outcome an operator records when resolving a parked saga.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Resolution {
    /// The order is fulfilled after all (the operator finished it by hand).
    Completed,
    /// The order is off (the operator undid what was left by hand).
    Cancelled,
}

/// What an operator asks of a saga.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum OperatorAction {
    /// Send the current step (or the compensation the saga was parked at) again now, with a fresh retry
    /// budget.
    Retry,
    /// Stop going forward and compensate the finished steps (the current one included: its outcome is
    /// unknown), newest first.
    Compensate,
    /// Close a parked saga with a recorded outcome.
    Resolve {
        /// The outcome.
        outcome: Resolution,
    },
}

impl Default for SagaState {
    fn default() -> Self {
        Self::new()
    }
}

/// Something that happens to a saga.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SagaEvent {
    /// Run the stored saga.
    Start,
    /// A participant's reply to the command of kind `command` for `step`, `attempt`.
    Reply { step: u16, attempt: u32, command: CommandKind, reply: Reply },
    /// The deadline of `kind` for `step`, `attempt`, due at `due_at`, passed. It applies only if it is the
    /// saga's current deadline: a timer of an earlier phase that used the same step and attempt numbers
    /// (a forward step and its compensation both count attempts from 1) is stale.
    Timer { step: u16, attempt: u32, kind: DeadlineKind, due_at: DateTime<Utc> },
    /// An operator's action, with the operator's reason.
    Operator { action: OperatorAction, reason: String },
}

/// Why an event was not applied.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "fence", content = "detail", rename_all = "snake_case")]
pub enum Fenced {
    /// It answers something the saga has already moved past (a redelivered reply).
    Duplicate(String),
    /// It belongs to an older attempt, or to a deadline that no longer applies.
    Stale(String),
    /// It answers something the saga has not sent yet.
    OutOfOrder(String),
    /// The saga is finished.
    Terminal(String),
    /// An operator's action that does not apply in the saga's state.
    NotAllowed(String),
}

impl Fenced {
    /// A one-line explanation for the timeline.
    pub fn describe(&self) -> String {
        match self {
            Fenced::Duplicate(d) => format!("duplicate: {d}"),
            Fenced::Stale(d) => format!("stale: {d}"),
            Fenced::OutOfOrder(d) => format!("out of order: {d}"),
            Fenced::Terminal(d) => format!("saga finished: {d}"),
            Fenced::NotAllowed(d) => format!("not allowed: {d}"),
        }
    }
}

/// What the orchestrator must do after [`apply`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Send `command` for `step`, `attempt` to the step's participant.
    Send { step: u16, attempt: u32, command: CommandKind },
    /// The event was not applied; record why.
    Ignore(Fenced),
}

/// Applies `event` to a saga in `state` under `definition` at time `now`: the new state, and the actions to
/// perform. Pure: the same inputs give the same outputs.
pub fn apply(
    state: &SagaState,
    event: &SagaEvent,
    definition: &Definition,
    now: DateTime<Utc>,
) -> (SagaState, Vec<Action>) {
    if let Some(reason) = misfit(state.phase, definition) {
        let parked = SagaState { phase: Phase::Failed, reason: Some(reason), parked_at: None, ..SagaState::new() };
        return (parked, Vec::new());
    }
    let mut ctx = Ctx {
        def: definition,
        now,
        restoring: true,
        actions: Vec::new(),
        deadline: state.deadline,
        reason: state.reason.clone(),
        parked_at: state.parked_at,
        attempt_floor: state.attempt_floor,
        resolution: state.resolution,
    };
    let mut machine = Machine.uninitialized_state_machine();
    *machine.state_mut() = State::from(state.phase);
    let mut machine = machine.init_with_context(&mut ctx);
    ctx.restoring = false;
    machine.handle_with_context(event, &mut ctx);
    let phase = Phase::from(machine.state());
    let parked_at = if phase == Phase::Failed { ctx.parked_at } else { None };
    let state = SagaState {
        phase,
        deadline: ctx.deadline,
        reason: ctx.reason,
        parked_at,
        attempt_floor: ctx.attempt_floor,
        resolution: ctx.resolution,
    };
    (state, ctx.actions)
}

/// Why a stored `phase` cannot run under `definition` (it was stored under another definition or version):
/// its step does not exist, or it compensates a step that has no compensation. Such a saga is parked.
fn misfit(phase: Phase, definition: &Definition) -> Option<String> {
    let (step, _) = phase.step_attempt()?;
    let (name, version) = (definition.name, definition.version);
    let Some(def) = definition.step(step) else {
        return Some(format!("definition {name} v{version} has no step {step}"));
    };
    let compensating = matches!(phase, Phase::Compensating { .. } | Phase::CompensationBackoff { .. });
    (compensating && def.compensation.is_none())
        .then(|| format!("definition {name} v{version}: step {} has no compensation to run", def.name))
}

/// The statig context: the inputs of one `apply` and what it produces.
struct Ctx<'a> {
    def: &'a Definition,
    now: DateTime<Utc>,
    /// True while restoring a stored state: entry actions must not run again.
    restoring: bool,
    actions: Vec<Action>,
    deadline: Option<Deadline>,
    reason: Option<String>,
    parked_at: Option<Phase>,
    attempt_floor: u32,
    resolution: Option<Resolution>,
}

impl Ctx<'_> {
    fn step(&self, index: u16) -> &StepDef {
        self.def.step(index).expect("apply parks a state whose step does not exist")
    }

    fn ignore(&mut self, fence: Fenced) -> Outcome<State> {
        self.actions.push(Action::Ignore(fence));
        Handled
    }

    fn set_deadline(&mut self, after: std::time::Duration, kind: DeadlineKind, step: u16, attempt: u32) {
        let after = TimeDelta::from_std(after).unwrap_or(TimeDelta::MAX);
        let at = self.now.checked_add_signed(after).unwrap_or(DateTime::<Utc>::MAX_UTC);
        self.deadline = Some(Deadline { at, kind, step, attempt });
    }

    /// After a failed or timed-out attempt of a forward step: another attempt (after its back-off), or, with
    /// none left, compensation (including this step, whose outcome is unknown) or parking.
    fn retry_or_give_up(&mut self, step: u16, attempt: u32, why: &str) -> Outcome<State> {
        let def = self.step(step);
        let used = attempt.saturating_sub(self.attempt_floor);
        if used < def.retry.max_attempts {
            return if def.retry.backoff_before(used + 1).is_zero() {
                Transition(State::running(step, attempt + 1))
            } else {
                Transition(State::backoff(step, attempt + 1))
            };
        }
        let reason = format!("step {} gave up after {used} attempts: {why}", def.name);
        if def.kind == StepKind::Retriable {
            return self.park(Phase::Running { step, attempt }, reason);
        }
        self.reason = Some(reason);
        self.compensate_from(Some(step))
    }

    /// Starts (or continues) compensating with the newest step at or before `from` that has a compensation.
    fn compensate_from(&mut self, from: Option<u16>) -> Outcome<State> {
        let next = from.and_then(|from| (0..=from).rev().find(|&i| self.step(i).compensation.is_some()));
        match next {
            Some(step) => Transition(State::compensating(step, 1)),
            None => Transition(State::compensated()),
        }
    }

    fn compensation_retry_or_park(&mut self, step: u16, attempt: u32, why: &str) -> Outcome<State> {
        let policy = self.def.compensation_retry;
        let used = attempt.saturating_sub(self.attempt_floor);
        if used < policy.max_attempts {
            return if policy.backoff_before(used + 1).is_zero() {
                Transition(State::compensating(step, attempt + 1))
            } else {
                Transition(State::compensation_backoff(step, attempt + 1))
            };
        }
        let name = self.step(step).name;
        let earlier = self.reason.take().map(|r| format!(" (compensating because {r})")).unwrap_or_default();
        let reason = format!("compensation of step {name} gave up after {used} attempts: {why}{earlier}");
        self.park(Phase::Compensating { step, attempt }, reason)
    }

    /// Parks the saga in FAILED, remembering where it was so that an operator's retry can resume there.
    fn park(&mut self, from: Phase, reason: String) -> Outcome<State> {
        self.parked_at = Some(from);
        self.reason = Some(reason);
        Transition(State::failed())
    }

    /// An operator's action in `phase` (see [`OperatorAction`]).
    fn operate(&mut self, phase: Phase, action: OperatorAction, why: &str) -> Outcome<State> {
        use OperatorAction::{Compensate, Resolve, Retry};
        match (action, phase) {
            (Retry, Phase::Started) => Transition(State::running(0, 1)),
            (Retry, Phase::Running { step, attempt }) => self.retry_forward(step, attempt),
            (Retry, Phase::Backoff { step, attempt }) => self.retry_forward(step, attempt - 1),
            (Retry, Phase::Compensating { step, attempt }) => self.retry_compensation(step, attempt),
            (Retry, Phase::CompensationBackoff { step, attempt }) => self.retry_compensation(step, attempt - 1),
            (Retry | Compensate, Phase::Failed) => self.resume(action, why),
            (Compensate, Phase::Started) => {
                self.reason = Some(format!("cancelled by an operator before it started: {why}"));
                Transition(State::compensated())
            }
            (Compensate, Phase::Running { step, .. } | Phase::Backoff { step, .. }) => {
                self.reason = Some(format!("compensation forced by an operator: {why}"));
                self.compensate_from(Some(step))
            }
            (Compensate, Phase::Compensating { .. } | Phase::CompensationBackoff { .. }) => {
                self.ignore(Fenced::NotAllowed("the saga is already compensating".to_owned()))
            }
            (Resolve { outcome }, Phase::Failed) => {
                self.resolution = Some(outcome);
                let earlier = self.reason.take().map(|r| format!(" (parked because {r})")).unwrap_or_default();
                self.reason = Some(format!("resolved by an operator as {outcome:?}: {why}{earlier}"));
                Transition(State::resolved())
            }
            (Resolve { .. }, _) => self.ignore(Fenced::NotAllowed(format!(
                "only a FAILED saga can be resolved; this one is {}",
                phase.name()
            ))),
            (_, Phase::Completed | Phase::Compensated | Phase::Resolved) => {
                self.ignore(Fenced::NotAllowed(format!("the saga is {}", phase.name())))
            }
        }
    }

    /// Sends the forward step again after `last` attempts, with a fresh retry budget.
    fn retry_forward(&mut self, step: u16, last: u32) -> Outcome<State> {
        self.attempt_floor = last;
        Transition(State::running(step, last + 1))
    }

    /// Sends the step's compensation again after `last` attempts, with a fresh retry budget.
    fn retry_compensation(&mut self, step: u16, last: u32) -> Outcome<State> {
        self.attempt_floor = last;
        Transition(State::compensating(step, last + 1))
    }

    /// Resumes a parked saga where it was parked: a retry goes on as it was going (forward or compensating);
    /// compensate forces compensation of a saga parked going forward.
    fn resume(&mut self, action: OperatorAction, why: &str) -> Outcome<State> {
        // The resume point is stored state too: under another definition (or version) its step may be gone
        // or have no compensation, and resuming there would panic. Such a saga can only be resolved.
        if let Some(problem) = self.parked_at.and_then(|parked| misfit(parked, self.def)) {
            return self.ignore(Fenced::NotAllowed(format!(
                "the saga cannot resume where it was parked ({problem}); resolve it"
            )));
        }
        match (action, self.parked_at.take()) {
            (OperatorAction::Retry, Some(Phase::Running { step, attempt })) => {
                self.reason = None;
                self.retry_forward(step, attempt)
            }
            (_, Some(Phase::Compensating { step, attempt })) => self.retry_compensation(step, attempt),
            (OperatorAction::Compensate, Some(Phase::Running { step, .. })) => {
                self.reason = Some(format!("compensation forced by an operator: {why}"));
                self.compensate_from(Some(step))
            }
            (_, parked_at) => {
                self.parked_at = parked_at;
                self.ignore(Fenced::NotAllowed("the saga was parked where it cannot resume; resolve it".to_owned()))
            }
        }
    }
}

/// Classifies a reply that does not match the awaited (`step`, `attempt`, `expected`) command.
fn fence_reply(
    at: (u16, u32),
    expected: CommandKind,
    compensating: bool,
    reply: (u16, u32, CommandKind),
) -> Option<Fenced> {
    let (step, attempt) = at;
    let (s, a, command) = reply;
    if (s, a, command) == (step, attempt, expected) {
        return None;
    }
    let what = format!("{} reply for step {s} attempt {a}", command.message_type());
    let is_compensation =
        matches!(command, CommandKind::InventoryRelease | CommandKind::PaymentRefund | CommandKind::ShippingCancel);
    Some(match (compensating, is_compensation) {
        (true, false) => Fenced::Stale(format!("{what} arrived after compensation began")),
        (false, true) => Fenced::OutOfOrder(format!("{what}, but the saga is not compensating")),
        _ if command != expected && s == step => {
            Fenced::OutOfOrder(format!("{what}, but the saga waits for {}", expected.message_type()))
        }
        // Compensation walks the steps downwards, so a higher step is one already compensated.
        _ if (s > step) == compensating && s != step => Fenced::Duplicate(format!("{what}: that step is done")),
        _ if s == step && a < attempt => Fenced::Stale(format!("{what}: superseded by attempt {attempt}")),
        _ => Fenced::OutOfOrder(format!("{what}, which has not been sent")),
    })
}

/// Fences a timer: it applies only to the phase that set it.
fn fence_timer(
    current: Option<Deadline>,
    at: (u16, u32),
    waiting_for: DeadlineKind,
    timer: (u16, u32, DeadlineKind, DateTime<Utc>),
) -> Option<Fenced> {
    let (s, a, kind, due_at) = timer;
    let expected = Deadline { at: due_at, kind, step: s, attempt: a };
    let applies = (s, a, kind) == (at.0, at.1, waiting_for) && current == Some(expected);
    (!applies)
        .then(|| Fenced::Stale(format!("{kind:?} timer for step {s} attempt {a} due at {due_at} no longer applies")))
}

fn not_started() -> Fenced {
    Fenced::OutOfOrder("the saga has not started".to_owned())
}

/// The saga state machine. All data lives in the states and the context: the shared storage is empty.
#[derive(Debug, Default)]
struct Machine;

#[state_machine(
    initial = "State::started()",
    state(derive(Debug, Clone, Copy, PartialEq, Eq)),
    context_identifier = "ctx"
)]
impl Machine {
    #[state]
    fn started(ctx: &mut Ctx<'_>, event: &SagaEvent) -> Outcome<State> {
        match event {
            SagaEvent::Start => Transition(State::running(0, 1)),
            SagaEvent::Operator { action, reason } => ctx.operate(Phase::Started, *action, reason),
            _ => ctx.ignore(not_started()),
        }
    }

    #[state(entry_action = "enter_running")]
    fn running(ctx: &mut Ctx<'_>, step: &mut u16, attempt: &mut u32, event: &SagaEvent) -> Outcome<State> {
        let (step, attempt) = (*step, *attempt);
        let expected = ctx.step(step).command;
        match event {
            SagaEvent::Operator { action, reason } => ctx.operate(Phase::Running { step, attempt }, *action, reason),
            SagaEvent::Start => ctx.ignore(Fenced::Duplicate("the saga is already running".to_owned())),
            SagaEvent::Reply { step: s, attempt: a, command, reply } => {
                if let Some(fence) = fence_reply((step, attempt), expected, false, (*s, *a, *command)) {
                    return ctx.ignore(fence);
                }
                on_step_reply(ctx, step, attempt, reply)
            }
            SagaEvent::Timer { step: s, attempt: a, kind, due_at } => {
                if let Some(fence) =
                    fence_timer(ctx.deadline, (step, attempt), DeadlineKind::StepTimeout, (*s, *a, *kind, *due_at))
                {
                    return ctx.ignore(fence);
                }
                let timeout = ctx.step(step).timeout;
                ctx.retry_or_give_up(step, attempt, &format!("no reply within {timeout:?}"))
            }
        }
    }

    #[action]
    fn enter_running(ctx: &mut Ctx<'_>, step: &mut u16, attempt: &mut u32) {
        if ctx.restoring {
            return;
        }
        if *attempt == 1 {
            ctx.attempt_floor = 0;
        }
        let def = ctx.step(*step);
        let (command, timeout) = (def.command, def.timeout);
        ctx.actions.push(Action::Send { step: *step, attempt: *attempt, command });
        ctx.set_deadline(timeout, DeadlineKind::StepTimeout, *step, *attempt);
    }

    #[state(entry_action = "enter_backoff")]
    fn backoff(ctx: &mut Ctx<'_>, step: &mut u16, attempt: &mut u32, event: &SagaEvent) -> Outcome<State> {
        let (step, attempt) = (*step, *attempt);
        match event {
            SagaEvent::Timer { step: s, attempt: a, kind, due_at } => {
                match fence_timer(ctx.deadline, (step, attempt), DeadlineKind::RetryDue, (*s, *a, *kind, *due_at)) {
                    Some(fence) => ctx.ignore(fence),
                    None => Transition(State::running(step, attempt)),
                }
            }
            SagaEvent::Reply { step: s, attempt: a, command, .. } => {
                let expected = ctx.step(step).command;
                // Nothing of the next attempt is out yet, so any reply is for an earlier one (or unexpected).
                let fence = fence_reply((step, attempt), expected, false, (*s, *a, *command))
                    .unwrap_or_else(|| Fenced::OutOfOrder(format!("reply for attempt {a}, which has not been sent")));
                ctx.ignore(fence)
            }
            SagaEvent::Operator { action, reason } => ctx.operate(Phase::Backoff { step, attempt }, *action, reason),
            SagaEvent::Start => ctx.ignore(Fenced::Duplicate("the saga is already running".to_owned())),
        }
    }

    #[action]
    fn enter_backoff(ctx: &mut Ctx<'_>, step: &mut u16, attempt: &mut u32) {
        if ctx.restoring {
            return;
        }
        let wait = ctx.step(*step).retry.backoff_before(attempt.saturating_sub(ctx.attempt_floor));
        ctx.set_deadline(wait, DeadlineKind::RetryDue, *step, *attempt);
    }

    #[state(entry_action = "enter_compensating")]
    fn compensating(ctx: &mut Ctx<'_>, step: &mut u16, attempt: &mut u32, event: &SagaEvent) -> Outcome<State> {
        let (step, attempt) = (*step, *attempt);
        let expected = ctx.step(step).compensation.expect("only steps with a compensation are compensated");
        match event {
            SagaEvent::Operator { action, reason } => {
                ctx.operate(Phase::Compensating { step, attempt }, *action, reason)
            }
            SagaEvent::Start => ctx.ignore(Fenced::Duplicate("the saga is already running".to_owned())),
            SagaEvent::Reply { step: s, attempt: a, command, reply } => {
                if let Some(fence) = fence_reply((step, attempt), expected, true, (*s, *a, *command)) {
                    return ctx.ignore(fence);
                }
                match reply {
                    Reply::Succeeded { .. } => ctx.compensate_from(step.checked_sub(1)),
                    Reply::Failed { reason, .. } => ctx.compensation_retry_or_park(step, attempt, reason),
                }
            }
            SagaEvent::Timer { step: s, attempt: a, kind, due_at } => {
                if let Some(fence) =
                    fence_timer(ctx.deadline, (step, attempt), DeadlineKind::StepTimeout, (*s, *a, *kind, *due_at))
                {
                    return ctx.ignore(fence);
                }
                let timeout = ctx.step(step).timeout;
                ctx.compensation_retry_or_park(step, attempt, &format!("no reply within {timeout:?}"))
            }
        }
    }

    #[action]
    fn enter_compensating(ctx: &mut Ctx<'_>, step: &mut u16, attempt: &mut u32) {
        if ctx.restoring {
            return;
        }
        if *attempt == 1 {
            ctx.attempt_floor = 0;
        }
        let def = ctx.step(*step);
        let (command, timeout) = (def.compensation.expect("compensated steps have a compensation"), def.timeout);
        ctx.actions.push(Action::Send { step: *step, attempt: *attempt, command });
        ctx.set_deadline(timeout, DeadlineKind::StepTimeout, *step, *attempt);
    }

    #[state(entry_action = "enter_compensation_backoff")]
    fn compensation_backoff(ctx: &mut Ctx<'_>, step: &mut u16, attempt: &mut u32, event: &SagaEvent) -> Outcome<State> {
        let (step, attempt) = (*step, *attempt);
        match event {
            SagaEvent::Timer { step: s, attempt: a, kind, due_at } => {
                match fence_timer(ctx.deadline, (step, attempt), DeadlineKind::RetryDue, (*s, *a, *kind, *due_at)) {
                    Some(fence) => ctx.ignore(fence),
                    None => Transition(State::compensating(step, attempt)),
                }
            }
            SagaEvent::Reply { step: s, attempt: a, command, .. } => {
                let expected = ctx.step(step).compensation.expect("compensated steps have a compensation");
                let fence = fence_reply((step, attempt), expected, true, (*s, *a, *command))
                    .unwrap_or_else(|| Fenced::OutOfOrder(format!("reply for attempt {a}, which has not been sent")));
                ctx.ignore(fence)
            }
            SagaEvent::Operator { action, reason } => {
                ctx.operate(Phase::CompensationBackoff { step, attempt }, *action, reason)
            }
            SagaEvent::Start => ctx.ignore(Fenced::Duplicate("the saga is already running".to_owned())),
        }
    }

    #[action]
    fn enter_compensation_backoff(ctx: &mut Ctx<'_>, step: &mut u16, attempt: &mut u32) {
        if ctx.restoring {
            return;
        }
        let wait = ctx.def.compensation_retry.backoff_before(attempt.saturating_sub(ctx.attempt_floor));
        ctx.set_deadline(wait, DeadlineKind::RetryDue, *step, *attempt);
    }

    #[state(entry_action = "enter_terminal")]
    fn completed(ctx: &mut Ctx<'_>, event: &SagaEvent) -> Outcome<State> {
        match event {
            SagaEvent::Operator { action, reason } => ctx.operate(Phase::Completed, *action, reason),
            _ => ctx.ignore(Fenced::Terminal("the saga is COMPLETED".to_owned())),
        }
    }

    #[state(entry_action = "enter_terminal")]
    fn compensated(ctx: &mut Ctx<'_>, event: &SagaEvent) -> Outcome<State> {
        match event {
            SagaEvent::Operator { action, reason } => ctx.operate(Phase::Compensated, *action, reason),
            _ => ctx.ignore(Fenced::Terminal("the saga is COMPENSATED".to_owned())),
        }
    }

    #[state(entry_action = "enter_terminal")]
    fn failed(ctx: &mut Ctx<'_>, event: &SagaEvent) -> Outcome<State> {
        match event {
            SagaEvent::Operator { action, reason } => ctx.operate(Phase::Failed, *action, reason),
            _ => ctx.ignore(Fenced::Terminal("the saga is FAILED (parked for an operator)".to_owned())),
        }
    }

    #[state(entry_action = "enter_terminal")]
    fn resolved(ctx: &mut Ctx<'_>, event: &SagaEvent) -> Outcome<State> {
        match event {
            SagaEvent::Operator { action, reason } => ctx.operate(Phase::Resolved, *action, reason),
            _ => ctx.ignore(Fenced::Terminal("the saga is RESOLVED".to_owned())),
        }
    }

    #[action]
    fn enter_terminal(ctx: &mut Ctx<'_>) {
        ctx.deadline = None;
    }
}

/// A reply that matches the awaited forward command.
fn on_step_reply(ctx: &mut Ctx<'_>, step: u16, attempt: u32, reply: &Reply) -> Outcome<State> {
    let def = ctx.step(step);
    let (name, kind) = (def.name, def.kind);
    match reply {
        Reply::Succeeded { .. } if step + 1 < ctx.def.len() => Transition(State::running(step + 1, 1)),
        Reply::Succeeded { .. } => Transition(State::completed()),
        Reply::Failed { kind: FailureKind::Transient, reason } => ctx.retry_or_give_up(step, attempt, reason),
        Reply::Failed { kind: FailureKind::Business, reason } => {
            let reason = format!("step {name} failed: {reason}");
            if kind == StepKind::Retriable {
                // Parked where an operator's retry resumes it (once the cause is fixed by hand).
                return ctx.park(Phase::Running { step, attempt }, reason);
            }
            ctx.reason = Some(reason);
            // A business failure means the participant made no change: undo the steps before this one.
            ctx.compensate_from(step.checked_sub(1))
        }
    }
}

impl From<Phase> for State {
    fn from(phase: Phase) -> Self {
        match phase {
            Phase::Started => State::started(),
            Phase::Running { step, attempt } => State::running(step, attempt),
            Phase::Backoff { step, attempt } => State::backoff(step, attempt),
            Phase::Compensating { step, attempt } => State::compensating(step, attempt),
            Phase::CompensationBackoff { step, attempt } => State::compensation_backoff(step, attempt),
            Phase::Completed => State::completed(),
            Phase::Compensated => State::compensated(),
            Phase::Failed => State::failed(),
            Phase::Resolved => State::resolved(),
        }
    }
}

impl From<&State> for Phase {
    fn from(state: &State) -> Self {
        match *state {
            State::Started {} => Phase::Started,
            State::Running { step, attempt } => Phase::Running { step, attempt },
            State::Backoff { step, attempt } => Phase::Backoff { step, attempt },
            State::Compensating { step, attempt } => Phase::Compensating { step, attempt },
            State::CompensationBackoff { step, attempt } => Phase::CompensationBackoff { step, attempt },
            State::Completed {} => Phase::Completed,
            State::Compensated {} => Phase::Compensated,
            State::Failed {} => Phase::Failed,
            State::Resolved {} => Phase::Resolved,
        }
    }
}
