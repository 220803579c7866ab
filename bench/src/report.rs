//! The report of a run: everything measured, as JSON (`<timestamp>.json`), a Markdown summary
//! (`<timestamp>.md`) and a latency-versus-throughput chart (`<timestamp>.svg`), with `latest.*` copies.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::api::Endpoints;
use crate::config::Plan;
use crate::environment::{Durability, Machine, Versions};
use crate::error::{Error, Result};
use crate::floor::{DatabaseFloor, KafkaFloor};
use crate::point::{Mode, PointResult, trim_float};
use crate::procs::ProcessUsage;

/// The report format's name and version (in every JSON report).
pub const SCHEMA: &str = "saga-bench/1";

/// The start of the points table's header in the Markdown report.
pub const POINTS_TABLE_HEADER: &str = "| mode | C / rate | sagas/s | p50 ms | p95 ms | p99 ms | max ms | errors |";

/// Produce-to-consume trips on the critical path of a completed saga: the start (`saga.start` through
/// `saga.reply`), three commands, three replies, and the status event the live stream follows.
pub const KAFKA_TRIPS_PER_COMPLETED_SAGA: u32 = 8;

/// How `k` is computed (in every report).
pub const K_FORMULA: &str = "k_kafka = saga p50 (closed loop, lowest concurrency, normally C=1) / Kafka produce-to-consume p50; \
k_database = the same saga p50 / database update-by-_id p50. A completed saga has 8 produce-to-consume trips on its critical \
path (start, 3 commands, 3 replies, the status event) plus sequential database writes in the orchestrator and each participant, \
so k_kafka cannot go below 8.";

/// A process found at the start of the run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProcessInfo {
    /// Its name in the report.
    pub name: String,
    /// Its pid, when found.
    pub pid: Option<u32>,
    /// Its command line, or why it was not found.
    pub detail: String,
}

/// The floors, or why one could not be measured.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Floors {
    /// The Kafka produce-to-consume trip.
    pub kafka: Option<KafkaFloor>,
    /// Why the Kafka floor is missing.
    pub kafka_error: Option<String>,
    /// The database update by `_id`.
    pub database: Option<DatabaseFloor>,
    /// Why the database floor is missing.
    pub database_error: Option<String>,
    /// How quiet the stack was before the floors (none: not waited for).
    #[serde(default)]
    pub quiet: Option<crate::procs::Quiet>,
}

/// The saga's p50 as a multiple of the floors.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Ratios {
    /// The point whose p50 is used (`C=1` normally).
    pub reference_point: Option<String>,
    /// Its order-to-terminal p50.
    pub saga_p50_ms: Option<f64>,
    /// The Kafka floor's p50.
    pub kafka_trip_p50_ms: Option<f64>,
    /// The database floor's p50.
    pub database_update_p50_ms: Option<f64>,
    /// `saga_p50_ms / kafka_trip_p50_ms`.
    pub k_kafka: Option<f64>,
    /// `saga_p50_ms / database_update_p50_ms`.
    pub k_database: Option<f64>,
    /// Kafka trips on a completed saga's critical path.
    pub kafka_trips_per_completed_saga: u32,
    /// How the figures are computed.
    pub formula: String,
}

impl Ratios {
    /// The ratios of `points` against `floors`: the reference is the closed-loop point of lowest concurrency.
    pub fn compute(points: &[PointResult], floors: &Floors) -> Self {
        let reference = points
            .iter()
            .filter_map(|p| match p.mode {
                Mode::Closed { concurrency } => p.latency.map(|l| (concurrency, p.label.clone(), l.p50_ms)),
                Mode::Open { .. } => None,
            })
            .min_by_key(|(concurrency, _, _)| *concurrency);
        let saga = reference.as_ref().map(|(_, _, p50)| *p50);
        let kafka = floors.kafka.as_ref().and_then(|f| f.produce_to_consume).map(|s| s.p50_ms);
        let database = floors.database.as_ref().and_then(|f| f.update_by_id).map(|s| s.p50_ms);
        let ratio = |floor: Option<f64>| Some(saga? / floor.filter(|f| *f > 0.0)?);
        Self {
            reference_point: reference.map(|(_, label, _)| label),
            saga_p50_ms: saga,
            kafka_trip_p50_ms: kafka,
            database_update_p50_ms: database,
            k_kafka: ratio(kafka),
            k_database: ratio(database),
            kafka_trips_per_completed_saga: KAFKA_TRIPS_PER_COMPLETED_SAGA,
            formula: K_FORMULA.to_owned(),
        }
    }
}

/// Everything a run measured and what it ran on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// [`SCHEMA`].
    pub schema: String,
    /// `standard`, `smoke` or `custom`.
    pub kind: String,
    /// When the run began.
    pub started_at: DateTime<Utc>,
    /// When it ended.
    pub finished_at: DateTime<Utc>,
    /// What was run.
    pub plan: Plan,
    /// The services' URLs.
    pub endpoints: Endpoints,
    /// Kafka's bootstrap servers.
    pub kafka_bootstrap_servers: String,
    /// The topic prefix (the floor's topic is under it).
    pub kafka_topic_prefix: String,
    /// The bench's own database (the URI is not reported: it may carry credentials).
    pub bench_database: String,
    /// The machine.
    pub machine: Machine,
    /// Versions of everything.
    pub versions: Versions,
    /// The durability settings in force.
    pub durability: Durability,
    /// How many sagas the orchestrator stored when the run began (absent if it could not be read).
    #[serde(default)]
    pub stored_sagas: Option<crate::stored::StoredSagas>,
    /// The processes measured.
    pub processes: Vec<ProcessInfo>,
    /// The floors.
    pub floors: Floors,
    /// The points, in the order run.
    pub points: Vec<PointResult>,
    /// The saga's p50 against the floors.
    pub ratios: Ratios,
    /// How the figures are defined.
    pub method: Vec<String>,
}

/// How the figures are defined (in every report).
pub fn method_notes() -> Vec<String> {
    [
        "sagas/s: terminal status events received within the measured window, divided by its length.",
        "latency: from when an order was due (closed loop: sent; open loop: its slot in the schedule) to the terminal status event on the order's event stream (GET /v1/orders/{id}/events, opened after the 202), for the orders due within the window; each is followed to its end after the window, within the order time limit.",
        "terminal_on_connect: orders that had finished before their stream was open; their latency includes opening it.",
        "errors: orders due within the window without a terminal status: HTTP failures, broken streams, time limits, open-loop drops.",
        "steps: from the timeline entry whose transition sent a command to the one that applied its reply (orchestrator clock), over a sample of the window's sagas.",
        "CPU s: utime+stime over the window from /proc/<pid>/stat; peak RSS: the largest VmRSS sampled every 200 ms during the window. saga-bench is this process (it shares the machine).",
        "Nothing is relaxed for the benchmark: the services, Kafka and the database run with their configured durability.",
        "quiet stack: before the floors and before each point the run waits (up to plan.quiet_timeout) until the stack's processes together use less than a quarter of a core for two one-second samples in a row, so that the previous point's settling or a background sweep does not fall into the measurement; a point that started on a busy stack is listed under the points.",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect()
}

/// Says how quiet the stack was before what `what` measured.
fn quiet_sentence(what: &str, quiet: &crate::procs::Quiet) -> String {
    if quiet.quiet {
        format!(
            "{what} on a quiet stack (its processes under {} cores; waited {:.0} s).",
            crate::procs::QUIET_CORES,
            quiet.waited_s
        )
    } else {
        format!(
            "{what} on a busy stack: its processes still used {:.2} cores after {:.0} s of waiting.",
            quiet.busy_cores, quiet.waited_s
        )
    }
}

/// The files a report was written to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Written {
    /// `<timestamp>.json`.
    pub json: PathBuf,
    /// `<timestamp>.md`.
    pub markdown: PathBuf,
    /// `<timestamp>.svg`.
    pub svg: PathBuf,
}

impl Report {
    /// The file name stem of this report: its start time, `20250102T030405Z`.
    pub fn stem(&self) -> String {
        self.started_at.format("%Y%m%dT%H%M%SZ").to_string()
    }

    /// Writes `<stem>.json`, `.md` and `.svg` into `dir` (created if missing), and copies them to `latest.*`.
    pub fn write(&self, dir: &Path) -> Result<Written> {
        std::fs::create_dir_all(dir).map_err(Error::io(format!("creating {}", dir.display())))?;
        let json = serde_json::to_string_pretty(self).map_err(|e| Error::Config(format!("serializing: {e}")))?;
        let stem = self.stem();
        let written = Written {
            json: dir.join(format!("{stem}.json")),
            markdown: dir.join(format!("{stem}.md")),
            svg: dir.join(format!("{stem}.svg")),
        };
        for (path, text, latest) in [
            (&written.json, json + "\n", "latest.json"),
            (&written.markdown, self.markdown(), "latest.md"),
            (&written.svg, crate::svg::chart(self), "latest.svg"),
        ] {
            std::fs::write(path, &text).map_err(Error::io(format!("writing {}", path.display())))?;
            let latest = dir.join(latest);
            std::fs::write(&latest, &text).map_err(Error::io(format!("writing {}", latest.display())))?;
        }
        Ok(written)
    }

    /// The Markdown summary.
    pub fn markdown(&self) -> String {
        let mut md = String::new();
        let _ = writeln!(md, "# saga-bench {} ({} run)\n", self.started_at.format("%Y-%m-%d %H:%M:%S UTC"), self.kind);
        self.write_setup(&mut md);
        self.write_points(&mut md);
        self.write_floors(&mut md);
        self.write_steps(&mut md);
        self.write_db_requests(&mut md);
        self.write_outcomes(&mut md);
        let _ = writeln!(md, "## Method\n");
        for note in &self.method {
            let _ = writeln!(md, "- {note}");
        }
        let _ = writeln!(md, "- k: {}", self.ratios.formula);
        md
    }

    fn write_setup(&self, md: &mut String) {
        let v = &self.versions;
        let m = &self.machine;
        let or = |value: &Option<String>| value.clone().unwrap_or_else(|| "unknown".into());
        let commit = v.git_commit.as_deref().map_or_else(|| "unknown".to_owned(), |c| c.chars().take(12).collect());
        let dirty = if v.git_dirty == Some(true) { " (uncommitted changes)" } else { "" };
        let _ = writeln!(md, "- Code: git {commit}{dirty}, {}, saga-bench {}", or(&v.rustc), v.bench);
        let _ =
            writeln!(md, "- Kafka {} at {}; database {}", or(&v.kafka), self.kafka_bootstrap_servers, or(&v.database));
        let memory = m.memory_bytes.map_or_else(|| "unknown memory".to_owned(), |b| format!("{:.1} GiB", gib(b)));
        let load = m.load_average_at_start.map_or_else(String::new, |l| format!(", load average {l:.2} at start"));
        let _ = writeln!(md, "- Machine: {}, {} cores, {memory}{load}", or(&m.cpu_model), m.cores);
        let d = &self.durability;
        let broker: Vec<String> = d.broker.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let _ = writeln!(
            md,
            "- Durability: producer acks={}, enable.idempotence={}, consumers {}; broker {}; write concern: {}",
            or(&d.producer_acks),
            or(&d.producer_idempotence),
            or(&d.consumer_isolation),
            if broker.is_empty() { "defaults".to_owned() } else { broker.join(", ") },
            d.write_concern
        );
        if let Some(stored) = &self.stored_sagas {
            let _ = writeln!(
                md,
                "- Stored sagas at the start: {} live, {} finished (orchestrator database)",
                stored.live, stored.finished
            );
        }
        let p = &self.plan;
        let _ = writeln!(
            md,
            "- Plan: warm-up {} s, window {} s per point, mix {}, order time limit {} s, {} customers{}\n",
            trim_float(p.warmup.as_secs_f64()),
            trim_float(p.duration.as_secs_f64()),
            p.mix,
            trim_float(p.order_timeout.as_secs_f64()),
            p.customers,
            if p.idempotency_keys { ", Idempotency-Key on every order" } else { "" }
        );
    }

    fn process_names(&self) -> Vec<String> {
        let mut names: Vec<String> = Vec::new();
        for usage in self.points.iter().flat_map(|p| &p.processes) {
            if !names.contains(&usage.name) {
                names.push(usage.name.clone());
            }
        }
        names
    }

    fn write_points(&self, md: &mut String) {
        let _ = writeln!(md, "## Points\n");
        let names = self.process_names();
        let mut header = POINTS_TABLE_HEADER.to_owned();
        for name in &names {
            let _ = write!(header, " {} CPU s / peak RSS MiB |", cell(name));
        }
        let _ = writeln!(md, "{header}");
        let _ = writeln!(md, "|{}", "---|".repeat(8 + names.len()));
        for point in &self.points {
            let l = point.latency;
            let ms =
                |f: fn(&crate::latency::Summary) -> f64| l.as_ref().map_or_else(|| "-".to_owned(), |s| fmt_ms(f(s)));
            let mut row = format!(
                "| {} | {} | {:.1} | {} | {} | {} | {} | {} |",
                point.mode.name(),
                point.label,
                point.sagas_per_s,
                ms(|s| s.p50_ms),
                ms(|s| s.p95_ms),
                ms(|s| s.p99_ms),
                ms(|s| s.max_ms),
                point.errors
            );
            for name in &names {
                let usage = point.processes.iter().find(|u| &u.name == name);
                let _ = write!(row, " {} |", cell(&usage_cell(usage)));
            }
            let _ = writeln!(md, "{row}");
        }
        let _ = writeln!(md);
        for point in &self.points {
            if let Some(quiet) = point.quiet_before.as_ref().filter(|q| !q.quiet) {
                let _ = writeln!(md, "{}\n", quiet_sentence(&point.label, quiet));
            }
        }
    }

    fn write_floors(&self, md: &mut String) {
        let _ = writeln!(md, "## Floor and k\n");
        let _ = writeln!(md, "| floor | n | p50 ms | p99 ms | max ms |");
        let _ = writeln!(md, "|---|---|---|---|---|");
        let f = &self.floors;
        let row = |md: &mut String, name: &str, n: usize, summary: Option<crate::latency::Summary>| {
            let (p50, p99, max) = summary.map_or(("-".into(), "-".into(), "-".into()), |s| {
                (fmt_ms(s.p50_ms), fmt_ms(s.p99_ms), fmt_ms(s.max_ms))
            });
            let _ = writeln!(md, "| {name} | {n} | {p50} | {p99} | {max} |");
        };
        if let Some(kafka) = &f.kafka {
            row(md, "Kafka produce to consume (acks=all, idempotent)", kafka.n, kafka.produce_to_consume);
            row(md, "Kafka produce to acknowledgement", kafka.n, kafka.produce_to_ack);
        }
        if let Some(database) = &f.database {
            row(md, "database update_one by _id (acknowledged)", database.n, database.update_by_id);
        }
        for error in [&f.kafka_error, &f.database_error].into_iter().flatten() {
            let _ = writeln!(md, "| not measured: {} | - | - | - | - |", cell(error));
        }
        let r = &self.ratios;
        let _ = writeln!(md);
        if let Some(quiet) = &f.quiet {
            let _ = writeln!(md, "{}\n", quiet_sentence("The floors were measured", quiet));
        }
        match (&r.reference_point, r.saga_p50_ms) {
            (Some(point), Some(saga)) => {
                let k = |k: Option<f64>, floor: Option<f64>, what: &str| match (k, floor) {
                    (Some(k), Some(floor)) => format!("{k:.1} x the {what} ({} ms)", fmt_ms(floor)),
                    _ => format!("n/a x the {what} (not measured)"),
                };
                let _ = writeln!(
                    md,
                    "saga p50 at {point} = {} ms = {} = {}.\n",
                    fmt_ms(saga),
                    k(r.k_kafka, r.kafka_trip_p50_ms, "Kafka produce-to-consume p50"),
                    k(r.k_database, r.database_update_p50_ms, "database update p50")
                );
            }
            _ => {
                let _ = writeln!(md, "No closed-loop point with latencies: k is not computed.\n");
            }
        }
    }

    fn write_steps(&self, md: &mut String) {
        let mut steps: Vec<String> = Vec::new();
        for step in self.points.iter().flat_map(|p| &p.steps.steps) {
            if !steps.contains(&step.step) {
                steps.push(step.step.clone());
            }
        }
        if steps.is_empty() {
            return;
        }
        let _ = writeln!(md, "## Per-step latency (command sent to reply applied, ms: p50 / p95 / p99)\n");
        let _ = writeln!(md, "| point | sagas | {} |", steps.iter().map(|s| cell(s)).collect::<Vec<_>>().join(" | "));
        let _ = writeln!(md, "|---|---|{}", "---|".repeat(steps.len()));
        for point in &self.points {
            let mut row = format!("| {} | {} |", point.label, point.steps.sampled_sagas);
            for step in &steps {
                let text = point.steps.steps.iter().find(|s| &s.step == step).map_or_else(
                    || "-".to_owned(),
                    |s| {
                        format!(
                            "{} / {} / {}",
                            fmt_ms(s.latency.p50_ms),
                            fmt_ms(s.latency.p95_ms),
                            fmt_ms(s.latency.p99_ms)
                        )
                    },
                );
                let _ = write!(row, " {text} |");
            }
            let _ = writeln!(md, "{row}");
        }
        let _ = writeln!(md);
    }

    fn write_db_requests(&self, md: &mut String) {
        let measured: Vec<(&PointResult, &crate::dbops::DbRequests)> =
            self.points.iter().filter_map(|p| Some((p, p.db_requests.as_ref()?))).collect();
        let Some((_, first)) = measured.first() else { return };
        let mut commands: Vec<&String> = measured.iter().flat_map(|(_, r)| r.by_command.keys()).collect();
        commands.sort();
        commands.dedup();
        let _ = writeln!(md, "## Database requests per saga (window; source: {})\n", first.source);
        let commits = measured.iter().any(|(_, r)| r.commits_per_saga.is_some());
        let header: Vec<String> = commands.iter().map(|c| cell(c)).collect();
        let (commits_header, commits_rule) = if commits { (" SQLite commits |", "---|") } else { ("", "") };
        let _ = writeln!(md, "| point | all |{commits_header} {} |", header.join(" | "));
        let _ = writeln!(md, "|---|---|{commits_rule}{}", "---|".repeat(commands.len()));
        for (point, requests) in measured {
            let per = |n: u64| {
                let sagas = point.terminal_in_window;
                if sagas == 0 { "-".to_owned() } else { format!("{:.2}", n as f64 / sagas as f64) }
            };
            let all = requests.per_saga.map_or_else(|| "-".to_owned(), |n| format!("{n:.1}"));
            let cells: Vec<String> =
                commands.iter().map(|c| per(requests.by_command.get(*c).copied().unwrap_or(0))).collect();
            let commits_cell = if commits {
                format!(" {} |", requests.commits_per_saga.map_or_else(|| "-".to_owned(), |n| format!("{n:.2}")))
            } else {
                String::new()
            };
            let _ = writeln!(md, "| {} | {all} |{commits_cell} {} |", point.label, cells.join(" | "));
        }
        if commits {
            let _ = writeln!(
                md,
                "\nSQLite commits: those of FerretDB's write queue, all databases; writes that waited for their \
                 database together share one."
            );
        }
        let _ = writeln!(md);
    }

    fn write_outcomes(&self, md: &mut String) {
        let _ = writeln!(md, "## Outcomes and errors\n");
        let _ = writeln!(md, "| point | sent | COMPLETED | CANCELLED | FAILED | unexpected | on connect | errors |");
        let _ = writeln!(md, "|---|---|---|---|---|---|---|---|");
        for point in &self.points {
            let count = |status: &str| point.outcomes.get(status).copied().unwrap_or(0);
            let errors: BTreeMap<&String, &u64> = point.errors_by_kind.iter().collect();
            let errors = if errors.is_empty() {
                "0".to_owned()
            } else {
                errors.iter().map(|(k, v)| format!("{k}: {v}")).collect::<Vec<_>>().join(", ")
            };
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {} | {} | {} | {} |",
                point.label,
                point.sent_in_window,
                count("COMPLETED"),
                count("CANCELLED"),
                count("FAILED"),
                point.unexpected_outcomes,
                point.terminal_on_connect,
                cell(&errors)
            );
        }
        let _ = writeln!(md);
    }
}

/// A number of milliseconds for a table: 3 significant digits or whole milliseconds.
pub fn fmt_ms(ms: f64) -> String {
    if ms >= 100.0 {
        format!("{ms:.0}")
    } else if ms >= 10.0 {
        format!("{ms:.1}")
    } else {
        format!("{ms:.2}")
    }
}

fn gib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0 * 1024.0)
}

fn usage_cell(usage: Option<&ProcessUsage>) -> String {
    let Some(usage) = usage else { return "-".into() };
    let rss = usage.peak_rss_bytes.map_or_else(|| "-".to_owned(), |b| format!("{:.0}", b as f64 / (1024.0 * 1024.0)));
    match usage.cpu_seconds {
        Some(cpu) => format!("{cpu:.2} / {rss}"),
        None if usage.status.starts_with("missing") => "not found".into(),
        None => usage.status.clone(),
    }
}

/// Text safe inside a Markdown table cell.
fn cell(text: &str) -> String {
    text.replace('|', "\\|").replace('\n', " ")
}

#[cfg(test)]
pub(crate) mod tests {
    use std::time::Duration;

    use super::*;
    use crate::latency::Summary;
    use crate::procs::Quiet;
    use crate::steps::{StepLatency, StepReport};

    pub(crate) fn summary(p50: f64) -> Summary {
        Summary {
            count: 10,
            min_ms: p50 / 2.0,
            mean_ms: p50,
            p50_ms: p50,
            p95_ms: p50 * 2.0,
            p99_ms: p50 * 3.0,
            max_ms: p50 * 4.0,
        }
    }

    fn point(mode: Mode, sagas_per_s: f64, p50: f64) -> PointResult {
        PointResult {
            mode,
            label: mode.label(),
            warmup_s: 0.0,
            window_s: 2.0,
            drain_s: 0.1,
            sent_in_window: 10,
            sent_per_s: 5.0,
            terminal_in_window: 10,
            sagas_per_s,
            latency: Some(summary(p50)),
            latency_by_kind: BTreeMap::new(),
            accept_latency: None,
            outcomes: BTreeMap::from([("COMPLETED".to_owned(), 9), ("CANCELLED".to_owned(), 1)]),
            unexpected_outcomes: 0,
            terminal_on_connect: 0,
            errors: 0,
            errors_by_kind: BTreeMap::new(),
            error_examples: Vec::new(),
            steps: StepReport {
                sampled_sagas: 3,
                unreadable: 0,
                first_error: None,
                steps: vec![StepLatency { step: "reserve_stock".into(), latency: summary(4.0) }],
            },
            processes: vec![
                ProcessUsage {
                    name: "kafka".into(),
                    pid: Some(1),
                    status: "measured".into(),
                    cpu_seconds: Some(1.5),
                    cpu_percent: Some(75.0),
                    peak_rss_bytes: Some(300 * 1024 * 1024),
                    rss_samples: 10,
                },
                ProcessUsage {
                    name: "database".into(),
                    pid: None,
                    status: "missing: external | database".into(),
                    cpu_seconds: None,
                    cpu_percent: None,
                    peak_rss_bytes: None,
                    rss_samples: 0,
                },
            ],
            db_requests: Some(crate::dbops::DbRequests {
                source: "test".into(),
                by_command: BTreeMap::from([("find".to_owned(), 150), ("insert".to_owned(), 110)]),
                per_saga: Some(26.0),
                commits_per_saga: Some(9.5),
            }),
            quiet_before: None,
        }
    }

    pub(crate) fn report() -> Report {
        let mut busy = point(Mode::Closed { concurrency: 16 }, 120.0, 130.0);
        busy.quiet_before = Some(Quiet { quiet: false, waited_s: 60.2, busy_cores: 0.83 });
        let points = vec![
            point(Mode::Closed { concurrency: 1 }, 20.0, 45.0),
            busy,
            point(Mode::Open { rate: 60.0 }, 59.5, 70.0),
        ];
        let floors = Floors {
            kafka: Some(KafkaFloor {
                topic: "bench.floor".into(),
                n: 20,
                produce_to_consume: Some(summary(3.0)),
                produce_to_ack: Some(summary(2.0)),
            }),
            kafka_error: None,
            database: None,
            database_error: Some("the database did not answer".into()),
            quiet: Some(Quiet { quiet: true, waited_s: 2.0, busy_cores: 0.04 }),
        };
        let started_at = DateTime::<Utc>::from_timestamp(1_750_000_000, 0).expect("a time");
        Report {
            schema: SCHEMA.into(),
            kind: "smoke".into(),
            started_at,
            finished_at: started_at + Duration::from_secs(9),
            plan: Plan::smoke(),
            endpoints: Endpoints {
                orchestrator: "http://127.0.0.1:8080".into(),
                inventory: "http://127.0.0.1:8081".into(),
            },
            kafka_bootstrap_servers: "127.0.0.1:9092".into(),
            kafka_topic_prefix: String::new(),
            bench_database: "saga_bench".into(),
            machine: Machine::default(),
            versions: Versions::default(),
            durability: Durability::default(),
            stored_sagas: Some(crate::stored::StoredSagas { live: 12, finished: 20_000 }),
            processes: Vec::new(),
            ratios: Ratios::compute(&points, &floors),
            floors,
            points,
            method: method_notes(),
        }
    }

    /// Every row of every table has as many cells as its header.
    fn assert_tables_well_formed(md: &str) {
        let mut expected: Option<usize> = None;
        for line in md.lines() {
            if !line.starts_with('|') {
                expected = None;
                continue;
            }
            let cells = line.replace("\\|", "").matches('|').count();
            match expected {
                None => expected = Some(cells),
                Some(n) => assert_eq!(cells, n, "row {line:?} of a table with {} columns", n - 1),
            }
        }
    }

    #[test]
    fn the_markdown_has_every_table_well_formed() {
        let md = report().markdown();
        assert!(md.contains(POINTS_TABLE_HEADER), "{md}");
        assert!(md.contains("kafka CPU s / peak RSS MiB"));
        assert!(md.contains("| closed | C=16 | 120.0 | 130 | 260 | 390 | 520 | 0 | 1.50 / 300 | not found |"), "{md}");
        assert!(md.contains("saga p50 at C=1 = 45.0 ms = 15.0 x the Kafka produce-to-consume p50 (3.00 ms)"), "{md}");
        assert!(md.contains("not measured: the database did not answer"));
        assert!(md.contains("The floors were measured on a quiet stack (its processes under 0.25 cores; waited 2 s)."));
        assert!(
            md.contains("C=16 on a busy stack: its processes still used 0.83 cores after 60 s of waiting."),
            "{md}"
        );
        assert!(!md.contains("C=1 on a busy stack"), "{md}");
        assert!(md.contains("| C=1 | 3 | 4.00 / 8.00 / 12.0 |"), "{md}");
        assert!(md.contains("| point | all | SQLite commits | find | insert |"), "{md}");
        assert!(md.contains(" | 26.0 | 9.50 | "), "{md}");
        assert_tables_well_formed(&md);
    }

    #[test]
    fn k_uses_the_lowest_concurrency() {
        let r = report();
        assert_eq!(r.ratios.reference_point.as_deref(), Some("C=1"));
        assert_eq!(r.ratios.k_kafka, Some(15.0));
        assert_eq!(r.ratios.k_database, None);
    }

    #[test]
    fn reports_round_trip_through_json_and_files() {
        let report = report();
        let json = serde_json::to_string(&report).expect("serializes");
        let back: Report = serde_json::from_str(&json).expect("deserializes");
        assert_eq!(back, report);
        let dir = std::env::temp_dir().join(format!("saga-bench-report-{}", std::process::id()));
        let written = report.write(&dir).expect("written");
        assert_eq!(written.json.file_name().and_then(|n| n.to_str()), Some("20250615T150640Z.json"));
        for latest in ["latest.json", "latest.md", "latest.svg"] {
            assert!(dir.join(latest).exists(), "{latest}");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
