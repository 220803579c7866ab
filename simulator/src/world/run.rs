//! The scheduler: a fault phase, in which every step advances the clock, lets due timers and commits
//! happen, draws the step's fault events and does one unit of work (place an order, or deliver one message
//! to one consumer, chosen at random among those with work); then a fault-free phase that runs until
//! quiescence (no message in flight, no deadline pending, every saga finished and flushed) within a step
//! bound; then the checks. The report carries the trace's digest, the outcomes and the first violation.

use std::collections::BTreeMap;

use orchestrator::model::LogEntry;
use orchestrator::store::SagaStore;
use saga_defs::Phase;

use super::World;
use crate::checks::{self, Evidence, Violation};
use crate::processes::Running;

/// Consecutive times the fault-free phase may find nothing to do but wait before it gives up: a saga
/// still running then has nothing left that would move it.
const IDLE_LIMIT: u32 = 100;

/// How one seed went.
#[derive(Debug, Clone)]
pub struct SeedReport {
    /// The seed.
    pub seed: u64,
    /// Sagas run.
    pub sagas: usize,
    /// Scheduler steps.
    pub steps: u64,
    /// Digest of the trace: two runs of a seed must agree on it.
    pub digest: u64,
    /// Sagas by final status (`COMPLETED`, `CANCELLED`, `FAILED`, `RESOLVED`, or the state they were left in).
    pub outcomes: BTreeMap<String, u64>,
    /// Faults injected and events, by kind.
    pub stats: BTreeMap<String, u64>,
    /// The first violated invariant, if any.
    pub failure: Option<Failure>,
}

/// A violated invariant, with what explains it.
#[derive(Debug, Clone)]
pub struct Failure {
    /// The invariant and what was found.
    pub violation: Violation,
    /// The saga's name and id, if it is about one.
    pub saga: Option<String>,
    /// That saga's timeline.
    pub timeline: Vec<String>,
    /// The last lines of the trace.
    pub tail: Vec<String>,
}

fn entry_line(entry: &LogEntry) -> String {
    let at = match (entry.step, entry.attempt) {
        (Some(step), Some(attempt)) => format!(" s{step}a{attempt}"),
        _ => String::new(),
    };
    let received = entry.received.as_ref().map_or_else(String::new, |r| {
        let outcome = r.outcome.as_deref().map(|o| format!(" {o}")).unwrap_or_default();
        format!(" <- {} s{}a{} at {}/{}@{}{outcome}", r.message_type, r.step, r.attempt, r.topic, r.partition, r.offset)
    });
    let sent: Vec<String> =
        entry.sent.iter().map(|s| format!("{} s{}a{}", s.message_type, s.step, s.attempt)).collect();
    let sent = if sent.is_empty() { String::new() } else { format!(" -> [{}]", sent.join(", ")) };
    let note = entry.note.as_deref().map(|n| format!(" // {n}")).unwrap_or_default();
    format!(
        "{:>3} {} {:?} {} -> {}{at}{received}{sent}{note}",
        entry.seq,
        entry.at.format("%T%.3f"),
        entry.kind,
        entry.from,
        entry.to
    )
}

fn outcome_name(phase: Phase) -> &'static str {
    match phase {
        Phase::Completed => "COMPLETED",
        Phase::Compensated => "CANCELLED",
        other => other.name(),
    }
}

impl World {
    /// Runs the seed to the end and reports.
    pub async fn run(mut self) -> SeedReport {
        self.fault_phase().await;
        if self.violation.is_none() {
            self.quiesce().await;
        }
        if self.violation.is_none() {
            self.final_checks().await;
        }
        self.report().await
    }

    async fn fault_phase(&mut self) {
        let steps = self.config.sagas * self.config.fault_steps_per_saga;
        let window = steps / 4;
        for step in 0..steps {
            if self.violation.is_some() {
                return;
            }
            self.steps += 1;
            self.tick().await;
            self.events().await;
            self.work(step, window).await;
        }
    }

    /// Time passes; what is due happens. A message takes a few milliseconds; when no consumer has anything
    /// to do (or the clock jumps, as when a process pauses), time moves on by up to fifteen seconds, so
    /// that time-outs and back-offs fire, also while replies are on their way.
    async fn tick(&mut self) {
        let idle = self.orchestrator_work().is_empty() && self.node_work().is_empty();
        let millis = if idle || self.chance(self.config.faults.clock_jump) {
            self.rng.between(500, 15_000)
        } else {
            self.rng.between(0, 20)
        };
        self.advance(millis);
        self.start_due_nodes().await;
        self.commit_due();
        self.scan_timers(false).await;
        self.settle_sagas(false).await;
    }

    /// The step's fault events, each drawn on its own.
    async fn events(&mut self) {
        let rates = self.config.faults.clone();
        if self.chance(rates.orchestrator_crash)
            && let Some(&slot) = self.rng.pick(&self.live_slots())
        {
            self.crash_orchestrator(slot, "at random");
        }
        for slot in 0..self.orchestrators.len() {
            if self.orchestrators[slot].is_none() && self.rng.chance(300) {
                self.start_orchestrator(slot);
                self.rebalance().await;
            }
            if self.stalls.contains_key(&slot) && self.rng.chance(300) {
                self.wake(slot).await;
            }
        }
        let orphans = usize::try_from(self.config.reply_partitions).unwrap_or(0) > self.owners.len();
        if orphans && self.rng.chance(500) {
            // The crashed member's session timed out.
            self.rebalance().await;
        }
        if self.chance(rates.rebalance) {
            self.move_one_partition().await;
        }
        if self.chance(rates.stall)
            && let Some(&slot) = self.rng.pick(&self.live_slots())
        {
            self.stall(slot).await;
        }
        if self.chance(rates.participant_outage) {
            self.outage();
        }
        if self.chance(rates.operator) {
            self.operate().await;
        }
    }

    /// One unit of work: place orders (spread over the first quarter of the fault phase, sometimes several
    /// at once, so that many sagas run side by side), or deliver one message.
    async fn work(&mut self, step: usize, window: usize) {
        let unplaced = self.unplaced();
        let left = u64::try_from(window.saturating_sub(step).max(1)).unwrap_or(1);
        let place = !unplaced.is_empty() && (step >= window || self.rng.below(left) < unplaced.len() as u64);
        if !place {
            self.deliver_any().await;
            return;
        }
        let burst = if self.rng.chance(2_000) { self.rng.between(2, 8) } else { 1 };
        for index in unplaced.into_iter().take(usize::try_from(burst).unwrap_or(1)) {
            self.place_order(index).await;
        }
    }

    /// Delivers one message to a consumer chosen at random among those with one; false if none has.
    async fn deliver_any(&mut self) -> bool {
        let orchestrators = self.orchestrator_work();
        let nodes = self.node_work();
        let choice = self.rng.index(orchestrators.len() + nodes.len());
        if let Some(&(slot, partition)) = orchestrators.get(choice) {
            self.deliver_reply(slot, partition).await;
        } else if let Some(&(index, partition)) = nodes.get(choice - orchestrators.len()) {
            self.deliver_command(index, partition).await;
        } else {
            return false;
        }
        true
    }

    /// The fault-free phase: no new fault strikes; every stalled instance wakes, every crashed process
    /// restarts, every held message is released, every order is placed (outages that began end when they
    /// were to end); then messages are delivered and time moves on to the next deadline until nothing is
    /// left to do.
    async fn quiesce(&mut self) {
        self.faults_on = false;
        self.note("fault-free phase");
        for slot in 0..self.orchestrators.len() {
            self.wake(slot).await;
            if self.orchestrators[slot].is_none() {
                self.start_orchestrator(slot);
            }
        }
        self.rebalance().await;
        self.release_messages();
        while let Some(&index) = self.unplaced().first() {
            if self.violation.is_some() || self.orders[index].attempts > 100 {
                return;
            }
            self.place_order(index).await;
        }
        self.settle().await;
    }

    async fn settle(&mut self) {
        let mut idle = 0;
        for _ in 0..self.config.quiescence_step_limit {
            self.steps += 1;
            self.start_due_nodes().await;
            self.commit_due();
            if self.violation.is_some() {
                return;
            }
            if self.deliver_any().await {
                idle = 0;
                continue;
            }
            if self.scan_timers(true).await > 0 || self.settle_sagas(true).await > 0 {
                continue;
            }
            let sagas = self.ports.store.all();
            let outages = self.outages_ending();
            let done = sagas.iter().all(|s| s.state.phase.is_terminal() && !s.has_pending());
            if (done && outages.is_empty()) || idle >= IDLE_LIMIT {
                return;
            }
            idle += 1;
            // Wait for the next deadline of a running saga or the end of an outage (or for the start sweep
            // and timer refires).
            let now = self.now();
            let deadlines = sagas.iter().filter(|s| !s.state.phase.is_terminal()).filter_map(|s| s.state.deadline);
            let next = deadlines.map(|d| d.at).chain(outages).filter(|at| *at > now).min();
            let wait = next.map_or(5_000, |at| u64::try_from((at - now).num_milliseconds()).unwrap_or(0));
            self.advance(wait.min(60_000) + 1);
        }
        let limit = self.config.quiescence_step_limit;
        self.violate("quiescence", None, format!("the fault-free phase did not settle within {limit} steps"));
    }

    async fn final_checks(&mut self) {
        if let Some(&index) = self.unplaced().first() {
            let key = self.orders[index].key.clone();
            return self.violate("api", None, format!("{key} was never acknowledged"));
        }
        let cache = match self.nodes.first().and_then(|n| n.running.as_ref()) {
            Some(Running::Inventory(_, inventory)) => inventory.all_available().await.unwrap_or_default(),
            _ => Default::default(),
        };
        let acknowledged: Vec<uuid::Uuid> = self.orders.iter().filter_map(|o| o.placed).collect();
        let evidence = Evidence {
            sagas: &self.ports.store,
            stock: &self.stores.stock,
            payments: &self.stores.payments,
            shipments: &self.stores.shipments,
            kafka: &self.ports.kafka,
            definitions: &self.ports.definitions,
            seeded: &self.seeded,
            acknowledged: &acknowledged,
            fresh: &self.fresh,
            cache: &cache,
        };
        if let Err(violation) = checks::at_quiescence(&evidence).await {
            self.violate(violation.invariant, violation.saga, violation.detail);
        }
    }

    async fn report(mut self) -> SeedReport {
        let mut outcomes = BTreeMap::new();
        for saga in self.ports.store.all() {
            *outcomes.entry(outcome_name(saga.state.phase).to_owned()).or_insert(0) += 1;
        }
        self.note(format!("outcomes {outcomes:?}"));
        let failure = match self.violation.clone() {
            Some(violation) => Some(self.failure(violation).await),
            None => None,
        };
        SeedReport {
            seed: self.seed,
            sagas: self.orders.len(),
            steps: self.steps,
            digest: self.trace.digest(),
            outcomes,
            stats: self.stats,
            failure,
        }
    }

    async fn failure(&mut self, violation: Violation) -> Failure {
        let (saga, timeline) = match violation.saga {
            Some(id) => {
                let name = format!("{} ({id})", self.saga_name(id));
                let entries = self.ports.store.timeline(id).await.unwrap_or_default();
                (Some(name), entries.iter().map(entry_line).collect())
            }
            None => (None, Vec::new()),
        };
        Failure { violation, saga, timeline, tail: self.trace.tail() }
    }
}
