//! Dead-letter operations against the real Kafka broker and database (`KAFKA_BOOTSTRAP_SERVERS`,
//! `MONGODB_URI`; `ops/infra.sh status` says whether they run): messages dead-lettered by
//! `Publisher::dead_letter` are listed without their payload, replayed to their original topic once, and
//! never again. Every test has a topic prefix and a database of its own, and drops the database at the end.
//! The HTTP tests check the routes' validation and authorization through the router.

mod common;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body as HttpBody;
use axum::http::{Request, StatusCode, header};
use chrono::{DateTime, Utc};
use mongodb::Database;
use mongodb::bson::doc;
use orchestrator::auth::Role;
use orchestrator::clock::ManualClock;
use orchestrator::dlq::{DeadLetter, DeadLetters, Error, REPLAY_OF, ReplayReport, Selection, Which};
use platform::kafka::{Delivered, KafkaSettings, Publisher, ensure_topics};
use platform::mongo::MongoSettings;
use proto_events::commands::{Address, ChargePayment, CreateShipment, Currency, Line};
use proto_events::envelope::headers;
use proto_events::{Body, Command, Message, Meta, topics};
use rdkafka::consumer::{BaseConsumer, Consumer, StreamConsumer};
use rdkafka::message::{Header, Headers, Message as _, OwnedHeaders, OwnedMessage};
use rdkafka::{Offset, Timestamp, TopicPartitionList};
use serde_json::{Value, json};
use uuid::Uuid;

use common::{Answer, Harness, token};

const WAIT: Duration = Duration::from_secs(30);
const PAYMENT_DLQ: &str = "saga.cmd.payment.dlq";
const SHIPPING_DLQ: &str = "saga.cmd.shipping.dlq";

// ---------------------------------------------------------------------------------------------------------
// Helpers

/// Kafka under a prefix of its own with every topic created, a database of its own, and dead-letter
/// operations over both whose clock shows [`t0`].
struct Fixture {
    kafka: KafkaSettings,
    db: Database,
    publisher: Publisher,
    dead_letters: DeadLetters,
}

/// 2026-01-01T00:00:00Z.
fn t0() -> DateTime<Utc> {
    DateTime::from_timestamp(1_767_225_600, 0).expect("a valid instant")
}

async fn fixture(test: &str) -> Fixture {
    let suffix = Uuid::now_v7().simple().to_string();
    let suffix = &suffix[suffix.len() - 12..];
    let mut kafka = KafkaSettings::from_env().expect("valid Kafka settings");
    kafka.topic_prefix = format!("it-dlq-{test}-{suffix}.");
    kafka.partitions = 3;
    ensure_topics(&kafka, &topics::all()).await.expect("Kafka answers (check `ops/infra.sh status`)");
    let mut mongo = MongoSettings::from_env("MONGODB_DATABASE", "unused");
    mongo.database = format!("orch_dlq_{test}_{suffix}");
    let client = mongo.client("orchestrator-tests").await.expect("a database client");
    platform::mongo::ping(&client).await.expect("the database answers (check `ops/infra.sh status`)");
    let db = client.database(&mongo.database);
    let publisher = Publisher::new(&kafka).expect("a producer");
    let dead_letters =
        DeadLetters::new(&kafka, publisher.clone(), &db, Arc::new(ManualClock::new(t0()))).with_read_timeout(WAIT);
    Fixture { kafka, db, publisher, dead_letters }
}

fn meta(saga_id: Uuid, step: u16, attempt: u32) -> Meta {
    Meta {
        message_id: Uuid::now_v7(),
        saga_id,
        step,
        attempt,
        correlation_id: Uuid::now_v7(),
        causation_id: None,
        time: t0(),
    }
}

/// A `payment.charge` with a payment token that must never show in a listing.
fn charge(saga_id: Uuid, token: &str) -> Message {
    let body = Body::Command(Command::PaymentCharge(ChargePayment {
        amount_cents: 2500,
        currency: Currency::EUR,
        payment_token: token.to_owned(),
        customer_ref: "0123456789abcdef0123456789abcdef".to_owned(),
    }));
    Message::new(meta(saga_id, 1, 2), body).expect("a valid charge")
}

/// A `shipping.create` with an address that must never show in a listing.
fn shipment(saga_id: Uuid, street: &str) -> Message {
    let body = Body::Command(Command::ShippingCreate(CreateShipment {
        items: vec![Line { sku: "SKU-1".into(), quantity: 2 }],
        address: Address {
            name: "Ada Lovelace".into(),
            line1: street.into(),
            line2: None,
            city: "Berlin".into(),
            postal_code: "10115".into(),
            country: "DE".into(),
        },
    }));
    Message::new(meta(saga_id, 2, 1), body).expect("a valid shipment")
}

/// A message as a service read it from `topic` (without prefix) at `partition` and `offset`.
fn read_from(
    kafka: &KafkaSettings,
    topic: &str,
    (partition, offset): (i32, i64),
    key: &str,
    payload: Vec<u8>,
    headers: Option<OwnedHeaders>,
) -> OwnedMessage {
    let topic = kafka.topic(topic);
    OwnedMessage::new(Some(payload), Some(key.into()), topic, Timestamp::now(), partition, offset, headers)
}

/// `message` as read from `topic` (without prefix), with the headers `Publisher::publish` gives it.
fn envelope_read_from(kafka: &KafkaSettings, topic: &str, at: (i32, i64), message: &Message) -> OwnedMessage {
    let message_id = message.meta.message_id.to_string();
    let headers = OwnedHeaders::new()
        .insert(Header { key: headers::MESSAGE_TYPE, value: Some(message.body.message_type()) })
        .insert(Header { key: headers::MESSAGE_ID, value: Some(&message_id) });
    read_from(kafka, topic, at, &message.meta.saga_id.to_string(), message.encode(), Some(headers))
}

/// The message at `at` of `topic` (full name).
async fn message_at(kafka: &KafkaSettings, topic: &str, at: (i32, i64)) -> OwnedMessage {
    let consumer: StreamConsumer =
        kafka.consumer_config(&format!("it-dlq-reader-{}", Uuid::now_v7())).create().expect("a consumer");
    let mut assignment = TopicPartitionList::new();
    assignment.add_partition_offset(topic, at.0, Offset::Offset(at.1)).expect("a valid assignment");
    consumer.assign(&assignment).expect("assign");
    let message = tokio::time::timeout(WAIT, consumer.recv()).await.expect("a message in time").expect("no error");
    assert_eq!((message.partition(), message.offset()), at);
    message.detach()
}

/// How many messages all partitions of `topic` (full name) have ever received.
async fn high_watermarks(kafka: &KafkaSettings, topic: &str) -> i64 {
    let (kafka, topic) = (kafka.clone(), topic.to_owned());
    tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = kafka.client_config().create().expect("a consumer");
        (0..kafka.partitions).map(|p| consumer.fetch_watermarks(&topic, p, WAIT).expect("watermarks").1).sum()
    })
    .await
    .expect("the watermark task does not panic")
}

fn header_value(message: &OwnedMessage, name: &str) -> Option<String> {
    let headers = message.headers()?;
    headers.iter().find(|h| h.key == name).and_then(|h| h.value).map(|v| String::from_utf8_lossy(v).into_owned())
}

fn header_keys(message: &OwnedMessage) -> Vec<String> {
    message.headers().map(|h| h.iter().map(|h| h.key.to_owned()).collect()).unwrap_or_default()
}

fn at(delivered: &Delivered) -> (i32, i64) {
    (delivered.partition, delivered.offset)
}

/// A dead letter's (partition, offset).
type At = (i32, i64);

/// The dead letters replayed, skipped and failed.
fn coordinates(report: &ReplayReport) -> (Vec<At>, Vec<At>, Vec<At>) {
    (
        report.replayed.iter().map(|r| (r.partition, r.offset)).collect(),
        report.skipped.iter().map(|r| (r.partition, r.offset)).collect(),
        report.failed.iter().map(|r| (r.partition, r.offset)).collect(),
    )
}

fn find(messages: &[DeadLetter], delivered: &Delivered) -> DeadLetter {
    messages
        .iter()
        .find(|m| (m.partition, m.offset) == at(delivered))
        .cloned()
        .unwrap_or_else(|| panic!("no dead letter at {delivered:?} in {messages:?}"))
}

fn sorted(mut list: Vec<(i32, i64)>) -> Vec<(i32, i64)> {
    list.sort_unstable();
    list
}

// ---------------------------------------------------------------------------------------------------------
// The library

#[tokio::test]
async fn dead_letters_are_listed_without_payload_and_replayed_exactly_once() {
    let f = fixture("once").await;
    let payment_dlq = f.kafka.topic(PAYMENT_DLQ);
    let payment = f.kafka.topic(topics::CMD_PAYMENT);

    // Garbage, two valid charges (one token each), and a message that names no original topic.
    let garbage = read_from(&f.kafka, topics::CMD_PAYMENT, (2, 41), "saga-garbage", b"\x00\xffnot json".to_vec(), None);
    let garbage = f.publisher.dead_letter(&garbage, "undecodable: malformed JSON", 1, "payment").await.expect("dlq");
    let (saga_a, saga_b) = (Uuid::now_v7(), Uuid::now_v7());
    let (charge_a, charge_b) = (charge(saga_a, "tok_secret_a"), charge(saga_b, "tok_secret_b"));
    let source_a = envelope_read_from(&f.kafka, topics::CMD_PAYMENT, (1, 7), &charge_a);
    let a = f.publisher.dead_letter(&source_a, "transient: gave up after 30s", 3, "payment").await.expect("dlq");
    let source_b = envelope_read_from(&f.kafka, topics::CMD_PAYMENT, (0, 8), &charge_b);
    let b = f.publisher.dead_letter(&source_b, "misrouted", 1, "payment").await.expect("dlq");
    let orphan = f.publisher.send(&payment_dlq, Some(b"saga-orphan"), b"{}", OwnedHeaders::new()).await.expect("sent");
    let reply = read_from(&f.kafka, topics::REPLY, (0, 3), "saga-reply", b"[]".to_vec(), None);
    f.publisher.dead_letter(&reply, "not a reply", 1, "orchestrator").await.expect("dlq");

    // Listed per topic, with error, attempts and where they came from; never the payload.
    let listing = f.dead_letters.list(None, 100).await.expect("a listing");
    let names: BTreeSet<&str> = listing.topics.keys().map(String::as_str).collect();
    let expected: BTreeSet<String> = topics::CONSUMED.iter().map(|t| topics::dlq(t)).collect();
    assert_eq!(names, expected.iter().map(String::as_str).collect(), "every dead-letter topic, even empty ones");
    let counts: Vec<(String, u64)> = listing.topics.iter().map(|(t, l)| (t.clone(), l.count)).collect();
    assert_eq!(listing.topics[PAYMENT_DLQ].count, 4, "{counts:?}");
    assert_eq!(listing.topics["saga.reply.dlq"].count, 1, "{counts:?}");
    assert_eq!(listing.topics["saga.event.dlq"].count, 0, "{counts:?}");
    let messages = &listing.topics[PAYMENT_DLQ].messages;
    assert_eq!(messages.len(), 4);
    let listed_a = find(messages, &a);
    assert_eq!(listed_a.topic, PAYMENT_DLQ);
    assert_eq!(listed_a.key.as_deref(), Some(saga_a.to_string().as_str()));
    assert_eq!(listed_a.message_type.as_deref(), Some("payment.charge"));
    assert_eq!(listed_a.message_id, Some(charge_a.meta.message_id.to_string()));
    assert_eq!(listed_a.original_topic.as_deref(), Some(topics::CMD_PAYMENT), "without the prefix");
    assert_eq!((listed_a.original_partition, listed_a.original_offset), (Some(1), Some(7)));
    assert_eq!(listed_a.error.as_deref(), Some("transient: gave up after 30s"));
    assert_eq!(listed_a.attempts, Some(3));
    assert_eq!(listed_a.service.as_deref(), Some("payment"));
    assert!(listed_a.failed_at.is_some_and(|t| (Utc::now() - t).num_minutes().abs() < 5), "{:?}", listed_a.failed_at);
    assert_eq!(listed_a.payload_bytes, charge_a.encode().len());
    let envelope = listed_a.envelope.as_ref().expect("a charge decodes as an envelope");
    assert_eq!(
        (envelope.message_type.as_str(), envelope.saga_id, envelope.step, envelope.attempt),
        ("payment.charge", saga_a, 1, 2)
    );
    assert_eq!(listed_a.replayed, None);
    let listed_garbage = find(messages, &garbage);
    assert_eq!((listed_garbage.envelope.as_ref(), listed_garbage.message_type.as_deref()), (None, None));
    assert_eq!(listed_garbage.payload_bytes, 10);
    assert_eq!(listed_garbage.error.as_deref(), Some("undecodable: malformed JSON"));
    assert_eq!((listed_garbage.original_partition, listed_garbage.original_offset), (Some(2), Some(41)));
    let listed_orphan = find(messages, &orphan);
    assert_eq!((listed_orphan.original_topic.as_ref(), listed_orphan.error.as_ref()), (None, None));
    let text = serde_json::to_string(&listing).expect("a listing serializes");
    for secret in ["tok_secret_a", "tok_secret_b", "not json", "customer_ref", "amount_cents"] {
        assert!(!text.contains(secret), "the listing shows the payload ({secret}): {text}");
    }

    // A limit caps the messages, not the count; an unknown topic is refused.
    let limited = f.dead_letters.list(Some(PAYMENT_DLQ), 2).await.expect("a listing");
    assert_eq!(limited.topics.keys().collect::<Vec<_>>(), vec![PAYMENT_DLQ]);
    assert_eq!((limited.topics[PAYMENT_DLQ].count, limited.topics[PAYMENT_DLQ].messages.len()), (4, 2));
    let unknown = f.dead_letters.list(Some("saga.cmd.payment"), 10).await.expect_err("not a dead-letter topic");
    assert!(matches!(unknown, Error::UnknownTopic { .. }), "{unknown:?}");

    // Replay one: it is back on the original topic, same key and payload, with replay-of and no dlq-* headers.
    let before = high_watermarks(&f.kafka, &payment).await;
    let one = Selection { topic: PAYMENT_DLQ.into(), messages: Which::Only([at(&a)].into_iter().collect()) };
    let report = f.dead_letters.replay(&one, "ops-alice", "payment service fixed").await.expect("a replay");
    assert_eq!(coordinates(&report), (vec![at(&a)], vec![], vec![]), "{report:?}");
    assert_eq!(report.stopped, None);
    let to = &report.replayed[0].to;
    assert_eq!(to.topic, topics::CMD_PAYMENT);
    let replayed = message_at(&f.kafka, &payment, (to.partition, to.offset)).await;
    assert_eq!(replayed.key(), Some(saga_a.to_string().as_bytes()));
    assert_eq!(replayed.payload(), Some(charge_a.encode().as_slice()));
    assert_eq!(header_value(&replayed, REPLAY_OF), Some(format!("{payment_dlq}/{}/{}", a.partition, a.offset)));
    assert_eq!(header_value(&replayed, headers::MESSAGE_TYPE).as_deref(), Some("payment.charge"));
    assert!(!header_keys(&replayed).iter().any(|k| k.starts_with("dlq-")), "{:?}", header_keys(&replayed));
    assert_eq!(high_watermarks(&f.kafka, &payment).await, before + 1);

    // The listing shows it replayed, by whom and when.
    let listing = f.dead_letters.list(Some(PAYMENT_DLQ), 100).await.expect("a listing");
    let replay = find(&listing.topics[PAYMENT_DLQ].messages, &a).replayed.expect("replayed");
    assert_eq!(
        (replay.operator.as_str(), replay.at, replay.reason.as_str()),
        ("ops-alice", t0(), "payment service fixed")
    );
    assert_eq!(&replay.to, to);
    assert_eq!(find(&listing.topics[PAYMENT_DLQ].messages, &b).replayed, None);

    // Replay all: the one replayed before is skipped, the orphan refused, the rest replayed.
    let all = Selection { topic: PAYMENT_DLQ.into(), messages: Which::All };
    let report = f.dead_letters.replay(&all, "ops-bob", "replay the rest").await.expect("a replay");
    let (replayed, skipped, failed) = coordinates(&report);
    assert_eq!(sorted(replayed), sorted(vec![at(&garbage), at(&b)]), "{report:?}");
    assert_eq!((skipped, failed), (vec![at(&a)], vec![at(&orphan)]), "{report:?}");
    assert_eq!(report.skipped[0].replayed.operator, "ops-alice", "the first replay stands");
    assert!(report.failed[0].reason.contains(headers::DLQ_TOPIC), "{}", report.failed[0].reason);
    assert_eq!(report.stopped, None);
    assert_eq!(high_watermarks(&f.kafka, &payment).await, before + 3);
    let garbage_to = &report.replayed.iter().find(|r| (r.partition, r.offset) == at(&garbage)).expect("replayed").to;
    let replayed_garbage = message_at(&f.kafka, &payment, (garbage_to.partition, garbage_to.offset)).await;
    assert_eq!(replayed_garbage.payload(), Some(b"\x00\xffnot json".as_slice()), "bytes travel unchanged");

    // Again: everything skipped (the orphan still refused), nothing published.
    let report = f.dead_letters.replay(&all, "ops-bob", "once more").await.expect("a replay");
    let (replayed, skipped, failed) = coordinates(&report);
    assert!(replayed.is_empty(), "{report:?}");
    assert_eq!(sorted(skipped), sorted(vec![at(&a), at(&b), at(&garbage)]));
    assert_eq!(failed, vec![at(&orphan)]);
    assert_eq!(high_watermarks(&f.kafka, &payment).await, before + 3, "nothing was published again");

    // Messages that are not there fail, by name; the replay records are by exact `_id`.
    let missing =
        Selection { topic: PAYMENT_DLQ.into(), messages: Which::Only([(0, 999_999), (7, 0)].into_iter().collect()) };
    let report = f.dead_letters.replay(&missing, "ops-bob", "typo").await.expect("a replay");
    assert_eq!(coordinates(&report), (vec![], vec![], vec![(0, 999_999), (7, 0)]), "{report:?}");
    let id = format!("{payment_dlq}:{}:{}", a.partition, a.offset);
    let record = f.db.collection::<mongodb::bson::Document>("dlq_replays").find_one(doc! { "_id": &id }).await;
    let record = record.expect("the database answers").expect("a replay record");
    assert_eq!(record.get_str("operator").ok(), Some("ops-alice"));
    assert_eq!(record.get_str("target_topic").ok(), Some(payment.as_str()));

    f.db.drop().await.expect("drop the test database");
}

// ---------------------------------------------------------------------------------------------------------
// HTTP

async fn call(h: &Harness, method: &str, path: &str, bearer: Option<&str>, body: Option<Value>) -> Answer {
    let mut request = Request::builder().method(method).uri(path).header(header::CONTENT_TYPE, "application/json");
    if let Some(bearer) = bearer {
        request = request.header(header::AUTHORIZATION, format!("Bearer {bearer}"));
    }
    let body = body.map_or_else(HttpBody::empty, |b| HttpBody::from(b.to_string()));
    h.request(request.body(body).expect("a valid request")).await
}

fn fields(answer: &Answer) -> Vec<String> {
    let errors = answer.body["errors"].as_array().cloned().unwrap_or_default();
    errors.iter().map(|e| e["field"].as_str().unwrap_or_default().to_owned()).collect()
}

#[tokio::test]
async fn the_dlq_routes_validate_their_input_and_need_an_operator() {
    let h = Harness::new();
    for (path, field) in [
        ("/admin/dlq?topic=saga.cmd.nope.dlq", "topic"),
        ("/admin/dlq?topic=saga.cmd.payment", "topic"),
        ("/admin/dlq?limit=0", "limit"),
        ("/admin/dlq?topic=saga.reply.dlq&limit=1001", "limit"),
    ] {
        let answer = call(&h, "GET", path, None, None).await;
        assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{path}: {:?}", answer.body);
        assert_eq!(answer.content_type.as_deref(), Some("application/problem+json"));
        assert_eq!(fields(&answer), vec![field], "{path}: {:?}", answer.body);
    }
    let answer = call(&h, "GET", "/admin/dlq?limit=many", None, None).await;
    assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{:?}", answer.body);
    assert_eq!(answer.content_type.as_deref(), Some("application/problem+json"));

    let partition = json!({ "topic": PAYMENT_DLQ, "messages": [{ "partition": -1, "offset": 0 }], "reason": "fixed" });
    for (body, field) in [
        (json!({ "topic": "saga.cmd.nope.dlq", "reason": "fixed" }), "topic"),
        (json!({ "topic": PAYMENT_DLQ, "reason": "" }), "reason"),
        (json!({ "topic": PAYMENT_DLQ, "messages": [], "reason": "fixed" }), "messages"),
        (partition, "messages[0].partition"),
        (json!({ "topic": PAYMENT_DLQ }), "reason"),
        (json!({ "topic": PAYMENT_DLQ, "reason": "fixed", "force": true }), ""),
    ] {
        let answer = call(&h, "POST", "/admin/dlq/replay", None, Some(body.clone())).await;
        assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{body}: {:?}", answer.body);
        assert_eq!(answer.content_type.as_deref(), Some("application/problem+json"));
        assert!(fields(&answer).iter().any(|f| f == field || field.is_empty()), "{body}: {:?}", answer.body);
    }

    // Valid, but this harness has no Kafka: 503, as a problem.
    let answer = call(&h, "GET", "/admin/dlq", None, None).await;
    assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE, "{:?}", answer.body);
    assert_eq!(answer.content_type.as_deref(), Some("application/problem+json"));

    let customer = token("cust-ada", &[Role::Customer]);
    let valid = json!({ "topic": PAYMENT_DLQ, "reason": "fixed" });
    let listed = call(&h, "GET", "/admin/dlq", Some(&customer), None).await;
    let replayed = call(&h, "POST", "/admin/dlq/replay", Some(&customer), Some(valid.clone())).await;
    for answer in [listed, replayed] {
        assert_eq!(answer.status, StatusCode::FORBIDDEN, "{:?}", answer.body);
        assert_eq!(answer.content_type.as_deref(), Some("application/problem+json"));
    }
    let anonymous = call(&h, "POST", "/admin/dlq/replay", Some("not-a-token"), Some(valid)).await;
    assert_eq!(anonymous.status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn operators_list_and_replay_over_http_without_seeing_personal_data() {
    let f = fixture("http").await;
    let saga_id = Uuid::now_v7();
    let street = "221b Baker Street";
    let source = envelope_read_from(&f.kafka, topics::CMD_SHIPPING, (0, 12), &shipment(saga_id, street));
    let dead = f.publisher.dead_letter(&source, "shipping.create is invalid", 1, "shipping").await.expect("dlq");
    let h = Harness::with_dead_letters(Some(Arc::new(f.dead_letters.clone())));

    let listed = h.get(&format!("/admin/dlq?topic={SHIPPING_DLQ}&limit=10")).await;
    assert_eq!(listed.status, StatusCode::OK, "{:?}", listed.body);
    let topics = listed.body["topics"].as_object().expect("topics");
    assert_eq!(topics.keys().collect::<Vec<_>>(), vec![SHIPPING_DLQ]);
    assert_eq!(listed.body["topics"][SHIPPING_DLQ]["count"], 1);
    let message = &listed.body["topics"][SHIPPING_DLQ]["messages"][0];
    assert_eq!(message["partition"], dead.partition);
    assert_eq!(message["offset"], dead.offset);
    assert_eq!(message["key"], saga_id.to_string());
    assert_eq!(message["original_topic"], topics::CMD_SHIPPING);
    assert_eq!(message["original_offset"], 12);
    assert_eq!(message["error"], "shipping.create is invalid");
    assert_eq!(message["attempts"], 1);
    assert_eq!(message["envelope"]["type"], "shipping.create");
    assert_eq!(message["replayed"], Value::Null);
    assert!(!listed.body.to_string().contains(street), "the address leaked: {}", listed.body);

    let body = json!({ "topic": SHIPPING_DLQ, "messages": [{ "partition": dead.partition, "offset": dead.offset }], "reason": "shipping fixed" });
    let replayed = call(&h, "POST", "/admin/dlq/replay", None, Some(body.clone())).await;
    assert_eq!(replayed.status, StatusCode::OK, "{:?}", replayed.body);
    assert_eq!(replayed.body["topic"], SHIPPING_DLQ);
    assert_eq!(replayed.body["replayed"].as_array().map(Vec::len), Some(1), "{:?}", replayed.body);
    assert_eq!(replayed.body["replayed"][0]["to"]["topic"], topics::CMD_SHIPPING);
    assert_eq!(replayed.body["stopped"], Value::Null);

    let again = call(&h, "POST", "/admin/dlq/replay", None, Some(body)).await;
    assert_eq!(again.status, StatusCode::OK, "{:?}", again.body);
    assert_eq!(again.body["replayed"], json!([]));
    assert_eq!(again.body["skipped"][0]["replayed"]["operator"], "ops-alice", "the harness's operator");

    let listed = h.get(&format!("/admin/dlq?topic={SHIPPING_DLQ}")).await;
    let replay = &listed.body["topics"][SHIPPING_DLQ]["messages"][0]["replayed"];
    assert_eq!(replay["operator"], "ops-alice", "{:?}", listed.body);
    assert_eq!(replay["reason"], "shipping fixed");

    f.db.drop().await.expect("drop the test database");
}
