//! The orchestrator's Prometheus metrics, with the ones every service exports
//! ([`platform::metrics::ServiceMetrics`]). [`EXPORTED`] lists the names as exposed; labels never carry ids
//! or personal data.
//!
//! Counted by the engine as messages are applied (so by the instance owning the saga's partition):
//! - `saga_completed_total`, `saga_compensated_total` (the order is CANCELLED), `saga_failed_total` (parked),
//!   `saga_resolved_total`: sagas entering COMPLETED, COMPENSATED, FAILED, RESOLVED;
//! - `saga_transitions_total{state}`: transitions by the state entered;
//! - `saga_step_duration_seconds{step, outcome}`: from sending an attempt (the saga entering RUNNING or
//!   COMPENSATING for it) to the reply or timeout that ended it; `outcome` is `succeeded`,
//!   `business_failure`, `transient_failure` or `timeout`; a compensation's `step` is
//!   `<step name>.compensation`. Attempts ended by an operator are not observed;
//! - `saga_step_retries_total{step}` (attempts after the first sent) and `saga_step_timeouts_total{step}`;
//! - `saga_order_duration_seconds{status}`: from order creation to a terminal status (`COMPLETED`,
//!   `CANCELLED`, `FAILED`); a parked order is observed when parked and again when resolved or finished;
//! - `saga_fenced_messages_total{fence}`, `saga_published_messages_total{topic}`.
//!
//! Elsewhere: `saga_started_total` (sagas created through the API), `saga_dead_letters_total{topic}` (the
//! reply consumer), `saga_pii_purged_total` (the retention sweep), and from the store every
//! `SAGA_GAUGE_INTERVAL_SECS` by every instance ([`crate::gauges`]): `saga_in_state{state}`,
//! `saga_oldest_age_seconds{state}` (the stuck states: [`STUCK_STATES`]) and `saga_outbox_backlog`.

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use saga_defs::Definition;

use crate::definitions::Definitions;

/// The orchestrator's own metric names, as they appear in `/metrics` (counters with their `_total`). The
/// orchestrator also exports [`platform::metrics::EXPORTED`].
pub const EXPORTED: &[&str] = &[
    "saga_started_total",
    "saga_completed_total",
    "saga_compensated_total",
    "saga_failed_total",
    "saga_resolved_total",
    "saga_in_state",
    "saga_oldest_age_seconds",
    "saga_step_duration_seconds",
    "saga_order_duration_seconds",
    "saga_step_retries_total",
    "saga_step_timeouts_total",
    "saga_fenced_messages_total",
    "saga_dead_letters_total",
    "saga_transitions_total",
    "saga_published_messages_total",
    "saga_pii_purged_total",
    "saga_outbox_backlog",
];

/// Every saga state, by name.
pub const STATES: [&str; 9] = [
    "STARTED",
    "RUNNING",
    "BACKOFF",
    "COMPENSATING",
    "COMPENSATION_BACKOFF",
    "COMPLETED",
    "COMPENSATED",
    "FAILED",
    "RESOLVED",
];

/// The states a saga can be stuck in: every state that is not final, and FAILED (parked for an operator).
pub const STUCK_STATES: [&str; 6] = ["STARTED", "RUNNING", "BACKOFF", "COMPENSATING", "COMPENSATION_BACKOFF", "FAILED"];

/// The reasons a message is fenced, as counted.
const FENCES: [&str; 6] = ["duplicate", "stale", "out_of_order", "terminal", "not_allowed", "unknown_saga"];

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

/// Labels naming a step (`reserve_stock`, or `reserve_stock.compensation` for its compensation).
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StepLabel {
    /// The step.
    pub step: String,
}

/// Labels naming a step and how one of its attempts ended.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StepOutcomeLabels {
    /// The step, as in [`StepLabel`].
    pub step: String,
    /// `succeeded`, `business_failure`, `transient_failure` or `timeout`.
    pub outcome: &'static str,
}

/// Labels naming an order status.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StatusLabel {
    /// `COMPLETED`, `CANCELLED` or `FAILED`.
    pub status: &'static str,
}

/// How an attempt at a step ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttemptOutcome {
    /// The participant did it.
    Succeeded,
    /// The participant refused it for good.
    BusinessFailure,
    /// The participant could not do it now.
    TransientFailure,
    /// No reply within the step's timeout.
    Timeout,
}

impl AttemptOutcome {
    /// The `outcome` label.
    pub fn as_str(self) -> &'static str {
        match self {
            AttemptOutcome::Succeeded => "succeeded",
            AttemptOutcome::BusinessFailure => "business_failure",
            AttemptOutcome::TransientFailure => "transient_failure",
            AttemptOutcome::Timeout => "timeout",
        }
    }
}

/// The `step` label of step `index` of `definition`, or of its compensation; `None` if there is no such step.
pub fn step_label(definition: &Definition, index: u16, compensation: bool) -> Option<String> {
    let step = definition.step(index)?;
    Some(if compensation { format!("{}.compensation", step.name) } else { step.name.to_owned() })
}

fn step_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.005, 2.0, 14))
}

fn order_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.005, 2.0, 16))
}

/// The orchestrator's metrics.
#[derive(Debug)]
pub struct Metrics {
    /// Sagas created through the API (`saga_started_total`).
    pub sagas_created: Counter,
    /// Sagas that entered COMPLETED.
    pub completed: Counter,
    /// Sagas that entered COMPENSATED.
    pub compensated: Counter,
    /// Sagas parked in FAILED.
    pub failed: Counter,
    /// Sagas an operator resolved.
    pub resolved: Counter,
    /// Transitions, by the state entered.
    pub transitions: Family<StateLabel, Counter>,
    /// Attempts at steps, from sending to the reply or timeout that ended them, by step and outcome.
    pub step_seconds: Family<StepOutcomeLabels, Histogram>,
    /// Attempts after the first sent, by step.
    pub step_retries: Family<StepLabel, Counter>,
    /// Attempts that timed out, by step.
    pub step_timeouts: Family<StepLabel, Counter>,
    /// Messages ignored by fencing, by reason.
    pub fenced: Family<FenceLabel, Counter>,
    /// Messages published, by topic.
    pub published: Family<TopicLabel, Counter>,
    /// Messages sent to a dead-letter topic, by source topic.
    pub dead_letters: Family<TopicLabel, Counter>,
    /// Seconds from order creation to a terminal status, by status.
    pub order_seconds: Family<StatusLabel, Histogram>,
    /// Sagas in each state (set periodically from the store).
    pub in_state: Family<StateLabel, Gauge>,
    /// Seconds the oldest saga of each stuck state has been in it; 0 when none (set periodically).
    pub oldest_age: Family<StateLabel, Gauge<f64, AtomicU64>>,
    /// Sagas whose outbox is not flushed yet (set periodically).
    pub outbox_backlog: Gauge,
    /// Orders whose personal data was deleted by the retention sweep.
    pub pii_purged: Counter,
    /// What every service exports: Kafka consumer lag and produce errors, HTTP durations.
    pub service: platform::metrics::ServiceMetrics,
}

impl Metrics {
    /// Metrics registered in `registry`: the orchestrator's under the `saga` prefix, with the series whose
    /// labels are known created at zero; the ones every service exports without prefix.
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self {
            sagas_created: Counter::default(),
            completed: Counter::default(),
            compensated: Counter::default(),
            failed: Counter::default(),
            resolved: Counter::default(),
            transitions: Family::default(),
            step_seconds: Family::new_with_constructor(step_histogram as fn() -> Histogram),
            step_retries: Family::default(),
            step_timeouts: Family::default(),
            fenced: Family::default(),
            published: Family::default(),
            dead_letters: Family::default(),
            order_seconds: Family::new_with_constructor(order_histogram as fn() -> Histogram),
            in_state: Family::default(),
            oldest_age: Family::default(),
            outbox_backlog: Gauge::default(),
            pii_purged: Counter::default(),
            service: platform::metrics::ServiceMetrics::register(registry),
        };
        let saga = registry.sub_registry_with_prefix("saga");
        saga.register("started", "Sagas created through the order API", metrics.sagas_created.clone());
        saga.register("completed", "Sagas that completed", metrics.completed.clone());
        saga.register("compensated", "Sagas compensated (order cancelled)", metrics.compensated.clone());
        saga.register("failed", "Sagas parked in FAILED for an operator", metrics.failed.clone());
        saga.register("resolved", "Parked sagas an operator resolved", metrics.resolved.clone());
        saga.register("in_state", "Sagas in each state", metrics.in_state.clone());
        saga.register(
            "oldest_age_seconds",
            "Seconds the oldest saga in each stuck state has been in it (0 when none)",
            metrics.oldest_age.clone(),
        );
        saga.register(
            "step_duration_seconds",
            "Seconds from sending a step's attempt to the reply or timeout that ended it, by step and outcome",
            metrics.step_seconds.clone(),
        );
        saga.register(
            "order_duration_seconds",
            "Seconds from order creation to a terminal status, by status",
            metrics.order_seconds.clone(),
        );
        saga.register("step_retries", "Attempts at a step after the first, by step", metrics.step_retries.clone());
        saga.register("step_timeouts", "Attempts at a step that timed out, by step", metrics.step_timeouts.clone());
        saga.register("transitions", "Saga transitions by state entered", metrics.transitions.clone());
        saga.register("fenced_messages", "Messages ignored by reply fencing, by reason", metrics.fenced.clone());
        saga.register("published_messages", "Messages published by topic", metrics.published.clone());
        saga.register("dead_letters", "Messages dead-lettered by source topic", metrics.dead_letters.clone());
        saga.register(
            "outbox_backlog",
            "Sagas whose outbox or timeline entries stayed unsettled longer than settling takes",
            metrics.outbox_backlog.clone(),
        );
        saga.register(
            "pii_purged",
            "Orders whose personal data the retention sweep deleted",
            metrics.pii_purged.clone(),
        );
        for state in STATES {
            drop(metrics.transitions.get_or_create(&StateLabel { state: state.to_owned() }));
            drop(metrics.in_state.get_or_create(&StateLabel { state: state.to_owned() }));
        }
        for state in STUCK_STATES {
            drop(metrics.oldest_age.get_or_create(&StateLabel { state: state.to_owned() }));
        }
        for fence in FENCES {
            drop(metrics.fenced.get_or_create(&FenceLabel { fence: fence.to_owned() }));
        }
        metrics
    }

    /// Creates the retry and timeout series of every step of `definitions` (and of their compensations) at
    /// zero, so that the first retry or timeout shows as an increase.
    pub fn init_steps(&self, definitions: &Definitions) {
        for definition in definitions.all() {
            for (index, step) in (0..).zip(&definition.steps) {
                let compensations = if step.compensation.is_some() { &[false, true][..] } else { &[false] };
                for &compensation in compensations {
                    if let Some(step) = step_label(definition, index, compensation) {
                        drop(self.step_retries.get_or_create(&StepLabel { step: step.clone() }));
                        drop(self.step_timeouts.get_or_create(&StepLabel { step }));
                    }
                }
            }
        }
    }

    /// Records an attempt at `step` that ended with `outcome` after `seconds`.
    pub fn attempt_ended(&self, step: String, outcome: AttemptOutcome, seconds: f64) {
        if outcome == AttemptOutcome::Timeout {
            self.step_timeouts.get_or_create(&StepLabel { step: step.clone() }).inc();
        }
        let labels = StepOutcomeLabels { step, outcome: outcome.as_str() };
        self.step_seconds.get_or_create(&labels).observe(seconds.max(0.0));
    }

    /// Counts a saga entering `phase`, and, if the order's `status` is now terminal, observes `seconds` since
    /// the order was created.
    pub fn entered(&self, phase: saga_defs::Phase, status: proto_events::OrderStatus, seconds: f64) {
        use saga_defs::Phase;
        self.transitions.get_or_create(&StateLabel { state: phase.name().to_owned() }).inc();
        let terminal = match phase {
            Phase::Completed => Some(&self.completed),
            Phase::Compensated => Some(&self.compensated),
            Phase::Failed => Some(&self.failed),
            Phase::Resolved => Some(&self.resolved),
            _ => None,
        };
        if let Some(counter) = terminal {
            counter.inc();
        }
        if status.is_terminal() {
            self.order_seconds.get_or_create(&StatusLabel { status: status.as_str() }).observe(seconds.max(0.0));
        }
    }

    /// Sets the state gauges from `summary`, as of `now`.
    pub fn set_states(&self, summary: &crate::gauges::StateSummary, now: chrono::DateTime<chrono::Utc>) {
        for state in STATES {
            let count = i64::try_from(summary.count(state)).unwrap_or(i64::MAX);
            self.in_state.get_or_create(&StateLabel { state: state.to_owned() }).set(count);
        }
        for state in STUCK_STATES {
            let age = summary.oldest_age_seconds(state, now);
            self.oldest_age.get_or_create(&StateLabel { state: state.to_owned() }).set(age);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_state_and_stuck_state_is_a_state_name() {
        use saga_defs::Phase;
        let phases = [
            Phase::Started,
            Phase::Running { step: 0, attempt: 1 },
            Phase::Backoff { step: 0, attempt: 1 },
            Phase::Compensating { step: 0, attempt: 1 },
            Phase::CompensationBackoff { step: 0, attempt: 1 },
            Phase::Completed,
            Phase::Compensated,
            Phase::Failed,
            Phase::Resolved,
        ];
        assert_eq!(phases.map(Phase::name), STATES);
        for state in STUCK_STATES {
            let phase = phases.iter().find(|p| p.name() == state).expect("a state");
            assert!(!phase.is_terminal() || *phase == Phase::Failed, "{state}");
        }
        assert_eq!(phases.iter().filter(|p| !p.is_terminal()).count() + 1, STUCK_STATES.len());
    }

    #[test]
    fn the_contract_is_exposed_once_every_metric_has_a_sample() {
        let mut registry = Registry::default();
        let metrics = Metrics::register(&mut registry);
        let definitions = Definitions::builtin(std::time::Duration::from_secs(10)).expect("valid");
        metrics.init_steps(&definitions);
        metrics.attempt_ended("reserve_stock".into(), AttemptOutcome::Timeout, 10.0);
        metrics.entered(saga_defs::Phase::Completed, proto_events::OrderStatus::Completed, 1.5);
        metrics.dead_letters.get_or_create(&TopicLabel { topic: "saga.reply".into() }).inc();
        metrics.published.get_or_create(&TopicLabel { topic: "saga.event".into() }).inc();
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).expect("encode");
        for name in EXPORTED {
            assert!(platform::metrics::exposes(&text, name), "{name} missing: {text}");
        }
        for series in [
            r#"saga_step_retries_total{step="charge_payment.compensation"} 0"#,
            r#"saga_step_timeouts_total{step="reserve_stock"} 1"#,
            r#"saga_step_duration_seconds_count{step="reserve_stock",outcome="timeout"} 1"#,
            r#"saga_order_duration_seconds_count{status="COMPLETED"} 1"#,
            r#"saga_completed_total 1"#,
            r#"saga_transitions_total{state="COMPLETED"} 1"#,
            r#"saga_in_state{state="RESOLVED"} 0"#,
            r#"saga_oldest_age_seconds{state="FAILED"} 0"#,
            r#"saga_fenced_messages_total{fence="unknown_saga"} 0"#,
        ] {
            assert!(text.contains(series), "{series} missing: {text}");
        }
        assert!(!text.contains(r#"saga_oldest_age_seconds{state="COMPLETED"}"#), "not a stuck state");
    }
}
