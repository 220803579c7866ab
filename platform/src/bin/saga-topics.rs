//! Creates the saga system's Kafka topics (idempotent): the command, reply and event topics and a `.dlq`
//! twin of each. Partitions and replication factor come from `KAFKA_TOPIC_PARTITIONS` and
//! `KAFKA_REPLICATION_FACTOR`. `make infra-up` runs it once Kafka answers.
//!
//! `saga-topics --delete-test-topics` instead deletes the topics the test suites leave behind (names
//! starting with `e2e.`, `it.` or `it-`); `make test` runs it when it reuses a running Kafka, which would
//! otherwise gather thousands of partitions over many runs.

use std::process::ExitCode;
use std::time::Duration;

use platform::kafka::{KafkaSettings, TopicOutcome, delete_topics_with_prefixes, ensure_topics};

/// The prefixes of the topics the test suites create (a unique one per test).
const TEST_PREFIXES: &[&str] = &["e2e.", "it.", "it-"];

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("saga-topics: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> anyhow::Result<()> {
    let settings = KafkaSettings::from_env()?;
    settings.ping(Duration::from_secs(10)).await?;
    match std::env::args().nth(1).as_deref() {
        None => {}
        Some("--delete-test-topics") => {
            let deleted = delete_topics_with_prefixes(&settings, TEST_PREFIXES).await?;
            eprintln!("saga-topics: deleted {deleted} topics left by earlier test runs");
            return Ok(());
        }
        Some(other) => anyhow::bail!("unknown argument {other:?}; the only one is --delete-test-topics"),
    }
    for outcome in ensure_topics(&settings, &proto_events::topics::all()).await? {
        let line = match outcome {
            TopicOutcome::Created { topic, partitions } => {
                format!("created {topic} ({partitions} partitions)")
            }
            TopicOutcome::Existed { topic, partitions } if partitions < settings.partitions => {
                format!(
                    "exists  {topic} ({partitions} partitions, fewer than the configured {}; not changed)",
                    settings.partitions
                )
            }
            TopicOutcome::Existed { topic, partitions } => {
                format!("exists  {topic} ({partitions} partitions)")
            }
        };
        eprintln!("saga-topics: {line}");
    }
    Ok(())
}
