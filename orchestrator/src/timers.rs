//! The timer: wakes sagas whose deadline has passed. It never changes a saga itself: for every due saga in
//! a partition this instance owns, it publishes `saga.timer` (with the deadline's step, attempt, kind and
//! due time) to the saga's partition of `saga.reply`, where the consumer applies it in order with the
//! replies (one writer per saga). A timer that fires twice is harmless: the second is fenced as stale.
//!
//! Deadlines are kept in memory by the partition owner ([`Deadlines`]): loaded from the store when a
//! partition is assigned, updated by the engine with every transition, dropped when the partition is
//! revoked. So the timer costs no database query per tick. A slower sweep re-publishes `saga.start` for
//! sagas whose start may not have gone out (the API's own publication or handoff failed, or its instance
//! stopped): the API stores a saga already started, and the start message asks the partition's owner to
//! publish what the start sent (see [`crate::engine::born`]).

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use proto_events::{Body, Message, Meta, TimerFired, topics};
use saga_defs::Deadline;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use uuid::Uuid;

use crate::bus::Bus;
use crate::clock::Clock;
use crate::consumer::Ownership;
use crate::model::SagaRecord;
use crate::store::SagaStore;

/// How the timer behaves.
#[derive(Debug, Clone, Copy)]
pub struct TimerSettings {
    /// Time between looks at the deadlines.
    pub interval: Duration,
    /// How long a stored saga's start may stay unpublished before its start message is published again.
    pub start_grace: Duration,
    /// How often the store is swept for such sagas (at least `start_grace`). The sweep filters on the state
    /// and version, which FerretDB answers by scanning the whole collection, so it is kept rare: it only
    /// catches a start whose publication was lost when the instance that took the order died.
    pub start_sweep_every: Duration,
    /// How long before the same deadline is published again if it is still pending.
    pub refire_after: Duration,
}

#[derive(Debug, Clone)]
struct Entry {
    deadline: Deadline,
    partition: i32,
    correlation_id: Uuid,
    /// The order's trace, which the timer message continues.
    traceparent: Option<String>,
    fired_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Default)]
struct Inner {
    by_saga: HashMap<Uuid, Entry>,
    by_time: BTreeSet<(DateTime<Utc>, Uuid)>,
}

/// The pending deadlines of the sagas in the partitions this instance owns.
#[derive(Debug, Default)]
pub struct Deadlines {
    inner: Mutex<Inner>,
}

impl Deadlines {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Records the saga's current deadline (or that it has none).
    pub fn track(&self, saga: &SagaRecord) {
        let mut inner = self.lock();
        if let Some(old) = inner.by_saga.remove(&saga.id) {
            inner.by_time.remove(&(old.deadline.at, saga.id));
        }
        if let Some(deadline) = saga.state.deadline {
            let entry = Entry {
                deadline,
                partition: saga.partition,
                correlation_id: saga.correlation_id,
                traceparent: saga.traceparent.clone(),
                fired_at: None,
            };
            inner.by_saga.insert(saga.id, entry);
            inner.by_time.insert((deadline.at, saga.id));
        }
    }

    /// Records a deadline read from the store (when a partition is assigned).
    pub fn load(&self, due: &crate::store::Due) {
        let mut inner = self.lock();
        if let Some(old) = inner.by_saga.remove(&due.saga_id) {
            inner.by_time.remove(&(old.deadline.at, due.saga_id));
        }
        let entry = Entry {
            deadline: due.deadline,
            partition: due.partition,
            correlation_id: due.correlation_id,
            traceparent: due.traceparent.clone(),
            fired_at: None,
        };
        inner.by_saga.insert(due.saga_id, entry);
        inner.by_time.insert((due.deadline.at, due.saga_id));
    }

    /// Forgets every saga of `partitions` (they were revoked).
    pub fn forget(&self, partitions: &[i32]) {
        let mut inner = self.lock();
        let gone: Vec<(Uuid, DateTime<Utc>)> = inner
            .by_saga
            .iter()
            .filter(|(_, e)| partitions.contains(&e.partition))
            .map(|(id, e)| (*id, e.deadline.at))
            .collect();
        for (id, at) in gone {
            inner.by_saga.remove(&id);
            inner.by_time.remove(&(at, id));
        }
    }

    /// How many deadlines are pending.
    pub fn len(&self) -> usize {
        self.lock().by_saga.len()
    }

    /// Whether none is pending.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The deadlines due at `now` that were not published within `refire`; marks them published.
    fn take_due(&self, now: DateTime<Utc>, refire: TimeDelta) -> Vec<(Uuid, Entry)> {
        let mut inner = self.lock();
        let due: Vec<Uuid> = inner.by_time.range(..=(now, Uuid::max())).map(|(_, id)| *id).collect();
        let mut fire = Vec::new();
        for id in due {
            if let Some(entry) = inner.by_saga.get_mut(&id)
                && entry.fired_at.is_none_or(|at| now - at >= refire)
            {
                entry.fired_at = Some(now);
                fire.push((id, entry.clone()));
            }
        }
        fire
    }
}

/// Publishes timer and start messages for due sagas.
#[derive(Debug)]
pub struct Timer {
    store: Arc<dyn SagaStore>,
    bus: Arc<dyn Bus>,
    clock: Arc<dyn Clock>,
    ownership: Arc<Ownership>,
    deadlines: Arc<Deadlines>,
    settings: TimerSettings,
    /// Sagas whose start was published again, and when, so the sweep does not repeat it every time.
    restarted: HashMap<Uuid, DateTime<Utc>>,
    last_sweep: Option<DateTime<Utc>>,
    /// How long the last start sweep took (on the timer's clock), which stretches the sweep interval.
    last_sweep_took: TimeDelta,
}

impl Timer {
    /// A timer over the given ports.
    pub fn new(
        store: Arc<dyn SagaStore>,
        bus: Arc<dyn Bus>,
        clock: Arc<dyn Clock>,
        ownership: Arc<Ownership>,
        deadlines: Arc<Deadlines>,
        settings: TimerSettings,
    ) -> Self {
        Self {
            store,
            bus,
            clock,
            ownership,
            deadlines,
            settings,
            restarted: HashMap::new(),
            last_sweep: None,
            last_sweep_took: TimeDelta::zero(),
        }
    }

    /// Looks at the deadlines every interval until `shutdown` is cancelled.
    pub async fn run(mut self, shutdown: CancellationToken) {
        let mut ticks = tokio::time::interval(self.settings.interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = ticks.tick() => {}
            }
            if let Err(error) = self.scan().await {
                tracing::warn!(%error, "timer failed; retrying at the next tick");
            }
        }
    }

    /// Publishes what is due now. Returns how many messages were published.
    pub async fn scan(&mut self) -> anyhow::Result<usize> {
        let now = self.clock.now();
        let refire = TimeDelta::from_std(self.settings.refire_after).unwrap_or(TimeDelta::MAX);
        let mut published = 0;
        for (saga_id, entry) in self.deadlines.take_due(now, refire) {
            let Deadline { step, attempt, kind, at } = entry.deadline;
            let meta = meta(saga_id, entry.correlation_id, step, attempt, now);
            let body = Body::Timer(TimerFired { kind, due_at: at });
            let span = saga_span(saga_id, entry.correlation_id, entry.traceparent.as_deref());
            self.bus.publish(topics::REPLY, &Message::new(meta, body)?).instrument(span).await?;
            published += 1;
        }
        let grace = TimeDelta::from_std(self.settings.start_grace).unwrap_or(TimeDelta::MAX);
        // The sweep scans every stored saga on FerretDB: it runs less often when it is slow.
        let every = crate::store::scan_interval(
            self.settings.start_sweep_every.max(self.settings.start_grace),
            self.last_sweep_took.to_std().unwrap_or_default(),
        );
        let every = TimeDelta::from_std(every).unwrap_or(TimeDelta::MAX);
        if self.last_sweep.is_none_or(|at| now - at >= every) {
            self.last_sweep = Some(now);
            published += self.sweep_not_started(now, grace).await?;
            self.last_sweep_took = self.clock.now() - now;
        }
        Ok(published)
    }

    /// Publishes the start message of sagas in owned partitions whose start may not have gone out, stored more
    /// than `grace` ago (see [`SagaStore::not_started`]). A saga whose start did go out costs its owner
    /// nothing but the message: the owner publishes only what it has not published itself.
    async fn sweep_not_started(&mut self, now: DateTime<Utc>, grace: TimeDelta) -> anyhow::Result<usize> {
        let partitions = self.ownership.partitions();
        if partitions.is_empty() {
            return Ok(0);
        }
        self.restarted.retain(|_, at| now - *at < grace * 4);
        let mut published = 0;
        for saga in self.store.not_started(&partitions, now - grace, 1000).await? {
            if self.restarted.contains_key(&saga.id) {
                continue;
            }
            let span = saga_span(saga.id, saga.correlation_id, saga.traceparent.as_deref());
            span.in_scope(|| tracing::info!("publishing the start of a saga whose start may not have gone out"));
            let start = crate::engine::start_message(saga.id, saga.correlation_id, now);
            self.bus.publish(topics::REPLY, &start).instrument(span).await?;
            self.restarted.insert(saga.id, now);
            published += 1;
        }
        Ok(published)
    }
}

/// The span of publishing a saga's timer or start: part of the order's trace (`traceparent`).
fn saga_span(saga_id: Uuid, correlation_id: Uuid, traceparent: Option<&str>) -> tracing::Span {
    let span = tracing::info_span!(
        "saga.timer",
        saga_id = %saga_id,
        order_id = %saga_id,
        correlation_id = %correlation_id,
        trace_id = tracing::field::Empty,
    );
    platform::telemetry::continue_trace(&span, platform::telemetry::context_from_traceparent(traceparent));
    span
}

fn meta(saga_id: Uuid, correlation_id: Uuid, step: u16, attempt: u32, now: DateTime<Utc>) -> Meta {
    Meta {
        message_id: proto_events::ids::new_v7(),
        saga_id,
        step,
        attempt,
        correlation_id,
        causation_id: None,
        time: now,
    }
}
