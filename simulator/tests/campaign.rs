//! The simulation under `cargo test`: the CI campaign (1,000 seeds of 100 sagas, on every core), the
//! replay check (a seed run twice gives the same trace), and a fault-free run whose outcomes follow from
//! the orders' data alone.
//!
//! `SIM_SEED=<seed>` runs only that seed (`SIM_TRACE=1` prints its trace); `SIM_SEEDS=<n>` and
//! `SIM_FIRST_SEED=<s>` change the campaign's seeds, `SIM_SAGAS=<n>` the sagas per seed.

use simulator::{CampaignReport, FaultRates, SimConfig, replay_command, run_campaign, run_seed};

/// Seeds of the CI campaign.
const CI_SEEDS: u64 = 1_000;

fn env(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.trim().parse().ok())
}

fn threads() -> usize {
    std::thread::available_parallelism().map_or(2, usize::from)
}

fn failures(report: &CampaignReport, sagas: usize) -> String {
    let shown = report.failures.iter().take(3).map(|r| r.render(&replay_command(r.seed, sagas)));
    let seeds: Vec<u64> = report.failures.iter().map(|r| r.seed).collect();
    format!("{} failing seeds {seeds:?}; the first:\n{}", seeds.len(), shown.collect::<Vec<_>>().join("\n"))
}

#[test]
fn campaign() {
    let sagas = env("SIM_SAGAS").map_or(SimConfig::default().sagas, |n| usize::try_from(n).unwrap_or(100));
    let config = SimConfig::with_sagas(sagas);
    if let Some(seed) = env("SIM_SEED") {
        let report = run_seed(seed, &config, env("SIM_TRACE").is_some_and(|t| t > 0));
        eprintln!("seed {seed}: {} steps, outcomes {:?}, digest {:016x}", report.steps, report.outcomes, report.digest);
        assert!(report.failure.is_none(), "{}", report.render(&replay_command(seed, sagas)));
        return;
    }
    let first = env("SIM_FIRST_SEED").unwrap_or(0);
    let seeds: Vec<u64> = (first..first + env("SIM_SEEDS").unwrap_or(CI_SEEDS)).collect();
    let report = run_campaign(&seeds, &config, threads());
    eprintln!(
        "{} seeds, {} sagas in {:.1?}: {:.0} sagas/s; outcomes {:?}",
        report.seeds,
        report.sagas,
        report.elapsed,
        report.sagas_per_second(),
        report.outcomes
    );
    eprintln!("faults and events: {:?}", report.stats);
    assert!(report.failures.is_empty(), "{}", failures(&report, sagas));
    if seeds.len() as u64 >= CI_SEEDS {
        covered(&report);
    }
}

/// A campaign that never injected some fault, or never produced some outcome, tests less than it claims.
fn covered(report: &CampaignReport) {
    for outcome in ["COMPLETED", "CANCELLED", "FAILED", "RESOLVED"] {
        assert!(report.outcomes.get(outcome).is_some_and(|n| *n > 0), "no saga ended {outcome}: {:?}", report.outcomes);
    }
    let events = [
        "delivery.dropped",
        "delivery.duplicate",
        "delivery.delayed",
        "delivery.reordered",
        "delivery.reply_published_twice",
        "fault.store.get.FailBefore",
        "fault.store.replace.FailBefore",
        "fault.store.replace.FailAfter",
        "fault.store.replace.ConflictBefore",
        "fault.store.replace.ConflictAfter",
        "fault.store.append_log.FailAfter",
        "fault.store.clear_pending.FailAfter",
        "fault.store.move_finished.FailBefore",
        "fault.store.move_finished.FailAfter",
        "fault.store.insert.FailAfter",
        "fault.bus.publish.FailBefore",
        "fault.bus.publish.FailAfter",
        "fault.store.recoverable.FailBefore",
        "orchestrator.crash",
        "orchestrator.stall",
        "group.move",
        "participant.crash",
        "participant.outage.process",
        "participant.outage.database",
        "operator.Retry",
        "operator.Compensate",
        "operator.Resolve",
        "api.retryable_error",
        "api.handed_off",
    ];
    let missing: Vec<&str> = events.iter().copied().filter(|e| !report.stats.contains_key(*e)).collect();
    assert!(missing.is_empty(), "never happened: {missing:?}; seen: {:?}", report.stats.keys());
}

#[test]
fn a_seed_replays_identically() {
    let config = SimConfig::with_sagas(40);
    for seed in [7, 1_000_003] {
        let (first, second) = (run_seed(seed, &config, false), run_seed(seed, &config, false));
        assert!(first.failure.is_none(), "{}", first.render(&replay_command(seed, 40)));
        assert_eq!(first.digest, second.digest, "seed {seed} ran differently the second time");
        assert_eq!((first.steps, &first.outcomes, &first.stats), (second.steps, &second.outcomes, &second.stats));
    }
    let (a, b) = (run_seed(1, &config, false), run_seed(2, &config, false));
    assert_ne!(a.digest, b.digest, "different seeds run differently");
}

#[test]
fn without_faults_every_order_completes_or_is_cancelled() {
    let config = SimConfig { faults: FaultRates::none(), ..SimConfig::with_sagas(60) };
    let report = run_campaign(&[11, 12, 13], &config, threads());
    assert!(report.failures.is_empty(), "{}", failures(&report, 60));
    let finished: u64 = ["COMPLETED", "CANCELLED"].iter().filter_map(|o| report.outcomes.get(*o)).sum();
    assert_eq!(finished, report.sagas, "only COMPLETED and CANCELLED without faults: {:?}", report.outcomes);
    assert!(
        report.outcomes.get("COMPLETED").is_some_and(|n| *n > 0)
            && report.outcomes.get("CANCELLED").is_some_and(|n| *n > 0)
    );
    assert!(report.stats.keys().all(|k| !k.starts_with("fault.") && !k.contains("crash")), "{:?}", report.stats);
}
