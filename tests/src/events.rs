//! Watches `saga.event` like a read model would: every `saga.transitioned` event is recorded as it arrives,
//! so tests wait for terminal statuses without polling the order API (and measure when they arrived).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use platform::kafka::KafkaSettings;
use proto_events::{Body, Message, OrderStatus, topics};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message as _;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// The last status seen per saga, and when it arrived.
#[derive(Debug, Default)]
struct Seen {
    status: HashMap<Uuid, (OrderStatus, Instant)>,
}

/// A running watcher; stops when dropped.
#[derive(Debug)]
pub struct EventWatch {
    seen: Arc<Mutex<Seen>>,
    stop: CancellationToken,
}

impl EventWatch {
    /// Starts reading `saga.event` from its beginning.
    pub fn start(settings: &KafkaSettings) -> Self {
        let consumer: StreamConsumer = settings
            .consumer_config(&format!("{}event-watch-{}", settings.topic_prefix, Uuid::now_v7().simple()))
            .create()
            .expect("event consumer");
        consumer.subscribe(&[&settings.topic(topics::EVENT)]).expect("subscribe");
        let seen = Arc::new(Mutex::new(Seen::default()));
        let stop = CancellationToken::new();
        tokio::spawn(run(consumer, seen.clone(), stop.clone()));
        Self { seen, stop }
    }

    /// The statuses of `ids` once every one is terminal, with the instant each became so.
    pub async fn wait_terminal(&self, ids: &[Uuid], timeout: Duration) -> Vec<(OrderStatus, Instant)> {
        let what = format!("{} sagas to finish", ids.len());
        crate::eventually(&what, timeout, || async {
            let seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
            ids.iter()
                .map(|id| seen.status.get(id).copied().filter(|(s, _)| s.is_terminal()))
                .collect::<Option<Vec<_>>>()
        })
        .await
    }
}

impl Drop for EventWatch {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn run(consumer: StreamConsumer, seen: Arc<Mutex<Seen>>, stop: CancellationToken) {
    loop {
        let message = tokio::select! {
            () = stop.cancelled() => return,
            message = consumer.recv() => message,
        };
        let Ok(message) = message else { continue };
        let Ok(decoded) = Message::decode(message.payload().unwrap_or_default()) else { continue };
        if let Body::Transitioned(event) = decoded.body {
            let mut seen = seen.lock().unwrap_or_else(PoisonError::into_inner);
            let entry = seen.status.entry(decoded.meta.saga_id).or_insert((event.status, Instant::now()));
            // Keep the first arrival of a terminal status; later duplicates do not move it.
            if !entry.0.is_terminal() {
                *entry = (event.status, Instant::now());
            }
        }
    }
}
