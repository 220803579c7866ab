//! A simulated Kafka cluster: every topic is a set of partitions, each an append-only log of encoded
//! messages keyed by saga id, partitioned as the real producer does (`platform::kafka::partition_for`, Kafka's
//! murmur2). Consumers keep their own positions and committed offsets (see [`crate::consumer`]); this module
//! only stores what was published. [`SimBus`] is the orchestrator's [`Bus`] on it, with fault injection.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use async_trait::async_trait;
use orchestrator::bus::{self, Bus};
use platform::kafka::{Delivered, partition_for};
use proto_events::{Message, topics};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use uuid::Uuid;

use crate::faults::FaultPoint;

/// One message in a partition's log.
#[derive(Debug, Clone)]
pub struct Record {
    /// The encoded message, as a consumer reads it.
    pub bytes: Arc<[u8]>,
    /// The key.
    pub saga_id: Uuid,
    /// The message's id (for the checks; consumers decode `bytes`).
    pub message_id: Uuid,
}

/// The topics of the simulated cluster.
#[derive(Debug)]
pub struct Kafka {
    topics: Mutex<BTreeMap<&'static str, Vec<Vec<Record>>>>,
}

impl Kafka {
    /// A cluster with `saga.reply` and `saga.event` of `reply_partitions` partitions and the three command
    /// topics of `command_partitions` each. Other topics do not exist (auto-creation is off).
    pub fn new(reply_partitions: i32, command_partitions: i32) -> Self {
        let layout = [
            (topics::REPLY, reply_partitions),
            (topics::EVENT, reply_partitions),
            (topics::CMD_INVENTORY, command_partitions),
            (topics::CMD_PAYMENT, command_partitions),
            (topics::CMD_SHIPPING, command_partitions),
        ];
        let topics = layout
            .into_iter()
            .map(|(topic, count)| (topic, vec![Vec::new(); usize::try_from(count.max(1)).unwrap_or(1)]))
            .collect();
        Self { topics: Mutex::new(topics) }
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<&'static str, Vec<Vec<Record>>>> {
        self.topics.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Appends `message` to its partition of `topic`; `None` if the topic does not exist.
    pub fn append(&self, topic: &str, message: &Message) -> Option<Delivered> {
        let mut topics = self.lock();
        let partitions = topics.get_mut(topic)?;
        let count = i32::try_from(partitions.len()).unwrap_or(i32::MAX);
        let partition = partition_for(message.meta.saga_id.to_string().as_bytes(), count);
        let log = &mut partitions[usize::try_from(partition).unwrap_or(0)];
        let record = Record {
            bytes: Arc::from(message.encode()),
            saga_id: message.meta.saga_id,
            message_id: message.meta.message_id,
        };
        log.push(record);
        let offset = i64::try_from(log.len()).unwrap_or(i64::MAX) - 1;
        Some(Delivered { topic: topic.to_owned(), partition, offset })
    }

    /// The number of partitions of `topic` (0 if it does not exist).
    pub fn partitions(&self, topic: &str) -> i32 {
        self.lock().get(topic).map_or(0, |p| i32::try_from(p.len()).unwrap_or(i32::MAX))
    }

    /// The offset the next message of the partition will get.
    pub fn end(&self, topic: &str, partition: i32) -> usize {
        self.lock().get(topic).and_then(|p| p.get(usize::try_from(partition).ok()?)).map_or(0, Vec::len)
    }

    /// The message at `offset` of the partition.
    pub fn read(&self, topic: &str, partition: i32, offset: usize) -> Option<Record> {
        self.lock().get(topic)?.get(usize::try_from(partition).ok()?)?.get(offset).cloned()
    }

    /// Every message of `topic`, partition by partition.
    pub fn all(&self, topic: &str) -> Vec<Record> {
        self.lock().get(topic).map(|p| p.iter().flatten().cloned().collect()).unwrap_or_default()
    }
}

/// The orchestrator's bus on the simulated cluster. An armed fault makes a publication fail before it is
/// appended, or after (the broker has it, the producer does not know: the outbox publishes it again).
#[derive(Debug)]
pub struct SimBus {
    kafka: Arc<Kafka>,
    faults: Arc<FaultPoint>,
}

impl SimBus {
    /// A bus appending to `kafka`, failing when `faults` says so.
    pub fn new(kafka: Arc<Kafka>, faults: Arc<FaultPoint>) -> Self {
        Self { kafka, faults }
    }
}

fn refused(topic: &str, message: &Message, code: RDKafkaErrorCode) -> bus::Error {
    bus::Error::Publish {
        topic: topic.to_owned(),
        key: message.meta.saga_id.to_string(),
        source: Box::new(KafkaError::MessageProduction(code)),
    }
}

#[async_trait]
impl Bus for SimBus {
    async fn publish(&self, topic: &str, message: &Message) -> Result<Delivered, bus::Error> {
        let fault = self.faults.strike("bus.publish");
        if fault.is_some_and(|f| !f.after()) {
            return Err(refused(topic, message, RDKafkaErrorCode::BrokerTransportFailure));
        }
        let delivered = self
            .kafka
            .append(topic, message)
            .ok_or_else(|| refused(topic, message, RDKafkaErrorCode::UnknownTopicOrPartition))?;
        match fault {
            Some(_) => Err(refused(topic, message, RDKafkaErrorCode::RequestTimedOut)),
            None => Ok(delivered),
        }
    }
}
