//! `sim`: long simulation campaigns. Runs seeds on every core and prints sagas simulated per second, the
//! outcomes, and, for each failing seed, the broken invariant and the command that replays it.
//!
//! `sim --seeds 10000` (`make sim SEEDS=10000`), `sim --first 5000 --seeds 100 --sagas 300`,
//! `sim --seed 42 --trace` (one seed, its trace printed).

use std::process::ExitCode;

use clap::Parser;
use simulator::{SimConfig, replay_command, run_campaign, run_seed};

/// Runs deterministic simulation campaigns of the order saga.
#[derive(Debug, Parser)]
#[command(name = "sim", version)]
struct Args {
    /// Seeds to run.
    #[arg(long, default_value_t = 1_000)]
    seeds: u64,
    /// The first seed.
    #[arg(long, default_value_t = 0)]
    first: u64,
    /// Sagas per seed.
    #[arg(long, default_value_t = 100)]
    sagas: usize,
    /// Threads (default: one per core).
    #[arg(long)]
    threads: Option<usize>,
    /// Run only this seed.
    #[arg(long, conflicts_with_all = ["seeds", "first"])]
    seed: Option<u64>,
    /// With --seed: print its trace.
    #[arg(long, requires = "seed")]
    trace: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let config = SimConfig::with_sagas(args.sagas);
    if let Some(seed) = args.seed {
        let report = run_seed(seed, &config, args.trace);
        eprintln!("seed {seed}: {} steps, outcomes {:?}, digest {:016x}", report.steps, report.outcomes, report.digest);
        eprint!("{}", report.render(&replay_command(seed, args.sagas)));
        return if report.failure.is_none() { ExitCode::SUCCESS } else { ExitCode::FAILURE };
    }
    let threads = args.threads.unwrap_or_else(|| std::thread::available_parallelism().map_or(2, usize::from));
    let seeds: Vec<u64> = (args.first..args.first.saturating_add(args.seeds)).collect();
    eprintln!(
        "simulating seeds {}..{} of {} sagas on {threads} threads",
        args.first,
        args.first + args.seeds,
        args.sagas
    );
    let report = run_campaign(&seeds, &config, threads);
    eprintln!(
        "{} seeds, {} sagas in {:.1?}: {:.0} sagas simulated per second",
        report.seeds,
        report.sagas,
        report.elapsed,
        report.sagas_per_second()
    );
    eprintln!("outcomes: {:?}", report.outcomes);
    eprintln!("faults and events: {:?}", report.stats);
    for failure in &report.failures {
        eprintln!("\n{}", failure.render(&replay_command(failure.seed, args.sagas)));
    }
    if report.failures.is_empty() {
        eprintln!("no invariant was broken");
        ExitCode::SUCCESS
    } else {
        let seeds: Vec<u64> = report.failures.iter().map(|r| r.seed).collect();
        eprintln!("{} seeds broke an invariant: {seeds:?}", seeds.len());
        ExitCode::FAILURE
    }
}
