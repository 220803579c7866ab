//! Helpers for the integration tests against the real database and Kafka: unique names so that tests
//! running in parallel never share a database, topic or group, and polling with a deadline.

#![allow(dead_code)]

use std::future::Future;
use std::time::Duration;

use mongodb::Database;
use platform::kafka::KafkaSettings;
use platform::mongo::MongoSettings;

/// `name` followed by a random suffix.
pub fn unique(name: &str) -> String {
    let id = uuid::Uuid::now_v7().simple().to_string();
    format!("{name}_{}", &id[id.len() - 12..])
}

/// Database settings for a test: the configured server (`MONGODB_URI`) and a database of its own.
pub fn mongo_settings(test: &str) -> MongoSettings {
    let mut settings = MongoSettings::from_env("PARTICIPANTS_IT_UNUSED_DATABASE", "unused");
    settings.database = unique(&format!("it_part_{test}"));
    settings
}

/// A fresh, uniquely named database on the configured server; the test drops it at the end.
pub async fn database(test: &str) -> Database {
    let settings = mongo_settings(test);
    let client = settings.client("participants-it").await.expect("database client");
    platform::mongo::ping(&client).await.expect("the database answers; start it with `make infra-up`");
    client.database(&settings.database)
}

/// Kafka settings for a test: the configured broker, two partitions per topic, and a topic prefix no other
/// test uses.
pub fn kafka_settings(test: &str) -> KafkaSettings {
    let mut settings = KafkaSettings::from_env().expect("Kafka settings from the environment");
    settings.topic_prefix = format!("it.{}.", unique(test));
    settings.partitions = 2;
    settings
}

/// Polls `check` every 50 ms until it yields a value or `timeout` passes; panics naming `what` on timeout.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(tokio::time::Instant::now() < deadline, "timed out after {timeout:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
