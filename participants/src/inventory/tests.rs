//! Unit tests of the inventory domain over the in-memory ledger. Every test ends by checking that the
//! cache agrees with the ledger and the open intents, and that stock is conserved.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use chrono::DateTime;
use proto_events::commands::{ReleaseStock, ReserveStock};
use proto_events::{Command, FailureKind, Line, Meta, Reply};
use tower::ServiceExt;
use uuid::Uuid;

use super::store::{MoveKind, StockMove, StockStore};
use super::*;
use crate::clock::ManualClock;

fn clock() -> Arc<ManualClock> {
    Arc::new(ManualClock::new(DateTime::from_timestamp(1_700_000_000, 0).expect("valid time")))
}

fn saga(n: u128) -> Uuid {
    Uuid::from_u128(0x0190_0000_0000_7000_8000_0000_0000_0000 | n)
}

fn line(sku: &str, quantity: u32) -> Line {
    Line { sku: sku.to_owned(), quantity }
}

async fn inventory(stock: &[(&str, i64)]) -> Inventory<MemoryStockStore> {
    let inventory = Inventory::open(MemoryStockStore::new(), clock()).await.expect("open");
    for (sku, units) in stock {
        inventory.set_available(sku, *units).await.expect("stock");
    }
    inventory
}

/// A new process over the same store: the cache is loaded from the database.
async fn restart(inventory: Inventory<MemoryStockStore>) -> Inventory<MemoryStockStore> {
    let store = inventory.into_store();
    store.faults.heal();
    Inventory::open(store, clock()).await.expect("open after the restart")
}

async fn available(inventory: &Inventory<MemoryStockStore>) -> BTreeMap<String, i64> {
    inventory.all_available().await.expect("available")
}

/// What the database says is available: the ledger's sums, less the lines `reserving` intents hold
/// without a move.
fn expected_available(store: &MemoryStockStore) -> BTreeMap<String, i64> {
    let moves = store.moves();
    let mut sums = BTreeMap::new();
    for m in &moves {
        *sums.entry(m.sku.clone()).or_insert(0) += m.delta;
    }
    for intent in store.reservations().iter().filter(|r| r.status == ReservationStatus::Reserving) {
        for l in &intent.lines {
            if !moves.iter().any(|m| m.id == StockMove::id(intent.saga_id, &l.sku, MoveKind::Reserve)) {
                *sums.entry(l.sku.clone()).or_insert(0) -= i64::from(l.quantity);
            }
        }
    }
    sums
}

/// The cache agrees with the database; every saga's moves match its record's lines; every release move
/// mirrors a reserve move; no SKU is oversold.
async fn assert_consistent(inventory: &Inventory<MemoryStockStore>) {
    let store = inventory.store();
    let cached = available(inventory).await;
    assert_eq!(cached, expected_available(store), "cache and database disagree");
    assert!(cached.values().all(|n| *n >= 0), "oversold: {cached:?}");
    let moves = store.moves();
    let find = |id: String| moves.iter().find(|m| m.id == id);
    for release in moves.iter().filter(|m| m.kind == MoveKind::Release) {
        let saga_id = release.saga_id.expect("a saga's move");
        let reserve =
            find(StockMove::id(saga_id, &release.sku, MoveKind::Reserve)).expect("a release mirrors a reserve");
        assert_eq!(release.delta, -reserve.delta, "a release gives back exactly what was taken");
    }
    let records = store.reservations();
    for m in moves.iter().filter(|m| m.kind == MoveKind::Reserve) {
        let record = records.iter().find(|r| Some(r.saga_id) == m.saga_id).expect("every move has its record");
        let line = record.lines.iter().find(|l| l.sku == m.sku).expect("every move is one of its record's lines");
        assert_eq!(m.delta, -i64::from(line.quantity));
    }
    for record in &records {
        let moved =
            |kind| record.lines.iter().filter(move |l| find(StockMove::id(record.saga_id, &l.sku, kind)).is_some());
        match record.status {
            ReservationStatus::Reserved => assert_eq!(moved(MoveKind::Reserve).count(), record.lines.len()),
            ReservationStatus::Refused => assert_eq!(moved(MoveKind::Reserve).count(), 0),
            ReservationStatus::Released => {
                assert_eq!(moved(MoveKind::Reserve).count(), moved(MoveKind::Release).count(), "fully released");
            }
            ReservationStatus::Reserving => {}
        }
    }
}

fn stock(pairs: &[(&str, i64)]) -> BTreeMap<String, i64> {
    pairs.iter().map(|(s, n)| ((*s).to_owned(), *n)).collect()
}

fn business(reply: &Reply) -> &str {
    match reply {
        Reply::Failed { kind: FailureKind::Business, reason } => reason,
        other => panic!("expected a business failure, got {other:?}"),
    }
}

fn saga_moves(inventory: &Inventory<MemoryStockStore>, saga_id: Uuid) -> Vec<StockMove> {
    inventory.store().moves().into_iter().filter(|m| m.saga_id == Some(saga_id)).collect()
}

#[tokio::test]
async fn a_reserve_takes_every_line() {
    let inv = inventory(&[("SKU-A", 10), ("SKU-B", 5)]).await;
    let handled = inv.reserve(saga(1), &[line("SKU-A", 3), line("SKU-B", 5)]).await.expect("reserve");
    assert_eq!(handled, Handled::applied(Reply::ok()));
    assert_eq!(available(&inv).await, stock(&[("SKU-A", 7), ("SKU-B", 0)]));
    let reservation = inv.store().reservation(saga(1)).await.expect("read").expect("recorded");
    assert_eq!(reservation.status, ReservationStatus::Reserved);
    assert_consistent(&inv).await;
}

#[tokio::test]
async fn a_reserve_short_on_one_line_takes_nothing() {
    let inv = inventory(&[("SKU-A", 10), ("SKU-B", 1)]).await;
    let handled = inv.reserve(saga(1), &[line("SKU-A", 3), line("SKU-B", 2)]).await.expect("reserve");
    assert_eq!(business(&handled.reply), "not enough stock for SKU-B");
    assert!(!handled.duplicate);
    assert_eq!(available(&inv).await, stock(&[("SKU-A", 10), ("SKU-B", 1)]));
    assert!(saga_moves(&inv, saga(1)).is_empty(), "a refusal writes no move");
    // An unknown SKU has no stock at all.
    let unknown = inv.reserve(saga(2), &[line("SKU-Z", 1)]).await.expect("reserve");
    assert_eq!(business(&unknown.reply), "not enough stock for SKU-Z");
    assert_consistent(&inv).await;
}

#[tokio::test]
async fn a_redelivered_reserve_repeats_nothing_and_answers_the_same() {
    let inv = inventory(&[("SKU-A", 4)]).await;
    let first = inv.reserve(saga(1), &[line("SKU-A", 3)]).await.expect("reserve");
    let again = inv.reserve(saga(1), &[line("SKU-A", 3)]).await.expect("redelivered");
    assert_eq!(again, Handled::repeated(first.reply));
    assert_eq!(available(&inv).await, stock(&[("SKU-A", 1)]), "taken once");

    // A refusal is final too, even if stock arrives meanwhile.
    let refused = inv.reserve(saga(2), &[line("SKU-A", 2)]).await.expect("reserve");
    inv.set_available("SKU-A", 100).await.expect("restock");
    let again = inv.reserve(saga(2), &[line("SKU-A", 2)]).await.expect("redelivered");
    assert_eq!(again, Handled::repeated(refused.reply.clone()));
    assert_eq!(business(&refused.reply), "not enough stock for SKU-A");
    assert_eq!(available(&inv).await, stock(&[("SKU-A", 100)]));
    assert_consistent(&inv).await;
}

#[tokio::test]
async fn a_release_gives_back_exactly_what_was_reserved_once() {
    let inv = inventory(&[("SKU-A", 10), ("SKU-B", 10), ("SKU-C", 10)]).await;
    inv.reserve(saga(1), &[line("SKU-A", 3), line("SKU-B", 7)]).await.expect("reserve");
    inv.reserve(saga(2), &[line("SKU-A", 1)]).await.expect("other saga");
    let released = inv.release(saga(1)).await.expect("release");
    assert_eq!(released, Handled::applied(Reply::ok()));
    assert_eq!(available(&inv).await, stock(&[("SKU-A", 9), ("SKU-B", 10), ("SKU-C", 10)]));
    let again = inv.release(saga(1)).await.expect("release again");
    assert_eq!(again, Handled::repeated(Reply::ok()));
    assert_eq!(available(&inv).await, stock(&[("SKU-A", 9), ("SKU-B", 10), ("SKU-C", 10)]), "released once");
    let status = inv.store().reservation(saga(1)).await.expect("read").expect("recorded").status;
    assert_eq!(status, ReservationStatus::Released);
    assert_consistent(&inv).await;
}

#[tokio::test]
async fn releasing_a_refused_reserve_gives_back_nothing() {
    let inv = inventory(&[("SKU-A", 1)]).await;
    inv.reserve(saga(1), &[line("SKU-A", 2)]).await.expect("refused");
    assert_eq!(inv.release(saga(1)).await.expect("release"), Handled::applied(Reply::ok()));
    assert_eq!(available(&inv).await, stock(&[("SKU-A", 1)]));
    assert_consistent(&inv).await;
}

#[tokio::test]
async fn a_reserve_after_the_release_is_refused_and_takes_nothing() {
    let inv = inventory(&[("SKU-A", 10)]).await;
    assert_eq!(inv.release(saga(1)).await.expect("release first"), Handled::applied(Reply::ok()));
    let late = inv.reserve(saga(1), &[line("SKU-A", 3)]).await.expect("late reserve");
    assert_eq!(business(&late.reply), RELEASED_BEFORE_RESERVE);
    assert_eq!(available(&inv).await, stock(&[("SKU-A", 10)]), "a late reserve takes nothing");
    assert_eq!(inv.release(saga(1)).await.expect("release again"), Handled::repeated(Reply::ok()));
    assert_consistent(&inv).await;
}

/// The stock of the crash tests, and the reserve whose writes they cut.
const STOCK: [(&str, i64); 3] = [("SKU-A", 10), ("SKU-B", 10), ("SKU-C", 10)];

fn order() -> [Line; 3] {
    [line("SKU-A", 4), line("SKU-B", 10), line("SKU-C", 1)]
}

/// The stock once `order()` is reserved.
fn after_order() -> BTreeMap<String, i64> {
    stock(&[("SKU-A", 6), ("SKU-B", 0), ("SKU-C", 9)])
}

/// A reserve of `order()` for saga 1 killed after `writes` of its writes (the intent, three moves in one
/// batch, the mark), then, if `restarted`, a new process over the same store.
async fn reserve_cut_after(writes: u32, restarted: bool) -> Inventory<MemoryStockStore> {
    let inv = inventory(&STOCK).await;
    inv.store().faults.fail_after_writes(writes);
    assert!(inv.reserve(saga(1), &order()).await.is_err(), "the reserve is cut after {writes} writes");
    inv.store().faults.heal();
    if restarted { restart(inv).await } else { inv }
}

/// The crash points of a reserve: nothing written, the intent alone, the intent and some moves, every move
/// but no mark.
const RESERVE_CUTS: [(u32, &str); 5] = [
    (0, "before the intent"),
    (1, "after the intent, before any move"),
    (2, "after the intent and one move"),
    (3, "after the intent and two moves"),
    (4, "after every move, before the mark"),
];

#[tokio::test]
async fn an_interrupted_reserve_holds_its_lines_until_it_is_completed_exactly_once() {
    for (writes, cut) in RESERVE_CUTS {
        for restarted in [false, true] {
            let case = format!("cut {cut}, restarted: {restarted}");
            let inv = reserve_cut_after(writes, restarted).await;
            let expected = if writes == 0 { stock(&STOCK) } else { after_order() };
            assert_eq!(available(&inv).await, expected, "{case}: the decided lines are held");
            assert_consistent(&inv).await;

            // No other saga can take what the interrupted reserve will still write.
            let other = inv.reserve(saga(2), &[line("SKU-B", 1)]).await.expect("another saga");
            if writes > 0 {
                assert_eq!(business(&other.reply), "not enough stock for SKU-B", "{case}");
            }
            inv.release(saga(2)).await.expect("release the other saga");

            let redelivered = inv.reserve(saga(1), &order()).await.expect("redelivered");
            assert_eq!(redelivered, Handled::applied(Reply::ok()), "{case}");
            assert_eq!(inv.reserve(saga(1), &order()).await.expect("again"), Handled::repeated(Reply::ok()), "{case}");
            assert_eq!(available(&inv).await, after_order(), "{case}: taken once");
            assert_eq!(saga_moves(&inv, saga(1)).len(), 3, "{case}: one move per line");
            assert_consistent(&inv).await;

            assert_eq!(inv.release(saga(1)).await.expect("release"), Handled::applied(Reply::ok()), "{case}");
            assert_eq!(available(&inv).await, stock(&STOCK), "{case}: given back exactly");
            assert_consistent(&inv).await;
        }
    }
}

#[tokio::test]
async fn a_release_after_an_interrupted_reserve_gives_back_exactly_what_was_taken_and_refuses_the_reserve() {
    for (writes, cut) in RESERVE_CUTS {
        for restarted in [false, true] {
            let case = format!("cut {cut}, restarted: {restarted}");
            let inv = reserve_cut_after(writes, restarted).await;
            assert_eq!(inv.release(saga(1)).await.expect("release"), Handled::applied(Reply::ok()), "{case}");
            assert_eq!(available(&inv).await, stock(&STOCK), "{case}: stock restored exactly");
            assert_consistent(&inv).await;

            let late = inv.reserve(saga(1), &order()).await.expect("late reserve");
            assert_eq!(business(&late.reply), RELEASED_BEFORE_RESERVE, "{case}");
            assert!(late.duplicate, "{case}: the record answers");
            assert_eq!(inv.release(saga(1)).await.expect("again"), Handled::repeated(Reply::ok()), "{case}");
            assert_eq!(available(&inv).await, stock(&STOCK), "{case}: nothing taken late");
            let after = restart(inv).await;
            assert_eq!(available(&after).await, stock(&STOCK), "{case}: and after a restart");
            assert_consistent(&after).await;
        }
    }
}

#[tokio::test]
async fn an_interrupted_release_is_completed_exactly_once_whatever_comes_next() {
    // A reserved saga's release: three release moves in one batch, then the mark.
    for writes in 0..4 {
        for (restarted, reserve_first) in [(false, false), (true, false), (false, true), (true, true)] {
            let case =
                format!("release cut after {writes} writes, restarted: {restarted}, reserve first: {reserve_first}");
            let mut inv = inventory(&STOCK).await;
            inv.reserve(saga(1), &order()).await.expect("reserve");
            inv.store().faults.fail_after_writes(writes);
            assert!(inv.release(saga(1)).await.is_err(), "{case}");
            inv.store().faults.heal();
            if restarted {
                inv = restart(inv).await;
            }
            assert_consistent(&inv).await;
            if reserve_first {
                // The record still says reserved: a redelivered reserve answers what it answered.
                assert_eq!(inv.reserve(saga(1), &order()).await.expect("reserve"), Handled::repeated(Reply::ok()));
            }
            assert_eq!(inv.release(saga(1)).await.expect("retried"), Handled::applied(Reply::ok()), "{case}");
            assert_eq!(inv.release(saga(1)).await.expect("again"), Handled::repeated(Reply::ok()), "{case}");
            assert_eq!(available(&inv).await, stock(&STOCK), "{case}: given back exactly once");
            assert_consistent(&inv).await;
        }
    }
}

#[tokio::test]
async fn a_reserve_after_an_interrupted_release_of_an_interrupted_reserve_is_refused_and_finishes_the_release() {
    for restarted in [false, true] {
        // The reserve wrote its intent and two of three moves; the release then wrote one release move.
        let mut inv = reserve_cut_after(3, restarted).await;
        inv.store().faults.fail_after_writes(1);
        assert!(inv.release(saga(1)).await.is_err());
        inv.store().faults.heal();
        if restarted {
            inv = restart(inv).await;
        }
        assert_consistent(&inv).await;

        let late = inv.reserve(saga(1), &order()).await.expect("a redelivered reserve");
        assert_eq!(business(&late.reply), RELEASED_BEFORE_RESERVE, "the release had begun");
        assert_eq!(available(&inv).await, stock(&STOCK), "the reserve finished the release");
        assert_eq!(inv.release(saga(1)).await.expect("release retried"), Handled::repeated(Reply::ok()));
        assert_eq!(available(&inv).await, stock(&STOCK));
        assert_consistent(&inv).await;
    }
}

#[tokio::test]
async fn the_hot_path_never_scans_the_store() {
    let inv = inventory(&STOCK).await;
    assert_eq!(inv.store().scans(), 2, "the ledger and the intents, once at start-up");
    inv.reserve(saga(1), &order()).await.expect("reserve");
    inv.reserve(saga(1), &order()).await.expect("redelivered");
    inv.reserve(saga(2), &[line("SKU-B", 1)]).await.expect("refused");
    inv.release(saga(1)).await.expect("release");
    inv.release(saga(3)).await.expect("tombstone");
    inv.store().faults.fail_after_writes(2);
    assert!(inv.reserve(saga(4), &order()).await.is_err());
    inv.store().faults.heal();
    inv.reserve(saga(4), &order()).await.expect("completed");
    inv.set_available("SKU-D", 5).await.expect("restock");
    assert_eq!(inv.store().scans(), 2, "commands, failures and restocks read by id only");
    assert_consistent(&inv).await;
}

#[tokio::test]
async fn a_write_failing_mid_reserve_leaves_the_cache_right_and_the_retry_completes() {
    let inv = inventory(&[("SKU-A", 10), ("SKU-B", 10)]).await;
    inv.store().faults.fail_after_writes(1);
    let lines = [line("SKU-A", 2), line("SKU-B", 3)];
    assert!(inv.reserve(saga(1), &lines).await.is_err(), "the second move fails");
    assert!(inv.all_available().await.is_err(), "stale SKUs cannot be read while the store is down");
    inv.store().faults.heal();
    assert_eq!(inv.reserve(saga(1), &lines).await.expect("retried").reply, Reply::ok());
    assert_eq!(available(&inv).await, stock(&[("SKU-A", 8), ("SKU-B", 7)]));
    assert_consistent(&inv).await;
}

#[tokio::test]
async fn a_write_failing_mid_release_is_completed_by_the_retry() {
    let inv = inventory(&[("SKU-A", 10), ("SKU-B", 10)]).await;
    inv.reserve(saga(1), &[line("SKU-A", 2), line("SKU-B", 3)]).await.expect("reserve");
    inv.store().faults.fail_after_writes(1);
    assert!(inv.release(saga(1)).await.is_err());
    inv.store().faults.heal();
    assert_eq!(inv.release(saga(1)).await.expect("retried"), Handled::applied(Reply::ok()));
    assert_eq!(available(&inv).await, stock(&[("SKU-A", 10), ("SKU-B", 10)]));
    assert_consistent(&inv).await;
}

#[tokio::test]
async fn setting_the_same_stock_twice_appends_one_move() {
    let inv = inventory(&[]).await;
    assert_eq!(inv.set_available("SKU-A", 10).await.expect("set"), 10);
    assert_eq!(inv.set_available("SKU-A", 10).await.expect("same target"), 10);
    assert_eq!(inv.store().moves().len(), 1);
    inv.reserve(saga(1), &[line("SKU-A", 3)]).await.expect("reserve");
    assert_eq!(inv.set_available("SKU-A", 4).await.expect("lower"), 4);
    assert_eq!(inv.store().moves().iter().filter(|m| m.kind == MoveKind::Restock).map(|m| m.delta).sum::<i64>(), 7);
    assert_eq!(inv.available("SKU-A").await.expect("read"), Some(4));
    assert_eq!(inv.available("SKU-Z").await.expect("read"), None);
    assert_consistent(&inv).await;
}

#[tokio::test]
async fn seeding_sets_every_sku_and_is_idempotent() {
    let inv = inventory(&[]).await;
    inv.seed(3, 50).await.expect("seed");
    inv.seed(3, 50).await.expect("seed again");
    assert_eq!(available(&inv).await, stock(&[("SKU-1", 50), ("SKU-2", 50), ("SKU-3", 50)]));
    assert_eq!(inv.store().moves().len(), 3);
}

/// A deterministic mix of reserves, releases, redeliveries, failed writes and restarts over a few SKUs:
/// the cache agrees with the database at every step, and once every saga is released all the stock is
/// back.
#[tokio::test]
async fn stock_is_conserved_through_a_deterministic_mix_of_commands_faults_and_restarts() {
    let mut inv = inventory(&[("SKU-1", 30), ("SKU-2", 30), ("SKU-3", 30)]).await;
    let mut seed: u64 = 42;
    let mut next = |n: u64| {
        seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
        (seed >> 33) % n
    };
    for step in 0..600_u32 {
        let s = saga(u128::from(next(40)));
        if next(8) == 0 {
            inv.store().faults.fail_after_writes(u32::try_from(next(5)).expect("small"));
        }
        let quantity = |n: u64| u32::try_from(n + 1).expect("small");
        let result = if next(3) == 0 {
            inv.release(s).await
        } else {
            let lines = [line("SKU-1", quantity(next(5))), line(&format!("SKU-{}", 2 + next(2)), quantity(next(5)))];
            inv.reserve(s, &lines).await
        };
        if result.is_err() {
            inv.store().faults.heal();
            if next(2) == 0 {
                inv = restart(inv).await;
            }
        }
        if step % 20 == 0 {
            assert_consistent(&inv).await;
        }
    }
    inv.store().faults.heal();
    assert_consistent(&inv).await;
    for n in 0..40 {
        inv.release(saga(n)).await.expect("release");
    }
    assert_eq!(available(&inv).await, stock(&[("SKU-1", 30), ("SKU-2", 30), ("SKU-3", 30)]), "all stock is back");
    assert_consistent(&inv).await;
}

fn meta(saga_id: Uuid) -> Meta {
    let time = DateTime::from_timestamp(1_700_000_000, 0).expect("valid time");
    Meta { message_id: Uuid::nil(), saga_id, step: 0, attempt: 1, correlation_id: saga_id, causation_id: None, time }
}

#[tokio::test]
async fn the_domain_routes_its_two_commands_and_refuses_others() {
    let inv = inventory(&[("SKU-A", 1)]).await;
    let reserve = Command::InventoryReserve(ReserveStock { items: vec![line("SKU-A", 1)] });
    assert_eq!(inv.handle(&meta(saga(1)), &reserve).await.expect("reserve").reply, Reply::ok());
    let release = Command::InventoryRelease(ReleaseStock {});
    assert_eq!(inv.handle(&meta(saga(1)), &release).await.expect("release").reply, Reply::ok());
    let refund = Command::PaymentRefund(proto_events::commands::RefundPayment {});
    assert!(matches!(inv.handle(&meta(saga(1)), &refund).await, Err(domain::Error::Misrouted { .. })));
}

#[test]
fn seed_settings_come_from_flags() {
    let args: Vec<String> = ["--skus", "5", "--units", "7"].iter().map(|s| (*s).to_owned()).collect();
    assert_eq!(SeedSettings::parse(&args), Ok(SeedSettings { skus: 5, units: 7 }));
    assert!(SeedSettings::parse(&["--skus".to_owned()]).is_err());
    assert!(SeedSettings::parse(&["--what".to_owned(), "1".to_owned()]).is_err());
    assert!(SeedSettings::parse(&["--skus".to_owned(), "0".to_owned()]).is_err());
}

async fn call(router: Router, method: &str, uri: &str, body: &str) -> (StatusCode, serde_json::Value) {
    let request = Request::builder()
        .method(method)
        .uri(uri)
        .header("content-type", "application/json")
        .body(Body::from(body.to_owned()))
        .expect("request");
    let response = router.oneshot(request).await.expect("response");
    let status = response.status();
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 20).await.expect("body");
    (status, serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null))
}

#[tokio::test]
async fn the_stock_api_sets_and_reads_stock() {
    let inv = Arc::new(inventory(&[("SKU-B", 2)]).await);
    let router = http::router(Arc::clone(&inv));
    let (status, body) = call(router.clone(), "PUT", "/v1/stock/SKU-A", r#"{"available": 12}"#).await;
    assert_eq!((status, body), (StatusCode::OK, serde_json::json!({ "sku": "SKU-A", "available": 12 })));
    let (status, body) = call(router.clone(), "GET", "/v1/stock/SKU-A", "").await;
    assert_eq!((status, body), (StatusCode::OK, serde_json::json!({ "sku": "SKU-A", "available": 12 })));
    let (status, body) = call(router.clone(), "GET", "/v1/stock", "").await;
    let all = serde_json::json!([{ "sku": "SKU-A", "available": 12 }, { "sku": "SKU-B", "available": 2 }]);
    assert_eq!((status, body), (StatusCode::OK, all));
    let (status, _) = call(router.clone(), "GET", "/v1/stock/SKU-Q", "").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, body) = call(router.clone(), "PUT", "/v1/stock/bad%20sku", r#"{"available": 1}"#).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let (status, _) = call(router, "PUT", "/v1/stock/SKU-A", r#"{"available": -1}"#).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    // The API and the commands share the cache.
    assert_eq!(inv.reserve(saga(1), &[line("SKU-A", 12)]).await.expect("reserve").reply, Reply::ok());
}
