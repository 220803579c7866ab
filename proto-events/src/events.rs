//! Messages about sagas as a whole: the lifecycle event published on every transition (`saga.event`), and
//! the orchestrator's own scheduling messages, which travel on the saga's partition of `saga.reply` so that
//! the instance owning the partition is the only one that changes the saga.

use chrono::{DateTime, Utc};
use garde::Validate;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The status of an order, as customers see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum OrderStatus {
    /// The saga is running or compensating.
    Pending,
    /// Every step succeeded.
    Completed,
    /// A step failed for good and the finished steps were compensated.
    Cancelled,
    /// A compensation could not be completed: parked for an operator.
    Failed,
}

impl OrderStatus {
    /// Whether the order will not change any more by itself.
    pub fn is_terminal(self) -> bool {
        !matches!(self, OrderStatus::Pending)
    }

    /// The status as on the wire (`PENDING`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            OrderStatus::Pending => "PENDING",
            OrderStatus::Completed => "COMPLETED",
            OrderStatus::Cancelled => "CANCELLED",
            OrderStatus::Failed => "FAILED",
        }
    }
}

/// `saga.transitioned`: a saga moved from one state to another. Free of personal data.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema, Validate)]
pub struct SagaTransitioned {
    /// The saga definition's name.
    #[garde(length(chars, min = 1, max = 64))]
    pub definition: String,
    /// The saga definition's version.
    #[garde(range(min = 1))]
    pub definition_version: u32,
    /// The state before, such as `RUNNING`.
    #[garde(length(chars, min = 1, max = 32))]
    pub from: String,
    /// The state after.
    #[garde(length(chars, min = 1, max = 32))]
    pub to: String,
    /// The order status after the transition.
    #[garde(skip)]
    pub status: OrderStatus,
    /// The name of the step the saga is at after the transition, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[garde(length(chars, max = 64))]
    pub step_name: Option<String>,
    /// Why the saga is compensating or parked, if it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[garde(length(chars, max = 500))]
    pub reason: Option<String>,
    /// The saga's version after the transition (increases by one per change).
    #[garde(range(min = 1))]
    pub version: u64,
    /// Keyed hash of the customer id.
    #[garde(pattern(r"^[0-9a-f]{32}$"))]
    pub customer_ref: String,
}

/// `saga.start`: run a saga that has just been stored in state `STARTED`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema, Validate)]
pub struct StartSaga {}

/// What a deadline is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum DeadlineKind {
    /// The step's reply did not arrive in time.
    StepTimeout,
    /// The back-off before the next attempt is over.
    RetryDue,
}

/// `saga.timer`: a saga's deadline passed. Applies only if the saga is still at the envelope's step and
/// attempt, waiting for this kind of deadline.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema, Validate)]
pub struct TimerFired {
    /// What the deadline was for.
    #[garde(skip)]
    pub kind: DeadlineKind,
    /// When it was due.
    #[garde(skip)]
    pub due_at: DateTime<Utc>,
}

/// What an operator asks of a saga, in `saga.operator`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum OperatorVerb {
    /// Send the current step (or the compensation it was parked at) again, with a fresh retry budget.
    Retry,
    /// Compensate the finished steps (and the current one), newest first.
    Compensate,
    /// Close a parked saga with a recorded outcome.
    Resolve,
}

/// The outcome an operator records when resolving a parked saga.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ResolvedAs {
    /// Fulfilled after all.
    Completed,
    /// Off.
    Cancelled,
}

/// `saga.operator`: an operator's action on a saga. It travels through the saga's partition of
/// `saga.reply` like a reply, so the partition owner applies it in order; it applies only if the saga is
/// still at the version the operator saw.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema, Validate)]
pub struct OperatorCommand {
    /// What to do.
    #[garde(skip)]
    pub action: OperatorVerb,
    /// For `resolve`: the outcome to record.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[garde(skip)]
    pub outcome: Option<ResolvedAs>,
    /// Why, in the operator's words (recorded on the timeline).
    #[garde(length(chars, min = 1, max = 500))]
    pub reason: String,
    /// Who: the subject of the operator's token.
    #[garde(length(chars, min = 1, max = 128))]
    pub operator: String,
    /// The saga version the operator saw.
    #[garde(range(min = 1))]
    pub expected_version: u64,
}
