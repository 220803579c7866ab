//! Dead-letter operations for operators: list what the services dead-lettered, and replay it to the topic it
//! came from.
//!
//! Every consumed topic has a `.dlq` twin ([`proto_events::topics::CONSUMED`]); `Publisher::dead_letter` puts
//! a message there unchanged (key, payload, headers) and adds why it failed, where it was read, how often it
//! was tried and who gave up, as `dlq-*` headers. [`DeadLetters`] reads those topics with a consumer of its
//! own that is *assigned* partitions: it never joins a consumer group and never commits, so it disturbs no
//! service and can read the same messages any number of times. A read covers each partition from the low to
//! the high watermark it had when the read began, within a deadline ([`DeadLetters::with_read_timeout`]).
//!
//! Listings never carry a payload (a `shipping.create` holds an address, a `payment.charge` a payment token):
//! only its size and, when it decodes as an envelope, its type, saga, step and attempt.
//!
//! A replay publishes the dead letter's key, payload and original headers (without the `dlq-*` ones, with
//! [`REPLAY_OF`]` = {dlq topic}/{partition}/{offset}`) to the topic it was dead-lettered from, and then
//! records the replay in [`COLLECTION`] under `_id` `"{dlq topic}:{partition}:{offset}"`. A dead letter that
//! has a record is skipped, so replaying twice publishes once. The record is written *after* the publication:
//! a crash in between (or two operators replaying the same message at the same moment) publishes the message
//! a second time, which is harmless because every consumer is idempotent (participants answer a redelivered
//! command with the reply they gave the first time, the orchestrator ignores replies and timers that do not
//! match what the saga waits for). The other order could record a replay that never happened. Records are
//! found and inserted by exact `_id` only: FerretDB answers nothing else from an index.
//!
//! Topic names in answers are the system's names, without `KAFKA_TOPIC_PREFIX`; the `replay-of` header and
//! the records hold full names, as they are on the wire.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use bson::serde_helpers::datetime::FromChrono04DateTime;
use chrono::{DateTime, Utc};
use futures_util::{StreamExt, TryStreamExt};
use mongodb::bson::doc;
use mongodb::error::{ErrorKind, WriteFailure};
use mongodb::{Collection, Database};
use platform::kafka::{Delivered, KafkaSettings, Publisher};
use proto_events::envelope::headers;
use proto_events::{Envelope, topics};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, Headers, Message as _, OwnedHeaders, OwnedMessage};
use rdkafka::{Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};
use serde_with::serde_as;
use tokio::time::Instant;
use uuid::Uuid;

use crate::clock::Clock;

/// The header a replayed message carries: `{dlq topic}/{partition}/{offset}` of the dead letter it replays.
pub const REPLAY_OF: &str = "replay-of";
/// The collection of replay records.
pub const COLLECTION: &str = "dlq_replays";
/// How long a read may take: a listing as a whole; a replay from one message to the next.
pub const DEFAULT_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Every `dlq-*` header is added by dead-lettering, and dropped by a replay.
const DLQ_HEADER_PREFIX: &str = "dlq-";
/// The `group.id` of the reading consumer, which never joins it.
const READER_GROUP: &str = "orchestrator-dlq-reader";
/// How many replay records a listing looks up at once.
const LOOKUPS_IN_FLIGHT: usize = 16;

/// The dead-letter topics, without prefix: `saga.cmd.inventory.dlq`, ….
pub fn topic_names() -> Vec<String> {
    topics::CONSUMED.iter().map(|t| topics::dlq(t)).collect()
}

/// Whether `name` (without prefix) is one of the dead-letter topics.
pub fn is_dlq_topic(name: &str) -> bool {
    topics::CONSUMED.iter().any(|t| name.strip_suffix(topics::DLQ_SUFFIX) == Some(*t))
}

/// A dead-letter operation that failed as a whole.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The topic is not one of the dead-letter topics.
    #[error("{topic} is not a dead-letter topic; use one of {known}", known = topic_names().join(", "))]
    UnknownTopic { topic: String },
    /// The Kafka client could not be created.
    #[error(transparent)]
    Client(#[from] platform::kafka::Error),
    /// Kafka refused or failed a metadata, watermark or assignment request.
    #[error("cannot read {topic}: {source}")]
    Read { topic: String, source: Box<KafkaError> },
    /// Kafka did not deliver what the read needed in time.
    #[error("Kafka did not deliver {topic} up to its end within {timeout:?}")]
    Timeout { topic: String, timeout: Duration },
    /// The database failed or did not answer.
    #[error("database error during {operation}: {source}")]
    Database { operation: &'static str, source: mongodb::error::Error },
}

/// Where a message is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Coordinates {
    /// The topic, without prefix.
    pub topic: String,
    /// The partition.
    pub partition: i32,
    /// The offset.
    pub offset: i64,
}

/// What a dead letter's payload says about itself, when it decodes as an envelope.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnvelopeInfo {
    /// The message type, such as `payment.charge`.
    #[serde(rename = "type")]
    pub message_type: String,
    /// The saga.
    pub saga_id: Uuid,
    /// The step.
    pub step: u16,
    /// The attempt.
    pub attempt: u32,
}

/// A recorded replay.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Replay {
    /// When.
    pub at: DateTime<Utc>,
    /// Who (the subject of the operator's token).
    pub operator: String,
    /// Why, as the operator said.
    pub reason: String,
    /// Where the replayed message landed.
    pub to: Coordinates,
}

/// A dead-lettered message, without its payload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadLetter {
    /// The dead-letter topic, without prefix.
    pub topic: String,
    /// Its partition there.
    pub partition: i32,
    /// Its offset there.
    pub offset: i64,
    /// The Kafka key (the saga id).
    pub key: Option<String>,
    /// The `message-type` header.
    pub message_type: Option<String>,
    /// The `message-id` header.
    pub message_id: Option<String>,
    /// The topic it was read from (`dlq-original-topic`), without prefix.
    pub original_topic: Option<String>,
    /// The partition it was read from (`dlq-original-partition`).
    pub original_partition: Option<i32>,
    /// Its offset there (`dlq-original-offset`).
    pub original_offset: Option<i64>,
    /// Why it could not be processed (`dlq-error`).
    pub error: Option<String>,
    /// How often processing was attempted (`dlq-attempts`).
    pub attempts: Option<u32>,
    /// The service that gave up (`dlq-service`).
    pub service: Option<String>,
    /// When it was dead-lettered (`dlq-failed-at`).
    pub failed_at: Option<DateTime<Utc>>,
    /// The payload's size in bytes (the payload itself is never shown).
    pub payload_bytes: usize,
    /// What the payload says about itself, if it decodes as an envelope.
    pub envelope: Option<EnvelopeInfo>,
    /// Its replay, if it was replayed.
    pub replayed: Option<Replay>,
}

/// The dead letters of one topic.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicListing {
    /// How many messages the topic holds (all of them, not only those listed).
    pub count: u64,
    /// The first of them, at most the limit asked for, by partition and offset.
    pub messages: Vec<DeadLetter>,
}

/// Dead letters by topic (without prefix).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Listing {
    /// Every topic asked for, even an empty one.
    pub topics: BTreeMap<String, TopicListing>,
}

/// Which dead letters of a topic to replay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Which {
    /// Every message the topic holds when the replay begins.
    All,
    /// These `(partition, offset)` pairs.
    Only(BTreeSet<(i32, i64)>),
}

/// What to replay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selection {
    /// The dead-letter topic, without prefix.
    pub topic: String,
    /// Which of its messages.
    pub messages: Which,
}

/// A dead letter replayed now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Replayed {
    /// Its partition in the dead-letter topic.
    pub partition: i32,
    /// Its offset there.
    pub offset: i64,
    /// Where the replayed message landed.
    pub to: Coordinates,
}

/// A dead letter not replayed because it was replayed before.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Skipped {
    /// Its partition in the dead-letter topic.
    pub partition: i32,
    /// Its offset there.
    pub offset: i64,
    /// The earlier replay.
    pub replayed: Replay,
}

/// A dead letter that could not be replayed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failed {
    /// Its partition in the dead-letter topic.
    pub partition: i32,
    /// Its offset there.
    pub offset: i64,
    /// Why.
    pub reason: String,
}

/// What a replay did, each list by partition and offset.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplayReport {
    /// The dead-letter topic, without prefix.
    pub topic: String,
    /// Published to the original topic now.
    pub replayed: Vec<Replayed>,
    /// Already replayed before: not published again.
    pub skipped: Vec<Skipped>,
    /// Not replayed, with the reason.
    pub failed: Vec<Failed>,
    /// Set when the replay stopped early (Kafka or the database failed): why. The messages after that point
    /// were not attempted; replaying the same selection again is safe.
    pub stopped: Option<String>,
}

/// A replay record, stored by `_id` = `"{dlq topic}:{partition}:{offset}"` (full topic name).
#[serde_as]
#[derive(Debug, Serialize, Deserialize)]
struct ReplayDoc {
    #[serde(rename = "_id")]
    id: String,
    operator: String,
    reason: String,
    #[serde_as(as = "FromChrono04DateTime")]
    at: DateTime<Utc>,
    dlq_topic: String,
    partition: i32,
    offset: i64,
    target_topic: String,
    target_partition: i32,
    target_offset: i64,
}

fn record_id(dlq_topic: &str, partition: i32, offset: i64) -> String {
    format!("{dlq_topic}:{partition}:{offset}")
}

/// Lists and replays dead letters (see the module documentation).
#[derive(Clone)]
pub struct DeadLetters {
    settings: KafkaSettings,
    publisher: Publisher,
    replays: Collection<ReplayDoc>,
    clock: Arc<dyn Clock>,
    read_timeout: Duration,
}

impl std::fmt::Debug for DeadLetters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Not the settings: extra Kafka properties may hold credentials.
        f.debug_struct("DeadLetters")
            .field("topic_prefix", &self.settings.topic_prefix)
            .field("read_timeout", &self.read_timeout)
            .finish_non_exhaustive()
    }
}

/// The outcome of replaying one dead letter.
enum Outcome {
    Replayed(Coordinates),
    Skipped(Replay),
    /// Not replayed, for a reason of its own: go on with the next.
    Refused(String),
    /// Kafka or the database failed: stop.
    Failed(String),
}

/// One replay run: from which dead-letter topic to which topic, by whom and why (full topic names).
struct Job<'a> {
    dlq_topic: String,
    target: String,
    operator: &'a str,
    reason: &'a str,
}

impl ReplayReport {
    fn new(topic: &str) -> Self {
        Self { topic: topic.to_owned(), replayed: Vec::new(), skipped: Vec::new(), failed: Vec::new(), stopped: None }
    }

    /// Adds what happened to the dead letter at `(partition, offset)`; `false` when the run must stop.
    fn add(&mut self, (partition, offset): (i32, i64), outcome: Outcome) -> bool {
        match outcome {
            Outcome::Replayed(to) => self.replayed.push(Replayed { partition, offset, to }),
            Outcome::Skipped(replayed) => self.skipped.push(Skipped { partition, offset, replayed }),
            Outcome::Refused(reason) => self.failed.push(Failed { partition, offset, reason }),
            Outcome::Failed(reason) => {
                self.failed.push(Failed { partition, offset, reason });
                self.stopped = Some(format!("stopped after the failure at partition {partition}, offset {offset}"));
                return false;
            }
        }
        true
    }

    /// Reports the wanted messages that the read did not deliver, unless the run stopped early (then they
    /// were not attempted, which `stopped` says).
    fn add_missing(&mut self, wanted: &BTreeSet<(i32, i64)>, seen: &BTreeSet<(i32, i64)>) {
        if self.stopped.is_some() {
            return;
        }
        let reported: BTreeSet<(i32, i64)> = self.failed.iter().map(|f| (f.partition, f.offset)).collect();
        for &(partition, offset) in wanted.difference(seen).filter(|w| !reported.contains(w)) {
            self.failed.push(Failed { partition, offset, reason: "no message at this offset".to_owned() });
        }
    }

    fn sort(&mut self) {
        self.replayed.sort_by_key(|r| (r.partition, r.offset));
        self.skipped.sort_by_key(|r| (r.partition, r.offset));
        self.failed.sort_by_key(|r| (r.partition, r.offset));
    }
}

impl DeadLetters {
    /// Dead-letter operations on the topics of `settings`, publishing replays through `publisher` and
    /// recording them in `db`, timed by `clock`.
    pub fn new(settings: &KafkaSettings, publisher: Publisher, db: &Database, clock: Arc<dyn Clock>) -> Self {
        Self {
            settings: settings.clone(),
            publisher,
            replays: db.collection(COLLECTION),
            clock,
            read_timeout: DEFAULT_READ_TIMEOUT,
        }
    }

    /// Gives up a listing that takes longer than `timeout`, and a replay that waits longer than `timeout` for
    /// its next message (default [`DEFAULT_READ_TIMEOUT`]); metadata requests wait as long.
    #[must_use]
    pub fn with_read_timeout(mut self, timeout: Duration) -> Self {
        self.read_timeout = timeout;
        self
    }

    /// The dead letters of `topic` (a dead-letter topic without prefix), or of every dead-letter topic: each
    /// topic's count and its first `limit` messages by partition and offset, with their replays.
    pub async fn list(&self, topic: Option<&str>, limit: usize) -> Result<Listing, Error> {
        let names = match topic {
            Some(name) => vec![known(name)?.to_owned()],
            None => topic_names(),
        };
        let full: Vec<String> = names.iter().map(|n| self.settings.topic(n)).collect();
        let (consumer, spans) = self.spans(full).await?;
        let limit_offsets = i64::try_from(limit).unwrap_or(i64::MAX);
        let ranges = spans
            .iter()
            .map(|s| (s.topic.clone(), s.partition, s.low, s.high.min(s.low.saturating_add(limit_offsets))));
        let mut reader = Reader::start(consumer, ranges, self.read_timeout)?;
        let mut found: BTreeMap<String, Vec<DeadLetter>> = BTreeMap::new();
        while let Some(message) = reader.next().await? {
            let letter = self.describe(&message);
            found.entry(letter.topic.clone()).or_default().push(letter);
        }
        let mut topics = BTreeMap::new();
        for name in names {
            let full = self.settings.topic(&name);
            let count =
                spans.iter().filter(|s| s.topic == full).map(|s| u64::try_from(s.high - s.low).unwrap_or(0)).sum();
            let mut messages = found.remove(&name).unwrap_or_default();
            messages.sort_by_key(|m| (m.partition, m.offset));
            messages.truncate(limit);
            self.join_replays(&mut messages).await?;
            topics.insert(name, TopicListing { count, messages });
        }
        Ok(Listing { topics })
    }

    /// Replays `selection` to the topic its messages were dead-lettered from, as `operator` for `reason`;
    /// dead letters replayed before are skipped. Messages are replayed one at a time, in partition order, so
    /// a saga's messages keep their order.
    pub async fn replay(&self, selection: &Selection, operator: &str, reason: &str) -> Result<ReplayReport, Error> {
        let name = known(&selection.topic)?;
        let original = name.strip_suffix(topics::DLQ_SUFFIX).unwrap_or(name);
        let job = Job { dlq_topic: self.settings.topic(name), target: self.settings.topic(original), operator, reason };
        let (consumer, spans) = self.spans(vec![job.dlq_topic.clone()]).await?;
        let mut report = ReplayReport::new(name);
        let ranges = match &selection.messages {
            Which::All => spans.iter().map(|s| (s.topic.clone(), s.partition, s.low, s.high)).collect(),
            Which::Only(wanted) => ranges_for(&spans, wanted, &mut report.failed),
        };
        let reader = Reader::start(consumer, ranges, self.read_timeout)?;
        let seen = self.replay_read(reader, &selection.messages, &job, &mut report).await;
        if let Which::Only(wanted) = &selection.messages {
            report.add_missing(wanted, &seen);
        }
        report.sort();
        Ok(report)
    }

    /// Replays the messages of `which` that `reader` delivers, into `report`, until the reader is done or a
    /// failure stops the run; returns the coordinates of those it tried.
    async fn replay_read(
        &self,
        mut reader: Reader,
        which: &Which,
        job: &Job<'_>,
        report: &mut ReplayReport,
    ) -> BTreeSet<(i32, i64)> {
        let mut seen = BTreeSet::new();
        loop {
            let message = match reader.next().await {
                Ok(Some(message)) => message,
                Ok(None) => return seen,
                Err(error) => {
                    report.stopped = Some(error.to_string());
                    return seen;
                }
            };
            let at = (message.partition(), message.offset());
            if matches!(which, Which::Only(wanted) if !wanted.contains(&at)) {
                continue;
            }
            seen.insert(at);
            if !report.add(at, self.replay_one(&message, job).await) {
                return seen;
            }
            // Publishing took time of its own: the deadline is for Kafka delivering the next message.
            reader.extend();
        }
    }

    /// Replays one dead letter unless it was replayed before.
    async fn replay_one(&self, message: &OwnedMessage, job: &Job<'_>) -> Outcome {
        let id = record_id(&job.dlq_topic, message.partition(), message.offset());
        match self.recorded(&id).await {
            Ok(Some(replay)) => return Outcome::Skipped(replay),
            Ok(None) => {}
            Err(error) => {
                tracing::warn!(%error, id, "cannot read a replay record");
                return Outcome::Failed("the database failed reading the replay record (see the log)".to_owned());
            }
        }
        if let Some(refusal) = refusal(message, &job.target) {
            return Outcome::Refused(refusal);
        }
        let replay_of = format!("{}/{}/{}", job.dlq_topic, message.partition(), message.offset());
        let (key, payload) = (message.key(), message.payload().unwrap_or_default());
        match self.publisher.send(&job.target, key, payload, replay_headers(message, &replay_of)).await {
            Ok(delivered) => self.record(id, message, job, &delivered).await,
            Err(error) => Outcome::Failed(error.to_string()),
        }
    }

    /// Records the replay of `message` to `delivered`.
    async fn record(&self, id: String, message: &OwnedMessage, job: &Job<'_>, delivered: &Delivered) -> Outcome {
        let record = ReplayDoc {
            id,
            operator: job.operator.to_owned(),
            reason: job.reason.to_owned(),
            at: self.clock.now(),
            dlq_topic: job.dlq_topic.clone(),
            partition: message.partition(),
            offset: message.offset(),
            target_topic: delivered.topic.clone(),
            target_partition: delivered.partition,
            target_offset: delivered.offset,
        };
        match self.replays.insert_one(&record).await {
            // A duplicate: someone replayed it at the same moment; both publications are harmless.
            Err(error) if !is_duplicate_key(&error) => {
                tracing::warn!(%error, id = record.id, "cannot record a replay");
                Outcome::Failed(format!(
                    "replayed to {} partition {} offset {}, but the database failed recording it (see the log); \
                     replaying it again would publish it once more, which is harmless",
                    self.local(&delivered.topic),
                    delivered.partition,
                    delivered.offset
                ))
            }
            _ => Outcome::Replayed(Coordinates {
                topic: self.local(&delivered.topic),
                partition: delivered.partition,
                offset: delivered.offset,
            }),
        }
    }

    /// The replay recorded under `id`, if any.
    async fn recorded(&self, id: &str) -> Result<Option<Replay>, Error> {
        let found = self
            .replays
            .find_one(doc! { "_id": id })
            .await
            .map_err(|source| Error::Database { operation: "read a replay record", source })?;
        Ok(found.map(|d| Replay {
            at: d.at,
            operator: d.operator,
            reason: d.reason,
            to: Coordinates {
                topic: self.local(&d.target_topic),
                partition: d.target_partition,
                offset: d.target_offset,
            },
        }))
    }

    /// Fills in the replays of `letters`, a few lookups by `_id` at a time.
    async fn join_replays(&self, letters: &mut [DeadLetter]) -> Result<(), Error> {
        let ids: Vec<String> =
            letters.iter().map(|l| record_id(&self.settings.topic(&l.topic), l.partition, l.offset)).collect();
        let replays: Vec<Option<Replay>> = futures_util::stream::iter(ids)
            .map(|id| async move { self.recorded(&id).await })
            .buffered(LOOKUPS_IN_FLIGHT)
            .try_collect()
            .await?;
        for (letter, replay) in letters.iter_mut().zip(replays) {
            letter.replayed = replay;
        }
        Ok(())
    }

    /// A dead letter's description, without its payload.
    fn describe(&self, message: &OwnedMessage) -> DeadLetter {
        let text = |name| header(message, name).map(str::to_owned);
        let payload = message.payload().unwrap_or_default();
        let envelope = serde_json::from_slice::<Envelope>(payload).ok().map(|e| EnvelopeInfo {
            message_type: e.message_type,
            saga_id: e.meta.saga_id,
            step: e.meta.step,
            attempt: e.meta.attempt,
        });
        DeadLetter {
            topic: self.local(message.topic()),
            partition: message.partition(),
            offset: message.offset(),
            key: message.key().map(|k| String::from_utf8_lossy(k).into_owned()),
            message_type: text(headers::MESSAGE_TYPE),
            message_id: text(headers::MESSAGE_ID),
            original_topic: header(message, headers::DLQ_TOPIC).map(|t| self.local(t)),
            original_partition: header(message, headers::DLQ_PARTITION).and_then(|v| v.parse().ok()),
            original_offset: header(message, headers::DLQ_OFFSET).and_then(|v| v.parse().ok()),
            error: text(headers::DLQ_ERROR),
            attempts: header(message, headers::DLQ_ATTEMPTS).and_then(|v| v.parse().ok()),
            service: text(headers::DLQ_SERVICE),
            failed_at: header(message, headers::DLQ_FAILED_AT)
                .and_then(|v| DateTime::parse_from_rfc3339(v).ok())
                .map(|t| t.with_timezone(&Utc)),
            payload_bytes: payload.len(),
            envelope,
            replayed: None,
        }
    }

    /// `topic` without this system's prefix (unchanged if it lacks it).
    fn local(&self, topic: &str) -> String {
        topic.strip_prefix(self.settings.topic_prefix.as_str()).unwrap_or(topic).to_owned()
    }

    /// A consumer that is only ever assigned partitions: no group membership, no commits. (librdkafka wants a
    /// `group.id` before it assigns anything, but a consumer that never subscribes never joins that group,
    /// and one that never commits leaves no offsets there.)
    fn consumer(&self) -> Result<StreamConsumer, Error> {
        let mut config = self.settings.client_config();
        config
            .set("group.id", READER_GROUP)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("enable.partition.eof", "true")
            .set("auto.offset.reset", "earliest");
        config.create().map_err(|source| {
            Error::Client(platform::kafka::Error::Client {
                bootstrap_servers: self.settings.bootstrap_servers.clone(),
                source: Box::new(source),
            })
        })
    }

    /// A new consumer and the partitions of `topics` (full names) with their watermarks now. A topic that
    /// does not exist has no partitions.
    async fn spans(&self, topics: Vec<String>) -> Result<(StreamConsumer, Vec<Span>), Error> {
        let consumer = self.consumer()?;
        let timeout = self.read_timeout;
        tokio::task::spawn_blocking(move || {
            let mut spans = Vec::new();
            for topic in topics {
                let read_error = |source: KafkaError| Error::Read { topic: topic.clone(), source: Box::new(source) };
                let metadata = consumer.fetch_metadata(Some(&topic), timeout).map_err(read_error)?;
                let partitions: Vec<i32> = metadata
                    .topics()
                    .iter()
                    .filter(|t| t.name() == topic && t.error().is_none())
                    .flat_map(|t| t.partitions().iter().map(|p| p.id()))
                    .collect();
                if partitions.is_empty() {
                    tracing::warn!(topic, "the dead-letter topic does not exist");
                }
                for partition in partitions {
                    let (low, high) = consumer.fetch_watermarks(&topic, partition, timeout).map_err(read_error)?;
                    spans.push(Span { topic: topic.clone(), partition, low, high });
                }
            }
            Ok((consumer, spans))
        })
        .await
        .expect("the watermark task does not panic")
    }
}

/// The offsets `[low, high)` one partition of a topic (full name) holds.
#[derive(Debug, Clone)]
struct Span {
    topic: String,
    partition: i32,
    low: i64,
    high: i64,
}

/// For each partition of `spans`, the range from the first to the last wanted offset; wanted messages outside
/// of what the topic holds are reported as failed.
fn ranges_for(spans: &[Span], wanted: &BTreeSet<(i32, i64)>, failed: &mut Vec<Failed>) -> Vec<(String, i32, i64, i64)> {
    let mut ranges: BTreeMap<i32, (String, i64, i64)> = BTreeMap::new();
    for &(partition, offset) in wanted {
        let Some(span) = spans.iter().find(|s| s.partition == partition) else {
            failed.push(Failed { partition, offset, reason: format!("the topic has no partition {partition}") });
            continue;
        };
        if !(span.low..span.high).contains(&offset) {
            let reason = format!("no message at this offset: partition {partition} holds {}..{}", span.low, span.high);
            failed.push(Failed { partition, offset, reason });
            continue;
        }
        let range = ranges.entry(partition).or_insert_with(|| (span.topic.clone(), offset, offset + 1));
        range.1 = range.1.min(offset);
        range.2 = range.2.max(offset + 1);
    }
    ranges.into_iter().map(|(partition, (topic, start, end))| (topic, partition, start, end)).collect()
}

/// Why `message` must not be replayed to `target` (a full topic name), if it must not: it names no original
/// topic, or another one than the topic whose dead-letter twin it is on.
fn refusal(message: &OwnedMessage, target: &str) -> Option<String> {
    match header(message, headers::DLQ_TOPIC) {
        None => {
            Some(format!("it has no {} header, so the topic it came from is unknown; not replayed", headers::DLQ_TOPIC))
        }
        Some(original) if original != target => Some(format!(
            "its {} header names {original}, but this dead-letter topic belongs to {target}; not replayed",
            headers::DLQ_TOPIC
        )),
        Some(_) => None,
    }
}

/// The last value of header `name`, as text.
fn header<'m>(message: &'m OwnedMessage, name: &str) -> Option<&'m str> {
    let headers = message.headers()?;
    headers.iter().filter(|h| h.key == name).last().and_then(|h| h.value).and_then(|v| std::str::from_utf8(v).ok())
}

/// The headers of a replay: the original ones without the dead-letter headers (and without the `replay-of`
/// of an earlier replay), plus `replay-of`.
fn replay_headers(message: &OwnedMessage, replay_of: &str) -> OwnedHeaders {
    let mut out = OwnedHeaders::new();
    if let Some(original) = message.headers() {
        for h in original.iter().filter(|h| !h.key.starts_with(DLQ_HEADER_PREFIX) && h.key != REPLAY_OF) {
            out = out.insert(Header { key: h.key, value: h.value });
        }
    }
    out.insert(Header { key: REPLAY_OF, value: Some(replay_of) })
}

fn known(name: &str) -> Result<&str, Error> {
    if is_dlq_topic(name) { Ok(name) } else { Err(Error::UnknownTopic { topic: name.to_owned() }) }
}

fn is_duplicate_key(error: &mongodb::error::Error) -> bool {
    matches!(&*error.kind, ErrorKind::Write(WriteFailure::WriteError(e)) if e.code == 11000)
}

/// Reads assigned ranges of partitions, each up to its end, then stops.
struct Reader {
    consumer: StreamConsumer,
    /// The end (exclusive) of each (topic, partition) not read to its end yet.
    open: HashMap<(String, i32), i64>,
    timeout: Duration,
    deadline: Instant,
}

impl Reader {
    /// Assigns every non-empty `(topic, partition, start, end)` of `ranges`, from `start`.
    fn start(
        consumer: StreamConsumer,
        ranges: impl IntoIterator<Item = (String, i32, i64, i64)>,
        timeout: Duration,
    ) -> Result<Self, Error> {
        let mut assignment = TopicPartitionList::new();
        let mut open = HashMap::new();
        for (topic, partition, start, end) in ranges.into_iter().filter(|r| r.2 < r.3) {
            let read_error = |source: KafkaError| Error::Read { topic: topic.clone(), source: Box::new(source) };
            assignment.add_partition_offset(&topic, partition, Offset::Offset(start)).map_err(read_error)?;
            open.insert((topic, partition), end);
        }
        if !open.is_empty() {
            consumer
                .assign(&assignment)
                .map_err(|source| Error::Read { topic: topics_of(&open), source: Box::new(source) })?;
        }
        Ok(Self { consumer, open, timeout, deadline: Instant::now() + timeout })
    }

    /// Gives the next message `timeout` from now.
    fn extend(&mut self) {
        self.deadline = Instant::now() + self.timeout;
    }

    /// The next message of the ranges; `None` once every range is read.
    async fn next(&mut self) -> Result<Option<OwnedMessage>, Error> {
        loop {
            if self.open.is_empty() {
                return Ok(None);
            }
            let Ok(received) = tokio::time::timeout_at(self.deadline, self.consumer.recv()).await else {
                return Err(self.timed_out());
            };
            match received {
                Ok(message) => {
                    let key = (message.topic().to_owned(), message.partition());
                    let Some(&end) = self.open.get(&key) else { continue };
                    if message.offset() + 1 >= end {
                        self.open.remove(&key);
                    }
                    if message.offset() < end {
                        return Ok(Some(message.detach()));
                    }
                }
                // The end of a partition: offsets at the end may hold no message (transaction markers).
                Err(KafkaError::PartitionEOF(_)) => close_finished(&self.consumer, &mut self.open),
                // librdkafka retries on its own; the deadline bounds the wait.
                Err(error) => tracing::warn!(%error, "reading dead letters"),
            }
        }
    }

    fn timed_out(&self) -> Error {
        Error::Timeout { topic: topics_of(&self.open), timeout: self.timeout }
    }
}

/// The topics among `ranges`, comma-separated.
fn topics_of(ranges: &HashMap<(String, i32), i64>) -> String {
    let topics: BTreeSet<&str> = ranges.keys().map(|(t, _)| t.as_str()).collect();
    topics.into_iter().collect::<Vec<_>>().join(", ")
}

/// Closes the ranges whose partition the consumer has read past their end.
fn close_finished(consumer: &StreamConsumer, open: &mut HashMap<(String, i32), i64>) {
    let Ok(positions) = consumer.position() else { return };
    for element in positions.elements() {
        let key = (element.topic().to_owned(), element.partition());
        if let (Offset::Offset(position), Some(&end)) = (element.offset(), open.get(&key))
            && position >= end
        {
            open.remove(&key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_dead_letter_topics_are_the_twins_of_the_consumed_ones() {
        assert_eq!(topic_names().len(), 5);
        assert!(is_dlq_topic("saga.cmd.payment.dlq"));
        assert!(is_dlq_topic("saga.reply.dlq"));
        assert!(!is_dlq_topic("saga.cmd.payment"), "not the original");
        assert!(!is_dlq_topic("saga.cmd.nope.dlq"));
        assert!(!is_dlq_topic("saga.cmd.payment.dlq.dlq"));
    }

    #[test]
    fn wanted_messages_become_ranges_and_those_out_of_reach_fail() {
        let span = |partition, low, high| Span { topic: "p.saga.cmd.payment.dlq".into(), partition, low, high };
        let spans = [span(0, 0, 10), span(1, 5, 8)];
        let wanted: BTreeSet<(i32, i64)> = [(0, 7), (0, 2), (1, 4), (1, 6), (2, 0)].into_iter().collect();
        let mut failed = Vec::new();
        let ranges = ranges_for(&spans, &wanted, &mut failed);
        assert_eq!(
            ranges,
            vec![("p.saga.cmd.payment.dlq".to_owned(), 0, 2, 8), ("p.saga.cmd.payment.dlq".to_owned(), 1, 6, 7)]
        );
        let failed: Vec<(i32, i64)> = failed.iter().map(|f| (f.partition, f.offset)).collect();
        assert_eq!(failed, vec![(1, 4), (2, 0)], "below the low watermark, and no such partition");
    }

    #[test]
    fn a_replay_drops_the_dead_letter_headers_and_says_what_it_replays() {
        let headers = OwnedHeaders::new()
            .insert(Header { key: headers::MESSAGE_TYPE, value: Some("payment.charge") })
            .insert(Header { key: REPLAY_OF, value: Some("old/0/1") })
            .insert(Header { key: headers::DLQ_ERROR, value: Some("boom") })
            .insert(Header { key: headers::DLQ_TOPIC, value: Some("saga.cmd.payment") });
        let message = OwnedMessage::new(
            Some(b"{}".to_vec()),
            Some(b"k".to_vec()),
            "saga.cmd.payment.dlq".into(),
            rdkafka::Timestamp::NotAvailable,
            0,
            3,
            Some(headers),
        );
        let replayed = replay_headers(&message, "saga.cmd.payment.dlq/0/3");
        let pairs: Vec<(String, String)> = replayed
            .iter()
            .map(|h| (h.key.to_owned(), String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned()))
            .collect();
        assert_eq!(
            pairs,
            vec![
                (headers::MESSAGE_TYPE.to_owned(), "payment.charge".to_owned()),
                (REPLAY_OF.to_owned(), "saga.cmd.payment.dlq/0/3".to_owned()),
            ]
        );
    }
}
