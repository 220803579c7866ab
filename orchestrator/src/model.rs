//! The orchestrator's records: a saga with its order summary, outbox and pending timeline entries; the
//! order's personal data (kept apart so it can be purged); timeline entries.

use chrono::{DateTime, Utc};
use proto_events::commands::Currency;
use proto_events::{Address, CommandKind, OrderStatus, SagaTransitioned};
use saga_defs::SagaState;
use serde::{Deserialize, Serialize};
use serde_with::{DisplayFromStr, serde_as};
use uuid::Uuid;

/// One line of an order, with its price.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderLine {
    /// The SKU.
    pub sku: String,
    /// Units.
    pub quantity: u32,
    /// Price of one unit in the currency's minor unit.
    pub unit_price_cents: i64,
}

/// What the saga needs to know about the order, free of personal data.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderSummary {
    /// The lines.
    pub items: Vec<OrderLine>,
    /// The total to charge.
    pub amount_cents: i64,
    /// The currency.
    pub currency: Currency,
    /// Keyed hash of the customer id.
    pub customer_ref: String,
}

/// The order's personal and payment data, stored apart from the saga (`orders_pii`) so that it never
/// reaches events or logs and can be purged once the order is finished.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderPii {
    /// The customer's id.
    pub customer_id: String,
    /// The customer's email address.
    pub email: String,
    /// Where to ship.
    pub shipping_address: Address,
    /// The payment provider's token.
    pub payment_token: String,
}

/// A message the saga must send, kept in the saga document until it is published (the outbox).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Outgoing {
    /// A command to a participant.
    Command { command: CommandKind },
    /// The lifecycle event of a transition.
    Transitioned { event: SagaTransitioned },
    /// The message that makes the partition owner run a stored saga.
    Start,
}

/// One outbox entry.
#[serde_as]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutboxEntry {
    /// The id the message is published with (the same on every re-publication).
    #[serde_as(as = "DisplayFromStr")]
    pub message_id: Uuid,
    /// The message that caused it.
    #[serde_as(as = "Option<DisplayFromStr>")]
    pub causation_id: Option<Uuid>,
    /// When it was created.
    pub time: DateTime<Utc>,
    /// The step it is about.
    pub step: u16,
    /// The attempt it is about.
    pub attempt: u32,
    /// What to send.
    pub outgoing: Outgoing,
}

/// Where a message came from: its Kafka coordinates.
#[serde_as]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Received {
    /// The message id.
    #[serde_as(as = "DisplayFromStr")]
    pub message_id: Uuid,
    /// Its type.
    pub message_type: String,
    /// Topic, partition and offset it was read from.
    pub topic: String,
    /// Partition.
    pub partition: i32,
    /// Offset.
    pub offset: i64,
    /// The step it names.
    pub step: u16,
    /// The attempt it names.
    pub attempt: u32,
    /// For a reply: `succeeded`, or the failure kind and reason.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<String>,
}

/// A message sent by a transition.
#[serde_as]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sent {
    /// The message id.
    #[serde_as(as = "DisplayFromStr")]
    pub message_id: Uuid,
    /// Its type.
    pub message_type: String,
    /// The topic it goes to.
    pub topic: String,
    /// The step it is about.
    pub step: u16,
    /// The attempt it is about.
    pub attempt: u32,
    /// The partition it landed in, once published.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partition: Option<i32>,
    /// Its offset there, once published.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offset: Option<i64>,
}

/// What a timeline entry records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EntryKind {
    /// The saga was stored.
    Created,
    /// A message changed the saga.
    Transition,
    /// A message was fenced and ignored.
    Ignored,
}

/// One entry of a saga's append-only timeline (`saga_log`), numbered by the saga version it produced.
#[serde_as]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogEntry {
    /// The saga.
    #[serde_as(as = "DisplayFromStr")]
    pub saga_id: Uuid,
    /// The saga version this entry produced; unique per saga.
    pub seq: u64,
    /// When.
    pub at: DateTime<Utc>,
    /// What happened.
    pub kind: EntryKind,
    /// State before.
    pub from: String,
    /// State after.
    pub to: String,
    /// Step after, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step: Option<u16>,
    /// Attempt after, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempt: Option<u32>,
    /// The message that caused it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub received: Option<Received>,
    /// The messages it sent.
    #[serde(default)]
    pub sent: Vec<Sent>,
    /// Why a message was ignored, or why the saga compensates or is parked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// A saga as stored: state, version, order summary, outbox and timeline entries not yet flushed.
#[serde_as]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SagaRecord {
    /// The saga id, which is also the order id.
    #[serde_as(as = "DisplayFromStr")]
    pub id: Uuid,
    /// Increases by one with every change; writes are conditional on it.
    pub version: u64,
    /// The definition's name.
    pub definition: String,
    /// The definition's version.
    pub definition_version: u32,
    /// The state machine's state.
    pub state: SagaState,
    /// The partition of the saga's key: the orchestrator instance that owns it is the saga's only writer.
    pub partition: i32,
    /// Shared by every message of the order.
    #[serde_as(as = "DisplayFromStr")]
    pub correlation_id: Uuid,
    /// The W3C `traceparent` of the request that placed the order: messages the orchestrator sends of its
    /// own accord (timers, restarts, recovery) continue the order's trace with it. None for sagas stored
    /// before traces were kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
    /// The order, free of personal data.
    pub order: OrderSummary,
    /// When the saga was stored.
    pub created_at: DateTime<Utc>,
    /// When it last changed.
    pub updated_at: DateTime<Utc>,
    /// When it entered its current state.
    pub state_since: DateTime<Utc>,
    /// Messages to publish.
    pub outbox: Vec<OutboxEntry>,
    /// Timeline entries to append to the saga log.
    pub pending_log: Vec<LogEntry>,
}

impl SagaRecord {
    /// The order status customers see.
    pub fn status(&self) -> OrderStatus {
        self.state.status()
    }

    /// Whether the outbox or the timeline has entries not yet flushed.
    pub fn has_pending(&self) -> bool {
        !self.outbox.is_empty() || !self.pending_log.is_empty()
    }
}

#[cfg(test)]
impl SagaRecord {
    /// A settled saga at version 3 in `partition` and `phase`, in it since 2026-01-01, for unit tests.
    pub(crate) fn example(partition: i32, phase: saga_defs::Phase) -> Self {
        let at = DateTime::<Utc>::from_timestamp(1_767_225_600, 0).expect("a valid instant");
        Self {
            id: Uuid::now_v7(),
            version: 3,
            definition: "order_fulfilment".into(),
            definition_version: 1,
            state: SagaState { phase, ..SagaState::new() },
            partition,
            correlation_id: Uuid::now_v7(),
            traceparent: None,
            order: OrderSummary {
                items: Vec::new(),
                amount_cents: 100,
                currency: Currency::EUR,
                customer_ref: "ref".into(),
            },
            created_at: at,
            updated_at: at,
            state_since: at,
            outbox: Vec::new(),
            pending_log: Vec::new(),
        }
    }
}
