//! The message bus port: publishing a message to a topic, keyed by its saga id. [`KafkaBus`] is the real
//! one; [`MemoryBus`] records what was published, for unit tests and the simulator.

use std::sync::{Mutex, PoisonError};

use async_trait::async_trait;
use platform::kafka::{Delivered, Publisher};
use proto_events::Message;

/// A publication that failed; retrying may succeed.
pub type Error = platform::kafka::Error;

/// Where messages go.
#[async_trait]
pub trait Bus: Send + Sync + std::fmt::Debug {
    /// Publishes `message` to `topic` (without prefix) and waits until it is durable.
    async fn publish(&self, topic: &str, message: &Message) -> Result<Delivered, Error>;
}

/// The bus on Kafka: an idempotent, `acks=all` producer.
#[derive(Debug, Clone)]
pub struct KafkaBus {
    publisher: Publisher,
}

impl KafkaBus {
    /// A bus publishing through `publisher`.
    pub fn new(publisher: Publisher) -> Self {
        Self { publisher }
    }
}

#[async_trait]
impl Bus for KafkaBus {
    async fn publish(&self, topic: &str, message: &Message) -> Result<Delivered, Error> {
        self.publisher.publish(topic, message).await
    }
}

/// A bus that keeps what is published, in order.
#[derive(Debug, Default)]
pub struct MemoryBus {
    sent: Mutex<Vec<(String, Message)>>,
}

impl MemoryBus {
    /// An empty bus.
    pub fn new() -> Self {
        Self::default()
    }

    /// Takes everything published so far.
    pub fn take(&self) -> Vec<(String, Message)> {
        std::mem::take(&mut *self.sent.lock().unwrap_or_else(PoisonError::into_inner))
    }
}

#[async_trait]
impl Bus for MemoryBus {
    async fn publish(&self, topic: &str, message: &Message) -> Result<Delivered, Error> {
        let mut sent = self.sent.lock().unwrap_or_else(PoisonError::into_inner);
        sent.push((topic.to_owned(), message.clone()));
        let offset = i64::try_from(sent.len()).unwrap_or(i64::MAX) - 1;
        Ok(Delivered { topic: topic.to_owned(), partition: 0, offset })
    }
}
