//! The envelope every message travels in, and the Kafka header names that go with it.
//!
//! On the wire a message is the JSON of [`Envelope`]: routing and causality metadata plus the payload as a
//! JSON object, whose shape is given by `type` and `schema_version`. The Kafka key is the saga id.

use chrono::{DateTime, Utc};
use garde::Validate;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Kafka header names.
pub mod headers {
    /// W3C trace context of the span that produced the message.
    pub const TRACEPARENT: &str = "traceparent";
    /// W3C trace state, when present.
    pub const TRACESTATE: &str = "tracestate";
    /// The envelope's message type, so tools can route without parsing the body.
    pub const MESSAGE_TYPE: &str = "message-type";
    /// The envelope's message id.
    pub const MESSAGE_ID: &str = "message-id";
    /// On a dead letter: the topic it was read from.
    pub const DLQ_TOPIC: &str = "dlq-original-topic";
    /// On a dead letter: the partition it was read from.
    pub const DLQ_PARTITION: &str = "dlq-original-partition";
    /// On a dead letter: its offset in that partition.
    pub const DLQ_OFFSET: &str = "dlq-original-offset";
    /// On a dead letter: why it could not be processed.
    pub const DLQ_ERROR: &str = "dlq-error";
    /// On a dead letter: how many times processing was attempted.
    pub const DLQ_ATTEMPTS: &str = "dlq-attempts";
    /// On a dead letter: the service that gave up on it.
    pub const DLQ_SERVICE: &str = "dlq-service";
    /// On a dead letter: when it was dead-lettered (RFC 3339).
    pub const DLQ_FAILED_AT: &str = "dlq-failed-at";
}

/// Everything about a message but its payload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema, Validate)]
pub struct Meta {
    /// Unique per message (UUIDv7, so ids sort by creation time).
    #[garde(skip)]
    pub message_id: Uuid,
    /// The saga this message belongs to; also the Kafka key and the order id.
    #[garde(skip)]
    pub saga_id: Uuid,
    /// Index of the saga step the message is about (0 for messages about the saga as a whole).
    #[garde(range(max = 63))]
    pub step: u16,
    /// Attempt of that step, from 1; 0 for messages not tied to an attempt.
    #[garde(range(max = 1000))]
    pub attempt: u32,
    /// Shared by every message caused, directly or not, by one request.
    #[garde(skip)]
    pub correlation_id: Uuid,
    /// The message id of the message that caused this one; none for the first.
    #[garde(skip)]
    pub causation_id: Option<Uuid>,
    /// When the message was created.
    #[garde(skip)]
    pub time: DateTime<Utc>,
}

impl Meta {
    /// Metadata for a new message caused by `cause` (same saga and correlation), about `step` and `attempt`.
    pub fn caused_by(cause: &Meta, step: u16, attempt: u32, time: DateTime<Utc>) -> Self {
        Self {
            message_id: crate::ids::new_v7(),
            saga_id: cause.saga_id,
            step,
            attempt,
            correlation_id: cause.correlation_id,
            causation_id: Some(cause.message_id),
            time,
        }
    }
}

/// The wire form of a message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Envelope {
    /// Routing and causality metadata.
    #[serde(flatten)]
    pub meta: Meta,
    /// The message type, such as `inventory.reserve` (see [`crate::registry`]).
    #[serde(rename = "type")]
    pub message_type: String,
    /// The version of the payload's schema for that type.
    pub schema_version: u16,
    /// The payload, a JSON object whose shape `type` and `schema_version` give.
    #[schemars(with = "serde_json::Map<String, serde_json::Value>")]
    pub payload: serde_json::Value,
}
