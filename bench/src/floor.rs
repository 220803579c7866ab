//! The floor: what the infrastructure alone costs, measured in the same run on the same Kafka and database,
//! one operation at a time, with the durability settings the services use.
//!
//! - Kafka: a produce-to-consume trip on a bench-only topic (`bench.floor` under the topic prefix, one
//!   partition, created if missing): the services' producer settings (idempotent, `acks=all`) and consumer
//!   settings (`read_committed`), one message at a time; the time from handing the message to the producer
//!   to the consumer receiving it, and (separately) to the broker's acknowledgement.
//! - Database: `update_one` by `_id` of one document in a bench-only database, with the driver's default
//!   (acknowledged) write concern, as the services use; the time to the acknowledgement.

use std::sync::Arc;
use std::time::{Duration, Instant};

use mongodb::bson::doc;
use platform::kafka::KafkaSettings;
use platform::mongo::MongoSettings;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message as _;
use rdkafka::producer::FutureRecord;
use rdkafka::util::Timeout;
use rdkafka::{Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::error::{Error, Result};
use crate::latency::Summary;

/// The bench's own topic (under the configured prefix).
pub const FLOOR_TOPIC: &str = "bench.floor";
/// The bench's own collection (in the bench's own database).
pub const FLOOR_COLLECTION: &str = "floor";
/// How long one operation may take.
pub const OPERATION_TIMEOUT: Duration = Duration::from_secs(10);
/// Unmeasured operations before the measured ones (connections, metadata, caches).
const WARM_UP: usize = 5;

/// The Kafka floor.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KafkaFloor {
    /// The topic used.
    pub topic: String,
    /// Measured trips.
    pub n: usize,
    /// From handing the message to the producer to the consumer receiving it.
    pub produce_to_consume: Option<Summary>,
    /// From handing the message to the producer to the broker's acknowledgement (`acks=all`).
    pub produce_to_ack: Option<Summary>,
}

/// The database floor.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DatabaseFloor {
    /// The database and collection used.
    pub namespace: String,
    /// Measured updates.
    pub n: usize,
    /// `update_one` by `_id`, to its acknowledgement.
    pub update_by_id: Option<Summary>,
}

/// Measures `n` Kafka produce-to-consume trips.
pub async fn kafka(settings: &KafkaSettings, n: usize) -> Result<KafkaFloor> {
    let topic = settings.topic(FLOOR_TOPIC);
    let single = KafkaSettings { partitions: 1, ..settings.clone() };
    platform::kafka::ensure_topics(&single, &[FLOOR_TOPIC.to_owned()])
        .await
        .map_err(|source| Error::KafkaSetup { what: format!("creating topic {topic}"), source })?;
    let producer =
        settings.producer().map_err(|source| Error::KafkaSetup { what: "creating the producer".into(), source })?;
    let group = format!("saga-bench-floor-{}", Uuid::now_v7().simple());
    let consumer: Arc<StreamConsumer> =
        Arc::new(settings.consumer_config(&group).create().map_err(Error::kafka("creating the floor's consumer"))?);
    // Start reading exactly at the partition's end, so that the first message sent is the first read.
    let high = {
        let (consumer, name) = (consumer.clone(), topic.clone());
        tokio::task::spawn_blocking(move || consumer.fetch_watermarks(&name, 0, OPERATION_TIMEOUT))
            .await
            .map_err(|e| Error::Config(format!("the watermark task failed: {e}")))?
            .map_err(Error::kafka(format!("reading the end of {topic}")))?
            .1
    };
    let mut assignment = TopicPartitionList::new();
    assignment.add_partition_offset(&topic, 0, Offset::Offset(high)).map_err(Error::kafka("assigning"))?;
    consumer.assign(&assignment).map_err(Error::kafka(format!("assigning {topic}")))?;

    let run = Uuid::now_v7().simple().to_string();
    let (mut to_consume, mut to_ack) = (Vec::with_capacity(n), Vec::with_capacity(n));
    for i in 0..WARM_UP + n {
        let payload = format!("{run}-{i}");
        let started = Instant::now();
        let send = async {
            let record = FutureRecord::to(&topic).partition(0).key(&run).payload(&payload);
            producer.send(record, Timeout::After(OPERATION_TIMEOUT)).await.map_err(|(e, _)| e)?;
            Ok::<Instant, rdkafka::error::KafkaError>(Instant::now())
        };
        let receive = async {
            loop {
                let message = consumer.recv().await?;
                if message.payload() == Some(payload.as_bytes()) {
                    return Ok::<Instant, rdkafka::error::KafkaError>(Instant::now());
                }
            }
        };
        let trip = tokio::time::timeout(OPERATION_TIMEOUT * 2, async { tokio::join!(send, receive) })
            .await
            .map_err(|_| Error::Timeout(format!("Kafka floor trip {i} on {topic}"), OPERATION_TIMEOUT * 2))?;
        let acked = trip.0.map_err(Error::kafka(format!("producing to {topic}")))?;
        let consumed = trip.1.map_err(Error::kafka(format!("consuming from {topic}")))?;
        if i >= WARM_UP {
            to_ack.push(acked - started);
            to_consume.push(consumed - started);
        }
    }
    Ok(KafkaFloor { topic, n, produce_to_consume: Summary::of(&to_consume), produce_to_ack: Summary::of(&to_ack) })
}

/// Measures `n` single-document updates by `_id` in `settings.database`.
pub async fn database(settings: &MongoSettings, n: usize) -> Result<DatabaseFloor> {
    let client = settings
        .client("saga-bench")
        .await
        .map_err(|source| Error::DatabaseSetup { what: "connecting to the database".into(), source })?;
    let collection = client.database(&settings.database).collection::<mongodb::bson::Document>(FLOOR_COLLECTION);
    let id = format!("floor-{}", Uuid::now_v7().simple());
    let namespace = format!("{}.{FLOOR_COLLECTION}", settings.database);
    let timed = |what: String| move |_| Error::Timeout(what, OPERATION_TIMEOUT);
    tokio::time::timeout(OPERATION_TIMEOUT, collection.insert_one(doc! { "_id": &id, "n": 0_i64 }))
        .await
        .map_err(timed(format!("inserting into {namespace}")))?
        .map_err(Error::database(format!("inserting into {namespace}")))?;
    let mut updates = Vec::with_capacity(n);
    for i in 0..WARM_UP + n {
        let update =
            doc! { "$set": { "n": i64::try_from(i).unwrap_or(i64::MAX), "at": mongodb::bson::DateTime::now() } };
        let started = Instant::now();
        let result = tokio::time::timeout(OPERATION_TIMEOUT, collection.update_one(doc! { "_id": &id }, update))
            .await
            .map_err(timed(format!("update {i} in {namespace}")))?
            .map_err(Error::database(format!("updating in {namespace}")))?;
        let took = started.elapsed();
        if result.matched_count != 1 {
            return Err(Error::Config(format!("the floor document {id} in {namespace} vanished")));
        }
        if i >= WARM_UP {
            updates.push(took);
        }
    }
    // Leave nothing behind but the (empty) collection; a failure here does not spoil the measurement.
    let _ = tokio::time::timeout(OPERATION_TIMEOUT, collection.delete_one(doc! { "_id": &id })).await;
    Ok(DatabaseFloor { namespace, n, update_by_id: Summary::of(&updates) })
}
