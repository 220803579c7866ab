//! Unit tests of the shipping domain over the in-memory store.

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use chrono::DateTime;
use proto_events::{Address, FailureKind, Line, Reply};
use tower::ServiceExt;
use uuid::Uuid;

use super::*;
use crate::clock::ManualClock;

fn saga(n: u128) -> Uuid {
    Uuid::from_u128(0x0190_0000_0000_7000_8000_0000_0000_0000 | n)
}

async fn shipping() -> Shipping<MemoryShipmentStore> {
    let clock = Arc::new(ManualClock::new(DateTime::from_timestamp(1_700_000_000, 0).expect("valid time")));
    Shipping::open(MemoryShipmentStore::new(), ShippingSettings::default(), clock).await.expect("open")
}

fn create(country: &str) -> CreateShipment {
    CreateShipment {
        items: vec![Line { sku: "SKU-1".to_owned(), quantity: 2 }],
        address: Address {
            name: "Erika Mustermann".to_owned(),
            line1: "Heidestrasse 17".to_owned(),
            line2: None,
            city: "Koeln".to_owned(),
            postal_code: "51147".to_owned(),
            country: country.to_owned(),
        },
    }
}

async fn status(s: &Shipping<MemoryShipmentStore>, saga_id: Uuid) -> ShipmentStatus {
    s.shipment(saga_id).await.expect("read").expect("recorded").status
}

#[tokio::test]
async fn a_shipment_is_created_once() {
    let s = shipping().await;
    let first = s.create(saga(1), &create("DE")).await.expect("create");
    let reference = format!("shp_{}", saga(1).simple());
    assert_eq!(first, Handled::applied(Reply::Succeeded { reference: Some(reference) }));
    let again = s.create(saga(1), &create("DE")).await.expect("redelivered");
    assert_eq!(again, Handled::repeated(first.reply));
    assert_eq!(s.store().len(), 1);
    let shipment = s.shipment(saga(1)).await.expect("read").expect("recorded");
    assert_eq!(shipment.status, ShipmentStatus::Created);
    assert_eq!(shipment.address.as_ref().map(|a| a.city.as_str()), Some("Koeln"), "the address is kept");
}

#[tokio::test]
async fn a_country_not_served_is_refused_and_recorded_without_the_address() {
    let s = shipping().await;
    let first = s.create(saga(1), &create("JP")).await.expect("create");
    assert!(
        matches!(&first.reply, Reply::Failed { kind: FailureKind::Business, reason } if reason == "country JP is not served"),
        "{first:?}"
    );
    let shipment = s.shipment(saga(1)).await.expect("read").expect("recorded");
    assert_eq!((shipment.status, shipment.address.is_none()), (ShipmentStatus::Rejected, true));
    assert_eq!(s.create(saga(1), &create("JP")).await.expect("redelivered"), Handled::repeated(first.reply));
}

#[tokio::test]
async fn a_cancel_cancels_once() {
    let s = shipping().await;
    s.create(saga(1), &create("FR")).await.expect("create");
    let first = s.cancel(saga(1)).await.expect("cancel");
    assert!(!first.duplicate && matches!(first.reply, Reply::Succeeded { .. }));
    assert_eq!(status(&s, saga(1)).await, ShipmentStatus::Cancelled);
    assert!(s.cancel(saga(1)).await.expect("cancel again").duplicate);
}

#[tokio::test]
async fn a_repeated_cancel_reads_the_shipment_and_writes_nothing() {
    let s = shipping().await;
    s.create(saga(1), &create("FR")).await.expect("create");
    s.cancel(saga(1)).await.expect("cancel");
    // Every write fails from here on: the repeated cancel must decide from the status it read.
    s.store().faults.fail_after_writes(0);
    assert!(s.cancel(saga(1)).await.expect("repeated without a write").duplicate);
    assert_eq!(status(&s, saga(1)).await, ShipmentStatus::Cancelled);
}

#[tokio::test]
async fn a_cancel_before_the_create_leaves_a_tombstone_that_refuses_a_late_create() {
    let s = shipping().await;
    assert_eq!(s.cancel(saga(1)).await.expect("cancel"), Handled::applied(Reply::ok()));
    let late = s.create(saga(1), &create("FR")).await.expect("late create");
    assert!(
        matches!(&late.reply, Reply::Failed { kind: FailureKind::Business, reason } if reason == CANCELLED_BEFORE_CREATE),
        "{late:?}"
    );
    assert_eq!(status(&s, saga(1)).await, ShipmentStatus::Cancelled);
    assert!(s.shipment(saga(1)).await.expect("read").expect("recorded").address.is_none());
}

#[tokio::test]
async fn the_debug_form_and_the_api_never_show_the_address() {
    let s = Arc::new(shipping().await);
    s.create(saga(1), &create("DE")).await.expect("create");
    let shipment = s.shipment(saga(1)).await.expect("read").expect("recorded");
    let debug = format!("{shipment:?}");
    assert!(!debug.contains("Mustermann") && !debug.contains("Heidestrasse"), "{debug}");

    let request = Request::builder().uri(format!("/v1/shipments/{}", saga(1))).body(Body::empty()).expect("request");
    let response = http::router(Arc::clone(&s)).oneshot(request).await.expect("response");
    assert_eq!(response.status(), StatusCode::OK);
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 20).await.expect("body");
    let text = String::from_utf8(bytes.to_vec()).expect("utf-8");
    assert!(!text.contains("Mustermann") && !text.contains("Heidestrasse") && !text.contains("51147"), "{text}");
    let view: serde_json::Value = serde_json::from_str(&text).expect("json");
    assert_eq!((view["status"].as_str(), view["country"].as_str()), (Some("created"), Some("DE")));
    assert_eq!(view["items"][0]["sku"], "SKU-1");
}

#[test]
fn the_default_countries_are_the_eu_and_gb_and_us() {
    let countries = ShippingSettings::default().countries;
    assert_eq!(countries.len(), 29);
    assert!(countries.contains("DE") && countries.contains("GB") && countries.contains("US"));
    assert!(!countries.contains("CH"));
    assert!(ShippingSettings::parse("DE, fr").is_err());
    assert!(ShippingSettings::parse(" , ").is_err());
    assert_eq!(ShippingSettings::parse("DE,CH").expect("valid").countries.len(), 2);
}
