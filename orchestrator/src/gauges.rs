//! The saga gauges: how many sagas are in each state (`saga_in_state`), how long the oldest saga of each
//! stuck state has been in it (`saga_oldest_age_seconds`, for stuck detection) and how many sagas have an
//! outbox or timeline entries left unsettled for longer than settling takes (`saga_outbox_backlog`; see
//! [`crate::settle`]). They are read from the store every
//! `SAGA_GAUGE_INTERVAL_SECS` by every instance, so every instance exports the same figures (a dashboard
//! takes any one of them, with `max`).
//!
//! The store streams each live saga's state and the time it entered it into a [`StateSummary`] (counts and
//! oldest times, so memory does not grow with the stored sagas): FerretDB's `$group` has only `$sum` and
//! `$count`, and would scan anyway. The live sagas are counted every interval.
//!
//! The sagas finished for good and moved out of them (see [`crate::store`]) only grow in number, and counting
//! them one by one reads every one (on FerretDB, 94 to 280 s of a busy database at a million). So they are
//! counted as they move: the store that makes a finished copy counts it in its tally of that minute, and
//! writes its tallies down every interval. Every instance reads the recorded census (the finished sagas moved
//! before its cutoff, a minute's first instant) and adds the tallies of the minutes from the cutoff on; every
//! [`FOLD_EVERY`] intervals one instance folds the tallies of the minutes that are over into the census and
//! moves its cutoff. The finished sagas are counted one by one only when there is no census (a new
//! database, or one an earlier version recorded), daily by default ([`RECOUNT_EVERY`],
//! `SAGA_FINISHED_RECOUNT_HOURS`; a finished copy whose count was lost with an instance that crashed before
//! writing it down is then counted), and when an instance wrote
//! down a tally older than the cutoff (its database was unreachable for longer than [`TALLY_LAG`]). A count
//! one by one takes the sagas moved before its cutoff, by when their finished copy was made, so that none
//! is counted both there and in a tally.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio_util::sync::CancellationToken;

use crate::clock::Clock;
use crate::metrics::Metrics;
pub use crate::store::StateSummary;
use crate::store::{self, FinishedTally, RecordedCensus, SagaStore};

/// Counts the sagas of each state and finds the earliest time one entered it, from `(state, state_since)`
/// pairs.
pub fn summarize<S: AsRef<str>>(sagas: impl IntoIterator<Item = (S, DateTime<Utc>)>) -> StateSummary {
    let mut summary = StateSummary::default();
    for (state, since) in sagas {
        summary.add(state.as_ref(), since);
    }
    summary
}

/// How many gauge intervals apart the tallies of the finished sagas are folded into the recorded census.
pub const FOLD_EVERY: u32 = 20;

/// How often the finished sagas are counted one by one by default (`SAGA_FINISHED_RECOUNT_HOURS`; less often
/// when that is slow: see [`store::scan_interval`]).
pub const RECOUNT_EVERY: Duration = Duration::from_secs(24 * 60 * 60);

/// How far behind the present a census's cutoff stays, at least: the tallies of the minutes after it may
/// still be written down (each instance writes its own every interval, and keeps them while the database
/// does not answer).
pub const TALLY_LAG: Duration = Duration::from_secs(5 * 60);

/// Sets the saga gauges from the store periodically.
#[derive(Debug)]
pub struct SagaGauges {
    store: Arc<dyn SagaStore>,
    clock: Arc<dyn Clock>,
    metrics: Arc<Metrics>,
    interval: Duration,
    backlog_after: Duration,
    recount_every: Duration,
    /// This instance wrote down a tally of a minute before the recorded census's cutoff: counted by neither.
    tally_late: std::sync::atomic::AtomicBool,
}

impl SagaGauges {
    /// Gauges in `metrics`, read from `store` every `interval`.
    pub fn new(store: Arc<dyn SagaStore>, clock: Arc<dyn Clock>, metrics: Arc<Metrics>, interval: Duration) -> Self {
        Self {
            store,
            clock,
            metrics,
            interval,
            backlog_after: crate::settle::backlog_after(Duration::ZERO),
            recount_every: RECOUNT_EVERY,
            tally_late: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// The same gauges, counting the finished sagas one by one `every` so often instead of daily (on FerretDB
    /// that count reads every finished saga: a deployment that keeps millions may want it rarer).
    pub fn with_recount_every(mut self, every: Duration) -> Self {
        self.recount_every = every;
        self
    }

    /// The same gauges, counting a saga in the backlog once it has been unsettled for `after`.
    pub fn with_backlog_after(mut self, after: Duration) -> Self {
        self.backlog_after = after;
        self
    }

    /// Updates the gauges every interval (the first time at once) until `shutdown` is cancelled; the
    /// interval stretches when the census of the live sagas is slow (see [`store::scan_interval`]). The
    /// finished sagas are counted alongside, so that a count of them one by one (minutes at a million) does
    /// not hold up the live gauges: those take the latest finished counts (at the start, after waiting up to
    /// an interval for the first).
    pub async fn run(self, shutdown: CancellationToken) {
        let gauges = Arc::new(self);
        let (finished_tx, mut finished) = tokio::sync::watch::channel(None::<StateSummary>);
        let counter = {
            let (gauges, shutdown) = (gauges.clone(), shutdown.clone());
            tokio::spawn(async move {
                loop {
                    if let Some(summary) = gauges.finished_counts().await {
                        finished_tx.send_replace(Some(summary));
                    }
                    tokio::select! {
                        () = shutdown.cancelled() => return,
                        () = tokio::time::sleep(gauges.interval) => {}
                    }
                }
            })
        };
        let _first = tokio::time::timeout(gauges.interval, finished.changed()).await;
        let mut wait = Duration::ZERO;
        loop {
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = tokio::time::sleep(wait) => {}
            }
            let started = tokio::time::Instant::now();
            match gauges.live().await {
                Ok(live) => gauges.set(&live, &finished.borrow_and_update().clone().unwrap_or_default()),
                Err(error) => tracing::warn!(%error, "reading the saga gauges failed; retrying at the next interval"),
            }
            wait = slower("live", gauges.interval, started.elapsed());
        }
        counter.abort();
    }

    /// The finished sagas per state: the recorded census plus the tallies since its cutoff (see the module),
    /// after writing down this instance's tallies; counted one by one when due, folded when due. `None` if
    /// the store could not be read.
    pub async fn finished_counts(&self) -> Option<StateSummary> {
        let written = match self.store.flush_finished_tally().await {
            Ok(earliest) => earliest,
            Err(error) => {
                tracing::warn!(%error, "writing down the finished sagas failed; trying again at the next interval");
                None
            }
        };
        let now = self.clock.now();
        let recorded = match self.store.recorded_finished_census().await {
            Ok(recorded) => recorded,
            Err(error) => {
                tracing::warn!(%error, "reading the recorded census of finished sagas failed");
                return None;
            }
        };
        let (census, cutoff) = match recorded {
            Some(census @ RecordedCensus { cutoff: Some(cutoff), .. }) if !self.recount_due(&census, now, written) => {
                (census, cutoff)
            }
            other => self.recount(now, other.as_ref()).await?,
        };
        let tallies = match self.store.finished_tallies().await {
            Ok(tallies) => tallies,
            Err(error) => {
                tracing::warn!(%error, "reading the finished sagas written down failed");
                return None;
            }
        };
        let mut states = census.states.clone();
        for tally in tallies.iter().filter(|t| t.minute >= cutoff) {
            states.add_counts(&tally.counts);
        }
        let every = self.interval.saturating_mul(FOLD_EVERY);
        if (now - census.at).to_std().is_ok_and(|age| age >= every) {
            self.fold(&census, cutoff, &tallies, now).await;
        }
        Some(states)
    }

    /// Whether `census` is due to be counted anew at `now`: recorded by an earlier version, older than the
    /// recount interval ([`RECOUNT_EVERY`] by default), or missing the tally of a minute before its cutoff this
    /// instance just wrote down (`written`); never more than a twentieth of the time (see
    /// [`store::scan_interval`]).
    fn recount_due(&self, census: &RecordedCensus, now: DateTime<Utc>, written: Option<DateTime<Utc>>) -> bool {
        let (Some(cutoff), Some(counted_at)) = (census.cutoff, census.counted_at) else { return true };
        let took = Duration::from_millis(census.took_ms);
        let age = (now - counted_at).to_std().unwrap_or_default();
        if written.is_some_and(|minute| minute < cutoff) {
            tracing::warn!(%cutoff, "this instance wrote down finished sagas older than the census's cutoff; counting anew");
            self.tally_late.store(true, std::sync::atomic::Ordering::Relaxed);
        }
        let late = self.tally_late.load(std::sync::atomic::Ordering::Relaxed);
        age >= store::scan_interval(self.recount_every, took)
            || (late && age >= store::scan_interval(self.interval.saturating_mul(FOLD_EVERY), took))
    }

    /// The cutoff of a census taken or folded at `now`.
    fn cutoff(&self, now: DateTime<Utc>) -> DateTime<Utc> {
        let lag = TALLY_LAG.max(self.interval.saturating_mul(4));
        store::minute_of(now - chrono::TimeDelta::from_std(lag).unwrap_or(chrono::TimeDelta::MAX))
    }

    /// Counts the finished sagas one by one and records the census, for every instance; forgets the tallies
    /// before the cutoff of the census it replaces (`previous`), which no instance adds any more. First it
    /// records `previous` (if it has a cutoff) as counted now, so that the other instances do not count too.
    async fn recount(
        &self,
        now: DateTime<Utc>,
        previous: Option<&RecordedCensus>,
    ) -> Option<(RecordedCensus, DateTime<Utc>)> {
        let previous = previous.filter(|census| census.cutoff.is_some());
        let previous_cutoff = previous.and_then(|census| census.cutoff);
        if let Some(previous) = previous {
            let claimed = RecordedCensus { counted_at: Some(now), ..previous.clone() };
            if let Err(error) = self.store.record_finished_census(&claimed).await {
                tracing::warn!(%error, "recording the census of finished sagas failed");
            }
        }
        let cutoff = self.cutoff(now);
        let started = tokio::time::Instant::now();
        let states = match self.store.finished_census(cutoff).await {
            Ok(states) => states,
            Err(error) => {
                tracing::warn!(%error, "counting the finished sagas failed; retrying at the next interval");
                return None;
            }
        };
        let took_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.tally_late.store(false, std::sync::atomic::Ordering::Relaxed);
        let census = RecordedCensus { states, at: now, took_ms, cutoff: Some(cutoff), counted_at: Some(now) };
        tracing::info!(took_ms, finished = census.states.total(), %cutoff, "counted the finished sagas one by one");
        self.record(&census, previous_cutoff).await;
        Some((census, cutoff))
    }

    /// Folds the tallies of the minutes from `census`'s cutoff to a new one into it and records it.
    async fn fold(
        &self,
        census: &RecordedCensus,
        cutoff: DateTime<Utc>,
        tallies: &[FinishedTally],
        now: DateTime<Utc>,
    ) {
        let new_cutoff = self.cutoff(now).max(cutoff);
        let mut states = census.states.clone();
        for tally in tallies.iter().filter(|t| t.minute >= cutoff && t.minute < new_cutoff) {
            states.add_counts(&tally.counts);
        }
        let folded = RecordedCensus { states, at: now, cutoff: Some(new_cutoff), ..census.clone() };
        tracing::debug!(%new_cutoff, finished = folded.states.total(), "folded the finished sagas' tallies");
        self.record(&folded, Some(cutoff)).await;
    }

    /// Records `census`, then forgets the tallies before `forget_before`.
    async fn record(&self, census: &RecordedCensus, forget_before: Option<DateTime<Utc>>) {
        if let Err(error) = self.store.record_finished_census(census).await {
            tracing::warn!(%error, "recording the census of finished sagas failed");
            return;
        }
        let Some(before) = forget_before else { return };
        if let Err(error) = self.store.forget_finished_tallies(before).await {
            tracing::warn!(%error, "forgetting the folded tallies of finished sagas failed");
        }
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
        let finished = self.finished_counts().await.unwrap_or_default();
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
    use crate::model::{LogEntry, OrderPii, SagaRecord};

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
    async fn finished_sagas_are_counted_as_they_move_and_one_by_one_only_seldom() {
        use crate::model::SagaRecord;
        use crate::store::memory::MemoryStore;
        use saga_defs::Phase;

        let clock = Arc::new(crate::clock::ManualClock::new(t(0)));
        let store = Arc::new(MemoryStore::with_clock(clock.clone()));
        let finish = |phase| {
            let store = store.clone();
            async move {
                let saga = SagaRecord::example(0, phase);
                store.insert(&saga).await.expect("insert");
                assert!(store.clear_pending(saga.id, saga.version).await.expect("settle and move"));
            }
        };
        let gauges = |store: Arc<MemoryStore>| {
            let metrics = Arc::new(Metrics::register(&mut Registry::default()));
            SagaGauges::new(store, clock.clone(), metrics, Duration::from_secs(15))
        };
        let (first, second) = (gauges(store.clone()), gauges(store.clone()));
        let counts = |summary: Option<StateSummary>| {
            summary.map(|s| (s.count("COMPLETED"), s.count("COMPENSATED"), s.count("RESOLVED")))
        };
        let recorded = || async { store.recorded_finished_census().await.expect("read").expect("recorded") };

        // No census yet: counted one by one, the saga just moved from its tally (not twice).
        finish(Phase::Completed).await;
        assert_eq!(counts(first.finished_counts().await), Some((1, 0, 0)));
        let census = recorded().await;
        assert_eq!((census.counted_at, census.cutoff), (Some(t(0)), Some(t(-300))));
        assert_eq!(census.states.count("COMPLETED"), 0, "moved after the cutoff: counted in its tally");

        // Another instance a minute later: the census and the tallies, at once, without counting again.
        clock.advance(TimeDelta::seconds(60));
        finish(Phase::Compensated).await;
        assert_eq!(counts(second.finished_counts().await), Some((1, 1, 0)));
        assert_eq!(recorded().await.counted_at, Some(t(0)));

        // Twenty intervals after the census was recorded, the tallies of the minutes over by TALLY_LAG are
        // folded into it (none yet), and again twenty intervals later (both).
        clock.advance(TimeDelta::seconds(240));
        assert_eq!(counts(second.finished_counts().await), Some((1, 1, 0)));
        let census = recorded().await;
        assert_eq!((census.at, census.cutoff, census.counted_at), (t(300), Some(t(0)), Some(t(0))));
        assert_eq!(census.states.total(), 0);
        clock.advance(TimeDelta::seconds(330));
        finish(Phase::Resolved).await;
        assert_eq!(counts(first.finished_counts().await), Some((1, 1, 1)));
        let census = recorded().await;
        assert_eq!(
            (census.cutoff, census.states.count("COMPLETED"), census.states.count("COMPENSATED")),
            (Some(t(300)), 1, 1)
        );
        clock.advance(TimeDelta::seconds(300));
        assert_eq!(counts(second.finished_counts().await), Some((1, 1, 1)));
        assert_eq!(recorded().await.cutoff, Some(t(600)));
        let minutes: Vec<_> = store.finished_tallies().await.expect("tallies").iter().map(|t| t.minute).collect();
        assert_eq!(minutes, [t(600)], "the tallies before the previous cutoff are forgotten");

        // A day after the last count one by one, they are counted again.
        clock.advance(TimeDelta::hours(24));
        assert_eq!(counts(first.finished_counts().await), Some((1, 1, 1)));
        assert_eq!(recorded().await.counted_at, Some(t(930 + 24 * 3600)));

        // A census an earlier version recorded (no cutoff) is counted anew.
        let mut old = recorded().await;
        old.cutoff = None;
        old.states = StateSummary::default();
        old.states.add_count("COMPLETED", 7);
        store.record_finished_census(&old).await.expect("record");
        assert_eq!(counts(second.finished_counts().await), Some((1, 1, 1)));
    }

    /// A memory store whose count of the finished sagas one by one waits until released.
    #[derive(Debug, Default)]
    struct SlowCount {
        inner: crate::store::memory::MemoryStore,
        started: std::sync::atomic::AtomicUsize,
        release: tokio::sync::Notify,
    }

    #[async_trait::async_trait]
    impl SagaStore for SlowCount {
        async fn finished_census(&self, moved_before: DateTime<Utc>) -> Result<StateSummary, store::Error> {
            self.started.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            self.release.notified().await;
            self.inner.finished_census(moved_before).await
        }
        async fn prepare(&self) -> Result<(), store::Error> {
            self.inner.prepare().await
        }
        async fn insert(&self, saga: &SagaRecord) -> Result<(), store::Error> {
            self.inner.insert(saga).await
        }
        async fn get(&self, id: uuid::Uuid) -> Result<Option<SagaRecord>, store::Error> {
            self.inner.get(id).await
        }
        async fn replace(&self, saga: &SagaRecord, expected: u64) -> Result<(), store::Error> {
            self.inner.replace(saga, expected).await
        }
        async fn clear_pending(&self, id: uuid::Uuid, version: u64) -> Result<bool, store::Error> {
            self.inner.clear_pending(id, version).await
        }
        async fn move_finished(&self, sagas: &[SagaRecord]) -> Result<Vec<uuid::Uuid>, store::Error> {
            self.inner.move_finished(sagas).await
        }
        async fn append_log(&self, entries: &[LogEntry]) -> Result<(), store::Error> {
            self.inner.append_log(entries).await
        }
        async fn timeline(&self, id: uuid::Uuid) -> Result<Vec<LogEntry>, store::Error> {
            self.inner.timeline(id).await
        }
        async fn log_entry(&self, id: uuid::Uuid, seq: u64) -> Result<Option<LogEntry>, store::Error> {
            self.inner.log_entry(id, seq).await
        }
        async fn list(&self, filter: &store::SagaFilter, limit: usize) -> Result<Vec<SagaRecord>, store::Error> {
            self.inner.list(filter, limit).await
        }
        async fn recoverable(&self, partitions: &[i32], limit: usize) -> Result<Vec<SagaRecord>, store::Error> {
            self.inner.recoverable(partitions, limit).await
        }
        async fn not_started(
            &self,
            partitions: &[i32],
            before: DateTime<Utc>,
            limit: usize,
        ) -> Result<Vec<SagaRecord>, store::Error> {
            self.inner.not_started(partitions, before, limit).await
        }
        async fn insert_pii(&self, id: uuid::Uuid, pii: &OrderPii) -> Result<(), store::Error> {
            self.inner.insert_pii(id, pii).await
        }
        async fn get_pii(&self, id: uuid::Uuid) -> Result<Option<OrderPii>, store::Error> {
            self.inner.get_pii(id).await
        }
        async fn purge_pii(&self, id: uuid::Uuid) -> Result<bool, store::Error> {
            self.inner.purge_pii(id).await
        }
        async fn pii_stored_before(&self, before: DateTime<Utc>) -> Result<Vec<uuid::Uuid>, store::Error> {
            self.inner.pii_stored_before(before).await
        }
        async fn unmoved_finished(
            &self,
            before: DateTime<Utc>,
            limit: usize,
        ) -> Result<Vec<(uuid::Uuid, u64)>, store::Error> {
            self.inner.unmoved_finished(before, limit).await
        }
        async fn claim_idempotency_key(
            &self,
            key: &str,
            id: uuid::Uuid,
            hash: &str,
        ) -> Result<store::Claim, store::Error> {
            self.inner.claim_idempotency_key(key, id, hash).await
        }
        async fn census(&self, unsettled_before: DateTime<Utc>) -> Result<store::Census, store::Error> {
            self.inner.census(unsettled_before).await
        }
        async fn recorded_finished_census(&self) -> Result<Option<RecordedCensus>, store::Error> {
            self.inner.recorded_finished_census().await
        }
        async fn record_finished_census(&self, census: &RecordedCensus) -> Result<(), store::Error> {
            self.inner.record_finished_census(census).await
        }
        async fn flush_finished_tally(&self) -> Result<Option<DateTime<Utc>>, store::Error> {
            self.inner.flush_finished_tally().await
        }
        async fn finished_tallies(&self) -> Result<Vec<FinishedTally>, store::Error> {
            self.inner.finished_tallies().await
        }
        async fn forget_finished_tallies(&self, before: DateTime<Utc>) -> Result<(), store::Error> {
            self.inner.forget_finished_tallies(before).await
        }
    }

    /// Polls `check` every 10 ms until it holds; panics after 10 s.
    async fn eventually(what: &str, check: impl Fn() -> bool) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !check() {
            assert!(tokio::time::Instant::now() < deadline, "timed out waiting until {what}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    #[tokio::test]
    async fn the_live_gauges_do_not_wait_for_a_count_of_the_finished_sagas_and_one_instance_counts() {
        use saga_defs::Phase;

        let store = Arc::new(SlowCount::default());
        let clock = Arc::new(crate::clock::ManualClock::new(t(0)));
        // A census a day old: due to be counted one by one.
        let mut states = StateSummary::default();
        states.add_count("COMPLETED", 5);
        let day_old =
            RecordedCensus { states, at: t(-60), took_ms: 10, cutoff: Some(t(-600)), counted_at: Some(t(-90_000)) };
        store.record_finished_census(&day_old).await.expect("record");
        let metrics = Arc::new(Metrics::register(&mut Registry::default()));
        let gauges = |metrics| SagaGauges::new(store.clone(), clock.clone(), metrics, Duration::from_millis(20));
        let shutdown = CancellationToken::new();
        let running = tokio::spawn(gauges(metrics.clone()).run(shutdown.clone()));
        eventually("the count one by one started", || store.started.load(std::sync::atomic::Ordering::SeqCst) == 1)
            .await;

        // While it runs, a saga starts: the live gauges follow it.
        store.insert(&SagaRecord::example(0, Phase::Running { step: 0, attempt: 1 })).await.expect("insert");
        let count = |state: &str| metrics.in_state.get(&StateLabel { state: state.to_owned() }).map(|g| g.get());
        eventually("the live gauges show the running saga", || count("RUNNING") == Some(1)).await;
        assert_eq!(count("COMPLETED"), Some(0), "the finished counts are not known yet at this start");

        // Another instance finds the census marked counted: it takes it as it is instead of counting too.
        let other = gauges(Arc::new(Metrics::register(&mut Registry::default())));
        let counted = tokio::time::timeout(Duration::from_secs(10), other.finished_counts()).await;
        assert_eq!(counted.expect("not waiting for a count of its own").map(|s| s.count("COMPLETED")), Some(5));
        assert_eq!(store.started.load(std::sync::atomic::Ordering::SeqCst), 1, "counted by one instance");

        store.release.notify_one();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let recorded = store.recorded_finished_census().await.expect("read").expect("recorded");
            if recorded.states.total() == 0 {
                assert_eq!(recorded.counted_at, Some(t(0)));
                break;
            }
            assert!(tokio::time::Instant::now() < deadline, "the count did not replace the census: {recorded:?}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        shutdown.cancel();
        running.await.expect("the gauges stop");
    }

    #[test]
    fn a_tally_written_down_after_its_minute_was_folded_has_the_sagas_counted_anew_soon() {
        use crate::store::memory::MemoryStore;

        use crate::clock::ManualClock;
        const FIFTEEN: Duration = Duration::from_secs(15);

        let metrics = Arc::new(Metrics::register(&mut Registry::default()));
        let gauges = SagaGauges::new(Arc::new(MemoryStore::new()), Arc::new(ManualClock::new(t(0))), metrics, FIFTEEN);
        let census = |counted_at| RecordedCensus {
            states: StateSummary::default(),
            at: t(0),
            took_ms: 10,
            cutoff: Some(t(0)),
            counted_at: Some(counted_at),
        };
        assert!(!gauges.recount_due(&census(t(0)), t(60), Some(t(0))), "in time");
        assert!(!gauges.recount_due(&census(t(0)), t(60), Some(t(-60))), "late, but counted a minute ago");
        assert!(gauges.recount_due(&census(t(0)), t(300), None), "remembered until counted");
        assert!(gauges.recount_due(&census(t(-90_000)), t(60), None), "a day old");
        let mut old = census(t(0));
        old.cutoff = None;
        assert!(gauges.recount_due(&old, t(60), None), "recorded by an earlier version");

        let metrics = Arc::new(Metrics::register(&mut Registry::default()));
        let fresh = SagaGauges::new(Arc::new(MemoryStore::new()), Arc::new(ManualClock::new(t(0))), metrics, FIFTEEN);
        let weekly = fresh.with_recount_every(Duration::from_secs(7 * 24 * 3600));
        assert!(!weekly.recount_due(&census(t(-90_000)), t(60), None), "a day old, counted weekly");
        assert!(weekly.recount_due(&census(t(-610_000)), t(60), None), "a week old");
        assert!(weekly.recount_due(&old, t(60), None), "recorded by an earlier version, whatever the interval");
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
