//! The payment service in-process against the real Kafka broker and database: a command delivered twice
//! gets two replies with the same outcome and has one effect; garbage lands on the dead-letter topic with
//! the error in a header; the HTTP endpoints answer; shutdown is graceful. Topics live under a prefix of
//! this test's own, the database is unique and dropped at the end.

mod common;

use std::time::Duration;

use chrono::Utc;
use mongodb::bson::{Document, doc};
use participants::app::{Application, Settings};
use participants::inventory::MongoInventory;
use participants::payment::{MongoPayments, PaymentSettings};
use participants::runtime::RuntimeSettings;
use platform::kafka::{KafkaSettings, Publisher};
use proto_events::commands::{ChargePayment, Currency, ReleaseStock, ReserveStock};
use proto_events::envelope::headers;
use proto_events::{Body, Command, CommandKind, Line, Message, Meta, Reply, topics};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Headers, Message as _, OwnedHeaders, OwnedMessage};
use rdkafka::{Offset, TopicPartitionList};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

const TIMEOUT: Duration = Duration::from_secs(60);

fn command(saga_id: Uuid, correlation_id: Uuid, step: u16, attempt: u32, command: Command) -> Message {
    let meta = Meta {
        message_id: Uuid::now_v7(),
        saga_id,
        step,
        attempt,
        correlation_id,
        causation_id: None,
        time: Utc::now(),
    };
    Message::new(meta, Body::Command(command)).expect("a valid command")
}

fn charge(saga_id: Uuid, correlation_id: Uuid, attempt: u32) -> Message {
    let charge = Command::PaymentCharge(ChargePayment {
        amount_cents: 12_345,
        currency: Currency::EUR,
        payment_token: "tok_visa".to_owned(),
        customer_ref: "0123456789abcdef0123456789abcdef".to_owned(),
    });
    command(saga_id, correlation_id, 1, attempt, charge)
}

fn settings<S>(test: &str, domain: S) -> Settings<S> {
    Settings {
        kafka: common::kafka_settings(test),
        mongo: common::mongo_settings(test),
        http_addr: "127.0.0.1:0".to_owned(),
        group_id: common::unique(test),
        runtime: RuntimeSettings::default(),
        domain,
    }
}

/// Reads replies for `saga_id` until `want` arrived; decoded, in arrival order.
async fn replies(kafka: &KafkaSettings, saga_id: Uuid, want: usize) -> Vec<Message> {
    let consumer = subscriber(kafka, topics::REPLY);
    let received = read(&consumer, want, |m| m.key() == Some(saga_id.to_string().as_bytes())).await;
    received.iter().map(|m| Message::decode(m.payload().expect("payload")).expect("a valid reply")).collect()
}

fn subscriber(kafka: &KafkaSettings, topic: &str) -> StreamConsumer {
    let consumer: StreamConsumer =
        kafka.consumer_config(&common::unique("it-reader")).create().expect("create a test consumer");
    consumer.subscribe(&[kafka.topic(topic).as_str()]).expect("subscribe");
    consumer
}

/// Reads `consumer` until `want` messages satisfy `keep`, or the deadline passes.
async fn read(consumer: &StreamConsumer, want: usize, keep: impl Fn(&OwnedMessage) -> bool) -> Vec<OwnedMessage> {
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    let mut kept = Vec::new();
    while kept.len() < want {
        assert!(tokio::time::Instant::now() < deadline, "timed out with {} of {want} messages", kept.len());
        let Ok(received) = tokio::time::timeout(Duration::from_millis(200), consumer.recv()).await else { continue };
        let message = received.expect("receive").detach();
        if keep(&message) {
            kept.push(message);
        }
    }
    kept
}

/// A plain HTTP/1.1 GET; returns the status line and the body.
async fn get(port: u16, path: &str) -> (String, String) {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).await.expect("connect");
    let request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.expect("send the request");
    let mut response = String::new();
    stream.read_to_string(&mut response).await.expect("read the response");
    let (head, body) = response.split_once("\r\n\r\n").expect("a head and a body");
    (head.lines().next().unwrap_or_default().to_owned(), body.to_owned())
}

fn header<'a>(message: &'a OwnedMessage, name: &str) -> Option<&'a str> {
    let headers = message.headers()?;
    headers.iter().find(|h| h.key == name).and_then(|h| h.value).and_then(|v| std::str::from_utf8(v).ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redelivered_command_is_answered_twice_with_one_effect_and_garbage_is_dead_lettered() {
    let settings = settings("pay_rt", PaymentSettings::default());
    let (kafka, mongo) = (settings.kafka.clone(), settings.mongo.clone());
    let app = Application::<MongoPayments>::build(settings).await.expect("build the payment service");
    let port = app.port();
    let shutdown = CancellationToken::new();
    let running = tokio::spawn(app.run_until_stopped(shutdown.clone()));

    // The same command twice, as a redelivery or an orchestrator retry would send it.
    let publisher = Publisher::new(&kafka).expect("publisher");
    let (saga_id, correlation_id) = (Uuid::now_v7(), Uuid::now_v7());
    let (first, second) = (charge(saga_id, correlation_id, 1), charge(saga_id, correlation_id, 2));
    publisher.publish(topics::CMD_PAYMENT, &first).await.expect("publish the command");
    publisher.publish(topics::CMD_PAYMENT, &second).await.expect("publish it again");

    let replies = subscriber(&kafka, topics::REPLY);
    let received = read(&replies, 2, |m| m.key() == Some(saga_id.to_string().as_bytes())).await;
    assert_eq!(header(&received[0], headers::MESSAGE_TYPE), Some("payment.charge.reply"));
    let mut decoded: Vec<Message> =
        received.iter().map(|m| Message::decode(m.payload().expect("payload")).expect("a valid reply")).collect();
    decoded.sort_by_key(|m| m.meta.attempt);
    let expected = Body::Reply {
        command: CommandKind::PaymentCharge,
        reply: Reply::Succeeded { reference: Some(format!("pay_{}", saga_id.simple())) },
    };
    for (reply, command) in decoded.iter().zip([&first, &second]) {
        assert_eq!(reply.body, expected, "the same outcome both times");
        assert_eq!((reply.meta.saga_id, reply.meta.step), (saga_id, 1));
        assert_eq!(reply.meta.attempt, command.meta.attempt, "fenced by the command's attempt");
        assert_eq!(reply.meta.causation_id, Some(command.meta.message_id));
    }

    // One effect in the database.
    let client = mongo.client("participants-it").await.expect("client");
    let payments = client.database(&mongo.database).collection::<Document>("payments");
    assert_eq!(payments.count_documents(doc! {}).await.expect("count"), 1, "one payment for two deliveries");
    let stored = payments.find_one(doc! { "_id": saga_id.to_string() }).await.expect("read").expect("stored");
    assert_eq!((stored.get_str("status").ok(), stored.get_i64("amount_cents").ok()), (Some("captured"), Some(12_345)));

    // Garbage goes to the dead-letter twin, with the reason.
    let command_topic = kafka.topic(topics::CMD_PAYMENT);
    let garbage = b"{ this is not an envelope";
    publisher.send(&command_topic, Some(b"garbage-key"), garbage, OwnedHeaders::new()).await.expect("send garbage");
    let dead = subscriber(&kafka, &topics::dlq(topics::CMD_PAYMENT));
    let letters = read(&dead, 1, |m| m.key() == Some(b"garbage-key".as_slice())).await;
    let letter = &letters[0];
    assert_eq!(letter.payload(), Some(garbage.as_slice()), "the message is kept as it was");
    let error = header(letter, headers::DLQ_ERROR).expect("an error header");
    assert!(error.contains("not a message envelope"), "{error}");
    assert_eq!(header(letter, headers::DLQ_TOPIC), Some(command_topic.as_str()));
    assert_eq!(header(letter, headers::DLQ_SERVICE), Some("payment"));

    // HTTP: readiness, the payment API and the metrics (the dead letter is counted once its offset is stored).
    let (status, _) = get(port, "/ready").await;
    assert!(status.contains("200"), "{status}");
    let (status, body) = get(port, &format!("/v1/payments/{saga_id}")).await;
    assert!(status.contains("200") && body.contains("\"captured\""), "{status} {body}");
    let metrics = common::eventually("the dead letter to be counted", TIMEOUT, || async {
        let (_, body) = get(port, "/metrics").await;
        body.contains(r#"participant_dead_letters_total{reason="undecodable"} 1"#).then_some(body)
    })
    .await;
    assert!(
        metrics.contains(r#"participant_commands_total{command="payment.charge",outcome="succeeded"} 1"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"participant_commands_total{command="payment.charge",outcome="duplicate"} 1"#),
        "{metrics}"
    );
    assert!(metrics.contains("participant_processing_seconds_count"), "{metrics}");

    // Graceful shutdown: the service stops by itself once told to.
    shutdown.cancel();
    let stopped = tokio::time::timeout(TIMEOUT, running).await.expect("stops within the deadline");
    stopped.expect("the task did not panic").expect("a clean stop");
    client.database(&mongo.database).drop().await.expect("drop the test database");
}

/// The committed offset of each partition of `topic` for consumer group `group` (0 where none), and the
/// partition's end (its high watermark).
fn committed_and_end(kafka: &KafkaSettings, group: &str, topic: &str) -> Vec<(i64, i64)> {
    let consumer: StreamConsumer = kafka.consumer_config(group).create().expect("a consumer of the group");
    let mut list = TopicPartitionList::new();
    for partition in 0..kafka.partitions {
        list.add_partition(topic, partition);
    }
    let committed = consumer.committed_offsets(list, Duration::from_secs(10)).expect("committed offsets");
    committed
        .elements()
        .iter()
        .map(|e| {
            let offset = if let Offset::Offset(o) = e.offset() { o } else { 0 };
            let end = consumer.fetch_watermarks(topic, e.partition(), Duration::from_secs(10)).expect("watermarks").1;
            (offset, end)
        })
        .collect()
}

/// The runtime applies the next command while the replies before it wait for the broker: a burst of commands
/// (a dead letter among them, which must wait for the replies before it) is answered in full, and a graceful
/// stop commits every offset, so a restarted service would redeliver nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_commands_is_answered_with_replies_in_flight_and_every_offset_committed_in_order() {
    let settings = settings("pay_burst", PaymentSettings::default());
    let (kafka, mongo, group) = (settings.kafka.clone(), settings.mongo.clone(), settings.group_id.clone());
    let app = Application::<MongoPayments>::build(settings).await.expect("build the payment service");
    let shutdown = CancellationToken::new();
    let running = tokio::spawn(app.run_until_stopped(shutdown.clone()));

    let publisher = Publisher::new(&kafka).expect("publisher");
    let command_topic = kafka.topic(topics::CMD_PAYMENT);
    let sagas: Vec<Uuid> = (0..60).map(|_| Uuid::now_v7()).collect();
    for (n, saga_id) in sagas.iter().enumerate() {
        if n == 30 {
            let garbage = b"{ not an envelope";
            publisher.send(&command_topic, Some(b"burst-garbage"), garbage, OwnedHeaders::new()).await.expect("send");
        }
        publisher.publish(topics::CMD_PAYMENT, &charge(*saga_id, Uuid::now_v7(), 1)).await.expect("publish");
    }
    let keys: std::collections::BTreeSet<Vec<u8>> = sagas.iter().map(|id| id.to_string().into_bytes()).collect();
    let replies = subscriber(&kafka, topics::REPLY);
    let received = read(&replies, sagas.len(), |m| m.key().is_some_and(|k| keys.contains(k))).await;
    let answered: std::collections::BTreeSet<&[u8]> = received.iter().filter_map(|m| m.key()).collect();
    assert_eq!(answered.len(), sagas.len(), "one reply per command");
    let dead = subscriber(&kafka, &topics::dlq(topics::CMD_PAYMENT));
    read(&dead, 1, |m| m.key() == Some(b"burst-garbage".as_slice())).await;

    shutdown.cancel();
    let stopped = tokio::time::timeout(TIMEOUT, running).await.expect("stops within the deadline");
    stopped.expect("the task did not panic").expect("a clean stop");
    let offsets = committed_and_end(&kafka, &group, &command_topic);
    assert_eq!(offsets.iter().map(|(_, end)| end).sum::<i64>(), 61, "60 commands and the garbage");
    for (committed, end) in &offsets {
        assert_eq!(committed, end, "every message's offset committed: {offsets:?}");
    }
    let client = mongo.client("participants-it").await.expect("client");
    client.database(&mongo.database).drop().await.expect("drop the test database");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_inventory_reserves_once_for_a_redelivered_reserve_and_releases_exactly() {
    let settings = settings("inv_rt", ());
    let (kafka, mongo) = (settings.kafka.clone(), settings.mongo.clone());
    let app = Application::<MongoInventory>::build(settings).await.expect("build the inventory service");
    let inventory = std::sync::Arc::clone(app.service());
    inventory.set_available("SKU-1", 10).await.expect("stock");
    let shutdown = CancellationToken::new();
    let running = tokio::spawn(app.run_until_stopped(shutdown.clone()));

    let publisher = Publisher::new(&kafka).expect("publisher");
    let (saga_id, correlation_id) = (Uuid::now_v7(), Uuid::now_v7());
    let reserve = || Command::InventoryReserve(ReserveStock { items: vec![Line { sku: "SKU-1".into(), quantity: 4 }] });
    for attempt in 1..=2 {
        let message = command(saga_id, correlation_id, 0, attempt, reserve());
        publisher.publish(topics::CMD_INVENTORY, &message).await.expect("publish the reserve");
    }
    let release = command(saga_id, correlation_id, 0, 1, Command::InventoryRelease(ReleaseStock {}));
    let received = replies(&kafka, saga_id, 2).await;
    let ok = Body::Reply { command: CommandKind::InventoryReserve, reply: Reply::ok() };
    assert!(received.iter().all(|r| r.body == ok), "{received:?}");
    assert_eq!(inventory.available("SKU-1").await.expect("read"), Some(6), "reserved once");

    publisher.publish(topics::CMD_INVENTORY, &release).await.expect("publish the release");
    let received = replies(&kafka, saga_id, 3).await;
    let released = Body::Reply { command: CommandKind::InventoryRelease, reply: Reply::ok() };
    assert_eq!(received.last().map(|r| &r.body), Some(&released), "{received:?}");
    assert_eq!(inventory.available("SKU-1").await.expect("read"), Some(10), "released exactly");

    shutdown.cancel();
    let stopped = tokio::time::timeout(TIMEOUT, running).await.expect("stops within the deadline");
    stopped.expect("the task did not panic").expect("a clean stop");
    let client = mongo.client("participants-it").await.expect("client");
    client.database(&mongo.database).drop().await.expect("drop the test database");
}
