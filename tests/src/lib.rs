//! Helpers for the end-to-end and infrastructure tests: where the real Kafka broker and document database
//! are (from the same environment variables the services read), unique names so that tests running in
//! parallel never share a topic, group or database, and polling with a deadline.
//!
//! The infrastructure is started by `make test` (or `make infra-up`); a test that cannot reach it fails
//! with a message saying so.

use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

use platform::kafka::KafkaSettings;
use platform::mongo::MongoSettings;

/// Kafka settings for a test: the configured broker, and a topic prefix no other test uses.
pub fn kafka(test: &str) -> KafkaSettings {
    let mut settings = KafkaSettings::from_env().expect("Kafka settings from the environment");
    settings.topic_prefix = format!("it.{}.", unique(test));
    settings
}

/// Database settings for a test: the configured server and a database no other test uses.
pub fn mongo(test: &str) -> MongoSettings {
    let mut settings = MongoSettings::from_env("MONGODB_DATABASE", "unused");
    settings.database = unique(&format!("it_{test}")).replace('-', "_");
    settings
}

/// `name` followed by a random suffix.
pub fn unique(name: &str) -> String {
    let id = uuid::Uuid::now_v7().simple().to_string();
    format!("{name}-{}", &id[id.len() - 12..])
}

/// The repository root, where `ops/` lives.
pub fn repo_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().expect("tests/ has a parent").to_path_buf()
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

pub mod chaos;
pub mod duplicator;
pub mod events;
pub mod otlp;
pub mod stack;
