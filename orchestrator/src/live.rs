//! Live order status: every orchestrator instance reads all of `saga.event` (no consumer group: it keeps no
//! offsets and reads from the end) and fans each status change out to the server-sent-event streams of its
//! own clients. So a client can follow any order from any instance, whichever instance owns the saga. The
//! instance that owns the saga also hands each change to its own clients as soon as the transition is
//! durable, before publishing it (see [`crate::engine::Engine::with_live`]); streams send each saga version
//! once, so the copy read back from `saga.event` is skipped there.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use platform::kafka::KafkaSettings;
use proto_events::{Body, Message, OrderStatus, topics};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message as _;
use rdkafka::{Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// How many status changes a slow client may fall behind before it is re-synchronised from the store.
const CHANNEL_CAPACITY: usize = 4096;

/// A change of an order's status or saga state, as clients see it (no personal data).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusChange {
    /// The order.
    pub order_id: Uuid,
    /// Its status after the change.
    pub status: OrderStatus,
    /// The saga's state after the change.
    pub state: String,
    /// The step the saga is at, if any.
    pub step: Option<String>,
    /// Why it compensates, was cancelled or is parked.
    pub reason: Option<String>,
    /// The saga version after the change (the event id: resume with `Last-Event-ID`).
    pub version: u64,
    /// When it changed.
    pub at: DateTime<Utc>,
}

/// The status changes of every order, as this instance receives them.
#[derive(Debug, Clone)]
pub struct LiveEvents {
    sender: broadcast::Sender<StatusChange>,
}

impl Default for LiveEvents {
    fn default() -> Self {
        Self { sender: broadcast::channel(CHANNEL_CAPACITY).0 }
    }
}

impl StatusChange {
    /// The status change a `saga.event` message announces, if it is one.
    pub fn of(message: &Message) -> Option<Self> {
        let Body::Transitioned(event) = &message.body else { return None };
        Some(Self {
            order_id: message.meta.saga_id,
            status: event.status,
            state: event.to.clone(),
            step: event.step_name.clone(),
            reason: event.reason.clone(),
            version: event.version,
            at: message.meta.time,
        })
    }
}

impl LiveEvents {
    /// A receiver of every change published from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<StatusChange> {
        self.sender.subscribe()
    }

    /// Hands a change to every subscriber (none listening is fine).
    pub fn publish(&self, change: StatusChange) {
        let _ = self.sender.send(change);
    }
}

/// Reads `saga.event` from its end and publishes each transition to `live` until `shutdown`.
pub async fn run(settings: KafkaSettings, live: Arc<LiveEvents>, shutdown: CancellationToken) -> anyhow::Result<()> {
    let topic = settings.topic(topics::EVENT);
    let consumer: StreamConsumer = settings
        .consumer_config(&format!("orchestrator-live-{}", Uuid::now_v7().simple()))
        .set("enable.auto.commit", "false")
        .create()?;
    let partitions = {
        let consumer_topic = topic.clone();
        let metadata =
            tokio::task::block_in_place(|| consumer.fetch_metadata(Some(&consumer_topic), Duration::from_secs(10)))?;
        metadata.topics().first().map_or(0, |t| t.partitions().len())
    };
    let mut assignment = TopicPartitionList::new();
    for partition in 0..i32::try_from(partitions)? {
        assignment.add_partition_offset(&topic, partition, Offset::End)?;
    }
    consumer.assign(&assignment)?;
    tracing::info!(topic, partitions, "following saga events for live status");
    loop {
        let message = tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            message = consumer.recv() => message,
        };
        let message = match message {
            Ok(message) => message,
            Err(error) => {
                tracing::warn!(%error, "reading saga events failed");
                continue;
            }
        };
        let Ok(decoded) = Message::decode(message.payload().unwrap_or_default()) else { continue };
        if let Some(change) = StatusChange::of(&decoded) {
            live.publish(change);
        }
    }
}
