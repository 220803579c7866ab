//! The simulated processes. An orchestrator [`Instance`] is the real [`Engine`], [`Deadlines`],
//! [`Ownership`] and [`Timer`] over the instance's own fault-injecting views of the shared saga store and
//! cluster, plus its consumer's fetch state; a crash drops all of it. A participant [`Node`] is the real
//! runtime's [`Processor`] over the real domain, opened on the participant's durable in-memory store; a
//! crash drops the domain (the inventory's stock cache with it) and its fetch state.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use orchestrator::bus::Bus;
use orchestrator::clock::ManualClock;
use orchestrator::consumer::Ownership;
use orchestrator::definitions::Definitions;
use orchestrator::engine::Engine;
use orchestrator::metrics::Metrics;
use orchestrator::store::SagaStore;
use orchestrator::store::memory::MemoryStore;
use orchestrator::timers::{Deadlines, Timer, TimerSettings};
use participants::domain::Domain;
use participants::inventory::{Inventory, MemoryStockStore};
use participants::payment::{MemoryPaymentStore, PaymentSettings, Payments};
use participants::runtime::{Processor, RuntimeSettings, Verdict};
use participants::shipping::{MemoryShipmentStore, Shipping, ShippingSettings};
use prometheus_client::registry::Registry;
use proto_events::Participant;
use tokio_util::sync::CancellationToken;

use crate::consumer::Fetch;
use crate::faults::FaultPoint;
use crate::kafka::{Kafka, SimBus};
use crate::stores::{FaultyStore, Shared};

/// The orchestrator's timer settings (the production defaults).
pub const TIMER: TimerSettings = TimerSettings {
    interval: Duration::from_millis(200),
    start_grace: Duration::from_secs(5),
    start_sweep_every: Duration::from_secs(60),
    refire_after: Duration::from_secs(5),
};

/// How often consumers commit their stored offsets (librdkafka's `auto.commit.interval.ms`).
pub const COMMIT_INTERVAL_MS: i64 = 5_000;

/// What every orchestrator instance shares: the database, the cluster, the time, the definitions.
#[derive(Debug, Clone)]
pub struct Ports {
    /// The saga database.
    pub store: Arc<MemoryStore>,
    /// The cluster.
    pub kafka: Arc<Kafka>,
    /// The time.
    pub clock: Arc<ManualClock>,
    /// The saga definitions.
    pub definitions: Arc<Definitions>,
    /// Metrics (counted, not read).
    pub metrics: Arc<Metrics>,
    /// How long the engines defer settling a saga (the production default, or zero for some seeds).
    pub settle_after: Duration,
}

/// An orchestrator process.
#[derive(Debug)]
pub struct Instance {
    /// Its name in the trace (`orch-a#2`: slot and incarnation).
    pub name: String,
    /// The real engine.
    pub engine: Engine,
    /// Its in-memory deadlines.
    pub deadlines: Arc<Deadlines>,
    /// The partitions it believes it owns.
    pub ownership: Arc<Ownership>,
    /// The real timer.
    pub timer: Timer,
    /// Armed by the scheduler before a call; shared by its store and bus views.
    pub faults: Arc<FaultPoint>,
    /// Its view of the saga store.
    pub store: Arc<FaultyStore>,
    /// The partitions of `saga.reply` it consumes.
    pub fetch: BTreeMap<i32, Fetch>,
    /// When its timer last looked at the deadlines.
    pub last_scan: DateTime<Utc>,
    /// When it last committed its stored offsets.
    pub last_commit: DateTime<Utc>,
}

impl Instance {
    /// A freshly started instance that owns nothing yet.
    pub fn start(name: String, ports: &Ports) -> Self {
        let faults = Arc::new(FaultPoint::default());
        let store = Arc::new(FaultyStore::new(Arc::clone(&ports.store), Arc::clone(&faults)));
        let bus: Arc<dyn Bus> = Arc::new(SimBus::new(Arc::clone(&ports.kafka), Arc::clone(&faults)));
        let deadlines = Arc::new(Deadlines::default());
        let ownership = Arc::new(Ownership::default());
        let engine = Engine::new(
            store.clone(),
            Arc::clone(&bus),
            ports.clock.clone(),
            Arc::clone(&ports.definitions),
            Arc::clone(&ports.metrics),
            Arc::clone(&deadlines),
        )
        .with_settle_after(ports.settle_after);
        let saga_store: Arc<dyn SagaStore> = store.clone();
        let timer =
            Timer::new(saga_store, bus, ports.clock.clone(), Arc::clone(&ownership), Arc::clone(&deadlines), TIMER);
        let now = orchestrator::clock::Clock::now(&*ports.clock);
        Self {
            name,
            engine,
            deadlines,
            ownership,
            timer,
            faults,
            store,
            fetch: BTreeMap::new(),
            last_scan: now,
            last_commit: now,
        }
    }
}

/// The inventory domain of the simulation.
pub type InventoryDomain = Inventory<Shared<MemoryStockStore>>;
/// The payment domain of the simulation.
pub type PaymentDomain = Payments<Shared<MemoryPaymentStore>>;
/// The shipping domain of the simulation.
pub type ShippingDomain = Shipping<Shared<MemoryShipmentStore>>;

/// A participant's runtime over its domain (the domain is kept for the inventory's cache check).
#[derive(Debug)]
pub enum Running {
    /// The inventory.
    Inventory(Processor<InventoryDomain>, Arc<InventoryDomain>),
    /// The payment service.
    Payment(Processor<PaymentDomain>),
    /// The shipping service.
    Shipping(Processor<ShippingDomain>),
}

impl Running {
    /// What the runtime does with a command's bytes: the real [`Processor::decide`].
    pub async fn decide(&self, payload: &[u8]) -> Verdict {
        let never = CancellationToken::new();
        match self {
            Running::Inventory(p, _) => p.decide(Some(payload), &never).await,
            Running::Payment(p) => p.decide(Some(payload), &never).await,
            Running::Shipping(p) => p.decide(Some(payload), &never).await,
        }
    }
}

/// The participants' durable stores.
#[derive(Debug, Clone, Default)]
pub struct ParticipantStores {
    /// The inventory's.
    pub stock: Arc<MemoryStockStore>,
    /// The payment service's.
    pub payments: Arc<MemoryPaymentStore>,
    /// The shipping service's.
    pub shipments: Arc<MemoryShipmentStore>,
}

impl ParticipantStores {
    /// The fault switch of `participant`'s store.
    pub fn faults(&self, participant: Participant) -> &participants::store::Faults {
        match participant {
            Participant::Inventory => &self.stock.faults,
            Participant::Payment => &self.payments.faults,
            Participant::Shipping => &self.shipments.faults,
        }
    }

    /// Starts `participant` over its store: opens its domain (the inventory loads its cache) and wraps it
    /// in the runtime. The runtime replies `transient` at the first store error instead of retrying
    /// with back-off in real time (the orchestrator's retries, which run on the simulated clock, take
    /// over), so one command is one attempt.
    pub async fn open(
        &self,
        participant: Participant,
        clock: &Arc<ManualClock>,
    ) -> Result<Running, participants::store::Error> {
        let settings = RuntimeSettings { give_up_after: Duration::ZERO, ..RuntimeSettings::default() };
        let metrics = participants::metrics::Metrics::register(&mut Registry::default());
        let clock: Arc<dyn participants::clock::Clock> = clock.clone();
        Ok(match participant {
            Participant::Inventory => {
                let domain = Arc::new(Inventory::open(Shared(Arc::clone(&self.stock)), clock.clone()).await?);
                Running::Inventory(processor(&domain, settings, clock, metrics), domain)
            }
            Participant::Payment => {
                let store = Shared(Arc::clone(&self.payments));
                let domain = Arc::new(Payments::open(store, PaymentSettings::default(), clock.clone()).await?);
                Running::Payment(processor(&domain, settings, clock, metrics))
            }
            Participant::Shipping => {
                let store = Shared(Arc::clone(&self.shipments));
                let domain = Arc::new(Shipping::open(store, ShippingSettings::default(), clock.clone()).await?);
                Running::Shipping(processor(&domain, settings, clock, metrics))
            }
        })
    }
}

fn processor<D: Domain>(
    domain: &Arc<D>,
    settings: RuntimeSettings,
    clock: Arc<dyn participants::clock::Clock>,
    metrics: participants::metrics::Metrics,
) -> Processor<D> {
    Processor::new(Arc::clone(domain), settings, clock, metrics)
}

/// A participant process and its consumer.
#[derive(Debug)]
pub struct Node {
    /// Which participant.
    pub participant: Participant,
    /// Its name in the trace (`payment#3`: incarnation).
    pub name: String,
    /// How many times it was started.
    pub incarnation: u32,
    /// The runtime, while the process runs.
    pub running: Option<Running>,
    /// The partitions of its command topic.
    pub fetch: BTreeMap<i32, Fetch>,
    /// While the process is down: when it comes back.
    pub down_until: Option<DateTime<Utc>>,
    /// While its database is down: when it comes back.
    pub store_down_until: Option<DateTime<Utc>>,
    /// When it last committed its stored offsets.
    pub last_commit: DateTime<Utc>,
}

impl Node {
    /// A participant that is not running yet (it starts at the next step).
    pub fn new(participant: Participant, now: DateTime<Utc>) -> Self {
        Self {
            participant,
            name: format!("{}#0", participant.name()),
            incarnation: 0,
            running: None,
            fetch: BTreeMap::new(),
            down_until: Some(now),
            store_down_until: None,
            last_commit: now,
        }
    }

    /// Its command topic.
    pub fn topic(&self) -> &'static str {
        self.participant.command_topic()
    }
}
