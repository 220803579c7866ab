//! Retention of personal data: the orders' names, emails, addresses and payment tokens (`orders_pii`) are
//! deleted once the order has finished for good and a configurable period has passed. Sagas, timelines and
//! events never held them. A parked (FAILED) order keeps them until an operator resolves it.
//!
//! A sweep reads the personal data still stored (not every saga ever stored: on FerretDB that read is a scan)
//! and, for each order stored before the retention period, its saga: the data goes once the saga finished for
//! good and has not changed for the period. Every instance may run the sweep: deleting by `_id` is idempotent.

use std::sync::Arc;
use std::time::Duration;

use chrono::TimeDelta;
use prometheus_client::metrics::counter::Counter;
use tokio_util::sync::CancellationToken;

use crate::clock::Clock;
use crate::store::SagaStore;

/// How personal data is retained.
#[derive(Debug, Clone, Copy)]
pub struct RetentionSettings {
    /// How long after an order finished its personal data is kept (`PII_RETENTION_HOURS`, default 720).
    pub keep_for: Duration,
    /// How often to sweep (`PII_SWEEP_INTERVAL_SECS`, default 3600).
    pub interval: Duration,
}

/// How long a finished saga must have been unchanged before [`Retention::move_unmoved_finished`] moves it.
pub const UNMOVED_AFTER: Duration = Duration::from_secs(3600);

/// Deletes the personal data of orders finished longer ago than the retention period.
#[derive(Debug)]
pub struct Retention {
    store: Arc<dyn SagaStore>,
    clock: Arc<dyn Clock>,
    settings: RetentionSettings,
    purged: Counter,
}

impl Retention {
    /// A sweeper over `store`, counting purges in `purged`.
    pub fn new(store: Arc<dyn SagaStore>, clock: Arc<dyn Clock>, settings: RetentionSettings, purged: Counter) -> Self {
        Self { store, clock, settings, purged }
    }

    /// Sweeps every interval, the first time one interval after the start, until `shutdown` (a sweep scans
    /// the stored personal data on FerretDB: an instance that restarts does not add one).
    pub async fn run(self, shutdown: CancellationToken) {
        let first = tokio::time::Instant::now() + self.settings.interval;
        let mut ticks = tokio::time::interval_at(first, self.settings.interval);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = ticks.tick() => {}
            }
            match self.sweep().await {
                Ok(0) => {}
                Ok(purged) => tracing::info!(purged, "deleted the personal data of finished orders"),
                Err(error) => tracing::warn!(%error, "personal data sweep failed; retrying at the next interval"),
            }
            match self.move_unmoved_finished().await {
                Ok(0) => {}
                Ok(moved) => tracing::info!(moved, "moved finished sagas out of the live ones"),
                Err(error) => tracing::warn!(%error, "moving finished sagas failed; retrying at the next interval"),
            }
        }
    }

    /// Moves the sagas that finished for good but are still among the live ones (stored by a version that
    /// kept every saga there) to the finished sagas, once unchanged for [`UNMOVED_AFTER`]: settling a
    /// settled saga moves it, as its owner does. Returns how many were moved.
    ///
    /// Any instance may do it: on MongoDB the move is conditional on the version; on FerretDB (where the
    /// version is read first) only a write to the saga in between, which so long after it finished would
    /// be a late duplicate's note, could be lost.
    pub async fn move_unmoved_finished(&self) -> Result<usize, crate::store::Error> {
        let before = self.clock.now() - TimeDelta::from_std(UNMOVED_AFTER).unwrap_or(TimeDelta::MAX);
        let mut moved = 0;
        loop {
            let batch = self.store.unmoved_finished(before, 1000).await?;
            if batch.is_empty() {
                return Ok(moved);
            }
            let mut progressed = false;
            for (saga_id, version) in batch {
                if self.store.clear_pending(saga_id, version).await? {
                    moved += 1;
                    progressed = true;
                }
            }
            if !progressed {
                // Written meanwhile: the next sweep sees them again.
                return Ok(moved);
            }
        }
    }

    /// One sweep; returns how many orders' personal data were deleted.
    pub async fn sweep(&self) -> Result<usize, crate::store::Error> {
        let keep = TimeDelta::from_std(self.settings.keep_for).unwrap_or(TimeDelta::MAX);
        let cutoff = self.clock.now() - keep;
        let mut purged = 0;
        for order_id in self.store.pii_stored_before(cutoff).await? {
            let expired = match self.store.get(order_id).await? {
                // A parked (FAILED) order keeps its data for the operator; one still running or changed
                // within the period keeps it too.
                Some(saga) => saga.state.phase.is_final() && saga.updated_at < cutoff,
                // No saga: the order was never created (its request failed after the data was stored).
                None => true,
            };
            if expired && self.store.purge_pii(order_id).await? {
                purged += 1;
                self.purged.inc();
            }
        }
        Ok(purged)
    }
}
