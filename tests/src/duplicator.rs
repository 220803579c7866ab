//! Delivers every message of some topics twice: a consumer of its own reads each original and publishes
//! an identical copy (same key, so the same partition; same payload and headers) marked with a header so
//! that copies are not copied again. The services see a redelivery, as after a producer retry or a
//! consumer restart, and must repeat no effect.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use platform::kafka::{KafkaSettings, Publisher};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use tokio_util::sync::CancellationToken;

/// The header that marks a copy.
pub const COPY_HEADER: &str = "x-test-copy";

/// A running duplicator; stops when dropped.
#[derive(Debug)]
pub struct Duplicator {
    copies: Arc<AtomicUsize>,
    stop: CancellationToken,
}

impl Duplicator {
    /// Starts copying every message of `topics` (names without the prefix).
    pub async fn start(settings: &KafkaSettings, topics: &[&str]) -> Self {
        let names: Vec<String> = topics.iter().map(|t| settings.topic(t)).collect();
        platform::kafka::ensure_topics(settings, &topics.iter().map(|t| (*t).to_owned()).collect::<Vec<_>>())
            .await
            .expect("topics exist");
        let consumer: StreamConsumer = settings
            .consumer_config(&format!("{}duplicator", settings.topic_prefix))
            .set("auto.offset.reset", "earliest")
            .create()
            .expect("duplicator consumer");
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        consumer.subscribe(&refs).expect("subscribe");
        let publisher = Publisher::new(settings).expect("duplicator producer");
        let copies = Arc::new(AtomicUsize::new(0));
        let stop = CancellationToken::new();
        tokio::spawn(run(consumer, publisher, copies.clone(), stop.clone()));
        Self { copies, stop }
    }

    /// How many copies were published so far.
    pub fn copies(&self) -> usize {
        self.copies.load(Ordering::SeqCst)
    }
}

impl Drop for Duplicator {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn run(consumer: StreamConsumer, publisher: Publisher, copies: Arc<AtomicUsize>, stop: CancellationToken) {
    loop {
        let message = tokio::select! {
            () = stop.cancelled() => return,
            message = consumer.recv() => message,
        };
        let Ok(message) = message else { continue };
        let headers = message.headers();
        if headers.is_some_and(|h| h.iter().any(|h| h.key == COPY_HEADER)) {
            continue;
        }
        let mut copy_headers = OwnedHeaders::new();
        if let Some(headers) = headers {
            for header in headers.iter() {
                copy_headers = copy_headers.insert(Header { key: header.key, value: header.value });
            }
        }
        copy_headers = copy_headers.insert(Header { key: COPY_HEADER, value: Some("1") });
        let payload = message.payload().unwrap_or_default();
        let sent = tokio::time::timeout(
            Duration::from_secs(30),
            publisher.send(message.topic(), message.key(), payload, copy_headers),
        )
        .await;
        if matches!(sent, Ok(Ok(_))) {
            copies.fetch_add(1, Ordering::SeqCst);
        }
    }
}
