//! Deterministic simulation of the order saga: the real saga core and orchestrator engine, the real
//! participant runtime and domains, over in-memory stores and a simulated Kafka on a manual clock, driven
//! by a seeded scheduler that injects faults. Each seed runs many sagas to quiescence, then checks the
//! invariants; the same seed replays the same run, so a failing seed is a reproducible bug report.
//!
//! **What is real.** Orders are placed through the orchestrator's real API router (JWT and all); the real
//! [`Engine`](orchestrator::engine::Engine) applies every message, with the real
//! [`Deadlines`](orchestrator::timers::Deadlines) and [`Timer`](orchestrator::timers::Timer), and
//! [`Engine::recover`](orchestrator::engine::Engine::recover) runs whenever a partition is assigned; the
//! participants' real [`Processor`](participants::runtime::Processor) decides every reply with the real
//! inventory, payment and shipping domains over their real in-memory stores.
//!
//! **What is simulated** ([`world`]): Kafka ([`kafka`]: partitions keyed by saga id as the real
//! partitioner does; [`consumer`]: positions, offsets stored after the effect and committed every five
//! seconds, so a crash redelivers); the saga store's faults ([`stores::FaultyStore`] over the real
//! `MemoryStore`); two orchestrator instances sharing the reply topic's partitions; the clock.
//!
//! **Faults** ([`config::FaultRates`]): messages dropped, duplicated, delayed and reordered (within and
//! across partitions), replies published twice; a store or bus operation of the orchestrator or its API
//! failing before it takes effect, after (an ambiguous outcome), or with a version conflict, at any
//! operation of a message's handling, a recovery or a timer scan, optionally killing the instance;
//! orchestrator crashes and restarts (memory lost, store kept, offsets since the last commit redelivered);
//! partitions moved between the instances, and an instance stalling past its session timeout that wakes
//! to apply the message it held on what it read before (a zombie write the version must fence); a
//! participant's store write failing, the participant dying mid-command, before its reply or before its
//! commit, and outages of a participant or its database; operators retrying, compensating and resolving
//! sagas with the version they saw or an older one, racing with the replies; the clock jumping so that
//! time-outs and back-offs fire.
//!
//! **Invariants** ([`checks`]): see that module. **Determinism**: every random choice comes from the seed
//! ([`rng`]); ids come from a seeded sequence ([`proto_events::ids::seeded`]); everything runs on one
//! thread, in one current-thread runtime with no I/O or time driver; stores iterate in id order, and
//! seeded ids sort in minting order. The trace's digest ([`trace`]) shows that a seed replays identically.
//!
//! Run it with `cargo test -p simulator --release` (the CI campaign: 1,000 seeds of 100 sagas), replay one
//! seed with `SIM_SEED=<seed> cargo test -p simulator --release -- campaign --nocapture` (`SIM_TRACE=1`
//! prints its trace), or run long campaigns with `make sim SEEDS=N` (the `sim` binary).

use std::collections::BTreeMap;
use std::panic::AssertUnwindSafe;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

pub mod checks;
pub mod config;
pub mod consumer;
pub mod faults;
pub mod kafka;
pub mod processes;
pub mod rng;
pub mod stores;
pub mod trace;
pub mod world;

pub use crate::config::{FaultRates, SimConfig};
pub use crate::world::SeedReport;
use crate::world::World;

/// Runs one seed to the end. With `echo`, its trace is printed to stderr as it happens. A panic in the
/// code under test is reported as the seed's failure.
pub fn run_seed(seed: u64, config: &SimConfig, echo: bool) -> SeedReport {
    let _ids = proto_events::ids::seeded(seed);
    let runtime = tokio::runtime::Builder::new_current_thread().build().expect("a current-thread runtime");
    let run = std::panic::catch_unwind(AssertUnwindSafe(|| {
        runtime.block_on(async { World::new(seed, config, echo).await.run().await })
    }));
    run.unwrap_or_else(|panic| {
        let message = panic
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| panic.downcast_ref::<&str>().copied())
            .unwrap_or("a panic without a message");
        SeedReport::panicked(seed, config.sagas, message)
    })
}

impl SeedReport {
    fn panicked(seed: u64, sagas: usize, message: &str) -> Self {
        let violation = checks::Violation::new("no panic", None, format!("the code under test panicked: {message}"));
        let failure = world::Failure { violation, saga: None, timeline: Vec::new(), tail: Vec::new() };
        Self {
            seed,
            sagas,
            steps: 0,
            digest: 0,
            outcomes: BTreeMap::new(),
            stats: BTreeMap::new(),
            failure: Some(failure),
        }
    }

    /// A report of the seed's failure (empty if it passed): the invariant, the saga's timeline, the last
    /// lines of the trace, and `replay`, the command that runs the seed again.
    pub fn render(&self, replay: &str) -> String {
        let Some(failure) = &self.failure else { return String::new() };
        let mut text =
            format!("seed {} broke \"{}\": {}\n", self.seed, failure.violation.invariant, failure.violation.detail);
        if let Some(saga) = &failure.saga {
            text.push_str(&format!("timeline of {saga}:\n"));
            failure.timeline.iter().for_each(|line| text.push_str(&format!("  {line}\n")));
        }
        if !failure.tail.is_empty() {
            text.push_str("last steps:\n");
            failure.tail.iter().for_each(|line| text.push_str(&format!("  {line}\n")));
        }
        text.push_str(&format!("replay: {replay}\n"));
        text
    }
}

/// The command that replays `seed` (of `sagas` sagas) under `cargo test`.
pub fn replay_command(seed: u64, sagas: usize) -> String {
    let sagas = if sagas == SimConfig::default().sagas { String::new() } else { format!("SIM_SAGAS={sagas} ") };
    format!("SIM_SEED={seed} {sagas}cargo test -p simulator --release --test campaign -- campaign --nocapture")
}

/// What a campaign of seeds found.
#[derive(Debug, Clone, Default)]
pub struct CampaignReport {
    /// Seeds run.
    pub seeds: u64,
    /// Sagas simulated.
    pub sagas: u64,
    /// Wall-clock time.
    pub elapsed: Duration,
    /// Sagas by final status, over every seed.
    pub outcomes: BTreeMap<String, u64>,
    /// Faults and events, over every seed.
    pub stats: BTreeMap<String, u64>,
    /// The seeds that failed, by seed.
    pub failures: Vec<SeedReport>,
}

impl CampaignReport {
    /// Sagas simulated per second of wall-clock time.
    pub fn sagas_per_second(&self) -> f64 {
        self.sagas as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    fn add(&mut self, report: SeedReport) {
        self.seeds += 1;
        self.sagas += report.sagas as u64;
        for (outcome, count) in &report.outcomes {
            *self.outcomes.entry(outcome.clone()).or_insert(0) += count;
        }
        for (event, count) in &report.stats {
            *self.stats.entry(event.clone()).or_insert(0) += count;
        }
        if report.failure.is_some() {
            self.failures.push(report);
        }
    }
}

/// Runs `seeds` on `threads` threads (each seed on one thread, start to end) and gathers the results.
pub fn run_campaign(seeds: &[u64], config: &SimConfig, threads: usize) -> CampaignReport {
    let started = Instant::now();
    let next = AtomicUsize::new(0);
    let total = Mutex::new(CampaignReport::default());
    std::thread::scope(|scope| {
        for _ in 0..threads.max(1) {
            scope.spawn(|| {
                while let Some(&seed) = seeds.get(next.fetch_add(1, Ordering::Relaxed)) {
                    let report = run_seed(seed, config, false);
                    total.lock().unwrap_or_else(std::sync::PoisonError::into_inner).add(report);
                }
            });
        }
    });
    let mut report = total.into_inner().unwrap_or_else(std::sync::PoisonError::into_inner);
    report.failures.sort_by_key(|r| r.seed);
    report.elapsed = started.elapsed();
    report
}
