//! saga-bench: an honest benchmark of a running saga stack, through its public API only.
//!
//! It places orders (`POST /v1/orders`) as real customers would, with a configurable mix of orders that
//! complete, are declined, or ask for stock that is not there, and takes each order's latency from the POST
//! to its terminal status event on the order's event stream (not by polling). Points run in a closed loop at
//! concurrency C and in an open loop at rate R (no coordinated omission), each with a warm-up and a fixed
//! measured window, while the CPU time and peak memory of Kafka, the database and the four services are
//! read from `/proc`. A sample of the sagas' timelines gives per-step latency. The floor (a Kafka
//! produce-to-consume trip and a database update, one at a time, on the same infrastructure and with the same
//! durability settings) puts the saga's latency in proportion. Nothing is relaxed for the benchmark.
//!
//! - [`config`]: the plan (points, durations, mix) and the target (endpoints, Kafka, database, processes).
//! - [`run`]: a whole run, giving a [`report::Report`].
//! - [`load`]: the closed and open loops; [`api`] and [`sse`]: the HTTP calls and the event stream.
//! - [`mix`], [`auth`]: the order mix and the customers' and operator's tokens.
//! - [`latency`]: exact percentiles; [`point`]: one point's figures; [`steps`]: per-step latency.
//! - [`procs`]: CPU and memory from `/proc`; [`dbops`]: database requests per saga; [`floor`]: the Kafka and
//!   database floors;
//!   [`environment`]: machine, versions and durability settings.
//! - [`report`] and [`svg`]: the JSON, Markdown and SVG outputs.

pub mod api;
pub mod auth;
pub mod config;
pub mod dbops;
pub mod environment;
pub mod error;
pub mod floor;
pub mod latency;
pub mod load;
pub mod mix;
pub mod point;
pub mod procs;
pub mod report;
pub mod run;
pub mod sse;
pub mod steps;
pub mod stored;
pub mod svg;

pub use crate::config::{Plan, Target};
pub use crate::error::{Error, Result};
pub use crate::report::Report;
pub use crate::run::{Config, run};
