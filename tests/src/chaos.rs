//! Helpers of the chaos suite (`tests/tests/chaos.rs`): a deterministic order mix, a paced load that keeps
//! placing orders while services die (retrying each order with its own `Idempotency-Key`, on whichever
//! orchestrator instance answers), the invariants every scenario must keep, checked through the
//! participants' own databases and the orchestrator's API, and a network namespace that can cut a service
//! off from Kafka (and everything else).
//!
//! Every wait has a deadline and every loop is bounded in count and time.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures_util::{StreamExt, TryStreamExt, stream};
use mongodb::bson::{Bson, Document, doc};
use serde_json::Value;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use uuid::Uuid;

use crate::stack::Stack;

/// How long one order may take to be accepted while services come and go.
const PLACE_TIMEOUT: Duration = Duration::from_secs(120);
/// Orders in flight at once (requests, not sagas).
const IN_FLIGHT: usize = 8;
/// Parallel reads of the checker.
const READS: usize = 8;

/// A small deterministic generator, so that a failing mix can be reproduced from its seed.
#[derive(Debug)]
struct Lcg(u64);

impl Lcg {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self.0.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 33) % n
    }
}

/// A reproducible mix of orders over scarce stock: 1 to 3 lines of 1 to 3 units over `skus` SKUs stocked
/// with `units_per_sku` each; one order in ten has a declined card, one in twenty ships to a country that is
/// not served (so the payment must be refunded).
#[derive(Debug, Clone, Copy)]
pub struct Mix {
    /// How many orders.
    pub orders: usize,
    /// SKU-1 to SKU-`skus`.
    pub skus: usize,
    /// Initial stock of each SKU.
    pub units_per_sku: i64,
    /// The generator's seed.
    pub seed: u64,
}

impl Mix {
    /// The order bodies.
    pub fn bodies(&self) -> Vec<Value> {
        let mut rng = Lcg(self.seed);
        (0..self.orders)
            .map(|i| {
                let lines = 1 + rng.below(3);
                let mut skus: Vec<String> =
                    (0..lines).map(|_| format!("SKU-{}", 1 + rng.below(self.skus as u64))).collect();
                skus.sort();
                skus.dedup();
                let items: Vec<(&str, u32)> =
                    skus.iter().map(|s| (s.as_str(), u32::try_from(1 + rng.below(3)).expect("small"))).collect();
                let mut order = Stack::order(&format!("cust-{}", i % 37), &items);
                match rng.below(20) {
                    0 | 1 => order["payment_token"] = "tok_decline".into(),
                    2 => order["shipping_address"]["country"] = "JP".into(),
                    _ => {}
                }
                order
            })
            .collect()
    }

    /// The stock each SKU starts with.
    pub fn initial_stock(&self) -> BTreeMap<String, i64> {
        (1..=self.skus).map(|i| (format!("SKU-{i}"), self.units_per_sku)).collect()
    }

    /// Stocks every SKU through the inventory API.
    pub async fn stock(&self, stack: &Stack) {
        for (sku, units) in self.initial_stock() {
            stack.set_stock(&sku, units).await;
        }
    }
}

/// An accepted order.
#[derive(Debug, Clone)]
pub struct Placed {
    /// The order (and saga) id.
    pub id: Uuid,
    /// What was ordered.
    pub body: Value,
}

/// Places orders in the background at a steady pace (a deliberate load shape, so that faults hit sagas in
/// every stage), at most [`IN_FLIGHT`] requests at a time. Each order is retried with the same
/// `Idempotency-Key` until an orchestrator accepts it, trying the given instances in turn, for at most
/// [`PLACE_TIMEOUT`].
#[derive(Debug)]
pub struct Placer {
    accepted: Arc<AtomicUsize>,
    handle: JoinHandle<Vec<Placed>>,
}

impl Placer {
    /// Starts placing `bodies`, one every `pace`, on the orchestrators at `apis` (base URLs).
    pub fn start(http: reqwest::Client, apis: Vec<String>, bodies: Vec<Value>, pace: Duration) -> Self {
        assert!(!apis.is_empty(), "at least one orchestrator");
        let accepted = Arc::new(AtomicUsize::new(0));
        let counter = accepted.clone();
        let run = Uuid::now_v7().simple().to_string();
        let handle = tokio::spawn(async move {
            let gate = Arc::new(Semaphore::new(IN_FLIGHT));
            let mut ticks = tokio::time::interval(pace);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut tasks = Vec::with_capacity(bodies.len());
            for (i, body) in bodies.into_iter().enumerate() {
                ticks.tick().await;
                let permit = gate.clone().acquire_owned().await.expect("the gate is never closed");
                let (http, apis, counter) = (http.clone(), apis.clone(), counter.clone());
                let key = format!("chaos-{run}-{i}");
                tasks.push(tokio::spawn(async move {
                    let id = place(&http, &apis, &key, &body, i).await;
                    counter.fetch_add(1, Ordering::SeqCst);
                    drop(permit);
                    Placed { id, body }
                }));
            }
            let mut placed = Vec::with_capacity(tasks.len());
            for task in tasks {
                placed.push(task.await.expect("placing an order panicked"));
            }
            placed
        });
        Self { accepted, handle }
    }

    /// How many orders were accepted so far.
    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    /// Waits until at least `count` orders were accepted.
    pub async fn wait_accepted(&self, count: usize, timeout: Duration) {
        let what = format!("{count} orders to be accepted");
        crate::eventually(&what, timeout, || async { (self.accepted() >= count).then_some(()) }).await;
    }

    /// Waits for every order to be accepted and returns them, in the order they were generated.
    pub async fn finish(self, timeout: Duration) -> Vec<Placed> {
        tokio::time::timeout(timeout, self.handle)
            .await
            .unwrap_or_else(|_| panic!("the orders were not all accepted within {timeout:?}"))
            .expect("the placing task panicked")
    }
}

/// Places one order, retrying (same key) on connection errors, time-outs and 5xx answers.
async fn place(http: &reqwest::Client, apis: &[String], key: &str, body: &Value, i: usize) -> Uuid {
    let deadline = tokio::time::Instant::now() + PLACE_TIMEOUT;
    for attempt in 0.. {
        let api = &apis[(i + attempt) % apis.len()];
        let sent = http.post(format!("{api}/v1/orders")).header("Idempotency-Key", key).json(body).send().await;
        match sent {
            Ok(response) if matches!(response.status().as_u16(), 200 | 202) => {
                let answer: Value = response.json().await.expect("a JSON answer");
                let id = answer["order_id"].as_str().expect("order_id");
                return Uuid::parse_str(id).expect("a UUID");
            }
            Ok(response) if response.status().is_client_error() => {
                let status = response.status();
                panic!("order {key} refused with {status}: {}", response.text().await.unwrap_or_default());
            }
            Ok(_) | Err(_) => {}
        }
        assert!(tokio::time::Instant::now() < deadline, "order {key} not accepted within {PLACE_TIMEOUT:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    unreachable!("the loop returns or panics")
}

/// How the sagas of a scenario ended.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Outcomes {
    /// COMPLETED.
    pub completed: usize,
    /// CANCELLED.
    pub cancelled: usize,
    /// FAILED (parked).
    pub failed: usize,
    /// Messages the orchestrator fenced and ignored (timeline entries of kind `ignored`).
    pub fenced: usize,
}

impl fmt::Display for Outcomes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} completed, {} cancelled, {} failed (parked); {} fenced messages",
            self.completed, self.cancelled, self.failed, self.fenced
        )
    }
}

/// Everything a checker found wrong, reported together.
#[derive(Debug, Default)]
struct Violations(Vec<String>);

impl Violations {
    fn check(&mut self, ok: bool, what: impl FnOnce() -> String) {
        if !ok {
            self.0.push(what());
        }
    }

    fn assert_none(&self, scenario: &str) {
        if self.0.is_empty() {
            return;
        }
        let shown: Vec<&str> = self.0.iter().take(40).map(String::as_str).collect();
        panic!("{scenario}: {} invariant violations:\n  {}", self.0.len(), shown.join("\n  "));
    }
}

/// The ordered units per SKU of an order body.
fn lines(body: &Value) -> BTreeMap<String, i64> {
    let items = body["items"].as_array().expect("items");
    items
        .iter()
        .map(|i| (i["sku"].as_str().expect("sku").to_owned(), i["quantity"].as_i64().expect("quantity")))
        .collect()
}

/// Reads every document of `collection` in the database of service `service`.
async fn all(stack: &Stack, service: &str, collection: &str) -> Vec<Document> {
    let what = format!("reading {service}.{collection}");
    let collection = stack.database(service).collection::<Document>(collection);
    crate::eventually(&what, Duration::from_secs(60), || async {
        collection.find(doc! {}).await.ok()?.try_collect::<Vec<Document>>().await.ok()
    })
    .await
}

/// `GET url` as JSON, retried until it answers; `None` for 404.
async fn get(http: &reqwest::Client, url: &str) -> Option<Value> {
    crate::eventually(&format!("GET {url}"), Duration::from_secs(60), || async {
        let response = http.get(url).send().await.ok()?;
        match response.status().as_u16() {
            200 => Some(Some(response.json::<Value>().await.ok()?)),
            404 => Some(None),
            _ => None,
        }
    })
    .await
}

/// Checks the invariants of a scenario once every saga is terminal, and returns how they ended. `api` is
/// the base URL of an orchestrator instance that runs; `initial` the stock each SKU started with. Panics
/// listing every violation:
///
/// - every saga is COMPLETED, CANCELLED or FAILED (parked, with a reason): none lost, none left running, and
///   the orchestrator's database holds exactly the sagas of the accepted orders;
/// - the inventory's ledger (`stock_moves`), replayed in time order, never takes a SKU below zero; stock is
///   conserved exactly (start - completed - what parked sagas hold = ledger sum = what the inventory API
///   reports); each saga's moves match its order lines; no reservation is left half-done (`reserving`);
/// - no saga is charged twice, for another amount, or refunded more than it was charged;
/// - a COMPLETED saga has its stock reserved, one captured payment and one shipment (`created`);
/// - a CANCELLED saga has zero net charge (refunded, declined or absent), zero net reservation and no live
///   shipment (absent, cancelled or rejected);
/// - each saga's timeline (`GET /admin/sagas/{id}`) has strictly increasing versions, ending at the saga's
///   version.
pub async fn check_invariants(
    scenario: &str,
    stack: &Stack,
    api: &str,
    placed: &[Placed],
    initial: &BTreeMap<String, i64>,
) -> Outcomes {
    let mut v = Violations::default();
    let orders: HashMap<Uuid, &Placed> = placed.iter().map(|p| (p.id, p)).collect();
    v.check(orders.len() == placed.len(), || "two accepted orders share an id".to_owned());
    let status = order_statuses(stack, api, placed, &mut v).await;
    check_saga_store(stack, &orders, &mut v).await;
    check_stock(stack, &orders, &status, initial, &mut v).await;
    check_payments(stack, &orders, &status, &mut v).await;
    check_shipments(stack, &orders, &status, &mut v).await;
    let fenced = check_timelines(stack, api, placed, &status, &mut v).await;
    v.assert_none(scenario);
    let count = |s: &str| status.values().filter(|(status, _)| status == s).count();
    Outcomes { completed: count("COMPLETED"), cancelled: count("CANCELLED"), failed: count("FAILED"), fenced }
}

/// Each order's status and amount through the order API; a status that is not terminal is a violation.
async fn order_statuses(
    stack: &Stack,
    api: &str,
    placed: &[Placed],
    v: &mut Violations,
) -> HashMap<Uuid, (String, i64)> {
    let views: Vec<(Uuid, Option<Value>)> = stream::iter(placed)
        .map(|p| async move { (p.id, get(&stack.http, &format!("{api}/v1/orders/{}", p.id)).await) })
        .buffer_unordered(READS)
        .collect()
        .await;
    let mut status = HashMap::new();
    for (id, view) in views {
        let Some(view) = view else {
            v.0.push(format!("order {id} was accepted but the API does not know it (lost)"));
            continue;
        };
        let s = view["status"].as_str().unwrap_or_default().to_owned();
        v.check(matches!(s.as_str(), "COMPLETED" | "CANCELLED" | "FAILED"), || {
            format!("order {id} is not terminal: {view}")
        });
        let reason = view["reason"].as_str().unwrap_or_default();
        v.check(s != "FAILED" || !reason.is_empty(), || format!("order {id} is parked without a reason: {view}"));
        status.insert(id, (s, view["amount_cents"].as_i64().unwrap_or(-1)));
    }
    status
}

/// Every saga in the orchestrator's database: the live ones, then the finished ones not live (a saga
/// caught half-way through its move is in both; the live copy is the current one).
async fn stored_sagas(stack: &Stack) -> Vec<Document> {
    let mut sagas = all(stack, "orchestrator", "sagas").await;
    let live: BTreeSet<String> = sagas.iter().filter_map(|s| s.get_str("_id").ok().map(str::to_owned)).collect();
    let finished = all(stack, "orchestrator", "sagas_finished").await;
    sagas.extend(finished.into_iter().filter(|s| s.get_str("_id").is_ok_and(|id| !live.contains(id))));
    sagas
}

/// The orchestrator's own database holds exactly the accepted sagas, all in a terminal state.
async fn check_saga_store(stack: &Stack, orders: &HashMap<Uuid, &Placed>, v: &mut Violations) {
    // The terminal event is published before the saga's outbox is marked flushed: give the last flush a
    // moment (bounded) before reading what is left.
    let settled = |sagas: &Vec<Document>| sagas.iter().all(|s| !s.get_bool("pending").unwrap_or(false));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let mut sagas = stored_sagas(stack).await;
    while !settled(&sagas) && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
        sagas = stored_sagas(stack).await;
    }
    let mut seen = BTreeSet::new();
    for saga in &sagas {
        let id = saga.get_str("_id").ok().and_then(|s| Uuid::parse_str(s).ok());
        let state = saga.get_str("state").unwrap_or_default();
        let Some(id) = id.filter(|id| orders.contains_key(id)) else {
            v.0.push(format!("the saga store holds a saga nobody ordered: {:?} in {state}", saga.get("_id")));
            continue;
        };
        seen.insert(id);
        v.check(matches!(state, "COMPLETED" | "COMPENSATED" | "FAILED"), || format!("saga {id} is stored in {state}"));
        v.check(!saga.get_bool("pending").unwrap_or(false), || format!("saga {id} still has unflushed work"));
    }
    for id in orders.keys().filter(|id| !seen.contains(*id)) {
        v.0.push(format!("saga {id} is missing from the saga store"));
    }
}

/// One move of the inventory's ledger.
#[derive(Debug)]
struct Move {
    sku: String,
    saga: Option<String>,
    kind: String,
    delta: i64,
    at: i64,
}

fn to_move(d: &Document) -> Move {
    let delta = match d.get("delta") {
        Some(Bson::Int64(n)) => *n,
        Some(Bson::Int32(n)) => i64::from(*n),
        other => panic!("a stock move with a delta that is not an integer: {other:?}"),
    };
    Move {
        sku: d.get_str("sku").expect("sku").to_owned(),
        saga: d.get_str("saga_id").ok().map(str::to_owned),
        kind: d.get_str("kind").expect("kind").to_owned(),
        delta,
        at: d.get_datetime("at").map(|t| t.timestamp_millis()).unwrap_or_default(),
    }
}

async fn check_stock(
    stack: &Stack,
    orders: &HashMap<Uuid, &Placed>,
    status: &HashMap<Uuid, (String, i64)>,
    initial: &BTreeMap<String, i64>,
    v: &mut Violations,
) {
    let mut moves: Vec<Move> = all(stack, "inventory", "stock_moves").await.iter().map(to_move).collect();
    // Never below zero: replay each SKU's ledger in time order (gains first among equal times).
    moves.sort_by_key(|m| (m.at, -m.delta));
    let mut level: BTreeMap<&str, i64> = BTreeMap::new();
    let mut restocked: BTreeMap<&str, i64> = BTreeMap::new();
    let mut by_saga: HashMap<&str, Vec<&Move>> = HashMap::new();
    for m in &moves {
        let total = level.entry(&m.sku).or_default();
        *total += m.delta;
        v.check(*total >= 0, || format!("{} went below zero ({total}) at {m:?}", m.sku));
        match &m.saga {
            None => *restocked.entry(&m.sku).or_default() += m.delta,
            Some(saga) => by_saga.entry(saga).or_default().push(m),
        }
    }
    v.check(restocked.iter().all(|(sku, n)| initial.get(*sku) == Some(n)) && restocked.len() == initial.len(), || {
        format!("restocks {restocked:?} are not the initial stock {initial:?}")
    });
    let mut expected: BTreeMap<String, i64> = initial.clone();
    for (saga, saga_moves) in &by_saga {
        let Some(id) = Uuid::parse_str(saga).ok().filter(|id| orders.contains_key(id)) else {
            v.0.push(format!("stock moves of a saga nobody ordered: {saga_moves:?}"));
            continue;
        };
        let wanted = lines(&orders[&id].body);
        let net = saga_net(id, &wanted, saga_moves, v);
        match status.get(&id).map(|(s, _)| s.as_str()) {
            Some("COMPLETED") => v.check(net == wanted.iter().map(|(s, q)| (s.clone(), -q)).collect(), || {
                format!("completed saga {id} holds {net:?}, not its lines {wanted:?}")
            }),
            Some("CANCELLED") => {
                v.check(net.values().all(|n| *n == 0), || format!("cancelled saga {id} still holds stock {net:?}"));
            }
            _ => {}
        }
        for (sku, delta) in net {
            *expected.entry(sku).or_default() += delta;
        }
    }
    for (id, _) in
        status.iter().filter(|(id, (s, _))| s == "COMPLETED" && !by_saga.contains_key(id.to_string().as_str()))
    {
        v.0.push(format!("completed saga {id} has no stock moves"));
    }
    let ledger: BTreeMap<String, i64> = level.into_iter().map(|(sku, n)| (sku.to_owned(), n)).collect();
    v.check(ledger == expected, || format!("stock is not conserved: ledger {ledger:?}, expected {expected:?}"));
    let api = get(&stack.http, &stack.inventory.url("/v1/stock")).await.unwrap_or_default();
    let reported = reported_stock(&api);
    v.check(reported == ledger, || format!("the inventory reports {reported:?} but its ledger sums to {ledger:?}"));
    for reservation in all(stack, "inventory", "reservations").await {
        let id = reservation.get_str("_id").unwrap_or_default();
        let state = reservation.get_str("status").unwrap_or_default();
        v.check(state != "reserving", || format!("saga {id}'s reservation is left half-done (reserving)"));
        let completed = Uuid::parse_str(id).ok().and_then(|id| status.get(&id)).is_some_and(|(s, _)| s == "COMPLETED");
        v.check(!completed || state == "reserved", || format!("completed saga {id}'s reservation is {state}"));
    }
}

/// A saga's net moves per SKU; each move must fit one of its lines and exist at most once.
fn saga_net(id: Uuid, wanted: &BTreeMap<String, i64>, moves: &[&Move], v: &mut Violations) -> BTreeMap<String, i64> {
    let mut net = BTreeMap::new();
    let mut kinds = BTreeSet::new();
    for m in moves {
        let quantity = wanted.get(&m.sku).copied().unwrap_or(0);
        let fits = match m.kind.as_str() {
            "reserve" => m.delta == -quantity,
            "release" => m.delta == quantity,
            _ => false,
        };
        v.check(fits && quantity > 0, || format!("saga {id}: move {m:?} does not fit its lines {wanted:?}"));
        v.check(kinds.insert((m.sku.clone(), m.kind.clone())), || format!("saga {id}: move {m:?} twice"));
        *net.entry(m.sku.clone()).or_insert(0) += m.delta;
    }
    net.retain(|_, n| *n != 0);
    net
}

/// `GET /v1/stock` (`[{sku, available}]`) as SKU to available units.
fn reported_stock(answer: &Value) -> BTreeMap<String, i64> {
    let entries = answer.as_array().map(Vec::as_slice).unwrap_or_default();
    entries.iter().filter_map(|e| Some((e["sku"].as_str()?.to_owned(), e["available"].as_i64()?))).collect()
}

async fn check_payments(
    stack: &Stack,
    orders: &HashMap<Uuid, &Placed>,
    status: &HashMap<Uuid, (String, i64)>,
    v: &mut Violations,
) {
    let payments: HashMap<String, Document> = all(stack, "payment", "payments")
        .await
        .into_iter()
        .map(|d| (d.get_str("_id").unwrap_or_default().to_owned(), d))
        .collect();
    for id in payments.keys() {
        v.check(Uuid::parse_str(id).is_ok_and(|id| orders.contains_key(&id)), || {
            format!("a payment nobody ordered: {id}")
        });
    }
    for (id, (order_status, amount)) in status {
        let payment = payments.get(&id.to_string());
        let state = payment.map(|p| p.get_str("status").unwrap_or_default());
        let int = |field: &str| payment.and_then(|p| p.get_i64(field).ok()).unwrap_or(0);
        let (charged, refunded) = (int("amount_cents"), int("refunded_cents"));
        v.check(refunded <= charged && refunded >= 0, || format!("saga {id} refunded {refunded} of {charged}"));
        if matches!(state, Some("captured" | "refunded" | "declined")) {
            v.check(charged == *amount, || format!("saga {id} charged {charged} for an order of {amount}"));
        }
        let net = match state {
            Some("captured") => charged - refunded,
            Some("refunded") => {
                v.check(refunded == charged, || format!("saga {id} is refunded {refunded} of {charged}"));
                charged - refunded
            }
            Some("declined" | "cancelled") | None => 0,
            Some(other) => {
                v.0.push(format!("saga {id} has a payment in status {other}"));
                0
            }
        };
        match order_status.as_str() {
            "COMPLETED" => v.check(state == Some("captured") && refunded == 0, || {
                format!("completed saga {id} has payment {payment:?}")
            }),
            "CANCELLED" => v.check(net == 0, || format!("cancelled saga {id} keeps {net} cents: {payment:?}")),
            _ => {}
        }
    }
}

async fn check_shipments(
    stack: &Stack,
    orders: &HashMap<Uuid, &Placed>,
    status: &HashMap<Uuid, (String, i64)>,
    v: &mut Violations,
) {
    let shipments: HashMap<String, String> = all(stack, "shipping", "shipments")
        .await
        .into_iter()
        .map(|d| (d.get_str("_id").unwrap_or_default().to_owned(), d.get_str("status").unwrap_or_default().to_owned()))
        .collect();
    for id in shipments.keys() {
        v.check(Uuid::parse_str(id).is_ok_and(|id| orders.contains_key(&id)), || {
            format!("a shipment nobody ordered: {id}")
        });
    }
    for (id, (order_status, _)) in status {
        let shipment = shipments.get(&id.to_string()).map(String::as_str);
        match order_status.as_str() {
            "COMPLETED" => {
                v.check(shipment == Some("created"), || format!("completed saga {id} has shipment {shipment:?}"));
            }
            "CANCELLED" => v.check(matches!(shipment, None | Some("cancelled" | "rejected")), || {
                format!("cancelled saga {id} has a live shipment ({shipment:?})")
            }),
            _ => {}
        }
    }
}

/// Each saga's timeline has strictly increasing versions ending at the saga's version, and the admin API
/// agrees with the order API on its status. Returns how many messages were fenced, over all timelines.
async fn check_timelines(
    stack: &Stack,
    api: &str,
    placed: &[Placed],
    status: &HashMap<Uuid, (String, i64)>,
    v: &mut Violations,
) -> usize {
    let details: Vec<(Uuid, Option<Value>)> = stream::iter(placed)
        .map(|p| async move { (p.id, get(&stack.http, &format!("{api}/admin/sagas/{}", p.id)).await) })
        .buffer_unordered(READS)
        .collect()
        .await;
    let mut fenced = 0;
    for (id, detail) in details {
        let Some(detail) = detail else {
            v.0.push(format!("the admin API does not know saga {id}"));
            continue;
        };
        let timeline = detail["timeline"].as_array().cloned().unwrap_or_default();
        let seqs: Vec<u64> = timeline.iter().filter_map(|e| e["seq"].as_u64()).collect();
        v.check(seqs.len() == timeline.len() && !seqs.is_empty(), || format!("saga {id} has a bad timeline: {detail}"));
        v.check(seqs.windows(2).all(|w| w[0] < w[1]), || format!("saga {id}'s versions do not increase: {seqs:?}"));
        v.check(seqs.last().copied() == detail["version"].as_u64(), || {
            format!("saga {id}'s timeline ends at {:?}, its version is {}", seqs.last(), detail["version"])
        });
        let expected = status.get(&id).map(|(s, _)| s.as_str());
        v.check(detail["status"].as_str() == expected, || {
            format!("saga {id}: the admin API says {}, the order API {expected:?}", detail["status"])
        });
        fenced += timeline.iter().filter(|e| e["kind"] == "ignored").count();
    }
    fenced
}

/// A scenario's summary line for the run log.
pub fn summary(scenario: &str, orders: usize, outcomes: Outcomes, faults: &[String], took: Duration) -> String {
    format!(
        "chaos summary [{scenario}]: {orders} orders: {outcomes}; faults: {}; {:.1} s",
        if faults.is_empty() { "none".to_owned() } else { faults.join(", ") },
        took.as_secs_f64()
    )
}

/// How often the orchestrator logging to `log` was assigned a non-empty set of partitions of `saga.reply`
/// (from its "partitions assigned" lines).
pub fn assignments(log: &Path) -> usize {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    text.lines()
        .filter(|l| l.contains("partitions assigned"))
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|l| l["message"] == "partitions assigned")
        .filter(|l| l["assigned"].as_str().is_some_and(|a| a != "[]"))
        .count()
}

/// The host-side address of the namespace's veth pair.
pub const HOST_IP: &str = "10.231.0.1";
/// The namespace-side address of the veth pair.
pub const NS_IP: &str = "10.231.0.2";

/// A network namespace joined to the host by a veth pair (`HOST_IP` on the host, `NS_IP` inside), with
/// forwarders ([`Netns::forward`]) so that a service inside reaches the host's loopback services at their
/// usual addresses: through the pair (cut with it), or through a Unix socket (which no namespace separates,
/// so it stays connected). Taking the host end of the pair down cuts what crosses it (connections stall,
/// nothing is refused), as a network partition does. Removed (with its forwarders) when dropped. Needs
/// root and iproute2.
#[derive(Debug)]
pub struct Netns {
    name: String,
    host_veth: String,
    forwarders: Vec<Child>,
    sockets: Vec<std::path::PathBuf>,
}

impl Netns {
    /// Creates the namespace and the pair; an error says why it cannot (not root, no `ip`, ...).
    pub fn create() -> Result<Self, String> {
        remove_stale();
        let pid = std::process::id();
        let name = format!("saga-chaos-{pid}");
        let (host_veth, ns_veth) = (format!("scv{}h", pid % 100_000), format!("scv{}n", pid % 100_000));
        let netns =
            Self { name: name.clone(), host_veth: host_veth.clone(), forwarders: Vec::new(), sockets: Vec::new() };
        ip(&["netns", "add", &name])?;
        ip(&["link", "add", &host_veth, "type", "veth", "peer", "name", &ns_veth, "netns", &name])?;
        ip(&["addr", "add", &format!("{HOST_IP}/30"), "dev", &host_veth])?;
        ip(&["link", "set", &host_veth, "up"])?;
        ip(&["netns", "exec", &name, "ip", "addr", "add", &format!("{NS_IP}/30"), "dev", &ns_veth])?;
        ip(&["netns", "exec", &name, "ip", "link", "set", &ns_veth, "up"])?;
        ip(&["netns", "exec", &name, "ip", "link", "set", "lo", "up"])?;
        Ok(netns)
    }

    /// The command prefix that runs a program inside the namespace.
    pub fn exec_prefix(&self) -> Vec<String> {
        ["ip", "netns", "exec", &self.name].map(str::to_owned).to_vec()
    }

    /// Starts `forwarder` (the `tcp-forward` binary) with `pairs` (`listen=target`), inside the namespace or
    /// on the host, and waits until its listeners are bound.
    pub fn forward(&mut self, forwarder: &Path, inside: bool, pairs: &[String]) -> Result<(), String> {
        let mut command = if inside {
            let mut command = Command::new("ip");
            command.args(["netns", "exec", &self.name]).arg(forwarder);
            command
        } else {
            Command::new(forwarder)
        };
        let mut child = command
            .args(pairs)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", forwarder.display()))?;
        let stdout = child.stdout.take().expect("piped stdout");
        self.forwarders.push(child);
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        match rx.recv_timeout(Duration::from_secs(10)) {
            Ok(line) if line.trim() == "ready" => Ok(()),
            other => Err(format!("the forwarder {pairs:?} did not start: {other:?}")),
        }
    }

    /// A Unix socket path of this namespace's, for a forwarder (`unix:<path>`): a path that crosses no
    /// network, so that what goes through it stays connected when the pair goes down. Removed when dropped.
    pub fn unix_socket(&mut self, what: &str) -> String {
        let path = std::env::temp_dir().join(format!("{}-{what}.sock", self.name));
        self.sockets.push(path.clone());
        format!("unix:{}", path.display())
    }

    /// Cuts the namespace off: the host end of the pair goes down.
    pub fn cut(&self) {
        ip(&["link", "set", &self.host_veth, "down"]).expect("take the veth down");
    }

    /// Joins the namespace again.
    pub fn heal(&self) {
        ip(&["link", "set", &self.host_veth, "up"]).expect("bring the veth up");
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        for child in &mut self.forwarders {
            let _ = child.kill();
            let _ = child.wait();
        }
        for socket in &self.sockets {
            let _ = std::fs::remove_file(socket);
        }
        let _ = ip(&["link", "del", &self.host_veth]);
        let _ = ip(&["netns", "del", &self.name]);
    }
}

/// Runs `ip` with `args`.
fn ip(args: &[&str]) -> Result<(), String> {
    let output = Command::new("ip").args(args).output().map_err(|e| format!("cannot run ip: {e}"))?;
    if output.status.success() {
        return Ok(());
    }
    Err(format!("ip {} failed: {}", args.join(" "), String::from_utf8_lossy(&output.stderr).trim()))
}

/// Removes the namespaces of earlier runs whose process is gone (a run that was killed cannot clean up).
fn remove_stale() {
    let Ok(output) = Command::new("ip").args(["netns", "list"]).output() else { return };
    for line in String::from_utf8_lossy(&output.stdout).lines() {
        let name = line.split_whitespace().next().unwrap_or_default();
        let Some(pid) = name.strip_prefix("saga-chaos-") else { continue };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = ip(&["netns", "del", name]);
        }
    }
}

/// `host:port` of a loopback endpoint (`127.0.0.1` or `localhost`), if `endpoint` is one.
pub fn loopback_port(endpoint: &str) -> Option<u16> {
    let (host, port) = endpoint.rsplit_once(':')?;
    matches!(host, "127.0.0.1" | "localhost").then_some(())?;
    port.parse().ok()
}
