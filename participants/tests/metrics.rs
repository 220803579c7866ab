//! The payment service in-process against the real Kafka broker and database serves, at `GET /metrics`,
//! what every service exports ([`platform::metrics::EXPORTED`]) besides its own `participant_*` metrics,
//! once it handled a command and a few HTTP requests: the consumer lag of its command topic, produce errors
//! by topic, and HTTP durations by route template (never the raw path). Topics live under a prefix of this
//! test's own, the database is unique and dropped at the end.

mod common;

use std::time::Duration;

use chrono::Utc;
use participants::app::{Application, Settings};
use participants::payment::{MongoPayments, PaymentSettings};
use participants::runtime::RuntimeSettings;
use platform::kafka::Publisher;
use platform::metrics::{EXPORTED, exposes};
use proto_events::commands::{ChargePayment, Currency};
use proto_events::{Body, Command, Message, Meta, topics};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

const TIMEOUT: Duration = Duration::from_secs(60);

/// The participants' own metric names, as exposed.
const PARTICIPANT: [&str; 4] = [
    "participant_commands_total",
    "participant_dead_letters_total",
    "participant_processing_seconds",
    "participant_transient_errors_total",
];

fn charge(saga_id: Uuid) -> Message {
    let meta = Meta {
        message_id: Uuid::now_v7(),
        saga_id,
        step: 1,
        attempt: 1,
        correlation_id: Uuid::now_v7(),
        causation_id: None,
        time: Utc::now(),
    };
    let charge = Command::PaymentCharge(ChargePayment {
        amount_cents: 4_200,
        currency: Currency::EUR,
        payment_token: "tok_visa".to_owned(),
        customer_ref: "0123456789abcdef0123456789abcdef".to_owned(),
    });
    Message::new(meta, Body::Command(charge)).expect("a valid command")
}

/// A plain HTTP/1.1 GET; returns the status code and the body.
async fn get(port: u16, path: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).await.expect("connect");
    let request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.expect("send the request");
    let mut response = String::new();
    stream.read_to_string(&mut response).await.expect("read the response");
    let (head, body) = response.split_once("\r\n\r\n").expect("a head and a body");
    let status = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).expect("a status code");
    (status, body.to_owned())
}

/// The lags exported for the partitions of `topic`.
fn lags(text: &str, topic: &str) -> Vec<String> {
    let prefix = format!("kafka_consumer_lag{{topic=\"{topic}\",");
    text.lines()
        .filter(|l| l.starts_with(&prefix))
        .map(|l| l.rsplit(' ').next().unwrap_or_default().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_common_metrics_are_served_with_the_participants_own() {
    let mut kafka = common::kafka_settings("pay_metrics");
    // Statistics (and so the consumer lag) twice a second instead of every 5 s.
    kafka.extra.push(("statistics.interval.ms".to_owned(), "500".to_owned()));
    let settings = Settings {
        kafka: kafka.clone(),
        mongo: common::mongo_settings("pay_metrics"),
        http_addr: "127.0.0.1:0".to_owned(),
        group_id: common::unique("pay_metrics"),
        runtime: RuntimeSettings::default(),
        domain: PaymentSettings::default(),
    };
    let mongo = settings.mongo.clone();
    let app = Application::<MongoPayments>::build(settings).await.expect("build the payment service");
    let port = app.port();
    let shutdown = CancellationToken::new();
    let running = tokio::spawn(app.run_until_stopped(shutdown.clone()));

    let saga_id = Uuid::now_v7();
    let publisher = Publisher::new(&kafka).expect("publisher");
    publisher.publish(topics::CMD_PAYMENT, &charge(saga_id)).await.expect("publish the command");
    let command_topic = kafka.topic(topics::CMD_PAYMENT);
    common::eventually("the charge to be handled and its offset committed", TIMEOUT, || async {
        let (status, _) = get(port, &format!("/v1/payments/{saga_id}")).await;
        let (_, text) = get(port, "/metrics").await;
        let lags = lags(&text, &command_topic);
        let caught_up = lags.len() == 2 && lags.iter().all(|lag| lag == "0");
        (status == 200 && caught_up).then_some(())
    })
    .await;
    assert_eq!(get(port, "/nothing/here").await.0, 404);
    let (_, text) = get(port, "/metrics").await;

    for name in EXPORTED.iter().chain(&PARTICIPANT) {
        assert!(exposes(&text, name), "{name} is not served: {text}");
    }
    let reply_topic = kafka.topic(topics::REPLY);
    assert!(text.contains(&format!("kafka_produce_errors_total{{topic=\"{reply_topic}\"}} 0")), "{text}");
    for series in [
        r#"http_request_duration_seconds_count{route="/v1/payments/{saga_id}",method="GET",status="200"}"#,
        r#"http_request_duration_seconds_count{route="/metrics",method="GET",status="200"}"#,
        r#"http_request_duration_seconds_count{route="unmatched",method="GET",status="404"} 1"#,
        r#"participant_commands_total{command="payment.charge",outcome="succeeded"} 1"#,
    ] {
        assert!(text.contains(series), "{series} missing: {text}");
    }
    assert!(!text.contains(&saga_id.to_string()) && !text.contains("/nothing/here"), "no id or raw path: {text}");

    shutdown.cancel();
    let stopped = tokio::time::timeout(TIMEOUT, running).await.expect("stops within the deadline");
    stopped.expect("the task did not panic").expect("a clean stop");
    let client = mongo.client("participants-it").await.expect("client");
    client.database(&mongo.database).drop().await.expect("drop the test database");
}
