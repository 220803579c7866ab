//! What a run does ([`Plan`]) and what it runs against ([`Target`]).

use std::path::{Path, PathBuf};
use std::time::Duration;

use platform::kafka::KafkaSettings;
use platform::mongo::MongoSettings;
use serde::{Deserialize, Serialize};

use crate::api::{Endpoints, Skus};
use crate::auth::TokenSettings;
use crate::mix::Mix;
use crate::procs::ProcessSpec;

/// The default closed-loop concurrencies.
pub const DEFAULT_CONCURRENCY: [u32; 4] = [1, 16, 64, 256];
/// The default open-loop rates, as fractions of the best closed-loop throughput of the run.
pub const DEFAULT_AUTO_RATES: [f64; 2] = [0.5, 0.8];
/// The bench's own database (the database floor writes there), unless told otherwise.
pub const DEFAULT_DATABASE: &str = "saga_bench";

/// Where the open-loop rates come from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OpenLoop {
    /// No open-loop points.
    Off,
    /// These rates, in orders per second.
    Rates(Vec<f64>),
    /// These fractions of the best throughput the closed-loop points of the same run reached (skipped when
    /// there are no closed-loop points).
    Auto(Vec<f64>),
}

/// What a run does.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    /// Closed-loop points: number of workers, each with one order in flight.
    pub concurrency: Vec<u32>,
    /// Open-loop points.
    pub open_loop: OpenLoop,
    /// Load before each point's measured window (not measured).
    #[serde(with = "seconds")]
    pub warmup: Duration,
    /// Each point's measured window.
    #[serde(with = "seconds")]
    pub duration: Duration,
    /// How long one order may take from due to its terminal status (then it counts as a timeout).
    #[serde(with = "seconds")]
    pub order_timeout: Duration,
    /// How long a plain HTTP request (not an event stream) may take.
    #[serde(with = "seconds")]
    pub request_timeout: Duration,
    /// Open loop: the most orders in flight; a due order beyond that is dropped and counted as an error.
    pub max_in_flight: usize,
    /// The order mix.
    pub mix: Mix,
    /// How many distinct customers place the orders.
    pub customers: u32,
    /// The SKUs ordered.
    pub skus: Skus,
    /// Units each in-stock SKU is set to before each point.
    pub stock_units: i64,
    /// Per point, how many of the measured sagas' timelines are read for per-step latency.
    pub step_sample: usize,
    /// Measured operations of each floor.
    pub floor_samples: usize,
    /// Whether each order carries an `Idempotency-Key` (as a careful client sends).
    pub idempotency_keys: bool,
    /// How long to wait at most for a quiet stack before the floors and before each point (zero: do not
    /// wait); see [`crate::procs::wait_quiet`].
    #[serde(with = "seconds", default)]
    pub quiet_timeout: Duration,
}

impl Plan {
    /// The full run: closed loop at 1, 16, 64 and 256; open loop at 50% and 80% of the best closed-loop
    /// throughput; 10 s of warm-up and 40 s measured per point; floors of 200. About 6 minutes.
    pub fn standard() -> Self {
        Self {
            concurrency: DEFAULT_CONCURRENCY.to_vec(),
            open_loop: OpenLoop::Auto(DEFAULT_AUTO_RATES.to_vec()),
            warmup: Duration::from_secs(10),
            duration: Duration::from_secs(40),
            order_timeout: Duration::from_secs(60),
            request_timeout: Duration::from_secs(10),
            max_in_flight: 2048,
            mix: Mix::default(),
            customers: 100,
            skus: Skus::default(),
            stock_units: 1_000_000,
            step_sample: 200,
            floor_samples: 200,
            idempotency_keys: true,
            quiet_timeout: Duration::from_secs(60),
        }
    }

    /// A few seconds in all, to check that everything works (used by a test): closed loop at 1 and 4, 2 s
    /// each, no warm-up, no open loop, floors of 20.
    pub fn smoke() -> Self {
        Self {
            concurrency: vec![1, 4],
            open_loop: OpenLoop::Off,
            warmup: Duration::ZERO,
            duration: Duration::from_secs(2),
            order_timeout: Duration::from_secs(30),
            step_sample: 20,
            floor_samples: 20,
            quiet_timeout: Duration::ZERO,
            ..Self::standard()
        }
    }

    /// Refuses plans that cannot run.
    pub fn validate(&self) -> Result<(), String> {
        if self.concurrency.contains(&0) {
            return Err("a concurrency must be at least 1".into());
        }
        if let OpenLoop::Rates(rates) | OpenLoop::Auto(rates) = &self.open_loop
            && rates.iter().any(|r| !r.is_finite() || *r <= 0.0)
        {
            return Err("rates and rate fractions must be above 0".into());
        }
        if self.duration.is_zero() {
            return Err("the measured duration must be above 0".into());
        }
        if self.order_timeout.is_zero() || self.request_timeout.is_zero() {
            return Err("time limits must be above 0".into());
        }
        if self.skus.in_stock.is_empty() {
            return Err("at least one in-stock SKU is needed".into());
        }
        if self.max_in_flight == 0 {
            return Err("max in flight must be at least 1".into());
        }
        Ok(())
    }
}

/// What a run measures: the stack's endpoints, its Kafka and database, its processes.
#[derive(Debug, Clone)]
pub struct Target {
    /// The orchestrator's and the inventory's base URLs.
    pub endpoints: Endpoints,
    /// The stack's Kafka (the floor topic goes under its topic prefix).
    pub kafka: KafkaSettings,
    /// The stack's database server, with the bench's own database for the floor.
    pub mongo: MongoSettings,
    /// How tokens are minted.
    pub tokens: TokenSettings,
    /// The processes whose CPU and memory are measured (the bench's own process is added to them).
    pub processes: Vec<ProcessSpec>,
    /// The state directory (pid files, Kafka's jars and configuration).
    pub state_dir: PathBuf,
    /// The repository (for its git commit).
    pub repo_dir: PathBuf,
    /// The orchestrator's database (how many sagas it stores goes in the report).
    pub orchestrator_database: String,
}

impl Target {
    /// The stack `make up` runs, as the environment describes it (`ORCHESTRATOR_PORT`, `INVENTORY_PORT`,
    /// `KAFKA_BOOTSTRAP_SERVERS`/`KAFKA_PORT`, `KAFKA_TOPIC_PREFIX`, `MONGODB_URI`/`MONGO_PORT`, `JWT_*`,
    /// `SAGA_STATE_DIR`); the bench's database is `database`.
    pub fn from_env(database: &str) -> Result<Self, String> {
        let kafka = KafkaSettings::from_env().map_err(|e| e.to_string())?;
        let mongo =
            MongoSettings { database: database.to_owned(), ..MongoSettings::from_env("BENCH_DATABASE", database) };
        let repo_dir = repo_dir();
        let state_dir = std::env::var_os("SAGA_STATE_DIR").map_or_else(|| repo_dir.join(".local"), PathBuf::from);
        let external = platform::config::optional("MONGODB_URI").map(|_| "external database (MONGODB_URI)");
        Ok(Self {
            endpoints: Endpoints::from_env(),
            processes: crate::procs::standard_processes(&state_dir, external),
            kafka,
            mongo,
            tokens: TokenSettings::from_env(),
            state_dir,
            repo_dir,
            orchestrator_database: crate::stored::DEFAULT_ORCHESTRATOR_DATABASE.to_owned(),
        })
    }
}

/// The repository this crate is part of.
pub fn repo_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().map_or_else(|| PathBuf::from("."), Path::to_path_buf)
}

/// The default results directory, `bench/results/`.
pub fn default_out_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("results")
}

/// Parses `250ms`, `10s`, `2m` or a plain number of seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let digits_end = text.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(text.len());
    let (number, unit) = text.split_at(digits_end);
    let value: f64 = number.parse().map_err(|_| format!("{text:?} is not a duration such as 500ms, 10s or 2m"))?;
    let seconds = match unit {
        "ms" => value / 1000.0,
        "" | "s" => value,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        _ => return Err(format!("{text:?}: unknown unit {unit:?}; use ms, s, m or h")),
    };
    Duration::try_from_secs_f64(seconds).map_err(|_| format!("{text:?} is out of range"))
}

/// (De)serializes a duration as seconds (a float).
mod seconds {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(duration: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_f64(duration.as_secs_f64())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
        let seconds = f64::deserialize(deserializer)?;
        Duration::try_from_secs_f64(seconds).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("10"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        for bad in ["", "s", "10x", "-1s", "1e99h"] {
            assert!(parse_duration(bad).is_err(), "{bad:?} must be refused");
        }
    }

    #[test]
    fn the_plans_are_valid_and_the_standard_one_takes_minutes() {
        let standard = Plan::standard();
        assert_eq!(standard.validate(), Ok(()));
        assert_eq!(Plan::smoke().validate(), Ok(()));
        let points = standard.concurrency.len() + DEFAULT_AUTO_RATES.len();
        let seconds = points as u64 * (standard.warmup + standard.duration).as_secs();
        assert!((240..=420).contains(&seconds), "{seconds} s of load");
        let plan: Plan = serde_json::from_value(serde_json::to_value(&standard).expect("serializes")).expect("back");
        assert_eq!(plan, standard);
        assert!(Plan { concurrency: vec![0], ..Plan::smoke() }.validate().is_err());
        assert!(Plan { open_loop: OpenLoop::Rates(vec![-1.0]), ..Plan::smoke() }.validate().is_err());
    }
}
