//! One seed's world: the shared stores and cluster, two orchestrator slots, the three participants, the
//! customers placing orders through the real API and an operator using the admin API, all on one manual
//! clock and driven by one seeded [`Rng`]. The scheduler (in [`run`]) advances the clock, lets the timers
//! and consumers' commits happen when due, draws the fault events of the step, and does one unit of work:
//! place an order, or deliver one message to one consumer.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use orchestrator::clock::{Clock, ManualClock};
use orchestrator::definitions::Definitions;
use orchestrator::metrics::Metrics;
use orchestrator::store::memory::MemoryStore;
use prometheus_client::registry::Registry;
use proto_events::{Participant, topics};
use uuid::Uuid;

use crate::checks::Violation;
use crate::config::SimConfig;
use crate::faults::{Fault, FaultPoint};
use crate::kafka::Kafka;
use crate::processes::{Instance, Node, ParticipantStores, Ports};
use crate::rng::Rng;
use crate::trace::Trace;

mod clients;
mod instances;
mod nodes;
mod run;

pub use self::clients::Order;
pub use self::run::{Failure, SeedReport};

/// How long every step waits for its reply (the production default, `SAGA_STEP_TIMEOUT_MS`).
pub const STEP_TIMEOUT: Duration = Duration::from_secs(10);

/// Where the clock starts: 2026-01-01T00:00:00Z.
pub fn epoch() -> DateTime<Utc> {
    DateTime::from_timestamp(1_767_225_600, 0).unwrap_or(DateTime::UNIX_EPOCH)
}

/// An orchestrator instance that stalled past its session timeout: the group gave its partitions to the
/// other instance, but it still holds the message it was processing, and what it read for it.
#[derive(Debug)]
pub struct Stall {
    /// The message in hand (none if it had nothing to process).
    pub delivery: Option<(i32, crate::consumer::Delivery)>,
    /// The saga as the instance read it before stalling.
    pub read: Option<orchestrator::model::SagaRecord>,
}

/// One seed's world.
#[derive(Debug)]
pub struct World {
    seed: u64,
    config: SimConfig,
    rng: Rng,
    /// Off in the fault-free phase.
    faults_on: bool,
    ports: Ports,
    /// Orchestrator processes by slot (`None` while crashed).
    orchestrators: Vec<Option<Instance>>,
    /// Starts per slot, for names.
    incarnations: Vec<u32>,
    /// Slots whose instance has stalled, with what it holds.
    stalls: BTreeMap<usize, Stall>,
    /// The group's assignment of `saga.reply` partitions to live slots.
    owners: BTreeMap<i32, usize>,
    /// Committed offsets of every consumer group, by topic and partition.
    committed: BTreeMap<(&'static str, i32), usize>,
    api: clients::Api,
    nodes: Vec<Node>,
    stores: ParticipantStores,
    seeded: BTreeMap<String, i64>,
    orders: Vec<Order>,
    /// Versions the operator has seen, per saga.
    seen: BTreeMap<Uuid, Vec<u64>>,
    /// Charges captured and shipments created, per saga, as the participants answered.
    fresh: BTreeMap<(Uuid, &'static str), u32>,
    stats: BTreeMap<String, u64>,
    trace: Trace,
    violation: Option<Violation>,
    steps: u64,
}

impl World {
    /// The world of `seed`: stock seeded, orders planned, two orchestrator instances owning the partitions,
    /// the participants about to start. With `echo`, the trace is printed as it is written.
    pub async fn new(seed: u64, config: &SimConfig, echo: bool) -> Self {
        let mut rng = Rng::new(seed);
        let clock = Arc::new(ManualClock::new(epoch()));
        let kafka = Arc::new(Kafka::new(config.reply_partitions, config.command_partitions));
        let definitions = Arc::new(Definitions::builtin(STEP_TIMEOUT).expect("the built-in definitions are valid"));
        let metrics = Arc::new(Metrics::register(&mut Registry::default()));
        // One seed in four settles every transition at once; the others defer as production does.
        let settle_after =
            if seed.is_multiple_of(4) { std::time::Duration::ZERO } else { orchestrator::settle::DEFAULT_SETTLE_AFTER };
        let store = Arc::new(MemoryStore::with_clock(clock.clone()));
        let ports = Ports { store, kafka, clock, definitions, metrics, settle_after };
        let api = clients::Api::new(&ports, config.reply_partitions);
        let stores = ParticipantStores::default();
        let seeded = nodes::seed_stock(&stores, &ports.clock, &mut rng, config.skus).await;
        let orders = clients::plan_orders(&mut rng, config);
        let now = epoch();
        let nodes = Participant::ALL.iter().map(|p| Node::new(*p, now)).collect();
        let mut world = Self {
            seed,
            config: config.clone(),
            rng,
            faults_on: true,
            ports,
            orchestrators: vec![None, None],
            incarnations: vec![0, 0],
            stalls: BTreeMap::new(),
            owners: BTreeMap::new(),
            committed: BTreeMap::new(),
            api,
            nodes,
            stores,
            seeded,
            orders,
            seen: BTreeMap::new(),
            fresh: BTreeMap::new(),
            stats: BTreeMap::new(),
            trace: Trace::new(now, echo),
            violation: None,
            steps: 0,
        };
        world.note(format!("seed {seed}: stock {:?}, {} orders", world.seeded, world.orders.len()));
        for slot in 0..world.orchestrators.len() {
            world.start_orchestrator(slot);
        }
        world.rebalance().await;
        world
    }

    fn now(&self) -> DateTime<Utc> {
        self.ports.clock.now()
    }

    fn advance(&mut self, millis: u64) {
        self.ports.clock.advance(TimeDelta::milliseconds(i64::try_from(millis).unwrap_or(i64::MAX)));
    }

    /// Records a line of the trace.
    fn note(&mut self, text: impl AsRef<str>) {
        let now = self.now();
        self.trace.line(now, text.as_ref());
    }

    /// Counts an event for the campaign's statistics.
    fn count(&mut self, key: impl Into<String>) {
        *self.stats.entry(key.into()).or_insert(0) += 1;
    }

    /// Records the first violated invariant (the scheduler stops at the end of the step).
    fn violate(&mut self, invariant: &'static str, saga: Option<Uuid>, detail: impl Into<String>) {
        let violation = Violation::new(invariant, saga, detail);
        self.note(format!("VIOLATION {}: {}", violation.invariant, violation.detail));
        self.violation.get_or_insert(violation);
    }

    /// `saga#n`, the saga's name in the trace.
    fn saga_name(&mut self, id: Uuid) -> String {
        format!("saga#{}", self.trace.saga(id))
    }

    /// Whether a fault with this rate strikes now (never in the fault-free phase).
    fn chance(&mut self, per_10k: u32) -> bool {
        self.faults_on && self.rng.chance(per_10k)
    }

    /// With the orchestrator fault rate, arms `point`: one of the next few store or bus operations fails.
    fn maybe_arm(&mut self, point: &FaultPoint) {
        if self.chance(self.config.faults.orchestrator_fault) {
            let pass = u32::try_from(self.rng.below(7)).unwrap_or(0);
            let fault = *self.rng.pick(&Fault::ALL).unwrap_or(&Fault::FailBefore);
            point.arm(pass, fault);
        }
    }

    /// Commits the stored offsets of every consumer whose commit interval passed.
    fn commit_due(&mut self) {
        let now = self.now();
        let due = |last: DateTime<Utc>| (now - last).num_milliseconds() >= crate::processes::COMMIT_INTERVAL_MS;
        for instance in self.orchestrators.iter_mut().flatten().filter(|i| due(i.last_commit)) {
            instance.last_commit = now;
            for (partition, fetch) in &instance.fetch {
                self.committed.insert((topics::REPLY, *partition), fetch.stored());
            }
        }
        for node in self.nodes.iter_mut().filter(|n| n.running.is_some() && due(n.last_commit)) {
            node.last_commit = now;
            for (partition, fetch) in &node.fetch {
                self.committed.insert((node.participant.command_topic(), *partition), fetch.stored());
            }
        }
    }

    fn committed(&self, topic: &'static str, partition: i32) -> usize {
        self.committed.get(&(topic, partition)).copied().unwrap_or(0)
    }
}
