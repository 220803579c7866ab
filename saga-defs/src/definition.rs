//! Saga definitions as data, and their static validation.

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use proto_events::{CommandKind, Participant};
use serde::Serialize;

/// What a step's failure means for the saga (Garcia-Molina and Salem's classification).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StepKind {
    /// May fail; undone by its compensation when a later step fails.
    Compensatable,
    /// The go/no-go step: once it succeeds the saga runs to completion. Its compensation, if any, is sent
    /// only when its outcome is unknown (its retries were exhausted without an answer).
    Pivot,
    /// After the pivot: retried until it succeeds; exhausting its retries parks the saga for an operator.
    Retriable,
}

/// How often and how patiently a command is retried when it times out or fails transiently.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct RetryPolicy {
    /// Attempts in all, the first included.
    pub max_attempts: u32,
    /// Wait before the second attempt.
    #[serde(serialize_with = "millis")]
    pub initial_backoff: Duration,
    /// Each wait is this many times the previous one.
    pub multiplier: f32,
    /// No wait is longer than this.
    #[serde(serialize_with = "millis")]
    pub max_backoff: Duration,
}

fn millis<S: serde::Serializer>(duration: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_u64(u64::try_from(duration.as_millis()).unwrap_or(u64::MAX))
}

impl RetryPolicy {
    /// The wait before attempt `next_attempt` (2 or more): exponential, capped, without jitter so that the
    /// saga core stays deterministic.
    pub fn backoff_before(&self, next_attempt: u32) -> Duration {
        let index = usize::try_from(next_attempt.saturating_sub(2)).unwrap_or(usize::MAX);
        ExponentialBuilder::default()
            .with_min_delay(self.initial_backoff)
            .with_max_delay(self.max_backoff)
            .with_factor(self.multiplier)
            .with_max_times(index.saturating_add(1))
            .build()
            .nth(index)
            .unwrap_or(self.max_backoff)
    }
}

/// One step of a saga.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StepDef {
    /// Unique within the definition, such as `reserve_stock`.
    pub name: &'static str,
    /// Who carries it out.
    pub participant: Participant,
    /// The command that does the step.
    pub command: CommandKind,
    /// The command that undoes it, if it can be undone.
    pub compensation: Option<CommandKind>,
    /// What its failure means.
    pub kind: StepKind,
    /// Retries of the command.
    pub retry: RetryPolicy,
    /// How long to wait for a reply before the attempt counts as failed.
    #[serde(serialize_with = "millis")]
    pub timeout: Duration,
}

/// A saga definition: a name, a version and ordered steps.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Definition {
    /// The saga's name, such as `order_fulfilment`.
    pub name: &'static str,
    /// Bumped whenever the steps change; a stored saga keeps the version it started with.
    pub version: u32,
    /// The steps, run in order; compensated newest first.
    pub steps: Vec<StepDef>,
    /// Retries of compensation commands (which must eventually succeed; exhausting them parks the saga).
    pub compensation_retry: RetryPolicy,
}

/// Why a definition is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The definition has no steps, or more than the envelope can number.
    #[error("saga {name} must have between 1 and 64 steps, has {count}")]
    StepCount { name: &'static str, count: usize },
    /// Two steps share a name.
    #[error("saga {name} has two steps named {step}")]
    DuplicateStep { name: &'static str, step: &'static str },
    /// More than one pivot.
    #[error("saga {name} has more than one pivot step")]
    TwoPivots { name: &'static str },
    /// A step that may need undoing cannot be undone.
    #[error("saga {name}: step {step} comes before the pivot (or there is none) but has no compensation")]
    MissingCompensation { name: &'static str, step: &'static str },
    /// A step after the pivot is not retriable.
    #[error("saga {name}: step {step} comes after the pivot and must be retriable")]
    NotRetriableAfterPivot { name: &'static str, step: &'static str },
    /// A command is sent to a participant that does not handle it.
    #[error("saga {name}: step {step} names participant {participant:?} but command {command:?} belongs to another")]
    WrongParticipant { name: &'static str, step: &'static str, participant: Participant, command: CommandKind },
    /// A retry policy or timeout that cannot work.
    #[error("saga {name}: step {step}: {problem}")]
    BadPolicy { name: &'static str, step: &'static str, problem: &'static str },
}

impl Definition {
    /// Refuses a definition that could leave work undone: see [`Error`]. Run at start-up.
    pub fn validate(&self) -> Result<(), Error> {
        let name = self.name;
        if self.steps.is_empty() || self.steps.len() > 64 {
            return Err(Error::StepCount { name, count: self.steps.len() });
        }
        for (i, step) in self.steps.iter().enumerate() {
            if self.steps[..i].iter().any(|s| s.name == step.name) {
                return Err(Error::DuplicateStep { name, step: step.name });
            }
            self.validate_step(step)?;
        }
        check_policy(name, "compensation", &self.compensation_retry)?;
        let pivots: Vec<usize> =
            self.steps.iter().enumerate().filter(|(_, s)| s.kind == StepKind::Pivot).map(|(i, _)| i).collect();
        if pivots.len() > 1 {
            return Err(Error::TwoPivots { name });
        }
        let pivot = pivots.first().copied().unwrap_or(self.steps.len());
        for step in &self.steps[..pivot] {
            if step.kind != StepKind::Compensatable || step.compensation.is_none() {
                return Err(Error::MissingCompensation { name, step: step.name });
            }
        }
        for step in self.steps.iter().skip(pivot + 1) {
            if step.kind != StepKind::Retriable {
                return Err(Error::NotRetriableAfterPivot { name, step: step.name });
            }
        }
        Ok(())
    }

    fn validate_step(&self, step: &StepDef) -> Result<(), Error> {
        for command in std::iter::once(step.command).chain(step.compensation) {
            if command.participant() != step.participant {
                let (name, participant) = (self.name, step.participant);
                return Err(Error::WrongParticipant { name, step: step.name, participant, command });
            }
        }
        if step.timeout.is_zero() {
            return Err(Error::BadPolicy { name: self.name, step: step.name, problem: "timeout must be positive" });
        }
        check_policy(self.name, step.name, &step.retry)
    }

    /// The step at `index`, if there is one.
    pub fn step(&self, index: u16) -> Option<&StepDef> {
        self.steps.get(usize::from(index))
    }

    /// The number of steps.
    pub fn len(&self) -> u16 {
        u16::try_from(self.steps.len()).unwrap_or(u16::MAX)
    }

    /// Whether there are no steps (never true of a valid definition).
    pub fn is_empty(&self) -> bool {
        self.steps.is_empty()
    }
}

fn check_policy(name: &'static str, step: &'static str, policy: &RetryPolicy) -> Result<(), Error> {
    let problem = if !(1..=100).contains(&policy.max_attempts) {
        "max_attempts must be between 1 and 100"
    } else if policy.multiplier.is_nan() || policy.multiplier < 1.0 {
        "multiplier must be at least 1"
    } else if policy.initial_backoff > policy.max_backoff {
        "initial_backoff must not exceed max_backoff"
    } else {
        return Ok(());
    };
    Err(Error::BadPolicy { name, step, problem })
}

/// The order-fulfilment saga: reserve stock (released on compensation), charge payment (refunded), create
/// the shipment (the pivot; cancelled only if its outcome is unknown). `step_timeout` applies to every step.
pub fn order_fulfilment(step_timeout: Duration) -> Definition {
    let retry = RetryPolicy {
        max_attempts: 3,
        initial_backoff: Duration::from_millis(200),
        multiplier: 2.0,
        max_backoff: Duration::from_secs(2),
    };
    let step = |name, participant, command, compensation, kind| StepDef {
        name,
        participant,
        command,
        compensation: Some(compensation),
        kind,
        retry,
        timeout: step_timeout,
    };
    Definition {
        name: "order_fulfilment",
        version: 1,
        steps: vec![
            step(
                "reserve_stock",
                Participant::Inventory,
                CommandKind::InventoryReserve,
                CommandKind::InventoryRelease,
                StepKind::Compensatable,
            ),
            step(
                "charge_payment",
                Participant::Payment,
                CommandKind::PaymentCharge,
                CommandKind::PaymentRefund,
                StepKind::Compensatable,
            ),
            step(
                "create_shipment",
                Participant::Shipping,
                CommandKind::ShippingCreate,
                CommandKind::ShippingCancel,
                StepKind::Pivot,
            ),
        ],
        compensation_retry: RetryPolicy {
            max_attempts: 20,
            initial_backoff: Duration::from_millis(500),
            multiplier: 2.0,
            max_backoff: Duration::from_secs(30),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn order() -> Definition {
        order_fulfilment(Duration::from_secs(10))
    }

    #[test]
    fn the_order_fulfilment_saga_is_valid() {
        assert_eq!(order().validate(), Ok(()));
    }

    #[test]
    fn a_step_before_the_pivot_without_compensation_is_refused() {
        let mut def = order();
        def.steps[1].compensation = None;
        assert_eq!(
            def.validate(),
            Err(Error::MissingCompensation { name: "order_fulfilment", step: "charge_payment" })
        );
    }

    #[test]
    fn without_a_pivot_every_step_needs_a_compensation() {
        let mut def = order();
        def.steps[2].kind = StepKind::Compensatable;
        def.steps[2].compensation = None;
        assert!(matches!(def.validate(), Err(Error::MissingCompensation { step: "create_shipment", .. })));
    }

    #[test]
    fn duplicate_step_names_are_refused() {
        let mut def = order();
        def.steps[2].name = "reserve_stock";
        assert!(matches!(def.validate(), Err(Error::DuplicateStep { step: "reserve_stock", .. })));
    }

    #[test]
    fn two_pivots_and_non_retriable_steps_after_the_pivot_are_refused() {
        let mut def = order();
        def.steps[1].kind = StepKind::Pivot;
        assert!(matches!(def.validate(), Err(Error::TwoPivots { .. })));

        let mut def = order();
        def.steps[1].kind = StepKind::Pivot;
        def.steps[2].kind = StepKind::Compensatable;
        assert!(matches!(def.validate(), Err(Error::NotRetriableAfterPivot { step: "create_shipment", .. })));
        def.steps[2].kind = StepKind::Retriable;
        assert_eq!(def.validate(), Ok(()));
    }

    #[test]
    fn a_command_for_another_participant_is_refused() {
        let mut def = order();
        def.steps[0].compensation = Some(CommandKind::PaymentRefund);
        assert!(matches!(def.validate(), Err(Error::WrongParticipant { step: "reserve_stock", .. })));
    }

    #[test]
    fn empty_definitions_and_bad_policies_are_refused() {
        let mut def = order();
        def.steps.clear();
        assert!(matches!(def.validate(), Err(Error::StepCount { count: 0, .. })));

        let mut def = order();
        def.steps[0].retry.max_attempts = 0;
        assert!(matches!(def.validate(), Err(Error::BadPolicy { step: "reserve_stock", .. })));
        let mut def = order();
        def.steps[0].timeout = Duration::ZERO;
        assert!(matches!(def.validate(), Err(Error::BadPolicy { .. })));
        let mut def = order();
        def.compensation_retry.multiplier = 0.5;
        assert!(matches!(def.validate(), Err(Error::BadPolicy { step: "compensation", .. })));
    }

    #[test]
    fn backoff_grows_exponentially_up_to_the_cap() {
        let policy = RetryPolicy {
            max_attempts: 10,
            initial_backoff: Duration::from_millis(100),
            multiplier: 2.0,
            max_backoff: Duration::from_millis(500),
        };
        let waits: Vec<u128> = (2..=6).map(|a| policy.backoff_before(a).as_millis()).collect();
        assert_eq!(waits, [100, 200, 400, 500, 500]);
    }
}
