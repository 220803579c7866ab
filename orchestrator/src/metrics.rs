//! The orchestrator's Prometheus metrics.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Labels naming a state or outcome.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabel {
    /// The state or outcome.
    pub state: String,
}

/// Labels naming why a message was ignored.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FenceLabel {
    /// `duplicate`, `stale`, `out_of_order`, `terminal` or `unknown_saga`.
    pub fence: String,
}

/// Labels naming a topic.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TopicLabel {
    /// The topic.
    pub topic: String,
}

/// The orchestrator's metrics.
#[derive(Debug)]
pub struct Metrics {
    /// Sagas created through the API.
    pub sagas_created: Counter,
    /// Transitions, by the state entered.
    pub transitions: Family<StateLabel, Counter>,
    /// Sagas that reached a terminal status, by status.
    pub sagas_finished: Family<StateLabel, Counter>,
    /// Messages ignored by fencing, by reason.
    pub fenced: Family<FenceLabel, Counter>,
    /// Messages published, by topic.
    pub published: Family<TopicLabel, Counter>,
    /// Messages sent to a dead-letter topic, by source topic.
    pub dead_letters: Family<TopicLabel, Counter>,
    /// Seconds from order creation to a terminal status.
    pub order_seconds: Histogram,
    /// Orders whose personal data was deleted by the retention sweep.
    pub pii_purged: Counter,
}

impl Metrics {
    /// Metrics registered in `registry` under the `saga` prefix.
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self {
            sagas_created: Counter::default(),
            transitions: Family::default(),
            sagas_finished: Family::default(),
            fenced: Family::default(),
            published: Family::default(),
            dead_letters: Family::default(),
            order_seconds: Histogram::new(exponential_buckets(0.005, 2.0, 16)),
            pii_purged: Counter::default(),
        };
        let saga = registry.sub_registry_with_prefix("saga");
        saga.register("created", "Sagas created through the order API", metrics.sagas_created.clone());
        saga.register("transitions", "Saga transitions by state entered", metrics.transitions.clone());
        saga.register("finished", "Sagas that reached a terminal status", metrics.sagas_finished.clone());
        saga.register("fenced_messages", "Messages ignored by reply fencing, by reason", metrics.fenced.clone());
        saga.register("published_messages", "Messages published by topic", metrics.published.clone());
        saga.register("dead_letters", "Messages dead-lettered by source topic", metrics.dead_letters.clone());
        saga.register(
            "pii_purged",
            "Orders whose personal data the retention sweep deleted",
            metrics.pii_purged.clone(),
        );
        saga.register(
            "order_duration_seconds",
            "Seconds from order creation to a terminal status",
            metrics.order_seconds.clone(),
        );
        metrics
    }
}
