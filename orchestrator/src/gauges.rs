//! The saga gauges: how many sagas are in each state (`saga_in_state`), how long the oldest saga of each
//! stuck state has been in it (`saga_oldest_age_seconds`, for stuck detection) and how many sagas have an
//! outbox or timeline entries left unsettled for longer than settling takes (`saga_outbox_backlog`; see
//! [`crate::settle`]). They are read from the store every
//! `SAGA_GAUGE_INTERVAL_SECS` by every instance, so every instance exports the same figures (a dashboard
//! takes any one of them, with `max`).
//!
//! The store streams each saga's state and the time it entered it into a [`StateSummary`] (counts and
//! oldest times, so memory does not grow with the stored sagas): FerretDB's `$group` has only `$sum` and
//! `$count`, and would scan anyway.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio_util::sync::CancellationToken;

use crate::clock::Clock;
use crate::metrics::Metrics;
pub use crate::store::StateSummary;
use crate::store::{self, SagaStore};

/// Counts the sagas of each state and finds the earliest time one entered it, from `(state, state_since)`
/// pairs.
pub fn summarize<S: AsRef<str>>(sagas: impl IntoIterator<Item = (S, DateTime<Utc>)>) -> StateSummary {
    let mut summary = StateSummary::default();
    for (state, since) in sagas {
        summary.add(state.as_ref(), since);
    }
    summary
}

/// Sets the saga gauges from the store periodically.
#[derive(Debug)]
pub struct SagaGauges {
    store: Arc<dyn SagaStore>,
    clock: Arc<dyn Clock>,
    metrics: Arc<Metrics>,
    interval: Duration,
    backlog_after: Duration,
}

impl SagaGauges {
    /// Gauges in `metrics`, read from `store` every `interval`.
    pub fn new(store: Arc<dyn SagaStore>, clock: Arc<dyn Clock>, metrics: Arc<Metrics>, interval: Duration) -> Self {
        Self { store, clock, metrics, interval, backlog_after: crate::settle::backlog_after(Duration::ZERO) }
    }

    /// The same gauges, counting a saga in the backlog once it has been unsettled for `after`.
    pub fn with_backlog_after(mut self, after: Duration) -> Self {
        self.backlog_after = after;
        self
    }

    /// Updates the gauges every interval (the first time at once) until `shutdown` is cancelled; the
    /// interval stretches when the census is slow (see [`store::scan_interval`]).
    pub async fn run(self, shutdown: CancellationToken) {
        let mut wait = Duration::ZERO;
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(wait) => {}
            }
            let started = tokio::time::Instant::now();
            if let Err(error) = self.update().await {
                tracing::warn!(%error, "reading the saga gauges failed; retrying at the next interval");
            }
            let took = started.elapsed();
            wait = store::scan_interval(self.interval, took);
            if wait > self.interval {
                tracing::debug!(
                    took_ms = took.as_millis(),
                    wait_ms = wait.as_millis(),
                    "the saga census is slow; reading it less often"
                );
            }
        }
    }

    /// Reads the store once and sets the gauges.
    pub async fn update(&self) -> Result<(), store::Error> {
        let now = self.clock.now();
        let unsettled_before = now - chrono::TimeDelta::from_std(self.backlog_after).unwrap_or(chrono::TimeDelta::MAX);
        let census = self.store.census(unsettled_before).await?;
        self.metrics.set_states(&census.states, now);
        self.metrics.outbox_backlog.set(i64::try_from(census.backlog).unwrap_or(i64::MAX));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use chrono::TimeDelta;
    use prometheus_client::registry::Registry;

    use super::*;
    use crate::metrics::{STATES, STUCK_STATES, StateLabel};

    fn t(seconds: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_767_225_600 + seconds, 0).expect("a valid instant")
    }

    #[test]
    fn counts_and_the_oldest_time_per_state() {
        let summary = summarize([
            ("RUNNING", t(30)),
            ("RUNNING", t(10)),
            ("RUNNING", t(20)),
            ("FAILED", t(5)),
            ("COMPLETED", t(1)),
            ("COMPLETED", t(2)),
        ]);
        assert_eq!((summary.count("RUNNING"), summary.count("COMPLETED"), summary.count("BACKOFF")), (3, 2, 0));
        assert_eq!(summary.oldest_since("RUNNING"), Some(t(10)));
        assert_eq!(summary.oldest_since("BACKOFF"), None);
        let now = t(100);
        assert!((summary.oldest_age_seconds("RUNNING", now) - 90.0).abs() < f64::EPSILON);
        assert!((summary.oldest_age_seconds("FAILED", now) - 95.0).abs() < f64::EPSILON);
        assert!(summary.oldest_age_seconds("BACKOFF", now).abs() < f64::EPSILON, "0 when none");
        let skewed = summarize([("RUNNING", now + TimeDelta::seconds(3))]);
        assert!(skewed.oldest_age_seconds("RUNNING", now).abs() < f64::EPSILON, "never negative");
        assert_eq!(summarize(Vec::<(String, DateTime<Utc>)>::new()), StateSummary::default());
    }

    #[test]
    fn every_state_is_set_and_states_without_sagas_read_zero() {
        let metrics = Metrics::register(&mut Registry::default());
        let summary = summarize([("BACKOFF", t(0)), ("BACKOFF", t(40)), ("COMPENSATED", t(0))]);
        metrics.set_states(&summary, t(60));
        let label = |state: &str| StateLabel { state: state.to_owned() };
        let count = |state: &str| metrics.in_state.get(&label(state)).map(|g| g.get());
        let age = |state: &str| metrics.oldest_age.get(&label(state)).map(|g| g.get());
        for state in STATES {
            let expected = match state {
                "BACKOFF" => 2,
                "COMPENSATED" => 1,
                _ => 0,
            };
            assert_eq!(count(state), Some(expected), "{state}");
        }
        for state in STUCK_STATES {
            let expected = if state == "BACKOFF" { 60.0 } else { 0.0 };
            assert_eq!(age(state), Some(expected), "{state}");
        }
        assert_eq!(age("COMPENSATED"), None, "terminal states have no age");

        // The sagas moved on: the gauges follow.
        metrics.set_states(&summarize([("RUNNING", t(50))]), t(60));
        assert_eq!((count("BACKOFF"), count("RUNNING")), (Some(0), Some(1)));
        assert_eq!((age("BACKOFF"), age("RUNNING")), (Some(0.0), Some(10.0)));
    }
}
