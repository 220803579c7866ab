//! Database requests per saga: the database's own request counters read at the start and the end of a
//! point's window, divided by the sagas that finished in it. On FerretDB the counters are
//! `ferretdb_client_requests_total{command}` on its debug endpoint (`/debug/metrics`, port
//! `FERRETDB_DEBUG_PORT`, default 8088); on MongoDB, `serverStatus`'s `opcounters`. Every process on the
//! database counts (the services, the benchmark's own timeline reads after the window do not, being outside
//! it), which is what the database pays per saga. On the FerretDB build `ops/mongo/mongo.sh` installs, the
//! SQLite commits its write queue took (`ferretdb_sqldb_queued_commits_total`, every database) are counted
//! too: writes that waited for their database together share one commit.

use std::collections::BTreeMap;
use std::time::Duration;

use mongodb::bson::{Document, doc};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::load::Window;

/// Where the request counters come from.
#[derive(Debug, Clone)]
pub enum Counters {
    /// FerretDB's Prometheus text at this URL.
    FerretDb { url: String },
    /// MongoDB's `serverStatus` through this client.
    MongoDb { client: mongodb::Client },
}

/// The requests a window cost the database.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DbRequests {
    /// `ferretdb /debug/metrics` or `mongodb serverStatus.opcounters`.
    pub source: String,
    /// Requests in the window by command (`find`, `insert`, `update`, ...).
    pub by_command: BTreeMap<String, u64>,
    /// All requests in the window divided by the sagas that finished in it.
    pub per_saga: Option<f64>,
    /// FerretDB's SQLite commits in the window divided by the sagas that finished in it (its patched build
    /// only).
    #[serde(default)]
    pub commits_per_saga: Option<f64>,
}

/// One reading of the database's counters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reading {
    /// Requests served so far, by command.
    pub by_command: BTreeMap<String, u64>,
    /// SQLite commits so far (FerretDB's patched build), if counted.
    pub commits: Option<u64>,
}

impl DbRequests {
    /// The difference of two readings, per `sagas` finished in between.
    pub fn between(source: &str, before: &Reading, after: &Reading, sagas: u64) -> Self {
        let by_command: BTreeMap<String, u64> = after
            .by_command
            .iter()
            .map(|(command, n)| {
                (command.clone(), n.saturating_sub(before.by_command.get(command).copied().unwrap_or(0)))
            })
            .filter(|(_, n)| *n > 0)
            .collect();
        let total: u64 = by_command.values().sum();
        let per_saga = (sagas > 0).then(|| total as f64 / sagas as f64);
        let commits = before.commits.zip(after.commits).map(|(b, a)| a.saturating_sub(b));
        let commits_per_saga = commits.filter(|_| sagas > 0).map(|n| n as f64 / sagas as f64);
        Self { source: source.to_owned(), by_command, per_saga, commits_per_saga }
    }
}

impl Counters {
    /// The counters of the database the stack uses: FerretDB's when `buildInfo` says FerretDB (its debug
    /// port from `FERRETDB_DEBUG_PORT`), MongoDB's otherwise.
    pub async fn detect(client: &mongodb::Client) -> Result<Self> {
        let info = client
            .database("admin")
            .run_command(doc! { "buildInfo": 1 })
            .await
            .map_err(Error::database("asking the database what it is (buildInfo)"))?;
        if info.contains_key("ferretdbVersion") {
            let port = std::env::var("FERRETDB_DEBUG_PORT").unwrap_or_else(|_| "8088".to_owned());
            Ok(Self::FerretDb { url: format!("http://127.0.0.1:{port}/debug/metrics") })
        } else {
            Ok(Self::MongoDb { client: client.clone() })
        }
    }

    /// What [`DbRequests::source`] says for these counters.
    pub fn source(&self) -> &'static str {
        match self {
            Self::FerretDb { .. } => "ferretdb /debug/metrics (ferretdb_client_requests_total)",
            Self::MongoDb { .. } => "mongodb serverStatus.opcounters",
        }
    }

    /// The requests served so far, by command, and the commits.
    pub async fn read(&self, http: &reqwest::Client) -> Result<Reading> {
        match self {
            Self::FerretDb { url } => {
                let text = http
                    .get(url)
                    .timeout(Duration::from_secs(5))
                    .send()
                    .await
                    .and_then(reqwest::Response::error_for_status)
                    .map_err(Error::http(format!("reading FerretDB's request counters at {url}")))?
                    .text()
                    .await
                    .map_err(Error::http(format!("reading FerretDB's request counters at {url}")))?;
                Ok(Reading { by_command: parse_ferretdb(&text), commits: parse_ferretdb_commits(&text) })
            }
            Self::MongoDb { client } => {
                let status = client
                    .database("admin")
                    .run_command(doc! { "serverStatus": 1 })
                    .await
                    .map_err(Error::database("reading serverStatus"))?;
                let by_command = status.get_document("opcounters").map(parse_opcounters).unwrap_or_default();
                Ok(Reading { by_command, commits: None })
            }
        }
    }
}

/// Reads `counters` at the start and the end of `window`; the readings, or why there are none.
pub async fn measure(counters: Counters, window: Window) -> std::result::Result<(Reading, Reading), String> {
    let http = reqwest::Client::new();
    tokio::time::sleep_until(window.start.into()).await;
    let before = counters.read(&http).await.map_err(|e| e.to_string())?;
    tokio::time::sleep_until(window.end.into()).await;
    let after = counters.read(&http).await.map_err(|e| e.to_string())?;
    Ok((before, after))
}

/// `ferretdb_client_requests_total{command="find",opcode="OP_MSG"} 42` lines, summed by command.
pub fn parse_ferretdb(text: &str) -> BTreeMap<String, u64> {
    let mut counts = BTreeMap::new();
    for line in text.lines().filter(|l| l.starts_with("ferretdb_client_requests_total{")) {
        let Some(command) = line.split("command=\"").nth(1).and_then(|rest| rest.split('"').next()) else { continue };
        let Some(value) = line.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()) else { continue };
        *counts.entry(command.to_owned()).or_insert(0) += value as u64;
    }
    counts
}

/// The sum of `ferretdb_sqldb_queued_commits_total{db}` over every database; `None` when FerretDB does not
/// count them (not the patched build).
pub fn parse_ferretdb_commits(text: &str) -> Option<u64> {
    let values: Vec<f64> = text
        .lines()
        .filter(|l| l.starts_with("ferretdb_sqldb_queued_commits_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .collect();
    (!values.is_empty()).then(|| values.iter().map(|v| *v as u64).sum())
}

/// `serverStatus.opcounters` (`query`, `insert`, `update`, `delete`, `getmore`, `command`).
fn parse_opcounters(counters: &Document) -> BTreeMap<String, u64> {
    counters
        .iter()
        .filter_map(|(name, value)| {
            let n = value.as_i64().or_else(|| value.as_i32().map(i64::from))?;
            Some((name.clone(), u64::try_from(n).ok()?))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ferretdb_counters_are_summed_by_command() {
        let text = "# HELP ferretdb_client_requests_total Total number of requests.\n\
            # TYPE ferretdb_client_requests_total counter\n\
            ferretdb_client_requests_total{command=\"find\",opcode=\"OP_MSG\"} 5727\n\
            ferretdb_client_requests_total{command=\"find\",opcode=\"OP_QUERY\"} 3\n\
            ferretdb_client_requests_total{command=\"insert\",opcode=\"OP_MSG\"} 2554\n\
            ferretdb_client_responses_total{argument=\"unknown\",command=\"find\",opcode=\"OP_MSG\",result=\"ok\"} 9\n";
        let counts = parse_ferretdb(text);
        assert_eq!(counts, BTreeMap::from([("find".to_owned(), 5730), ("insert".to_owned(), 2554)]));
        assert_eq!(parse_ferretdb_commits(text), None, "an unpatched FerretDB counts no commits");
    }

    #[test]
    fn ferretdb_commits_are_summed_over_the_databases() {
        let text = "ferretdb_sqldb_queued_commits_total{db=\"orchestrator\"} 53247\n\
            ferretdb_sqldb_queued_commits_total{db=\"payment\"} 12515\n\
            ferretdb_sqldb_queued_writes_total{db=\"orchestrator\"} 106975\n";
        assert_eq!(parse_ferretdb_commits(text), Some(65_762));
    }

    #[test]
    fn mongodb_opcounters_are_read_whatever_their_integer_type() {
        let counters = doc! { "insert": 7_i64, "query": 3_i32, "note": "x" };
        let counts = parse_opcounters(&counters);
        assert_eq!(counts, BTreeMap::from([("insert".to_owned(), 7), ("query".to_owned(), 3)]));
    }

    #[test]
    fn requests_per_saga_are_the_window_difference_over_the_sagas_finished() {
        let before = Reading {
            by_command: BTreeMap::from([("find".to_owned(), 100), ("update".to_owned(), 50)]),
            commits: Some(1_000),
        };
        let after = Reading {
            by_command: BTreeMap::from([
                ("find".to_owned(), 260),
                ("update".to_owned(), 50),
                ("insert".to_owned(), 40),
            ]),
            commits: Some(1_150),
        };
        let requests = DbRequests::between("test", &before, &after, 10);
        assert_eq!(requests.by_command, BTreeMap::from([("find".to_owned(), 160), ("insert".to_owned(), 40)]));
        assert_eq!(requests.per_saga, Some(20.0));
        assert_eq!(requests.commits_per_saga, Some(15.0));
        let unpatched = Reading { commits: None, ..after.clone() };
        assert_eq!(DbRequests::between("test", &before, &unpatched, 10).commits_per_saga, None);
        let none = DbRequests::between("test", &before, &after, 0);
        assert_eq!((none.per_saga, none.commits_per_saga), (None, None), "no saga finished");
    }
}
