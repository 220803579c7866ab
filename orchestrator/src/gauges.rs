//! The saga gauges: how many sagas are in each state (`saga_in_state`), how long the oldest saga of each
//! stuck state has been in it (`saga_oldest_age_seconds`, for stuck detection) and how many sagas have an
//! outbox or timeline entries left unsettled for longer than settling takes (`saga_outbox_backlog`; see
//! [`crate::settle`]). They are read from the store every
//! `SAGA_GAUGE_INTERVAL_SECS` by every instance, so every instance exports the same figures (a dashboard
//! takes any one of them, with `max`).
//!
//! The store streams each saga's state and the time it entered it into a [`StateSummary`] (counts and
//! oldest times, so memory does not grow with the stored sagas): FerretDB's `$group` has only `$sum` and
//! `$count`, and would scan anyway. The live sagas are counted every interval; the sagas finished for good
//! and moved out of them (see [`crate::store`]), whose number only grows, every
//! [`FINISHED_CENSUS_EVERY`] intervals, so the COMPLETED, COMPENSATED and RESOLVED counts lag by up to that
//! much.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio_util::sync::CancellationToken;

use crate::clock::Clock;
use crate::metrics::Metrics;
pub use crate::store::StateSummary;
use crate::store::{self, RecordedCensus, SagaStore};

/// Counts the sagas of each state and finds the earliest time one entered it, from `(state, state_since)`
/// pairs.
pub fn summarize<S: AsRef<str>>(sagas: impl IntoIterator<Item = (S, DateTime<Utc>)>) -> StateSummary {
    let mut summary = StateSummary::default();
    for (state, since) in sagas {
        summary.add(state.as_ref(), since);
    }
    summary
}

/// How many gauge intervals apart the finished sagas are counted (or longer, when counting them is slow:
/// see [`store::scan_interval`]).
pub const FINISHED_CENSUS_EVERY: u32 = 20;

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
        let mut finished = StateSummary::default();
        let mut finished_due = tokio::time::Instant::now();
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(wait) => {}
            }
            let started = tokio::time::Instant::now();
            let live = match self.live().await {
                Ok(live) => Some(live),
                Err(error) => {
                    tracing::warn!(%error, "reading the saga gauges failed; retrying at the next interval");
                    None
                }
            };
            wait = slower("live", self.interval, started.elapsed());
            if let Some(live) = &live {
                self.set(live, &finished);
            }
            if tokio::time::Instant::now() < finished_due {
                continue;
            }
            let (summary, next_in) = self.finished_counts().await;
            if let Some(summary) = summary {
                finished = summary;
            }
            finished_due = tokio::time::Instant::now() + next_in;
            if let Some(live) = &live {
                self.set(live, &finished);
            }
        }
    }

    /// The finished sagas' counts, and how long until they are due again: the census some instance recorded,
    /// while it is fresh (younger than [`FINISHED_CENSUS_EVERY`] intervals, or than a twentieth share of the
    /// time it took allows), else a new census, recorded for the others. So restarts and more instances add no
    /// scans of the finished sagas. `None` if neither could be read.
    pub async fn finished_counts(&self) -> (Option<StateSummary>, Duration) {
        let every = self.interval.saturating_mul(FINISHED_CENSUS_EVERY);
        let now = self.clock.now();
        match self.store.recorded_finished_census().await {
            Ok(Some(recorded)) => {
                let fresh_for = store::scan_interval(every, Duration::from_millis(recorded.took_ms));
                let age = (now - recorded.at).to_std().unwrap_or_default();
                if let Some(left) = fresh_for.checked_sub(age).filter(|left| !left.is_zero()) {
                    return (Some(recorded.states), left);
                }
            }
            Ok(None) => {}
            Err(error) => tracing::warn!(%error, "reading the recorded census of finished sagas failed"),
        }
        let started = tokio::time::Instant::now();
        let states = match self.store.finished_census().await {
            Ok(states) => states,
            Err(error) => {
                tracing::warn!(%error, "counting the finished sagas failed; retrying later");
                return (None, every);
            }
        };
        let took = started.elapsed();
        let recorded = RecordedCensus {
            states: states.clone(),
            at: now,
            took_ms: u64::try_from(took.as_millis()).unwrap_or(u64::MAX),
        };
        if let Err(error) = self.store.record_finished_census(&recorded).await {
            tracing::warn!(%error, "recording the census of finished sagas failed");
        }
        tracing::info!(took_ms = recorded.took_ms, finished = states.total(), "counted the finished sagas");
        (Some(states), slower("finished", every, took))
    }

    /// Reads the live sagas' census.
    async fn live(&self) -> Result<store::Census, store::Error> {
        let now = self.clock.now();
        let unsettled_before = now - chrono::TimeDelta::from_std(self.backlog_after).unwrap_or(chrono::TimeDelta::MAX);
        self.store.census(unsettled_before).await
    }

    /// Sets the gauges from the live sagas' census and the finished sagas' counts.
    fn set(&self, live: &store::Census, finished: &StateSummary) {
        let mut states = live.states.clone();
        states.merge(finished);
        self.metrics.set_states(&states, self.clock.now());
        self.metrics.outbox_backlog.set(i64::try_from(live.backlog).unwrap_or(i64::MAX));
    }

    /// Reads the store once (the live and the finished sagas) and sets the gauges.
    pub async fn update(&self) -> Result<(), store::Error> {
        let live = self.live().await?;
        let finished = self.finished_counts().await.0.unwrap_or_default();
        self.set(&live, &finished);
        Ok(())
    }
}

/// How long to wait before the next census of `which` sagas, which took `took`; says so when it is slow.
fn slower(which: &'static str, interval: Duration, took: Duration) -> Duration {
    let wait = store::scan_interval(interval, took);
    if wait > interval {
        tracing::debug!(
            census = which,
            took_ms = took.as_millis(),
            wait_ms = wait.as_millis(),
            "the saga census is slow; reading it less often"
        );
    }
    wait
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

    #[tokio::test]
    async fn the_gauges_count_the_live_and_the_finished_sagas() {
        use crate::model::SagaRecord;
        use crate::store::memory::MemoryStore;
        use saga_defs::Phase;

        let store = Arc::new(MemoryStore::new());
        let (done, parked, running) = (
            SagaRecord::example(0, Phase::Completed),
            SagaRecord::example(1, Phase::Failed),
            SagaRecord::example(1, Phase::Running { step: 0, attempt: 1 }),
        );
        let unsettled = SagaRecord::example(2, Phase::Completed);
        for saga in [&done, &parked, &running, &unsettled] {
            store.insert(saga).await.expect("insert");
        }
        for saga in [&done, &parked] {
            assert!(store.clear_pending(saga.id, saga.version).await.expect("settle"));
        }
        assert_eq!(store.sizes(), (3, 1), "the settled COMPLETED saga moved to the finished ones");

        let metrics = Arc::new(Metrics::register(&mut Registry::default()));
        let clock = Arc::new(crate::clock::ManualClock::new(t(100)));
        SagaGauges::new(store, clock, metrics.clone(), Duration::from_secs(15)).update().await.expect("update");
        let count = |state: &str| metrics.in_state.get(&StateLabel { state: state.to_owned() }).map(|g| g.get());
        assert_eq!((count("COMPLETED"), count("FAILED"), count("RUNNING")), (Some(2), Some(1), Some(1)));
    }

    #[tokio::test]
    async fn a_recorded_census_of_finished_sagas_serves_every_instance_while_it_is_fresh() {
        use crate::model::SagaRecord;
        use crate::store::memory::MemoryStore;
        use saga_defs::Phase;

        let store = Arc::new(MemoryStore::new());
        let finish = |phase| {
            let store = store.clone();
            async move {
                let saga = SagaRecord::example(0, phase);
                store.insert(&saga).await.expect("insert");
                assert!(store.clear_pending(saga.id, saga.version).await.expect("settle and move"));
            }
        };
        finish(Phase::Completed).await;
        let clock = Arc::new(crate::clock::ManualClock::new(t(0)));
        let gauges = |store: Arc<MemoryStore>| {
            let metrics = Arc::new(Metrics::register(&mut Registry::default()));
            SagaGauges::new(store, clock.clone(), metrics, Duration::from_secs(15))
        };
        let (first, second) = (gauges(store.clone()), gauges(store.clone()));
        let every = Duration::from_secs(15 * u64::from(FINISHED_CENSUS_EVERY));

        let (counted, next) = first.finished_counts().await;
        assert_eq!(counted.map(|c| c.count("COMPLETED")), Some(1));
        assert_eq!(next, every);
        let recorded = store.recorded_finished_census().await.expect("read").expect("recorded");
        assert_eq!((recorded.at, recorded.states.count("COMPLETED")), (t(0), 1));

        // Another instance (or this one restarted) a minute later takes the record: no scan.
        finish(Phase::Compensated).await;
        clock.advance(TimeDelta::seconds(60));
        let (counted, next) = second.finished_counts().await;
        assert_eq!(counted.map(|c| (c.count("COMPLETED"), c.count("COMPENSATED"))), Some((1, 0)));
        assert_eq!(next, every - Duration::from_secs(60), "due when the record is");

        // Once the record is stale, the next one counts anew and records it.
        clock.advance(TimeDelta::seconds(240));
        let (counted, _) = second.finished_counts().await;
        assert_eq!(counted.map(|c| (c.count("COMPLETED"), c.count("COMPENSATED"))), Some((1, 1)));
        assert_eq!(store.recorded_finished_census().await.expect("read").map(|r| r.at), Some(t(300)));
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
