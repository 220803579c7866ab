//! The orchestrator's metrics.
//!
//! - With in-memory ports (the harness): the engine observes each attempt's duration by step and outcome
//!   (from sending the attempt to the reply or timeout that ends it), counts retries, timeouts and the
//!   terminal states, and the order's duration by status; read back by encoding the registry as `/metrics`
//!   would and parsing the text.
//! - Against the real Kafka broker and database (`KAFKA_BOOTSTRAP_SERVERS`, `MONGODB_URI`; `ops/infra.sh
//!   status` says whether they run), under a topic prefix and a database of its own: the orchestrator's
//!   `Application` serves every name of the metrics contract ([`orchestrator::metrics::EXPORTED`] and
//!   [`platform::metrics::EXPORTED`]) at `GET /metrics` once an order ran, with the test playing the
//!   participants.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::TimeDelta;
use orchestrator::Application;
use orchestrator::auth::{KeySettings, Role, claims, mint_hs256};
use orchestrator::config::Settings;
use platform::kafka::{KafkaSettings, Publisher};
use proto_events::{Body, Message, Meta, OperatorCommand, OperatorVerb, Reply, ResolvedAs, TimerFired, topics};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message as _;
use saga_defs::Phase;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use common::{Harness, command_kind, order_json};

// ---------------------------------------------------------------------------------------------------------
// Reading the text format

/// One sample: metric name, labels, value.
type Sample = (String, BTreeMap<String, String>, f64);

/// The samples of a Prometheus text exposition (label values here never hold commas or quotes).
fn samples(text: &str) -> Vec<Sample> {
    text.lines()
        .filter(|line| !line.starts_with('#') && !line.is_empty())
        .map(|line| {
            let (series, value) = line.rsplit_once(' ').expect("a sample has a value");
            let (name, labels) = match series.split_once('{') {
                Some((name, labels)) => (name, labels.trim_end_matches('}')),
                None => (series, ""),
            };
            let labels = labels
                .split(',')
                .filter(|pair| !pair.is_empty())
                .map(|pair| {
                    let (key, value) = pair.split_once('=').expect("label=value");
                    (key.to_owned(), value.trim_matches('"').to_owned())
                })
                .collect();
            (name.to_owned(), labels, value.parse().expect("a numeric value"))
        })
        .collect()
}

/// The value of the sample of `name` whose labels are exactly `labels`.
fn value(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let wanted: BTreeMap<String, String> = labels.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
    samples(text).into_iter().find(|(n, l, _)| n == name && *l == wanted).map(|(_, _, v)| v)
}

/// Count and sum of the histogram `name` at `labels`.
fn histogram(text: &str, name: &str, labels: &[(&str, &str)]) -> (f64, f64) {
    let count = value(text, &format!("{name}_count"), labels).unwrap_or(0.0);
    let sum = value(text, &format!("{name}_sum"), labels).unwrap_or(0.0);
    (count, sum)
}

fn step_seconds(text: &str, step: &str, outcome: &str) -> (f64, f64) {
    histogram(text, "saga_step_duration_seconds", &[("step", step), ("outcome", outcome)])
}

fn assert_close(actual: f64, expected: f64, what: &str) {
    assert!((actual - expected).abs() < 1e-9, "{what}: expected {expected}, got {actual}");
}

// ---------------------------------------------------------------------------------------------------------
// The engine's observations, with in-memory ports

fn advance(h: &Harness, millis: i64) {
    h.clock.advance(TimeDelta::milliseconds(millis));
}

/// Waits out the saga's current deadline on the manual clock and applies the timer message for it.
async fn fire_deadline(h: &Harness, id: Uuid) {
    let saga = h.record(id).await;
    let deadline = saga.state.deadline.expect("the saga has a deadline");
    h.clock.advance(deadline.at - h.now());
    let meta = Meta {
        message_id: Uuid::now_v7(),
        saga_id: id,
        step: deadline.step,
        attempt: deadline.attempt,
        correlation_id: saga.correlation_id,
        causation_id: None,
        time: h.now(),
    };
    h.apply(&Message::new(meta, Body::Timer(TimerFired { kind: deadline.kind, due_at: deadline.at })).expect("valid"))
        .await;
}

/// The one command the engine published since the last call.
fn command(h: &Harness) -> Message {
    let commands: Vec<Message> =
        h.bus.take().into_iter().map(|(_, m)| m).filter(|m| matches!(m.body, Body::Command(_))).collect();
    assert_eq!(commands.len(), 1, "{commands:?}");
    commands.into_iter().next().expect("one command")
}

#[tokio::test]
async fn attempts_are_timed_by_step_and_outcome_with_retries_timeouts_and_the_order_duration() {
    let h = Harness::new();
    let (id, start) = h.place_and_take_start().await;
    h.apply(&start).await; // RUNNING reserve_stock, attempt 1, sent at t0
    let reserve1 = command(&h);

    // Attempt 1 times out after the step timeout (10 s); attempt 2 follows the 200 ms back-off.
    fire_deadline(&h, id).await;
    fire_deadline(&h, id).await;
    let reserve2 = command(&h);
    assert_eq!(reserve2.meta.attempt, 2);
    // A late reply to attempt 1 is fenced: it ends no attempt.
    advance(&h, 700);
    h.apply(&h.reply(&reserve1, Reply::ok())).await;
    // Attempt 2 fails transiently after 1.5 s; attempt 3 (after 400 ms) succeeds after 250 ms.
    advance(&h, 800);
    h.apply(&h.reply(&reserve2, Reply::transient("the stock database is down"))).await;
    fire_deadline(&h, id).await;
    let reserve3 = command(&h);
    advance(&h, 250);
    h.apply(&h.reply(&reserve3, Reply::ok())).await;
    // The charge is declined after 3 s: compensation releases the stock, which takes 500 ms.
    let charge = command(&h);
    advance(&h, 3_000);
    h.apply(&h.reply(&charge, Reply::business("payment declined"))).await;
    let release = command(&h);
    assert_eq!(command_kind(&release), proto_events::CommandKind::InventoryRelease);
    advance(&h, 500);
    h.apply(&h.reply(&release, Reply::ok())).await;
    assert_eq!(h.record(id).await.state.phase, Phase::Compensated);

    let text = h.metrics_text();
    let (count, sum) = step_seconds(&text, "reserve_stock", "timeout");
    assert_eq!(count, 1.0, "{text}");
    assert_close(sum, 10.0, "the timed-out attempt lasted the step timeout");
    let (count, sum) = step_seconds(&text, "reserve_stock", "transient_failure");
    assert_eq!(count, 1.0);
    assert_close(sum, 1.5, "attempt 2 lasted from its sending to the transient reply");
    let (count, sum) = step_seconds(&text, "reserve_stock", "succeeded");
    assert_eq!(count, 1.0, "the fenced late reply ended no attempt");
    assert_close(sum, 0.25, "attempt 3");
    let (count, sum) = step_seconds(&text, "charge_payment", "business_failure");
    assert_eq!(count, 1.0);
    assert_close(sum, 3.0, "the declined charge");
    let (count, sum) = step_seconds(&text, "reserve_stock.compensation", "succeeded");
    assert_eq!(count, 1.0);
    assert_close(sum, 0.5, "the release");
    let attempts: f64 =
        samples(&text).iter().filter(|(n, _, _)| n == "saga_step_duration_seconds_count").map(|(_, _, v)| v).sum();
    assert_eq!(attempts, 5.0, "one observation per attempt that ended: {text}");

    let counter = |name: &str, labels: &[(&str, &str)]| value(&text, name, labels).unwrap_or(-1.0);
    assert_eq!(counter("saga_step_retries_total", &[("step", "reserve_stock")]), 2.0, "attempts 2 and 3");
    assert_eq!(counter("saga_step_timeouts_total", &[("step", "reserve_stock")]), 1.0);
    assert_eq!(value(&text, "saga_step_retries_total", &[("step", "charge_payment")]), None, "never retried");
    assert_eq!(counter("saga_fenced_messages_total", &[("fence", "stale")]), 1.0);
    assert_eq!(counter("saga_started_total", &[]), 1.0);
    assert_eq!(counter("saga_compensated_total", &[]), 1.0);
    assert_eq!(counter("saga_completed_total", &[]), 0.0);
    assert_eq!(counter("saga_failed_total", &[]), 0.0);
    assert_eq!(counter("saga_transitions_total", &[("state", "BACKOFF")]), 2.0);
    let (count, sum) = histogram(&text, "saga_order_duration_seconds", &[("status", "CANCELLED")]);
    assert_eq!(count, 1.0);
    assert_close(sum, 10.0 + 0.2 + 1.5 + 0.4 + 0.25 + 3.0 + 0.5, "from the order's creation to CANCELLED");
    assert!(!text.contains(&id.to_string()), "no id in a label: {text}");
}

/// Applies an operator's `action` on the saga as it is now.
async fn operate(h: &Harness, id: Uuid, action: OperatorVerb, outcome: Option<ResolvedAs>) {
    let saga = h.record(id).await;
    let (step, attempt) = saga.state.phase.step_attempt().unwrap_or((0, 0));
    let meta = Meta {
        message_id: Uuid::now_v7(),
        saga_id: id,
        step,
        attempt,
        correlation_id: saga.correlation_id,
        causation_id: None,
        time: h.now(),
    };
    let command = OperatorCommand {
        action,
        outcome,
        reason: "customer called".to_owned(),
        operator: "ops-alice".to_owned(),
        expected_version: saga.version,
    };
    h.apply(&Message::new(meta, Body::Operator(command)).expect("a valid operator command")).await;
}

#[tokio::test]
async fn a_parked_saga_counts_as_failed_and_an_operator_retry_counts_as_a_retry() {
    let h = Harness::new();
    let (id, start) = h.place_and_take_start().await;
    h.apply(&start).await;
    let reserve = command(&h);
    h.apply(&h.reply(&reserve, Reply::ok())).await;
    let charge = command(&h);
    h.apply(&h.reply(&charge, Reply::ok())).await;
    // The shipment times out three times: the pivot's outcome is unknown, so it is compensated first;
    // cancelling it times out 20 times and the saga is parked.
    let phase = || async { h.record(id).await.state.phase };
    let mut shipment_attempts = 0;
    while matches!(phase().await, Phase::Running { .. } | Phase::Backoff { .. }) {
        shipment_attempts += u32::from(matches!(phase().await, Phase::Running { .. }));
        fire_deadline(&h, id).await;
    }
    assert_eq!(shipment_attempts, 3);
    while phase().await != Phase::Failed {
        fire_deadline(&h, id).await;
    }
    let text = h.metrics_text();
    assert_eq!(step_seconds(&text, "create_shipment", "timeout").0, 3.0, "{text}");
    assert_eq!(step_seconds(&text, "create_shipment.compensation", "timeout").0, 20.0);
    assert_eq!(value(&text, "saga_step_timeouts_total", &[("step", "create_shipment.compensation")]), Some(20.0));
    assert_eq!(value(&text, "saga_step_retries_total", &[("step", "create_shipment.compensation")]), Some(19.0));
    assert_eq!(value(&text, "saga_step_retries_total", &[("step", "create_shipment")]), Some(2.0));
    assert_eq!(value(&text, "saga_failed_total", &[]), Some(1.0));
    assert_eq!(histogram(&text, "saga_order_duration_seconds", &[("status", "FAILED")]).0, 1.0);

    // An operator retries the cancellation: attempt 21 is a retry; when it times out, it is observed too.
    let _ = h.bus.take();
    advance(&h, 60_000);
    operate(&h, id, OperatorVerb::Retry, None).await;
    assert_eq!(command(&h).meta.attempt, 21);
    fire_deadline(&h, id).await;
    let text = h.metrics_text();
    assert_eq!(value(&text, "saga_step_retries_total", &[("step", "create_shipment.compensation")]), Some(20.0));
    assert_eq!(step_seconds(&text, "create_shipment.compensation", "timeout").0, 21.0);
    assert_eq!(value(&text, "saga_transitions_total", &[("state", "FAILED")]), Some(1.0));
}

#[tokio::test]
async fn forcing_compensation_ends_the_running_attempt_unobserved() {
    let h = Harness::new();
    let (id, start) = h.place_and_take_start().await;
    h.apply(&start).await;
    let _reserve = command(&h);
    advance(&h, 2_000);
    operate(&h, id, OperatorVerb::Compensate, None).await;
    let release = command(&h);
    assert_eq!(command_kind(&release), proto_events::CommandKind::InventoryRelease);
    h.apply(&h.reply(&release, Reply::ok())).await;
    let text = h.metrics_text();
    let observed: Vec<Sample> =
        samples(&text).into_iter().filter(|(n, _, _)| n == "saga_step_duration_seconds_count").collect();
    assert_eq!(observed.len(), 1, "only the release: {observed:?}");
    assert_eq!(step_seconds(&text, "reserve_stock.compensation", "succeeded").0, 1.0);
    assert_eq!(value(&text, "saga_compensated_total", &[]), Some(1.0));
    assert_eq!(histogram(&text, "saga_order_duration_seconds", &[("status", "CANCELLED")]), (1.0, 2.0));

    // Resolving is only for parked sagas: fenced, and nothing else changes.
    operate(&h, id, OperatorVerb::Resolve, Some(ResolvedAs::Completed)).await;
    let after = h.metrics_text();
    assert_eq!(value(&after, "saga_resolved_total", &[]), Some(0.0));
    assert_eq!(value(&after, "saga_fenced_messages_total", &[("fence", "not_allowed")]), Some(1.0));
}

// ---------------------------------------------------------------------------------------------------------
// The whole orchestrator against Kafka and the database

const WAIT: Duration = Duration::from_secs(90);

/// A plain GET of `path` on the orchestrator; the body.
async fn get(client: &reqwest::Client, port: u16, path: &str, token: Option<&str>) -> (u16, String) {
    let mut request = client.get(format!("http://127.0.0.1:{port}{path}"));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.expect("the orchestrator answers");
    let status = response.status().as_u16();
    (status, response.text().await.expect("a body"))
}

/// Plays inventory, payment and shipping: answers every command with success, except the first attempt
/// at reserving stock, which is left to time out (so the saga retries it).
async fn play_participants(kafka: KafkaSettings, shutdown: CancellationToken) {
    let consumer: StreamConsumer = kafka
        .consumer_config(&format!("{}participants", kafka.topic_prefix))
        .create()
        .expect("a participants' consumer");
    let topics = [topics::CMD_INVENTORY, topics::CMD_PAYMENT, topics::CMD_SHIPPING].map(|t| kafka.topic(t));
    consumer.subscribe(&topics.each_ref().map(String::as_str)).expect("subscribe to the command topics");
    let publisher = Publisher::new(&kafka).expect("a producer");
    loop {
        let received = tokio::select! {
            () = shutdown.cancelled() => return,
            received = consumer.recv() => received,
        };
        let Ok(received) = received else { continue };
        let Some(Ok(message)) = received.payload().map(Message::decode) else { continue };
        let Body::Command(command) = &message.body else { continue };
        let kind = command.kind();
        if kind == proto_events::CommandKind::InventoryReserve && message.meta.attempt == 1 {
            continue;
        }
        let meta = Meta::caused_by(&message.meta, message.meta.step, message.meta.attempt, chrono::Utc::now());
        let reply = Message::new(meta, Body::Reply { command: kind, reply: Reply::ok() }).expect("a valid reply");
        publisher.publish(topics::REPLY, &reply).await.expect("the reply is published");
    }
}

/// The consumer lag of each partition of `topic` that has a series.
fn reply_lags(text: &str, topic: &str) -> Vec<f64> {
    samples(text)
        .into_iter()
        .filter(|(n, l, _)| n == "kafka_consumer_lag" && l["topic"] == topic)
        .map(|s| s.2)
        .collect()
}

fn it_settings(suffix: &str) -> Settings {
    let mut settings = Settings::from_env().expect("valid settings");
    settings.http_addr = "127.0.0.1:0".to_owned();
    settings.kafka.topic_prefix = format!("it-metrics-{suffix}.");
    settings.kafka.partitions = 2;
    // Statistics (and so the consumer lag) twice a second instead of every 5 s.
    settings.kafka.extra.push(("statistics.interval.ms".to_owned(), "500".to_owned()));
    settings.mongo.database = format!("orch_metrics_{suffix}");
    settings.group_id = format!("it-metrics-{suffix}");
    settings.step_timeout = Duration::from_millis(1_500);
    settings.gauge_interval = Duration::from_secs(1);
    settings
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_contract_metric_is_served_once_an_order_ran() {
    let suffix = Uuid::now_v7().simple().to_string();
    let settings = it_settings(&suffix[suffix.len() - 12..]);
    let (kafka, mongo) = (settings.kafka.clone(), settings.mongo.clone());
    let KeySettings::Hs256 { secret } = &settings.jwt_keys else { panic!("the tests sign tokens with HS256") };
    let token =
        mint_hs256(secret, &claims("cust-42", &[Role::Customer], &settings.jwt_issuer, &settings.jwt_audience, 300));
    let app = Application::build(settings).await.expect("the orchestrator starts (check `ops/infra.sh status`)");
    let port = app.port();
    let shutdown = CancellationToken::new();
    let running = tokio::spawn(app.run_until_stopped(shutdown.clone()));
    let participants = tokio::spawn(play_participants(kafka.clone(), shutdown.clone()));

    let client = reqwest::Client::new();
    let placed = client
        .post(format!("http://127.0.0.1:{port}/v1/orders"))
        .bearer_auth(&token)
        .json(&order_json())
        .send()
        .await
        .expect("the order API answers");
    assert_eq!(placed.status().as_u16(), 202);
    let order_id =
        placed.json::<serde_json::Value>().await.expect("JSON")["order_id"].as_str().expect("an order id").to_owned();

    // The order completes (after the first reservation timed out), then every gauge catches up: the saga
    // is counted as COMPLETED and the consumer has committed everything in both partitions of the reply topic.
    let reply_topic = kafka.topic(topics::REPLY);
    let deadline = tokio::time::Instant::now() + WAIT;
    let text = loop {
        let (_, order) = get(&client, port, &format!("/v1/orders/{order_id}"), Some(&token)).await;
        let (_, text) = get(&client, port, "/metrics", None).await;
        let done = order.contains("\"COMPLETED\"")
            && value(&text, "saga_in_state", &[("state", "COMPLETED")]) == Some(1.0)
            && value(&text, "saga_in_state", &[("state", "RUNNING")]) == Some(0.0)
            && reply_lags(&text, &reply_topic).len() == 2
            && reply_lags(&text, &reply_topic).iter().all(|lag| *lag == 0.0)
            && text.contains(r#"route="/v1/orders/{order_id}""#);
        if done {
            break text;
        }
        assert!(tokio::time::Instant::now() < deadline, "timed out; the order: {order}; the metrics: {text}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    };

    for name in orchestrator::metrics::EXPORTED.iter().chain(platform::metrics::EXPORTED) {
        assert!(platform::metrics::exposes(&text, name), "{name} is not served: {text}");
    }
    let counter = |name: &str, labels: &[(&str, &str)]| value(&text, name, labels);
    assert_eq!(counter("saga_started_total", &[]), Some(1.0));
    assert_eq!(counter("saga_completed_total", &[]), Some(1.0));
    assert_eq!(counter("saga_step_timeouts_total", &[("step", "reserve_stock")]), Some(1.0));
    assert_eq!(counter("saga_step_retries_total", &[("step", "reserve_stock")]), Some(1.0));
    assert_eq!(step_seconds(&text, "reserve_stock", "timeout").0, 1.0);
    for step in ["reserve_stock", "charge_payment", "create_shipment"] {
        assert_eq!(step_seconds(&text, step, "succeeded").0, 1.0, "{step}");
    }
    assert_eq!(histogram(&text, "saga_order_duration_seconds", &[("status", "COMPLETED")]).0, 1.0);
    assert_eq!(counter("saga_outbox_backlog", &[]), Some(0.0));
    assert_eq!(counter("saga_oldest_age_seconds", &[("state", "RUNNING")]), Some(0.0));
    assert!(counter("kafka_produce_errors_total", &[("topic", &kafka.topic(topics::EVENT))]) == Some(0.0));
    let post = [("route", "/v1/orders"), ("method", "POST"), ("status", "202")];
    assert_eq!(histogram(&text, "http_request_duration_seconds", &post).0, 1.0, "{text}");
    assert!(
        histogram(
            &text,
            "http_request_duration_seconds",
            &[("route", "/metrics"), ("method", "GET"), ("status", "200")]
        )
        .0 >= 1.0
    );
    assert!(!text.contains(&order_id) && !text.contains("cust-42"), "no id in a label: {text}");

    shutdown.cancel();
    running.await.expect("the orchestrator task").expect("a clean shutdown");
    participants.await.expect("the participants' task");
    let client = mongo.client("orchestrator-tests").await.expect("a database client");
    client.database(&mongo.database).drop().await.expect("drop the test database");
}
