//! Creates the saga system's Kafka topics (idempotent): the command, reply and event topics and a `.dlq`
//! twin of each. Partitions and replication factor come from `KAFKA_TOPIC_PARTITIONS` and
//! `KAFKA_REPLICATION_FACTOR`. `make infra-up` runs it once Kafka answers.

use std::process::ExitCode;
use std::time::Duration;

use platform::kafka::{KafkaSettings, TopicOutcome, ensure_topics};

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
