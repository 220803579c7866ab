//! Wire contracts of the order saga: the message envelope, the commands the orchestrator sends to the
//! participants, their replies, the saga lifecycle events and the orchestrator's own scheduling messages.
//! Pure data with serde and garde validation; no I/O and no async runtime, so every side of the wire links
//! the same definitions.
//!
//! - [`envelope`]: the envelope every message travels in, and the Kafka header names.
//! - [`commands`], [`replies`], [`events`]: the typed payloads, each with a message type and a schema version.
//! - [`message`]: building a message (validated) and decoding one (validated, older versions upcast).
//! - [`ids`]: new order and message ids (UUIDv7, or a seeded sequence inside a deterministic simulation).
//! - [`registry`]: every message type and version, for JSON Schema generation and compatibility tests.
//! - [`topics`]: topic names.
//!
//! Validation rules are written once, as `#[garde(...)]` attributes: schemars reads the same attributes
//! (`length`, `range`, `pattern`), so the committed JSON Schemas carry the constraints the code enforces.
//! String lengths count characters (`length(chars, ...)`), as JSON Schema's `minLength`/`maxLength` do. Rules
//! JSON Schema cannot express (`custom`, such as "each SKU at most once") are enforced only by the code.

pub mod commands;
pub mod envelope;
pub mod events;
pub mod ids;
pub mod message;
pub mod registry;
pub mod replies;
pub mod topics;

pub use commands::{Address, Command, CommandKind, Line, Participant};
pub use envelope::{Envelope, Meta};
pub use events::{
    DeadlineKind, OperatorCommand, OperatorVerb, OrderStatus, ResolvedAs, SagaTransitioned, StartSaga, TimerFired,
};
pub use message::{Body, DecodeError, Message};
pub use replies::{FailureKind, Reply};
