//! A whole run: check the stack, note the environment, measure the floors, then each point in turn (stock
//! set, warm-up, measured window with the processes watched, drain, per-step sample).

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant};

use chrono::Utc;

use crate::api::Api;
use crate::auth::Tokens;
use crate::config::{OpenLoop, Plan, Target};
use crate::environment::{Durability, Machine, Versions};
use crate::error::{Error, Result};
use crate::load::{Driver, Window};
use crate::mix::Schedule;
use crate::point::{Mode, PointResult};
use crate::procs::{self, ProcessSpec};
use crate::report::{Floors, ProcessInfo, Ratios, Report, SCHEMA, method_notes};
use crate::steps;
use crate::{dbops, floor};

/// The name of the bench's own process in the report.
pub const SELF_PROCESS: &str = "saga-bench";
/// A pause between points, so that one point's tail (consumer commits, flushes) does not fall into the next.
const SETTLE: Duration = Duration::from_secs(1);

/// A run: what to do, against what.
#[derive(Debug, Clone)]
pub struct Config {
    /// What to do.
    pub plan: Plan,
    /// Against what.
    pub target: Target,
    /// `standard`, `smoke` or `custom` (in the report).
    pub kind: String,
}

/// Runs `config`, telling `progress` what it does; returns the report (not written yet: see
/// [`Report::write`]).
pub async fn run(config: &Config, progress: &(dyn Fn(&str) + Sync)) -> Result<Report> {
    let plan = &config.plan;
    let target = &config.target;
    plan.validate().map_err(Error::Config)?;
    let api = Api::new(target.endpoints.clone(), plan.request_timeout)?;
    api.ready().await?;
    let started_at = Utc::now();
    let machine = Machine::detect();
    let tokens = Arc::new(Tokens::mint(&target.tokens, plan.customers));

    let mut specs = target.processes.clone();
    specs.push(ProcessSpec::pid(SELF_PROCESS, std::process::id()));
    let processes: Vec<ProcessInfo> = specs
        .iter()
        .map(|spec| match spec.resolve() {
            Ok(pid) => {
                ProcessInfo { name: spec.name.clone(), pid: Some(pid), detail: procs::cmdline(pid).unwrap_or_default() }
            }
            Err(reason) => ProcessInfo { name: spec.name.clone(), pid: None, detail: reason },
        })
        .collect();
    for process in processes.iter().filter(|p| p.pid.is_none()) {
        progress(&format!("{} is not measured: {}", process.name, process.detail));
    }
    let database_pid = processes.iter().find(|p| p.name == "database").and_then(|p| p.pid);
    let versions = Versions::detect(&target.repo_dir, &target.state_dir, &target.mongo).await;
    let durability = Durability::detect(&target.kafka, &target.mongo, &target.state_dir, database_pid);

    let ticks = procs::clock_ticks();
    let quiet = wait_quiet(&specs, plan, ticks, "the floors", progress).await;
    progress(&format!(
        "floors: {} Kafka trips and {} database updates, one at a time",
        plan.floor_samples, plan.floor_samples
    ));
    let mut floors = measure_floors(target, plan.floor_samples).await;
    floors.quiet = quiet;
    if let Some(error) = floors.kafka_error.as_ref().or(floors.database_error.as_ref()) {
        progress(&format!("a floor could not be measured: {error}"));
    }

    let driver = Driver {
        api: api.clone(),
        tokens: tokens.clone(),
        skus: Arc::new(plan.skus.clone()),
        schedule: Arc::new(Schedule::new(&plan.mix)),
        order_timeout: plan.order_timeout,
        idempotency_keys: plan.idempotency_keys,
        counter: Arc::new(AtomicU64::new(0)),
        run_id: format!("bench-{}", uuid::Uuid::now_v7().simple()),
    };
    let client = target.mongo.client("saga-bench").await;
    let stored_sagas = match &client {
        Ok(client) => crate::stored::stored(client, &target.orchestrator_database).await,
        Err(e) => Err(Error::Config(format!("database client: {e}"))),
    };
    let stored_sagas = stored_sagas.map_err(|e| progress(&format!("stored sagas are not counted: {e}"))).ok();
    let counters = match client {
        Ok(client) => dbops::Counters::detect(&client).await,
        Err(e) => Err(Error::Config(format!("database client: {e}"))),
    };
    let counters = counters.map_err(|e| progress(&format!("database requests are not counted: {e}"))).ok();
    let mut points = Vec::new();
    let closed = plan.concurrency.iter().map(|c| Mode::Closed { concurrency: *c });
    for mode in closed {
        points.push(run_point(&driver, mode, plan, &specs, counters.as_ref(), ticks, progress).await?);
    }
    let rates = match &plan.open_loop {
        OpenLoop::Off => Vec::new(),
        OpenLoop::Rates(rates) => rates.clone(),
        OpenLoop::Auto(fractions) => {
            let best = points.iter().map(|p| p.sagas_per_s).fold(0.0, f64::max);
            if best <= 0.0 {
                progress("no closed-loop throughput to derive open-loop rates from; skipping the open loop");
            }
            fractions.iter().map(|f| (f * best * 10.0).round() / 10.0).filter(|r| *r > 0.0).collect()
        }
    };
    for rate in rates {
        points.push(run_point(&driver, Mode::Open { rate }, plan, &specs, counters.as_ref(), ticks, progress).await?);
    }

    let ratios = Ratios::compute(&points, &floors);
    Ok(Report {
        schema: SCHEMA.to_owned(),
        kind: config.kind.clone(),
        started_at,
        finished_at: Utc::now(),
        plan: plan.clone(),
        endpoints: target.endpoints.clone(),
        kafka_bootstrap_servers: target.kafka.bootstrap_servers.clone(),
        kafka_topic_prefix: target.kafka.topic_prefix.clone(),
        bench_database: target.mongo.database.clone(),
        machine,
        versions,
        durability,
        stored_sagas,
        processes,
        floors,
        points,
        ratios,
        method: method_notes(),
    })
}

async fn measure_floors(target: &Target, n: usize) -> Floors {
    let mut floors = Floors::default();
    match floor::kafka(&target.kafka, n).await {
        Ok(kafka) => floors.kafka = Some(kafka),
        Err(e) => floors.kafka_error = Some(e.to_string()),
    }
    match floor::database(&target.mongo, n).await {
        Ok(database) => floors.database = Some(database),
        Err(e) => floors.database_error = Some(e.to_string()),
    }
    floors
}

/// Waits for the stack of `specs` (all but this process) to be quiet before `what` (see
/// [`procs::wait_quiet`]), unless the plan says not to; says so when it did not become quiet.
async fn wait_quiet(
    specs: &[ProcessSpec],
    plan: &Plan,
    ticks: u64,
    what: &str,
    progress: &(dyn Fn(&str) + Sync),
) -> Option<procs::Quiet> {
    if plan.quiet_timeout.is_zero() {
        return None;
    }
    let stack: Vec<ProcessSpec> = specs.iter().filter(|spec| spec.name != SELF_PROCESS).cloned().collect();
    let quiet = procs::wait_quiet(&stack, plan.quiet_timeout, ticks).await;
    if !quiet.quiet {
        progress(&format!(
            "the stack was still busy ({:.2} cores) after {:.0} s; measuring {what} anyway",
            quiet.busy_cores, quiet.waited_s
        ));
    }
    Some(quiet)
}

/// Waits for a quiet stack, sets the stock, runs the load through a window while watching the processes,
/// and reads a sample of timelines.
async fn run_point(
    driver: &Driver,
    mode: Mode,
    plan: &Plan,
    specs: &[ProcessSpec],
    counters: Option<&dbops::Counters>,
    ticks: u64,
    progress: &(dyn Fn(&str) + Sync),
) -> Result<PointResult> {
    let quiet = wait_quiet(specs, plan, ticks, &format!("{} {}", mode.name(), mode.label()), progress).await;
    let operator = driver.tokens.operator();
    for sku in &plan.skus.in_stock {
        driver.api.set_stock(operator, sku, plan.stock_units).await?;
    }
    driver.api.set_stock(operator, &plan.skus.empty, 0).await?;
    progress(&format!(
        "{} {}: {} s warm-up, {} s measured",
        mode.name(),
        mode.label(),
        plan.warmup.as_secs_f64(),
        plan.duration.as_secs_f64()
    ));
    let window = Window::after(plan.warmup, plan.duration);
    let watch = tokio::spawn(procs::measure(specs.to_vec(), window, ticks));
    let count = counters.cloned().map(|counters| tokio::spawn(dbops::measure(counters, window)));
    let samples = match mode {
        Mode::Closed { concurrency } => Box::pin(driver.closed(concurrency, window)).await,
        Mode::Open { rate } => Box::pin(driver.open(rate, plan.max_in_flight, window)).await,
    };
    let drain = Instant::now().saturating_duration_since(window.end);
    let processes = watch.await.unwrap_or_default();
    let mut point = PointResult::from_samples(mode, window, &samples, drain);
    point.processes = processes;
    point.quiet_before = quiet;
    if let Some(count) = count {
        match count.await.map_err(|e| e.to_string()).and_then(|readings| readings) {
            Ok((before, after)) => {
                let source = counters.map_or("", dbops::Counters::source);
                point.db_requests = Some(dbops::DbRequests::between(source, &before, &after, point.terminal_in_window));
            }
            Err(error) => progress(&format!("database requests of {} are not counted: {error}", point.label)),
        }
    }
    let ids: Vec<uuid::Uuid> =
        samples.iter().filter(|s| window.contains(s.due) && s.result.is_ok()).filter_map(|s| s.order_id).collect();
    point.steps = steps::sample(&driver.api, operator, &steps::spread(&ids, plan.step_sample)).await;
    let p = |f: fn(&crate::latency::Summary) -> f64| point.latency.as_ref().map_or(f64::NAN, f);
    let requests = point.db_requests.as_ref().and_then(|r| r.per_saga);
    progress(&format!(
        "{}: {:.1} sagas/s, p50 {:.1} ms, p99 {:.1} ms, {} errors{}",
        point.label,
        point.sagas_per_s,
        p(|s| s.p50_ms),
        p(|s| s.p99_ms),
        point.errors,
        requests.map_or_else(String::new, |n| format!(", {n:.1} database requests per saga"))
    ));
    tokio::time::sleep(SETTLE).await;
    Ok(point)
}
