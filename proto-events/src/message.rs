//! A typed message: building one (validated before it can be sent) and decoding one (validated after it is
//! received; payloads of older schema versions are upcast to the current types).

use garde::Validate;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::commands::{
    CancelShipment, ChargePayment, Command, CommandKind, CreateShipment, RefundPayment, ReleaseStock, ReserveStock,
};
use crate::envelope::{Envelope, Meta};
use crate::events::{OperatorCommand, SagaTransitioned, StartSaga, TimerFired};
use crate::registry::{self, OPERATOR, START, TIMER, TRANSITIONED};
use crate::replies::Reply;

/// What a message says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Body {
    /// A command to a participant.
    Command(Command),
    /// A participant's reply to a command of kind `command`.
    Reply {
        /// The command answered.
        command: CommandKind,
        /// The outcome.
        reply: Reply,
    },
    /// A saga lifecycle event.
    Transitioned(SagaTransitioned),
    /// Start a stored saga.
    Start(StartSaga),
    /// A saga's deadline passed.
    Timer(TimerFired),
    /// An operator's action.
    Operator(OperatorCommand),
}

impl Body {
    /// The message type.
    pub fn message_type(&self) -> &'static str {
        match self {
            Body::Command(c) => c.kind().message_type(),
            Body::Reply { command, .. } => command.reply_type(),
            Body::Transitioned(_) => TRANSITIONED,
            Body::Start(_) => START,
            Body::Timer(_) => TIMER,
            Body::Operator(_) => OPERATOR,
        }
    }

    fn payload(&self) -> serde_json::Value {
        fn json<T: Serialize>(value: &T) -> serde_json::Value {
            serde_json::to_value(value).expect("payload types serialize to JSON")
        }
        match self {
            Body::Command(Command::InventoryReserve(p)) => json(p),
            Body::Command(Command::InventoryRelease(p)) => json(p),
            Body::Command(Command::PaymentCharge(p)) => json(p),
            Body::Command(Command::PaymentRefund(p)) => json(p),
            Body::Command(Command::ShippingCreate(p)) => json(p),
            Body::Command(Command::ShippingCancel(p)) => json(p),
            Body::Reply { reply, .. } => json(reply),
            Body::Transitioned(p) => json(p),
            Body::Start(p) => json(p),
            Body::Timer(p) => json(p),
            Body::Operator(p) => json(p),
        }
    }

    fn validate(&self) -> Result<(), garde::Report> {
        match self {
            Body::Command(Command::InventoryReserve(p)) => p.validate(),
            Body::Command(Command::InventoryRelease(p)) => p.validate(),
            Body::Command(Command::PaymentCharge(p)) => p.validate(),
            Body::Command(Command::PaymentRefund(p)) => p.validate(),
            Body::Command(Command::ShippingCreate(p)) => p.validate(),
            Body::Command(Command::ShippingCancel(p)) => p.validate(),
            Body::Reply { reply, .. } => reply.validate(),
            Body::Transitioned(p) => p.validate(),
            Body::Start(p) => p.validate(),
            Body::Timer(p) => p.validate(),
            Body::Operator(p) => p.validate(),
        }
    }
}

/// A message that failed validation or decoding. The text names the message type and field paths, and
/// never echoes field values (they may be personal data).
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// Not a JSON envelope.
    #[error("not a message envelope: {0}")]
    Envelope(String),
    /// A message type nobody defined.
    #[error("unknown message type {0:?}")]
    UnknownType(String),
    /// A version of the type this build cannot read.
    #[error("{message_type} schema version {version} is not supported (this build reads {oldest} to {current})")]
    UnsupportedVersion { message_type: String, version: u16, oldest: u16, current: u16 },
    /// The payload does not have the type's shape.
    #[error("{message_type} v{version} payload does not decode: {reason}")]
    Payload { message_type: String, version: u16, reason: String },
    /// The message decodes but breaks a validation rule.
    #[error("{message_type} is invalid: {report}")]
    Invalid { message_type: String, report: String },
}

/// A decoded, validated message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// Routing and causality metadata.
    pub meta: Meta,
    /// What it says.
    pub body: Body,
}

impl Message {
    /// A message ready to send, once it passes validation.
    pub fn new(meta: Meta, body: Body) -> Result<Self, DecodeError> {
        let message = Self { meta, body };
        message.check()?;
        Ok(message)
    }

    fn check(&self) -> Result<(), DecodeError> {
        let invalid = |report: garde::Report| DecodeError::Invalid {
            message_type: self.body.message_type().to_owned(),
            report: one_line(&report),
        };
        self.meta.validate().map_err(invalid)?;
        self.body.validate().map_err(invalid)
    }

    /// The wire form, with the current schema version of the message's type.
    pub fn to_envelope(&self) -> Envelope {
        let message_type = self.body.message_type();
        Envelope {
            meta: self.meta.clone(),
            message_type: message_type.to_owned(),
            schema_version: registry::current_version(message_type).expect("every body type is registered"),
            payload: self.body.payload(),
        }
    }

    /// The JSON bytes sent on the wire.
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(&self.to_envelope()).expect("envelopes serialize to JSON")
    }

    /// Decodes and validates a message received from the wire.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let envelope: Envelope = serde_json::from_slice(bytes).map_err(|e| DecodeError::Envelope(redacted(&e)))?;
        Self::from_envelope(envelope)
    }

    /// Decodes and validates an envelope, upcasting older payload versions.
    pub fn from_envelope(envelope: Envelope) -> Result<Self, DecodeError> {
        let Envelope { meta, message_type, schema_version, payload } = envelope;
        let info = registry::find(&message_type).ok_or_else(|| DecodeError::UnknownType(message_type.clone()))?;
        if !(info.oldest..=info.current).contains(&schema_version) {
            return Err(DecodeError::UnsupportedVersion {
                message_type,
                version: schema_version,
                oldest: info.oldest,
                current: info.current,
            });
        }
        if !payload.is_object() {
            // Serde would also accept a JSON array for a struct; the schema says object, and so does this.
            return Err(DecodeError::Payload {
                message_type,
                version: schema_version,
                reason: "at `.`: not a JSON object".to_owned(),
            });
        }
        let body = decode_body(&message_type, schema_version, payload)?;
        let message = Self { meta, body };
        message.check()?;
        Ok(message)
    }
}

/// A validation report on one line (`path: problem; path: problem`), fit for a log line or a Kafka header.
/// Garde's messages name the rule broken (`length is lower than 1`), never the value.
fn one_line(report: &garde::Report) -> String {
    let problems: Vec<String> = report
        .iter()
        .map(|(path, error)| if path.is_empty() { error.to_string() } else { format!("{path}: {error}") })
        .collect();
    problems.join("; ")
}

/// A serde error without the offending value (which may be personal data): its category and, when it comes
/// from bytes, its position. A missing field is named, since field names come from the schema, not the input.
fn redacted(error: &serde_json::Error) -> String {
    let what = match error.classify() {
        serde_json::error::Category::Io => "I/O error",
        serde_json::error::Category::Syntax => "malformed JSON",
        serde_json::error::Category::Data => "unexpected shape",
        serde_json::error::Category::Eof => "truncated JSON",
    };
    let text = error.to_string();
    let position = format!(" at line {} column {}", error.line(), error.column());
    let message = text.strip_suffix(&position).unwrap_or(&text);
    let missing_field = message.strip_prefix("missing field `").and_then(|rest| rest.strip_suffix('`'));
    let what = match missing_field {
        Some(field) if !field.contains('`') => message,
        _ => what,
    };
    // Errors from a `serde_json::Value` (payloads) have no position: line 0.
    if error.line() == 0 { what.to_owned() } else { format!("{what}{position}") }
}

fn decode_body(message_type: &str, version: u16, payload: serde_json::Value) -> Result<Body, DecodeError> {
    fn typed<T: DeserializeOwned>(
        message_type: &str,
        version: u16,
        payload: serde_json::Value,
    ) -> Result<T, DecodeError> {
        serde_path_to_error::deserialize(payload).map_err(|e| DecodeError::Payload {
            message_type: message_type.to_owned(),
            version,
            reason: format!("at `{}`: {}", e.path(), redacted(e.inner())),
        })
    }
    // Every type is at version 1. When a type gets a version 2, its version-1 arm decodes the old struct and
    // upcasts it to the current one here.
    if let Some(kind) = CommandKind::from_message_type(message_type) {
        let command = match kind {
            CommandKind::InventoryReserve => {
                Command::InventoryReserve(typed::<ReserveStock>(message_type, version, payload)?)
            }
            CommandKind::InventoryRelease => {
                Command::InventoryRelease(typed::<ReleaseStock>(message_type, version, payload)?)
            }
            CommandKind::PaymentCharge => {
                Command::PaymentCharge(typed::<ChargePayment>(message_type, version, payload)?)
            }
            CommandKind::PaymentRefund => {
                Command::PaymentRefund(typed::<RefundPayment>(message_type, version, payload)?)
            }
            CommandKind::ShippingCreate => {
                Command::ShippingCreate(typed::<CreateShipment>(message_type, version, payload)?)
            }
            CommandKind::ShippingCancel => {
                Command::ShippingCancel(typed::<CancelShipment>(message_type, version, payload)?)
            }
        };
        return Ok(Body::Command(command));
    }
    if let Some(command) = CommandKind::from_reply_type(message_type) {
        return Ok(Body::Reply { command, reply: typed(message_type, version, payload)? });
    }
    match message_type {
        TRANSITIONED => Ok(Body::Transitioned(typed(message_type, version, payload)?)),
        START => Ok(Body::Start(typed(message_type, version, payload)?)),
        TIMER => Ok(Body::Timer(typed(message_type, version, payload)?)),
        OPERATOR => Ok(Body::Operator(typed(message_type, version, payload)?)),
        other => Err(DecodeError::UnknownType(other.to_owned())),
    }
}
