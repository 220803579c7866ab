//! The contract between the runtime and a participant's domain logic: the runtime hands over a decoded,
//! validated command of the domain's participant; the domain applies its effect idempotently and answers
//! with the reply to send, or with a transient error (the runtime then retries the whole command).

use std::future::Future;

use proto_events::{Command, CommandKind, Meta, Participant, Reply};

use crate::store;

/// Why a domain could not handle a command now.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The domain's store failed; retrying may help.
    #[error(transparent)]
    Store(#[from] store::Error),
    /// The command belongs to another participant (the runtime filters these out before).
    #[error("{participant} does not handle {command}", participant = .participant.name(), command = .command.message_type())]
    Misrouted {
        /// The participant asked.
        participant: Participant,
        /// The command it was given.
        command: CommandKind,
    },
}

impl Error {
    /// Whether retrying the same command may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self, Error::Store(_))
    }
}

/// What a domain answered to a command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Handled {
    /// The reply to send.
    pub reply: Reply,
    /// Whether the command had been handled before: nothing was done now, and `reply` is the saved one.
    pub duplicate: bool,
}

impl Handled {
    /// The command's effect was applied (or refused) now.
    pub fn applied(reply: Reply) -> Self {
        Self { reply, duplicate: false }
    }

    /// The command had been handled before; `reply` is the reply saved then.
    pub fn repeated(reply: Reply) -> Self {
        Self { reply, duplicate: true }
    }
}

/// A participant's domain logic, driven by the runtime.
///
/// `handle` must be idempotent per (saga id, command kind): a redelivered command repeats nothing and
/// answers the reply given the first time. Every call for one participant process comes from one task, one
/// at a time, so implementations may rely on being the only writer of the documents a command touches.
pub trait Domain: Send + Sync + 'static {
    /// The participant whose commands this domain handles.
    const PARTICIPANT: Participant;

    /// Applies `command` (of the saga in `meta`) and returns the reply to send.
    fn handle(&self, meta: &Meta, command: &Command) -> impl Future<Output = Result<Handled, Error>> + Send;
}

/// The error for a command that is not `participant`'s.
pub fn misrouted(participant: Participant, command: &Command) -> Error {
    Error::Misrouted { participant, command: command.kind() }
}
