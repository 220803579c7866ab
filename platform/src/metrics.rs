//! The metrics every service exports besides its own, and what records them:
//!
//! - `kafka_consumer_lag{topic, partition}` (gauge): messages in a partition assigned to this instance that
//!   its consumer group has not committed yet (the end offset minus the committed offset; until the group's
//!   first commit, minus the stored offset), from librdkafka's statistics, which
//!   [`KafkaSettings::service_consumer_config`](crate::kafka::KafkaSettings::service_consumer_config)
//!   turns on. A consumer created with [`LagContext`] (or a context that calls [`ConsumerLag::record`])
//!   updates it; a partition that is revoked, or whose lag is unknown, loses its series.
//! - `kafka_produce_errors_total{topic}` (counter): publications the broker did not acknowledge, counted by
//!   [`Publisher::send`](crate::kafka::Publisher::send) once it has [`KafkaMetrics`].
//! - `http_request_duration_seconds{route, method, status}` (histogram): every HTTP request, by the route
//!   template that matched (`/v1/orders/{order_id}`, never the raw path), or `unmatched`; recorded by the
//!   layer [`track_requests`] adds to a service's router.
//!
//! No label carries an id or personal data. [`EXPORTED`] lists the names, as exposed, for tests that check
//! that dashboards and alert rules refer to metrics that exist.

use std::collections::BTreeSet;
use std::sync::{Mutex, PoisonError};
use std::time::Instant;

use axum::Router;
use axum::extract::{MatchedPath, Request, State};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::Response;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use rdkafka::ClientContext;
use rdkafka::consumer::ConsumerContext;
use rdkafka::statistics::{Partition, Statistics};

/// The names every service exposes, as they appear in `/metrics` (counters with their `_total`).
pub const EXPORTED: &[&str] = &["kafka_consumer_lag", "kafka_produce_errors_total", "http_request_duration_seconds"];

/// The `route` label of a request that matched no route.
pub const UNMATCHED: &str = "unmatched";

/// How often librdkafka reports the statistics the consumer lag comes from, in milliseconds.
pub const STATISTICS_INTERVAL_MS: &str = "5000";

/// The metrics every service exports, registered together.
#[derive(Debug, Clone)]
pub struct ServiceMetrics {
    /// Consumer lag and produce errors.
    pub kafka: KafkaMetrics,
    /// HTTP request durations.
    pub http: HttpMetrics,
}

impl ServiceMetrics {
    /// Creates the metrics and registers them in `registry`, without prefix.
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self { kafka: KafkaMetrics::default(), http: HttpMetrics::default() };
        registry.register(
            "kafka_consumer_lag",
            "Messages not yet committed by this instance's consumer group, by assigned partition",
            metrics.kafka.consumer_lag.clone(),
        );
        registry.register(
            "kafka_produce_errors",
            "Publications the broker did not acknowledge, by topic",
            metrics.kafka.produce_errors.clone(),
        );
        registry.register(
            "http_request_duration_seconds",
            "HTTP requests by route template, method and status, in seconds until the response head",
            metrics.http.requests.clone(),
        );
        metrics
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, PartialOrd, Ord, EncodeLabelSet)]
struct PartitionLabels {
    topic: String,
    partition: i32,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TopicLabels {
    topic: String,
}

/// Consumer lag and produce errors. Cheap to clone (clones share the series).
#[derive(Debug, Clone, Default)]
pub struct KafkaMetrics {
    consumer_lag: Family<PartitionLabels, Gauge>,
    produce_errors: Family<TopicLabels, Counter>,
}

impl KafkaMetrics {
    /// Creates the produce-error series of `topics` (full names) at zero, so that the first error shows as
    /// an increase.
    pub fn init_topics(&self, topics: impl IntoIterator<Item = String>) {
        for topic in topics {
            drop(self.produce_errors.get_or_create(&TopicLabels { topic }));
        }
    }

    /// Counts a publication to `topic` (full name) that failed.
    pub fn produce_error(&self, topic: &str) {
        self.produce_errors.get_or_create(&TopicLabels { topic: topic.to_owned() }).inc();
    }

    /// How many publications to `topic` failed.
    pub fn produce_errors(&self, topic: &str) -> u64 {
        self.produce_errors.get(&TopicLabels { topic: topic.to_owned() }).map_or(0, |c| c.get())
    }

    /// The last lag recorded for `partition` of `topic`, if it is exported.
    pub fn consumer_lag(&self, topic: &str, partition: i32) -> Option<i64> {
        self.consumer_lag.get(&PartitionLabels { topic: topic.to_owned(), partition }).map(|g| g.get())
    }
}

/// Records one consumer's lag from its statistics, and drops the series of partitions it no longer reports.
#[derive(Debug)]
pub struct ConsumerLag {
    metrics: KafkaMetrics,
    shown: Mutex<BTreeSet<PartitionLabels>>,
}

impl ConsumerLag {
    /// Records into `metrics`.
    pub fn new(metrics: KafkaMetrics) -> Self {
        Self { metrics, shown: Mutex::new(BTreeSet::new()) }
    }

    /// Sets the lag of every assigned partition with a known lag; removes the series this consumer set
    /// before for partitions that no longer qualify (revoked, or lag unknown).
    pub fn record(&self, statistics: &Statistics) {
        let mut seen = BTreeSet::new();
        for (topic, stats) in &statistics.topics {
            for partition in stats.partitions.values() {
                if let Some(lag) = lag_of(partition) {
                    let labels = PartitionLabels { topic: topic.clone(), partition: partition.partition };
                    self.metrics.consumer_lag.get_or_create(&labels).set(lag);
                    seen.insert(labels);
                }
            }
        }
        let mut shown = self.shown.lock().unwrap_or_else(PoisonError::into_inner);
        for gone in shown.difference(&seen) {
            self.metrics.consumer_lag.remove(gone);
        }
        *shown = seen;
    }
}

/// The lag of a partition the consumer is assigned (librdkafka's internal partition -1 and partitions it
/// does not fetch are not): from the committed offset, else from the stored one; with neither (the group
/// never committed in this partition, so it starts at the earliest offset, see
/// [`KafkaSettings::consumer_config`](crate::kafka::KafkaSettings::consumer_config)) the messages between the
/// low watermark and the end. `None` while the offsets are not known yet.
fn lag_of(p: &Partition) -> Option<i64> {
    let assigned = !matches!(p.fetch_state.as_str(), "none" | "stopping" | "stopped");
    if p.partition < 0 || !assigned {
        return None;
    }
    if let Some(lag) = [p.consumer_lag, p.consumer_lag_stored].into_iter().find(|lag| *lag >= 0) {
        return Some(lag);
    }
    // librdkafka measures against the last stable offset under read_committed, else the high watermark.
    let end = if p.ls_offset >= 0 { p.ls_offset } else { p.hi_offset };
    let from_earliest = p.fetch_state == "active" && p.committed_offset < 0 && p.stored_offset < 0;
    (from_earliest && end >= 0 && p.lo_offset >= 0).then(|| (end - p.lo_offset).max(0))
}

/// A consumer context that only records the consumer's lag (see [`ConsumerLag`]).
#[derive(Debug)]
pub struct LagContext {
    lag: ConsumerLag,
}

impl LagContext {
    /// Records into `metrics`.
    pub fn new(metrics: KafkaMetrics) -> Self {
        Self { lag: ConsumerLag::new(metrics) }
    }
}

impl ClientContext for LagContext {
    fn stats(&self, statistics: Statistics) {
        self.lag.record(&statistics);
    }
}

impl ConsumerContext for LagContext {}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HttpLabels {
    route: String,
    method: &'static str,
    status: u16,
}

fn http_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 16))
}

/// HTTP request durations. Cheap to clone (clones share the series).
#[derive(Debug, Clone)]
pub struct HttpMetrics {
    requests: Family<HttpLabels, Histogram>,
}

impl Default for HttpMetrics {
    fn default() -> Self {
        Self { requests: Family::new_with_constructor(http_histogram as fn() -> Histogram) }
    }
}

impl HttpMetrics {
    /// Records a request that took `seconds`.
    pub fn observe(&self, route: &str, method: &Method, status: u16, seconds: f64) {
        let labels = HttpLabels { route: route.to_owned(), method: method_label(method), status };
        self.requests.get_or_create(&labels).observe(seconds);
    }
}

/// The method as a label: the standard ones by name, anything else as `other` (clients choose methods).
fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

/// `router` with every request recorded in `metrics`. Call it on the service's whole router, after every
/// route is added: the layer wraps the routes present (and the fallback), and reads the matched route
/// template, which only exists inside the router.
pub fn track_requests<S>(router: Router<S>, metrics: HttpMetrics) -> Router<S>
where
    S: Clone + Send + Sync + 'static,
{
    router.layer(axum::middleware::from_fn_with_state(metrics, record_request))
}

async fn record_request(State(metrics): State<HttpMetrics>, request: Request, next: Next) -> Response {
    let route = request.extensions().get::<MatchedPath>().map_or(UNMATCHED, MatchedPath::as_str).to_owned();
    let method = request.method().clone();
    let started = Instant::now();
    let response = next.run(request).await;
    metrics.observe(&route, &method, response.status().as_u16(), started.elapsed().as_secs_f64());
    response
}

/// Whether the text exposition `text` has the metric `name` (as exposed: counters with `_total`): a sample
/// of it (histograms: of its `_bucket`, `_sum` or `_count`), or its `# HELP` or `# TYPE` line (which
/// names a counter without `_total`).
pub fn exposes(text: &str, name: &str) -> bool {
    let described = |base: &str| {
        text.lines().any(|line| {
            let mut words = line.split_whitespace();
            matches!(words.next(), Some("#"))
                && matches!(words.next(), Some("HELP" | "TYPE"))
                && words.next() == Some(base)
        })
    };
    let sampled = text.lines().filter(|l| !l.starts_with('#')).any(|line| {
        let metric = line.split(['{', ' ']).next().unwrap_or_default();
        metric == name || ["_bucket", "_sum", "_count"].iter().any(|s| metric.strip_suffix(s) == Some(name))
    });
    sampled || described(name) || name.strip_suffix("_total").is_some_and(described)
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use axum::body::Body;
    use axum::routing::get;
    use rdkafka::statistics::Topic;
    use tower::ServiceExt;

    use super::*;

    fn encode(registry: &Registry) -> String {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, registry).expect("encode");
        text
    }

    /// Offset used by librdkafka for "not known".
    const INVALID: i64 = -1001;

    /// Partition `id` as librdkafka reports it in `fetch_state` before any offset is known.
    fn partition(id: i32, fetch_state: &str) -> Partition {
        Partition {
            partition: id,
            fetch_state: fetch_state.to_owned(),
            committed_offset: INVALID,
            stored_offset: INVALID,
            lo_offset: INVALID,
            hi_offset: INVALID,
            ls_offset: INVALID,
            consumer_lag: -1,
            consumer_lag_stored: -1,
            ..Partition::default()
        }
    }

    /// Partition `id`, fetching, with `messages` between the low watermark 10 and the end.
    fn fetching(id: i32, messages: i64) -> Partition {
        Partition { lo_offset: 10, hi_offset: 10 + messages, ls_offset: 10 + messages, ..partition(id, "active") }
    }

    fn statistics(topic: &str, partitions: Vec<Partition>) -> Statistics {
        let partitions = partitions.into_iter().map(|p| (p.partition, p)).collect();
        let topic_stats = Topic { topic: topic.to_owned(), partitions, ..Topic::default() };
        Statistics { topics: HashMap::from([(topic.to_owned(), topic_stats)]), ..Statistics::default() }
    }

    #[test]
    fn consumer_lag_is_exported_for_assigned_partitions_with_a_known_lag() {
        let mut registry = Registry::default();
        let metrics = ServiceMetrics::register(&mut registry);
        let lag = ConsumerLag::new(metrics.kafka.clone());
        lag.record(&statistics(
            "saga.reply",
            vec![
                Partition {
                    committed_offset: 13,
                    consumer_lag: 7,
                    stored_offset: 17,
                    consumer_lag_stored: 3,
                    ..fetching(0, 10)
                },
                // Not committed yet: the lag from the stored offset.
                Partition { stored_offset: 16, consumer_lag_stored: 4, ..fetching(1, 10) },
                // Never committed nor stored: the group starts at the low watermark.
                fetching(2, 5),
                Partition { consumer_lag: 9, ..partition(3, "none") }, // not assigned here
                partition(4, "offset-query"),                          // nothing known yet
                partition(-1, "none"),                                 // librdkafka's internal partition
            ],
        ));
        let text = encode(&registry);
        assert!(text.contains(r#"kafka_consumer_lag{topic="saga.reply",partition="0"} 7"#), "{text}");
        assert!(text.contains(r#"kafka_consumer_lag{topic="saga.reply",partition="1"} 4"#), "{text}");
        assert!(text.contains(r#"kafka_consumer_lag{topic="saga.reply",partition="2"} 5"#), "{text}");
        for absent in ["3", "4", "-1"] {
            assert!(!text.contains(&format!(r#"partition="{absent}""#)), "partition {absent}: {text}");
        }

        // Partition 0 is revoked: its series goes; partition 1 is updated.
        let revoked = Partition { consumer_lag: 7, ..partition(0, "stopped") };
        let caught_up = Partition { committed_offset: 20, consumer_lag: 0, ..fetching(1, 10) };
        lag.record(&statistics("saga.reply", vec![revoked, caught_up]));
        assert_eq!(metrics.kafka.consumer_lag("saga.reply", 0), None);
        assert_eq!(metrics.kafka.consumer_lag("saga.reply", 1), Some(0));
        assert_eq!(metrics.kafka.consumer_lag("saga.reply", 2), None, "a partition no longer reported");
        lag.record(&Statistics::default());
        assert_eq!(metrics.kafka.consumer_lag("saga.reply", 1), None, "a topic no longer reported");
    }

    #[test]
    fn produce_errors_start_at_zero_and_count_by_topic() {
        let mut registry = Registry::default();
        let metrics = ServiceMetrics::register(&mut registry);
        metrics.kafka.init_topics(["saga.reply".to_owned()]);
        assert!(encode(&registry).contains(r#"kafka_produce_errors_total{topic="saga.reply"} 0"#));
        metrics.kafka.produce_error("saga.reply");
        assert!(encode(&registry).contains(r#"kafka_produce_errors_total{topic="saga.reply"} 1"#));
        assert_eq!(metrics.kafka.produce_errors("saga.reply"), 1);
    }

    #[tokio::test]
    async fn a_publication_the_broker_does_not_acknowledge_is_counted_by_the_publisher() {
        // Nothing listens on port 1: the message times out undelivered.
        let mut settings = crate::kafka::KafkaSettings::local("127.0.0.1:1", "unit.");
        settings.extra.push(("message.timeout.ms".to_owned(), "200".to_owned()));
        let metrics = KafkaMetrics::default();
        let publisher = crate::kafka::Publisher::new(&settings).expect("a producer").with_metrics(metrics.clone());
        let headers = rdkafka::message::OwnedHeaders::new();
        let sent = publisher.send("unit.saga.reply", Some(b"key"), b"payload", headers).await;
        assert!(sent.is_err(), "{sent:?}");
        assert_eq!(metrics.produce_errors("unit.saga.reply"), 1);
        assert_eq!(metrics.produce_errors("unit.saga.event"), 0);
    }

    async fn call(router: &Router, method: Method, uri: &str) -> u16 {
        let request = Request::builder().method(method).uri(uri).body(Body::empty()).expect("a request");
        router.clone().oneshot(request).await.expect("infallible").status().as_u16()
    }

    #[tokio::test]
    async fn requests_are_recorded_by_route_template_never_by_raw_path() {
        let mut registry = Registry::default();
        let metrics = ServiceMetrics::register(&mut registry);
        let routes = Router::new()
            .route("/v1/orders/{order_id}", get(|| async { "order" }))
            .merge(Router::new().route("/health", get(|| async { "ok" })));
        let router = track_requests(routes, metrics.http.clone());
        let id = "0198f3c2-5b7e-7c41-9d1a-3f2b6c8e4a10";
        assert_eq!(call(&router, Method::GET, &format!("/v1/orders/{id}")).await, 200);
        assert_eq!(call(&router, Method::GET, "/v1/orders/another-id").await, 200);
        assert_eq!(call(&router, Method::GET, "/health").await, 200);
        assert_eq!(call(&router, Method::GET, &format!("/nothing/here/{id}")).await, 404);
        assert_eq!(call(&router, Method::POST, "/health").await, 405);
        assert_eq!(call(&router, Method::from_bytes(b"BREW").expect("a method"), "/health").await, 405);

        let text = encode(&registry);
        let count = |labels: &str| format!("http_request_duration_seconds_count{{{labels}}}");
        assert!(text.contains(&(count(r#"route="/v1/orders/{order_id}",method="GET",status="200""#) + " 2")), "{text}");
        assert!(text.contains(&(count(r#"route="/health",method="GET",status="200""#) + " 1")), "{text}");
        assert!(text.contains(&(count(r#"route="unmatched",method="GET",status="404""#) + " 1")), "{text}");
        assert!(text.contains(&(count(r#"route="/health",method="POST",status="405""#) + " 1")), "{text}");
        assert!(text.contains(&(count(r#"route="/health",method="other",status="405""#) + " 1")), "{text}");
        assert!(!text.contains(id) && !text.contains("another-id"), "raw paths leaked into labels: {text}");
    }

    #[test]
    fn exposes_finds_samples_and_descriptors_of_every_kind() {
        let mut registry = Registry::default();
        let metrics = ServiceMetrics::register(&mut registry);
        assert!(!EXPORTED.iter().any(|name| exposes(&encode(&registry), name)), "empty families are not exported");
        metrics.kafka.init_topics(["saga.reply".to_owned()]);
        metrics.http.observe("/health", &Method::GET, 200, 0.01);
        ConsumerLag::new(metrics.kafka.clone()).record(&statistics("saga.reply", vec![fetching(0, 1)]));
        let text = encode(&registry);
        for name in EXPORTED {
            assert!(exposes(&text, name), "{name}: {text}");
        }
        assert!(!exposes(&text, "kafka_consumer"), "a prefix is not a name");
        assert!(!exposes(&text, "kafka_produce_errors_total_total"));
        assert!(exposes("saga_started_total 3\n", "saga_started_total"));
        assert!(exposes("# TYPE saga_started counter\n", "saga_started_total"));
        assert!(exposes("# HELP saga_step_duration_seconds Seconds.\n", "saga_step_duration_seconds"));
        assert!(exposes("saga_step_duration_seconds_sum{step=\"a\"} 1.0\n", "saga_step_duration_seconds"));
        assert!(!exposes("saga_step_duration_seconds_sum{step=\"a\"} 1.0\n", "saga_step_duration"));
    }
}
