//! The saga engine: applies one message to its saga and makes the result durable and visible.
//!
//! For every message read from a saga's partition, in order:
//! 1. load the saga (from the [cache](crate::cache) of sagas in flight, else the store); what an earlier
//!    run stored but did not publish or settle is carried along (crash recovery);
//! 2. compute the new state and actions with the pure core ([`saga_defs::apply`]);
//! 3. write the new state, the messages to send (outbox) and the timeline entry in ONE conditional
//!    document update (version + 1): from here on the transition is durable, and the caller may store the
//!    message's offset once this function returns;
//! 4. publish the outbox (idempotent producer);
//! 5. [settle](crate::settle), a few seconds later and once for all the transitions of that time: append the
//!    timeline entries to `saga_log` and empty the document's outbox. A crash between 3 and 5 re-publishes
//!    on recovery; it never loses a message.

use std::sync::Arc;

use chrono::{DateTime, TimeDelta, Utc};
use proto_events::commands::{
    CancelShipment, ChargePayment, CreateShipment, RefundPayment, ReleaseStock, ReserveStock,
};
use proto_events::{
    Body, Command, CommandKind, DeadlineKind, DecodeError, FailureKind, Line, Message, Meta, OperatorVerb, Reply,
    ResolvedAs, SagaTransitioned, topics,
};
use saga_defs::{Action, Definition, OperatorAction, Phase, Resolution, SagaEvent, SagaState, apply};
use uuid::Uuid;

use crate::bus::Bus;
use crate::cache::SagaCache;
use crate::clock::Clock;
use crate::definitions::Definitions;
use crate::live::{LiveEvents, StatusChange};
use crate::metrics::{AttemptOutcome, FenceLabel, Metrics, StepLabel, TopicLabel, step_label};
use crate::model::{EntryKind, LogEntry, OrderPii, OutboxEntry, Outgoing, Received, SagaRecord, Sent};
use crate::settle::{DEFAULT_SETTLE_AFTER, SETTLE_BATCH, SETTLE_SLACK, Settlement, Unsettled};
use crate::store::{self, SagaStore};
use crate::timers::Deadlines;

/// Most sagas flushed in one recovery pass; more are flushed as their next message arrives.
const RECOVERY_BATCH: usize = 10_000;

/// Why a message could not be applied.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The store failed; see [`Error::is_transient`].
    #[error(transparent)]
    Store(#[from] store::Error),
    /// Publishing failed; retrying may succeed.
    #[error(transparent)]
    Bus(#[from] crate::bus::Error),
    /// The saga names a definition this build does not have.
    #[error("saga {saga_id} uses definition {name} v{version}, which this orchestrator does not have")]
    UnknownDefinition { saga_id: Uuid, name: String, version: u32 },
    /// A message the engine built is invalid (a bug).
    #[error("saga {saga_id}: cannot build {what}: {source}")]
    Build { saga_id: Uuid, what: &'static str, source: DecodeError },
    /// Personal data needed for a command is gone (purged).
    #[error("saga {saga_id}: the order's personal data needed for {command:?} is missing")]
    MissingPii { saga_id: Uuid, command: CommandKind },
}

impl Error {
    /// Whether the same message may succeed if processed again later.
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Store(e) => e.is_transient() || matches!(e, store::Error::VersionConflict { .. }),
            Error::Bus(_) => true,
            _ => false,
        }
    }
}

/// Where a message was read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: i32,
    /// Offset.
    pub offset: i64,
}

/// What became of a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The saga moved from one state to another.
    Transitioned { from: &'static str, to: &'static str },
    /// The message was fenced; the reason is on the timeline.
    Ignored(String),
    /// No saga has the message's saga id.
    UnknownSaga,
    /// The message is not one the orchestrator consumes (a command or an event on the reply topic).
    NotForOrchestrator,
    /// A start for a saga stored already started (see [`born`]): what its start sent and was not known to be
    /// published yet was published (`messages` of them; none if this instance had published them), and the
    /// saga was neither written nor changed.
    Published { messages: usize },
}

/// Applies messages to sagas.
#[derive(Debug, Clone)]
pub struct Engine {
    store: Arc<dyn SagaStore>,
    bus: Arc<dyn Bus>,
    clock: Arc<dyn Clock>,
    definitions: Arc<Definitions>,
    metrics: Arc<Metrics>,
    deadlines: Arc<Deadlines>,
    cache: Arc<SagaCache>,
    unsettled: Arc<Unsettled>,
    settle_after: std::time::Duration,
    live: Option<Arc<LiveEvents>>,
}

impl Engine {
    /// An engine over the given ports. It records the deadline of every saga it changes in `deadlines`.
    pub fn new(
        store: Arc<dyn SagaStore>,
        bus: Arc<dyn Bus>,
        clock: Arc<dyn Clock>,
        definitions: Arc<Definitions>,
        metrics: Arc<Metrics>,
        deadlines: Arc<Deadlines>,
    ) -> Self {
        Self {
            store,
            bus,
            clock,
            definitions,
            metrics,
            deadlines,
            cache: Arc::new(SagaCache::default()),
            unsettled: Arc::new(Unsettled::default()),
            settle_after: DEFAULT_SETTLE_AFTER,
            live: None,
        }
    }

    /// The same engine, also handing the status changes it publishes to `live` (this instance's event
    /// streams) once they are durable, without waiting for them to come back from `saga.event`.
    pub fn with_live(mut self, live: Arc<LiveEvents>) -> Self {
        self.live = Some(live);
        self
    }

    /// The same engine, settling a saga `after` its first unsettled transition (zero: right away).
    pub fn with_settle_after(mut self, after: std::time::Duration) -> Self {
        self.settle_after = after;
        self
    }

    /// The sagas waiting to be settled; the owner of the partitions forgets those of revoked ones.
    pub fn unsettled(&self) -> &Arc<Unsettled> {
        &self.unsettled
    }

    /// The sagas in flight this engine wrote last; the owner of the partitions forgets those of revoked ones.
    pub fn cache(&self) -> &Arc<SagaCache> {
        &self.cache
    }

    /// The saga store.
    pub fn store(&self) -> &Arc<dyn SagaStore> {
        &self.store
    }

    /// Applies `message`, read at `origin`, to its saga. When this returns `Ok`, the effect is durable.
    #[tracing::instrument(skip_all, fields(saga_id = %message.meta.saga_id, message_type = message.body.message_type()))]
    pub async fn handle(&self, message: &Message, origin: &Origin) -> Result<Outcome, Error> {
        let Some(event) = to_event(message) else { return Ok(Outcome::NotForOrchestrator) };
        let saga_id = message.meta.saga_id;
        let cached = self.cache.get(saga_id);
        let from_cache = cached.is_some();
        let stored = if cached.is_none() { self.store.get(saga_id).await? } else { None };
        let Some(saga) = cached.or(stored) else {
            tracing::warn!(offset = origin.offset, partition = origin.partition, "message for an unknown saga");
            self.metrics.fenced.get_or_create(&FenceLabel { fence: "unknown_saga".into() }).inc();
            return Ok(Outcome::UnknownSaga);
        };
        // Whatever fails from here (a version conflict with a stale cached copy included) is retried on the
        // saga as stored.
        let applied = if event == SagaEvent::Start && saga.state.phase != Phase::Started {
            self.publish_start(saga, from_cache).await
        } else {
            self.transition(saga, &event, message, origin).await
        };
        if applied.is_err() {
            self.cache.remove(saga_id);
        }
        applied
    }

    /// Applies `event` (from `message`) to `saga`, writes the result, publishes it, and caches it; settles it
    /// now or later.
    async fn transition(
        &self,
        mut saga: SagaRecord,
        event: &SagaEvent,
        message: &Message,
        origin: &Origin,
    ) -> Result<Outcome, Error> {
        if *event == SagaEvent::Start {
            // A start message left in the outbox is the one that arrived (or a duplicate of it).
            saga.outbox.retain(|entry| entry.outgoing != Outgoing::Start);
        }
        let definition = self.definition(&saga)?;
        let now = self.clock.now();
        let (state, actions) = match stale_operator(message, &saga) {
            Some(fence) => (saga.state.clone(), vec![Action::Ignore(fence)]),
            None => apply(&saga.state, event, definition, now),
        };
        let mut next = next_record(&saga, state, &actions, message, origin, definition, now);
        self.store.replace(&next, saga.version).await?;
        self.deadlines.track(&next);
        self.observe(&saga, &next, event, &actions, definition, now);
        self.publish(&mut next).await?;
        let outcome = outcome(&saga, &next, &actions);
        self.settle_and_cache(next, now).await?;
        Ok(outcome)
    }

    /// Settles `saga`, written and published, later (or now, when it cannot wait), and caches it.
    async fn settle_and_cache(&self, mut saga: SagaRecord, now: DateTime<Utc>) -> Result<(), Error> {
        if !self.unsettled.defer(&saga, now, self.settle_after) {
            self.settle_now(&Settlement::of(&saga, now)).await?;
            // A saga that finished for good keeps its pending timeline in its finished copy: so does the
            // cached one, which a late note would write back.
            if !saga.state.phase.is_final() {
                saga.pending_log.clear();
            }
        }
        self.cache.put(saga);
        Ok(())
    }

    /// Publishes what the start of a saga stored already started sent (see [`born`]), when a start message
    /// for it arrives: handed over by this instance's API, published by another instance's, or by the start
    /// sweep. Nothing is written: the saga's start is its insert. What this instance published already (the
    /// `cached` copy's outbox is empty, or the saga waits to be settled here) is not published again, nor is
    /// anything of a saga whose outbox was settled; a copy read from the store publishes its outbox, which may
    /// have gone out already (a duplicate, which every consumer drops by message id). The saga is then cached
    /// and settled like a transition's.
    async fn publish_start(&self, mut saga: SagaRecord, cached: bool) -> Result<Outcome, Error> {
        // An empty outbox was published (a finished saga's copy keeps none); a saga waiting to be settled here
        // was published by this instance, even if the cache had no room for it.
        if saga.outbox.is_empty() || (!cached && self.unsettled.contains(saga.id)) {
            return Ok(Outcome::Published { messages: 0 });
        }
        let messages = saga.outbox.len();
        self.publish(&mut saga).await?;
        self.deadlines.track(&saga);
        self.settle_and_cache(saga, self.clock.now()).await?;
        Ok(Outcome::Published { messages })
    }

    fn definition(&self, saga: &SagaRecord) -> Result<&Definition, Error> {
        self.definitions.get(&saga.definition, saga.definition_version).ok_or_else(|| Error::UnknownDefinition {
            saga_id: saga.id,
            name: saga.definition.clone(),
            version: saga.definition_version,
        })
    }

    /// Publishes the saga's outbox and empties it (in memory); the timeline entries in `pending_log` say
    /// where each message landed. The messages are sent together (enqueued in outbox order, so that two
    /// for the same partition keep their order) and waited for together.
    async fn publish(&self, saga: &mut SagaRecord) -> Result<(), Error> {
        let mut messages = Vec::with_capacity(saga.outbox.len());
        for entry in &saga.outbox {
            messages.push(self.build(saga, entry).await?);
        }
        // The saga is written: its clients on this instance may learn its new status now.
        if let Some(live) = &self.live {
            messages.iter().filter_map(|(_, message)| StatusChange::of(message)).for_each(|c| live.publish(c));
        }
        let sends = messages.iter().map(|(topic, message)| self.bus.publish(topic, message));
        let delivered = futures_util::future::try_join_all(sends).await?;
        for ((topic, message), delivered) in messages.iter().zip(delivered) {
            self.metrics.published.get_or_create(&TopicLabel { topic: (*topic).to_owned() }).inc();
            let sent = saga.pending_log.iter_mut().flat_map(|e| e.sent.iter_mut());
            for sent in sent.filter(|s| s.message_id == message.meta.message_id) {
                sent.partition = Some(delivered.partition);
                sent.offset = Some(delivered.offset);
            }
        }
        saga.outbox.clear();
        Ok(())
    }

    /// Appends the settlement's timeline entries to the log, then empties the saga's outbox and pending
    /// timeline if it is still at the settlement's version.
    ///
    /// If the saga moved on meanwhile and not by this instance (an instance that lost the partition wrote it
    /// before it noticed), nobody else would settle it: it is read, and its outbox published and settled as
    /// stored.
    async fn settle_now(&self, settlement: &Settlement) -> Result<(), Error> {
        if self.settle_at_version(settlement).await? {
            return Ok(());
        }
        let saga_id = settlement.saga_id;
        let ours = self.unsettled.contains(saga_id)
            || self.cache.get(saga_id).is_some_and(|cached| cached.version > settlement.version);
        if ours {
            // A later transition of this instance's has its own settlement (or was settled with it).
            return Ok(());
        }
        self.cache.remove(saga_id);
        let Some(mut stored) = self.store.get(saga_id).await? else { return Ok(()) };
        if stored.has_pending() {
            tracing::info!(%saga_id, version = stored.version, "settling a saga another instance wrote");
            self.publish(&mut stored).await?;
            // If it moved on again, its writer settles it, or the partition's next recovery does.
            self.settle_at_version(&Settlement::of(&stored, self.clock.now())).await?;
        }
        Ok(())
    }

    /// Appends the settlement's entries to the log and empties the saga's outbox and pending timeline if it is
    /// still at the settlement's version (moving it to the finished sagas if it finished for good); returns
    /// whether it was.
    async fn settle_at_version(&self, settlement: &Settlement) -> Result<bool, Error> {
        if settlement.finished.is_some() {
            return Ok(self.move_finished(std::slice::from_ref(settlement)).await?.is_empty());
        }
        self.store.append_log(&settlement.log).await?;
        let cleared = self.store.clear_pending(settlement.saga_id, settlement.version).await?;
        if cleared {
            self.cache.settled(settlement.saga_id, settlement.version);
        }
        Ok(cleared)
    }

    /// Settles finished sagas together: moves them to the finished sagas, their timeline entries not in the
    /// log with them, in two requests (see [`SagaStore::move_finished`]). Returns the settlements of the sagas
    /// that were not at their settlement's version any more. The cached copies keep their pending timeline,
    /// as the finished copies do.
    async fn move_finished(&self, settlements: &[Settlement]) -> Result<Vec<Settlement>, Error> {
        let sagas: Vec<SagaRecord> = settlements.iter().filter_map(|s| s.finished.as_deref().cloned()).collect();
        let moved = self.store.move_finished(&sagas).await?;
        Ok(settlements.iter().filter(|s| !moved.contains(&s.saga_id)).cloned().collect())
    }

    /// Settles the sagas whose settlement is due at `now` (every one with `DateTime::MAX_UTC`, as before
    /// shutting down), and those due within [`SETTLE_SLACK`] of it, at most a batch. Returns how many were
    /// taken.
    pub async fn settle_due(&self, now: DateTime<Utc>) -> usize {
        let slack = TimeDelta::from_std(SETTLE_SLACK).unwrap_or_default();
        let due = self.unsettled.take_due(now.checked_add_signed(slack).unwrap_or(now), SETTLE_BATCH);
        let taken = due.len();
        self.settle_batch(due).await;
        taken
    }

    /// Settles a batch of sagas (the consumer hands each lane those of its partition): the finished ones
    /// together, the others one by one. A settlement that fails is tried again later.
    pub async fn settle_batch(&self, settlements: Vec<Settlement>) {
        let (finished, others): (Vec<Settlement>, Vec<Settlement>) =
            settlements.into_iter().partition(|s| s.finished.is_some());
        if !finished.is_empty() {
            match self.move_finished(&finished).await {
                Ok(left) => {
                    for settlement in left {
                        self.settle(settlement).await;
                    }
                }
                Err(error) => {
                    tracing::warn!(%error, sagas = finished.len(), "cannot settle finished sagas; trying again later");
                    for settlement in finished {
                        self.retry_later(settlement);
                    }
                }
            }
        }
        for settlement in others {
            self.settle(settlement).await;
        }
    }

    /// Settles one saga now (the caller took the settlement from [`Engine::unsettled`]); a settlement that
    /// fails is tried again later.
    pub async fn settle(&self, settlement: Settlement) {
        if let Err(error) = self.settle_now(&settlement).await {
            tracing::warn!(saga_id = %settlement.saga_id, %error, "cannot settle a saga; trying again later");
            self.retry_later(settlement);
        }
    }

    /// Puts back a settlement that failed, due after the deferral (at least a second).
    fn retry_later(&self, settlement: Settlement) {
        let later = self.clock.now()
            + chrono::TimeDelta::from_std(self.settle_after.max(std::time::Duration::from_secs(1)))
                .unwrap_or(chrono::TimeDelta::MAX);
        self.unsettled.retry(settlement, later);
    }

    /// Publishes the saga's outbox, appends its pending timeline entries, then empties both if the saga is
    /// still at the same version (recovery of what an earlier run left pending).
    pub async fn flush(&self, saga: &SagaRecord) -> Result<(), Error> {
        if !saga.has_pending() {
            return Ok(());
        }
        let mut saga = saga.clone();
        self.publish(&mut saga).await?;
        self.settle_now(&Settlement::of(&saga, self.clock.now())).await
    }

    /// Takes over `partitions` (after the instance was assigned them): loads the pending deadlines of their
    /// sagas for the timer, and flushes every saga with pending work. A saga whose flush fails for good (a
    /// bug: an outbox message that does not validate) is logged and skipped, so that it cannot hold up the
    /// others.
    pub async fn recover(&self, partitions: &[i32]) -> Result<usize, Error> {
        let sagas = self.store.recoverable(partitions, usize::MAX).await?;
        for due in sagas.iter().filter_map(store::Due::of) {
            self.deadlines.load(&due);
        }
        let pending: Vec<&SagaRecord> = sagas.iter().filter(|s| s.has_pending()).take(RECOVERY_BATCH).collect();
        for saga in &pending {
            // What was left pending belongs to the order's trace.
            let span = tracing::info_span!(
                "saga.recover",
                saga_id = %saga.id,
                order_id = %saga.id,
                correlation_id = %saga.correlation_id,
                trace_id = tracing::field::Empty,
            );
            let parent = platform::telemetry::context_from_traceparent(saga.traceparent.as_deref());
            platform::telemetry::continue_trace(&span, parent);
            match tracing::Instrument::instrument(self.flush(saga), span).await {
                Ok(()) => {}
                Err(error) if error.is_transient() => return Err(error),
                Err(error) => tracing::error!(saga_id = %saga.id, %error, "cannot flush a saga's pending work"),
            }
        }
        Ok(pending.len())
    }

    /// The message an outbox entry stands for, and its topic. The order's personal data, which two commands
    /// carry, is read once per saga while the saga is [cached](crate::cache).
    async fn build(&self, saga: &SagaRecord, entry: &OutboxEntry) -> Result<(&'static str, Message), Error> {
        let meta = Meta {
            message_id: entry.message_id,
            saga_id: saga.id,
            step: entry.step,
            attempt: entry.attempt,
            correlation_id: saga.correlation_id,
            causation_id: entry.causation_id,
            time: entry.time,
        };
        let (topic, body, what) = match &entry.outgoing {
            Outgoing::Start => (topics::REPLY, Body::Start(proto_events::StartSaga {}), "saga.start"),
            Outgoing::Transitioned { event } => (topics::EVENT, Body::Transitioned(event.clone()), "saga.transitioned"),
            Outgoing::Command { command } => {
                let needs_pii = matches!(command, CommandKind::PaymentCharge | CommandKind::ShippingCreate);
                let pii = match self.cache.pii(saga.id) {
                    Some(pii) => Some(pii),
                    None if needs_pii => {
                        let pii = self.store.get_pii(saga.id).await?;
                        if let Some(pii) = &pii {
                            self.cache.keep_pii(saga.id, pii.clone());
                        }
                        pii
                    }
                    None => None,
                };
                let body = Body::Command(command_for(saga, *command, pii.as_ref())?);
                (command.participant().command_topic(), body, command.message_type())
            }
        };
        let message = Message::new(meta, body).map_err(|source| Error::Build { saga_id: saga.id, what, source })?;
        Ok((topic, message))
    }

    /// Records the metrics of the transition from `before` to `after` by `event` (see [`crate::metrics`]).
    fn observe(
        &self,
        before: &SagaRecord,
        after: &SagaRecord,
        event: &SagaEvent,
        actions: &[Action],
        definition: &Definition,
        now: DateTime<Utc>,
    ) {
        for action in actions {
            match action {
                Action::Ignore(fence) => {
                    let fence = fence_name(fence).to_owned();
                    self.metrics.fenced.get_or_create(&FenceLabel { fence }).inc();
                }
                Action::Send { step, attempt, command } if *attempt > 1 => {
                    let compensation = definition.step(*step).is_some_and(|s| s.compensation == Some(*command));
                    if let Some(step) = step_label(definition, *step, compensation) {
                        self.metrics.step_retries.get_or_create(&StepLabel { step }).inc();
                    }
                }
                Action::Send { .. } => {}
            }
        }
        if before.state.phase == after.state.phase {
            return;
        }
        if let Some((step, outcome)) = ended_attempt(before.state.phase, event, definition) {
            self.metrics.attempt_ended(step, outcome, seconds_between(before.state_since, now));
        }
        let seconds = seconds_between(after.created_at, now);
        self.metrics.entered(after.state.phase, after.status(), seconds);
        if after.status().is_terminal() {
            tracing::info!(status = after.status().as_str(), seconds, "saga finished");
        }
    }
}

/// The start message of saga `saga_id` (see [`born`]), sent at `at`.
pub fn start_message(saga_id: Uuid, correlation_id: Uuid, at: DateTime<Utc>) -> Message {
    let meta = Meta {
        message_id: proto_events::ids::new_v7(),
        saga_id,
        step: 0,
        attempt: 0,
        correlation_id,
        causation_id: None,
        time: at,
    };
    Message::new(meta, Body::Start(proto_events::StartSaga {})).expect("a start message is valid")
}

/// A new saga as the API inserts it: `created` (version 1, in STARTED, its creation on its timeline) with
/// `start` applied (version 2: its first command and lifecycle event in its outbox, the transition on its
/// timeline, received from no topic). The insert is the start's durable transition, so starting a saga
/// costs no write of its own; the start message then only asks the partition's owner to publish the outbox
/// ([`Outcome::Published`]). Sagas stored in STARTED by earlier versions still start by a transition.
pub fn born(created: &SagaRecord, start: &Message, definition: &Definition, now: DateTime<Utc>) -> SagaRecord {
    let (state, actions) = apply(&created.state, &SagaEvent::Start, definition, now);
    let origin =
        Origin { topic: topics::REPLY.to_owned(), partition: created.partition, offset: crate::consumer::HANDED_OVER };
    next_record(created, state, &actions, start, &origin, definition, now)
}

#[allow(clippy::too_many_arguments)]
fn next_record(
    saga: &SagaRecord,
    state: SagaState,
    actions: &[Action],
    message: &Message,
    origin: &Origin,
    definition: &Definition,
    now: DateTime<Utc>,
) -> SagaRecord {
    let mut next = saga.clone();
    next.version = saga.version + 1;
    next.updated_at = now;
    let changed = state.phase != saga.state.phase;
    if changed {
        next.state_since = now;
    }
    next.state = state;
    let cause = Some(message.meta.message_id);
    let outbox_entry = |step, attempt, outgoing| OutboxEntry {
        message_id: proto_events::ids::new_v7(),
        causation_id: cause,
        time: now,
        step,
        attempt,
        outgoing,
    };
    let mut note = None;
    for action in actions {
        match action {
            Action::Send { step, attempt, command } => {
                next.outbox.push(outbox_entry(*step, *attempt, Outgoing::Command { command: *command }));
            }
            Action::Ignore(fence) => note = Some(fence.describe()),
        }
    }
    if changed {
        let (step, attempt) = next.state.phase.step_attempt().unwrap_or((0, 0));
        let event = transitioned(saga, &next, definition);
        next.outbox.push(outbox_entry(step, attempt, Outgoing::Transitioned { event }));
    }
    if note.is_none() && next.state.reason != saga.state.reason {
        // Why the saga now compensates or is parked.
        note.clone_from(&next.state.reason);
    }
    let kind = if changed { EntryKind::Transition } else { EntryKind::Ignored };
    let entry = log_entry(saga, &next, kind, message, origin, note, now);
    next.pending_log.push(entry);
    next
}

/// The step (as labelled) and outcome of the attempt that `event` ended, if the saga was waiting for the
/// reply to an attempt in `phase` and `event` is that reply or its timeout (not an operator's action).
fn ended_attempt(phase: Phase, event: &SagaEvent, definition: &Definition) -> Option<(String, AttemptOutcome)> {
    let (waiting, compensation) = match phase {
        Phase::Running { step, attempt } => ((step, attempt), false),
        Phase::Compensating { step, attempt } => ((step, attempt), true),
        _ => return None,
    };
    let (answered, outcome) = match event {
        SagaEvent::Reply { step, attempt, reply, .. } => match reply {
            Reply::Succeeded { .. } => ((*step, *attempt), AttemptOutcome::Succeeded),
            Reply::Failed { kind: FailureKind::Business, .. } => ((*step, *attempt), AttemptOutcome::BusinessFailure),
            Reply::Failed { kind: FailureKind::Transient, .. } => ((*step, *attempt), AttemptOutcome::TransientFailure),
        },
        SagaEvent::Timer { step, attempt, kind: DeadlineKind::StepTimeout, .. } => {
            ((*step, *attempt), AttemptOutcome::Timeout)
        }
        _ => return None,
    };
    if answered != waiting {
        return None;
    }
    Some((step_label(definition, waiting.0, compensation)?, outcome))
}

fn seconds_between(from: DateTime<Utc>, to: DateTime<Utc>) -> f64 {
    (to - from).num_milliseconds().max(0) as f64 / 1000.0
}

fn fence_name(fence: &saga_defs::Fenced) -> &'static str {
    match fence {
        saga_defs::Fenced::Duplicate(_) => "duplicate",
        saga_defs::Fenced::Stale(_) => "stale",
        saga_defs::Fenced::OutOfOrder(_) => "out_of_order",
        saga_defs::Fenced::Terminal(_) => "terminal",
        saga_defs::Fenced::NotAllowed(_) => "not_allowed",
    }
}

fn outcome(before: &SagaRecord, after: &SagaRecord, actions: &[Action]) -> Outcome {
    match actions.iter().find_map(|a| if let Action::Ignore(f) = a { Some(f.describe()) } else { None }) {
        Some(reason) => Outcome::Ignored(reason),
        None => Outcome::Transitioned { from: before.state.phase.name(), to: after.state.phase.name() },
    }
}

/// An operator's action for a version of the saga that is gone: the operator decided on what they saw,
/// which is no longer what is there.
fn stale_operator(message: &Message, saga: &SagaRecord) -> Option<saga_defs::Fenced> {
    let Body::Operator(command) = &message.body else { return None };
    (command.expected_version != saga.version).then(|| {
        saga_defs::Fenced::Stale(format!(
            "operator {} acted on version {}, but the saga is at version {}",
            command.operator, command.expected_version, saga.version
        ))
    })
}

/// The saga event a message stands for, if the orchestrator consumes it.
fn to_event(message: &Message) -> Option<SagaEvent> {
    let (step, attempt) = (message.meta.step, message.meta.attempt);
    match &message.body {
        Body::Start(_) => Some(SagaEvent::Start),
        Body::Reply { command, reply } => {
            Some(SagaEvent::Reply { step, attempt, command: *command, reply: reply.clone() })
        }
        Body::Timer(timer) => Some(SagaEvent::Timer { step, attempt, kind: timer.kind, due_at: timer.due_at }),
        Body::Operator(command) => Some(SagaEvent::Operator {
            action: match (command.action, command.outcome) {
                (OperatorVerb::Retry, _) => OperatorAction::Retry,
                (OperatorVerb::Compensate, _) => OperatorAction::Compensate,
                (OperatorVerb::Resolve, Some(ResolvedAs::Completed)) => {
                    OperatorAction::Resolve { outcome: Resolution::Completed }
                }
                (OperatorVerb::Resolve, _) => OperatorAction::Resolve { outcome: Resolution::Cancelled },
            },
            reason: format!("{} (by {})", command.reason, command.operator),
        }),
        Body::Command(_) | Body::Transitioned(_) => None,
    }
}

/// The command `kind` for `saga`, with the order data it needs.
fn command_for(saga: &SagaRecord, kind: CommandKind, pii: Option<&OrderPii>) -> Result<Command, Error> {
    let lines = || saga.order.items.iter().map(|l| Line { sku: l.sku.clone(), quantity: l.quantity }).collect();
    let pii = || pii.ok_or(Error::MissingPii { saga_id: saga.id, command: kind });
    Ok(match kind {
        CommandKind::InventoryReserve => Command::InventoryReserve(ReserveStock { items: lines() }),
        CommandKind::InventoryRelease => Command::InventoryRelease(ReleaseStock {}),
        CommandKind::PaymentCharge => Command::PaymentCharge(ChargePayment {
            amount_cents: saga.order.amount_cents,
            currency: saga.order.currency,
            payment_token: pii()?.payment_token.clone(),
            customer_ref: saga.order.customer_ref.clone(),
        }),
        CommandKind::PaymentRefund => Command::PaymentRefund(RefundPayment {}),
        CommandKind::ShippingCreate => {
            Command::ShippingCreate(CreateShipment { items: lines(), address: pii()?.shipping_address.clone() })
        }
        CommandKind::ShippingCancel => Command::ShippingCancel(CancelShipment {}),
    })
}

/// The lifecycle event of the transition from `before` to `after`.
fn transitioned(before: &SagaRecord, after: &SagaRecord, definition: &Definition) -> SagaTransitioned {
    let step_name =
        after.state.phase.step_attempt().and_then(|(step, _)| definition.step(step)).map(|s| s.name.to_owned());
    SagaTransitioned {
        definition: after.definition.clone(),
        definition_version: after.definition_version,
        from: before.state.phase.name().to_owned(),
        to: after.state.phase.name().to_owned(),
        status: after.status(),
        step_name,
        // The event carries at most 500 characters of the reason; the saga keeps all of it.
        reason: after.state.reason.as_deref().map(|r| r.chars().take(500).collect()),
        version: after.version,
        customer_ref: after.order.customer_ref.clone(),
    }
}

fn log_entry(
    before: &SagaRecord,
    after: &SagaRecord,
    kind: EntryKind,
    message: &Message,
    origin: &Origin,
    note: Option<String>,
    now: DateTime<Utc>,
) -> LogEntry {
    let outcome = match &message.body {
        Body::Reply { reply: Reply::Succeeded { .. }, .. } => Some("succeeded".to_owned()),
        Body::Reply { reply: Reply::Failed { kind, reason }, .. } => Some(format!("failed ({kind:?}): {reason}")),
        Body::Timer(timer) => Some(format!("{:?} due at {}", timer.kind, timer.due_at)),
        Body::Operator(command) => Some(format!(
            "{:?}{} by {} at version {}: {}",
            command.action,
            command.outcome.map(|o| format!(" as {o:?}")).unwrap_or_default(),
            command.operator,
            command.expected_version,
            command.reason
        )),
        _ => None,
    };
    let received = Received {
        message_id: message.meta.message_id,
        message_type: message.body.message_type().to_owned(),
        topic: origin.topic.clone(),
        partition: origin.partition,
        offset: origin.offset,
        step: message.meta.step,
        attempt: message.meta.attempt,
        outcome,
    };
    let sent = after
        .outbox
        .iter()
        .filter(|e| !before.outbox.iter().any(|b| b.message_id == e.message_id))
        .map(|e| Sent {
            message_id: e.message_id,
            message_type: match &e.outgoing {
                Outgoing::Command { command } => command.message_type().to_owned(),
                Outgoing::Transitioned { .. } => proto_events::registry::TRANSITIONED.to_owned(),
                Outgoing::Start => proto_events::registry::START.to_owned(),
            },
            topic: match &e.outgoing {
                Outgoing::Command { command } => command.participant().command_topic().to_owned(),
                Outgoing::Transitioned { .. } => topics::EVENT.to_owned(),
                Outgoing::Start => topics::REPLY.to_owned(),
            },
            step: e.step,
            attempt: e.attempt,
            partition: None,
            offset: None,
        })
        .collect();
    let at = after.state.phase.step_attempt();
    LogEntry {
        saga_id: after.id,
        seq: after.version,
        at: now,
        kind,
        from: before.state.phase.name().to_owned(),
        to: after.state.phase.name().to_owned(),
        step: at.map(|(s, _)| s),
        attempt: at.map(|(_, a)| a),
        received: Some(received),
        sent,
        note,
    }
}
