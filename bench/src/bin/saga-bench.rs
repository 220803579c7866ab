//! `saga-bench`: benchmarks the running stack (`make up`) and writes the report into `bench/results/`.
//! `make bench` runs it; `BENCH_ARGS` passes flags (see `saga-bench --help`).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use bench::config::{DEFAULT_DATABASE, OpenLoop, default_out_dir, parse_duration};
use bench::mix::Mix;
use bench::{Config, Plan, Target};
use clap::Parser;

/// Benchmarks a running saga stack through its public API: closed loop at each concurrency, open loop at
/// each rate, the Kafka and database floors; writes <timestamp>.json/.md/.svg and latest.* into the results
/// directory.
///
/// Without --concurrency or --rate: closed loop at 1, 16, 64 and 256, then open loop at 50% and 80% of the
/// best closed-loop throughput (about 6 minutes). With only --rate: only those open-loop points. The stack
/// is found as `make up` runs it (ORCHESTRATOR_PORT, INVENTORY_PORT, KAFKA_BOOTSTRAP_SERVERS or KAFKA_PORT,
/// MONGODB_URI or MONGO_PORT, SAGA_STATE_DIR, JWT_SECRET/JWT_ISSUER/JWT_AUDIENCE).
#[derive(Debug, Parser)]
#[command(name = "saga-bench", version)]
struct Args {
    /// A few seconds in all: closed loop at 1 and 4, 2 s each, no warm-up, floors of 20 (other flags still
    /// apply on top).
    #[arg(long)]
    smoke: bool,

    /// Closed-loop concurrencies, comma-separated [default: 1,16,64,256].
    #[arg(long, value_delimiter = ',', value_name = "C")]
    concurrency: Option<Vec<u32>>,

    /// Open-loop rates in orders per second, comma-separated (repeatable).
    #[arg(long = "rate", value_delimiter = ',', value_name = "R")]
    rates: Option<Vec<f64>>,

    /// Without --rate: open-loop rates as fractions of the best closed-loop throughput [default: 0.5,0.8].
    #[arg(long, value_delimiter = ',', value_name = "FRACTION", conflicts_with = "rates")]
    auto_rates: Option<Vec<f64>>,

    /// No open-loop points.
    #[arg(long, conflicts_with_all = ["rates", "auto_rates"])]
    no_open_loop: bool,

    /// Warm-up before each point's measured window [default: 10s].
    #[arg(long, value_parser = parse_duration, value_name = "DURATION")]
    warmup: Option<Duration>,

    /// Each point's measured window [default: 40s].
    #[arg(long, value_parser = parse_duration, value_name = "DURATION")]
    duration: Option<Duration>,

    /// Longest wait for a quiet stack (its processes under a quarter of a core) before the floors and each
    /// point; 0 does not wait [default: 60s, --smoke 0].
    #[arg(long, value_parser = parse_duration, value_name = "DURATION")]
    quiet_timeout: Option<Duration>,

    /// Time limit of one order, from due to terminal status [default: 60s].
    #[arg(long, value_parser = parse_duration, value_name = "DURATION")]
    order_timeout: Option<Duration>,

    /// Order mix [default: complete=90,declined=5,out_of_stock=5].
    #[arg(long, value_name = "MIX")]
    mix: Option<Mix>,

    /// Distinct customers placing the orders [default: 100].
    #[arg(long, value_name = "N")]
    customers: Option<u32>,

    /// Timelines read per point for per-step latency [default: 200].
    #[arg(long, value_name = "N")]
    step_sample: Option<usize>,

    /// Measured operations of each floor [default: 200].
    #[arg(long, value_name = "N")]
    floor_samples: Option<usize>,

    /// Open loop: most orders in flight; beyond it a due order is dropped and counted [default: 2048].
    #[arg(long, value_name = "N")]
    max_in_flight: Option<usize>,

    /// Send orders without an Idempotency-Key.
    #[arg(long)]
    no_idempotency_key: bool,

    /// The orchestrator's base URL [default: http://127.0.0.1:$ORCHESTRATOR_PORT].
    #[arg(long, value_name = "URL")]
    orchestrator: Option<String>,

    /// The inventory service's base URL [default: http://127.0.0.1:$INVENTORY_PORT].
    #[arg(long, value_name = "URL")]
    inventory: Option<String>,

    /// The bench's own database, for the database floor.
    #[arg(long, value_name = "NAME", default_value = DEFAULT_DATABASE)]
    database: String,

    /// Where to write the report [default: bench/results].
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,

    /// The orchestrator's database.
    #[arg(long, value_name = "NAME", default_value = bench::stored::DEFAULT_ORCHESTRATOR_DATABASE)]
    orchestrator_database: String,

    /// Instead of a run: copy a finished saga until the orchestrator stores N finished sagas (to measure
    /// with many stored sagas; restart the orchestrator afterwards to measure its start too).
    #[arg(long, value_name = "N")]
    fill_finished: Option<u64>,
}

impl Args {
    fn plan(&self) -> Plan {
        let mut plan = if self.smoke { Plan::smoke() } else { Plan::standard() };
        match (&self.concurrency, &self.rates) {
            (Some(concurrency), _) => plan.concurrency.clone_from(concurrency),
            (None, Some(_)) => plan.concurrency.clear(),
            (None, None) => {}
        }
        if let Some(rates) = &self.rates {
            plan.open_loop = OpenLoop::Rates(rates.clone());
        } else if let Some(fractions) = &self.auto_rates {
            plan.open_loop = OpenLoop::Auto(fractions.clone());
        }
        if self.no_open_loop {
            plan.open_loop = OpenLoop::Off;
        }
        plan.warmup = self.warmup.unwrap_or(plan.warmup);
        plan.duration = self.duration.unwrap_or(plan.duration);
        plan.order_timeout = self.order_timeout.unwrap_or(plan.order_timeout);
        plan.quiet_timeout = self.quiet_timeout.unwrap_or(plan.quiet_timeout);
        plan.mix = self.mix.unwrap_or(plan.mix);
        plan.customers = self.customers.unwrap_or(plan.customers);
        plan.step_sample = self.step_sample.unwrap_or(plan.step_sample);
        plan.floor_samples = self.floor_samples.unwrap_or(plan.floor_samples);
        plan.max_in_flight = self.max_in_flight.unwrap_or(plan.max_in_flight);
        plan.idempotency_keys = !self.no_idempotency_key;
        plan
    }

    fn kind(&self) -> &'static str {
        let tuned = self.concurrency.is_some()
            || self.rates.is_some()
            || self.auto_rates.is_some()
            || self.no_open_loop
            || self.warmup.is_some()
            || self.duration.is_some()
            || self.mix.is_some();
        match (self.smoke, tuned) {
            (true, false) => "smoke",
            (false, false) => "standard",
            _ => "custom",
        }
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("saga-bench: error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: &Args) -> anyhow::Result<()> {
    let mut target = Target::from_env(&args.database).map_err(anyhow::Error::msg)?;
    if let Some(url) = &args.orchestrator {
        target.endpoints.orchestrator = url.trim_end_matches('/').to_owned();
    }
    if let Some(url) = &args.inventory {
        target.endpoints.inventory = url.trim_end_matches('/').to_owned();
    }
    target.orchestrator_database.clone_from(&args.orchestrator_database);
    let progress = |text: &str| eprintln!("saga-bench: {text}");
    if let Some(n) = args.fill_finished {
        let client = target.mongo.client("saga-bench").await?;
        let added = bench::stored::fill_finished(&client, &target.orchestrator_database, n, &progress).await?;
        eprintln!("saga-bench: added {added} finished sagas");
        return Ok(());
    }
    let config = Config { plan: args.plan(), target, kind: args.kind().to_owned() };
    eprintln!(
        "saga-bench: {} run against {} (inventory {}), Kafka {}",
        config.kind,
        config.target.endpoints.orchestrator,
        config.target.endpoints.inventory,
        config.target.kafka.bootstrap_servers
    );
    let report = Box::pin(bench::run(&config, &progress)).await?;
    let out = args.out.clone().unwrap_or_else(default_out_dir);
    let written = report.write(&out)?;
    eprintln!(
        "saga-bench: wrote {}, {} and {}",
        written.json.display(),
        written.markdown.display(),
        written.svg.display()
    );
    let markdown = report.markdown();
    let table: Vec<&str> = markdown
        .lines()
        .skip_while(|l| !l.starts_with("## Points"))
        .skip(1)
        .take_while(|l| !l.starts_with("## ") || l.starts_with("## Floor"))
        .take_while(|l| !l.starts_with("## Per-step"))
        .collect();
    eprintln!("{}", table.join("\n").trim());
    Ok(())
}
