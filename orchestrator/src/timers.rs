//! The timer: wakes sagas whose deadline has passed. It never changes a saga itself: for every due saga in
//! a partition this instance owns, it publishes `saga.timer` (with the deadline's step, attempt and kind)
//! to the saga's partition of `saga.reply`, where the consumer applies it in order with the replies (one
//! writer per saga). It also re-publishes `saga.start` for sagas stored but never started (the API's
//! own publication failed). A timer that fires twice is harmless: the second is fenced as stale.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use proto_events::{Body, Message, Meta, StartSaga, TimerFired, topics};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::bus::Bus;
use crate::clock::Clock;
use crate::consumer::Ownership;
use crate::store::SagaStore;

/// How the timer behaves.
#[derive(Debug, Clone, Copy)]
pub struct TimerSettings {
    /// Time between scans.
    pub interval: Duration,
    /// How long a stored saga may stay in STARTED before its start is published again.
    pub start_grace: Duration,
    /// How long before the same deadline is published again if it is still due.
    pub refire_after: Duration,
}

/// Publishes timer and start messages for due sagas.
#[derive(Debug)]
pub struct Timer {
    store: Arc<dyn SagaStore>,
    bus: Arc<dyn Bus>,
    clock: Arc<dyn Clock>,
    ownership: Arc<Ownership>,
    settings: TimerSettings,
    /// (saga, deadline) -> when it was last published, so a still-due deadline is not published every scan.
    fired: HashMap<(Uuid, DateTime<Utc>), DateTime<Utc>>,
}

impl Timer {
    /// A timer over the given ports.
    pub fn new(
        store: Arc<dyn SagaStore>,
        bus: Arc<dyn Bus>,
        clock: Arc<dyn Clock>,
        ownership: Arc<Ownership>,
        settings: TimerSettings,
    ) -> Self {
        Self { store, bus, clock, ownership, settings, fired: HashMap::new() }
    }

    /// Scans every interval until `shutdown` is cancelled.
    pub async fn run(mut self, shutdown: CancellationToken) {
        let mut ticks = tokio::time::interval(self.settings.interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = ticks.tick() => {}
            }
            if let Err(error) = self.scan().await {
                tracing::warn!(%error, "timer scan failed; retrying at the next tick");
            }
        }
    }

    /// One scan: publishes what is due now. Returns how many messages were published.
    pub async fn scan(&mut self) -> anyhow::Result<usize> {
        let partitions = self.ownership.partitions();
        if partitions.is_empty() {
            return Ok(0);
        }
        let now = self.clock.now();
        let refire = TimeDelta::from_std(self.settings.refire_after).unwrap_or(TimeDelta::MAX);
        self.fired.retain(|_, at| now - *at < refire);
        let mut published = 0;
        for due in self.store.due(&partitions, now, 1000).await? {
            let key = (due.saga_id, due.deadline.at);
            if self.fired.contains_key(&key) {
                continue;
            }
            let meta = meta(due.saga_id, due.correlation_id, due.deadline.step, due.deadline.attempt, now);
            let body = Body::Timer(TimerFired { kind: due.deadline.kind, due_at: due.deadline.at });
            self.bus.publish(topics::REPLY, &Message::new(meta, body)?).await?;
            self.fired.insert(key, now);
            published += 1;
        }
        let grace = TimeDelta::from_std(self.settings.start_grace).unwrap_or(TimeDelta::MAX);
        for saga in self.store.not_started(&partitions, now - grace, 1000).await? {
            let key = (saga.id, saga.created_at);
            if self.fired.contains_key(&key) {
                continue;
            }
            tracing::info!(saga_id = %saga.id, "publishing the start of a saga that did not start");
            let meta = meta(saga.id, saga.correlation_id, 0, 0, now);
            self.bus.publish(topics::REPLY, &Message::new(meta, Body::Start(StartSaga {}))?).await?;
            self.fired.insert(key, now);
            published += 1;
        }
        Ok(published)
    }
}

fn meta(saga_id: Uuid, correlation_id: Uuid, step: u16, attempt: u32, now: DateTime<Utc>) -> Meta {
    Meta { message_id: Uuid::now_v7(), saga_id, step, attempt, correlation_id, causation_id: None, time: now }
}
