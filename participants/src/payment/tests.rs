//! Unit tests of the payment domain over the in-memory store.

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use chrono::DateTime;
use proto_events::commands::{ChargePayment, Currency};
use proto_events::{FailureKind, Reply};
use tower::ServiceExt;
use uuid::Uuid;

use super::*;
use crate::clock::ManualClock;

fn saga(n: u128) -> Uuid {
    Uuid::from_u128(0x0190_0000_0000_7000_8000_0000_0000_0000 | n)
}

async fn payments(limit_cents: i64) -> Payments<MemoryPaymentStore> {
    let clock = Arc::new(ManualClock::new(DateTime::from_timestamp(1_700_000_000, 0).expect("valid time")));
    Payments::open(MemoryPaymentStore::new(), PaymentSettings { limit_cents }, clock).await.expect("open")
}

fn charge(amount_cents: i64, token: &str) -> ChargePayment {
    ChargePayment {
        amount_cents,
        currency: Currency::EUR,
        payment_token: token.to_owned(),
        customer_ref: "0123456789abcdef0123456789abcdef".to_owned(),
    }
}

async fn status(p: &Payments<MemoryPaymentStore>, saga_id: Uuid) -> PaymentStatus {
    p.payment(saga_id).await.expect("read").expect("recorded").status
}

fn is_business(reply: &Reply, expected: &str) -> bool {
    matches!(reply, Reply::Failed { kind: FailureKind::Business, reason } if reason == expected)
}

#[tokio::test]
async fn a_charge_is_captured_once_with_its_payment_id_as_reference() {
    let p = payments(1_000_000).await;
    let first = p.charge(saga(1), &charge(2_500, "tok_visa")).await.expect("charge");
    let reference = format!("pay_{}", saga(1).simple());
    assert_eq!(first, Handled::applied(Reply::Succeeded { reference: Some(reference.clone()) }));
    let again = p.charge(saga(1), &charge(2_500, "tok_visa")).await.expect("redelivered");
    assert_eq!(again, Handled::repeated(first.reply));
    assert_eq!(p.store().len(), 1, "one payment per saga");
    let payment = p.payment(saga(1)).await.expect("read").expect("recorded");
    assert_eq!(
        (payment.status, payment.amount_cents, payment.payment_id),
        (PaymentStatus::Captured, 2_500, Some(reference))
    );
}

#[tokio::test]
async fn the_decline_token_is_declined_and_stays_declined() {
    let p = payments(1_000_000).await;
    let first = p.charge(saga(1), &charge(100, DECLINE_TOKEN)).await.expect("charge");
    assert!(is_business(&first.reply, DECLINED), "{first:?}");
    assert!(!first.duplicate);
    assert_eq!(status(&p, saga(1)).await, PaymentStatus::Declined);
    let again = p.charge(saga(1), &charge(100, DECLINE_TOKEN)).await.expect("redelivered");
    assert_eq!(again, Handled::repeated(first.reply));
}

#[tokio::test]
async fn an_amount_above_the_limit_is_declined_and_the_limit_itself_is_not() {
    let p = payments(10_000).await;
    let over = p.charge(saga(1), &charge(10_001, "tok_visa")).await.expect("charge");
    assert!(is_business(&over.reply, DECLINED), "{over:?}");
    let at = p.charge(saga(2), &charge(10_000, "tok_visa")).await.expect("charge");
    assert!(matches!(at.reply, Reply::Succeeded { .. }), "{at:?}");
}

#[tokio::test]
async fn a_refund_reverses_a_capture_exactly_once() {
    let p = payments(1_000_000).await;
    p.charge(saga(1), &charge(4_200, "tok_visa")).await.expect("charge");
    let first = p.refund(saga(1)).await.expect("refund");
    assert!(!first.duplicate && matches!(first.reply, Reply::Succeeded { .. }), "{first:?}");
    let again = p.refund(saga(1)).await.expect("refund again");
    assert_eq!(again, Handled::repeated(first.reply));
    let payment = p.payment(saga(1)).await.expect("read").expect("recorded");
    assert_eq!((payment.status, payment.refunded_cents), (PaymentStatus::Refunded, 4_200));
    // A charge redelivered after the refund answers the original reply and charges nothing.
    let late = p.charge(saga(1), &charge(4_200, "tok_visa")).await.expect("late charge");
    assert!(late.duplicate);
    assert_eq!(status(&p, saga(1)).await, PaymentStatus::Refunded);
}

#[tokio::test]
async fn a_repeated_refund_reads_the_payment_and_writes_nothing() {
    let p = payments(1_000_000).await;
    p.charge(saga(1), &charge(4_200, "tok_visa")).await.expect("charge");
    p.refund(saga(1)).await.expect("refund");
    // Every write fails from here on: the repeated refund must decide from the status it read.
    p.store().faults.fail_after_writes(0);
    assert!(p.refund(saga(1)).await.expect("repeated without a write").duplicate);
    let payment = p.payment(saga(1)).await.expect("read").expect("recorded");
    assert_eq!((payment.status, payment.refunded_cents), (PaymentStatus::Refunded, 4_200));
}

#[tokio::test]
async fn a_refund_of_a_declined_charge_is_a_no_op() {
    let p = payments(1_000_000).await;
    p.charge(saga(1), &charge(100, DECLINE_TOKEN)).await.expect("charge");
    assert!(matches!(p.refund(saga(1)).await.expect("refund").reply, Reply::Succeeded { .. }));
    let payment = p.payment(saga(1)).await.expect("read").expect("recorded");
    assert_eq!((payment.status, payment.refunded_cents), (PaymentStatus::Declined, 0));
}

#[tokio::test]
async fn a_refund_before_any_charge_leaves_a_tombstone_that_refuses_a_late_charge() {
    let p = payments(1_000_000).await;
    assert_eq!(p.refund(saga(1)).await.expect("refund"), Handled::applied(Reply::ok()));
    assert_eq!(status(&p, saga(1)).await, PaymentStatus::Cancelled);
    let late = p.charge(saga(1), &charge(100, "tok_visa")).await.expect("late charge");
    assert!(is_business(&late.reply, CANCELLED_BEFORE_CHARGE), "{late:?}");
    assert_eq!(status(&p, saga(1)).await, PaymentStatus::Cancelled, "nothing was captured");
    assert!(p.refund(saga(1)).await.expect("refund again").duplicate);
}

#[tokio::test]
async fn a_store_failure_is_an_error_and_nothing_is_recorded() {
    let p = payments(1_000_000).await;
    p.store().faults.go_down();
    assert!(p.charge(saga(1), &charge(100, "tok_visa")).await.is_err());
    p.store().faults.heal();
    assert!(p.store().is_empty());
}

#[test]
fn the_default_limit_is_ten_thousand() {
    assert_eq!(PaymentSettings::default().limit_cents, 1_000_000);
}

#[tokio::test]
async fn the_api_shows_a_payment_and_404s_an_unknown_saga() {
    let p = Arc::new(payments(1_000_000).await);
    p.charge(saga(1), &charge(2_500, "tok_visa")).await.expect("charge");
    let router = http::router(Arc::clone(&p));
    let get = |uri: String| Request::builder().uri(uri).body(Body::empty()).expect("request");
    let response = router.clone().oneshot(get(format!("/v1/payments/{}", saga(1)))).await.expect("response");
    assert_eq!(response.status(), StatusCode::OK);
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 20).await.expect("body");
    let view: serde_json::Value = serde_json::from_slice(&bytes).expect("json");
    assert_eq!(view["status"], "captured");
    assert_eq!(view["amount_cents"], 2_500);
    assert_eq!(view["currency"], "EUR");
    assert!(view.get("payment_token").is_none());
    let missing = router.clone().oneshot(get(format!("/v1/payments/{}", saga(2)))).await.expect("response");
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);
    let bad = router.oneshot(get("/v1/payments/not-a-uuid".to_owned())).await.expect("response");
    assert_eq!(bad.status(), StatusCode::BAD_REQUEST);
}
