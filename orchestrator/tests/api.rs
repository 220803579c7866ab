//! The public order API through the real router with in-memory ports: placing and reading orders, every kind
//! of bad input answered with a `400 application/problem+json` naming the field (and nothing created), and
//! idempotent retries with `Idempotency-Key`.

mod common;

use axum::body::Body as HttpBody;
use axum::http::{Request, StatusCode, header};
use proto_events::{Body, Reply, topics};
use serde_json::{Value, json};
use uuid::Uuid;

use common::{Answer, Harness, order_json};

const PROBLEM_JSON: &str = "application/problem+json";

/// [`order_json`] changed by `change`, as text.
fn order_with(change: impl FnOnce(&mut Value)) -> String {
    let mut order = order_json();
    change(&mut order);
    order.to_string()
}

fn order_id(answer: &Answer) -> Uuid {
    Uuid::parse_str(answer.body["order_id"].as_str().expect("an order_id")).expect("a UUID")
}

/// Checks that `answer` is a problem with `status` and `kind`.
fn assert_problem(answer: &Answer, status: StatusCode, kind: &str) {
    assert_eq!(answer.status, status, "{:?}", answer.body);
    assert_eq!(answer.content_type.as_deref(), Some(PROBLEM_JSON));
    assert_eq!(answer.body["status"], json!(status.as_u16()));
    assert_eq!(answer.body["type"], json!(kind));
    assert!(answer.body["title"].as_str().is_some_and(|t| !t.is_empty()), "{:?}", answer.body);
    assert!(answer.body["detail"].as_str().is_some_and(|t| !t.is_empty()), "{:?}", answer.body);
}

/// The fields a validation problem names.
fn fields(answer: &Answer) -> Vec<String> {
    let errors = answer.body["errors"].as_array().cloned().unwrap_or_default();
    errors.iter().map(|e| e["field"].as_str().expect("every error names a field").to_owned()).collect()
}

/// Posts `body`, which must be refused with 400 naming `field`, and checks that nothing was created.
async fn assert_rejected(body: &str, field: &str) -> Answer {
    let h = Harness::new();
    let answer = h.post_order(body, &[]).await;
    assert_problem(&answer, StatusCode::BAD_REQUEST, "/problems/validation");
    let named = fields(&answer);
    assert!(named.iter().any(|f| f == field), "expected errors[].field {field:?}, got {named:?}: {:?}", answer.body);
    assert_nothing_created(&h);
    answer
}

fn assert_nothing_created(h: &Harness) {
    assert!(h.store.all().is_empty(), "no saga may be stored: {:?}", h.store.all());
    assert_eq!(h.bus.take(), Vec::new(), "nothing may be published");
    assert_eq!(h.metrics.sagas_created.get(), 0);
}

// ---------------------------------------------------------------------------------------------------------
// Placing and reading orders

#[tokio::test]
async fn placing_an_order_answers_202_with_its_location_and_stores_and_starts_one_saga() {
    let h = Harness::new();
    let answer = h.post_order(&order_json().to_string(), &[]).await;

    assert_eq!(answer.status, StatusCode::ACCEPTED, "{:?}", answer.body);
    let id = order_id(&answer);
    let href = format!("/v1/orders/{id}");
    assert_eq!(answer.location.as_deref(), Some(href.as_str()));
    assert_eq!(answer.body, json!({ "order_id": id, "status": "PENDING", "state": "RUNNING", "href": href }));

    // Stored already started: its creation and its start are written together, with what the start sends.
    let sagas = h.store.all();
    assert_eq!(sagas.len(), 1);
    assert_eq!((sagas[0].id, sagas[0].version, sagas[0].order.amount_cents), (id, 2, 2500));
    assert_eq!(
        sagas[0].pending_log.iter().map(|e| (e.from.as_str(), e.to.as_str())).collect::<Vec<_>>(),
        [("", "STARTED"), ("STARTED", "RUNNING")]
    );
    let outgoing: Vec<&str> = sagas[0].pending_log[1].sent.iter().map(|s| s.message_type.as_str()).collect();
    assert_eq!(outgoing, ["inventory.reserve", "saga.transitioned"]);
    assert_eq!(sagas[0].outbox.len(), 2, "published by the owner of the saga's partition, not by the API");
    let published = h.bus.take();
    assert_eq!(published.len(), 1, "{published:?}");
    assert_eq!(published[0].0, topics::REPLY);
    assert!(matches!(published[0].1.body, Body::Start(_)));
    assert_eq!((published[0].1.meta.saga_id, published[0].1.meta.correlation_id), (id, sagas[0].correlation_id));
    assert_eq!(h.metrics.sagas_created.get(), 1);
}

#[tokio::test]
async fn a_correlation_id_header_is_kept_for_the_whole_order() {
    let h = Harness::new();
    let correlation = Uuid::now_v7();
    let answer = h.post_order(&order_json().to_string(), &[("x-correlation-id", &correlation.to_string())]).await;
    assert_eq!(answer.status, StatusCode::ACCEPTED);
    assert_eq!(h.store.all()[0].correlation_id, correlation);
    assert_eq!(h.bus.take()[0].1.meta.correlation_id, correlation);
}

#[tokio::test]
async fn reading_an_order_answers_its_status_state_and_step() {
    let h = Harness::new();
    let (id, start) = h.place_and_take_start().await;
    let path = format!("/v1/orders/{id}");

    let answer = h.get(&path).await;
    assert_eq!(answer.status, StatusCode::OK, "{:?}", answer.body);
    let body = &answer.body;
    assert_eq!(
        (body["order_id"].clone(), body["status"].clone(), body["state"].clone()),
        (json!(id), json!("PENDING"), json!("RUNNING"))
    );
    assert_eq!(
        (body["step"].clone(), body["attempt"].clone(), body["version"].clone()),
        (json!("reserve_stock"), json!(1), json!(2))
    );
    assert_eq!((body["amount_cents"].clone(), body["currency"].clone()), (json!(2500), json!("EUR")));
    assert_eq!(body["items"], json!([{ "sku": "SKU-1", "quantity": 2, "unit_price_cents": 1250 }]));

    h.apply(&start).await;
    let reserve = h.bus.take().into_iter().find_map(|(_, m)| matches!(m.body, Body::Command(_)).then_some(m));
    h.apply(&h.reply(&reserve.expect("the reserve command"), Reply::ok())).await;
    let answer = h.get(&path).await;
    let body = &answer.body;
    assert_eq!((body["status"].clone(), body["state"].clone()), (json!("PENDING"), json!("RUNNING")));
    assert_eq!(
        (body["step"].clone(), body["attempt"].clone(), body["version"].clone()),
        (json!("charge_payment"), json!(1), json!(3))
    );
}

#[tokio::test]
async fn an_unknown_or_malformed_order_id_answers_404_problem() {
    let h = Harness::new();
    h.place().await;
    for path in [format!("/v1/orders/{}", Uuid::now_v7()), "/v1/orders/not-an-id".to_owned()] {
        let answer = h.get(&path).await;
        assert_problem(&answer, StatusCode::NOT_FOUND, "/problems/not-found");
    }
}

// ---------------------------------------------------------------------------------------------------------
// Bad input: 400 naming the field, nothing created

#[tokio::test]
async fn an_order_without_items_is_rejected() {
    assert_rejected(&order_with(|o| o["items"] = json!([])), "items").await;
}

#[tokio::test]
async fn a_line_with_quantity_zero_is_rejected() {
    assert_rejected(&order_with(|o| o["items"][0]["quantity"] = json!(0)), "items[0].quantity").await;
}

#[tokio::test]
async fn a_line_with_a_negative_quantity_is_rejected() {
    assert_rejected(&order_with(|o| o["items"][0]["quantity"] = json!(-1)), "items[0].quantity").await;
}

#[tokio::test]
async fn an_unknown_currency_is_rejected() {
    assert_rejected(&order_with(|o| o["currency"] = json!("XYZ")), "currency").await;
}

#[tokio::test]
async fn an_order_without_shipping_address_is_rejected() {
    let body = order_with(|o| {
        o.as_object_mut().expect("an object").remove("shipping_address");
    });
    assert_rejected(&body, "shipping_address").await;
}

#[tokio::test]
async fn malformed_json_is_rejected() {
    let h = Harness::new();
    let body = order_json().to_string();
    let answer = h.post_order(&body[..body.len() - 1], &[]).await;
    assert_problem(&answer, StatusCode::BAD_REQUEST, "/problems/validation");
    assert_eq!(answer.body["detail"], json!("malformed JSON"));
    assert_nothing_created(&h);
}

#[tokio::test]
async fn an_unknown_field_is_rejected() {
    let answer = assert_rejected(&order_with(|o| o["coupon"] = json!("FREE")), "coupon").await;
    assert_eq!(answer.body["detail"], json!("unexpected JSON shape"));
}

#[tokio::test]
async fn a_repeated_sku_is_rejected() {
    let body = order_with(|o| {
        o["items"] = json!([
            { "sku": "SKU-1", "quantity": 1, "unit_price_cents": 100 },
            { "sku": "SKU-1", "quantity": 2, "unit_price_cents": 100 }
        ]);
    });
    assert_rejected(&body, "items").await;
}

#[tokio::test]
async fn a_bad_email_is_rejected() {
    assert_rejected(&order_with(|o| o["email"] = json!("ada-at-example.com")), "email").await;
}

#[tokio::test]
async fn a_bad_country_is_rejected() {
    for country in ["de", "DEU", ""] {
        let body = order_with(|o| o["shipping_address"]["country"] = json!(country));
        assert_rejected(&body, "shipping_address.country").await;
    }
}

#[tokio::test]
async fn a_body_that_is_not_json_is_refused_with_415() {
    let h = Harness::new();
    let body = order_json().to_string();
    for content_type in [Some("text/plain"), Some("application/x-www-form-urlencoded"), None] {
        let mut request = Request::post("/v1/orders");
        if let Some(content_type) = content_type {
            request = request.header(header::CONTENT_TYPE, content_type);
        }
        let answer = h.request(request.body(HttpBody::from(body.clone())).expect("a request")).await;
        assert_problem(&answer, StatusCode::UNSUPPORTED_MEDIA_TYPE, "/problems/unsupported-media-type");
    }
    assert_nothing_created(&h);
}

// ---------------------------------------------------------------------------------------------------------
// Idempotency-Key

#[tokio::test]
async fn the_same_request_with_the_same_idempotency_key_places_one_order() {
    let h = Harness::new();
    let body = order_json().to_string();
    let first = h.post_order(&body, &[("Idempotency-Key", "order-7")]).await;
    let second = h.post_order(&body, &[("Idempotency-Key", "order-7")]).await;

    assert_eq!((first.status, second.status), (StatusCode::ACCEPTED, StatusCode::OK), "{:?}", second.body);
    assert_eq!(order_id(&second), order_id(&first));
    assert_eq!(second.location, first.location);
    assert_eq!(second.body, first.body);
    assert_eq!(h.store.all().len(), 1, "one saga");
    let published = h.bus.take();
    assert_eq!(published.len(), 1, "one start message: {published:?}");
    assert_eq!(published[0].1.meta.saga_id, order_id(&first));
    assert_eq!(h.metrics.sagas_created.get(), 1);
}

#[tokio::test]
async fn an_invalid_idempotency_key_is_rejected() {
    for key in ["has space", &"k".repeat(256)] {
        let h = Harness::new();
        let answer = h.post_order(&order_json().to_string(), &[("Idempotency-Key", key)]).await;
        assert_problem(&answer, StatusCode::BAD_REQUEST, "/problems/validation");
        assert_eq!(fields(&answer), ["Idempotency-Key"]);
        assert_nothing_created(&h);
    }
}

#[tokio::test]
async fn an_idempotency_key_reused_with_another_body_is_refused_with_422() {
    let h = Harness::new();
    let first = h.post_order(&order_json().to_string(), &[("Idempotency-Key", "order-7")]).await;
    assert_eq!(first.status, StatusCode::ACCEPTED);
    h.bus.take();

    let other = order_with(|o| o["items"][0]["quantity"] = json!(3));
    let answer = h.post_order(&other, &[("Idempotency-Key", "order-7")]).await;
    assert_problem(&answer, StatusCode::UNPROCESSABLE_ENTITY, "/problems/idempotency-key-reused");
    assert_eq!(h.store.all().len(), 1, "no second saga");
    assert_eq!(h.store.all()[0].order.items[0].quantity, 2, "the first order is unchanged");
    assert_eq!(h.bus.take(), Vec::new());
}

#[tokio::test]
async fn different_customers_may_use_the_same_idempotency_key() {
    let h = Harness::new();
    let ada = order_json().to_string();
    let bob = order_with(|o| o["customer_id"] = json!("cust-43"));
    let key = [("Idempotency-Key", "order-1")];

    let for_ada = h.post_order(&ada, &key).await;
    let for_bob = h.post_order(&bob, &key).await;
    assert_eq!((for_ada.status, for_bob.status), (StatusCode::ACCEPTED, StatusCode::ACCEPTED), "{:?}", for_bob.body);
    assert_ne!(order_id(&for_ada), order_id(&for_bob));
    assert_eq!(h.store.all().len(), 2);
    assert_eq!(h.bus.take().len(), 2);

    let again = h.post_order(&ada, &key).await;
    assert_eq!((again.status, order_id(&again)), (StatusCode::OK, order_id(&for_ada)));
    assert_eq!(h.store.all().len(), 2);
}
