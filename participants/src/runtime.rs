//! The runtime every participant shares: consume the participant's command topic, and for each message
//! decode it, apply the domain's idempotent effect, reply on `saga.reply`, wait for the broker's
//! acknowledgement, and only then store the message's offset (librdkafka commits stored offsets in the
//! background). Messages that can never be processed (undecodable, invalid, not a command, a command for
//! another participant) go to the topic's `.dlq` twin with the reason in a header; their offset is stored
//! once the dead letter is acknowledged.
//!
//! **One effect at a time.** The consumer applies its messages' effects strictly sequentially, across all
//! the partitions assigned to it. That keeps one writer per document within a process (a SKU's stock, a
//! saga's payment), so a domain may read a document by `_id`, check its state in code and then write it by
//! `_id` with no condition in the filter (conditional filters are slow scans, and not atomic, on FerretDB:
//! see the [database access rule](crate::store#database-access-rule)); it keeps the in-memory stock cache
//! exact. Instances split the partitions (and so the sagas) between them through the consumer group. The
//! cost is throughput: one database round trip chain per command; scale out with partitions and instances.
//!
//! **Replies are pipelined.** Once a command's effect is durable its reply is sent, and the next message's
//! effect starts while the broker acknowledges it (at most [`REPLIES_IN_FLIGHT`] replies wait at once).
//! Offsets are still stored only in order and only after the message's reply (or dead letter) is
//! acknowledged: a message whose reply is not acknowledged, and every later one, is redelivered after a
//! crash or a partition move, and answered again from the domain's idempotent record.
//!
//! **Failures.** A transient error (the database is down, a timeout) retries the whole message with
//! exponential backoff (capped at [`RuntimeSettings::max_backoff`]); after
//! [`RuntimeSettings::give_up_after`] the runtime replies `Reply::transient` and moves on (the orchestrator
//! retries the step, and the domain's idempotency makes that safe). Publishing a reply or a dead letter is
//! retried until the broker acknowledges it. On shutdown the current message is finished if it can be;
//! a message interrupted while waiting to retry keeps its offset unstored and is redelivered later.

use std::fmt::Display;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use futures_util::StreamExt;
use futures_util::stream::FuturesOrdered;
use platform::config;
use platform::kafka::{KafkaSettings, Publisher};
use platform::metrics::LagContext;
use proto_events::{Body, Command, CommandKind, FailureKind, Message, Meta, Reply, topics};
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{BorrowedMessage, Message as _};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::clock::Clock;
use crate::domain::{Domain, Handled};
use crate::metrics::{DeadLetterReason, Metrics, Outcome};

/// The longest reason a reply may carry (the wire contract's limit).
const MAX_REASON_CHARS: usize = 500;

/// Replies sent and not yet acknowledged at most; the consumer waits for the oldest beyond that.
pub const REPLIES_IN_FLIGHT: usize = 64;

/// Where a message was read, to store its offset once it is done.
#[derive(Debug, Clone, Copy)]
struct Position {
    partition: i32,
    offset: i64,
}

/// A message whose reply was sent: its position, and whether the broker acknowledged the reply (false:
/// shutdown came first, so neither it nor any later message may have its offset stored).
type Replied<'a> = std::pin::Pin<Box<dyn Future<Output = (Position, bool)> + Send + 'a>>;

/// The runtime could not start.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The consumer could not be created or subscribed.
    #[error("cannot consume {topic} in group {group}: {source}")]
    Consumer {
        /// The full topic name.
        topic: String,
        /// The consumer group.
        group: String,
        /// The client's error.
        source: Box<KafkaError>,
    },
}

/// How the runtime retries.
#[derive(Debug, Clone)]
pub struct RuntimeSettings {
    /// `PARTICIPANT_TRANSIENT_GIVE_UP_SECS`, default 30: how long one message is retried before the runtime
    /// replies `transient` and moves on.
    pub give_up_after: Duration,
    /// The first backoff delay (100 ms).
    pub min_backoff: Duration,
    /// The longest backoff delay (5 s).
    pub max_backoff: Duration,
}

impl Default for RuntimeSettings {
    fn default() -> Self {
        Self {
            give_up_after: Duration::from_secs(30),
            min_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(5),
        }
    }
}

impl RuntimeSettings {
    /// Settings from the environment.
    pub fn from_env() -> Result<Self, config::Error> {
        let secs: u64 = config::parsed("PARTICIPANT_TRANSIENT_GIVE_UP_SECS", 30)?;
        if secs == 0 || secs > 3600 {
            return Err(config::Error::Invalid {
                name: "PARTICIPANT_TRANSIENT_GIVE_UP_SECS",
                value: secs.to_string(),
                reason: "must be between 1 and 3600".to_owned(),
            });
        }
        Ok(Self { give_up_after: Duration::from_secs(secs), ..Self::default() })
    }

    /// The backoff delays, growing exponentially from `min_backoff` to `max_backoff`, without end.
    pub fn backoff(&self) -> impl Iterator<Item = Duration> + Send + use<> {
        ExponentialBuilder::default()
            .with_min_delay(self.min_backoff)
            .with_max_delay(self.max_backoff)
            .with_factor(2.0)
            .without_max_times()
            .build()
    }
}

/// What to do with one message.
#[derive(Debug)]
pub enum Verdict {
    /// Send this reply, then store the offset.
    Reply {
        /// The reply message.
        reply: Box<Message>,
        /// The command answered.
        command: CommandKind,
        /// How the command ended, for metrics and logs.
        outcome: Outcome,
    },
    /// Send the message to the dead-letter topic, then store the offset.
    DeadLetter {
        /// Why it cannot be processed.
        error: String,
        /// The category, for metrics.
        reason: DeadLetterReason,
    },
    /// Shutdown interrupted the retries: leave the offset unstored (the message will be redelivered).
    Interrupted,
}

/// Where one message is, once its effect was applied (see [`Runtime::run`]).
enum Processed<'a> {
    /// Its reply was sent; the future ends when the broker acknowledged it.
    Replying(Replied<'a>),
    /// It goes to the dead-letter topic after the replies in flight (its offset comes after theirs), in its
    /// span.
    DeadLetter { error: String, reason: DeadLetterReason, span: tracing::Span },
    /// Shutdown interrupted its retries: its offset stays unstored.
    Interrupted,
}

/// Decides what to do with a message: decoding, routing, the domain's effect with retries, the reply.
/// Knows nothing of Kafka, so it runs in unit tests with an in-memory domain.
#[derive(Debug)]
pub struct Processor<D> {
    domain: Arc<D>,
    settings: RuntimeSettings,
    clock: Arc<dyn Clock>,
    metrics: Metrics,
}

impl<D: Domain> Processor<D> {
    /// A processor for `domain`.
    pub fn new(domain: Arc<D>, settings: RuntimeSettings, clock: Arc<dyn Clock>, metrics: Metrics) -> Self {
        Self { domain, settings, clock, metrics }
    }

    /// The metrics this processor counts into.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// What to do with the message whose bytes are `payload`.
    pub async fn decide(&self, payload: Option<&[u8]>, shutdown: &CancellationToken) -> Verdict {
        let message = match payload.map(Message::decode) {
            None => return dead_letter(DeadLetterReason::undecodable, "the message has no payload"),
            Some(Err(error)) => return dead_letter(DeadLetterReason::undecodable, error),
            Some(Ok(message)) => message,
        };
        let span = tracing::Span::current();
        span.record("message_type", message.body.message_type());
        platform::telemetry::record_saga(&span, message.meta.saga_id, message.meta.correlation_id);
        let Body::Command(command) = &message.body else {
            let error = format!("message type {} is not a command", message.body.message_type());
            return dead_letter(DeadLetterReason::not_a_command, error);
        };
        let participant = command.kind().participant();
        if participant != D::PARTICIPANT {
            let error = format!(
                "{} is a command for {}, not {}",
                command.kind().message_type(),
                participant.name(),
                D::PARTICIPANT.name()
            );
            return dead_letter(DeadLetterReason::misrouted, error);
        }
        self.command(&message.meta, command, shutdown).await
    }

    async fn command(&self, meta: &Meta, command: &Command, shutdown: &CancellationToken) -> Verdict {
        let kind = command.kind();
        let handled = match self.apply(meta, command, shutdown).await {
            Ok(handled) => handled,
            Err(Stop::Interrupted) => return Verdict::Interrupted,
            Err(Stop::Permanent(error)) => return dead_letter(DeadLetterReason::misrouted, error),
        };
        let outcome = outcome_of(&handled);
        let meta = Meta::caused_by(meta, meta.step, meta.attempt, self.clock.now());
        let reply = Body::Reply { command: kind, reply: bounded(handled.reply) };
        match Message::new(meta, reply) {
            Ok(reply) => Verdict::Reply { reply: Box::new(reply), command: kind, outcome },
            Err(error) => dead_letter(DeadLetterReason::undecodable, format!("the reply would be invalid: {error}")),
        }
    }

    /// The domain's answer, retrying transient errors until `give_up_after`, then a transient reply.
    async fn apply(&self, meta: &Meta, command: &Command, shutdown: &CancellationToken) -> Result<Handled, Stop> {
        let kind = command.kind().message_type();
        let deadline = Instant::now() + self.settings.give_up_after;
        let mut delays = self.settings.backoff();
        for attempt in 1_u32.. {
            let error = match self.domain.handle(meta, command).await {
                Ok(handled) => return Ok(handled),
                Err(error) if !error.is_transient() => return Err(Stop::Permanent(error.to_string())),
                Err(error) => error,
            };
            self.metrics.transient_error(kind);
            let delay = delays.next().unwrap_or(self.settings.max_backoff);
            if Instant::now() + delay >= deadline {
                tracing::warn!(attempt, error = %error, "transient failure; giving up and replying transient");
                return Ok(Handled::applied(Reply::transient(error.to_string())));
            }
            tracing::warn!(attempt, error = %error, ?delay, "transient failure; retrying");
            tokio::select! {
                () = shutdown.cancelled() => return Err(Stop::Interrupted),
                () = tokio::time::sleep(delay) => {}
            }
        }
        Err(Stop::Interrupted)
    }
}

/// Why [`Processor::apply`] stopped without a reply.
enum Stop {
    Interrupted,
    Permanent(String),
}

fn dead_letter(reason: DeadLetterReason, error: impl Display) -> Verdict {
    Verdict::DeadLetter { error: error.to_string(), reason }
}

fn outcome_of(handled: &Handled) -> Outcome {
    match &handled.reply {
        _ if handled.duplicate => Outcome::duplicate,
        Reply::Succeeded { .. } => Outcome::succeeded,
        Reply::Failed { kind: FailureKind::Business, .. } => Outcome::business_failure,
        Reply::Failed { kind: FailureKind::Transient, .. } => Outcome::transient_failure,
    }
}

/// `reply` with its reason cut to the wire contract's limit.
fn bounded(reply: Reply) -> Reply {
    match reply {
        Reply::Failed { kind, reason } if reason.chars().count() > MAX_REASON_CHARS => {
            Reply::Failed { kind, reason: reason.chars().take(MAX_REASON_CHARS).collect() }
        }
        other => other,
    }
}

/// The Kafka side: the consumer loop around a [`Processor`].
pub struct Runtime<D> {
    processor: Processor<D>,
    consumer: StreamConsumer<LagContext>,
    publisher: Publisher,
    topic: String,
}

impl<D> std::fmt::Debug for Runtime<D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime").field("topic", &self.topic).finish_non_exhaustive()
    }
}

impl<D: Domain> Runtime<D> {
    /// A runtime consuming `D`'s command topic (under the settings' prefix) in consumer group `group`.
    pub fn new(
        processor: Processor<D>,
        kafka: &KafkaSettings,
        group: &str,
        publisher: Publisher,
    ) -> Result<Self, Error> {
        let topic = kafka.topic(D::PARTICIPANT.command_topic());
        let consumer_error =
            |source| Error::Consumer { topic: topic.clone(), group: group.to_owned(), source: Box::new(source) };
        // The context records the consumer lag from librdkafka's statistics.
        let context = LagContext::new(processor.metrics.service().kafka.clone());
        let consumer: StreamConsumer<LagContext> = kafka
            .service_consumer_config(group)
            .set("client.id", D::PARTICIPANT.name())
            .create_with_context(context)
            .map_err(consumer_error)?;
        consumer.subscribe(&[topic.as_str()]).map_err(consumer_error)?;
        Ok(Self { processor, consumer, publisher, topic })
    }

    /// Consumes until `shutdown` is cancelled; the message being processed then is finished first, and the
    /// replies in flight are waited for.
    pub async fn run(self, shutdown: CancellationToken) {
        tracing::info!(topic = %self.topic, "consuming commands");
        let mut replying: FuturesOrdered<Replied<'_>> = FuturesOrdered::new();
        // False once a message could not be finished: no later offset may be stored.
        let mut storing = true;
        loop {
            let received = tokio::select! {
                biased;
                () = shutdown.cancelled() => break,
                Some((position, sent)) = replying.next(), if !replying.is_empty() => {
                    storing = self.finished(position, sent && storing);
                    if storing { continue } else { break }
                }
                received = self.consumer.recv(), if replying.len() < REPLIES_IN_FLIGHT => received,
            };
            match received {
                Ok(message) => match self.process(&message, &shutdown).await {
                    Processed::Replying(replied) => replying.push_back(replied),
                    Processed::DeadLetter { error, reason, span } => {
                        storing = self.drain(&mut replying, storing).await;
                        storing =
                            storing && self.dead_letter(&message, &error, reason, &shutdown).instrument(span).await;
                        if !storing {
                            break;
                        }
                    }
                    // Its offset stays unstored; those of the replies in flight before it are stored below.
                    Processed::Interrupted => break,
                },
                Err(error) => {
                    // librdkafka reconnects by itself; pause briefly so a broker outage does not spin.
                    tracing::warn!(error = %error, "the consumer reported an error");
                    tokio::select! {
                        () = shutdown.cancelled() => break,
                        () = tokio::time::sleep(self.processor.settings.min_backoff) => {}
                    }
                }
            }
        }
        self.drain(&mut replying, storing).await;
        self.commit();
        tracing::info!(topic = %self.topic, "stopped consuming");
    }

    /// Waits for every reply in flight, storing their offsets in order while `storing` and they were sent;
    /// returns whether storing may go on.
    async fn drain(&self, replying: &mut FuturesOrdered<Replied<'_>>, mut storing: bool) -> bool {
        while let Some((position, sent)) = replying.next().await {
            storing = self.finished(position, sent && storing);
        }
        storing
    }

    /// Stores the offset of a message that is `done` (its reply or dead letter acknowledged); returns `done`.
    fn finished(&self, position: Position, done: bool) -> bool {
        if done {
            self.store_offset(position);
        }
        done
    }

    /// Applies one message's effect (its `kafka.process` span continues the command's trace, and the reply
    /// continues this span's) and sends its reply, returning the reply's acknowledgement to wait for.
    async fn process<'a>(&'a self, message: &BorrowedMessage<'_>, shutdown: &'a CancellationToken) -> Processed<'a> {
        let span = platform::kafka::process_span(message);
        let started = Instant::now();
        let position = Position { partition: message.partition(), offset: message.offset() };
        match self.processor.decide(message.payload(), shutdown).instrument(span.clone()).await {
            Verdict::Interrupted => Processed::Interrupted,
            Verdict::Reply { reply, command, outcome } => {
                let replied = async move {
                    let sent = self.reply(&reply, shutdown).await;
                    if sent {
                        self.processor.metrics.command(command.message_type(), outcome);
                        let elapsed = started.elapsed().as_secs_f64();
                        self.processor.metrics.latency(command.message_type(), elapsed);
                        tracing::info!(command = command.message_type(), outcome = ?outcome, "replied");
                    }
                    (position, sent)
                };
                Processed::Replying(Box::pin(replied.instrument(span)))
            }
            Verdict::DeadLetter { error, reason } => Processed::DeadLetter { error, reason, span },
        }
    }

    async fn reply(&self, reply: &Message, shutdown: &CancellationToken) -> bool {
        let publish = || self.publisher.publish(topics::REPLY, reply);
        until_done("publish the reply", &self.processor.settings, shutdown, publish).await
    }

    /// Sends the message to the dead-letter topic and stores its offset; false when shutdown came first.
    async fn dead_letter(
        &self,
        message: &BorrowedMessage<'_>,
        error: &str,
        reason: DeadLetterReason,
        shutdown: &CancellationToken,
    ) -> bool {
        tracing::warn!(error, "dead-lettering the message");
        let service = D::PARTICIPANT.name();
        let send = || self.publisher.dead_letter(message, error, 1, service);
        let sent = until_done("publish the dead letter", &self.processor.settings, shutdown, send).await;
        if sent {
            self.processor.metrics.dead_letter(reason);
        }
        self.finished(Position { partition: message.partition(), offset: message.offset() }, sent)
    }

    fn store_offset(&self, position: Position) {
        if let Err(error) = self.consumer.store_offset(&self.topic, position.partition, position.offset) {
            // The partition was revoked meanwhile; its new owner starts from the last committed offset.
            tracing::warn!(error = %error, "cannot store the offset");
        }
    }

    fn commit(&self) {
        match self.consumer.commit_consumer_state(CommitMode::Sync) {
            Ok(()) | Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => {}
            Err(error) => tracing::warn!(error = %error, "committing the stored offsets on shutdown failed"),
        }
    }
}

/// Runs `op` until it succeeds, with exponential backoff; false if shutdown came first.
async fn until_done<T, E, F, Fut>(
    what: &str,
    settings: &RuntimeSettings,
    shutdown: &CancellationToken,
    mut op: F,
) -> bool
where
    E: Display,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let mut delays = settings.backoff();
    loop {
        let error = match op().await {
            Ok(_) => return true,
            Err(error) => error,
        };
        let delay = delays.next().unwrap_or(settings.max_backoff);
        tracing::warn!(error = %error, ?delay, "cannot {what}; retrying");
        tokio::select! {
            () = shutdown.cancelled() => return false,
            () = tokio::time::sleep(delay) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use chrono::DateTime;
    use prometheus_client::registry::Registry;
    use proto_events::commands::{ChargePayment, Currency, RefundPayment, ReleaseStock};
    use uuid::Uuid;

    use super::*;
    use crate::clock::ManualClock;
    use crate::payment::{MemoryPaymentStore, PaymentSettings, Payments};

    type Memory = Payments<MemoryPaymentStore>;

    async fn processor(give_up_after: Duration) -> (Processor<Memory>, Arc<Memory>) {
        let clock = Arc::new(ManualClock::new(DateTime::from_timestamp(1_700_000_000, 0).expect("valid time")));
        let payments = Payments::open(MemoryPaymentStore::new(), PaymentSettings::default(), clock.clone());
        let payments = Arc::new(payments.await.expect("open"));
        let settings = RuntimeSettings { give_up_after, ..RuntimeSettings::default() };
        let metrics = Metrics::register(&mut Registry::default());
        (Processor::new(Arc::clone(&payments), settings, clock, metrics), payments)
    }

    fn command(saga_id: Uuid, step: u16, attempt: u32, command: Command) -> Message {
        let time = DateTime::from_timestamp(1_700_000_000, 0).expect("valid time");
        let meta = Meta {
            message_id: Uuid::now_v7(),
            saga_id,
            step,
            attempt,
            correlation_id: Uuid::now_v7(),
            causation_id: None,
            time,
        };
        Message::new(meta, Body::Command(command)).expect("valid command")
    }

    fn charge() -> Command {
        Command::PaymentCharge(ChargePayment {
            amount_cents: 1_000,
            currency: Currency::EUR,
            payment_token: "tok_visa".to_owned(),
            customer_ref: "0123456789abcdef0123456789abcdef".to_owned(),
        })
    }

    fn reply_of(verdict: Verdict) -> (Message, Outcome) {
        match verdict {
            Verdict::Reply { reply, command, outcome } => {
                assert_eq!(command, CommandKind::PaymentCharge);
                (*reply, outcome)
            }
            other => panic!("expected a reply, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_command_and_its_redelivery_get_the_same_outcome_stamped_with_each_attempt() {
        let (processor, payments) = processor(Duration::from_secs(30)).await;
        let shutdown = CancellationToken::new();
        let saga_id = Uuid::now_v7();
        let first = command(saga_id, 1, 1, charge());
        let (reply, outcome) = reply_of(processor.decide(Some(&first.encode()), &shutdown).await);
        assert_eq!(outcome, Outcome::succeeded);
        assert_eq!((reply.meta.saga_id, reply.meta.step, reply.meta.attempt), (saga_id, 1, 1));
        assert_eq!(reply.meta.causation_id, Some(first.meta.message_id));
        assert_eq!(reply.meta.correlation_id, first.meta.correlation_id);

        let redelivered = command(saga_id, 1, 2, charge());
        let (again, outcome) = reply_of(processor.decide(Some(&redelivered.encode()), &shutdown).await);
        assert_eq!(outcome, Outcome::duplicate);
        assert_eq!(again.body, reply.body, "the same reply");
        assert_eq!((again.meta.step, again.meta.attempt), (1, 2), "stamped with the new attempt");
        assert_eq!(payments.store().len(), 1);
    }

    #[tokio::test]
    async fn poison_is_dead_lettered_with_its_reason() {
        let (processor, _) = processor(Duration::from_secs(30)).await;
        let shutdown = CancellationToken::new();
        let verdict = processor.decide(Some(b"not json at all"), &shutdown).await;
        assert!(
            matches!(&verdict, Verdict::DeadLetter { reason: DeadLetterReason::undecodable, error } if error.contains("not a message envelope")),
            "{verdict:?}"
        );
        assert!(matches!(processor.decide(None, &shutdown).await, Verdict::DeadLetter { .. }));

        // Schema-invalid: a charge with a card number as token.
        let mut envelope = command(Uuid::now_v7(), 1, 1, charge()).to_envelope();
        envelope.payload["payment_token"] = serde_json::json!("4111 1111 1111 1111");
        let bytes = serde_json::to_vec(&envelope).expect("json");
        let verdict = processor.decide(Some(&bytes), &shutdown).await;
        assert!(
            matches!(&verdict, Verdict::DeadLetter { error, .. } if error.contains("invalid") && !error.contains("4111")),
            "{verdict:?}"
        );

        let other = command(Uuid::now_v7(), 1, 1, Command::InventoryRelease(ReleaseStock {}));
        let verdict = processor.decide(Some(&other.encode()), &shutdown).await;
        assert!(matches!(verdict, Verdict::DeadLetter { reason: DeadLetterReason::misrouted, .. }), "{verdict:?}");

        let time = DateTime::from_timestamp(1_700_000_000, 0).expect("valid time");
        let meta = Meta::caused_by(&other.meta, 1, 1, time);
        let reply = Message::new(meta, Body::Reply { command: CommandKind::PaymentCharge, reply: Reply::ok() });
        let verdict = processor.decide(Some(&reply.expect("valid").encode()), &shutdown).await;
        assert!(matches!(verdict, Verdict::DeadLetter { reason: DeadLetterReason::not_a_command, .. }), "{verdict:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn transient_errors_are_retried_until_the_store_recovers() {
        let (processor, payments) = processor(Duration::from_secs(30)).await;
        payments.store().faults.go_down();
        let healer = Arc::clone(&payments);
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(3)).await;
            healer.store().faults.heal();
        });
        let started = Instant::now();
        let message = command(Uuid::now_v7(), 1, 1, charge());
        let (_, outcome) = reply_of(processor.decide(Some(&message.encode()), &CancellationToken::new()).await);
        assert_eq!(outcome, Outcome::succeeded);
        assert!(started.elapsed() >= Duration::from_secs(3), "it waited for the store");
        assert_eq!(payments.store().len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_store_down_for_longer_than_the_give_up_time_gets_a_transient_reply() {
        let (processor, payments) = processor(Duration::from_secs(30)).await;
        payments.store().faults.go_down();
        let started = Instant::now();
        let message = command(Uuid::now_v7(), 2, 1, Command::PaymentRefund(RefundPayment {}));
        let verdict = processor.decide(Some(&message.encode()), &CancellationToken::new()).await;
        let Verdict::Reply { reply, outcome, .. } = verdict else { panic!("expected a reply, got {verdict:?}") };
        assert_eq!(outcome, Outcome::transient_failure);
        let Body::Reply { reply: Reply::Failed { kind: FailureKind::Transient, reason }, .. } = &reply.body else {
            panic!("expected a transient failure, got {:?}", reply.body)
        };
        assert!(reason.contains("unavailable"), "{reason}");
        let waited = started.elapsed();
        assert!(waited >= Duration::from_secs(20) && waited <= Duration::from_secs(30), "gave up after {waited:?}");
        assert!(processor.metrics().commands("payment.refund", Outcome::transient_failure) == 0, "counted on send");
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_interrupts_the_retries_without_a_reply() {
        let (processor, payments) = processor(Duration::from_secs(30)).await;
        payments.store().faults.go_down();
        let shutdown = CancellationToken::new();
        let cancel = shutdown.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(1)).await;
            cancel.cancel();
        });
        let message = command(Uuid::now_v7(), 1, 1, charge());
        assert!(matches!(processor.decide(Some(&message.encode()), &shutdown).await, Verdict::Interrupted));
    }

    #[test]
    fn the_backoff_grows_to_its_cap() {
        let delays: Vec<Duration> = RuntimeSettings::default().backoff().take(10).collect();
        assert_eq!(delays[0], Duration::from_millis(100));
        assert!(delays.windows(2).all(|w| w[0] <= w[1]));
        assert_eq!(delays[9], Duration::from_secs(5));
    }

    #[test]
    fn long_reasons_are_cut_to_the_contract_limit() {
        let Reply::Failed { reason, .. } = bounded(Reply::transient("x".repeat(2_000))) else { panic!("failed") };
        assert_eq!(reason.chars().count(), MAX_REASON_CHARS);
    }
}
