//! CPU time and peak memory of the stack's processes over a point, from `/proc` (Linux).
//!
//! - CPU: `utime + stime` of `/proc/<pid>/stat` (every thread of the process) at the start and the end of
//!   the measured window, in clock ticks (`getconf CLK_TCK`, 100 when it cannot be asked).
//! - Peak RSS: `VmRSS` of `/proc/<pid>/status`, sampled every [`SAMPLE_INTERVAL`] during the window; the
//!   largest sample.
//!
//! The processes are found through the pid files `make up` writes under the state directory
//! (`$SAGA_STATE_DIR`, default `.local/`): `kafka/kafka.pid`, `ferretdb/ferretdb.pid` and
//! `services/<service>.pid`, or given by pid. A process that cannot be found (no pid file, an external
//! `MONGODB_URI`, not running) is reported as missing, not as an error. A process whose start time changes
//! during the window (it restarted) or that exits is reported as such, without CPU figures.
//!
//! Before the floors and before each point the run [waits for a quiet stack](wait_quiet): the previous
//! point's sagas settle a few seconds after they finish, and the census and sweeps run now and then; a floor
//! measured meanwhile says more about them than about Kafka or the database.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::load::Window;

/// How often memory is sampled during a window.
pub const SAMPLE_INTERVAL: Duration = Duration::from_millis(200);

/// The stack counts as quiet while its processes together use less than this many cores (idle, Kafka and the
/// services use a few hundredths).
pub const QUIET_CORES: f64 = 0.25;
/// How long each quiet-stack sample lasts.
const QUIET_SAMPLE: Duration = Duration::from_secs(1);
/// How many samples in a row must be quiet.
const QUIET_SAMPLES: u32 = 2;

/// Whether the stack was quiet before a measurement.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Quiet {
    /// Whether it became quiet ([`QUIET_SAMPLES`] samples in a row under [`QUIET_CORES`]) within the time allowed.
    pub quiet: bool,
    /// How long it was waited for, seconds.
    pub waited_s: f64,
    /// The cores the stack's processes used in the last sample.
    pub busy_cores: f64,
}

/// Counts quiet samples in a row.
#[derive(Debug, Default)]
struct QuietRun(u32);

impl QuietRun {
    /// Takes one sample; returns whether the stack is now quiet.
    fn observe(&mut self, busy_cores: f64) -> bool {
        self.0 = if busy_cores < QUIET_CORES { self.0 + 1 } else { 0 };
        self.0 >= QUIET_SAMPLES
    }
}

/// Waits until the processes of `specs` together use less than [`QUIET_CORES`] for [`QUIET_SAMPLES`] samples
/// of a second in a row, or until `timeout` has passed (then [`Quiet::quiet`] is false). Processes that
/// cannot be found are left out.
pub async fn wait_quiet(specs: &[ProcessSpec], timeout: Duration, ticks_per_second: u64) -> Quiet {
    let started = std::time::Instant::now();
    let pids: Vec<u32> = specs.iter().filter_map(|spec| spec.resolve().ok()).collect();
    let ticks = || pids.iter().filter_map(|pid| read_stat(*pid)).map(|(ticks, _)| ticks).sum::<u64>();
    let mut run = QuietRun::default();
    loop {
        let before = ticks();
        tokio::time::sleep(QUIET_SAMPLE).await;
        let used = ticks().saturating_sub(before) as f64 / ticks_per_second.max(1) as f64;
        let busy_cores = used / QUIET_SAMPLE.as_secs_f64();
        let quiet = run.observe(busy_cores);
        let waited = started.elapsed();
        if quiet || waited >= timeout {
            return Quiet { quiet, waited_s: waited.as_secs_f64(), busy_cores };
        }
    }
}

/// Where to find a process.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PidSource {
    /// This pid.
    Pid(u32),
    /// The pid in this file.
    PidFile(PathBuf),
    /// Not measurable here, for this reason (such as an external database).
    Unavailable(String),
}

/// A process to measure.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessSpec {
    /// Its name in the report: `kafka`, `database`, `orchestrator`, ...
    pub name: String,
    /// Where its pid comes from.
    pub source: PidSource,
}

impl ProcessSpec {
    /// A process found by pid.
    pub fn pid(name: &str, pid: u32) -> Self {
        Self { name: name.to_owned(), source: PidSource::Pid(pid) }
    }

    /// The pid of the running process, or why there is none.
    pub fn resolve(&self) -> Result<u32, String> {
        let pid = match &self.source {
            PidSource::Pid(pid) => *pid,
            PidSource::PidFile(path) => {
                let text =
                    std::fs::read_to_string(path).map_err(|e| format!("no pid file {} ({e})", path.display()))?;
                text.trim().parse().map_err(|_| format!("pid file {} holds {:?}", path.display(), text.trim()))?
            }
            PidSource::Unavailable(reason) => return Err(reason.clone()),
        };
        if Path::new(&format!("/proc/{pid}")).exists() { Ok(pid) } else { Err(format!("pid {pid} is not running")) }
    }
}

/// The stack's processes as `make up` runs them under `state_dir`: Kafka, the database (FerretDB; marked
/// unavailable when `external_database` says why, such as an external `MONGODB_URI`) and the four services.
pub fn standard_processes(state_dir: &Path, external_database: Option<&str>) -> Vec<ProcessSpec> {
    let file = |name: &str, path: PathBuf| ProcessSpec { name: name.to_owned(), source: PidSource::PidFile(path) };
    let database = match external_database {
        Some(reason) => ProcessSpec { name: "database".into(), source: PidSource::Unavailable(reason.to_owned()) },
        None => file("database", state_dir.join("ferretdb/ferretdb.pid")),
    };
    let mut specs = vec![file("kafka", state_dir.join("kafka/kafka.pid")), database];
    for service in SERVICES {
        specs.push(file(service, state_dir.join(format!("services/{service}.pid"))));
    }
    specs
}

/// The four services, in the order the report lists them.
pub const SERVICES: [&str; 4] = ["orchestrator", "inventory", "payment", "shipping"];

/// CPU time and peak memory of one process over a window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProcessUsage {
    /// The process's name in the report.
    pub name: String,
    /// Its pid, when found.
    pub pid: Option<u32>,
    /// `measured`, or why there are no figures (`missing: ...`, `exited during the point`, `restarted
    /// during the point`).
    pub status: String,
    /// User plus system CPU seconds over the window.
    pub cpu_seconds: Option<f64>,
    /// The same as a share of one core over the window (100 = one core busy all the time).
    pub cpu_percent: Option<f64>,
    /// The largest resident set size sampled, in bytes.
    pub peak_rss_bytes: Option<u64>,
    /// How many memory samples were taken.
    pub rss_samples: u32,
}

/// The CPU ticks (`utime + stime`) and start time (field 22) in a `/proc/<pid>/stat` line.
///
/// The command name (field 2) is in parentheses and may hold spaces and parentheses itself, so the fields
/// are counted after its last `)`.
pub fn parse_stat(stat: &str) -> Option<(u64, u64)> {
    let after_name = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // `fields[0]` is field 3 (state), so field k is fields[k - 3].
    let utime: u64 = fields.get(14 - 3)?.parse().ok()?;
    let stime: u64 = fields.get(15 - 3)?.parse().ok()?;
    let start_time: u64 = fields.get(22 - 3)?.parse().ok()?;
    Some((utime + stime, start_time))
}

/// The `VmRSS` of a `/proc/<pid>/status` text, in bytes.
pub fn parse_vm_rss(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let mut parts = line["VmRSS:".len()..].split_whitespace();
    let value: u64 = parts.next()?.parse().ok()?;
    let factor = match parts.next().unwrap_or("kB") {
        "kB" => 1024,
        "mB" | "MB" => 1024 * 1024,
        _ => 1,
    };
    Some(value * factor)
}

/// Clock ticks per second (`getconf CLK_TCK`), 100 when it cannot be asked.
pub fn clock_ticks() -> u64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .filter(|ticks| *ticks > 0)
        .unwrap_or(100)
}

/// The command line of `pid`, arguments separated by spaces.
pub fn cmdline(pid: u32) -> Option<String> {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let parts: Vec<String> =
        raw.split(|b| *b == 0).filter(|p| !p.is_empty()).map(|p| String::from_utf8_lossy(p).into_owned()).collect();
    (!parts.is_empty()).then(|| parts.join(" "))
}

fn read_stat(pid: u32) -> Option<(u64, u64)> {
    parse_stat(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

fn read_rss(pid: u32) -> Option<u64> {
    parse_vm_rss(&std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?)
}

/// One process being watched through a window.
#[derive(Debug)]
struct Watch {
    name: String,
    pid: Result<u32, String>,
    start: Option<(u64, u64)>,
    peak_rss: Option<u64>,
    samples: u32,
    gone: bool,
}

impl Watch {
    fn sample_rss(&mut self) {
        let Ok(pid) = self.pid else { return };
        match read_rss(pid) {
            Some(rss) => {
                self.peak_rss = Some(self.peak_rss.map_or(rss, |peak| peak.max(rss)));
                self.samples += 1;
            }
            None => self.gone = true,
        }
    }

    fn finish(self, ticks_per_second: u64, window: Duration) -> ProcessUsage {
        let mut usage = ProcessUsage {
            name: self.name,
            pid: self.pid.as_ref().ok().copied(),
            status: "measured".into(),
            cpu_seconds: None,
            cpu_percent: None,
            peak_rss_bytes: self.peak_rss,
            rss_samples: self.samples,
        };
        let pid = match self.pid {
            Ok(pid) => pid,
            Err(reason) => {
                usage.status = format!("missing: {reason}");
                return usage;
            }
        };
        match (self.start, read_stat(pid)) {
            (Some((cpu_start, started)), Some((cpu_end, started_now))) if started == started_now && !self.gone => {
                let seconds = cpu_end.saturating_sub(cpu_start) as f64 / ticks_per_second as f64;
                usage.cpu_seconds = Some(seconds);
                usage.cpu_percent = Some(100.0 * seconds / window.as_secs_f64().max(1e-9));
            }
            (Some(_), Some(_)) if !self.gone => usage.status = "restarted during the point".into(),
            _ => usage.status = "exited during the point".into(),
        }
        usage
    }
}

/// Measures `specs` through `window`: waits for its start, samples memory every [`SAMPLE_INTERVAL`] until
/// its end, and takes the CPU difference.
pub async fn measure(specs: Vec<ProcessSpec>, window: Window, ticks_per_second: u64) -> Vec<ProcessUsage> {
    tokio::time::sleep_until(tokio::time::Instant::from_std(window.start)).await;
    let mut watches: Vec<Watch> = specs
        .into_iter()
        .map(|spec| {
            let pid = spec.resolve();
            let start = pid.as_ref().ok().and_then(|pid| read_stat(*pid));
            Watch { name: spec.name, pid, start, peak_rss: None, samples: 0, gone: false }
        })
        .collect();
    let mut ticker = tokio::time::interval(SAMPLE_INTERVAL);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let end = tokio::time::Instant::from_std(window.end);
    loop {
        tokio::select! {
            () = tokio::time::sleep_until(end) => break,
            _ = ticker.tick() => watches.iter_mut().for_each(Watch::sample_rss),
        }
    }
    watches.into_iter().map(|w| w.finish(ticks_per_second, window.duration())).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stack_is_quiet_after_enough_quiet_samples_in_a_row() {
        let mut run = QuietRun::default();
        assert!(!run.observe(0.1), "one quiet sample is not enough");
        assert!(!run.observe(0.9), "a busy sample starts over");
        assert!(!run.observe(0.1));
        assert!(run.observe(0.2));
        assert!(run.observe(0.0));
        assert!(!run.observe(QUIET_CORES), "at the threshold it is busy");
    }

    const STAT: &str = "4242 (java (Kafka) x) S 1 4242 4242 0 -1 4194560 81234 0 12 0 1500 250 0 0 20 0 97 0 \
                        123456 4096000000 51200 18446744073709551615 1 1 0 0 0 0 0 4096 17000 0 0 0 17 1 0 0 0 0 0";

    #[test]
    fn stat_fields_are_counted_after_the_command_name() {
        assert_eq!(parse_stat(STAT), Some((1500 + 250, 123456)));
        assert_eq!(parse_stat("12 (short) S 1"), None);
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn vm_rss_is_read_in_bytes() {
        let status = "Name:\tferretdb\nVmPeak:\t  900000 kB\nVmRSS:\t   51200 kB\nThreads:\t12\n";
        assert_eq!(parse_vm_rss(status), Some(51200 * 1024));
        assert_eq!(parse_vm_rss("Name:\tkthreadd\n"), None);
    }

    #[test]
    fn this_process_can_be_read_from_proc() {
        let pid = std::process::id();
        let (ticks, started) = read_stat(pid).expect("our own stat");
        assert!(started > 0 && ticks < u64::MAX);
        assert!(read_rss(pid).expect("our own VmRSS") > 0);
        assert!(cmdline(pid).is_some());
        assert!(clock_ticks() > 0);
    }

    #[test]
    fn missing_processes_say_why() {
        let dir = std::env::temp_dir().join(format!("saga-bench-procs-{}", std::process::id()));
        let specs = standard_processes(&dir, Some("external database (MONGODB_URI)"));
        assert_eq!(specs.len(), 6);
        assert!(specs[0].resolve().expect_err("no pid file").contains("kafka.pid"));
        assert_eq!(specs[1].resolve(), Err("external database (MONGODB_URI)".to_owned()));
        assert_eq!(ProcessSpec::pid("self", std::process::id()).resolve(), Ok(std::process::id()));
    }

    #[tokio::test]
    async fn a_window_measures_this_process() {
        let window = Window::after(Duration::ZERO, Duration::from_millis(450));
        let specs = vec![
            ProcessSpec::pid("self", std::process::id()),
            ProcessSpec { name: "gone".into(), source: PidSource::Unavailable("not here".into()) },
        ];
        let usage = measure(specs, window, clock_ticks()).await;
        assert_eq!(usage[0].status, "measured");
        assert!(usage[0].cpu_seconds.is_some() && usage[0].peak_rss_bytes.is_some());
        assert!(usage[0].rss_samples >= 2, "{usage:?}");
        assert_eq!(usage[1].status, "missing: not here");
        assert_eq!(usage[1].cpu_seconds, None);
    }
}
