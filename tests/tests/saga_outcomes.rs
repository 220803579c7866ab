//! The order saga end to end: the real orchestrator and participants on the real Kafka and database.
//! Every outcome the definition prescribes, checked through the order API and through each participant's
//! own records.

use std::time::Duration;

use serde_json::Value;
use tests::duplicator::Duplicator;
use tests::stack::{Options, Stack};
use uuid::Uuid;

const FINISH: Duration = Duration::from_secs(60);

async fn finished(stack: &Stack, order_id: Uuid, status: &str) -> Value {
    let order = stack.wait_terminal(order_id, FINISH).await;
    assert_eq!(order["status"], status, "order {order_id}: {order}");
    order
}

/// (a) to (d): the happy path and each business failure, side by side on one stack (distinct SKUs).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_business_outcome_ends_as_the_definition_prescribes() {
    let stack = Stack::start("outcomes", Options::default()).await;
    for sku in ["SKU-A", "SKU-B", "SKU-C", "SKU-D"] {
        stack.set_stock(sku, 10).await;
    }
    stack.set_stock("SKU-SCARCE", 1).await;

    let happy = stack.place(&Stack::order("cust-a", &[("SKU-A", 2), ("SKU-B", 3)])).await;
    let out_of_stock = stack.place(&Stack::order("cust-b", &[("SKU-C", 1), ("SKU-SCARCE", 2)])).await;
    let mut declined_order = Stack::order("cust-c", &[("SKU-D", 4)]);
    declined_order["payment_token"] = "tok_decline".into();
    let declined = stack.place(&declined_order).await;
    let mut far_away = Stack::order("cust-d", &[("SKU-B", 1), ("SKU-C", 2)]);
    far_away["shipping_address"]["country"] = "JP".into();
    let unsupported = stack.place(&far_away).await;

    // (a) happy path: COMPLETED, stock down, payment captured, shipment created.
    let order = finished(&stack, happy, "COMPLETED").await;
    assert_eq!(order["state"], "COMPLETED");
    let payment = stack.payment(happy).await.expect("a payment");
    assert_eq!(payment["status"], "captured", "{payment}");
    assert_eq!(payment["amount_cents"], 5 * 1250);
    let shipment = stack.shipment(happy).await.expect("a shipment");
    assert_eq!(shipment["status"], "created", "{shipment}");
    assert!(!shipment.to_string().contains("Ada Lovelace"), "the shipment view hides the address");

    // (b) out of stock: CANCELLED, nothing reserved, no payment taken.
    let order = finished(&stack, out_of_stock, "CANCELLED").await;
    assert!(order["reason"].as_str().is_some_and(|r| r.contains("SKU-SCARCE")), "{order}");
    assert!(stack.payment(out_of_stock).await.is_none(), "no payment for an order without stock");
    assert!(stack.shipment(out_of_stock).await.is_none());

    // (c) payment declined: CANCELLED, stock restored exactly.
    let order = finished(&stack, declined, "CANCELLED").await;
    assert!(order["reason"].as_str().is_some_and(|r| r.contains("declined")), "{order}");
    let payment = stack.payment(declined).await.expect("the decline is recorded");
    assert_eq!(payment["status"], "declined", "{payment}");
    assert!(stack.shipment(declined).await.is_none());

    // (d) unsupported country: CANCELLED, payment refunded once, stock restored.
    let order = finished(&stack, unsupported, "CANCELLED").await;
    assert!(order["reason"].as_str().is_some_and(|r| r.contains("JP")), "{order}");
    let payment = stack.payment(unsupported).await.expect("a payment");
    assert_eq!(payment["status"], "refunded", "{payment}");
    assert_eq!(payment["refunded_cents"], payment["amount_cents"], "refunded exactly once: {payment}");

    // Stock: only the completed order keeps its units; every cancelled order gave its reservation back.
    assert_eq!(stack.stock("SKU-A").await, 8);
    assert_eq!(stack.stock("SKU-B").await, 7);
    assert_eq!(stack.stock("SKU-C").await, 10);
    assert_eq!(stack.stock("SKU-D").await, 10);
    assert_eq!(stack.stock("SKU-SCARCE").await, 1);

    // Personal data never reaches a log line.
    stack.assert_logs_free_of(&["Ada Lovelace", "ada@example.com", "1 Main St", "tok_visa", "tok_decline"]);
    stack.cleanup().await;
}

/// (e) Every command and every reply delivered twice: the same outcomes, no effect doubled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_and_replies_delivered_twice_change_nothing() {
    let stack = Stack::start("twice", Options::default()).await;
    let topics = [
        proto_events::topics::CMD_INVENTORY,
        proto_events::topics::CMD_PAYMENT,
        proto_events::topics::CMD_SHIPPING,
        proto_events::topics::REPLY,
    ];
    let duplicator = Duplicator::start(&stack.kafka, &topics).await;
    stack.set_stock("SKU-1", 20).await;
    stack.set_stock("SKU-2", 20).await;

    let happy = stack.place(&Stack::order("cust-1", &[("SKU-1", 3)])).await;
    let mut far_away = Stack::order("cust-2", &[("SKU-2", 4)]);
    far_away["shipping_address"]["country"] = "JP".into();
    let cancelled = stack.place(&far_away).await;

    finished(&stack, happy, "COMPLETED").await;
    finished(&stack, cancelled, "CANCELLED").await;
    // Wait until every message of both sagas has been copied. A copied command makes its participant reply
    // again, and that reply is copied too: the completed saga has 3 commands and 6 replies to copy (9), the
    // cancelled one 5 commands and 10 replies (15). (Their starts do not go through Kafka: the orchestrator
    // owns every partition, so its API hands them to its engine.)
    tests::eventually("copies of every command and reply", FINISH, || async {
        (duplicator.copies() >= 24).then_some(())
    })
    .await;

    let payment = stack.payment(happy).await.expect("a payment");
    assert_eq!(payment["status"], "captured");
    let refunded = stack.payment(cancelled).await.expect("a payment");
    assert_eq!(refunded["status"], "refunded");
    assert_eq!(refunded["refunded_cents"], refunded["amount_cents"], "refunded once: {refunded}");
    assert_eq!(stack.stock("SKU-1").await, 17, "reserved once");
    assert_eq!(stack.stock("SKU-2").await, 20, "released exactly once");
    assert_eq!(stack.get_order(happy).await.expect("order")["status"], "COMPLETED", "still completed");
    assert_eq!(stack.get_order(cancelled).await.expect("order")["status"], "CANCELLED", "still cancelled");
    stack.cleanup().await;
}
