//! What a result depends on besides the code under test: the machine, the versions of everything, and the
//! durability settings in force (none of which the bench changes: it measures the guarantees as configured).

use std::collections::BTreeMap;
use std::path::Path;

use mongodb::bson::doc;
use platform::kafka::KafkaSettings;
use platform::mongo::MongoSettings;
use serde::{Deserialize, Serialize};

/// The machine the run was on.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Machine {
    /// `model name` of `/proc/cpuinfo`.
    pub cpu_model: Option<String>,
    /// Logical CPUs the bench may use.
    pub cores: usize,
    /// `MemTotal` of `/proc/meminfo`, in bytes.
    pub memory_bytes: Option<u64>,
    /// The kernel release.
    pub kernel: Option<String>,
    /// The 1-minute load average when the run began (other work on the machine skews results).
    pub load_average_at_start: Option<f64>,
}

impl Machine {
    /// Reads `/proc`.
    pub fn detect() -> Self {
        let read = |path: &str| std::fs::read_to_string(path).ok();
        Self {
            cpu_model: read("/proc/cpuinfo").as_deref().and_then(parse_cpu_model),
            cores: std::thread::available_parallelism().map_or(1, usize::from),
            memory_bytes: read("/proc/meminfo").as_deref().and_then(parse_mem_total),
            kernel: read("/proc/sys/kernel/osrelease").map(|s| s.trim().to_owned()),
            load_average_at_start: read("/proc/loadavg")
                .and_then(|s| s.split_whitespace().next().and_then(|v| v.parse().ok())),
        }
    }
}

/// The first `model name` of a `/proc/cpuinfo` text.
pub fn parse_cpu_model(cpuinfo: &str) -> Option<String> {
    cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_owned())
}

/// `MemTotal` of a `/proc/meminfo` text, in bytes.
pub fn parse_mem_total(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Versions of everything in the run.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Versions {
    /// This crate's version.
    pub bench: String,
    /// `git rev-parse HEAD` of the repository.
    pub git_commit: Option<String>,
    /// Whether the work tree had uncommitted changes.
    pub git_dirty: Option<bool>,
    /// `rustc -V`.
    pub rustc: Option<String>,
    /// Kafka, from the jar in the state directory (`kafka/libs-*/kafka_2.13-<version>.jar`).
    pub kafka: Option<String>,
    /// The database server: `FerretDB <version>` or `MongoDB <version>`, from `buildInfo`.
    pub database: Option<String>,
}

impl Versions {
    /// Asks git, rustc, the state directory and the database.
    pub async fn detect(repo_dir: &Path, state_dir: &Path, mongo: &MongoSettings) -> Self {
        let git = |args: &[&str]| command_output("git", &[&["-C", &repo_dir.to_string_lossy()], args].concat());
        Self {
            bench: env!("CARGO_PKG_VERSION").to_owned(),
            git_commit: git(&["rev-parse", "HEAD"]),
            git_dirty: git(&["status", "--porcelain", "--untracked-files=no"]).map(|s| !s.is_empty()),
            rustc: command_output("rustc", &["-V"]),
            kafka: kafka_version(state_dir),
            database: database_version(mongo).await,
        }
    }
}

/// The trimmed standard output of a successful command.
fn command_output(program: &str, args: &[&str]) -> Option<String> {
    let output = std::process::Command::new(program).args(args).output().ok()?;
    output.status.success().then(|| String::from_utf8_lossy(&output.stdout).trim().to_owned())
}

/// The Kafka version of the jar under `state_dir/kafka/libs-*`.
pub fn kafka_version(state_dir: &Path) -> Option<String> {
    let kafka_dir = state_dir.join("kafka");
    let mut versions: Vec<String> = std::fs::read_dir(&kafka_dir)
        .ok()?
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("libs-"))
        .flat_map(|libs| std::fs::read_dir(libs.path()).into_iter().flatten().flatten())
        .filter_map(|jar| kafka_version_of_jar(&jar.file_name().to_string_lossy()))
        .collect();
    versions.sort();
    versions.dedup();
    (!versions.is_empty()).then(|| versions.join(", "))
}

/// `4.1.1` of `kafka_2.13-4.1.1.jar` (not of the test or sources jars).
pub fn kafka_version_of_jar(name: &str) -> Option<String> {
    let version = name.strip_prefix("kafka_")?.split_once('-')?.1.strip_suffix(".jar")?;
    let plain = version.chars().all(|c| c.is_ascii_digit() || c == '.');
    plain.then(|| version.to_owned())
}

async fn database_version(settings: &MongoSettings) -> Option<String> {
    let client = settings.client("saga-bench").await.ok()?;
    let info = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        client.database("admin").run_command(doc! { "buildInfo": 1 }),
    )
    .await
    .ok()?
    .ok()?;
    match info.get_str("ferretdbVersion") {
        Ok(version) => Some(format!("FerretDB {version}")),
        Err(_) => info.get_str("version").ok().map(|v| format!("MongoDB {v}")),
    }
}

/// The durability settings in force during the run, as read back from the clients and the broker's
/// configuration (the bench sets none of them).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Durability {
    /// The producer's `acks` (the services' and the floor's producer settings).
    pub producer_acks: Option<String>,
    /// The producer's `enable.idempotence`.
    pub producer_idempotence: Option<String>,
    /// The consumers' `isolation.level`.
    pub consumer_isolation: Option<String>,
    /// The broker's replication and flush settings, from `server.properties` in the state directory (the
    /// broker's defaults apply to what is not listed).
    pub broker: BTreeMap<String, String>,
    /// The write concern: the connection string's, or the server's default (what the services get).
    pub write_concern: String,
    /// The database server's command line, when it runs here (FerretDB's backend and its storage).
    pub database_command: Option<String>,
}

/// Broker settings that bear on durability.
const BROKER_KEYS: [&str; 6] = [
    "default.replication.factor",
    "min.insync.replicas",
    "offsets.topic.replication.factor",
    "log.flush.interval.messages",
    "log.flush.interval.ms",
    "unclean.leader.election.enable",
];

impl Durability {
    /// Reads the settings back from the clients' configurations and the state directory.
    pub fn detect(kafka: &KafkaSettings, mongo: &MongoSettings, state_dir: &Path, database_pid: Option<u32>) -> Self {
        let producer = kafka.producer_config();
        let consumer = kafka.consumer_config("saga-bench");
        let properties = std::fs::read_to_string(state_dir.join("kafka/server.properties")).unwrap_or_default();
        Self {
            producer_acks: producer.get("acks").map(str::to_owned),
            producer_idempotence: producer.get("enable.idempotence").map(str::to_owned),
            consumer_isolation: consumer.get("isolation.level").map(str::to_owned),
            broker: broker_settings(&properties),
            write_concern: write_concern(&mongo.uri),
            database_command: database_pid.and_then(crate::procs::cmdline),
        }
    }
}

/// The durability-related `key=value` lines of a `server.properties` text.
pub fn broker_settings(properties: &str) -> BTreeMap<String, String> {
    properties
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .filter(|(k, _)| BROKER_KEYS.contains(&k.as_str()))
        .collect()
}

/// The write concern a connection string asks for (`w`, `journal`/`j`, `wtimeoutMS`), or the server default.
pub fn write_concern(uri: &str) -> String {
    let query = uri.split_once('?').map_or("", |(_, q)| q);
    let options: Vec<&str> = query
        .split('&')
        .filter(|kv| {
            let key = kv.split_once('=').map_or(*kv, |(k, _)| k).to_ascii_lowercase();
            matches!(key.as_str(), "w" | "journal" | "j" | "wtimeoutms")
        })
        .collect();
    if options.is_empty() {
        "server default (acknowledged; the services set no write concern)".to_owned()
    } else {
        format!("from MONGODB_URI: {}", options.join("&"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_texts_parse() {
        let cpuinfo = "processor\t: 0\nvendor_id\t: GenuineIntel\nmodel name\t: Intel(R) Xeon(R) CPU @ 2.20GHz\n";
        assert_eq!(parse_cpu_model(cpuinfo).as_deref(), Some("Intel(R) Xeon(R) CPU @ 2.20GHz"));
        assert_eq!(parse_mem_total("MemTotal:       24576000 kB\nMemFree: 1 kB\n"), Some(24_576_000 * 1024));
        assert_eq!(parse_mem_total("nothing"), None);
        let machine = Machine::detect();
        assert!(machine.cores >= 1);
    }

    #[test]
    fn the_kafka_version_comes_from_the_broker_jar_only() {
        assert_eq!(kafka_version_of_jar("kafka_2.13-4.1.1.jar").as_deref(), Some("4.1.1"));
        assert_eq!(kafka_version_of_jar("kafka_2.13-4.1.1-test.jar"), None);
        assert_eq!(kafka_version_of_jar("kafka-clients-4.1.1.jar"), None);
    }

    #[test]
    fn durability_settings_are_read_back() {
        let props = "# c\nmin.insync.replicas=1\nlog.dirs=/x\ndefault.replication.factor = 1\n";
        let broker = broker_settings(props);
        assert_eq!(broker.len(), 2, "{broker:?}");
        assert_eq!(broker["min.insync.replicas"], "1");
        assert_eq!(broker["default.replication.factor"], "1");
        assert!(write_concern("mongodb://127.0.0.1:27017").starts_with("server default"));
        assert_eq!(
            write_concern("mongodb://h/?w=majority&journal=true&appName=x"),
            "from MONGODB_URI: w=majority&journal=true"
        );
        let kafka = KafkaSettings::local("127.0.0.1:9092", "");
        let mongo = MongoSettings { uri: "mongodb://127.0.0.1:27017".into(), database: "x".into() };
        let durability = Durability::detect(&kafka, &mongo, Path::new("/nonexistent"), None);
        assert_eq!(durability.producer_acks.as_deref(), Some("all"));
        assert_eq!(durability.producer_idempotence.as_deref(), Some("true"));
    }
}
