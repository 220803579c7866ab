//! The reply consumer: reads `saga.reply` (participants' replies and the orchestrator's own start and
//! timer messages) in the `orchestrator` consumer group and applies each message to its saga. Kafka assigns
//! each partition to one instance, which makes that instance the only writer of the sagas keyed to it.
//! Within the instance each partition has its own lane (a task applying its messages one at a time, in
//! order), so that the sagas of different partitions progress side by side while one waits for the
//! database or Kafka.
//!
//! Start messages of sagas this instance's API has just stored in an owned partition are
//! [handed over](crate::cache::Handoff::start) in-process and applied in their partition's lane, in their
//! turn with its messages, without a trip through Kafka: the lane publishes what the saga's start sent (the
//! API stores sagas already started, see [`crate::engine::born`]).
//!
//! An offset is stored only after the message's transition is durable; librdkafka commits stored offsets.
//! A transient failure (database or Kafka down) retries the same message with exponential back-off and
//! never moves past it. Undecodable messages go to `saga.reply.dlq`. The sagas whose
//! [settlement](crate::settle) is due are settled in their partition's lane, a few at a time while it has no
//! message waiting and in larger batches between messages when they keep coming (see
//! [`LaneBacklog`]), and all of them before the consumer leaves the group.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use platform::kafka::{KafkaSettings, Publisher};
use platform::metrics::ConsumerLag;
use proto_events::{Message, topics};
use rdkafka::ClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::message::{Message as _, OwnedMessage};
use rdkafka::statistics::Statistics;
use tokio::sync::mpsc;
use tokio::sync::mpsc::error::TryRecvError;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::cache::{HandedStart, SagaCache};
use crate::engine::{Engine, Origin, Outcome};
use crate::metrics::{Metrics, TopicLabel};
use crate::settle::{LaneBacklog, SETTLE_BATCH, SETTLE_SLACK, Settlement, Unsettled};
use crate::timers::Deadlines;

/// The partitions of `saga.reply` this instance owns right now.
#[derive(Debug, Default)]
pub struct Ownership {
    partitions: RwLock<BTreeSet<i32>>,
}

impl Ownership {
    /// The owned partitions.
    pub fn partitions(&self) -> Vec<i32> {
        self.partitions.read().unwrap_or_else(std::sync::PoisonError::into_inner).iter().copied().collect()
    }

    /// Whether this instance owns `partition`.
    pub fn owns(&self, partition: i32) -> bool {
        self.partitions.read().unwrap_or_else(std::sync::PoisonError::into_inner).contains(&partition)
    }

    /// Records that `partitions` were assigned to this instance.
    pub fn assign(&self, partitions: &[i32]) {
        self.partitions.write().unwrap_or_else(std::sync::PoisonError::into_inner).extend(partitions);
    }

    /// Records that `partitions` were taken away from this instance.
    pub fn revoke(&self, partitions: &[i32]) {
        let mut owned = self.partitions.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        for p in partitions {
            owned.remove(p);
        }
    }
}

/// A change of the partitions this instance owns, as the consumer loop learns it.
#[derive(Debug)]
enum Rebalanced {
    /// Assigned: their sagas are recovered before their messages are applied.
    Assigned(Vec<i32>),
    /// Revoked: their lanes stop after the message in hand.
    Revoked(Vec<i32>),
}

/// Tracks assignments: revoked partitions stop being owned before the revocation completes; assigned ones
/// are announced so that the consumer loop recovers their sagas before applying their messages. Records the
/// consumer lag from librdkafka's statistics (`kafka_consumer_lag`).
struct RebalanceContext {
    topic: String,
    ownership: Arc<Ownership>,
    deadlines: Arc<Deadlines>,
    cache: Arc<SagaCache>,
    unsettled: Arc<Unsettled>,
    rebalanced: mpsc::UnboundedSender<Rebalanced>,
    lag: ConsumerLag,
}

impl RebalanceContext {
    fn partitions(&self, list: &rdkafka::TopicPartitionList) -> Vec<i32> {
        list.elements().iter().filter(|e| e.topic() == self.topic).map(|e| e.partition()).collect()
    }
}

impl ClientContext for RebalanceContext {
    fn stats(&self, statistics: Statistics) {
        self.lag.record(&statistics);
    }
}

impl ConsumerContext for RebalanceContext {
    fn pre_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(list) = rebalance {
            let revoked = self.partitions(list);
            tracing::info!(?revoked, "partitions revoked");
            self.ownership.revoke(&revoked);
            self.deadlines.forget(&revoked);
            self.cache.forget(&revoked);
            // Their next owner's recovery publishes and settles what is left.
            self.unsettled.forget(&revoked);
            let _ = self.rebalanced.send(Rebalanced::Revoked(revoked));
        }
    }

    fn post_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(list) => {
                let assigned = self.partitions(list);
                tracing::info!(?assigned, "partitions assigned");
                self.ownership.assign(&assigned);
                let _ = self.rebalanced.send(Rebalanced::Assigned(assigned));
            }
            Rebalance::Error(error) => tracing::error!(%error, "rebalance failed"),
            Rebalance::Revoke(_) => {}
        }
    }
}

/// The consumer of `saga.reply`.
pub struct ReplyConsumer {
    consumer: Arc<StreamConsumer<RebalanceContext>>,
    rebalanced: mpsc::UnboundedReceiver<Rebalanced>,
    starts: Option<mpsc::Receiver<HandedStart>>,
    worker: Arc<Worker>,
}

/// Applies or dead-letters single messages.
struct Worker {
    engine: Engine,
    publisher: Publisher,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for ReplyConsumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplyConsumer").finish_non_exhaustive()
    }
}

impl ReplyConsumer {
    /// Joins `group_id` and subscribes to the reply topic.
    pub fn new(
        settings: &KafkaSettings,
        group_id: &str,
        engine: Engine,
        publisher: Publisher,
        ownership: Arc<Ownership>,
        deadlines: Arc<Deadlines>,
        metrics: Arc<Metrics>,
    ) -> anyhow::Result<Self> {
        let topic = settings.topic(topics::REPLY);
        let (tx, rebalanced) = mpsc::unbounded_channel();
        let lag = ConsumerLag::new(metrics.service.kafka.clone());
        let (cache, unsettled) = (engine.cache().clone(), engine.unsettled().clone());
        let context =
            RebalanceContext { topic: topic.clone(), ownership, deadlines, cache, unsettled, rebalanced: tx, lag };
        let consumer: StreamConsumer<RebalanceContext> =
            settings.service_consumer_config(group_id).create_with_context(context)?;
        consumer.subscribe(&[&topic])?;
        let worker = Arc::new(Worker { engine, publisher, metrics });
        Ok(Self { consumer: Arc::new(consumer), rebalanced, starts: None, worker })
    }

    /// The same consumer, also applying the start messages handed over through `starts` (see
    /// [`crate::cache::Handoff::with_starts`]).
    pub fn with_starts(mut self, starts: mpsc::Receiver<HandedStart>) -> Self {
        self.starts = Some(starts);
        self
    }

    /// Applies messages until `shutdown` is cancelled; the messages in hand are finished first, then every
    /// saga waiting for it is settled.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let Self { consumer, mut rebalanced, mut starts, worker } = self;
        let mut lanes = Lanes::new(Arc::clone(&consumer), Arc::clone(&worker), shutdown.clone());
        loop {
            let settle_in = worker
                .engine
                .unsettled()
                .next_due()
                .map(|due| (due - chrono::Utc::now()).to_std().unwrap_or_default().min(Duration::from_secs(60)));
            let message = tokio::select! {
                () = shutdown.cancelled() => break,
                Some(change) = rebalanced.recv() => {
                    lanes.rebalanced(change).await;
                    continue;
                }
                Some(start) = next_start(&mut starts) => {
                    // Revoked since the API handed it over: the saga's next owner publishes the saga's outbox
                    // when it recovers the partition (the saga was stored before).
                    if consumer.context().ownership.owns(start.partition) {
                        lanes.send(start.partition, Job::Start(start)).await;
                    }
                    continue;
                }
                () = sleep_or_never(settle_in) => {
                    let until = chrono::Utc::now() + chrono::TimeDelta::from_std(SETTLE_SLACK).unwrap_or_default();
                    let mut by_partition: HashMap<i32, Vec<Settlement>> = HashMap::new();
                    for settlement in worker.engine.unsettled().take_due(until, SETTLE_BATCH) {
                        by_partition.entry(settlement.partition).or_default().push(settlement);
                    }
                    for (partition, settlements) in by_partition {
                        lanes.send(partition, Job::Settle(settlements)).await;
                    }
                    continue;
                }
                message = consumer.recv() => message,
            };
            let message = match message {
                Ok(message) => message.detach(),
                Err(error) => {
                    tracing::warn!(%error, "consumer error");
                    continue;
                }
            };
            // A rebalance happens inside `recv`: recover newly assigned partitions before their messages.
            while let Ok(change) = rebalanced.try_recv() {
                lanes.rebalanced(change).await;
            }
            lanes.send(message.partition(), Job::Apply(message)).await;
        }
        lanes.stop().await;
        worker.settle_all().await;
        Ok(())
    }
}

/// The offset recorded as the origin of a start applied with the order (it was read from no topic).
pub const HANDED_OVER: i64 = -1;

/// Messages waiting in a lane at most; the consumer waits when one is full.
const LANE_CAPACITY: usize = 256;

/// What a lane does next.
enum Job {
    /// Apply a message and store its offset.
    Apply(OwnedMessage),
    /// Settle sagas of the lane's partition.
    Settle(Vec<Settlement>),
    /// Apply a start message handed over by this instance's API (no offset to store).
    Start(HandedStart),
}

/// One task per owned partition applying its messages in order; see the [module](self).
struct Lanes {
    consumer: Arc<StreamConsumer<RebalanceContext>>,
    worker: Arc<Worker>,
    shutdown: CancellationToken,
    running: HashMap<i32, Lane>,
    /// Lanes of revoked partitions finishing the message in hand (what they leave unsettled is the next
    /// owner's to recover).
    retiring: HashMap<i32, JoinHandle<Vec<Settlement>>>,
}

struct Lane {
    jobs: mpsc::Sender<Job>,
    stop: CancellationToken,
    /// Ends with the settlements the lane had not settled yet.
    task: JoinHandle<Vec<Settlement>>,
}

impl Lanes {
    fn new(consumer: Arc<StreamConsumer<RebalanceContext>>, worker: Arc<Worker>, shutdown: CancellationToken) -> Self {
        Self { consumer, worker, shutdown, running: HashMap::new(), retiring: HashMap::new() }
    }

    async fn rebalanced(&mut self, change: Rebalanced) {
        match change {
            Rebalanced::Revoked(partitions) => {
                for partition in partitions {
                    if let Some(lane) = self.running.remove(&partition) {
                        lane.stop.cancel();
                        self.retiring.insert(partition, lane.task);
                    }
                }
            }
            Rebalanced::Assigned(partitions) => {
                for partition in &partitions {
                    self.retired(*partition).await;
                }
                self.worker.recover(partitions, &self.shutdown).await;
            }
        }
    }

    /// Waits until the retiring lane of `partition`, if any, has finished, so that two lanes never apply
    /// messages of the same sagas at once.
    async fn retired(&mut self, partition: i32) {
        if let Some(task) = self.retiring.remove(&partition) {
            let _ = task.await;
        }
    }

    /// Hands `job` to the lane of `partition`, starting it for a message if needed. A settlement for a
    /// partition without a lane is dropped: the partition was revoked, and its next owner recovers the saga.
    async fn send(&mut self, partition: i32, job: Job) {
        if matches!(job, Job::Settle(_)) && !self.running.contains_key(&partition) {
            return;
        }
        if !self.running.contains_key(&partition) {
            self.retired(partition).await;
            let lane = self.start(partition);
            self.running.insert(partition, lane);
        }
        let Some(lane) = self.running.get(&partition) else { return };
        if lane.jobs.send(job).await.is_err() {
            // The lane stopped (shutdown); the message is applied again after a restart.
            tracing::debug!(partition, "a lane stopped before taking its job");
        }
    }

    fn start(&self, partition: i32) -> Lane {
        let (jobs, mut queue) = mpsc::channel::<Job>(LANE_CAPACITY);
        let stop = self.shutdown.child_token();
        let (consumer, worker, token) = (Arc::clone(&self.consumer), Arc::clone(&self.worker), stop.clone());
        let topic = consumer.context().topic.clone();
        let task = tokio::spawn(async move {
            let mut backlog = LaneBacklog::default();
            loop {
                let job = if backlog.is_empty() {
                    tokio::select! {
                        () = token.cancelled() => break,
                        job = queue.recv() => match job { Some(job) => job, None => break },
                    }
                } else if token.is_cancelled() {
                    break;
                } else {
                    match queue.try_recv() {
                        Ok(job) => {
                            let due = backlog.busy(Instant::now());
                            if !due.is_empty() {
                                worker.engine.settle_batch(due).await;
                            }
                            job
                        }
                        Err(TryRecvError::Empty) => {
                            worker.engine.settle_batch(backlog.idle(Instant::now())).await;
                            continue;
                        }
                        Err(TryRecvError::Disconnected) => break,
                    }
                };
                match job {
                    Job::Apply(message) => {
                        if !worker.process(&message, &token).await {
                            break;
                        }
                        if let Err(error) = consumer.store_offset(message.topic(), partition, message.offset()) {
                            tracing::warn!(%error, partition, "cannot store offset (partition revoked?)");
                        }
                    }
                    Job::Settle(settlements) => backlog.add(settlements, Instant::now()),
                    Job::Start(start) => {
                        if !worker.start(&topic, start, &token).await {
                            break;
                        }
                    }
                }
            }
            backlog.drain()
        });
        Lane { jobs, stop, task }
    }

    /// Stops every lane after the message in hand; the settlements the running lanes leave go back to the
    /// engine's, for the consumer's last settling.
    async fn stop(&mut self) {
        let running: Vec<JoinHandle<Vec<Settlement>>> = self
            .running
            .drain()
            .map(|(_, lane)| {
                lane.stop.cancel();
                lane.task
            })
            .collect();
        let now = chrono::Utc::now();
        for task in running {
            for settlement in task.await.unwrap_or_default() {
                self.worker.engine.unsettled().retry(settlement, now);
            }
        }
        for (_, task) in self.retiring.drain() {
            let _ = task.await;
        }
    }
}

/// The next start handed over, or never without a channel (or once it is closed).
async fn next_start(starts: &mut Option<mpsc::Receiver<HandedStart>>) -> Option<HandedStart> {
    match starts {
        Some(receiver) => match receiver.recv().await {
            Some(start) => Some(start),
            None => {
                *starts = None;
                std::future::pending().await
            }
        },
        None => std::future::pending().await,
    }
}

/// Sleeps for `duration`, or forever without one.
async fn sleep_or_never(duration: Option<Duration>) {
    match duration {
        Some(duration) => tokio::time::sleep(duration).await,
        None => std::future::pending().await,
    }
}

/// How long settling every saga may take when the consumer stops.
const FINAL_SETTLE: Duration = Duration::from_secs(5);

impl Worker {
    /// Settles every saga waiting for it (the consumer is stopping and still owns their partitions), within
    /// [`FINAL_SETTLE`]; what is left is recovered by the partitions' next owner.
    async fn settle_all(&self) {
        let settle = async {
            while !self.engine.unsettled().is_empty() {
                if self.engine.settle_due(chrono::DateTime::<chrono::Utc>::MAX_UTC).await == 0 {
                    break;
                }
            }
        };
        if tokio::time::timeout(FINAL_SETTLE, settle).await.is_err() {
            tracing::warn!(left = self.engine.unsettled().len(), "settling before shutdown timed out");
        }
    }

    /// Flushes the pending work of sagas in newly assigned partitions.
    async fn recover(&self, partitions: Vec<i32>, shutdown: &CancellationToken) {
        let engine = self.engine.clone();
        let done = retry_until_done(shutdown, "recovering assigned partitions", || engine.recover(&partitions)).await;
        if let Ok(count) = done {
            tracing::info!(?partitions, sagas = count, "recovered pending sagas");
        }
    }

    /// Applies one message in its `kafka.process` span (a child of the trace context in its headers); returns
    /// false if shutdown interrupted the retries.
    async fn process(&self, message: &OwnedMessage, shutdown: &CancellationToken) -> bool {
        let span = platform::kafka::process_span(message);
        self.apply(message, shutdown).instrument(span).await
    }

    async fn apply(&self, message: &OwnedMessage, shutdown: &CancellationToken) -> bool {
        let origin =
            Origin { topic: message.topic().to_owned(), partition: message.partition(), offset: message.offset() };
        let decoded = match Message::decode(message.payload().unwrap_or_default()) {
            Ok(decoded) => decoded,
            Err(error) => return self.dead_letter(message, &error.to_string(), shutdown).await,
        };
        let span = tracing::Span::current();
        span.record("message_type", decoded.body.message_type());
        platform::telemetry::record_saga(&span, decoded.meta.saga_id, decoded.meta.correlation_id);
        let engine = self.engine.clone();
        let outcome = retry_until_done(shutdown, "applying a message", || engine.handle(&decoded, &origin)).await;
        match outcome {
            Ok(Outcome::NotForOrchestrator) => {
                let error = format!("{} does not belong on {}", decoded.body.message_type(), origin.topic);
                self.dead_letter(message, &error, shutdown).await
            }
            Ok(outcome) => {
                tracing::debug!(?outcome, offset = origin.offset, "message applied");
                true
            }
            Err(Stop::Permanent(error)) => self.dead_letter(message, &error.to_string(), shutdown).await,
            Err(Stop::Shutdown) => false,
        }
    }

    /// Applies a start message handed over by this instance's API, read from nowhere: its origin names the
    /// partition and [`HANDED_OVER`] for an offset. Returns false if shutdown interrupted the retries. A start
    /// that cannot be applied for good is left to the start sweep (the saga stays stored, its start
    /// unpublished).
    async fn start(&self, topic: &str, start: HandedStart, shutdown: &CancellationToken) -> bool {
        let HandedStart { partition, message, traceparent } = start;
        let span = tracing::info_span!(
            "saga.start",
            otel.kind = "internal",
            partition,
            saga_id = tracing::field::Empty,
            order_id = tracing::field::Empty,
            correlation_id = tracing::field::Empty,
            trace_id = tracing::field::Empty,
        );
        platform::telemetry::continue_trace(
            &span,
            platform::telemetry::context_from_traceparent(traceparent.as_deref()),
        );
        platform::telemetry::record_saga(&span, message.meta.saga_id, message.meta.correlation_id);
        let origin = Origin { topic: topic.to_owned(), partition, offset: HANDED_OVER };
        let engine = self.engine.clone();
        let applied =
            retry_until_done(shutdown, "applying a start", || engine.handle(&message, &origin)).instrument(span).await;
        match applied {
            Ok(outcome) => {
                tracing::debug!(?outcome, saga_id = %message.meta.saga_id, "handed start applied");
                true
            }
            Err(Stop::Permanent(error)) => {
                tracing::error!(%error, saga_id = %message.meta.saga_id, "a handed start cannot be applied");
                true
            }
            Err(Stop::Shutdown) => false,
        }
    }

    async fn dead_letter(&self, message: &OwnedMessage, error: &str, shutdown: &CancellationToken) -> bool {
        tracing::warn!(error, partition = message.partition(), offset = message.offset(), "dead-lettering a message");
        let sent = retry_until_done(shutdown, "dead-lettering", || async {
            self.publisher.dead_letter(message, error, 1, "orchestrator").await.map_err(crate::engine::Error::Bus)
        })
        .await;
        match sent {
            Ok(_) => {
                self.metrics.dead_letters.get_or_create(&TopicLabel { topic: message.topic().to_owned() }).inc();
                true
            }
            Err(_) => false,
        }
    }
}

/// Why [`retry_until_done`] stopped without a result.
#[derive(Debug)]
pub enum Stop {
    /// Shutdown was requested.
    Shutdown,
    /// The operation failed in a way retrying cannot fix.
    Permanent(crate::engine::Error),
}

/// Runs `operation` until it succeeds or fails for good, backing off exponentially (up to 5 s) between
/// transient failures.
pub async fn retry_until_done<T, F, Fut>(shutdown: &CancellationToken, what: &str, mut operation: F) -> Result<T, Stop>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, crate::engine::Error>>,
{
    let backoff = ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(50))
        .with_max_delay(Duration::from_secs(5))
        .without_max_times();
    let mut delays = backoff.build();
    loop {
        match operation().await {
            Ok(value) => return Ok(value),
            Err(error) if error.is_transient() => {
                let delay = delays.next().unwrap_or(Duration::from_secs(5));
                tracing::warn!(%error, ?delay, "{what} failed; retrying");
                tokio::select! {
                    () = shutdown.cancelled() => return Err(Stop::Shutdown),
                    () = tokio::time::sleep(delay) => {}
                }
            }
            Err(error) => {
                tracing::error!(%error, "{what} failed permanently");
                return Err(Stop::Permanent(error));
            }
        }
    }
}
