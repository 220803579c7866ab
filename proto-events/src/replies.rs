//! Replies from the participants: one message type per command (`<command>.reply`), all with the
//! [`Reply`] payload. A participant replies to a redelivered command with the reply it gave the first time.

use garde::Validate;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Why a command failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum FailureKind {
    /// The command is refused for good (not enough stock, payment declined, country not served); retrying
    /// cannot help. The participant made no change.
    Business,
    /// The participant could not do it now (its database is down, say); a later attempt may succeed.
    Transient,
}

/// The outcome of a command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema, Validate)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Reply {
    /// Done (or already done before).
    Succeeded {
        /// The participant's id for what it did (payment id, shipment id), when it has one.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        #[garde(length(chars, max = 100))]
        reference: Option<String>,
    },
    /// Not done.
    Failed {
        /// Whether retrying may help.
        #[garde(skip)]
        kind: FailureKind,
        /// What went wrong, for operators; never personal data.
        #[garde(length(chars, min = 1, max = 500))]
        reason: String,
    },
}

impl Reply {
    /// A success without a reference.
    pub fn ok() -> Self {
        Reply::Succeeded { reference: None }
    }

    /// A business failure.
    pub fn business(reason: impl Into<String>) -> Self {
        Reply::Failed { kind: FailureKind::Business, reason: reason.into() }
    }

    /// A transient failure.
    pub fn transient(reason: impl Into<String>) -> Self {
        Reply::Failed { kind: FailureKind::Transient, reason: reason.into() }
    }
}
