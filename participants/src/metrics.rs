//! The runtime's Prometheus metrics, registered in the registry that `/metrics` serves.
//!
//! - `participant_commands_total{command, outcome}`: commands handled, by command kind and outcome
//!   (`succeeded`, `business_failure`, `transient_failure`, `duplicate`).
//! - `participant_dead_letters_total{reason}`: messages sent to the dead-letter topic.
//! - `participant_processing_seconds{command}`: time from receiving a command to storing its offset.
//! - `participant_transient_errors_total{command}`: failed attempts that were retried or gave up.
//!
//! And what every service exports ([`platform::metrics`]): `kafka_consumer_lag{topic, partition}`,
//! `kafka_produce_errors_total{topic}`, `http_request_duration_seconds{route, method, status}`.

use platform::metrics::ServiceMetrics;
use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// How a command ended, as counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum Outcome {
    /// The effect was applied and succeeded.
    succeeded,
    /// Refused for good.
    business_failure,
    /// Gave up for now after retrying (the orchestrator retries).
    transient_failure,
    /// Handled before: the saved reply was sent again.
    duplicate,
}

/// Why a message was dead-lettered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum DeadLetterReason {
    /// Not a decodable, valid message.
    undecodable,
    /// A valid message that is not a command.
    not_a_command,
    /// A command for another participant.
    misrouted,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct CommandLabels {
    command: &'static str,
    outcome: Outcome,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct KindLabels {
    command: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct DeadLetterLabels {
    reason: DeadLetterReason,
}

/// The runtime's metrics. Cheap to clone (the counters are shared).
#[derive(Debug, Clone)]
pub struct Metrics {
    commands: Family<CommandLabels, Counter>,
    dead_letters: Family<DeadLetterLabels, Counter>,
    latency: Family<KindLabels, Histogram>,
    transient_errors: Family<KindLabels, Counter>,
    service: ServiceMetrics,
}

fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 16))
}

impl Metrics {
    /// Creates the metrics and registers them in `registry`, with the ones every service exports.
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self {
            commands: Family::default(),
            dead_letters: Family::default(),
            latency: Family::new_with_constructor(latency_histogram as fn() -> Histogram),
            transient_errors: Family::default(),
            service: ServiceMetrics::register(registry),
        };
        registry.register("participant_commands", "Commands handled, by kind and outcome", metrics.commands.clone());
        registry.register(
            "participant_dead_letters",
            "Messages dead-lettered, by reason",
            metrics.dead_letters.clone(),
        );
        registry.register(
            "participant_processing_seconds",
            "Seconds from receiving a command to storing its offset",
            metrics.latency.clone(),
        );
        registry.register(
            "participant_transient_errors",
            "Failed attempts at a command that were retried or given up",
            metrics.transient_errors.clone(),
        );
        metrics
    }

    /// Creates the series of `commands` (every outcome) and of every dead-letter reason at zero, so that
    /// they are exported before the first event.
    pub fn init(&self, commands: &[&'static str]) {
        for &command in commands {
            for outcome in
                [Outcome::succeeded, Outcome::business_failure, Outcome::transient_failure, Outcome::duplicate]
            {
                drop(self.commands.get_or_create(&CommandLabels { command, outcome }));
            }
            drop(self.transient_errors.get_or_create(&KindLabels { command }));
        }
        for reason in [DeadLetterReason::undecodable, DeadLetterReason::not_a_command, DeadLetterReason::misrouted] {
            drop(self.dead_letters.get_or_create(&DeadLetterLabels { reason }));
        }
    }

    /// What every service exports: Kafka consumer lag and produce errors, HTTP durations.
    pub fn service(&self) -> &ServiceMetrics {
        &self.service
    }

    /// Counts a handled command.
    pub fn command(&self, command: &'static str, outcome: Outcome) {
        self.commands.get_or_create(&CommandLabels { command, outcome }).inc();
    }

    /// How many commands of `command` ended with `outcome`.
    pub fn commands(&self, command: &'static str, outcome: Outcome) -> u64 {
        self.commands.get(&CommandLabels { command, outcome }).map_or(0, |c| c.get())
    }

    /// Counts a dead letter.
    pub fn dead_letter(&self, reason: DeadLetterReason) {
        self.dead_letters.get_or_create(&DeadLetterLabels { reason }).inc();
    }

    /// How many messages were dead-lettered for `reason`.
    pub fn dead_letters(&self, reason: DeadLetterReason) -> u64 {
        self.dead_letters.get(&DeadLetterLabels { reason }).map_or(0, |c| c.get())
    }

    /// Records how long a command took, in seconds.
    pub fn latency(&self, command: &'static str, seconds: f64) {
        self.latency.get_or_create(&KindLabels { command }).observe(seconds);
    }

    /// Counts a failed attempt.
    pub fn transient_error(&self, command: &'static str) {
        self.transient_errors.get_or_create(&KindLabels { command }).inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_are_exposed_with_their_labels() {
        let mut registry = Registry::default();
        let metrics = Metrics::register(&mut registry);
        metrics.command("payment.charge", Outcome::duplicate);
        metrics.dead_letter(DeadLetterReason::undecodable);
        metrics.latency("payment.charge", 0.01);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).expect("encode");
        assert!(
            text.contains(r#"participant_commands_total{command="payment.charge",outcome="duplicate"} 1"#),
            "{text}"
        );
        assert!(text.contains(r#"participant_dead_letters_total{reason="undecodable"} 1"#), "{text}");
        assert!(text.contains("participant_processing_seconds_count{command=\"payment.charge\"} 1"), "{text}");
        assert_eq!(metrics.commands("payment.charge", Outcome::duplicate), 1);
    }

    #[test]
    fn initialised_series_are_exported_at_zero() {
        let mut registry = Registry::default();
        Metrics::register(&mut registry).init(&["shipping.cancel"]);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).expect("encode");
        assert!(
            text.contains(r#"participant_commands_total{command="shipping.cancel",outcome="business_failure"} 0"#),
            "{text}"
        );
        assert!(text.contains(r#"participant_dead_letters_total{reason="misrouted"} 0"#), "{text}");
    }
}
