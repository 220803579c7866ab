//! (h) 200 concurrent orders over 20 SKUs with scarce stock, end to end. Checks, through the order API and
//! the participants' own databases: every saga is terminal; no SKU's stock ever went below zero; stock is
//! conserved exactly; captured payments equal completed orders exactly. Latency and throughput are
//! measured and reported (target/e2e-logs/load-report.json), never asserted.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::TryStreamExt;
use futures_util::future::join_all;
use mongodb::bson::{Document, doc};
use serde_json::{Value, json};
use tests::events::EventWatch;
use tests::stack::{Options, Stack};
use tokio::sync::Semaphore;
use uuid::Uuid;

const ORDERS: usize = 200;
const SKUS: usize = 20;
const UNITS_PER_SKU: i64 = 12;
const CONCURRENCY: usize = 32;

/// A small deterministic generator, so that a failing mix can be reproduced.
struct Lcg(u64);

impl Lcg {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self.0.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 33) % n
    }
}

fn orders(seed: u64) -> Vec<Value> {
    let mut rng = Lcg(seed);
    (0..ORDERS)
        .map(|i| {
            let lines = 1 + rng.below(3);
            let mut skus: Vec<String> = (0..lines).map(|_| format!("SKU-{}", 1 + rng.below(SKUS as u64))).collect();
            skus.sort();
            skus.dedup();
            let items: Vec<(&str, u32)> =
                skus.iter().map(|s| (s.as_str(), u32::try_from(1 + rng.below(3)).expect("small"))).collect();
            let mut order = Stack::order(&format!("cust-{}", i % 37), &items);
            if rng.below(10) == 0 {
                order["payment_token"] = "tok_decline".into();
            }
            order
        })
        .collect()
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let rank = ((p / 100.0) * (sorted.len() as f64 - 1.0)).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_orders_over_scarce_stock_keep_every_invariant() {
    let stack = Arc::new(Stack::start("load", Options::default()).await);
    for i in 1..=SKUS {
        stack.set_stock(&format!("SKU-{i}"), UNITS_PER_SKU).await;
    }
    let seed = std::env::var("LOAD_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(42);
    let bodies = orders(seed);
    let events = EventWatch::start(&stack.kafka);
    let gate = Arc::new(Semaphore::new(CONCURRENCY));
    let started = Instant::now();
    let placed: Vec<(Uuid, Value, Instant)> = join_all(bodies.into_iter().map(|body| {
        let (stack, gate) = (stack.clone(), gate.clone());
        async move {
            let _permit = gate.acquire().await.expect("semaphore");
            let posted = Instant::now();
            (stack.place(&body).await, body, posted)
        }
    }))
    .await;
    let placing = started.elapsed();

    // Wait on the lifecycle events, as a read model would, rather than polling the API.
    let ids: Vec<Uuid> = placed.iter().map(|(id, _, _)| *id).collect();
    let terminal = events.wait_terminal(&ids, Duration::from_secs(240)).await;
    let elapsed = terminal.iter().map(|(_, at)| *at).max().expect("orders") - started;
    let latencies: Vec<f64> =
        placed.iter().zip(&terminal).map(|((_, _, posted), (_, at))| (*at - *posted).as_secs_f64() * 1000.0).collect();
    let finals: Vec<Value> = join_all(ids.iter().map(|id| stack.wait_terminal(*id, Duration::from_secs(10)))).await;

    // Every saga is terminal, and never parked in this scenario.
    let mut by_status: BTreeMap<String, usize> = BTreeMap::new();
    for order in &finals {
        *by_status.entry(order["status"].as_str().expect("status").to_owned()).or_default() += 1;
        assert!(order["status"] == "COMPLETED" || order["status"] == "CANCELLED", "{order}");
    }

    // Stock is conserved exactly: what is left plus what completed orders took is what there was.
    let mut taken: BTreeMap<String, i64> = BTreeMap::new();
    for ((_, body, _), order) in placed.iter().zip(&finals) {
        if order["status"] == "COMPLETED" {
            for item in body["items"].as_array().expect("items") {
                *taken.entry(item["sku"].as_str().expect("sku").to_owned()).or_default() +=
                    item["quantity"].as_i64().expect("quantity");
            }
        }
    }
    for i in 1..=SKUS {
        let sku = format!("SKU-{i}");
        let available = stack.stock(&sku).await;
        assert!(available >= 0, "{sku} went below zero: {available}");
        assert_eq!(available + taken.get(&sku).copied().unwrap_or(0), UNITS_PER_SKU, "{sku} is not conserved");
    }
    assert_no_moment_below_zero(&stack).await;

    // Captured payments equal completed orders exactly; no cancelled order keeps money.
    let payments = stack.database("payment").collection::<Document>("payments");
    let captured = payments.count_documents(doc! { "status": "captured" }).await.expect("count payments");
    let completed = by_status.get("COMPLETED").copied().unwrap_or(0);
    assert_eq!(usize::try_from(captured).expect("count"), completed, "captured payments vs completed orders");
    for ((id, _, _), order) in placed.iter().zip(&finals) {
        let payment = stack.payment(*id).await;
        let status = payment.as_ref().map(|p| p["status"].as_str().unwrap_or_default().to_owned());
        match order["status"].as_str() {
            Some("COMPLETED") => assert_eq!(status.as_deref(), Some("captured"), "order {id}"),
            _ => assert!(status.as_deref() != Some("captured"), "cancelled order {id} kept its payment"),
        }
    }

    report(latencies, &by_status, placing, elapsed, seed);
    Arc::into_inner(stack).expect("no other handle").cleanup().await;
}

/// Replays each SKU's stock ledger in time order (positive moves first among equal times) and checks that
/// the running total never goes below zero.
async fn assert_no_moment_below_zero(stack: &Stack) {
    let moves = stack.database("inventory").collection::<Document>("stock_moves");
    let mut all: Vec<Document> = moves.find(doc! {}).await.expect("read ledger").try_collect().await.expect("ledger");
    let at = |d: &Document| d.get_datetime("at").map(|t| t.timestamp_millis()).unwrap_or_default();
    all.sort_by_key(|d| (at(d), -d.get_i64("delta").unwrap_or_default()));
    let mut level: BTreeMap<String, i64> = BTreeMap::new();
    for entry in &all {
        let sku = entry.get_str("sku").expect("sku").to_owned();
        let total = level.entry(sku.clone()).or_default();
        *total += entry.get_i64("delta").expect("delta");
        assert!(*total >= 0, "{sku} went below zero at {entry}");
    }
}

fn report(
    mut latencies: Vec<f64>,
    by_status: &BTreeMap<String, usize>,
    placing: Duration,
    elapsed: Duration,
    seed: u64,
) {
    latencies.sort_by(f64::total_cmp);
    let report = json!({
        "orders": latencies.len(),
        "seed": seed,
        "statuses": by_status,
        "placing_seconds": placing.as_secs_f64(),
        "wall_seconds": elapsed.as_secs_f64(),
        "sagas_per_second": latencies.len() as f64 / elapsed.as_secs_f64(),
        "order_to_terminal_ms": {
            "p50": percentile(&latencies, 50.0),
            "p95": percentile(&latencies, 95.0),
            "p99": percentile(&latencies, 99.0),
            "max": latencies.last().copied().unwrap_or_default(),
        },
        "latency": "from sending the POST to receiving the saga.event with the terminal status",
        "note": "measured, not asserted: everything (Kafka, database, four services, this test) shares one machine",
    });
    eprintln!("load report: {report:#}");
    let path = tests::repo_dir().join("target/e2e-logs/load-report.json");
    std::fs::write(&path, format!("{report:#}\n")).expect("write the load report");
}
