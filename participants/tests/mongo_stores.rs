//! The MongoDB stores of the three domains against the real database (`MONGODB_URI`; FerretDB by
//! default): idempotency, exact stock conservation through the ledger and the reserve intent (including
//! restarts after a reserve cut short), refund and cancel exactly once, tombstones. Each test works in a
//! database of its own and drops it at the end.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;

use mongodb::Database;
use mongodb::bson::{Document, doc};
use participants::clock::SystemClock;
use participants::domain::Handled;
use participants::inventory::store::{MoveKind, Reservation, ReservationStatus, StockMove, StockStore};
use participants::inventory::{Inventory, MongoStockStore, RELEASED_BEFORE_RESERVE};
use participants::payment::store::PaymentStatus;
use participants::payment::{DECLINE_TOKEN, MongoPaymentStore, PaymentSettings, Payments};
use participants::shipping::store::ShipmentStatus;
use participants::shipping::{MongoShipmentStore, Shipping, ShippingSettings};
use proto_events::commands::{ChargePayment, CreateShipment, Currency};
use proto_events::{Address, FailureKind, Line, Reply};
use uuid::Uuid;

fn line(sku: &str, quantity: u32) -> Line {
    Line { sku: sku.to_owned(), quantity }
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

async fn inventory(db: &Database) -> Inventory<MongoStockStore> {
    Inventory::open(MongoStockStore::new(db), Arc::new(SystemClock)).await.expect("open the inventory")
}

/// The ledger's sums, the cache, and a freshly loaded cache all agree.
async fn assert_ledger(db: &Database, inv: &Inventory<MongoStockStore>, expected: &BTreeMap<String, i64>) {
    assert_eq!(&inv.all_available().await.expect("cache"), expected, "cache");
    assert_eq!(&inv.store().available().await.expect("ledger"), expected, "ledger");
    assert_eq!(&inventory(db).await.all_available().await.expect("reloaded"), expected, "reloaded cache");
}

#[tokio::test]
async fn the_stock_ledger_reserves_all_or_nothing_and_releases_exactly_once() {
    let db = common::database("stock").await;
    let inv = inventory(&db).await;
    inv.seed(2, 10).await.expect("seed");
    inv.seed(2, 10).await.expect("seed again changes nothing");
    let (a, b) = (Uuid::now_v7(), Uuid::now_v7());

    let reserved = inv.reserve(a, &[line("SKU-1", 4), line("SKU-2", 10)]).await.expect("reserve");
    assert_eq!(reserved, Handled::applied(Reply::ok()));
    assert_eq!(
        inv.reserve(a, &[line("SKU-1", 4), line("SKU-2", 10)]).await.expect("again"),
        Handled::repeated(Reply::ok())
    );
    let refused = inv.reserve(b, &[line("SKU-1", 1), line("SKU-2", 1)]).await.expect("refused");
    assert_eq!(business(&refused.reply), "not enough stock for SKU-2");
    assert_ledger(&db, &inv, &stock(&[("SKU-1", 6), ("SKU-2", 0)])).await;

    assert_eq!(inv.release(a).await.expect("release"), Handled::applied(Reply::ok()));
    assert_eq!(inv.release(a).await.expect("release again"), Handled::repeated(Reply::ok()));
    assert_ledger(&db, &inv, &stock(&[("SKU-1", 10), ("SKU-2", 10)])).await;

    // Released before reserved: a tombstone refuses the late reserve.
    let c = Uuid::now_v7();
    assert_eq!(inv.release(c).await.expect("early release").reply, Reply::ok());
    let late = inv.reserve(c, &[line("SKU-1", 1)]).await.expect("late reserve");
    assert_eq!(business(&late.reply), RELEASED_BEFORE_RESERVE);
    assert_ledger(&db, &inv, &stock(&[("SKU-1", 10), ("SKU-2", 10)])).await;
    db.drop().await.expect("drop the test database");
}

/// What a reserve of `lines` for `saga` leaves when the process is killed after its intent and the reserve
/// moves of the first `moves` lines.
async fn cut_reserve(inv: &Inventory<MongoStockStore>, saga: Uuid, lines: &[Line], moves: usize) {
    let now = chrono::Utc::now();
    let intent = Reservation {
        saga_id: saga,
        lines: lines.to_vec(),
        status: ReservationStatus::Reserving,
        reply: Reply::ok(),
        updated_at: now,
    };
    inv.store().insert_reservation(&intent).await.expect("the intent");
    let written: Vec<StockMove> =
        lines[..moves].iter().map(|l| StockMove::reserve(saga, &l.sku, i64::from(l.quantity), now)).collect();
    inv.store().insert_moves(&written).await.expect("some of the moves");
}

async fn status(inv: &Inventory<MongoStockStore>, saga: Uuid) -> ReservationStatus {
    inv.store().reservation(saga).await.expect("read").expect("recorded").status
}

#[tokio::test]
async fn a_half_applied_reserve_is_completed_once_after_a_restart() {
    let db = common::database("crash").await;
    let saga = Uuid::now_v7();
    let lines = [line("SKU-A", 3), line("SKU-B", 4)];
    {
        let inv = inventory(&db).await;
        inv.set_available("SKU-A", 10).await.expect("stock");
        inv.set_available("SKU-B", 10).await.expect("stock");
        // The process wrote the intent and one of two reserve moves, and was killed.
        cut_reserve(&inv, saga, &lines, 1).await;
    }
    let inv = inventory(&db).await;
    let held = stock(&[("SKU-A", 7), ("SKU-B", 6)]);
    assert_eq!(inv.all_available().await.expect("cache"), held, "the intent holds the line without a move");
    assert_eq!(inv.reserve(saga, &lines).await.expect("redelivered"), Handled::applied(Reply::ok()));
    assert_eq!(inv.reserve(saga, &lines).await.expect("again"), Handled::repeated(Reply::ok()));
    assert_eq!(status(&inv, saga).await, ReservationStatus::Reserved);
    assert_ledger(&db, &inv, &held).await;
    let moves = db.collection::<Document>("stock_moves").count_documents(doc! { "saga_id": saga.to_string() }).await;
    assert_eq!(moves.expect("count"), 2, "one move per line");
    inv.release(saga).await.expect("release");
    assert_ledger(&db, &inv, &stock(&[("SKU-A", 10), ("SKU-B", 10)])).await;
    db.drop().await.expect("drop the test database");
}

#[tokio::test]
async fn a_release_after_an_intent_only_crash_restores_exactly_and_refuses_the_late_reserve() {
    let db = common::database("intent").await;
    let (saga, other) = (Uuid::now_v7(), Uuid::now_v7());
    let lines = [line("SKU-A", 3), line("SKU-B", 10)];
    {
        let inv = inventory(&db).await;
        inv.set_available("SKU-A", 10).await.expect("stock");
        inv.set_available("SKU-B", 10).await.expect("stock");
        // The process wrote the intent and was killed before any move.
        cut_reserve(&inv, saga, &lines, 0).await;
    }
    let inv = inventory(&db).await;
    assert_eq!(inv.all_available().await.expect("cache"), stock(&[("SKU-A", 7), ("SKU-B", 0)]), "held");
    let refused = inv.reserve(other, &[line("SKU-B", 1)]).await.expect("another saga");
    assert_eq!(business(&refused.reply), "not enough stock for SKU-B", "held stock is not taken twice");

    assert_eq!(inv.release(saga).await.expect("release"), Handled::applied(Reply::ok()));
    assert_eq!(inv.release(saga).await.expect("again"), Handled::repeated(Reply::ok()));
    assert_eq!(status(&inv, saga).await, ReservationStatus::Released);
    assert_ledger(&db, &inv, &stock(&[("SKU-A", 10), ("SKU-B", 10)])).await;
    let late = inv.reserve(saga, &lines).await.expect("late reserve");
    assert_eq!(business(&late.reply), RELEASED_BEFORE_RESERVE);
    assert_ledger(&db, &inv, &stock(&[("SKU-A", 10), ("SKU-B", 10)])).await;
    let moves = db.collection::<Document>("stock_moves").count_documents(doc! { "saga_id": saga.to_string() }).await;
    assert_eq!(moves.expect("count"), 0, "nothing was moved for the saga");
    db.drop().await.expect("drop the test database");
}

#[tokio::test]
async fn a_batch_of_moves_skips_the_ones_written_before() {
    let db = common::database("batch").await;
    let store = MongoStockStore::new(&db);
    let (saga, now) = (Uuid::now_v7(), chrono::Utc::now());
    let moves: Vec<StockMove> =
        ["SKU-A", "SKU-B", "SKU-C"].iter().map(|sku| StockMove::reserve(saga, sku, 2, now)).collect();
    store.insert_moves(&moves[1..2]).await.expect("one move");
    store.insert_moves(&moves).await.expect("the batch, one of which exists");
    store.insert_moves(&moves).await.expect("the batch again");
    for sku in ["SKU-A", "SKU-B", "SKU-C"] {
        let found = store.find_move(&StockMove::id(saga, sku, MoveKind::Reserve)).await.expect("find");
        assert_eq!(found.map(|m| (m.sku, m.delta)), Some((sku.to_owned(), -2)));
    }
    assert_eq!(store.available().await.expect("sums"), stock(&[("SKU-A", -2), ("SKU-B", -2), ("SKU-C", -2)]));
    assert!(store.find_move("no-such-move").await.expect("find").is_none());
    db.drop().await.expect("drop the test database");
}

fn charge(amount_cents: i64, token: &str) -> ChargePayment {
    ChargePayment {
        amount_cents,
        currency: Currency::EUR,
        payment_token: token.to_owned(),
        customer_ref: "0123456789abcdef0123456789abcdef".to_owned(),
    }
}

#[tokio::test]
async fn a_payment_is_charged_once_and_refunded_once() {
    let db = common::database("pay").await;
    let settings = PaymentSettings { limit_cents: 10_000 };
    let payments = Payments::open(MongoPaymentStore::new(&db), settings, Arc::new(SystemClock)).await.expect("open");
    Payments::open(MongoPaymentStore::new(&db), settings, Arc::new(SystemClock)).await.expect("indexes again");
    let saga = Uuid::now_v7();

    let first = payments.charge(saga, &charge(2_500, "tok_visa")).await.expect("charge");
    assert_eq!(first.reply, Reply::Succeeded { reference: Some(format!("pay_{}", saga.simple())) });
    assert_eq!(payments.charge(saga, &charge(2_500, "tok_visa")).await.expect("again"), Handled::repeated(first.reply));
    assert!(!payments.refund(saga).await.expect("refund").duplicate);
    assert!(payments.refund(saga).await.expect("refund again").duplicate);
    let payment = payments.payment(saga).await.expect("read").expect("recorded");
    assert_eq!((payment.status, payment.refunded_cents, payment.amount_cents), (PaymentStatus::Refunded, 2_500, 2_500));
    let count = db.collection::<Document>("payments").count_documents(doc! { "_id": saga.to_string() }).await;
    assert_eq!(count.expect("count"), 1);

    let (declined, over, early) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
    let by_token = payments.charge(declined, &charge(100, DECLINE_TOKEN)).await.expect("charge");
    assert_eq!(business(&by_token.reply), "payment declined");
    let by_limit = payments.charge(over, &charge(10_001, "tok_visa")).await.expect("charge");
    assert_eq!(business(&by_limit.reply), "payment declined");
    assert_eq!(
        payments.charge(over, &charge(10_001, "tok_visa")).await.expect("again"),
        Handled::repeated(by_limit.reply)
    );

    assert_eq!(payments.refund(early).await.expect("refund first"), Handled::applied(Reply::ok()));
    let late = payments.charge(early, &charge(100, "tok_visa")).await.expect("late charge");
    business(&late.reply);
    assert_eq!(payments.payment(early).await.expect("read").expect("tombstone").status, PaymentStatus::Cancelled);
    db.drop().await.expect("drop the test database");
}

fn create(country: &str) -> CreateShipment {
    CreateShipment {
        items: vec![line("SKU-1", 1)],
        address: Address {
            name: "Jan Kowalski".to_owned(),
            line1: "ul. Dluga 5".to_owned(),
            line2: Some("m. 3".to_owned()),
            city: "Gdansk".to_owned(),
            postal_code: "80-831".to_owned(),
            country: country.to_owned(),
        },
    }
}

#[tokio::test]
async fn a_shipment_is_created_once_and_cancelled_once() {
    let db = common::database("ship").await;
    let shipping = Shipping::open(MongoShipmentStore::new(&db), ShippingSettings::default(), Arc::new(SystemClock));
    let shipping = shipping.await.expect("open");
    let (saga, far, early) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());

    let first = shipping.create(saga, &create("PL")).await.expect("create");
    assert_eq!(first.reply, Reply::Succeeded { reference: Some(format!("shp_{}", saga.simple())) });
    assert_eq!(shipping.create(saga, &create("PL")).await.expect("again"), Handled::repeated(first.reply));
    let stored = db.collection::<Document>("shipments").find_one(doc! { "_id": saga.to_string() }).await;
    let stored = stored.expect("read").expect("stored");
    assert_eq!(stored.get_document("address").expect("address kept").get_str("city").expect("city"), "Gdansk");
    assert!(!shipping.cancel(saga).await.expect("cancel").duplicate);
    assert!(shipping.cancel(saga).await.expect("cancel again").duplicate);
    assert_eq!(shipping.shipment(saga).await.expect("read").expect("recorded").status, ShipmentStatus::Cancelled);

    let refused = shipping.create(far, &create("JP")).await.expect("create");
    assert_eq!(business(&refused.reply), "country JP is not served");
    let stored = db.collection::<Document>("shipments").find_one(doc! { "_id": far.to_string() }).await;
    let address = stored.expect("read").expect("recorded").get("address").cloned();
    assert!(
        matches!(address, None | Some(mongodb::bson::Bson::Null)),
        "a refused shipment keeps no address: {address:?}"
    );

    assert_eq!(shipping.cancel(early).await.expect("cancel first"), Handled::applied(Reply::ok()));
    let late = shipping.create(early, &create("PL")).await.expect("late create");
    business(&late.reply);
    assert_eq!(shipping.shipment(early).await.expect("read").expect("tombstone").status, ShipmentStatus::Cancelled);
    db.drop().await.expect("drop the test database");
}
