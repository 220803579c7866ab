//! The load generators: a closed loop (C workers, each placing an order and waiting for its terminal status
//! before placing the next) and an open loop (orders sent on a fixed schedule at R per second, whatever the
//! answers, so that a slow system cannot slow the load down: no coordinated omission).
//!
//! Each order: `POST /v1/orders` (202), then its event stream until the terminal status event. The latency
//! of an order runs from when it was due (closed loop: when the worker sent it; open loop: its slot in the
//! schedule) to when the terminal event was received. Every order has a time limit covering both calls.
//!
//! A point runs a warm-up, then the measured window `[start, end)`; orders are sent until `end`, and those
//! in flight then are followed to their end (within their time limit) so that none is left out.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::task::JoinSet;
use uuid::Uuid;

use crate::api::{Api, OrderError, Skus, Terminal, order_body};
use crate::auth::Tokens;
use crate::mix::{OrderKind, Schedule};

/// The measured window of a point.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    /// When the warm-up begins (orders are sent from here on).
    pub warmup_start: Instant,
    /// When the measured window begins.
    pub start: Instant,
    /// When it ends (no order is sent from here on).
    pub end: Instant,
}

impl Window {
    /// A window beginning `warmup` from now and lasting `duration`.
    pub fn after(warmup: Duration, duration: Duration) -> Self {
        let warmup_start = Instant::now();
        let start = warmup_start + warmup;
        Self { warmup_start, start, end: start + duration }
    }

    /// The measured window's length.
    pub fn duration(&self) -> Duration {
        self.end - self.start
    }

    /// Whether `at` is in the measured window.
    pub fn contains(&self, at: Instant) -> bool {
        at >= self.start && at < self.end
    }
}

/// One order as the bench saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrderSample {
    /// What it was meant to do.
    pub kind: OrderKind,
    /// When it was due.
    pub due: Instant,
    /// The order id, once accepted.
    pub order_id: Option<Uuid>,
    /// How long the POST took to be answered with 202.
    pub accept_latency: Option<Duration>,
    /// Its end: the terminal event, or why there was none.
    pub result: Result<Terminal, OrderError>,
    /// When the bench was done with it (the terminal event, or the failure).
    pub finished: Instant,
}

impl OrderSample {
    /// From due to the terminal event, if it ended.
    pub fn latency(&self) -> Option<Duration> {
        self.result.as_ref().ok().map(|t| t.at.saturating_duration_since(self.due))
    }
}

/// What drives the orders: the API, tokens, SKUs, mix and limits.
#[derive(Debug, Clone)]
pub struct Driver {
    /// The stack's API.
    pub api: Api,
    /// Customer and operator tokens.
    pub tokens: Arc<Tokens>,
    /// The SKUs ordered.
    pub skus: Arc<Skus>,
    /// The sequence of order kinds.
    pub schedule: Arc<Schedule>,
    /// How long one order may take from due to terminal.
    pub order_timeout: Duration,
    /// Whether to send an `Idempotency-Key` with each order (as a careful client does).
    pub idempotency_keys: bool,
    /// Numbers the orders of the whole run (the mix and the customers follow it).
    pub counter: Arc<AtomicU64>,
    /// A prefix of this run's idempotency keys.
    pub run_id: String,
}

impl Driver {
    /// Places one order and follows it to its end, within the order's time limit.
    pub async fn order(&self, due: Instant) -> OrderSample {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let kind = self.schedule.kind(n);
        let (customer_id, token) = self.tokens.customer(n);
        let body = order_body(customer_id, self.skus.for_order(kind, n), kind);
        let key = self.idempotency_keys.then(|| format!("{}-{n}", self.run_id));
        let mut sample = OrderSample {
            kind,
            due,
            order_id: None,
            accept_latency: None,
            result: Err(OrderError::Timeout),
            finished: due,
        };
        let deadline = tokio::time::Instant::from_std(due + self.order_timeout);
        let run = async {
            let accepted = self.api.place(token, &body, key.as_deref()).await?;
            sample.order_id = Some(accepted.order_id);
            sample.accept_latency = Some(accepted.at.saturating_duration_since(due));
            self.api.follow(token, accepted.order_id).await
        };
        let result = match tokio::time::timeout_at(deadline, run).await {
            Ok(result) => result,
            Err(_) => Err(OrderError::Timeout),
        };
        sample.finished = result.as_ref().map_or_else(|_| Instant::now(), |t| t.at);
        sample.result = result;
        sample
    }

    /// Runs a closed loop of `concurrency` workers through `window`; returns every order sent.
    pub async fn closed(&self, concurrency: u32, window: Window) -> Vec<OrderSample> {
        let mut workers = JoinSet::new();
        for _ in 0..concurrency.max(1) {
            let driver = self.clone();
            workers.spawn(async move {
                let mut samples = Vec::new();
                loop {
                    let due = Instant::now();
                    if due >= window.end {
                        return samples;
                    }
                    samples.push(driver.order(due).await);
                }
            });
        }
        let mut samples = Vec::new();
        while let Some(done) = workers.join_next().await {
            // A worker only panics on a bug; its samples are lost, the others are kept.
            samples.extend(done.unwrap_or_default());
        }
        samples
    }

    /// Runs an open loop at `rate` orders per second through `window`, with at most `max_in_flight` orders
    /// in flight (a due order beyond that is recorded as dropped, never queued); returns every order due.
    pub async fn open(&self, rate: f64, max_in_flight: usize, window: Window) -> Vec<OrderSample> {
        let interval = Duration::from_secs_f64(1.0 / rate.max(0.001));
        let mut in_flight = JoinSet::new();
        let mut samples = Vec::new();
        for i in 0_u32.. {
            let due = window.warmup_start + interval.mul_f64(f64::from(i));
            if due >= window.end {
                break;
            }
            tokio::time::sleep_until(tokio::time::Instant::from_std(due)).await;
            while let Some(done) = in_flight.try_join_next() {
                samples.extend(done.ok());
            }
            if in_flight.len() >= max_in_flight {
                let n = self.counter.fetch_add(1, Ordering::Relaxed);
                samples.push(OrderSample {
                    kind: self.schedule.kind(n),
                    due,
                    order_id: None,
                    accept_latency: None,
                    result: Err(OrderError::Dropped),
                    finished: due,
                });
                continue;
            }
            let driver = self.clone();
            in_flight.spawn(async move { driver.order(due).await });
        }
        while let Some(done) = in_flight.join_next().await {
            samples.extend(done.ok());
        }
        samples
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_window_follows_the_warm_up() {
        let window = Window::after(Duration::from_secs(2), Duration::from_secs(5));
        assert_eq!(window.start - window.warmup_start, Duration::from_secs(2));
        assert_eq!(window.duration(), Duration::from_secs(5));
        assert!(!window.contains(window.warmup_start));
        assert!(window.contains(window.start));
        assert!(!window.contains(window.end));
    }
}
