//! The participants' side of the world: seeding the stock, starting and crashing participant processes,
//! outages (of a process, or of its database), and delivering one command to the real runtime's
//! [`Processor`](participants::runtime::Processor): decide, publish the reply, store the offset. Faults
//! strike between those (a crash before the reply, or before the commit) and inside the domain (a store
//! write that fails, after which the runtime replies `transient` or the process dies).

use std::collections::BTreeMap;
use std::sync::Arc;

use orchestrator::clock::ManualClock;
use participants::inventory::Inventory;
use participants::metrics::Outcome;
use participants::runtime::Verdict;
use proto_events::{CommandKind, Message, topics};

use super::World;
use crate::checks::effects;
use crate::consumer::{Delivery, Fetch, Fetched};
use crate::processes::{ParticipantStores, Running};
use crate::rng::Rng;
use crate::stores::Shared;

/// What goes wrong while a participant handles one command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mishap {
    /// Nothing.
    None,
    /// The store refuses writes after this many (the runtime replies `transient`; the process lives on).
    StoreFails(u32),
    /// The process dies after this many of the command's writes.
    DiesMidCommand(u32),
    /// The process dies after the effect, before the reply is published.
    DiesBeforeReply,
    /// The process dies after the reply is published, before the offset is committed.
    DiesBeforeCommit,
}

/// Seeds `skus` SKUs with 40 to 120 units each, through the inventory (restock moves, as `PUT
/// /v1/stock/{sku}` writes them).
pub(super) async fn seed_stock(
    stores: &ParticipantStores,
    clock: &Arc<ManualClock>,
    rng: &mut Rng,
    skus: usize,
) -> BTreeMap<String, i64> {
    let inventory =
        Inventory::open(Shared(Arc::clone(&stores.stock)), clock.clone()).await.expect("the in-memory inventory opens");
    let mut seeded = BTreeMap::new();
    for n in 1..=skus {
        let (sku, units) = (format!("SKU-{n}"), i64::try_from(rng.between(40, 120)).unwrap_or(40));
        inventory.set_available(&sku, units).await.expect("seeding the in-memory inventory");
        seeded.insert(sku, units);
    }
    seeded
}

impl World {
    /// Starts every participant whose downtime is over, and heals every database whose outage is over.
    pub(super) async fn start_due_nodes(&mut self) {
        let now = self.now();
        for index in 0..self.nodes.len() {
            let participant = self.nodes[index].participant;
            if self.nodes[index].store_down_until.is_some_and(|at| at <= now) {
                self.nodes[index].store_down_until = None;
                self.stores.faults(participant).heal();
                self.note(format!("{}'s database is back", participant.name()));
            }
            let node = &self.nodes[index];
            if node.running.is_some() || node.down_until.is_none_or(|at| at > now) {
                continue;
            }
            match self.stores.open(participant, &self.ports.clock).await {
                Ok(running) => self.started(index, running),
                Err(error) => self.note(format!("{} cannot start: {error}", participant.name())),
            }
        }
    }

    fn started(&mut self, index: usize, running: Running) {
        let now = self.now();
        let partitions = self.ports.kafka.partitions(self.nodes[index].topic());
        let fetch: BTreeMap<i32, Fetch> =
            (0..partitions).map(|p| (p, Fetch::new(p, self.committed(self.nodes[index].topic(), p)))).collect();
        let node = &mut self.nodes[index];
        node.incarnation += 1;
        node.name = format!("{}#{}", node.participant.name(), node.incarnation);
        node.running = Some(running);
        node.fetch = fetch;
        node.down_until = None;
        node.last_commit = now;
        let name = node.name.clone();
        self.note(format!("{name} starts"));
    }

    /// The participant process dies (its memory, the inventory's cache included, is lost) and comes back
    /// after `down_ms`.
    pub(super) fn crash_node(&mut self, index: usize, why: &str, down_ms: u64) {
        let now = self.now();
        let node = &mut self.nodes[index];
        if node.running.take().is_none() {
            return;
        }
        node.fetch.clear();
        node.down_until = Some(now + chrono::TimeDelta::milliseconds(i64::try_from(down_ms).unwrap_or(0)));
        let name = node.name.clone();
        self.count("participant.crash");
        self.note(format!("{name} dies {why}; back in {down_ms} ms"));
    }

    /// A participant, or its database, goes down for 30 seconds to 10 minutes.
    pub(super) fn outage(&mut self) {
        let index = self.rng.index(self.nodes.len());
        let down_ms = self.rng.between(30_000, 600_000);
        if self.rng.chance(5_000) {
            self.count("participant.outage.process");
            return self.crash_node(index, "for an outage", down_ms);
        }
        let until = self.now() + chrono::TimeDelta::milliseconds(i64::try_from(down_ms).unwrap_or(0));
        let participant = self.nodes[index].participant;
        self.stores.faults(participant).go_down();
        self.nodes[index].store_down_until = Some(until);
        self.count("participant.outage.database");
        self.note(format!("{}'s database goes down for {down_ms} ms", participant.name()));
    }

    /// When the outages under way end.
    pub(super) fn outages_ending(&self) -> Vec<chrono::DateTime<chrono::Utc>> {
        self.nodes.iter().flat_map(|n| [n.down_until, n.store_down_until]).flatten().collect()
    }

    /// The (participant, partition) pairs with a command to deliver.
    pub(super) fn node_work(&self) -> Vec<(usize, i32)> {
        let now = self.now();
        let mut work = Vec::new();
        for (index, node) in self.nodes.iter().enumerate().filter(|(_, n)| n.running.is_some()) {
            for (partition, fetch) in &node.fetch {
                if fetch.has_work(&self.ports.kafka, node.topic(), now) {
                    work.push((index, *partition));
                }
            }
        }
        work
    }

    /// The participant's consumer takes the next command of the partition (with the delivery faults) and
    /// handles it.
    pub(super) async fn deliver_command(&mut self, index: usize, partition: i32) {
        let now = self.now();
        let rates = self.faults_on.then(|| self.config.faults.clone());
        let node = &mut self.nodes[index];
        let (name, topic) = (node.name.clone(), node.topic());
        let Some(fetch) = node.fetch.get_mut(&partition) else { return };
        match fetch.next(&self.ports.kafka, topic, now, &mut self.rng, rates.as_ref()) {
            Fetched::Idle => {}
            Fetched::Dropped(offset) => {
                fetch.processed();
                self.count("delivery.dropped");
                self.note(format!("{name} loses {topic}/{partition}@{offset}"));
            }
            Fetched::Held(offset, why) => {
                if why == "delayed" {
                    self.count("delivery.delayed");
                }
                self.note(format!("{name} holds back {topic}/{partition}@{offset} ({why})"));
            }
            Fetched::Deliver(delivery) => {
                // A duplicate or a reordered message counts when it reaches the consumer.
                if let Some(how @ ("duplicate" | "reordered")) = delivery.how {
                    self.count(format!("delivery.{how}"));
                }
                self.handle_command(index, partition, delivery).await;
            }
        }
    }

    fn mishap(&mut self, index: usize) -> Mishap {
        if self.nodes[index].store_down_until.is_some() {
            return Mishap::None;
        }
        let writes = u32::try_from(self.rng.below(4)).unwrap_or(0);
        if self.chance(self.config.faults.participant_crash) {
            return match self.rng.below(3) {
                0 => Mishap::DiesMidCommand(writes),
                1 => Mishap::DiesBeforeReply,
                _ => Mishap::DiesBeforeCommit,
            };
        }
        if self.chance(self.config.faults.participant_fault) { Mishap::StoreFails(writes) } else { Mishap::None }
    }

    async fn handle_command(&mut self, index: usize, partition: i32, delivery: Delivery) {
        let participant = self.nodes[index].participant;
        let mishap = self.mishap(index);
        let stores = self.stores.clone();
        if let Mishap::StoreFails(writes) | Mishap::DiesMidCommand(writes) = mishap {
            stores.faults(participant).fail_after_writes(writes);
        }
        let Some(running) = self.nodes[index].running.as_ref() else { return };
        let verdict = running.decide(&delivery.record.bytes).await;
        if matches!(mishap, Mishap::StoreFails(_) | Mishap::DiesMidCommand(_)) {
            stores.faults(participant).heal();
        }
        let (name, topic) = (self.nodes[index].name.clone(), self.nodes[index].topic());
        let how = delivery.how.map(|h| format!(" ({h})")).unwrap_or_default();
        let at = format!("{name} {topic}/{partition}@{}{how}", delivery.offset);
        let kind = match &verdict {
            Verdict::Reply { command, .. } => Some(*command),
            _ => None,
        };
        match verdict {
            Verdict::Reply { reply, command, outcome } => {
                self.replied(index, partition, &at, &reply, command, outcome, mishap)
            }
            Verdict::DeadLetter { error, .. } => {
                self.violate("no dead letters", Some(delivery.record.saga_id), format!("{at} dead-letters: {error}"));
            }
            Verdict::Interrupted => {
                self.violate("no dead letters", Some(delivery.record.saga_id), format!("{at} was interrupted"))
            }
        }
        // Only a reserve takes stock (its intent, then its moves), so only a reserve can take it below zero.
        if matches!(kind, Some(CommandKind::InventoryReserve))
            && let Err(detail) = effects::never_negative(&self.stores.stock)
        {
            self.violate("stock never below zero", Some(delivery.record.saga_id), detail);
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn replied(
        &mut self,
        index: usize,
        partition: i32,
        at: &str,
        reply: &Message,
        command: CommandKind,
        outcome: Outcome,
        mishap: Mishap,
    ) {
        let saga_id = reply.meta.saga_id;
        let saga = self.saga_name(saga_id);
        let what =
            format!("{at} {saga} {} s{}a{}: {outcome:?}", command.message_type(), reply.meta.step, reply.meta.attempt);
        let captures = matches!(command, CommandKind::PaymentCharge | CommandKind::ShippingCreate);
        if outcome == Outcome::succeeded && captures {
            *self.fresh.entry((saga_id, command.message_type())).or_insert(0) += 1;
        }
        match mishap {
            Mishap::DiesMidCommand(writes) => {
                self.note(format!("{what}, but the process dies after {writes} writes"));
                let down = self.rng.between(0, 3_000);
                return self.crash_node(index, "mid-command", down);
            }
            Mishap::DiesBeforeReply => {
                self.note(format!("{what}, but the process dies before replying"));
                let down = self.rng.between(0, 3_000);
                return self.crash_node(index, "before replying", down);
            }
            _ => {}
        }
        self.ports.kafka.append(topics::REPLY, reply);
        if self.chance(self.config.faults.duplicate) {
            // The producer did not hear the broker's acknowledgement and sent it again.
            self.ports.kafka.append(topics::REPLY, reply);
            self.count("delivery.reply_published_twice");
        }
        if let Some(fetch) = self.nodes[index].fetch.get_mut(&partition) {
            fetch.processed();
        }
        self.note(what);
        if mishap == Mishap::DiesBeforeCommit {
            let down = self.rng.between(0, 3_000);
            self.crash_node(index, "before committing", down);
        }
    }
}
