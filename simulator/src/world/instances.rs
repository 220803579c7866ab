//! The orchestrator side of the world: starting and crashing instances, the consumer group's assignment
//! of `saga.reply` partitions (recovery on assignment, a graceful revocation commits, a stalled instance
//! is thrown out and later applies the message it held), the timers, and applying one message with the
//! real engine, as the real consumer does: a transient failure retries the same message before anything
//! after it; a permanent one would be dead-lettered, which the simulation reports as a violation.

use std::sync::Arc;

use orchestrator::engine::{Origin, Outcome};
use proto_events::{Body, Message, Reply, topics};

use super::{Stall, World};
use crate::consumer::{Delivery, Fetch, Fetched};
use crate::faults::Hit;
use crate::processes::{Instance, TIMER};

/// How a fault that struck is shown in the trace.
pub(super) fn struck(hit: Option<Hit>) -> String {
    hit.map(|h| format!(" [injected {:?} at {}]", h.fault, h.operation)).unwrap_or_default()
}

/// A short description of a message on `saga.reply`.
pub(super) fn describe(message: &Message) -> String {
    let (step, attempt) = (message.meta.step, message.meta.attempt);
    match &message.body {
        Body::Reply { command, reply } => {
            let answer = match reply {
                Reply::Succeeded { .. } => "ok",
                Reply::Failed { kind: proto_events::FailureKind::Business, .. } => "business failure",
                Reply::Failed { .. } => "transient failure",
            };
            format!("{} s{step}a{attempt} {answer}", command.reply_type())
        }
        Body::Timer(timer) => format!("timer {:?} s{step}a{attempt}", timer.kind),
        Body::Operator(op) => format!("operator {:?} at v{}", op.action, op.expected_version),
        other => other.message_type().to_owned(),
    }
}

fn outcome_text(outcome: &Outcome) -> String {
    match outcome {
        Outcome::Transitioned { from, to } => format!("{from} -> {to}"),
        Outcome::Ignored(why) => format!("ignored ({why})"),
        Outcome::UnknownSaga => "unknown saga".to_owned(),
        Outcome::NotForOrchestrator => "not for the orchestrator".to_owned(),
        Outcome::Published { messages } => format!("start published ({messages} messages)"),
    }
}

impl World {
    /// Starts a new incarnation of the instance in `slot`, owning nothing yet.
    pub(super) fn start_orchestrator(&mut self, slot: usize) {
        self.incarnations[slot] += 1;
        let name = format!("orch-{}#{}", char::from(b'a' + u8::try_from(slot).unwrap_or(0)), self.incarnations[slot]);
        self.note(format!("{name} starts"));
        self.orchestrators[slot] = Some(Instance::start(name, &self.ports));
    }

    /// Slots with a running instance that is a member of the group (not stalled).
    pub(super) fn live_slots(&self) -> Vec<usize> {
        (0..self.orchestrators.len())
            .filter(|s| self.orchestrators[*s].is_some() && !self.stalls.contains_key(s))
            .collect()
    }

    fn name(&self, slot: usize) -> String {
        self.orchestrators[slot].as_ref().map_or_else(|| format!("slot {slot}"), |i| i.name.clone())
    }

    /// The group rebalances: every partition goes to a live member, spread evenly; a partition that
    /// changes owner is revoked gracefully from a live old owner, then assigned and recovered.
    pub(super) async fn rebalance(&mut self) {
        let live = self.live_slots();
        if live.is_empty() {
            return;
        }
        let rotation = if self.faults_on { self.rng.index(live.len()) } else { 0 };
        for partition in 0..self.config.reply_partitions {
            let target = live[(usize::try_from(partition).unwrap_or(0) + rotation) % live.len()];
            match self.owners.get(&partition) {
                Some(owner) if *owner == target => {}
                Some(owner) => {
                    self.revoke(*owner, partition);
                    self.assign(partition, target).await;
                }
                None => self.assign(partition, target).await,
            }
        }
    }

    /// Moves one random partition to the other live instance (a rebalance that moves just one).
    pub(super) async fn move_one_partition(&mut self) {
        let live = self.live_slots();
        let owned: Vec<(i32, usize)> = self.owners.iter().map(|(p, s)| (*p, *s)).collect();
        let (Some(&(partition, from)), true) = (self.rng.pick(&owned), live.len() > 1) else { return };
        let Some(&to) = live.iter().find(|s| **s != from) else { return };
        self.count("group.move");
        self.revoke(from, partition);
        self.assign(partition, to).await;
    }

    /// A graceful revocation: the instance stops owning the partition, forgets its deadlines, and its
    /// stored offset is committed.
    fn revoke(&mut self, slot: usize, partition: i32) {
        self.owners.remove(&partition);
        let Some(instance) = self.orchestrators[slot].as_mut() else { return };
        instance.ownership.revoke(&[partition]);
        instance.deadlines.forget(&[partition]);
        instance.engine.cache().forget(&[partition]);
        instance.engine.unsettled().forget(&[partition]);
        let name = instance.name.clone();
        if let Some(fetch) = instance.fetch.remove(&partition) {
            self.committed.insert((topics::REPLY, partition), fetch.stored());
        }
        self.note(format!("{name} gives up reply/{partition}"));
    }

    /// The partition is assigned to the instance: it owns it, recovers its sagas, and reads it from the
    /// group's committed offset.
    async fn assign(&mut self, partition: i32, slot: usize) {
        let committed = self.committed(topics::REPLY, partition);
        let Some(instance) = self.orchestrators[slot].as_mut() else { return };
        instance.ownership.assign(&[partition]);
        instance.fetch.insert(partition, Fetch::new(partition, committed));
        let name = instance.name.clone();
        self.owners.insert(partition, slot);
        self.note(format!("{name} is assigned reply/{partition} from offset {committed}"));
        self.recover(slot, &[partition]).await;
    }

    /// Recovery of newly assigned partitions, retried until it succeeds (as the real consumer does), unless
    /// the instance dies trying.
    async fn recover(&mut self, slot: usize, partitions: &[i32]) {
        for _ in 0..100 {
            let Some(instance) = self.orchestrators[slot].as_ref() else { return };
            let (engine, point, name) = (instance.engine.clone(), Arc::clone(&instance.faults), instance.name.clone());
            self.maybe_arm(&point);
            let result = engine.recover(partitions).await;
            let hit = point.disarm();
            self.count_hit(hit);
            match result {
                Ok(flushed) => {
                    self.note(format!("{name} recovers {partitions:?}: {flushed} sagas flushed{}", struck(hit)));
                    return;
                }
                Err(error) => {
                    self.note(format!("{name} recovery of {partitions:?} fails: {error}{}", struck(hit)));
                    if hit.is_some() && self.chance(self.config.faults.crash_after_fault) {
                        self.crash_orchestrator(slot, "after its recovery failed");
                        return;
                    }
                }
            }
        }
        self.violate("recovery", None, format!("{} could not recover {partitions:?}", self.name(slot)));
    }

    /// The instance dies: everything in its memory is gone; its partitions wait for the group.
    pub(super) fn crash_orchestrator(&mut self, slot: usize, why: &str) {
        let Some(instance) = self.orchestrators[slot].take() else { return };
        self.stalls.remove(&slot);
        let orphaned: Vec<i32> = self.owners.iter().filter(|(_, s)| **s == slot).map(|(p, _)| *p).collect();
        for partition in &orphaned {
            self.owners.remove(partition);
        }
        self.count("orchestrator.crash");
        self.note(format!("{} crashes {why}; reply partitions {orphaned:?} wait for the group", instance.name));
    }

    /// The instance stalls past its session timeout, holding the message it was processing (and what it
    /// read for it); the group gives its partitions to the other members.
    pub(super) async fn stall(&mut self, slot: usize) {
        if self.stalls.contains_key(&slot) || !self.live_slots().iter().any(|s| *s != slot) {
            return;
        }
        let now = self.now();
        let Some(instance) = self.orchestrators[slot].as_mut() else { return };
        let mut busy: Vec<i32> = instance
            .fetch
            .iter()
            .filter(|(_, f)| f.has_work(&self.ports.kafka, topics::REPLY, now))
            .map(|(p, _)| *p)
            .collect();
        busy.sort_unstable();
        let mut delivery = None;
        if let Some(&partition) = self.rng.pick(&busy)
            && let Some(fetch) = instance.fetch.get_mut(&partition)
            && let Fetched::Deliver(held) = fetch.next(&self.ports.kafka, topics::REPLY, now, &mut self.rng, None)
        {
            delivery = Some((partition, held));
        }
        instance.fetch.clear();
        let name = instance.name.clone();
        let read = match &delivery {
            Some((_, d)) => {
                orchestrator::store::SagaStore::get(&*self.ports.store, d.record.saga_id).await.ok().flatten()
            }
            None => None,
        };
        let held =
            delivery.as_ref().map(|(p, d)| format!("reply/{p}@{}", d.offset)).unwrap_or_else(|| "nothing".to_owned());
        self.owners.retain(|_, s| *s != slot);
        self.stalls.insert(slot, Stall { delivery, read });
        self.count("orchestrator.stall");
        self.note(format!("{name} stalls past its session timeout holding {held}; the group moves its partitions"));
        self.rebalance().await;
    }

    /// The stalled instance wakes: it applies the message it held, on what it read before stalling (a
    /// zombie write, fenced by the saga's version if someone wrote since), then polls, learns that its
    /// partitions were revoked, and rejoins the group.
    pub(super) async fn wake(&mut self, slot: usize) {
        let Some(stall) = self.stalls.remove(&slot) else { return };
        let Some(instance) = self.orchestrators[slot].as_ref() else { return };
        let name = instance.name.clone();
        if let Some((partition, delivery)) = stall.delivery {
            if let Some(read) = stall.read {
                instance.store.read_earlier(read);
            }
            self.note(format!("{name} wakes and applies the message it held"));
            self.apply(slot, partition, delivery, true).await;
        }
        let Some(instance) = self.orchestrators[slot].as_mut() else { return };
        instance.store.forget_earlier_reads();
        let owned = instance.ownership.partitions();
        instance.ownership.revoke(&owned);
        instance.deadlines.forget(&owned);
        instance.engine.cache().forget(&owned);
        instance.engine.unsettled().forget(&owned);
        instance.fetch.clear();
        self.note(format!("{name} learns reply partitions {owned:?} were revoked, and rejoins"));
        self.rebalance().await;
    }

    /// Runs the timer of every instance whose interval passed (of every instance, with `force`). Returns
    /// how many messages the timers published.
    pub(super) async fn scan_timers(&mut self, force: bool) -> usize {
        let mut published = 0;
        for slot in 0..self.orchestrators.len() {
            let now = self.now();
            let Some(instance) = self.orchestrators[slot].as_mut() else { continue };
            if !force && (now - instance.last_scan).to_std().unwrap_or_default() < TIMER.interval {
                continue;
            }
            instance.last_scan = now;
            let point = Arc::clone(&instance.faults);
            self.maybe_arm(&point);
            let Some(instance) = self.orchestrators[slot].as_mut() else { continue };
            let result = instance.timer.scan().await;
            let name = instance.name.clone();
            let hit = point.disarm();
            self.count_hit(hit);
            match result {
                Ok(0) => {}
                Ok(count) => {
                    published += count;
                    self.note(format!("{name} timer publishes {count} messages{}", struck(hit)));
                }
                Err(error) => {
                    self.note(format!("{name} timer fails: {error}{}", struck(hit)));
                    if hit.is_some() && self.chance(self.config.faults.crash_after_fault) {
                        self.crash_orchestrator(slot, "after its timer failed");
                    }
                }
            }
        }
        published
    }

    /// Every running instance that is not stalled settles the sagas due (all of them, with `force`), as
    /// its consumer does between messages. Returns how many were settled.
    pub(super) async fn settle_sagas(&mut self, force: bool) -> usize {
        let mut settled = 0;
        for slot in self.live_slots() {
            let now = if force { chrono::DateTime::<chrono::Utc>::MAX_UTC } else { self.now() };
            let Some(instance) = self.orchestrators[slot].as_ref() else { continue };
            if instance.engine.unsettled().next_due().is_none_or(|due| due > now) {
                continue;
            }
            let (engine, point, name) = (instance.engine.clone(), Arc::clone(&instance.faults), instance.name.clone());
            self.maybe_arm(&point);
            let count = engine.settle_due(now).await;
            let hit = point.disarm();
            self.count_hit(hit);
            settled += count;
            self.note(format!("{name} settles {count} sagas{}", struck(hit)));
            if hit.is_some() && self.chance(self.config.faults.crash_after_fault) {
                self.crash_orchestrator(slot, "after settling failed");
            }
        }
        settled
    }

    /// The (slot, partition) pairs with a message to deliver.
    pub(super) fn orchestrator_work(&self) -> Vec<(usize, i32)> {
        let now = self.now();
        let mut work = Vec::new();
        for (slot, instance) in self.orchestrators.iter().enumerate() {
            let Some(instance) = instance else { continue };
            for (partition, fetch) in &instance.fetch {
                if fetch.has_work(&self.ports.kafka, topics::REPLY, now) {
                    work.push((slot, *partition));
                }
            }
        }
        work
    }

    /// Makes every held message of every consumer deliverable.
    pub(super) fn release_messages(&mut self) {
        for instance in self.orchestrators.iter_mut().flatten() {
            instance.fetch.values_mut().for_each(Fetch::release_all);
        }
        for node in &mut self.nodes {
            node.fetch.values_mut().for_each(Fetch::release_all);
        }
    }

    /// The instance's consumer takes the next message of the partition (with the delivery faults) and
    /// applies it.
    pub(super) async fn deliver_reply(&mut self, slot: usize, partition: i32) {
        let now = self.now();
        let rates = self.faults_on.then(|| self.config.faults.clone());
        let Some(instance) = self.orchestrators[slot].as_mut() else { return };
        let name = instance.name.clone();
        let Some(fetch) = instance.fetch.get_mut(&partition) else { return };
        match fetch.next(&self.ports.kafka, topics::REPLY, now, &mut self.rng, rates.as_ref()) {
            Fetched::Idle => {}
            Fetched::Dropped(offset) => {
                fetch.processed();
                self.count("delivery.dropped");
                self.note(format!("{name} loses reply/{partition}@{offset}"));
            }
            Fetched::Held(offset, why) => {
                if why == "delayed" {
                    self.count("delivery.delayed");
                }
                self.note(format!("{name} holds back reply/{partition}@{offset} ({why})"));
            }
            Fetched::Deliver(delivery) => {
                // A duplicate or a reordered message counts when it reaches the consumer.
                if let Some(how @ ("duplicate" | "reordered")) = delivery.how {
                    self.count(format!("delivery.{how}"));
                }
                self.apply(slot, partition, delivery, false).await;
            }
        }
    }

    /// Applies one message with the instance's engine. `zombie`: the instance no longer owns the partition
    /// (it stalled); it gets one more try after a transient failure, then gives up, as it would on its next
    /// poll.
    async fn apply(&mut self, slot: usize, partition: i32, delivery: Delivery, zombie: bool) {
        let message = match Message::decode(&delivery.record.bytes) {
            Ok(message) => message,
            Err(error) => {
                let detail = format!("reply/{partition}@{} does not decode: {error}", delivery.offset);
                return self.violate("no dead letters", Some(delivery.record.saga_id), detail);
            }
        };
        let origin = Origin {
            topic: topics::REPLY.to_owned(),
            partition,
            offset: i64::try_from(delivery.offset).unwrap_or(i64::MAX),
        };
        let saga = self.saga_name(message.meta.saga_id);
        let how = delivery.how.map(|h| format!(" ({h})")).unwrap_or_default();
        let what = format!("reply/{partition}@{}{how} {saga} {}", delivery.offset, describe(&message));
        for attempt in 0..if zombie { 2 } else { 1 } {
            let Some(instance) = self.orchestrators[slot].as_ref() else { return };
            let (engine, point, name) = (instance.engine.clone(), Arc::clone(&instance.faults), instance.name.clone());
            self.maybe_arm(&point);
            let result = engine.handle(&message, &origin).await;
            let hit = point.disarm();
            self.count_hit(hit);
            let retry = if attempt > 0 { " again" } else { "" };
            match result {
                Ok(Outcome::NotForOrchestrator) => {
                    return self.violate(
                        "no dead letters",
                        Some(message.meta.saga_id),
                        format!("{what} would be dead-lettered"),
                    );
                }
                Ok(outcome) => {
                    self.note(format!("{name} applies{retry} {what}: {}", outcome_text(&outcome)));
                    if let Some(fetch) = self.fetch_of(slot, partition) {
                        fetch.processed();
                    }
                    return;
                }
                Err(error) if error.is_transient() => {
                    self.note(format!("{name} fails{retry} to apply {what}: {error}{}", struck(hit)));
                    if hit.is_some() && self.chance(self.config.faults.crash_after_fault) {
                        return self.crash_orchestrator(slot, "after a failed write");
                    }
                    if let Some(fetch) = self.fetch_of(slot, partition) {
                        fetch.failed(delivery.clone());
                    }
                }
                Err(error) => {
                    let detail = format!("{what} would be dead-lettered: {error}");
                    return self.violate("no dead letters", Some(message.meta.saga_id), detail);
                }
            }
        }
    }

    fn fetch_of(&mut self, slot: usize, partition: i32) -> Option<&mut Fetch> {
        self.orchestrators[slot].as_mut()?.fetch.get_mut(&partition)
    }

    pub(super) fn count_hit(&mut self, hit: Option<Hit>) {
        if let Some(hit) = hit {
            self.count(format!("fault.{}.{:?}", hit.operation, hit.fault));
        }
    }
}
