//! The real Kafka broker through rdkafka, as the services use it: an idempotent `acks=all` producer,
//! keyed messages, a consumer group with manual offset commits, and resumption after a restart.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use platform::kafka::{KafkaSettings, TopicOutcome, ensure_topics};
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use tests::{eventually, unique};
use tokio::time::Instant;

const KEYS: usize = 10;
const TIMEOUT: Duration = Duration::from_secs(60);

/// One consumed message: which key, its sequence number within the key, and where it was read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Seen {
    key: usize,
    seq: usize,
    partition: i32,
    offset: i64,
}

async fn topic(settings: &KafkaSettings) -> String {
    let outcomes = ensure_topics(settings, &["orders".to_owned()]).await.expect("create topic");
    assert!(matches!(outcomes[0], TopicOutcome::Created { partitions: 6, .. }), "{outcomes:?}");
    // A second call finds the topic and changes nothing.
    let again = ensure_topics(settings, &["orders".to_owned()]).await.expect("ensure topic again");
    assert!(matches!(again[0], TopicOutcome::Existed { partitions: 6, .. }), "{again:?}");
    settings.topic("orders")
}

/// Sends `seqs` for every key, in order, through one idempotent producer; waits for every acknowledgement.
async fn produce(producer: &FutureProducer, topic: &str, seqs: std::ops::Range<usize>) {
    let mut deliveries = Vec::new();
    for seq in seqs {
        for key in 0..KEYS {
            let (key, payload) = (format!("order-{key}"), format!("{key}:{seq}"));
            let record = FutureRecord::to(topic).key(&key).payload(&payload);
            deliveries.push(producer.send_result(record).expect("enqueue"));
        }
    }
    for delivery in deliveries {
        delivery.await.expect("producer dropped").map_err(|(e, _)| e).expect("acknowledged with acks=all");
    }
}

fn consumer(settings: &KafkaSettings, group: &str, topic: &str, member: &str) -> StreamConsumer {
    let consumer: StreamConsumer = settings
        .consumer_config(group)
        .set("client.id", member)
        .set("session.timeout.ms", "6000")
        .create()
        .expect("create consumer");
    consumer.subscribe(&[topic]).expect("subscribe");
    consumer
}

fn parse(message: &rdkafka::message::BorrowedMessage<'_>) -> Seen {
    let payload = std::str::from_utf8(message.payload().expect("payload")).expect("utf-8");
    let (key, seq) = payload.split_once(':').expect("key:seq");
    let seen = Seen {
        key: key.parse().expect("key"),
        seq: seq.parse().expect("seq"),
        partition: message.partition(),
        offset: message.offset(),
    };
    assert_eq!(message.key(), Some(format!("order-{}", seen.key).as_bytes()), "key header matches payload");
    seen
}

/// Reads until `count` (shared by the group's members) reaches `total`, storing and committing each offset
/// (synchronously) right after the message is recorded, as a service does once the effect is durable.
async fn drain(consumer: &StreamConsumer, count: &AtomicUsize, total: usize) -> Vec<Seen> {
    let deadline = Instant::now() + TIMEOUT;
    let mut seen = Vec::new();
    while count.load(Ordering::SeqCst) < total {
        assert!(Instant::now() < deadline, "timed out with {} of {total} messages", count.load(Ordering::SeqCst));
        let Ok(message) = tokio::time::timeout(Duration::from_millis(200), consumer.recv()).await else {
            continue;
        };
        let message = message.expect("recv");
        seen.push(parse(&message));
        consumer.store_offset_from_message(&message).expect("store offset");
        consumer.commit_consumer_state(CommitMode::Sync).expect("commit");
        count.fetch_add(1, Ordering::SeqCst);
    }
    seen
}

/// Reads `total` messages and commits only the first `commit` of them, then returns them all.
async fn read_then_commit_prefix(consumer: &StreamConsumer, total: usize, commit: usize) -> Vec<Seen> {
    let mut seen = Vec::new();
    while seen.len() < total {
        let message = tokio::time::timeout(TIMEOUT, consumer.recv()).await.expect("a message in time").expect("recv");
        seen.push(parse(&message));
        if seen.len() <= commit {
            consumer.store_offset_from_message(&message).expect("store offset");
            consumer.commit_consumer_state(CommitMode::Sync).expect("commit");
        }
    }
    seen
}

/// Every key's sequence numbers, in the order one consumer saw them, must be strictly increasing.
fn assert_ordered_per_key(seen: &[Seen]) {
    let mut last: HashMap<usize, usize> = HashMap::new();
    for s in seen {
        if let Some(prev) = last.insert(s.key, s.seq) {
            assert!(s.seq > prev, "key {} went from seq {prev} to {}: out of order", s.key, s.seq);
        }
    }
}

/// The committed offset of each partition of `topic` for the group of `consumer`.
fn committed(consumer: &StreamConsumer, topic: &str) -> BTreeMap<i32, i64> {
    let mut list = TopicPartitionList::new();
    for partition in 0..6 {
        list.add_partition(topic, partition);
    }
    let committed = consumer.committed_offsets(list, Duration::from_secs(10)).expect("committed offsets");
    committed
        .elements()
        .iter()
        .map(|e| (e.partition(), if let Offset::Offset(o) = e.offset() { o } else { 0 }))
        .collect()
}

/// The high watermark (next offset to be written) of each partition of `topic`.
fn high_watermarks(consumer: &StreamConsumer, topic: &str) -> BTreeMap<i32, i64> {
    (0..6).map(|p| (p, consumer.fetch_watermarks(topic, p, Duration::from_secs(10)).expect("watermarks").1)).collect()
}

/// Keeps polling both members until the group has split the six partitions between them.
async fn wait_until_balanced(a: &StreamConsumer, b: &StreamConsumer) -> (usize, usize) {
    eventually("both group members to own partitions", TIMEOUT, || async {
        // Assignment happens inside poll; nothing is produced yet, so these polls return no message.
        let _ = tokio::time::timeout(Duration::from_millis(100), a.recv()).await;
        let _ = tokio::time::timeout(Duration::from_millis(100), b.recv()).await;
        let (na, nb) = (a.assignment().ok()?.count(), b.assignment().ok()?.count());
        (na > 0 && nb > 0 && na + nb == 6).then_some((na, nb))
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyed_messages_keep_their_order_through_a_group_and_resume_at_the_committed_offset() {
    let settings = tests::kafka("kafka-order");
    let topic = topic(&settings).await;
    let group = unique("group");
    let producer = settings.producer().expect("idempotent producer");

    // Phase 1: two members of one group share the partitions and read 100 keyed messages.
    let a = consumer(&settings, &group, &topic, "member-a");
    let b = consumer(&settings, &group, &topic, "member-b");
    let (na, nb) = wait_until_balanced(&a, &b).await;
    produce(&producer, &topic, 0..10).await;
    let count = AtomicUsize::new(0);
    let (seen_a, seen_b) = tokio::join!(drain(&a, &count, KEYS * 10), drain(&b, &count, KEYS * 10));
    eprintln!("member-a: {na} partitions, {} messages; member-b: {nb} partitions, {}", seen_a.len(), seen_b.len());

    assert_ordered_per_key(&seen_a);
    assert_ordered_per_key(&seen_b);
    for key in 0..KEYS {
        let in_a = seen_a.iter().any(|s| s.key == key);
        let in_b = seen_b.iter().any(|s| s.key == key);
        assert!(
            in_a != in_b,
            "key {key} was read by {} members; a key lives on one partition",
            u8::from(in_a) + u8::from(in_b)
        );
    }
    let mut all: Vec<(usize, usize)> = seen_a.iter().chain(&seen_b).map(|s| (s.key, s.seq)).collect();
    all.sort_unstable();
    let expected: Vec<(usize, usize)> = (0..KEYS).flat_map(|k| (0..10).map(move |s| (k, s))).collect();
    assert_eq!(all, expected, "every message exactly once");
    assert_eq!(committed(&a, &topic), high_watermarks(&a, &topic), "every partition committed to its end");
    drop((a, b));

    // Phase 2: a restarted member resumes at the committed offsets (nothing of phase 1 again), reads 50
    // new messages but commits only the first 25, then stops without committing the rest.
    produce(&producer, &topic, 10..15).await;
    let c = consumer(&settings, &group, &topic, "member-c");
    let read_by_c = read_then_commit_prefix(&c, KEYS * 5, KEYS * 5 / 2).await;
    assert!(read_by_c.iter().all(|s| s.seq >= 10), "a restarted member re-read a committed message");
    assert_ordered_per_key(&read_by_c);
    let committed_by_c = committed(&c, &topic);
    drop(c);

    // Phase 3: the next member gets exactly the messages past the committed offsets: none lost, none repeated.
    let mut uncommitted: Vec<Seen> =
        read_by_c.iter().copied().filter(|s| s.offset >= committed_by_c[&s.partition]).collect();
    assert_eq!(uncommitted.len(), KEYS * 5 - KEYS * 5 / 2, "the committed prefix is what c committed");
    let d = consumer(&settings, &group, &topic, "member-d");
    let count = AtomicUsize::new(0);
    let mut read_by_d = drain(&d, &count, uncommitted.len()).await;
    read_by_d.sort_unstable();
    uncommitted.sort_unstable();
    assert_eq!(read_by_d, uncommitted, "resumed exactly at the committed offsets");
    assert_eq!(committed(&d, &topic), high_watermarks(&d, &topic), "every partition committed to its end");
}
