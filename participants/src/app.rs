//! Wiring a domain into a running service: [`Application::build`] reads nothing from the environment (its
//! [`Settings`] do, in [`Settings::from_env`]), creates the Kafka topics the service needs, opens the
//! domain (indexes, caches), binds the HTTP listener (port 0 works) and subscribes the consumer;
//! [`Application::run_until_stopped`] serves HTTP and consumes commands until the token is cancelled.
//!
//! Environment (besides `KAFKA_*`, `MONGODB_URI` and the domains' own): `HTTP_ADDR` (the participant's
//! default, such as `127.0.0.1:8081`), `KAFKA_GROUP_ID` (default: the participant's name),
//! `MONGODB_DATABASE` (default: the participant's name), `PARTICIPANT_TRANSIENT_GIVE_UP_SECS` (default 30).

use std::future::Future;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use backon::{ExponentialBuilder, Retryable};
use mongodb::Database;
use platform::config;
use platform::http::{Readiness, ops_router};
use platform::kafka::{KafkaSettings, Publisher, ensure_topics};
use platform::mongo::MongoSettings;
use prometheus_client::registry::Registry;
use proto_events::{CommandKind, topics};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::clock::{Clock, SystemClock};
use crate::domain::Domain;
use crate::metrics::Metrics;
use crate::runtime::{self, Processor, Runtime, RuntimeSettings};
use crate::store;

/// A service that could not start or stopped on an error.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A setting is invalid.
    #[error(transparent)]
    Config(#[from] config::Error),
    /// Kafka refused something at start-up.
    #[error(transparent)]
    Kafka(Box<platform::kafka::Error>),
    /// The database connection could not be set up.
    #[error(transparent)]
    Mongo(#[from] platform::mongo::Error),
    /// The domain could not be opened (indexes, caches).
    #[error("cannot open the {participant} domain: {source}")]
    Open {
        /// The participant.
        participant: &'static str,
        /// Why.
        source: store::Error,
    },
    /// The consumer could not start.
    #[error(transparent)]
    Runtime(Box<runtime::Error>),
    /// The HTTP listener could not be bound or failed.
    #[error("HTTP on {addr}: {reason}")]
    Http {
        /// The address.
        addr: String,
        /// What failed.
        reason: String,
    },
    /// A task of the service panicked.
    #[error("the {task} task failed: {reason}")]
    Task {
        /// Which task.
        task: &'static str,
        /// Its panic or cancellation.
        reason: String,
    },
}

impl From<platform::kafka::Error> for Error {
    fn from(error: platform::kafka::Error) -> Self {
        Error::Kafka(Box::new(error))
    }
}

impl From<runtime::Error> for Error {
    fn from(error: runtime::Error) -> Self {
        Error::Runtime(Box::new(error))
    }
}

/// What a domain needs to run as a service of its own.
pub trait Service: Domain + Sized {
    /// The domain's own settings.
    type Settings: std::fmt::Debug + Clone + Send + Sync + 'static;

    /// Where the service listens unless `HTTP_ADDR` says otherwise.
    const DEFAULT_HTTP_ADDR: &'static str;

    /// The domain's settings from the environment.
    fn settings_from_env() -> Result<Self::Settings, config::Error>;

    /// Opens the domain over its database: creates indexes (idempotent) and loads what it caches.
    fn open(
        db: &Database,
        settings: &Self::Settings,
        clock: Arc<dyn Clock>,
    ) -> impl Future<Output = Result<Self, store::Error>> + Send;

    /// The domain's HTTP routes.
    fn routes(service: Arc<Self>) -> Router;
}

/// Everything a participant service is configured with.
#[derive(Debug, Clone)]
pub struct Settings<S> {
    /// Kafka.
    pub kafka: KafkaSettings,
    /// The database (`MONGODB_URI`, `MONGODB_DATABASE`).
    pub mongo: MongoSettings,
    /// `HTTP_ADDR`.
    pub http_addr: String,
    /// `KAFKA_GROUP_ID`.
    pub group_id: String,
    /// Retries.
    pub runtime: RuntimeSettings,
    /// The domain's own settings.
    pub domain: S,
}

impl<S> Settings<S> {
    /// The settings of service `D` from the environment.
    pub fn from_env<D: Service<Settings = S>>() -> Result<Self, Error> {
        let name = D::PARTICIPANT.name();
        Ok(Self {
            kafka: KafkaSettings::from_env()?,
            mongo: MongoSettings::from_env("MONGODB_DATABASE", name),
            http_addr: config::string("HTTP_ADDR", D::DEFAULT_HTTP_ADDR),
            group_id: config::string("KAFKA_GROUP_ID", name),
            runtime: RuntimeSettings::from_env()?,
            domain: D::settings_from_env()?,
        })
    }
}

/// A participant service, built and ready to run.
#[derive(Debug)]
pub struct Application<D: Service> {
    listener: TcpListener,
    addr: std::net::SocketAddr,
    router: Router,
    runtime: Runtime<D>,
    service: Arc<D>,
    metrics: Metrics,
}

impl<D: Service> Application<D> {
    /// Sets everything up: topics, database, domain, HTTP listener, consumer. Fails if a dependency stays
    /// unreachable through a few retries.
    pub async fn build(settings: Settings<D::Settings>) -> Result<Self, Error> {
        Self::build_with_clock(settings, Arc::new(SystemClock)).await
    }

    /// [`Application::build`] with a clock of the caller's choosing.
    pub async fn build_with_clock(settings: Settings<D::Settings>, clock: Arc<dyn Clock>) -> Result<Self, Error> {
        let name = D::PARTICIPANT.name();
        ensure_service_topics::<D>(&settings.kafka).await?;
        let client = settings.mongo.client(name).await?;
        let db = client.database(&settings.mongo.database);
        let service = Arc::new(open::<D>(&db, &settings.domain, &clock).await?);
        let mut registry = Registry::default();
        let metrics = Metrics::register(&mut registry);
        let kinds: Vec<&'static str> =
            CommandKind::ALL.iter().filter(|k| k.participant() == D::PARTICIPANT).map(|k| k.message_type()).collect();
        metrics.init(&kinds);
        let kafka_metrics = metrics.service().kafka.clone();
        let published = [topics::REPLY.to_owned(), topics::dlq(D::PARTICIPANT.command_topic())];
        kafka_metrics.init_topics(published.iter().map(|t| settings.kafka.topic(t)));
        let publisher = Publisher::new(&settings.kafka)?.with_metrics(kafka_metrics);
        let readiness =
            Readiness::new(name, Duration::from_secs(3)).with_kafka(publisher.producer().clone()).with_mongo(client);
        let routes = D::routes(Arc::clone(&service)).merge(ops_router(readiness, Arc::new(registry)));
        let router = platform::metrics::track_requests(routes, metrics.service().http.clone());
        let processor = Processor::new(Arc::clone(&service), settings.runtime.clone(), clock, metrics.clone());
        let runtime = Runtime::new(processor, &settings.kafka, &settings.group_id, publisher)?;
        let http_error = |reason: String| Error::Http { addr: settings.http_addr.clone(), reason };
        let listener = platform::http::bind(&settings.http_addr).await.map_err(|e| http_error(e.to_string()))?;
        let addr = listener.local_addr().map_err(|e| http_error(e.to_string()))?;
        tracing::info!(participant = name, %addr, database = %settings.mongo.database, group = %settings.group_id, "built");
        Ok(Self { listener, addr, router, runtime, service, metrics })
    }

    /// The HTTP port (useful when built with port 0).
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// The domain, as the service runs it.
    pub fn service(&self) -> &Arc<D> {
        &self.service
    }

    /// The runtime's metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Serves HTTP and consumes commands until `shutdown` is cancelled; the message being processed then is
    /// finished, open HTTP requests too.
    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> Result<(), Error> {
        let http_shutdown = shutdown.child_token();
        let http = tokio::spawn(platform::http::serve(self.listener, self.router, http_shutdown.clone()));
        let consumer = tokio::spawn(self.runtime.run(shutdown.clone()));
        let consumed = consumer.await;
        // However the consumer ended, the service is going down: stop HTTP as well.
        http_shutdown.cancel();
        let served = http.await;
        consumed.map_err(|e| Error::Task { task: "consumer", reason: e.to_string() })?;
        let served = served.map_err(|e| Error::Task { task: "http", reason: e.to_string() })?;
        served.map_err(|e| Error::Http { addr: self.addr.to_string(), reason: e.to_string() })?;
        tracing::info!("stopped");
        Ok(())
    }
}

/// The command topic of `D`, its dead-letter twin and the reply topic.
async fn ensure_service_topics<D: Service>(kafka: &KafkaSettings) -> Result<(), Error> {
    let command = D::PARTICIPANT.command_topic();
    let wanted = [command.to_owned(), topics::dlq(command), topics::REPLY.to_owned()];
    let ensure = || ensure_topics(kafka, &wanted);
    ensure.retry(startup_backoff()).notify(|e, d| tracing::warn!(error = %e, delay = ?d, "topics not ready")).await?;
    Ok(())
}

async fn open<D: Service>(db: &Database, settings: &D::Settings, clock: &Arc<dyn Clock>) -> Result<D, Error> {
    let open = || D::open(db, settings, Arc::clone(clock));
    let notify = |e: &store::Error, d: Duration| tracing::warn!(error = %e, delay = ?d, "database not ready");
    open.retry(startup_backoff())
        .notify(notify)
        .await
        .map_err(|source| Error::Open { participant: D::PARTICIPANT.name(), source })
}

/// Start-up retries: about half a minute in all.
fn startup_backoff() -> ExponentialBuilder {
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(200))
        .with_max_delay(Duration::from_secs(5))
        .with_max_times(8)
}

/// The main of a participant binary: JSON logs and traces, settings from the environment, build, run until
/// SIGTERM.
pub async fn serve<D: Service>() -> ExitCode {
    let name = D::PARTICIPANT.name();
    // Kept to the end: dropping it flushes the last spans.
    let _telemetry = match platform::telemetry::init(name) {
        Ok(telemetry) => telemetry,
        Err(error) => {
            eprintln!("{name}: {error}");
            return ExitCode::FAILURE;
        }
    };
    let shutdown = platform::shutdown::on_signal();
    let result = async {
        let settings = Settings::from_env::<D>()?;
        Application::<D>::build(settings).await?.run_until_stopped(shutdown).await
    }
    .await;
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(error = %error, "{name} failed");
            ExitCode::FAILURE
        }
    }
}
