//! The saga orchestrator: it accepts orders over HTTP, runs each order's saga with the pure core from
//! `saga-defs`, persists every saga with its outbox and timeline in the document database, sends commands
//! to the participants over Kafka and applies their replies, one writer per saga.
//!
//! - [`api`]: the HTTP interface (orders, health, readiness, metrics).
//! - [`engine`]: applies a message to its saga: transition, durable write, outbox publication; [`cache`]:
//!   the sagas in flight at the owner of their partition; [`settle`]: deferred settling of the outbox and
//!   timeline.
//! - [`consumer`]: the `saga.reply` consumer, partition ownership and recovery.
//! - [`timers`]: turns passed deadlines into messages on the saga's partition.
//! - [`dlq`]: lists dead-lettered messages and replays them to their original topic.
//! - [`metrics`] and [`gauges`]: the Prometheus metrics, and the saga gauges read from the store periodically.
//! - Ports: [`store`] (MongoDB | memory), [`bus`] (Kafka | memory), [`clock`] (system | manual).
//! - [`Application`]: wiring, start-up and graceful shutdown.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use platform::http::Readiness;
use platform::kafka::{Publisher, ensure_topics};
use prometheus_client::registry::Registry;
use rdkafka::producer::Producer;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

pub mod api;
pub mod auth;
pub mod bus;
pub mod cache;
pub mod clock;
pub mod config;
pub mod consumer;
pub mod customer_ref;
pub mod definitions;
pub mod dlq;
pub mod engine;
pub mod gauges;
pub mod live;
pub mod metrics;
pub mod model;
pub mod retention;
pub mod settle;
pub mod store;
pub mod timers;

use crate::api::AppState;
use crate::bus::KafkaBus;
use crate::clock::SystemClock;
use crate::config::Settings;
use crate::consumer::{Ownership, ReplyConsumer};
use crate::customer_ref::CustomerRefs;
use crate::definitions::Definitions;
use crate::engine::Engine;
use crate::metrics::Metrics;
use crate::store::SagaStore;
use crate::store::mongo::MongoStore;
use crate::timers::{Deadlines, Timer};

/// How long running work may take to finish after a shutdown request.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// The orchestrator, built and bound, not yet running.
#[derive(Debug)]
pub struct Application {
    listener: TcpListener,
    router: axum::Router,
    consumer: ReplyConsumer,
    timer: Timer,
    live: Arc<live::LiveEvents>,
    retention: retention::Retention,
    gauges: gauges::SagaGauges,
    kafka: platform::kafka::KafkaSettings,
}

impl Application {
    /// Connects to the database and Kafka, prepares indexes and topics, and binds the HTTP listener.
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        let definitions = Arc::new(Definitions::builtin(settings.step_timeout).context("invalid saga definition")?);
        // Two connection pools: a flood of API reads must not starve the saga engine of connections.
        let client = settings.mongo.client("orchestrator").await?;
        let api_client = settings.mongo.client("orchestrator-api").await?;
        let store: Arc<dyn SagaStore> = Arc::new(MongoStore::connect(&client, &settings.mongo.database).await?);
        let api_store: Arc<dyn SagaStore> = Arc::new(MongoStore::connect(&api_client, &settings.mongo.database).await?);
        store.prepare().await.context("preparing the database (is it running?)")?;
        ensure_topics(&settings.kafka, &proto_events::topics::all()).await.context("creating Kafka topics")?;
        let publisher = Publisher::new(&settings.kafka)?;
        let reply_partitions = partition_count(&publisher, &settings.kafka.topic(proto_events::topics::REPLY)).await?;

        let mut registry = Registry::default();
        let metrics = Arc::new(Metrics::register(&mut registry));
        metrics.init_steps(&definitions);
        let topics = proto_events::topics::all();
        metrics.service.kafka.init_topics(topics.iter().map(|t| settings.kafka.topic(t)));
        let reply_topic = settings.kafka.topic(proto_events::topics::REPLY);
        drop(metrics.dead_letters.get_or_create(&metrics::TopicLabel { topic: reply_topic }));
        let publisher = publisher.with_metrics(metrics.service.kafka.clone());
        let bus = Arc::new(KafkaBus::new(publisher.clone()));
        let clock = Arc::new(SystemClock);
        let deadlines = Arc::new(Deadlines::default());
        let live = Arc::new(live::LiveEvents::default());
        let engine = Engine::new(
            store.clone(),
            bus.clone(),
            clock.clone(),
            definitions.clone(),
            metrics.clone(),
            deadlines.clone(),
        )
        .with_settle_after(settings.settle_after)
        .with_live(live.clone());
        let ownership = Arc::new(Ownership::default());
        let (starts, handed_starts) = tokio::sync::mpsc::channel(cache::HANDED_STARTS);
        let handoff = cache::Handoff::new(ownership.clone(), engine.cache().clone()).with_starts(starts);
        let consumer = ReplyConsumer::new(
            &settings.kafka,
            &settings.group_id,
            engine,
            publisher.clone(),
            ownership.clone(),
            deadlines.clone(),
            metrics.clone(),
        )?
        .with_starts(handed_starts);
        let timer = Timer::new(store.clone(), bus.clone(), clock.clone(), ownership, deadlines, settings.timer);
        let retention =
            retention::Retention::new(store.clone(), clock.clone(), settings.retention, metrics.pii_purged.clone());
        let gauges = gauges::SagaGauges::new(store.clone(), clock.clone(), metrics.clone(), settings.gauge_interval)
            .with_backlog_after(settle::backlog_after(settings.settle_after))
            .with_recount_every(settings.finished_recount_every);
        let state = AppState {
            store: api_store,
            bus,
            clock,
            definitions,
            customer_refs: CustomerRefs::new(settings.customer_ref_key.as_bytes()),
            metrics,
            reply_partitions,
            authenticator: Arc::new(
                auth::Authenticator::new(&settings.jwt_keys, &settings.jwt_issuer, &settings.jwt_audience)
                    .context("the JWT key")?,
            ),
            live: live.clone(),
            handoff: Some(handoff),
            dead_letters: Some(Arc::new(dlq::DeadLetters::new(
                &settings.kafka,
                publisher.clone(),
                &api_client.database(&settings.mongo.database),
                Arc::new(SystemClock),
            ))),
        };
        let readiness = Readiness::new("orchestrator", Duration::from_secs(2))
            .with_kafka(publisher.producer().clone())
            .with_mongo(api_client);
        let router = api::router(state, readiness, Arc::new(registry));
        let listener = platform::http::bind(&settings.http_addr).await?;
        Ok(Self { listener, router, consumer, timer, live, retention, gauges, kafka: settings.kafka.clone() })
    }

    /// The port the HTTP interface listens on.
    pub fn port(&self) -> u16 {
        self.listener.local_addr().map(|a| a.port()).unwrap_or_default()
    }

    /// Serves HTTP, consumes replies and runs the timer until `shutdown` is cancelled or a task ends; then
    /// lets running work finish for a grace period.
    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let mut tasks = JoinSet::new();
        let (s1, s2, s3, s4) = (shutdown.clone(), shutdown.clone(), shutdown.clone(), shutdown.clone());
        let (kafka, live) = (self.kafka, self.live);
        tasks.spawn(async move { ("live events", live::run(kafka, live, s4).await) });
        let (retention, s5) = (self.retention, shutdown.clone());
        tasks.spawn(async move {
            retention.run(s5).await;
            ("retention", Ok(()))
        });
        let (gauges, s6) = (self.gauges, shutdown.clone());
        tasks.spawn(async move {
            gauges.run(s6).await;
            ("saga gauges", Ok(()))
        });
        tasks.spawn(async move {
            ("http", platform::http::serve(self.listener, self.router, s1).await.map_err(Into::into))
        });
        tasks.spawn(async move { ("consumer", self.consumer.run(s2).await) });
        tasks.spawn(async move {
            self.timer.run(s3).await;
            ("timer", Ok(()))
        });
        let first = tokio::select! {
            () = shutdown.cancelled() => None,
            ended = tasks.join_next() => ended,
        };
        if let Some(ended) = first {
            report_exit(ended);
            shutdown.cancel();
        }
        let drain = async {
            while let Some(ended) = tasks.join_next().await {
                report_exit(ended);
            }
        };
        if tokio::time::timeout(SHUTDOWN_GRACE, drain).await.is_err() {
            tracing::warn!("tasks did not finish within {SHUTDOWN_GRACE:?}; aborting them");
            tasks.abort_all();
        }
        Ok(())
    }
}

fn report_exit(ended: Result<(&'static str, anyhow::Result<()>), tokio::task::JoinError>) {
    match ended {
        Ok((task, Ok(()))) => tracing::info!(task, "task finished"),
        Ok((task, Err(error))) => tracing::error!(task, error = format!("{error:#}"), "task failed"),
        Err(error) => tracing::error!(%error, "task panicked"),
    }
}

/// The number of partitions of `topic`.
async fn partition_count(publisher: &Publisher, topic: &str) -> anyhow::Result<i32> {
    let producer = publisher.producer().clone();
    let topic = topic.to_owned();
    tokio::task::spawn_blocking(move || {
        let metadata = producer.client().fetch_metadata(Some(&topic), Duration::from_secs(10))?;
        let count = metadata.topics().first().map_or(0, |t| t.partitions().len());
        anyhow::ensure!(count > 0, "topic {topic} has no partitions");
        Ok(i32::try_from(count)?)
    })
    .await?
}
