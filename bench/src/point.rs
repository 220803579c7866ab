//! One point of the curve: a load (closed loop at C, open loop at R) and what was measured over its window.
//!
//! Definitions (the same for both modes):
//! - **sagas/s**: terminal status events received within the measured window, divided by its length
//!   (whenever the order was sent: steady-state throughput).
//! - **latency**: over the orders *due* within the window, from due to the terminal event; every one of
//!   them is followed to its end after the window (within its time limit), so slow orders are not left out.
//! - **errors**: orders due within the window that did not reach a terminal status (HTTP failures, broken
//!   streams, time limits, open-loop drops).

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::dbops::DbRequests;
use crate::latency::Summary;
use crate::load::{OrderSample, Window};
use crate::mix::OrderKind;
use crate::procs::ProcessUsage;
use crate::steps::StepReport;

/// The load of a point.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "mode", rename_all = "snake_case")]
pub enum Mode {
    /// `concurrency` workers, each with one order in flight.
    Closed {
        /// The number of workers.
        concurrency: u32,
    },
    /// Orders sent at `rate` per second on a fixed schedule.
    Open {
        /// Orders per second.
        rate: f64,
    },
}

impl Mode {
    /// `closed` or `open`.
    pub fn name(&self) -> &'static str {
        match self {
            Mode::Closed { .. } => "closed",
            Mode::Open { .. } => "open",
        }
    }

    /// `C=16` or `R=50/s`.
    pub fn label(&self) -> String {
        match self {
            Mode::Closed { concurrency } => format!("C={concurrency}"),
            Mode::Open { rate } => format!("R={}/s", trim_float(*rate)),
        }
    }
}

/// `50` for 50.0, `12.5` for 12.5.
pub fn trim_float(value: f64) -> String {
    let text = format!("{value:.2}");
    text.trim_end_matches('0').trim_end_matches('.').to_owned()
}

/// What one point measured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PointResult {
    /// The load.
    #[serde(flatten)]
    pub mode: Mode,
    /// `C=16` or `R=50/s`.
    pub label: String,
    /// The warm-up before the window, in seconds.
    pub warmup_s: f64,
    /// The measured window, in seconds.
    pub window_s: f64,
    /// How long following the window's last orders to their end took, in seconds.
    pub drain_s: f64,
    /// Orders due within the window.
    pub sent_in_window: u64,
    /// Orders due within the window per second.
    pub sent_per_s: f64,
    /// Terminal events received within the window.
    pub terminal_in_window: u64,
    /// Completed sagas per second: terminal events received within the window per second.
    pub sagas_per_s: f64,
    /// Order-to-terminal latency of the orders due within the window.
    pub latency: Option<Summary>,
    /// The same per order kind.
    pub latency_by_kind: BTreeMap<String, Summary>,
    /// From due to the POST's 202.
    pub accept_latency: Option<Summary>,
    /// Terminal statuses of the orders due within the window (`COMPLETED`, `CANCELLED`, `FAILED`).
    pub outcomes: BTreeMap<String, u64>,
    /// Orders that ended otherwise than their kind should (such as a complete order `CANCELLED`).
    pub unexpected_outcomes: u64,
    /// Orders whose terminal status was the first event of their stream: they had finished before the
    /// stream was open, so their latency includes opening it (an upper bound).
    pub terminal_on_connect: u64,
    /// Orders due within the window that did not reach a terminal status.
    pub errors: u64,
    /// The same by kind of failure.
    pub errors_by_kind: BTreeMap<String, u64>,
    /// A few distinct error messages, for diagnosis.
    pub error_examples: Vec<String>,
    /// Per-step latency from a sample of the window's sagas.
    pub steps: StepReport,
    /// CPU and peak memory of each process over the window.
    pub processes: Vec<ProcessUsage>,
    /// The database's requests over the window, per saga finished in it (absent when they could not be
    /// read).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub db_requests: Option<DbRequests>,
    /// How quiet the stack was before the point (none: not waited for).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quiet_before: Option<crate::procs::Quiet>,
}

impl PointResult {
    /// The figures of `samples` (every order of the point) over `window`.
    pub fn from_samples(mode: Mode, window: Window, samples: &[OrderSample], drain: Duration) -> Self {
        let seconds = window.duration().as_secs_f64().max(1e-9);
        let due: Vec<&OrderSample> = samples.iter().filter(|s| window.contains(s.due)).collect();
        let terminal_in_window =
            samples.iter().filter(|s| s.result.as_ref().is_ok_and(|t| window.contains(t.at))).count() as u64;
        let latencies: Vec<Duration> = due.iter().filter_map(|s| s.latency()).collect();
        let mut latency_by_kind = BTreeMap::new();
        for kind in OrderKind::ALL {
            let of_kind: Vec<Duration> = due.iter().filter(|s| s.kind == kind).filter_map(|s| s.latency()).collect();
            if let Some(summary) = Summary::of(&of_kind) {
                latency_by_kind.insert(kind.name().to_owned(), summary);
            }
        }
        let accepts: Vec<Duration> = due.iter().filter_map(|s| s.accept_latency).collect();
        let mut outcomes = BTreeMap::new();
        let (mut unexpected, mut on_connect) = (0, 0);
        let mut errors_by_kind = BTreeMap::new();
        let mut error_examples: Vec<String> = Vec::new();
        for sample in &due {
            match &sample.result {
                Ok(terminal) => {
                    *outcomes.entry(terminal.status.as_str().to_owned()).or_insert(0) += 1;
                    unexpected += u64::from(terminal.status != sample.kind.expected_status());
                    on_connect += u64::from(terminal.on_connect);
                }
                Err(error) => {
                    *errors_by_kind.entry(error.name()).or_insert(0) += 1;
                    let example = format!("{error:?}");
                    if error_examples.len() < 5 && !error_examples.contains(&example) {
                        error_examples.push(example);
                    }
                }
            }
        }
        Self {
            mode,
            label: mode.label(),
            warmup_s: (window.start - window.warmup_start).as_secs_f64(),
            window_s: window.duration().as_secs_f64(),
            drain_s: drain.as_secs_f64(),
            sent_in_window: due.len() as u64,
            sent_per_s: due.len() as f64 / seconds,
            terminal_in_window,
            sagas_per_s: terminal_in_window as f64 / seconds,
            latency: Summary::of(&latencies),
            latency_by_kind,
            accept_latency: Summary::of(&accepts),
            outcomes,
            unexpected_outcomes: unexpected,
            terminal_on_connect: on_connect,
            errors: errors_by_kind.values().sum(),
            errors_by_kind,
            error_examples,
            steps: StepReport::default(),
            processes: Vec::new(),
            quiet_before: None,
            db_requests: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use proto_events::OrderStatus;

    use super::*;
    use crate::api::{OrderError, Terminal};

    fn sample(window: &Window, kind: OrderKind, due_ms: i64, end_ms: u64, result: Option<OrderStatus>) -> OrderSample {
        let at = |ms: i64| {
            if ms >= 0 {
                window.start + Duration::from_millis(ms.unsigned_abs())
            } else {
                window.start - Duration::from_millis(ms.unsigned_abs())
            }
        };
        let due = at(due_ms);
        let end = due + Duration::from_millis(end_ms);
        OrderSample {
            kind,
            due,
            order_id: None,
            accept_latency: Some(Duration::from_millis(2)),
            result: result.map(|status| Terminal { status, at: end, on_connect: false }).ok_or(OrderError::Timeout),
            finished: end,
        }
    }

    #[test]
    fn throughput_counts_terminals_in_the_window_and_latency_the_orders_due_in_it() {
        let window = Window {
            warmup_start: Instant::now(),
            start: Instant::now() + Duration::from_secs(1),
            end: Instant::now() + Duration::from_secs(3),
        };
        let samples = vec![
            // Sent in the warm-up, ends in the window: counts for throughput, not for latency.
            sample(&window, OrderKind::Complete, -100, 200, Some(OrderStatus::Completed)),
            sample(&window, OrderKind::Complete, 0, 100, Some(OrderStatus::Completed)),
            sample(&window, OrderKind::Declined, 500, 300, Some(OrderStatus::Cancelled)),
            // Meant to complete, was cancelled.
            sample(&window, OrderKind::Complete, 600, 300, Some(OrderStatus::Cancelled)),
            sample(&window, OrderKind::Complete, 700, 0, None),
            // Sent in the window, ends after it: counts for latency, not for throughput.
            sample(&window, OrderKind::Complete, 1900, 400, Some(OrderStatus::Completed)),
        ];
        let point = PointResult::from_samples(Mode::Closed { concurrency: 2 }, window, &samples, Duration::ZERO);
        assert_eq!(point.label, "C=2");
        assert_eq!(point.sent_in_window, 5);
        assert_eq!(point.terminal_in_window, 4);
        assert!((point.sagas_per_s - 2.0).abs() < 1e-6, "{}", point.sagas_per_s);
        let latency = point.latency.expect("latencies");
        assert_eq!((latency.count, latency.p50_ms, latency.max_ms), (4, 300.0, 400.0));
        assert_eq!(point.outcomes.get("COMPLETED"), Some(&2));
        assert_eq!(point.outcomes.get("CANCELLED"), Some(&2));
        assert_eq!(point.unexpected_outcomes, 1);
        assert_eq!((point.errors, point.errors_by_kind.get("timeout")), (1, Some(&1)));
        assert_eq!(point.latency_by_kind["declined"].count, 1);
        let json = serde_json::to_value(&point).expect("serializes");
        assert_eq!((json["mode"].as_str(), json["concurrency"].as_u64()), (Some("closed"), Some(2)));
        let back: PointResult = serde_json::from_value(json).expect("deserializes");
        assert_eq!(back, point);
    }

    #[test]
    fn labels_are_short() {
        assert_eq!(Mode::Open { rate: 50.0 }.label(), "R=50/s");
        assert_eq!(Mode::Open { rate: 12.5 }.label(), "R=12.5/s");
        assert_eq!(Mode::Closed { concurrency: 256 }.label(), "C=256");
    }
}
