//! Kafka client settings and topic set-up.
//!
//! Producers are idempotent with `acks=all`; consumers commit offsets by hand, only after the effect of a
//! message is durable. Topics are created by [`ensure_topics`], which is idempotent: a topic that already
//! exists is left as it is (a partition count lower than configured is reported, never changed silently).

use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::FutureProducer;
use rdkafka::producer::Producer;

use crate::config;

/// A Kafka operation that failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A setting is invalid.
    #[error(transparent)]
    Config(#[from] config::Error),
    /// A client could not be created from the settings.
    #[error("cannot create a Kafka client for {bootstrap_servers}: {source}")]
    Client { bootstrap_servers: String, source: KafkaError },
    /// The broker did not answer a metadata request in time.
    #[error("Kafka at {bootstrap_servers} did not answer within {timeout:?}: {source}")]
    Unreachable { bootstrap_servers: String, timeout: Duration, source: KafkaError },
    /// Creating a topic failed for a reason other than its existing already.
    #[error("cannot create topic {topic}: {reason}")]
    CreateTopic { topic: String, reason: String },
}

/// How to reach Kafka and how topics are laid out.
#[derive(Debug, Clone)]
pub struct KafkaSettings {
    /// `KAFKA_BOOTSTRAP_SERVERS`, default `127.0.0.1:9092`.
    pub bootstrap_servers: String,
    /// `KAFKA_TOPIC_PARTITIONS`, default 6: partitions of every topic created by [`ensure_topics`].
    pub partitions: i32,
    /// `KAFKA_REPLICATION_FACTOR`, default 1.
    pub replication_factor: i32,
    /// `KAFKA_TOPIC_PREFIX`, default empty: prepended to every topic name, so that several systems
    /// (or test runs) can share one cluster.
    pub topic_prefix: String,
    /// `KAFKA_PROPERTIES`: extra librdkafka properties, `key=value` pairs separated by commas, passed
    /// through untouched to every client (for example `security.protocol=SSL`).
    pub extra: Vec<(String, String)>,
}

impl KafkaSettings {
    /// Settings from the environment, with the defaults of a local single-node broker.
    pub fn from_env() -> Result<Self, Error> {
        let settings = Self {
            bootstrap_servers: config::string("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092"),
            partitions: config::parsed("KAFKA_TOPIC_PARTITIONS", 6)?,
            replication_factor: config::parsed("KAFKA_REPLICATION_FACTOR", 1)?,
            topic_prefix: config::string("KAFKA_TOPIC_PREFIX", ""),
            extra: config::key_values("KAFKA_PROPERTIES")?,
        };
        settings.validate()?;
        Ok(settings)
    }

    /// Settings for a local broker at `bootstrap_servers` with the given topic prefix.
    pub fn local(bootstrap_servers: &str, topic_prefix: &str) -> Self {
        Self {
            bootstrap_servers: bootstrap_servers.to_owned(),
            partitions: 6,
            replication_factor: 1,
            topic_prefix: topic_prefix.to_owned(),
            extra: Vec::new(),
        }
    }

    fn validate(&self) -> Result<(), config::Error> {
        let invalid = |name, value: String, reason: &str| config::Error::Invalid { name, value, reason: reason.into() };
        if !(1..=1000).contains(&self.partitions) {
            return Err(invalid("KAFKA_TOPIC_PARTITIONS", self.partitions.to_string(), "must be between 1 and 1000"));
        }
        if !(1..=10).contains(&self.replication_factor) {
            let value = self.replication_factor.to_string();
            return Err(invalid("KAFKA_REPLICATION_FACTOR", value, "must be between 1 and 10"));
        }
        Ok(())
    }

    /// The full name of `topic` under this system's prefix.
    pub fn topic(&self, topic: &str) -> String {
        format!("{}{topic}", self.topic_prefix)
    }

    /// A client configuration carrying the bootstrap servers and the extra properties.
    pub fn client_config(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", &self.bootstrap_servers);
        for (key, value) in &self.extra {
            config.set(key, value);
        }
        config
    }

    /// A durable producer configuration: idempotent, `acks=all`, ordered per partition even on retry.
    pub fn producer_config(&self) -> ClientConfig {
        let mut config = self.client_config();
        config
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("max.in.flight.requests.per.connection", "5")
            .set("message.timeout.ms", "30000")
            .set("linger.ms", "1")
            .set("compression.type", "lz4");
        // Extra properties win over our defaults, so operators can tune them.
        for (key, value) in &self.extra {
            config.set(key, value);
        }
        config
    }

    /// A consumer configuration for `group_id` that never commits on its own: offsets are stored and
    /// committed by the caller once the message's effect is durable.
    pub fn consumer_config(&self, group_id: &str) -> ClientConfig {
        let mut config = self.client_config();
        config
            .set("group.id", group_id)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set("isolation.level", "read_committed")
            .set("session.timeout.ms", "10000")
            .set("heartbeat.interval.ms", "1000")
            .set("partition.assignment.strategy", "cooperative-sticky");
        for (key, value) in &self.extra {
            config.set(key, value);
        }
        config
    }

    /// An idempotent, `acks=all` producer.
    pub fn producer(&self) -> Result<FutureProducer, Error> {
        self.producer_config().create().map_err(|source| self.client_error(source))
    }

    fn client_error(&self, source: KafkaError) -> Error {
        Error::Client { bootstrap_servers: self.bootstrap_servers.clone(), source }
    }

    /// Asks the cluster for its metadata, to tell whether it answers within `timeout`.
    pub async fn ping(&self, timeout: Duration) -> Result<(), Error> {
        let producer: FutureProducer = self.client_config().create().map_err(|e| self.client_error(e))?;
        let bootstrap_servers = self.bootstrap_servers.clone();
        tokio::task::spawn_blocking(move || {
            producer.client().fetch_metadata(None, timeout).map(|_| ()).map_err(|source| Error::Unreachable {
                bootstrap_servers,
                timeout,
                source,
            })
        })
        .await
        .expect("metadata request task panicked")
    }
}

/// What [`ensure_topics`] found or did for one topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TopicOutcome {
    /// The topic was created with the configured partitions.
    Created { topic: String, partitions: i32 },
    /// The topic existed already with this many partitions.
    Existed { topic: String, partitions: i32 },
}

/// Creates every topic of `topics` (names without the prefix) that does not exist yet, with the configured
/// partitions and replication factor. Safe to run any number of times and from several processes at once.
pub async fn ensure_topics(settings: &KafkaSettings, topics: &[String]) -> Result<Vec<TopicOutcome>, Error> {
    let admin: AdminClient<DefaultClientContext> =
        settings.client_config().create().map_err(|e| settings.client_error(e))?;
    let names: Vec<String> = topics.iter().map(|t| settings.topic(t)).collect();
    let replication = settings.replication_factor;
    let new_topics: Vec<NewTopic<'_>> = names
        .iter()
        .map(|name| NewTopic::new(name, settings.partitions, TopicReplication::Fixed(replication)))
        .collect();
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    let results = admin.create_topics(&new_topics, &options).await.map_err(|source| Error::Unreachable {
        bootstrap_servers: settings.bootstrap_servers.clone(),
        timeout: Duration::from_secs(30),
        source,
    })?;
    let mut created = Vec::new();
    for result in results {
        match result {
            Ok(topic) => created.push(topic),
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => {
                return Err(Error::CreateTopic { topic, reason: code.to_string() });
            }
        }
    }
    describe(settings, admin, names, created).await
}

/// Reports the partition count of each topic in `names`, marking those in `created` as new.
async fn describe(
    settings: &KafkaSettings,
    admin: AdminClient<DefaultClientContext>,
    names: Vec<String>,
    created: Vec<String>,
) -> Result<Vec<TopicOutcome>, Error> {
    let bootstrap_servers = settings.bootstrap_servers.clone();
    let timeout = Duration::from_secs(10);
    let metadata = tokio::task::spawn_blocking(move || admin.inner().fetch_metadata(None, timeout))
        .await
        .expect("metadata request task panicked")
        .map_err(|source| Error::Unreachable { bootstrap_servers, timeout, source })?;
    let outcomes = names
        .into_iter()
        .map(|topic| {
            let partitions = metadata
                .topics()
                .iter()
                .find(|t| t.name() == topic)
                .map_or(0, |t| i32::try_from(t.partitions().len()).unwrap_or(i32::MAX));
            if created.contains(&topic) {
                TopicOutcome::Created { topic, partitions: settings.partitions }
            } else {
                TopicOutcome::Existed { topic, partitions }
            }
        })
        .collect();
    Ok(outcomes)
}
