//! How a consumer in a group reads one partition: a fetch position; offsets stored once a message's effect
//! is durable and committed every few seconds, so a crash redelivers everything after the last commit; a
//! message whose processing failed transiently is processed again before anything after it (the real
//! consumers retry it in place). The delivery faults happen here: a fetched message may be dropped,
//! duplicated (delivered again later), delayed (held for a while of virtual time) or reordered (held until
//! later messages of the partition were delivered).

use chrono::{DateTime, TimeDelta, Utc};

use crate::config::FaultRates;
use crate::kafka::{Kafka, Record};
use crate::rng::Rng;

/// A message handed to a consumer.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// Its offset in the partition.
    pub offset: usize,
    /// The message.
    pub record: Record,
    /// How it comes (for the trace): `None` for a plain fetch.
    pub how: Option<&'static str>,
}

/// What a fetch produced.
#[derive(Debug)]
pub enum Fetched {
    /// A message to process.
    Deliver(Delivery),
    /// The message at this offset was lost.
    Dropped(usize),
    /// The message at this offset was held back (why).
    Held(usize, &'static str),
    /// Nothing to read.
    Idle,
}

#[derive(Debug, Clone)]
enum Release {
    /// At this virtual time.
    At(DateTime<Utc>),
    /// After this many more messages of the partition were fetched (or when there are none left).
    AfterFetches(u32),
}

#[derive(Debug, Clone)]
struct Held {
    delivery: Delivery,
    release: Release,
}

/// One partition as one consumer reads it.
#[derive(Debug, Clone)]
pub struct Fetch {
    /// The partition.
    pub partition: i32,
    position: usize,
    stored: usize,
    held: Vec<Held>,
    retry: Option<Delivery>,
}

impl Fetch {
    /// Reading from the group's committed offset.
    pub fn new(partition: i32, committed: usize) -> Self {
        Self { partition, position: committed, stored: committed, held: Vec::new(), retry: None }
    }

    /// The offset to commit: past every message processed in order.
    pub fn stored(&self) -> usize {
        self.stored
    }

    /// Whether there is something to read: a retry, a held message due, or the log's next message.
    pub fn has_work(&self, kafka: &Kafka, topic: &str, now: DateTime<Utc>) -> bool {
        let end = kafka.end(topic, self.partition);
        self.retry.is_some() || self.position < end || self.held.iter().any(|h| releasable(h, now, self.position, end))
    }

    /// Whether anything is held back or waiting for a retry.
    pub fn has_held(&self) -> bool {
        self.retry.is_some() || !self.held.is_empty()
    }

    /// Makes every held message deliverable now (the fault-free phase).
    pub fn release_all(&mut self) {
        for held in &mut self.held {
            held.release = Release::AfterFetches(0);
        }
    }

    /// The next delivery. With `faults`, a message fetched from the log may be dropped, duplicated,
    /// delayed or reordered.
    pub fn next(
        &mut self,
        kafka: &Kafka,
        topic: &str,
        now: DateTime<Utc>,
        rng: &mut Rng,
        faults: Option<&FaultRates>,
    ) -> Fetched {
        if let Some(retry) = self.retry.take() {
            return Fetched::Deliver(Delivery { how: Some("retried"), ..retry });
        }
        let end = kafka.end(topic, self.partition);
        if let Some(i) = self.held.iter().position(|h| releasable(h, now, self.position, end)) {
            return Fetched::Deliver(self.held.remove(i).delivery);
        }
        let Some(record) = kafka.read(topic, self.partition, self.position) else { return Fetched::Idle };
        let offset = self.position;
        self.position += 1;
        for held in &mut self.held {
            if let Release::AfterFetches(n) = &mut held.release {
                *n = n.saturating_sub(1);
            }
        }
        let delivery = Delivery { offset, record, how: None };
        match faults {
            Some(rates) => self.disturb(delivery, now, rng, rates, kafka, topic),
            None => Fetched::Deliver(delivery),
        }
    }

    fn disturb(
        &mut self,
        delivery: Delivery,
        now: DateTime<Utc>,
        rng: &mut Rng,
        rates: &FaultRates,
        kafka: &Kafka,
        topic: &str,
    ) -> Fetched {
        let offset = delivery.offset;
        let draw = rng.weighted(&[rates.drop, rates.duplicate, rates.delay, rates.reorder, 10_000]);
        match draw {
            0 => Fetched::Dropped(offset),
            1 => {
                let again = Delivery { how: Some("duplicate"), ..delivery.clone() };
                let release = Release::AfterFetches(u32::try_from(rng.below(4)).unwrap_or(0));
                self.held.push(Held { delivery: again, release });
                Fetched::Deliver(delivery)
            }
            2 => {
                let wait = TimeDelta::milliseconds(i64::try_from(rng.between(100, 60_000)).unwrap_or(1_000));
                let delayed = Delivery { how: Some("delayed"), ..delivery };
                self.held.push(Held { delivery: delayed, release: Release::At(now + wait) });
                Fetched::Held(offset, "delayed")
            }
            3 => {
                let later = u32::try_from(rng.between(1, 3)).unwrap_or(1);
                let reordered = Delivery { how: Some("reordered"), ..delivery };
                self.held.push(Held { delivery: reordered, release: Release::AfterFetches(later) });
                // Deliver a later message first, if there is one.
                match self.next(kafka, topic, now, rng, None) {
                    Fetched::Idle => Fetched::Held(offset, "reordered"),
                    fetched => fetched,
                }
            }
            _ => Fetched::Deliver(delivery),
        }
    }

    /// The delivery's effect is durable: store the offset.
    pub fn processed(&mut self) {
        self.stored = self.position;
    }

    /// The delivery failed transiently: it is processed again before anything else of the partition.
    pub fn failed(&mut self, delivery: Delivery) {
        self.retry = Some(delivery);
    }
}

fn releasable(held: &Held, now: DateTime<Utc>, position: usize, end: usize) -> bool {
    match held.release {
        Release::At(at) => at <= now,
        Release::AfterFetches(n) => n == 0 || position >= end,
    }
}

#[cfg(test)]
mod tests {
    use proto_events::{Body, Message, Meta, StartSaga, topics};
    use uuid::Uuid;

    use super::*;

    fn kafka_with(messages: usize) -> (Kafka, i32) {
        let kafka = Kafka::new(1, 1);
        let saga_id = Uuid::from_u128(7);
        for _ in 0..messages {
            let meta = Meta {
                message_id: Uuid::now_v7(),
                saga_id,
                step: 0,
                attempt: 0,
                correlation_id: saga_id,
                causation_id: None,
                time: DateTime::UNIX_EPOCH,
            };
            kafka.append(topics::REPLY, &Message::new(meta, Body::Start(StartSaga {})).expect("valid"));
        }
        (kafka, 0)
    }

    #[test]
    fn a_retry_comes_first_and_a_crash_redelivers_from_the_commit() {
        let (kafka, p) = kafka_with(3);
        let mut rng = Rng::new(1);
        let now = DateTime::UNIX_EPOCH;
        let mut fetch = Fetch::new(p, 0);
        let Fetched::Deliver(first) = fetch.next(&kafka, topics::REPLY, now, &mut rng, None) else { panic!() };
        fetch.failed(first);
        let Fetched::Deliver(again) = fetch.next(&kafka, topics::REPLY, now, &mut rng, None) else { panic!() };
        assert_eq!((again.offset, again.how), (0, Some("retried")));
        fetch.processed();
        assert_eq!(fetch.stored(), 1);
        let restarted = Fetch::new(p, fetch.stored());
        assert!(restarted.has_work(&kafka, topics::REPLY, now));
    }

    #[test]
    fn a_reordered_message_comes_after_a_later_one() {
        let (kafka, p) = kafka_with(3);
        let now = DateTime::UNIX_EPOCH;
        let rates = FaultRates { reorder: 10_000, ..FaultRates::none() };
        let mut fetch = Fetch::new(p, 0);
        let mut rng = Rng::new(3);
        let Fetched::Deliver(first) = fetch.next(&kafka, topics::REPLY, now, &mut rng, Some(&rates)) else {
            panic!("a later message is delivered first")
        };
        assert_eq!(first.offset, 1);
        let mut order = vec![first.offset];
        while let Fetched::Deliver(d) = fetch.next(&kafka, topics::REPLY, now, &mut rng, None) {
            order.push(d.offset);
        }
        order.sort_unstable();
        assert_eq!(order, [0, 1, 2], "nothing lost");
    }
}
